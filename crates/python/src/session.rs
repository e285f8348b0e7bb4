//! What `onnx_protect.InferenceSession` hands to onnxruntime: the graph (a `bytes`
//! object) and the shared initializers, each a read-only [`TensorView`] of decrypted
//! memory held in Rust (no copy), built by `onnx_protect_session::prepare`.

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use onnx_protect_core::error::{CoreError, ErrorKind};
use onnx_protect_core::memory::{DecryptedBytes, InMemory, Skeleton};
use onnx_protect_format::{DataType, Model};
use onnx_protect_session::{lay_out, prepare, Arena, LaidOut, Options, Source, MIN_SHARED};
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::{ffi, IntoPyObjectExt};

use crate::{exception, py_err, py_err_at, Key};

/// The decrypted buffers that shared tensors point into; freed (and wiped) when the
/// last [`TensorView`] and the [`SessionModel`] are gone.
pub(crate) struct Held {
    /// The index of the model, to build the graph again; dropped by `release()`.
    index: Mutex<Option<Model>>,
    /// The decrypted model bytes and external files. `release()` drops those that no
    /// shared tensor points into; the others stay until the last view is gone.
    model: Mutex<Option<DecryptedBytes>>,
    external: Mutex<BTreeMap<String, DecryptedBytes>>,
    arena: Arena,
    /// The graph planned by `session_model` (with shared tensors if any), until `graph()`
    /// hands it out; `None` from the start when the graph is the model's bytes as they are
    /// (`whole`).
    planned: Mutex<Option<Vec<u8>>>,
    /// The graph is the decrypted model's bytes (nothing shared, no external data).
    whole: bool,
    /// The smallest tensor shared.
    min_shared: u64,
}

impl Held {
    /// Address and length of `range` of a source buffer. The buffer's heap bytes never
    /// move and are never dropped while a view of them exists (`release()` keeps them).
    fn slice(&self, source: &Source, range: &Range<usize>) -> Option<(*const u8, usize)> {
        let pick = |b: &[u8]| b.get(range.clone()).map(|s| (s.as_ptr(), s.len()));
        match source {
            Source::Model => lock(&self.model).as_deref().and_then(pick),
            Source::External(l) => lock(&self.external).get(l).and_then(|d| pick(d)),
            Source::Arena => pick(self.arena.bytes()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A read-only view of one shared tensor's bytes (`raw_data` layout), exported through
/// the buffer protocol without a copy; it keeps the decrypted buffer alive.
#[pyclass(module = "onnx_protect", frozen)]
pub struct TensorView {
    held: Arc<Held>,
    source: Source,
    range: Range<usize>,
}

#[pymethods]
impl TensorView {
    fn __len__(&self) -> usize {
        self.range.len()
    }

    /// # Safety
    /// Called by the interpreter with a valid `view` to fill, as the buffer protocol says.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no view to fill"));
        }
        if (flags & ffi::PyBUF_WRITABLE) == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("decrypted tensors are read-only"));
        }
        let me = slf.get();
        let (ptr, len) = me
            .held
            .slice(&me.source, &me.range)
            .ok_or_else(|| PyBufferError::new_err("the tensor's buffer is gone"))?;
        let len = isize::try_from(len).map_err(|_| PyBufferError::new_err("buffer too large"))?;
        // SAFETY: `view` is non-null and owned by the caller for the duration of the
        // export; the bytes live in `held`, which this object (kept by `view.obj`) owns a
        // reference to and which is never mutated.
        unsafe { crate::fill_byte_view(view, slf.into_any().into_ptr(), ptr, len, flags) }
        Ok(())
    }

