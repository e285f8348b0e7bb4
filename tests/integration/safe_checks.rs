//! Honest labels and a gate that fails by default: `fp` is reported as "sign and
//! mantissa encrypted, exponent clear" and `dp` as "permuted" (text and JSON of
//! encrypt, inspect and check); `check` fails an unprotected model and one with nothing
//! encrypted; `--require-encrypted` counts only fully encrypted bytes unless the policy
//! accepts fp or dp; passphrases: a prompt on a terminal and a minimum length.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::{bin, keygen_in as keygen, mlp, path_str as s, run};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

const FP: &str = "sign and mantissa encrypted, exponent clear";

/// A dp policy for the digits MLP: rows of the Gemm weights (64 or 128 elements each),
/// not the biases (10 elements: too few to permute).
fn dp_policy(dir: &Path) -> PathBuf {
    let p = dir.join("dp.toml");
    std::fs::write(
        &p,
        "version = 1\ninherit_builtin = false\n\n[ops.Gemm]\ncoefficient = 0.5\nmode = \"dp\"\nroles = [\"B\"]\n",
    )
    .unwrap();
    p
}

#[test]
fn reports_say_permuted_for_dp_and_exponent_clear_for_fp() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let mlp = mlp();
    for (mode, id, label) in
        [("ctr", "encrypted", "encrypted"), ("fp", "exponent_clear", FP), ("dp", "permuted", "permuted")]
    {
        // dp: the policy of `dp_policy`; ctr and fp: the built-in one in that mode.
        let policy = dp_policy(dir.path());
        let mode_arg = format!("*={mode}");
        let how = if mode == "dp" { ["--policy", s(&policy)] } else { ["--mode", mode_arg.as_str()] };
        let out = dir.path().join(format!("{mode}.onnx"));
        let args = ["encrypt", s(&mlp), "-o", s(&out), "--key-file", s(&key)];
        let (code, text, err) = run(&[&args[..], &how[..]].concat());
        assert_eq!(code, 0, "{err}");
        assert!(text.contains(&format!("B {label}")), "{mode}: {text}");
        // JSON keeps its field names (mode, encrypted_bytes) and adds protection and label.
        let enc = dir.path().join(format!("{mode}-j.onnx"));
        let args = ["encrypt", s(&mlp), "-o", s(&enc), "--key-file", s(&key), "--json"];
        let (code, j, err) = run(&[&args[..], &how[..]].concat());
        assert_eq!(code, 0, "{err}");
        let j = json(&j);
        for t in j["tensors"].as_array().unwrap() {
            assert_eq!(t["mode"], mode);
            assert_eq!(t["protection"], id);
            assert_eq!(t["label"], label);
            assert!(t["encrypted_bytes"].as_u64().unwrap() > 0);
        }
        // inspect: text and JSON.
        let (code, text, err) = run(&["inspect", s(&out)]);
        assert_eq!(code, 0, "{err}");
        assert!(text.contains(&format!("{mode} ({label})")), "{mode}: {text}");
        let (_, j, _) = run(&["inspect", s(&out), "--json"]);
        let p = &json(&j)["protection"];
        let total = p["encrypted_bytes"].as_u64().unwrap();
        assert_eq!(p["bytes_by_protection"][id].as_u64(), Some(total), "{p}");
        for t in p["tensors"].as_array().unwrap() {
            assert_eq!((&t["protection"], &t["label"]), (&serde_json::json!(id), &serde_json::json!(label)));
        }
        // check: text and JSON.
        let (code, text, _) = run(&["check", s(&out)]);
        assert_eq!(code, 0, "{text}");
        assert!(text.contains(&format!("{total} bytes {label}")), "{text}");
        let (_, j, _) = run(&["check", s(&out), "--json"]);
        assert_eq!(json(&j)["models"][0]["bytes_by_protection"][id].as_u64(), Some(total));
    }
    // An fp policy's coverage line names what fp does.
    let (_, text, _) = run(&["check", s(&dir.path().join("fp.onnx")), "--mode", "*=fp"]);
    assert!(text.contains(&format!("weight bytes {FP}")), "{text}");
}

