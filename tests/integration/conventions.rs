//! Command-line conventions (docs/cli.md): non-ONNX input named as such, the
//! truncation hint on every command, `-` for standard input and output, usage
//! errors exit 2, exit codes listed in `--help` and docs/cli.md alike, `--json`
//! and `-q` documented and `-q` silent, shell completions and man pages; and the binary's
//! modules (`modules`): no command imports another, no circle of imports.

mod modules;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::{bin, root, run};

/// Runs the binary in `cwd` with `stdin` piped in and `$TMPDIR` set to `cwd/.tmp`:
/// (exit code, stdout bytes, stderr).
fn run_io(cwd: &Path, args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    let tmp = cwd.join(".tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env("TMPDIR", &tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    // The command may exit before reading its input (a usage error): a closed pipe is fine.
    let _ = child.stdin.take().expect("stdin").write_all(stdin);
    let out = child.wait_with_output().expect("binary ends");
    (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn model(case: &str) -> PathBuf {
    root().join("fixtures/models").join(case).join("model.onnx")
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let k = dir.join(name);
    let (code, _, err) = run(&["keygen", "-o", s(&k), "-q"]);
    assert_eq!(code, 0, "{err}");
    k
}

/// Encrypts `src` under `key` into `dir/name`.
fn encrypt(src: &Path, key: &Path, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let (code, _, err) = run(&["encrypt", s(src), "-o", s(&out), "--key-file", s(key), "-q"]);
    assert_eq!(code, 0, "{err}");
    out
}

/// Every command that reads one model, with `M` standing for the model and `K` for a key.
fn model_commands() -> Vec<Vec<&'static str>> {
    let mut v: Vec<Vec<&str>> = vec![
        vec!["inspect", "M"],
        vec!["encrypt", "M", "-o", "OUT", "--key-file", "K"],
        vec!["decrypt", "M", "-o", "OUT", "--key-file", "K"],
        vec!["decrypt", "M", "--stdout", "--key-file", "K"],
        vec!["verify", "M"],
        vec!["rekey", "M", "-o", "OUT", "--key-file", "K", "--new-key-file", "K"],
        vec!["derive-tier-key", "--passphrase-env", "PASS", "--model", "M", "--tier", "1", "-o", "OUT"],
        vec!["encrypt-patch-embedding", "M", "-o", "OUT", "--key-file", "K", "--block", "2", "--shuffle"],
    ];
    if cfg!(feature = "tract") {
        v.push(vec!["run", "M"]);
        v.push(vec!["assess", "M", "M", "--random", "1"]);
    }
    v
}

/// Runs every model command on `m`; returns (command, exit code, stderr) per command.
fn each_model_command(m: &Path, dir: &Path) -> Vec<(String, i32, String)> {
    let key = dir.join("k.key");
    if !key.exists() {
        keygen(dir, "k.key");
    }
    let out = dir.join("out.onnx");
    model_commands()
        .into_iter()
        .map(|cmd| {
            let args: Vec<&str> = cmd
                .iter()
                .map(|a| match *a {
                    "M" => s(m),
                    "K" => s(&key),
                    "OUT" => s(&out),
                    other => other,
                })
                .collect();
            let o = Command::new(bin()).args(&args).env("PASS", "a passphrase").output().expect("binary runs");
            assert!(!out.exists(), "{args:?} wrote an output");
            (cmd.join(" "), o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into_owned())
        })
        .collect()
}

#[test]
fn every_model_command_says_not_an_onnx_model_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]);
    let random: Vec<u8> = (0u32..512).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x07).collect();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("notes.onnx", b"learning rate 0.001\nepochs 20\n".to_vec(), "it is text, starting \"learning rate 0.001\""),
        ("picture.onnx", png, "it is a PNG image"),
        ("empty.onnx", Vec::new(), "the file is empty"),
        ("random.onnx", random, "it does not start like one (first bytes"),
    ];
    for (name, bytes, reason) in cases {
        let m = dir.path().join(name);
        std::fs::write(&m, &bytes).unwrap();
        for (cmd, code, err) in each_model_command(&m, dir.path()) {
            assert_eq!(code, 3, "{cmd} on {name}: {err}");
            let first = err.lines().next().unwrap_or("");
            assert!(
                first.starts_with("error: ") && first.contains(&format!("not an ONNX model: {reason}")),
                "{cmd} on {name}: {err}"
            );
            assert!(!err.contains("protobuf"), "{cmd} on {name}: {err}");
        }
        // Read from standard input, the same words.
        let (code, out, err) = run_io(dir.path(), &["inspect", "-"], &bytes);
        assert_eq!((code, out.len()), (3, 0), "{err}");
        assert!(err.starts_with("error: standard input: not an ONNX model: "), "{err}");
        // The many-model commands name it too, per model.
        let (code, out, err) = run(&["check", s(&m)]);
        assert_eq!(code, 3, "{out} {err}");
        assert!(out.contains("not an ONNX model"), "check on {name}: {out}");
    }
}

