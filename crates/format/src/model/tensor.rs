//! Tensors: where each sits in the model, where its element bytes are stored, and the
//! varint encoding of typed-field storage.

use std::ops::Range;

use super::parse::wire_err;
use super::{GraphId, Locator, NodeId, TensorId};
use crate::dtype::{DataType, TypedField};
use crate::error::Result;
use crate::wire::{self, Container, FieldReader, WireType};

/// Where a tensor sits in the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Initializer,
    SparseValues,
    SparseIndices,
    /// A tensor-valued attribute of a node (`Constant.value` among others).
    Attribute {
        node: NodeId,
        attribute: String,
    },
}

impl Origin {
    /// Stable short name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Origin::Initializer => "initializer",
            Origin::SparseValues => "sparse_values",
            Origin::SparseIndices => "sparse_indices",
            Origin::Attribute { .. } => "attribute",
        }
    }
}

/// Where a tensor's element bytes are stored.
#[derive(Debug, Clone)]
pub enum TensorData {
    /// `raw_data`: the element bytes are `range` of the model file.
    Raw { range: Range<u64> },
    /// `float_data` or `double_data`: little-endian values in one or more file
    /// ranges whose concatenation is the `raw_data` layout.
    Fixed { field: TypedField, segments: Vec<Range<u64>> },
    /// `int32_data`, `int64_data` or `uint64_data`: varints. `fields` are the whole
    /// field occurrences (tag included). `canonical` is true when re-encoding the
    /// decoded values as one packed field gives back exactly the stored bytes.
    Varint { field: TypedField, fields: Vec<Range<u64>>, count: u64, canonical: bool },
    /// External data: `range` of the side file [`Model::external_files`](super::Model::external_files)`[file]`.
    External { file: usize, range: Range<u64> },
    /// `string_data` (not weights).
    Strings { count: u64 },
    /// No data at all (a tensor with zero elements).
    Empty,
}

impl TensorData {
    /// Stable short name of the storage kind.
    pub fn storage_name(&self) -> &'static str {
        match self {
            TensorData::Raw { .. } => "raw_data",
            TensorData::Fixed { field, .. } | TensorData::Varint { field, .. } => field.name(),
            TensorData::External { .. } => "external",
            TensorData::Strings { .. } => "string_data",
            TensorData::Empty => "empty",
        }
    }
}

/// One `TensorProto` found anywhere in the model.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub id: TensorId,
    pub name: String,
    pub data_type: DataType,
    pub dims: Vec<u64>,
    pub numel: u64,
    /// Length of the element bytes in `raw_data` layout.
    pub nbytes: u64,
    pub origin: Origin,
    /// The graph whose scope the tensor belongs to.
    pub graph: GraphId,
    pub locator: Locator,
    /// Enclosing length-delimited fields, outermost first; the last one is the
    /// `TensorProto` field itself.
    pub ancestors: Vec<Container>,
    pub data: TensorData,
}

impl Tensor {
    /// Maps the logical byte range `[a, b)` of the element bytes to ranges of the
    /// file that holds them (the model, or the external file): `(file range, logical
    /// start)` pieces in order. Empty for varint, string and empty storage, whose
    /// element bytes are not stored as such.
    pub fn file_pieces(&self, a: u64, b: u64) -> Vec<(Range<u64>, u64)> {
        match &self.data {
            TensorData::Raw { range } | TensorData::External { range, .. } => {
                vec![(range.start + a..range.start + b, a)]
            }
            TensorData::Fixed { segments, .. } => {
                let mut out = Vec::new();
                let mut logical = 0u64;
                for s in segments {
                    let len = s.end - s.start;
                    let (lo, hi) = (logical.max(a), (logical + len).min(b));
                    if lo < hi {
                        out.push((s.start + (lo - logical)..s.start + (hi - logical), lo));
                    }
                    logical += len;
                }
                out
            }
            _ => Vec::new(),
        }
    }

    /// Edits that store `bytes` (new element bytes, `raw_data` layout) into a
    /// varint-stored tensor: one packed field replaces the first occurrence, the
    /// others are removed, and enclosing length prefixes follow. Empty for other storage.
    pub fn varint_edits(&self, bytes: &[u8]) -> Vec<crate::write::Edit> {
        let TensorData::Varint { field, fields, .. } = &self.data else { return Vec::new() };
        let payload = encode_varint_payload(self.data_type, *field, bytes);
        let mut full = Vec::with_capacity(payload.len() + 12);
        wire::put_len_field(&mut full, field.number(), &payload);
        fields
            .iter()
            .enumerate()
            .map(|(i, r)| crate::write::Edit {
                range: r.clone(),
                content: crate::write::Content::Bytes(if i == 0 { std::mem::take(&mut full) } else { Vec::new() }),
                ancestors: self.ancestors.clone(),
            })
            .collect()
    }
}

/// Decodes a varint-stored tensor into `raw_data` layout.
pub(super) fn decode_varint_tensor(buf: &[u8], t: &Tensor, fields: &[Range<u64>]) -> Result<Vec<u8>> {
    let width = t.data_type.bytes_per_typed_value() as usize;
    let mut out = Vec::with_capacity(t.nbytes as usize);
    for r in fields {
        let mut reader = FieldReader::new(buf, r.clone()).map_err(|e| wire_err(e, &t.name))?;
        while let Some(f) = reader.next_field().map_err(|e| wire_err(e, &t.name))? {
            let mut push = |v: u64| out.extend_from_slice(&v.to_le_bytes()[..width]);
            match f.wire {
                WireType::Varint => push(f.scalar),
                WireType::Len => {
                    wire::for_each_packed_varint(buf, f.value_range(), push).map_err(|e| wire_err(e, &t.name))?
                }
                _ => {}
            }
        }
    }
    // Sub-byte types: the last byte may be padding beyond nbytes only if counts disagree,
    // which parsing already rejected.
    out.truncate(t.nbytes as usize);
    Ok(out)
}

/// Encodes `raw_data`-layout bytes as the payload of a packed varint field
/// (without tag and length), following the ONNX typed-field rules for `dtype`.
pub fn encode_varint_payload(dtype: DataType, field: TypedField, bytes: &[u8]) -> Vec<u8> {
    let width = dtype.bytes_per_typed_value() as usize;
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for chunk in bytes.chunks(width.max(1)) {
        let mut le = [0u8; 8];
        le[..chunk.len()].copy_from_slice(chunk);
        let raw = u64::from_le_bytes(le);
        let v = if dtype.is_signed_int() && width < 8 {
            // Sign-extend from the element width, then encode as int32/int64 does (64-bit two's complement).
            let shift = 64 - 8 * width as u32;
            (((raw << shift) as i64) >> shift) as u64
        } else {
            raw
        };
        let _ = field;
        wire::put_varint(&mut out, v);
    }
    out
}
