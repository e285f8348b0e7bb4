//! Where a master key comes from, and the keys of access tiers (docs/format.md §6,
//! §11 and its appendix on key files and passphrases).
//!
//! A key reaches a keystream in this order: [`KeySource`] gives the master key (a
//! passphrase is stretched with the manifest's Argon2id parameters); `tier_keys`
//! steps it down to the keys of the tiers below; `SessionKeys::derive` turns each
//! with the file's salt into that tier's keystreams, MAC key and key check value.

use onnx_protect_crypto::{MasterKey, SessionKeys};
use onnx_protect_proto::v1 as pb;
use zeroize::Zeroizing;

use crate::error::{CoreError, Result};
use crate::manifest::kdf_from_pb;

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

    /// The master key for a model whose manifest has `kdf` (a passphrase model) or not.
    /// A key is accepted for a tiered passphrase model: it is a tier key, derived from
    /// the passphrase's master (`derive-tier-key --passphrase-env`), checked like any key.
    pub(crate) fn master_for_decrypt(&self, kdf: Option<&pb::KdfParams>, tiered: bool) -> Result<MasterKey> {
        match (self, kdf) {
            (KeySource::Key(k), None) => Ok(k.clone()),
            (KeySource::Key(k), Some(_)) if tiered => Ok(k.clone()),
            (KeySource::Key(_), Some(_)) => {
                Err(CoreError::Key("this model was protected with a passphrase; give the passphrase, not a key".into()))
            }
            (KeySource::Passphrase(_), None) => {
                Err(CoreError::Key("this model was protected with a key file; give the key, not a passphrase".into()))
            }
            (KeySource::Passphrase(p), Some(k)) => Ok(MasterKey::from_passphrase(p, &kdf_from_pb(k)?)?),
            (KeySource::Licensed(k, _), _) => k.master_for_decrypt(kdf, tiered),
            (KeySource::Identity(_), _) => Err(CoreError::Key(
                "this model is in format 1, which opens with a key file or a passphrase only".into(),
            )),
        }
    }
}

/// Tier keys `K_1 ..= K_top` from the key of tier `top` (index `t − 1`).
fn tier_keys(key: &MasterKey, top: u32) -> Vec<MasterKey> {
    let mut keys = vec![key.clone()];
    for _ in 1..top {
        let next = keys.last().map(MasterKey::tier_down).unwrap_or_else(|| key.clone());
        keys.push(next);
    }
    keys.reverse();
    keys
}

/// The session keys of tiers `1 ..= top` of a file with `salt`, from the key of tier
/// `top` (index `t − 1`; one entry for an untiered file, `top` = 1).
pub(crate) fn tier_sessions(key: &MasterKey, top: u32, salt: &[u8; 32]) -> Vec<SessionKeys> {
    tier_keys(key, top).iter().map(|k| SessionKeys::derive(k, salt)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_1_argon2_parameters_over_the_caps_are_refused_before_argon2_runs() {
        let pass = KeySource::Passphrase(Zeroizing::new(b"a long enough passphrase".to_vec()));
        let kdf = |m_cost_kib, t_cost, p_cost| pb::KdfParams {
            algorithm: "argon2id".into(),
            salt: vec![3; 16],
            m_cost_kib,
            t_cost,
            p_cost,
        };
        // The file: 1 GiB and 64 passes (minutes and 1 GiB per attempt if it ran).
        for (m, t, p, field) in
            [(1_048_576, 64, 1, "t_cost"), (1_048_576, 3, 1, "m_cost_kib"), (65_536, 3, 16, "p_cost")]
        {
            let e =
                pass.master_for_decrypt(Some(&kdf(m, t, p)), false).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(field) && e.contains("outside the allowed range"), "{m} {t} {p}: {e}");
        }
        // At the caps it runs (kept small here: m = 32 KiB, t = 6, p = 4 are within them).
        assert!(pass.master_for_decrypt(Some(&kdf(32, 6, 4)), false).is_ok());
    }
}
