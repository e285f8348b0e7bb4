use std::collections::BTreeMap;
use std::path::PathBuf;

use onnx_protect_core::error::CoreError;
use onnx_protect_core::memory::{DecryptedBytes, InMemory};
use onnx_protect_format::{Model, Origin, TensorData};
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::buffer::Buffer;
use crate::errors::py_err_at;
use crate::key::{signers, Key};

/// Where one external initializer's bytes are: for runtimes that take initializers
/// one by one (onnxruntime before 1.24.1).
#[pyclass(module = "onnx_protect", frozen, get_all)]
pub struct ExternalTensor {
    /// The initializer's name.
    name: String,
    /// The ONNX element type's name (`FLOAT`, `INT64`, ...).
    data_type: String,
    dims: Vec<u64>,
    /// The external file (`location` as written in the model).
    location: String,
    /// Byte offset of the tensor in that file.
    offset: u64,
    /// Byte length.
    length: u64,
}

#[pymethods]
impl ExternalTensor {
    fn __repr__(&self) -> String {
        format!(
            "<onnx_protect.ExternalTensor {} {} {:?} in {} at {}+{}>",
            self.name, self.data_type, self.dims, self.location, self.offset, self.length
        )
    }
}

/// A protected model decrypted in memory: `model` (bytes), `external` (location →
/// [`Buffer`]), `external_tensors` (where each external initializer lies).
#[pyclass(module = "onnx_protect")]
pub struct DecryptedModel {
    model: Option<Py<PyBytes>>,
    external: Vec<(String, Py<Buffer>)>,
    #[pyo3(get)]
    external_tensors: Vec<Py<ExternalTensor>>,
    /// Number of tensors that were decrypted.
    #[pyo3(get)]
    tensors: usize,
    /// Number of bytes that were decrypted.
    #[pyo3(get)]
    decrypted_bytes: u64,
}

#[pymethods]
impl DecryptedModel {
    /// The original model file's bytes (for a lower-tier key: with that key's tiers restored).
    #[getter]
    fn model(&self, py: Python<'_>) -> PyResult<Py<PyBytes>> {
        self.model.as_ref().map(|b| b.clone_ref(py)).ok_or_else(|| PyValueError::new_err("the model is closed"))
    }

    /// Every external data file, decrypted, by the `location` written in the model.
    #[getter]
    fn external<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (loc, buf) in &self.external {
            d.set_item(loc, buf.clone_ref(py))?;
        }
        Ok(d)
    }

    /// Drops this object's reference to the model bytes and closes every external
    /// buffer (zeroing it). Fails, changing nothing, while views of a buffer are alive.
    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        for (_, b) in &self.external {
            if b.borrow(py).exports > 0 {
                return Err(PyBufferError::new_err(
                    "views of an external buffer are still alive (release the memoryviews and arrays first)",
                ));
            }
        }
        for (_, b) in &self.external {
            b.borrow_mut(py).close()?;
        }
        self.model = None;
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&mut self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}

/// Decrypts the protected model at `path` into memory (no plaintext on disk), with
/// the GIL released while it works.
#[pyfunction]
#[pyo3(signature = (path, *, key, tier=None, signers=Vec::new()))]
pub(crate) fn load(
    py: Python<'_>,
    path: PathBuf,
    key: PyRef<'_, Key>,
    tier: Option<u32>,
    signers: Vec<String>,
) -> PyResult<DecryptedModel> {
    let trusted = self::signers(signers)?;
    let source = key.source.clone();
    drop(key);
    let (decrypted, tensors) = py
        .detach(|| -> Result<_, CoreError> {
            let m = InMemory::file(&path, &source).tier(tier).signers(&trusted).load()?;
            // The layout of external tensors is the same in the protected and the
            // decrypted model (encryption edits bytes in place, never moves them).
            let tensors =
                if m.external().is_empty() { Vec::new() } else { external_tensors(&Model::open(&path)?, m.external()) };
            Ok((m, tensors))
        })
        .map_err(|e| py_err_at(&path, e))?;
    if let Some(w) = decrypted.warning() {
        // Python's warnings machinery: shown once per call site by default, or turned into
        // an error with `warnings.simplefilter("error")`.
        let msg = std::ffi::CString::new(w).map_err(|e| PyValueError::new_err(e.to_string()))?;
        PyErr::warn(py, &py.get_type::<pyo3::exceptions::PyUserWarning>(), &msg, 1)?;
    }
    let tensors_done = decrypted.tensors();
    let decrypted_bytes = decrypted.decrypted_bytes();
    let (model, external) = decrypted.into_parts();
    let bytes = copy_to_bytes(py, &model)?;
    drop(model);
    let external = external
        .into_iter()
        .map(|(loc, data)| Ok((loc, Py::new(py, Buffer { data: Some(data), exports: 0 })?)))
        .collect::<PyResult<Vec<_>>>()?;
    let external_tensors = tensors.into_iter().map(|t| Py::new(py, t)).collect::<PyResult<Vec<_>>>()?;
    Ok(DecryptedModel { model: Some(bytes), external, external_tensors, tensors: tensors_done, decrypted_bytes })
}

/// One `bytes` object holding `src`, filled in place (one allocation, one copy), with
/// the GIL released during the copy.
fn copy_to_bytes(py: Python<'_>, src: &DecryptedBytes) -> PyResult<Py<PyBytes>> {
    let src: &[u8] = src;
    let b = PyBytes::new_with(py, src.len(), |buf| {
        py.detach(|| buf.copy_from_slice(src));
        Ok(())
    })?;
    Ok(b.unbind())
}

/// The external initializers of the protected `model`, each located in its file of
/// `decrypted`: a full decryption of a model whose external data files were renamed when
/// it was protected into its own folder names them as the original model did
/// (docs/format.md §3, `original_external_files`, one per file in the model's order).
fn external_tensors(model: &Model, decrypted: &BTreeMap<String, DecryptedBytes>) -> Vec<ExternalTensor> {
    let original = onnx_protect_core::format2::envelope::trailing_entry(model.bytes())
        .and_then(|(range, value)| onnx_protect_core::format2::envelope::parse_entry(value, range).ok())
        .map(|s| s.header.original_external_files)
        .unwrap_or_default();
    let location = |file: usize| {
        let protected = &model.external_files.get(file)?.location;
        let renamed =
            original.get(file).filter(|name| !decrypted.contains_key(protected) && decrypted.contains_key(*name));
        Some(renamed.unwrap_or(protected).clone())
    };
    model
        .tensors
        .iter()
        .filter(|t| matches!(t.origin, Origin::Initializer))
        .filter_map(|t| match &t.data {
            TensorData::External { file, range } => Some(ExternalTensor {
                name: t.name.clone(),
                data_type: t.data_type.name().to_string(),
                dims: t.dims.clone(),
                location: location(*file)?,
                offset: range.start,
                length: range.end - range.start,
            }),
            _ => None,
        })
        .collect()
}
