//! A small reader and writer of NumPy `.npy` files (format versions 1–3).
//!
//! Arrays are C-ordered, little-endian in memory ([`NpyArray::data`]); big-endian
//! files are converted on reading. Fortran-ordered files are refused.

use std::path::Path;

use crate::error::{Result, RuntimeError};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Refuse headers larger than this (NumPy itself caps them at 10 000 bytes by default).
const MAX_HEADER: usize = 1 << 20;

/// Element types of the arrays this module reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    F32,
    F64,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::U16 | Dtype::I16 | Dtype::F16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 => 8,
        }
    }

    /// NumPy's name of the type (`float32`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "bool",
            Dtype::U8 => "uint8",
            Dtype::I8 => "int8",
            Dtype::U16 => "uint16",
            Dtype::I16 => "int16",
            Dtype::U32 => "uint32",
            Dtype::I32 => "int32",
            Dtype::U64 => "uint64",
            Dtype::I64 => "int64",
            Dtype::F16 => "float16",
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }

    /// Whether the type is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::F32 | Dtype::F64)
    }

    fn descr(self) -> &'static str {
        match self {
            Dtype::Bool => "|b1",
            Dtype::U8 => "|u1",
            Dtype::I8 => "|i1",
            Dtype::U16 => "<u2",
            Dtype::I16 => "<i2",
            Dtype::U32 => "<u4",
            Dtype::I32 => "<i4",
            Dtype::U64 => "<u8",
            Dtype::I64 => "<i8",
            Dtype::F16 => "<f2",
            Dtype::F32 => "<f4",
            Dtype::F64 => "<f8",
        }
    }

    /// Parses a NumPy `descr`; returns the type and whether the data is big-endian.
    fn from_descr(d: &str) -> Option<(Dtype, bool)> {
        let (order, code) = match d.as_bytes().first()? {
            b'<' | b'|' | b'=' => (false, &d[1..]),
            b'>' => (true, &d[1..]),
            _ => (false, d),
        };
        let t = match code {
            "b1" | "?" => Dtype::Bool,
            "u1" => Dtype::U8,
            "i1" => Dtype::I8,
            "u2" => Dtype::U16,
            "i2" => Dtype::I16,
            "u4" => Dtype::U32,
            "i4" => Dtype::I32,
            "u8" => Dtype::U64,
            "i8" => Dtype::I64,
            "f2" => Dtype::F16,
            "f4" => Dtype::F32,
            "f8" => Dtype::F64,
            _ => return None,
        };
        Some((t, order && t.size() > 1))
    }
}

/// An n-dimensional array: element type, shape and little-endian element bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

fn bad(what: &str, why: impl Into<String>) -> RuntimeError {
    RuntimeError::Npy { path: what.to_string(), reason: why.into() }
}

