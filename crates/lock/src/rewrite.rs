//! The byte rewrite of a lock: the output layer's tensors with their class slices
//! permuted, and its exact inverse.
//!
//! A tensor's element bytes (the `raw_data` layout, whatever the storage) are seen as
//! `[outer, C, inner]` around the class axis; locking puts slice `p[q]` at position `q`,
//! unlocking puts it back. Elements move whole, so values, their bits and the padding bits
//! of packed sub-byte types are kept: unlocking a locked tensor gives back its exact bytes.
//! The new bytes go back into the same storage: in place for `raw_data`, `float_data`,
//! `double_data` and external data; re-encoded for (canonical) varint fields.

use std::ops::Range;

use onnx_protect_format::write::{Content, Edit, Plan};
use onnx_protect_format::{DataType, Model, TensorData, TensorId};

use crate::error::{LockError, Result};
use crate::find::OutputLayer;
use crate::perm::ClassPermutation;

/// Which way a rewrite goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// True order to locked order.
    Lock,
    /// Locked order back to true order.
    Unlock,
}

/// The new element bytes (`raw_data` layout) of one tensor of the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub tensor: TensorId,
    pub bytes: Vec<u8>,
}

/// The element bytes `bytes` of a tensor of type `dtype` and dimensions `dims` with its
/// slices along `axis` permuted by `perm` in direction `dir`.
pub fn permute_elements(
    bytes: &[u8],
    dtype: DataType,
    dims: &[u64],
    axis: usize,
    perm: &ClassPermutation,
    dir: Direction,
) -> Result<Vec<u8>> {
    let c = perm.classes();
    let bits = dtype.bits();
    let size = |d: &[u64]| d.iter().try_fold(1u64, |a, &b| a.checked_mul(b));
    let (Some(&dim), Some(outer), Some(inner)) =
        (dims.get(axis), size(&dims[..axis.min(dims.len())]), size(dims.get(axis + 1..).unwrap_or(&[])))
    else {
        return Err(LockError::Mismatch(format!("axis {axis} of dims {dims:?}")));
    };
    let numel = outer.checked_mul(dim).and_then(|n| n.checked_mul(inner));
    let nbytes = numel.and_then(|n| dtype.byte_len(n));
    if dim != c as u64 || bits == 0 || nbytes != Some(bytes.len() as u64) {
        return Err(LockError::Mismatch(format!(
            "a {dtype} tensor of dims {dims:?} ({} bytes) has no class axis {axis} of {c} classes",
            bytes.len()
        )));
    }
    let (outer, inner) = (outer as usize, inner as usize);
    // Where the slice at position q of the result comes from.
    let source = |q: usize| match dir {
        Direction::Lock => perm.locked_to_true()[q] as usize,
        Direction::Unlock => perm.true_to_locked()[q] as usize,
    };
    let mut out = bytes.to_vec();
    if bits % 8 == 0 {
        let block = inner * (bits / 8) as usize;
        for o in 0..outer {
            for q in 0..c {
                let (to, from) = ((o * c + q) * block, (o * c + source(q)) * block);
                out[to..to + block].copy_from_slice(&bytes[from..from + block]);
            }
        }
    } else {
        let b = bits as usize;
        for o in 0..outer {
            for q in 0..c {
                for i in 0..inner {
                    let (to, from) = ((o * c + q) * inner + i, (o * c + source(q)) * inner + i);
                    set_bits(&mut out, to * b, b, get_bits(bytes, from * b, b));
                }
            }
        }
    }
    Ok(out)
}

/// `len` (< 8) bits of `buf` from bit `at`, least significant bit first.
fn get_bits(buf: &[u8], at: usize, len: usize) -> u8 {
    (0..len).fold(0u8, |v, k| v | (((buf[(at + k) / 8] >> ((at + k) % 8)) & 1) << k))
}

fn set_bits(buf: &mut [u8], at: usize, len: usize, value: u8) {
    for k in 0..len {
        let (byte, bit) = ((at + k) / 8, (at + k) % 8);
        buf[byte] = (buf[byte] & !(1 << bit)) | (((value >> k) & 1) << bit);
    }
}

