//! Decryption into memory filled on demand gives the bytes of the decryption into memory
//! for every mode and tier, drops and fills again beyond its budget with the same bytes
//! (a budget of a few blocks for a reader that copies each byte once),
//! checks each chunk against the header's list of chunk hashes when it is read (a changed
//! chunk reads as zeros and `settle` refuses the load; `settle` also finds a change in a
//! chunk never read), refuses a changed file before handing anything over when the header
//! lists no chunk hashes, and ends the process rather than hand over a chunk that changed
//! on disk after it was verified.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};

use onnx_protect_core::error::ErrorKind;
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::memory::{DecryptedModel, InMemory, Method};
use onnx_protect_core::protect::{encrypt, EncryptOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::testutil::{external_float_tensor, matmul_chain};
use onnx_protect_select::Policy;

mod common;
use common::{every_mode, policy, resident_kib};

/// Every MatMul weight is `DIM`²; 4 MiB each, four content chunks (a model under 64 MiB is
/// hashed in 1 MiB chunks, and its region has blocks of 1 MiB).
const DIM: usize = 1024;

fn key(b: u8) -> KeySource {
    KeySource::key(MasterKey::from_bytes([b; 32]))
}

/// A chain of `n` MatMul weights of `DIM`² floats in one external file `w.bin`, from
/// offset 3, protected with `policy` into `dir/enc`.
fn chain(dir: &Path, n: usize, policy: &Policy, k: &KeySource) -> PathBuf {
    let plain = dir.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let len = (DIM * DIM * 4) as u64;
    // Three bytes first: every element straddles the boundaries of chunks and slices.
    let mut data = vec![0xA5; 3];
    let mut tensors = Vec::new();
    for i in 0..n {
        let offset = data.len() as u64;
        data.extend((0..DIM * DIM).flat_map(|j| ((((i * 7 + j) % 1013) as f32 - 506.0) / 512.0).to_le_bytes()));
        tensors.push(external_float_tensor(&format!("W{i}"), &[DIM as i64, DIM as i64], "w.bin", offset, len));
    }
    std::fs::write(plain.join("w.bin"), &data).unwrap();
    protect(dir, &matmul_chain(&tensors), policy, k)
}

/// Writes `model` as `dir/plain/model.onnx` (its external files are there already) and
/// protects it into `dir/enc`.
fn protect(dir: &Path, model: &[u8], policy: &Policy, k: &KeySource) -> PathBuf {
    let plain = dir.join("plain").join("model.onnx");
    std::fs::write(&plain, model).unwrap();
    let out = dir.join("enc").join("model.onnx");
    encrypt(&plain, &out, &EncryptTo::key(k.clone()), &EncryptOptions::new(policy)).unwrap();
    out
}

/// `protected` decrypted on demand and whole, with the same key.
fn both(protected: &Path, k: &KeySource) -> (DecryptedModel, DecryptedModel) {
    let lazy = InMemory::file(protected, k).on_demand(true).load().unwrap();
    let eager = InMemory::file(protected, k).load().unwrap();
    (lazy, eager)
}

fn assert_same(a: &DecryptedModel, b: &DecryptedModel, what: &str) {
    assert!(a[..] == b[..], "{what}: model bytes differ");
    assert_eq!(a.external().keys().collect::<Vec<_>>(), b.external().keys().collect::<Vec<_>>(), "{what}");
    for (l, x) in a.external() {
        assert!(x[..] == b.external()[l][..], "{what}: {l} differs");
    }
}

#[test]
fn filled_on_demand_equals_decrypted_in_memory_in_every_mode() {
    for (what, p) in every_mode() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(5);
        let (lazy, eager) = both(&chain(dir.path(), 3, &p, &k), &k);
        assert_eq!(lazy.external()["w.bin"].method(), Method::OnDemand, "{what}");
        assert_same(&lazy, &eager, what);
    }
}

#[test]
fn one_external_file_per_tensor_is_filled_on_demand_like_one_file() {
    // As `onnx.save_model(..., all_tensors_to_one_file=False)` writes them: small files,
    // each in a block of its own.
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let mut tensors = Vec::new();
    for i in 0..40usize {
        let dim = 8 + i % 5;
        let data: Vec<u8> = (0..dim * dim).flat_map(|j| ((i * 31 + j) as f32 / 97.0).to_le_bytes()).collect();
        let name = format!("w{i}.bin");
        std::fs::write(plain.join(&name), &data).unwrap();
        tensors.push(external_float_tensor(&format!("W{i}"), &[dim as i64, dim as i64], &name, 0, data.len() as u64));
    }
    let k = key(4);
    let out = protect(dir.path(), &matmul_chain(&tensors), &Policy::default(), &k);
    let (lazy, eager) = both(&out, &k);
    assert_eq!(lazy.external().len(), 40);
    assert!(lazy.external().values().all(|d| d.method() == Method::OnDemand));
    assert_same(&lazy, &eager, "one file per tensor");
}

