//! Every error path of the command line that a test can reach, as a table: each command
//! against each class of bad input (a missing file, not ONNX, truncated, a protected model
//! with one byte changed in its manifest, a tensor or its external data, a wrong or missing
//! key, an unprotected model where a protected one is needed, bad options, an output that
//! cannot be written, licence and bundle refusals, a rewrap journal that does not match).
//!
//! For each (docs/cli.md, "Exit codes" and "Error messages"): the documented exit code; on
//! standard error one `error:` line and at most a `hint:` line after it; a message that says
//! each cause once (no `: `-separated part twice, no word twice in a row, no run of four
//! words twice); and no file left behind or changed: the case's folder (outputs, `$TMPDIR`
//! and inputs) is what it was before. The checks are about structure, not wording, so they
//! hold whatever the libraries' texts become.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use onnx_protect_format::{Model, TensorData};

use crate::util::{bin, root};

/// The inputs every case reads, made once: keys, models in every state, licences, bundles.
struct World {
    dir: tempfile::TempDir,
    /// Where licence checks keep their clock (outside the compared folder).
    clock: tempfile::TempDir,
}

impl World {
    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().expect("UTF-8 path").to_string()
    }

    fn out(&self) -> String {
        self.p("out/o.onnx")
    }
}

/// Runs the binary in `dir` with `$TMPDIR` inside it: (exit code, stdout, stderr).
fn run_in(w: &World, args: &[String], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(w.dir.path())
        .env("TMPDIR", w.dir.path().join("tmp"))
        .env("ONNX_PROTECT_LICENCE_CLOCK", w.clock.path().join("clock"))
        .env_remove("ONNX_PROTECT_KEY")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("binary runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn setup_ok(w: &World, args: &[&str]) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (code, out, err) = run_in(w, &args, &[]);
    assert_eq!(code, 0, "setup {args:?}: {out}{err}");
}

/// Flips one bit of byte `at` of file `path`.
fn flip(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

/// The middle byte of the largest tensor of the model at `path`.
fn tensor_byte(path: &Path) -> usize {
    let m = Model::open(path).unwrap();
    let t = m.tensors.iter().max_by_key(|t| t.nbytes).unwrap();
    let TensorData::Raw { range } = &t.data else { panic!("{}: {} is not raw_data", path.display(), t.name) };
    usize::try_from(range.start + (range.end - range.start) / 2).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A rewrap journal beside `model` (docs/keys.md): complete, but for a tail the model does
/// not have.
fn foreign_journal(model: &Path) {
    let name = model.file_name().unwrap().to_string_lossy();
    let mut body = b"onnx-protect-tail-v2 0 3 3\n".to_vec();
    body.extend_from_slice(b"abcxyz");
    let sum = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().and_then(|mut c| {
        use std::io::Write;
        c.stdin.take().unwrap().write_all(&body)?;
        c.wait_with_output()
    });
    let hex = String::from_utf8(sum.expect("coreutils sha256sum runs").stdout).unwrap();
    let digest: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    body.extend_from_slice(&digest);
    std::fs::write(model.with_file_name(format!(".{name}.onnx-protect-tail")), body).unwrap();
}

const WINDOW: [&str; 4] = ["--not-before", "2020-01-01T00:00:00Z", "--not-after", "2099-12-31T23:59:59Z"];

fn world() -> World {
    let w = World { dir: tempfile::tempdir().unwrap(), clock: tempfile::tempdir().unwrap() };
    let d = w.dir.path();
    for sub in ["out", "tmp", "ext", "extmod"] {
        std::fs::create_dir(d.join(sub)).unwrap();
    }
    let plain = root().join("fixtures/digits/mlp.onnx");
    std::fs::copy(&plain, d.join("plain.onnx")).unwrap();
    std::fs::write(d.join("text.onnx"), "learning rate 0.001\nepochs 20\n").unwrap();
    std::fs::copy(root().join("fixtures/malformed/truncated_mid_tensor.onnx"), d.join("truncated.onnx")).unwrap();
    std::fs::write(d.join("bad.key"), "this is not a key\n").unwrap();
    std::fs::write(d.join("data.npy"), b"not an array").unwrap();
    for k in ["k.key", "other.key"] {
        setup_ok(&w, &["keygen", "-o", &w.p(k), "-q"]);
    }
    setup_ok(&w, &["keygen", "--signing", "-o", &w.p("sign.sk"), "-q"]);
    setup_ok(&w, &["keygen", "--fingerprint-secret", "-o", &w.p("fp.secret"), "-q"]);
    setup_ok(&w, &["bundle", "keygen", "-o", &w.p("bundle.pem"), "-q"]);
    setup_ok(&w, &["bundle", "keygen", "-o", &w.p("other-bundle.pem"), "-q"]);
    setup_ok(&w, &["encrypt", &w.p("plain.onnx"), "-o", &w.p("enc.onnx"), "--key-file", &w.p("k.key"), "-q"]);
    // One byte changed: in the manifest entry (inside its value, past its framing), in a
    // tensor, in an external data file.
    for name in ["mod-manifest.onnx", "mod-tensor.onnx"] {
        std::fs::copy(d.join("enc.onnx"), d.join(name)).unwrap();
    }
    let enc = std::fs::read(d.join("enc.onnx")).unwrap();
    let (_, value) =
        onnx_protect_core::format2::envelope::trailing_entry(&enc).expect("a format-2 entry ends the file");
    assert!(value.len() > 40);
    flip(&d.join("mod-manifest.onnx"), enc.len() - 20);
    flip(&d.join("mod-tensor.onnx"), tensor_byte(&d.join("enc.onnx")));
    let ext = root().join("fixtures/models/external_data/model.onnx");
    setup_ok(&w, &["encrypt", ext.to_str().unwrap(), "-o", &w.p("ext/model.onnx"), "--key-file", &w.p("k.key"), "-q"]);
    copy_dir(&d.join("ext"), &d.join("extmod"));
    flip(&d.join("extmod/extra.bin"), 64);
    // Licences: a model that needs one, and one of each kind of refusal.
    let signing = std::fs::read_to_string(d.join("sign.sk")).unwrap();
    let authority = signing.lines().find_map(|l| l.strip_prefix("# public key: ")).expect("public key").to_string();
    setup_ok(&w, &["keygen", "--signing", "-o", &w.p("other.sk"), "-q"]);
    setup_ok(
        &w,
        &[
            "encrypt",
            &w.p("plain.onnx"),
            "-o",
            &w.p("licensed.onnx"),
            "--key-file",
            &w.p("k.key"),
            "--licence-authority",
            &authority,
            "--model-id",
            "m1",
            "-q",
        ],
    );
    let (any, m1) = (["--recipient", "any"], ["--model", "id:m1"]);
    let window = |from: &'static str, to: &'static str| ["--not-before", from, "--not-after", to];
    let licences: [(&str, &str, Vec<&str>); 5] = [
        ("expired.lic", "sign.sk", [&m1[..], &any, &window("2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z")].concat()),
        ("future.lic", "sign.sk", [&m1[..], &any, &window("2098-01-01T00:00:00Z", "2099-01-01T00:00:00Z")].concat()),
        ("model.lic", "sign.sk", [&["--model", "id:other"][..], &any, &WINDOW].concat()),
        ("device.lic", "sign.sk", [&m1[..], &["--recipient", "key 0000000000000000"], &WINDOW].concat()),
        ("authority.lic", "other.sk", [&m1[..], &any, &WINDOW].concat()),
    ];
    for (name, key, extra) in licences {
        let (key, out) = (w.p(key), w.p(name));
        let mut args = vec!["licence", "issue", "--sign-key", &key, "-q", "-o", &out];
        args.extend_from_slice(&extra);
        setup_ok(&w, &args);
    }
    std::fs::write(d.join("malformed.lic"), "onnx-protect-licence-v1\nnothing else\n").unwrap();
    // A bundle of the plain model, and a copy of the model changed after it was signed.
    setup_ok(&w, &["bundle", "sign", &w.p("plain.onnx"), "--key", &w.p("bundle.pem"), "-o", &w.p("plain.sig"), "-q"]);
    std::fs::copy(d.join("plain.onnx"), d.join("plain-mod.onnx")).unwrap();
    flip(&d.join("plain-mod.onnx"), tensor_byte(&d.join("plain.onnx")));
    // A ledger of fingerprinted copies, for `trace`.
    setup_ok(
        &w,
        &[
            "encrypt",
            &w.p("plain.onnx"),
            "-o",
            &w.p("fingerprinted.onnx"),
            "--key-file",
            &w.p("k.key"),
            "--fingerprint",
            "r1",
            "--fingerprint-secret",
            &w.p("fp.secret"),
            "--ledger",
            &w.p("ledger"),
            "-q",
        ],
    );
    // A rewrap journal left beside a copy of the protected model, for another tail.
    std::fs::copy(d.join("enc.onnx"), d.join("journaled.onnx")).unwrap();
    foreign_journal(&d.join("journaled.onnx"));
    w
}

/// Every file under `dir` (relative path → bytes), directories as empty entries.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
                out.insert(rel, None);
            } else {
                out.insert(rel, Some(std::fs::read(e.path()).unwrap_or_default()));
            }
        }
    }
    out
}

