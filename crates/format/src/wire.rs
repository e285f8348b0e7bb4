//! A zero-copy reader for the protobuf wire format.
//!
//! Every field it yields carries absolute byte offsets into the buffer it was
//! created from, so callers can later patch values in place or rewrite just the
//! length prefixes of the messages that enclose an edit.
//!
//! Invariants: the reader never reads outside its window, never panics on any
//! input, and reports the absolute offset of the first byte it could not use.

use std::ops::Range;

/// The wire type of a field (the low three bits of its tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    Varint,
    Fixed64,
    Len,
    Fixed32,
}

/// One field as found on the wire.
#[derive(Debug, Clone)]
pub struct Field {
    /// Field number from the tag.
    pub number: u32,
    pub wire: WireType,
    /// Absolute offset of the first byte of the tag.
    pub start: u64,
    /// For `Len` fields: absolute offset of the first byte of the length prefix.
    /// For other wire types: the offset of the value.
    pub len_start: u64,
    /// Absolute offset of the first byte of the value (after any length prefix).
    pub value_start: u64,
    /// Absolute offset one past the last byte of the field.
    pub end: u64,
    /// The decoded value for `Varint`; the raw bits for fixed fields; 0 for `Len`.
    pub scalar: u64,
}

impl Field {
    /// Byte range of the value (payload of a `Len` field, or the fixed/varint bytes).
    pub fn value_range(&self) -> Range<u64> {
        self.value_start..self.end
    }
    /// Byte range of the whole field, tag included.
    pub fn range(&self) -> Range<u64> {
        self.start..self.end
    }
}

/// Why a wire read failed; the offset is absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Input ended inside a field.
    Truncated { at: u64 },
    /// The bytes are not valid protobuf.
    Malformed { at: u64, reason: &'static str },
}

/// Iterates over the fields of one message held in `buf[window]`.
pub struct FieldReader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> FieldReader<'a> {
    /// Reader over `buf[range]`. The range must lie inside `buf` (callers pass
    /// ranges that came from a previous successful read).
    pub fn new(buf: &'a [u8], range: Range<u64>) -> Result<Self, WireError> {
        let start = usize::try_from(range.start).map_err(|_| WireError::Truncated { at: range.start })?;
        let end = usize::try_from(range.end).map_err(|_| WireError::Truncated { at: range.end })?;
        if start > end || end > buf.len() {
            return Err(WireError::Truncated { at: range.end });
        }
        Ok(FieldReader { buf, pos: start, end })
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let begin = self.pos;
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos).filter(|_| self.pos < self.end) else {
                return Err(WireError::Truncated { at: self.pos as u64 });
            };
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(WireError::Malformed { at: begin as u64, reason: "varint longer than 64 bits" });
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Malformed { at: begin as u64, reason: "varint longer than 10 bytes" })
    }

    fn take(&mut self, n: u64) -> Result<(), WireError> {
        let remaining = (self.end - self.pos) as u64;
        if n > remaining {
            return Err(WireError::Truncated { at: self.end as u64 });
        }
        self.pos += n as usize;
        Ok(())
    }

    /// Reads the next field, or `None` at the end of the window.
    pub fn next_field(&mut self) -> Result<Option<Field>, WireError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let start = self.pos as u64;
        let tag = self.varint()?;
        let number = tag >> 3;
        if number == 0 || number > 0x1fff_ffff {
            return Err(WireError::Malformed { at: start, reason: "invalid field number" });
        }
        let number = number as u32;
        let len_start = self.pos as u64;
        let (wire, scalar) = match tag & 7 {
            0 => (WireType::Varint, self.varint()?),
            1 => {
                let at = self.pos;
                self.take(8)?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[at..at + 8]);
                (WireType::Fixed64, u64::from_le_bytes(b))
            }
            2 => {
                let len = self.varint()?;
                let value_start = self.pos as u64;
                if len > (self.end - self.pos) as u64 && self.end < self.buf.len() {
                    // The file goes on: the length lies about its enclosing message.
                    return Err(WireError::Malformed {
                        at: start,
                        reason: "length prefix runs past the end of the enclosing message",
                    });
                }
                self.take(len)?;
                return Ok(Some(Field {
                    number,
                    wire: WireType::Len,
                    start,
                    len_start,
                    value_start,
                    end: self.pos as u64,
                    scalar: 0,
                }));
            }
            5 => {
                let at = self.pos;
                self.take(4)?;
                let mut b = [0u8; 4];
                b.copy_from_slice(&self.buf[at..at + 4]);
                (WireType::Fixed32, u64::from(u32::from_le_bytes(b)))
            }
            3 | 4 => {
                return Err(WireError::Malformed { at: start, reason: "groups are not used by ONNX" });
            }
            _ => return Err(WireError::Malformed { at: start, reason: "invalid wire type" }),
        };
        Ok(Some(Field { number, wire, start, len_start, value_start: len_start, end: self.pos as u64, scalar }))
    }
}