#[test]
fn over_its_budget_it_drops_and_fills_again_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(6);
    // 12 weights of one chunk each: more than the budget (the largest tensor and slack).
    let (lazy, eager) = both(&chain(dir.path(), 12, &Policy::default(), &k), &k);
    let (a, b) = (&lazy.external()["w.bin"], &eager.external()["w.bin"]);
    for round in 0..2 {
        // Backwards, then forwards: chunks dropped in the first round are filled again.
        let order: Vec<usize> = if round == 0 { (0..12).rev().collect() } else { (0..12).collect() };
        for i in order {
            let r = 3 + i * DIM * DIM * 4..3 + (i + 1) * DIM * DIM * 4;
            assert!(a[r.clone()] == b[r], "round {round}, weight {i}");
        }
    }
    // Read by every thread of the rayon pool at once: the handler must not need the pool.
    use rayon::prelude::*;
    (0..12usize).into_par_iter().rev().for_each(|i| {
        let r = 3 + i * DIM * DIM * 4..3 + (i + 1) * DIM * DIM * 4;
        assert!(a[r.clone()] == b[r], "in parallel, weight {i}");
    });
    a.settle().unwrap();
    assert_same(&lazy, &eager, "settled");
}

#[test]
fn partial_and_unsupported_decryptions_are_decrypted_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::from_bytes([9; 32]);
    let mut p = policy(&[("mode", "*=fp"), ("coefficient", "*=0.6")]);
    p.set_tiers(3).unwrap();
    let protected = chain(dir.path(), 2, &p, &KeySource::key(master.clone()));
    let (lazy, eager) = both(&protected, &KeySource::key(master.tier_down()));
    assert_ne!(lazy.external()["w.bin"].method(), Method::OnDemand);
    assert_same(&lazy, &eager, "tier 2 of 3");
}

#[test]
fn a_changed_chunk_reads_as_zeros_and_settle_refuses_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(7);
    let protected = chain(dir.path(), 2, &Policy::default(), &k);
    let side = protected.parent().unwrap().join("w.bin");
    let original = std::fs::read(&side).unwrap();
    let clean = InMemory::file(&protected, &k).load().unwrap();
    let plain = &clean.external()["w.bin"];
    // A model under 64 MiB is hashed in chunks of 1 MiB.
    let chunk = 1 << 20;
    for i in (0..original.len()).step_by(original.len() / 41) {
        let mut b = original.clone();
        b[i] ^= 0x10;
        std::fs::write(&side, &b).unwrap();
        // The header lists every chunk's hash: nothing is read before the load returns.
        let lazy = InMemory::file(&protected, &k).on_demand(true).load().unwrap();
        let w = &lazy.external()["w.bin"];
        assert_eq!(w.method(), Method::OnDemand);
        let bad = i / chunk * chunk..((i / chunk + 1) * chunk).min(w.len());
        for (at, (&got, &want)) in w.iter().zip(plain.iter()).enumerate() {
            if bad.contains(&at) {
                assert_eq!(got, 0, "byte {at} of the changed chunk (byte {i} changed) is not zero");
            } else {
                assert_eq!(got, want, "byte {at} (byte {i} changed)");
            }
        }
        let e = w.settle().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Modified, "byte {i}: {e}");
        assert_eq!(w.settle().unwrap_err().kind(), ErrorKind::Modified, "settled again");
    }
    // A chunk never read before settle is checked by it.
    let mut b = original.clone();
    let last = original.len() - 1;
    b[last] ^= 1;
    std::fs::write(&side, &b).unwrap();
    let lazy = InMemory::file(&protected, &k).on_demand(true).load().unwrap();
    assert_eq!(lazy.external()["w.bin"].settle().unwrap_err().kind(), ErrorKind::Modified);
    // (The file may not change while a result of it lives.)
    drop(lazy);
    std::fs::write(&side, &original).unwrap();
    let lazy = InMemory::file(&protected, &k).on_demand(true).load().unwrap();
    lazy.external()["w.bin"].settle().unwrap();
    assert_same(&lazy, &clean, "unchanged");
}

