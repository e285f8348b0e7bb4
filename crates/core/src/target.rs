//! What a manifest entry encrypts, matched to the model (docs/format.md §3–§6, both
//! formats): a [`Target`] is a tensor of the model, its mode, its spans and its tier.
//! Matching an entry checks it against the tensor it names; the codes of modes and
//! storages in the manifest messages are converted here, and nowhere else.

use std::collections::BTreeSet;

use onnx_protect_crypto::{fp_mask, Mode};
use onnx_protect_format::{Locator, Model, Tensor, TensorData};
use onnx_protect_proto::v2 as pb;

use crate::error::{BadManifest, Modified, Result};

/// A manifest tensor matched to the model.
#[derive(Debug, Clone)]
pub struct Target {
    pub tensor: usize,
    pub stream_id: u64,
    pub mode: Mode,
    pub spans: Vec<(u64, u64)>,
    /// Access tier (1..=tiers), or 0 in an untiered format-1 manifest.
    pub tier: u32,
}

impl Target {
    /// The number of bytes under the mode.
    pub fn bytes(&self) -> u64 {
        self.spans.iter().map(|(a, b)| b - a).sum()
    }
}

/// The code of `mode` in a manifest (`Mode` of docs/format.md §2; format 1 uses the same numbers).
pub(crate) fn mode_code(mode: Mode) -> i32 {
    match mode {
        Mode::Ctr => pb::Mode::Ctr as i32,
        Mode::Fp => pb::Mode::FormatPreserving as i32,
        Mode::Dp => pb::Mode::DistributionPreserving as i32,
    }
}

/// The mode a manifest's code names; `None` for an unknown code.
pub(crate) fn mode_of_code(code: i32) -> Option<Mode> {
    match pb::Mode::try_from(code) {
        Ok(pb::Mode::Ctr) => Some(Mode::Ctr),
        Ok(pb::Mode::FormatPreserving) => Some(Mode::Fp),
        Ok(pb::Mode::DistributionPreserving) => Some(Mode::Dp),
        _ => None,
    }
}

/// The storage code of a tensor in a manifest (`Storage` of docs/format.md §2; format 1
/// uses the same numbers).
pub(crate) fn storage_code(t: &Tensor) -> i32 {
    let code = match &t.data {
        TensorData::Raw { .. } => pb::Storage::RawData,
        TensorData::Fixed { field, .. } | TensorData::Varint { field, .. } => match field.name() {
            "float_data" => pb::Storage::FloatData,
            "double_data" => pb::Storage::DoubleData,
            "int32_data" => pb::Storage::Int32Data,
            "int64_data" => pb::Storage::Int64Data,
            _ => pb::Storage::Uint64Data,
        },
        TensorData::External { .. } => pb::Storage::External,
        _ => pb::Storage::Unspecified,
    };
    code as i32
}

/// The ranges of `[0, len)` outside the sorted, disjoint `spans`.
pub(crate) fn complement(spans: &[(u64, u64)], len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    for &(a, b) in spans {
        if at < a {
            out.push((at, a));
        }
        at = at.max(b);
    }
    if at < len {
        out.push((at, len));
    }
    out
}

/// A manifest entry's facts, whatever the format version.
pub(crate) struct EntryFacts<'a> {
    pub name: &'a str,
    pub locator: &'a str,
    pub data_type: i32,
    pub storage: i32,
    pub nbytes: u64,
    pub mode: i32,
    pub spans: &'a [u64],
    pub tier: u32,
    pub stream_id: u64,
}

/// The facts of a tensor entry of each format (the same fields in both), with its spans:
/// its public ones, or its sealed ones once opened (format 2).
macro_rules! entry_facts {
    ($($entry:ty),*) => {$(
        impl<'a> From<(&'a $entry, &'a [u64])> for EntryFacts<'a> {
            fn from((e, spans): (&'a $entry, &'a [u64])) -> Self {
                EntryFacts {
                    name: &e.name,
                    locator: &e.locator,
                    data_type: e.data_type,
                    storage: e.storage,
                    nbytes: e.nbytes,
                    mode: e.mode,
                    spans,
                    tier: e.tier,
                    stream_id: e.stream_id,
                }
            }
        }
    )*};
}

entry_facts!(onnx_protect_proto::v1::TensorEntry, pb::TensorEntry);

/// What a format version requires of its entries beyond the common rules.
pub(crate) struct EntryRules {
    /// Whether `tier` is a valid tier of the manifest.
    pub tier_ok: Box<dyn Fn(u32) -> bool>,
    /// Every span holds at least [`Mode::min_span_elements`] elements (format 2; format 1
    /// wrote shorter `dp` spans).
    pub min_span: bool,
    /// Entries may list no span: their spans are sealed (secret positions), checked
    /// once unsealed.
    pub sealed: bool,
}

