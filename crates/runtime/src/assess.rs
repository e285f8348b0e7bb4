//! How strong is a model's protection? Variants of a protected model (and, for a
//! tiered model with a key, one per reachable access tier) run on the same inputs
//! and are compared with the original.
//!
//! | variant | what it is | needs the key |
//! | --- | --- | --- |
//! | `original` | the unprotected model | no |
//! | `no_key` | the protected file run as it is: what a copier gets | no |
//! | `zero_fill` | the manifest's public spans set to zero ([`Fill::Zero`]) | no |
//! | `mean_fill` | the spans set to each tensor's mean of its clear elements ([`Fill::Mean`]) | no |
//! | `init_fill` | the spans set as an attacker would initialise them, by tensor role ([`Fill::Init`]) | no |
//! | `zero_fill_bn`, `mean_fill_bn`, `init_fill_bn` | the fill, then every BatchNormalization's statistics re-estimated from unlabelled calibration inputs ([`crate::bn`]); only with calibration inputs and a model with BatchNormalization | no |
//! | `decrypted` | decrypted in memory with the key | yes |
//! | `tier_1` … `tier_T` | tiered models only: decrypted in memory up to tier `t`, higher tiers still encrypted | the key of tier `T` ≥ `t` |
//!
//! A model protected with `N > 1` access tiers gets one `tier_t` variant per tier
//! the given key reaches (`t = 1 ..= T` for the key of tier `T`; tiers already
//! restored in the file are left out: they are the `no_key` row). They follow the
//! variants above; `tier_T` is the same model as `decrypted`, and `tier_N`
//! (top key) is the original. Without a key, or for an untiered model, there are
//! no tier rows.
//!
//! For each variant: top-1 agreement with the original (for an output of one value
//! per sample, the class is 1 when the value is above 0.5, or above 0 when the
//! original's values leave [0, 1], i.e. are logits), accuracy (with labels),
//! mean and max output distance, and the fraction of non-finite outputs. The
//! comparison uses the model's first output, read as `[N, ...]` (one row per
//! sample; top-1 is the arg-max of a row). The report's headline is the best
//! key-less attack ([`KEYLESS`]): the one with the highest accuracy (with labels)
//! or agreement (without), first in table order on a tie.

use std::collections::BTreeMap;
use std::path::Path;

use onnx_protect_core::keys::KeySource;
use onnx_protect_core::memory::InMemory;
use onnx_protect_core::protect::{key_tier, protection_view};
use onnx_protect_format::{discover, Model};

use crate::attack::{repair_exposed, Exposure, Fill};
use crate::engine::{parse_proto, run_batches, Dim, External, Loaded};
use crate::error::{Result, RuntimeError};
use crate::npy::{Dtype, NpyArray};

/// The variants, in report order (tier rows follow).
pub const VARIANTS: [&str; 9] = [
    "original",
    "no_key",
    "zero_fill",
    "mean_fill",
    "init_fill",
    "zero_fill_bn",
    "mean_fill_bn",
    "init_fill_bn",
    "decrypted",
];

/// The key-less variants: what anyone with the file and no key can get.
pub const KEYLESS: [&str; 7] =
    ["no_key", "zero_fill", "mean_fill", "init_fill", "zero_fill_bn", "mean_fill_bn", "init_fill_bn"];

/// Where the inputs come from.
pub enum InputSource {
    /// Arrays by input name; all must have the same first dimension (the samples).
    Arrays(BTreeMap<String, NpyArray>),
    /// `n` random samples (floats uniform in [0, 1), integers in 0..10), from a fixed seed.
    Random { n: usize, seed: u64 },
}

