//! Naming a recipient from the class order of a label-locked copy (docs/tracing.md §7).
//!
//! `encrypt --lock-outputs --fingerprint R` locks recipient `R`'s copy with a seed derived
//! from the fingerprint secret ([`FingerprintKey::lock_seed`]), so each recipient's copy
//! has its own class order `p_R` (a derangement of the `C` classes, crates/lock). Given a
//! suspect and the original, the suspect's order is read from its output layer: each
//! class slice of its weight is matched to the nearest slice of the original's (the
//! recipient's weight mark, a quantisation or small changes do not move a slice closer to
//! another class's). A suspect whose order equals `p_R` is `R`'s copy, or a copy of it.
//!
//! **The bound.** A copy not made from `R`'s was made without `R`'s seed, which is keyed
//! by the secret: its order is independent of `p_R`, and `p_R` is uniform among the `!C`
//! derangements, so `P(order = p_R) ≤ 1/!C`; over the `N` locked recipients of the ledger,
//! `P(some p_R matches) ≤ N/!C`. A match is named when that bound is at most the trace's
//! false-positive probability. `!C` is 2 for 3 classes, 1,334,961 for 10 and about
//! `C!/e` in general: few classes cannot name anyone at a small bound, and only the weight
//! marks can.
//!
//! [`FingerprintKey::lock_seed`]: crate::FingerprintKey::lock_seed

use onnx_protect_format::Model;
use onnx_protect_lock::{ClassPermutation, OutputLayer, Part};
use serde::Serialize;

use crate::error::{Result, TraceError};
use crate::plan::decode_float;

/// `log10` of the number of derangements of `c` items (`!c`; 0 for `c < 2`, where there
/// is none and a match would be certain).
pub fn log10_derangements(c: usize) -> f64 {
    if c < 2 {
        return f64::NEG_INFINITY;
    }
    // !n = n·!(n−1) + (−1)^n, exact in f64 up to n = 18; beyond, !n = round(n!/e).
    let mut d = 0.0f64; // !1
    for n in 2..=c.min(18) {
        d = n as f64 * d + if n % 2 == 0 { 1.0 } else { -1.0 };
    }
    if c <= 18 {
        return d.log10();
    }
    let log_fact: f64 = (2..=c).map(|k| (k as f64).log10()).sum();
    log_fact - std::f64::consts::LOG10_E
}

/// One locked recipient's agreement with the suspect's class order.
#[derive(Debug, Clone, Serialize)]
pub struct OrderScore {
    pub recipient: String,
    /// Classes in the same place in the suspect's order and the recipient's.
    pub agreements: usize,
}

/// What the suspect's class order says.
#[derive(Debug, Clone, Serialize)]
pub struct OrderReport {
    /// The number of classes `C`.
    pub classes: usize,
    /// Whether the suspect's order could be read (its weight found, each slice nearest a
    /// different slice of the original's).
    pub recovered: bool,
    /// Whether the suspect's classes are in the original's order (not locked, or unlocked).
    pub identity: bool,
    /// Recipients whose copies were locked (ledger entries with `lock`).
    pub locked_recipients: usize,
    /// Every locked recipient whose order the suspect's equals.
    pub matches: Vec<String>,
    /// `N/!C`, bounding how likely an unrelated copy matches some recipient, and its `log10`.
    pub bound: f64,
    pub log10_bound: f64,
    /// The recipients named: `matches` when `bound` is at most the false-positive probability.
    pub named: Vec<String>,
    /// Every locked recipient's agreements, highest first.
    pub scores: Vec<OrderScore>,
}

impl OrderReport {
    /// The report for a suspect of order `order` (`None`: not readable) against the
    /// `recipients`' orders, at false-positive probability `p`.
    pub fn new(
        classes: usize,
        order: Option<&ClassPermutation>,
        recipients: &[(String, ClassPermutation)],
        p: f64,
    ) -> OrderReport {
        let n = recipients.len();
        let log10_bound = ((n.max(1) as f64).log10() - log10_derangements(classes)).min(0.0);
        let mut scores: Vec<OrderScore> = recipients
            .iter()
            .map(|(r, perm)| OrderScore { recipient: r.clone(), agreements: order.map_or(0, |o| o.agreements(perm)) })
            .collect();
        scores.sort_by(|a, b| b.agreements.cmp(&a.agreements).then_with(|| a.recipient.cmp(&b.recipient)));
        let matches: Vec<String> =
            scores.iter().filter(|s| order.is_some() && s.agreements == classes).map(|s| s.recipient.clone()).collect();
        let named = if log10_bound <= p.log10() { matches.clone() } else { Vec::new() };
        OrderReport {
            classes,
            recovered: order.is_some(),
            identity: order.is_some_and(|o| o.locked_to_true().iter().enumerate().all(|(q, &t)| t as usize == q)),
            locked_recipients: n,
            matches,
            bound: 10f64.powf(log10_bound),
            log10_bound,
            named,
            scores,
        }
    }
}

/// The values of a tensor's class slices: `slices[q]` is every element whose index along
/// `axis` of `dims` is `q`, in order.
fn slices(values: &[f64], dims: &[u64], axis: usize) -> Option<Vec<Vec<f64>>> {
    let c = usize::try_from(*dims.get(axis)?).ok()?;
    let inner: u64 = dims.get(axis + 1..)?.iter().product();
    let inner = usize::try_from(inner).ok()?;
    if c == 0 || inner == 0 || values.len() % (c * inner) != 0 {
        return None;
    }
    let mut out = vec![Vec::new(); c];
    for (i, v) in values.iter().enumerate() {
        out[(i / inner) % c].push(*v);
    }
    Some(out)
}

