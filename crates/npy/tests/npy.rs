//! `.npy` reading and writing: round trips, files as NumPy writes them, and one
//! test per way a hostile file is refused.

#![allow(clippy::unwrap_used)] // tests may unwrap

use onnx_protect_npy::{Dtype, NpyArray, NpyError, MAX_DIMS, MAX_HEADER_LEN};

/// A version 1.0 file with header text `h` (not padded) followed by `data`.
fn v1(h: &str, data: &[u8]) -> Vec<u8> {
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn round_trips_every_type_and_shape() {
    for dtype in Dtype::ALL {
        for shape in [vec![], vec![3], vec![2, 3], vec![0, 4], vec![1, 1, 8, 8]] {
            let n: usize = shape.iter().product();
            let data: Vec<u8> = (0..n * dtype.size()).map(|i| if dtype == Dtype::Bool { 1 } else { i as u8 }).collect();
            let a = NpyArray::new(dtype, shape.clone(), data).unwrap();
            let bytes = a.to_bytes().unwrap();
            assert_eq!((bytes.len() - a.data.len()) % 64, 0, "data is 64-byte aligned");
            assert_eq!(NpyArray::from_bytes(&bytes).unwrap(), a, "{dtype:?} {shape:?}");
            assert_eq!(NpyArray::from_vec(bytes).unwrap(), a, "{dtype:?} {shape:?}");
        }
    }
}

#[test]
fn writes_and_reads_files_naming_the_path_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.npy");
    let a = NpyArray::new(Dtype::F32, vec![2], vec![0; 8]).unwrap();
    a.write(&p).unwrap();
    assert_eq!(NpyArray::read(&p).unwrap(), a);
    std::fs::write(&p, b"hello").unwrap();
    let e = NpyArray::read(&p).unwrap_err().to_string();
    assert!(e.contains("a.npy") && e.contains("bad magic"), "{e}");
    let e = NpyArray::read(&dir.path().join("missing.npy")).unwrap_err();
    assert!(matches!(e, NpyError::Io { .. }), "{e}");
}

#[test]
fn reads_numpy_written_headers() {
    // np.arange(3, dtype='>i4'): big-endian, converted on reading.
    let f = v1(
        "{'descr': '>i4', 'fortran_order': False, 'shape': (3,), }          \n",
        &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2],
    );
    let a = NpyArray::from_bytes(&f).unwrap();
    assert_eq!((a.dtype, a.to_f64()), (Dtype::I32, vec![0.0, 1.0, 2.0]));
    // A version 2.0 header in double quotes.
    let mut g = b"\x93NUMPY\x02\x00".to_vec();
    let h = "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (1, 2)}\n";
    g.extend_from_slice(&(h.len() as u32).to_le_bytes());
    g.extend_from_slice(h.as_bytes());
    g.extend_from_slice(&1.5f64.to_le_bytes());
    g.extend_from_slice(&(-2.0f64).to_le_bytes());
    assert_eq!(NpyArray::from_bytes(&g).unwrap().to_f64(), vec![1.5, -2.0]);
    // The header numpy 2 writes for np.zeros((2, 1), np.float64), padded to 128 bytes.
    let mut h = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 1), }".to_string();
    while h.len() < 117 {
        h.push(' ');
    }
    h.push('\n');
    let a = NpyArray::from_bytes(&v1(&h, &[0u8; 16])).unwrap();
    assert_eq!((a.dtype, a.shape), (Dtype::F64, vec![2, 1]));
    // Python 2 wrote long integers with an L.
    let a =
        NpyArray::from_bytes(&v1("{'descr': '|u1', 'fortran_order': False, 'shape': (2L, 1L), }\n", &[7, 8])).unwrap();
    assert_eq!(a.shape, vec![2, 1]);
}

#[test]
fn every_changed_bit_and_every_truncation_is_read_or_refused_without_a_panic() {
    for a in [
        NpyArray::new(Dtype::F32, vec![2, 3], (0..24).collect()).unwrap(),
        NpyArray::new(Dtype::U8, vec![4], vec![1, 2, 3, 4]).unwrap(),
    ] {
        let good = a.to_bytes().unwrap();
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
    }
}

