//! Tracing a suspect copy back to a recipient (docs/tracing.md §3).
//!
//! For every planned tensor of the original the suspect's counterpart is found (by key,
//! or as a dynamically quantised `KEY_quantized` initializer with `KEY_scale` and
//! `KEY_zero_point`, possibly transposed), and the difference `d = suspect − original` is
//! taken per element (non-finite differences count as 0). Each tensor's differences are
//! divided by their typical size, the median of the non-zero `|d|`, and clipped to
//! `[−CLIP, CLIP]` ([`CLIP`] = 3): `u = clamp(d / median|d|, ±3)`. So no tensor that
//! changed a lot (a fine-tuned head) drowns the others, and no element that changed a lot
//! (a pruned weight, an outlier) drowns the ±δ marks of the rest. For each recipient `R`
//! with patterns `s`:
//!
//! ```text
//! z_R = Σ u_i·s_i / √(Σ u_i²)
//! ```
//!
//! If the copy is not `R`'s, `s` was derived with a key the copy's maker never saw, so
//! it is independent of `u`, whose scaling and orientation are chosen from the suspect
//! and the original alone; the `s_i` are independent fair ±1 signs and Hoeffding's
//! inequality gives `P(z_R ≥ t) ≤ exp(−t²/2)` for every `t > 0`. Over `N` recipients the
//! union bound gives `P(max z ≥ t) ≤ N·exp(−t²/2)`, so the threshold
//! `t = √(2·ln(N/p))` keeps the probability of naming anyone for an unrelated copy at
//! most `p`.

use std::collections::HashMap;

use onnx_protect_format::{DataType, Model, TensorId};
use serde::Serialize;

use onnx_protect_lock::{ClassPermutation, OutputLayer};

use crate::error::{Result, TraceError};
use crate::ledger::{Ledger, Mark};
use crate::order::{float_layer, recover_order, unpermute, OrderReport};
use crate::plan::{decode_float, decode_int8, is_marked_float, plan, tensor_key, weights_digest, Planned};
use crate::secret::{FingerprintKey, RecipientId};

/// Default bound on the probability that a trace names a recipient for a copy that is
/// not theirs.
pub const DEFAULT_FALSE_POSITIVE: f64 = 1e-6;

/// The score a recipient must reach among `recipients` for a false-positive probability
/// of at most `p`: `√(2·ln(recipients/p))`.
pub fn threshold(recipients: usize, p: f64) -> f64 {
    (2.0 * (recipients.max(1) as f64 / p).ln()).sqrt()
}

/// The probability bound of a score `z` among `recipients`: `min(1, recipients·exp(−z²/2))`
/// for `z > 0`, else 1. It bounds how likely an unrelated copy scores at least `z` for
/// some recipient.
pub fn bound(recipients: usize, z: f64) -> f64 {
    if z > 0.0 {
        (recipients as f64 * (-z * z / 2.0).exp()).min(1.0)
    } else {
        1.0
    }
}

/// Checks a false-positive probability: finite, in (0, 1).
pub fn check_false_positive(p: f64) -> Result<()> {
    if p.is_finite() && p > 0.0 && p < 1.0 {
        Ok(())
    } else {
        Err(TraceError::Parameter(format!("false-positive probability {p} is outside (0, 1)")))
    }
}

/// How a suspect tensor was matched to the original's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum How {
    /// A float tensor with the same key and layout.
    Name,
    /// A float tensor with the same key, transposed (2-D).
    Transposed,
    /// An INT8/UINT8 `KEY_quantized` tensor, dequantised with `KEY_scale` and `KEY_zero_point`.
    Dequantized,
    /// Dequantised, then transposed (a Gemm weight that quantisation turned into a MatMul).
    DequantizedTransposed,
}

/// A suspect tensor's values in the original's layout.
#[derive(Debug, Clone)]
pub struct Matched {
    /// The values, one per element of the original tensor.
    pub values: Vec<f64>,
    /// How they were found.
    pub how: How,
}

/// `log10` of [`bound`], which stays finite where the bound itself underflows to 0.
pub fn log10_bound(recipients: usize, z: f64) -> f64 {
    if z > 0.0 {
        ((recipients.max(1) as f64).log10() - z * z / (2.0 * std::f64::consts::LN_10)).min(0.0)
    } else {
        0.0
    }
}