    /// # Safety
    /// Called by the interpreter once per successful `__getbuffer__`.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}

/// A protected model decrypted for an onnxruntime session: `graph()` (bytes for
/// `InferenceSession`) and `shared` (initializers to add in place).
#[pyclass(module = "onnx_protect")]
pub struct SessionModel {
    held: Arc<Held>,
    /// `(name, numpy dtype, dims, view)` of each shared tensor.
    shared: Vec<(String, &'static str, Vec<u64>, Py<TensorView>)>,
    /// The sources shared tensors point into (kept by `release()`).
    used: Vec<Source>,
    /// The model's path (or "the model bytes"), for errors.
    what: PathBuf,
}

/// The numpy dtype of an element type that onnx_protect_session may share.
fn numpy_dtype(t: DataType) -> Option<&'static str> {
    Some(match t {
        DataType::Float => "float32",
        DataType::Float16 => "float16",
        DataType::Double => "float64",
        DataType::Int8 => "int8",
        DataType::Uint8 => "uint8",
        DataType::Int16 => "int16",
        DataType::Int32 => "int32",
        DataType::Int64 => "int64",
        _ => return None,
    })
}

#[pymethods]
impl SessionModel {
    /// `[(name, numpy dtype, dims, TensorView)]`: the initializers to add in place.
    #[getter]
    fn shared(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        self.shared
            .iter()
            .map(|(n, d, dims, v)| (n.as_str(), *d, dims.clone(), v.clone_ref(py)).into_py_any(py))
            .collect()
    }

    /// The graph for onnxruntime: with `share`, shared tensors point at `.` (and are
    /// added from `shared`); without, every tensor's data is in it (the fallback).
    /// Refused after `release()`.
    #[pyo3(signature = (*, share))]
    fn graph(&self, py: Python<'_>, share: bool) -> PyResult<Py<PyBytes>> {
        // The graph planned first is this one when it shares what is asked (with nothing
        // shared, both graphs are the same).
        if share || self.shared.is_empty() {
            if let Some(graph) = lock(&self.held.planned).take() {
                return Ok(PyBytes::new(py, &graph).unbind());
            }
            if self.held.whole {
                let model = lock(&self.held.model);
                let bytes = model
                    .as_deref()
                    .ok_or_else(|| exception(ErrorKind::Output, "the decrypted model was released".into()))?;
                return Ok(PyBytes::new(py, bytes).unbind());
            }
        }
        let held = Arc::clone(&self.held);
        let opts = Options { share, min_bytes: held.min_shared, ..Options::default() };
        // `None`: the decrypted model was released.
        let plan = py.detach(|| -> Result<_, CoreError> {
            let index = lock(&held.index);
            let model = lock(&held.model);
            let external = lock(&held.external);
            let (Some(index), Some(bytes)) = (index.as_ref(), model.as_deref()) else { return Ok(None) };
            Ok(Some(prepare(index, bytes, |l| external.get(l).map(|d| &d[..]), &opts)?.graph_bytes(bytes).to_vec()))
        });
        let graph = plan
            .map_err(py_err)?
            .ok_or_else(|| exception(ErrorKind::Output, "the decrypted model was released".into()))?;
        Ok(PyBytes::new(py, &graph).unbind())
    }

    /// Keeps from now on what is filled of external files filled on demand (the session
    /// is built) and verifies every chunk of them not read so far: an error if a chunk did
    /// not match (it was read as zeros: the session must be thrown away). Then drops (and
    /// wipes) every decrypted byte that no shared tensor points into; the graph cannot be
    /// built again afterwards.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        settle(py, &self.held, &self.what)?;
        *lock(&self.held.index) = None;
        if !self.used.contains(&Source::Model) {
            *lock(&self.held.model) = None;
        }
        lock(&self.held.external).retain(|l, _| self.used.contains(&Source::External(l.clone())));
        Ok(())
    }

