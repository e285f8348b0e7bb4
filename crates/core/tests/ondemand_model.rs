//! A model file filled on demand (`InMemory::model_on_demand`): its large initializers
//! come from memory filled on demand and equal the whole decryption's bytes in every mode,
//! the skeleton holds every other byte (and none of theirs), a byte changed anywhere in the
//! file is refused before anything is handed over, and a chunk that changes on disk after
//! that reads as zeros and makes `settle` refuse the load.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};

use onnx_protect_core::error::ErrorKind;
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::memory::{InMemory, Method};
use onnx_protect_core::protect::{encrypt, EncryptOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::testutil::{float_tensor, matmul_chain};
use onnx_protect_format::{Model, TensorData};
use onnx_protect_select::Policy;

mod common;
use common::{every_mode, resident_kib};

/// Each large weight is `DIM`² floats (4 MiB).
const DIM: usize = 1024;

fn key() -> KeySource {
    KeySource::key(MasterKey::from_bytes([9; 32]))
}

/// A chain of `n` weights in `raw_data`, every other one `DIM`² floats and the others
/// 300 floats (under the 64 KiB the region takes), protected with `policy`; the plain
/// and the protected model's paths.
fn single_file(dir: &Path, n: usize, policy: &Policy) -> (PathBuf, PathBuf) {
    let tensors: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let len = if i % 2 == 0 { DIM * DIM } else { 300 };
            let values: Vec<f32> = (0..len).map(|j| (((i * 7 + j) % 1013) as f32 - 506.0) / 512.0).collect();
            let dims: Vec<i64> = if len == 300 { vec![300] } else { vec![DIM as i64, DIM as i64] };
            float_tensor(&format!("W{i}"), &dims, &values)
        })
        .collect();
    let plain = dir.join("model.onnx");
    std::fs::write(&plain, matmul_chain(&tensors)).unwrap();
    let protected = dir.join("protected.onnx");
    encrypt(&plain, &protected, &EncryptTo::key(key()), &EncryptOptions::new(policy)).unwrap();
    (plain, protected)
}

/// The `raw_data` ranges of the model's initializers of at least 64 KiB.
fn large(plain: &Path) -> Vec<std::ops::Range<usize>> {
    let m = Model::open(plain).unwrap();
    let mut out: Vec<_> = m
        .tensors
        .iter()
        .filter_map(|t| match &t.data {
            TensorData::Raw { range } if range.end - range.start >= 64 << 10 => {
                Some(range.start as usize..range.end as usize)
            }
            _ => None,
        })
        .collect();
    out.sort_by_key(|r| r.start);
    out
}

#[test]
fn the_model_files_large_tensors_are_filled_on_demand_with_the_bytes_of_the_whole_decryption() {
    for (what, p) in every_mode() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, protected) = single_file(dir.path(), 9, &p);
        let original = std::fs::read(&plain).unwrap();
        let k = key();
        let (mut lazy, index) =
            InMemory::file(&protected, &k).on_demand(true).model_on_demand(true).load_for_session().unwrap();
        assert_eq!(lazy.method(), Method::OnDemand, "{what}");
        let skeleton = lazy.take_skeleton().expect("a skeleton");
        assert_eq!(skeleton.holes, large(&plain), "{what}: the large initializers are the holes");
        assert_eq!(index.tensors.len(), 9, "{what}: the index is the protected file's");
        // Every byte outside the holes is there, decrypted; inside, nothing was written.
        let mut at = 0;
        for h in skeleton.holes.iter().chain(std::iter::once(&(original.len()..original.len()))) {
            assert!(skeleton.bytes[at..h.start] == original[at..h.start], "{what}: bytes {at}..{}", h.start);
            assert!(skeleton.bytes[h.clone()].iter().all(|&b| b == 0), "{what}: hole {h:?} written");
            at = h.end;
        }
        // The skeleton's pages under the tensors were never touched.
        let resident = resident_kib(skeleton.bytes.as_ptr());
        assert!(resident <= 64, "{what}: {resident} KiB of the skeleton resident");
        // Each large tensor, filled on demand, at its aligned place in the model's bytes.
        let region = lazy.bytes();
        assert_eq!(region.as_ptr() as usize % 4096, 0, "{what}: the region starts on a page");
        for (h, &at) in skeleton.holes.iter().zip(&skeleton.at) {
            assert_eq!(at % 64, 0, "{what}: tensor at {at}");
            assert!(region[at..at + h.len()] == original[h.clone()], "{what}: tensor {h:?} at {at}");
        }
        region.settle().unwrap();
    }
}

#[test]
fn a_changed_byte_anywhere_in_the_model_file_is_refused_before_anything_is_handed_over() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, protected) = single_file(dir.path(), 9, &Policy::default());
    let original = std::fs::read(&protected).unwrap();
    let holes = large(&plain);
    let k = key();
    let mut inside = 0;
    for i in (0..original.len()).step_by(original.len() / 23).chain([holes[4].end - 1]) {
        let mut b = original.clone();
        b[i] ^= 0x04;
        std::fs::write(&protected, &b).unwrap();
        // Outside the tensors a change may also make the file unreadable or its header invalid.
        let e = InMemory::file(&protected, &k).on_demand(true).model_on_demand(true).load_for_session().unwrap_err();
        if holes.iter().any(|h| h.contains(&i)) {
            assert_eq!(e.kind(), ErrorKind::Modified, "byte {i}: {e}");
            inside += 1;
        }
    }
    assert!(inside >= 10, "{inside} changes inside the large tensors");
}