/// The new element bytes of every tensor of `layer`, locked or unlocked by `perm`.
pub fn rewrite_tensors(
    model: &Model,
    layer: &OutputLayer,
    perm: &ClassPermutation,
    dir: Direction,
) -> Result<Vec<Rewritten>> {
    if perm.classes() != layer.classes {
        return Err(LockError::Mismatch(format!(
            "a permutation of {} classes for a layer of {}",
            perm.classes(),
            layer.classes
        )));
    }
    layer
        .tensors
        .iter()
        .map(|lt| {
            let t = &model.tensors[lt.tensor];
            let bytes = model.tensor_bytes(lt.tensor)?;
            let new = permute_elements(&bytes, t.data_type, &t.dims, lt.axis, perm, dir)
                .map_err(|e| LockError::Mismatch(format!("tensor '{}': {e}", t.name)))?;
            Ok(Rewritten { tensor: lt.tensor, bytes: new })
        })
        .collect()
}

/// A write of new bytes into an external data file of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalWrite {
    /// Index into [`Model::external_files`].
    pub file: usize,
    pub range: Range<u64>,
    pub bytes: Vec<u8>,
}

/// The edits of the model file that store `rewritten`, and the writes into external data
/// files. Same-length edits except for varint fields, which are re-encoded.
pub fn placement(model: &Model, rewritten: &[Rewritten]) -> Result<(Vec<Edit>, Vec<ExternalWrite>)> {
    let mut edits = Vec::new();
    let mut external = Vec::new();
    for r in rewritten {
        let t = &model.tensors[r.tensor];
        if r.bytes.len() as u64 != t.nbytes {
            return Err(LockError::Mismatch(format!("tensor '{}': new bytes of another length", t.name)));
        }
        match &t.data {
            TensorData::Raw { .. } | TensorData::Fixed { .. } => {
                for (range, logical) in t.file_pieces(0, t.nbytes) {
                    let at = logical as usize;
                    let len = (range.end - range.start) as usize;
                    edits.push(Edit {
                        range,
                        content: Content::Bytes(r.bytes[at..at + len].to_vec()),
                        ancestors: t.ancestors.clone(),
                    });
                }
            }
            TensorData::Varint { .. } => edits.extend(t.varint_edits(&r.bytes)),
            TensorData::External { file, range } => {
                external.push(ExternalWrite { file: *file, range: range.clone(), bytes: r.bytes.clone() })
            }
            other => {
                return Err(LockError::Mismatch(format!("tensor '{}' is stored as {}", t.name, other.storage_name())))
            }
        }
    }
    Ok((edits, external))
}

