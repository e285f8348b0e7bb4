//! What decrypting a format-1 model up to a tier does (docs/format.md Appendix B.5,
//! B.6): which targets are decrypted, and what becomes of the manifest entry (removed
//! after a full decryption; after a partial one, kept with the restored tiers recorded).

use onnx_protect_crypto::Keystream;
use onnx_protect_format::Model;

use super::manifest::{entry_field, ProtectedV1};
use super::unlock::unlock;
use crate::error::{BadManifest, CoreError, OutputRefused, Result};
use crate::keys::KeySource;
use crate::pass::action::{prepare, Action};

/// The decryption to perform: which targets, and what becomes of the manifest entry.
pub(crate) struct Restore {
    pub(crate) actions: Vec<Action>,
    /// Replacement of the manifest entry (empty: remove it).
    pub(crate) entry: Vec<u8>,
    /// The tier the result is decrypted to.
    pub(crate) tier: u32,
}

/// Checks the key (and every MAC it allows) and chooses what decryption up to `tier` does:
/// a key whose tiers are all decrypted in the file already (and no `tier` asked for) gets
/// a restore that changes nothing, the file as it is.
pub(crate) fn plan_restore(model: &Model, p: &ProtectedV1, key: &KeySource, tier: Option<u32>) -> Result<Restore> {
    let unlocked = unlock(model, p, key)?;
    let tiers = p.manifest.tiers;
    let restored = p.envelope.restored_tiers;
    if tiers > 1 && tier.is_none() && unlocked.key_tier <= restored {
        let entry = model
            .bytes()
            .get(p.entry.range.start as usize..p.entry.range.end as usize)
            .ok_or(BadManifest::EntryOutOfBounds)?
            .to_vec();
        return Ok(Restore { actions: p.targets.iter().map(|_| Action::Skip).collect(), entry, tier: restored });
    }
    let (upto, full) = restore_bound(p, unlocked.key_tier, tier)?;
    let streams: Vec<Option<Keystream>> = p
        .targets
        .iter()
        .zip(unlocked.streams)
        .map(|(t, ks)| if tiers <= 1 || (t.tier > restored && t.tier <= upto) { ks } else { None })
        .collect();
    let actions = prepare(model, &p.targets, streams, true)?;
    let entry = if full {
        Vec::new()
    } else {
        let mut env = p.envelope.clone();
        env.restored_tiers = upto;
        entry_field(&env)
    };
    Ok(Restore { actions, entry, tier: if tiers <= 1 { 1 } else { upto } })
}

/// The highest tier a decryption with the key of `key_tier` restores when `tier` is
/// asked for, and whether that decrypts the model fully (always, untiered: tier 0).
fn restore_bound(p: &ProtectedV1, key_tier: u32, tier: Option<u32>) -> Result<(u32, bool)> {
    let tiers = p.manifest.tiers;
    let restored = p.envelope.restored_tiers;
    if tiers <= 1 {
        if tier.is_some_and(|t| t != 1) {
            return Err(OutputRefused::NoTiers.into());
        }
        return Ok((0, true));
    }
    let upto = tier.unwrap_or(key_tier);
    if upto > key_tier {
        return Err(CoreError::TierOutOfReach { key_tier, asked: upto, by_licence: false });
    }
    if upto <= restored {
        return Err(CoreError::AlreadyDecrypted { restored, key_tier: upto });
    }
    Ok((upto, upto == tiers))
}
