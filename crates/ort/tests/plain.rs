//! Sessions of protected models (`onnx_protect_ort::commit_from_file`) give the plain
//! model's outputs, bit for bit, on every fixture and zoo model; the digits models'
//! weights are used in place; a Transpose'd external weight is right; a changed byte,
//! a wrong key and the options that would write plaintext are handled.
//!
//! They need libonnxruntime (`onnx_protect_ort::find_onnxruntime`: `ORT_DYLIB_PATH`, or
//! the onnxruntime Python wheel). Without one they skip with a message, unless
//! `ONNX_PROTECT_REQUIRE_ORT` is set (scripts/test.sh sets it: there, a missing library
//! is a failure).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};

use onnx_protect_core::error::ErrorKind;
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::protect::{encrypt, EncryptOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_npy::{Dtype, NpyArray};
use onnx_protect_ort::{commit_from_file, commit_from_file_as, environment, Error, Load, ProtectedSession};
use onnx_protect_select::Policy;
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType as T, ValueType};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn env() -> Option<Environment> {
    match environment() {
        Ok(e) => Some(e),
        Err(Error::Library(msg)) if std::env::var_os("ONNX_PROTECT_REQUIRE_ORT").is_none() => {
            eprintln!("skipped: {msg}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn key() -> KeySource {
    KeySource::key(MasterKey::generate().unwrap())
}

/// Copies `model` (and the files beside it) into `dir`/plain and encrypts every
/// selectable weight into `dir`/enc; returns the protected model's path.
fn protect(model: &Path, dir: &Path, key: &KeySource) -> PathBuf {
    let (plain, enc) = (dir.join("plain"), dir.join("enc"));
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::create_dir_all(&enc).unwrap();
    for f in std::fs::read_dir(model.parent().unwrap()).unwrap() {
        let f = f.unwrap().path();
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
        if f.is_file() && (f == model || matches!(ext, "bin" | "data")) {
            std::fs::copy(&f, plain.join(f.file_name().unwrap())).unwrap();
        }
    }
    let mut policy = Policy::default();
    policy.apply_override("coefficient", "*=1").unwrap();
    let mut opts = EncryptOptions::new(&policy);
    opts.allow_empty = true;
    let name = model.file_name().unwrap();
    encrypt(&plain.join(name), &enc.join(name), &EncryptTo::key(key.clone()), &opts).unwrap();
    enc.join(name)
}

/// `model` protected under a new key in a new folder: (the folder, the key, the model).
fn protected(model: &Path) -> (tempfile::TempDir, KeySource, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let k = key();
    let enc = protect(model, dir.path(), &k);
    (dir, k, enc)
}

fn models() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let r = root();
    for dir in std::fs::read_dir(r.join("fixtures/models")).unwrap() {
        let m = dir.unwrap().path().join("model.onnx");
        if m.exists() {
            out.push(m);
        }
    }
    for dir in [
        "fixtures/digits",
        "fixtures/zoo/digits",
        "fixtures/zoo/families",
        "fixtures/zoo/ops",
        "fixtures/zoo/osuleaf",
        "fixtures/zoo/vowels",
    ] {
        let Ok(rd) = std::fs::read_dir(r.join(dir)) else { continue };
        for f in rd {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "onnx") {
                out.push(f);
            }
        }
    }
    out.sort();
    out
}

/// A model's inputs by name, and its outputs as their types and bytes.
type Feeds = Vec<(String, DynValue)>;
type Outputs = Vec<(T, Vec<u8>)>;

fn le<const N: usize, X>(bytes: &[u8], f: fn([u8; N]) -> X) -> Vec<X> {
    bytes.chunks_exact(N).map(|c| f(c.try_into().unwrap())).collect()
}

/// A tensor of element type `ty` from little-endian bytes.
fn tensor(ty: T, shape: Vec<i64>, bytes: &[u8]) -> DynValue {
    match ty {
        T::Float32 => Tensor::from_array((shape, le(bytes, f32::from_le_bytes))).unwrap().into_dyn(),
        T::Float64 => Tensor::from_array((shape, le(bytes, f64::from_le_bytes))).unwrap().into_dyn(),
        T::Float16 => Tensor::from_array((shape, le(bytes, half::f16::from_le_bytes))).unwrap().into_dyn(),
        T::Int64 => Tensor::from_array((shape, le(bytes, i64::from_le_bytes))).unwrap().into_dyn(),
        T::Int32 => Tensor::from_array((shape, le(bytes, i32::from_le_bytes))).unwrap().into_dyn(),
        T::Uint8 => Tensor::from_array((shape, bytes.to_vec())).unwrap().into_dyn(),
        T::Bool => {
            Tensor::from_array((shape, bytes.iter().map(|&b| b != 0).collect::<Vec<bool>>())).unwrap().into_dyn()
        }
        other => panic!("no test input of type {other:?}"),
    }
}

/// The stored input of a zoo model (its first 64 rows), else seeded inputs of the
/// declared types (dynamic dimensions 2; floats in [-1, 1), integers 0 or 1).
fn inputs(session: &Session, model: &Path) -> Feeds {
    let stem = model.file_stem().unwrap().to_str().unwrap();
    let dir = model.parent().unwrap();
    let stored = [dir.join(format!("{stem}.x.npy")), dir.join("ref_x.npy"), dir.join("test_x.npy")];
    if session.inputs().len() == 1 {
        if let Some(x) = stored.iter().find(|p| p.exists()) {
            let a = NpyArray::read(x).unwrap();
            let rows = a.shape[0].min(64);
            let per_row = a.data.len() / a.shape[0];
            let mut shape: Vec<i64> = a.shape.iter().map(|&d| d as i64).collect();
            shape[0] = rows as i64;
            let ty = match a.dtype {
                Dtype::F32 => T::Float32,
                Dtype::I64 => T::Int64,
                other => panic!("{}: stored input of type {other:?}", x.display()),
            };
            return vec![(session.inputs()[0].name().to_string(), tensor(ty, shape, &a.data[..rows * per_row]))];
        }
    }
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    session
        .inputs()
        .iter()
        .map(|i| {
            let ValueType::Tensor { ty, shape, .. } = i.dtype() else {
                panic!("{}: input {} is not a tensor", model.display(), i.name())
            };
            let dims: Vec<i64> = shape.iter().map(|&d| if d > 0 { d } else { 2 }).collect();
            let n = dims.iter().product::<i64>() as usize;
            let size = match ty {
                T::Float64 | T::Int64 => 8,
                T::Float32 | T::Int32 => 4,
                T::Float16 => 2,
                _ => 1,
            };
            let mut bytes = Vec::with_capacity(n * size);
            for _ in 0..n {
                let r = next();
                match ty {
                    T::Float32 => bytes.extend(((r >> 40) as f32 / (1u64 << 23) as f32 - 1.0).to_le_bytes()),
                    T::Float64 => bytes.extend(((r >> 11) as f64 / (1u64 << 52) as f64 - 1.0).to_le_bytes()),
                    T::Float16 => {
                        bytes.extend(half::f16::from_f32((r >> 40) as f32 / (1u64 << 23) as f32 - 1.0).to_le_bytes())
                    }
                    _ => bytes.extend(&((r & 1) as i64).to_le_bytes()[..size]),
                }
            }
            (i.name().to_string(), tensor(*ty, dims, &bytes))
        })
        .collect()
}

/// Every output of one run, as its type and little-endian bytes.
fn run(session: &mut Session, feeds: &[(String, DynValue)]) -> Outputs {
    let feeds: Vec<(String, SessionInputValue<'_>)> = feeds.iter().map(|(n, v)| (n.clone(), v.into())).collect();
    let outputs = session.run(feeds).unwrap();
    outputs
        .values()
        .map(|v| {
            let ValueType::Tensor { ty, .. } = v.dtype() else { panic!("an output that is not a tensor") };
            let bytes: Vec<u8> = match ty {
                T::Float32 => v.try_extract_tensor::<f32>().unwrap().1.iter().flat_map(|x| x.to_le_bytes()).collect(),
                T::Float64 => v.try_extract_tensor::<f64>().unwrap().1.iter().flat_map(|x| x.to_le_bytes()).collect(),
                T::Float16 => {
                    v.try_extract_tensor::<half::f16>().unwrap().1.iter().flat_map(|x| x.to_le_bytes()).collect()
                }
                T::Int64 => v.try_extract_tensor::<i64>().unwrap().1.iter().flat_map(|x| x.to_le_bytes()).collect(),
                T::Int32 => v.try_extract_tensor::<i32>().unwrap().1.iter().flat_map(|x| x.to_le_bytes()).collect(),
                T::Uint8 => v.try_extract_tensor::<u8>().unwrap().1.to_vec(),
                T::Bool => v.try_extract_tensor::<bool>().unwrap().1.iter().map(|&b| b as u8).collect(),
                other => panic!("no comparison for outputs of type {other:?}"),
            };
            (*ty, bytes)
        })
        .collect()
}

fn plain_session(env: &Environment, model: &Path) -> Session {
    Session::builder(env).unwrap().commit_from_file(model).unwrap()
}

fn protected_session(env: &Environment, model: &Path, key: &KeySource) -> ProtectedSession {
    commit_from_file(Session::builder(env).unwrap(), model, key).unwrap_or_else(|e| panic!("{}: {e}", model.display()))
}

/// The plain model's test inputs and its outputs for them.
fn plain_outputs(env: &Environment, model: &Path) -> (Feeds, Outputs) {
    let mut plain = plain_session(env, model);
    let feeds = inputs(&plain, model);
    let want = run(&mut plain, &feeds);
    (feeds, want)
}

#[test]
fn every_fixture_and_zoo_model_gives_the_plain_session_s_outputs() {
    let Some(env) = env() else { return };
    let models = models();
    assert!(models.len() >= 20, "the fixtures are there: {models:?}");
    for model in models {
        let (_dir, k, enc) = protected(&model);
        let (feeds, want) = plain_outputs(&env, &model);
        let mut s = protected_session(&env, &enc, &k);
        assert_eq!(run(&mut s, &feeds), want, "{}", model.display());
        if model.parent().unwrap().ends_with("fixtures/digits") {
            assert!(s.shared_initializers() > 0, "{}: its MatMul/Gemm weights are used in place", model.display());
        }
    }
}

#[test]
fn the_external_data_model_s_weights_are_used_in_place_filled_on_demand_verified_on_read_read_few_or_decrypted_whole() {
    let Some(env) = env() else { return };
    let model = root().join("fixtures/models/external_data/model.onnx");
    let (_dir, k, enc) = protected(&model);
    let (feeds, want) = plain_outputs(&env, &model);
    for (on_demand, verify_on_read, reads_few) in
        [(true, false, false), (false, false, false), (true, true, false), (true, false, true), (true, true, true)]
    {
        let load = Load { on_demand, verify_on_read, reads_few, ..Load::default() };
        let mut s = commit_from_file_as(Session::builder(&env).unwrap(), &enc, &k, &load).unwrap();
        assert!(s.shared_initializers() > 0 && s.shared_bytes() > 0, "on_demand {on_demand}");
        assert_eq!(s.files_in_place(), reads_files_in_place(), "files in memory where onnxruntime reads them in place");
        // Filled on demand wherever the kernel lets this process use userfaultfd.
        assert_eq!(
            s.filled_on_demand(),
            on_demand && onnx_protect_fsio::ondemand::available(),
            "on_demand {on_demand}"
        );
        assert_eq!(run(&mut s, &feeds), want, "on_demand {on_demand}");
    }
}

/// Whether the libonnxruntime found is 1.31 or later, read from its file name (the
/// onnxruntime wheel's `libonnxruntime.so.1.N.P`); `false` when the name has no version.
fn reads_files_in_place() -> bool {
    let lib = onnx_protect_ort::find_onnxruntime().unwrap();
    let name = lib.file_name().unwrap().to_string_lossy().into_owned();
    let Some(version) = name.split(".so.").nth(1) else { return false };
    let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    parts.len() >= 2 && (parts[0], parts[1]) >= (1, 31)
}

#[test]
fn a_transposed_external_weight_is_right() {
    // W feeds a Transpose that onnxruntime folds from the graph's data while it optimises:
    // W stays in the graph (decrypted), V is shared. A graph that named the ciphertext
    // file for W would fold ciphertext and give other outputs.
    let Some(env) = env() else { return };
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/transposed/model.onnx");
    let (_dir, k, enc) = protected(&model);
    let (a, b) = (
        std::fs::read(model.with_file_name("weights.bin")).unwrap(),
        std::fs::read(enc.with_file_name("weights.bin")).unwrap(),
    );
    assert_ne!(a, b, "the weights are encrypted");
    let (feeds, want) = plain_outputs(&env, &model);
    // onnxruntime resolves external data of a model given as bytes in the current
    // directory: run where the ciphertext file is.
    let cwd = std::env::current_dir().unwrap();
    std::env::set_current_dir(enc.parent().unwrap()).unwrap();
    let s = commit_from_file(Session::builder(&env).unwrap(), &enc, &k);
    std::env::set_current_dir(cwd).unwrap();
    let mut s = s.unwrap();
    // From files in memory both are in place (the Transpose folded from the real bytes);
    // as initializers V only.
    assert_eq!(s.shared_initializers(), if s.files_in_place() { 2 } else { 1 }, "V only");
    assert_eq!(run(&mut s, &feeds), want);
}

#[test]
fn a_model_protected_into_its_own_folder_runs_once_the_plain_files_are_gone() {
    // Protected next to the plain model, the side file is renamed ('<name>.data') and the
    // decrypted model names 'weights.bin' again: its external data comes from the
    // decrypted files in memory, whether 'weights.bin' is gone or a stranger's file.
    // 'm.onnx.data' has the length of 'weights.bin': that decryption changes no length.
    let Some(env) = env() else { return };
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/transposed/model.onnx");
    let (feeds, want) = plain_outputs(&env, &model);
    let mut policy = Policy::default();
    policy.apply_override("coefficient", "*=1").unwrap();
    let opts = EncryptOptions::new(&policy);
    for name in ["model.enc.onnx", "m.onnx"] {
        let dir = tempfile::tempdir().unwrap();
        for f in ["model.onnx", "weights.bin"] {
            std::fs::copy(model.with_file_name(f), dir.path().join(f)).unwrap();
        }
        let k = key();
        let enc = dir.path().join(name);
        encrypt(&dir.path().join("model.onnx"), &enc, &EncryptTo::key(k.clone()), &opts).unwrap();
        assert!(dir.path().join(format!("{name}.data")).exists(), "{name}: the side file is renamed");
        std::fs::remove_file(dir.path().join("model.onnx")).unwrap();
        std::fs::remove_file(dir.path().join("weights.bin")).unwrap();
        let mut s = protected_session(&env, &enc, &k);
        assert_eq!(run(&mut s, &feeds), want, "{name}");
        assert_eq!(s.shared_initializers(), if s.files_in_place() { 2 } else { 1 }, "{name}: V in place");
        std::fs::write(dir.path().join("weights.bin"), [0u8; 7]).unwrap();
        assert_eq!(run(&mut protected_session(&env, &enc, &k), &feeds), want, "{name}, another weights.bin");
    }
}

#[test]
fn a_changed_byte_and_a_wrong_key_are_refused_with_their_kind() {
    let Some(env) = env() else { return };
    let model = root().join("fixtures/digits/mlp.onnx");
    let (dir, k, enc) = protected(&model);
    let e = commit_from_file(Session::builder(&env).unwrap(), &enc, &key()).err().expect("another key is refused");
    assert_eq!(e.kind(), Some(ErrorKind::WrongKey), "{e}");
    assert!(e.to_string().starts_with(&enc.display().to_string()), "the error names the file: {e}");
    let mut bytes = std::fs::read(&enc).unwrap();
    let len = bytes.len();
    for at in [len / 3, len / 2, len - 40] {
        bytes[at] ^= 1;
        let changed = dir.path().join("changed.onnx");
        std::fs::write(&changed, &bytes).unwrap();
        bytes[at] ^= 1;
        assert!(commit_from_file(Session::builder(&env).unwrap(), &changed, &k).is_err(), "byte {at} changed");
    }
}

#[test]
fn options_that_would_write_the_decrypted_model_are_switched_off() {
    let Some(env) = env() else { return };
    let model = root().join("fixtures/digits/mlp.onnx");
    let (dir, k, enc) = protected(&model);
    let out = dir.path().join("written");
    std::fs::create_dir(&out).unwrap();
    let builder = Session::builder(&env)
        .unwrap()
        .with_optimized_model_path(out.join("optimized.onnx"))
        .unwrap()
        .with_config_entry("ep.context_enable", "1")
        .unwrap()
        .with_config_entry("ep.context_file_path", out.join("ctx.onnx").to_str().unwrap())
        .unwrap();
    let mut s = commit_from_file(builder, &enc, &k).unwrap();
    let mut plain = plain_session(&env, &model);
    let feeds = inputs(&plain, &model);
    assert_eq!(run(&mut s, &feeds), run(&mut plain, &feeds));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "nothing written");

    // The check can fail: the same options on the plain model do write the model.
    let mut builder = Session::builder(&env).unwrap().with_optimized_model_path(out.join("optimized.onnx")).unwrap();
    drop(builder.commit_from_file(&model).unwrap());
    assert!(out.join("optimized.onnx").exists());
}

/// `y = x · W0 · … · W5`, each weight 1024² float32 in the model file (24 MiB): typed
/// input and output, encoded here.
fn single_file_chain(path: &Path) {
    use onnx_protect_format::testutil::{float_tensor, model_with_graph, node};
    use onnx_protect_format::wire::{put_len_field, put_tag, put_varint, WireType};
    let dim = 1024usize;
    let typed = |name: &str| {
        let mut shape = Vec::new();
        for d in [2, dim as u64] {
            let mut dimension = Vec::new();
            put_tag(&mut dimension, 1, WireType::Varint);
            put_varint(&mut dimension, d);
            put_len_field(&mut shape, 1, &dimension);
        }
        let mut tensor = Vec::new();
        put_tag(&mut tensor, 1, WireType::Varint);
        put_varint(&mut tensor, 1);
        put_len_field(&mut tensor, 2, &shape);
        let mut ty = Vec::new();
        put_len_field(&mut ty, 1, &tensor);
        let mut vi = Vec::new();
        put_len_field(&mut vi, 1, name.as_bytes());
        put_len_field(&mut vi, 2, &ty);
        vi
    };
    let mut g = Vec::new();
    for i in 0..6 {
        let (x, y) = (
            if i == 0 { "x".to_string() } else { format!("h{i}") },
            if i == 5 { "y".to_string() } else { format!("h{}", i + 1) },
        );
        put_len_field(&mut g, 1, &node("MatMul", &[x.as_str(), &format!("W{i}")], &[y.as_str()], &format!("mm{i}")));
    }
    put_len_field(&mut g, 2, b"chain");
    for i in 0..6 {
        let w: Vec<f32> = (0..dim * dim).map(|j| (((i * 31 + j) % 977) as f32 - 488.0) / (488.0 * 32.0)).collect();
        put_len_field(&mut g, 5, &float_tensor(&format!("W{i}"), &[dim as i64, dim as i64], &w));
    }
    put_len_field(&mut g, 11, &typed("x"));
    put_len_field(&mut g, 12, &typed("y"));
    std::fs::write(path, model_with_graph(&g)).unwrap();
}

#[test]
fn a_single_file_model_s_weights_are_filled_on_demand_with_the_plain_outputs() {
    let Some(env) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    single_file_chain(&model);
    let k = key();
    let enc = protect(&model, &dir.path().join("p"), &k);
    let (feeds, want) = plain_outputs(&env, &model);
    for on_demand in [true, false] {
        let load = Load { on_demand, ..Load::default() };
        let mut s = commit_from_file_as(Session::builder(&env).unwrap(), &enc, &k, &load).unwrap();
        let expected = on_demand && reads_files_in_place() && onnx_protect_fsio::ondemand::available();
        assert_eq!(s.filled_on_demand(), expected, "on_demand {on_demand}");
        assert_eq!(run(&mut s, &feeds), want, "on_demand {on_demand}");
    }
}
