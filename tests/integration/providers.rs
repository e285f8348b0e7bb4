//! Key providers on the command line: key commands (a toy one, the cloud KMS recipes of
//! docs/keys.md against stand-in CLIs, failing, hanging and garbage ones) and PKCS#11
//! keys in a SoftHSM2 token; encrypting to them, opening with them, rotating them by
//! `rewrap`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{bin, root};

fn model() -> PathBuf {
    root().join("fixtures/models/cnn_torch/model.onnx")
}

fn toy(name: &str) -> String {
    format!("'{}' {name}", root().join("fixtures/key-commands/toy-kms.sh").display())
}

/// Runs the binary with extra environment variables: (exit code, stdout, stderr).
fn run_env(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let mut c = Command::new(bin());
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str], env: &[(&str, String)]) -> String {
    let (code, out, err) = run_env(args, env);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Decrypts `model` with the key options `key` to a new file; returns (exit code,
/// stderr) and checks a successful output is the original model.
fn opens(model_path: &Path, key: &[&str], env: &[(&str, String)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plain.onnx");
    let mut args = vec!["decrypt", s(model_path), "-o", s(&out)];
    args.extend_from_slice(key);
    let (code, _, err) = run_env(&args, env);
    if code == 0 {
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(model()).unwrap());
    } else {
        assert!(!out.exists(), "nothing is written on failure");
    }
    (code, err)
}

#[test]
fn key_commands_encrypt_open_and_rotate_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    ok(&["keygen", "-o", s(&key)], &[]);
    let enc = dir.path().join("m.onnx");
    ok(&["encrypt", s(&model()), "-o", s(&enc), "--key-file", s(&key), "--recipient-command", &toy("kms-a")], &[]);
    assert_eq!(opens(&enc, &["--key-command", &toy("kms-a")], &[]).0, 0);
    let (code, err) = opens(&enc, &["--key-command", &toy("kms-b")], &[]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("wrong key"), "{err}");
    // Rotation in place, opened by the old command: kms-a out, kms-b in.
    let before = std::fs::read(&enc).unwrap();
    let out = ok(
        &[
            "rewrap",
            s(&enc),
            "--in-place",
            "--key-command",
            &toy("kms-a"),
            "--remove",
            "toy-kms:kms-a",
            "--recipient-command",
            &toy("kms-b"),
        ],
        &[],
    );
    assert!(out.contains("removed 1 and added 1"), "{out}");
    let after = std::fs::read(&enc).unwrap();
    let tail = onnx_protect_core::format2::envelope::trailing_entry(&before).unwrap().0.start as usize;
    assert_eq!(after[..tail], before[..tail], "no weight byte changed");
    assert_eq!(opens(&enc, &["--key-command", &toy("kms-b")], &[]).0, 0);
    assert_eq!(opens(&enc, &["--key-command", &toy("kms-a")], &[]).0, 4, "the removed command no longer opens it");
    assert_eq!(opens(&enc, &["--key-file", s(&key)], &[]).0, 0);
}

#[test]
fn failing_hanging_and_garbage_key_commands_exit_4_with_the_reason_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Run through `sh`: a file just written is not executed itself (a concurrent fork in
    // another test thread can hold its write descriptor, and exec fails with ETXTBSY).
    let script = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\ncat >/dev/null\n{body}\n")).unwrap();
        format!("sh '{}'", p.display())
    };
    let cases = [
        (script("fail.sh", "echo 'denied by policy' >&2; exit 7"), "exited with status 7: denied by policy"),
        (script("hang.sh", "exec sleep 300"), "did not answer within 0.5 s and was killed"),
        (script("garbage.sh", "echo '<html>503</html>'"), "output line 1 is not name=value"),
    ];
    let env = [("ONNX_PROTECT_KEY_COMMAND_TIMEOUT", "0.5".to_string())];
    for (cmd, want) in &cases {
        let out = dir.path().join("out.onnx");
        let (code, _, err) = run_env(&["encrypt", s(&model()), "-o", s(&out), "--key-command", cmd.as_str()], &env);
        assert_eq!(code, 4, "{cmd}: {err}");
        assert!(err.contains(want), "{cmd}: {err}");
        assert!(!out.exists(), "{cmd}: no output");
    }
    let bad = [("ONNX_PROTECT_KEY_COMMAND_TIMEOUT", "soon".to_string())];
    let (code, _, err) = run_env(&["encrypt", s(&model()), "-o", "x.onnx", "--key-command", "true"], &bad);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ONNX_PROTECT_KEY_COMMAND_TIMEOUT=soon"), "{err}");
}

