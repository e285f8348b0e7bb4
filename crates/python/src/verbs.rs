use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use onnx_protect_core::error::{CoreError, ErrorKind};
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::protect::{self, DecryptOptions, EncryptOptions};
use onnx_protect_crypto::{KeyFile, KeyKind, MasterKey};
use onnx_protect_format::{Model, NoProgress};
use onnx_protect_keys::SignerKey;
use onnx_protect_select::Policy;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use zeroize::Zeroizing;

use crate::errors::{exception, key_err, py_err, py_err_at, FileError};
use crate::key::{check_passphrase, signers, Key};

fn to_json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|e| PyValueError::new_err(format!("cannot serialise the report: {e}")))
}

/// The policy: a TOML file (or the built-in default), then the overrides in order
/// (`what` is `coefficient`, `mode`, `subsequences` or `selection`, `spec` is `OP=VALUE`),
/// then the seed, tiers, tier shares and tier classes; as the command line builds it.
fn build_policy(
    policy_file: Option<PathBuf>,
    overrides: Vec<(String, String)>,
    seed: Option<u64>,
    tiers: Option<u32>,
    tier_shares: Option<Vec<f64>>,
    tier_classes: Option<Vec<Vec<u64>>>,
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
    if let Some(groups) = tier_classes {
        policy.set_tier_classes(groups)?;
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
    seed=None, tiers=None, tier_shares=None, tier_classes=None, allow_empty=false, fingerprint=None, allow_short_passphrase=false,
    licence=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn encrypt(
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
    tier_classes: Option<Vec<Vec<u64>>>,
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
        let policy = build_policy(policy_file, overrides, seed, tiers, tier_shares, tier_classes)?;
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
pub(crate) fn fingerprint_secret(path: PathBuf) -> PyResult<String> {
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
pub(crate) fn decrypt(
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
pub(crate) fn verify(
    py: Python<'_>,
    path: PathBuf,
    key: Option<PyRef<'_, Key>>,
    signers: Vec<String>,
) -> PyResult<String> {
    let trusted = self::signers(signers)?;
    let source = key.as_ref().map(|k| k.source.clone());
    let report = py.detach(|| protect::verify_signed(&path, source.as_ref(), &trusted, &NoProgress));
    to_json(&report.map_err(|e| py_err_at(&path, e))?)
}

/// The `inspect --json` report of a model (docs/inspect-json.md), as JSON.
#[pyfunction]
pub(crate) fn inspect(py: Python<'_>, path: PathBuf) -> PyResult<String> {
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
pub(crate) fn new_key(py: Python<'_>, tiers: u32) -> PyResult<Py<PyBytes>> {
    let (_, text) = new_key_text(tiers)?;
    Ok(PyBytes::new(py, text.as_bytes()).unbind())
}

/// Writes a new key file (mode 0600, never over an existing file) and, with
/// `tiers > 1`, the keys of tiers 1..tiers-1 next to it (`PATH.tier1`, ...), as
/// `onnx-protect keygen` does. Returns the report as JSON.
#[pyfunction]
#[pyo3(signature = (path, *, tiers=1))]
pub(crate) fn keygen(path: PathBuf, tiers: u32) -> PyResult<String> {
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
