//! Every recipient string and identity file the loaders accept, in one place: the binary,
//! the Python package and the C ABI parse them alike.

use std::path::Path;
use std::sync::Arc;

use onnx_protect_core::keys::KeySource;
use onnx_protect_core::licence::{ClockFile, Licence, LicenceCheck, TpmReading};

use onnx_protect_keys::{Identity, KeysError, Pkcs11Key, PluginIdentity, PluginPrompt, PluginRecipient, Recipient};

use crate::{TpmIdentity, TpmKeyFile, TpmRecipient, TpmRecipientProvider, TPM_KEY_TAG, TPM_RECIPIENT_HRP};

/// A public recipient: `onnx-protect-tpm1…` (a TPM key), `age1NAME1…` (an age plugin,
/// asking the person through `prompt`), `pkcs11:…` (a token key) or `age1…` (X25519).
pub fn parse_recipient(text: &str, prompt: Arc<dyn PluginPrompt>) -> Result<Recipient, KeysError> {
    let t = text.trim();
    if t.starts_with("pkcs11:") {
        return Ok(Recipient::Provider(Arc::new(Pkcs11Key::parse(t)?)));
    }
    if t.to_ascii_lowercase().starts_with(TPM_RECIPIENT_HRP) {
        return Ok(Recipient::Provider(Arc::new(TpmRecipientProvider(TpmRecipient::parse(t)?))));
    }
    if onnx_protect_keys::is_plugin_recipient(t) {
        return Ok(Recipient::Provider(Arc::new(PluginRecipient::parse(t, prompt)?)));
    }
    Recipient::parse_public(t)
}

/// An identity file: a TPM key file (`onnx-protect-tpm-key-v1`, the TPM reached through
/// `tcti`), one age plugin's identities (`AGE-PLUGIN-NAME-1…`) or age X25519 identities
/// (`AGE-SECRET-KEY-1…`). Errors name the line, never a secret.
pub fn parse_identity_file(text: &str, tcti: &str, prompt: Arc<dyn PluginPrompt>) -> Result<Identity, KeysError> {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    if lines.iter().any(|l| l.starts_with(TPM_KEY_TAG)) {
        let key = TpmKeyFile::parse(text.as_bytes())?;
        return Ok(Identity::Provider(Arc::new(TpmIdentity::new(key, tcti))));
    }
    if lines.iter().any(|l| l.to_ascii_uppercase().starts_with("AGE-PLUGIN-")) {
        let mut ids = PluginIdentity::parse_file(text, prompt)?;
        if ids.len() != 1 {
            return Err(KeysError::BadIdentity {
                line: 0,
                reason: "identities of several plugins: give one plugin's identities per file".into(),
            });
        }
        return Ok(Identity::Provider(Arc::new(ids.remove(0))));
    }
    Identity::parse_x25519_file(text)
}

/// `key` with the licence `text` (docs/shipping.md#licences): the clock state at `clock`,
/// else [`ClockFile::default_path`]; with a TPM identity (and TPM support built), the
/// TPM's clock read through `tcti` for the key's TPM anchor (none if it cannot be read).
pub fn with_licence(
    key: KeySource,
    text: &[u8],
    clock: Option<&Path>,
    tcti: &str,
) -> Result<KeySource, onnx_protect_core::licence::LicenceError> {
    let licence = Licence::parse(text)?;
    let tpm = match key.without_licence() {
        KeySource::Identity(Identity::Provider(p)) if p.kind() == crate::KIND_TPM => {
            crate::read_clock(tcti).ok().map(|c| TpmReading { source: p.describe(), clock_ms: c.clock_ms })
        }
        _ => None,
    };
    let clock = clock.map(Path::to_path_buf).or_else(ClockFile::default_path).map(|p| ClockFile::new(&p));
    Ok(key.with_licence(LicenceCheck { licence, clock, tpm }))
}
