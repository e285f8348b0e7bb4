//! onnxruntime sessions for Rust's [`ort`] crate from models protected by onnx-protect,
//! decrypted in memory, with the large weights used in place.
//!
//! [`commit_from_file`] decrypts the model (every byte authenticated first). With
//! onnxruntime 1.31 or later, every large tensor reaches onnxruntime as external data in
//! files given from memory (`AddExternalInitializersFromMemory` over the decrypted
//! buffers, read in place under `session.use_external_initializer_file_buffers_directly`;
//! `onnx_protect_session::files`), so the graph holds no weight bytes. With earlier
//! releases, which copy such files, it builds with
//! `onnx_protect_session::prepare` the graph onnxruntime is handed (shared tensors point
//! at the sentinel `.`, every other tensor's data is in it), and adds each shared tensor
//! with `SessionBuilder::with_initializer` as an `OrtValue` created over the decrypted
//! buffer (`CreateTensorWithDataAsOrtValue`: no copy). onnxruntime uses those buffers for
//! as long as the session lives, so the [`ProtectedSession`] owns them and drops the
//! session first. If onnxruntime refuses the shared graph, the session is built again
//! from a graph holding every tensor (a copy, as `commit_from_memory` of a plain model).
//!
//! libonnxruntime is opened at run time (`ort`'s `load-dynamic`): [`environment`] finds
//! it with [`find_onnxruntime`] (`ORT_DYLIB_PATH`, else the library the onnxruntime
//! Python wheel ships) and builds ort's one environment of the process.
//!
//! Nothing is written to disk: the options that would make onnxruntime write the
//! decrypted model (`optimized_model_filepath`) or an EP context model
//! (`ep.context_enable`) are switched off after the caller's options, so a builder that
//! set them still writes nothing.
//!
//! `unsafe` is used for the calls ort has no safe form of (an owned `OrtValue` over
//! memory ort does not own, external data files over memory it does not own); each
//! states its contract.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Mutex;

use onnx_protect_core::error::{CoreError, ErrorKind};
use onnx_protect_core::memory::{DecryptedBytes, InMemory, Method, Skeleton};
use onnx_protect_format::{DataType, FormatError};
use onnx_protect_session::{lay_out, prepare, Arena, LaidOut, Options, Prepared, Shared, Source, MIN_SHAREABLE};
use ort::environment::Environment;
use ort::memory::{Allocator, MemoryInfo};
use ort::session::builder::SessionBuilder;
use ort::session::Session;
use ort::sys::ONNXTensorElementDataType as Elem;
use ort::value::DynValue;
use ort::AsPointer;

pub use onnx_protect_core::keys::KeySource;
pub use onnx_protect_keys::SignerKey;

/// What went wrong, and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The protected model could not be opened, authenticated or decrypted.
    #[error("{}: {source}", path.display())]
    Model {
        path: PathBuf,
        #[source]
        source: CoreError,
    },
    /// onnxruntime refused the session (or an option).
    #[error("onnxruntime: {0}")]
    Ort(String),
    /// No libonnxruntime was found, or it could not be loaded.
    #[error("{0}")]
    Library(String),
}

impl Error {
    /// The kind of a model error (wrong key, modified, ...), as the CLI's exit codes
    /// and the other loaders tell them apart.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Model { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

fn ort_err<R>(e: ort::Error<R>) -> Error {
    Error::Ort(e.message().to_string())
}

/// The libonnxruntime to open: `ORT_DYLIB_PATH` when set (it must name a file), else
/// the one in the `capi` directory of the onnxruntime Python package that
/// `ONNX_PROTECT_PYTHON` (default `python3`) imports.
pub fn find_onnxruntime() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Library(format!("ORT_DYLIB_PATH={}: no such file", p.display())))
        };
    }
    let python = std::env::var_os("ONNX_PROTECT_PYTHON").unwrap_or_else(|| "python3".into());
    const FIND: &str = "import glob, os, onnxruntime\n\
        d = os.path.join(os.path.dirname(onnxruntime.__file__), 'capi')\n\
        print((sorted(glob.glob(os.path.join(d, 'libonnxruntime.so*'))) + sorted(glob.glob(os.path.join(d, 'libonnxruntime*.dylib'))) + [''])[0])";
    let not_found = |why: String| {
        Error::Library(format!(
            "libonnxruntime not found ({why}): set ORT_DYLIB_PATH to it, or install the onnxruntime Python wheel, which ships it"
        ))
    };
    let out = std::process::Command::new(&python)
        .args(["-c", FIND])
        .output()
        .map_err(|e| not_found(format!("cannot run {}: {e}", python.to_string_lossy())))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || text.is_empty() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("no library in the package");
        return Err(not_found(format!("{}: {last}", python.to_string_lossy())));
    }
    Ok(PathBuf::from(text))
}

