//! One `TensorProto`: its fields read and checked against each other (one storage, the
//! length its type and dims imply), giving a [`Tensor`] whose data is a range of the file.

use std::fmt;
use std::ops::Range;

use super::super::external::PendingExternal;
use super::super::tensor::{decode_varint_tensor, encode_varint_payload};
use super::{wire_err, Parser, Path2};
use crate::dtype::{DataType, TypedField};
use crate::error::{FormatError, Result};
use crate::model::{GraphId, Locator, Origin, Tensor, TensorData, TensorId};
use crate::wire::{self, Container, Field, WireType};

impl<'a> Parser<'a> {
    pub(super) fn parse_tensor(&mut self, f: &Field, path: Path2, gid: GraphId, origin: Origin) -> Result<TensorId> {
        let Path2 { steps, ancestors, context } = path;
        let ctx: &dyn fmt::Display = &context;
        let fields = self.tensor_fields(f, ctx)?;
        // An unnamed tensor is called by its context in errors.
        let unnamed;
        let tname = if fields.name.is_empty() {
            unnamed = context.to_string();
            unnamed.as_str()
        } else {
            fields.name.as_str()
        };
        let (data_type, dims, numel, nbytes) = tensor_shape(tname, &fields)?;
        fields.check_one_storage(f, ctx, tname)?;
        let len = Extent { tname, data_type, numel, nbytes, dims: &dims };
        let data = if fields.location_external {
            if data_type == DataType::String {
                return Err(FormatError::Malformed {
                    at: f.start,
                    context: ctx.to_string(),
                    reason: format!("STRING tensor '{tname}' uses external data"),
                });
            }
            self.pending_external_data(tname, fields.ext_entries)?
        } else if let Some(r) = fields.raw {
            raw_data(f, ctx, &len, r)?
        } else if !fields.fixed.is_empty() {
            fixed_data(&len, fields.fixed)?
        } else if !fields.varints.is_empty() {
            self.varint_data(ctx, &len, fields.varints)?
        } else if fields.strings > 0 {
            if data_type != DataType::String {
                return Err(wrong_field(tname, TypedField::String, data_type));
            }
            check_len(tname, "string_data", numel, fields.strings, "values")?;
            TensorData::Strings { count: fields.strings }
        } else {
            if nbytes != 0 || (data_type == DataType::String && numel != 0) {
                check_len(tname, "tensor data", nbytes.max(numel), 0, "bytes")?;
            }
            TensorData::Empty
        };
        self.progress.set(f.end);
        let id = self.tensors.len();
        let mut tensor = Tensor {
            id,
            name: fields.name,
            data_type,
            dims,
            numel,
            nbytes,
            origin,
            graph: gid,
            locator: Locator(steps),
            ancestors,
            data,
        };
        self.mark_canonical(&mut tensor)?;
        self.tensors.push(tensor);
        Ok(id)
    }

