//! What an attacker without the key can build from a protected model.
//!
//! The manifest of a protected model is public: it lists which tensors are
//! encrypted and which byte spans of each. An attacker who copies the file can
//! therefore overwrite exactly those spans. Two such repairs are simulated here:
//!
//! * [`Fill::Zero`]: every encrypted element becomes zero;
//! * [`Fill::Mean`]: every encrypted element becomes the mean of the *clear*
//!   (non-encrypted) elements of the same tensor.
//!
//! In a model with access tiers, the spans of every tier still encrypted in the file
//! (every tier above `Envelope.restored_tiers`) are unknown to the attacker alike: a
//! tensor's spans of all those tiers are filled, and only the elements outside all
//! of them count as clear. Spans of tiers already restored in the file are
//! plaintext and stay as they are.
//!
//! Neither fill needs the key. The result is a model (and its external data files)
//! in memory, ready to run.

use std::collections::BTreeMap;
use std::ops::Range;

use onnx_protect_core::protect::protection_view;
use onnx_protect_format::write::{Content, Edit, Plan};
use onnx_protect_format::{DataType, Model, TensorData};

use crate::error::{Result, RuntimeError};

/// How the encrypted elements are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fill {
    /// Zero.
    Zero,
    /// The mean of the tensor's clear elements.
    Mean,
}

/// A model rebuilt by an attacker: the model file's bytes and its external files.
#[derive(Debug, Clone)]
pub struct Repaired {
    pub model: Vec<u8>,
    /// External data files by `location` (all of them, patched where needed).
    pub external: BTreeMap<String, Vec<u8>>,
    /// Tensors zero-filled by [`Fill::Mean`]: no clear element, or a type without a mean.
    pub zero_filled_instead: Vec<String>,
}

/// Elements as `f64` and back, for the types a mean makes sense for.
fn decode(dt: DataType, c: &[u8]) -> Option<f64> {
    use DataType::*;
    Some(match dt {
        Float => f64::from(f32::from_le_bytes(c.try_into().ok()?)),
        Double => f64::from_le_bytes(c.try_into().ok()?),
        Float16 => f64::from(half::f16::from_le_bytes(c.try_into().ok()?).to_f32()),
        Bfloat16 => f64::from(half::bf16::from_le_bytes(c.try_into().ok()?).to_f32()),
        Int8 => f64::from(c[0] as i8),
        Uint8 => f64::from(c[0]),
        Int16 => f64::from(i16::from_le_bytes(c.try_into().ok()?)),
        Uint16 => f64::from(u16::from_le_bytes(c.try_into().ok()?)),
        Int32 => f64::from(i32::from_le_bytes(c.try_into().ok()?)),
        Uint32 => f64::from(u32::from_le_bytes(c.try_into().ok()?)),
        Int64 => i64::from_le_bytes(c.try_into().ok()?) as f64,
        Uint64 => u64::from_le_bytes(c.try_into().ok()?) as f64,
        _ => return None,
    })
}

fn encode(dt: DataType, v: f64) -> Option<Vec<u8>> {
    use DataType::*;
    let r = v.round();
    Some(match dt {
        Float => (v as f32).to_le_bytes().to_vec(),
        Double => v.to_le_bytes().to_vec(),
        Float16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
        Bfloat16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
        Int8 => vec![r as i8 as u8],
        Uint8 => vec![r as u8],
        Int16 => (r as i16).to_le_bytes().to_vec(),
        Uint16 => (r as u16).to_le_bytes().to_vec(),
        Int32 => (r as i32).to_le_bytes().to_vec(),
        Uint32 => (r as u32).to_le_bytes().to_vec(),
        Int64 => (r as i64).to_le_bytes().to_vec(),
        Uint64 => (r as u64).to_le_bytes().to_vec(),
        _ => return None,
    })
}