#[test]
fn a_truncated_model_gets_the_hint_from_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let m = root().join("fixtures/malformed/truncated_mid_tensor.onnx");
    for (cmd, code, err) in each_model_command(&m, dir.path()) {
        assert_eq!(code, 3, "{cmd}: {err}");
        assert!(err.lines().next().unwrap_or("").contains("truncated"), "{cmd}: {err}");
        assert_eq!(
            err.lines().nth(1),
            Some("hint: the file is incomplete; was the download or copy interrupted?"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn dash_reads_standard_input_and_writes_standard_output() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let plain_path = model("cnn_torch");
    let plain = std::fs::read(&plain_path).unwrap();
    // keygen -o - prints the key as a key file holds it.
    let (code, key_hex, err) = run_io(cwd, &["keygen", "-o", "-"], b"");
    assert_eq!(code, 0, "{err}");
    let key_hex = String::from_utf8(key_hex).unwrap();
    // The text of a key file: its last line ends with the key's 64 hex digits.
    let digits = key_hex.lines().last().and_then(|l| l.split_whitespace().last()).unwrap_or("");
    assert!(
        key_hex.ends_with('\n') && digits.len() == 64 && digits.chars().all(|c| c.is_ascii_hexdigit()),
        "{key_hex}"
    );
    let key = cwd.join("k.key");
    std::fs::write(&key, &key_hex).unwrap();
    // inspect - prints the same report as inspect FILE, but for the file name.
    let (code, from_stdin, err) = run_io(cwd, &["inspect", "-", "--json"], &plain);
    assert_eq!(code, 0, "{err}");
    let (_, from_file, _) = run(&["inspect", s(&plain_path), "--json"]);
    let (mut a, mut b): (serde_json::Value, serde_json::Value) =
        (serde_json::from_slice(&from_stdin).unwrap(), serde_json::from_str(&from_file).unwrap());
    (a["file"], b["file"]) = (serde_json::Value::Null, serde_json::Value::Null);
    assert_eq!(a, b);
    // encrypt - -o - | decrypt - -o - restores the bytes; the summary goes to stderr.
    let (code, enc, err) = run_io(cwd, &["encrypt", "-", "-o", "-", "--key-file", s(&key)], &plain);
    assert_eq!(code, 0, "{err}");
    assert!(err.starts_with("protected ") && err.lines().next().unwrap().ends_with("-> standard output"), "{err}");
    let enc_path = cwd.join("enc.onnx");
    std::fs::write(&enc_path, &enc).unwrap();
    let (code, _, err) = run(&["verify", s(&enc_path), "--key-file", s(&key)]);
    assert_eq!(code, 0, "{err}");
    let (code, dec, err) = run_io(cwd, &["decrypt", "-", "-o", "-", "--key-file", s(&key)], &enc);
    assert_eq!((code, dec == plain), (0, true), "{err}");
    // A file in, standard output out, and the reverse; -o - is --stdout for decrypt.
    let (code, enc2, err) = run_io(cwd, &["encrypt", s(&plain_path), "-o", "-", "--key-file", s(&key), "-q"], b"");
    assert_eq!((code, err.as_str()), (0, ""));
    let (code, dec2, _) = run_io(cwd, &["decrypt", "-", "--stdout", "--key-file", s(&key)], &enc2);
    assert_eq!((code, dec2 == plain), (0, true));
    let restored = cwd.join("restored.onnx");
    let (code, _, err) = run_io(cwd, &["decrypt", "-", "-o", s(&restored), "--key-file", s(&key), "-q"], &enc);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&restored).unwrap(), plain);
    let (code, out, err) = run_io(cwd, &["verify", "-", "--key-file", s(&key)], &enc);
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8_lossy(&out).starts_with("ok: every byte and the MACs verified with the key"));
    let new_key = keygen(cwd, "new.key");
    let (code, re, err) =
        run_io(cwd, &["rekey", "-", "-o", "-", "--key-file", s(&key), "--new-key-file", s(&new_key)], &enc);
    assert_eq!(code, 0, "{err}");
    let (code, dec3, _) = run_io(cwd, &["decrypt", "-", "-o", "-", "--key-file", s(&new_key)], &re);
    assert_eq!((code, dec3 == plain), (0, true));
    // A modified manifest (the last bytes of the file) from a pipe is refused as from a file.
    let mut bad = enc.clone();
    let last = bad.len() - 2;
    bad[last] ^= 1;
    let (code, out, err) = run_io(cwd, &["decrypt", "-", "-o", "-", "--key-file", s(&key)], &bad);
    assert_eq!((code, out.len()), (5, 0), "{err}");
    let names: Vec<String> =
        std::fs::read_dir(cwd).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(!names.contains(&"-".to_string()), "a file named '-' was created: {names:?}");
    // Standard input and output were staged under $TMPDIR and nothing of them is left.
    let left: Vec<_> = std::fs::read_dir(cwd.join(".tmp")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "staged copies left in $TMPDIR: {left:?}");
}