/// The suspect's class order, from its weight's values in the original's layout: locked
/// position `q` holds the original's class whose slice is nearest (squared distance over
/// finite differences) to the suspect's slice `q`. `None` unless that is a bijection.
pub fn recover_order(original: &[f64], suspect: &[f64], dims: &[u64], axis: usize) -> Option<ClassPermutation> {
    if original.len() != suspect.len() {
        return None;
    }
    let (a, b) = (slices(original, dims, axis)?, slices(suspect, dims, axis)?);
    let dist = |x: &[f64], y: &[f64]| -> f64 {
        x.iter().zip(y).map(|(u, v)| (u - v) * (u - v)).filter(|d| d.is_finite()).sum()
    };
    let order: Vec<u32> = b
        .iter()
        .map(|s| {
            let near = a.iter().enumerate().min_by(|(_, x), (_, y)| dist(x, s).total_cmp(&dist(y, s)));
            near.map_or(0, |(i, _)| i as u32)
        })
        .collect();
    ClassPermutation::from_vec(order).ok()
}

/// `values` (a tensor of the layer in the original's layout) with the class slices of a
/// suspect of order `order` put back in the original's order.
pub fn unpermute(values: &[f64], dims: &[u64], axis: usize, order: &ClassPermutation) -> Option<Vec<f64>> {
    let c = usize::try_from(*dims.get(axis)?).ok()?;
    let inner = usize::try_from(dims.get(axis + 1..)?.iter().product::<u64>()).ok()?;
    if c != order.classes() || inner == 0 || values.len() % (c * inner) != 0 {
        return None;
    }
    let mut out = values.to_vec();
    for (i, v) in values.iter().enumerate() {
        let (block, q, k) = (i / (c * inner), (i / inner) % c, i % inner);
        let t = order.locked_to_true()[q] as usize;
        out[(block * c + t) * inner + k] = *v;
    }
    Some(out)
}

/// The original's output layer, when it has one that is float (the only kind whose order
/// trace reads); `Ok(None)` when it has none.
pub fn float_layer(original: &Model) -> Result<Option<OutputLayer>> {
    let Ok(layer) = onnx_protect_lock::find_output_layer(original, None) else { return Ok(None) };
    let weight = layer.tensors.iter().find(|t| t.part == Part::Weight).map(|t| t.tensor);
    let Some(w) = weight else { return Ok(None) };
    let t = &original.tensors[w];
    let bytes = original.tensor_bytes(w).map_err(TraceError::model(format!("original tensor '{}'", t.name)))?;
    Ok(decode_float(t.data_type, &bytes).map(|_| layer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derangement_counts() {
        assert_eq!(log10_derangements(3), 2f64.log10());
        assert!((log10_derangements(10) - 1_334_961f64.log10()).abs() < 1e-12);
        // !19 = 44,750,731,559,645,106; the approximation beyond 18 agrees.
        assert!((log10_derangements(19) - 44_750_731_559_645_106f64.log10()).abs() < 1e-9);
        assert_eq!(log10_derangements(1), f64::NEG_INFINITY);
    }

    #[test]
    fn orders_are_recovered_from_nearby_slices_and_undone() {
        // [C=4, 3]: rows 10·c + j, the suspect's rows permuted and slightly changed.
        let dims = [4u64, 3];
        let original: Vec<f64> = (0..12).map(|i| (10 * (i / 3) + i % 3) as f64).collect();
        let p = ClassPermutation::from_vec(vec![2, 0, 3, 1]).unwrap();
        let mut suspect = vec![0.0; 12];
        for q in 0..4 {
            for j in 0..3 {
                suspect[q * 3 + j] = original[p.locked_to_true()[q] as usize * 3 + j] + 0.01 * j as f64;
            }
        }
        let got = recover_order(&original, &suspect, &dims, 0).unwrap();
        assert!(got == p);
        let back = unpermute(&suspect, &dims, 0, &got).unwrap();
        assert!(back.iter().zip(&original).all(|(a, b)| (a - b).abs() < 0.03));
        // Columns of [3, C=4].
        let t: Vec<f64> = (0..12).map(|i| original[(i % 4) * 3 + i / 4]).collect();
        let ts: Vec<f64> = (0..12).map(|i| suspect[(i % 4) * 3 + i / 4]).collect();
        assert!(recover_order(&t, &ts, &[3, 4], 1).unwrap() == p);
        // Two suspect slices nearest the same original slice: no order.
        let mut twice = suspect.clone();
        twice[3..6].copy_from_slice(&suspect[0..3]);
        assert!(recover_order(&original, &twice, &dims, 0).is_none());
    }

    #[test]
    fn a_match_is_named_only_below_the_bound() {
        let p = ClassPermutation::from_vec(vec![1, 2, 0]).unwrap();
        let recipients = vec![("a".to_string(), ClassPermutation::from_vec(vec![1, 2, 0]).unwrap())];
        let r = OrderReport::new(3, Some(&p), &recipients, 1e-6);
        assert_eq!((r.matches.as_slice(), r.named.len()), (&["a".to_string()][..], 0), "1/!3 = 0.5 names nobody");
        let r = OrderReport::new(3, Some(&p), &recipients, 0.6);
        assert_eq!(r.named, ["a"]);
        let r = OrderReport::new(3, None, &recipients, 0.6);
        assert!(!r.recovered && r.named.is_empty());
    }
}
