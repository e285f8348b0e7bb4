//! Tier shares fitted to asked service levels on the user's labelled data (`encrypt
//! --tier-levels`, `--tier-data`).
//!
//! With `N` access tiers, the holder of tier `k` lacks the tiers `k + 1 … N`: the most
//! important `F_k` of the encrypted bytes (the split of docs/format.md §13 ranks the chosen
//! subsequences by importance). Their accuracy falls as `F_k` grows, so for each asked
//! accuracy `a_k` (increasing in `k`) a bisection on `F_k` (on a log scale, between a
//! thousandth of a percent and `F_(k−1)`, `F_0 = 1`) finds where the accuracy crosses
//! `a_k`; the tier shares are then `F_(k−1) − F_k` (`F_N = 0`).
//!
//! Each probe encrypts in memory what stays encrypted for the holder of tier `k` as the
//! rule's mode would, with seeded random bytes in place of the keystream (`fp`: sign and
//! mantissa bits XORed, `dp`: each span's elements shuffled, `ctr`: every bit), and scores
//! the mean accuracy over a few seeds. Everything is deterministic and independent of the
//! key the model is then encrypted with: the split depends only on the model, the policy,
//! the data and the asked levels.

use std::collections::BTreeMap;

use onnx_protect_format::{discover, Model, TensorData, TensorId};
use onnx_protect_select::{fp_mask, select, Mode, Policy, Selection};

use crate::assess::Bench;
use crate::attack::{Rng, TensorEdits};
use crate::error::{Result, RuntimeError};

/// Bisection steps per tier.
const STEPS: u32 = 10;

/// The smallest share of the encrypted bytes a tier above `k` may hold.
const MIN_STILL: f64 = 1e-5;

/// One tier below the top, as fitted.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FittedTier {
    pub tier: u32,
    /// The accuracy asked for.
    pub target: f64,
    /// The accuracy measured with the fitted shares (mean over the draws).
    pub accuracy: f64,
    /// Share of the encrypted bytes still encrypted for this tier's holder.
    pub still_encrypted: f64,
}

/// The fitted shares and what was measured with them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TierFit {
    /// Shares per tier, least important first (sum 1).
    pub shares: Vec<f64>,
    /// Tiers 1 … N − 1.
    pub tiers: Vec<FittedTier>,
    /// Accuracy of the original model on the data.
    pub original: f64,
    /// Accuracy with every tier encrypted (mean over the draws).
    pub no_key: f64,
    /// Share of the most frequent label.
    pub chance: f64,
    /// Samples measured on.
    pub samples: usize,
    /// Seeds each accuracy is the mean over.
    pub draws: u32,
}

/// Accuracies of the evenly spaced ladder from chance to `original` for `tiers` tiers:
/// `chance + k / N · (original − chance)`, `k = 1 … N − 1`.
pub fn even_targets(tiers: u32, chance: f64, original: f64) -> Vec<f64> {
    (1..tiers).map(|k| chance + f64::from(k) / f64::from(tiers) * (original - chance)).collect()
}