/// One recipient's score.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// The recipient ID.
    pub recipient: String,
    /// The statistic `z`.
    pub z: f64,
    /// [`bound`] of `z` among the ledger's recipients.
    pub bound: f64,
    /// [`log10_bound`] of `z` among the ledger's recipients.
    pub log10_bound: f64,
}

/// One matched tensor's share of the best recipient's score.
#[derive(Debug, Clone, Serialize)]
pub struct TensorScore {
    /// The tensor's key.
    pub tensor: String,
    /// Elements compared.
    pub elements: u64,
    /// How it was matched.
    pub how: How,
    /// `Σ u·s / √(Σ u²)` over this tensor alone; 0 for a tensor equal to the original.
    pub z: f64,
}

/// Counts of the original's planned tensors.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TensorCounts {
    /// Tensors that carry a fingerprint in a marked copy.
    pub planned: usize,
    /// Of those, found in the suspect.
    pub matched: usize,
    /// Of the matched, found under the same key with the same layout.
    pub by_name: usize,
    /// Of the matched, found transposed.
    pub transposed: usize,
    /// Of the matched, found dequantised.
    pub dequantized: usize,
    /// Of the matched, equal to the original in every element.
    pub unchanged: usize,
}

impl TensorCounts {
    /// Counts one matched tensor, found as `how` says.
    fn count(&mut self, how: How) {
        self.matched += 1;
        match how {
            How::Name => self.by_name += 1,
            How::Transposed => self.transposed += 1,
            How::Dequantized => self.dequantized += 1,
            How::DequantizedTransposed => {
                self.dequantized += 1;
                self.transposed += 1;
            }
        }
    }
}

/// What a trace found.
#[derive(Debug, Clone, Serialize)]
pub struct TraceReport {
    /// The fingerprint secret's key ID.
    pub key_id: String,
    /// The original's weights digest.
    pub original_digest: String,
    /// Number of recipients tested.
    pub recipients: usize,
    /// The false-positive probability the threshold was chosen for.
    pub false_positive: f64,
    /// [`threshold`] for `recipients` and `false_positive`.
    pub threshold: f64,
    /// Every recipient whose score reaches the threshold, highest first.
    pub matches: Vec<Score>,
    /// The highest score.
    pub best: Score,
    /// Every recipient's score, highest first.
    pub scores: Vec<Score>,
    /// Tensor counts.
    pub tensors: TensorCounts,
    /// Elements compared.
    pub elements: u64,
    /// Whether every compared element equals the original (the suspect carries no mark).
    pub identical: bool,
    /// Per matched tensor, the best recipient's score over that tensor alone.
    pub best_by_tensor: Vec<TensorScore>,
    /// Keys of the planned tensors the suspect does not hold.
    pub unmatched: Vec<String>,
    /// What the suspect's class order says, when the ledger records label-locked copies of
    /// the original (docs/tracing.md §7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderReport>,
}

/// Traces suspects against one original model and the recipients of a ledger.
pub struct Tracer<'a> {
    original: &'a Model,
    key: &'a FingerprintKey,
    recipients: Vec<Mark>,
    planned: Vec<Planned>,
    digest: String,
    /// The original's output layer and the class orders of the label-locked recipients.
    locks: Option<(OutputLayer, Vec<(String, ClassPermutation)>)>,
}