/// Options of [`assess`].
pub struct AssessOptions<'a> {
    /// The key, for the `decrypted` variant (skipped without one).
    pub key: Option<&'a KeySource>,
    pub inputs: InputSource,
    /// One integer class label per sample.
    pub labels: Option<Vec<i64>>,
    /// Unlabelled inputs (arrays by input name, samples first) for the BatchNormalization
    /// re-estimation variants; without them those variants are skipped.
    pub calibration: Option<BTreeMap<String, NpyArray>>,
    /// Seed of the first init-fill draw.
    pub fill_seed: u64,
    /// Number of init-fill draws (seeds `fill_seed`, `fill_seed + 1`, ...): the init-fill
    /// rows report the mean over the draws, since an attacker without labels cannot tell
    /// a lucky draw from another. At least 1.
    pub fill_draws: u32,
}

/// The results of one variant.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VariantReport {
    /// One of [`VARIANTS`], or `tier_<t>` for a tier row.
    pub variant: String,
    pub description: String,
    /// The tier a `tier_<t>` row is decrypted up to (absent on the other rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<u32>,
    /// `ok`, `failed` (see `error`) or `skipped` (see `error`: no key, no calibration
    /// inputs, no BatchNormalization).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Fraction of samples whose top-1 class equals the original's.
    pub agreement: Option<f64>,
    /// Fraction of samples whose top-1 class equals the label.
    pub accuracy: Option<f64>,
    /// Euclidean distance between the sample's output row and the original's:
    /// mean and max over the samples whose output row is finite.
    pub mean_distance: Option<f64>,
    pub max_distance: Option<f64>,
    /// Fraction of output elements that are NaN or infinite.
    pub non_finite: Option<f64>,
    /// What a fill could not do as described (a tensor without a clear element, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The strongest key-less attack of a report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BestAttack {
    /// One of [`KEYLESS`].
    pub variant: String,
    pub accuracy: Option<f64>,
    pub agreement: Option<f64>,
}

/// The report of [`assess`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct AssessReport {
    pub original: String,
    pub protected: String,
    /// The output the comparison is made on.
    pub output: String,
    pub samples: usize,
    /// `"arrays"` or `"random"`.
    pub inputs: &'static str,
    pub labels: bool,
    /// The share of the most frequent label (what always answering one class gets);
    /// absent without labels.
    pub chance: Option<f64>,
    /// Calibration samples of the BatchNormalization re-estimation (0: none given).
    pub calibration_samples: usize,
    /// The best key-less attack (absent when every key-less variant failed).
    pub best_attack: Option<BestAttack>,
    /// Bytes of every weight (every floating-point constant and every constant in a
    /// weight role; `onnx_protect_format::discover`).
    pub weight_bytes: u64,
    pub encrypted_bytes: u64,
    pub encrypted_tensors: usize,
    /// The policy recorded in the manifest.
    pub policy: String,
    /// Number of access tiers (absent for an untiered model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tiers: Option<u32>,
    /// Tiers already decrypted in the protected file (absent for an untiered model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_tiers: Option<u32>,
    /// The tier of the given key (absent without a key or for an untiered model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_tier: Option<u32>,
    pub variants: Vec<VariantReport>,
}

fn blank(variant: String, description: String, tier: Option<u32>) -> VariantReport {
    VariantReport {
        variant,
        description,
        tier,
        status: "ok",
        error: None,
        agreement: None,
        accuracy: None,
        mean_distance: None,
        max_distance: None,
        non_finite: None,
        notes: Vec::new(),
    }
}

fn describe(v: &str) -> &'static str {
    match v {
        "original" => "the unprotected model",
        "no_key" => "the protected file as it is (a copier without the key)",
        "zero_fill" => "attacker: encrypted spans (public positions) set to zero",
        "mean_fill" => "attacker: encrypted spans set to the tensor's mean of its clear elements",
        "init_fill" => "attacker: encrypted spans initialised by role (norm scales 1, biases 0, others N(0, σ of the clear elements))",
        "zero_fill_bn" => "attacker: zero-fill, then BatchNormalization statistics re-estimated from unlabelled inputs",
        "mean_fill_bn" => "attacker: mean-fill, then BatchNormalization statistics re-estimated from unlabelled inputs",
        "init_fill_bn" => "attacker: init-fill, then BatchNormalization statistics re-estimated from unlabelled inputs",
        _ => "decrypted in memory with the key",
    }
}