/// ort's environment (one per process), built the first time from the library
/// [`find_onnxruntime`] gives; later calls return the same one.
pub fn environment() -> Result<Environment, Error> {
    static ENV: Mutex<Option<Environment>> = Mutex::new(None);
    let mut env = ENV.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(e) = env.as_ref() {
        return Ok(e.clone());
    }
    let lib = find_onnxruntime()?;
    let _ = LIBRARY_VERSION.set(library_version(&lib));
    let built = ort::init_from(&lib)
        .map_err(|e| Error::Library(format!("cannot load {}: {e}", lib.display())))?
        .with_name("onnx-protect")
        .build()
        .map_err(ort_err)?;
    *env = Some(built.clone());
    Ok(built)
}

/// The decrypted buffers that shared tensors point into (zeroed when dropped).
struct Held {
    model: Option<DecryptedBytes>,
    external: BTreeMap<String, DecryptedBytes>,
    arena: Option<Arena>,
}

impl Held {
    fn slice(&self, source: &Source, range: &std::ops::Range<usize>) -> Option<&[u8]> {
        match source {
            Source::Model => self.model.as_deref().and_then(|b| b.get(range.clone())),
            Source::External(l) => self.external.get(l).and_then(|b| b.get(range.clone())),
            Source::Arena => self.arena.as_ref().and_then(|a| a.bytes().get(range.clone())),
        }
    }
}

/// An ort [`Session`] of a protected model, holding the decrypted weights it uses in
/// place; it dereferences to the session. Dropping it drops the session, then wipes
/// the decrypted buffers.
pub struct ProtectedSession {
    // Field order matters: the session (and the OrtValues it holds) goes before the
    // buffers those values point into.
    session: Session,
    _held: Held,
    shared: usize,
    shared_bytes: u64,
    on_demand: bool,
    files: bool,
}

impl ProtectedSession {
    /// Whether the model's external data was filled on demand (see [`Load::on_demand`]).
    pub fn filled_on_demand(&self) -> bool {
        self.on_demand
    }

    /// Whether every large tensor reached onnxruntime as external data in files given
    /// from memory and read in place (onnxruntime 1.31 and later); otherwise the large
    /// `MatMul`/`Gemm` weights were added as initializers and the rest is in the graph.
    pub fn files_in_place(&self) -> bool {
        self.files
    }

    /// How many initializers onnxruntime uses in place (0 after the fallback).
    pub fn shared_initializers(&self) -> usize {
        self.shared
    }

    /// Their total size in bytes.
    pub fn shared_bytes(&self) -> u64 {
        self.shared_bytes
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }
}

impl Deref for ProtectedSession {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

impl DerefMut for ProtectedSession {
    fn deref_mut(&mut self) -> &mut Session {
        &mut self.session
    }
}

/// Reads a key file written by `onnx-protect keygen` (or 64 hex digits, or 32 raw bytes).
pub fn key_file(path: &Path) -> Result<KeySource, Error> {
    let at = |source: CoreError| Error::Model { path: path.to_path_buf(), source };
    let read = std::fs::read(path).map_err(|source| FormatError::Io { path: path.to_path_buf(), source });
    let bytes = zeroize::Zeroizing::new(read.map_err(|e| at(e.into()))?);
    let (source, _) = KeySource::from_key_file(&bytes).map_err(|e| at(e.into()))?;
    Ok(source)
}

/// A session of the protected model at `path`, opened with `key`, built by `builder`
/// (`Session::builder(&environment()?)?` with any options); see the crate documentation.
pub fn commit_from_file(builder: SessionBuilder, path: &Path, key: &KeySource) -> Result<ProtectedSession, Error> {
    commit_from_file_with(builder, path, key, None, &[])
}

/// [`commit_from_file`] with an access tier to open and the signers to require (a model
/// signed by none of them is refused, docs/format.md §10).
pub fn commit_from_file_with(
    builder: SessionBuilder,
    path: &Path,
    key: &KeySource,
    tier: Option<u32>,
    signers: &[SignerKey],
) -> Result<ProtectedSession, Error> {
    commit_from_file_as(builder, path, key, &Load { tier, signers, ..Load::default() })
}

/// How [`commit_from_file_as`] opens a model.
#[derive(Debug, Clone, Copy)]
pub struct Load<'a> {
    /// The access tier to open (default: the key's own).
    pub tier: Option<u32>,
    /// Signers of which one must have signed the model (none: no signature required).
    pub signers: &'a [SignerKey],
    /// External data files filled on demand where the system can (Linux `userfaultfd`,
    /// docs/runtime.md): each chunk checked against its hash and decrypted when onnxruntime
    /// first reads it, or a little before, so the time and peak memory stay near the plain
    /// file's; a chunk that does not match makes the load fail as modified. `false`:
    /// decrypted whole first (about 1.7 times the memory). Default `true`.
    pub on_demand: bool,
    /// With `on_demand`: each chunk of the external data files is verified when onnxruntime
    /// first reads it, and only the chunks filled while the session is built (read, or
    /// filled ahead) before it is returned (`InMemory::verify_on_read`): with prepacking off the session then takes
    /// less time (docs/performance.md), and a chunk that does not match, first read in a
    /// run, ends the process (one line on standard error), as a chunk changed on disk after
    /// the session was built always does. Default `false`.
    pub verify_on_read: bool,
    /// With `on_demand`: onnxruntime reads few weights while it builds the session (set it
    /// with `session.disable_prepacking` = `1`): only the blocks read, and read ahead of a
    /// reader in order, are filled, and a few stay before the session exists
    /// (`InMemory::reads_few`). Default `false`.
    pub reads_few: bool,
}

