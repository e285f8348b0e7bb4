use std::path::Path;

use onnx_protect_core::error::LicenceKind;
use onnx_protect_core::error::{CoreError, ErrorKind};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

/// The package's exception classes, each `Name(Base) => "docstring"`: a class of the module
/// `onnx_protect` (pyo3's `create_exception!`).
macro_rules! exceptions {
    ($($name:ident($base:ty) => $doc:literal;)*) => {
        $(create_exception!(onnx_protect, $name, $base, $doc);)*
    };
}

exceptions! {
    OnnxProtectError(PyException) => "Base class of every onnx-protect error.";
    FileError(OnnxProtectError) => "Reading or writing a file failed (kind `io`).";
    MalformedModel(OnnxProtectError) =>
        "The model or its external data is invalid or unsafe to read (kind: the reader's own, e.g. `truncated`).";
    InvalidKey(OnnxProtectError) => "The key is unusable or of the wrong sort (kind `key`).";
    InvalidPolicy(OnnxProtectError) => "The policy or an override is invalid (kind `policy`).";
    AlreadyProtected(OnnxProtectError) => "The model is protected already.";
    NotProtected(OnnxProtectError) => "The model carries no onnx-protect manifest.";
    UnsupportedVersion(OnnxProtectError) => "The manifest's format version is not read here.";
    BadManifest(OnnxProtectError) => "The protection manifest is malformed.";
    WrongKey(OnnxProtectError) => "No recipient of the model matches the key given.";
    Modified(OnnxProtectError) => "A MAC, digest or checksum does not match: the model changed after it was protected.";
    OutputError(OnnxProtectError) => "The output cannot be written as asked.";
    NotSigned(OnnxProtectError) => "No valid signature of a trusted signer is on the model.";
    AlreadyDecrypted(OnnxProtectError) => "The key's tiers are already in clear in this file.";
    LicenceError(OnnxProtectError) =>
        "The model needs a licence of its publisher and the one given does not let it open.";
    LicenceMissing(LicenceError) => "The model needs a licence and none was given.";
    LicenceMalformed(LicenceError) => "The licence text is malformed or unreadable.";
    LicenceBadSignature(LicenceError) => "The licence's signature does not verify, or it is by another authority.";
    LicenceExpired(LicenceError) => "The licence has expired.";
    LicenceNotYetValid(LicenceError) => "The licence is not valid yet.";
    LicenceWrongModel(LicenceError) => "The licence names other models.";
    LicenceWrongDevice(LicenceError) => "The licence is for another recipient or device.";
    ClockSetBack(LicenceError) =>
        "The system clock is behind a time already reached, or the recorded clock state is unusable.";
}

fn licence_exception(kind: LicenceKind, msg: String) -> PyErr {
    match kind {
        LicenceKind::Missing => LicenceMissing::new_err(msg),
        LicenceKind::Malformed => LicenceMalformed::new_err(msg),
        LicenceKind::BadSignature => LicenceBadSignature::new_err(msg),
        LicenceKind::Expired => LicenceExpired::new_err(msg),
        LicenceKind::NotYetValid => LicenceNotYetValid::new_err(msg),
        LicenceKind::WrongModel => LicenceWrongModel::new_err(msg),
        LicenceKind::WrongDevice => LicenceWrongDevice::new_err(msg),
        LicenceKind::Clock => ClockSetBack::new_err(msg),
        _ => LicenceError::new_err(msg),
    }
}

/// The Python exception for a core error: the class of its kind, the message with
/// its causes, and `kind` set to the kind's stable name.
pub(crate) fn py_err(e: CoreError) -> PyErr {
    raise(e, None)
}

/// The command line's wording in a library message, put as this package's arguments
/// (a Python user has no flags to pass).
const PYTHON_WORDING: &[(&str, &str)] = &[
    ("; pass --in-place to overwrite it", "; write the output to another path"),
    (" (or use --in-place)", ""),
    ("; pass --force to replace it", "; remove it first or write to another path"),
    ("--mode '*=fp' or --mode '*=dp'", "mode='fp' or mode='dp'"),
    ("(for example --mode ", "(for example mode='"),
    ("omit --tier", "omit tier"),
    ("(--recipient)", "(recipients=)"),
    ("keygen --fingerprint-secret writes one", "onnx_protect.fingerprint_secret() writes one"),
    ("--coefficient ", "coefficient "),
    ("--mode ", "mode "),
    ("--subsequences ", "subsequences "),
];

/// `msg` with the command line's flags replaced by this package's arguments.
fn pythonize(msg: String) -> String {
    let mut out = msg;
    for (cli, py) in PYTHON_WORDING {
        if out.contains(cli) {
            out = out.replace(cli, py);
            if *py == "(for example mode='" {
                // "(for example --mode OP=fp)" -> "(for example mode='OP=fp')"
                if let Some(i) = out.find("(for example mode='") {
                    if let Some(j) = out[i..].find(')') {
                        out.insert(i + j, '\'');
                    }
                }
            }
        }
    }
    out
}

fn raise(e: CoreError, path: Option<&Path>) -> PyErr {
    exception(e.kind(), pythonize(onnx_protect_core::error::with_causes_at(&e, path)))
}

/// The package's exception for an error of `kind`, with its message and its `kind`.
pub(crate) fn exception(kind: ErrorKind, msg: String) -> PyErr {
    let err = match kind {
        ErrorKind::Io => FileError::new_err(msg),
        ErrorKind::Model(_) => MalformedModel::new_err(msg),
        ErrorKind::Key => InvalidKey::new_err(msg),
        ErrorKind::Policy => InvalidPolicy::new_err(msg),
        ErrorKind::AlreadyProtected => AlreadyProtected::new_err(msg),
        ErrorKind::NotProtected => NotProtected::new_err(msg),
        ErrorKind::UnsupportedVersion => UnsupportedVersion::new_err(msg),
        ErrorKind::BadManifest => BadManifest::new_err(msg),
        ErrorKind::WrongKey => WrongKey::new_err(msg),
        ErrorKind::Modified => Modified::new_err(msg),
        // A broken invariant keeps the exception it had as an output error (its `kind` tells).
        ErrorKind::Output | ErrorKind::Internal => OutputError::new_err(msg),
        ErrorKind::NotSigned => NotSigned::new_err(msg),
        ErrorKind::AlreadyDecrypted => AlreadyDecrypted::new_err(msg),
        ErrorKind::Licence(l) => licence_exception(l, msg),
        _ => OnnxProtectError::new_err(msg),
    };
    Python::attach(|py| {
        // Setting an attribute on a fresh exception instance cannot fail in practice;
        // if it did, the exception is still raised, without `kind`.
        let _ = err.value(py).setattr("kind", kind.as_str());
    });
    err
}

/// [`py_err`] for an error about the file at `path`: the message names it (once).
pub(crate) fn py_err_at(path: &Path, e: CoreError) -> PyErr {
    raise(e, Some(path))
}

pub(crate) fn key_err(msg: impl Into<String>) -> PyErr {
    exception(ErrorKind::Key, msg.into())
}
