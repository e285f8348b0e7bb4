//! `.npz` archives as `numpy.savez` and `numpy.savez_compressed` write them
//! (fixtures made by tests/data/make.py), and hostile archives.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::io::Write;
use std::path::PathBuf;

use onnx_protect_npy::{read_npz, read_npz_bytes, Dtype, NpyArray, NpyError, MAX_NPZ_MEMBERS};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// An archive of (member name, bytes), stored or deflated.
fn zip_of(members: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in members {
        w.start_file(*name, opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn npy(values: &[f32]) -> Vec<u8> {
    NpyArray::new(Dtype::F32, vec![values.len()], values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .unwrap()
        .to_bytes()
        .unwrap()
}

#[test]
fn reads_what_numpy_savez_and_savez_compressed_write() {
    for file in ["stored.npz", "deflated.npz"] {
        let arrays = read_npz(&data(file)).unwrap();
        let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x", "labels", "big"], "{file}");
        let x = &arrays[0].1;
        assert_eq!((x.dtype, x.shape.clone()), (Dtype::F32, vec![3, 4]));
        assert_eq!(x.to_f64(), (0..12).map(|i| f64::from(i) / 4.0).collect::<Vec<_>>());
        assert_eq!(arrays[1].1.to_labels().unwrap(), vec![3, 1, 4, 1, 5]);
        let big = &arrays[2].1;
        assert_eq!(
            (big.dtype, big.shape.clone(), big.to_f64()),
            (Dtype::I16, vec![2, 3], vec![0., 1., 2., 3., 4., 5.])
        );
    }
}

#[test]
fn every_changed_byte_and_every_truncation_is_read_or_refused_without_a_panic() {
    for file in ["stored.npz", "deflated.npz"] {
        let good = std::fs::read(data(file)).unwrap();
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x55;
            if let Ok(arrays) = read_npz_bytes(&b) {
                for (_, a) in arrays {
                    assert_eq!(a.shape.iter().product::<usize>() * a.dtype.size(), a.data.len(), "{file} byte {i}");
                }
            }
        }
        for n in 0..good.len() {
            assert!(read_npz_bytes(&good[..n]).is_err(), "{file} truncated to {n}");
        }
    }
}

#[test]
fn a_changed_data_byte_fails_the_crc() {
    let member = npy(&[1.0, 2.0]);
    let mut b = zip_of(&[("x.npy", member.clone())], false);
    let at = b.windows(member.len()).position(|w| w == member.as_slice()).unwrap() + member.len() - 1;
    b[at] ^= 1; // the last byte of 2.0f32, a valid array either way
    let e = read_npz_bytes(&b).unwrap_err().to_string();
    assert!(e.contains("x.npy") && e.to_lowercase().contains("checksum"), "{e}");
}

#[test]
fn members_that_are_not_arrays_are_refused_and_a_repeated_name_reads_as_its_last() {
    for (members, needle) in [
        (vec![("notes.txt", b"hello".to_vec())], "not a .npy member"),
        (vec![("x.npy", b"not an array".to_vec())], "bad magic"),
    ] {
        let b = zip_of(&members, true);
        let e = read_npz_bytes(&b).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
    // Two members of one name (the writer refuses to make them, so a name is patched)
    // read as the last of them, as numpy.load does.
    let mut b = zip_of(&[("x.npy", npy(&[1.0])), ("y.npy", npy(&[2.0]))], false);
    for i in 0..b.len() - 5 {
        if &b[i..i + 5] == b"y.npy" {
            b[i] = b'x';
        }
    }
    let arrays = read_npz_bytes(&b).unwrap();
    assert_eq!(arrays.len(), 1);
    assert_eq!((arrays[0].0.as_str(), arrays[0].1.to_f64()), ("x", vec![2.0]));
    let e = read_npz_bytes(b"not a zip file at all").unwrap_err();
    assert!(matches!(e, NpyError::Npz(_)), "{e}");
}

#[test]
fn stated_sizes_that_lie_are_refused() {
    let good = zip_of(&[("x.npy", npy(&[1.0, 2.0, 3.0]))], false);
    let stated = (npy(&[1.0, 2.0, 3.0]).len() as u32).to_le_bytes();
    // The uncompressed size is at offset 22 of the local header (PK\3\4) and 24 of the
    // central directory header (PK\1\2).
    let patch = |value: u32| {
        let mut b = good.clone();
        for (sig, off) in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)] {
            let at = b.windows(4).position(|w| w == sig).unwrap() + off;
            assert_eq!(b[at..at + 4], stated);
            b[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        b
    };
    // A zip bomb's claim: far more than deflate can hold (and than was stored).
    let e = read_npz_bytes(&patch(0x7fff_ffff)).unwrap_err().to_string();
    assert!(e.contains("larger than this member can hold"), "{e}");
    for value in [u32::from_le_bytes(stated) + 8, u32::from_le_bytes(stated) - 8] {
        assert!(read_npz_bytes(&patch(value)).is_err(), "stated {value}");
    }
}

#[test]
fn archives_with_too_many_members_are_refused() {
    let one = npy(&[0.0]);
    let names: Vec<String> = (0..=MAX_NPZ_MEMBERS).map(|i| format!("a{i}.npy")).collect();
    let members: Vec<(&str, Vec<u8>)> = names.iter().map(|n| (n.as_str(), one.clone())).collect();
    let e = read_npz_bytes(&zip_of(&members, false)).unwrap_err().to_string();
    assert!(e.contains("members"), "{e}");
    assert_eq!(read_npz_bytes(&zip_of(&members[..3], false)).unwrap().len(), 3);
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.npz");
    std::fs::write(&p, b"PK nonsense").unwrap();
    let e = read_npz(&p).unwrap_err().to_string();
    assert!(e.contains("bad.npz") && e.contains("npz:"), "{e}");
}
