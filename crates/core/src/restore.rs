//! What decrypting a protected model up to a tier does (docs/format.md §8, §11): which
//! targets are decrypted, and what becomes of the manifest entry (removed after a full
//! decryption; after a partial one, kept with the restored tiers recorded).

use onnx_protect_crypto::Keystream;
use onnx_protect_format::write::{Content, Edit, Plan};
use onnx_protect_format::{FormatError, Model};

use crate::action::{edits_for, prepare, Action};
use crate::error::{CoreError, Result};
use crate::keys::KeySource;
use crate::manifest::{entry_field, Protected};
use crate::unlock::{unlock, Unlocked};

/// The decryption to perform: which targets, and what becomes of the manifest entry.
pub(crate) struct Restore {
    pub(crate) actions: Vec<Action>,
    /// Replacement of the manifest entry (empty: remove it).
    pub(crate) entry: Vec<u8>,
}

/// Checks the key (and every MAC it allows) and chooses what decryption up to `tier` does.
///
/// `as_is_ok`: a key whose tiers are all decrypted in the file already (and no `tier`
/// asked for) gives a restore that changes nothing, instead of an error; for running a
/// model in memory, where the file as it is is what that key serves.
pub(crate) fn plan_restore(
    model: &Model,
    p: &Protected,
    key: &KeySource,
    tier: Option<u32>,
    as_is_ok: bool,
) -> Result<Restore> {
    restore_for(model, p, unlock(model, p, key)?, tier, as_is_ok)
}

/// What decryption up to `tier` does with the keys `unlocked` (whose MACs the caller
/// checks: before, or in the pass that writes).
pub(crate) fn restore_for(
    model: &Model,
    p: &Protected,
    unlocked: Unlocked,
    tier: Option<u32>,
    as_is_ok: bool,
) -> Result<Restore> {
    let tiers = p.manifest.tiers;
    let restored = p.envelope.restored_tiers;
    if as_is_ok && tiers > 1 && tier.is_none() && unlocked.key_tier <= restored {
        let entry = model
            .bytes()
            .get(p.entry.range.start as usize..p.entry.range.end as usize)
            .ok_or_else(|| CoreError::BadManifest("manifest entry out of bounds".into()))?
            .to_vec();
        return Ok(Restore { actions: p.targets.iter().map(|_| Action::Skip).collect(), entry });
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
    Ok(Restore { actions, entry })
}

/// The highest tier a decryption with the key of `key_tier` restores when `tier` is
/// asked for, and whether that decrypts the model fully (always, untiered: tier 0).
fn restore_bound(p: &Protected, key_tier: u32, tier: Option<u32>) -> Result<(u32, bool)> {
    let tiers = p.manifest.tiers;
    let restored = p.envelope.restored_tiers;
    if tiers <= 1 {
        if tier.is_some_and(|t| t != 1) {
            return Err(CoreError::Output("this model has no tiers; omit --tier".into()));
        }
        return Ok((0, true));
    }
    let upto = tier.unwrap_or(key_tier);
    if upto > key_tier {
        return Err(CoreError::TierOutOfReach { key_tier, asked: upto });
    }
    if upto <= restored {
        return Err(CoreError::Output(format!("tiers up to {restored} are already decrypted in this model")));
    }
    Ok((upto, upto == tiers))
}

/// The model file's bytes with the actions of `r` applied and its manifest entry
/// replaced (or removed); external data files are not touched.
pub(crate) fn restored_model_bytes(model: &Model, p: &Protected, r: &Restore) -> Result<Vec<u8>> {
    let entry = Edit { range: p.entry.range.clone(), content: Content::Bytes(r.entry.clone()), ancestors: Vec::new() };
    let edits = edits_for(model, &p.targets, &r.actions, vec![entry])?;
    let plan = Plan::new(model.bytes().len() as u64, edits, Vec::new())?;
    let mut out = Vec::with_capacity(plan.output_len() as usize);
    let mut err = None;
    plan.write(model.bytes(), &mut out, &mut |tag, logical, chunk| {
        let target = &p.targets[tag];
        let t = &model.tensors[target.tensor];
        r.actions[tag].apply_chunk(target, t.data_type, logical, chunk, true).map_err(|e| {
            err = Some(e);
            FormatError::Invalid("keystream failed".into())
        })
    })
    .map_err(|e| err.take().unwrap_or(CoreError::Format(e)))?;
    Ok(out)
}
