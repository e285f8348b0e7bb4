//! The key material a caller gives ([`KeySource`]), and the keys of access tiers below a
//! key (docs/format.md Appendix A: `tier_chain`); the one parser of recipient strings,
//! identity files and licences the front ends share (the binary, Python, C, Node):
//! [`parse_recipient`], [`parse_identity_file`], [`with_licence`].

use std::path::Path;
use std::sync::Arc;

use onnx_protect_crypto::{CryptoError, KeyFile, KeyKind, MasterKey};
use onnx_protect_keys::{Identity, KeysError, Pkcs11Key, PluginIdentity, PluginPrompt, PluginRecipient, Recipient};
use onnx_protect_tpm::{
    read_clock, TpmIdentity, TpmKeyFile, TpmRecipient, TpmRecipientProvider, KIND_TPM, TPM_KEY_TAG, TPM_RECIPIENT_HRP,
};
use zeroize::Zeroizing;

use crate::licence::{ClockFile, Licence, LicenceCheck, LicenceError, TpmReading};

/// The key material a caller gives (what a model is encrypted to, or what opens it), with the
/// licence a model needs to open if any (docs/shipping.md#licences).
#[derive(Clone)]
pub struct KeySource {
    identity: Identity,
    licence: Option<Arc<LicenceCheck>>,
}

impl KeySource {
    /// Key material without a licence: a 256-bit key, a passphrase (stretched with Argon2id;
    /// the parameters live in the manifest), age X25519 identities or a key provider.
    pub fn new(identity: Identity) -> KeySource {
        KeySource { identity, licence: None }
    }

    /// A 256-bit key (key file, environment variable, tier key).
    pub fn key(key: MasterKey) -> KeySource {
        KeySource::new(Identity::Key(key))
    }

    /// A passphrase.
    pub fn passphrase(passphrase: Zeroizing<Vec<u8>>) -> KeySource {
        KeySource::new(Identity::Passphrase(passphrase))
    }

    /// The key of a key file's bytes (as `keygen` writes it; 64 hex digits or 32 raw bytes
    /// are read too), and what the file records it as (a master key and its tiers, or a
    /// tier's key): how every front end makes a key from bytes.
    pub fn from_key_file(bytes: &[u8]) -> Result<(KeySource, KeyKind), CryptoError> {
        let file = KeyFile::parse(bytes)?;
        let kind = file.kind();
        Ok((KeySource::key(file.into_key()), kind))
    }

    /// This key with `licence` (in place of any licence it had).
    pub fn with_licence(self, licence: LicenceCheck) -> KeySource {
        KeySource { identity: self.identity, licence: Some(Arc::new(licence)) }
    }

    /// The key material, without its licence.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The 256-bit key, if the key material is one.
    pub fn master_key(&self) -> Option<&MasterKey> {
        let Identity::Key(k) = &self.identity else { return None };
        Some(k)
    }

    /// The licence given with the key, if any.
    pub fn licence(&self) -> Option<&LicenceCheck> {
        self.licence.as_deref()
    }
}

/// Tier keys `K_1 ..= K_top` from the key of tier `top` (index `t − 1`; docs/format.md
/// Appendix A), in both formats.
pub(crate) fn tier_chain(key: &MasterKey, top: u32) -> Vec<MasterKey> {
    let mut keys = vec![key.clone()];
    for _ in 1..top {
        let next = keys.last().map(MasterKey::tier_down).unwrap_or_else(|| key.clone());
        keys.push(next);
    }
    keys.reverse();
    keys
}

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
pub fn with_licence(key: KeySource, text: &[u8], clock: Option<&Path>, tcti: &str) -> Result<KeySource, LicenceError> {
    let licence = Licence::parse(text)?;
    let tpm = match key.identity() {
        Identity::Provider(p) if p.kind() == KIND_TPM => {
            read_clock(tcti).ok().map(|c| TpmReading { source: p.describe(), clock_ms: c.clock_ms })
        }
        _ => None,
    };
    let clock = clock.map(Path::to_path_buf).or_else(ClockFile::default_path).map(|p| ClockFile::new(&p));
    Ok(key.with_licence(LicenceCheck { licence, clock, tpm }))
}

#[cfg(test)]
mod tests {
    use onnx_protect_keys::NoPrompt;

    use super::*;

    /// A key file's text, 64 hex digits and 32 raw bytes give the same key; the file's
    /// record of its kind comes with it; anything else is refused.
    #[test]
    fn a_key_is_made_from_a_key_files_bytes_in_each_form() {
        let key = MasterKey::from_bytes([7; 32]);
        let file = KeyFile::new(KeyKind::Master { tiers: 3 }, key.clone()).unwrap();
        let (text, hex) = (file.encode(), key.to_hex());
        let forms: [&[u8]; 3] = [text.as_bytes(), hex.as_bytes(), &[7; 32]];
        for (i, bytes) in forms.into_iter().enumerate() {
            let (source, kind) = KeySource::from_key_file(bytes).unwrap();
            assert!(source.master_key().is_some_and(|k| k.to_hex() == key.to_hex()), "form {i}");
            let recorded = if i == 0 { KeyKind::Master { tiers: 3 } } else { KeyKind::Unlabeled };
            assert_eq!(kind, recorded, "form {i}");
        }
        assert!(KeySource::from_key_file(b"not a key").is_err());
        assert!(KeySource::from_key_file(&[7; 31]).is_err());
    }

    /// Each kind of recipient string goes to its own recipient; a string of none is
    /// refused, naming it.
    #[test]
    fn recipient_strings_are_told_apart_by_their_form() {
        let prompt = || -> Arc<dyn PluginPrompt> { Arc::new(NoPrompt) };
        let tpm = "onnx-protect-tpm1qd43050juykyy3lchnnw2caygre8wqmasyk7kvaq7jsnj3wcnrpfvm7cs3u";
        let r = parse_recipient(tpm, prompt()).unwrap();
        assert!(matches!(&r, Recipient::Provider(p) if p.kind() == KIND_TPM), "{}", r.describe());
        let x25519 = age::x25519::Identity::generate().to_public().to_string();
        assert!(matches!(parse_recipient(&format!(" {x25519}\n"), prompt()).unwrap(), Recipient::X25519(_)));
        let e = parse_recipient("age2nothing", prompt()).err().expect("refused");
        assert!(e.to_string().contains("age2nothing"), "{e}");
        let id = parse_identity_file("# none\n\n", "device:/dev/null", prompt()).err().expect("no identity");
        assert!(matches!(id, KeysError::BadIdentity { .. }), "{id}");
    }
}