/// The committed vector with external data, written before headers listed chunk hashes.
fn vector_without_listed_hashes(dir: &Path) -> (PathBuf, KeySource) {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/vectors/external_data_v2_ctr");
    for f in ["model.onnx", "weights.bin", "extra.bin"] {
        std::fs::copy(case.join("protected").join(f), dir.join(f)).unwrap();
    }
    let hex = std::fs::read_to_string(case.join("key.hex")).unwrap();
    let bytes: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex.trim()[2 * i..2 * i + 2], 16).unwrap()).collect();
    (dir.join("model.onnx"), KeySource::key(MasterKey::from_bytes(bytes.try_into().unwrap())))
}

#[test]
fn without_listed_chunk_hashes_a_changed_byte_is_refused_before_anything_is_handed_over() {
    let dir = tempfile::tempdir().unwrap();
    let (protected, k) = vector_without_listed_hashes(dir.path());
    let (lazy, eager) = both(&protected, &k);
    assert_eq!(lazy.external()["weights.bin"].method(), Method::OnDemand);
    assert_same(&lazy, &eager, "the vector");
    drop((lazy, eager));
    let side = dir.path().join("weights.bin");
    let original = std::fs::read(&side).unwrap();
    for i in (0..original.len()).step_by((original.len() / 37).max(1)) {
        let mut b = original.clone();
        b[i] ^= 0x10;
        std::fs::write(&side, &b).unwrap();
        let e = InMemory::file(&protected, &k).on_demand(true).load().err();
        assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::Modified), "byte {i}");
    }
}

/// Run by `a_chunk_changed_after_verification_ends_the_process` in a child process.
#[test]
#[ignore = "run in a child process by a_chunk_changed_after_verification_ends_the_process"]
fn changed_after_verification_child() {
    let Some(dir) = std::env::var_os("ONNX_PROTECT_ONDEMAND_DIR") else { return };
    let k = key(8);
    // More weights than the handler fills ahead: the last is first filled when read.
    let protected = chain(Path::new(&dir), 12, &Policy::default(), &k);
    let lazy = InMemory::file(&protected, &k).on_demand(true).load().unwrap();
    let w = &lazy.external()["w.bin"];
    println!("weight 0 starts with {}", w[0]);
    // Every chunk is verified now; then the last weight changes on disk (in place, same
    // length) before it is read.
    w.settle().unwrap();
    let side = protected.parent().unwrap().join("w.bin");
    let f = std::fs::OpenOptions::new().write(true).open(&side).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x55; 16], (3 + 11 * DIM * DIM * 4 + 100) as u64).unwrap();
    drop(f);
    println!("weight 11 starts with {}", w[3 + 11 * DIM * DIM * 4 + 100]);
}

/// Held by a test that forks (a process about to fork fills every block of every live
/// region: a changed chunk of a settled region would end this process) and by a test whose
/// regions hold changed chunks that nothing read.
static FORKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs the ignored test `name` of this binary in a child process (holding [`FORKS`]),
/// with a fresh directory in `ONNX_PROTECT_ONDEMAND_DIR`: its status, stdout and stderr.
fn run_child(name: &str) -> (std::process::Output, String, String) {
    let _fork = FORKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--nocapture", "--test-threads=1"])
        .env("ONNX_PROTECT_ONDEMAND_DIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn a_chunk_changed_after_verification_ends_the_process() {
    let (out, stdout, stderr) = run_child("changed_after_verification_child");
    assert!(stdout.contains("weight 0 starts with"), "{stdout}\n{stderr}");
    assert!(!stdout.contains("weight 11 starts with"), "a changed chunk was handed over: {stdout}");
    assert!(stderr.contains("w.bin: bytes 46137344..47185920 does not match its hash"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc_sigabrt()), "{:?}", out.status);
}

/// Run by `verified_on_read_a_changed_chunk_read_after_settle_ends_the_process` in a child
/// process.
#[test]
#[ignore = "run in a child process by verified_on_read_a_changed_chunk_read_after_settle_ends_the_process"]
fn changed_before_the_load_verified_on_read_child() {
    let Some(dir) = std::env::var_os("ONNX_PROTECT_ONDEMAND_DIR") else { return };
    let k = key(9);
    let protected = chain(Path::new(&dir), 12, &Policy::default(), &k);
    // The last weight changes on disk before the load.
    let side = protected.parent().unwrap().join("w.bin");
    let f = std::fs::OpenOptions::new().write(true).open(&side).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x55; 16], (3 + 11 * DIM * DIM * 4 + 100) as u64).unwrap();
    drop(f);
    let lazy = InMemory::file(&protected, &k).on_demand(true).verify_on_read(true).load().unwrap();
    let w = &lazy.external()["w.bin"];
    println!("weight 0 starts with {}", w[0]);
    // Nothing read the changed chunk: the load stands.
    w.settle().unwrap();
    println!("settled");
    println!("weight 11 starts with {}", w[3 + 11 * DIM * DIM * 4 + 100]);
}

