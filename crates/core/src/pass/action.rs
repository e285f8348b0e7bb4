//! What happens to the encrypted spans of a target (docs/format.md §5, §6): a
//! keystream XORed into every bit (`ctr`) or through a per-type mask (`fp`), a keyed
//! permutation of whole elements (`dp`, in `permute`), or new bytes computed
//! beforehand (a [`Rewrite`] of the plaintext among them); and the edit list of the
//! model file that carries them out.

use std::ops::Range;

use onnx_protect_crypto::{fp_mask, Keystream, Mode};
use onnx_protect_format::write::{Content, Edit};
use onnx_protect_format::{DataType, Model, Tensor, TensorData};

use crate::error::{BadManifest, CoreError, Result};
use crate::target::Target;

/// A change of the plaintext made while encrypting (a recipient's fingerprint): given a
/// weight tensor and its element bytes, the new element bytes (same length), or `None`
/// to leave it.
pub type Rewrite = dyn Fn(&Tensor, &[u8]) -> Option<Vec<u8>> + Sync;

/// Applies the keystream `ks` in `mode` to `data`, which holds logical bytes of a
/// tensor of type `dtype` starting at `offset`; `parallel` spreads it over the thread
/// pool. The distribution-preserving mode is refused: it permutes whole spans.
pub(crate) fn apply(
    ks: &Keystream,
    mode: Mode,
    dtype: DataType,
    offset: u64,
    data: &mut [u8],
    parallel: bool,
) -> Result<()> {
    match mode {
        Mode::Ctr => {
            if parallel {
                ks.apply_par(offset, data)?
            } else {
                ks.apply(offset, data)?
            }
        }
        Mode::Dp => return Err(CoreError::Internal("the distribution-preserving mode applied chunk by chunk")),
        Mode::Fp => {
            let mask = fp_mask(dtype.to_i32())
                .ok_or(CoreError::Internal("the format-preserving mode on a type without a mask"))?;
            if parallel {
                ks.apply_masked_par(offset, data, mask)?
            } else {
                ks.apply_masked(offset, data, mask)?
            }
        }
    }
    Ok(())
}

/// What happens to one target while an output is written.
pub(crate) enum Action {
    /// Leave the stored bytes as they are.
    Skip,
    /// XOR this keystream, chunk by chunk.
    Xor(Box<Keystream>),
    /// Replace the element bytes by these (the whole tensor, transformed beforehand):
    /// varint-stored tensors and the distribution-preserving mode.
    Bytes(Vec<u8>),
    /// Re-encryption (`rekey`): XOR the old keystream, then the new one, chunk by chunk.
    Reencrypt(Box<(Keystream, Keystream)>),
}

impl Action {
    /// Applies a chunk-by-chunk action to `data`, logical bytes of `target` starting at
    /// `offset`; the other actions leave it as it is.
    pub(crate) fn apply_chunk(
        &self,
        target: &Target,
        dtype: DataType,
        offset: u64,
        data: &mut [u8],
        parallel: bool,
    ) -> Result<()> {
        match self {
            Action::Xor(ks) => apply(ks, target.mode, dtype, offset, data, parallel),
            Action::Reencrypt(pair) => {
                apply(&pair.0, target.mode, dtype, offset, data, parallel)?;
                apply(&pair.1, target.mode, dtype, offset, data, parallel)
            }
            Action::Skip | Action::Bytes(_) => Ok(()),
        }
    }
}

/// Encrypts (`decrypting = false`) or decrypts one span of `target` in place: `span`
/// holds its element bytes, which start at element-byte offset `a`.
pub(crate) fn transform_span(
    ks: &Keystream,
    target: &Target,
    dtype: DataType,
    a: u64,
    span: &mut [u8],
    decrypting: bool,
) -> Result<()> {
    if target.mode.whole_spans() {
        crate::pass::permute::permute_span(ks, a, span, (dtype.bits() / 8).max(1) as usize, decrypting)
    } else {
        // Large spans on the thread pool; small ones stay on this thread.
        apply(ks, target.mode, dtype, a, span, true)
    }
}

/// The span of `target` at `(a, b)` inside the whole element bytes `bytes`.
pub(crate) fn span_mut<'a>(
    model: &Model,
    target: &Target,
    bytes: &'a mut [u8],
    (a, b): (u64, u64),
) -> Result<&'a mut [u8]> {
    bytes
        .get_mut(a as usize..b as usize)
        .ok_or_else(|| BadManifest::SpanOutOfBounds { tensor: model.tensors[target.tensor].name.clone() }.into())
}