/// The fill of an attack variant and whether it re-estimates BatchNormalization.
fn fill_of(variant: &str, seed: u64) -> Option<(Fill, bool)> {
    Some(match variant {
        "zero_fill" => (Fill::Zero, false),
        "mean_fill" => (Fill::Mean, false),
        "init_fill" => (Fill::Init { seed }, false),
        "zero_fill_bn" => (Fill::Zero, true),
        "mean_fill_bn" => (Fill::Mean, true),
        "init_fill_bn" => (Fill::Init { seed }, true),
        _ => return None,
    })
}

use crate::attack::Rng;

fn random_array(dtype: Dtype, shape: Vec<usize>, rng: &mut Rng) -> Result<NpyArray> {
    let n: usize = shape.iter().product();
    let mut data = Vec::with_capacity(n * dtype.size());
    for _ in 0..n {
        let u = rng.unit();
        let k = (u * 10.0) as u64;
        match dtype {
            Dtype::F32 => data.extend_from_slice(&(u as f32).to_le_bytes()),
            Dtype::F64 => data.extend_from_slice(&u.to_le_bytes()),
            Dtype::F16 => data.extend_from_slice(&half::f16::from_f64(u).to_le_bytes()),
            Dtype::Bool => data.push(u8::from(u < 0.5)),
            other => data.extend_from_slice(&k.to_le_bytes()[..other.size()]),
        }
    }
    Ok(NpyArray::new(dtype, shape, data)?)
}

/// The inputs in model order, each `[N, ...]`.
fn gather_inputs(loaded: &Loaded, source: &InputSource) -> Result<(Vec<NpyArray>, &'static str)> {
    match source {
        InputSource::Arrays(map) => {
            let mut out = Vec::new();
            for info in loaded.inputs() {
                let a = if loaded.inputs().len() == 1 && map.len() == 1 {
                    map.values().next()
                } else {
                    map.get(&info.name)
                };
                let a = a.ok_or_else(|| RuntimeError::Input(format!("no array for input '{}'", info.name)))?;
                out.push(a.clone());
            }
            let n: Vec<Option<usize>> = out.iter().map(|a| a.shape.first().copied()).collect();
            if n.iter().any(|x| x.is_none() || *x != n[0]) {
                return Err(RuntimeError::Input(
                    "every input needs the same number of samples (first dimension)".into(),
                ));
            }
            Ok((out, "arrays"))
        }
        InputSource::Random { n, seed } => {
            let mut rng = Rng(*seed);
            let mut out = Vec::new();
            for info in loaded.inputs() {
                let dtype = info.dtype.unwrap_or(Dtype::F32);
                let mut shape: Vec<usize> = info
                    .dims
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(k) => *k,
                        Dim::Symbolic(_) => 1,
                    })
                    .collect();
                if shape.is_empty() {
                    shape.push(*n);
                } else {
                    shape[0] = *n;
                }
                out.push(random_array(dtype, shape, &mut rng)?);
            }
            Ok((out, "random"))
        }
    }
}

/// Runs a model on all samples; returns the first output's name and rows as `f64`.
fn run_rows_loaded(loaded: &Loaded, inputs: &[NpyArray]) -> Result<(String, Vec<Vec<f64>>)> {
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut name = String::new();
    run_batches(loaded, inputs, true, |real, run_len, outputs| {
        let (oname, first) = outputs.into_iter().next().ok_or_else(|| RuntimeError::Tract("no outputs".into()))?;
        name = oname;
        if first.shape.first() != Some(&run_len) {
            return Err(RuntimeError::Input(format!(
                "output '{name}' has shape {:?}; assess needs the samples as its first dimension",
                first.shape
            )));
        }
        let values = first.to_f64();
        let width = values.len() / run_len.max(1);
        rows.extend(values.chunks(width.max(1)).take(real).map(|r| r.to_vec()));
        Ok(())
    })?;
    Ok((name, rows))
}