#[test]
fn external_data_cannot_be_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k.key");
    let ext = model("external_data");
    let bytes = std::fs::read(&ext).unwrap();
    for args in [
        vec!["inspect", "-"],
        vec!["encrypt", "-", "-o", "-", "--key-file", s(&key)],
        vec!["encrypt", "-", "-o", "x.onnx", "--key-file", s(&key)],
        vec!["verify", "-"],
    ] {
        let (code, out, err) = run_io(dir.path(), &args, &bytes);
        assert_eq!((code, out.len()), (2, 0), "{args:?}: {err}");
        assert!(err.contains("external file") && err.contains("give the model's path"), "{args:?}: {err}");
    }
    let (code, out, err) = run_io(dir.path(), &["encrypt", s(&ext), "-o", "-", "--key-file", s(&key)], b"");
    assert_eq!((code, out.len()), (2, 0), "{err}");
    assert!(err.contains("cannot be written to standard output"), "{err}");
    assert!(!dir.path().join("x.onnx").exists());
}

#[test]
fn dash_is_refused_where_it_means_nothing_and_never_names_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let key = keygen(cwd, "k.key");
    let m = model("cnn_torch");
    let enc = encrypt(&m, &key, cwd, "enc.onnx");
    let cases: Vec<Vec<&str>> = vec![
        vec!["derive-tier-key", "--key-file", s(&key), "--from", "2", "--tier", "1", "-o", "-"],
        vec!["check", "-"],
        vec!["batch", "verify", "--dir", "-"],
        vec!["batch", "encrypt", "--dir", s(cwd), "--out-dir", "-", "--key-file", s(&key)],
        vec!["transform-input", "-", "out.npy", "--key-file", s(&key), "--block", "2", "--shuffle"],
        vec!["encrypt-patch-embedding", s(&m), "-o", "-", "--key-file", s(&key), "--block", "2", "--shuffle"],
        vec!["encrypt", s(&m), "-o", "x.onnx", "--key-file", "-"],
        vec!["man", "-o", "-"],
        vec!["encrypt", "-", "--in-place", "--key-file", s(&key)],
        vec!["decrypt", s(&enc), "-o", "-", "--key-file", s(&key), "--json"],
    ];
    for args in cases {
        let (code, out, err) = run_io(cwd, &args, b"");
        assert_eq!((code, out.len()), (2, 0), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
    assert!(!cwd.join("-").exists());
    // `./-` still names a file.
    let (code, _, err) = run_io(cwd, &["keygen", "-o", "./-", "-q"], b"");
    assert_eq!(code, 0, "{err}");
    assert!(cwd.join("-").is_file());
}

#[test]
fn usage_errors_found_after_parsing_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k.key");
    let m = model("cnn_torch");
    let enc = encrypt(&m, &key, dir.path(), "enc.onnx");
    let o = dir.path().join("o.onnx");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["encrypt", s(&m), "-o", s(&o)], "give a key (--key-file"),
        (vec!["encrypt", s(&m), "-o", s(&o), "--key-file", s(&key), "--key-env", "V"], "cannot be used with"),
        (vec!["verify", s(&enc), "--json", "-q"], "cannot be used with"),
        (vec!["decrypt", s(&enc), "-o", s(&o), "--key-file", s(&key), "--external", "w.bin"], "--external"),
        (vec!["encrypt", s(&m), "-o", s(&o), "--key-file", s(&key), "--in-place"], "--in-place"),
        (vec!["keygen", "-o", "-", "--tiers", "2"], "--tiers"),
        (vec!["batch", "verify", "--dir", s(dir.path()), "--jobs", "0"], "--jobs"),
        (vec!["transform-input", "a.npy", "b.npy", "--key-file", s(&key), "--block", "0", "--shuffle"], "block size"),
        (vec!["transform-input", "a.npy", "b.txt", "--key-file", s(&key), "--block", "2", "--shuffle"], "b.txt"),
        (
            vec!["encrypt-patch-embedding", s(&m), "-o", s(&o), "--key-file", s(&key), "--block", "2", "--ffx"],
            "FFX is not affine",
        ),
        (
            vec!["encrypt-patch-embedding", s(&m), "-o", s(&o), "--key-file", s(&key), "--block", "2", "--negpos"],
            "value range",
        ),
    ];
    for (args, needle) in cases {
        let (code, out, err) = run(&args);
        assert_eq!((code, out.as_str()), (2, ""), "{args:?}: {err}");
        assert!(err.starts_with("error: ") && err.contains(needle), "{args:?}: {err}");
        assert!(!o.exists(), "{args:?}");
    }
}

