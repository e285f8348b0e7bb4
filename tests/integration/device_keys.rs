//! Keys on customers' machines, on the command line: age plugin recipients and identities
//! through `age-plugin-onnxtest` (crates/age-plugin-test, built by `cargo test --workspace`
//! next to the binary), and TPM recipients, which wrap without a TPM. Opening through a TPM
//! needs the binary's feature `tpm` and swtpm: tests/python/test_tpm_cli.py.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{bin, root};

fn model() -> PathBuf {
    root().join("fixtures/models/cnn_torch/model.onnx")
}

fn plugin() -> Option<PathBuf> {
    let p = bin().parent().expect("a directory").join("age-plugin-onnxtest");
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("ONNX_PROTECT_REQUIRE_TEST_PLUGIN").as_deref() != Ok("1"),
        "{} is missing: cargo build -p onnx-protect-age-plugin-test",
        p.display()
    );
    eprintln!("{} is missing (cargo build -p onnx-protect-age-plugin-test): plugin tests skipped", p.display());
    None
}

/// `PATH` with the test plugin's directory first.
fn path_with(plugin: &Path) -> String {
    let old = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![plugin.parent().expect("a directory").to_path_buf()];
    dirs.extend(std::env::split_paths(&old));
    std::env::join_paths(dirs).expect("a PATH").into_string().expect("UTF-8")
}

fn run(args: &[&str], path: Option<&str>) -> (i32, String, String) {
    let mut c = Command::new(bin());
    c.args(args);
    if let Some(p) = path {
        c.env("PATH", p);
    }
    let out = c.output().expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// (recipient, identity file) of a new test device in `mode`.
fn device(plugin: &Path, dir: &Path, mode: &str) -> (String, PathBuf) {
    let out = Command::new(plugin).args(["--keygen", mode]).output().expect("plugin runs");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let r = text.lines().next().and_then(|l| l.strip_prefix("# recipient: ")).expect("a recipient").to_string();
    let f = dir.join(format!("{mode}.identity"));
    std::fs::write(&f, text).expect("write");
    (r, f)
}

#[test]
fn a_model_for_an_age_plugin_recipient_opens_with_its_identity_only() {
    let Some(plugin) = plugin() else { return };
    let path = path_with(&plugin);
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, id) = device(&plugin, dir.path(), "ok");
    let protected = dir.path().join("p.onnx");
    let (code, _, err) = run(&["encrypt", s(&model()), "-o", s(&protected), "--recipient", &r], Some(&path));
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(&["inspect", s(&protected)], None);
    assert!(out.contains(&format!("age-plugin {r}")), "{out}");
    let plain = dir.path().join("plain.onnx");
    let (code, _, err) = run(&["decrypt", s(&protected), "-o", s(&plain), "--identity", s(&id)], Some(&path));
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&plain).expect("read"), std::fs::read(model()).expect("read"));

    // Another device of that plugin: wrong key (exit 4), nothing written.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let (_, other) = device(&plugin, elsewhere.path(), "ok");
    let out2 = dir.path().join("x.onnx");
    let (code, _, err) = run(&["decrypt", s(&protected), "-o", s(&out2), "--identity", s(&other)], Some(&path));
    assert_eq!(code, 4, "{err}");
    assert!(!out2.exists());
}

