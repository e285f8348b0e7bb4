//! Staging the decrypted files of models for the sessions onnxruntime-genai creates
//! (docs/genai.md, "C and C++").

use std::ffi::{c_char, CStr};

#[cfg(doc)]
use crate::onnx_protect_file_decrypt_for_session;
use crate::{call, Failure, OnnxProtectModel, OnnxProtectStatus};

/// Stages the external data files of `count` models from
/// [`onnx_protect_file_decrypt_for_session`] for the sessions onnxruntime-genai creates
/// (docs/genai.md): onnxruntime gives them to each session whose options carry the config
/// entry `onnx_protect.genai` = `TOKEN` tab `PATH` and the `custom_ops_library` entry
/// (a copy of this library in the config's folder), `PATH` being the absolute path of this
/// library as loaded. Writes `TOKEN`, NUL-terminated, into `token` (`capacity` bytes: 32
/// are enough). The models stay the caller's: keep them until every session made from
/// them is released and the staging is dropped with [`onnx_protect_genai_unstage`].
///
/// # Safety
/// `models` points to `count` models not yet freed; `token` to `capacity` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_genai_stage(
    models: *const *const OnnxProtectModel,
    count: usize,
    token: *mut c_char,
    capacity: usize,
) -> OnnxProtectStatus {
    call(|| {
        if models.is_null() || token.is_null() {
            return Err(Failure::argument("models and token must not be NULL"));
        }
        // SAFETY: `count` readable pointers by the caller's contract.
        let models = unsafe { std::slice::from_raw_parts(models, count) };
        let mut files = Vec::new();
        for (i, m) in models.iter().enumerate() {
            // SAFETY: the caller's contract.
            let m = unsafe { m.as_ref() }.ok_or_else(|| Failure::argument(format!("model {i} is NULL")))?;
            for (loc, bytes, n) in &m.external {
                files.push((loc.to_string_lossy().into_owned(), bytes.as_ptr(), *n));
            }
        }
        let t = onnx_protect_genai::stage(files, Box::new(())).map_err(|e| Failure::argument(e.to_string()))?;
        if t.len() >= capacity {
            onnx_protect_genai::unstage(&t);
            return Err(Failure::argument(format!("token needs {} bytes, capacity is {capacity}", t.len() + 1)));
        }
        // SAFETY: `capacity` > `t.len()` writable bytes by the caller's contract.
        unsafe {
            std::ptr::copy_nonoverlapping(t.as_ptr(), token.cast::<u8>(), t.len());
            *token.add(t.len()) = 0;
        }
        Ok(())
    })
}

/// Drops the staging of `token` (the sessions are created; the models stay the caller's).
/// An unknown token is an `INVALID_ARGUMENT` error.
///
/// # Safety
/// `token` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_genai_unstage(token: *const c_char) -> OnnxProtectStatus {
    call(|| {
        if token.is_null() {
            return Err(Failure::argument("token is NULL"));
        }
        // SAFETY: NUL-terminated by the caller's contract.
        let t = unsafe { CStr::from_ptr(token) }.to_string_lossy();
        if onnx_protect_genai::unstage(&t) {
            Ok(())
        } else {
            Err(Failure::argument(format!("no staging of token '{t}'")))
        }
    })
}