/// The rows `| code | meaning |` of the exit-code table in docs/cli.md.
fn documented_exit_codes() -> Vec<u8> {
    let text = std::fs::read_to_string(root().join("docs/cli.md")).unwrap();
    let table = text.split("## Exit codes").nth(1).expect("docs/cli.md has an exit code section");
    table
        .lines()
        .skip_while(|l| !l.starts_with("| code"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').nth(1).unwrap().trim().parse::<u8>().expect("a code"))
        .collect()
}

#[test]
fn every_exit_code_is_listed_in_help_and_in_docs_cli_md() {
    let (code, help, _) = run(&["--help"]);
    assert_eq!(code, 0);
    let listed: Vec<u8> = help
        .split("Exit codes:")
        .nth(1)
        .expect("--help lists the exit codes")
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let all: Vec<u8> = (0..=16).collect();
    assert_eq!(listed, all, "{help}");
    assert_eq!(documented_exit_codes(), all);
}

/// The subcommands `--help` lists (without `help`).
fn subcommands() -> Vec<String> {
    let (_, help, _) = run(&["--help"]);
    let cmds: Vec<String> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    for known in ["inspect", "keygen", "encrypt", "decrypt", "verify", "rekey", "batch", "check", "completions", "man"]
    {
        assert!(cmds.iter().any(|c| c == known), "{known} missing from {cmds:?}");
    }
    cmds
}

#[test]
fn json_and_quiet_have_help_text_everywhere() {
    for cmd in subcommands() {
        let (code, help, err) = run(&[&cmd, "--help"]);
        assert_eq!(code, 0, "{cmd}: {err}");
        let lines: Vec<&str> = help.lines().collect();
        for flag in ["--json", "--quiet"] {
            let is_flag = |l: &&str| l.trim_start().starts_with(flag) || l.contains(&format!(", {flag}"));
            if let Some(at) = lines.iter().position(is_flag) {
                // The text follows on the same line, or on the next one in clap's long layout.
                let same = lines[at].split(flag).nth(1).unwrap_or("").trim();
                let text = if same.is_empty() { lines.get(at + 1).map_or("", |l| l.trim()) } else { same };
                assert!(text.len() > 10 && !text.starts_with('-'), "{cmd} {flag} has no help text: {help}");
            }
        }
    }
}

#[test]
fn quiet_prints_nothing_on_success() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = keygen(d, "k.key");
    let tiered = d.join("t.key");
    let (code, _, err) = run(&["keygen", "-o", s(&tiered), "--tiers", "2", "-q"]);
    assert_eq!(code, 0, "{err}");
    let m = model("cnn_torch");
    let enc = encrypt(&m, &key, d, "enc.onnx");
    std::fs::create_dir_all(d.join("tree")).unwrap();
    std::fs::copy(&m, d.join("tree/a.onnx")).unwrap();
    let convmixer = root().join("fixtures/digits/convmixer.onnx");
    let x = root().join("fixtures/digits/test_x.npy");
    let (k, e) = (s(&key), s(&enc));
    let out = |n: &str| d.join(n).to_str().unwrap().to_string();
    let cases: Vec<Vec<String>> = vec![
        vec!["inspect".into(), s(&m).into()],
        vec!["keygen".into(), "-o".into(), out("k2.key")],
        vec!["encrypt".into(), s(&m).into(), "-o".into(), out("e2.onnx"), "--key-file".into(), k.into()],
        vec!["decrypt".into(), e.into(), "-o".into(), out("d.onnx"), "--key-file".into(), k.into()],
        vec!["verify".into(), e.into(), "--key-file".into(), k.into()],
        vec![
            "rekey".into(),
            e.into(),
            "-o".into(),
            out("r.onnx"),
            "--key-file".into(),
            k.into(),
            "--new-key-file".into(),
            k.into(),
        ],
        vec![
            "derive-tier-key".into(),
            "--key-file".into(),
            s(&tiered).into(),
            "--from".into(),
            "2".into(),
            "--tier".into(),
            "1".into(),
            "-o".into(),
            out("t1.key"),
        ],
        vec![
            "batch".into(),
            "encrypt".into(),
            "--dir".into(),
            out("tree"),
            "--out-dir".into(),
            out("bout"),
            "--key-file".into(),
            k.into(),
        ],
        vec!["check".into(), e.into()],
        vec![
            "transform-input".into(),
            s(&x).into(),
            out("x.npy"),
            "--key-file".into(),
            k.into(),
            "--block".into(),
            "2".into(),
            "--shuffle".into(),
        ],
        vec![
            "encrypt-patch-embedding".into(),
            s(&convmixer).into(),
            "-o".into(),
            out("p.onnx"),
            "--key-file".into(),
            k.into(),
            "--block".into(),
            "2".into(),
            "--shuffle".into(),
        ],
    ];
    for mut args in cases {
        // Without -q each prints something: the test would prove nothing otherwise.
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, loud, err) = run(&refs);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!loud.is_empty(), "{args:?} prints nothing even without -q");
        for n in ["k2.key", "e2.onnx", "d.onnx", "r.onnx", "t1.key", "x.npy", "p.onnx"] {
            let _ = std::fs::remove_file(d.join(n));
        }
        args.push("-q".into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run(&refs);
        assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""), "{args:?}");
    }
}

