//! Tier shares fitted to asked service levels on the user's labelled data (`encrypt
//! --tier-levels`, `--tier-data`).
//!
//! With `N` access tiers, the holder of tier `k` lacks the tiers `k + 1 … N`: the last
//! `F_k` of the encrypted bytes in the tier order (the split of docs/format.md §13 ranks the
//! chosen subsequences by importance; [`TierOrder::Importance`] puts the most important
//! last, [`TierOrder::Inverse`] the least important). Their accuracy falls as `F_k` grows,
//! so for each asked accuracy `a_k` (increasing in `k`) the fit finds the `F_k` where the
//! accuracy crosses `a_k`; the tier shares are then `F_(k−1) − F_k` (`F_0 = 1`, `F_N = 0`).
//!
//! The accuracy is a noisy, not always monotone function of `F`: a few rows can hold a
//! cliff, and each probe's level depends on the bytes standing for the keystream. So for
//! each order the fit probes a grid of `F` (log scale, from a thousandth of a percent to 1),
//! fits a non-increasing curve to the probes (pool-adjacent-violators, weighted by draws),
//! refines each crossing by bisection inside its bracket (re-fitting the curve after each
//! probe) and reads `F_k` off the curve. It then measures each tier at its `F_k` (over
//! [`MEASURE`] times the draws) and keeps the importance order if its ladder (every tier
//! encrypted, tiers 1 … N − 1, the original) climbs in steps of at least [`GOOD_STEP`] of
//! the even step; else it fits the inverse order too and keeps it if its smallest step is
//! larger by more than [`ORDER_MARGIN`] of the range. Where the most important rows hold a cliff (one row
//! taking the model from the original to chance), no share of the importance order gives a
//! middle level and the inverse order does.
//!
//! Each probe encrypts in memory what stays encrypted for the holder of tier `k` as the
//! rule's mode would, with seeded random bytes in place of the keystream (`fp`: sign and
//! mantissa bits XORed, `dp`: each span's elements shuffled, `ctr`: every bit), and scores
//! the mean accuracy over a few seeds. Everything is deterministic and independent of the
//! key the model is then encrypted with: the split depends only on the model, the policy,
//! the data and the asked levels.

use std::collections::BTreeMap;

use onnx_protect_format::{discover, Model, TensorData, TensorId};
use onnx_protect_select::{fp_mask, select, Mode, Policy, Selection, TierOrder};

use crate::assess::Bench;
use crate::attack::{Rng, TensorEdits};
use crate::error::{Result, RuntimeError};

/// Probes of the grid, log-spaced from [`MIN_STILL`] to 1.
const GRID: u32 = 16;

/// Bisection steps per tier inside the bracket of the fitted curve.
const STEPS: u32 = 4;

/// A fitted tier's level is measured over this many times the probes' draws.
pub const MEASURE: u32 = 3;

/// The smallest share of the encrypted bytes a tier above `k` may hold.
const MIN_STILL: f64 = 1e-5;

/// The importance order is kept without trying the inverse one when its fitted ladder's
/// smallest step is at least this share of the even step (`1 / N` of the range).
pub const GOOD_STEP: f64 = 0.75;

/// How much larger (as a share of the range) the inverse order's smallest step must be
/// for the fit to choose it over the importance order.
pub const ORDER_MARGIN: f64 = 0.02;

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
    /// Shares per tier, in the tier order (sum 1).
    pub shares: Vec<f64>,
    /// The tier order the shares are for (`importance` or `inverse`, [`TierOrder::name`]).
    pub order: &'static str,
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
    /// The smallest step of the fitted ladder (no key, tiers 1 … N − 1, original) as a
    /// share of its range, per order tried (`importance`, `inverse`).
    pub smallest_steps: Vec<(&'static str, f64)>,
}

impl TierFit {
    /// Sets the fitted order and shares on `policy` (the policy the fit was given).
    pub fn apply(&self, policy: &mut Policy) -> Result<()> {
        policy.tier_order = TierOrder::parse(self.order).unwrap_or_default();
        policy.set_tier_shares(&self.shares).map_err(|e| RuntimeError::Input(e.to_string()))
    }
}

/// Accuracies of the evenly spaced ladder from chance to `original` for `tiers` tiers:
/// `chance + k / N · (original − chance)`, `k = 1 … N − 1`.
pub fn even_targets(tiers: u32, chance: f64, original: f64) -> Vec<f64> {
    (1..tiers).map(|k| chance + f64::from(k) / f64::from(tiers) * (original - chance)).collect()
}

