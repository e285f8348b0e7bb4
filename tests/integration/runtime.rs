//! In-memory decryption restores every fixture byte for byte (external data
//! included); `run` and `assess` work on the fixtures through the binary.

use std::path::{Path, PathBuf};

use onnx_protect_core::memory::{decrypt_in_memory, decrypt_model_in_memory, Method};
use onnx_protect_core::protect::{encrypt, EncryptOptions, KeySource};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{Model, NoProgress};
use onnx_protect_select::Policy;

use crate::util::{copy_fixture, fixture_models, root, run};

fn key() -> KeySource {
    KeySource::Key(MasterKey::from_bytes([9; 32]))
}

fn policy(mode: &str, coefficient: &str) -> Policy {
    let mut p = Policy::default();
    p.apply_override("mode", &format!("*={mode}")).unwrap();
    p.apply_override("coefficient", &format!("*={coefficient}")).unwrap();
    p
}

/// Encrypts `model` into `dir/enc/<name>` (external files beside it).
fn protect(model: &Path, dir: &Path, p: &Policy) -> PathBuf {
    let out = dir.join("enc").join(model.file_name().unwrap());
    encrypt(model, &out, &key(), &EncryptOptions { policy: p, in_place: false, progress: &NoProgress })
        .unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    out
}

#[test]
fn every_fixture_decrypts_in_memory_byte_identically() {
    let mut models = fixture_models();
    models.extend(["cnn", "mlp", "convmixer", "vit"].iter().map(|m| root().join(format!("fixtures/digits/{m}.onnx"))));
    let mut mapped = 0;
    for model in &models {
        for (mode, c) in [("ctr", "1"), ("fp", "0.25"), ("ctr", "0.05")] {
            let dir = tempfile::tempdir().unwrap();
            let enc = protect(model, dir.path(), &policy(mode, c));
            let before = std::fs::read(&enc).unwrap();
            let d = decrypt_in_memory(&enc, &key()).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
            assert!(&d[..] == std::fs::read(model).unwrap().as_slice(), "{} {mode} {c}", model.display());
            let original = Model::open(model).unwrap();
            assert_eq!(d.external().len(), original.external_files.len());
            for f in &original.external_files {
                let got = d.external().get(&f.location).expect("every external file is returned");
                assert!(&got[..] == std::fs::read(&f.path).unwrap().as_slice(), "{}", f.location);
            }
            if d.method() == Method::Mapped {
                mapped += 1;
            }
            // The same through an already-open model.
            let m = Model::open(&enc).unwrap();
            assert!(decrypt_model_in_memory(&m, &key()).unwrap()[..] == d[..]);
            drop(d);
            assert!(std::fs::read(&enc).unwrap() == before, "decrypting in memory must not write the file");
        }
    }
    // Only models with varint-stored weights need the copying fallback.
    assert!(mapped >= 3 * (models.len() - 2), "only {mapped} results were mapped");
}

#[test]
fn external_data_fixture_is_patched_in_private_maps() {
    let model = root().join("fixtures/models/external_data/model.onnx");
    let (_g, copy) = copy_fixture(&model);
    let dir = tempfile::tempdir().unwrap();
    let enc = protect(&copy, dir.path(), &policy("ctr", "1"));
    let d = decrypt_in_memory(&enc, &key()).unwrap();
    assert_eq!(d.method(), Method::Mapped);
    for (loc, bytes) in d.external() {
        assert_eq!(bytes.method(), Method::Mapped, "{loc}");
        assert!(&bytes[..] == std::fs::read(copy.parent().unwrap().join(loc)).unwrap().as_slice());
        assert!(&bytes[..] != std::fs::read(enc.parent().unwrap().join(loc)).unwrap().as_slice(), "{loc} encrypted");
    }
}