#[test]
fn completions_and_man_pages_cover_every_command() {
    let cmds = subcommands();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, script, err) = run(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        for c in &cmds {
            assert!(script.contains(c.as_str()), "{shell} completion lacks {c}");
        }
    }
    // The bash script is valid bash and defines the completion function.
    let (_, script, _) = run(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("onnx-protect.bash");
    std::fs::write(&f, &script).unwrap();
    let st = Command::new("bash").arg("-n").arg(&f).status().expect("bash runs");
    assert!(st.success(), "bash -n rejects the completion script");
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!("source {}; complete -p onnx-protect", f.display()))
        .output()
        .expect("bash runs");
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("onnx-protect"));
    // A bad shell name is a usage error.
    assert_eq!(run(&["completions", "tcsh"]).0, 2);
    // man -o DIR: one page per command, each a roff page with its name.
    let mdir = dir.path().join("man");
    let (code, _, err) = run(&["man", "-o", s(&mdir)]);
    assert_eq!(code, 0, "{err}");
    let main = std::fs::read_to_string(mdir.join("onnx-protect.1")).unwrap();
    // roff writes a hyphen as `\-`.
    let plain = |page: &str| page.replace("\\-", "-");
    assert!(plain(&main).contains(".TH onnx-protect 1"), "{main}");
    for c in &cmds {
        let page = std::fs::read_to_string(mdir.join(format!("onnx-protect-{c}.1"))).unwrap_or_default();
        assert!(plain(&page).contains(&format!(".TH onnx-protect-{c} 1")), "no page for {c}: {page}");
        assert!(plain(&main).contains(c.as_str()), "the main page does not list {c}");
    }
    // Without -o the main page goes to standard output; groff renders it without warnings.
    let (code, page, _) = run(&["man"]);
    assert_eq!((code, page.trim_end()), (0, main.trim_end()));
    if let Ok(o) =
        Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]).arg(mdir.join("onnx-protect-encrypt.1")).output()
    {
        assert!(o.status.success() && o.stderr.is_empty(), "groff: {}", String::from_utf8_lossy(&o.stderr));
    }
}