#[test]
fn check_fails_unprotected_and_empty_models_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    // Unprotected: fails by default (exit 8), passes with --allow-unprotected.
    let (code, text, err) = run(&["check", s(&mlp())]);
    assert_eq!(code, 8, "{text}");
    assert!(text.starts_with("FAIL") && err.contains("not_protected"), "{text} {err}");
    assert_eq!(run(&["check", s(&mlp()), "--allow-unprotected"]).0, 0);
    // --allow-unprotected does not let a policy that selects weights pass.
    assert_eq!(run(&["check", s(&mlp()), "--allow-unprotected", "--builtin-policy"]).0, 8);
    // --allow-unprotected and --require-encrypted contradict each other.
    assert_eq!(run(&["check", s(&mlp()), "--allow-unprotected", "--require-encrypted"]).0, 2);
    // A policy that encrypts nothing: encrypt refuses it unless asked.
    let empty = dir.path().join("empty.onnx");
    let mlp = mlp();
    let args = ["encrypt", s(&mlp), "-o", s(&empty), "--key-file", s(&key), "--coefficient", "*=0"];
    let (code, _, err) = run(&args);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("raise a coefficient"), "{err}");
    assert!(!empty.exists());
    // A model without weights (its parameters in attribute lists, say) is told so.
    let weightless = dir.path().join("weightless.onnx");
    let mut g = Vec::new();
    onnx_protect_format::wire::put_len_field(
        &mut g,
        1,
        &onnx_protect_format::testutil::node("Relu", &["x"], &["y"], "relu"),
    );
    std::fs::write(&weightless, onnx_protect_format::testutil::model_with_graph(&g)).unwrap();
    let out = dir.path().join("weightless.enc.onnx");
    let (code, _, err) = run(&["encrypt", s(&weightless), "-o", s(&out), "--key-file", s(&key)]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("the model has no weights to encrypt") && !out.exists(), "{err}");
    let (code, _, err) = run(&[&args[..], &["--allow-empty"]].concat());
    assert_eq!(code, 0, "{err}");
    // ... and check fails the result (protected, 0 bytes encrypted).
    let (code, j, _) = run(&["check", s(&empty), "--json"]);
    assert_eq!(code, 8);
    let m = &json(&j)["models"][0];
    assert_eq!((m["protected"].as_bool(), m["passed"].as_bool()), (Some(true), Some(false)));
    assert_eq!(m["failures"][0]["reason"], "nothing_encrypted");
    assert_eq!(run(&["check", s(&empty), "--allow-unprotected"]).0, 0);
}

