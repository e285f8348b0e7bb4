//! Which weights carry a fingerprint, and their element values (docs/tracing.md §2).
//!
//! A tensor is *planned* when all of these hold:
//!
//! * [`discover()`] finds it as a weight whose uses are all in a `main` or `bias` role
//!   (normalisation parameters, running statistics and quantisation scales are left
//!   alone: a shifted running variance can turn negative);
//! * its type is FLOAT, FLOAT16, BFLOAT16 or DOUBLE, it has at least two elements and its
//!   finite elements have a non-zero standard deviation σ;
//! * its *key* is not empty and no tensor before it (in model order) has the same key.
//!   The key is the tensor's name, or for a `Constant` node's value the node's output
//!   name. One tensor per key keeps the patterns of different tensors independent.
//!
//! The plan depends on the unmarked model only, so the marking and the tracing side
//! compute the same one.

use std::collections::HashSet;

use onnx_protect_format::{discover, DataType, Model, Origin, Tensor, TensorId, WeightKind};

use sha2::{Digest, Sha256};

use crate::error::{Result, TraceError};

/// Domain label of [`weights_digest`].
pub const ORIGINAL_LABEL: &[u8] = b"onnx-protect/v1/fingerprint-original";

/// A tensor that carries a fingerprint.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The tensor in the model the plan was made from.
    pub tensor: TensorId,
    /// Its key: what names it across copies, and what its patterns are derived from.
    pub key: String,
    /// Its dims.
    pub dims: Vec<u64>,
    /// Its number of elements.
    pub len: usize,
    /// Standard deviation of its finite elements (population), > 0.
    pub sigma: f64,
}

/// The tensors of `model` that carry a fingerprint, in model order.
pub fn plan(model: &Model) -> Result<Vec<Planned>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for w in discover(model) {
        let t = &model.tensors[w.tensor];
        if !is_marked_float(t.data_type)
            || t.numel < 2
            || w.uses.iter().any(|u| !matches!(u.kind, WeightKind::Main | WeightKind::Bias))
        {
            continue;
        }
        let key = tensor_key(model, t);
        if key.is_empty() || !seen.insert(key.to_string()) {
            continue;
        }
        let bytes = model.tensor_bytes(t.id).map_err(TraceError::model(format!("tensor '{}'", t.name)))?;
        let Some(values) = decode_float(t.data_type, &bytes) else { continue };
        let sigma = std_dev(&values);
        if sigma > 0.0 {
            out.push(Planned { tensor: t.id, key: key.to_string(), dims: t.dims.clone(), len: values.len(), sigma });
        }
    }
    Ok(out)
}

/// The identity of an unmarked model as the ledger records it: SHA-256 over
/// [`ORIGINAL_LABEL`] and, for each planned tensor in order, `u64be(len key) || key ||
/// u32be(data type) || u64be(rank) || u64be(dim)… || u64be(len bytes) || element bytes`
/// (little-endian `raw_data` layout), as 64 hex digits. It depends on the fingerprinted
/// weights only, not on how the file stores them.
pub fn weights_digest(model: &Model, planned: &[Planned]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(ORIGINAL_LABEL);
    for p in planned {
        let t = &model.tensors[p.tensor];
        let bytes = model.tensor_bytes(t.id).map_err(TraceError::model(format!("tensor '{}'", t.name)))?;
        h.update((p.key.len() as u64).to_be_bytes());
        h.update(p.key.as_bytes());
        h.update((t.data_type.to_i32() as u32).to_be_bytes());
        h.update((p.dims.len() as u64).to_be_bytes());
        for d in &p.dims {
            h.update(d.to_be_bytes());
        }
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(&bytes);
    }
    Ok(hex::encode(h.finalize()))
}

/// The key of a tensor: its name, or for a tensor-valued attribute (a `Constant` node's
/// value) the first output name of its node when it has one.
pub fn tensor_key<'m>(model: &'m Model, t: &'m Tensor) -> &'m str {
    if let Origin::Attribute { node, .. } = &t.origin {
        if let Some(out) = model.nodes.get(*node).and_then(|n| n.outputs.first()).filter(|o| !o.is_empty()) {
            return out;
        }
    }
    &t.name
}

