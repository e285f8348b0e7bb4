//! Protected model files from C: opening and checking one, its facts, trusted signers,
//! verifying and decrypting it, and the decrypted model's bytes and external files.

use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use onnx_protect_core::error::CoreError;
use onnx_protect_core::memory::InMemory;
use onnx_protect_core::protect;
use onnx_protect_format::NoProgress;
use onnx_protect_keys::SignerKey;
use onnx_protect_session::{lay_out, FileBuffer, LaidOut};
use zeroize::Zeroizing;

use crate::{
    at, call, call_out, key_failure, path_arg, str_arg, Failure, Held, OnnxProtectFile, OnnxProtectKey,
    OnnxProtectModel, OnnxProtectStatus,
};

/// Opens the model at `path` and checks that it is protected (its manifest is read
/// and validated against the model; nothing is decrypted, no key is needed).
///
/// # Safety
/// `path` is a NUL-terminated string; `out` is valid for a pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_open(path: *const c_char, out: *mut *mut OnnxProtectFile) -> OnnxProtectStatus {
    let make = || {
        // SAFETY: the caller's contract.
        let path = unsafe { path_arg(path, "path") }?;
        let model = onnx_protect_core::protection::open_protected(&path, &NoProgress).map_err(|e| at(&path, e))?;
        let info = protect::protection_info(&model)
            .map_err(|e| at(&path, e))?
            .ok_or_else(|| at(&path, CoreError::NotProtected))?;
        drop(model);
        let file = OnnxProtectFile {
            path,
            format_version: info.format_version,
            tiers: info.tiers.max(1),
            restored_tiers: info.restored_tiers,
            tensors: info.tensors.len(),
            encrypted_bytes: info.encrypted_bytes,
            signers: Vec::new(),
        };
        Ok(file)
    };
    // SAFETY: the caller's contract.
    unsafe { call_out(out, make) }
}

/// The format version of an open file's manifest (1 or 2); 0 for `NULL`.
///
/// # Safety
/// `file` is `NULL` or an open file not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_file_format_version(file: *const OnnxProtectFile) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { file.as_ref() }.map_or(0, |f| f.format_version)
}

/// The number of access tiers of an open file (1 for an untiered model); 0 for `NULL`.
///
/// # Safety
/// `file` is `NULL` or an open file not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_file_tiers(file: *const OnnxProtectFile) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { file.as_ref() }.map_or(0, |f| f.tiers)
}

/// The tiers already decrypted in the file (`decrypt --tier`); 0 for `NULL`.
///
/// # Safety
/// `file` is `NULL` or an open file not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_file_restored_tiers(file: *const OnnxProtectFile) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { file.as_ref() }.map_or(0, |f| f.restored_tiers)
}

/// The number of encrypted tensors; 0 for `NULL`.
///
/// # Safety
/// `file` is `NULL` or an open file not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_file_tensors(file: *const OnnxProtectFile) -> usize {
    // SAFETY: the caller's contract.
    unsafe { file.as_ref() }.map_or(0, |f| f.tensors)
}

/// The number of encrypted bytes; 0 for `NULL`.
///
/// # Safety
/// `file` is `NULL` or an open file not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_file_encrypted_bytes(file: *const OnnxProtectFile) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { file.as_ref() }.map_or(0, |f| f.encrypted_bytes)
}

/// Trusts a publisher (`onnx-protect-signer1...`): from now on, verifying and
/// decrypting `file` require a valid signature of one of the trusted publishers.
///
/// # Safety
/// `file` is an open file not yet freed, used by no other thread during the call;
/// `signer` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_file_trust_signer(
    file: *mut OnnxProtectFile,
    signer: *const c_char,
) -> OnnxProtectStatus {
    call(|| {
        // SAFETY: the caller's contract.
        let file = unsafe { file.as_mut() }.ok_or_else(|| Failure::argument("file is NULL"))?;
        // SAFETY: the caller's contract.
        let text = unsafe { str_arg(signer, "signer") }?;
        let key = SignerKey::parse(text).map_err(|e| key_failure(format!("signer {text}: {e}")))?;
        file.signers.push(key);
        Ok(())
    })
}

