//! From a key to the keystreams of a protected model, after every check the key
//! allows (docs/format.md §7, §8, §11): the key check value first (a wrong key is
//! refused before anything else), then the MACs and checksums over the ciphertext.
//!
//! Either the seals are checked here, before any output is started ([`unlock`]), or
//! the caller leaves a [`PendingCheck`] to the pass that reads the ciphertext anyway
//! (a full decryption, a key rotation), which checks it before any output appears.

use onnx_protect_crypto::{Keystream, MasterKey, SessionKeys};
use onnx_protect_format::{Model, TensorData};

use crate::action::transform_tensor;
use crate::error::{CoreError, Result};
use crate::keys::{tier_sessions, KeySource};
use crate::manifest::{salt_of, Protected};
use crate::seal::{check_tiers, check_untiered, leaf_digests, LeafSrc};

/// The keys a caller holds for a protected model, after every check they allow.
pub(crate) struct Unlocked {
    /// The tier of the given key (the number of tiers for the top key; 0 when untiered).
    pub key_tier: u32,
    /// The keystream of each target the key can decrypt (same order as the targets).
    pub streams: Vec<Option<Keystream>>,
}

/// Checks the key, then every MAC and checksum the key allows.
pub(crate) fn unlock(model: &Model, p: &Protected, key: &KeySource) -> Result<Unlocked> {
    unlock_master(model, p, &key.master_for_decrypt(p.manifest.kdf.as_ref(), p.manifest.tiers > 1)?)
}

/// [`unlock`] with the master key already derived (a passphrase is stretched once).
pub(crate) fn unlock_master(model: &Model, p: &Protected, master: &MasterKey) -> Result<Unlocked> {
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
pub(crate) fn untiered_keys(master: &MasterKey, p: &Protected) -> Result<SessionKeys> {
    let keys = SessionKeys::derive(master, &salt_of(p)?);
    if !keys.key_check_matches(&p.manifest.key_check) {
        return Err(CoreError::WrongKey);
    }
    Ok(keys)
}

/// The keystream of every target of an untiered model.
pub(crate) fn untiered_streams(keys: &SessionKeys, p: &Protected) -> Vec<Option<Keystream>> {
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
pub(crate) fn tier_keys_of(master: &MasterKey, p: &Protected) -> Result<TierKeys> {
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

/// Checks the key and the MAC of an untiered protected model; returns the session keys.
pub(crate) fn authenticate(model: &Model, p: &Protected, key: &KeySource) -> Result<SessionKeys> {
    if p.manifest.tiers > 1 {
        return Err(CoreError::Output("this operation does not support tiered models yet".into()));
    }
    let master = key.master_for_decrypt(p.manifest.kdf.as_ref(), false)?;
    unlock_master(model, p, &master)?;
    Ok(SessionKeys::derive(&master, &salt_of(p)?))
}