impl NpyArray {
    /// Builds an array, checking that `data` has exactly `product(shape) * size` bytes.
    pub fn new(dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Result<NpyArray> {
        let want = numel(&shape).and_then(|n| n.checked_mul(dtype.size()));
        if want != Some(data.len()) {
            return Err(bad(
                "<array>",
                format!("{} bytes do not fill shape {shape:?} of {}", data.len(), dtype.name()),
            ));
        }
        Ok(NpyArray { dtype, shape, data })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Reads a `.npy` file.
    pub fn read(path: &Path) -> Result<NpyArray> {
        let bytes = std::fs::read(path).map_err(|e| RuntimeError::Io { path: path.to_path_buf(), source: e })?;
        NpyArray::from_bytes(&bytes).map_err(|e| match e {
            RuntimeError::Npy { reason, .. } => RuntimeError::Npy { path: path.display().to_string(), reason },
            other => other,
        })
    }

    /// Parses the bytes of a `.npy` file.
    pub fn from_bytes(bytes: &[u8]) -> Result<NpyArray> {
        let w = "<npy>";
        if bytes.len() < 10 || &bytes[..6] != MAGIC {
            return Err(bad(w, "not a .npy file (bad magic)"));
        }
        let major = bytes[6];
        let (hlen, start) = match major {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 => {
                if bytes.len() < 12 {
                    return Err(bad(w, "truncated header"));
                }
                (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
            }
            v => return Err(bad(w, format!("unsupported format version {v}"))),
        };
        if hlen > MAX_HEADER || start + hlen > bytes.len() {
            return Err(bad(w, "truncated or oversized header"));
        }
        let header = std::str::from_utf8(&bytes[start..start + hlen]).map_err(|_| bad(w, "header is not text"))?;
        let descr = dict_str(header, "descr").ok_or_else(|| bad(w, "header has no 'descr'"))?;
        let (dtype, big) =
            Dtype::from_descr(&descr).ok_or_else(|| bad(w, format!("unsupported element type '{descr}'")))?;
        match dict_raw(header, "fortran_order").map(str::trim) {
            Some(s) if s.starts_with("False") => {}
            Some(s) if s.starts_with("True") => return Err(bad(w, "Fortran-ordered arrays are not supported")),
            _ => return Err(bad(w, "header has no 'fortran_order'")),
        }
        let shape = dict_shape(header).ok_or_else(|| bad(w, "header has no valid 'shape'"))?;
        let n = numel(&shape).and_then(|n| n.checked_mul(dtype.size())).ok_or_else(|| bad(w, "shape is too large"))?;
        let body = &bytes[start + hlen..];
        if body.len() != n {
            return Err(bad(w, format!("expected {n} data bytes for shape {shape:?}, found {}", body.len())));
        }
        let mut data = body.to_vec();
        if big {
            for e in data.chunks_exact_mut(dtype.size()) {
                e.reverse();
            }
        }
        Ok(NpyArray { dtype, shape, data })
    }

    /// Encodes the array as a version 1.0 `.npy` file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let shape = match self.shape.len() {
            0 => "()".to_string(),
            1 => format!("({},)", self.shape[0]),
            _ => format!("({})", self.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
        };
        let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}", self.dtype.descr());
        // Pad so that the data starts at a multiple of 64 bytes; the header ends with '\n'.
        let total = 10 + header.len() + 1;
        header.push_str(&" ".repeat((64 - total % 64) % 64));
        header.push('\n');
        let mut out = Vec::with_capacity(10 + header.len() + self.data.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// Writes the array as a `.npy` file.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_bytes()).map_err(|e| RuntimeError::Io { path: path.to_path_buf(), source: e })
    }

    /// Every element as `f64` (booleans as 0/1).
    pub fn to_f64(&self) -> Vec<f64> {
        let s = self.dtype.size();
        self.data
            .chunks_exact(s)
            .map(|c| match self.dtype {
                Dtype::Bool => f64::from(c[0] != 0),
                Dtype::U8 => f64::from(c[0]),
                Dtype::I8 => f64::from(c[0] as i8),
                Dtype::U16 => f64::from(u16::from_le_bytes([c[0], c[1]])),
                Dtype::I16 => f64::from(i16::from_le_bytes([c[0], c[1]])),
                Dtype::F16 => f64::from(half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
                Dtype::U32 => f64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                Dtype::I32 => f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                Dtype::F32 => f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                Dtype::U64 => u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64,
                Dtype::I64 => i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64,
                Dtype::F64 => f64::from_le_bytes(c.try_into().unwrap_or([0; 8])),
            })
            .collect()
    }

    /// Every element as `i64`, for label arrays (integer or boolean types only).
    pub fn to_labels(&self) -> Result<Vec<i64>> {
        if self.dtype.is_float() {
            return Err(bad("<labels>", format!("labels must be integers, not {}", self.dtype.name())));
        }
        Ok(self.to_f64().into_iter().map(|v| v as i64).collect())
    }

    /// The rows `[from, to)` of the first dimension.
    pub fn rows(&self, from: usize, to: usize) -> Result<NpyArray> {
        let first = *self.shape.first().ok_or_else(|| bad("<array>", "a scalar has no rows"))?;
        if from > to || to > first {
            return Err(bad("<array>", format!("rows {from}..{to} out of {first}")));
        }
        let row = self.data.len() / first.max(1);
        let mut shape = self.shape.clone();
        shape[0] = to - from;
        Ok(NpyArray { dtype: self.dtype, shape, data: self.data[from * row..to * row].to_vec() })
    }
}

/// Summary statistics of an array.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub elements: usize,
    /// Over the finite elements; `None` when there are none.
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    /// NaN and ±infinity elements.
    pub non_finite: usize,
}

impl NpyArray {
    /// Shape, type, min/max/mean over finite values and the count of non-finite values.
    pub fn summary(&self) -> Summary {
        let (mut min, mut max, mut sum, mut n, mut bad) = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0usize, 0usize);
        for v in self.to_f64() {
            if v.is_finite() {
                min = min.min(v);
                max = max.max(v);
                sum += v;
                n += 1;
            } else {
                bad += 1;
            }
        }
        let some = |v: f64| if n > 0 { Some(v) } else { None };
        Summary {
            dtype: self.dtype,
            shape: self.shape.clone(),
            elements: self.len(),
            min: some(min),
            max: some(max),
            mean: some(sum / n.max(1) as f64),
            non_finite: bad,
        }
    }
}

fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// The text after `'key':` in a Python dict literal.
fn dict_raw<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    for quote in ['\'', '"'] {
        let k = format!("{quote}{key}{quote}");
        if let Some(i) = header.find(&k) {
            let rest = header[i + k.len()..].trim_start();
            return rest.strip_prefix(':');
        }
    }
    None
}

