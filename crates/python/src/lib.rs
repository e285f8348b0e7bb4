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

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::io::Read;
use std::path::{Path, PathBuf};

use onnx_protect_core::error::LicenceKind;
use onnx_protect_core::error::{CoreError, ErrorKind};
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::memory::{DecryptedBytes, InMemory};
use onnx_protect_core::protect::{self, DecryptOptions, EncryptOptions};
use onnx_protect_crypto::{KeyFile, KeyKind, MasterKey, MAX_KEY_FILE_LEN};
use onnx_protect_format::{Model, NoProgress, Origin, TensorData};
use std::sync::Arc;
use std::time::Duration;

use onnx_protect_keys::{Identity, KeyCommand, Pkcs11Key, SignerKey};
use onnx_protect_select::Policy;
use pyo3::exceptions::{PyBufferError, PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use pyo3::{create_exception, ffi};
use zeroize::Zeroizing;

mod genai;
mod session;

create_exception!(onnx_protect, OnnxProtectError, PyException, "Base class of every onnx-protect error.");
create_exception!(onnx_protect, FileError, OnnxProtectError, "Reading or writing a file failed (kind `io`).");
create_exception!(
    onnx_protect,
    MalformedModel,
    OnnxProtectError,
    "The model or its external data is invalid or unsafe to read (kind: the reader's own, e.g. `truncated`)."
);
create_exception!(onnx_protect, InvalidKey, OnnxProtectError, "The key is unusable or of the wrong sort (kind `key`).");
create_exception!(
    onnx_protect,
    InvalidPolicy,
    OnnxProtectError,
    "The policy or an override is invalid (kind `policy`)."
);
create_exception!(onnx_protect, AlreadyProtected, OnnxProtectError, "The model is protected already.");
create_exception!(onnx_protect, NotProtected, OnnxProtectError, "The model carries no onnx-protect manifest.");
create_exception!(
    onnx_protect,
    UnsupportedVersion,
    OnnxProtectError,
    "The manifest's format version is not read here."
);
create_exception!(onnx_protect, BadManifest, OnnxProtectError, "The protection manifest is malformed.");
create_exception!(onnx_protect, WrongKey, OnnxProtectError, "No recipient of the model matches the key given.");
create_exception!(
    onnx_protect,
    Modified,
    OnnxProtectError,
    "A MAC, digest or checksum does not match: the model changed after it was protected."
);
create_exception!(onnx_protect, OutputError, OnnxProtectError, "The output cannot be written as asked.");
create_exception!(onnx_protect, NotSigned, OnnxProtectError, "No valid signature of a trusted signer is on the model.");
create_exception!(
    onnx_protect,
    AlreadyDecrypted,
    OnnxProtectError,
    "The key's tiers are already in clear in this file."
);

create_exception!(
    onnx_protect,
    LicenceError,
    OnnxProtectError,
    "The model needs a licence of its publisher and the one given does not let it open."
);
create_exception!(onnx_protect, LicenceMissing, LicenceError, "The model needs a licence and none was given.");
create_exception!(onnx_protect, LicenceMalformed, LicenceError, "The licence text is malformed or unreadable.");
create_exception!(
    onnx_protect,
    LicenceBadSignature,
    LicenceError,
    "The licence's signature does not verify, or it is by another authority."
);
create_exception!(onnx_protect, LicenceExpired, LicenceError, "The licence has expired.");
create_exception!(onnx_protect, LicenceNotYetValid, LicenceError, "The licence is not valid yet.");
create_exception!(onnx_protect, LicenceWrongModel, LicenceError, "The licence names other models.");
create_exception!(onnx_protect, LicenceWrongDevice, LicenceError, "The licence is for another recipient or device.");
create_exception!(
    onnx_protect,
    ClockSetBack,
    LicenceError,
    "The system clock is behind a time already reached, or the recorded clock state is unusable."
);

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
fn py_err(e: CoreError) -> PyErr {
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
fn py_err_at(path: &Path, e: CoreError) -> PyErr {
    raise(e, Some(path))
}

fn key_err(msg: impl Into<String>) -> PyErr {
    exception(ErrorKind::Key, msg.into())
}

/// The shortest passphrase that protects a model unless allowed explicitly, in
/// characters (bytes for one that is not UTF-8): the command line's minimum.
const MIN_PASSPHRASE_CHARS: usize = 12;

/// Refuses a passphrase under [`MIN_PASSPHRASE_CHARS`] that would protect a model,
/// unless `allow_short`; keys and identities pass.
fn check_passphrase(source: &KeySource, allow_short: bool) -> PyResult<()> {
    let KeySource::Passphrase(p) = source else { return Ok(()) };
    let n = std::str::from_utf8(p).map(|s| s.chars().count()).unwrap_or(p.len());
    if n < MIN_PASSPHRASE_CHARS && !allow_short {
        return Err(key_err(format!(
            "the passphrase has {n} characters; a passphrase that protects a model needs at least \
             {MIN_PASSPHRASE_CHARS} (give allow_short_passphrase=True to use it anyway, or a key from \
             onnx_protect.keygen())"
        )));
    }
    Ok(())
}

/// Checks a key for encrypting (a master key; a passphrase long enough) before work starts.
#[pyfunction]
#[pyo3(signature = (*, key, allow_short_passphrase=false))]
fn check_encrypt_key(key: PyRef<'_, Key>, allow_short_passphrase: bool) -> PyResult<()> {
    check_passphrase(&key.master()?, allow_short_passphrase)
}

/// Key material held in Rust, wiped when the object is collected.
///
/// Made by the class methods; the `key=`/`key_file=`/... arguments of the module's
/// functions build one. No method returns the secret.
#[pyclass(module = "onnx_protect", frozen)]
pub struct Key {
    pub(crate) source: KeySource,
    /// What a key file said about its key (`None` for passphrases, identities and raw bytes).
    kind: Option<KeyKind>,
    what: String,
}

impl Key {
    /// The source where a master key is needed (encryption): tier keys are refused.
    fn master(&self) -> PyResult<KeySource> {
        if let Some(KeyKind::Tier { tier }) = self.kind {
            return Err(key_err(format!(
                "{} holds the key of access tier {tier}; encrypting needs a master key",
                self.what
            )));
        }
        Ok(self.source.clone())
    }

    /// The number of access tiers the key file records (`master tiers=N`), if it is one.
    fn recorded_tiers(&self) -> Option<u32> {
        match self.kind {
            Some(KeyKind::Master { tiers }) => Some(tiers),
            _ => None,
        }
    }

    fn from_key_file(file: KeyFile, what: String) -> Key {
        let kind = Some(file.kind());
        Key { source: KeySource::Key(file.into_key()), kind, what }
    }
}

/// Reads at most `MAX_KEY_FILE_LEN + 1` bytes of `path` into wiped memory.
fn read_secret_file(path: &Path, what: &str) -> PyResult<Zeroizing<Vec<u8>>> {
    let cannot = |e: std::io::Error| key_err(format!("cannot read {what} {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_KEY_FILE_LEN as u64 + 1).read_to_end(&mut bytes).map_err(cannot)?;
    Ok(bytes)
}

#[pymethods]
impl Key {
    /// A key from bytes: 32 raw bytes, 64 hex digits, or the text of a key file.
    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Key> {
        let (source, kind) = KeySource::from_key_file(data).map_err(|e| key_err(format!("key bytes: {e}")))?;
        Ok(Key { source, kind: Some(kind), what: "the key bytes".into() })
    }

    /// A key file written by `keygen` (or 64 hex digits, or 32 raw bytes).
    #[staticmethod]
    fn from_file(path: PathBuf) -> PyResult<Key> {
        let bytes = read_secret_file(&path, "key file")?;
        let (source, kind) =
            KeySource::from_key_file(&bytes).map_err(|e| key_err(format!("key file {}: {e}", path.display())))?;
        Ok(Key { source, kind: Some(kind), what: format!("key file {}", path.display()) })
    }

    /// A key in an environment variable: 64 hex digits or the text of a key file.
    #[staticmethod]
    fn from_env(var: &str) -> PyResult<Key> {
        let file = KeyFile::from_env(var).map_err(|e| key_err(format!("environment variable {var}: {e}")))?;
        Ok(Key::from_key_file(file, format!("environment variable {var}")))
    }

    /// A passphrase (stretched with Argon2id, parameters in the model).
    #[staticmethod]
    fn from_passphrase(passphrase: &[u8]) -> PyResult<Key> {
        if passphrase.is_empty() {
            return Err(key_err("the passphrase is empty"));
        }
        Ok(Key {
            source: KeySource::Passphrase(Zeroizing::new(passphrase.to_vec())),
            kind: None,
            what: "the passphrase".into(),
        })
    }

    /// A passphrase held in an environment variable.
    #[staticmethod]
    fn from_passphrase_env(var: &str) -> PyResult<Key> {
        let value = std::env::var_os(var).ok_or_else(|| key_err(format!("environment variable {var} is not set")))?;
        let value = Zeroizing::new(value.into_encoded_bytes());
        Key::from_passphrase(&value)
    }

    /// An identity file: age X25519 identities (`AGE-SECRET-KEY-1...` lines, as `age-keygen`
    /// writes them), one age plugin's identities (`AGE-PLUGIN-NAME-1...`, run through
    /// `age-plugin-NAME`, which gets no answer if it asks for a PIN), or a TPM key file
    /// (`keygen --tpm`; the TPM named by `ONNX_PROTECT_TPM_TCTI`; needs a build with the
    /// feature `tpm`).
    #[staticmethod]
    fn from_identity_file(path: PathBuf) -> PyResult<Key> {
        let bytes = read_secret_file(&path, "identity file")?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| key_err(format!("identity file {} is not UTF-8 text", path.display())))?;
        let tcti = onnx_protect_tpm::tcti_from_env();
        let id = onnx_protect_core::keys::parse_identity_file(text, &tcti, Arc::new(onnx_protect_keys::NoPrompt))
            .map_err(|e| key_err(format!("identity file {}: {e}", path.display())))?;
        Ok(Key { source: KeySource::Identity(id), kind: None, what: format!("identity file {}", path.display()) })
    }

    /// A secret key in a PKCS#11 token, by its RFC 7512 URI (docs/keys.md): opens models
    /// wrapped for it, and as `key=` of `encrypt` wraps new ones for it.
    #[staticmethod]
    fn from_pkcs11(uri: &str) -> PyResult<Key> {
        let k = Pkcs11Key::parse(uri).map_err(|e| py_err(e.into()))?;
        let what = k.label();
        Ok(Key { source: KeySource::Identity(Identity::Provider(Arc::new(k))), kind: None, what })
    }

    /// A key command, 'PROGRAM ARGS' (docs/keys.md), given `timeout` seconds per call.
    #[staticmethod]
    #[pyo3(signature = (command, *, timeout=60.0))]
    fn from_command(command: &str, timeout: f64) -> PyResult<Key> {
        if !(timeout > 0.0 && timeout <= 86_400.0) {
            return Err(key_err(format!("timeout {timeout}: expected seconds, more than 0 and at most 86400")));
        }
        let c = KeyCommand::parse(command, Duration::from_secs_f64(timeout)).map_err(|e| py_err(e.into()))?;
        let what = format!("key command '{command}'");
        Ok(Key { source: KeySource::Identity(Identity::Provider(Arc::new(c))), kind: None, what })
    }

    /// This key with a licence (docs/shipping.md#licences) for a model encrypted with a
    /// licence authority. `clock`: the file recording the latest time a licence check saw
    /// (default `$ONNX_PROTECT_LICENCE_CLOCK`, else `~/.local/state/onnx-protect/licence-clock`).
    #[pyo3(signature = (path, *, clock=None))]
    fn with_licence(&self, path: PathBuf, clock: Option<PathBuf>) -> PyResult<Key> {
        let unreadable = |e: std::io::Error| {
            py_err(CoreError::Licence(onnx_protect_core::licence::LicenceError::Malformed {
                line: 0,
                reason: format!("cannot read {}: {e}", path.display()),
            }))
        };
        let mut text = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(onnx_protect_core::licence::MAX_LICENCE_LEN as u64 + 1).read_to_end(&mut text))
            .map_err(unreadable)?;
        let tcti = onnx_protect_tpm::tcti_from_env();
        let source = onnx_protect_core::keys::with_licence(self.source.clone(), &text, clock.as_deref(), &tcti)
            .map_err(|e| py_err_at(&path, e.into()))?;
        Ok(Key { source, kind: self.kind, what: format!("{} with licence {}", self.what, path.display()) })
    }

    fn __repr__(&self) -> String {
        format!("<onnx_protect.Key from {}>", self.what)
    }
}

/// Parses trusted signer keys (`onnx-protect-signer1...`).
fn signers(texts: Vec<String>) -> PyResult<Vec<SignerKey>> {
    texts.iter().map(|t| SignerKey::parse(t).map_err(|e| key_err(format!("signer {t}: {e}")))).collect()
}

fn to_json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| PyValueError::new_err(format!("cannot serialise the report: {e}")))
}