impl<'a> Tracer<'a> {
    /// A tracer for copies of `original` marked with `key` for one of `recipients`
    /// (duplicates are tested once).
    pub fn new(original: &'a Model, key: &'a FingerprintKey, recipients: &[RecipientId]) -> Result<Tracer<'a>> {
        let marks: Vec<Mark> = recipients.iter().cloned().map(Mark::from).collect();
        Tracer::for_marks(original, key, &marks)
    }

    /// A tracer for the given marks (recipients and variants; duplicates are tested once).
    pub fn for_marks(original: &'a Model, key: &'a FingerprintKey, marks: &[Mark]) -> Result<Tracer<'a>> {
        let mut unique: Vec<Mark> = Vec::with_capacity(marks.len());
        for m in marks {
            if !unique.contains(m) {
                unique.push(m.clone());
            }
        }
        if unique.is_empty() {
            return Err(TraceError::Parameter("no recipient to test".into()));
        }
        let planned = plan(original)?;
        let digest = weights_digest(original, &planned)?;
        Ok(Tracer { original, key, recipients: unique, planned, digest, locks: None })
    }

    /// Also tests the class orders of `locked` recipients' label-locked copies
    /// ([`FingerprintKey::lock_seed`]). Errors when the original has no float output layer
    /// of `classes` classes to lock.
    pub fn with_locks(mut self, locked: &[(RecipientId, u64)]) -> Result<Tracer<'a>> {
        if locked.is_empty() {
            return Ok(self);
        }
        let Some(layer) = float_layer(self.original)? else {
            return Err(TraceError::Lock(
                "the ledger records label-locked copies, but the original has no output layer with float weights \
                 to read a class order from: wrong --original?"
                    .into(),
            ));
        };
        let mut orders = Vec::with_capacity(locked.len());
        for (r, classes) in locked {
            if *classes != layer.classes as u64 {
                return Err(TraceError::Lock(format!(
                    "the ledger records a lock of {classes} classes for '{r}', the original's output layer has {}",
                    layer.classes
                )));
            }
            let seed = self.key.lock_seed(r, &self.digest)?;
            let perm = ClassPermutation::derive(&seed, layer.classes).map_err(|e| TraceError::Lock(e.to_string()))?;
            orders.push((r.to_string(), perm));
        }
        self.locks = Some((layer, orders));
        Ok(self)
    }

    /// A tracer for the recipients `ledger` records for `original` and `key`. Errors
    /// when the ledger has none (a wrong secret, ledger or original).
    pub fn for_ledger(original: &'a Model, key: &'a FingerprintKey, ledger: &Ledger) -> Result<Tracer<'a>> {
        let planned = plan(original)?;
        let digest = weights_digest(original, &planned)?;
        let recipients = ledger.recipients(&key.key_id(), &digest)?;
        let locked = ledger.locks(&key.key_id(), &digest);
        Tracer { original, key, recipients, planned, digest, locks: None }.with_locks(&locked)
    }

    /// The original's weights digest.
    pub fn original_digest(&self) -> &str {
        &self.digest
    }

    /// The original's planned tensors.
    pub fn planned(&self) -> &[Planned] {
        &self.planned
    }

    /// The marks tested.
    pub fn recipients(&self) -> &[Mark] {
        &self.recipients
    }

    /// The original's values of a planned tensor.
    pub fn original_values(&self, p: &Planned) -> Result<Vec<f64>> {
        let t = &self.original.tensors[p.tensor];
        let bytes =
            self.original.tensor_bytes(t.id).map_err(TraceError::model(format!("original tensor '{}'", t.name)))?;
        decode_float(t.data_type, &bytes)
            .ok_or_else(|| TraceError::Parameter(format!("original tensor '{}' is not a float tensor", t.name)))
    }

    /// Traces the model `suspect` with false-positive probability `p`. With label-locked
    /// recipients, the suspect's class order is read first, compared with theirs, and
    /// undone in the layer's tensors before their marks are scored.
    pub fn trace(&self, suspect: &Model, p: f64) -> Result<TraceReport> {
        let index = SuspectIndex::new(suspect);
        let Some((layer, orders)) = &self.locks else {
            return self.trace_with(|planned, original| index.find(planned, original), p);
        };
        let weight = layer.tensors.first().map(|t| (t.tensor, t.axis));
        let mut order = None;
        if let Some(pl) = self.planned.iter().find(|pl| Some(pl.tensor) == weight.map(|w| w.0)) {
            let original = self.original_values(pl)?;
            if let (Some(m), Some((_, axis))) = (index.find(pl, &original)?, weight) {
                order = recover_order(&original, &m.values, &pl.dims, axis);
            }
        }
        let mut report = self.trace_with(
            |pl, original| {
                let m = index.find(pl, original)?;
                let locked = layer.tensors.iter().find(|t| t.tensor == pl.tensor);
                Ok(match (m, locked, &order) {
                    (Some(m), Some(t), Some(o)) => unpermute(&m.values, &pl.dims, t.axis, o)
                        .map(|values| Matched { values, how: m.how })
                        .or(Some(m)),
                    (m, _, _) => m,
                })
            },
            p,
        )?;
        report.order = Some(OrderReport::new(layer.classes, order.as_ref(), orders, p));
        Ok(report)
    }

    /// Traces a suspect given tensor by tensor: `suspect(planned, original values)` returns
    /// the suspect's values of that tensor in the original's layout, or `None` when it has
    /// no such tensor.
    pub fn trace_with(
        &self,
        mut suspect: impl FnMut(&Planned, &[f64]) -> Result<Option<Matched>>,
        p: f64,
    ) -> Result<TraceReport> {
        check_false_positive(p)?;
        let n = self.recipients.len();
        let mut dots = vec![0.0; n];
        let mut norm2 = 0.0;
        let mut counts = TensorCounts { planned: self.planned.len(), ..TensorCounts::default() };
        let mut per_tensor: Vec<(String, u64, How, Vec<f64>, f64)> = Vec::new();
        let mut unmatched = Vec::new();
        let mut elements = 0u64;
        for pl in &self.planned {
            let original = self.original_values(pl)?;
            let Some(m) = suspect(pl, &original)? else {
                unmatched.push(pl.key.clone());
                continue;
            };
            if m.values.len() != original.len() {
                unmatched.push(pl.key.clone());
                continue;
            }
            counts.count(m.how);
            elements += original.len() as u64;
            let mut d: Vec<f64> = m
                .values
                .iter()
                .zip(&original)
                .map(|(s, o)| {
                    let x = s - o;
                    if x.is_finite() {
                        x
                    } else {
                        0.0
                    }
                })
                .collect();
            if !normalise(&mut d) {
                counts.unchanged += 1;
                per_tensor.push((pl.key.clone(), original.len() as u64, m.how, vec![0.0; n], 0.0));
                continue;
            }
            let t_norm2: f64 = d.iter().map(|x| x * x).sum();
            let mut t_dots = Vec::with_capacity(n);
            for (r, total) in self.recipients.iter().zip(dots.iter_mut()) {
                let dot = self.key.pattern_variant(&r.recipient, r.variant, &pl.key, d.len())?.dot(&d);
                *total += dot;
                t_dots.push(dot);
            }
            norm2 += t_norm2;
            per_tensor.push((pl.key.clone(), original.len() as u64, m.how, t_dots, t_norm2));
        }
        if counts.matched == 0 {
            return Err(TraceError::NoCommonWeights { planned: counts.planned });
        }
        let z = |dot: f64| if norm2 > 0.0 { dot / norm2.sqrt() } else { 0.0 };
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| z(dots[b]).total_cmp(&z(dots[a])).then(a.cmp(&b)));
        let score = |i: usize| Score {
            recipient: self.recipients[i].recipient.to_string(),
            z: z(dots[i]),
            bound: bound(n, z(dots[i])),
            log10_bound: log10_bound(n, z(dots[i])),
        };
        let scores: Vec<Score> = order.iter().map(|&i| score(i)).collect();
        let t = threshold(n, p);
        let best_i = order[0];
        let best_by_tensor = per_tensor
            .into_iter()
            .map(|(tensor, elements, how, t_dots, t_norm2)| TensorScore {
                tensor,
                elements,
                how,
                z: if t_norm2 > 0.0 { t_dots[best_i] / t_norm2.sqrt() } else { 0.0 },
            })
            .collect();
        Ok(TraceReport {
            key_id: self.key.key_id(),
            original_digest: self.digest.clone(),
            recipients: n,
            false_positive: p,
            threshold: t,
            matches: scores.iter().filter(|s| s.z >= t).cloned().collect(),
            best: score(best_i),
            scores,
            tensors: counts,
            elements,
            identical: norm2 == 0.0,
            best_by_tensor,
            unmatched,
            order: None,
        })
    }
}