/// The `: `-separated parts of an error line, none of which may repeat.
fn assert_each_cause_once(err: &str) {
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line: {err}"));
    let parts: Vec<&str> = line["error: ".len()..].split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(p), "'{p}' is said twice in: {line}");
    }
}

#[test]
fn an_error_says_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.npy");
    std::fs::write(&junk, b"not an array").unwrap();
    let missing = dir.path().join("missing.npy");
    let key = keygen(dir.path(), "k.key");
    let secret = dir.path().join("fp.secret");
    assert_eq!(run(&["keygen", "--fingerprint-secret", "-o", s(&secret), "-q"]).0, 0);
    let cnn = model("cnn_torch");
    let out = dir.path().join("out.onnx");
    let mut cases: Vec<Vec<&str>> = vec![
        vec!["trace", s(&cnn), "--ledger", s(&missing), "--fingerprint-secret", s(&secret), "--original", s(&cnn)],
        vec!["transform-input", s(&missing), s(&out), "--key-file", s(&key), "--block", "4", "--shuffle"],
        vec!["decrypt", s(&missing), "-o", s(&out), "--key-file", s(&key)],
    ];
    if cfg!(feature = "tract") {
        for data in [&junk, &missing] {
            cases.push(vec!["run", s(&cnn), "-i", s(data)]);
            cases.push(vec![
                "encrypt",
                s(&cnn),
                "-o",
                s(&out),
                "--key-file",
                s(&key),
                "--fingerprint",
                "r",
                "--fingerprint-secret",
                s(&secret),
                "--ledger",
                s(&missing),
                "--fingerprint-check",
                s(data),
            ]);
        }
    }
    for args in cases {
        let (code, _, err) = run(&args);
        assert_ne!(code, 0, "{args:?}");
        assert_each_cause_once(&err);
    }
}

