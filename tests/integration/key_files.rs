//! Key files record their kind: `keygen` and `derive-tier-key` write the typed
//! form, `derive-tier-key` takes the tier from the file, wrong kinds and
//! non-key files get a one-line key error (exit 4), and older files still work.

use std::path::{Path, PathBuf};

use crate::util::{root, run};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

/// (exit code, stderr) of a run that must fail.
fn fails(args: &[&str]) -> (i32, String) {
    let (code, _, err) = run(args);
    assert_ne!(code, 0, "{args:?} succeeded");
    (code, err)
}

/// The key line of a typed key file.
fn key_line(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "{text}");
    lines[0].to_owned()
}

fn key_hex(path: &Path) -> String {
    key_line(path).rsplit(' ').next().unwrap().to_owned()
}

fn tiers3(dir: &Path) -> PathBuf {
    let k = dir.join("k.key");
    ok(&["keygen", "-o", s(&k), "--tiers", "3"]);
    k
}

fn tier_file(k: &Path, t: u32) -> PathBuf {
    let mut p = k.as_os_str().to_owned();
    p.push(format!(".tier{t}"));
    PathBuf::from(p)
}

#[test]
fn keygen_records_the_kind_and_tier_of_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let k = tiers3(dir.path());
    assert!(key_line(&k).starts_with("onnx-protect-key-v1 master tiers=3 "), "{}", key_line(&k));
    assert!(key_line(&tier_file(&k, 2)).starts_with("onnx-protect-key-v1 tier=2 "));
    assert!(key_line(&tier_file(&k, 1)).starts_with("onnx-protect-key-v1 tier=1 "));
    let text = std::fs::read_to_string(&k).unwrap();
    assert!(text.starts_with("# onnx-protect master key of 3 access tiers (fingerprint "), "{text}");
    let single = dir.path().join("one.key");
    ok(&["keygen", "-o", s(&single)]);
    assert!(key_line(&single).starts_with("onnx-protect-key-v1 master tiers=1 "));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&single).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn derive_tier_key_takes_the_tier_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let k = tiers3(dir.path());
    let from_master = dir.path().join("a.key");
    ok(&["derive-tier-key", "--key-file", s(&k), "--tier", "1", "-o", s(&from_master)]);
    assert_eq!(std::fs::read(&from_master).unwrap(), std::fs::read(tier_file(&k, 1)).unwrap());
    let from_tier2 = dir.path().join("b.key");
    ok(&["derive-tier-key", "--key-file", s(&tier_file(&k, 2)), "--tier", "1", "-o", s(&from_tier2)]);
    assert_eq!(std::fs::read(&from_tier2).unwrap(), std::fs::read(tier_file(&k, 1)).unwrap());
    // A --from that agrees with the file is accepted; one that contradicts it is not.
    let agreed = dir.path().join("c.key");
    ok(&["derive-tier-key", "--key-file", s(&k), "--from", "3", "--tier", "2", "-o", s(&agreed)]);
    assert_eq!(std::fs::read(&agreed).unwrap(), std::fs::read(tier_file(&k, 2)).unwrap());
    let (_, err) = fails(&[
        "derive-tier-key",
        "--key-file",
        s(&tier_file(&k, 2)),
        "--from",
        "3",
        "--tier",
        "1",
        "-o",
        s(&dir.path().join("d")),
    ]);
    assert!(err.contains("the key of access tier 2") && err.contains("--from 3"), "{err}");
    // A tier key never yields a higher tier.
    let (_, err) =
        fails(&["derive-tier-key", "--key-file", s(&tier_file(&k, 1)), "--tier", "2", "-o", s(&dir.path().join("e"))]);
    assert!(err.contains("between 1 and 1"), "{err}");
    assert!(!dir.path().join("d").exists() && !dir.path().join("e").exists());
}

#[test]
fn older_key_files_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let k = tiers3(dir.path());
    let hex = key_hex(&k);
    let old_hex = dir.path().join("old.hex");
    std::fs::write(&old_hex, format!("{hex}\n")).unwrap();
    let raw: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    let old_raw = dir.path().join("old.raw");
    std::fs::write(&old_raw, raw).unwrap();

    // An older file does not record its tier: derive-tier-key asks for --from.
    let (_, err) =
        fails(&["derive-tier-key", "--key-file", s(&old_hex), "--tier", "1", "-o", s(&dir.path().join("x"))]);
    assert!(err.contains("--from is required"), "{err}");
    let derived = dir.path().join("d.key");
    ok(&["derive-tier-key", "--key-file", s(&old_raw), "--from", "3", "--tier", "1", "-o", s(&derived)]);
    assert_eq!(std::fs::read(&derived).unwrap(), std::fs::read(tier_file(&k, 1)).unwrap());

    // A model encrypted with the typed file decrypts with the older forms of the same key.
    let model = root().join("fixtures/digits/mlp.onnx");
    let enc = dir.path().join("enc.onnx");
    ok(&["encrypt", s(&model), "-o", s(&enc), "--key-file", s(&k), "--tiers", "3", "-q"]);
    for key in [&old_hex, &old_raw] {
        let out = dir.path().join("dec.onnx");
        ok(&["decrypt", s(&enc), "-o", s(&out), "--key-file", s(key), "-q"]);
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&model).unwrap());
        std::fs::remove_file(&out).unwrap();
    }
}

