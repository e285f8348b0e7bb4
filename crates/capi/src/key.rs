//! Keys from C: key bytes, key files, environment variables, passphrases, identity files,
//! and a licence beside a key.

use std::ffi::c_char;
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};

use onnx_protect_core::error::CoreError;
use onnx_protect_core::keys::KeySource;
use onnx_protect_crypto::KeyFile;
use zeroize::Zeroizing;

use crate::{bytes_arg, call_out, key_failure, path_arg, str_arg, Failure, OnnxProtectKey, OnnxProtectStatus};

/// A key from `len` bytes: 32 raw bytes, 64 hex digits, or the text of a key file.
/// The library keeps its own copy; the caller may wipe `data` afterwards.
///
/// # Safety
/// `data` is valid for reads of `len` bytes; `out` is valid for a pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_key_from_bytes(
    data: *const u8,
    len: usize,
    out: *mut *mut OnnxProtectKey,
) -> OnnxProtectStatus {
    // SAFETY: the caller's contract.
    unsafe {
        key_out(out, || {
            let bytes = bytes_arg(data, len, "data")?;
            let (source, _) = KeySource::from_key_file(bytes).map_err(|e| key_failure(format!("key bytes: {e}")))?;
            Ok(source)
        })
    }
}

/// A key from a key file (as `onnx-protect keygen` writes it; 64 hex digits or 32 raw
/// bytes are read too).
///
/// # Safety
/// `path` is a NUL-terminated string; `out` is valid for a pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_key_from_file(
    path: *const c_char,
    out: *mut *mut OnnxProtectKey,
) -> OnnxProtectStatus {
    // SAFETY: the caller's contract.
    unsafe {
        key_out(out, || {
            let (path, bytes) = secret_file(path, "key file")?;
            let (source, _) = KeySource::from_key_file(&bytes)
                .map_err(|e| key_failure(format!("key file {}: {e}", path.display())))?;
            Ok(source)
        })
    }
}

/// A key from the environment variable `name`: 64 hex digits or the text of a key file.
///
/// # Safety
/// `name` is a NUL-terminated string; `out` is valid for a pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_key_from_env(
    name: *const c_char,
    out: *mut *mut OnnxProtectKey,
) -> OnnxProtectStatus {
    // SAFETY: the caller's contract.
    unsafe {
        key_out(out, || {
            let var = str_arg(name, "name")?;
            // The variable named once: most of these errors name it already.
            let file = KeyFile::from_env(var).map_err(|e| {
                let m = e.to_string();
                key_failure(if m.contains(&format!("variable {var}")) {
                    m
                } else {
                    format!("environment variable {var}: {m}")
                })
            })?;
            Ok(KeySource::key(file.into_key()))
        })
    }
}

/// A passphrase of `len` bytes (stretched with the model's Argon2id parameters when
/// used). The library keeps its own copy.
///
/// # Safety
/// `data` is valid for reads of `len` bytes; `out` is valid for a pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_key_from_passphrase(
    data: *const u8,
    len: usize,
    out: *mut *mut OnnxProtectKey,
) -> OnnxProtectStatus {
    // SAFETY: the caller's contract.
    unsafe {
        key_out(out, || {
            let bytes = bytes_arg(data, len, "data")?;
            if bytes.is_empty() {
                return Err(key_failure("the passphrase is empty".into()));
            }
            Ok(KeySource::passphrase(Zeroizing::new(bytes.to_vec())))
        })
    }
}