impl Default for Load<'_> {
    fn default() -> Self {
        Load { tier: None, signers: &[], on_demand: true, verify_on_read: false, reads_few: false }
    }
}

/// [`commit_from_file`] with the choices of `load`.
pub fn commit_from_file_as(
    builder: SessionBuilder,
    path: &Path,
    key: &KeySource,
    load: &Load<'_>,
) -> Result<ProtectedSession, Error> {
    let at = |source: CoreError| Error::Model { path: path.to_path_buf(), source };
    let Load { tier, signers, on_demand, verify_on_read, reads_few } = *load;
    // External data from the decrypted files, never from disk (the index reads none).
    // A model file's own large weights are filled on demand too where onnxruntime reads
    // them in place from files given from memory.
    let files = reads_files_in_place();
    let (mut decrypted, index) = InMemory::file(path, key)
        .tier(tier)
        .signers(signers)
        .on_demand(on_demand)
        .model_on_demand(on_demand && files)
        .verify_on_read(verify_on_read)
        .reads_few(reads_few)
        .load_for_session()
        .map_err(at)?;
    let on_demand =
        decrypted.method() == Method::OnDemand || decrypted.external().values().any(|d| d.method() == Method::OnDemand);
    let skeleton = decrypted.take_skeleton();
    let (model, external) = decrypted.into_parts();
    let builder = without_plaintext_writes(builder)?;
    if files {
        return from_files(builder, &index, model, skeleton, external, on_demand).map_err(|e| match e {
            FilesError::Core(c) => at(c),
            FilesError::Ort(o) => o,
        });
    }
    let fallback = builder.clone();
    // Handing a tensor over in place costs a few microseconds here: every shareable
    // tensor is shared (the Python loader's default threshold is larger, for its own
    // per-tensor cost).
    let opts = |share: bool| Options { share, min_bytes: MIN_SHAREABLE, ..Options::default() };
    let Prepared { graph, shared, arena } =
        prepare(&index, &model, |l| external.get(l).map(|d| &d[..]), &opts(true)).map_err(|e| at(e.into()))?;
    let mut held = Held { model: Some(model), external, arena: Some(arena) };
    // No graph planned: it is the model's bytes as they are, handed over from them.
    let attempt = match (&graph, &held.model) {
        (Some(g), _) => in_place(builder, g, &shared, &held),
        (None, Some(m)) => in_place(builder, m, &shared, &held),
        (None, None) => Err(Error::Ort("internal: the model was released".into())),
    };
    match attempt {
        Ok(session) => {
            drop(graph);
            // The session is built: what it reads from now on stays, and every chunk it did
            // not read is verified now (a chunk that did not match was read as zeros: the
            // session is thrown away).
            held.external.values().try_for_each(DecryptedBytes::settle).map_err(at)?;
            // Only the buffers that shared tensors point into stay.
            if !shared.iter().any(|s| s.source == Source::Model) {
                held.model = None;
            }
            held.external.retain(|l, _| shared.iter().any(|s| s.source == Source::External(l.clone())));
            let shared_bytes = shared.iter().map(|s| s.range.len() as u64).sum();
            Ok(ProtectedSession { session, _held: held, shared: shared.len(), shared_bytes, on_demand, files: false })
        }
        // onnxruntime refused the shared graph: every tensor in the graph instead.
        Err(_) if !shared.is_empty() => {
            drop(graph);
            let model = held.model.take().ok_or_else(|| Error::Ort("internal: the model was released".into()))?;
            let full = prepare(&index, &model, |l| held.external.get(l).map(|d| &d[..]), &opts(false))
                .map_err(|e| at(e.into()))?
                .graph
                .unwrap_or_else(|| model.to_vec());
            // Every chunk the graph holds was checked as it was read; the rest now.
            held.external.values().try_for_each(DecryptedBytes::settle).map_err(at)?;
            drop((model, std::mem::take(&mut held.external), held.arena.take()));
            let mut fallback = fallback;
            let session = fallback.commit_from_memory(&full).map_err(ort_err)?;
            Ok(ProtectedSession { session, _held: held, shared: 0, shared_bytes: 0, on_demand, files: false })
        }
        Err(e) => Err(e),
    }
}

