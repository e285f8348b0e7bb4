//! Signed licences on the command line: `encrypt --licence-authority` records the publisher's
//! key in the header (authenticated), `licence issue` signs licences, and `decrypt` and
//! `verify` refuse without a valid one, each refusal with its exit code and nothing written.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{bin, keygen_in, root};

fn model() -> PathBuf {
    root().join("fixtures/models/cnn_torch/model.onnx")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Runs the binary with the licence clock state in `dir`.
fn run(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin())
        .args(args)
        .env("ONNX_PROTECT_LICENCE_CLOCK", dir.join("clock"))
        .output()
        .expect("binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// (signing key file, its public signer string).
fn publisher(dir: &Path, name: &str) -> (PathBuf, String) {
    let k = dir.join(name);
    let (code, err) = run(dir, &["keygen", "--signing", "-o", s(&k), "-q"]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&k).expect("read");
    let public = text.lines().find_map(|l| l.strip_prefix("# public key: ")).expect("a public key line");
    (k, public.to_string())
}

fn issue(dir: &Path, key: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut args = vec!["licence", "issue", "--sign-key", s(key), "-o", s(&out), "-q"];
    args.extend_from_slice(extra);
    let (code, err) = run(dir, &args);
    assert_eq!(code, 0, "{err}");
    out
}

/// A key file in `dir`, a publisher (its signing key file and signer string) and
/// `model()` encrypted for the key at `out`, under that publisher's licence authority with
/// the model id `det-v3`: (key, signing key, authority).
fn licensed(dir: &Path, out: &Path) -> (PathBuf, PathBuf, String) {
    let key = keygen_in(dir);
    let (pk, authority) = publisher(dir, "pub.sk");
    let m = model();
    let args = ["encrypt", s(&m), "-o", s(out), "--key-file", s(&key), "--licence-authority", &authority];
    let (code, err) = run(dir, &[&args[..], &["--model-id", "det-v3", "-q"]].concat());
    assert_eq!(code, 0, "{err}");
    (key, pk, authority)
}

const WINDOW: [&str; 4] = ["--not-before", "2020-01-01T00:00:00Z", "--not-after", "2099-12-31T23:59:59Z"];
/// A window that closed in 2021.
const EXPIRED: [&str; 4] = ["--not-before", "2020-01-01T00:00:00Z", "--not-after", "2021-01-01T00:00:00Z"];

#[test]
fn a_licensed_model_opens_only_with_a_valid_licence_and_each_refusal_has_its_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let p = d.join("p.onnx");
    let (key, pk, authority) = licensed(d, &p);
    let out = d.join("out.onnx");
    let decrypt = |licence: Option<&Path>| {
        let mut args = vec!["decrypt", s(&p), "-o", s(&out), "--key-file", s(&key), "-q"];
        if let Some(l) = licence {
            args.extend_from_slice(&["--licence", s(l)]);
        }
        run(d, &args)
    };
    // No licence: exit 10, nothing written; keyless verification still works.
    let (code, err) = decrypt(None);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("licence required") && err.contains(&authority), "{err}");
    assert!(!out.exists());
    assert_eq!(run(d, &["verify", s(&p), "-q"]).0, 0);
    assert_eq!(run(d, &["verify", s(&p), "--key-file", s(&key), "-q"]).0, 10);

    let ok = issue(d, &pk, "ok.lic", &[&["--model", "id:det-v3", "--recipient", "any"][..], &WINDOW].concat());
    let (code, err) = decrypt(Some(&ok));
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&out).expect("read"), std::fs::read(model()).expect("read"));
    std::fs::remove_file(&out).expect("remove");
    assert_eq!(run(d, &["verify", s(&p), "--key-file", s(&key), "--licence", s(&ok), "-q"]).0, 0);
    // By content digest, for the key's stanza only.
    let label = format!(
        "key {}",
        onnx_protect_crypto::KeyFile::parse(&std::fs::read(&key).expect("read"))
            .map(|f| hex_fp(&f.into_key()))
            .expect("key")
    );
    let by_digest = issue(d, &pk, "digest.lic", &[&["--model-of", s(&p), "--recipient", &label][..], &WINDOW].concat());
    let (code, err) = decrypt(Some(&by_digest));
    assert_eq!(code, 0, "{err}");
    std::fs::remove_file(&out).expect("remove");

    let refusals: [(&str, Vec<&str>, i32, &str); 4] = [
        ("expired.lic", [&["--model", "id:det-v3", "--recipient", "any"][..], &EXPIRED].concat(), 12, "expired"),
        (
            "future.lic",
            vec![
                "--model",
                "id:det-v3",
                "--recipient",
                "any",
                "--not-before",
                "2098-01-01T00:00:00Z",
                "--not-after",
                "2099-01-01T00:00:00Z",
            ],
            13,
            "not yet valid",
        ),
        ("model.lic", [&["--model", "id:other", "--recipient", "any"][..], &WINDOW].concat(), 14, "wrong model"),
        (
            "device.lic",
            [&["--model", "id:det-v3", "--recipient", "key 0000000000000000"][..], &WINDOW].concat(),
            15,
            "wrong device",
        ),
    ];
    for (name, args, want, what) in refusals {
        let l = issue(d, &pk, name, &args);
        let (code, err) = decrypt(Some(&l));
        assert_eq!(code, want, "{name}: {err}");
        assert!(err.contains(what) && err.lines().count() == 1, "{name}: {err}");
        assert!(!out.exists(), "{name}");
    }
    // Another publisher's licence, and every byte of a valid one changed: refused (11, or 10
    // where the change breaks the text's form), never opened.
    let (other_pk, _) = publisher(d, "other.sk");
    let other =
        issue(d, &other_pk, "other.lic", &[&["--model", "id:det-v3", "--recipient", "any"][..], &WINDOW].concat());
    let (code, err) = decrypt(Some(&other));
    assert_eq!(code, 11, "{err}");
    let text = std::fs::read(&ok).expect("read");
    let bad = d.join("bad.lic");
    for i in 0..text.len() {
        let mut t = text.clone();
        t[i] ^= 0x01;
        std::fs::write(&bad, &t).expect("write");
        let (code, err) = decrypt(Some(&bad));
        assert!(code == 11 || code == 10, "byte {i}: exit {code}: {err}");
        assert!(!out.exists(), "byte {i}");
    }
    // A clock set back below the recorded high-water mark: 16.
    let clock = d.join("clock");
    std::fs::write(&clock, "onnx-protect-clock-v1\nhigh-water: 2090-01-01T00:00:00Z\n").expect("write");
    let (code, err) = decrypt(Some(&ok));
    assert_eq!(code, 16, "{err}");
    assert!(err.contains("clock"), "{err}");
    assert!(!out.exists());
}

