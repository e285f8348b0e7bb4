//! Protected model folders (docs/format.md §16) from C: the folder check a loader makes
//! before it opens any model of the folder, and the copy of the folder's other files
//! (config, tokenizer) that it then reads.

use std::ffi::{c_char, CString};

use onnx_protect_folder::{Folder, FolderError};

use crate::{at, call, call_out, path_arg, Failure, OnnxProtectKey, OnnxProtectStatus};

/// A protected model folder whose bindings agree with each other and with its files.
pub struct OnnxProtectFolder {
    /// `(name relative to the folder, absolute path)` of each model, sorted by name.
    models: Vec<(CString, CString)>,
}

/// A folder failure: a model's own error keeps its status and names the model, the
/// folder's own ones take the status of [`FolderError::core_kind`].
fn failure(dir: &std::path::Path, e: FolderError) -> Failure {
    match e {
        FolderError::Model { path, source } => at(&dir.join(path), source),
        e => Failure { status: crate::status_of(e.core_kind()), message: format!("{}: {e}", dir.display()) },
    }
}

#[cfg(unix)]
fn path_bytes(p: &std::path::Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes()
}

#[cfg(not(unix))]
fn path_bytes(p: &std::path::Path) -> &[u8] {
    p.as_os_str().as_encoded_bytes()
}

fn c_string(s: &[u8], what: &str) -> Result<CString, Failure> {
    CString::new(s)
        .map_err(|_| Failure { status: OnnxProtectStatus::BadManifest, message: format!("{what} holds a NUL") })
}

/// Opens the protected folder `dir` and refuses it unless every model's folder binding
/// agrees with the others and with the files there: none missing, changed, extra or
/// swapped, no model of another encryption (the check `onnx-protect verify DIR` starts
/// with; each model's content is verified when it is decrypted). With `key` (may be
/// `NULL`), also checks that the key opens every model under the one data key. With
/// `copy_to` (may be `NULL`: an existing folder, empty or not), copies every file of the
/// folder that is not a model or a model's data file into it, at its relative path, each
/// copy checked against the hash its binding records: read those copies, not the
/// originals, and a file changed after this call cannot reach the application.
///
/// # Safety
/// `dir` and `copy_to` (unless `NULL`) are NUL-terminated strings; `key` is `NULL` or a
/// key not yet freed; `out` is valid for a pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_folder_open(
    dir: *const c_char,
    key: *const OnnxProtectKey,
    copy_to: *const c_char,
    out: *mut *mut OnnxProtectFolder,
) -> OnnxProtectStatus {
    let make = || {
        // SAFETY: the caller's contract.
        let dir = unsafe { path_arg(dir, "dir") }?;
        // SAFETY: the caller's contract.
        let copy_to = if copy_to.is_null() { None } else { Some(unsafe { path_arg(copy_to, "copy_to") }?) };
        // SAFETY: the caller's contract.
        let key = unsafe { key.as_ref() };
        let folder = Folder::open(&dir).map_err(|e| failure(&dir, e))?;
        if let Some(k) = key {
            folder.check_key(&k.source).map_err(|e| failure(&dir, e))?;
        }
        if let Some(to) = &copy_to {
            folder.copy_files_to(to).map_err(|e| failure(&dir, e))?;
        }
        let mut models = Vec::with_capacity(folder.models().len());
        for m in folder.models() {
            models.push((c_string(m.path.as_bytes(), &m.path)?, c_string(path_bytes(&m.abs), &m.path)?));
        }
        Ok(OnnxProtectFolder { models })
    };
    // SAFETY: the caller's contract.
    unsafe { call_out(out, make) }
}

/// The number of models of an open folder; 0 for `NULL`.
///
/// # Safety
/// `folder` is `NULL` or a folder not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_folder_model_count(folder: *const OnnxProtectFolder) -> usize {
    // SAFETY: the caller's contract.
    unsafe { folder.as_ref() }.map_or(0, |f| f.models.len())
}

/// Model `index` of an open folder (sorted by name): `*name`, its path relative to the
/// folder (`/`-separated, the name `genai_config.json` gives it), and `*path`, the model
/// file to open with [`crate::onnx_protect_open`]. Both strings live as long as the folder.
///
/// # Safety
/// `folder` is a folder not yet freed; `name` and `path` are valid for a pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_folder_model(
    folder: *const OnnxProtectFolder,
    index: usize,
    name: *mut *const c_char,
    path: *mut *const c_char,
) -> OnnxProtectStatus {
    call(|| {
        if name.is_null() || path.is_null() {
            return Err(Failure::argument("name and path must not be NULL"));
        }
        // SAFETY: checked above.
        unsafe {
            *name = std::ptr::null();
            *path = std::ptr::null();
        }
        // SAFETY: the caller's contract.
        let f = unsafe { folder.as_ref() }.ok_or_else(|| Failure::argument("folder is NULL"))?;
        let (n, p) = f.models.get(index).ok_or_else(|| {
            Failure::argument(format!("model {index} does not exist (the folder has {})", f.models.len()))
        })?;
        // SAFETY: checked above.
        unsafe {
            *name = n.as_ptr();
            *path = p.as_ptr();
        }
        Ok(())
    })
}

/// Releases an open folder. `NULL` is accepted.
///
/// # Safety
/// `folder` is `NULL` or a folder not yet freed; no string it handed out is used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_folder_free(folder: *mut OnnxProtectFolder) {
    if !folder.is_null() {
        // SAFETY: made by `Box::into_raw` in this library and not freed yet (contract).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(unsafe { Box::from_raw(folder) })));
    }
}