fn dict_str(header: &str, key: &str) -> Option<String> {
    let v = dict_raw(header, key)?.trim_start();
    let q = v.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let end = v[1..].find(q)?;
    Some(v[1..1 + end].to_string())
}

fn dict_shape(header: &str) -> Option<Vec<usize>> {
    let v = dict_raw(header, "shape")?.trim_start().strip_prefix('(')?;
    let end = v.find(')')?;
    v[..end]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_type_and_shape() {
        for dtype in [
            Dtype::Bool,
            Dtype::U8,
            Dtype::I8,
            Dtype::U16,
            Dtype::I16,
            Dtype::U32,
            Dtype::I32,
            Dtype::U64,
            Dtype::I64,
            Dtype::F16,
            Dtype::F32,
            Dtype::F64,
        ] {
            for shape in [vec![], vec![3], vec![2, 3], vec![0, 4], vec![1, 1, 8, 8]] {
                let n: usize = shape.iter().product();
                let data: Vec<u8> =
                    (0..n * dtype.size()).map(|i| if dtype == Dtype::Bool { 1 } else { i as u8 }).collect();
                let a = NpyArray::new(dtype, shape.clone(), data).unwrap();
                let bytes = a.to_bytes();
                assert_eq!((bytes.len() - a.data.len()) % 64, 0, "data is 64-byte aligned");
                assert_eq!(NpyArray::from_bytes(&bytes).unwrap(), a, "{dtype:?} {shape:?}");
            }
        }
    }

    #[test]
    fn reads_numpy_written_headers() {
        // Bytes as written by numpy 2 for np.arange(3, dtype='>i4') (big-endian) and a v2 header.
        let mut f = b"\x93NUMPY\x01\x00".to_vec();
        let h = "{'descr': '>i4', 'fortran_order': False, 'shape': (3,), }          \n";
        f.extend_from_slice(&(h.len() as u16).to_le_bytes());
        f.extend_from_slice(h.as_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2]);
        let a = NpyArray::from_bytes(&f).unwrap();
        assert_eq!((a.dtype, a.to_f64()), (Dtype::I32, vec![0.0, 1.0, 2.0]));
        let mut g = b"\x93NUMPY\x02\x00".to_vec();
        let h = "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (1, 2)}\n";
        g.extend_from_slice(&(h.len() as u32).to_le_bytes());
        g.extend_from_slice(h.as_bytes());
        g.extend_from_slice(&1.5f64.to_le_bytes());
        g.extend_from_slice(&(-2.0f64).to_le_bytes());
        assert_eq!(NpyArray::from_bytes(&g).unwrap().to_f64(), vec![1.5, -2.0]);
    }

    #[test]
    fn every_changed_bit_and_every_truncation_is_read_or_refused_without_a_panic() {
        let good = NpyArray::new(Dtype::F32, vec![2, 3], (0..24).collect()).unwrap().to_bytes();
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[i] ^= 1 << bit;
                if let Ok(r) = NpyArray::from_bytes(&b) {
                    assert_eq!(r.shape.iter().product::<usize>() * r.dtype.size(), r.data.len(), "byte {i} bit {bit}");
                    let _ = (r.summary(), r.to_f64());
                }
            }
        }
        for n in 0..good.len() {
            assert!(NpyArray::from_bytes(&good[..n]).is_err(), "truncated to {n}");
        }
        for shape in ["(99999999999, 99999999999)", "(4294967296, 4294967296, 4294967296)"] {
            let h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n");
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend_from_slice(&(h.len() as u16).to_le_bytes());
            b.extend_from_slice(h.as_bytes());
            b.extend_from_slice(&[0u8; 24]);
            assert!(NpyArray::from_bytes(&b).is_err(), "{shape}");
        }
    }

    #[test]
    fn refuses_bad_files_with_a_reason() {
        let ok = NpyArray::new(Dtype::F32, vec![2], vec![0; 8]).unwrap().to_bytes();
        let replace = |from: &[u8], to: &[u8]| {
            let i = ok.windows(from.len()).position(|w| w == from).unwrap();
            [&ok[..i], to, &ok[i + from.len()..]].concat()
        };
        for (bytes, needle) in [
            (b"hello".to_vec(), "magic"),
            (ok[..ok.len() - 1].to_vec(), "data bytes"),
            (replace(b"False", b"True "), "Fortran"),
            (replace(b"<f4", b"<c8"), "element type"),
        ] {
            let e = NpyArray::from_bytes(&bytes).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn summary_counts_non_finite_values() {
        let v = [1.0f32, f32::NAN, -3.0, f32::INFINITY];
        let a = NpyArray::new(Dtype::F32, vec![4], v.iter().flat_map(|x| x.to_le_bytes()).collect()).unwrap();
        let s = a.summary();
        assert_eq!((s.min, s.max, s.mean, s.non_finite), (Some(-3.0), Some(1.0), Some(-1.0), 2));
    }
}