/// The model file with `layer` locked or unlocked by `perm`, and the writes its external
/// data files need (none when the layer's tensors are inside the file).
pub fn rewrite_model(
    model: &Model,
    layer: &OutputLayer,
    perm: &ClassPermutation,
    dir: Direction,
) -> Result<(Vec<u8>, Vec<ExternalWrite>)> {
    let rewritten = rewrite_tensors(model, layer, perm, dir)?;
    let (edits, external) = placement(model, &rewritten)?;
    let src = model.bytes();
    let plan = Plan::new(src.len() as u64, edits, Vec::new())?;
    let mut out = Vec::with_capacity(plan.output_len() as usize);
    plan.write(src, &mut out, &mut |_, _, _| Ok(()))?;
    Ok((out, external))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perm::{LockSeed, SEED_LEN};

    fn perm(c: usize) -> ClassPermutation {
        ClassPermutation::derive(&LockSeed::from_bytes([9; SEED_LEN]), c).unwrap()
    }

    #[test]
    fn rows_and_columns_move_whole() {
        let p = perm(4);
        // [C=4, 3] of u16: row q of the locked tensor is row p[q].
        let bytes: Vec<u8> = (0u16..12).flat_map(|v| v.to_le_bytes()).collect();
        let locked = permute_elements(&bytes, DataType::Uint16, &[4, 3], 0, &p, Direction::Lock).unwrap();
        for q in 0..4 {
            let t = p.locked_to_true()[q] as usize;
            assert_eq!(locked[q * 6..q * 6 + 6], bytes[t * 6..t * 6 + 6]);
        }
        // [3, C=4]: column q is column p[q].
        let cols = permute_elements(&bytes, DataType::Uint16, &[3, 4], 1, &p, Direction::Lock).unwrap();
        for r in 0..3 {
            for q in 0..4 {
                let t = p.locked_to_true()[q] as usize;
                assert_eq!(cols[(r * 4 + q) * 2..(r * 4 + q) * 2 + 2], bytes[(r * 4 + t) * 2..(r * 4 + t) * 2 + 2]);
            }
        }
        let back = permute_elements(&cols, DataType::Uint16, &[3, 4], 1, &p, Direction::Unlock).unwrap();
        assert_eq!(back, bytes);
    }

    #[test]
    fn packed_sub_byte_elements_keep_their_bits_and_padding() {
        let p = perm(3);
        for (dtype, bits) in [(DataType::Int4, 4usize), (DataType::Uint2, 2), (DataType::Float6E2M3, 6)] {
            // [C=3, 3] elements: 9 elements, the last byte partly padding (set to ones).
            let nbytes = (9 * bits).div_ceil(8);
            let mut bytes: Vec<u8> = (0..nbytes as u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
            if (9 * bits) % 8 != 0 {
                *bytes.last_mut().unwrap() |= 0xFF << ((9 * bits) % 8);
            }
            for axis in 0..2 {
                let locked = permute_elements(&bytes, dtype, &[3, 3], axis, &p, Direction::Lock).unwrap();
                for i in 0..3 {
                    for q in 0..3 {
                        let t = p.locked_to_true()[q] as usize;
                        let (to, from) = if axis == 0 { (q * 3 + i, t * 3 + i) } else { (i * 3 + q, i * 3 + t) };
                        assert_eq!(get_bits(&locked, to * bits, bits), get_bits(&bytes, from * bits, bits));
                    }
                }
                assert_eq!(locked.last().map(|b| b >> ((9 * bits) % 8)), bytes.last().map(|b| b >> ((9 * bits) % 8)));
                let back = permute_elements(&locked, dtype, &[3, 3], axis, &p, Direction::Unlock).unwrap();
                assert_eq!(back, bytes, "{dtype} axis {axis}");
            }
        }
    }

    #[test]
    fn shapes_without_the_class_axis_are_refused() {
        let p = perm(4);
        let bytes = vec![0u8; 48];
        assert!(permute_elements(&bytes, DataType::Float, &[3, 4], 0, &p, Direction::Lock).is_err());
        assert!(permute_elements(&bytes, DataType::Float, &[3, 4], 2, &p, Direction::Lock).is_err());
        assert!(permute_elements(&bytes[..40], DataType::Float, &[3, 4], 1, &p, Direction::Lock).is_err());
        assert!(permute_elements(&[], DataType::String, &[4], 0, &p, Direction::Lock).is_err());
    }

    proptest::proptest! {
        #[test]
        fn unlocking_restores_every_byte(
            outer in 1u64..4, inner in 1u64..5, c in 2usize..9, dt in 0usize..6, seed in proptest::prelude::any::<u8>(),
            fill in proptest::collection::vec(proptest::prelude::any::<u8>(), 1024),
        ) {
            let dtype = [DataType::Float, DataType::Float16, DataType::Int4, DataType::Double, DataType::Uint2,
                         DataType::Float6E3M2][dt];
            let p = ClassPermutation::derive(&LockSeed::from_bytes([seed; SEED_LEN]), c).unwrap();
            let dims = [outer, c as u64, inner];
            let n = dtype.byte_len(outer * c as u64 * inner).unwrap() as usize;
            let bytes = fill[..n].to_vec();
            let locked = permute_elements(&bytes, dtype, &dims, 1, &p, Direction::Lock).unwrap();
            let back = permute_elements(&locked, dtype, &dims, 1, &p, Direction::Unlock).unwrap();
            proptest::prop_assert_eq!(back, bytes);
        }
    }
}
