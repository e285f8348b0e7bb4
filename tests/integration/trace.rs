//! `encrypt --fingerprint`, `keygen --fingerprint-secret` and `trace` through the binary:
//! 50 recipients' decrypted copies are each named, unmarked copies name nobody, marks
//! survive decrypt/encrypt round trips, and bad inputs get one-line errors.

use std::path::{Path, PathBuf};

use crate::util::{root, run};

struct Setup {
    dir: tempfile::TempDir,
    original: PathBuf,
    secret: PathBuf,
    key: PathBuf,
    ledger: PathBuf,
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let original = root().join("fixtures/digits/cnn.onnx");
    let secret = dir.path().join("fp.secret");
    let key = dir.path().join("k.key");
    let ledger = dir.path().join("ledger.txt");
    let (code, out, err) = run(&["keygen", "--fingerprint-secret", "-o", s(&secret)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("key id"), "{out}");
    assert_eq!(run(&["keygen", "-o", s(&key), "-q"]).0, 0);
    Setup { dir, original, secret, key, ledger }
}

impl Setup {
    /// `encrypt --fingerprint id` of `input`, then `decrypt`: the copy `id` gets.
    fn copy_for(&self, id: &str, input: &Path) -> PathBuf {
        let enc = self.dir.path().join(format!("{id}.protected.onnx"));
        let mut dec = self.dir.path().join(format!("{id}.onnx"));
        for n in 2.. {
            if !dec.exists() {
                break;
            }
            dec = self.dir.path().join(format!("{id}.{n}.onnx"));
        }
        let (code, _, err) = self.encrypt_for(id, input, &enc, &self.ledger);
        assert_eq!(code, 0, "encrypt for {id}: {err}");
        let (code, _, err) = run(&["decrypt", s(&enc), "-o", s(&dec), "--key-file", s(&self.key), "-q"]);
        assert_eq!(code, 0, "decrypt for {id}: {err}");
        std::fs::remove_file(enc).unwrap();
        dec
    }

    /// `encrypt --fingerprint id -q` of `input` into `output` with `ledger`.
    fn encrypt_for(&self, id: &str, input: &Path, output: &Path, ledger: &Path) -> (i32, String, String) {
        run(&[
            "encrypt",
            s(input),
            "-o",
            s(output),
            "--key-file",
            s(&self.key),
            "--fingerprint",
            id,
            "--fingerprint-secret",
            s(&self.secret),
            "--ledger",
            s(ledger),
            "-q",
        ])
    }

    /// `encrypt --fingerprint id --fingerprint-strength strength --fingerprint-check data`
    /// of the original into `output`, with `extra` options.
    #[cfg(feature = "tract")]
    fn encrypt_checked(
        &self,
        id: &str,
        output: &Path,
        strength: &str,
        data: &Path,
        extra: &[&str],
    ) -> (i32, String, String) {
        let mut args = vec!["encrypt", s(&self.original), "-o", s(output), "--key-file", s(&self.key)];
        args.extend(["--fingerprint", id, "--fingerprint-secret", s(&self.secret), "--ledger", s(&self.ledger)]);
        args.extend(["--fingerprint-strength", strength, "--fingerprint-check", s(data)]);
        args.extend_from_slice(extra);
        run(&args)
    }

    /// `encrypt --fingerprint id --lock-outputs --clear-weights` of the original, recorded
    /// in `ledger`: the label-locked copy `id` gets.
    fn locked_for(&self, id: &str, ledger: &Path) -> PathBuf {
        let out = self.dir.path().join(format!("{id}.locked.onnx"));
        let (k, o, sec) = (s(&self.key), s(&self.original), s(&self.secret));
        let (code, _, err) = run(&[
            "encrypt",
            o,
            "-o",
            s(&out),
            "--key-file",
            k,
            "--fingerprint",
            id,
            "--fingerprint-secret",
            sec,
            "--ledger",
            s(ledger),
            "--lock-outputs",
            "--clear-weights",
            "-q",
        ]);
        assert_eq!(code, 0, "{id}: {err}");
        out
    }

    /// `trace --json`: (exit code, the report, stderr).
    fn trace(&self, suspect: &Path) -> (i32, serde_json::Value, String) {
        self.trace_with(suspect, &self.secret, &self.ledger, &self.original)
    }