#[test]
fn decrypt_stdout_refuses_terminals_and_files_but_not_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("fixtures/digits/mlp.onnx");
    let enc = protect(&model, dir.path(), &policy("fp", "0.25"));
    let k = dir.path().join("k.key");
    std::fs::write(&k, format!("{}\n", "09".repeat(32))).unwrap();
    // A pipe: the decrypted model.
    let out = std::process::Command::new(crate::util::bin())
        .args(["decrypt", enc.to_str().unwrap(), "--key-file", k.to_str().unwrap(), "--stdout"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == std::fs::read(&model).unwrap());
    // A regular file: refused, nothing written.
    let target = dir.path().join("plain.onnx");
    let f = std::fs::File::create(&target).unwrap();
    let st = std::process::Command::new(crate::util::bin())
        .args(["decrypt", enc.to_str().unwrap(), "--key-file", k.to_str().unwrap(), "--stdout"])
        .stdout(f)
        .status()
        .unwrap();
    assert_ne!(st.code(), Some(0));
    assert_eq!(std::fs::metadata(&target).unwrap().len(), 0);
    // --tier cannot be honoured by the in-memory path: a usage error, not silently ignored.
    let out = std::process::Command::new(crate::util::bin())
        .args(["decrypt", enc.to_str().unwrap(), "--key-file", k.to_str().unwrap(), "--stdout", "--tier", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
}

#[cfg(feature = "tract")]
mod with_tract {
    use super::*;
    use onnx_protect_runtime::npy::NpyArray;

    fn write_key(dir: &Path) -> PathBuf {
        let k = dir.join("k.key");
        std::fs::write(&k, format!("{}\n", "09".repeat(32))).unwrap();
        k
    }

    fn digits(name: &str) -> PathBuf {
        root().join(format!("fixtures/digits/{name}.onnx"))
    }

    fn test_x(dir: &Path, n: usize) -> PathBuf {
        let x = NpyArray::read(&root().join("fixtures/digits/test_x.npy")).unwrap().rows(0, n).unwrap();
        let p = dir.join("x.npy");
        x.write(&p).unwrap();
        p
    }

    fn json(args: &[&str]) -> serde_json::Value {
        let (code, out, err) = run(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    #[test]
    fn run_with_the_key_gives_the_original_outputs_and_writes_npy() {
        for name in ["cnn", "mlp", "convmixer", "vit"] {
            let dir = tempfile::tempdir().unwrap();
            let enc = protect(&digits(name), dir.path(), &policy("ctr", "0.2"));
            let k = write_key(dir.path());
            let x = test_x(dir.path(), 32);
            let input = format!("input={}", x.display());
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            let plain = json(&[
                "run",
                digits(name).to_str().unwrap(),
                "--input",
                &input,
                "--output-dir",
                a.to_str().unwrap(),
                "--json",
            ]);
            assert_eq!(plain["weights"], "plain");
            let dec = json(&[
                "run",
                enc.to_str().unwrap(),
                "--key-file",
                k.to_str().unwrap(),
                "--input",
                &input,
                "--output-dir",
                b.to_str().unwrap(),
                "--json",
            ]);
            assert_eq!(dec["weights"], "decrypted");
            assert_eq!(dec["outputs"][0]["name"], "logits");
            assert_eq!(dec["outputs"][0]["shape"], serde_json::json!([32, 10]));
            assert_eq!(dec["outputs"][0]["non_finite"], 0);
            let (ya, yb) = (std::fs::read(a.join("logits.npy")).unwrap(), std::fs::read(b.join("logits.npy")).unwrap());
            assert!(ya == yb, "{name}: decrypted outputs differ from the original's");
            let arr = NpyArray::read(&b.join("logits.npy")).unwrap();
            assert_eq!(arr.shape, vec![32, 10]);
        }
    }

    #[test]
    fn run_without_the_key_shows_what_a_copier_gets() {
        let dir = tempfile::tempdir().unwrap();
        let enc = protect(&digits("cnn"), dir.path(), &policy("ctr", "0.2"));
        let x = test_x(dir.path(), 16);
        // A one-input model takes a bare FILE.npy.
        let (code, out, err) = run(&["run", enc.to_str().unwrap(), "--input", x.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("NO KEY"), "{out}");
        assert!(out.contains("logits float32 [16, 10]"), "{out}");
    }

    #[test]
    fn run_on_external_data_uses_the_in_memory_side_files() {
        let model = root().join("fixtures/models/external_data/model.onnx");
        let (_g, copy) = copy_fixture(&model);
        let dir = tempfile::tempdir().unwrap();
        let enc = protect(&copy, dir.path(), &policy("ctr", "1"));
        let k = write_key(dir.path());
        // The input `x` is [1, 3, 8, 8] float32 (see fixtures/models/README.md).
        let shape = vec![1usize, 3, 8, 8];
        let n: usize = shape.iter().product();
        let data: Vec<u8> = (0..n).flat_map(|i| (i as f32 / n as f32).to_le_bytes()).collect();
        let x = dir.path().join("x.npy");
        NpyArray::new(onnx_protect_runtime::npy::Dtype::F32, shape, data).unwrap().write(&x).unwrap();
        let input = format!("x={}", x.display());
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        json(&["run", copy.to_str().unwrap(), "-i", &input, "--output-dir", a.to_str().unwrap(), "--json"]);
        let d = json(&[
            "run",
            enc.to_str().unwrap(),
            "--key-file",
            k.to_str().unwrap(),
            "-i",
            &input,
            "--output-dir",
            b.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(d["weights"], "decrypted");
        assert!(std::fs::read(a.join("y.npy")).unwrap() == std::fs::read(b.join("y.npy")).unwrap());
    }

    #[test]
    fn an_operator_tract_lacks_is_named() {
        use onnx_protect_format::testutil::{model_with_graph, node};
        use onnx_protect_format::wire::put_len_field;
        let mut g = Vec::new();
        put_len_field(&mut g, 1, &node("FrobnicateTensor", &["x"], &["y"], "frob"));
        put_len_field(&mut g, 2, b"g");
        let mut vi = Vec::new();
        put_len_field(&mut vi, 1, b"x");
        put_len_field(&mut g, 11, &vi);
        let mut vo = Vec::new();
        put_len_field(&mut vo, 1, b"y");
        put_len_field(&mut g, 12, &vo);
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.onnx");
        std::fs::write(&m, model_with_graph(&g)).unwrap();
        let x = test_x(dir.path(), 1);
        let (code, _, err) = run(&["run", m.to_str().unwrap(), "--input", &format!("x={}", x.display())]);
        assert_ne!(code, 0);
        assert!(err.contains("tract cannot run operator FrobnicateTensor (node 'frob')"), "{err}");
    }

    #[test]
    fn assess_reports_five_variants_with_accuracy() {
        let dir = tempfile::tempdir().unwrap();
        let enc = protect(&digits("cnn"), dir.path(), &policy("ctr", "0.2"));
        let k = write_key(dir.path());
        let x = root().join("fixtures/digits/test_x.npy");
        let y = root().join("fixtures/digits/test_y.npy");
        let r = json(&[
            "assess",
            digits("cnn").to_str().unwrap(),
            enc.to_str().unwrap(),
            "--key-file",
            k.to_str().unwrap(),
            "--inputs",
            x.to_str().unwrap(),
            "--labels",
            y.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(r["samples"], 540);
        let v = r["variants"].as_array().unwrap();
        let names: Vec<&str> = v.iter().map(|v| v["variant"].as_str().unwrap()).collect();
        assert_eq!(names, ["original", "no_key", "zero_fill", "mean_fill", "decrypted"]);
        let acc = |i: usize| v[i]["accuracy"].as_f64().unwrap();
        assert!(acc(0) > 0.9, "the original is a good classifier");
        assert_eq!(v[0]["agreement"], 1.0);
        assert_eq!(v[4]["agreement"], 1.0);
        assert_eq!(acc(4), acc(0));
        assert_eq!(v[4]["max_distance"], 0.0);
        // Raw CTR ciphertext read as floats: NaN/Inf or huge values, no useful predictions.
        assert!(acc(1) < 0.5, "no key: {}", acc(1));
        for x in v {
            assert_eq!(x["status"], "ok", "{x}");
            assert!(x.get("tier").is_none(), "no tier field on an untiered model: {x}");
        }
        for field in ["tiers", "restored_tiers", "key_tier"] {
            assert!(r.get(field).is_none(), "{field} on an untiered model");
        }
        // The text table.
        let (code, out, err) =
            run(&["assess", digits("cnn").to_str().unwrap(), enc.to_str().unwrap(), "--random", "20"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("zero_fill") && out.contains("mean_fill"), "{out}");
        assert!(out.contains("decrypted    skipped"), "{out}");
    }

    #[test]
    fn assess_with_a_wrong_key_fails_with_the_key_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let enc = protect(&digits("mlp"), dir.path(), &policy("fp", "0.1"));
        let k = dir.path().join("wrong.key");
        std::fs::write(&k, format!("{}\n", "0a".repeat(32))).unwrap();
        let (code, _, err) = run(&[
            "assess",
            digits("mlp").to_str().unwrap(),
            enc.to_str().unwrap(),
            "--key-file",
            k.to_str().unwrap(),
            "--random",
            "8",
        ]);
        assert_eq!(code, 4, "{err}");
    }
}