/// Fits the tier shares of `policy` (which must have `targets.len() + 1` tiers) so that the
/// holder of tier `k` gets about accuracy `targets[k − 1]` on `bench`'s data (which must
/// have labels); each accuracy is the mean over `draws` seeds.
pub fn fit_tier_shares(model: &Model, policy: &Policy, bench: &Bench, targets: &[f64], draws: u32) -> Result<TierFit> {
    let tiers = targets.len() as u32 + 1;
    if tiers < 2 || policy.tiers != tiers {
        return Err(RuntimeError::Input(format!(
            "{} tier levels for a policy of {} tiers",
            targets.len(),
            policy.tiers
        )));
    }
    let chance = bench.chance().ok_or_else(|| RuntimeError::Input("fitting tier levels needs labels".into()))?;
    let original = bench.original_score();
    let mut probe = Probe { model, policy, bench, draws: draws.max(1), cache: BTreeMap::new() };
    let no_key = probe.accuracy(1.0)?;
    let mut fitted = Vec::with_capacity(targets.len());
    let mut above = 1.0f64;
    for (i, &target) in targets.iter().enumerate() {
        let (mut lo, mut hi) = (MIN_STILL.min(above / 2.0), above);
        let mut best: Option<(f64, f64)> = None;
        let consider = |f: f64, acc: f64, best: &mut Option<(f64, f64)>| {
            if f < above && best.is_none_or(|(_, a)| (acc - target).abs() < (a - target).abs()) {
                *best = Some((f, acc));
            }
        };
        let at_lo = probe.accuracy(lo)?;
        consider(lo, at_lo, &mut best);
        if at_lo > target {
            for _ in 0..STEPS {
                let mid = (lo * hi).sqrt();
                let acc = probe.accuracy(mid)?;
                consider(mid, acc, &mut best);
                if acc < target {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
        }
        let (f, accuracy) = best.unwrap_or((lo, at_lo));
        fitted.push(FittedTier { tier: i as u32 + 1, target, accuracy, still_encrypted: f });
        above = f;
    }
    let mut shares = Vec::with_capacity(tiers as usize);
    let mut prev = 1.0;
    for t in &fitted {
        shares.push(prev - t.still_encrypted);
        prev = t.still_encrypted;
    }
    shares.push(prev);
    Ok(TierFit { shares, tiers: fitted, original, no_key, chance, samples: bench.samples(), draws: probe.draws })
}

/// Accuracies of the holder of the tier below a still-encrypted share, cached by share.
struct Probe<'a> {
    model: &'a Model,
    policy: &'a Policy,
    bench: &'a Bench,
    draws: u32,
    cache: BTreeMap<u64, f64>,
}

impl Probe<'_> {
    /// Mean accuracy when the most important `still` of the encrypted bytes stay encrypted.
    fn accuracy(&mut self, still: f64) -> Result<f64> {
        if let Some(a) = self.cache.get(&still.to_bits()) {
            return Ok(*a);
        }
        let selection = self.still_encrypted(still)?;
        let mut sum = 0.0;
        for seed in 0..u64::from(self.draws) {
            let r = simulate(self.model, &selection, seed)?;
            let ext: crate::engine::External = r.external.iter().map(|(k, b)| (k.clone(), b.as_slice())).collect();
            sum += self.bench.score(&self.bench.run(&r.model, &ext)?);
        }
        let a = sum / f64::from(self.draws);
        self.cache.insert(still.to_bits(), a);
        Ok(a)
    }

    /// The chosen subsequences of the top `still` share (all of them for 1, in the
    /// policy's modes for its tier count), as a two-tier split with shares `1 − still`, `still` (the same cut as the `N`-tier split).
    fn still_encrypted(&self, still: f64) -> Result<Selection> {
        let weights = discover(self.model);
        if still >= 1.0 {
            // Every tier: the policy's own selection, in its tiered modes.
            return Ok(select(self.model, &weights, self.policy));
        }
        let mut p = self.policy.clone();
        p.set_tiers(2).map_err(|e| RuntimeError::Input(e.to_string()))?;
        p.set_tier_shares(&[1.0 - still, still]).map_err(|e| RuntimeError::Input(e.to_string()))?;
        let mut selection = select(self.model, &weights, &p);
        let top = p.tiers;
        selection.chosen.retain(|c| {
            // Varint-stored tensors sit whole in the top tier (docs/format.md §3).
            c.tier == top || matches!(self.model.tensors[c.tensor].data, TensorData::Varint { .. })
        });
        Ok(selection)
    }
}

/// A span `[begin, end)` of a tensor's element bytes and the mode it is encrypted in.
type ModeSpan = (Mode, (u64, u64));

/// `model` with the spans of `selection` encrypted as their modes would, seeded random
/// bytes standing for the keystream.
fn simulate(model: &Model, selection: &Selection, seed: u64) -> Result<crate::attack::Repaired> {
    let mut spans: BTreeMap<TensorId, Vec<ModeSpan>> = BTreeMap::new();
    for c in &selection.chosen {
        spans.entry(c.tensor).or_default().extend(c.spans.iter().map(|s| (c.mode, *s)));
    }
    let mut out = TensorEdits::new(model)?;
    for (&tensor, spans) in &spans {
        let t = model
            .tensors
            .get(tensor)
            .ok_or_else(|| RuntimeError::Input(format!("tensor #{tensor} is not in the model")))?;
        let mut bytes = model.tensor_bytes(t.id)?.into_owned();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ tensor as u64);
        let elem = (t.data_type.bits() / 8).max(1) as usize;
        let mut ranges = Vec::with_capacity(spans.len());
        for &(mode, (a, b)) in spans {
            let (a, b) = (a as usize, (b as usize).min(bytes.len()));
            if a >= b {
                continue;
            }
            let region = &mut bytes[a..b];
            match (mode, fp_mask(t.data_type)) {
                (Mode::Fp, Some(mask)) => {
                    for (i, x) in region.iter_mut().enumerate() {
                        *x ^= (rng.next() as u8) & mask[(a + i) % mask.len()];
                    }
                }
                (Mode::Dp, _) if region.len() >= 2 * elem => {
                    let n = region.len() / elem;
                    for i in (1..n).rev() {
                        let j = (rng.next() % (i as u64 + 1)) as usize;
                        for k in 0..elem {
                            region.swap(i * elem + k, j * elem + k);
                        }
                    }
                }
                _ => region.iter_mut().for_each(|x| *x = rng.next() as u8),
            }
            ranges.push(a..b);
        }
        out.put(t, &bytes, &ranges)?;
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_targets_climb_from_chance_to_the_original() {
        let t = even_targets(4, 0.1, 0.9);
        assert_eq!(t.len(), 3);
        for (got, want) in t.iter().zip([0.3, 0.5, 0.7]) {
            assert!((got - want).abs() < 1e-12, "{t:?}");
        }
    }
}