/// The policy: a TOML file (or the built-in default), then the overrides in order
/// (`what` is `coefficient`, `mode`, `subsequences` or `selection`, `spec` is `OP=VALUE`),
/// then the seed, tiers and tier shares; as the command line builds it.
fn build_policy(
    policy_file: Option<PathBuf>,
    overrides: Vec<(String, String)>,
    seed: Option<u64>,
    tiers: Option<u32>,
    tier_shares: Option<Vec<f64>>,
) -> Result<Policy, CoreError> {
    let mut policy = match &policy_file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| CoreError::Format(onnx_protect_format::FormatError::Io { path: p.clone(), source: e }))?;
            Policy::from_toml(&text).map_err(|e| {
                CoreError::Policy(onnx_protect_select::PolicyError::Invalid(format!("{}: {e}", p.display())))
            })?
        }
        None => Policy::default(),
    };
    for (what, spec) in &overrides {
        policy.apply_override(what, spec)?;
    }
    if let Some(s) = seed {
        policy.seed = s;
    }
    if let Some(t) = tiers {
        policy.set_tiers(t)?;
    }
    if let Some(s) = &tier_shares {
        policy.set_tier_shares(s)?;
        policy.shares()?;
    }
    Ok(policy)
}

/// A trace error as the package's exceptions: a bad recipient ID or strength is a
/// `ValueError`, a secret file that is not one an `InvalidKey`, a ledger problem a
/// `FileError`, a model that cannot carry a mark a `MalformedModel`.
fn trace_err(e: onnx_protect_trace::TraceError) -> PyErr {
    use onnx_protect_trace::TraceError as T;
    match e {
        T::RecipientId { .. } | T::Parameter(_) => PyValueError::new_err(e.to_string()),
        T::Secret { .. } | T::Key(_) => key_err(e.to_string()),
        T::Model { source, .. } => py_err(CoreError::Format(source)),
        T::TooFewWeights { .. } | T::NoCommonWeights { .. } => {
            py_err(CoreError::Format(onnx_protect_format::FormatError::Invalid(e.to_string())))
        }
        _ => FileError::new_err(e.to_string()),
    }
}