/// Byte spans widened to whole elements (whole bytes for sub-byte types), sorted, and
/// merged where they overlap or touch.
fn element_spans(spans: &[(u64, u64)], elem: u64, nbytes: u64) -> Vec<Range<usize>> {
    let mut widened: Vec<Range<usize>> = spans
        .iter()
        .map(|&(a, b)| ((a / elem) * elem) as usize..(b.div_ceil(elem) * elem).min(nbytes) as usize)
        .collect();
    widened.sort_unstable_by_key(|r| (r.start, r.end));
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(widened.len());
    for r in widened {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// The mean of the elements outside `spans`, if the type has a mean and any element is clear.
fn clear_mean(dt: DataType, bytes: &[u8], spans: &[Range<usize>]) -> Option<f64> {
    let elem = (dt.bits() / 8) as usize;
    if elem == 0 || dt.bits() % 8 != 0 {
        return None;
    }
    let (mut sum, mut n) = (0.0f64, 0u64);
    let mut pos = 0usize;
    let mut add = |from: usize, to: usize| -> Option<()> {
        for c in bytes.get(from..to)?.chunks_exact(elem) {
            let v = decode(dt, c)?;
            if v.is_finite() {
                sum += v;
                n += 1;
            }
        }
        Some(())
    };
    for s in spans {
        add(pos, s.start)?;
        pos = s.end;
    }
    add(pos, bytes.len())?;
    if n == 0 {
        return None;
    }
    Some(sum / n as f64)
}

/// Builds the attacker's model from a protected model: the encrypted spans listed
/// in its (public) manifest are overwritten according to `fill`.
pub fn repair(protected: &Model, fill: Fill) -> Result<Repaired> {
    let p = protection_view(protected)?;
    let mut edits: Vec<Edit> = Vec::new();
    let mut external: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for f in &protected.external_files {
        external.insert(f.location.clone(), f.bytes()?.to_vec());
    }
    // The spans still encrypted in the file, by tensor, all tiers together.
    let mut encrypted: BTreeMap<usize, Vec<(u64, u64)>> = BTreeMap::new();
    for target in p.still_encrypted() {
        encrypted.entry(target.tensor).or_default().extend_from_slice(&target.spans);
    }
    let mut zero_filled_instead = Vec::new();
    for (&tensor, spans) in &encrypted {
        let t = &protected.tensors[tensor];
        let elem = (t.data_type.bits() / 8).max(1);
        let mut bytes = protected.tensor_bytes(t.id)?.into_owned();
        let spans = element_spans(spans, elem, t.nbytes);
        let value = match fill {
            Fill::Zero => vec![0u8; elem as usize],
            Fill::Mean => match clear_mean(t.data_type, &bytes, &spans).and_then(|m| encode(t.data_type, m)) {
                Some(v) => v,
                None => {
                    zero_filled_instead.push(t.name.clone());
                    vec![0u8; elem as usize]
                }
            },
        };
        for s in &spans {
            let region = bytes.get_mut(s.clone()).ok_or_else(|| {
                RuntimeError::Input(format!("tensor '{}': span {s:?} is outside its {} bytes", t.name, t.nbytes))
            })?;
            for (i, b) in region.iter_mut().enumerate() {
                *b = value[i % value.len()];
            }
        }
        match &t.data {
            TensorData::Raw { .. } | TensorData::Fixed { .. } => {
                for s in &spans {
                    for (range, logical) in t.file_pieces(s.start as u64, s.end as u64) {
                        let from = logical as usize;
                        let len = (range.end - range.start) as usize;
                        edits.push(Edit {
                            range,
                            content: Content::Bytes(bytes[from..from + len].to_vec()),
                            ancestors: Vec::new(),
                        });
                    }
                }
            }
            TensorData::Varint { .. } => {
                edits.extend(t.varint_edits(&bytes));
            }
            TensorData::External { file, .. } => {
                let loc = &protected.external_files[*file].location;
                let buf = external
                    .get_mut(loc)
                    .ok_or_else(|| RuntimeError::Input(format!("external file '{loc}' is missing")))?;
                for s in &spans {
                    for (range, logical) in t.file_pieces(s.start as u64, s.end as u64) {
                        let from = logical as usize;
                        let len = (range.end - range.start) as usize;
                        let dst = buf.get_mut(range.start as usize..range.end as usize).ok_or_else(|| {
                            RuntimeError::Input(format!("tensor '{}': range outside external file '{loc}'", t.name))
                        })?;
                        dst.copy_from_slice(&bytes[from..from + len]);
                    }
                }
            }
            _ => {}
        }
    }
    let src = protected.bytes();
    let plan = Plan::new(src.len() as u64, edits, Vec::new())?;
    let mut model = Vec::with_capacity(plan.output_len() as usize);
    plan.write(src, &mut model, &mut |_, _, _| Ok(()))?;
    Ok(Repaired { model, external, zero_filled_instead })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_of_clear_elements_skips_the_spans() {
        let v: Vec<u8> = [1.0f32, 100.0, 100.0, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(clear_mean(DataType::Float, &v, std::slice::from_ref(&(4..12))), Some(2.0));
        assert_eq!(clear_mean(DataType::Float, &v, std::slice::from_ref(&(0..16))), None);
        assert_eq!(element_spans(&[(5, 9)], 4, 16), vec![4..12]);
        // Spans of different tiers: sorted, and merged where whole elements overlap or touch.
        assert_eq!(element_spans(&[(12, 14), (0, 3), (3, 5), (14, 16)], 4, 16), vec![0..8, 12..16]);
        assert_eq!(encode(DataType::Uint8, 2.6), Some(vec![3]));
    }
}