    /// Names of the model's initializers (any graph) that are not shared; refused after
    /// `release()`.
    #[getter]
    fn unshared_initializers(&self) -> PyResult<Vec<String>> {
        let index = lock(&self.held.index);
        let index =
            index.as_ref().ok_or_else(|| exception(ErrorKind::Output, "the decrypted model was released".into()))?;
        let shared: std::collections::HashSet<&str> = self.shared.iter().map(|s| s.0.as_str()).collect();
        Ok(index
            .tensors
            .iter()
            .filter(|t| t.origin == onnx_protect_format::Origin::Initializer && !shared.contains(t.name.as_str()))
            .map(|t| t.name.clone())
            .collect())
    }

    /// How the external data files are held: `"on_demand"` (filled as read), `"memory"`
    /// (decrypted whole), or `None` for a model without external data.
    #[getter]
    fn external_method(&self) -> Option<&'static str> {
        external_method(&self.held)
    }
}

impl SessionFiles {
    /// `(location, address, length)` of each file, for the onnxruntime C API.
    pub(crate) fn raw_files(&self) -> Vec<(String, *const u8, usize)> {
        self.files
            .iter()
            .filter_map(|(n, v)| {
                let v = v.get();
                self.held.slice(&v.source, &v.range).map(|(p, l)| (n.clone(), p, l))
            })
            .collect()
    }

    /// What keeps the files alive.
    pub(crate) fn held(&self) -> Arc<Held> {
        Arc::clone(&self.held)
    }
}

/// Decrypts `source` (a path, or the protected model's bytes with external data
/// resolved in the current directory, as onnxruntime does for models given as bytes)
/// and plans the session. With `share`, tensors of at least `min_shared` bytes are shared
/// where no optimiser reads them; with `share` and `on_demand`, the external data files of
/// a model read from a path are filled on demand where the system can, each chunk
/// verified before the session is returned or, with `verify_on_read`, when first read
/// (`InMemory::verify_on_read`).
#[pyfunction]
#[pyo3(signature = (source, *, key, tier=None, signers=Vec::new(), share=true, on_demand=true, min_shared=MIN_SHARED, verify_on_read=false, reads_few=false))]
#[allow(clippy::too_many_arguments)] // the keyword arguments of InferenceSession
pub fn session_model(
    py: Python<'_>,
    source: Bound<'_, PyAny>,
    key: PyRef<'_, Key>,
    tier: Option<u32>,
    signers: Vec<String>,
    share: bool,
    on_demand: bool,
    min_shared: u64,
    verify_on_read: bool,
    reads_few: bool,
) -> PyResult<SessionModel> {
    // Shared tensors stay in the decrypted buffers for the session's life: external files
    // are then filled on demand where the system can.
    let (what, index, model_bytes, external, _) = decrypt_source(
        py,
        source,
        key,
        tier,
        signers,
        Filling { on_demand: share && on_demand, model: false, verify_on_read, reads_few },
    )?;
    let opts = Options { share, min_bytes: min_shared, ..Options::default() };
    let plan = py
        .detach(|| prepare(&index, &model_bytes, |l| external.get(l).map(|x| &x[..]), &opts))
        .map_err(|e| py_err_at(&what, CoreError::Format(e)))?;
    // No graph planned: it is the model's bytes as they are, handed over from them.
    let whole = plan.graph.is_none();
    let used: Vec<Source> = plan.shared.iter().map(|s| s.source.clone()).collect();
    let held = Arc::new(Held {
        index: Mutex::new(Some(index)),
        model: Mutex::new(Some(model_bytes)),
        external: Mutex::new(external),
        arena: plan.arena,
        planned: Mutex::new(plan.graph),
        whole,
        min_shared,
    });
    let mut shared = Vec::with_capacity(plan.shared.len());
    for s in plan.shared {
        let dtype = numpy_dtype(s.data_type)
            .ok_or_else(|| py_err(CoreError::Internal("a shared tensor of a type numpy has not")))?;
        let view = Py::new(py, TensorView { held: Arc::clone(&held), source: s.source, range: s.range })?;
        shared.push((s.name, dtype, s.dims, view));
    }
    Ok(SessionModel { held, shared, used, what })
}

