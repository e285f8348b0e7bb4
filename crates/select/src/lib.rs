//! Which tensors, and which byte ranges of them, to encrypt: a pure,
//! deterministic function of the model and a [`Policy`], independent of any key.
//!
//! For each weight (see `onnx_protect_format::discover`) the policy entry of its
//! first user's operator type gives a *coefficient* `c`, a *mode* and a split.
//! The tensor's element bytes (raw_data layout, storage order) are split into
//! `n` subsequences — by default slices along the first dimension — and
//! `k = min(n, max(1, ⌈c·n⌉))` of them are chosen (none when `c = 0`), at the
//! evenly spread positions `⌊j·n/k⌋` for `j = 0..k`. `c·n` is computed exactly on
//! the coefficient in parts per million: `⌈c_ppm·n / 10^6⌉`. The normative text
//! is in `docs/format.md` ("Selection").
//!
//! ```
//! use onnx_protect_format::{discover, Model};
//! use onnx_protect_select::{select, Policy};
//! # let bytes = onnx_protect_format::testutil::tiny_model();
//! let model = Model::from_vec(bytes, None)?;
//! let plan = select(&model, &discover(&model), &Policy::default());
//! assert_eq!(plan.chosen.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod classes;
pub mod importance;
mod onnx_ops;
mod policy;
pub mod risk;

pub use importance::Norm;
pub use onnx_ops::ONNX_OPS;
pub use policy::{
    check_tier_levels, class_groups_text, default_tier_shares, glob_match, parse_class_groups, weight_name, Applied,
    Mode, OpRule, Policy, PolicyError, Rank, Selector, Split, TierOrder, DEFAULT_COEFFICIENT, DEFAULT_MODE,
    DEFAULT_ROLE_COEFFICIENT, DEFAULT_TIER1_STILL_ENCRYPTED, DEFAULT_TIERED_MODE, DEFAULT_TOP_TIER_SHARE, KNOWN_OPS,
    MAX_TIERS,
};

use onnx_protect_format::{DataType, Model, TensorData, TensorId, TensorRole, Weight};

use crate::classes::{ClassAxis, ClassLayer};

/// One tensor chosen for encryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub tensor: TensorId,
    pub op_type: String,
    pub role: String,
    /// The tensor's role in the model.
    pub tensor_role: TensorRole,
    /// The selector of the rule that chose it: an operator type, `role:NAME` or `name:GLOB`.
    pub rule: String,
    /// The split of that rule.
    pub split: Split,
    pub mode: Mode,
    /// Number of subsequences the tensor was split into.
    pub subsequences: u64,
    /// Indices of the chosen subsequences, ascending (with tiers: this tier's).
    pub chosen: Vec<u64>,
    /// Byte ranges `[begin, end)` of the element bytes to encrypt: sorted and
    /// disjoint; adjacent chosen subsequences are merged except in dp mode, where
    /// each span is one subsequence (the unit the permutation acts on).
    pub spans: Vec<(u64, u64)>,
    /// Access tier (1 = least important share; 1 when the policy has no tiers).
    pub tier: u32,
}

impl Chosen {
    /// Total bytes to encrypt.
    pub fn bytes(&self) -> u64 {
        self.spans.iter().map(|(a, b)| b - a).sum()
    }
}

/// A weight the policy wanted but that cannot be encrypted, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub tensor: TensorId,
    pub reason: String,
}

/// A weight left wholly clear: no byte of it is encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clear {
    pub tensor: TensorId,
    /// Its element bytes.
    pub nbytes: u64,
    /// The operator type of its first use.
    pub op_type: String,
    pub tensor_role: TensorRole,
}

/// The result of selection.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// In tensor order (the order tensors appear in the model).
    pub chosen: Vec<Chosen>,
    pub skipped: Vec<Skipped>,
    /// Every weight (every floating-point constant the model consumes, and every
    /// constant in a weight role of an operator) with no encrypted byte, in tensor
    /// order; skipped weights are here too. The encrypted share of a model is
    /// `bytes()` over the bytes of `chosen` tensors plus those of `clear`.
    pub clear: Vec<Clear>,
    /// The order the tiers were filled in ([`TierOrder::Auto`] resolved; `Auto` without tiers).
    pub tier_order: TierOrder,
}