#[test]
fn a_chunk_changed_on_disk_after_the_load_reads_as_zeros_and_settle_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, protected) = single_file(dir.path(), 17, &Policy::default());
    let original = std::fs::read(&protected).unwrap();
    let k = key();
    // Reading once, the budget is 4 blocks (of 1 MiB): the handler's idle fill stops there,
    // so the last tensor is not read before it is changed.
    let mut lazy = InMemory::file(&protected, &k).on_demand(true).model_on_demand(true).read_once(true).load().unwrap();
    let skeleton = lazy.take_skeleton().unwrap();
    assert_eq!(skeleton.holes.len(), 9);
    // The same file (inode) changed in place inside the last large tensor.
    let i = skeleton.holes[8].end - 100;
    // One byte written in place (a whole rewrite would truncate the file under reads ahead).
    let file = std::fs::OpenOptions::new().write(true).open(&protected).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[original[i] ^ 0x10], i as u64).unwrap();
    // The region's blocks (1 MiB) holding bytes of the file's chunk (1 MiB: a model under
    // 64 MiB) with byte `i` read as zeros; every other byte is right.
    let (chunk, block) = (1 << 20, 1 << 20);
    let bad = i / chunk * chunk..(i / chunk + 1) * chunk;
    let place = |p: usize| {
        let k = skeleton.holes.iter().position(|h| h.contains(&p)).unwrap();
        skeleton.at[k] + (p - skeleton.holes[k].start)
    };
    let blocks: std::collections::BTreeSet<usize> =
        bad.clone().filter(|p| skeleton.holes.iter().any(|h| h.contains(p))).map(|p| place(p) / block).collect();
    assert!(!blocks.is_empty() && blocks.contains(&(place(i) / block)));
    let want = std::fs::read(&plain).unwrap();
    for (h, &at) in skeleton.holes.iter().zip(&skeleton.at) {
        for (k, p) in h.clone().enumerate() {
            let expected = if blocks.contains(&((at + k) / block)) { 0 } else { want[p] };
            assert_eq!(lazy.bytes()[at + k], expected, "file byte {p}");
        }
    }
    assert_eq!(lazy.bytes().settle().unwrap_err().kind(), ErrorKind::Modified);
}

#[test]
fn a_model_file_under_16_mib_is_decrypted_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, protected) = single_file(dir.path(), 3, &Policy::default());
    let k = key();
    let mut m = InMemory::file(&protected, &k).on_demand(true).model_on_demand(true).load().unwrap();
    assert_eq!(m.method(), Method::Mapped);
    assert!(m.take_skeleton().is_none());
    assert!(m[..] == std::fs::read(&plain).unwrap()[..]);
}

#[test]
fn a_model_file_with_external_data_too_has_both_filled_on_demand_in_one_region() {
    use onnx_protect_format::testutil::external_float_tensor;
    let dir = tempfile::tempdir().unwrap();
    let values =
        |i: usize| -> Vec<f32> { (0..DIM * DIM).map(|j| (((i * 5 + j) % 997) as f32 - 498.0) / 512.0).collect() };
    let side: Vec<u8> = (0..2).flat_map(|i| values(10 + i)).flat_map(f32::to_le_bytes).collect();
    std::fs::write(dir.path().join("w.bin"), &side).unwrap();
    let len = (DIM * DIM * 4) as u64;
    let dims = [DIM as i64, DIM as i64];
    let mut tensors: Vec<Vec<u8>> = (0..5).map(|i| float_tensor(&format!("W{i}"), &dims, &values(i))).collect();
    tensors.push(external_float_tensor("W5", &dims, "w.bin", 0, len));
    tensors.push(external_float_tensor("W6", &dims, "w.bin", len, len));
    let plain = dir.path().join("model.onnx");
    std::fs::write(&plain, matmul_chain(&tensors)).unwrap();
    let out = dir.path().join("enc").join("model.onnx");
    encrypt(&plain, &out, &EncryptTo::key(key()), &EncryptOptions::new(&Policy::default())).unwrap();
    let k = key();
    let mut lazy = InMemory::file(&out, &k).on_demand(true).model_on_demand(true).load().unwrap();
    let skeleton = lazy.take_skeleton().expect("the model file's five weights in the region");
    assert_eq!(skeleton.holes.len(), 5);
    let original = std::fs::read(&plain).unwrap();
    for (h, &at) in skeleton.holes.iter().zip(&skeleton.at) {
        assert!(lazy.bytes()[at..at + h.len()] == original[h.clone()], "tensor {h:?}");
    }
    let w = &lazy.external()["w.bin"];
    assert_eq!(w.method(), Method::OnDemand);
    assert!(w[..] == side[..], "the external file");
    lazy.bytes().settle().unwrap();
}