#[test]
fn a_failing_dying_or_missing_plugin_is_exit_4_with_its_reason_and_writes_nothing() {
    let Some(plugin) = plugin() else { return };
    let path = path_with(&plugin);
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, _) = device(&plugin, dir.path(), "ok");
    let protected = dir.path().join("p.onnx");
    let (code, _, err) = run(&["encrypt", s(&model()), "-o", s(&protected), "--recipient", &r], Some(&path));
    assert_eq!(code, 0, "{err}");
    let out = dir.path().join("out.onnx");
    for (mode, want) in [("refuse", "PIN blocked"), ("die", "age-plugin-onnxtest"), ("pin", "no PIN")] {
        let (_, id) = device(&plugin, dir.path(), mode);
        let (code, _, err) = run(&["decrypt", s(&protected), "-o", s(&out), "--identity", s(&id)], Some(&path));
        assert_eq!(code, 4, "{mode}: {err}");
        assert!(err.contains(want) && err.lines().count() == 1, "{mode}: {err}");
        assert!(!out.exists(), "{mode}");
    }
    // The plugin missing from PATH, to open and to encrypt.
    let (_, id) = device(&plugin, dir.path(), "ok");
    let (code, _, err) = run(&["decrypt", s(&protected), "-o", s(&out), "--identity", s(&id)], Some("/nonexistent"));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("could not find 'age-plugin-onnxtest' on the PATH"), "{err}");
    let (code, _, err) = run(&["encrypt", s(&model()), "-o", s(&out), "--recipient", &r], Some("/nonexistent"));
    assert_eq!(code, 4, "{err}");
    assert!(!out.exists());
    // A refusing recipient: encrypt fails, nothing written.
    let (bad_r, _) = device(&plugin, dir.path(), "refuse");
    let (code, _, err) = run(&["encrypt", s(&model()), "-o", s(&out), "--recipient", &bad_r], Some(&path));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("refuses to wrap"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_plugin_in_the_current_directory_is_not_run_through_a_relative_path_entry() {
    let Some(plugin) = plugin() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (r, id) = device(&plugin, dir.path(), "ok");
    let protected = dir.path().join("p.onnx");
    let (code, _, err) =
        run(&["encrypt", s(&model()), "-o", s(&protected), "--recipient", &r], Some(&path_with(&plugin)));
    assert_eq!(code, 0, "{err}");
    // The plugin only in the current directory, which PATH names as `.`, as an empty entry
    // and as a relative directory: not found, to encrypt or to open.
    let cwd = dir.path().join("work");
    std::fs::create_dir_all(cwd.join("bin")).expect("mkdir");
    for place in [cwd.join("age-plugin-onnxtest"), cwd.join("bin").join("age-plugin-onnxtest")] {
        std::fs::copy(&plugin, &place).expect("copy the plugin");
    }
    let out = dir.path().join("out.onnx");
    let m = model();
    let attempts: [&[&str]; 2] = [
        &["encrypt", s(&m), "-o", s(&out), "--recipient", &r],
        &["decrypt", s(&protected), "-o", s(&out), "--identity", s(&id)],
    ];
    for args in attempts {
        let o = Command::new(bin())
            .args(args)
            .current_dir(&cwd)
            .env("PATH", ".::bin:/nonexistent:")
            .output()
            .expect("binary runs");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(4), "{args:?}: {err}");
        assert!(err.contains("could not find 'age-plugin-onnxtest' on the PATH"), "{err}");
        assert!(!out.exists(), "{args:?}");
    }
}

/// The TPM recipient of tests: the P-256 generator point (private key 1), so the test can
/// check the stanza opens to the data key without a TPM.
const TPM_RECIPIENT: &str = "onnx-protect-tpm1qd43050juykyy3lchnnw2caygre8wqmasyk7kvaq7jsnj3wcnrpfvm7cs3u";

#[test]
fn a_tpm_recipient_is_wrapped_for_without_a_tpm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let protected = dir.path().join("p.onnx");
    let key = crate::util::keygen_in(dir.path());
    let (code, _, err) =
        run(&["encrypt", s(&model()), "-o", s(&protected), "--key-file", s(&key), "--recipient", TPM_RECIPIENT], None);
    assert_eq!(code, 0, "{err}");
    let m = crate::util::manifest_of(&protected);
    let st = m.sealed.stanzas.iter().find(|s| s.kind == "tpm").expect("a tpm stanza");
    assert_eq!(st.label, TPM_RECIPIENT);
    assert_eq!(st.body.len(), onnx_protect_tpm::TPM_BODY_LEN);
    // With private key 1, the ECDH of the ephemeral point E is E itself: its x coordinate.
    let r = onnx_protect_tpm::TpmRecipient::parse(TPM_RECIPIENT).expect("a recipient");
    let opened = r.open(st.tier, &st.body, |x, _| Ok(zeroize::Zeroizing::new(*x))).expect("well-formed");
    assert!(opened.is_some(), "the stanza opens under the recipient's private key");
    // Bad recipient strings: exit 4 naming the problem.
    let mut typo = TPM_RECIPIENT.to_string();
    typo.pop();
    typo.push('q');
    let (code, _, err) =
        run(&["encrypt", s(&model()), "-o", s(&dir.path().join("y.onnx")), "--recipient", &typo], None);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not a TPM recipient"), "{err}");
}