/// Largest `|u|` of one element, in units of its tensor's median non-zero `|d|`.
pub const CLIP: f64 = 3.0;

/// `d / median(non-zero |d|)`, clipped to `[−CLIP, CLIP]`, in place. Returns `false` (and
/// leaves `d` all zero) when every element is 0.
fn normalise(d: &mut [f64]) -> bool {
    let mut mags: Vec<f64> = d.iter().map(|x| x.abs()).filter(|&x| x > 0.0).collect();
    if mags.is_empty() {
        return false;
    }
    let mid = mags.len() / 2;
    let (_, &mut median, _) = mags.select_nth_unstable_by(mid, f64::total_cmp);
    d.iter_mut().for_each(|x| *x = (*x / median).clamp(-CLIP, CLIP));
    true
}

/// The suspect's tensors by key (the first of each key, in model order).
struct SuspectIndex<'m> {
    model: &'m Model,
    by_key: HashMap<&'m str, TensorId>,
}

impl<'m> SuspectIndex<'m> {
    fn new(model: &'m Model) -> SuspectIndex<'m> {
        let mut by_key = HashMap::new();
        for t in &model.tensors {
            let k = tensor_key(model, t);
            if !k.is_empty() {
                by_key.entry(k).or_insert(t.id);
            }
        }
        SuspectIndex { model, by_key }
    }

    fn values(&self, id: TensorId, decode: fn(DataType, &[u8]) -> Option<Vec<f64>>) -> Result<Option<Vec<f64>>> {
        let t = &self.model.tensors[id];
        let bytes = self.model.tensor_bytes(id).map_err(TraceError::model(format!("suspect tensor '{}'", t.name)))?;
        Ok(decode(t.data_type, &bytes))
    }

    fn get(&self, key: &str) -> Option<&'m onnx_protect_format::Tensor> {
        self.by_key.get(key).map(|&id| &self.model.tensors[id])
    }