/// The errors of the verbs on protected models say each cause once, and a format name in
/// a message is a format's name (its metadata key), never a sentence.
#[test]
fn errors_of_protected_model_verbs_say_each_cause_once_and_name_formats() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "k.key");
    let other = keygen(dir.path(), "other.key");
    let cnn = model("cnn_torch");
    let enc = encrypt(&cnn, &key, dir.path(), "enc.onnx");
    let v1 = root().join("fixtures/vectors/cnn_torch_fp");
    let (v1_model, v1_key) = (v1.join("protected.onnx"), v1.join("key.hex"));
    let signing = dir.path().join("s.key");
    assert_eq!(run(&["keygen", "--signing", "-o", s(&signing), "-q"]).0, 0);
    let out = dir.path().join("out.onnx");
    let cases: Vec<Vec<&str>> = vec![
        vec!["sign", s(&cnn), "-o", s(&out), "--sign-key", s(&signing)],
        vec!["sign", s(&v1_model), "-o", s(&out), "--sign-key", s(&signing)],
        vec!["rewrap", s(&cnn), "-o", s(&out), "--key-file", s(&key), "--add-key-file", s(&other)],
        vec!["rewrap", s(&v1_model), "-o", s(&out), "--key-file", s(&v1_key), "--add-key-file", s(&other)],
        vec!["rekey", s(&cnn), "-o", s(&out), "--key-file", s(&key), "--new-key-file", s(&other)],
        vec!["rekey", s(&v1_model), "-o", s(&out), "--key-file", s(&v1_key), "--new-key-file", s(&other)],
        vec!["decrypt", s(&cnn), "-o", s(&out), "--key-file", s(&key)],
        vec!["decrypt", s(&enc), "-o", s(&out), "--key-file", s(&other)],
        vec!["verify", s(&cnn)],
        vec!["encrypt", s(&enc), "-o", s(&out), "--key-file", s(&key)],
        vec!["encrypt", s(&cnn), "-o", s(&out), "--key-file", s(&key), "--tiers", "2"],
    ];
    for args in cases {
        let (code, _, err) = run(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(!out.exists(), "{args:?}");
        assert_each_cause_once(&err);
        if let Some(i) = err.find("format '") {
            let name = err[i + 8..].split('\'').next().unwrap_or("");
            assert!(name.starts_with("onnx-protect/") && !name.contains(' '), "{args:?}: {err}");
        }
    }
}

/// As `age-keygen`: without `-o` the key goes to standard output when that is a pipe or
/// a file; a terminal is refused (exit 2, nothing printed) unless `-o -` asks for it.
#[test]
fn keygen_without_output_prints_to_a_pipe_and_refuses_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run_io(dir.path(), &["keygen"], b"");
    assert_eq!(code, 0, "{err}");
    let key = onnx_protect_crypto::KeyFile::parse(&out).expect("a key file on stdout");
    let fp: String = key.key().fingerprint().iter().map(|b| format!("{b:02x}")).collect();
    assert!(err.contains(&fp), "{err}");
    let (code, out, err) = run_io(dir.path(), &["keygen", "--recipient"], b"");
    assert_eq!(code, 0, "{err}");
    assert!(String::from_utf8_lossy(&out).contains("AGE-SECRET-KEY-1"), "{err}");
    assert!(err.contains("recipient: age1"), "{err}");
    // A terminal as standard output, through script(1) (util-linux).
    let Ok(probe) = Command::new("script").arg("--version").output() else {
        eprintln!("skipped the terminal case: script(1) is not installed");
        return;
    };
    assert!(probe.status.success());
    let cmd = format!("'{}' keygen", bin().display());
    let out = Command::new("script").args(["-qec", &cmd, "/dev/null"]).current_dir(dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("standard output, which is a terminal"), "{text}");
    assert!(!text.contains("onnx-protect-key-v1"), "{text}");
}