/// The recipes docs/keys.md links, run against stand-ins for `aws`, `gcloud` and `vault`
/// that check the arguments they are given and transform reversibly.
#[test]
fn cloud_kms_recipes_work_by_shape_and_are_the_ones_the_docs_link() {
    let docs = std::fs::read_to_string(root().join("docs/keys.md")).unwrap();
    let path =
        format!("{}:{}", root().join("fixtures/key-commands/fake-cli").display(), std::env::var("PATH").unwrap());
    let env = [("PATH", path)];
    let dir = tempfile::tempdir().unwrap();
    for (script, key, other) in [
        ("aws-kms.sh", "arn:aws:kms:eu-west-1:111122223333:key/models", "alias/other"),
        (
            "gcloud-kms.sh",
            "projects/p/locations/global/keyRings/r/cryptoKeys/models",
            "projects/p/locations/global/keyRings/r/cryptoKeys/other",
        ),
        ("vault-transit.sh", "models", "other"),
    ] {
        let file = root().join("examples/key-commands").join(script);
        let link = format!("](../examples/key-commands/{script})");
        assert!(docs.contains(&link), "docs/keys.md links examples/key-commands/{script}");
        let cmd = format!("'{}' {key}", file.display());
        let enc = dir.path().join(format!("{script}.onnx"));
        ok(&["encrypt", s(&model()), "-o", s(&enc), "--key-command", &cmd], &env);
        assert_eq!(opens(&enc, &["--key-command", &cmd], &env).0, 0, "{script}");
        let (code, err) = opens(&enc, &["--key-command", &format!("'{}' {other}", file.display())], &env);
        assert_eq!(code, 4, "{script}: {err}");
    }
}

const SOFTHSM: &[&str] = &["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"];

#[test]
fn pkcs11_keys_in_softhsm_encrypt_open_and_rotate_on_the_command_line() {
    let Some(module) = SOFTHSM.iter().map(PathBuf::from).find(|p| p.exists()) else {
        println!("SKIPPED: SoftHSM2 is not installed (apt-get install softhsm2); PKCS#11 on the command line untested");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(&conf, format!("directories.tokendir = {}\nobjectstore.backend = file\n", tokens.display()))
        .unwrap();
    let env = [("SOFTHSM2_CONF", s(&conf).to_string()), ("HSM_PIN", "4321".to_string())];
    let st = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "models", "--pin", "4321", "--so-pin", "8765"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util runs");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let uri =
        |obj: &str| format!("pkcs11:token=models;object={obj}?module-path={}&pin-source=env:HSM_PIN", module.display());
    ok(&["keygen", "--pkcs11", &uri("kek-2024")], &env);
    ok(&["keygen", "--pkcs11", &uri("kek-2025")], &env);
    let (code, _, err) = run_env(&["keygen", "--pkcs11", &uri("kek-2024")], &env);
    assert_eq!(code, 4, "{err}");

    let key = dir.path().join("k.key");
    ok(&["keygen", "-o", s(&key)], &[]);
    let enc = dir.path().join("m.onnx");
    ok(&["encrypt", s(&model()), "-o", s(&enc), "--key-file", s(&key), "--recipient", &uri("kek-2024")], &env);
    let inspect = ok(&["inspect", s(&enc)], &env);
    assert!(inspect.contains("pkcs11:token=models;object=kek-2024"), "{inspect}");
    assert!(!inspect.contains("module-path") && !inspect.contains("HSM_PIN"), "{inspect}");
    assert_eq!(opens(&enc, &["--pkcs11", &uri("kek-2024")], &env).0, 0);
    assert_eq!(opens(&enc, &["--pkcs11", &uri("kek-2025")], &env).0, 4);
    let bad_pin = [("SOFTHSM2_CONF", s(&conf).to_string()), ("HSM_PIN", "0000".to_string())];
    let (code, err) = opens(&enc, &["--pkcs11", &uri("kek-2024")], &bad_pin);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("the PIN is incorrect"), "{err}");

    // Rotation in place, opened by the token key: kek-2024 out, kek-2025 in.
    ok(
        &[
            "rewrap",
            s(&enc),
            "--in-place",
            "--pkcs11",
            &uri("kek-2024"),
            "--remove",
            "pkcs11:token=models;object=kek-2024",
            "--recipient",
            &uri("kek-2025"),
        ],
        &env,
    );
    assert_eq!(opens(&enc, &["--pkcs11", &uri("kek-2025")], &env).0, 0);
    assert_eq!(opens(&enc, &["--pkcs11", &uri("kek-2024")], &env).0, 4, "the removed token key no longer opens it");
    assert_eq!(opens(&enc, &["--key-file", s(&key)], &env).0, 0);
}