impl Selection {
    /// Total bytes to encrypt.
    pub fn bytes(&self) -> u64 {
        self.chosen.iter().map(Chosen::bytes).sum()
    }

    /// Total bytes of the weights left wholly clear.
    pub fn clear_bytes(&self) -> u64 {
        self.clear.iter().map(|c| c.nbytes).sum()
    }
}

/// Number of chosen subsequences out of `n` for a coefficient in parts per million.
pub fn chosen_count(coefficient_ppm: u32, n: u64) -> u64 {
    if coefficient_ppm == 0 || n == 0 {
        return 0;
    }
    let k = (u128::from(coefficient_ppm) * u128::from(n)).div_ceil(1_000_000);
    (k as u64).clamp(1, n)
}

/// Fewest elements a distribution-preserving subsequence holds (the cipher's
/// [`Mode::min_span_elements`] of `dp`).
pub use onnx_protect_crypto::DP_MIN_ELEMENTS;

/// The split a rule's subsequences get in `mode`: in the distribution-preserving mode, a
/// first-dimension split whose rows hold fewer than [`DP_MIN_ELEMENTS`] elements becomes
/// `⌊numel / 16⌋` near-equal chunks (so each holds 16 elements or more).
pub fn effective_split(dims: &[u64], numel: u64, split: Split, mode: Mode) -> Split {
    match (mode, split, dims.first()) {
        (Mode::Dp, Split::FirstDim, Some(&d0)) if d0 > 0 && dims.len() > 1 && numel / d0 < DP_MIN_ELEMENTS => {
            Split::Count((numel / DP_MIN_ELEMENTS).max(1))
        }
        _ => split,
    }
}

/// Evenly spread positions `⌊j·n/k⌋`, `j = 0..k`.
pub fn spread_positions(n: u64, k: u64) -> Vec<u64> {
    (0..k).map(|j| ((u128::from(j) * u128::from(n)) / u128::from(k)) as u64).collect()
}

/// Byte boundaries of `n` subsequences of a tensor: `bounds[i]..bounds[i+1]` is
/// subsequence `i`. Returns `None` when the tensor cannot be split that way.
pub fn subsequence_bounds(dtype: DataType, dims: &[u64], numel: u64, split: Split) -> Option<Vec<u64>> {
    let bits = dtype.bits();
    if bits == 0 || numel == 0 {
        return None;
    }
    let nbytes = dtype.byte_len(numel)?;
    let n = match split {
        Split::FirstDim => match dims.first() {
            Some(&d0) if d0 > 0 && dims.len() > 1 => {
                let row_bits = (numel / d0).checked_mul(bits)?;
                if row_bits % 8 != 0 {
                    1
                } else {
                    d0
                }
            }
            _ => 1,
        },
        Split::Count(c) => {
            // Element-aligned chunks; sub-byte types are split on whole bytes.
            let units = if bits < 8 { nbytes } else { numel };
            c.clamp(1, units.max(1))
        }
    };
    let unit_bytes = if bits < 8 { 1 } else { bits / 8 };
    let units = nbytes / unit_bytes;
    let mut b = Vec::with_capacity(n as usize + 1);
    if units % n == 0 {
        // Equal subsequences (rows of a first-dimension split): no division per bound.
        let step = units / n * unit_bytes;
        b.extend((0..=n).map(|i| i * step));
    } else {
        for i in 0..=n {
            let u = (u128::from(i) * u128::from(units) / u128::from(n)) as u64;
            b.push(u * unit_bytes);
        }
    }
    if let Some(last) = b.last_mut() {
        *last = nbytes;
    }
    Some(b)
}

/// One chosen subsequence before tiers are assigned.
struct Piece {
    tensor_index: usize,
    /// Index of the subsequence in its tensor.
    position: u64,
    range: (u64, u64),
    /// Importance relative to the tensor's mean subsequence importance.
    relative: f64,
}