fn hex_fp(k: &onnx_protect_crypto::MasterKey) -> String {
    k.fingerprint().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_licence_grants_its_tiers_only_and_the_authority_is_authenticated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let key = d.join("k.key");
    assert_eq!(run(d, &["keygen", "-o", s(&key), "--tiers", "2", "-q"]).0, 0);
    let (pk, authority) = publisher(d, "pub.sk");
    let p = d.join("p.onnx");
    let (code, err) = run(
        d,
        &[
            "encrypt",
            s(&model()),
            "-o",
            s(&p),
            "--key-file",
            s(&key),
            "--tiers",
            "2",
            "--mode",
            "*=fp",
            "--licence-authority",
            &authority,
            "-q",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let one =
        issue(d, &pk, "one.lic", &[&["--model-of", s(&p), "--recipient", "any", "--tiers", "1"][..], &WINDOW].concat());
    let out = d.join("out.onnx");
    // The key reaches tier 2; the licence grants tier 1: asking for tier 2 is refused,
    // the default decrypts tier 1 only (the model keeps its tier-2 weights encrypted).
    let (code, err) =
        run(d, &["decrypt", s(&p), "-o", s(&out), "--key-file", s(&key), "--licence", s(&one), "--tier", "2", "-q"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("the licence grants this key tier 1; it cannot decrypt tier 2"), "{err}");
    let (code, err) = run(d, &["decrypt", s(&p), "-o", s(&out), "--key-file", s(&key), "--licence", s(&one), "-q"]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(std::fs::read(&out).expect("read"), std::fs::read(model()).expect("read"));
    // rekey and rewrap rewrite every tier's MAC: the top tier, which the licence withholds.
    let new_key = d.join("new.key");
    assert_eq!(run(d, &["keygen", "-o", s(&new_key), "--tiers", "2", "-q"]).0, 0);
    let to = d.join("to.onnx");
    for (op, new_option) in [("rekey", "--new-key-file"), ("rewrap", "--add-key-file")] {
        let args = [op, s(&p), "-o", s(&to), "--key-file", s(&key), new_option, s(&new_key), "-q"];
        let (code, err) = with_licence(d, &args, Some(&one));
        assert_eq!(code, 4, "{op}: {err}");
        assert!(
            err.contains("the licence grants this key tier 1 of 2; ") && err.contains("needs the top-tier key"),
            "{op}: {err}"
        );
        assert!(!to.exists(), "{op}");
    }
    // The authority is part of the authenticated header: a model whose recorded authority
    // is replaced (another publisher's key, same length) no longer verifies.
    let bytes = std::fs::read(&p).expect("read");
    let m = crate::util::manifest_of(&p);
    let auth = m.sealed.header.licence_authority.clone();
    assert_eq!(auth.len(), 32);
    let (_, other) = publisher(d, "other.sk");
    let other = onnx_protect_keys::SignerKey::parse(&other).expect("signer").to_bytes();
    // The header is inside the base64 entry: re-encode it with the changed key.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut header = m.sealed.header.clone();
    header.licence_authority = other.to_vec();
    let mut env = m.sealed.envelope.clone();
    env.header = onnx_protect_proto::Message::encode_to_vec(&header);
    let old_value = b64.encode(onnx_protect_proto::Message::encode_to_vec(&m.sealed.envelope)).into_bytes();
    let new_value = b64.encode(onnx_protect_proto::Message::encode_to_vec(&env)).into_bytes();
    assert_eq!(old_value.len(), new_value.len());
    let at = bytes.windows(old_value.len()).position(|w| w == old_value.as_slice()).expect("the entry");
    let mut changed = bytes.clone();
    changed[at..at + new_value.len()].copy_from_slice(&new_value);
    let q = d.join("q.onnx");
    std::fs::write(&q, &changed).expect("write");
    let (code, err) = run(d, &["verify", s(&q), "-q"]);
    assert_eq!(code, 5, "{err}");
    let (code, err) = run(d, &["decrypt", s(&q), "-o", s(&out), "--key-file", s(&key), "--licence", s(&one), "-q"]);
    assert_eq!(code, 5, "{err}");
}

#[test]
fn rekey_and_rewrap_open_a_licensed_model_only_with_a_licence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let p = d.join("p.onnx");
    let (key, pk, _) = licensed(d, &p);
    let ok = issue(d, &pk, "ok.lic", &[&["--model", "id:det-v3", "--recipient", "any"][..], &WINDOW].concat());
    let expired = issue(d, &pk, "old.lic", &[&["--model", "id:det-v3", "--recipient", "any"][..], &EXPIRED].concat());
    let by_digest = issue(d, &pk, "digest.lic", &[&["--model-of", s(&p), "--recipient", "any"][..], &WINDOW].concat());
    let new_key = d.join("new.key");
    assert_eq!(run(d, &["keygen", "-o", s(&new_key), "-q"]).0, 0);
    let out = d.join("out.onnx");

    let plain = d.join("plain.onnx");
    // rekey and rewrap: no licence (10), an expired one (12), one for another stanza than
    // the key's (15): nothing written; a valid one: the new model keeps the authority and
    // opens with the new key only with a licence too. Re-wrapping keeps the content (a
    // licence naming its digest still opens it); re-encrypting changes it (such a licence
    // is then for another model, 14; the model id names both).
    let other_device = issue(
        d,
        &pk,
        "dev.lic",
        &[&["--model", "id:det-v3", "--recipient", "key 0000000000000000"][..], &WINDOW].concat(),
    );
    for (op, new_option, digest_code) in [("rekey", "--new-key-file", 14), ("rewrap", "--add-key-file", 0)] {
        let args = [op, s(&p), "-o", s(&out), "--key-file", s(&key), new_option, s(&new_key), "-q"];
        for (licence, want) in [(None, 10), (Some(expired.as_path()), 12), (Some(other_device.as_path()), 15)] {
            let (code, err) = with_licence(d, &args, licence);
            assert_eq!(code, want, "{op}: {err}");
            assert_eq!(err.lines().count(), 1, "{op}: {err}");
            assert!(!out.exists(), "{op}");
        }
        let (code, err) = with_licence(d, &args, Some(&ok));
        assert_eq!(code, 0, "{op}: {err}");
        let decrypt = ["decrypt", s(&out), "-o", s(&plain), "--key-file", s(&new_key), "-q"];
        assert_eq!(with_licence(d, &decrypt, None).0, 10, "{op}");
        let (code, err) = with_licence(d, &decrypt, Some(&ok));
        assert_eq!(code, 0, "{op}: {err}");
        assert_eq!(std::fs::read(&plain).expect("read"), std::fs::read(model()).expect("read"));
        std::fs::remove_file(&plain).expect("remove");
        let (code, err) = with_licence(d, &decrypt, Some(&by_digest));
        assert_eq!(code, digest_code, "{op}: {err}");
        let _ = std::fs::remove_file(&plain);
        std::fs::remove_file(&out).expect("remove");
    }
}

/// Runs `args`, with `--licence L` after them when given.
fn with_licence(dir: &Path, args: &[&str], licence: Option<&Path>) -> (i32, String) {
    match licence {
        Some(l) => run(dir, &[args, &["--licence", s(l)]].concat()),
        None => run(dir, args),
    }
}

#[test]
fn batch_decrypt_rekey_and_rewrap_take_the_licence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let models = d.join("models");
    std::fs::create_dir(&models).expect("mkdir");
    let (key, pk, _) = licensed(d, &models.join("a.onnx"));
    let ok = issue(d, &pk, "ok.lic", &[&["--model", "id:det-v3", "--recipient", "any"][..], &WINDOW].concat());
    let new_key = d.join("new.key");
    assert_eq!(run(d, &["keygen", "-o", s(&new_key), "-q"]).0, 0);
    let ops: [(&str, Vec<&str>); 3] = [
        ("decrypt", vec![]),
        ("rekey", vec!["--new-key-file", s(&new_key)]),
        ("rewrap", vec!["--add-key-file", s(&new_key)]),
    ];
    for (op, extra) in ops {
        let out = d.join(format!("out-{op}"));
        let base = [&["batch", op, "--dir", s(&models), "--out-dir", s(&out), "--key-file", s(&key), "-q"][..], &extra]
            .concat();
        let report = d.join(format!("{op}.jsonl"));
        let (code, err) = run(d, &[&base[..], &["--report", s(&report)]].concat());
        assert_ne!(code, 0, "{op} without a licence: {err}");
        let lines = std::fs::read_to_string(&report).expect("the report");
        assert!(lines.contains("licence required"), "{op}: {lines}");
        assert!(!out.join("a.onnx").exists(), "{op}");
        let (code, err) = run(d, &[&base[..], &["--licence", s(&ok)]].concat());
        assert_eq!(code, 0, "{op}: {err}");
        assert!(out.join("a.onnx").exists(), "{op}");
    }
}

/// `run` decrypts in memory through the same licence check: refused without a licence or
/// with one for another device, nothing run; with a valid one, the original's outputs.
#[cfg(feature = "tract")]
#[test]
fn run_on_a_licensed_model_needs_its_licence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let key = keygen_in(d);
    let (pk, authority) = publisher(d, "pub.sk");
    let src = root().join("fixtures/digits/cnn.onnx");
    let p = d.join("p.onnx");
    let (code, err) =
        run(d, &["encrypt", s(&src), "-o", s(&p), "--key-file", s(&key), "--licence-authority", &authority, "-q"]);
    assert_eq!(code, 0, "{err}");
    let x = root().join("fixtures/digits/test_x.npy");
    let run_model = |m: &Path, out: &Path, extra: &[&str]| {
        let args = [&["run", s(m), "-i", s(&x), "--output-dir", s(out)][..], extra].concat();
        run(d, &args)
    };
    let (code, err) = run_model(&src, &d.join("orig"), &[]);
    assert_eq!(code, 0, "{err}");
    let out = d.join("out");
    let (code, err) = run_model(&p, &out, &["--key-file", s(&key)]);
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("licence required") && !out.exists(), "{err}");
    let device = issue(
        d,
        &pk,
        "dev.lic",
        &[&["--model-of", s(&p), "--recipient", "key 0000000000000000"][..], &WINDOW].concat(),
    );
    let (code, err) = run_model(&p, &out, &["--key-file", s(&key), "--licence", s(&device)]);
    assert_eq!(code, 15, "{err}");
    assert!(!out.exists());
    let ok = issue(d, &pk, "ok.lic", &[&["--model-of", s(&p), "--recipient", "any"][..], &WINDOW].concat());
    let (code, err) = run_model(&p, &out, &["--key-file", s(&key), "--licence", s(&ok)]);
    assert_eq!(code, 0, "{err}");
    let read = |dir: &Path| std::fs::read(dir.join("logits.npy")).expect("read the outputs");
    assert!(read(&out) == read(&d.join("orig")), "run with the licence differs from the original");
}