#[test]
fn a_tpm_key_file_without_tpm_support_or_tpm_is_exit_4() {
    let dir = tempfile::tempdir().expect("tempdir");
    let protected = dir.path().join("p.onnx");
    let (code, _, err) = run(&["encrypt", s(&model()), "-o", s(&protected), "--recipient", TPM_RECIPIENT], None);
    assert_eq!(code, 0, "{err}");
    let key_file = dir.path().join("device.tpmkey");
    std::fs::write(
        &key_file,
        format!("# a key at a persistent handle\nonnx-protect-tpm-key-v1 {TPM_RECIPIENT} persistent 0x81000001\n"),
    )
    .expect("write");
    let out = dir.path().join("o.onnx");
    let mut c = Command::new(bin());
    c.args(["decrypt", s(&protected), "-o", s(&out), "--identity", s(&key_file)]);
    // A TCTI where no TPM listens (builds with TPM support), or no support (without).
    c.env("ONNX_PROTECT_TPM_TCTI", "swtpm:host=127.0.0.1,port=9");
    let o = c.output().expect("runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(err.contains("built without TPM support") || err.contains("cannot reach the TPM"), "{err}");
    assert!(!out.exists());
    std::fs::write(&key_file, "onnx-protect-tpm-key-v1 nonsense\n").expect("write");
    let (code, _, err) = run(&["decrypt", s(&protected), "-o", s(&out), "--identity", s(&key_file)], None);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("TPM key file line 1: field 2"), "{err}");
}

/// The bytes of `logits.npy` from `run MODEL` on the digits test inputs, with the key
/// options `key` (none: the model as it is), written under `out`.
fn logits(model: &Path, key: &[&str], out: &Path, path: Option<&str>) -> Vec<u8> {
    let x = root().join("fixtures/digits/test_x.npy");
    let args = [&["run", s(model), "-i", s(&x), "--output-dir", s(out), "--force"][..], key].concat();
    let (code, _, err) = run(&args, path);
    assert_eq!(code, 0, "{args:?}: {err}");
    std::fs::read(out.join("logits.npy")).expect("read the outputs")
}

/// One kind of recipient: its options to encrypt for it and to open with it, and the
/// `PATH` they need.
struct RecipientKind {
    name: &'static str,
    encrypt: Vec<String>,
    open: Vec<String>,
    path: Option<String>,
}

/// The label lock's seed is sealed under the tier-1 data key, so every kind of recipient
/// that opens the data key opens the lock: a key file, a passphrase, an age X25519
/// identity and an age plugin identity (the TPM: tests/python/test_tpm_cli.py) each
/// decrypt a locked model byte for byte and run it (`run`, in memory) with the classes in
/// their true order, with its weights encrypted or in clear.
#[test]
fn a_label_locked_model_opens_and_runs_in_true_order_with_every_recipient_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let src = root().join("fixtures/digits/cnn.onnx");
    let key = crate::util::keygen_in(d);
    let pass = d.join("pass.txt");
    std::fs::write(&pass, "a passphrase of some length\n").expect("write");
    let age_id = d.join("age.identity");
    let (code, out, err) = run(&["keygen", "--recipient", "-o", s(&age_id), "--json"], None);
    assert_eq!(code, 0, "{err}");
    let age: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let age = age["recipient"].as_str().expect("a recipient").to_string();
    // (kind, encrypt options, open options, PATH)
    let pair = |a: &str, b: &Path| vec![a.to_string(), s(b).to_string()];
    let mut kinds = vec![
        RecipientKind { name: "key", encrypt: pair("--key-file", &key), open: pair("--key-file", &key), path: None },
        RecipientKind {
            name: "passphrase",
            encrypt: pair("--passphrase-file", &pass),
            open: pair("--passphrase-file", &pass),
            path: None,
        },
        RecipientKind {
            name: "x25519",
            encrypt: vec!["--recipient".into(), age],
            open: pair("--identity", &age_id),
            path: None,
        },
    ];
    if let Some(plugin) = plugin() {
        let (r, id) = device(&plugin, d, "ok");
        kinds.push(RecipientKind {
            name: "age-plugin",
            encrypt: vec!["--recipient".into(), r],
            open: pair("--identity", &id),
            path: Some(path_with(&plugin)),
        });
    }
    let original = cfg!(feature = "tract").then(|| logits(&src, &[], &d.join("orig"), None));
    for RecipientKind { name: kind, encrypt: enc, open, path } in &kinds {
        for extra in [&[][..], &["--clear-weights"][..]] {
            let name = format!("{kind}{}", extra.len());
            let locked = d.join(format!("{name}.onnx"));
            let enc: Vec<&str> = enc.iter().map(String::as_str).collect();
            let open: Vec<&str> = open.iter().map(String::as_str).collect();
            let args = [&["encrypt", s(&src), "-o", s(&locked), "--lock-outputs", "-q"][..], &enc, extra].concat();
            let (code, _, err) = run(&args, path.as_deref());
            assert_eq!(code, 0, "{name}: {err}");
            assert!(crate::util::manifest_of(&locked).sealed.header.label_lock.is_some(), "{name}");
            let back = d.join(format!("{name}.back.onnx"));
            let args = [&["decrypt", s(&locked), "-o", s(&back), "-q"][..], &open].concat();
            let (code, _, err) = run(&args, path.as_deref());
            assert_eq!(code, 0, "{name}: {err}");
            assert!(
                std::fs::read(&back).expect("read") == std::fs::read(&src).expect("read"),
                "{name}: not byte-exact"
            );
            let Some(original) = &original else { continue };
            let with_key = logits(&locked, &open, &d.join(format!("{name}.run")), path.as_deref());
            assert!(&with_key == original, "{name}: run with the key differs from the original");
            if !extra.is_empty() {
                // Without the key, the locked copy runs too, with its classes out of order.
                let without = logits(&locked, &[], &d.join(format!("{name}.nokey")), None);
                assert!(&without != original, "{name}: the lock changed nothing");
            }
        }
    }
}