/// The marker of recipient `id`'s fingerprint over the model at `src`, with its ledger
/// entry written (as `encrypt --fingerprint` does; docs/tracing.md).
fn fingerprint_marker(
    src: &Path,
    id: &str,
    secret: &Path,
    ledger: &Path,
    alpha: f64,
) -> PyResult<onnx_protect_trace::Marker> {
    use onnx_protect_trace::{ledger::append, secret::MAX_SECRET_FILE_LEN, FingerprintKey, Marker, RecipientId};
    let recipient = RecipientId::new(id).map_err(trace_err)?;
    let mut bytes = Zeroizing::new(Vec::new());
    std::fs::File::open(secret)
        .and_then(|f| f.take(MAX_SECRET_FILE_LEN as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| FileError::new_err(format!("cannot read fingerprint secret {}: {e}", secret.display())))?;
    let key = FingerprintKey::parse(&bytes, &secret.display().to_string()).map_err(trace_err)?;
    let model = Model::open(src).map_err(|e| py_err_at(src, CoreError::Format(e)))?;
    if let Some(m) = model.metadata.iter().find(|m| onnx_protect_core::metadata::is_manifest_key(&m.key)) {
        return Err(py_err_at(src, CoreError::AlreadyProtected { key: m.key.clone() }));
    }
    let marker = Marker::new(&model, &key, &recipient, alpha).map_err(trace_err)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    append(ledger, &marker.ledger_entry(&src.display().to_string(), now)).map_err(trace_err)?;
    Ok(marker)
}

/// Encrypts `src` into `dst`; returns the report as JSON. `fingerprint` is
/// (recipient ID, fingerprint secret file, ledger, strength).
#[pyfunction]
#[pyo3(signature = (src, dst, *, key=None, recipients=Vec::new(), policy_file=None, overrides=Vec::new(),
    seed=None, tiers=None, tier_shares=None, allow_empty=false, fingerprint=None, allow_short_passphrase=false,
    licence=None))]