/// A protected model decrypted for an onnxruntime session whose large tensors are
/// external data in files handed over from memory (`onnx_protect_session::files`): the
/// graph, once, and the files.
#[pyclass(module = "onnx_protect")]
pub struct SessionFiles {
    held: Arc<Held>,
    /// `(location, view)` of each file onnxruntime is handed.
    files: Vec<(String, Py<TensorView>)>,
    /// How many tensors are external in the graph.
    #[pyo3(get)]
    tensors: usize,
    what: PathBuf,
}

#[pymethods]
impl SessionFiles {
    /// `[(location, TensorView)]`: the files to hand onnxruntime from memory.
    #[getter]
    fn files(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        self.files.iter().map(|(n, v)| (n.as_str(), v.clone_ref(py)).into_py_any(py)).collect()
    }

    /// The graph for onnxruntime (handed out once: the object keeps no copy of it).
    fn graph(&self, py: Python<'_>) -> PyResult<Py<PyBytes>> {
        let graph = lock(&self.held.planned)
            .take()
            .ok_or_else(|| exception(ErrorKind::Output, "the graph was handed out already".into()))?;
        Ok(PyBytes::new(py, &graph).unbind())
    }

    /// Keeps from now on what is filled of external files filled on demand (the session
    /// is built) and verifies every chunk of them not read so far: an error if a chunk did
    /// not match (it was read as zeros: the session must be thrown away).
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        settle(py, &self.held, &self.what)
    }

    /// How the external data files are held: `"on_demand"` (filled as read), `"memory"`
    /// (decrypted whole), or `None` for a model without external data.
    #[getter]
    fn external_method(&self) -> Option<&'static str> {
        external_method(&self.held)
    }

    /// After `release()`: drops what is filled of the external files filled on demand (a
    /// later read fills it again, verified and decrypted anew), for sessions that keep
    /// their own packed copy of the weights they read.
    fn trim(&self) {
        lock(&self.held.model).iter().for_each(DecryptedBytes::trim);
        lock(&self.held.external).values().for_each(DecryptedBytes::trim);
    }

    /// How the model file's large tensors are held: `"on_demand"` (filled as read, the
    /// graph built from the rest of the file) or `"memory"` (decrypted whole).
    #[getter]
    fn model_method(&self) -> &'static str {
        match lock(&self.held.model).as_ref().map(DecryptedBytes::method) {
            Some(onnx_protect_core::memory::Method::OnDemand) => "on_demand",
            _ => "memory",
        }
    }
}

/// Settles the model file and external files filled on demand (see `release`) and drops
/// the graph not handed out.
fn settle(py: Python<'_>, held: &Arc<Held>, what: &std::path::Path) -> PyResult<()> {
    let held2 = Arc::clone(held);
    py.detach(|| {
        lock(&held2.model).iter().try_for_each(DecryptedBytes::settle)?;
        lock(&held2.external).values().try_for_each(DecryptedBytes::settle)
    })
    .map_err(|e| py_err_at(what, e))?;
    *lock(&held.planned) = None;
    Ok(())
}

fn external_method(held: &Held) -> Option<&'static str> {
    lock(&held.external).values().next().map(|d| match d.method() {
        onnx_protect_core::memory::Method::OnDemand => "on_demand",
        _ => "memory",
    })
}