/// The whole element bytes of a target's tensor with its spans encrypted
/// (`decrypting = false`) or decrypted.
pub(crate) fn transform_tensor(model: &Model, target: &Target, ks: &Keystream, decrypting: bool) -> Result<Vec<u8>> {
    let t = &model.tensors[target.tensor];
    let mut bytes = model.tensor_bytes(t.id)?.into_owned();
    for &(a, b) in &target.spans {
        transform_span(ks, target, t.data_type, a, span_mut(model, target, &mut bytes, (a, b))?, decrypting)?;
    }
    Ok(bytes)
}

/// Chooses the [`Action`] of every target; `None` streams are skipped.
pub(crate) fn prepare(
    model: &Model,
    targets: &[Target],
    streams: Vec<Option<Keystream>>,
    decrypting: bool,
) -> Result<Vec<Action>> {
    targets
        .iter()
        .zip(streams)
        .map(|(target, ks)| {
            let Some(ks) = ks else { return Ok(Action::Skip) };
            let varint = matches!(model.tensors[target.tensor].data, TensorData::Varint { .. });
            if varint || target.mode.whole_spans() {
                Ok(Action::Bytes(transform_tensor(model, target, &ks, decrypting)?))
            } else {
                Ok(Action::Xor(Box::new(ks)))
            }
        })
        .collect()
}

/// The pieces of the spans of `target` (of tensor `t`) in their file, in order, each
/// with its new bytes out of `bytes`, the whole new element bytes of the tensor.
pub(crate) fn new_pieces<'a>(t: &Tensor, target: &Target, bytes: &'a [u8]) -> Result<Vec<(Range<u64>, &'a [u8])>> {
    let mut out = Vec::new();
    for &(a, b) in &target.spans {
        for (range, logical) in t.file_pieces(a, b) {
            let lo = logical as usize;
            let hi = lo + (range.end - range.start) as usize;
            let piece = bytes.get(lo..hi).ok_or_else(|| BadManifest::SpanOutOfBounds { tensor: t.name.clone() })?;
            out.push((range, piece));
        }
    }
    Ok(out)
}

/// The edit list for the model file itself, from the targets' actions.
pub(crate) fn edits_for(model: &Model, targets: &[Target], actions: &[Action], extra: Vec<Edit>) -> Result<Vec<Edit>> {
    edits_with(model, targets, actions, extra, true)
}

/// [`edits_for`], with the in-place transforms (chunk-by-chunk actions on `raw_data` and
/// typed fixed-width fields, which change no length) only if `transforms` is set: a
/// writer that transforms those spans itself needs just the edits that carry bytes.
pub(crate) fn edits_with(
    model: &Model,
    targets: &[Target],
    actions: &[Action],
    extra: Vec<Edit>,
    transforms: bool,
) -> Result<Vec<Edit>> {
    let mut edits = extra;
    for (ti, target) in targets.iter().enumerate() {
        let t = &model.tensors[target.tensor];
        let action = &actions[ti];
        if matches!(action, Action::Skip) {
            continue;
        }
        match (&t.data, action) {
            (TensorData::Raw { .. } | TensorData::Fixed { .. }, Action::Xor(_) | Action::Reencrypt(_))
                if transforms =>
            {
                for &(a, b) in &target.spans {
                    for (range, logical) in t.file_pieces(a, b) {
                        edits.push(Edit {
                            range,
                            content: Content::Transform { tag: ti, logical_start: logical },
                            ancestors: Vec::new(),
                        });
                    }
                }
            }
            (TensorData::Raw { .. } | TensorData::Fixed { .. }, Action::Bytes(bytes)) => {
                for (range, piece) in new_pieces(t, target, bytes)? {
                    edits.push(Edit { range, content: Content::Bytes(piece.to_vec()), ancestors: Vec::new() });
                }
            }
            (TensorData::Varint { .. }, Action::Bytes(bytes)) => {
                edits.extend(t.varint_edits(bytes));
            }
            (TensorData::External { .. }, _)
            | (TensorData::Raw { .. } | TensorData::Fixed { .. }, Action::Xor(_) | Action::Reencrypt(_)) => {}
            _ => return Err(BadManifest::NoData { tensor: t.name.clone() }.into()),
        }
    }
    Ok(edits)
}