#[test]
fn verified_on_read_a_changed_chunk_read_after_settle_ends_the_process() {
    let (out, stdout, stderr) = run_child("changed_before_the_load_verified_on_read_child");
    assert!(stdout.contains("weight 0 starts with") && stdout.contains("settled"), "{stdout}\n{stderr}");
    assert!(!stdout.contains("weight 11 starts with"), "a changed chunk was handed over: {stdout}");
    assert!(stderr.contains("w.bin: bytes 46137344..47185920 does not match its hash"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc_sigabrt()), "{:?}", out.status);
}

#[test]
fn verified_on_read_a_changed_chunk_read_before_settle_refuses_the_load_and_unchanged_bytes_are_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(10);
    let protected = chain(dir.path(), 3, &Policy::default(), &k);
    let clean = InMemory::file(&protected, &k).load().unwrap();
    let lazy = InMemory::file(&protected, &k).on_demand(true).verify_on_read(true).load().unwrap();
    assert_eq!(lazy.external()["w.bin"].method(), Method::OnDemand);
    lazy.external()["w.bin"].settle().unwrap();
    assert_same(&lazy, &clean, "verified on read");
    drop(lazy);
    let side = protected.parent().unwrap().join("w.bin");
    let original = std::fs::read(&side).unwrap();
    let mut b = original.clone();
    b[5] ^= 0x10;
    std::fs::write(&side, &b).unwrap();
    let lazy = InMemory::file(&protected, &k).on_demand(true).verify_on_read(true).load().unwrap();
    let w = &lazy.external()["w.bin"];
    assert_eq!(w[0], 0, "the changed chunk reads as zeros");
    assert_eq!(w.settle().unwrap_err().kind(), ErrorKind::Modified);
}

/// `SIGABRT`, the same on every Linux architecture.
fn libc_sigabrt() -> i32 {
    6
}

/// A model `y = Gather(T, ids) · W0`: a table `T` of `rows` × `DIM` floats only gathered
/// from (an embedding), then a `DIM`² weight, in one external file `w.bin`, protected into
/// `dir/enc`.
fn embedding(dir: &Path, rows: usize, k: &KeySource) -> PathBuf {
    use onnx_protect_format::testutil::{model_with_graph, node};
    use onnx_protect_format::wire::put_len_field;
    let plain = dir.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let table: Vec<u8> = (0..rows * DIM).flat_map(|j| ((j % 997) as f32 / 997.0).to_le_bytes()).collect();
    let weight: Vec<u8> = (0..DIM * DIM).flat_map(|j| ((j % 89) as f32 - 44.0).to_le_bytes()).collect();
    let mut g = Vec::new();
    put_len_field(&mut g, 1, &node("Gather", &["T", "ids"], &["e"], "embed"));
    put_len_field(&mut g, 1, &node("MatMul", &["e", "W0"], &["y"], "mm"));
    put_len_field(&mut g, 2, b"embedding");
    let t_len = table.len() as u64;
    put_len_field(&mut g, 5, &external_float_tensor("T", &[rows as i64, DIM as i64], "w.bin", 0, t_len));
    put_len_field(&mut g, 5, &external_float_tensor("W0", &[DIM as i64; 2], "w.bin", t_len, weight.len() as u64));
    for (field, name) in [(11, "ids"), (12, "y")] {
        let mut v = Vec::new();
        put_len_field(&mut v, 1, name.as_bytes());
        put_len_field(&mut g, field, &v);
    }
    std::fs::write(plain.join("w.bin"), [table, weight].concat()).unwrap();
    protect(dir, &model_with_graph(&g), &Policy::default(), k)
}