/// Decrypts `source` as [`session_model`] does and plans a session whose large tensors
/// are read by onnxruntime from the decrypted buffers as external data files in memory
/// (the model buffer's tensors moved to aligned offsets first).
#[pyfunction]
#[pyo3(signature = (source, *, key, tier=None, signers=Vec::new(), on_demand=true, verify_on_read=false, reads_few=false))]
#[allow(clippy::too_many_arguments)] // the keyword arguments of InferenceSession
pub fn session_files(
    py: Python<'_>,
    source: Bound<'_, PyAny>,
    key: PyRef<'_, Key>,
    tier: Option<u32>,
    signers: Vec<String>,
    on_demand: bool,
    verify_on_read: bool,
    reads_few: bool,
) -> PyResult<SessionFiles> {
    let (what, index, model_bytes, external, skeleton) = decrypt_source(
        py,
        source,
        key,
        tier,
        signers,
        Filling { on_demand, model: on_demand, verify_on_read, reads_few },
    )?;
    let laid = py
        .detach(|| lay_out(&index, model_bytes, skeleton, external, "onnx-protect"))
        .map_err(|e| py_err_at(&what, e))?;
    let lens: Vec<usize> = laid.plan.files.iter().map(|f| laid.len(&f.source)).collect();
    let LaidOut { plan, model, external } = laid;
    let held = Arc::new(Held {
        index: Mutex::new(None),
        model: Mutex::new(Some(model)),
        external: Mutex::new(external),
        arena: plan.arena,
        planned: Mutex::new(Some(plan.graph)),
        whole: false,
        min_shared: MIN_SHARED,
    });
    let mut files = Vec::with_capacity(plan.files.len());
    for (f, len) in plan.files.into_iter().zip(lens) {
        let view = Py::new(py, TensorView { held: Arc::clone(&held), source: f.source, range: 0..len })?;
        files.push((f.name, view));
    }
    Ok(SessionFiles { held, files, tensors: plan.tensors, what })
}

/// The decrypted model of `source` (a path, or the protected model's bytes with external
/// data resolved in the current directory): what it is called in errors, its index, the
/// model's bytes, the external files, and the skeleton of a model file filled on demand.
type Decrypted = (PathBuf, Model, DecryptedBytes, BTreeMap<String, DecryptedBytes>, Option<Skeleton>);

/// What of a model read from a path is filled on demand: its external data files
/// (`on_demand`), its own large tensors (`model`), each chunk verified when first read
/// (`verify_on_read`) rather than all before the session is returned, for a runtime that
/// reads few weights while it builds (`reads_few`, `InMemory::reads_few`).
struct Filling {
    on_demand: bool,
    model: bool,
    verify_on_read: bool,
    reads_few: bool,
}

fn decrypt_source(
    py: Python<'_>,
    source: Bound<'_, PyAny>,
    key: PyRef<'_, Key>,
    tier: Option<u32>,
    signers: Vec<String>,
    filling: Filling,
) -> PyResult<Decrypted> {
    let trusted = crate::signers(signers)?;
    let key_source = key.source.clone();
    drop(key);
    let input: Result<Vec<u8>, PathBuf> = match source.cast::<PyBytes>() {
        Ok(b) => Ok(b.as_bytes().to_vec()),
        Err(_) => Err(source.extract::<PathBuf>()?),
    };
    let what = match &input {
        Ok(_) => PathBuf::from("the model bytes"),
        Err(p) => p.clone(),
    };
    let (index, d) = py
        .detach(|| -> Result<_, CoreError> {
            match input {
                Err(path) => {
                    let (d, index) = InMemory::file(&path, &key_source)
                        .tier(tier)
                        .signers(&trusted)
                        .on_demand(filling.on_demand)
                        .model_on_demand(filling.model)
                        .verify_on_read(filling.verify_on_read)
                        .reads_few(filling.reads_few)
                        .load_for_session()?;
                    Ok((index, d))
                }
                Ok(bytes) => {
                    let cwd = std::env::current_dir().ok();
                    let model = Model::from_vec(bytes, cwd)?;
                    // Refused below the top tier of a label-locked model, as from a path.
                    let (d, index) =
                        InMemory::model(&model, &key_source).tier(tier).signers(&trusted).load_for_session()?;
                    // External data from the decrypted files, never from disk.
                    Ok((index, d))
                }
            }
        })
        .map_err(|e| py_err_at(&what, e))?;
    let mut d = d;
    let skeleton = d.take_skeleton();
    let (model_bytes, external) = d.into_parts();
    Ok((what, index, model_bytes, external, skeleton))
}
