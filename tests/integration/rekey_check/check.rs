// ---------------------------------------------------------------- check

use std::path::{Path, PathBuf};

use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::protect::{encrypt, protection_view, EncryptOptions};
use onnx_protect_format::{Model, NoProgress};

use super::{key, rk};
use crate::util::{root, run};

/// The check tests measure against the previous built-in policy (every known operator at
/// 0.5, [`crate::util::half_policy`]): `--builtin-policy` in [`check_json`] and the
/// starting point of [`protect_with`] stand for it.
fn half_file() -> PathBuf {
    static FILE: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let p = crate::util::half_policy_file(d.path());
        (d, p)
    })
    .1
    .clone()
}

/// Encrypts cnn_torch with the given extra CLI policy options (on top of the previous
/// built-in policy unless they give a --policy); returns the protected path.
fn protect_with(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let model = root().join("fixtures/models/cnn_torch/model.onnx");
    let keyfile = dir.join("k.key");
    if !keyfile.exists() {
        run(&["keygen", "-o", keyfile.to_str().unwrap()]);
    }
    let out = dir.join(name);
    let half = half_file();
    let mut args =
        vec!["encrypt", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--key-file", keyfile.to_str().unwrap()];
    if !extra.contains(&"--policy") {
        args.extend(["--policy", half.to_str().unwrap()]);
    }
    args.extend_from_slice(extra);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

/// Runs `check --json` and returns (exit code, parsed document, stderr).
fn check_json(args: &[&str]) -> (i32, serde_json::Value, String) {
    let half = half_file();
    let mut full = vec!["check", "--json"];
    for a in args {
        match *a {
            "--builtin-policy" => full.extend(["--policy", half.to_str().unwrap()]),
            a => full.push(a),
        }
    }
    let (code, out, err) = run(&full);
    let doc = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{full:?}: {e}: {out} {err}"));
    (code, doc, err)
}

fn reasons(doc: &serde_json::Value, model: usize) -> Vec<(String, String, String)> {
    doc["models"][model]["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or("").to_string();
            (s("reason"), s("op_type"), s("tensor"))
        })
        .collect()
}

#[test]
fn check_passes_a_model_protected_with_the_builtin_policy_against_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("fixtures/models/cnn_torch/model.onnx");
    let (key, out) = (dir.path().join("k.key"), dir.path().join("e.onnx"));
    run(&["keygen", "-o", key.to_str().unwrap()]);
    let (code, _, err) =
        run(&["encrypt", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--key-file", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // Not through check_json: the real built-in policy (every weight whole).
    let (code, doc, err) = run(&["check", "--json", out.to_str().unwrap(), "--builtin-policy", "--require-encrypted"]);
    assert_eq!(code, 0, "{doc} {err}");
    // Every weight encrypted meets any smaller policy, such as half of every operator's rows.
    let (code, doc, _) = check_json(&[out.to_str().unwrap(), "--builtin-policy"]);
    assert_eq!(code, 0, "{doc}");
    // A model protected with the first and last layers only misses the built-in policy.
    let lf = dir.path().join("lf.onnx");
    let (code, _, err) = run(&[
        "encrypt",
        model.to_str().unwrap(),
        "-o",
        lf.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
        "--coefficient",
        "*=0",
        "--coefficient",
        "layer:first=1",
        "--coefficient",
        "layer:last=1",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, doc, err) = run(&["check", "--json", lf.to_str().unwrap(), "--builtin-policy"]);
    assert_eq!(code, 8, "{doc} {err}");
    assert!(doc.contains("tensor_not_encrypted"), "{doc}");
}

#[test]
fn check_passes_a_model_protected_as_the_policy_asks() {
    let dir = tempfile::tempdir().unwrap();
    let p = protect_with(dir.path(), "default.onnx", &[]);
    let ctr = protect_with(dir.path(), "ctr.onnx", &["--mode", "*=ctr", "--coefficient", "*=0.5"]);
    let (ps, cs) = (p.to_str().unwrap(), ctr.to_str().unwrap());
    let (code, doc, err) = check_json(&[ps, cs, "--builtin-policy", "--require-encrypted"]);
    assert_eq!(code, 0, "{doc} {err}");
    assert_eq!(doc["passed"], true);
    for m in 0..2 {
        assert_eq!(doc["models"][m]["passed"], true);
        assert_eq!(doc["models"][m]["integrity"], "checksum");
        assert!(reasons(&doc, m).is_empty());
        let ops: Vec<&str> =
            doc["models"][m]["ops"].as_array().unwrap().iter().map(|o| o["op_type"].as_str().unwrap()).collect();
        assert_eq!(ops, ["BatchNormalization", "Conv", "Gemm"]);
    }
    assert!(err.is_empty(), "{err}");
    // A policy file asking exactly for what was used passes; text output names the verdict.
    let policy = half_file();
    let (code, out, err) = run(&["check", cs, "--policy", policy.to_str().unwrap()]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.starts_with("PASS "), "{out}");
    // Without a policy, a protected model with an intact checksum passes; an unprotected
    // one fails unless --allow-unprotected is given.
    let plain = root().join("fixtures/models/cnn_torch/model.onnx");
    let (code, _, err) = run(&["check", ps, plain.to_str().unwrap()]);
    assert_eq!(code, 8, "{err}");
    let (code, _, err) = run(&["check", ps, plain.to_str().unwrap(), "--allow-unprotected"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn check_fails_an_unprotected_model() {
    let plain = root().join("fixtures/models/cnn_torch/model.onnx");
    let m = plain.to_str().unwrap();
    let (code, doc, err) = check_json(&[m, "--require-encrypted"]);
    assert_eq!(code, 8, "{doc}");
    assert_eq!(doc["passed"], false);
    assert_eq!(reasons(&doc, 0), [("not_protected".into(), String::new(), String::new())]);
    assert!(err.starts_with("error: check failed for 1 of 1 models (not_protected)"), "{err}");
    // A policy that selects weights in the model implies that it must be protected.
    let (code, doc, _) = check_json(&[m, "--builtin-policy"]);
    assert_eq!(code, 8);
    assert_eq!(reasons(&doc, 0)[0].0, "not_protected");
    // Text output, exit code and one error line.
    let (code, out, err) = run(&["check", m, "--require-encrypted"]);
    assert_eq!(code, 8);
    assert!(out.starts_with("FAIL "), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_directory_stands_for_every_model_under_it_and_one_without_any_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("b");
    std::fs::create_dir(&sub).unwrap();
    let protected = protect_with(&sub, "model.onnx", &[]);
    let plain = dir.path().join("a.ONNX");
    std::fs::copy(root().join("fixtures/models/cnn_torch/model.onnx"), &plain).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a model").unwrap();
    let (code, doc, err) = check_json(&[dir.path().to_str().unwrap(), "--builtin-policy"]);
    assert_eq!(code, 8, "{doc} {err}");
    let paths: Vec<&str> = doc["models"].as_array().unwrap().iter().map(|m| m["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [plain.to_str().unwrap(), protected.to_str().unwrap()],
        "sorted, the key file and notes left out"
    );
    assert_eq!((doc["models"][0]["passed"].as_bool(), doc["models"][1]["passed"].as_bool()), (Some(false), Some(true)));
    assert!(err.starts_with("error: check failed for 1 of 2 models (not_protected)"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let (code, out, err) = run(&["check", empty.path().to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no *.onnx file under this directory"), "{err}");
}

#[test]
fn check_fails_a_coefficient_below_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let p = protect_with(dir.path(), "low.onnx", &["--coefficient", "Conv=0.1"]);
    // The policy is explicit so that the test does not depend on the built-in default coefficient.
    let (code, doc, _) = check_json(&[p.to_str().unwrap(), "--builtin-policy", "--coefficient", "Conv=0.25"]);
    assert_eq!(code, 8, "{doc}");
    // conv1.weight has 8 rows: 0.25 selects 2 of them, 0.1 selected 1. conv2.weight (4 rows) needs 1 either way.
    assert_eq!(reasons(&doc, 0), [("coefficient_below_policy".into(), "Conv".into(), "conv1.weight".into())]);
    let conv = doc["models"][0]["ops"].as_array().unwrap().iter().find(|o| o["op_type"] == "Conv").unwrap().clone();
    assert_eq!(conv["passed"], false);
    assert!(conv["encrypted_bytes"].as_u64().unwrap() < conv["required_bytes"].as_u64().unwrap());
    // The same model passes a policy that asks for 0.1 on Conv.
    let (code, doc, _) = check_json(&[p.to_str().unwrap(), "--builtin-policy", "--coefficient", "Conv=0.1"]);
    assert_eq!(code, 0, "{doc}");
}

#[test]
fn check_fails_a_weaker_mode_but_accepts_a_stronger_one() {
    let dir = tempfile::tempdir().unwrap();
    // Modes are explicit so that the test does not depend on the built-in default mode.
    let fp = protect_with(dir.path(), "fp.onnx", &["--mode", "*=fp"]);
    let (code, doc, _) =
        check_json(&[fp.to_str().unwrap(), "--builtin-policy", "--mode", "*=fp", "--mode", "Gemm=ctr"]);
    assert_eq!(code, 8, "{doc}");
    let r = reasons(&doc, 0);
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r.iter().all(|(reason, op, _)| reason == "mode_weaker" && op == "Gemm"), "{r:?}");
    // ctr where fp is asked is stronger, so it passes.
    let ctr = protect_with(dir.path(), "ctr.onnx", &["--mode", "*=ctr"]);
    let (code, doc, _) = check_json(&[ctr.to_str().unwrap(), "--builtin-policy", "--mode", "*=fp"]);
    assert_eq!(code, 0, "{doc}");
}

#[test]
fn check_fails_an_op_type_that_is_not_covered() {
    let dir = tempfile::tempdir().unwrap();
    let p = protect_with(dir.path(), "nogemm.onnx", &["--coefficient", "Gemm=0"]);
    let (code, doc, _) = check_json(&[p.to_str().unwrap(), "--builtin-policy"]);
    assert_eq!(code, 8, "{doc}");
    assert_eq!(reasons(&doc, 0), [("op_not_covered".into(), "Gemm".into(), String::new())]);
}

#[test]
fn check_fails_a_selected_tensor_that_is_not_encrypted_and_strict_spans() {
    let dir = tempfile::tempdir().unwrap();
    // Only the Gemm weight (role B), split in two halves of which the first is encrypted.
    let used = dir.path().join("used.toml");
    let mut p = crate::util::half_policy();
    p.apply_override("subsequences", "Gemm=2").unwrap();
    p.rules.get_mut("Gemm").unwrap().roles = Some(vec!["B".into()]);
    std::fs::write(&used, p.to_toml()).unwrap();
    let p = protect_with(dir.path(), "gemm_w.onnx", &["--policy", used.to_str().unwrap()]);
    let ps = p.to_str().unwrap();
    // The built-in policy also selects the Gemm bias (role C).
    let (code, doc, _) = check_json(&[ps, "--builtin-policy"]);
    assert_eq!(code, 8, "{doc}");
    assert_eq!(reasons(&doc, 0), [("tensor_not_encrypted".into(), "Gemm".into(), "fc.bias".into())]);
    // Against the weight-only policy with rows (0.25 of 10 rows = rows 0, 3, 6): the first half
    // (rows 0-4) is more bytes, so it passes by amount, but it does not contain row 6.
    let rows = dir.path().join("rows.toml");
    std::fs::write(&rows, "version = 1\ninherit_builtin = false\n[ops.Gemm]\nroles = [\"B\"]\ncoefficient = 0.5\n")
        .unwrap();
    let (code, doc, _) = check_json(&[ps, "--policy", rows.to_str().unwrap()]);
    assert_eq!(code, 0, "{doc}");
    let (code, doc, _) = check_json(&[ps, "--policy", rows.to_str().unwrap(), "--strict-spans"]);
    assert_eq!(code, 8, "{doc}");
    assert_eq!(reasons(&doc, 0), [("coefficient_below_policy".into(), "Gemm".into(), "fc.weight".into())]);
}

#[test]
fn check_names_what_it_verified_and_a_wrong_key_is_a_key_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = protect_with(dir.path(), "e.onnx", &[]);
    let (p, key) = (p.to_str().unwrap(), dir.path().join("k.key"));
    let (code, out, err) = run(&["check", p]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("PASS {p}: protected, checksum ok,")), "{out}");
    let (code, out, err) = run(&["check", p, "--key-file", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("protected, checksum and MACs ok,"), "{out}");
    let (code, doc, _) = check_json(&[p, "--key-file", key.to_str().unwrap()]);
    assert_eq!((code, doc["models"][0]["integrity"].as_str()), (0, Some("mac")), "{doc}");
    // A key that opens no stanza is a key problem (exit 4), not a damaged model.
    let other = dir.path().join("other.key");
    run(&["keygen", "-o", other.to_str().unwrap()]);
    let (code, doc, err) = check_json(&[p, "--key-file", other.to_str().unwrap()]);
    assert_eq!(code, 4, "{doc}");
    assert_eq!(reasons(&doc, 0)[0].0, "wrong_key", "{doc}");
    assert!(err.contains("(wrong_key)"), "{err}");
    let (_, out, _) = run(&["check", p, "--key-file", other.to_str().unwrap()]);
    assert!(out.contains("protected, integrity not verified,"), "{out}");
}

#[test]
fn check_fails_a_model_whose_ciphertext_no_longer_matches() {
    let dir = tempfile::tempdir().unwrap();
    let p = protect_with(dir.path(), "enc.onnx", &[]);
    let ok = protect_with(dir.path(), "ok.onnx", &["--coefficient", "Gemm=0"]);
    let m = Model::open(&p).unwrap();
    let pr = protection_view(&m).unwrap();
    let t = &m.tensors[pr.targets[0].tensor];
    let onnx_protect_format::TensorData::Raw { range } = &t.data else { panic!("raw") };
    let at = (range.start + pr.targets[0].spans[0].0) as usize;
    drop(m);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(&p, &bytes).unwrap();
    let (code, doc, err) = check_json(&[p.to_str().unwrap()]);
    assert_eq!(code, 5, "{doc}");
    assert_eq!(reasons(&doc, 0)[0].0, "modified");
    assert!(err.contains("modified"), "{err}");
    // Modified beats a weaker-protection failure of another model in the exit code.
    let (code, doc, _) = check_json(&[ok.to_str().unwrap(), p.to_str().unwrap(), "--builtin-policy"]);
    assert_eq!(code, 5, "{doc}");
    assert_eq!(reasons(&doc, 0)[0].0, "op_not_covered");
    // A broken file is a bad model (exit 3); a bad policy exits 7.
    let garbage = root().join("fixtures/malformed/garbage.onnx");
    let (code, doc, _) = check_json(&[garbage.to_str().unwrap()]);
    assert_eq!(code, 3, "{doc}");
    assert_eq!(reasons(&doc, 0)[0].0, "bad_model");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "version = 1\n[ops.Conv]\ncoefficient = 3\n").unwrap();
    let (code, out, err) = run(&["check", ok.to_str().unwrap(), "--policy", bad.to_str().unwrap()]);
    assert_eq!(code, 7, "{out} {err}");
    assert!(out.is_empty());
}

/// Over the ONNX backend corpus (see `corpus.rs`): every protected model passes `check`
/// against the policy it was encrypted with, even with strict spans (so selection run on
/// the protected model finds exactly what was encrypted), and rekey → decrypt restores it.
#[test]
fn corpus_models_pass_check_and_rekey_round_trips() {
    use onnx_protect_core::check::{check_model, CheckOptions};
    use onnx_protect_core::protect::decrypt_to_vec;
    let path = root().join("corpus/expected.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!("{} is missing: run scripts/fetch-corpus.sh (the README's test command does)", path.display())
    });
    let dir = tempfile::tempdir().unwrap();
    let mut all = crate::util::half_policy();
    all.apply_override("coefficient", "*=1").unwrap();
    all.apply_override("mode", "*=ctr").unwrap();
    let (mut encrypted, mut failures) = (0usize, Vec::new());
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let file = v["file"].as_str().unwrap();
        let input = root().join("corpus/data").join(file);
        let policy = if i % 2 == 0 { all.clone() } else { crate::util::half_policy() };
        let (a, b) = (dir.path().join(format!("{i}a.onnx")), dir.path().join(format!("{i}b.onnx")));
        let opts = EncryptOptions { allow_empty: true, ..EncryptOptions::new(&policy) };
        let empty = match encrypt(&input, &a, &EncryptTo::key(key(5)), &opts) {
            Ok(r) => r.encrypted_bytes == 0,
            Err(e) => {
                failures.push(format!("{file}: encrypt: {e}"));
                continue;
            }
        };
        // A model with nothing to encrypt passes only when unprotected models are allowed.
        let opts = CheckOptions {
            policy: Some(&policy),
            require_encrypted: !empty,
            strict_spans: true,
            allow_format_1: false,
            allow_unprotected: empty,
            key: None,
            signers: &[],
            progress: &NoProgress,
        };
        let verdict = check_model(&a, &opts);
        if !verdict.passed {
            failures.push(format!("{file}: check: {:?}", verdict.failures));
        }
        if verdict.tensors > 0 {
            encrypted += 1;
        }
        if let Err(e) = rk(&a, &b, &key(5), &key(6)) {
            failures.push(format!("{file}: rekey: {e}"));
            continue;
        }
        if !check_model(&b, &opts).passed {
            failures.push(format!("{file}: check after rekey"));
        }
        let m = Model::open(&b).unwrap();
        match decrypt_to_vec(&m, &key(6)) {
            Ok(bytes) if bytes == std::fs::read(&input).unwrap() => {}
            Ok(_) => failures.push(format!("{file}: rekeyed model decrypts to other bytes")),
            Err(e) => failures.push(format!("{file}: decrypt after rekey: {e}")),
        }
        drop(m);
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
    }
    assert!(encrypted >= 40, "only {encrypted} corpus models had weights to encrypt");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
