//! NumPy `.npy` arrays (format versions 1.0, 2.0 and 3.0) and `.npz` archives,
//! read as hostile input.
//!
//! Arrays are C-ordered and little-endian in memory ([`NpyArray::data`]);
//! big-endian files are converted on reading, Fortran-ordered files are refused.
//! Writing produces version 1.0 files with the data 64-byte aligned, as NumPy does.
//!
//! Limits, checked before anything is allocated from a size the file states:
//!
//! * the header is at most [`MAX_HEADER_LEN`] bytes (NumPy's own reader refuses
//!   more than 10 000 by default) and is a Python dict literal with exactly the
//!   keys `descr`, `fortran_order` and `shape`;
//! * at most [`MAX_DIMS`] dimensions; the element count times the element size
//!   must not overflow and must equal the number of data bytes in the file;
//! * `.npz` ([`read_npz`]): at most [`MAX_NPZ_MEMBERS`] members, each a `.npy`
//!   file stored or deflated, whose stated size is at most [`MAX_NPZ_MEMBER_LEN`]
//!   bytes and at most [`MAX_DEFLATE_RATIO`] times its compressed size; a member
//!   is read only up to its stated size, and its CRC-32 is checked.
//!
//! The library never prints.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

mod header;
mod npz;

pub use npz::{read_npz, read_npz_bytes, MAX_DEFLATE_RATIO, MAX_NPZ_MEMBERS, MAX_NPZ_MEMBER_LEN};

/// The first six bytes of every `.npy` file.
pub const MAGIC: &[u8] = b"\x93NUMPY";
/// Largest header accepted, in bytes.
pub const MAX_HEADER_LEN: usize = 1 << 16;
/// Largest number of dimensions accepted (NumPy 2 allows 64).
pub const MAX_DIMS: usize = 64;

/// Everything that can be wrong with an array or a file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NpyError {
    /// The file could not be read or written. (The causes of this and the next two
    /// variants are part of their messages, not error sources, so a chain of causes
    /// says each thing once.)
    #[error("cannot access {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// A problem inside a named file.
    #[error("{path}: {problem}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// The problem.
        problem: Box<NpyError>,
    },
    /// A problem inside a member of a `.npz` archive.
    #[error("member {member:?}: {problem}")]
    InMember {
        /// The member's name in the archive.
        member: String,
        /// The problem.
        problem: Box<NpyError>,
    },
    /// The file does not start with the `.npy` magic.
    #[error("not a .npy file (bad magic)")]
    Magic,
    /// A `.npy` format version other than 1, 2 or 3.
    #[error("unsupported .npy format version {0}")]
    Version(u8),
    /// The file ends inside its header.
    #[error("truncated header")]
    TruncatedHeader,
    /// The header is longer than [`MAX_HEADER_LEN`].
    #[error("header of {len} bytes is longer than the limit of {max} bytes")]
    HeaderTooLong {
        /// Stated header length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The header is not the dict NumPy writes.
    #[error("malformed header: {0}")]
    Header(String),
    /// An element type this crate does not read.
    #[error("unsupported element type '{0}'")]
    Dtype(String),
    /// A Fortran-ordered array.
    #[error("Fortran-ordered arrays are not supported")]
    Fortran,
    /// A shape whose size overflows, or with too many dimensions.
    #[error("shape {0:?} is too large")]
    ShapeTooLarge(Vec<usize>),
    /// The data does not have the length the shape requires.
    #[error("expected {expected} data bytes for shape {shape:?}, found {found}")]
    DataLength {
        /// Bytes the shape and element type require.
        expected: usize,
        /// Bytes present.
        found: usize,
        /// The stated shape.
        shape: Vec<usize>,
    },
    /// An operation on an array that does not fit it (wrong length, rows out of range, ...).
    #[error("{0}")]
    Array(String),
    /// A `.npz` archive that cannot be read.
    #[error("npz: {0}")]
    Npz(String),
}

impl NpyError {
    /// This error, located in file `path`.
    pub fn in_file(self, path: &Path) -> NpyError {
        match self {
            e @ (NpyError::Io { .. } | NpyError::InFile { .. }) => e,
            e => NpyError::InFile { path: path.to_path_buf(), problem: Box::new(e) },
        }
    }
}

/// Result with [`NpyError`].
pub type Result<T, E = NpyError> = std::result::Result<T, E>;

/// Element types of the arrays this crate reads and writes.
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
    /// Every element type.
    pub const ALL: [Dtype; 12] = [
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
    ];

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

    /// The `descr` this crate writes (little-endian).
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

    /// Parses a NumPy `descr`; returns the type and whether its data is big-endian.
    fn from_descr(d: &str) -> Option<(Dtype, bool)> {
        let (big, code) = match d.as_bytes().first()? {
            b'<' | b'|' | b'=' => (false, d.get(1..)?),
            b'>' => (true, d.get(1..)?),
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
        Some((t, big && t.size() > 1))
    }
}