/// docs/shipping.md's rotation for a token: `rewrap` with the publisher's key file removes
/// the old token's stanza by its label and wraps for the new token's recipient; the new
/// identity opens the result, the old one no longer does.
#[test]
fn rewrap_moves_a_model_from_one_age_plugin_token_to_another() {
    let Some(plugin) = plugin() else { return };
    let path = path_with(&plugin);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let key = crate::util::keygen_in(d);
    let (old_r, old_id) = device(&plugin, d, "ok");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let (new_r, new_id) = device(&plugin, elsewhere.path(), "ok");
    let enc = d.join("p.onnx");
    let (code, _, err) =
        run(&["encrypt", s(&model()), "-o", s(&enc), "--key-file", s(&key), "--recipient", &old_r], Some(&path));
    assert_eq!(code, 0, "{err}");
    let rotated = d.join("r.onnx");
    let args = ["rewrap", s(&enc), "-o", s(&rotated), "--key-file", s(&key), "--remove", &old_r, "--recipient", &new_r];
    let (code, _, err) = run(&args, Some(&path));
    assert_eq!(code, 0, "{err}");
    let plain = d.join("plain.onnx");
    let (code, _, err) = run(&["decrypt", s(&rotated), "-o", s(&plain), "--identity", s(&new_id)], Some(&path));
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&plain).expect("read"), std::fs::read(model()).expect("read"));
    let gone = d.join("gone.onnx");
    let (code, _, err) = run(&["decrypt", s(&rotated), "-o", s(&gone), "--identity", s(&old_id)], Some(&path));
    assert_eq!(code, 4, "{err}");
    assert!(!gone.exists());
}

/// Online key release (docs/shipping.md): a key command that answers while the customer's
/// access is granted and refuses once the publisher disables it (here a wrapper of
/// fixtures/key-commands/toy-kms.sh that refuses to unwrap while a file `disabled` exists):
/// the next open fails with the command's reason, exit 4, nothing written; granted again,
/// it opens.
#[test]
fn disabling_access_at_the_key_command_makes_the_next_open_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let disabled = d.join("disabled");
    let wrapper = d.join("kms.sh");
    let toy = root().join("fixtures/key-commands/toy-kms.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$2\" = unwrap ] && [ -e '{}' ]; then cat >/dev/null; echo 'AccessDenied: access to kms-a is disabled' >&2; exit 1; fi\nexec sh '{}' \"$@\"\n",
            disabled.display(),
            toy.display()
        ),
    )
    .expect("write");
    // Run through `sh`: a file just written is not executed itself (ETXTBSY under a fork).
    let cmd = format!("sh '{}' kms-a", wrapper.display());
    let enc = d.join("p.onnx");
    let (code, _, err) = run(&["encrypt", s(&model()), "-o", s(&enc), "--key-command", &cmd, "-q"], None);
    assert_eq!(code, 0, "{err}");
    let out = d.join("out.onnx");
    let open = || run(&["decrypt", s(&enc), "-o", s(&out), "--key-command", &cmd, "-q"], None);
    let (code, _, err) = open();
    assert_eq!(code, 0, "{err}");
    std::fs::remove_file(&out).expect("remove");
    std::fs::write(&disabled, "").expect("write");
    let (code, _, err) = open();
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("access to kms-a is disabled") && err.lines().count() == 1, "{err}");
    assert!(!out.exists());
    std::fs::remove_file(&disabled).expect("remove");
    let (code, _, err) = open();
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&out).expect("read"), std::fs::read(model()).expect("read"));
}
