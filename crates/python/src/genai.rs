//! Protected onnxruntime-genai models: the decrypted external data files of
//! [`SessionFiles`] reach the sessions onnxruntime-genai creates, in place.
//!
//! onnxruntime-genai builds its own `OrtSessionOptions` from `genai_config.json` and
//! takes a model's graph from memory (`Config.add_model_data`), but reads external data
//! from disk: it offers no way to hand over files in memory. What it does offer is
//! `session_options.custom_ops_library`, a shared library that onnxruntime opens and
//! whose `RegisterCustomOps(options, api)` it calls with the very options the session is
//! created from. This module is that library: [`RegisterCustomOps`] reads the config
//! entry [`ENTRY`] (`TOKEN` tab `PATH`), and gives the options the files staged under
//! `TOKEN` by [`genai_stage`] (`AddExternalInitializersFromFilesInMemory`, read in
//! place under `session.use_external_initializer_file_buffers_directly`) and switches
//! EP context models off.
//!
//! onnxruntime-genai opens a custom-ops library only from the model folder (or the
//! current directory), so the Python loader puts a copy of this module in the private
//! folder it creates the `Config` from; onnxruntime opens that copy, a second instance
//! with statics of its own. The copy finds the instance that staged the files, the one
//! Python imported, at `PATH` (already loaded: `dlopen(RTLD_NOLOAD)`), and calls its
//! [`onnx_protect_genai_add_files`].

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::{Arc, Mutex, PoisonError};

use ort_sys::{OrtApi, OrtApiBase, OrtErrorCode, OrtSessionOptions, OrtStatus, OrtStatusPtr};
use pyo3::prelude::*;

use crate::session::{Held, SessionFiles};

/// The session config entry naming the staged files: `TOKEN\tPATH`.
pub const ENTRY: &str = "onnx_protect.genai";

/// The onnxruntime API version asked for (`AddExternalInitializersFromFilesInMemory`
/// is in it; onnxruntime 1.18 and later serve it).
const API_VERSION: u32 = 18;

/// One staging: every file of every model of a folder, and what keeps them alive.
struct Staged {
    names: Vec<CString>,
    /// Address and length of each file, in `names`' order.
    data: Vec<(usize, usize)>,
    _held: Vec<Arc<Held>>,
}

static STAGED: Mutex<Option<HashMap<String, Staged>>> = Mutex::new(None);

/// Stages the files of `models` (each a `SessionFiles`) for the sessions onnxruntime-genai
/// is about to create; returns the token to put in the config entry [`ENTRY`]. The files
/// stay alive while staged (and while the `SessionFiles` objects live).
#[pyfunction]
pub fn genai_stage(models: Vec<PyRef<'_, SessionFiles>>) -> PyResult<String> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut staged = Staged { names: Vec::new(), data: Vec::new(), _held: Vec::new() };
    for m in &models {
        for (name, ptr, len) in m.raw_files() {
            let c = CString::new(name.as_str()).map_err(|_| {
                crate::exception(onnx_protect_core::error::ErrorKind::Output, format!("file name {name:?}"))
            })?;
            staged.names.push(c);
            staged.data.push((ptr as usize, len));
        }
        staged._held.push(m.held());
    }
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let token = format!("{}.{n}", std::process::id());
    lock().get_or_insert_with(HashMap::new).insert(token.clone(), staged);
    Ok(token)
}

/// Drops a staging (the sessions are created: onnxruntime holds what it reads).
#[pyfunction]
pub fn genai_unstage(token: &str) -> bool {
    lock().as_mut().and_then(|m| m.remove(token)).is_some()
}

fn lock() -> std::sync::MutexGuard<'static, Option<HashMap<String, Staged>>> {
    STAGED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A status for onnxruntime from `msg`.
///
/// # Safety
/// `api` is onnxruntime's API table.
unsafe fn status(api: &OrtApi, msg: &str) -> *mut OrtStatus {
    let c = CString::new(format!("onnx-protect: {msg}")).unwrap_or_default();
    // SAFETY: `CreateStatus` copies the NUL-terminated message.
    unsafe { (api.CreateStatus)(OrtErrorCode::ORT_FAIL, c.as_ptr()).0 }
}

/// The status pointer of an ort-sys call.
fn raw(s: OrtStatusPtr) -> *mut OrtStatus {
    s.0
}

/// Gives `options` the files staged under `token` in this instance, and the session
/// config entries that make onnxruntime read them in place and write no EP context.
///
/// # Safety
/// `options` is a live `OrtSessionOptions`, `api_base` onnxruntime's `OrtApiBase`,
/// `token` points to `token_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn onnx_protect_genai_add_files(
    options: *mut OrtSessionOptions,
    api_base: *const OrtApiBase,
    token: *const u8,
    token_len: usize,
) -> *mut OrtStatus {
    // SAFETY: as the caller promises.
    let Some(api) = (unsafe { api(api_base) }) else { return std::ptr::null_mut() };
    // SAFETY: as the caller promises.
    let token = unsafe { std::slice::from_raw_parts(token, token_len) };
    let token = String::from_utf8_lossy(token);
    let guard = lock();
    let Some(staged) = guard.as_ref().and_then(|m| m.get(token.as_ref())) else {
        // SAFETY: `api` is onnxruntime's table.
        return unsafe { status(api, &format!("no decrypted files are staged under '{token}'")) };
    };
    for (k, v) in [(onnx_protect_session::files::DIRECT, "1"), ("ep.context_enable", "0")] {
        let (k, v) = (CString::new(k).unwrap_or_default(), CString::new(v).unwrap_or_default());
        // SAFETY: `options` is live; the strings are NUL-terminated and copied.
        let s = raw(unsafe { (api.AddSessionConfigEntry)(options, k.as_ptr(), v.as_ptr()) });
        if !s.is_null() {
            return s;
        }
    }
    if staged.names.is_empty() {
        return std::ptr::null_mut();
    }
    let names: Vec<*const c_char> = staged.names.iter().map(|n| n.as_ptr()).collect();
    let buffers: Vec<*mut c_char> = staged.data.iter().map(|&(p, _)| p as *mut c_char).collect();
    let lengths: Vec<usize> = staged.data.iter().map(|&(_, l)| l).collect();
    // SAFETY: the three arrays have `names.len()` elements and live across the call;
    // onnxruntime copies the names and reads the buffers, which the staging (and then the
    // Python objects holding the `SessionFiles`) keep alive and unchanged.
    raw(unsafe {
        (api.AddExternalInitializersFromMemory)(
            options,
            names.as_ptr(),
            buffers.as_ptr(),
            lengths.as_ptr(),
            names.len(),
        )
    })
}

