//! In-memory decryption restores every fixture byte for byte (external data
//! included); `run` and `assess` work on the fixtures through the binary.

use std::path::{Path, PathBuf};

use onnx_protect_core::error::ErrorKind;
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::memory::{InMemory, Method};
use onnx_protect_core::protect::{decrypt_tier, encrypt, protection_view, DecryptOptions, EncryptOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::Model;
use onnx_protect_select::Policy;

use crate::util::{copy_fixture, fixture_models, path_str, root, run, run_keyed};

fn key() -> KeySource {
    KeySource::key(MasterKey::from_bytes([9; 32]))
}

fn policy(mode: &str, coefficient: &str) -> Policy {
    let mut p = crate::util::half_policy();
    p.apply_override("mode", &format!("*={mode}")).unwrap();
    p.apply_override("coefficient", &format!("*={coefficient}")).unwrap();
    p
}

/// Encrypts `model` into `dir/enc/<name>` (external files beside it).
fn protect(model: &Path, dir: &Path, p: &Policy) -> PathBuf {
    let out = dir.join("enc").join(model.file_name().unwrap());
    encrypt(model, &out, &EncryptTo::key(key()), &EncryptOptions::new(p))
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
            let d = InMemory::file(&enc, &key()).load().unwrap_or_else(|e| panic!("{}: {e}", model.display()));
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
            assert!(InMemory::model(&m, &key()).load().unwrap()[..] == d[..]);
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
    let d = InMemory::file(&enc, &key()).load().unwrap();
    assert_eq!(d.method(), Method::Mapped);
    for (loc, bytes) in d.external() {
        assert_eq!(bytes.method(), Method::Mapped, "{loc}");
        assert!(&bytes[..] == std::fs::read(copy.parent().unwrap().join(loc)).unwrap().as_slice());
        assert!(&bytes[..] != std::fs::read(enc.parent().unwrap().join(loc)).unwrap().as_slice(), "{loc} encrypted");
    }
}

/// Access tiers and the distribution-preserving mode with encrypted weights in external
/// files: in memory, each tier gives the same model and side files as `decrypt --tier`
/// writes to disk, and the top key gives back the original files.
#[test]
fn tiers_and_dp_decrypt_external_data_in_memory_like_on_disk() {
    let model = root().join("fixtures/models/external_data/model.onnx");
    let (_g, copy) = copy_fixture(&model);
    let original = Model::open(&copy).unwrap();
    let mut tiered = policy("fp", "0.5");
    tiered.set_tiers(3).unwrap();
    let (dp, with_dp) = crate::util::dp_where_possible(&copy, policy("dp", "0.5"));
    assert!(with_dp > 0);
    for (name, p) in [("tiers", tiered), ("dp", dp)] {
        let dir = tempfile::tempdir().unwrap();
        let enc = protect(&copy, dir.path(), &p);
        let m = Model::open(&enc).unwrap();
        let tiers = protection_view(&m).unwrap().tiers;
        assert!(
            protection_view(&m)
                .unwrap()
                .targets
                .iter()
                .any(|t| matches!(m.tensors[t.tensor].data, onnx_protect_format::TensorData::External { .. })),
            "{name}: no external tensor is encrypted"
        );
        // The top key: the original model and side files.
        let d = InMemory::file(&enc, &key()).load().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(&d[..] == std::fs::read(&copy).unwrap().as_slice(), "{name}");
        assert_eq!(d.external().len(), original.external_files.len(), "{name}");
        for f in &original.external_files {
            assert!(
                &d.external()[&f.location][..] == std::fs::read(&f.path).unwrap().as_slice(),
                "{name} {}",
                f.location
            );
        }
        // Every tier: the same bytes as the files `decrypt --tier` writes.
        for t in 1..=tiers.max(1) {
            let tier = (tiers > 1).then_some(t);
            let mem = InMemory::model(&m, &key()).tier(tier).load().unwrap_or_else(|e| panic!("{name} tier {t}: {e}"));
            let out = dir.path().join(format!("t{t}")).join("model.onnx");
            decrypt_tier(&enc, &out, &key(), tier, &DecryptOptions::default()).unwrap();
            assert!(&mem[..] == std::fs::read(&out).unwrap().as_slice(), "{name} tier {t}");
            for f in &original.external_files {
                let disk = std::fs::read(out.parent().unwrap().join(&f.location)).unwrap();
                assert!(mem.external()[&f.location][..] == disk[..], "{name} tier {t} {}", f.location);
            }
        }
        // A wrong key, and a flipped byte of an encrypted span in a side file.
        let wrong = KeySource::key(MasterKey::from_bytes([1; 32]));
        assert_eq!(InMemory::model(&m, &wrong).load().unwrap_err().kind(), ErrorKind::WrongKey, "{name}");
        let p = protection_view(&m).unwrap();
        let (target, file, at) = p
            .targets
            .iter()
            .find_map(|t| match &m.tensors[t.tensor].data {
                onnx_protect_format::TensorData::External { file, .. } => {
                    let (range, _) = m.tensors[t.tensor].file_pieces(t.spans[0].0, t.spans[0].1).into_iter().next()?;
                    Some((t.tensor, *file, range.start))
                }
                _ => None,
            })
            .unwrap();
        let side = m.external_files[file].path.clone();
        drop((m, p, d));
        let mut bytes = std::fs::read(&side).unwrap();
        bytes[at as usize] ^= 0x10;
        std::fs::write(&side, &bytes).unwrap();
        let m = Model::open(&enc).unwrap();
        let e = InMemory::model(&m, &key()).load().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Modified, "{name}: tensor {target}: {e}");
        assert_eq!(InMemory::file(&enc, &key()).load().unwrap_err().kind(), ErrorKind::Modified, "{name}");
    }
}