    fn trace_with(
        &self,
        suspect: &Path,
        secret: &Path,
        ledger: &Path,
        original: &Path,
    ) -> (i32, serde_json::Value, String) {
        let (code, out, err) = trace_run(suspect, secret, ledger, original, &["--json"]);
        (code, serde_json::from_str(&out).unwrap_or(serde_json::Value::Null), err)
    }
}

/// `trace` with `extra` options: (exit code, stdout, stderr).
fn trace_run(suspect: &Path, secret: &Path, ledger: &Path, original: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args =
        vec!["trace", s(suspect), "--ledger", s(ledger), "--fingerprint-secret", s(secret), "--original", s(original)];
    args.extend_from_slice(extra);
    run(&args)
}

fn one_line_error(err: &str, want: &str) {
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("hint:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(want), "{err}");
}

#[test]
fn trace_names_each_of_50_recipients_and_nobody_for_unmarked_copies() {
    let st = setup();
    let ids: Vec<String> = (0..50).map(|i| format!("customer-{i:02}")).collect();
    let copies: Vec<PathBuf> = ids.iter().map(|id| st.copy_for(id, &st.original)).collect();
    let ledger = std::fs::read_to_string(&st.ledger).unwrap();
    assert_eq!(ledger.lines().filter(|l| l.starts_with('{')).count(), 50);
    let secret_hex = std::fs::read_to_string(&st.secret).unwrap();
    let secret_hex = secret_hex.lines().find(|l| !l.starts_with('#')).unwrap().split(' ').nth(1).unwrap();
    assert!(!ledger.contains(secret_hex), "the ledger holds the secret");
    for (id, copy) in ids.iter().zip(&copies) {
        let (code, j, err) = st.trace(copy);
        assert_eq!(code, 0, "{id}: {err}");
        assert_eq!(j["recipient"], id.as_str(), "{j}");
        assert_eq!(j["matches"].as_array().unwrap().len(), 1, "{j}");
        assert!(j["best"]["z"].as_f64().unwrap() > j["threshold"].as_f64().unwrap());
        assert_eq!(j["recipients"], 50);
    }
    // Unmarked copies: the original itself, and the original encrypted and decrypted
    // without a fingerprint.
    let plain_enc = st.dir.path().join("plain.protected.onnx");
    let plain = st.dir.path().join("plain.onnx");
    let (k, o) = (s(&st.key), s(&st.original));
    assert_eq!(run(&["encrypt", o, "-o", s(&plain_enc), "--key-file", k, "-q"]).0, 0);
    assert_eq!(run(&["decrypt", s(&plain_enc), "-o", s(&plain), "--key-file", k, "-q"]).0, 0);
    for unmarked in [&st.original, &plain] {
        let (code, j, _) = st.trace(unmarked);
        assert_eq!(code, 9, "{j}");
        assert!(j["recipient"].is_null() && j["matches"].as_array().unwrap().is_empty(), "{j}");
        assert_eq!(j["identical"], true);
    }
    // Text output names the recipient on its first line.
    let (code, out, _) = trace_run(&copies[7], &st.secret, &st.ledger, &st.original, &[]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().next().unwrap(), "recipient    customer-07");
}

#[test]
fn fingerprints_survive_decrypt_encrypt_round_trips() {
    let st = setup();
    let alice = st.copy_for("alice", &st.original);
    st.copy_for("bob", &st.original);
    // Alice's copy encrypted again (another key, no fingerprint) and decrypted: the same bytes.
    let key2 = st.dir.path().join("k2.key");
    assert_eq!(run(&["keygen", "-o", s(&key2), "-q"]).0, 0);
    let (enc, dec) = (st.dir.path().join("again.protected.onnx"), st.dir.path().join("again.onnx"));
    assert_eq!(run(&["encrypt", s(&alice), "-o", s(&enc), "--key-file", s(&key2), "-q"]).0, 0);
    assert_eq!(run(&["decrypt", s(&enc), "-o", s(&dec), "--key-file", s(&key2), "-q"]).0, 0);
    assert_eq!(std::fs::read(&dec).unwrap(), std::fs::read(&alice).unwrap());
    let (code, j, err) = st.trace(&dec);
    assert_eq!((code, j["recipient"].as_str()), (0, Some("alice")), "{err}");
    // Marking the same recipient again gives the same copy and no second ledger entry.
    let before = std::fs::read_to_string(&st.ledger).unwrap();
    let alice_again = st.copy_for("alice", &st.original);
    assert_eq!(std::fs::read(&alice_again).unwrap(), std::fs::read(&alice).unwrap());
    assert_eq!(std::fs::read_to_string(&st.ledger).unwrap(), before);
}

#[test]
fn bad_inputs_get_one_line_errors() {
    let st = setup();
    let alice = st.copy_for("alice", &st.original);
    let p = st.dir.path();

    // A secret the ledger's entries were not made with.
    let other = p.join("other.secret");
    assert_eq!(run(&["keygen", "--fingerprint-secret", "-o", s(&other), "-q"]).0, 0);
    let (code, _, err) = st.trace_with(&alice, &other, &st.ledger, &st.original);
    assert_eq!(code, 4, "{err}");
    one_line_error(&err, "no entry made with fingerprint secret");

    // A decryption key file given as the secret.
    let (code, _, err) = st.trace_with(&alice, &st.key, &st.ledger, &st.original);
    assert_eq!(code, 4, "{err}");
    one_line_error(&err, "decryption key file, not a fingerprint secret");

    // A suspect of another architecture.
    let (code, _, err) = st.trace(&root().join("fixtures/digits/mlp.onnx"));
    assert_eq!(code, 3, "{err}");
    one_line_error(&err, "holds none of the original's 8 fingerprinted weight tensors");

    // An original the ledger has no entry for.
    let (code, _, err) = st.trace_with(&alice, &st.secret, &st.ledger, &root().join("fixtures/digits/mlp.onnx"));
    assert_eq!(code, 1, "{err}");
    one_line_error(&err, "no entry for this original");

    // A malformed ledger: the error names the file and the line; encrypt does not append.
    let bad = p.join("bad-ledger.txt");
    let mut text = std::fs::read_to_string(&st.ledger).unwrap();
    text.push_str("{\"v\":1,\"recipient\":\"eve\"}\n");
    std::fs::write(&bad, &text).unwrap();
    let (code, _, err) = st.trace_with(&alice, &st.secret, &bad, &st.original);
    assert_eq!(code, 1, "{err}");
    one_line_error(&err, "bad-ledger.txt, line 3: not a ledger entry");
    let (code, _, err) = st.encrypt_for("bob", &st.original, &p.join("x.onnx"), &bad);
    assert_eq!(code, 1, "{err}");
    one_line_error(&err, "line 3");
    assert_eq!(std::fs::read_to_string(&bad).unwrap(), text);
    assert!(!p.join("x.onnx").exists());

    // A protected suspect must be decrypted first.
    let enc = p.join("alice.again.onnx");
    assert_eq!(run(&["encrypt", s(&alice), "-o", s(&enc), "--key-file", s(&st.key), "-q"]).0, 0);
    let (code, _, err) = st.trace(&enc);
    assert_eq!(code, 6, "{err}");
    assert!(err.starts_with("error: suspect") && err.contains("already protected"), "{err}");

    // A recipient ID outside the allowed characters; --fingerprint without a ledger.
    let (code, _, err) = st.encrypt_for("bad id", &st.original, &p.join("y.onnx"), &st.ledger);
    assert_eq!(code, 2, "{err}");
    one_line_error(&err, "invalid recipient ID");
    let (code, _, _) = run(&[
        "encrypt",
        s(&st.original),
        "-o",
        s(&p.join("y.onnx")),
        "--key-file",
        s(&st.key),
        "--fingerprint",
        "bob",
        "--fingerprint-secret",
        s(&st.secret),
    ]);
    assert_eq!(code, 2);
    assert!(!p.join("y.onnx").exists());

    // A false-positive probability outside (0, 1).
    let (code, _, err) = trace_run(&alice, &st.secret, &st.ledger, &st.original, &["--false-positive", "1.5"]);
    assert_eq!(code, 2, "{err}");
    one_line_error(&err, "outside (0, 1)");
}

/// The top-1 class of every sample of `model` on `data`, through `run`.
#[cfg(feature = "tract")]
fn classes(model: &Path, data: &Path, dir: &Path) -> Vec<usize> {
    let out = dir.join(model.file_stem().unwrap());
    let (code, _, err) = run(&["run", s(model), "-i", s(data), "--output-dir", s(&out), "--force"]);
    assert_eq!(code, 0, "{err}");
    let file = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let a = onnx_protect_runtime::npy::NpyArray::read(&file).unwrap();
    let width = *a.shape.last().unwrap();
    a.to_f64().chunks(width).map(|row| row.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0).collect()
}

#[cfg(feature = "tract")]
#[test]
fn fingerprint_check_picks_a_variant_that_changes_no_prediction_and_trace_follows_it() {
    let st = setup();
    // A fixed secret, so the variants chosen are the same on every run.
    std::fs::write(&st.secret, format!("onnx-protect-fingerprint-secret-v1 {}\n", "5a".repeat(32))).unwrap();
    let data = root().join("fixtures/digits/test_x.npy");
    let base = classes(&st.original, &data, st.dir.path());
    let mut variants = Vec::new();
    for id in ["ann", "bob", "cid"] {
        let enc = st.dir.path().join(format!("{id}.protected.onnx"));
        let dec = st.dir.path().join(format!("{id}.onnx"));
        let (code, out, err) = st.encrypt_checked(id, &enc, "0.02", &data, &["--json"]);
        assert_eq!(code, 0, "{err}");
        let j: serde_json::Value = serde_json::from_str(&out).unwrap();
        let (v, tried) =
            (j["fingerprint"]["variant"].as_u64().unwrap(), j["fingerprint"]["checked"]["tried"].as_u64().unwrap());
        assert_eq!((v + 1, j["fingerprint"]["checked"]["samples"].as_u64()), (tried, Some(540)), "{j}");
        variants.push(v);
        let (code, _, err) = run(&["decrypt", s(&enc), "-o", s(&dec), "--key-file", s(&st.key), "-q"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(classes(&dec, &data, st.dir.path()), base, "{id}: the chosen variant changes no prediction");
        let (code, t, err) = st.trace(&dec);
        assert_eq!(code, 0, "{err}");
        assert_eq!(t["recipient"], id, "{t}");
        assert_eq!(t["matches"].as_array().unwrap().len(), 1, "{t}");
    }
    // At this strength most variants move some sample: the check did choose.
    assert!(variants.iter().any(|&v| v > 0), "{variants:?}");
    let ledger = std::fs::read_to_string(&st.ledger).unwrap();
    for (id, v) in ["ann", "bob", "cid"].iter().zip(&variants) {
        let line = ledger.lines().find(|l| l.contains(&format!("\"recipient\":\"{id}\""))).unwrap();
        assert_eq!(line.contains(&format!("\"variant\":{v}")), *v > 0, "{line}");
    }
    // When no variant keeps every prediction, nothing is written and the ledger is unchanged.
    let before = std::fs::read_to_string(&st.ledger).unwrap();
    let out = st.dir.path().join("never.onnx");
    let (code, _, err) = st.encrypt_checked("dee", &out, "0.1", &data, &[]);
    assert_ne!(code, 0);
    one_line_error(&err, "variants of the mark changes the top-1 class");
    assert!(!out.exists());
    assert_eq!(std::fs::read_to_string(&st.ledger).unwrap(), before);
}

#[test]
fn label_locked_copies_name_their_recipient_from_the_class_order_and_the_marks() {
    let st = setup();
    let ids: Vec<String> = (0..8).map(|i| format!("user-{i}")).collect();
    let copies: Vec<PathBuf> = ids.iter().map(|id| st.locked_for(id, &st.ledger)).collect();
    let ledger = std::fs::read_to_string(&st.ledger).unwrap();
    assert_eq!(ledger.lines().filter(|l| l.contains("\"lock\":10")).count(), ids.len(), "{ledger}");
    for (id, copy) in ids.iter().zip(&copies) {
        // The copy as the recipient got it: it runs anywhere without a key.
        let (code, j, err) = st.trace(copy);
        assert_eq!(code, 0, "{id}: {err}");
        assert_eq!(j["recipient"], id.as_str(), "{j}");
        let order = &j["order"];
        assert_eq!(order["recovered"], true, "{j}");
        // The order matches this recipient's alone (all 10 classes agree); with 10 classes
        // its bound N/!C (8/1334961) is above the default 1e-6, so the order names nobody
        // and the marks name it.
        assert_eq!(order["matches"], serde_json::json!([id]), "{j}");
        assert_eq!(order["named"], serde_json::json!([]), "{j}");
        assert_eq!(order["scores"][0]["agreements"], 10, "{j}");
        assert_eq!(order["locked_recipients"], ids.len(), "{j}");
        // Its decryption is unlocked and still names the recipient by its marks.
        let dec = st.dir.path().join(format!("{id}.dec.onnx"));
        let (code, _, err) = run(&["decrypt", s(copy), "-o", s(&dec), "--key-file", s(&st.key), "-q"]);
        assert_eq!(code, 0, "{err}");
        let (code, j, err) = st.trace(&dec);
        assert_eq!(code, 0, "{id} decrypted: {err}");
        assert_eq!(j["recipient"], id.as_str(), "{j}");
    }
    // The lock of a model whose output layer cannot be found is refused in one line,
    // before the ledger records anything.
    let before = std::fs::read_to_string(&st.ledger).unwrap();
    let bad = root().join("fixtures/lock/no_head_conv/model.onnx");
    let out = st.dir.path().join("bad.onnx");
    let (code, _, err) = run(&[
        "encrypt",
        s(&bad),
        "-o",
        s(&out),
        "--key-file",
        s(&st.key),
        "--fingerprint",
        "x",
        "--fingerprint-secret",
        s(&st.secret),
        "--ledger",
        s(&st.ledger),
        "--lock-outputs",
    ]);
    assert_ne!(code, 0);
    one_line_error(&err, "Conv");
    assert!(!out.exists());
    assert_eq!(std::fs::read_to_string(&st.ledger).unwrap(), before);
}

/// The class order alone names a recipient when its bound `N/!C` is at most the trace's
/// false-positive probability: with one locked recipient `1/!10` (7.5e-7) is below the
/// default 1e-6; with eight, `8/!10` (6.0e-6) is above it, and only a looser
/// `--false-positive` names from the order. A copy locked for someone the ledger does not
/// record matches nobody's order at any bound.
#[test]
fn the_class_order_names_a_recipient_only_below_the_false_positive_bound() {
    let st = setup();
    let alone = st.locked_for("alone", &st.ledger);
    let outsider = st.locked_for("outsider", &st.dir.path().join("other-ledger.txt"));
    let order = |suspect: &Path, extra: &[&str]| {
        let (_, out, err) =
            trace_run(suspect, &st.secret, &st.ledger, &st.original, &[&["--json"][..], extra].concat());
        let j: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
        j["order"].clone()
    };
    let o = order(&alone, &[]);
    assert_eq!((o["locked_recipients"].as_u64(), o["recovered"].as_bool()), (Some(1), Some(true)), "{o}");
    assert!(o["bound"].as_f64().is_some_and(|b| b > 7.4e-7 && b < 7.5e-7), "{o}");
    assert_eq!(o["named"], serde_json::json!(["alone"]), "{o}");
    let o = order(&outsider, &[]);
    assert_eq!((o["recovered"].as_bool(), o["identity"].as_bool()), (Some(true), Some(false)), "{o}");
    assert_eq!((&o["matches"], &o["named"]), (&serde_json::json!([]), &serde_json::json!([])), "{o}");
    for i in 0..7 {
        st.locked_for(&format!("more-{i}"), &st.ledger);
    }
    let o = order(&alone, &[]);
    assert_eq!(o["locked_recipients"], 8, "{o}");
    assert_eq!((&o["matches"], &o["named"]), (&serde_json::json!(["alone"]), &serde_json::json!([])), "{o}");
    let o = order(&alone, &["--false-positive", "1e-5"]);
    assert_eq!(o["named"], serde_json::json!(["alone"]), "{o}");
    let o = order(&outsider, &["--false-positive", "1e-5"]);
    assert_eq!((&o["matches"], &o["named"]), (&serde_json::json!([]), &serde_json::json!([])), "{o}");
}