#[allow(clippy::too_many_arguments)]
fn encrypt(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    key: Option<PyRef<'_, Key>>,
    recipients: Vec<(String, u32)>,
    policy_file: Option<PathBuf>,
    overrides: Vec<(String, String)>,
    seed: Option<u64>,
    tiers: Option<u32>,
    tier_shares: Option<Vec<f64>>,
    allow_empty: bool,
    fingerprint: Option<(String, PathBuf, PathBuf, f64)>,
    allow_short_passphrase: bool,
    licence: Option<(String, Option<String>)>,
) -> PyResult<String> {
    let master = key.as_ref().map(|k| k.master()).transpose()?;
    if let Some(m) = &master {
        check_passphrase(m, allow_short_passphrase)?;
    }
    // (licence authority, model id): opening will need a licence of the authority.
    let licence = match licence {
        None => None,
        Some((authority, model_id)) => {
            let authority =
                SignerKey::parse(authority.trim()).map_err(|e| key_err(format!("licence_authority: {e}")))?;
            if let Some(id) = &model_id {
                onnx_protect_core::licence::check_model_id(id).map_err(py_err)?;
            }
            Some(onnx_protect_core::licence::LicenceRequirement { authority, model_id })
        }
    };
    let recipients = recipients
        .iter()
        .map(|(text, tier)| {
            let r = onnx_protect_core::keys::parse_recipient(text, Arc::new(onnx_protect_keys::NoPrompt));
            r.map(|r| (r, *tier)).map_err(|e| py_err(e.into()))
        })
        .collect::<PyResult<Vec<_>>>()?;
    let to = EncryptTo { master, master_tiers: key.as_ref().and_then(|k| k.recorded_tiers()), recipients };
    let marker = match &fingerprint {
        Some((id, secret, ledger, alpha)) => {
            Some(Arc::new(py.detach(|| fingerprint_marker(&src, id, secret, ledger, *alpha))?))
        }
        None => None,
    };
    // The hook type is `'static`: it owns a handle on the marker.
    let hook = marker.as_ref().map(|m| {
        let m = Arc::clone(m);
        move |t: &onnx_protect_format::Tensor, b: &[u8]| m.rewrite(t, b)
    });
    let report = py.detach(|| {
        let policy = build_policy(policy_file, overrides, seed, tiers, tier_shares)?;
        let mut opts = EncryptOptions::new(&policy);
        opts.allow_empty = allow_empty;
        opts.rewrite = hook.as_ref().map(|f| f as &onnx_protect_core::Rewrite);
        opts.licence = licence;
        protect::encrypt(&src, &dst, &to, &opts)
    });
    let mut report = serde_json::to_value(report.map_err(|e| py_err_at(&src, e))?)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    if let (Some(m), Some((_, _, ledger, _))) = (&marker, &fingerprint) {
        if m.rewritten() != m.tensors() {
            return Err(py_err(CoreError::Internal("the fingerprint changed another number of tensors than planned")));
        }
        report["fingerprint"] = serde_json::json!({
            "recipient": m.recipient().to_string(),
            "ledger": ledger.display().to_string(),
            "alpha": m.alpha(),
            "tensors": m.tensors(),
            "elements": m.elements(),
            "variant": m.variant(),
        });
    }
    to_json(&report)
}