/// A key whose tiers are all decrypted in the file already gets the file as it is, in
/// memory (run, assess, --stdout) and written to a file alike; a tier asked for that the
/// file has in clear is "already decrypted" in both.
#[test]
fn a_key_with_nothing_left_to_decrypt_gets_the_file_as_it_is_in_memory_and_on_disk() {
    let model = root().join("fixtures/models/external_data/model.onnx");
    let (_g, copy) = copy_fixture(&model);
    let dir = tempfile::tempdir().unwrap();
    let mut tiered = policy("fp", "0.5");
    tiered.set_tiers(3).unwrap();
    let enc = protect(&copy, dir.path(), &tiered);
    let k1 = KeySource::key(key().master_key().unwrap().tier_down().tier_down());
    let opts = DecryptOptions::default();
    let t1 = dir.path().join("t1").join("model.onnx");
    decrypt_tier(&enc, &t1, &k1, None, &opts).unwrap();
    let d = InMemory::file(&t1, &k1).load().unwrap();
    assert_eq!(d.decrypted_bytes(), 0);
    assert!(d[..] == std::fs::read(&t1).unwrap()[..]);
    for (loc, bytes) in d.external() {
        assert!(bytes[..] == std::fs::read(t1.with_file_name(loc)).unwrap()[..], "{loc}");
    }
    let t1b = dir.path().join("t1b").join("model.onnx");
    let report = decrypt_tier(&t1, &t1b, &k1, None, &opts).unwrap();
    assert_eq!(report.decrypted_bytes, 0);
    assert!(std::fs::read(&t1b).unwrap() == std::fs::read(&t1).unwrap());
    for loc in d.external().keys() {
        assert!(std::fs::read(t1b.with_file_name(loc)).unwrap() == std::fs::read(t1.with_file_name(loc)).unwrap());
    }
    // An explicit tier at or below the restored ones is refused, in memory and on disk.
    let e = InMemory::model(&Model::open(&t1).unwrap(), &k1).tier(Some(1)).load().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyDecrypted, "{e}");
    let e = decrypt_tier(&t1, &dir.path().join("t1c").join("model.onnx"), &k1, Some(1), &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyDecrypted, "{e}");
}