#[test]
fn a_change_in_a_gathered_table_that_nothing_reads_is_refused_by_settle() {
    // The table's chunks are hashed on a thread of their own while the load is in use;
    // `settle` reports what it found, wherever the change is.
    let _no_fork = FORKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let k = key(9);
    let rows = 3 * DIM + 17; // 3 chunks and a bit: the last one shared with the weight
    let protected = embedding(dir.path(), rows, &k);
    let (lazy, eager) = both(&protected, &k);
    assert_eq!(lazy.external()["w.bin"].method(), Method::OnDemand);
    lazy.external()["w.bin"].settle().unwrap();
    assert_same(&lazy, &eager, "unchanged");
    drop((lazy, eager));
    let side = protected.parent().unwrap().join("w.bin");
    let original = std::fs::read(&side).unwrap();
    let table_len = rows * DIM * 4;
    for i in [0, table_len / 2, table_len - 1, original.len() - 1] {
        let mut b = original.clone();
        b[i] ^= 0x40;
        std::fs::write(&side, &b).unwrap();
        // Also for a reader that copies once, whose tables are hashed by `settle` itself.
        for read_once in [false, true] {
            let lazy = InMemory::file(&protected, &k).on_demand(true).read_once(read_once).load().unwrap();
            let e = lazy.external()["w.bin"].settle().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Modified, "byte {i}, read_once {read_once}: {e}");
            let again = lazy.external()["w.bin"].settle().unwrap_err();
            assert_eq!(again.kind(), ErrorKind::Modified, "byte {i}, read_once {read_once}, again");
        }
        // Dropped before `settle`, whatever the thread is doing.
        let early = InMemory::file(&protected, &k).on_demand(true).load().unwrap();
        drop(early);
    }
    std::fs::write(&side, &original).unwrap();
}

/// One weight of 48 chunks (48 MiB, as `w.bin`), protected with the built-in policy: the
/// region's budget holds all of it.
fn one_weight(dir: &Path, k: &KeySource) -> PathBuf {
    let plain = dir.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let rows = 12 * DIM;
    let data: Vec<u8> = (0..rows * DIM).flat_map(|j| (((j % 1013) as f32 - 506.0) / 512.0).to_le_bytes()).collect();
    std::fs::write(plain.join("w.bin"), &data).unwrap();
    let w = external_float_tensor("W0", &[rows as i64, DIM as i64], "w.bin", 0, data.len() as u64);
    protect(dir, &matmul_chain(&[w]), &Policy::default(), k)
}

#[test]
fn for_a_reader_that_copies_once_the_region_holds_a_few_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(7);
    // A reader of whole tensors keeps it all while the session is built; one that copies
    // each byte once needs only the slack.
    let protected = one_weight(dir.path(), &k);
    let eager = InMemory::file(&protected, &k).load().unwrap();
    let mut held = Vec::new();
    for read_once in [false, true] {
        let m = InMemory::file(&protected, &k).on_demand(true).read_once(read_once).load().unwrap();
        let a = &m.external()["w.bin"];
        assert_eq!(a.method(), Method::OnDemand);
        for (i, (x, y)) in a.chunks(1 << 20).zip(eager.external()["w.bin"].chunks(1 << 20)).enumerate() {
            assert!(x == y, "read_once {read_once}: MiB {i}");
        }
        held.push(resident_kib(a.as_ptr()));
        a.settle().unwrap();
        assert_same(&m, &eager, "settled");
    }
    let block_kib = 1 << 10;
    assert!(held[0] >= 48 * block_kib, "a reader of whole tensors: {} KiB held", held[0]);
    assert!(held[1] <= 7 * block_kib, "a reader that copies once: {} KiB held", held[1]);
}

#[test]
fn for_a_reader_of_few_weights_only_the_blocks_read_are_filled() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(8);
    let protected = one_weight(dir.path(), &k);
    let eager = InMemory::file(&protected, &k).load().unwrap();
    let block = 1 << 20;
    let mut held = Vec::new();
    for reads_few in [false, true] {
        let m = InMemory::file(&protected, &k).on_demand(true).reads_few(reads_few).load().unwrap();
        let (a, b) = (&m.external()["w.bin"], &eager.external()["w.bin"]);
        assert_eq!(a.method(), Method::OnDemand);
        // Three blocks far apart.
        for i in [37, 9, 25] {
            let r = i * block..(i + 1) * block;
            assert!(a[r.clone()] == b[r], "reads_few {reads_few}: block {i}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        held.push(resident_kib(a.as_ptr()));
        // Every block read at once by the rayon pool, in no order: every fault is served.
        use rayon::prelude::*;
        (0..48usize).into_par_iter().rev().for_each(|i| {
            let r = i * block..(i + 1) * block;
            assert!(a[r.clone()] == b[r], "reads_few {reads_few}: in parallel, block {i}");
        });
        a.settle().unwrap();
        assert_same(&m, &eager, "settled");
    }
    // By default the handler fills ahead and while idle; for a reader of few weights it
    // fills the three blocks read (and holds its own block).
    let block_kib = 1 << 10;
    assert!(held[0] >= 8 * block_kib, "by default: {} KiB held", held[0]);
    assert!(held[1] <= 4 * block_kib, "reads_few: {} KiB held after reading three blocks", held[1]);
}