/// Writes a new fingerprint secret file (mode 0600, never over an existing file), as
/// `onnx-protect keygen --fingerprint-secret` does; returns its path and key ID as JSON.
#[pyfunction]
fn fingerprint_secret(path: PathBuf) -> PyResult<String> {
    if path.exists() {
        return Err(exception(ErrorKind::Output, format!("{} exists; keygen never overwrites a key", path.display())));
    }
    let (key, text) = onnx_protect_trace::FingerprintKey::generate().map_err(trace_err)?;
    write_key_file(&path, text.as_bytes())?;
    to_json(&serde_json::json!({"secret_file": path.display().to_string(), "key_id": key.key_id()}))
}

/// Decrypts `src` into `dst` (up to `tier`); returns the report as JSON.
#[pyfunction]
#[pyo3(signature = (src, dst, *, key, tier=None, signers=Vec::new()))]
fn decrypt(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    key: PyRef<'_, Key>,
    tier: Option<u32>,
    signers: Vec<String>,
) -> PyResult<String> {
    let trusted = self::signers(signers)?;
    let source = key.source.clone();
    let report = py.detach(|| {
        let opts = DecryptOptions { signers: &trusted, ..DecryptOptions::default() };
        protect::decrypt_tier(&src, &dst, &source, tier, &opts)
    });
    to_json(&report.map_err(|e| py_err_at(&src, e))?)
}