#[test]
fn require_encrypted_counts_fp_and_dp_only_when_the_policy_asks_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let enc = |mode: &str| {
        let out = dir.path().join(format!("{mode}.onnx"));
        let m = format!("*={mode}");
        let (code, _, err) = run(&["encrypt", s(&mlp()), "-o", s(&out), "--key-file", s(&key), "--mode", &m]);
        assert_eq!(code, 0, "{err}");
        out
    };
    let (ctr, fp) = (enc("ctr"), enc("fp"));
    let dp = dir.path().join("dp.onnx");
    let policy = dp_policy(dir.path());
    let (code, _, err) = run(&["encrypt", s(&mlp()), "-o", s(&dp), "--key-file", s(&key), "--policy", s(&policy)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(run(&["check", s(&ctr), "--require-encrypted"]).0, 0);
    for weak in [&fp, &dp] {
        let (code, j, _) = run(&["check", s(weak), "--require-encrypted", "--json"]);
        assert_eq!(code, 8, "{j}");
        let f = &json(&j)["models"][0]["failures"][0];
        assert_eq!(f["reason"], "nothing_encrypted", "{f}");
        assert!(f["detail"].as_str().unwrap().contains(FP), "{f}");
    }
    // A policy that asks for fp (or dp) accepts that mode's bytes.
    assert_eq!(run(&["check", s(&fp), "--require-encrypted", "--mode", "*=fp"]).0, 0);
    assert_eq!(run(&["check", s(&dp), "--require-encrypted", "--policy", s(&policy)]).0, 0);
    // But not another weak mode.
    assert_eq!(run(&["check", s(&dp), "--require-encrypted", "--mode", "*=fp", "--coefficient", "*=0.5"]).0, 8);
}

#[test]
fn dp_refuses_subsequences_that_hide_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let out = dir.path().join("dp.onnx");
    let (code, _, err) = run(&[
        "encrypt",
        s(&mlp()),
        "-o",
        s(&out),
        "--key-file",
        s(&key),
        "--mode",
        "*=dp",
        "--coefficient",
        "*=1",
        "--subsequences",
        "*=1000000",
    ]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("16"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_short_passphrase_needs_allow_short_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.onnx");
    let enc = |pass: &str, extra: &[&str]| {
        let mut c = Command::new(bin());
        c.args(["encrypt", s(&mlp()), "-o", s(&out), "--passphrase-env", "OP_PASS", "-q", "--force"]).args(extra);
        let o = c.env("OP_PASS", pass).output().unwrap();
        (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (code, err) = enc("x", &[]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("1 characters") && err.contains("at least 12"), "{err}");
    assert!(!out.exists());
    // 11 characters (not bytes: "é" is one) is still short; 12 is enough.
    assert_eq!(enc("ééééééééééé", &[]).0, 4);
    assert_eq!(enc("correct horse", &[]).0, 0);
    assert_eq!(enc("x", &["--allow-short-passphrase"]).0, 0);
    // Reading a model needs no minimum: the short passphrase opens what it protects.
    let back = dir.path().join("back.onnx");
    let o = Command::new(bin())
        .args(["decrypt", s(&out), "-o", s(&back), "--passphrase-env", "OP_PASS"])
        .env("OP_PASS", "x")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(mlp()).unwrap());
}

/// Runs `args` on a pseudo-terminal (util-linux `script`): for each `(prompt, line)`,
/// waits until `prompt` is shown, then types `line`. Returns the exit code and
/// everything the terminal showed.
fn on_a_terminal(args: &[&str], dialogue: &[(&str, &str)]) -> (i32, String) {
    use std::io::{Read, Write};
    let cmd = std::iter::once(s(&bin()).to_string())
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("util-linux script runs");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut shown = String::new();
    let mut stdin = child.stdin.take().unwrap();
    for (prompt, line) in dialogue {
        // Everything shown so far after the last answered prompt.
        let from = shown.len();
        while !shown[from..].contains(prompt) {
            match rx.recv() {
                Ok(chunk) => shown.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => panic!("the command ended before showing {prompt:?}: {shown}"),
            }
        }
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    drop(stdin);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    while let Ok(chunk) = rx.try_recv() {
        shown.push_str(&String::from_utf8_lossy(&chunk));
    }
    (status.code().unwrap_or(-1), shown)
}

#[test]
fn passphrase_without_a_value_asks_at_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.onnx");
    // Typed twice when it protects a model; the two must match.
    let encrypt = ["encrypt", s(&mlp()), "-o", s(&out), "--passphrase"].map(String::from);
    let encrypt: Vec<&str> = encrypt.iter().map(String::as_str).collect();
    let (code, shown) =
        on_a_terminal(&encrypt, &[("Enter passphrase", "my long passphrase"), ("Repeat", "something else")]);
    assert_ne!(code, 0, "{shown}");
    assert!(shown.contains("differ"), "{shown}");
    assert!(!out.exists());
    let pass = "my long passphrase";
    let (code, shown) = on_a_terminal(&encrypt, &[("Enter passphrase", pass), ("Repeat", pass)]);
    assert_eq!(code, 0, "{shown}");
    // Not echoed.
    assert!(!shown.contains(pass), "{shown}");
    // The typed passphrase is the model's: the same text from a variable opens it.
    let o = Command::new(bin())
        .args(["verify", s(&out), "--passphrase-env", "OP_PASS"])
        .env("OP_PASS", "my long passphrase")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Decrypting asks once.
    let back = dir.path().join("back.onnx");
    let (code, shown) =
        on_a_terminal(&["decrypt", s(&out), "-o", s(&back), "--passphrase"], &[("Enter passphrase", pass)]);
    assert!(!shown.contains("Repeat"), "{shown}");
    assert_eq!(code, 0, "{shown}");
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(mlp()).unwrap());
    // Without a terminal: a usage error that names the other ways, and no waiting.
    let o = Command::new(bin())
        .args(["decrypt", s(&out), "-o", s(&dir.path().join("x.onnx")), "--passphrase"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--passphrase-env"));
}