    /// The suspect's values of `pl` in the original's layout.
    fn find(&self, pl: &Planned, original: &[f64]) -> Result<Option<Matched>> {
        let len = pl.len as u64;
        if let Some(t) = self.get(&pl.key).filter(|t| is_marked_float(t.data_type) && t.numel == len) {
            let Some(values) = self.values(t.id, decode_float)? else { return Ok(None) };
            return Ok(orient(values, &t.dims, &pl.dims, original, false));
        }
        let Some(q) = self
            .get(&format!("{}_quantized", pl.key))
            .filter(|t| matches!(t.data_type, DataType::Int8 | DataType::Uint8) && t.numel == len)
        else {
            return Ok(None);
        };
        let Some(scale) = self.get(&format!("{}_scale", pl.key)).filter(|t| is_marked_float(t.data_type)) else {
            return Ok(None);
        };
        let Some(scales) = self.values(scale.id, decode_float)? else { return Ok(None) };
        let zero_points = match self.get(&format!("{}_zero_point", pl.key)) {
            Some(z) => match self.values(z.id, decode_int8)? {
                Some(v) => v,
                None => return Ok(None),
            },
            None => vec![0.0; scales.len()],
        };
        let Some(ints) = self.values(q.id, decode_int8)? else { return Ok(None) };
        let Some(values) = dequantize(&ints, &q.dims, &scales, &zero_points) else { return Ok(None) };
        Ok(orient(values, &q.dims, &pl.dims, original, true))
    }
}

/// `(q − zero_point)·scale`, per tensor (one scale) or per channel: along axis 1 of a
/// 2-D tensor whose second dim is the number of scales (a MatMul weight), else along
/// axis 0.
fn dequantize(q: &[f64], dims: &[u64], scales: &[f64], zero_points: &[f64]) -> Option<Vec<f64>> {
    let c = scales.len();
    if c == 0 || zero_points.len() != c {
        return None;
    }
    if c == 1 {
        return Some(q.iter().map(|v| (v - zero_points[0]) * scales[0]).collect());
    }
    let dim = |i: usize| dims.get(i).and_then(|&d| usize::try_from(d).ok());
    if dims.len() == 2 && dim(1) == Some(c) {
        return Some(q.iter().enumerate().map(|(i, v)| (v - zero_points[i % c]) * scales[i % c]).collect());
    }
    if dim(0) == Some(c) {
        let inner = q.len() / c;
        return Some(q.iter().enumerate().map(|(i, v)| (v - zero_points[i / inner]) * scales[i / inner]).collect());
    }
    None
}