/// Verifies a protected model (the MACs with a key, the keyless digest without);
/// returns the report as JSON.
#[pyfunction]
#[pyo3(signature = (path, *, key=None, signers=Vec::new()))]
fn verify(py: Python<'_>, path: PathBuf, key: Option<PyRef<'_, Key>>, signers: Vec<String>) -> PyResult<String> {
    let trusted = self::signers(signers)?;
    let source = key.as_ref().map(|k| k.source.clone());
    let report = py.detach(|| protect::verify_signed(&path, source.as_ref(), &trusted, &NoProgress));
    to_json(&report.map_err(|e| py_err_at(&path, e))?)
}

/// The `inspect --json` report of a model (docs/inspect-json.md), as JSON.
#[pyfunction]
fn inspect(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    let report = py.detach(|| {
        let model = Model::open(&path).map_err(CoreError::from)?;
        Ok(onnx_protect_core::inspect::inspect(&model))
    });
    to_json(&report.map_err(|e| py_err_at(&path, e))?)
}

/// A new random master key of `tiers` access tiers, as the text of a key file.
fn new_key_text(tiers: u32) -> PyResult<(MasterKey, Zeroizing<String>)> {
    if tiers == 0 || tiers > onnx_protect_crypto::MAX_TIERS {
        return Err(PyValueError::new_err(format!("tiers must be between 1 and {}", onnx_protect_crypto::MAX_TIERS)));
    }
    let key = MasterKey::generate().map_err(|e| py_err(e.into()))?;
    let file = KeyFile::new(KeyKind::Master { tiers }, key.clone()).map_err(|e| py_err(e.into()))?;
    Ok((key, file.encode()))
}

/// A new master key as the text of a key file (accepted by `key=`).
#[pyfunction]
#[pyo3(signature = (*, tiers=1))]
fn new_key(py: Python<'_>, tiers: u32) -> PyResult<Py<PyBytes>> {
    let (_, text) = new_key_text(tiers)?;
    Ok(PyBytes::new(py, text.as_bytes()).unbind())
}