/// docs/format.md Appendix A: a master key's `tiers=N` is binding where it wraps the data keys
/// of a tiered model: encrypt, rekey's new key and rewrap's added key refuse another number of
/// tiers (exit 4, one line, nothing written); an untiered model takes any master key, and an
/// older key file, which records none, is taken as given.
#[test]
fn a_master_key_is_used_only_for_its_recorded_number_of_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let k3 = tiers3(dir.path());
    let k1 = dir.path().join("k1.key");
    ok(&["keygen", "-o", s(&k1)]);
    let model = root().join("fixtures/digits/mlp.onnx");
    let enc = dir.path().join("enc.onnx");
    let refused = |args: &[&str], recorded: &str, model_has: &str| {
        let (code, err) = fails(args);
        assert_eq!(code, 4, "{args:?}: {err}");
        assert!(err.contains(&format!("is the master key of {recorded}, and this model has {model_has}")), "{err}");
        assert_eq!(err.lines().filter(|l| !l.trim().is_empty()).count(), 1, "{err}");
    };
    refused(
        &["encrypt", s(&model), "-o", s(&enc), "--key-file", s(&k3), "--tiers", "2"],
        "3 access tiers",
        "2 access tiers",
    );
    refused(
        &["encrypt", s(&model), "-o", s(&enc), "--key-file", s(&k1), "--tiers", "3"],
        "no access tiers",
        "3 access tiers",
    );
    assert!(!enc.exists());

    ok(&["encrypt", s(&model), "-o", s(&enc), "--key-file", s(&k3), "--tiers", "3", "-q"]);
    let out = dir.path().join("out.onnx");
    refused(
        &["rekey", s(&enc), "-o", s(&out), "--key-file", s(&k3), "--new-key-file", s(&k1)],
        "no access tiers",
        "3 access tiers",
    );
    refused(
        &["rewrap", s(&enc), "-o", s(&out), "--key-file", s(&k3), "--add-key-file", s(&k1)],
        "no access tiers",
        "3 access tiers",
    );
    assert!(!out.exists());
    let k3b = dir.path().join("k3b.key");
    ok(&["keygen", "-o", s(&k3b), "--tiers", "3"]);
    ok(&["rewrap", s(&enc), "-o", s(&out), "--key-file", s(&k3), "--add-key-file", s(&k3b), "-q"]);

    // An untiered model takes any master key.
    let enc1 = dir.path().join("enc1.onnx");
    ok(&["encrypt", s(&model), "-o", s(&enc1), "--key-file", s(&k3), "-q"]);

    // An older key file (64 hex digits) records no tiers: used as given.
    let old = dir.path().join("old.hex");
    std::fs::write(&old, format!("{}\n", key_hex(&k3))).unwrap();
    let enc2 = dir.path().join("enc2.onnx");
    ok(&["encrypt", s(&model), "-o", s(&enc2), "--key-file", s(&old), "--tiers", "2", "-q"]);
}

#[test]
fn a_tier_key_is_refused_where_a_master_key_is_needed_but_decrypts_its_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let k = tiers3(dir.path());
    let model = root().join("fixtures/digits/mlp.onnx");
    let enc = dir.path().join("enc.onnx");
    let (code, err) = fails(&["encrypt", s(&model), "-o", s(&enc), "--key-file", s(&tier_file(&k, 1)), "--tiers", "3"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("the key of access tier 1; a master key is needed here"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
    assert!(!enc.exists());
    ok(&["encrypt", s(&model), "-o", s(&enc), "--key-file", s(&k), "--tiers", "3", "-q"]);
    let out = dir.path().join("t1.onnx");
    ok(&["decrypt", s(&enc), "-o", s(&out), "--key-file", s(&tier_file(&k, 1)), "--tier", "1", "-q"]);
    assert!(out.exists());
}

#[test]
fn hostile_key_files_get_a_one_line_key_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("fixtures/digits/mlp.onnx");
    let hex = "ab".repeat(32);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "not a key file"),
        ("model", std::fs::read(&model).unwrap(), "not a key file: it is larger than 4096 bytes"),
        ("huge", vec![b'#'; 10 << 20], "larger than 4096 bytes"),
        ("text", b"hello, world\n".to_vec(), "not a key file"),
        ("bad-hex", format!("onnx-protect-key-v1 master tiers=1 {}zz\n", &hex[..62]).into_bytes(), "line 1"),
        ("tier-17", format!("onnx-protect-key-v1 tier=17 {hex}\n").into_bytes(), "records tier 17"),
        ("tier-0", format!("# x\nonnx-protect-key-v1 tier=0 {hex}\n").into_bytes(), "line 2"),
        ("v2", format!("onnx-protect-key-v2 tier=1 {hex}\n").into_bytes(), "unknown key line version"),
    ];
    for (name, bytes, needle) in cases {
        let key = dir.path().join(name);
        std::fs::write(&key, &bytes).unwrap();
        let out = dir.path().join(format!("{name}.onnx"));
        let (code, err) = fails(&["encrypt", s(&model), "-o", s(&out), "--key-file", s(&key)]);
        assert_eq!(code, 4, "{name}: {err}");
        assert!(err.contains(needle) && err.contains(s(&key)), "{name}: {err}");
        assert!(!err.contains(&hex[..16]), "{name}: the error shows key bytes: {err}");
        assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{name}: {err}");
        assert!(!out.exists(), "{name}");
        let (code, _) = fails(&["derive-tier-key", "--key-file", s(&key), "--from", "1", "--tier", "1", "-o", s(&out)]);
        assert_eq!(code, 4, "{name}");
        assert!(!out.exists(), "{name}");
    }
}
