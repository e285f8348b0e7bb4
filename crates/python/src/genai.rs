//! `onnx_protect.genai`'s native half: stages the decrypted files of [`SessionFiles`] for
//! the sessions onnxruntime-genai creates, through `onnx_protect_genai`'s custom-ops entry
//! point (`RegisterCustomOps`, `onnx_protect_genai_add_files`: `#[no_mangle]` in that crate,
//! so this module exports them; onnxruntime opens a copy of it).

use std::path::{Path, PathBuf};

use onnx_protect_core::error::ErrorKind;
use onnx_protect_folder::{Folder, FolderError};
use pyo3::prelude::*;

use crate::session::SessionFiles;

/// Stages the files of `models` (each a `SessionFiles`) for the sessions onnxruntime-genai
/// is about to create; returns the token to put in the config entry
/// `onnx_protect.genai`. The files stay alive while staged.
#[pyfunction]
pub fn genai_stage(models: Vec<PyRef<'_, SessionFiles>>) -> PyResult<String> {
    let files = models.iter().flat_map(|m| m.raw_files()).collect();
    let keep: Vec<_> = models.iter().map(|m| m.held()).collect();
    onnx_protect_genai::stage(files, Box::new(keep)).map_err(|e| crate::exception(ErrorKind::Output, e.to_string()))
}

/// Drops a staging (the sessions are created: onnxruntime holds what it reads).
#[pyfunction]
pub fn genai_unstage(token: &str) -> bool {
    onnx_protect_genai::unstage(token)
}

/// The package's exception for a folder error, its message naming the folder.
fn folder_err(dir: &Path, e: FolderError) -> PyErr {
    let at = |m: String| format!("{}: {m}", dir.display());
    match e {
        FolderError::Model { path, source } => {
            let msg = onnx_protect_core::error::with_causes_at(&source, Some(&dir.join(&path)));
            crate::exception(source.kind(), msg)
        }
        e => crate::exception(e.core_kind(), at(e.to_string())),
    }
}

/// Opens the protected folder `dir` (its bindings agree with each other and with its
/// files: none missing, changed, extra or swapped, no model of another encryption),
/// copies every file of it that is not a model or a model's data file into the empty
/// folder `private`, each copy checked against the hash its binding records, and returns
/// `[(relative path, absolute path)]` of the models.
#[pyfunction]
pub fn genai_folder(py: Python<'_>, dir: PathBuf, private: PathBuf) -> PyResult<Vec<(String, PathBuf)>> {
    py.detach(|| -> Result<_, FolderError> {
        let folder = Folder::open(&dir)?;
        folder.copy_files_to(&private)?;
        Ok(folder.models().iter().map(|m| (m.path.clone(), m.abs.clone())).collect())
    })
    .map_err(|e| folder_err(&dir, e))
}
