//! `check --signer PUB.pem` with a model-signing bundle beside the model, and `batch sign`.

use std::path::Path;

use crate::util::{copy_fixture, mlp, path_str as s, root, run};

fn keygen(dir: &Path) -> (String, String) {
    let key = dir.join("signer.pem");
    let (code, _, err) = run(&["bundle", "keygen", "-o", s(&key), "-q"]);
    assert_eq!(code, 0, "{err}");
    (s(&key).to_string(), format!("{}.pub.pem", s(&key)))
}

#[test]
fn check_accepts_a_bundle_beside_the_model_and_refuses_a_missing_or_stale_one() {
    let (dir, model) = copy_fixture(&mlp());
    let (key, public) = keygen(dir.path());
    // No bundle yet: refused (integrity failure, exit 5).
    let (code, out, _) = run(&["check", s(&model), "--allow-unprotected", "--signer", &public]);
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("no signature bundle"), "{out}");
    let (code, _, err) = run(&["bundle", "sign", s(&model), "--key", &key, "-q"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["check", s(&model), "--allow-unprotected", "--signer", &public, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    // Another signer's key, or a changed model: refused.
    let other = tempfile::tempdir().unwrap();
    let (_, other_pub) = keygen(other.path());
    let (code, _, _) = run(&["check", s(&model), "--allow-unprotected", "--signer", &other_pub]);
    assert_eq!(code, 5);
    let mut bytes = std::fs::read(&model).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&model, &bytes).unwrap();
    let (code, out, _) = run(&["check", s(&model), "--allow-unprotected", "--signer", &public]);
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("changed"), "{out}");
}

#[test]
fn check_passes_either_kind_of_signature_when_both_are_asked_for() {
    let (dir, model) = copy_fixture(&mlp());
    let (key, public) = keygen(dir.path());
    let keyfile = dir.path().join("k.key");
    let signing = dir.path().join("ed.key");
    assert_eq!(run(&["keygen", "-o", s(&keyfile), "-q"]).0, 0);
    let (code, ed_pub, err) = run(&["keygen", "--signing", "-o", s(&signing), "--json"]);
    assert_eq!(code, 0, "{err}");
    let ed_pub: serde_json::Value = serde_json::from_str(&ed_pub).unwrap();
    let ed_pub = ed_pub["signer"].as_str().unwrap().to_string();
    let enc = dir.path().join("enc.onnx");
    assert_eq!(run(&["encrypt", s(&model), "-o", s(&enc), "--key-file", s(&keyfile), "-q"]).0, 0);
    // Neither signature: refused. A bundle alone passes; the in-model signature alone passes.
    assert_eq!(run(&["check", s(&enc), "--signer", &public, "--signer", &ed_pub]).0, 5);
    assert_eq!(run(&["bundle", "sign", s(&enc), "--key", &key, "-q"]).0, 0);
    assert_eq!(run(&["check", s(&enc), "--signer", &public, "--signer", &ed_pub]).0, 0);
    std::fs::remove_file(dir.path().join("enc.onnx.sig")).unwrap();
    assert_eq!(run(&["sign", s(&enc), "--in-place", "--sign-key", s(&signing), "-q"]).0, 0);
    assert_eq!(run(&["check", s(&enc), "--signer", &public, "--signer", &ed_pub]).0, 0);
}

#[test]
fn batch_sign_writes_a_bundle_beside_every_model_and_skips_those_that_verify() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("ext")).unwrap();
    for m in ["cnn", "mlp"] {
        std::fs::copy(root().join(format!("fixtures/digits/{m}.onnx")), models.join(format!("{m}.onnx"))).unwrap();
    }
    for f in ["model.onnx", "weights.bin", "extra.bin"] {
        std::fs::copy(root().join("fixtures/models/external_data").join(f), models.join("ext").join(f)).unwrap();
    }
    let (key, public) = keygen(dir.path());
    let (code, _, err) = run(&["batch", "sign", "--dir", s(&models), "--bundle-key", &key]);
    assert_eq!(code, 0, "{err}");
    for m in ["cnn.onnx", "mlp.onnx", "ext/model.onnx"] {
        let model = models.join(m);
        let (code, out, err) = run(&["bundle", "verify", s(&model), "--key", &public]);
        assert_eq!(code, 0, "{m}: {out}{err}");
    }
    let (code, out, err) = run(&["batch", "sign", "--dir", s(&models), "--bundle-key", &key]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 ok, 3 skipped"), "{out}");
    // A changed external data file: its model's bundle no longer verifies, naming the file.
    std::fs::write(models.join("ext/weights.bin"), vec![0u8; 16]).unwrap();
    let (code, _, err) = run(&["bundle", "verify", s(&models.join("ext/model.onnx")), "--key", &public]);
    assert_ne!(code, 0);
    assert!(err.contains("weights.bin") || err.contains("model"), "{err}");
    let (code, _, err) =
        run(&["batch", "sign", "--dir", s(&models), "--bundle-key", &key, "--out-dir", s(&dir.path().join("o"))]);
    assert_eq!(code, 2, "{err}");
}

/// `check --signer PUB.pem` looks for `MODEL.sig`, then `model.sig` in the model's
/// directory (model_signing's default name), and passes when either verifies; when
/// neither does, it fails naming both.
#[test]
fn check_finds_the_bundle_as_model_sig_too_and_fails_when_neither_verifies() {
    let (dir, model) = copy_fixture(&mlp());
    let (key, public) = keygen(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (other_key, _) = keygen(other.path());
    let beside = dir.path().join("mlp.onnx.sig");
    let fallback = dir.path().join("model.sig");
    let check = || run(&["check", s(&model), "--allow-unprotected", "--signer", &public]);
    let sign = |k: &str, out: &Path| {
        let (code, _, err) = run(&["bundle", "sign", s(&model), "--key", k, "-o", s(out), "--force", "-q"]);
        assert_eq!(code, 0, "{err}");
    };
    // model.sig alone, by the key: found and verified.
    sign(&key, &fallback);
    let (code, out, err) = check();
    assert_eq!(code, 0, "{out}{err}");
    // MODEL.sig by another key beside it: model.sig still verifies.
    sign(&other_key, &beside);
    let (code, out, err) = check();
    assert_eq!(code, 0, "{out}{err}");
    // Neither verifies: refused (exit 5), both named.
    sign(&other_key, &fallback);
    let (code, out, _) = check();
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("mlp.onnx.sig") && out.contains("model.sig:"), "{out}");
    // MODEL.sig by the key: it verifies whatever model.sig holds.
    sign(&key, &beside);
    let (code, out, err) = check();
    assert_eq!(code, 0, "{out}{err}");
}
