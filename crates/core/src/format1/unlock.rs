//! From a key to the keystreams of a format-1 model, after every check the key allows
//! (docs/format.md Appendix B.3, B.6): the master key from a key or a passphrase, the
//! key check value first (a wrong key is refused before anything else), then the MACs
//! and checksums over the ciphertext (B.4), all before any output is started.

use onnx_protect_crypto::{Keystream, MasterKey, SessionKeys};
use onnx_protect_format::{Model, TensorData};
use onnx_protect_keys::Identity;
use onnx_protect_proto::v1 as pb;

use super::manifest::{kdf_from_pb, salt_of, ProtectedV1};
use super::seal::{check_tiers, check_untiered, leaf_digests, LeafSrc};
use crate::error::{CoreError, Result, UnusableKey};
use crate::keys::{tier_chain, KeySource};
use crate::pass::action::transform_tensor;

/// The master key `key` gives for a manifest with `kdf` (a passphrase model) or without
/// (B.3). A key is accepted for a tiered passphrase model: it is a tier key, derived from
/// the passphrase's master (`derive-tier-key --passphrase-env`), checked like any key (B.6).
pub(crate) fn master_key(key: &KeySource, kdf: Option<&pb::KdfParams>, tiered: bool) -> Result<MasterKey> {
    match (key.identity(), kdf) {
        (Identity::Key(k), None) => Ok(k.clone()),
        (Identity::Key(k), Some(_)) if tiered => Ok(k.clone()),
        (Identity::Key(_), Some(_)) => Err(UnusableKey::PassphraseModel.into()),
        (Identity::Passphrase(_), None) => Err(UnusableKey::KeyFileModel.into()),
        (Identity::Passphrase(p), Some(k)) => Ok(MasterKey::from_passphrase(p, &kdf_from_pb(k)?)?),
        (Identity::X25519(_) | Identity::Provider(_), _) => Err(UnusableKey::Format1Identity.into()),
    }
}

/// The session keys of tiers `1 ..= top` of a file with `salt`, from the key of tier
/// `top` (index `t − 1`; one entry for an untiered file, `top` = 1).
fn tier_sessions(key: &MasterKey, top: u32, salt: &[u8; 32]) -> Vec<SessionKeys> {
    tier_chain(key, top).iter().map(|k| SessionKeys::derive(k, salt)).collect()
}

/// The keys a caller holds for a protected model, after every check they allow.
pub(crate) struct Unlocked {
    /// The tier of the given key (the number of tiers for the top key; 0 when untiered).
    pub key_tier: u32,
    /// The keystream of each target the key can decrypt (same order as the targets).
    pub streams: Vec<Option<Keystream>>,
}

/// Checks the key, then every MAC and checksum the key allows.
pub(crate) fn unlock(model: &Model, p: &ProtectedV1, key: &KeySource) -> Result<Unlocked> {
    unlock_master(model, p, &master_key(key, p.manifest.kdf.as_ref(), p.manifest.tiers > 1)?)
}

/// [`unlock`] with the master key already derived (a passphrase is stretched once).
pub(crate) fn unlock_master(model: &Model, p: &ProtectedV1, master: &MasterKey) -> Result<Unlocked> {
    let chunk = p.manifest.chunk_size;
    if p.manifest.tiers <= 1 {
        let keys = untiered_keys(master, p)?;
        let leaves = leaf_digests(model, &p.targets, chunk, p.leaf_hash, &[])?;
        check_untiered(&keys, p, &leaves)?;
        return Ok(Unlocked { key_tier: 0, streams: untiered_streams(&keys, p) });
    }
    let TierKeys { key_tier, sessions, streams } = tier_keys_of(master, p)?;
    let restored = p.envelope.restored_tiers;
    // Restored tiers hold plaintext: re-encrypt them to check their MACs.
    let pre: Vec<Option<Vec<u8>>> = p
        .targets
        .iter()
        .zip(&streams)
        .map(|(t, ks)| match ks {
            Some(ks)
                if t.tier <= restored
                    && (t.mode.whole_spans() || matches!(model.tensors[t.tensor].data, TensorData::Varint { .. })) =>
            {
                transform_tensor(model, t, ks, false).map(Some)
            }
            _ => Ok(None),
        })
        .collect::<Result<_>>()?;
    let sources: Vec<LeafSrc> = p
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| match (&pre[i], &streams[i]) {
            (Some(b), _) => LeafSrc::Bytes(b),
            (None, Some(ks)) if t.tier <= restored => LeafSrc::Xor(ks),
            _ => LeafSrc::File,
        })
        .collect();
    let leaves = leaf_digests(model, &p.targets, chunk, p.leaf_hash, &sources)?;
    check_tiers(p, key_tier, &sessions, &leaves)?;
    Ok(Unlocked { key_tier, streams })
}

/// The session keys of an untiered model, if `master` passes its key check.
pub(crate) fn untiered_keys(master: &MasterKey, p: &ProtectedV1) -> Result<SessionKeys> {
    let keys = SessionKeys::derive(master, &salt_of(p)?);
    if !keys.key_check_matches(&p.manifest.key_check) {
        return Err(CoreError::WrongKey);
    }
    Ok(keys)
}

/// The keystream of every target of an untiered model.
pub(crate) fn untiered_streams(keys: &SessionKeys, p: &ProtectedV1) -> Vec<Option<Keystream>> {
    p.targets.iter().map(|t| Some(keys.keystream(t.stream_id))).collect()
}

/// The keys a key gives for a tiered model, before any MAC is checked.
pub(crate) struct TierKeys {
    /// The key's tier (1..=N).
    pub(crate) key_tier: u32,
    /// The session keys of tiers 1..=key_tier (index `tier − 1`).
    sessions: Vec<SessionKeys>,
    /// The keystream of each target of those tiers (same order as the targets).
    pub(crate) streams: Vec<Option<Keystream>>,
}

/// Finds the tier of `master` in a tiered manifest by its key check value (none
/// matches: "wrong key") and derives the keys of that tier and the ones below.
pub(crate) fn tier_keys_of(master: &MasterKey, p: &ProtectedV1) -> Result<TierKeys> {
    let salt = salt_of(p)?;
    let given = SessionKeys::derive(master, &salt);
    let mut key_tier = 0;
    for (i, kc) in p.manifest.tier_key_checks.iter().enumerate() {
        if given.key_check_matches(kc) {
            key_tier = i as u32 + 1;
        }
    }
    if key_tier == 0 {
        return Err(CoreError::WrongKey);
    }
    let sessions = tier_sessions(master, key_tier, &salt);
    let streams = p
        .targets
        .iter()
        .map(|t| (t.tier <= key_tier).then(|| sessions[t.tier as usize - 1].keystream(t.stream_id)))
        .collect();
    Ok(TierKeys { key_tier, sessions, streams })
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protect_crypto::CryptoError;
    use zeroize::Zeroizing;

    #[test]
    fn format_1_argon2_parameters_over_the_caps_are_refused_before_argon2_runs() {
        let pass = KeySource::passphrase(Zeroizing::new(b"a long enough passphrase".to_vec()));
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
            let e = master_key(&pass, Some(&kdf(m, t, p)), false).err();
            let refused = matches!(&e, Some(CoreError::Crypto(CryptoError::KdfParam { field: f, .. })) if *f == field);
            assert!(refused, "{m} {t} {p}: {e:?}");
        }
        // At the caps it runs (kept small here: m = 32 KiB, t = 6, p = 4 are within them).
        assert!(master_key(&pass, Some(&kdf(32, 6, 4)), false).is_ok());
    }
}
