//! The native half of the Python package `onnx_protect` (`onnx_protect._native`).
//!
//! Every verb runs with the GIL released (`Python::detach`). Keys live in Rust
//! ([`Key`], wiped on drop). A model decrypted by `load` reaches Python as one
//! `bytes` object filled in place from the decrypted map (one copy), and external
//! data files as [`Buffer`]s: read-only views of the decrypted private maps, without
//! any copy, zeroed by `Buffer.close()` or when they are collected.
//!
//! Errors become the exception classes below, one per `onnx_protect_core::ErrorKind`,
//! each with the kind's stable name in its `kind` attribute. The pure-Python half
//! (`python/onnx_protect/__init__.py`) adds the onnxruntime session and the PyTorch
//! export on top.

use pyo3::prelude::*;

mod buffer;
mod errors;
mod genai;
mod key;
mod load;
mod session;
mod verbs;

pub(crate) use buffer::fill_byte_view;
pub use buffer::Buffer;
pub(crate) use errors::{exception, py_err, py_err_at};
pub(crate) use key::signers;
pub use key::Key;
pub use load::{DecryptedModel, ExternalTensor};

/// The native module `onnx_protect._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Key>()?;
    m.add_class::<Buffer>()?;
    m.add_class::<ExternalTensor>()?;
    m.add_class::<DecryptedModel>()?;
    m.add_function(wrap_pyfunction!(verbs::encrypt, m)?)?;
    m.add_function(wrap_pyfunction!(verbs::decrypt, m)?)?;
    m.add_function(wrap_pyfunction!(verbs::verify, m)?)?;
    m.add_function(wrap_pyfunction!(verbs::inspect, m)?)?;
    m.add_function(wrap_pyfunction!(verbs::keygen, m)?)?;
    m.add_function(wrap_pyfunction!(verbs::fingerprint_secret, m)?)?;
    m.add_function(wrap_pyfunction!(verbs::new_key, m)?)?;
    m.add_function(wrap_pyfunction!(load::load, m)?)?;
    m.add_function(wrap_pyfunction!(key::check_encrypt_key, m)?)?;
    m.add_function(wrap_pyfunction!(session::session_model, m)?)?;
    m.add_function(wrap_pyfunction!(session::session_files, m)?)?;
    m.add_class::<session::SessionModel>()?;
    m.add_class::<session::TensorView>()?;
    m.add_class::<session::SessionFiles>()?;
    m.add_function(wrap_pyfunction!(genai::genai_stage, m)?)?;
    m.add_function(wrap_pyfunction!(genai::genai_unstage, m)?)?;
    m.add_function(wrap_pyfunction!(genai::genai_folder, m)?)?;
    // Whether this library was built optimised (a release or wheel profile), for benchmarks
    // that must not time a debug build (bench/python_session.py).
    m.add("RELEASE_BUILD", !cfg!(debug_assertions))?;
    m.add("OnnxProtectError", py.get_type::<errors::OnnxProtectError>())?;
    m.add("FileError", py.get_type::<errors::FileError>())?;
    m.add("MalformedModel", py.get_type::<errors::MalformedModel>())?;
    m.add("InvalidKey", py.get_type::<errors::InvalidKey>())?;
    m.add("InvalidPolicy", py.get_type::<errors::InvalidPolicy>())?;
    m.add("AlreadyProtected", py.get_type::<errors::AlreadyProtected>())?;
    m.add("NotProtected", py.get_type::<errors::NotProtected>())?;
    m.add("UnsupportedVersion", py.get_type::<errors::UnsupportedVersion>())?;
    m.add("BadManifest", py.get_type::<errors::BadManifest>())?;
    m.add("WrongKey", py.get_type::<errors::WrongKey>())?;
    m.add("Modified", py.get_type::<errors::Modified>())?;
    m.add("OutputError", py.get_type::<errors::OutputError>())?;
    m.add("NotSigned", py.get_type::<errors::NotSigned>())?;
    m.add("AlreadyDecrypted", py.get_type::<errors::AlreadyDecrypted>())?;
    m.add("LicenceError", py.get_type::<errors::LicenceError>())?;
    m.add("LicenceMissing", py.get_type::<errors::LicenceMissing>())?;
    m.add("LicenceMalformed", py.get_type::<errors::LicenceMalformed>())?;
    m.add("LicenceBadSignature", py.get_type::<errors::LicenceBadSignature>())?;
    m.add("LicenceExpired", py.get_type::<errors::LicenceExpired>())?;
    m.add("LicenceNotYetValid", py.get_type::<errors::LicenceNotYetValid>())?;
    m.add("LicenceWrongModel", py.get_type::<errors::LicenceWrongModel>())?;
    m.add("LicenceWrongDevice", py.get_type::<errors::LicenceWrongDevice>())?;
    m.add("ClockSetBack", py.get_type::<errors::ClockSetBack>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