/// Fits the tier order and shares of `policy` (which must have `targets.len() + 1` tiers) so
/// that the holder of tier `k` gets about accuracy `targets[k − 1]` on `bench`'s data (which
/// must have labels); each accuracy is the mean over `draws` seeds. The policy's own
/// `tier_order` is ignored: both orders are fitted and the one grading more evenly kept.
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
    let draws = draws.max(1);
    let mut best: Option<(f64, TierOrder, Vec<FittedTier>, f64)> = None;
    let mut smallest_steps = Vec::new();
    let mut no_key = None;
    for order in [TierOrder::Importance, TierOrder::Inverse] {
        let mut p = policy.clone();
        p.tier_order = order;
        let mut probe = Probe { model, policy: &p, bench, draws, cache: BTreeMap::new() };
        if let Some(a) = no_key {
            // Every tier encrypted: the same selection whatever the order.
            probe.cache.insert(1f64.to_bits(), a);
        }
        let (fitted, nk) = fit_order(&mut probe, targets)?;
        no_key = Some(nk);
        let mut ladder = vec![nk];
        ladder.extend(fitted.iter().map(|t| t.accuracy));
        ladder.push(original);
        let step = smallest_step(&ladder);
        smallest_steps.push((order.name(), step));
        let better = match &best {
            None => true,
            Some((s, ..)) => step > s + ORDER_MARGIN,
        };
        if better {
            best = Some((step, order, fitted, nk));
        }
        if step >= GOOD_STEP / f64::from(tiers) {
            // Even enough: the inverse order is not tried.
            break;
        }
    }
    let (_, order, fitted, no_key) = best.expect("two orders were fitted");
    let mut shares = Vec::with_capacity(tiers as usize);
    let mut prev = 1.0;
    for t in &fitted {
        shares.push(prev - t.still_encrypted);
        prev = t.still_encrypted;
    }
    shares.push(prev);
    Ok(TierFit {
        shares,
        order: order.name(),
        tiers: fitted,
        original,
        no_key,
        chance,
        samples: bench.samples(),
        draws,
        smallest_steps,
    })
}

/// The smallest step of `ladder` as a share of its range (last − first); 0 without a range.
fn smallest_step(ladder: &[f64]) -> f64 {
    let range = ladder[ladder.len() - 1] - ladder[0];
    if range <= 0.0 {
        return 0.0;
    }
    ladder.windows(2).map(|w| (w[1] - w[0]) / range).fold(f64::INFINITY, f64::min)
}

/// Accuracy as a function of the share still encrypted, as the fit probes it.
trait Curve {
    /// The probe's mean accuracy at share `still`.
    fn accuracy(&mut self, still: f64) -> Result<f64>;
    /// A fitted tier's level at share `still` (more draws).
    fn measured(&mut self, still: f64) -> Result<f64>;
}

impl Curve for Probe<'_> {
    fn accuracy(&mut self, still: f64) -> Result<f64> {
        Probe::accuracy(self, still)
    }

    fn measured(&mut self, still: f64) -> Result<f64> {
        Probe::measured(self, still)
    }
}

/// The fitted tiers of `probe`'s order and the accuracy with every tier encrypted.
fn fit_order(probe: &mut impl Curve, targets: &[f64]) -> Result<(Vec<FittedTier>, f64)> {
    let no_key = probe.accuracy(1.0)?;
    let mut points: Vec<(f64, f64)> = vec![(1.0, no_key)];
    for j in 0..GRID - 1 {
        let f = MIN_STILL.powf(1.0 - f64::from(j) / f64::from(GRID - 1));
        points.push((f, probe.accuracy(f)?));
    }
    let mut fitted = Vec::with_capacity(targets.len());
    let mut above = 1.0f64;
    for (i, &target) in targets.iter().enumerate() {
        for _ in 0..STEPS {
            let Some((lo, hi)) = bracket(&points, target, above) else { break };
            let mid = (lo * hi).sqrt();
            if mid <= lo || mid >= hi || hi / lo < 1.0 + 1e-3 {
                break;
            }
            points.push((mid, probe.accuracy(mid)?));
        }
        let f = crossing(&points, target, above);
        points.push((f, probe.accuracy(f)?));
        let accuracy = probe.measured(f)?;
        fitted.push(FittedTier { tier: i as u32 + 1, target, accuracy, still_encrypted: f });
        above = f;
    }
    Ok((fitted, no_key))
}