    /// The fields of a `TensorProto`, checked for their wire types; packed varints are
    /// validated here, so later decoding cannot fail.
    fn tensor_fields(&mut self, f: &Field, ctx: &dyn fmt::Display) -> Result<TensorFields> {
        let mut t = TensorFields::default();
        let mut rr = self.reader(f.value_range(), ctx)?;
        while let Some(g) = self.next(&mut rr, ctx)? {
            match g.number {
                1 => match g.wire {
                    WireType::Varint => t.dims.push(g.scalar as i64),
                    WireType::Len => wire::for_each_packed_varint(self.buf, g.value_range(), |v| t.dims.push(v as i64))
                        .map_err(|e| wire_err(e, ctx))?,
                    _ => self.expect(&g, WireType::Varint, ctx, "dims")?,
                },
                2 => t.data_type = Some(self.varint_field(&g, ctx, "data_type")? as i64),
                8 => t.name = self.string(&g, ctx, "name")?,
                9 => {
                    self.expect(&g, WireType::Len, ctx, "raw_data")?;
                    t.raw = Some(g.value_range());
                }
                4 | 10 => {
                    let tf = TypedField::from_number(g.number).unwrap_or(TypedField::Float);
                    let (w, size) = if g.number == 4 { (WireType::Fixed32, 4) } else { (WireType::Fixed64, 8) };
                    if g.wire == WireType::Len {
                        if (g.end - g.value_start) % size != 0 {
                            return Err(FormatError::Malformed {
                                at: g.start,
                                context: ctx.to_string(),
                                reason: format!("packed {} length is not a multiple of {size}", tf.name()),
                            });
                        }
                        if g.end > g.value_start {
                            t.fixed.push((tf, g.value_range()));
                        }
                    } else {
                        self.expect(&g, w, ctx, tf.name())?;
                        t.fixed.push((tf, g.value_range()));
                    }
                }
                5 | 7 | 11 => {
                    let tf = TypedField::from_number(g.number).unwrap_or(TypedField::Int32);
                    match g.wire {
                        WireType::Varint => t.varints.push((tf, g.range())),
                        // A packed field of length 0 holds no value: no storage at all
                        // (docs/format.md §5), as for `float_data` and `double_data`.
                        WireType::Len if g.end == g.value_start => {}
                        WireType::Len => {
                            wire::for_each_packed_varint(self.buf, g.value_range(), |_| {})
                                .map_err(|e| wire_err(e, ctx))?;
                            t.varints.push((tf, g.range()));
                        }
                        _ => self.expect(&g, WireType::Varint, ctx, tf.name())?,
                    }
                }
                6 => {
                    self.expect(&g, WireType::Len, ctx, "string_data")?;
                    t.strings += 1;
                }
                13 => {
                    self.expect(&g, WireType::Len, ctx, "external_data")?;
                    let (k, v, at) = self.string_pair_at(&g, ctx)?;
                    t.ext_entries.push((k, v, Container::from(&g), at));
                }
                14 => t.location_external = self.varint_field(&g, ctx, "data_location")? == 1,
                _ => {}
            }
        }
        Ok(t)
    }

    /// An external tensor: its `location`, `offset` and `length` entries are resolved
    /// once the whole model is read.
    fn pending_external_data(
        &mut self,
        tname: &str,
        entries: Vec<(String, String, Container, Option<Range<u64>>)>,
    ) -> Result<TensorData> {
        let (mut location, mut offset, mut length, mut site) = (None, None, None, None);
        for (k, v, entry, at) in entries {
            match k.as_str() {
                "location" => {
                    location = Some(v);
                    site = at.map(|r| (entry, r));
                }
                "offset" => offset = Some(v),
                "length" => length = Some(v),
                _ => {}
            }
        }
        let location = location.ok_or_else(|| FormatError::ExternalPath {
            tensor: tname.to_string(),
            location: String::new(),
            reason: "data_location is EXTERNAL but there is no 'location' entry".into(),
        })?;
        self.pending_external.push(PendingExternal { tensor: self.tensors.len(), location, offset, length, site });
        Ok(TensorData::Empty)
    }

    /// Varint-typed field occurrences holding as many values as the tensor has.
    fn varint_data(
        &mut self,
        ctx: &dyn fmt::Display,
        len: &Extent,
        varints: Vec<(TypedField, Range<u64>)>,
    ) -> Result<TensorData> {
        let tf = varints[0].0;
        if tf != len.data_type.typed_field() {
            return Err(wrong_field(len.tname, tf, len.data_type));
        }
        let mut count = 0u64;
        for (_, r) in &varints {
            let mut rr = self.reader(r.clone(), ctx)?;
            while let Some(h) = self.next(&mut rr, ctx)? {
                match h.wire {
                    WireType::Varint => count += 1,
                    _ => wire::for_each_packed_varint(self.buf, h.value_range(), |_| count += 1)
                        .map_err(|e| wire_err(e, ctx))?,
                }
            }
        }
        check_len(len.tname, tf.name(), len.typed_count()?, count, "values")?;
        let fields: Vec<Range<u64>> = varints.into_iter().map(|(_, r)| r).collect();
        Ok(TensorData::Varint { field: tf, fields, count, canonical: false })
    }

    /// Sets whether a varint-stored tensor's one field is exactly the canonical encoding
    /// of its values (so it can be re-encoded byte for byte). The 6-bit types' values map
    /// to no whole bytes: never canonical.
    fn mark_canonical(&self, tensor: &mut Tensor) -> Result<()> {
        if let TensorData::Varint { field, fields, .. } = &tensor.data {
            let canonical = fields.len() == 1 && tensor.data_type.bytes_per_typed_value() > 0 && {
                let plain = decode_varint_tensor(self.buf, tensor, fields)?;
                let payload = encode_varint_payload(tensor.data_type, *field, &plain);
                let mut full = Vec::with_capacity(payload.len() + 8);
                wire::put_len_field(&mut full, field.number(), &payload);
                let r = &fields[0];
                self.buf.get(r.start as usize..r.end as usize) == Some(&full[..])
            };
            if let TensorData::Varint { canonical: c, .. } = &mut tensor.data {
                *c = canonical;
            }
        }
        Ok(())
    }
}