/// Runs model bytes on all samples; returns the first output's name and rows as `f64`.
fn run_rows(model: &[u8], external: &External, inputs: &[NpyArray]) -> Result<(String, Vec<Vec<f64>>)> {
    run_rows_loaded(&Loaded::new(model, external)?, inputs)
}

/// Where a one-value output row turns into class 1, from the original model's rows: 0.5
/// when every finite value of them lies in [0, 1] (a binary classifier's probability),
/// else 0 (a logit).
fn binary_cut(reference: &[Vec<f64>]) -> f64 {
    let probabilities = reference.iter().flatten().filter(|v| v.is_finite()).all(|v| (0.0..=1.0).contains(v));
    if probabilities {
        0.5
    } else {
        0.0
    }
}

/// The class a sample's output row stands for: the index of its largest value, or for a
/// row of one value 1 when it is above `cut` ([`binary_cut`]), else 0; none for a row
/// with a non-finite value.
fn argmax(row: &[f64], cut: f64) -> Option<usize> {
    if row.iter().any(|v| !v.is_finite()) || row.is_empty() {
        return None;
    }
    if let [p] = row {
        return Some(usize::from(*p > cut));
    }
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    Some(best)
}

/// Agreement with `reference`, accuracy against `labels`, distances and the non-finite
/// share of `rows`; `cut` reads one-value rows ([`argmax`]).
fn metrics(v: &mut VariantReport, rows: &[Vec<f64>], reference: &[Vec<f64>], cut: f64, labels: Option<&[i64]>) {
    let n = rows.len().max(1) as f64;
    let agree = rows
        .iter()
        .zip(reference)
        .filter(|(a, b)| argmax(a, cut).is_some() && argmax(a, cut) == argmax(b, cut))
        .count();
    v.agreement = Some(agree as f64 / n);
    v.accuracy = labels
        .map(|l| rows.iter().zip(l).filter(|(r, &y)| argmax(r, cut).is_some_and(|c| c as i64 == y)).count() as f64 / n);
    let mut dists = Vec::new();
    let (mut bad, mut total) = (0usize, 0usize);
    for (a, b) in rows.iter().zip(reference) {
        total += a.len();
        let nf = a.iter().filter(|x| !x.is_finite()).count();
        bad += nf;
        if nf == 0 && b.iter().all(|x| x.is_finite()) {
            dists.push(a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt());
        }
    }
    v.non_finite = Some(bad as f64 / total.max(1) as f64);
    if !dists.is_empty() {
        v.mean_distance = Some(dists.iter().sum::<f64>() / dists.len() as f64);
        v.max_distance = dists.iter().copied().reduce(f64::max);
    }
}

pub(crate) fn externals(model: &Model) -> Result<BTreeMap<String, &[u8]>> {
    let mut m = BTreeMap::new();
    for f in &model.external_files {
        m.insert(f.location.clone(), f.bytes()?);
    }
    Ok(m)
}

/// The data attacks are measured on: the inputs, the original model's outputs for
/// them, the labels and the calibration inputs.
pub struct Bench {
    inputs: Vec<NpyArray>,
    input_kind: &'static str,
    labels: Option<Vec<i64>>,
    calibration: Option<Vec<NpyArray>>,
    /// The name of the output compared.
    pub output: String,
    reference: Vec<Vec<f64>>,
    /// Where a one-value output turns into class 1 ([`binary_cut`] of `reference`).
    cut: f64,
}

/// The result of running one model variant.
pub struct Measured {
    pub rows: Vec<Vec<f64>>,
    pub notes: Vec<String>,
}