/// An n-dimensional array: element type, shape and little-endian element bytes.
///
/// Invariant (kept by every constructor): `data.len()` is the product of
/// `shape` times the element size.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first (C order).
    pub shape: Vec<usize>,
    /// Element bytes, little-endian.
    pub data: Vec<u8>,
}

/// Number of elements of `shape`, or `None` on overflow.
pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

impl NpyArray {
    /// Builds an array, checking that `data` has exactly `product(shape) * size` bytes.
    pub fn new(dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Result<NpyArray> {
        let want = numel(&shape).and_then(|n| n.checked_mul(dtype.size()));
        if want != Some(data.len()) {
            return Err(NpyError::Array(format!(
                "{} bytes do not fill shape {shape:?} of {}",
                data.len(),
                dtype.name()
            )));
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

    /// Reads a `.npy` file; errors name the file.
    pub fn read(path: &Path) -> Result<NpyArray> {
        let bytes = std::fs::read(path).map_err(|error| NpyError::Io { path: path.to_path_buf(), error })?;
        NpyArray::from_vec(bytes).map_err(|e| e.in_file(path))
    }

    /// Parses the bytes of a `.npy` file.
    pub fn from_bytes(bytes: &[u8]) -> Result<NpyArray> {
        let h = header::parse(bytes)?;
        let mut data = bytes[h.data_start..].to_vec();
        h.finish(&mut data)?;
        Ok(NpyArray { dtype: h.dtype, shape: h.shape, data })
    }

    /// Parses the bytes of a `.npy` file, reusing the buffer for the data.
    pub fn from_vec(mut bytes: Vec<u8>) -> Result<NpyArray> {
        let h = header::parse(&bytes)?;
        bytes.drain(..h.data_start);
        h.finish(&mut bytes)?;
        Ok(NpyArray { dtype: h.dtype, shape: h.shape, data: bytes })
    }

    /// Encodes the array as a version 1.0 `.npy` file (data 64-byte aligned).
    ///
    /// Errors if the header would not fit version 1.0's 16-bit length (more
    /// than about 3 000 dimensions, which no array this crate reads has).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let header = header::encode(self.dtype.descr(), &self.shape);
        let hlen = u16::try_from(header.len())
            .map_err(|_| NpyError::Array(format!("a header for shape {:?} is too long", self.shape)))?;
        let mut out = Vec::with_capacity(10 + header.len() + self.data.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&hlen.to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.data);
        Ok(out)
    }

    /// Writes the array as a `.npy` file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|error| NpyError::Io { path: path.to_path_buf(), error })
    }

    /// Every element as `f64` (booleans as 0/1; 64-bit integers rounded).
    pub fn to_f64(&self) -> Vec<f64> {
        let s = self.dtype.size();
        self.data
            .chunks_exact(s)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..s].copy_from_slice(c);
                match self.dtype {
                    Dtype::Bool => f64::from(b[0] != 0),
                    Dtype::U8 => f64::from(b[0]),
                    Dtype::I8 => f64::from(b[0] as i8),
                    Dtype::U16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
                    Dtype::I16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
                    Dtype::F16 => f64::from(half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
                    Dtype::U32 => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    Dtype::I32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    Dtype::F32 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    Dtype::U64 => u64::from_le_bytes(b) as f64,
                    Dtype::I64 => i64::from_le_bytes(b) as f64,
                    Dtype::F64 => f64::from_le_bytes(b),
                }
            })
            .collect()
    }

    /// Every element as `i64`, for label arrays (integer or boolean types only).
    pub fn to_labels(&self) -> Result<Vec<i64>> {
        if self.dtype.is_float() {
            return Err(NpyError::Array(format!("labels must be integers, not {}", self.dtype.name())));
        }
        Ok(self.to_f64().into_iter().map(|v| v as i64).collect())
    }

    /// The rows `[from, to)` of the first dimension.
    pub fn rows(&self, from: usize, to: usize) -> Result<NpyArray> {
        let first = *self.shape.first().ok_or_else(|| NpyError::Array("a scalar has no rows".into()))?;
        if from > to || to > first {
            return Err(NpyError::Array(format!("rows {from}..{to} out of {first}")));
        }
        // The invariant makes data.len() a multiple of `first` (when first > 0).
        let row = self.data.len() / first.max(1);
        let mut shape = self.shape.clone();
        shape[0] = to - from;
        Ok(NpyArray { dtype: self.dtype, shape, data: self.data[from * row..to * row].to_vec() })
    }

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

/// Summary statistics of an array.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Number of elements.
    pub elements: usize,
    /// Smallest finite element; `None` when there are none.
    pub min: Option<f64>,
    /// Largest finite element.
    pub max: Option<f64>,
    /// Mean of the finite elements.
    pub mean: Option<f64>,
    /// NaN and ±infinity elements.
    pub non_finite: usize,
}
