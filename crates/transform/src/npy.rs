//! A small reader and writer for NumPy `.npy` files (format versions 1.0, 2.0 and 3.0).
//!
//! Only what image tensors need: C-order arrays of `u8` (`|u1`), little-endian
//! `f32` (`<f4`) or `f64` (`<f8`). Fortran-order arrays, other dtypes and
//! big-endian data are refused.

use crate::block::Samples;
use crate::error::{Result, TransformError};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Largest header this reader accepts.
const MAX_HEADER: usize = 1 << 16;

/// A decoded `.npy` array.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Samples,
}

fn err(s: impl Into<String>) -> TransformError {
    TransformError::Npy(s.into())
}

/// Parses the bytes of a `.npy` file.
pub fn read(bytes: &[u8]) -> Result<NpyArray> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(err("not a .npy file (bad magic)"));
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => {
            let b = bytes.get(8..12).ok_or_else(|| err("truncated header"))?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => return Err(err(format!("unsupported format version {v}"))),
    };
    if hlen > MAX_HEADER {
        return Err(err(format!("header of {hlen} bytes is too long")));
    }
    let header = bytes.get(start..start + hlen).ok_or_else(|| err("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| err("header is not text"))?;
    let descr = dict_value(header, "descr")?;
    let fortran = dict_value(header, "fortran_order")?;
    let shape_s = dict_value(header, "shape")?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    if fortran.trim() != "False" {
        return Err(err("Fortran-order arrays are not supported"));
    }
    let shape = parse_shape(shape_s)?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(format!("shape {shape:?} is too large")))?;
    let body = &bytes[start + hlen..];
    let size = match descr {
        "|u1" | "u1" | "<u1" | "=u1" => 1,
        "<f4" | "=f4" => 4,
        "<f8" | "=f8" => 8,
        d => return Err(err(format!("dtype '{d}' is not supported (use uint8, float32 or float64)"))),
    };
    let need = count.checked_mul(size).ok_or_else(|| err("size overflows"))?;
    if body.len() != need {
        return Err(err(format!("shape {shape:?} needs {need} data bytes, the file has {}", body.len())));
    }
    let data = match size {
        1 => Samples::U8(body.to_vec()),
        4 => Samples::F32(body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        _ => Samples::F64(
            body.chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
    };
    Ok(NpyArray { shape, data })
}

/// The text of a key's value in the header dict, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Result<&'a str> {
    let pat1 = format!("'{key}'");
    let pat2 = format!("\"{key}\"");
    let at = header.find(&pat1).or_else(|| header.find(&pat2)).ok_or_else(|| err(format!("header has no '{key}'")))?;
    let rest = &header[at + pat1.len()..];
    let rest = rest.trim_start().strip_prefix(':').ok_or_else(|| err(format!("header '{key}' has no value")))?;
    let rest = rest.trim_start();
    let mut depth = 0i32;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Ok(&rest[..i]),
            _ => {}
        }
    }
    Err(err(format!("header '{key}' is not terminated")))
}

fn parse_shape(s: &str) -> Result<Vec<usize>> {
    let s = s.trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|x| x.strip_suffix(')'))
        .ok_or_else(|| err(format!("shape '{s}' is not a tuple")))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.trim_end_matches('L').parse::<usize>().map_err(|_| err(format!("bad dimension '{p}' in shape"))))
        .collect()
}

/// Encodes an array as a version 1.0 `.npy` file (C order, header padded to 64 bytes).
pub fn write(array: &NpyArray) -> Result<Vec<u8>> {
    let count = array.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(array.data.len()) {
        return Err(err(format!("shape {:?} does not match {} elements", array.shape, array.data.len())));
    }
    let descr = match &array.data {
        Samples::U8(_) => "|u1",
        Samples::F32(_) => "<f4",
        Samples::F64(_) => "<f8",
    };
    let shape = match array.shape.len() {
        1 => format!("({},)", array.shape[0]),
        _ => format!("({})", array.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let total = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let hlen = u16::try_from(header.len()).map_err(|_| err("header too long"))?;
    let mut out = Vec::with_capacity(10 + header.len() + array.data.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&hlen.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match &array.data {
        Samples::U8(v) => out.extend_from_slice(v),
        Samples::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Samples::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for data in [Samples::U8((0..24).collect()), Samples::F32((0..24).map(|i| i as f32 / 3.0).collect())] {
            let a = NpyArray { shape: vec![2, 3, 4], data };
            let bytes = write(&a).unwrap();
            assert_eq!((bytes.len() - a.data.len() * if a.data.type_name() == "u8" { 1 } else { 4 }) % 64, 0);
            assert_eq!(read(&bytes).unwrap(), a);
        }
    }

    #[test]
    fn reads_numpy_headers() {
        // The header numpy 2 writes for np.zeros((2, 1), np.float64).
        let mut b = b"\x93NUMPY\x01\x00v\x00".to_vec();
        let mut h = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 1), }".to_string();
        while h.len() < 117 {
            h.push(' ');
        }
        h.push('\n');
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(&[0u8; 16]);
        let a = read(&b).unwrap();
        assert_eq!(a.shape, vec![2, 1]);
        assert_eq!(a.data, Samples::F64(vec![0.0, 0.0]));
    }

    #[test]
    fn every_changed_bit_and_every_truncation_is_read_or_refused_without_a_panic() {
        let a = NpyArray { shape: vec![2, 3], data: Samples::F32((0..6).map(|i| i as f32).collect()) };
        let good = write(&a).unwrap();
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[i] ^= 1 << bit;
                if let Ok(r) = read(&b) {
                    assert_eq!(r.shape.iter().product::<usize>(), r.data.len(), "byte {i} bit {bit}");
                }
            }
        }
        for n in 0..good.len() {
            assert!(read(&good[..n]).is_err(), "truncated to {n}");
        }
        // Shapes that lie: far more elements than bytes, and a product that overflows.
        for shape in ["(99999999999, 99999999999)", "(4294967296, 4294967296, 4294967296)"] {
            let h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend_from_slice(&(h.len() as u16 + 1).to_le_bytes());
            b.extend_from_slice(h.as_bytes());
            b.push(b'\n');
            b.extend_from_slice(&[0u8; 24]);
            assert!(read(&b).is_err(), "{shape}");
        }
    }

    #[test]
    fn refuses_bad_input() {
        assert!(read(b"not npy").is_err());
        let a = NpyArray { shape: vec![4], data: Samples::U8(vec![1, 2, 3, 4]) };
        let mut bytes = write(&a).unwrap();
        bytes.pop();
        assert!(read(&bytes).is_err());
        let mut bytes = write(&a).unwrap();
        let at = bytes.windows(3).position(|w| w == b"|u1").unwrap();
        bytes[at..at + 3].copy_from_slice(b">i4");
        assert!(matches!(read(&bytes), Err(TransformError::Npy(m)) if m.contains("'>i4' is not supported")));
        assert!(write(&NpyArray { shape: vec![5], data: Samples::U8(vec![1]) }).is_err());
    }
}