impl Bench {
    /// Runs `original` on the inputs. `calibration`, if given, must hold an array for
    /// each model input.
    pub fn new(
        original: &Model,
        inputs: &InputSource,
        labels: Option<Vec<i64>>,
        calibration: Option<&BTreeMap<String, NpyArray>>,
    ) -> Result<Bench> {
        let ext = externals(original)?;
        let loaded = Loaded::new(original.bytes(), &ext)?;
        let (inputs, input_kind) = gather_inputs(&loaded, inputs)?;
        let n = inputs.first().and_then(|a| a.shape.first().copied()).unwrap_or(0);
        if n == 0 {
            return Err(RuntimeError::Input("no samples to run".into()));
        }
        if let Some(l) = &labels {
            if l.len() != n {
                return Err(RuntimeError::Input(format!("{} labels for {n} samples", l.len())));
            }
        }
        let calibration = match calibration {
            Some(c) => {
                let (arrays, _) = gather_inputs(&loaded, &InputSource::Arrays(c.clone()))
                    .map_err(|e| RuntimeError::Input(format!("calibration inputs: {e}")))?;
                if arrays.first().and_then(|a| a.shape.first()).is_none_or(|&k| k == 0) {
                    return Err(RuntimeError::Input("calibration inputs: no samples".into()));
                }
                Some(arrays)
            }
            None => None,
        };
        let (output, reference) = run_rows_loaded(&loaded, &inputs)?;
        let cut = binary_cut(&reference);
        Ok(Bench { inputs, input_kind, labels, calibration, output, reference, cut })
    }

    /// Number of samples.
    pub fn samples(&self) -> usize {
        self.reference.len()
    }

    /// Number of calibration samples (0 without calibration inputs).
    pub fn calibration_samples(&self) -> usize {
        self.calibration.as_ref().and_then(|c| c.first()).and_then(|a| a.shape.first().copied()).unwrap_or(0)
    }

    /// The share of the most frequent label, if there are labels.
    pub fn chance(&self) -> Option<f64> {
        let labels = self.labels.as_ref()?;
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for &l in labels {
            *counts.entry(l).or_default() += 1;
        }
        Some(counts.values().copied().max().unwrap_or(0) as f64 / labels.len().max(1) as f64)
    }

    /// How many samples of `rows` (as [`Bench::run`] returns them) have a top-1 class other
    /// than the original model's.
    pub fn changed(&self, rows: &[Vec<f64>]) -> usize {
        rows.iter().zip(&self.reference).filter(|(a, b)| argmax(a, self.cut) != argmax(b, self.cut)).count()
    }

    /// Runs a model (bytes and external files) on the inputs.
    pub fn run(&self, model: &[u8], external: &External) -> Result<Vec<Vec<f64>>> {
        Ok(run_rows(model, external, &self.inputs)?.1)
    }