/// Whether fingerprints are embedded in weights of this type.
pub fn is_marked_float(dt: DataType) -> bool {
    matches!(dt, DataType::Float | DataType::Float16 | DataType::Bfloat16 | DataType::Double)
}

/// The elements of `bytes` (`raw_data` layout, little-endian) of a FLOAT, FLOAT16,
/// BFLOAT16 or DOUBLE tensor; `None` for other types or a length that is not a whole
/// number of elements.
pub fn decode_float(dt: DataType, bytes: &[u8]) -> Option<Vec<f64>> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f64) -> Option<Vec<f64>> {
        if bytes.len() % N != 0 {
            return None;
        }
        Some(bytes.chunks_exact(N).map(|c| f(c.try_into().unwrap_or([0; N]))).collect())
    }
    match dt {
        DataType::Float => each::<4>(bytes, |b| f64::from(f32::from_le_bytes(b))),
        DataType::Double => each::<8>(bytes, f64::from_le_bytes),
        DataType::Float16 => each::<2>(bytes, |b| half::f16::from_le_bytes(b).to_f64()),
        DataType::Bfloat16 => each::<2>(bytes, |b| half::bf16::from_le_bytes(b).to_f64()),
        _ => None,
    }
}

/// The elements of an INT8 or UINT8 tensor; `None` for other types.
pub fn decode_int8(dt: DataType, bytes: &[u8]) -> Option<Vec<f64>> {
    match dt {
        DataType::Int8 => Some(bytes.iter().map(|&b| f64::from(b as i8)).collect()),
        DataType::Uint8 => Some(bytes.iter().map(|&b| f64::from(b)).collect()),
        _ => None,
    }
}

/// `values` in the `raw_data` layout of `dt`, each rounded to the nearest value of the
/// type; `None` for a type [`is_marked_float`] refuses.
pub fn encode_float(dt: DataType, values: &[f64]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * 8);
    for &v in values {
        match dt {
            DataType::Float => out.extend_from_slice(&(v as f32).to_le_bytes()),
            DataType::Double => out.extend_from_slice(&v.to_le_bytes()),
            DataType::Float16 => out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
            DataType::Bfloat16 => out.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
            _ => return None,
        }
    }
    Some(out)
}

/// Population standard deviation of the finite `values` (0 when fewer than two).
pub fn std_dev(values: &[f64]) -> f64 {
    let (mut n, mut sum) = (0u64, 0.0);
    for v in values.iter().filter(|v| v.is_finite()) {
        n += 1;
        sum += v;
    }
    if n < 2 {
        return 0.0;
    }
    let mean = sum / n as f64;
    let var = values.iter().filter(|v| v.is_finite()).map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
    var.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_float_type_round_trips_its_own_values() {
        let values = [0.0, -1.5, 0.25, 3.0, -0.0, f64::INFINITY];
        for dt in [DataType::Float, DataType::Double, DataType::Float16, DataType::Bfloat16] {
            let bytes = encode_float(dt, &values).unwrap();
            assert_eq!(bytes.len() as u64, dt.byte_len(values.len() as u64).unwrap(), "{dt}");
            let back = decode_float(dt, &bytes).unwrap();
            assert_eq!(back.len(), values.len());
            for (a, b) in back.iter().zip(&values) {
                assert!(a == b, "{dt}: {a} vs {b}");
            }
        }
        assert!(decode_float(DataType::Int8, &[1, 2]).is_none());
        assert!(decode_float(DataType::Float, &[1, 2, 3]).is_none());
        assert!(encode_float(DataType::Int32, &[1.0]).is_none());
        assert_eq!(decode_int8(DataType::Int8, &[0xff, 3]).unwrap(), vec![-1.0, 3.0]);
        assert_eq!(decode_int8(DataType::Uint8, &[0xff]).unwrap(), vec![255.0]);
    }

    #[test]
    fn std_dev_ignores_non_finite_values() {
        assert_eq!(std_dev(&[1.0, 3.0, f64::NAN, f64::INFINITY]), 1.0);
        assert_eq!(std_dev(&[2.0, 2.0, 2.0]), 0.0);
        assert_eq!(std_dev(&[5.0]), 0.0);
    }
}