/// Chooses what to encrypt. Deterministic; depends only on the model and the policy.
///
/// With `policy.tiers > 1`, the chosen subsequences of all tensors are ranked by
/// their importance relative to their own tensor (L2 score ÷ the tensor's mean
/// L2 score; 1 for types without a numeric reading), least important first (most
/// important first with [`TierOrder::Inverse`]), and cut into tiers holding the policy's
/// shares of the encrypted bytes. A tensor then appears once per tier it has subsequences in.
pub fn select(model: &Model, weights: &[Weight], policy: &Policy) -> Selection {
    let mut sel = Selection::default();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut heads: Vec<Chosen> = Vec::new();
    for w in weights {
        let t = &model.tensors[w.tensor];
        let Some(applied) = policy.rule_for_weight(model, w) else { continue };
        let (rule, u) = (applied.rule, applied.via);
        let ppm = rule.coefficient_ppm();
        if ppm == 0 || matches!(t.data, TensorData::Empty) {
            continue;
        }
        let mode = policy.mode_of(rule);
        // A running variance must stay positive: a role or name rule in the format-preserving
        // mode (which may flip its sign bit) leaves it clear, as operator rules do by default.
        if mode == Mode::Fp
            && matches!(applied.by, Selector::Role(_) | Selector::Layer(_))
            && w.uses.iter().any(|x| x.op_type == "BatchNormalization" && x.role == "input_var")
        {
            continue;
        }
        if let Some(reason) = unencryptable(t, mode) {
            sel.skipped.push(Skipped { tensor: t.id, reason: reason.to_string() });
            continue;
        }
        let split = effective_split(&t.dims, t.numel, rule.split, mode);
        let Some((subsequences, chosen)) = pick(model, t, rule, split, policy, heads.len(), &mut pieces) else {
            continue;
        };
        heads.push(Chosen {
            tensor: t.id,
            op_type: u.op_type.clone(),
            role: u.role.to_string(),
            tensor_role: w.tensor_role(),
            rule: applied.by.text(),
            split,
            mode,
            subsequences,
            chosen,
            spans: Vec::new(),
            tier: 1,
        });
    }
    let tiering = tiering(model, weights, &heads, policy);
    cut_at_class_tiers(model, &heads, &mut pieces, tiering.as_ref());
    // The pieces of each tensor (indices into `pieces`).
    let mut of_head: Vec<Vec<usize>> = vec![Vec::new(); heads.len()];
    for (i, p) in pieces.iter().enumerate() {
        of_head[p.tensor_index].push(i);
    }
    let tier_of = tiers_of_pieces(model, &heads, &pieces, &of_head, policy, tiering.as_ref());
    sel.tier_order = match (&tiering, policy.tiers > 1) {
        (Some(t), true) => t.order(),
        // An explicit `classes` this model cannot follow (refused by the encryption).
        (None, true) => TierOrder::Importance,
        (_, false) => TierOrder::Auto,
    };
    let mut out = per_tier(&heads, &pieces, &of_head, &tier_of, policy.tiers.max(1));
    out.sort_by_key(|c| (c.tensor, c.tier));
    sel.chosen = out;
    let encrypted: std::collections::HashSet<TensorId> = sel.chosen.iter().map(|c| c.tensor).collect();
    sel.clear = weights
        .iter()
        .filter(|w| !encrypted.contains(&w.tensor))
        .map(|w| Clear {
            tensor: w.tensor,
            nbytes: model.tensors[w.tensor].nbytes,
            op_type: w.primary_op().to_string(),
            tensor_role: w.tensor_role(),
        })
        .collect();
    sel.clear.sort_by_key(|c| c.tensor);
    sel
}