/// `values` (in a layout of dims `sdims`) in the original's layout `odims`: as they are,
/// or transposed when `sdims` is `odims` reversed (2-D). A square matrix could be either:
/// the one closer to the original wins — a choice made from the suspect and the original
/// alone, so it keeps the bound.
fn orient(values: Vec<f64>, sdims: &[u64], odims: &[u64], original: &[f64], quantized: bool) -> Option<Matched> {
    let (plain, flipped) =
        if quantized { (How::Dequantized, How::DequantizedTransposed) } else { (How::Name, How::Transposed) };
    let reversed = sdims.len() == 2 && odims.len() == 2 && sdims[0] == odims[1] && sdims[1] == odims[0];
    if !reversed {
        return Some(Matched { values, how: plain });
    }
    let rows = usize::try_from(odims[0]).ok()?;
    let cols = usize::try_from(odims[1]).ok()?;
    let mut t = vec![0.0; values.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[i * cols + j] = values[j * rows + i];
        }
    }
    if sdims != odims {
        return Some(Matched { values: t, how: flipped });
    }
    let dist =
        |v: &[f64]| v.iter().zip(original).map(|(a, b)| (a - b) * (a - b)).filter(|x| x.is_finite()).sum::<f64>();
    if dist(&t) < dist(&values) {
        Some(Matched { values: t, how: flipped })
    } else {
        Some(Matched { values, how: plain })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_and_bound_agree() {
        for n in [1usize, 50, 10_000] {
            let t = threshold(n, 1e-6);
            assert!((bound(n, t) - 1e-6).abs() < 1e-12, "{n}");
        }
        // N = 50, p = 1e-6: t = √(2·ln 5e7) ≈ 5.955.
        assert!((threshold(50, 1e-6) - 5.955).abs() < 1e-3);
        assert_eq!(bound(5, -1.0), 1.0);
        assert!((log10_bound(50, 8.0) - bound(50, 8.0).log10()).abs() < 1e-9);
        assert!(log10_bound(50, 100.0) < -2000.0 && bound(50, 100.0) == 0.0);
        assert_eq!(log10_bound(50, 1.0), 0.0);
        assert_eq!(bound(5, 0.5), 1.0);
        for bad in [0.0, 1.0, -0.1, f64::NAN, f64::INFINITY] {
            assert!(check_false_positive(bad).is_err());
        }
    }

    #[test]
    fn normalise_scales_by_the_median_and_clips() {
        let mut d = [0.0, 0.002, -0.002, 0.002, -0.002, 0.5, -0.3];
        assert!(normalise(&mut d));
        assert_eq!(d, [0.0, 1.0, -1.0, 1.0, -1.0, CLIP, -CLIP]);
        let mut zero = [0.0; 4];
        assert!(!normalise(&mut zero));
        assert_eq!(zero, [0.0; 4]);
    }

    #[test]
    fn dequantize_per_tensor_and_per_channel() {
        let q = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(dequantize(&q, &[2, 3], &[0.5], &[1.0]).unwrap(), vec![-0.5, 0.0, 0.5, 1.0, 1.5, 2.0]);
        // Axis 1 of a [2, 3] MatMul weight.
        assert_eq!(dequantize(&q, &[2, 3], &[1.0, 2.0, 3.0], &[0.0; 3]).unwrap(), vec![0.0, 2.0, 6.0, 3.0, 8.0, 15.0]);
        // Axis 0 of a [3, 2] (or [3, 2, 1, 1]) weight.
        assert_eq!(
            dequantize(&q, &[3, 2, 1, 1], &[1.0, 2.0, 3.0], &[0.0, 1.0, 2.0]).unwrap(),
            vec![0.0, 1.0, 2.0, 4.0, 6.0, 9.0]
        );
        assert!(dequantize(&q, &[6], &[1.0, 2.0], &[0.0, 0.0]).is_none());
        assert!(dequantize(&q, &[6], &[1.0], &[]).is_none());
    }

    #[test]
    fn orient_transposes_and_picks_the_closer_square_layout() {
        // Original [2, 3]; suspect [3, 2] is its transpose.
        let original = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let m = orient(vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0], &[3, 2], &[2, 3], &original, false).unwrap();
        assert_eq!((m.values.as_slice(), m.how), (&original[..], How::Transposed));
        let square = [1.0, 2.0, 3.0, 4.0];
        let m = orient(vec![1.0, 3.0, 2.0, 4.0], &[2, 2], &[2, 2], &square, true).unwrap();
        assert_eq!((m.values.as_slice(), m.how), (&square[..], How::DequantizedTransposed));
        let m = orient(square.to_vec(), &[2, 2], &[2, 2], &square, false).unwrap();
        assert_eq!(m.how, How::Name);
    }
}