/// onnxruntime's API table, if it serves [`API_VERSION`].
///
/// # Safety
/// `base` is null or onnxruntime's `OrtApiBase`.
unsafe fn api<'a>(base: *const OrtApiBase) -> Option<&'a OrtApi> {
    // SAFETY: a non-null `base` is onnxruntime's, whose `GetApi` returns a static table or null.
    unsafe { base.as_ref().and_then(|b| (b.GetApi)(API_VERSION).as_ref()) }
}

/// The config entry `key` of `options`, if set.
///
/// # Safety
/// `options` is a live `OrtSessionOptions` and `api` onnxruntime's table.
unsafe fn config_entry(api: &OrtApi, options: *const OrtSessionOptions, key: &CStr) -> Option<String> {
    let mut has: c_int = 0;
    // SAFETY: `options` is live, `key` NUL-terminated, `has` writable.
    let s = raw(unsafe { (api.HasSessionConfigEntry)(options, key.as_ptr(), &mut has) });
    if !s.is_null() {
        // SAFETY: `s` was returned by onnxruntime and is released once.
        unsafe { (api.ReleaseStatus)(s) };
        return None;
    }
    if has == 0 {
        return None;
    }
    let mut size = 0usize;
    // SAFETY: a null buffer asks for the size (with the NUL).
    let s = raw(unsafe { (api.GetSessionConfigEntry)(options, key.as_ptr(), std::ptr::null_mut(), &mut size) });
    if !s.is_null() {
        // SAFETY: as above.
        unsafe { (api.ReleaseStatus)(s) };
    }
    let mut buf = vec![0u8; size.max(1)];
    // SAFETY: `buf` holds `size` writable bytes.
    let s = raw(unsafe { (api.GetSessionConfigEntry)(options, key.as_ptr(), buf.as_mut_ptr().cast(), &mut size) });
    if !s.is_null() {
        // SAFETY: as above.
        unsafe { (api.ReleaseStatus)(s) };
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// The custom-ops library entry point onnxruntime calls for the options of each session
/// onnxruntime-genai creates (see the module's text). Without the config entry [`ENTRY`]
/// it does nothing.
///
/// # Safety
/// Called by onnxruntime with live options and its `OrtApiBase`.
#[no_mangle]
pub unsafe extern "C" fn RegisterCustomOps(
    options: *mut OrtSessionOptions,
    api_base: *const OrtApiBase,
) -> *mut OrtStatus {
    // SAFETY: as onnxruntime promises.
    let Some(api) = (unsafe { api(api_base) }) else { return std::ptr::null_mut() };
    let key = CString::new(ENTRY).unwrap_or_default();
    // SAFETY: as onnxruntime promises.
    let Some(value) = (unsafe { config_entry(api, options, &key) }) else { return std::ptr::null_mut() };
    let Some((token, path)) = value.split_once('\t') else {
        // SAFETY: `api` is onnxruntime's table.
        return unsafe { status(api, &format!("session config entry {ENTRY} is not TOKEN<tab>PATH")) };
    };
    // The instance that staged the files: the module Python imported, already loaded.
    let flags = libloading::os::unix::RTLD_NOW | libc_rtld_noload();
    // SAFETY: opening a library that is already loaded runs no initialiser.
    let lib = match unsafe { libloading::os::unix::Library::open(Some(path), flags) } {
        Ok(l) => l,
        Err(e) => {
            // SAFETY: `api` is onnxruntime's table.
            return unsafe { status(api, &format!("the onnx_protect module at {path} is not loaded here: {e}")) };
        }
    };
    type AddFiles = unsafe extern "C" fn(*mut OrtSessionOptions, *const OrtApiBase, *const u8, usize) -> *mut OrtStatus;
    // SAFETY: the symbol is `onnx_protect_genai_add_files` of that module, of this type.
    let add: libloading::os::unix::Symbol<AddFiles> = match unsafe { lib.get(b"onnx_protect_genai_add_files\0") } {
        Ok(f) => f,
        // SAFETY: `api` is onnxruntime's table.
        Err(e) => return unsafe { status(api, &format!("{path}: {e}")) },
    };
    // SAFETY: as onnxruntime promises; the token lives across the call.
    let s = unsafe { add(options, api_base, token.as_ptr(), token.len()) };
    // The module stays loaded (Python holds it): dropping this handle only lowers its count.
    drop(lib);
    s
}

/// `RTLD_NOLOAD`: open only a library already loaded.
fn libc_rtld_noload() -> c_int {
    if cfg!(target_os = "macos") {
        0x10
    } else {
        4
    }
}