/// Why a tensor cannot be encrypted in `mode` as it is stored, if it cannot.
fn unencryptable(t: &onnx_protect_format::Tensor, mode: Mode) -> Option<&'static str> {
    let prefix_not_canonical = |t: &onnx_protect_format::Tensor| {
        t.ancestors
            .iter()
            .any(|c| c.value_start - c.len_start != onnx_protect_format::wire::varint_len(c.end - c.value_start) as u64)
    };
    match &t.data {
        TensorData::Strings { .. } => return Some("string tensors are not weights"),
        TensorData::Varint { .. } if t.data_type.bytes_per_typed_value() == 0 => {
            return Some("its 6-bit elements stored one per int32_data value have no byte layout")
        }
        TensorData::Varint { canonical: false, .. } => {
            return Some("its typed-field encoding is not canonical, so it could not be restored byte for byte")
        }
        TensorData::Varint { .. } if prefix_not_canonical(t) => return Some(
            "a length prefix around it is not canonical, so re-encoding it could not restore the file byte for byte",
        ),
        _ => {}
    }
    if mode == Mode::Fp && policy::fp_mask(t.data_type).is_none() {
        return Some("no format-preserving mask for its data type");
    }
    if !mode.takes_element_bits(t.data_type.bits()) {
        return Some("the distribution-preserving mode needs whole-byte elements");
    }
    if mode.whole_spans() && t.numel < mode.min_span_elements() {
        return Some("the distribution-preserving mode needs at least 16 elements to permute");
    }
    None
}

/// Picks the subsequences of tensor `t` that `rule` encrypts, pushing one [`Piece`] per
/// non-empty one (tagged `head_index`). Returns the number of subsequences and the
/// positions chosen; `None` when the tensor cannot be split as the rule asks.
fn pick(
    model: &Model,
    t: &onnx_protect_format::Tensor,
    rule: &policy::OpRule,
    split: Split,
    policy: &Policy,
    head_index: usize,
    pieces: &mut Vec<Piece>,
) -> Option<(u64, Vec<u64>)> {
    let bounds = subsequence_bounds(t.data_type, &t.dims, t.numel, split)?;
    let n = (bounds.len() - 1) as u64;
    let k = chosen_count(rule.coefficient_ppm(), n);
    let needs_scores = rule.rank != Rank::Even || policy.tiers > 1;
    let scores = if needs_scores {
        let norm = match rule.rank {
            Rank::Top(n) | Rank::Sample(n) => n,
            Rank::Even => Norm::L2,
        };
        model.tensor_bytes(t.id).ok().and_then(|b| importance::scores(t.data_type, &b, &bounds, norm))
    } else {
        None
    };
    let positions = match (rule.rank, &scores) {
        (Rank::Top(_), Some(sc)) => importance::top_k(sc, k as usize),
        (Rank::Sample(_), Some(sc)) => importance::weighted_sample(sc, k as usize, policy.seed, &t.locator.to_string()),
        _ => spread_positions(n, k),
    };
    let mean = scores.as_ref().map(|sc| sc.iter().sum::<f64>() / sc.len().max(1) as f64).unwrap_or(0.0);
    for &p in &positions {
        let (a, b) = (bounds[p as usize], bounds[p as usize + 1]);
        if a == b {
            continue;
        }
        let relative = match &scores {
            Some(sc) if mean > 0.0 => sc[p as usize] / mean,
            _ => 1.0,
        };
        pieces.push(Piece { tensor_index: head_index, position: p, range: (a, b), relative });
    }
    Some((n, positions))
}

/// Most spans tiers by class along a layer's last axis may cut it into (a header of a few
/// megabytes); tier classes that would cut more are not followed.
pub const MAX_CLASS_SPANS: u64 = 1 << 20;

/// How the chosen pieces are shared out over the tiers.
enum Tiering {
    /// By byte shares, in this order of importance.
    Shares(TierOrder),
    /// By class: the bytes of class `c` of `layer`, the class layer, in tier `tier_of_class[c]`.
    Classes { layer: ClassLayer, tier_of_class: Vec<u32> },
}

impl Tiering {
    fn order(&self) -> TierOrder {
        match self {
            Tiering::Shares(order) => *order,
            Tiering::Classes { .. } => TierOrder::Classes,
        }
    }
}

