//! How strong is a model's protection? Five variants of a protected model (and,
//! for a tiered model with a key, one per reachable access tier) run on the same
//! inputs and are compared with the original.
//!
//! | variant | what it is | needs the key |
//! | --- | --- | --- |
//! | `original` | the unprotected model | no |
//! | `no_key` | the protected file run as it is: what a copier gets | no |
//! | `zero_fill` | the manifest's public spans set to zero ([`Fill::Zero`]) | no |
//! | `mean_fill` | the spans set to each tensor's mean of its clear elements ([`Fill::Mean`]) | no |
//! | `decrypted` | decrypted in memory with the key | yes |
//! | `tier_1` … `tier_T` | tiered models only: decrypted in memory up to tier `t`, higher tiers still encrypted | the key of tier `T` ≥ `t` |
//!
//! A model protected with `N > 1` access tiers gets one `tier_t` variant per tier
//! the given key reaches (`t = 1 ..= T` for the key of tier `T`; tiers already
//! restored in the file are left out: they are the `no_key` row). They follow the
//! five variants above; `tier_T` is the same model as `decrypted`, and `tier_N`
//! (top key) is the original. Without a key, or for an untiered model, there are
//! no tier rows.
//!
//! For each variant: top-1 agreement with the original, accuracy (with labels),
//! mean and max output distance, and the fraction of non-finite outputs. The
//! comparison uses the model's first output, read as `[N, ...]` (one row per
//! sample; top-1 is the arg-max of a row).

use std::collections::BTreeMap;
use std::path::Path;

use onnx_protect_core::memory::{decrypt_in_memory, decrypt_tier_in_memory};
use onnx_protect_core::protect::{key_tier, protection_view, KeySource};
use onnx_protect_format::{discover, Model};

use crate::attack::{repair, Fill};
use crate::engine::{Dim, External, Loaded, Prepared};
use crate::error::{Result, RuntimeError};
use crate::npy::{Dtype, NpyArray};

/// Largest batch run at once when the model's batch dimension is free.
const MAX_BATCH: usize = 512;

/// The five variants, in report order.
pub const VARIANTS: [&str; 5] = ["original", "no_key", "zero_fill", "mean_fill", "decrypted"];

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
    /// `ok`, `failed` (see `error`) or `skipped` (the `decrypted` variant without a key).
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
    /// Tensors mean-fill zero-filled instead (no clear element, or a type without a mean).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
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
        _ => "decrypted in memory with the key",
    }
}

/// A splitmix64 generator: deterministic random inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

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

/// The batch size to run: the model's fixed first dimension, else up to [`MAX_BATCH`].
fn batch_size(loaded: &Loaded, n: usize) -> usize {
    for info in loaded.inputs() {
        if let Some(Dim::Fixed(b)) = info.dims.first() {
            return (*b).max(1);
        }
    }
    n.clamp(1, MAX_BATCH)
}

/// Runs a model on all samples in batches; returns the first output's rows as `f64`.
fn run_rows(model: &[u8], external: &External, inputs: &[NpyArray], n: usize) -> Result<(String, Vec<Vec<f64>>)> {
    let loaded = Loaded::new(model, external)?;
    let b = batch_size(&loaded, n);
    let mut plans: BTreeMap<usize, Prepared> = BTreeMap::new();
    let mut rows: Vec<Vec<f64>> = Vec::with_capacity(n);
    let mut name = String::new();
    let mut from = 0;
    while from < n {
        let to = (from + b).min(n);
        // A model with a fixed batch gets full batches: the last one is padded with its last sample.
        let run_len =
            if loaded.inputs().iter().any(|i| matches!(i.dims.first(), Some(Dim::Fixed(_)))) { b } else { to - from };
        let mut chunk = Vec::with_capacity(inputs.len());
        for a in inputs {
            let mut c = a.rows(from, to)?;
            if run_len > to - from {
                let last = a.rows(to - 1, to)?;
                for _ in 0..run_len - (to - from) {
                    c.data.extend_from_slice(&last.data);
                }
                c.shape[0] = run_len;
            }
            chunk.push(c);
        }
        let plan = match plans.entry(run_len) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let shapes: Vec<(Dtype, Vec<usize>)> = chunk.iter().map(|a| (a.dtype, a.shape.clone())).collect();
                e.insert(loaded.prepare(&shapes)?)
            }
        };
        let refs: Vec<&NpyArray> = chunk.iter().collect();
        let outputs = plan.run(&refs)?;
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
        rows.extend(values.chunks(width.max(1)).take(to - from).map(|r| r.to_vec()));
        from = to;
    }
    Ok((name, rows))
}

fn argmax(row: &[f64]) -> Option<usize> {
    if row.iter().any(|v| !v.is_finite()) || row.is_empty() {
        return None;
    }
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    Some(best)
}