/// The words of `text` for the repetition checks: lower case, without surrounding
/// punctuation; paths and quoted names stand as `<name>` (a name may well repeat), and
/// numbers are left out.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            if w.contains('/') || w.contains('\'') || w.contains('"') {
                "<name>".to_string()
            } else {
                w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase()
            }
        })
        .filter(|w| w.chars().any(|c| c.is_alphabetic()))
        .collect()
}

/// What `line` (an `error:` line) says twice, if anything.
fn repeated_cause(line: &str) -> Option<String> {
    let body = line.strip_prefix("error: ")?;
    let parts: Vec<&str> = body.split(": ").map(str::trim).collect();
    for (i, p) in parts.iter().enumerate() {
        if parts[i + 1..].contains(p) {
            return Some(format!("the part '{p}'"));
        }
    }
    let w = words(body);
    if let Some(pair) = w.windows(2).find(|p| p[0] == p[1] && p[0] != "<name>") {
        return Some(format!("the word '{}' twice in a row", pair[0]));
    }
    for (i, run) in w.windows(4).enumerate() {
        if w.get(i + 4..).is_some_and(|rest| rest.windows(4).any(|other| other == run)) {
            return Some(format!("the words '{}'", run.join(" ")));
        }
    }
    None
}

/// One row: a name, the arguments (`W:name` is the world's file `name`, `OUT` the output
/// path), the documented exit code and the environment.
struct Case {
    what: &'static str,
    args: Vec<&'static str>,
    code: i32,
    env: Vec<(&'static str, &'static str)>,
}