/// Verifies an open file as it is now on disk: with `key`, every MAC the key allows;
/// with `key` `NULL`, the keyless content digest (format 2) or checksums (format 1).
///
/// # Safety
/// `file` is an open file and `key` `NULL` or a key, neither freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_file_verify(
    file: *const OnnxProtectFile,
    key: *const OnnxProtectKey,
) -> OnnxProtectStatus {
    call(|| {
        // SAFETY: the caller's contract.
        let file = unsafe { file.as_ref() }.ok_or_else(|| Failure::argument("file is NULL"))?;
        // SAFETY: the caller's contract.
        let key = unsafe { key.as_ref() }.map(|k| &k.source);
        protect::verify_signed(&file.path, key, &file.signers, &NoProgress).map_err(|e| at(&file.path, e))?;
        Ok(())
    })
}

/// The arguments of a decryption, checked: the file, the key, the tier (`None` for 0).
///
/// # Safety
/// As the decryption calls': `file` and `key` NULL or live handles.
unsafe fn decrypt_args<'h>(
    file: *const OnnxProtectFile,
    key: *const OnnxProtectKey,
    tier: u32,
) -> Result<(&'h OnnxProtectFile, &'h OnnxProtectKey, Option<u32>), Failure> {
    // SAFETY: the caller's contract.
    let file = unsafe { file.as_ref() }.ok_or_else(|| Failure::argument("file is NULL"))?;
    // SAFETY: the caller's contract.
    let key = unsafe { key.as_ref() }.ok_or_else(|| Failure::argument("key is NULL"))?;
    Ok((file, key, if tier == 0 { None } else { Some(tier) }))
}

/// Verifies and decrypts an open file into memory, as it is now on disk. `tier` 0
/// decrypts every tier the key reaches; a lower `tier` stops there (tiered models).
/// The key check and every MAC are verified before anything is decrypted; nothing is
/// written to disk. Release the result with `onnx_protect_model_free`.
///
/// # Safety
/// `file` is an open file and `key` a key, neither freed yet; `out` is valid for a
/// pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_file_decrypt(
    file: *const OnnxProtectFile,
    key: *const OnnxProtectKey,
    tier: u32,
    out: *mut *mut OnnxProtectModel,
) -> OnnxProtectStatus {
    let make = || {
        // SAFETY: the caller's contract.
        let (file, key, tier) = unsafe { decrypt_args(file, key, tier) }?;
        let m = InMemory::file(&file.path, &key.source)
            .tier(tier)
            .signers(&file.signers)
            .load()
            .map_err(|e| at(&file.path, e))?;
        let (model, external) = m.into_parts();
        let external = external
            .into_iter()
            .map(|(loc, data)| {
                let loc =
                    CString::new(loc).map_err(|_| Failure::argument("an external data location holds a NUL byte"))?;
                let n = data.len();
                Ok((loc, Held::Decrypted(data), n))
            })
            .collect::<Result<Vec<_>, Failure>>()?;
        Ok(OnnxProtectModel { model: Held::Decrypted(model), external })
    };
    // SAFETY: the caller's contract.
    unsafe { call_out(out, make) }
}