    /// Runs the attack `fill` (then, with `bn`, BatchNormalization re-estimation) on the
    /// spans `exposure` of `model`. `Ok(None)` with the reason when the attack does not
    /// apply: `bn` without calibration inputs or for a model without BatchNormalization.
    pub fn attack(
        &self,
        model: &Model,
        exposure: &Exposure,
        fill: Fill,
        bn: bool,
    ) -> Result<std::result::Result<Measured, &'static str>> {
        let calibration = match (bn, &self.calibration) {
            (true, None) => return Ok(Err("no calibration inputs given")),
            (true, Some(c)) => Some(c),
            (false, _) => None,
        };
        let r = repair_exposed(model, exposure, fill)?;
        let ext: External = r.external.iter().map(|(k, b)| (k.clone(), b.as_slice())).collect();
        let rows = match calibration {
            None => self.run(&r.model, &ext)?,
            Some(c) => {
                let mut proto = parse_proto(&r.model)?;
                if crate::bn::reestimate(&mut proto, &ext, c)? == 0 {
                    return Ok(Err("the model has no BatchNormalization"));
                }
                run_rows_loaded(&Loaded::from_proto(proto, &ext)?, &self.inputs)?.1
            }
        };
        Ok(Ok(Measured { rows, notes: r.notes }))
    }

    /// The original model's score: its accuracy with labels (1 without).
    pub fn original_score(&self) -> f64 {
        self.score(&self.reference)
    }

    /// The accuracy (with labels) or agreement (without) of `rows`: what the best
    /// attack is judged by.
    pub fn score(&self, rows: &[Vec<f64>]) -> f64 {
        let mut v = blank(String::new(), String::new(), None);
        metrics(&mut v, rows, &self.reference, self.cut, self.labels.as_deref());
        v.accuracy.or(v.agreement).unwrap_or(0.0)
    }

    fn measure(&self, v: &mut VariantReport, rows: &[Vec<f64>]) {
        metrics(v, rows, &self.reference, self.cut, self.labels.as_deref());
    }

    /// The metrics of several draws of a random fill: their means (the largest maximum
    /// distance), with a note giving the draws' range.
    fn measure_draws(&self, v: &mut VariantReport, runs: &[Vec<Vec<f64>>], seed: u64) {
        let mut each = Vec::with_capacity(runs.len());
        for rows in runs {
            let mut r = blank(String::new(), String::new(), None);
            self.measure(&mut r, rows);
            each.push(r);
        }
        let mean = |f: &dyn Fn(&VariantReport) -> Option<f64>| -> Option<f64> {
            let xs: Vec<f64> = each.iter().filter_map(f).collect();
            (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
        };
        v.agreement = mean(&|r| r.agreement);
        v.accuracy = mean(&|r| r.accuracy);
        v.mean_distance = mean(&|r| r.mean_distance);
        v.non_finite = mean(&|r| r.non_finite);
        v.max_distance = each.iter().filter_map(|r| r.max_distance).reduce(f64::max);
        if each.len() > 1 {
            let scores: Vec<f64> = each.iter().filter_map(|r| r.accuracy.or(r.agreement)).collect();
            let (lo, hi) = scores.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
            let what = if self.labels.is_some() { "accuracy" } else { "agreement" };
            v.notes.push(format!(
                "mean of {} draws (seeds {}–{}); {what} from {:.1}% to {:.1}%",
                each.len(),
                seed,
                seed.wrapping_add(each.len() as u64 - 1),
                100.0 * lo,
                100.0 * hi
            ));
        }
    }
}

/// Marks a variant as failed with `e`.
fn return_err(v: &mut VariantReport, e: RuntimeError) {
    v.status = "failed";
    v.error = Some(e.to_string());
}

/// The best of the key-less variants that ran: highest accuracy, else agreement.
pub fn best_attack(variants: &[VariantReport]) -> Option<BestAttack> {
    let mut best: Option<(&VariantReport, f64)> = None;
    for v in variants.iter().filter(|v| v.status == "ok" && KEYLESS.contains(&v.variant.as_str())) {
        let score = v.accuracy.or(v.agreement).unwrap_or(0.0);
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((v, score));
        }
    }
    best.map(|(v, _)| BestAttack { variant: v.variant.clone(), accuracy: v.accuracy, agreement: v.agreement })
}

/// The runs of one attack variant: `fill` (with BatchNormalization re-estimation when
/// `bn`), drawn `opts.fill_draws` times for the seeded init fill. Notes go to `v`; an
/// error marks `v` failed. `Err(why)` when the attack does not apply.
fn attack_draws(
    bench: &Bench,
    prot: &Model,
    exposure: &Exposure,
    name: &str,
    (fill, bn): (Fill, bool),
    opts: &AssessOptions,
    v: &mut VariantReport,
) -> std::result::Result<Vec<Vec<Vec<f64>>>, &'static str> {
    let draws = if matches!(fill, Fill::Init { .. }) { opts.fill_draws.max(1) } else { 1 };
    let mut out = Vec::new();
    for d in 0..u64::from(draws) {
        let fill = fill_of(name, opts.fill_seed.wrapping_add(d)).map_or(fill, |f| f.0);
        match bench.attack(prot, exposure, fill, bn) {
            Ok(Ok(m)) => {
                for n in m.notes {
                    if !v.notes.contains(&n) {
                        v.notes.push(n);
                    }
                }
                out.push(m.rows);
            }
            Ok(Err(why)) => return Err(why),
            Err(e) => return_err(v, e),
        }
        if v.status == "failed" {
            break;
        }
    }
    Ok(out)
}

