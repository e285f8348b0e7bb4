//! Protected model folders through the binary (docs/format.md §16, docs/cli.md): a folder
//! of two models (one with external data) and copied files round-trips byte for byte, and
//! every changed, missing, extra or swapped file, a model of another folder encryption and
//! a wrong key are refused with the exit code a single model gets, nothing written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::util::{keygen_in, path_str, root, run};

/// A model folder: `decoder.onnx` with its external data files (the `external_data`
/// fixture), `vision/model.onnx` (the `cnn_torch` fixture), a config and a tokenizer.
fn plain_folder(dir: &Path) -> PathBuf {
    let src = root().join("fixtures/models");
    let f = dir.join("plain");
    std::fs::create_dir_all(f.join("vision")).unwrap();
    std::fs::copy(src.join("external_data/model.onnx"), f.join("decoder.onnx")).unwrap();
    for data in ["weights.bin", "extra.bin"] {
        std::fs::copy(src.join("external_data").join(data), f.join(data)).unwrap();
    }
    std::fs::copy(src.join("cnn_torch/model.onnx"), f.join("vision/model.onnx")).unwrap();
    std::fs::write(f.join("genai_config.json"), br#"{"model": {"type": "llama", "context_length": 64}}"#).unwrap();
    std::fs::write(f.join("tokenizer.json"), br#"{"model": {"vocab": {"a": 0, "b": 1}}}"#).unwrap();
    f
}

/// Every file under `root` by relative path.
fn contents(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn visit(dir: &Path, root: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                visit(&p, root, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    visit(root, root, &mut out);
    out
}

/// A key and the folder protected with it.
struct Protected {
    _dir: tempfile::TempDir,
    plain: PathBuf,
    out: PathBuf,
    key: PathBuf,
}

fn protected() -> Protected {
    let dir = tempfile::tempdir().unwrap();
    let plain = plain_folder(dir.path());
    let key = keygen_in(dir.path());
    let out = dir.path().join("protected");
    let (code, o, e) = run(&["encrypt", path_str(&plain), "-o", path_str(&out), "--key-file", path_str(&key), "-q"]);
    assert_eq!(code, 0, "{o}{e}");
    Protected { _dir: dir, plain, out, key }
}

impl Protected {
    fn base(&self) -> &Path {
        self.out.parent().unwrap()
    }

    /// `decrypt` of the folder into a new `back` (exit code, stderr); asserts nothing is
    /// written when it fails.
    fn decrypt(&self, key: &Path) -> (i32, String) {
        let back = self.base().join("back");
        let (code, _, err) =
            run(&["decrypt", path_str(&self.out), "-o", path_str(&back), "--key-file", path_str(key), "-q"]);
        if code != 0 {
            assert!(!back.exists(), "decrypt failed ({err}) and left {}", back.display());
            let left: Vec<String> = std::fs::read_dir(self.base())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect();
            assert!(left.is_empty(), "decrypt left {left:?}");
        }
        (code, err)
    }

    fn verify(&self, key: Option<&Path>) -> (i32, String) {
        let mut args = vec!["verify", path_str(&self.out)];
        if let Some(k) = key {
            args.extend(["--key-file", path_str(k)]);
        }
        let (code, _, err) = run(&args);
        (code, err)
    }
}

#[test]
fn folder_round_trips_and_verifies() {
    let p = protected();
    let stored = contents(&p.out);
    let plain = contents(&p.plain);
    assert_eq!(stored.keys().collect::<Vec<_>>(), plain.keys().collect::<Vec<_>>());
    for name in ["decoder.onnx", "weights.bin", "extra.bin", "vision/model.onnx"] {
        assert_ne!(stored[name], plain[name], "{name} is not encrypted");
    }
    for name in ["genai_config.json", "tokenizer.json"] {
        assert_eq!(stored[name], plain[name], "{name} is not copied unchanged");
    }
    assert_eq!(p.verify(None), (0, String::new()));
    assert_eq!(p.verify(Some(&p.key)), (0, String::new()));
    let (code, out, err) = run(&["verify", path_str(&p.out), "--key-file", path_str(&p.key), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["models"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["models"][1]["check"], "mac", "{v}");
    let (code, out, err) = run(&["inspect", path_str(&p.out), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["models"][0]["path"], "decoder.onnx", "{v}");
    assert_eq!(v["models"][0]["data_files"], serde_json::json!(["weights.bin", "extra.bin"]), "{v}");
    assert_eq!(v["models"][1]["path"], "vision/model.onnx", "{v}");
    assert!(v["models"][1]["inspect"]["protection"].is_object(), "{v}");
    assert_eq!(v["files"][0]["path"], "genai_config.json", "{v}");
    assert_eq!(v["files"][1]["length"], plain["tokenizer.json"].len(), "{v}");
    let (code, text, err) = run(&["inspect", path_str(&p.out)]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("vision/model.onnx") && text.contains("tokenizer.json"), "{text}");
    assert_eq!(p.decrypt(&p.key).0, 0);
    assert!(contents(&p.base().join("back")) == plain, "the decrypted folder is not the original");
}

/// A protected folder read from a model cache's snapshot, each file a symbolic link to a
/// blob kept beside the snapshot (the Hugging Face Hub's layout): verify and decrypt follow
/// the links and give the original folder back; a link to a directory is refused.
#[cfg(unix)]
#[test]
fn a_protected_folder_in_a_cache_snapshot_of_links_to_blobs_is_read_through_them() {
    let mut p = protected();
    let (snapshot, blobs) = (p.base().join("hub/snapshots/rev"), p.base().join("hub/blobs"));
    std::fs::create_dir_all(&blobs).unwrap();
    for (i, rel) in contents(&p.out).keys().enumerate() {
        let (blob, link) = (blobs.join(format!("{i:040x}")), snapshot.join(rel));
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::fs::rename(p.out.join(rel), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, &link).unwrap();
    }
    p.out = snapshot;
    assert_eq!(p.verify(Some(&p.key)), (0, String::new()));
    assert_eq!(p.decrypt(&p.key).0, 0);
    assert!(contents(&p.base().join("back")) == contents(&p.plain), "the decrypted folder is not the original");
    std::os::unix::fs::symlink(&blobs, p.out.join("blobs")).unwrap();
    let (code, err) = p.verify(None);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("blobs: a symbolic link inside the folder"), "{err}");
}

/// One byte of every file changed in turn: verify (with and without the key) and decrypt
/// refuse with exit 5 and write nothing, naming the file (a data file's model: its digest
/// covers the model with its data files).
#[test]
fn a_changed_byte_of_any_file_is_refused() {
    let p = protected();
    for (name, bytes) in contents(&p.out) {
        let path = p.out.join(&name);
        let mut changed = bytes.clone();
        let at = changed.len() / 2;
        changed[at] ^= 0x01;
        std::fs::write(&path, &changed).unwrap();
        let (code, err) = p.verify(None);
        assert_eq!(code, 5, "verify {name}: {err}");
        let named = if name.ends_with(".bin") { "decoder.onnx: ".to_string() } else { name.clone() };
        assert!(err.contains(&named), "verify {name}: {err}");
        assert_eq!(p.verify(Some(&p.key)).0, 5, "verify --key-file {name}");
        let (code, err) = p.decrypt(&p.key);
        assert_eq!(code, 5, "decrypt {name}: {err}");
        std::fs::write(&path, &bytes).unwrap();
    }
    assert_eq!(p.verify(None).0, 0);
}

#[test]
fn a_missing_file_is_refused_by_name() {
    let p = protected();
    // A copied file, a model and a model's data file (as for a single model: exit 3).
    for (name, want) in [("tokenizer.json", 5), ("vision/model.onnx", 5), ("extra.bin", 3)] {
        let path = p.out.join(name);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let (code, err) = p.verify(None);
        assert_eq!(code, want, "{name}: {err}");
        assert!(err.contains(name), "{name}: {err}");
        let (code, err) = p.decrypt(&p.key);
        assert_eq!(code, want, "{name}: {err}");
        std::fs::write(&path, bytes).unwrap();
    }
}

#[test]
fn an_extra_file_is_refused_by_verify_and_decrypt() {
    let p = protected();
    std::fs::write(p.out.join("chat_template.jinja"), b"{{ messages }}").unwrap();
    let (code, err) = p.verify(None);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("chat_template.jinja is not part of the protected folder"), "{err}");
    let (code, err) = p.decrypt(&p.key);
    assert_eq!(code, 5, "{err}");
}

#[test]
fn swapped_models_are_refused() {
    let p = protected();
    let (a, b) = (p.out.join("decoder.onnx"), p.out.join("vision/model.onnx"));
    let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::write(&a, &y).unwrap();
    std::fs::write(&b, &x).unwrap();
    for data in ["weights.bin", "extra.bin"] {
        std::fs::rename(p.out.join(data), p.out.join("vision").join(data)).unwrap();
    }
    let (code, err) = p.verify(None);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("decoder.onnx: its folder binding says it is vision/model.onnx"), "{err}");
    assert_eq!(p.decrypt(&p.key).0, 5);
}

#[test]
fn a_model_of_another_folder_encryption_is_refused() {
    let p = protected();
    let other = p.base().join("other");
    let (code, _, err) =
        run(&["encrypt", path_str(&p.plain), "-o", path_str(&other), "--key-file", path_str(&p.key), "-q"]);
    assert_eq!(code, 0, "{err}");
    std::fs::copy(other.join("vision/model.onnx"), p.out.join("vision/model.onnx")).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
    let (code, err) = p.verify(Some(&p.key));
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("vision/model.onnx is from another folder encryption"), "{err}");
    assert_eq!(p.decrypt(&p.key).0, 5);
}

#[test]
fn a_wrong_key_is_refused() {
    let p = protected();
    let other = p.base().join("other-key");
    let (code, _, err) = run(&["keygen", "-o", path_str(&other), "-q"]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = p.decrypt(&other);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("decoder.onnx"), "{err}");
    assert_eq!(p.verify(Some(&other)).0, 4);
}

#[test]
fn rewrap_changes_the_recipients_of_every_model() {
    let p = protected();
    let new = p.base().join("new.key");
    assert_eq!(run(&["keygen", "-o", path_str(&new), "-q"]).0, 0);
    // The journal of an in-place rewrap of a model that a crash interrupted before it was
    // whole: undone (removed) first, and reported.
    let journal = p.out.join(".decoder.onnx.onnx-protect-tail");
    std::fs::write(&journal, b"onnx-protect-tail-v2 12").unwrap();
    let (code, out, err) = run(&[
        "rewrap",
        path_str(&p.out),
        "--in-place",
        "--key-file",
        path_str(&p.key),
        "--add-key-file",
        path_str(&new),
        "--remove-key-file",
        path_str(&p.key),
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["models"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["recovered"], serde_json::json!([["decoder.onnx", "rolled_back"]]), "{v}");
    assert!(!journal.exists());
    assert_eq!(p.decrypt(&p.key).0, 4);
    assert_eq!(p.decrypt(&new).0, 0);
    assert!(contents(&p.base().join("back")) == contents(&p.plain), "the decrypted folder is not the original");
}

#[test]
fn options_and_inputs_a_folder_cannot_take_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plain = plain_folder(dir.path());
    let key = keygen_in(dir.path());
    let out = dir.path().join("out");
    let (p, o, k) = (path_str(&plain), path_str(&out), path_str(&key));
    let (code, _, err) = run(&["encrypt", p, "--in-place", "--key-file", k]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["encrypt", p, "-o", o, "--key-file", k, "--lock-outputs"]);
    assert_eq!(code, 2, "{err}");
    // A link inside the folder (hostile input): exit 3, nothing written.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/etc/passwd", plain.join("vocab.txt")).unwrap();
        let (code, _, err) = run(&["encrypt", p, "-o", o, "--key-file", k]);
        assert_eq!(code, 3, "{err}");
        assert!(err.contains("vocab.txt"), "{err}");
        std::fs::remove_file(plain.join("vocab.txt")).unwrap();
    }
    assert!(!out.exists());
    // An output that is not empty.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("x"), b"x").unwrap();
    let (code, _, err) = run(&["encrypt", p, "-o", o, "--key-file", k]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(contents(&out).len(), 1);
}

/// A folder with access tiers: a tier-1 key decrypts tier 1 of every model (`--tier` as for
/// a model), the result is a folder of partly decrypted models that still verifies, and the
/// top key gives the original folder back.
#[test]
fn a_tier_key_decrypts_its_tier_of_every_model() {
    let dir = tempfile::tempdir().unwrap();
    let plain = plain_folder(dir.path());
    let key = dir.path().join("k.key");
    assert_eq!(run(&["keygen", "-o", path_str(&key), "--tiers", "2", "-q"]).0, 0);
    let tier1 = dir.path().join("k.key.tier1");
    let out = dir.path().join("protected");
    let (code, _, err) = run(&[
        "encrypt",
        path_str(&plain),
        "-o",
        path_str(&out),
        "--key-file",
        path_str(&key),
        "--tiers",
        "2",
        "--mode",
        "*=fp",
        "-q",
    ]);
    assert_eq!(code, 0, "{err}");
    let part = dir.path().join("part");
    let (code, _, err) =
        run(&["decrypt", path_str(&out), "-o", path_str(&part), "--key-file", path_str(&tier1), "--tier", "1", "-q"]);
    assert_eq!(code, 0, "{err}");
    let (stored, partial) = (contents(&out), contents(&part));
    assert_ne!(stored["vision/model.onnx"], partial["vision/model.onnx"]);
    assert_eq!(stored["tokenizer.json"], partial["tokenizer.json"]);
    let (code, _, err) = run(&["verify", path_str(&part), "--key-file", path_str(&tier1)]);
    assert_eq!(code, 0, "{err}");
    let back = dir.path().join("back");
    let (code, _, err) = run(&["decrypt", path_str(&part), "-o", path_str(&back), "--key-file", path_str(&key), "-q"]);
    assert_eq!(code, 0, "{err}");
    assert!(contents(&back) == contents(&plain), "the decrypted folder is not the original");
}

/// The publisher's key signs every model of the folder; `verify --signer` checks each, and
/// another publisher's key is refused (exit 5).
#[test]
fn every_model_of_a_folder_is_signed() {
    let dir = tempfile::tempdir().unwrap();
    let plain = plain_folder(dir.path());
    let key = keygen_in(dir.path());
    let signer = |name: &str| {
        let sk = dir.path().join(name);
        assert_eq!(run(&["keygen", "--signing", "-o", path_str(&sk), "-q"]).0, 0);
        let text = std::fs::read_to_string(&sk).unwrap();
        let public = text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_string();
        (sk, public)
    };
    let ((sk, public), (_, other)) = (signer("a.sign"), signer("b.sign"));
    let out = dir.path().join("protected");
    let (p, o, k) = (path_str(&plain), path_str(&out), path_str(&key));
    let (code, _, err) = run(&["encrypt", p, "-o", o, "--key-file", k, "--sign-key", path_str(&sk), "-q"]);
    assert_eq!(code, 0, "{err}");
    let (code, json, err) = run(&["verify", o, "--signer", &public, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    for m in v["models"].as_array().unwrap() {
        assert_eq!(m["signers"], serde_json::json!([public.clone()]), "{v}");
    }
    let (code, _, err) = run(&["verify", o, "--signer", &other]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("decoder.onnx"), "{err}");
}

/// A folder as an item of `batch --list`: encrypted and verified whole; a changed file of
/// it fails the run with the folder's exit code (5), and `batch rekey` refuses it (2).
#[test]
fn batch_takes_a_folder_from_its_list() {
    let dir = tempfile::tempdir().unwrap();
    plain_folder(dir.path());
    let key = keygen_in(dir.path());
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "plain\n").unwrap();
    let (enc, k) = (dir.path().join("enc"), path_str(&key));
    let batch = |op: &str, base: &Path, out: &Path, extra: &[&str]| {
        let mut args =
            vec!["batch", op, "--list", path_str(&list), "--base", path_str(base), "--out-dir", path_str(out)];
        args.extend(extra);
        args.extend(["--key-file", k, "--json"]);
        run(&args)
    };
    let (code, out, err) = batch("encrypt", dir.path(), &enc, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(contents(&enc.join("plain")).len(), contents(&dir.path().join("plain")).len());
    let (code, out, err) = batch("verify", &enc, &dir.path().join("v"), &[]);
    assert_eq!(code, 0, "{out}{err}");
    std::fs::write(enc.join("plain/tokenizer.json"), b"{}").unwrap();
    let (code, out, err) = batch("verify", &enc, &dir.path().join("v2"), &[]);
    assert_eq!(code, 5, "{out}{err}");
    assert!(out.contains("\"error_kind\": \"modified\"") || out.contains("\"error_kind\":\"modified\""), "{out}");
    let (code, out, err) = batch("rekey", &enc, &dir.path().join("r"), &["--new-key-file", k]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("folder_operation"), "{out}");
}

/// A rewrap that would fail on one model (a signature that would go stale: the model was
/// signed alone) is refused before any model is rewritten, naming it; with
/// `--drop-signatures` every model is rewrapped.
#[test]
fn rewrap_refuses_before_writing_anything() {
    let p = protected();
    let sk = p.base().join("s.sign");
    assert_eq!(run(&["keygen", "--signing", "-o", path_str(&sk), "-q"]).0, 0);
    let model = p.out.join("vision/model.onnx");
    let (code, _, err) = run(&["sign", path_str(&model), "--in-place", "--sign-key", path_str(&sk), "-q"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(p.verify(None).0, 0);
    let new = p.base().join("new.key");
    assert_eq!(run(&["keygen", "-o", path_str(&new), "-q"]).0, 0);
    let before = contents(&p.out);
    let rewrap = |extra: &[&str]| {
        let mut args = vec!["rewrap", path_str(&p.out), "--in-place", "--key-file", path_str(&p.key)];
        args.extend(["--add-key-file", path_str(&new)]);
        args.extend(extra);
        run(&args)
    };
    let (code, _, err) = rewrap(&[]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("vision/model.onnx"), "{err}");
    assert!(contents(&p.out) == before, "a model was rewritten");
    let (code, _, err) = rewrap(&["--drop-signatures"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(p.decrypt(&new).0, 0);
}