#[test]
fn shapes_that_lie_are_refused() {
    // Far more elements than bytes, and element counts whose product overflows.
    for shape in
        ["(99999999999, 99999999999)", "(4294967296, 4294967296, 4294967296)", "(3,)", "(99999999999999999999999,)"]
    {
        let b = v1(&format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}\n"), &[0u8; 24]);
        let e = NpyArray::from_bytes(&b).unwrap_err();
        assert!(matches!(e, NpyError::ShapeTooLarge(_) | NpyError::DataLength { .. }), "{shape}: {e}");
    }
    let dims = vec!["1"; MAX_DIMS + 1].join(", ");
    let b = v1(&format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}\n"), &[0u8; 4]);
    assert!(NpyArray::from_bytes(&b).unwrap_err().to_string().contains("dimensions"));
    let dims = vec!["1"; MAX_DIMS].join(", ");
    let b = v1(&format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}\n"), &[0u8; 4]);
    assert_eq!(NpyArray::from_bytes(&b).unwrap().shape.len(), MAX_DIMS);
}

#[test]
fn refuses_bad_files_with_a_reason() {
    let ok = NpyArray::new(Dtype::F32, vec![2], vec![0; 8]).unwrap().to_bytes().unwrap();
    let replace = |from: &[u8], to: &[u8]| {
        let i = ok.windows(from.len()).position(|w| w == from).unwrap();
        [&ok[..i], to, &ok[i + from.len()..]].concat()
    };
    let mut v4 = ok.clone();
    v4[6] = 4;
    for (bytes, needle) in [
        (b"hello".to_vec(), "magic"),
        (b"\x93NUMPY".to_vec(), "truncated header"),
        (v4, "version 4"),
        (ok[..ok.len() - 1].to_vec(), "data bytes"),
        ([ok.as_slice(), &[0]].concat(), "data bytes"),
        (replace(b"False", b"True "), "Fortran"),
        (replace(b"False", b"0    "), "True or False"),
        (replace(b"<f4", b"<c8"), "element type"),
        (replace(b"<f4", b"O\x00\x00"), "element type"),
        (replace(b"'descr'", b"'dexcr'"), "unexpected key"),
        (replace(b"'shape': (2,)", b"'descr':'<f4'"), "appears twice"),
        (replace(b"(2,)", b"[2,]"), "tuple"),
        (replace(b"(2,)", b"(-2)"), "non-negative"),
        (replace(b"{", b"["), "must be a dict"),
        (replace(b"}", b"]"), "quoted string"),
        (replace(b"'<f4'", b"'<f\\"), "string"),
        (replace(b"   ", b"x  "), "after the dict"),
        (replace(b"'fortran_order': False, ", b"                        "), "no 'fortran_order'"),
    ] {
        let e = NpyArray::from_bytes(&bytes).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
        assert!(!e.contains('\n'), "one line: {e:?}");
    }
}

#[test]
fn a_header_longer_than_the_limit_is_refused_before_it_is_read() {
    let mut b = b"\x93NUMPY\x02\x00".to_vec();
    b.extend_from_slice(&(MAX_HEADER_LEN as u32 + 1).to_le_bytes());
    let e = NpyArray::from_bytes(&b).unwrap_err();
    assert!(matches!(e, NpyError::HeaderTooLong { .. }), "{e}");
    let mut b = b"\x93NUMPY\x03\x00".to_vec();
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(NpyArray::from_bytes(&b).unwrap_err(), NpyError::HeaderTooLong { .. }));
}

#[test]
fn arrays_are_checked_when_built_and_sliced() {
    assert!(NpyArray::new(Dtype::U8, vec![5], vec![1]).is_err());
    assert!(NpyArray::new(Dtype::F32, vec![usize::MAX, 2], vec![]).is_err());
    let a = NpyArray::new(Dtype::I16, vec![3, 2], (0..12).collect()).unwrap();
    assert_eq!(a.rows(1, 3).unwrap().data, (4..12).collect::<Vec<u8>>());
    assert!(a.rows(2, 4).is_err() && a.rows(2, 1).is_err());
    assert!(NpyArray::new(Dtype::U8, vec![], vec![1]).unwrap().rows(0, 0).is_err());
    assert!(NpyArray::new(Dtype::F32, vec![1], vec![0; 4]).unwrap().to_labels().is_err());
    assert_eq!(NpyArray::new(Dtype::I8, vec![2], vec![255, 3]).unwrap().to_labels().unwrap(), vec![-1, 3]);
}

#[test]
fn summary_counts_non_finite_values() {
    let v = [1.0f32, f32::NAN, -3.0, f32::INFINITY];
    let a = NpyArray::new(Dtype::F32, vec![4], v.iter().flat_map(|x| x.to_le_bytes()).collect()).unwrap();
    let s = a.summary();
    assert_eq!((s.min, s.max, s.mean, s.non_finite), (Some(-3.0), Some(1.0), Some(-1.0), 2));
}