/// Matches every manifest entry to the model (§3–§6 of docs/format.md): each names a
/// tensor of the model as it was encrypted, once per tier, with its own stream id, and
/// spans that are in order, in bounds, aligned as the mode needs, and disjoint across
/// tiers.
pub(crate) fn match_targets<'a>(
    model: &Model,
    entries: impl Iterator<Item = EntryFacts<'a>>,
    rules: &EntryRules,
) -> Result<Vec<Target>> {
    // Sorted lists and ordered sets: no hashing of what the file says (a model has tens to
    // thousands of tensors, each looked up once).
    let mut by_locator: Vec<(&Locator, usize)> = model.tensors.iter().map(|t| (&t.locator, t.id)).collect();
    by_locator.sort_unstable();
    let mut seen_streams = BTreeSet::new();
    let mut seen_tensors = BTreeSet::new();
    let mut spans_of: Vec<Vec<(u64, u64)>> = vec![Vec::new(); model.tensors.len()];
    let mut targets = Vec::new();
    for e in entries {
        let tid = entry_tensor(model, &by_locator, &e, rules)?;
        if !seen_streams.insert(e.stream_id) || !seen_tensors.insert((tid, e.tier)) {
            return Err(BadManifest::TensorTwice { tensor: e.name.to_string() }.into());
        }
        let (mode, spans) = entry_spans(&model.tensors[tid], &e, rules)?;
        let all = &mut spans_of[tid];
        all.extend(spans.iter().copied());
        all.sort_unstable();
        if all.windows(2).any(|w| w[1].0 < w[0].1) {
            return Err(BadManifest::TierOverlap { tensor: e.name.to_string() }.into());
        }
        targets.push(Target { tensor: tid, stream_id: e.stream_id, mode, spans, tier: e.tier });
    }
    Ok(targets)
}

/// The model tensor of a manifest entry: at its locator, with the name, type, size and
/// storage it had, in a tier the manifest has.
fn entry_tensor(
    model: &Model,
    by_locator: &[(&Locator, usize)],
    e: &EntryFacts<'_>,
    rules: &EntryRules,
) -> Result<usize> {
    let loc: Locator = e.locator.parse().map_err(|why| BadManifest::Locator { tensor: e.name.to_string(), why })?;
    let tid = by_locator
        .binary_search_by(|&(l, _)| l.cmp(&loc))
        .map(|i| by_locator[i].1)
        .map_err(|_| Modified::TensorMissing { tensor: e.name.to_string(), locator: e.locator.to_string() })?;
    let t = &model.tensors[tid];
    if t.name != e.name || t.data_type.to_i32() != e.data_type || t.nbytes != e.nbytes || storage_code(t) != e.storage {
        return Err(Modified::TensorChanged { locator: e.locator.to_string() }.into());
    }
    if !(rules.tier_ok)(e.tier) {
        return Err(BadManifest::UnknownTier { tensor: e.name.to_string(), tier: e.tier }.into());
    }
    Ok(tid)
}

/// The mode and the spans of a manifest entry, checked against its tensor `t`.
fn entry_spans(t: &Tensor, e: &EntryFacts<'_>, rules: &EntryRules) -> Result<(Mode, Vec<(u64, u64)>)> {
    let tensor = || e.name.to_string();
    let mode = mode_of_code(e.mode).ok_or_else(|| BadManifest::UnknownMode { tensor: tensor(), mode: e.mode })?;
    if e.spans.len() % 2 != 0 || (e.spans.is_empty() && !rules.sealed) {
        return Err(BadManifest::NoSpans { tensor: tensor() }.into());
    }
    let spans: Vec<(u64, u64)> = e.spans.chunks(2).map(|c| (c[0], c[1])).collect();
    let mut prev_end = None;
    let elem = (t.data_type.bits() / 8).max(1);
    let min_elements = if rules.min_span { mode.min_span_elements() } else { 1 };
    for &(a, b) in &spans {
        // Spans may touch only in dp mode, where each span is one permutation unit.
        let overlaps = prev_end.is_some_and(|p| if mode.whole_spans() { a < p } else { a <= p });
        if a >= b || b > t.nbytes || overlaps {
            return Err(BadManifest::BadSpan { tensor: tensor(), span: (a, b) }.into());
        }
        if mode != Mode::Ctr && (a % elem != 0 || b % elem != 0) {
            return Err(BadManifest::UnalignedSpan { tensor: tensor(), span: (a, b) }.into());
        }
        if mode.whole_spans() && (b - a) / elem < min_elements {
            return Err(BadManifest::ShortSpan { tensor: tensor(), span: (a, b), min: min_elements }.into());
        }
        prev_end = Some(b);
    }
    if let TensorData::Varint { canonical: false, .. } | TensorData::Strings { .. } | TensorData::Empty = t.data {
        return Err(Modified::Storage { tensor: tensor() }.into());
    }
    if mode == Mode::Fp && fp_mask(t.data_type.to_i32()).is_none() {
        return Err(BadManifest::NoFpMask { tensor: tensor(), dtype: t.data_type }.into());
    }
    if !mode.takes_element_bits(t.data_type.bits()) {
        return Err(BadManifest::DpElements { tensor: tensor() }.into());
    }
    Ok((mode, spans))
}

/// Refuses spans of different entries that share bytes of a file (tensors that share
/// external data): encrypting one would change the other.
pub(crate) fn check_disjoint_in_files(model: &Model, targets: &[Target]) -> Result<()> {
    let mut pieces: Vec<(Option<usize>, u64, u64)> = Vec::new();
    for t in targets {
        let tensor = &model.tensors[t.tensor];
        let file = match &tensor.data {
            TensorData::External { file, .. } => Some(*file),
            _ => None,
        };
        for &(a, b) in &t.spans {
            for (r, _) in tensor.file_pieces(a, b) {
                pieces.push((file, r.start, r.end));
            }
        }
    }
    pieces.sort_unstable();
    if pieces.windows(2).any(|w| w[0].0 == w[1].0 && w[1].1 < w[0].2) {
        return Err(BadManifest::SharedFileBytes.into());
    }
    Ok(())
}