/// The probed shares (ascending, deduplicated) with the non-increasing curve fitted to their
/// accuracies by pool-adjacent-violators (equal weights: every probe has as many draws).
fn monotone(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut p: Vec<(f64, f64)> = points.to_vec();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    p.dedup_by(|a, b| a.0 == b.0);
    // Blocks of (sum, count) whose means fall left to right.
    let mut blocks: Vec<(f64, f64)> = Vec::with_capacity(p.len());
    for &(_, a) in &p {
        blocks.push((a, 1.0));
        while blocks.len() > 1 {
            let (s1, n1) = blocks[blocks.len() - 1];
            let (s0, n0) = blocks[blocks.len() - 2];
            if s0 / n0 >= s1 / n1 {
                break;
            }
            blocks.pop();
            *blocks.last_mut().expect("two blocks") = (s0 + s1, n0 + n1);
        }
    }
    let mut out = Vec::with_capacity(p.len());
    let mut it = p.iter();
    for (s, n) in blocks {
        for _ in 0..n as usize {
            let &(f, _) = it.next().expect("as many points as the blocks hold");
            out.push((f, s / n));
        }
    }
    out
}

/// The adjacent probed shares `lo < hi` (both below `above`, `hi` at most `above`) between
/// which the fitted curve falls from at least `target` to below it.
fn bracket(points: &[(f64, f64)], target: f64, above: f64) -> Option<(f64, f64)> {
    let curve: Vec<(f64, f64)> = monotone(points).into_iter().filter(|&(f, _)| f <= above).collect();
    curve.windows(2).find(|w| w[0].1 >= target && w[1].1 < target).map(|w| (w[0].0, w[1].0))
}