/// Writes a new key file (mode 0600, never over an existing file) and, with
/// `tiers > 1`, the keys of tiers 1..tiers-1 next to it (`PATH.tier1`, ...), as
/// `onnx-protect keygen` does. Returns the report as JSON.
#[pyfunction]
#[pyo3(signature = (path, *, tiers=1))]
fn keygen(path: PathBuf, tiers: u32) -> PyResult<String> {
    let (key, text) = new_key_text(tiers)?;
    let tier_path = |t: u32| {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".tier{t}"));
        PathBuf::from(s)
    };
    let lower: Vec<PathBuf> = (1..tiers).map(tier_path).collect();
    for p in lower.iter().chain(std::iter::once(&path)) {
        if p.exists() {
            return Err(exception(ErrorKind::Output, format!("{} exists; keygen never overwrites a key", p.display())));
        }
    }
    write_key_file(&path, text.as_bytes())?;
    let mut k = key.clone();
    for t in (1..tiers).rev() {
        k = k.tier_down();
        let file = KeyFile::new(KeyKind::Tier { tier: t }, k.clone()).map_err(|e| py_err(e.into()))?;
        write_key_file(&tier_path(t), file.encode().as_bytes())?;
    }
    let fingerprint: String = key.fingerprint().iter().map(|b| format!("{b:02x}")).collect();
    let report = serde_json::json!({
        "key_file": path.display().to_string(),
        "fingerprint": fingerprint,
        "tiers": tiers,
        "tier_key_files": lower.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
    });
    to_json(&report)
}

fn write_key_file(path: &Path, text: &[u8]) -> PyResult<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let write = || -> std::io::Result<()> {
        let mut f = opts.open(path)?;
        f.write_all(text)?;
        f.sync_all()
    };
    write().map_err(|e| py_err(CoreError::Write { path: path.to_path_buf(), source: e }))
}

/// A read-only view of decrypted bytes held by Rust (an external data file), exposed
/// through the buffer protocol without a copy. `close()` zeroes the decrypted
/// bytes and releases them; it is refused while a `memoryview` of it is alive.
#[pyclass(module = "onnx_protect")]
pub struct Buffer {
    data: Option<DecryptedBytes>,
    exports: usize,
}

#[pymethods]
impl Buffer {
    fn __len__(&self) -> usize {
        self.data.as_ref().map_or(0, |d| d.len())
    }

    /// Whether the bytes were released.
    #[getter]
    fn closed(&self) -> bool {
        self.data.is_none()
    }

    /// Zeroes and releases the decrypted bytes (idempotent).
    fn close(&mut self) -> PyResult<()> {
        if self.exports > 0 {
            return Err(PyBufferError::new_err(format!(
                "{} view(s) of this buffer are still alive (release the memoryviews and arrays first)",
                self.exports
            )));
        }
        self.data = None;
        Ok(())
    }

    fn __repr__(&self) -> String {
        match &self.data {
            Some(d) => format!("<onnx_protect.Buffer {} bytes>", d.len()),
            None => "<onnx_protect.Buffer closed>".into(),
        }
    }

