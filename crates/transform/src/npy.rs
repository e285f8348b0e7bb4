//! `.npy` tensors as [`Samples`]. The files are read and written by the
//! workspace's one `.npy` implementation, `onnx-protect-npy` (versions 1.0–3.0,
//! big-endian data converted, hostile files refused); this module keeps the
//! element types image transforms handle: `uint8`, `float32` and `float64`.

use onnx_protect_npy::{numel, Dtype, NpyError};

use crate::block::Samples;
use crate::error::{Result, TransformError};

/// A decoded `.npy` array of `uint8`, `float32` or `float64` values.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Samples,
}

/// Parses the bytes of a `.npy` file; other element types are refused.
pub fn read(bytes: &[u8]) -> Result<NpyArray> {
    let a = onnx_protect_npy::NpyArray::from_bytes(bytes)?;
    let data = match a.dtype {
        Dtype::U8 => Samples::U8(a.data),
        Dtype::F32 => {
            Samples::F32(a.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        }
        Dtype::F64 => Samples::F64(
            a.data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        other => {
            return Err(TransformError::Npy(NpyError::Array(format!(
                "element type {} is not supported (use uint8, float32 or float64)",
                other.name()
            ))))
        }
    };
    Ok(NpyArray { shape: a.shape, data })
}

/// Encodes an array as a version 1.0 `.npy` file (C order, data 64-byte aligned).
pub fn write(array: &NpyArray) -> Result<Vec<u8>> {
    if numel(&array.shape) != Some(array.data.len()) {
        return Err(TransformError::Npy(NpyError::Array(format!(
            "shape {:?} does not match {} elements",
            array.shape,
            array.data.len()
        ))));
    }
    let (dtype, bytes) = match &array.data {
        Samples::U8(v) => (Dtype::U8, v.clone()),
        Samples::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Samples::F64(v) => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
    };
    Ok(onnx_protect_npy::NpyArray::new(dtype, array.shape.clone(), bytes)?.to_bytes()?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for data in [
            Samples::U8((0..24).collect()),
            Samples::F32((0..24).map(|i| i as f32 / 3.0).collect()),
            Samples::F64((0..24).map(|i| f64::from(i) / 7.0).collect()),
        ] {
            let a = NpyArray { shape: vec![2, 3, 4], data };
            assert_eq!(read(&write(&a).unwrap()).unwrap(), a);
        }
    }

    #[test]
    fn big_endian_files_are_converted() {
        let a = NpyArray { shape: vec![2], data: Samples::F32(vec![1.5, -2.0]) };
        let mut b = write(&a).unwrap();
        let at = b.windows(3).position(|w| w == b"<f4").unwrap();
        b[at] = b'>';
        let n = b.len();
        b[n - 8..n - 4].reverse();
        b[n - 4..].reverse();
        assert_eq!(read(&b).unwrap(), a);
    }

    #[test]
    fn refuses_bad_input() {
        assert!(matches!(read(b"not npy"), Err(TransformError::Npy(NpyError::Magic))));
        let a = NpyArray { shape: vec![4], data: Samples::U8(vec![1, 2, 3, 4]) };
        let mut bytes = write(&a).unwrap();
        bytes.pop();
        assert!(matches!(read(&bytes), Err(TransformError::Npy(NpyError::DataLength { .. }))));
        let mut bytes = write(&a).unwrap();
        let at = bytes.windows(3).position(|w| w == b"|u1").unwrap();
        bytes[at..at + 3].copy_from_slice(b"<u2");
        bytes.truncate(bytes.len() - 4);
        bytes.extend_from_slice(&[0; 8]);
        let e = read(&bytes).unwrap_err().to_string();
        assert!(e.contains("uint16 is not supported"), "{e}");
        assert!(write(&NpyArray { shape: vec![5], data: Samples::U8(vec![1]) }).is_err());
    }
}