/// The tiering of `policy` for this model: `Auto` is by class when the policy gives no tier
/// shares and every byte of the class layer ([`classes::class_layer`], stored as bytes) is
/// chosen, one row per class (or, for classes along the last axis, in a mode whose spans may be
/// one element), with a class for every tier (or the policy's tier classes), else by
/// importance; an explicit `Classes`, or tier classes, that cannot be followed is `None` (the
/// encryption refuses it: [`PolicyError::NoClassLayer`]).
fn tiering(model: &Model, weights: &[Weight], heads: &[Chosen], policy: &Policy) -> Option<Tiering> {
    let by_class = || {
        let layer = classes::class_layer(model, weights)?;
        // A varint-stored tensor is rewritten whole, in the highest tier of its pieces.
        let whole = matches!(model.tensors[layer.tensor].data, TensorData::Varint { .. });
        let chosen_whole = !whole
            && heads.iter().any(|h| {
                let every = h.chosen.len() as u64 == h.subsequences;
                h.tensor == layer.tensor
                    && match layer.axis {
                        ClassAxis::Rows => h.split == Split::FirstDim && h.subsequences == layer.classes && every,
                        ClassAxis::Columns => every && !h.mode.whole_spans(),
                    }
            });
        let groups = policy.tier_classes.as_deref();
        let tier_of_class = classes::class_tiers(layer.classes, policy.tiers, groups).filter(|_| chosen_whole)?;
        if layer.axis == ClassAxis::Columns {
            // Each row is cut where the tier changes: at most MAX_CLASS_SPANS spans in all.
            let runs = 1 + tier_of_class.windows(2).filter(|w| w[0] != w[1]).count() as u64;
            let rows = model.tensors[layer.tensor].numel / layer.classes.max(1);
            if runs.saturating_mul(rows) > MAX_CLASS_SPANS {
                return None;
            }
        }
        Some(Tiering::Classes { layer, tier_of_class })
    };
    match policy.tier_order {
        _ if policy.tiers < 2 => Some(Tiering::Shares(TierOrder::Importance)),
        TierOrder::Auto if policy.tier_classes.is_some() => by_class(),
        TierOrder::Auto if policy.tier_shares.is_none() => by_class().or(Some(Tiering::Shares(TierOrder::Importance))),
        TierOrder::Auto => Some(Tiering::Shares(TierOrder::Importance)),
        TierOrder::Classes => by_class(),
        order => Some(Tiering::Shares(order)),
    }
}

/// With classes along the last axis of the class layer, each of its pieces cut where the
/// tier of the class changes, so that every piece holds classes of one tier.
fn cut_at_class_tiers(model: &Model, heads: &[Chosen], pieces: &mut Vec<Piece>, tiering: Option<&Tiering>) {
    let Some(Tiering::Classes { layer, tier_of_class }) = tiering else { return };
    if layer.axis != ClassAxis::Columns {
        return;
    }
    let t = &model.tensors[layer.tensor];
    let (elem, c) = (t.data_type.bits() / 8, layer.classes);
    // The class after the run of same-tier classes that class `k` starts (`c` at the row's end).
    let mut run_end = vec![c; tier_of_class.len()];
    for k in (0..tier_of_class.len().saturating_sub(1)).rev() {
        run_end[k] = if tier_of_class[k] == tier_of_class[k + 1] { run_end[k + 1] } else { k as u64 + 1 };
    }
    let mut out = Vec::with_capacity(pieces.len());
    for p in pieces.drain(..) {
        if heads[p.tensor_index].tensor != layer.tensor {
            out.push(p);
            continue;
        }
        let mut start = p.range.0;
        while start < p.range.1 {
            let (e, k) = (start / elem, (start / elem) % c);
            let end = ((e - k + run_end[k as usize]) * elem).min(p.range.1);
            out.push(Piece { range: (start, end), ..p });
            start = end;
        }
    }
    *pieces = out;
}