/// The fields of one `TensorProto` as read, before they are checked against each other.
#[derive(Default)]
struct TensorFields {
    name: String,
    dims: Vec<i64>,
    data_type: Option<i64>,
    raw: Option<Range<u64>>,
    fixed: Vec<(TypedField, Range<u64>)>,
    varints: Vec<(TypedField, Range<u64>)>,
    strings: u64,
    /// `external_data` entries: key, value, the entry field and its `value` field.
    ext_entries: Vec<(String, String, Container, Option<Range<u64>>)>,
    location_external: bool,
}

impl TensorFields {
    /// A tensor keeps its data in one place: raw_data, external data, or one typed field.
    fn check_one_storage(&self, f: &Field, ctx: &dyn fmt::Display, tname: &str) -> Result<()> {
        let mut kinds = Vec::new();
        if self.raw.is_some() {
            kinds.push("raw_data");
        }
        if self.location_external {
            kinds.push("external");
        }
        for (tf, _) in self.fixed.iter().chain(self.varints.iter()) {
            if !kinds.contains(&tf.name()) {
                kinds.push(tf.name());
            }
        }
        if self.strings > 0 {
            kinds.push("string_data");
        }
        if kinds.len() > 1 {
            return Err(FormatError::Malformed {
                at: f.start,
                context: ctx.to_string(),
                reason: format!("tensor '{tname}' stores its data in more than one way: {}", kinds.join(", ")),
            });
        }
        Ok(())
    }
}

/// A tensor's type and size, for checking the length of its data.
struct Extent<'a> {
    tname: &'a str,
    data_type: DataType,
    numel: u64,
    nbytes: u64,
    dims: &'a [u64],
}

impl Extent<'_> {
    fn overflow(&self) -> FormatError {
        FormatError::DimOverflow { tensor: self.tname.to_string(), dims: self.dims.to_vec() }
    }

    /// Number of typed-field values the tensor's elements take.
    fn typed_count(&self) -> Result<u64> {
        self.data_type.typed_count(self.numel).ok_or_else(|| self.overflow())
    }
}

/// The element type, dims, element count and byte length of a tensor.
fn tensor_shape(tname: &str, t: &TensorFields) -> Result<(DataType, Vec<u64>, u64, u64)> {
    let dt_code = t.data_type.unwrap_or(0);
    let data_type = i32::try_from(dt_code)
        .ok()
        .and_then(DataType::from_i32)
        .ok_or_else(|| FormatError::UnknownDataType { tensor: tname.to_string(), data_type: dt_code })?;
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        dims.push(u64::try_from(d).map_err(|_| FormatError::NegativeDim { tensor: tname.to_string(), dim: d })?);
    }
    let overflow = || FormatError::DimOverflow { tensor: tname.to_string(), dims: dims.clone() };
    let numel = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(overflow)?;
    let nbytes = data_type.byte_len(numel).ok_or_else(overflow)?;
    if nbytes > i64::MAX as u64 {
        return Err(overflow());
    }
    Ok((data_type, dims, numel, nbytes))
}

/// `raw_data` of exactly the tensor's byte length (never for STRING tensors).
fn raw_data(f: &Field, ctx: &dyn fmt::Display, len: &Extent, r: Range<u64>) -> Result<TensorData> {
    if len.data_type == DataType::String {
        return Err(FormatError::Malformed {
            at: f.start,
            context: ctx.to_string(),
            reason: format!("STRING tensor '{}' uses raw_data", len.tname),
        });
    }
    check_len(len.tname, "raw_data", len.nbytes, r.end - r.start, "bytes")?;
    Ok(TensorData::Raw { range: r })
}