/// An identity file: age X25519 identities (`AGE-SECRET-KEY-1...` lines, as `age-keygen`
/// writes them), one age plugin's identities (`AGE-PLUGIN-NAME-1...`, run through
/// `age-plugin-NAME`) or a TPM key file (`keygen --tpm`, the TPM named by
/// `ONNX_PROTECT_TPM_TCTI`; needs a build with the feature `tpm`).
///
/// # Safety
/// `path` is a NUL-terminated string; `out` is valid for a pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_key_from_identity_file(
    path: *const c_char,
    out: *mut *mut OnnxProtectKey,
) -> OnnxProtectStatus {
    // SAFETY: the caller's contract.
    unsafe {
        key_out(out, || {
            let (path, bytes) = secret_file(path, "identity file")?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| key_failure(format!("identity file {} is not UTF-8 text", path.display())))?;
            let tcti = onnx_protect_tpm::tcti_from_env();
            let id = onnx_protect_core::keys::parse_identity_file(
                text,
                &tcti,
                std::sync::Arc::new(onnx_protect_keys::NoPrompt),
            )
            .map_err(|e| key_failure(format!("identity file {}: {e}", path.display())))?;
            Ok(KeySource::new(id))
        })
    }
}

/// A copy of `key` with a licence (docs/shipping.md#licences), for models encrypted with a
/// licence authority: the licence file at `licence_path`; the latest time a check saw is
/// recorded in `$ONNX_PROTECT_LICENCE_CLOCK`, else `~/.local/state/onnx-protect/licence-clock`.
///
/// # Safety
/// `key` is a key from this library; `licence_path` a NUL-terminated string; `out` valid
/// for a pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_key_with_licence(
    key: *const OnnxProtectKey,
    licence_path: *const c_char,
    out: *mut *mut OnnxProtectKey,
) -> OnnxProtectStatus {
    // SAFETY: the caller's contract.
    unsafe {
        key_out(out, || {
            let key = key.as_ref().ok_or_else(|| Failure::argument("key is NULL"))?;
            let path = path_arg(licence_path, "licence_path")?;
            let mut text = Vec::new();
            std::fs::File::open(&path)
                .and_then(|f| f.take(onnx_protect_core::licence::MAX_LICENCE_LEN as u64 + 1).read_to_end(&mut text))
                .map_err(|e| {
                    CoreError::Licence(onnx_protect_core::licence::LicenceError::Malformed {
                        line: 0,
                        reason: format!("cannot read {}: {e}", path.display()),
                    })
                })?;
            let tcti = onnx_protect_tpm::tcti_from_env();
            onnx_protect_core::keys::with_licence(key.source.clone(), &text, None, &tcti)
                .map_err(|e| Failure::from(CoreError::from(e)))
        })
    }
}

/// Releases a key, zeroing it. `NULL` is accepted.
///
/// # Safety
/// `key` is `NULL` or a key from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_key_free(key: *mut OnnxProtectKey) {
    if !key.is_null() {
        // SAFETY: made by `Box::into_raw` in this library and not freed yet (contract).
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(key) })));
    }
}

/// A key made by `make`, handed out through `out`.
///
/// # Safety
/// `out` is valid for a pointer write; `make` may call this module's argument readers
/// (their contracts are the exported function's).
unsafe fn key_out(
    out: *mut *mut OnnxProtectKey,
    make: impl FnOnce() -> Result<KeySource, Failure>,
) -> OnnxProtectStatus {
    // SAFETY: the caller's contract.
    unsafe { call_out(out, || make().map(|source| OnnxProtectKey { source })) }
}

/// The path in `path` and the small secret file there (key or identities), read into
/// wiped memory.
///
/// # Safety
/// `path` is `NULL` or a NUL-terminated string valid for reads.
unsafe fn secret_file(path: *const c_char, what: &str) -> Result<(std::path::PathBuf, Zeroizing<Vec<u8>>), Failure> {
    // SAFETY: the caller's contract.
    let path = unsafe { path_arg(path, "path") }?;
    let cannot = |e: std::io::Error| key_failure(format!("cannot read {what} {}: {e}", path.display()));
    let file = std::fs::File::open(&path).map_err(cannot)?;
    let mut bytes = Zeroizing::new(Vec::new());
    let cap = onnx_protect_crypto::MAX_KEY_FILE_LEN as u64 + 1;
    file.take(cap).read_to_end(&mut bytes).map_err(cannot)?;
    Ok((path, bytes))
}