/// The share (below `above`) where the fitted curve crosses `target`, interpolated on a log
/// scale inside its bracket; the smallest probed share when the curve stays below `target`,
/// just under `above` when it stays above it.
fn crossing(points: &[(f64, f64)], target: f64, above: f64) -> f64 {
    let curve: Vec<(f64, f64)> = monotone(points).into_iter().filter(|&(f, _)| f < above).collect();
    let Some(&(first, first_acc)) = curve.first() else { return above / 2.0 };
    if first_acc < target {
        return first;
    }
    for w in curve.windows(2) {
        let ((f0, a0), (f1, a1)) = (w[0], w[1]);
        if a0 >= target && a1 < target {
            let t = (a0 - target) / (a0 - a1);
            return (f0.ln() + t * (f1.ln() - f0.ln())).exp();
        }
    }
    // Above the target at every probed share under `above`: the largest of them.
    curve.last().map_or(above / 2.0, |&(f, _)| f)
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
    /// Mean accuracy when the last `still` of the encrypted bytes in the tier order stay
    /// encrypted.
    fn accuracy(&mut self, still: f64) -> Result<f64> {
        if let Some(a) = self.cache.get(&still.to_bits()) {
            return Ok(*a);
        }
        let a = self.mean_over(still, 0..u64::from(self.draws))?;
        self.cache.insert(still.to_bits(), a);
        Ok(a)
    }

    /// Mean accuracy as [`Probe::accuracy`] over [`MEASURE`] times as many seeds (the probes'
    /// seeds `0 … draws − 1`, then `draws … MEASURE · draws − 1`): a fitted tier's level.
    fn measured(&mut self, still: f64) -> Result<f64> {
        let probed = self.accuracy(still)?;
        let more = self.mean_over(still, u64::from(self.draws)..u64::from(MEASURE * self.draws))?;
        Ok((probed + f64::from(MEASURE - 1) * more) / f64::from(MEASURE))
    }

    /// Mean accuracy over `seeds` when the last `still` of the encrypted bytes in the tier
    /// order stay encrypted.
    fn mean_over(&mut self, still: f64, seeds: std::ops::Range<u64>) -> Result<f64> {
        let n = (seeds.end - seeds.start).max(1);
        let selection = self.still_encrypted(still)?;
        let mut sum = 0.0;
        for seed in seeds {
            let r = simulate(self.model, &selection, seed)?;
            let ext: crate::engine::External = r.external.iter().map(|(k, b)| (k.clone(), b.as_slice())).collect();
            sum += self.bench.score(&self.bench.run(&r.model, &ext)?);
        }
        Ok(sum / n as f64)
    }

    /// The chosen subsequences of the last `still` share in the policy's tier order (all of
    /// them for 1, in the policy's modes for its tier count), as a two-tier split with shares
    /// `1 − still`, `still` (the same cut as the `N`-tier split).
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
    use crate::assess::InputSource;
    use crate::npy::NpyArray;
    use std::path::PathBuf;

    fn zoo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/zoo")
    }

    /// The first `n` samples (all for `None`) of the `split` ("train" or "test") of a zoo data
    /// set as a bench for `model`.
    fn bench(model: &Model, data: &str, split: &str, n: Option<usize>) -> Bench {
        // The digits split sits beside the older digits models (docs of fixtures/zoo).
        let dir = if data == "digits" { zoo().join("../digits") } else { zoo().join(data) };
        let mut x = NpyArray::read(&dir.join(format!("{split}_x.npy"))).unwrap();
        let mut y = NpyArray::read(&dir.join(format!("{split}_y.npy"))).unwrap().to_labels().unwrap();
        if let Some(n) = n {
            x = x.rows(0, n).unwrap();
            y.truncate(n);
        }
        Bench::new(model, &InputSource::Arrays(BTreeMap::from([(String::new(), x)])), Some(y), None).unwrap()
    }

    /// Mean accuracy on `bench` over `seeds` simulated encryptions of what the holder of each
    /// tier below the top lacks under `fit` (and with every tier encrypted), then the original.
    fn ladder(model: &Model, policy: &Policy, fit: &TierFit, bench: &Bench, seeds: u64) -> Vec<f64> {
        let mut p = policy.clone();
        fit.apply(&mut p).unwrap();
        let mut probe = Probe { model, policy: &p, bench, draws: 1, cache: BTreeMap::new() };
        let mut out = Vec::new();
        for still in std::iter::once(1.0).chain(fit.tiers.iter().map(|t| t.still_encrypted)) {
            let selection = probe.still_encrypted(still).unwrap();
            let mut sum = 0.0;
            for seed in 100..100 + seeds {
                let r = simulate(model, &selection, seed).unwrap();
                let ext: crate::engine::External = r.external.iter().map(|(k, b)| (k.clone(), b.as_slice())).collect();
                sum += bench.score(&bench.run(&r.model, &ext).unwrap());
            }
            out.push(sum / seeds as f64);
        }
        probe.cache.clear();
        out.push(bench.original_score());
        out
    }

    /// A report of the fit on a zoo classifier (`TIER_FIT_MODEL=osuleaf/vit`, data set in
    /// `TIER_FIT_DATA`, default the model's directory): fitted on the training split, the
    /// ladder measured on the test split over 8 seeds.
    #[test]
    #[ignore = "a measurement: cargo test -p onnx-protect-runtime --lib fit_report -- --ignored --nocapture"]
    fn fit_report() {
        let name = std::env::var("TIER_FIT_MODEL").unwrap_or_else(|_| "osuleaf/conv1d".into());
        let data = std::env::var("TIER_FIT_DATA").unwrap_or_else(|_| name.split('/').next().unwrap().into());
        let model = Model::open(zoo().join(format!("{name}.onnx"))).unwrap();
        let mut policy = Policy::default();
        policy.set_tiers(3).unwrap();
        let train = bench(&model, &data, "train", None);
        let t0 = std::time::Instant::now();
        let targets = even_targets(3, train.chance().unwrap(), train.original_score());
        let fit = fit_tier_shares(&model, &policy, &train, &targets, 3).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let test = bench(&model, &data, "test", None);
        let l = ladder(&model, &policy, &fit, &test, 8);
        println!("{name}: {secs:.1} s, fit {fit:?}\n  test ladder {l:?}, smallest step {:.3}", smallest_step(&l));
    }

    /// The osuleaf Conv1d's most important row (`features.0.weight` row 16) holds a cliff:
    /// encrypting it alone takes the model from the original to chance, so no share of the
    /// importance order gives a middle level (its fitted ladder has a step ≤ 0; the fit
    /// measured in docs/protection-tiers.md gave this model shares 1, 0, 0 and a tier 1 at
    /// chance). Fitted on 24 training samples with one draw, the fit keeps the inverse order,
    /// and on 60 test samples (mean of 4 simulated encryptions) its tiers climb strictly from
    /// the key-less level to the original, tier 1 at least 15% of the range above the key-less
    /// level.
    #[test]
    fn the_fit_grades_the_osuleaf_conv1d_whose_most_important_row_is_a_cliff() {
        let model = Model::open(zoo().join("osuleaf/conv1d.onnx")).unwrap();
        let mut policy = Policy::default();
        policy.set_tiers(3).unwrap();
        let train = bench(&model, "osuleaf", "train", Some(24));
        let targets = even_targets(3, train.chance().unwrap(), train.original_score());
        let fit = fit_tier_shares(&model, &policy, &train, &targets, 1).unwrap();
        assert_eq!(fit.order, "inverse", "{fit:?}");
        let importance = fit.smallest_steps.iter().find(|(o, _)| *o == "importance").unwrap().1;
        assert!(importance <= 0.05, "{fit:?}");
        let test = bench(&model, "osuleaf", "test", Some(60));
        let l = ladder(&model, &policy, &fit, &test, 4);
        assert!(l[3] > 0.95 && l[0] < 0.3, "{l:?}");
        assert!(l.windows(2).all(|w| w[1] > w[0]), "{l:?} ({fit:?})");
        assert!(l[1] - l[0] >= 0.15 * (l[3] - l[0]), "{l:?} ({fit:?})");
    }

    /// A curve probed with noise, so not monotone (as the probes of the zoo's vision
    /// transformers and ResNet are, a few draws each): the fit lands each tier within 0.06 of its target (its
    /// measured level, the curve without noise), the shares nested, for each of 8 noise seeds.
    /// (A bisection on the noisy probes, keeping the probe closest to the target, misses by
    /// more than 0.06 on most seeds.)
    struct Synthetic(u64);

    impl Curve for Synthetic {
        fn accuracy(&mut self, f: f64) -> Result<f64> {
            // 0.1 at and above 10%, 1.0 below 0.1%, log-linear between, plus ±0.1 of noise.
            let x = ((f.log10() + 3.0) / 2.0).clamp(0.0, 1.0);
            let clean = 1.0 - 0.9 * x;
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let noise = ((self.0 >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.2;
            Ok((clean + noise).clamp(0.0, 1.0))
        }

        fn measured(&mut self, f: f64) -> Result<f64> {
            let x = ((f.log10() + 3.0) / 2.0).clamp(0.0, 1.0);
            Ok(1.0 - 0.9 * x)
        }
    }

    #[test]
    fn the_fitted_curve_finds_each_level_through_the_noise_of_the_probes() {
        let mut misses = Vec::new();
        for seed in 1..=16 {
            let (fitted, no_key) = fit_order(&mut Synthetic(seed), &[0.4, 0.7]).unwrap();
            assert!(no_key < 0.3, "{no_key}");
            assert_eq!(fitted.len(), 2);
            assert!(fitted[0].still_encrypted > fitted[1].still_encrypted, "{fitted:?}");
            misses.push(fitted.iter().map(|t| (t.accuracy - t.target).abs()).fold(0.0, f64::max));
        }
        let mean = misses.iter().sum::<f64>() / misses.len() as f64;
        assert!(mean <= 0.05 && misses.iter().all(|m| *m <= 0.1), "{misses:?}");
    }

    #[test]
    fn monotone_pools_the_violators() {
        let m = monotone(&[(0.1, 0.5), (0.01, 0.6), (0.001, 0.4), (1.0, 0.1)]);
        let got: Vec<f64> = m.iter().map(|p| p.1).collect();
        assert_eq!(m.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0.001, 0.01, 0.1, 1.0]);
        assert!((got[0] - 0.5).abs() < 1e-12 && (got[1] - 0.5).abs() < 1e-12, "{got:?}");
        assert!((got[2] - 0.5).abs() < 1e-12 && (got[3] - 0.1).abs() < 1e-12, "{got:?}");
    }

    #[test]
    fn even_targets_climb_from_chance_to_the_original() {
        let t = even_targets(4, 0.1, 0.9);
        assert_eq!(t.len(), 3);
        for (got, want) in t.iter().zip([0.3, 0.5, 0.7]) {
            assert!((got - want).abs() < 1e-12, "{t:?}");
        }
    }
}