    /// # Safety
    /// Called by the interpreter with a valid `view` to fill, as the buffer protocol says.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no view to fill"));
        }
        if (flags & ffi::PyBUF_WRITABLE) == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("decrypted buffers are read-only"));
        }
        let mut me = slf.borrow_mut();
        let (ptr, len) = match &me.data {
            Some(d) => (d.as_ptr(), d.len()),
            None => return Err(PyBufferError::new_err("the buffer is closed")),
        };
        let len = isize::try_from(len).map_err(|_| PyBufferError::new_err("buffer too large"))?;
        me.exports += 1;
        drop(me);
        // SAFETY: `view` is non-null and owned by the caller for the duration of the
        // export; the bytes stay put while `exports > 0` (close() refuses, and the
        // object cannot be collected while `view.obj` holds a reference to it).
        unsafe { fill_byte_view(view, slf.into_any().into_ptr(), ptr, len, flags) }
        Ok(())
    }

    /// # Safety
    /// Called by the interpreter once per successful `__getbuffer__`.
    unsafe fn __releasebuffer__(mut slf: PyRefMut<'_, Self>, _view: *mut ffi::Py_buffer) {
        slf.exports = slf.exports.saturating_sub(1);
    }
}

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
fn load(
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

/// The native module `onnx_protect._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Key>()?;
    m.add_class::<Buffer>()?;
    m.add_class::<ExternalTensor>()?;
    m.add_class::<DecryptedModel>()?;
    m.add_function(wrap_pyfunction!(encrypt, m)?)?;
    m.add_function(wrap_pyfunction!(decrypt, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(keygen, m)?)?;
    m.add_function(wrap_pyfunction!(fingerprint_secret, m)?)?;
    m.add_function(wrap_pyfunction!(new_key, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(check_encrypt_key, m)?)?;
    m.add_function(wrap_pyfunction!(session::session_model, m)?)?;
    m.add_function(wrap_pyfunction!(session::session_files, m)?)?;
    m.add_class::<session::SessionModel>()?;
    m.add_class::<session::TensorView>()?;
    m.add_class::<session::SessionFiles>()?;
    m.add_function(wrap_pyfunction!(genai::genai_stage, m)?)?;
    m.add_function(wrap_pyfunction!(genai::genai_unstage, m)?)?;
    m.add_function(wrap_pyfunction!(genai::genai_folder, m)?)?;
    m.add("OnnxProtectError", py.get_type::<OnnxProtectError>())?;
    m.add("FileError", py.get_type::<FileError>())?;
    m.add("MalformedModel", py.get_type::<MalformedModel>())?;
    m.add("InvalidKey", py.get_type::<InvalidKey>())?;
    m.add("InvalidPolicy", py.get_type::<InvalidPolicy>())?;
    m.add("AlreadyProtected", py.get_type::<AlreadyProtected>())?;
    m.add("NotProtected", py.get_type::<NotProtected>())?;
    m.add("UnsupportedVersion", py.get_type::<UnsupportedVersion>())?;
    m.add("BadManifest", py.get_type::<BadManifest>())?;
    m.add("WrongKey", py.get_type::<WrongKey>())?;
    m.add("Modified", py.get_type::<Modified>())?;
    m.add("OutputError", py.get_type::<OutputError>())?;
    m.add("NotSigned", py.get_type::<NotSigned>())?;
    m.add("AlreadyDecrypted", py.get_type::<AlreadyDecrypted>())?;
    m.add("LicenceError", py.get_type::<LicenceError>())?;
    m.add("LicenceMissing", py.get_type::<LicenceMissing>())?;
    m.add("LicenceMalformed", py.get_type::<LicenceMalformed>())?;
    m.add("LicenceBadSignature", py.get_type::<LicenceBadSignature>())?;
    m.add("LicenceExpired", py.get_type::<LicenceExpired>())?;
    m.add("LicenceNotYetValid", py.get_type::<LicenceNotYetValid>())?;
    m.add("LicenceWrongModel", py.get_type::<LicenceWrongModel>())?;
    m.add("LicenceWrongDevice", py.get_type::<LicenceWrongDevice>())?;
    m.add("ClockSetBack", py.get_type::<ClockSetBack>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

/// Fills `view` as a read-only, one-dimensional view of `len` bytes at `buf`, exported by
/// `obj` (whose reference the view takes over), with the shape, strides and format that
/// `flags` ask for.
///
/// # Safety
/// `view` is non-null and owned by the caller for the duration of the export, and the
/// `len` bytes at `buf` stay valid and unchanged while the view holds `obj`.
pub(crate) unsafe fn fill_byte_view(
    view: *mut ffi::Py_buffer,
    obj: *mut ffi::PyObject,
    buf: *const u8,
    len: isize,
    flags: c_int,
) {
    // SAFETY: as the caller promises.
    unsafe {
        (*view).obj = obj;
        (*view).buf = buf as *mut std::ffi::c_void;
        (*view).len = len;
        (*view).readonly = 1;
        (*view).itemsize = 1;
        (*view).format = if (flags & ffi::PyBUF_FORMAT) == ffi::PyBUF_FORMAT {
            c"B".as_ptr() as *mut std::ffi::c_char
        } else {
            std::ptr::null_mut()
        };
        (*view).ndim = 1;
        (*view).shape = if (flags & ffi::PyBUF_ND) == ffi::PyBUF_ND { &mut (*view).len } else { std::ptr::null_mut() };
        (*view).strides = if (flags & ffi::PyBUF_STRIDES) == ffi::PyBUF_STRIDES {
            &mut (*view).itemsize
        } else {
            std::ptr::null_mut()
        };
        (*view).suboffsets = std::ptr::null_mut();
        (*view).internal = std::ptr::null_mut();
    }
}