fn case(what: &'static str, code: i32, args: &[&'static str]) -> Case {
    Case { what, args: args.to_vec(), code, env: Vec::new() }
}

/// The commands that read one model, with `M` for it.
fn model_commands() -> Vec<Vec<&'static str>> {
    let mut v: Vec<Vec<&str>> = vec![
        vec!["inspect", "M"],
        vec!["encrypt", "M", "-o", "OUT", "--key-file", "W:k.key"],
        vec!["decrypt", "M", "-o", "OUT", "--key-file", "W:k.key"],
        vec!["decrypt", "M", "--stdout", "--key-file", "W:k.key"],
        vec!["verify", "M"],
        vec!["verify", "M", "--key-file", "W:k.key"],
        vec!["sign", "M", "-o", "OUT", "--sign-key", "W:sign.sk"],
        vec!["rewrap", "M", "-o", "OUT", "--key-file", "W:k.key", "--add-key-file", "W:other.key"],
        vec!["rekey", "M", "-o", "OUT", "--key-file", "W:k.key", "--new-key-file", "W:other.key"],
        vec!["derive-tier-key", "--passphrase-env", "PASS", "--model", "M", "--tier", "1", "-o", "OUT"],
        vec!["encrypt-patch-embedding", "M", "-o", "OUT", "--key-file", "W:k.key", "--block", "2", "--shuffle"],
        vec!["trace", "M", "--ledger", "W:ledger", "--fingerprint-secret", "W:fp.secret", "--original", "W:plain.onnx"],
    ];
    if cfg!(feature = "tract") {
        v.push(vec!["run", "M"]);
        v.push(vec!["assess", "M", "M", "--random", "1"]);
    }
    v
}