/// One variant per tier `restored + 1 ..= top` of a tiered model (of `tiers`), each
/// decrypted in memory with `key`; the key's own tier reuses the outputs of `decrypted`.
fn tier_variants(
    bench: &Bench,
    prot: &Model,
    key: &KeySource,
    (restored, top, tiers): (u32, u32, u32),
    decrypted: Option<&Vec<Vec<f64>>>,
) -> Vec<VariantReport> {
    let mut variants = Vec::new();
    for t in restored + 1..=top {
        let what = if t == tiers {
            format!("decrypted in memory up to tier {t} of {tiers} (all tiers: the original)")
        } else {
            format!("decrypted in memory up to tier {t} of {tiers} (tiers above stay encrypted)")
        };
        let mut v = blank(format!("tier_{t}"), what, Some(t));
        let rows = match (t == top, decrypted) {
            (true, Some(rows)) => Ok(rows.clone()),
            _ => InMemory::model(prot, key).tier(Some(t)).load().map_err(RuntimeError::from).and_then(|d| {
                let ext: External = d.external().iter().map(|(k, b)| (k.clone(), &b[..])).collect();
                bench.run(&d, &ext)
            }),
        };
        match rows {
            Ok(rows) => bench.measure(&mut v, &rows),
            Err(e) => {
                v.status = "failed";
                v.error = Some(e.to_string());
            }
        }
        variants.push(v);
    }
    variants
}