/// The access tier of each piece: with several tiers, the pieces in the tier order (least to
/// most important, or the inverse) fill the tiers' byte shares in order, or, by class, each row
/// of the class layer goes to the tier of its class and every other piece to tier 1; a
/// varint-stored tensor, rewritten as a whole field, sits whole in the highest tier of its
/// pieces.
fn tiers_of_pieces(
    model: &Model,
    heads: &[Chosen],
    pieces: &[Piece],
    of_head: &[Vec<usize>],
    policy: &Policy,
    tiering: Option<&Tiering>,
) -> Vec<u32> {
    let tiers = policy.tiers.max(1);
    let mut tier_of = vec![1u32; pieces.len()];
    if let (true, Some(Tiering::Classes { layer, tier_of_class })) = (tiers > 1, tiering) {
        let t = &model.tensors[layer.tensor];
        for (i, p) in pieces.iter().enumerate() {
            if heads[p.tensor_index].tensor == layer.tensor {
                // Every piece holds classes of one tier (`cut_at_class_tiers`).
                let class = layer.classes_in(t, p.range).first().copied().unwrap_or(0);
                tier_of[i] = tier_of_class[class as usize];
            }
        }
    } else if tiers > 1 {
        let shares = policy.shares().unwrap_or_else(|_| policy::default_tier_shares(tiers));
        let mut order: Vec<usize> = (0..pieces.len()).collect();
        order.sort_by(|&a, &b| {
            let by_importance = pieces[a].relative.total_cmp(&pieces[b].relative);
            match tiering.map(Tiering::order) {
                Some(TierOrder::Inverse) => by_importance.reverse(),
                _ => by_importance,
            }
            .then(pieces[a].tensor_index.cmp(&pieces[b].tensor_index))
            .then(pieces[a].range.0.cmp(&pieces[b].range.0))
        });
        let total: u64 = pieces.iter().map(|p| p.range.1 - p.range.0).sum();
        let mut bounds = Vec::with_capacity(shares.len());
        let mut acc = 0.0;
        for s in &shares {
            acc += s;
            bounds.push((acc * total as f64).round() as u64);
        }
        let mut done = 0u64;
        for &i in &order {
            // A piece belongs to the first tier whose cumulative byte bound it starts before.
            let t = bounds.iter().position(|&b| done < b).unwrap_or(shares.len() - 1) as u32 + 1;
            tier_of[i] = t;
            done += pieces[i].range.1 - pieces[i].range.0;
        }
    }
    for (hi, head) in heads.iter().enumerate() {
        if matches!(model.tensors[head.tensor].data, TensorData::Varint { .. }) {
            if let Some(top) = of_head[hi].iter().map(|&i| tier_of[i]).max() {
                for &i in &of_head[hi] {
                    tier_of[i] = top;
                }
            }
        }
    }
    tier_of
}

/// One [`Chosen`] per (tensor, tier) that has pieces, adjacent ranges merged except in
/// dp mode (where each piece is one permutation unit).
fn per_tier(heads: &[Chosen], pieces: &[Piece], of_head: &[Vec<usize>], tier_of: &[u32], tiers: u32) -> Vec<Chosen> {
    let mut out: Vec<Chosen> = Vec::new();
    for (hi, head) in heads.iter().enumerate() {
        for tier in 1..=tiers {
            let mine: Vec<usize> = of_head[hi].iter().copied().filter(|&i| tier_of[i] == tier).collect();
            let mut ranges: Vec<(u64, u64)> = mine.iter().map(|&i| pieces[i].range).collect();
            ranges.sort_unstable();
            let mut spans: Vec<(u64, u64)> = Vec::new();
            for (a, b) in ranges {
                match spans.last_mut() {
                    Some(last) if last.1 == a && !head.mode.whole_spans() => last.1 = b,
                    _ => spans.push((a, b)),
                }
            }
            if spans.is_empty() {
                continue;
            }
            let mut c = head.clone();
            c.spans = spans;
            c.tier = tier;
            if tiers > 1 {
                // This tier's own subsequences.
                c.chosen = mine.iter().map(|&i| pieces[i].position).collect();
                c.chosen.sort_unstable();
                // A row of classes along the last axis is cut over several tiers.
                c.chosen.dedup();
            }
            out.push(c);
        }
    }
    out
}