/// The commands that need a protected model, with `M` for it and `K` for the key.
fn protected_commands() -> Vec<Vec<&'static str>> {
    vec![
        vec!["decrypt", "M", "-o", "OUT", "--key-file", "K"],
        vec!["decrypt", "M", "--stdout", "--key-file", "K"],
        vec!["verify", "M", "--key-file", "K"],
        vec!["rekey", "M", "-o", "OUT", "--key-file", "K", "--new-key-file", "W:other.key"],
    ]
}

/// `rewrap`, which touches no weight (docs/cli.md): it reads the manifest, not the tensors.
const REWRAP: [&str; 8] = ["rewrap", "M", "-o", "OUT", "--key-file", "K", "--add-key-file", "W:other.key"];

fn with(cmd: &[&'static str], m: &'static str, k: &'static str) -> Vec<&'static str> {
    cmd.iter()
        .map(|a| match *a {
            "M" => m,
            "K" => k,
            other => other,
        })
        .collect()
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for cmd in model_commands() {
        v.push(case("missing file", 1, &with(&cmd, "W:missing.onnx", "")));
        v.push(case("not ONNX", 3, &with(&cmd, "W:text.onnx", "")));
        v.push(case("truncated", 3, &with(&cmd, "W:truncated.onnx", "")));
    }
    for cmd in protected_commands() {
        for (what, m) in [
            ("a byte of the manifest changed", "W:mod-manifest.onnx"),
            ("a byte of a tensor changed", "W:mod-tensor.onnx"),
            ("a byte of external data changed", "W:extmod/model.onnx"),
        ] {
            v.push(case(what, 5, &with(&cmd, m, "W:k.key")));
        }
        v.push(case("wrong key", 4, &with(&cmd, "W:enc.onnx", "W:other.key")));
        v.push(case("key file missing", 4, &with(&cmd, "W:enc.onnx", "W:missing.key")));
        v.push(case("key file malformed", 4, &with(&cmd, "W:enc.onnx", "W:bad.key")));
        v.push(case("not protected", 6, &with(&cmd, "W:plain.onnx", "W:k.key")));
    }
    v.extend([
        case("a byte of the manifest changed", 5, &with(&REWRAP, "W:mod-manifest.onnx", "W:k.key")),
        case("wrong key", 4, &with(&REWRAP, "W:enc.onnx", "W:other.key")),
        case("key file missing", 4, &with(&REWRAP, "W:enc.onnx", "W:missing.key")),
        case("key file malformed", 4, &with(&REWRAP, "W:enc.onnx", "W:bad.key")),
        case("not protected", 6, &with(&REWRAP, "W:plain.onnx", "W:k.key")),
    ]);
    for (what, code, licence) in [
        ("malformed licence", 10, "W:malformed.lic"),
        ("licence of another authority", 11, "W:authority.lic"),
        ("licence expired", 12, "W:expired.lic"),
        ("licence not yet valid", 13, "W:future.lic"),
        ("licence for another model", 14, "W:model.lic"),
        ("licence for another device", 15, "W:device.lic"),
    ] {
        let decrypt = ["decrypt", "W:licensed.onnx", "-o", "OUT", "--key-file", "W:k.key", "--licence", licence];
        v.push(case(what, code, &decrypt));
    }
    for m in ["W:mod-manifest.onnx", "W:mod-tensor.onnx", "W:extmod/model.onnx"] {
        v.push(case("changed byte", 5, &["verify", m]));
        v.push(case("changed byte", 5, &["sign", m, "-o", "OUT", "--sign-key", "W:sign.sk"]));
        v.push(case("changed byte", 5, &["check", m]));
    }
    v.extend([
        case("not protected", 6, &["verify", "W:plain.onnx"]),
        case("not protected", 6, &["sign", "W:plain.onnx", "-o", "OUT", "--sign-key", "W:sign.sk"]),
        case("not protected", 8, &["check", "W:plain.onnx"]),
        case("already protected", 6, &["encrypt", "W:enc.onnx", "-o", "OUT", "--key-file", "W:k.key"]),
        case("no key", 2, &["decrypt", "W:enc.onnx", "-o", "OUT"]),
        case("no key", 2, &["encrypt", "W:plain.onnx", "-o", "OUT"]),
        Case {
            what: "key variable unset",
            args: vec!["decrypt", "W:enc.onnx", "-o", "OUT", "--key-env", "UNSET_KEY_VARIABLE"],
            code: 4,
            env: vec![],
        },
        Case {
            what: "key variable malformed",
            args: vec!["decrypt", "W:enc.onnx", "-o", "OUT", "--key-env", "BAD_KEY"],
            code: 4,
            env: vec![("BAD_KEY", "not hex")],
        },
        // Options: clap's own errors and those found after parsing.
        case("unknown option", 2, &["encrypt", "W:plain.onnx", "--bogus"]),
        case("missing argument", 2, &["verify"]),
        case("missing option value", 2, &["decrypt", "W:enc.onnx", "-o"]),
        case("two key options", 2, &["decrypt", "W:enc.onnx", "-o", "OUT", "--key-file", "W:k.key", "--key-env", "V"]),
        case("bad value", 2, &["keygen", "-o", "OUT", "--tiers", "many"]),
        case("'-' where a file is needed", 2, &["decrypt", "W:enc.onnx", "-o", "OUT", "--key-file", "-"]),
        case(
            "--in-place with another -o",
            2,
            &["encrypt", "W:plain.onnx", "-o", "OUT", "--key-file", "W:k.key", "--in-place"],
        ),
        case("--in-place with -", 2, &["encrypt", "-", "--in-place", "--key-file", "W:k.key"]),
        case("--tiers with -o -", 2, &["keygen", "-o", "-", "--tiers", "2"]),
        case("--jobs 0", 2, &["batch", "verify", "--dir", "W:ext", "--jobs", "0"]),
        case(
            "--external without --stdout",
            2,
            &["decrypt", "W:enc.onnx", "-o", "OUT", "--key-file", "W:k.key", "--external", "x.bin"],
        ),
        case("out-of-range tiers", 1, &["keygen", "-o", "OUT", "--tiers", "0"]),
        case(
            "invalid override",
            7,
            &["encrypt", "W:plain.onnx", "-o", "OUT", "--key-file", "W:k.key", "--coefficient", "Conv=2"],
        ),
        case(
            "policy file missing",
            1,
            &["encrypt", "W:plain.onnx", "-o", "OUT", "--key-file", "W:k.key", "--policy", "W:missing.toml"],
        ),
        // Outputs that cannot be written.
        case(
            "output under a file",
            1,
            &["encrypt", "W:plain.onnx", "-o", "W:plain.onnx/o.onnx", "--key-file", "W:k.key"],
        ),
        case(
            "output under a file",
            1,
            &["decrypt", "W:enc.onnx", "-o", "W:plain.onnx/o.onnx", "--key-file", "W:k.key"],
        ),
        case("output is a device", 1, &["decrypt", "W:enc.onnx", "-o", "/dev/null", "--key-file", "W:k.key"]),
        case("output exists", 1, &["encrypt", "W:plain.onnx", "-o", "W:enc.onnx", "--key-file", "W:k.key"]),
        case("key file exists", 1, &["keygen", "-o", "W:k.key"]),
        case(
            "licence exists",
            1,
            &[
                "licence",
                "issue",
                "--sign-key",
                "W:sign.sk",
                "-o",
                "W:expired.lic",
                "--model",
                "id:m1",
                "--recipient",
                "any",
                "--not-before",
                "2020-01-01T00:00:00Z",
                "--not-after",
                "2099-12-31T23:59:59Z",
            ],
        ),
        case(
            "input unreadable",
            1,
            &["transform-input", "W:missing.npy", "W:out/o.npy", "--key-file", "W:k.key", "--block", "4", "--shuffle"],
        ),
        case(
            "input not a tensor",
            1,
            &["transform-input", "W:data.npy", "W:out/o.npy", "--key-file", "W:k.key", "--block", "4", "--shuffle"],
        ),
        // `bundle sign` signs any file (not ONNX too): only a missing one is an error.
        case("missing file", 1, &["bundle", "sign", "W:missing.onnx", "--key", "W:bundle.pem", "-o", "OUT"]),
        // Licences.
        case("no licence", 10, &["decrypt", "W:licensed.onnx", "-o", "OUT", "--key-file", "W:k.key"]),
        case("licence needed to verify with a key", 10, &["verify", "W:licensed.onnx", "--key-file", "W:k.key"]),
        // Bundles.
        case(
            "bundle: model changed",
            5,
            &["bundle", "verify", "W:plain-mod.onnx", "--key", "W:bundle.pem.pub.pem", "--bundle", "W:plain.sig"],
        ),
        case(
            "bundle: another key",
            5,
            &["bundle", "verify", "W:plain.onnx", "--key", "W:other-bundle.pem.pub.pem", "--bundle", "W:plain.sig"],
        ),
        case(
            "bundle: none",
            1,
            &["bundle", "verify", "W:plain.onnx", "--key", "W:bundle.pem.pub.pem", "--bundle", "W:missing.sig"],
        ),
        case(
            "bundle: signing key malformed",
            4,
            &["bundle", "sign", "W:plain.onnx", "--key", "W:bad.key", "-o", "OUT"],
        ),
        // A rewrap journal that does not match the model.
        case(
            "rewrap journal for another tail",
            1,
            &["rewrap", "W:journaled.onnx", "--in-place", "--key-file", "W:k.key", "--add-key-file", "W:other.key"],
        ),
    ]);
    v
}

#[test]
fn every_reachable_error_has_its_code_one_line_each_cause_once_and_leaves_nothing() {
    let w = world();
    let mut failures = Vec::new();
    for c in cases() {
        let args: Vec<String> = c
            .args
            .iter()
            .map(|a| match *a {
                "OUT" => w.out(),
                a => a.strip_prefix("W:").map(|n| w.p(n)).unwrap_or_else(|| a.to_string()),
            })
            .collect();
        let before = snapshot(w.dir.path());
        let mut env = c.env.clone();
        env.push(("PASS", "a passphrase"));
        let (code, _stdout, err) = run_in(&w, &args, &env);
        let shown = format!("{} ({}): {:?}", c.what, c.args.first().copied().unwrap_or(""), &c.args);
        let lines: Vec<&str> = err.lines().collect();
        let mut problems = Vec::new();
        if code != c.code {
            problems.push(format!("exit {code}, documented {}", c.code));
        }
        let shape_ok = match lines[..] {
            [first] => first.starts_with("error: "),
            [first, second] => first.starts_with("error: ") && second.starts_with("hint: "),
            _ => false,
        };
        if !shape_ok {
            problems.push("standard error is not one error line (and a hint)".to_string());
        }
        if let Some(r) = lines.first().and_then(|l| repeated_cause(l)) {
            problems.push(format!("says {r} twice"));
        }
        let after = snapshot(w.dir.path());
        if after != before {
            let changed: Vec<&PathBuf> =
                before.keys().chain(after.keys()).filter(|k| before.get(*k) != after.get(*k)).collect();
            problems.push(format!("changed or left behind: {changed:?}"));
            restore(w.dir.path(), &before);
        }
        if !problems.is_empty() {
            failures.push(format!("{shown}\n    {}\n    stderr: {err}", problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases().len(), failures.join("\n"));
}

/// Puts the folder back as `snapshot` found it, so one failing case does not fail others.
fn restore(dir: &Path, snapshot: &BTreeMap<PathBuf, Option<Vec<u8>>>) {
    let now = self::snapshot(dir);
    for (rel, content) in now.iter().rev() {
        if !snapshot.contains_key(rel) {
            let p = dir.join(rel);
            if content.is_none() {
                let _ = std::fs::remove_dir_all(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    for (rel, content) in snapshot {
        if let Some(bytes) = content {
            let p = dir.join(rel);
            if std::fs::read(&p).ok().as_ref() != Some(bytes) {
                std::fs::write(&p, bytes).unwrap();
            }
        }
    }
}

#[test]
fn the_repetition_check_finds_a_cause_said_twice() {
    for line in [
        "error: decrypt m.onnx: modified: modified",
        "error: cannot read key file: cannot read key file",
        "error: the manifest entry is invalid, the manifest entry is invalid",
        "error: the the key",
    ] {
        assert!(repeated_cause(line).is_some(), "{line}");
    }
    for line in [
        "error: decrypt /tmp/a/a.onnx: the manifest or an encrypted byte was modified",
        "error: key file k.key: not a key file (expected 64 hex digits)",
    ] {
        assert_eq!(repeated_cause(line), None, "{line}");
    }
}