/// Decodes a packed run of varints in `buf[range]`, calling `f` for each value.
pub fn for_each_packed_varint(buf: &[u8], range: Range<u64>, mut f: impl FnMut(u64)) -> Result<(), WireError> {
    let mut r = FieldReader::new(buf, range)?;
    while r.pos < r.end {
        f(r.varint()?);
    }
    Ok(())
}

/// Number of bytes the canonical varint encoding of `v` takes.
pub fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends the canonical varint encoding of `v`.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a tag for `number` with wire type `wire`.
pub fn put_tag(out: &mut Vec<u8>, number: u32, wire: WireType) {
    let w = match wire {
        WireType::Varint => 0,
        WireType::Fixed64 => 1,
        WireType::Len => 2,
        WireType::Fixed32 => 5,
    };
    put_varint(out, (u64::from(number) << 3) | w);
}

/// Appends a length-delimited field.
pub fn put_len_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_tag(out, number, WireType::Len);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// A length-delimited field that encloses something of interest: the
/// messages whose length prefixes must be rewritten when their content changes size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Container {
    pub start: u64,
    pub len_start: u64,
    pub value_start: u64,
    pub end: u64,
}

impl From<&Field> for Container {
    fn from(f: &Field) -> Self {
        Container { start: f.start, len_start: f.len_start, value_start: f.value_start, end: f.end }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_len_matches_encoding() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let mut seen = Vec::new();
            for_each_packed_varint(&out, 0..out.len() as u64, |x| seen.push(x)).unwrap();
            assert_eq!(seen, vec![v]);
        }
    }

    #[test]
    fn eleven_byte_varint_is_malformed() {
        let buf = [0x08u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        let mut r = FieldReader::new(&buf, 0..buf.len() as u64).unwrap();
        assert!(matches!(r.next_field(), Err(WireError::Malformed { .. })));
    }

    #[test]
    fn length_past_end_is_truncated() {
        let buf = [0x0au8, 0x05, 1, 2];
        let mut r = FieldReader::new(&buf, 0..4).unwrap();
        assert_eq!(r.next_field().unwrap_err(), WireError::Truncated { at: 4 });
    }

    #[test]
    fn fields_carry_absolute_offsets() {
        let mut buf = vec![0u8; 3];
        put_len_field(&mut buf, 9, b"abc");
        put_tag(&mut buf, 2, WireType::Varint);
        put_varint(&mut buf, 300);
        let mut r = FieldReader::new(&buf, 3..buf.len() as u64).unwrap();
        let f = r.next_field().unwrap().unwrap();
        assert_eq!((f.number, f.start, f.value_start, f.end), (9, 3, 5, 8));
        let g = r.next_field().unwrap().unwrap();
        assert_eq!((g.number, g.scalar), (2, 300));
        assert!(r.next_field().unwrap().is_none());
    }
}