/// age's short flags: `-r` recipient, `-R` recipients file, `-i` identity.
#[test]
fn ages_short_flags_encrypt_and_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let id = d.join("id.txt");
    let (code, out, err) = run(&["keygen", "--recipient", "-o", &s(&id), "--json"]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let recipient = r["recipient"].as_str().unwrap().to_string();
    std::fs::write(d.join("recipients"), format!("# team\n{recipient}\n")).unwrap();
    let model = root().join("fixtures/models/cnn_torch/model.onnx");
    let m = s(&model);
    let (a, b) = (d.join("a.onnx"), d.join("b.onnx"));
    let (code, _, err) = run(&["encrypt", &m, "-o", &s(&a), "-r", &recipient, "-q"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["encrypt", &m, "-o", &s(&b), "-R", &s(&d.join("recipients")), "-q"]);
    assert_eq!(code, 0, "{err}");
    for enc in [&a, &b] {
        let back = d.join("back.onnx");
        let (code, _, err) = run(&["decrypt", &s(enc), "-o", &s(&back), "-i", &s(&id), "--force", "-q"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&model).unwrap());
    }
}

/// `encrypt --dry-run` says what would be encrypted and writes nothing; the summary of the
/// weights left clear is by operator unless `--verbose`.
#[test]
fn encrypt_dry_run_and_verbose() {
    use onnx_protect_format::testutil::{float_tensor, matmul_chain};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let big: Vec<f32> = (0..300 * 300).map(|i| (i % 7) as f32).collect();
    let bytes = matmul_chain(&[
        float_tensor("W0", &[2, 300], &vec![0.5; 600]),
        float_tensor("W1", &[300, 300], &big),
        float_tensor("W2", &[300, 300], &big),
        float_tensor("W3", &[300, 2], &vec![0.25; 600]),
    ]);
    let model = d.join("m.onnx");
    std::fs::write(&model, bytes).unwrap();
    let m = model.to_str().unwrap();
    let ends = ["--coefficient", "name:W1=0", "--coefficient", "name:W2=0"];
    let (code, out, err) = run(&[&["encrypt", m, "--dry-run"][..], &ends].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("would protect 4800 bytes in 2 tensors (0.66% of 724800 weight bytes)"), "{out}");
    assert!(out.contains("W0 2400 of 2400 bytes") && out.contains("W3 2400 of 2400 bytes"), "{out}");
    assert!(out.contains("left clear: 2 weights, 720000 bytes"), "{out}");
    assert!(out.contains("MatMul 2 (720000 bytes) (--verbose lists them)"), "{out}");
    assert!(!out.contains("\n    W1"), "{out}");
    let names = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    assert_eq!(names(d), ["m.onnx"], "a dry run wrote something");
    let (code, out, err) = run(&[&["encrypt", m, "--dry-run", "--verbose"][..], &ends].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\n    W1 360000 bytes (MatMul weight)"), "{out}");
    let (code, out, err) = run(&[&["encrypt", m, "--dry-run", "--json"][..], &ends].concat());
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((j["dry_run"].as_bool(), j["encrypted_bytes"].as_u64()), (Some(true), Some(4800)));
    // The same selection is what encrypt then does.
    let key = d.join("k.key");
    run(&["keygen", "-o", key.to_str().unwrap()]);
    let e = d.join("e.onnx");
    let (code, out, err) =
        run(&[&["encrypt", m, "-o", e.to_str().unwrap(), "--key-file", key.to_str().unwrap()][..], &ends].concat());
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("protected 4800 bytes in 2 tensors (0.66% of 724800 weight bytes)"), "{out}");
}

/// `inspect` lists the main graph's inputs and outputs with their declared types.
#[test]
fn inspect_shows_inputs_and_outputs() {
    let model = root().join("fixtures/models/cnn_torch/model.onnx");
    let (code, out, err) = run(&["inspect", model.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["inputs"], serde_json::json!([{"name": "input", "type": "FLOAT[1, 3, 16, 16]"}]));
    assert_eq!(j["outputs"], serde_json::json!([{"name": "logits", "type": "FLOAT[1, 10]"}]));
    let (code, out, err) = run(&["inspect", model.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("inputs       1\n  input") && out.contains("FLOAT[1, 3, 16, 16]"), "{out}");
    // Untyped values and initializers listed as inputs.
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.onnx");
    let w = onnx_protect_format::testutil::float_tensor("W0", &[2, 2], &[1.0; 4]);
    std::fs::write(&m, onnx_protect_format::testutil::matmul_chain(&[w])).unwrap();
    let (code, out, err) = run(&["inspect", m.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["inputs"], serde_json::json!([{"name": "x", "type": "?"}]));
}
