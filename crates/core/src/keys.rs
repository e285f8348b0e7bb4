//! The key material a caller gives ([`KeySource`]), and the keys of access tiers below a
//! key (docs/format.md Appendix A: `tier_chain`).

use onnx_protect_crypto::MasterKey;
use zeroize::Zeroizing;

/// The key material a caller gives: what a model is encrypted to, or what opens it.
#[derive(Clone)]
pub enum KeySource {
    /// A 256-bit key (key file, environment variable, tier key).
    Key(MasterKey),
    /// A passphrase, stretched with Argon2id; the parameters live in the manifest.
    Passphrase(Zeroizing<Vec<u8>>),
    /// Identities that open format-2 recipient stanzas: age X25519 identities or a key
    /// provider (decryption only).
    Identity(onnx_protect_keys::Identity),
    /// A key with the licence a model needs to open (docs/shipping.md#licences); a model
    /// that names no licence authority opens with the key alone.
    Licensed(Box<KeySource>, std::sync::Arc<crate::licence::LicenceCheck>),
}

impl KeySource {
    /// This key with `licence`.
    pub fn with_licence(self, licence: crate::licence::LicenceCheck) -> KeySource {
        KeySource::Licensed(Box::new(self.without_licence().clone()), std::sync::Arc::new(licence))
    }

    /// The key material without its licence.
    pub fn without_licence(&self) -> &KeySource {
        match self {
            KeySource::Licensed(k, _) => k.without_licence(),
            k => k,
        }
    }

    /// The licence given with the key, if any.
    pub fn licence(&self) -> Option<&crate::licence::LicenceCheck> {
        match self {
            KeySource::Licensed(_, l) => Some(l),
            _ => None,
        }
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