#[test]
fn a_model_opened_with_a_key_file_keeps_the_tpm_anchors_of_the_clock_state() {
    // The state a check through a TPM key left (its anchor names the key by a digest), then
    // another licensed model opened with a key file: the anchor stays as it was.
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let p = d.join("p.onnx");
    let (key, pk, _) = licensed(d, &p);
    let ok = issue(d, &pk, "ok.lic", &[&["--model", "id:det-v3", "--recipient", "any"][..], &WINDOW].concat());
    let clock = d.join("clock");
    let out = d.join("out.onnx");
    // An anchor as a check through a TPM key records it, and one of a single-anchor state.
    let id = onnx_protect_licence::source_id("onnx-protect-tpm1x");
    for anchor in [format!("tpm: 2021-01-01T00:00:00Z 1234 {id}"), "tpm: 2021-01-01T00:00:00Z 1234".to_string()] {
        let state = format!("onnx-protect-clock-v1\nhigh-water: 2021-01-01T00:00:00Z\n{anchor}\n");
        std::fs::write(&clock, state).expect("write");
        let (code, err) = run(d, &["decrypt", s(&p), "-o", s(&out), "--key-file", s(&key), "--licence", s(&ok), "-q"]);
        assert_eq!(code, 0, "{err}");
        std::fs::remove_file(&out).expect("remove");
        let state = std::fs::read_to_string(&clock).expect("read");
        assert!(!state.contains("high-water: 2021-01-01T00:00:00Z"), "the mark moved: {state}");
        assert!(state.ends_with(&format!("\n{anchor}\n")), "{state}");
    }
}