/// Fixed-size typed field occurrences (`float_data`, `double_data`) holding as many
/// values as the tensor has.
fn fixed_data(len: &Extent, fixed: Vec<(TypedField, Range<u64>)>) -> Result<TensorData> {
    let tf = fixed[0].0;
    if tf != len.data_type.typed_field() {
        return Err(wrong_field(len.tname, tf, len.data_type));
    }
    let size = if tf == TypedField::Float { 4 } else { 8 };
    let segments: Vec<Range<u64>> = fixed.into_iter().map(|(_, r)| r).collect();
    let actual: u64 = segments.iter().map(|r| (r.end - r.start) / size).sum();
    check_len(len.tname, tf.name(), len.typed_count()?, actual, "values")?;
    Ok(TensorData::Fixed { field: tf, segments })
}

/// Errors unless a data field holds the expected amount.
fn check_len(tensor: &str, field: &'static str, expected: u64, actual: u64, unit: &'static str) -> Result<()> {
    if actual == expected {
        return Ok(());
    }
    Err(FormatError::DataLength { tensor: tensor.to_string(), field, expected, actual, unit })
}

fn wrong_field(tensor: &str, tf: TypedField, dt: DataType) -> FormatError {
    FormatError::Malformed {
        at: 0,
        context: format!("tensor '{tensor}'"),
        reason: format!("{} cannot hold data_type {dt}", tf.name()),
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Model, TensorData};
    use crate::testutil::{external_float_tensor, float_tensor, len_field as field, matmul_chain};
    use crate::wire::{put_len_field, put_tag, put_varint, WireType};

    /// A FLOAT [2, 2] initializer `W0` in `raw_data`, with `extra` fields appended.
    fn raw_with(extra: &[u8]) -> Vec<u8> {
        let mut t = float_tensor("W0", &[2, 2], &[1.0; 4]);
        t.extend_from_slice(extra);
        t
    }

    /// docs/format.md §5: a packed typed field of length 0 holds no value and is not a way
    /// of storing data; one that holds a value is.
    #[test]
    fn an_empty_packed_typed_field_is_no_storage() {
        for number in [4, 5, 7, 10, 11] {
            let m = Model::from_vec(matmul_chain(&[raw_with(&field(number, &[]))]), None).unwrap();
            assert!(matches!(m.tensors[0].data, TensorData::Raw { .. }), "field {number}");
        }
        let e = Model::from_vec(matmul_chain(&[raw_with(&field(5, &[1]))]), None).err().unwrap();
        assert!(e.to_string().contains("more than one way"), "{e}");
        // With no other data and no element, an empty packed field leaves the tensor empty.
        let mut t = Vec::new();
        put_tag(&mut t, 1, WireType::Varint);
        put_varint(&mut t, 0);
        put_tag(&mut t, 2, WireType::Varint);
        put_varint(&mut t, 6);
        put_len_field(&mut t, 8, b"W0");
        t.extend_from_slice(&field(5, &[]));
        let m = Model::from_vec(matmul_chain(&[t]), None).unwrap();
        assert!(matches!(m.tensors[0].data, TensorData::Empty));
    }

    /// docs/format.md §5: external data and `raw_data` together store the data twice, and
    /// a STRING tensor keeps its values in `string_data` only.
    #[test]
    fn external_with_raw_data_and_external_strings_are_invalid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), [0u8; 16]).unwrap();
        let mut t = external_float_tensor("W0", &[2, 2], "w.bin", 0, 16);
        t.extend_from_slice(&field(9, &[0; 16]));
        let e = Model::from_vec(matmul_chain(&[t]), Some(dir.path().to_path_buf())).err().unwrap();
        assert!(e.to_string().contains("more than one way"), "{e}");
        let mut s = Vec::new();
        put_tag(&mut s, 1, WireType::Varint);
        put_varint(&mut s, 2);
        put_tag(&mut s, 2, WireType::Varint);
        put_varint(&mut s, 8);
        put_len_field(&mut s, 8, b"W0");
        for (k, v) in [("location", "w.bin"), ("length", "0")] {
            let mut e = Vec::new();
            put_len_field(&mut e, 1, k.as_bytes());
            put_len_field(&mut e, 2, v.as_bytes());
            put_len_field(&mut s, 13, &e);
        }
        put_tag(&mut s, 14, WireType::Varint);
        put_varint(&mut s, 1);
        let e = Model::from_vec(matmul_chain(&[s]), Some(dir.path().to_path_buf())).err().unwrap();
        assert!(e.to_string().contains("STRING"), "{e}");
    }
}