#[test]
fn decrypt_stdout_refuses_terminals_and_files_but_not_pipes() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("fixtures/digits/mlp.onnx");
    let enc = protect(&model, dir.path(), &policy("fp", "0.25"));
    let k = dir.path().join("k.key");
    std::fs::write(&k, format!("{}\n", "09".repeat(32))).unwrap();
    // `decrypt MODEL --key-file KEY --stdout EXTRA...` into a pipe: (exit code, stdout).
    let piped = |model: &Path, key: &Path, extra: &[&str]| -> (Option<i32>, Vec<u8>) {
        let out = std::process::Command::new(crate::util::bin())
            .args(["decrypt", model.to_str().unwrap(), "--key-file", key.to_str().unwrap(), "--stdout"])
            .args(extra)
            .output()
            .unwrap();
        (out.status.code(), out.stdout)
    };
    // A pipe: the decrypted model.
    let (code, stdout) = piped(&enc, &k, &[]);
    assert_eq!(code, Some(0));
    assert!(stdout == std::fs::read(&model).unwrap());
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
    // --tier 1 of an untiered model is the whole model.
    let (code, stdout) = piped(&enc, &k, &["--tier", "1"]);
    assert_eq!(code, Some(0));
    assert!(stdout == std::fs::read(&model).unwrap());
    // A tiered model: --tier gives what `decrypt --tier -o FILE` writes; a tier above the
    // key's is a key error (exit 4) with nothing written.
    let mut tiered = policy("fp", "0.5");
    tiered.set_tiers(2).unwrap();
    let tdir = dir.path().join("tiered");
    let tenc = protect(&model, &tdir, &tiered);
    let file = tdir.join("t1").join("m.onnx");
    run_keyed("decrypt", &tenc, &file, &k, &["--tier", "1", "-q"]);
    let (code, stdout) = piped(&tenc, &k, &["--tier", "1"]);
    assert_eq!(code, Some(0));
    assert!(stdout == std::fs::read(&file).unwrap());
    assert!(stdout != std::fs::read(&model).unwrap(), "tier 1 of 2 is not the whole model");
    let k1 = dir.path().join("k1.key");
    let (code, _, err) =
        run(&["derive-tier-key", "--key-file", path_str(&k), "--from", "2", "--tier", "1", "-o", path_str(&k1)]);
    assert_eq!(code, 0, "{err}");
    let (code, stdout) = piped(&tenc, &k1, &["--tier", "2"]);
    assert_eq!(code, Some(4));
    assert!(stdout.is_empty());
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
    fn run_refuses_a_label_locked_model_below_its_top_tier_instead_of_printing_locked_scores() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let (key, locked) = (d.join("k.key"), d.join("locked.onnx"));
        let x = test_x(d, 4);
        assert_eq!(run(&["keygen", "-o", &s(&key), "--tiers", "2", "-q"]).0, 0);
        let enc = ["encrypt", &s(&digits("mlp")), "-o", &s(&locked), "--key-file", &s(&key), "--tiers", "2"];
        assert_eq!(run(&[&enc[..], &["--lock-outputs", "-q"]].concat()).0, 0);
        let tier1 = format!("{}.tier1", s(&key));
        let (code, out, err) = run(&["run", &s(&locked), "--key-file", &tier1, "-i", &s(&x)]);
        assert_eq!(code, 4, "{err}");
        assert!(out.is_empty() && err.contains("label-locked"), "{out}{err}");
        assert_eq!(run(&["run", &s(&locked), "--key-file", &s(&key), "-i", &s(&x)]).0, 0);
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
            let (m, e, ks) = (digits(name), path_str(&enc), path_str(&k));
            let plain = json(&["run", path_str(&m), "--input", &input, "--output-dir", path_str(&a), "--json"]);
            assert_eq!(plain["weights"], "plain");
            let dec = json(&["run", e, "--key-file", ks, "--input", &input, "--output-dir", path_str(&b), "--json"]);
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

    /// `run` on encrypted external data: plain XOR modes (patched private maps), the
    /// distribution-preserving mode and access tiers (the general path) alike.
    #[test]
    fn run_on_external_data_uses_the_in_memory_side_files() {
        let model = root().join("fixtures/models/external_data/model.onnx");
        let (_g, copy) = copy_fixture(&model);
        let dir = tempfile::tempdir().unwrap();
        let k = write_key(dir.path());
        // The input `x` is [1, 3, 8, 8] float32 (see fixtures/models/README.md).
        let shape = vec![1usize, 3, 8, 8];
        let n: usize = shape.iter().product();
        let data: Vec<u8> = (0..n).flat_map(|i| (i as f32 / n as f32).to_le_bytes()).collect();
        let x = dir.path().join("x.npy");
        NpyArray::new(onnx_protect_runtime::npy::Dtype::F32, shape, data).unwrap().write(&x).unwrap();
        let input = format!("x={}", x.display());
        let a = dir.path().join("a");
        json(&["run", copy.to_str().unwrap(), "-i", &input, "--output-dir", a.to_str().unwrap(), "--json"]);
        let mut tiered = policy("fp", "0.5");
        tiered.set_tiers(2).unwrap();
        let (dp, _) = crate::util::dp_where_possible(&copy, policy("dp", "0.5"));
        for (name, p) in [("ctr", policy("ctr", "1")), ("dp", dp), ("tiers", tiered)] {
            let sub = dir.path().join(name);
            let enc = protect(&copy, &sub, &p);
            let b = sub.join("b");
            let (e, ks) = (path_str(&enc), path_str(&k));
            let d = json(&["run", e, "--key-file", ks, "-i", &input, "--output-dir", path_str(&b), "--json"]);
            assert_eq!(d["weights"], "decrypted", "{name}");
            assert!(std::fs::read(a.join("y.npy")).unwrap() == std::fs::read(b.join("y.npy")).unwrap(), "{name}");
            if name == "tiers" {
                // `assess` decrypts each tier in memory, side files included.
                let r = json(&["assess", path_str(&copy), e, "--key-file", ks, "--inputs", path_str(&x), "--json"]);
                let rows = r["variants"].as_array().unwrap();
                for t in ["tier_1", "tier_2"] {
                    let v = rows.iter().find(|v| v["variant"] == t).unwrap_or_else(|| panic!("no {t} row: {r}"));
                    assert_eq!(v["status"], "ok", "{v}");
                }
                let top = rows.iter().find(|v| v["variant"] == "tier_2").unwrap();
                assert_eq!((top["agreement"].as_f64(), top["max_distance"].as_f64()), (Some(1.0), Some(0.0)));
            }
        }
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
        assert!(err.contains("hint: onnxruntime runs it: the Python package's InferenceSession"), "{err}");
    }

    #[test]
    fn assess_reports_every_variant_with_accuracy_and_the_best_attack() {
        let dir = tempfile::tempdir().unwrap();
        let enc = protect(&digits("cnn"), dir.path(), &policy("ctr", "0.2"));
        let k = write_key(dir.path());
        let x = root().join("fixtures/digits/test_x.npy");
        let y = root().join("fixtures/digits/test_y.npy");
        let (m, e) = (digits("cnn"), path_str(&enc));
        let data = ["--inputs", path_str(&x), "--labels", path_str(&y), "--json"];
        let r = json(&[&["assess", path_str(&m), e, "--key-file", path_str(&k)][..], &data].concat());
        assert_eq!(r["samples"], 540);
        let v = r["variants"].as_array().unwrap();
        let names: Vec<&str> = v.iter().map(|v| v["variant"].as_str().unwrap()).collect();
        assert_eq!(names, crate::util::assess_variants());
        let acc = |i: usize| v[i]["accuracy"].as_f64().unwrap();
        assert!(acc(0) > 0.9, "the original is a good classifier");
        assert_eq!(v[0]["agreement"], 1.0);
        assert_eq!(v[8]["agreement"], 1.0);
        assert_eq!(acc(8), acc(0));
        assert_eq!(v[8]["max_distance"], 0.0);
        // Raw CTR ciphertext read as floats: NaN/Inf or huge values, no useful predictions.
        assert!(acc(1) < 0.5, "no key: {}", acc(1));
        for x in v {
            let bn = x["variant"].as_str().unwrap().ends_with("_bn");
            assert_eq!(x["status"], if bn { "skipped" } else { "ok" }, "{x}");
            assert!(x.get("tier").is_none(), "no tier field on an untiered model: {x}");
        }
        // The headline: the best of the key-less variants, with chance.
        let best = &r["best_attack"];
        let keyless = (1..8).filter(|&i| v[i]["status"] == "ok").map(acc).fold(0.0, f64::max);
        assert_eq!(best["accuracy"].as_f64().unwrap(), keyless);
        assert!(["no_key", "zero_fill", "mean_fill", "init_fill"].contains(&best["variant"].as_str().unwrap()));
        assert!((r["chance"].as_f64().unwrap() - 55.0 / 540.0).abs() < 1e-9, "{}", r["chance"]);
        for field in ["tiers", "restored_tiers", "key_tier"] {
            assert!(r.get(field).is_none(), "{field} on an untiered model");
        }
        // The text table.
        let (code, out, err) = run(&["assess", path_str(&m), e, "--random", "20"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("zero_fill") && out.contains("init_fill"), "{out}");
        assert!(out.contains("best key-less attack: "), "{out}");
        assert!(out.contains("decrypted      skipped"), "{out}");
    }

    #[test]
    fn assess_with_a_wrong_key_fails_with_the_key_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let enc = protect(&digits("mlp"), dir.path(), &policy("fp", "0.1"));
        let k = dir.path().join("wrong.key");
        std::fs::write(&k, format!("{}\n", "0a".repeat(32))).unwrap();
        let m = digits("mlp");
        let (code, _, err) =
            run(&["assess", path_str(&m), path_str(&enc), "--key-file", path_str(&k), "--random", "8"]);
        assert_eq!(code, 4, "{err}");
    }
}
