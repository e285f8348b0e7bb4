//! Embedding a recipient's fingerprint: `w' = w + α·σ·s` (docs/tracing.md §2).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use onnx_protect_format::{DataType, Model, Tensor, TensorId};

use crate::error::{Result, TraceError};
use crate::ledger::Entry;
pub use crate::ledger::{check_alpha, MAX_ALPHA};
use crate::plan::{decode_float, encode_float, plan, weights_digest};
use crate::secret::{FingerprintKey, Pattern, RecipientId};

/// Default strength α: each marked element moves by α times its tensor's standard
/// deviation (docs/tracing.md §5 has the measurements behind it).
pub const DEFAULT_ALPHA: f64 = 0.002;
/// Fewest elements a model must offer. An untouched copy of a model with `n` marked
/// elements scores about `√n`; 256 elements give 16, three times the threshold.
pub const MIN_ELEMENTS: u64 = 256;

struct Marked {
    name: String,
    nbytes: u64,
    data_type: DataType,
    sigma: f64,
    pattern: Pattern,
}

/// The fingerprint of one recipient for one model, ready to be applied to its weights.
///
/// [`Marker::rewrite`] has the shape of the encryption's plaintext rewrite hook
/// (`onnx_protect_core::Rewrite`, docs/tracing.md §2): the patterns are derived when the marker is
/// made, so applying them cannot fail, and a tensor the marker was not planned for (or
/// whose name, type or length differ) is left as it is.
pub struct Marker {
    alpha: f64,
    recipient: RecipientId,
    variant: u32,
    entries: HashMap<TensorId, Marked>,
    elements: u64,
    original: String,
    key_id: String,
    rewritten: AtomicUsize,
}

impl Marker {
    /// Plans the fingerprint of `recipient` over `model` with strength `alpha`
    /// (0 < α ≤ [`MAX_ALPHA`]). Errors when the model offers fewer than
    /// [`MIN_ELEMENTS`] elements.
    pub fn new(model: &Model, key: &FingerprintKey, recipient: &RecipientId, alpha: f64) -> Result<Marker> {
        Marker::with_variant(model, key, recipient, 0, alpha)
    }

    /// As [`Marker::new`], with the patterns of variant `variant` of the recipient's mark
    /// ([`FingerprintKey::pattern_variant`]).
    pub fn with_variant(
        model: &Model,
        key: &FingerprintKey,
        recipient: &RecipientId,
        variant: u32,
        alpha: f64,
    ) -> Result<Marker> {
        check_alpha(alpha)?;
        let mut entries = HashMap::new();
        let mut elements = 0u64;
        let planned = plan(model)?;
        let original = weights_digest(model, &planned)?;
        for p in planned {
            let t = &model.tensors[p.tensor];
            let pattern = key.pattern_variant(recipient, variant, &p.key, p.len)?;
            elements += p.len as u64;
            entries.insert(
                p.tensor,
                Marked { name: t.name.clone(), nbytes: t.nbytes, data_type: t.data_type, sigma: p.sigma, pattern },
            );
        }
        if elements < MIN_ELEMENTS {
            return Err(TraceError::TooFewWeights { elements, min: MIN_ELEMENTS });
        }
        Ok(Marker {
            alpha,
            recipient: recipient.clone(),
            variant,
            entries,
            elements,
            original,
            key_id: key.key_id(),
            rewritten: AtomicUsize::new(0),
        })
    }

    /// The new element bytes of `t` (the same length as `bytes`), or `None` for a tensor
    /// that carries no fingerprint.
    pub fn rewrite(&self, t: &Tensor, bytes: &[u8]) -> Option<Vec<u8>> {
        let out = self.marked(t, bytes)?;
        self.rewritten.fetch_add(1, Ordering::Relaxed);
        Some(out)
    }

    /// What [`Marker::rewrite`] returns, without counting it in [`Marker::rewritten`] (for
    /// a trial run of the marked model).
    pub fn marked(&self, t: &Tensor, bytes: &[u8]) -> Option<Vec<u8>> {
        let e = self.entries.get(&t.id)?;
        if e.name != t.name || e.data_type != t.data_type || e.nbytes != bytes.len() as u64 {
            return None;
        }
        mark_bytes(t.data_type, bytes, e.sigma, &e.pattern, self.alpha)
    }

    /// The recipient.
    pub fn recipient(&self) -> &RecipientId {
        &self.recipient
    }

    /// The variant of the recipient's mark.
    pub fn variant(&self) -> u32 {
        self.variant
    }

    /// The strength α.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// Number of tensors planned.
    pub fn tensors(&self) -> usize {
        self.entries.len()
    }

    /// Number of elements planned.
    pub fn elements(&self) -> u64 {
        self.elements
    }

    /// The original's [`weights_digest`].
    pub fn original(&self) -> &str {
        &self.original
    }

    /// The ledger entry of this fingerprint: `model` names the original for people,
    /// `time` is in Unix seconds.
    pub fn ledger_entry(&self, model: &str, time: u64) -> Entry {
        Entry {
            recipient: self.recipient.clone(),
            variant: self.variant,
            key_id: self.key_id.clone(),
            original: self.original.clone(),
            model: one_line(model, 1024),
            alpha: self.alpha,
            tensors: self.entries.len() as u64,
            elements: self.elements,
            time,
            lock: 0,
        }
    }

    /// Number of tensors [`Marker::rewrite`] has changed so far.
    pub fn rewritten(&self) -> usize {
        self.rewritten.load(Ordering::Relaxed)
    }
}

/// `text` without control characters, cut to at most `max` bytes at a character boundary.
fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// `bytes` (elements of type `dt`) with `alpha·sigma·pattern` added, each element
/// rounded to the nearest value of the type; non-finite elements stay as they are.
/// `None` when the type is not marked or the lengths disagree.
pub fn mark_bytes(dt: DataType, bytes: &[u8], sigma: f64, pattern: &Pattern, alpha: f64) -> Option<Vec<u8>> {
    let mut values = decode_float(dt, bytes)?;
    if values.len() != pattern.len() {
        return None;
    }
    let step = alpha * sigma;
    for (j, v) in values.iter_mut().enumerate() {
        if v.is_finite() {
            *v += step * pattern.sign(j);
        }
    }
    let mut out = encode_float(dt, &values)?;
    // Non-finite elements keep their exact bytes (a NaN's payload survives).
    let width = bytes.len() / values.len().max(1);
    for (j, v) in values.iter().enumerate() {
        if !v.is_finite() {
            let r = j * width..(j + 1) * width;
            out[r.clone()].copy_from_slice(&bytes[r]);
        }
    }
    Some(out)
}