/// `(major, minor)` of the libonnxruntime [`environment`] loaded, read from the library
/// (`OrtGetApiBase()->GetVersionString()`); unset when the environment was built
/// elsewhere, `None` when the library did not say.
static LIBRARY_VERSION: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();

/// The version libonnxruntime at `path` reports.
fn library_version(path: &Path) -> Option<(u32, u32)> {
    // SAFETY: loading libonnxruntime runs no code beyond its initialisers (ort loads the
    // same file next); `OrtGetApiBase` takes no argument and returns a pointer to a static
    // table whose `GetVersionString` returns a static NUL-terminated string.
    let text = unsafe {
        let lib = libloading::Library::new(path).ok()?;
        let get: libloading::Symbol<'_, unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase").ok()?;
        let base = get();
        if base.is_null() {
            return None;
        }
        let v = ((*base).GetVersionString)();
        if v.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned()
    };
    let mut parts = text.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(Some(major)), Some(Some(minor))) => Some((major, minor)),
        _ => None,
    }
}

/// Whether the libonnxruntime loaded reads external data files given from memory in
/// place ([`onnx_protect_session::files::DIRECT`], onnxruntime 1.31 and later; earlier
/// releases copy them). Known only for an environment made by [`environment`].
fn reads_files_in_place() -> bool {
    matches!(LIBRARY_VERSION.get(), Some(Some(v)) if *v >= (1, 31))
}

enum FilesError {
    Core(CoreError),
    Ort(Error),
}

impl From<CoreError> for FilesError {
    fn from(e: CoreError) -> Self {
        FilesError::Core(e)
    }
}

impl From<Error> for FilesError {
    fn from(e: Error) -> Self {
        FilesError::Ort(e)
    }
}

/// The session with every large tensor as external data in files handed over from
/// memory and read in place by onnxruntime (`onnx_protect_session::files`); the graph
/// holds no weight bytes, so no graph optimisation can read ciphertext or a sentinel.
fn from_files(
    mut builder: SessionBuilder,
    index: &onnx_protect_format::Model,
    model: DecryptedBytes,
    skeleton: Option<Skeleton>,
    external: BTreeMap<String, DecryptedBytes>,
    on_demand: bool,
) -> Result<ProtectedSession, FilesError> {
    let laid = lay_out(index, model, skeleton, external, "onnx-protect-ort")?;
    let lens: Vec<usize> = laid.plan.files.iter().map(|f| laid.len(&f.source)).collect();
    let LaidOut { plan, model, external } = laid;
    let held = Held { model: Some(model), external, arena: Some(plan.arena) };
    builder = builder.with_config_entry(onnx_protect_session::files::DIRECT, "1").map_err(ort_err)?;
    let mut tensors = 0u64;
    for (f, len) in plan.files.iter().zip(lens) {
        let data = held
            .slice(&f.source, &(0..len))
            .ok_or_else(|| Error::Ort(format!("internal: file '{}' is outside its buffer", f.name)))?;
        add_file_in_memory(&mut builder, &f.name, data)?;
        tensors += len as u64;
    }
    let session = builder.commit_from_memory(&plan.graph).map_err(ort_err)?;
    // The session is built: what it reads from now on stays, and every chunk it did not
    // read is verified now (a chunk that did not match was read as zeros: the session is
    // thrown away).
    held.model.iter().chain(held.external.values()).try_for_each(DecryptedBytes::settle)?;
    Ok(ProtectedSession { session, _held: held, shared: plan.tensors, shared_bytes: tensors, on_demand, files: true })
}