/// Verifies and decrypts an open file for an onnxruntime session: the model data
/// (`onnx_protect_model_data`) is then the graph, which holds no tensor of 1 KiB or more,
/// and the external files (`onnx_protect_model_external`) are the buffers those tensors
/// are read from, each under the name the graph gives it (names new in the process).
/// Hand the files to `AddExternalInitializersFromFilesInMemory` (with the session config
/// entry `session.use_external_initializer_file_buffers_directly` set to `"1"`,
/// onnxruntime 1.31 and later reads them in place; earlier releases copy them) and the
/// graph to `CreateSessionFromArray`, then call `onnx_protect_model_settle`; keep the
/// model until the session is released. External data files, and the model file's own
/// weights of 64 KiB or more when it is at least 16 MiB, are filled on demand where the
/// system allows it (Linux `userfaultfd`); every byte is verified before onnxruntime uses it, and one that
/// does not match is read as zeros and makes this call or `onnx_protect_model_settle`
/// fail. `tier` as for `onnx_protect_file_decrypt`.
///
/// # Safety
/// `file` is an open file and `key` a key, neither freed yet; `out` is valid for a
/// pointer write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_file_decrypt_for_session(
    file: *const OnnxProtectFile,
    key: *const OnnxProtectKey,
    tier: u32,
    out: *mut *mut OnnxProtectModel,
) -> OnnxProtectStatus {
    // SAFETY: the caller's contract, the same.
    unsafe { onnx_protect_file_decrypt_for_session_with(file, key, tier, 0, out) }
}

/// Flag of `onnx_protect_file_decrypt_for_session_with`: a chunk of the external files
/// filled on demand is verified when onnxruntime first reads it, and
/// `onnx_protect_model_settle` hashes none it has not read; a changed chunk first read
/// after settling ends the process (one line on standard error), as one changed on disk
/// after the session was built does (docs/runtime.md).
pub const ONNX_PROTECT_VERIFY_ON_READ: u32 = 1;

/// Flag of `onnx_protect_file_decrypt_for_session_with`: onnxruntime reads few weights
/// while it builds the session (the session config entry `session.disable_prepacking` set
/// to `"1"`): only what it reads is filled, and a few chunks stay until settling.
pub const ONNX_PROTECT_READS_FEW: u32 = 2;

/// `onnx_protect_file_decrypt_for_session` with `flags`: 0, or `ONNX_PROTECT_VERIFY_ON_READ`
/// and `ONNX_PROTECT_READS_FEW` or'ed together (any other bit is an invalid argument).
///
/// # Safety
/// As `onnx_protect_file_decrypt_for_session`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_file_decrypt_for_session_with(
    file: *const OnnxProtectFile,
    key: *const OnnxProtectKey,
    tier: u32,
    flags: u32,
    out: *mut *mut OnnxProtectModel,
) -> OnnxProtectStatus {
    let make = || {
        if flags & !(ONNX_PROTECT_VERIFY_ON_READ | ONNX_PROTECT_READS_FEW) != 0 {
            return Err(Failure::argument(format!("flags {flags:#x}: unknown bits")));
        }
        // SAFETY: the caller's contract.
        let (file, key, tier) = unsafe { decrypt_args(file, key, tier) }?;
        let at_file = |e: CoreError| at(&file.path, e);
        let (m, index) = InMemory::file(&file.path, &key.source)
            .tier(tier)
            .signers(&file.signers)
            .on_demand(true)
            .model_on_demand(true)
            .verify_on_read(flags & ONNX_PROTECT_VERIFY_ON_READ != 0)
            .reads_few(flags & ONNX_PROTECT_READS_FEW != 0)
            .load_for_session()
            .map_err(at_file)?;
        let mut m = m;
        let skeleton = m.take_skeleton();
        let (model, external) = m.into_parts();
        let (graph, buffers) = lay_out(&index, model, skeleton, external, "onnx-protect-c")
            .and_then(LaidOut::into_buffers)
            .map_err(at_file)?;
        let mut files = Vec::with_capacity(buffers.len());
        for (name, b) in buffers {
            let name = CString::new(name).map_err(|_| Failure::argument("a file name holds a NUL byte"))?;
            let len = b.bytes().len();
            files.push((name, Held::File(b), len));
        }
        let graph = Held::Graph(Zeroizing::new(graph));
        Ok(OnnxProtectModel { model: graph, external: files })
    };
    // SAFETY: the caller's contract.
    unsafe { call_out(out, make) }
}