/// Runs the variants (and the tier rows of a tiered model) on the same inputs and
/// compares them with the original.
pub fn assess(original: &Path, protected: &Path, opts: &AssessOptions) -> Result<AssessReport> {
    let orig = Model::open(original)?;
    let prot = Model::open(protected)?;
    let p = protection_view(&prot)?;
    let exposure = Exposure::of_protected(&prot)?;
    let weight_bytes: u64 = discover(&prot).iter().map(|w| prot.tensors[w.tensor].nbytes).sum();
    let bench = Bench::new(&orig, &opts.inputs, opts.labels.clone(), opts.calibration.as_ref())?;

    let mut variants = Vec::new();
    // The outputs of the model decrypted with the key: the key's own tier of a tiered model.
    let mut decrypted_rows = None;
    for name in VARIANTS {
        let mut v = blank(name.to_string(), describe(name).to_string(), None);
        let runs: Result<std::result::Result<Vec<Vec<Vec<f64>>>, &str>> = match (name, fill_of(name, 0)) {
            ("original", _) => Ok(Ok(vec![bench.reference.clone()])),
            ("no_key", _) => externals(&prot).and_then(|e| bench.run(prot.bytes(), &e)).map(|r| Ok(vec![r])),
            (_, Some((fill, bn))) => Ok(attack_draws(&bench, &prot, &exposure, name, (fill, bn), opts, &mut v)),
            _ => match opts.key {
                None => Ok(Err("no key given")),
                Some(key) => InMemory::file(protected, key).load().map_err(RuntimeError::from).and_then(|d| {
                    let ext: External = d.external().iter().map(|(k, b)| (k.clone(), &b[..])).collect();
                    bench.run(&d, &ext).map(|r| Ok(vec![r]))
                }),
            },
        };
        match runs {
            _ if v.status == "failed" => {}
            Ok(Ok(runs)) => {
                bench.measure_draws(&mut v, &runs, opts.fill_seed);
                if name == "decrypted" {
                    decrypted_rows = runs.into_iter().next();
                }
            }
            Ok(Err(why)) => {
                v.status = "skipped";
                v.error = Some(why.into());
            }
            // A wrong key is the caller's mistake, not a property of the protection.
            Err(RuntimeError::Core(e)) if name == "decrypted" => return Err(RuntimeError::Core(e)),
            Err(e) => return_err(&mut v, e),
        }
        variants.push(v);
    }

    // Tiered models: one row per tier the key reaches, each decrypted in memory.
    let (tiers, restored) = (p.tiers, p.restored_tiers);
    let mut key_tier_of = None;
    if let (true, Some(key)) = (tiers > 1, opts.key) {
        let top = key_tier(&prot, key)?;
        key_tier_of = Some(top);
        variants.extend(tier_variants(&bench, &prot, key, (restored, top, tiers), decrypted_rows.as_ref()));
    }
    Ok(AssessReport {
        original: original.display().to_string(),
        protected: protected.display().to_string(),
        output: bench.output.clone(),
        samples: bench.samples(),
        inputs: bench.input_kind,
        labels: opts.labels.is_some(),
        chance: bench.chance(),
        calibration_samples: bench.calibration_samples(),
        best_attack: best_attack(&variants),
        weight_bytes,
        encrypted_bytes: p.targets.iter().flat_map(|t| &t.spans).map(|(a, b)| b - a).sum(),
        encrypted_tensors: p.targets.len(),
        policy: p.policy_summary.clone(),
        tiers: (tiers > 1).then_some(tiers),
        restored_tiers: (tiers > 1).then_some(restored),
        key_tier: key_tier_of,
        variants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_refuses_non_finite_rows() {
        assert_eq!(argmax(&[0.1, 0.7, 0.2], 0.5), Some(1));
        assert_eq!(argmax(&[0.1, f64::NAN, 0.2], 0.5), None);
        assert_eq!(argmax(&[], 0.5), None);
        // One value per sample: class 1 above the cut.
        assert_eq!((argmax(&[0.7], 0.5), argmax(&[0.2], 0.5), argmax(&[f64::INFINITY], 0.5)), (Some(1), Some(0), None));
        assert_eq!((argmax(&[0.2], 0.0), argmax(&[-0.2], 0.0)), (Some(1), Some(0)));
    }

    #[test]
    fn one_value_outputs_are_probabilities_only_when_the_original_stays_in_0_1() {
        let probabilities = vec![vec![0.9], vec![0.1], vec![f64::NAN], vec![1.0]];
        assert_eq!(binary_cut(&probabilities), 0.5);
        let logits = vec![vec![2.3], vec![-1.7], vec![0.4]];
        assert_eq!(binary_cut(&logits), 0.0);
        // A logit model: 0.3 and 0.4 are both class 1, -0.1 class 0, so one sample of three
        // changed class; a probability cut of 0.5 would have called all three class 0.
        let mut v = blank("x".into(), String::new(), None);
        let reference = vec![vec![0.3], vec![-0.2], vec![-5.0]];
        metrics(&mut v, &[vec![0.4], vec![-0.1], vec![0.2]], &reference, binary_cut(&reference), Some(&[1, 0, 0]));
        assert_eq!(v.accuracy, Some(2.0 / 3.0));
        assert_eq!(v.agreement, Some(2.0 / 3.0));
    }

    #[test]
    fn metrics_of_identical_and_broken_rows() {
        let reference = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let mut v = blank("x".into(), String::new(), None);
        metrics(&mut v, &reference, &reference, binary_cut(&reference), Some(&[0, 0]));
        assert_eq!(
            (v.agreement, v.accuracy, v.mean_distance, v.non_finite),
            (Some(1.0), Some(0.5), Some(0.0), Some(0.0))
        );
        metrics(&mut v, &[vec![f64::NAN, 0.0], vec![1.0, 0.0]], &reference, binary_cut(&reference), None);
        assert_eq!((v.agreement, v.non_finite), (Some(0.0), Some(0.25)));
        assert_eq!(v.max_distance, Some(2f64.sqrt()));
    }
}
