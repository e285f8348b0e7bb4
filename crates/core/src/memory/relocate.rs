//! The model file's tensors in a region filled on demand
//! ([`InMemory::model_on_demand`](super::InMemory::model_on_demand)): which of them the
//! region fills, where each starts in it, and where the region holds a tensor's bytes.

use std::ops::Range;

use onnx_protect_format::{DataType, Model, Origin, Tensor, TensorData};

/// The model file's initializers at least this long are filled on demand with it.
const HOLE_MIN: u64 = 64 << 10;

/// Each of the model file's tensors starts at a multiple of this in the region (as
/// onnxruntime's own allocations do), so that a runtime reads it in place.
const TENSOR_ALIGN: u64 = 64;

/// The model file's tensors the region fills when the model file is filled on demand:
/// the `raw_data` of the main graph's initializers of at least [`HOLE_MIN`] bytes (a
/// loader hands each of them to the runtime as external data:
/// `onnx_protect_session::files`), sorted and disjoint, inside the content.
pub(super) fn model_holes(model: &Model, content_len: u64) -> Vec<Range<u64>> {
    let mut holes: Vec<Range<u64>> = model
        .tensors
        .iter()
        .filter(|t| t.origin == Origin::Initializer && t.data_type != DataType::String && model.in_main_graph(t))
        .filter_map(|t| match &t.data {
            TensorData::Raw { range } if range.end - range.start >= HOLE_MIN && range.end <= content_len => {
                Some(range.clone())
            }
            _ => None,
        })
        .collect();
    holes.sort_by_key(|r| r.start);
    holes.dedup_by(|b, a| b.start < a.end);
    holes
}

/// Where the region holds a tensor's bytes: its file in the region and the range there.
pub(super) struct Located<'a> {
    /// The region's file of external file 0 (1 when the model file is the region's first).
    pub(super) shift: usize,
    /// The model file's tensors in the region (sorted; empty when the model file is not),
    /// and where each starts in it.
    pub(super) holes: &'a [Range<u64>],
    pub(super) at: &'a [u64],
}

impl Located<'_> {
    pub(super) fn of(&self, t: &Tensor) -> Option<(usize, Range<u64>)> {
        match &t.data {
            TensorData::External { file, range } => Some((file + self.shift, range.clone())),
            TensorData::Raw { range } => {
                let k = self.holes.binary_search_by_key(&range.start, |h| h.start).ok()?;
                Some((0, self.at[k]..self.at[k] + (range.end - range.start)))
            }
            _ => None,
        }
    }
}

/// Where each of the model file's tensors `holes` (sorted, disjoint) starts in the region:
/// at or after its offset in the file and after the previous one, at a multiple of
/// [`TENSOR_ALIGN`].
pub(super) fn relocate(holes: &[Range<u64>]) -> Vec<u64> {
    let mut end = 0u64;
    holes
        .iter()
        .map(|h| {
            let at = h.start.max(end).next_multiple_of(TENSOR_ALIGN);
            end = at + (h.end - h.start);
            at
        })
        .collect()
}

/// The model file's tensors laid out in the region ([`relocate`]).
pub(super) struct Relocated {
    /// The model file's content (the chunks hashed).
    pub(super) content_len: u64,
    /// Each tensor's bytes in the file and where they start in the region, sorted.
    pub(super) tensors: Vec<(Range<u64>, u64)>,
}
