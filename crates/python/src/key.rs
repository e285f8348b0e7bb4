use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use onnx_protect_core::error::CoreError;
use onnx_protect_core::keys::KeySource;
use onnx_protect_crypto::{KeyFile, KeyKind, MAX_KEY_FILE_LEN};
use onnx_protect_keys::{Identity, KeyCommand, Pkcs11Key, SignerKey};
use pyo3::prelude::*;
use zeroize::Zeroizing;

use crate::errors::{key_err, py_err, py_err_at};

/// The shortest passphrase that protects a model unless allowed explicitly, in
/// characters (bytes for one that is not UTF-8): the command line's minimum.
const MIN_PASSPHRASE_CHARS: usize = 12;

/// Refuses a passphrase under [`MIN_PASSPHRASE_CHARS`] that would protect a model,
/// unless `allow_short`; keys and identities pass.
pub(crate) fn check_passphrase(source: &KeySource, allow_short: bool) -> PyResult<()> {
    let (Identity::Passphrase(p), None) = (source.identity(), source.licence()) else { return Ok(()) };
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
pub(crate) fn check_encrypt_key(key: PyRef<'_, Key>, allow_short_passphrase: bool) -> PyResult<()> {
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
    pub(crate) fn master(&self) -> PyResult<KeySource> {
        if let Some(KeyKind::Tier { tier }) = self.kind {
            return Err(key_err(format!(
                "{} holds the key of access tier {tier}; encrypting needs a master key",
                self.what
            )));
        }
        Ok(self.source.clone())
    }

    /// The number of access tiers the key file records (`master tiers=N`), if it is one.
    pub(crate) fn recorded_tiers(&self) -> Option<u32> {
        match self.kind {
            Some(KeyKind::Master { tiers }) => Some(tiers),
            _ => None,
        }
    }

    fn from_key_file(file: KeyFile, what: String) -> Key {
        let kind = Some(file.kind());
        Key { source: KeySource::key(file.into_key()), kind, what }
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
            source: KeySource::passphrase(Zeroizing::new(passphrase.to_vec())),
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
        Ok(Key { source: KeySource::new(id), kind: None, what: format!("identity file {}", path.display()) })
    }

    /// A secret key in a PKCS#11 token, by its RFC 7512 URI (docs/keys.md): opens models
    /// wrapped for it, and as `key=` of `encrypt` wraps new ones for it.
    #[staticmethod]
    fn from_pkcs11(uri: &str) -> PyResult<Key> {
        let k = Pkcs11Key::parse(uri).map_err(|e| py_err(e.into()))?;
        let what = k.label();
        Ok(Key { source: KeySource::new(Identity::Provider(Arc::new(k))), kind: None, what })
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
        Ok(Key { source: KeySource::new(Identity::Provider(Arc::new(c))), kind: None, what })
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
pub(crate) fn signers(texts: Vec<String>) -> PyResult<Vec<SignerKey>> {
    texts.iter().map(|t| SignerKey::parse(t).map_err(|e| key_err(format!("signer {t}: {e}")))).collect()
}