#[test]
fn check_with_a_key_needs_the_licence_and_exits_with_its_refusal_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let p = d.join("p.onnx");
    let (key, pk, _) = licensed(d, &p);
    let ok = issue(d, &pk, "ok.lic", &[&["--model", "id:det-v3", "--recipient", "any"][..], &WINDOW].concat());
    let expired = issue(d, &pk, "exp.lic", &[&["--model", "id:det-v3", "--recipient", "any"][..], &EXPIRED].concat());
    let check = |extra: &[&str]| {
        let out = Command::new(bin())
            .args([&["check", "--json", s(&p), "--key-file", s(&key)][..], extra].concat())
            .env("ONNX_PROTECT_LICENCE_CLOCK", d.join("clock"))
            .output()
            .expect("binary runs");
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
        let reasons: Vec<String> = doc["models"][0]["failures"]
            .as_array()
            .expect("failures")
            .iter()
            .map(|f| f["reason"].as_str().expect("reason").to_string())
            .collect();
        (out.status.code().unwrap_or(-1), reasons, doc)
    };
    // No licence: the documented code of a missing licence, not a wrong key.
    let (code, reasons, doc) = check(&[]);
    assert_eq!((code, reasons), (10, vec!["licence_missing".to_string()]), "{doc}");
    assert_eq!(doc["exit_code"], 10);
    let (code, reasons, doc) = check(&["--licence", s(&ok)]);
    assert_eq!(code, 0, "{reasons:?} {doc}");
    assert_eq!(doc["models"][0]["integrity"], "mac");
    let (code, reasons, _) = check(&["--licence", s(&expired)]);
    assert_eq!((code, reasons), (12, vec!["licence_expired".to_string()]));
    let ahead = d.join("ahead.clock");
    std::fs::write(&ahead, "onnx-protect-clock-v1\nhigh-water: 2090-01-01T00:00:00Z\n").expect("write");
    let (code, reasons, _) = check(&["--licence", s(&ok), "--licence-clock", s(&ahead)]);
    assert_eq!((code, reasons), (16, vec!["licence_clock".to_string()]));
    // Keyless, the licence is not consulted; a licence without a key is a usage error.
    assert_eq!(run(d, &["check", s(&p), "-q"]).0, 0);
    let (code, err) = run(d, &["check", s(&p), "--licence", s(&ok)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--licence") && err.contains("key option"), "{err}");
}