fn metrics(v: &mut VariantReport, rows: &[Vec<f64>], reference: &[Vec<f64>], labels: Option<&[i64]>) {
    let n = rows.len().max(1) as f64;
    let agree = rows.iter().zip(reference).filter(|(a, b)| argmax(a).is_some() && argmax(a) == argmax(b)).count();
    v.agreement = Some(agree as f64 / n);
    v.accuracy = labels
        .map(|l| rows.iter().zip(l).filter(|(r, &y)| argmax(r).is_some_and(|c| c as i64 == y)).count() as f64 / n);
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

fn externals(model: &Model) -> Result<BTreeMap<String, &[u8]>> {
    let mut m = BTreeMap::new();
    for f in &model.external_files {
        m.insert(f.location.clone(), f.bytes()?);
    }
    Ok(m)
}

/// Runs the five variants (and the tier rows of a tiered model) on the same inputs
/// and compares them with the original.
pub fn assess(original: &Path, protected: &Path, opts: &AssessOptions) -> Result<AssessReport> {
    let orig = Model::open(original)?;
    let prot = Model::open(protected)?;
    let p = protection_view(&prot)?;
    let weight_bytes: u64 = discover(&prot).iter().map(|w| prot.tensors[w.tensor].nbytes).sum();
    let orig_ext = externals(&orig)?;
    let loaded = Loaded::new(orig.bytes(), &orig_ext)?;
    let (inputs, input_kind) = gather_inputs(&loaded, &opts.inputs)?;
    drop(loaded);
    let n = inputs.first().and_then(|a| a.shape.first().copied()).unwrap_or(0);
    if n == 0 {
        return Err(RuntimeError::Input("no samples to run".into()));
    }
    if let Some(l) = &opts.labels {
        if l.len() != n {
            return Err(RuntimeError::Input(format!("{} labels for {n} samples", l.len())));
        }
    }
    let (output, reference) = run_rows(orig.bytes(), &orig_ext, &inputs, n)?;

    let mut variants = Vec::new();
    // The outputs of the model decrypted with the key: the key's own tier of a tiered model.
    let mut decrypted_rows = None;
    for name in VARIANTS {
        let mut v = blank(name.to_string(), describe(name).to_string(), None);
        let rows: Result<Option<Vec<Vec<f64>>>> = match name {
            "original" => Ok(Some(reference.clone())),
            "no_key" => externals(&prot).and_then(|e| run_rows(prot.bytes(), &e, &inputs, n)).map(|r| Some(r.1)),
            "zero_fill" | "mean_fill" => {
                let fill = if name == "zero_fill" { Fill::Zero } else { Fill::Mean };
                repair(&prot, fill).and_then(|r| {
                    v.notes = r
                        .zero_filled_instead
                        .iter()
                        .map(|t| format!("{t}: every element is encrypted, no clear mean; zero-filled"))
                        .collect();
                    let ext: External = r.external.iter().map(|(k, b)| (k.clone(), b.as_slice())).collect();
                    run_rows(&r.model, &ext, &inputs, n).map(|r| Some(r.1))
                })
            }
            _ => match opts.key {
                None => Ok(None),
                Some(key) => decrypt_in_memory(protected, key).map_err(RuntimeError::from).and_then(|d| {
                    let ext: External = d.external().iter().map(|(k, b)| (k.clone(), &b[..])).collect();
                    run_rows(&d, &ext, &inputs, n).map(|r| Some(r.1))
                }),
            },
        };
        match rows {
            Ok(Some(rows)) => {
                metrics(&mut v, &rows, &reference, opts.labels.as_deref());
                if name == "decrypted" {
                    decrypted_rows = Some(rows);
                }
            }
            Ok(None) => {
                v.status = "skipped";
                v.error = Some("no key given".into());
            }
            // A wrong key is the caller's mistake, not a property of the protection.
            Err(RuntimeError::Core(e)) if name == "decrypted" => return Err(RuntimeError::Core(e)),
            Err(e) => {
                v.status = "failed";
                v.error = Some(e.to_string());
            }
        }
        variants.push(v);
    }

    // Tiered models: one row per tier the key reaches, each decrypted in memory.
    let tiers = p.tiers;
    let restored = p.restored_tiers;
    let mut key_tier_of = None;
    if let (true, Some(key)) = (tiers > 1, opts.key) {
        let top = key_tier(&prot, key)?;
        key_tier_of = Some(top);
        for t in restored + 1..=top {
            let what = if t == tiers {
                format!("decrypted in memory up to tier {t} of {tiers} (all tiers: the original)")
            } else {
                format!("decrypted in memory up to tier {t} of {tiers} (tiers above stay encrypted)")
            };
            let mut v = blank(format!("tier_{t}"), what, Some(t));
            // The key's own tier is the `decrypted` variant: its outputs are reused.
            let rows = match (t == top, &decrypted_rows) {
                (true, Some(rows)) => Ok(rows.clone()),
                _ => decrypt_tier_in_memory(&prot, key, Some(t)).map_err(RuntimeError::from).and_then(|d| {
                    let ext: External = d.external().iter().map(|(k, b)| (k.clone(), &b[..])).collect();
                    run_rows(&d, &ext, &inputs, n).map(|r| r.1)
                }),
            };
            match rows {
                Ok(rows) => metrics(&mut v, &rows, &reference, opts.labels.as_deref()),
                Err(e) => {
                    v.status = "failed";
                    v.error = Some(e.to_string());
                }
            }
            variants.push(v);
        }
    }
    Ok(AssessReport {
        original: original.display().to_string(),
        protected: protected.display().to_string(),
        output,
        samples: n,
        inputs: input_kind,
        labels: opts.labels.is_some(),
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
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), Some(1));
        assert_eq!(argmax(&[0.1, f64::NAN, 0.2]), None);
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn metrics_of_identical_and_broken_rows() {
        let reference = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let mut v = blank("x".into(), String::new(), None);
        metrics(&mut v, &reference, &reference, Some(&[0, 0]));
        assert_eq!(
            (v.agreement, v.accuracy, v.mean_distance, v.non_finite),
            (Some(1.0), Some(0.5), Some(0.0), Some(0.0))
        );
        metrics(&mut v, &[vec![f64::NAN, 0.0], vec![1.0, 0.0]], &reference, None);
        assert_eq!((v.agreement, v.non_finite), (Some(0.0), Some(0.25)));
        assert_eq!(v.max_distance, Some(2f64.sqrt()));
    }
}