/// Once the session is created from a model of `onnx_protect_file_decrypt_for_session`:
/// verifies every chunk of its external files filled on demand that onnxruntime has not
/// read yet, and keeps from then on every chunk read. `ONNX_PROTECT_MODIFIED` when a
/// chunk did not match (it was read as zeros): release that session. `ONNX_PROTECT_OK`
/// for any other model.
///
/// # Safety
/// `model` is a model not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_model_settle(model: *const OnnxProtectModel) -> OnnxProtectStatus {
    call(|| {
        // SAFETY: the caller's contract.
        let m = unsafe { model.as_ref() }.ok_or_else(|| Failure::argument("model is NULL"))?;
        for (_, held, _) in &m.external {
            if let Held::Decrypted(d) | Held::File(FileBuffer::Decrypted(d, _)) = held {
                d.settle().map_err(|e| at(std::path::Path::new("the model's external data"), e))?;
            }
        }
        Ok(())
    })
}

/// Releases an open file. `NULL` is accepted.
///
/// # Safety
/// `file` is `NULL` or an open file not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_file_free(file: *mut OnnxProtectFile) {
    if !file.is_null() {
        // SAFETY: made by `Box::into_raw` in this library and not freed yet (contract).
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(file) })));
    }
}

/// The decrypted model file's bytes; `*len` receives their length. `NULL` (and
/// `*len` 0) for a `NULL` model. Valid until `onnx_protect_model_free`.
///
/// # Safety
/// `model` is `NULL` or a model not yet freed; `len` is `NULL` or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_model_data(model: *const OnnxProtectModel, len: *mut usize) -> *const u8 {
    // SAFETY: the caller's contract.
    let (ptr, n) = match unsafe { model.as_ref() } {
        Some(m) => (m.model.as_ptr(), m.model.len()),
        None => (std::ptr::null(), 0),
    };
    if !len.is_null() {
        // SAFETY: non-null and writable by the caller's contract.
        unsafe { *len = n };
    }
    ptr
}

/// The number of external data files of a decrypted model (0 for `NULL`).
///
/// # Safety
/// `model` is `NULL` or a model not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_model_external_count(model: *const OnnxProtectModel) -> usize {
    // SAFETY: the caller's contract.
    unsafe { model.as_ref() }.map_or(0, |m| m.external.len())
}

/// External data file `index` (in the order of their locations' bytes): its
/// `location` as written in the model, its decrypted bytes and their length. The
/// pointers are valid until `onnx_protect_model_free`.
///
/// # Safety
/// `model` is a model not yet freed; `location`, `data` and `len` are valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_model_external(
    model: *const OnnxProtectModel,
    index: usize,
    location: *mut *const c_char,
    data: *mut *const u8,
    len: *mut usize,
) -> OnnxProtectStatus {
    call(|| {
        if location.is_null() || data.is_null() || len.is_null() {
            return Err(Failure::argument("location, data and len must not be NULL"));
        }
        // SAFETY: all three are non-null and writable by the caller's contract.
        unsafe {
            *location = std::ptr::null();
            *data = std::ptr::null();
            *len = 0;
        }
        // SAFETY: the caller's contract.
        let m = unsafe { model.as_ref() }.ok_or_else(|| Failure::argument("model is NULL"))?;
        let (loc, bytes, n) = m.external.get(index).ok_or_else(|| {
            Failure::argument(format!("external file {index} does not exist (the model has {})", m.external.len()))
        })?;
        // SAFETY: checked above.
        unsafe {
            *location = loc.as_ptr();
            *data = bytes.as_ptr();
            *len = *n;
        }
        Ok(())
    })
}

/// Releases a decrypted model: every decrypted byte is overwritten with zeros first.
/// `NULL` is accepted.
///
/// # Safety
/// `model` is `NULL` or a model not yet freed; no pointer into it is used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn onnx_protect_model_free(model: *mut OnnxProtectModel) {
    if !model.is_null() {
        // SAFETY: made by `Box::into_raw` in this library and not freed yet (contract).
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(model) })));
    }
}
