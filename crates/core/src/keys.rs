//! Where a master key comes from, and the keys of access tiers (docs/format.md §6,
//! §11 and its appendix on key files and passphrases).
//!
//! A key reaches a keystream in this order: [`KeySource`] gives the master key (a
//! passphrase is stretched with the manifest's Argon2id parameters); `tier_keys`
//! steps it down to the keys of the tiers below; `SessionKeys::derive` turns each
//! with the file's salt into that tier's keystreams, MAC key and key check value.

use onnx_protect_crypto::{KdfParams, MasterKey, SessionKeys};
use onnx_protect_proto::v1 as pb;
use zeroize::Zeroizing;

use crate::error::{CoreError, Result};
use crate::manifest::kdf_from_pb;

/// Where the master key comes from.
pub enum KeySource {
    /// A 256-bit key (key file, environment variable, ...).
    Key(MasterKey),
    /// A passphrase, stretched with Argon2id; the parameters live in the manifest.
    Passphrase(Zeroizing<Vec<u8>>),
}

impl KeySource {
    /// The master key for a new manifest, and the Argon2id parameters to record in it
    /// (fresh ones, for a passphrase).
    pub(crate) fn master_for_encrypt(&self) -> Result<(MasterKey, Option<KdfParams>)> {
        match self {
            KeySource::Key(k) => Ok((k.clone(), None)),
            KeySource::Passphrase(p) => {
                let params = KdfParams::new_random()?;
                Ok((MasterKey::from_passphrase(p, &params)?, Some(params)))
            }
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
