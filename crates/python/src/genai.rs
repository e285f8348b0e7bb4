//! `onnx_protect.genai`'s native half: stages the decrypted files of [`SessionFiles`] for
//! the sessions onnxruntime-genai creates, through `onnx_protect_genai`'s custom-ops entry
//! point (`RegisterCustomOps`, `onnx_protect_genai_add_files`: `#[no_mangle]` in that crate,
//! so this module exports them; onnxruntime opens a copy of it).

use pyo3::prelude::*;

use onnx_protect_core::error::ErrorKind;

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