pub use policy::fp_mask;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_rounds_up_and_keeps_at_least_one() {
        assert_eq!(chosen_count(0, 64), 0);
        assert_eq!(chosen_count(1, 64), 1);
        assert_eq!(chosen_count(100_000, 64), 7); // 6.4 → 7
        assert_eq!(chosen_count(250_000, 64), 16);
        assert_eq!(chosen_count(1_000_000, 64), 64);
    }

    #[test]
    fn positions_spread_evenly() {
        assert_eq!(spread_positions(10, 3), vec![0, 3, 6]);
        assert_eq!(spread_positions(4, 4), vec![0, 1, 2, 3]);
        assert_eq!(spread_positions(64, 1), vec![0]);
    }

    #[test]
    fn dp_rows_under_16_elements_become_chunks_of_16_or_more() {
        // 16 rows of 9 elements: 9 chunks of 16.
        assert_eq!(effective_split(&[16, 1, 3, 3], 144, Split::FirstDim, Mode::Dp), Split::Count(9));
        let b = subsequence_bounds(DataType::Float, &[16, 1, 3, 3], 144, Split::Count(9)).unwrap();
        assert!(b.windows(2).all(|w| (w[1] - w[0]) / 4 >= DP_MIN_ELEMENTS), "{b:?}");
        // Rows long enough, other modes and explicit counts keep their split.
        assert_eq!(effective_split(&[4, 16], 64, Split::FirstDim, Mode::Dp), Split::FirstDim);
        assert_eq!(effective_split(&[16, 9], 144, Split::FirstDim, Mode::Fp), Split::FirstDim);
        assert_eq!(effective_split(&[16, 9], 144, Split::Count(16), Mode::Dp), Split::Count(16));
        // 17 elements in rows of one: one chunk holding all of them.
        assert_eq!(effective_split(&[17, 1], 17, Split::FirstDim, Mode::Dp), Split::Count(1));
    }

    #[test]
    fn first_dim_split_gives_rows() {
        let b = subsequence_bounds(DataType::Float, &[4, 3], 12, Split::FirstDim).unwrap();
        assert_eq!(b, vec![0, 12, 24, 36, 48]);
        let v = subsequence_bounds(DataType::Float, &[5], 5, Split::FirstDim).unwrap();
        assert_eq!(v, vec![0, 20]);
        let c = subsequence_bounds(DataType::Float16, &[7], 7, Split::Count(3)).unwrap();
        assert_eq!(c, vec![0, 4, 8, 14]);
    }

    #[test]
    fn the_distribution_preserving_mode_skips_sub_byte_elements_and_takes_whole_bytes() {
        use onnx_protect_format::testutil::{float_tensor, matmul_chain};
        use onnx_protect_format::wire::{put_len_field, put_varint};
        // W0 INT4 (data_type 22) 32×32, W1 FLOAT 32×32, both MatMul weights.
        let mut int4 = Vec::new();
        for d in [32u64, 32] {
            put_varint(&mut int4, 1 << 3);
            put_varint(&mut int4, d);
        }
        put_varint(&mut int4, 2 << 3);
        put_varint(&mut int4, 22);
        put_len_field(&mut int4, 8, b"W0");
        put_len_field(&mut int4, 9, &[0x5a; 512]);
        let float = float_tensor("W1", &[32, 32], &[0.5; 1024]);
        let model = onnx_protect_format::Model::from_vec(matmul_chain(&[int4, float]), None).unwrap();
        let mut policy = Policy::default();
        policy.apply_override("mode", "*=dp").unwrap();
        let sel = select(&model, &onnx_protect_format::discover::discover(&model), &policy);
        let name = |t: usize| model.tensors[t].name.clone();
        let skipped: Vec<(String, String)> = sel.skipped.iter().map(|s| (name(s.tensor), s.reason.clone())).collect();
        assert_eq!(
            skipped,
            [("W0".to_string(), "the distribution-preserving mode needs whole-byte elements".to_string())]
        );
        assert_eq!(sel.chosen.iter().map(|c| name(c.tensor)).collect::<Vec<_>>(), ["W1"]);
    }

    #[test]
    fn odd_int4_rows_fall_back_to_one_subsequence() {
        let b = subsequence_bounds(DataType::Int4, &[3, 3], 9, Split::FirstDim).unwrap();
        assert_eq!(b, vec![0, 5]);
    }
}
