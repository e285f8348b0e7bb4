//! The custom-ops entry point through which the sessions onnxruntime-genai creates get
//! decrypted external data files from memory, read in place.
//!
//! onnxruntime-genai builds its own `OrtSessionOptions` from `genai_config.json` and takes
//! a model's graph from memory (`OgaConfigAddModelData`), but reads external data from
//! disk: it offers no way to hand over files in memory. What it does offer is a model
//! section's `session_options.custom_ops_library`, a shared library that onnxruntime opens
//! and whose `RegisterCustomOps(options, api)` it calls with the very options the session
//! is created from. A library that links this crate (the Python package's native module,
//! the C library) is such a library: [`RegisterCustomOps`] reads the config entry
//! [`ENTRY`] (`TOKEN` tab `PATH`) and gives the options the files staged under `TOKEN` by
//! [`stage`] (`AddExternalInitializersFromFilesInMemory`, read in place under
//! `session.use_external_initializer_file_buffers_directly` from onnxruntime 1.31 on) and
//! switches EP context models off.
//!
//! onnxruntime-genai opens a custom-ops library only from the model folder (or the current
//! directory), so the loader puts a copy of its library in the private folder it creates
//! the config from; onnxruntime opens that copy, a second instance with statics of its
//! own. The copy finds the instance that staged the files, the one the application
//! loaded, at `PATH` (already loaded: `dlopen(RTLD_NOLOAD)`), and calls its
//! [`onnx_protect_genai_add_files`]. docs/genai.md tells the whole way.

use std::any::Any;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::{Mutex, PoisonError};

use ort_sys::{OrtApi, OrtApiBase, OrtErrorCode, OrtSessionOptions, OrtStatus, OrtStatusPtr};

/// The session config entry naming the staged files: `TOKEN\tPATH`.
pub const ENTRY: &str = "onnx_protect.genai";

/// The session config entry under which onnxruntime (1.31 and later) reads external data
/// files given from memory in place.
pub const DIRECT: &str = "session.use_external_initializer_file_buffers_directly";

/// The onnxruntime API version asked for (`AddExternalInitializersFromFilesInMemory`
/// is in it; onnxruntime 1.18 and later serve it).
const API_VERSION: u32 = 18;

/// One staging: every file of every model of a folder, and what keeps them alive.
struct Staged {
    names: Vec<CString>,
    /// Address and length of each file, in `names`' order.
    data: Vec<(usize, usize)>,
    _keep: Box<dyn Any + Send>,
}

static STAGED: Mutex<Option<HashMap<String, Staged>>> = Mutex::new(None);

fn lock() -> std::sync::MutexGuard<'static, Option<HashMap<String, Staged>>> {
    STAGED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A file name with a NUL byte, which onnxruntime cannot take.
#[derive(Debug)]
pub struct BadName(pub String);

impl std::fmt::Display for BadName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "external data file name {:?} holds a NUL byte", self.0)
    }
}

impl std::error::Error for BadName {}

/// Stages `files` (`(location, address, length)`) for the sessions onnxruntime-genai is
/// about to create, with `keep`, which must keep every file's bytes alive, unmoved and
/// unchanged until [`unstage`] (and, onnxruntime reading them in place, for the sessions'
/// life). Returns the token to put, with the library's path, in the config entry
/// [`ENTRY`].
pub fn stage(files: Vec<(String, *const u8, usize)>, keep: Box<dyn Any + Send>) -> Result<String, BadName> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut staged = Staged { names: Vec::new(), data: Vec::new(), _keep: keep };
    for (name, ptr, len) in files {
        staged.names.push(CString::new(name.as_str()).map_err(|_| BadName(name))?);
        staged.data.push((ptr as usize, len));
    }
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let token = format!("{}.{n}", std::process::id());
    lock().get_or_insert_with(HashMap::new).insert(token.clone(), staged);
    Ok(token)
}

/// Drops a staging (its `keep` with it); false if there was none of that token.
pub fn unstage(token: &str) -> bool {
    lock().as_mut().and_then(|m| m.remove(token)).is_some()
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
    for (k, v) in [(DIRECT, "1"), ("ep.context_enable", "0")] {
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