/// Gives `data` to the builder's options as the external data file `name`
/// (`AddExternalInitializersFromMemory`). The caller keeps `data` alive, unmoved and
/// unchanged for as long as the options or any session made from them live.
fn add_file_in_memory(builder: &mut SessionBuilder, name: &str, data: &[u8]) -> Result<(), Error> {
    let name = std::ffi::CString::new(name).map_err(|_| Error::Ort(format!("internal: file name '{name}'")))?;
    let names = [name.as_ptr()];
    let buffers = [data.as_ptr().cast_mut().cast::<std::ffi::c_char>()];
    let lengths = [data.len()];
    // SAFETY: the options pointer is the builder's live `OrtSessionOptions`; the three
    // arrays hold one valid element each and live across the call; onnxruntime only reads
    // the buffer (the caller keeps it alive and unchanged as documented above) and copies
    // the name.
    let status = unsafe {
        (ort::api().AddExternalInitializersFromMemory)(
            builder.ptr_mut(),
            names.as_ptr(),
            buffers.as_ptr(),
            lengths.as_ptr(),
            1,
        )
    };
    // SAFETY: `status` was just returned by an ort-sys call.
    unsafe { ort::Error::result_from_status(status) }.map_err(ort_err)
}

/// The session of `graph` with each of `shared` added in place from `held`.
fn in_place(mut builder: SessionBuilder, graph: &[u8], shared: &[Shared], held: &Held) -> Result<Session, Error> {
    for s in shared {
        let data = held
            .slice(&s.source, &s.range)
            .ok_or_else(|| Error::Ort(format!("internal: tensor '{}' is outside its buffer", s.name)))?;
        builder = builder.with_initializer(&s.name, value_over(data, s)?).map_err(ort_err)?;
    }
    builder.commit_from_memory(graph).map_err(ort_err)
}

/// The caller's options, with what would write the decrypted model or an EP context
/// model to disk switched off (set last, so it wins).
fn without_plaintext_writes(builder: SessionBuilder) -> Result<SessionBuilder, Error> {
    builder.with_optimized_model_path("").map_err(ort_err)?.with_config_entry("ep.context_enable", "0").map_err(ort_err)
}

/// onnxruntime's element type for a shared tensor (the types `SHARED_USES` lists).
fn element_type(t: DataType) -> Option<Elem> {
    Some(match t {
        DataType::Float => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
        DataType::Float16 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
        DataType::Double => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE,
        DataType::Int8 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,
        DataType::Uint8 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
        DataType::Int16 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16,
        DataType::Int32 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,
        DataType::Int64 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,
        _ => return None,
    })
}

/// An `OrtValue` over `data` (no copy). The caller keeps `data` alive, unmoved and
/// unchanged for as long as the value or any session it is added to lives.
fn value_over(data: &[u8], s: &Shared) -> Result<DynValue, Error> {
    let ty = element_type(s.data_type).ok_or_else(|| {
        Error::Ort(format!("internal: tensor '{}' of type {:?} cannot be shared", s.name, s.data_type))
    })?;
    let dims = s
        .dims
        .iter()
        .map(|&d| i64::try_from(d).map_err(|_| Error::Ort(format!("tensor '{}': dimension {d} is too large", s.name))))
        .collect::<Result<Vec<i64>, Error>>()?;
    let info = MemoryInfo::default();
    let mut out: *mut ort::sys::OrtValue = std::ptr::null_mut();
    // SAFETY: `info` is a live CPU memory info; `data` is valid for `data.len()` bytes
    // (onnxruntime checks that the dims and type fit in it and never writes to an
    // initializer); `dims` lives across the call; `out` receives the new value.
    let status = unsafe {
        (ort::api().CreateTensorWithDataAsOrtValue)(
            info.ptr(),
            data.as_ptr().cast_mut().cast::<c_void>(),
            data.len(),
            dims.as_ptr(),
            dims.len(),
            ty,
            &mut out,
        )
    };
    // SAFETY: `status` was just returned by an ort-sys call.
    unsafe { ort::Error::result_from_status(status) }.map_err(ort_err)?;
    let ptr = NonNull::new(out).ok_or_else(|| Error::Ort("CreateTensorWithDataAsOrtValue gave no value".into()))?;
    // SAFETY: `ptr` is the valid OrtValue just created, owned by nothing else; it is a
    // CPU tensor, so the default CPU allocator describes it. Dropping the value releases
    // the OrtValue only: a value created over caller memory never frees that memory.
    Ok(unsafe { DynValue::from_ptr(ptr, Some(&Allocator::default())) })
}
