//! `batch`: every output mirrors its input path, shards split the list exactly,
//! a killed run resumes and skips finished files, and failures are reported
//! per file with a non-zero exit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use onnx_protect_core::keys::KeySource;
use onnx_protect_core::protect::{decrypt_to_vec, verify};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{Model, NoProgress};

use crate::util::{bin, fixture_models, path_str, root, run};

/// Copies every fixture folder to `dir/<case>/`, plus `copies` extra copies of
/// small single-file fixtures under `dir/bulk/<n>/<case>.onnx`. Returns the relative paths of the models.
fn make_tree(dir: &Path, copies: usize) -> Vec<String> {
    let mut rels = Vec::new();
    for m in fixture_models() {
        let case = m.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
        copy_files(m.parent().unwrap(), &dir.join(&case));
        rels.push(format!("{case}/model.onnx"));
    }
    let small: Vec<PathBuf> = ["cnn_torch", "fp16", "roles_mix", "typed_fields"]
        .iter()
        .map(|c| root().join("fixtures/models").join(c))
        .collect();
    for n in 0..copies {
        let src = &small[n % small.len()];
        let name = src.file_name().unwrap().to_string_lossy().into_owned();
        let dest = dir.join("bulk").join(format!("{n:02}"));
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::copy(src.join("model.onnx"), dest.join(format!("{name}.onnx"))).unwrap();
        rels.push(format!("bulk/{n:02}/{name}.onnx"));
    }
    rels.sort();
    rels
}

/// Copies the files of folder `from` into `to` (created).
fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn keygen(path: &Path) {
    keygen_with(path, &[]);
}

fn keygen_with(path: &Path, extra: &[&str]) {
    let (code, _, err) = run(&[&["keygen", "-o", path_str(path)], extra].concat());
    assert_eq!(code, 0, "{err}");
}

/// Key files `dir/1.key` and `dir/2.key`, made by `keygen` with `extra` options.
fn two_keys(dir: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let (k1, k2) = (dir.join("1.key"), dir.join("2.key"));
    keygen_with(&k1, extra);
    keygen_with(&k2, extra);
    (k1, k2)
}

/// The arguments `batch <op> --dir <dir> --out-dir <out> <extra...>`.
fn batch_args<'a>(op: &'a str, dir: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    [&["batch", op, "--dir", dir, "--out-dir", out], extra].concat()
}

/// Runs `batch <op> --dir <dir> --out-dir <out> <extra...>`.
fn batch(op: &str, dir: &str, out: &str, extra: &[&str]) -> (i32, String, String) {
    run(&batch_args(op, dir, out, extra))
}

fn read_key(path: &Path) -> KeySource {
    let bytes = std::fs::read(path).unwrap();
    KeySource::key(MasterKey::parse_key_file(&bytes).unwrap())
}

/// The report lines of a run, as (path, status, whole line).
fn report(path: &Path) -> Vec<(String, String, serde_json::Value)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (v["path"].as_str().unwrap().to_string(), v["status"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// Every input file (models and side files) under `src` equals the same relative file under `dst`.
fn assert_same_tree(src: &Path, dst: &Path, rels: &[String]) {
    for rel in rels {
        let a = src.join(rel);
        assert_eq!(std::fs::read(dst.join(rel)).unwrap(), std::fs::read(&a).unwrap(), "{rel}");
        for f in Model::open(&a).unwrap().external_files.iter() {
            let r = Path::new(rel).parent().unwrap().join(&f.location);
            assert_eq!(std::fs::read(dst.join(&r)).unwrap(), std::fs::read(src.join(&r)).unwrap(), "{}", r.display());
        }
    }
}

#[test]
fn batch_encrypt_rekey_decrypt_round_trips_a_tree_with_external_data() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let rels = make_tree(&src, 4);
    let (k1, k2) = two_keys(dir.path(), &[]);
    let (s, k1s, k2s) = (path_str(&src), path_str(&k1), path_str(&k2));
    let (enc, re, dec) = (dir.path().join("enc"), dir.path().join("re"), dir.path().join("dec"));
    let (e, r, d) = (path_str(&enc), path_str(&re), path_str(&dec));
    let rep = dir.path().join("r.jsonl");
    let extra = ["--key-file", k1s, "-j", "2", "--report", path_str(&rep), "--coefficient", "*=0.5"];
    let (code, out, err) = batch("encrypt", s, e, &extra);
    assert_eq!(code, 0, "{out} {err}");
    let lines = report(&rep);
    assert_eq!(lines.iter().map(|l| l.0.clone()).collect::<Vec<_>>(), {
        let mut v = rels.clone();
        v.sort();
        lines.iter().map(|l| l.0.clone()).filter(|p| v.contains(p)).collect::<Vec<_>>()
    });
    assert_eq!(lines.len(), rels.len());
    for (path, status, v) in &lines {
        assert_eq!(status, "ok", "{path}: {v}");
        assert!(v["input_bytes"].as_u64().unwrap() > 0 && v["output_bytes"].as_u64().unwrap() > 0);
        assert!(v["seconds"].as_f64().is_some());
        assert!(v["error"].is_null());
    }
    let ext = enc.join("external_data/weights.bin");
    assert!(ext.exists(), "external data mirrored next to its model");
    assert_ne!(std::fs::read(&ext).unwrap(), std::fs::read(src.join("external_data/weights.bin")).unwrap());
    for rel in &rels {
        verify(&enc.join(rel), Some(&read_key(&k1)), &NoProgress).unwrap();
    }
    let (code, out, err) = batch("rekey", e, r, &["--key-file", k1s, "--new-key-file", k2s, "-j", "2", "--sync"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains(&format!("{} ok, 0 skipped, 0 failed", rels.len())), "{out}");
    let (code, out, err) = run(&["batch", "verify", "--dir", r, "--key-file", k2s, "--json"]);
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(out.lines().count(), rels.len());
    let (code, _, err) = run(&["batch", "verify", "--dir", r, "--key-file", k1s]);
    assert_eq!(code, 4, "every file fails with a wrong key: {err}");
    let (code, out, err) = batch("decrypt", r, d, &["--key-file", k2s]);
    assert_eq!(code, 0, "{out} {err}");
    assert_same_tree(&src, &dec, &rels);
    // The state directory is never taken for input.
    let (code, out, err) = run(&["batch", "verify", "--dir", e]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{} files", rels.len())), "{out}");
}

#[test]
fn shards_run_as_separate_processes_cover_every_file_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let rels = make_tree(&src, 9);
    let key = dir.path().join("k.key");
    keygen(&key);
    for by in ["index", "hash"] {
        let out = dir.path().join(format!("out-{by}"));
        let n = 3;
        let children: Vec<_> = (0..n)
            .map(|i| {
                let rep = dir.path().join(format!("{by}-{i}.jsonl"));
                let child = Command::new(bin())
                    .args(batch_args("encrypt", path_str(&src), path_str(&out), &["--coefficient", "*=0.5"]))
                    .args(["--key-file", path_str(&key), "--jobs", "1", "--shard", &format!("{i}/{n}")])
                    .args(["--shard-by", by, "--report", rep.to_str().unwrap()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                (child, rep)
            })
            .collect();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut sizes = Vec::new();
        for (child, rep) in children {
            let o = child.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let lines = report(&rep);
            sizes.push(lines.len());
            for (path, status, _) in lines {
                assert_eq!(status, "ok");
                *seen.entry(path).or_default() += 1;
            }
        }
        assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), rels, "{by}: the shards together cover the list");
        assert!(seen.values().all(|&c| c == 1), "{by}: a file was processed twice: {seen:?}");
        if by == "index" {
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
        }
        // A shard is deterministic: the same shard again finds all its files finished.
        let extra = ["--key-file", path_str(&key), "--shard", "1/3", "--shard-by", by, "--coefficient", "*=0.5"];
        let (code, stdout, err) = batch("encrypt", path_str(&src), path_str(&out), &extra);
        assert_eq!(code, 0, "{err}");
        assert!(
            stdout.contains(&format!("{} files (shard 1/3 of {}): 0 ok, {} skipped", sizes[1], rels.len(), sizes[1])),
            "{stdout}"
        );
    }
    // Bad shard specifications are usage errors, refused before anything runs.
    for bad in ["3/3", "1", "a/3", "0/0"] {
        let (code, _, err) = run(&["batch", "verify", "--dir", src.to_str().unwrap(), "--shard", bad]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.starts_with("error: --shard"), "{err}");
    }
}

#[test]
fn a_killed_batch_resumes_and_skips_finished_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let rels = make_tree(&src, 40 - fixture_models().len());
    assert_eq!(rels.len(), 40);
    let out = dir.path().join("out");
    let rep1 = dir.path().join("run1.jsonl");
    // A passphrase makes every file cost one Argon2id derivation, so the run is slow enough to interrupt.
    let spawn = |rep: &Path, jobs: &str| {
        Command::new(bin())
            .args(batch_args("encrypt", path_str(&src), path_str(&out), &["--coefficient", "*=0.5"]))
            .args(["--passphrase-env", "OP_TEST_PASS", "--jobs", jobs, "--report", rep.to_str().unwrap()])
            .env("OP_TEST_PASS", "batch test passphrase")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = spawn(&rep1, "1");
    let t0 = Instant::now();
    while report(&rep1).len() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        assert!(child.try_wait().unwrap().is_none(), "the batch ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first = report(&rep1);
    assert!(first.len() < rels.len(), "killed mid-way: {} of {} reported", first.len(), rels.len());
    let finished: BTreeSet<String> = first.iter().filter(|l| l.1 == "ok").map(|l| l.0.clone()).collect();
    assert!(finished.len() >= 3);
    // Whatever the kill interrupted, every output present is complete: it parses and its checksum holds.
    for rel in &rels {
        let p = out.join(rel);
        if p.exists() {
            verify(&p, None, &NoProgress).unwrap_or_else(|e| panic!("{rel}: partial output: {e}"));
        }
    }
    // The re-run finishes the job and skips what was finished.
    let rep2 = dir.path().join("run2.jsonl");
    let o = spawn(&rep2, "2").wait_with_output().unwrap();
    assert!(o.status.success());
    let second = report(&rep2);
    assert_eq!(second.iter().map(|l| l.0.clone()).collect::<BTreeSet<_>>(), rels.iter().cloned().collect());
    for (path, status, v) in &second {
        let want = if finished.contains(path) { "skipped" } else { "ok" };
        assert_eq!(status, want, "{path}: {v}");
    }
    // Every output decrypts to its original.
    let pass = KeySource::passphrase(zeroize::Zeroizing::new(b"batch test passphrase".to_vec()));
    let dec = dir.path().join("dec");
    let o = Command::new(bin())
        .args(batch_args(
            "decrypt",
            path_str(&out),
            path_str(&dec),
            &["--passphrase-env", "OP_TEST_PASS", "--jobs", "2"],
        ))
        .env("OP_TEST_PASS", "batch test passphrase")
        .output()
        .unwrap();
    let (stdout, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{stdout} {err}");
    assert_same_tree(&src, &dec, &rels);
    let one = Model::open(out.join(&rels[0])).unwrap();
    if one.external_files.is_empty() {
        assert_eq!(decrypt_to_vec(&one, &pass).unwrap(), std::fs::read(src.join(&rels[0])).unwrap());
    }
}

#[test]
fn a_changed_input_or_a_damaged_output_is_redone_and_failures_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    let cnn = root().join("fixtures/models/cnn_torch/model.onnx");
    let fp16 = root().join("fixtures/models/fp16/model.onnx");
    std::fs::copy(&cnn, src.join("a/one.onnx")).unwrap();
    std::fs::copy(&cnn, src.join("two.onnx")).unwrap();
    std::fs::copy(&fp16, src.join("three.onnx")).unwrap();
    std::fs::copy(root().join("fixtures/malformed/garbage.onnx"), src.join("bad.onnx")).unwrap();
    let key = dir.path().join("k.key");
    keygen(&key);
    let out = dir.path().join("out");
    // A list file: relative entries, a comment, a blank line and a missing file.
    let list = dir.path().join("models.txt");
    std::fs::write(&list, "# models\na/one.onnx\n\ntwo.onnx\nthree.onnx\nbad.onnx\nmissing.onnx\n").unwrap();
    let rep = dir.path().join("r.jsonl");
    let (l, b, o, ks, r) = (path_str(&list), path_str(&src), path_str(&out), path_str(&key), path_str(&rep));
    let run_v = |extra: &[&str]| {
        run(&[&["batch", "encrypt", "--list", l, "--base", b, "--out-dir", o, "--key-file", ks, "--report", r], extra]
            .concat())
    };
    let status = || report(&rep).into_iter().map(|(p, s, _)| (p, s)).collect::<BTreeMap<_, _>>();
    let (code, stdout, err) = run_v(&[]);
    assert_eq!(code, 1, "two failures of different kinds exit 1: {stdout} {err}");
    assert!(err.lines().any(|l| l.starts_with("error: batch encrypt: 2 of 5 files failed (see the report)")), "{err}");
    assert!(stdout.contains("failed bad.onnx: "), "{stdout}");
    let s = status();
    assert_eq!(s["a/one.onnx"], "ok");
    assert_eq!(s["bad.onnx"], "failed");
    assert_eq!(s["missing.onnx"], "failed");
    let bad = report(&rep).into_iter().find(|l| l.0 == "bad.onnx").unwrap().2;
    assert_eq!(bad["exit_code"], 3);
    assert!(bad["error"].as_str().unwrap().len() > 5);
    assert!(out.join("a/one.onnx").exists() && !out.join("bad.onnx").exists());
    // Fix the list; replace one input and damage one output: exactly those two are redone.
    std::fs::write(&list, "a/one.onnx\ntwo.onnx\nthree.onnx\n").unwrap();
    std::fs::copy(&fp16, src.join("two.onnx")).unwrap();
    let mut damaged = std::fs::read(out.join("three.onnx")).unwrap();
    damaged.truncate(damaged.len() - 1);
    std::fs::write(out.join("three.onnx"), &damaged).unwrap();
    let (code, stdout, err) = run_v(&[]);
    assert_eq!(code, 0, "{stdout} {err}");
    let s = status();
    assert_eq!(s["a/one.onnx"], "skipped");
    assert_eq!(s["two.onnx"], "ok");
    assert_eq!(s["three.onnx"], "ok");
    let k = read_key(&key);
    for (name, orig) in [("two.onnx", &fp16), ("three.onnx", &fp16), ("a/one.onnx", &cnn)] {
        let m = Model::open(out.join(name)).unwrap();
        assert_eq!(decrypt_to_vec(&m, &k).unwrap(), std::fs::read(orig).unwrap(), "{name}");
    }
    // Another key or policy is other settings: nothing is skipped. --force redoes everything too.
    let (code, _, err) = run_v(&["--coefficient", "*=0.3"]);
    assert_eq!(code, 0, "{err}");
    assert!(status().values().all(|s| s == "ok"));
    let (code, _, err) = run_v(&["--coefficient", "*=0.3", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(status().values().all(|s| s == "ok"));
    // Usage mistakes are refused before any work (exit 2, docs/cli.md).
    let (code, _, err) = run(&["batch", "decrypt", "--dir", b, "--key-file", ks]);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: batch decrypt needs --out-dir"), "{err}");
    let (code, _, err) = batch("encrypt", b, b, &["--key-file", ks]);
    assert_eq!(code, 2);
    assert!(err.contains("--out-dir is the input directory"), "{err}");
}

/// `batch rekey` re-encrypts tiered and dp models (external data included) under the
/// new top key; the key of a lower tier fails every file and writes nothing.
#[test]
fn batch_rekey_handles_tiered_and_dp_models() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = two_keys(dir.path(), &["--tiers", "3"]);
    let (k1s, k2s) = (path_str(&k1), path_str(&k2));
    let (enc, re, dec) = (dir.path().join("enc"), dir.path().join("re"), dir.path().join("dec"));
    let dp = crate::util::dp_policy_file(dir.path());
    let cases: [(&str, &str, &[&str]); 3] = [
        ("tiered", "cnn_torch", &["--tiers", "3", "--policy", dp.to_str().unwrap()]),
        ("dp", "fp16", &["--policy", dp.to_str().unwrap()]),
        ("ext", "external_data", &["--tiers", "3", "--mode", "*=fp", "--coefficient", "*=0.5"]),
    ];
    let mut rels = Vec::new();
    for (name, fixture, extra) in cases {
        let model = root().join("fixtures/models").join(fixture).join("model.onnx");
        let out = enc.join(name).join("model.onnx");
        let mut args = vec!["encrypt", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--key-file", k1s];
        args.extend_from_slice(extra);
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        rels.push((format!("{name}/model.onnx"), model));
    }
    let (e, r, d) = (enc.to_str().unwrap(), re.to_str().unwrap(), dec.to_str().unwrap());
    // A tier-1 key: every file fails (the untiered one with a wrong key), nothing is written.
    let low = format!("{k1s}.tier1");
    let (code, out, err) = batch("rekey", e, r, &["--key-file", &low, "--new-key-file", k2s]);
    assert_ne!(code, 0, "{out} {err}");
    assert!(out.contains("0 ok, 0 skipped, 3 failed"), "{out}");
    assert!(out.contains("top-tier key"), "{out}");
    for (rel, _) in &rels {
        assert!(!re.join(rel).exists(), "{rel} written with a lower-tier key");
    }
    let (code, out, err) = batch("rekey", e, r, &["--key-file", k1s, "--new-key-file", k2s]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("3 ok, 0 skipped, 0 failed"), "{out}");
    let (code, _, err) = run(&["batch", "verify", "--dir", r, "--key-file", k1s]);
    assert_eq!(code, 4, "the old key no longer opens any file: {err}");
    let (code, out, err) = batch("decrypt", r, d, &["--key-file", k2s]);
    assert_eq!(code, 0, "{out} {err}");
    for (rel, model) in &rels {
        assert_eq!(std::fs::read(dec.join(rel)).unwrap(), std::fs::read(model).unwrap(), "{rel}");
        for f in Model::open(model).unwrap().external_files.iter() {
            let got = dec.join(rel).parent().unwrap().join(&f.location);
            assert_eq!(std::fs::read(got).unwrap(), std::fs::read(&f.path).unwrap(), "{rel} {}", f.location);
        }
    }
}

/// `batch encrypt` takes the same policy options as `encrypt` (tiers, selection, seed,
/// shares): each output's manifest records the policy `encrypt` records; the other
/// operations refuse them.
#[test]
fn batch_encrypt_takes_the_policy_options_of_encrypt() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut rels = Vec::new();
    for case in ["cnn_torch", "external_data"] {
        copy_files(&root().join("fixtures/models").join(case), &src.join(case));
        rels.push(format!("{case}/model.onnx"));
    }
    let k = dir.path().join("k.key");
    keygen_with(&k, &["--tiers", "2"]);
    let policy: &[&str] = &["--tiers", "2", "--tier-shares", "0.7,0.3", "--selection", "*=sample-l1", "--seed", "5"];
    let (s, ks) = (path_str(&src), path_str(&k));
    let enc = dir.path().join("enc");
    let (code, out, err) =
        batch("encrypt", s, path_str(&enc), &[&["--key-file", ks, "--coefficient", "*=0.5"], policy].concat());
    assert_eq!(code, 0, "{out} {err}");
    for rel in &rels {
        let single = dir.path().join("single").join(rel);
        let input = src.join(rel);
        let args =
            ["encrypt", path_str(&input), "-o", path_str(&single), "--key-file", ks, "-q", "--coefficient", "*=0.5"];
        let (code, _, err) = run(&[&args[..], policy].concat());
        assert_eq!(code, 0, "{err}");
        let summary = |p: &Path| {
            let m = Model::open(p).unwrap();
            let p = onnx_protect_core::protect::protection_view(&m).unwrap();
            (p.tiers, p.policy_summary.clone(), p.targets.iter().map(|t| (t.tier, t.spans.clone())).collect::<Vec<_>>())
        };
        let (batch, one) = (summary(&enc.join(rel)), summary(&single));
        assert_eq!(batch.0, 2, "{rel}");
        assert!(
            batch.1.contains(":sample-l1") && batch.1.ends_with(";tiers=2;shares=0.7,0.3;seed=5"),
            "{rel}: {}",
            batch.1
        );
        assert_eq!(batch, one, "{rel}: batch and encrypt chose differently");
    }
    let dec = dir.path().join("dec");
    let (code, out, err) = batch("decrypt", path_str(&enc), path_str(&dec), &["--key-file", ks]);
    assert_eq!(code, 0, "{out} {err}");
    assert_same_tree(&src, &dec, &rels);
    let (code, _, err) = run(&["batch", "verify", "--dir", enc.to_str().unwrap(), "--key-file", ks, "--tiers", "2"]);
    assert_eq!(code, 2, "a bad combination found after parsing is a usage error (docs/cli.md): {err}");
    assert!(err.contains("batch encrypt only"), "{err}");
}

/// `batch rewrap` swaps a recipient over a fleet without touching a weight byte: two
/// shards run separately cover every file once, a later run skips what is done, and the
/// removed key no longer opens any model.
#[test]
fn batch_rewrap_swaps_a_recipient_over_a_fleet_in_shards_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let rels = make_tree(&src, 2);
    let (k1, k2) = two_keys(dir.path(), &[]);
    let (s, k1s, k2s) = (path_str(&src), path_str(&k1), path_str(&k2));
    let (enc, re) = (dir.path().join("enc"), dir.path().join("re"));
    let (e, r) = (path_str(&enc), path_str(&re));
    let (code, out, err) = batch("encrypt", s, e, &["--key-file", k1s, "--coefficient", "*=0.5"]);
    assert_eq!(code, 0, "{out} {err}");
    let recipients = ["--key-file", k1s, "--add-key-file", k2s, "--remove-key-file", k1s];
    let rewrap = |extra: &[&str]| batch("rewrap", e, r, &[&recipients[..], extra].concat());
    let mut done = 0;
    for shard in ["0/2", "1/2"] {
        let (code, out, err) = rewrap(&["--shard", shard]);
        assert_eq!(code, 0, "{out} {err}");
        done += out
            .lines()
            .last()
            .and_then(|l| l.split(": ").nth(1))
            .map_or(0, |l| l.split(' ').next().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0));
    }
    assert_eq!(done, rels.len(), "the shards cover every file once");
    let (code, out, err) = rewrap(&[]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains(&format!("0 ok, {} skipped, 0 failed", rels.len())), "{out}");
    for rel in &rels {
        let (before, after) = (std::fs::read(enc.join(rel)).unwrap(), std::fs::read(re.join(rel)).unwrap());
        let tail = onnx_protect_core::format2::envelope::trailing_entry(&before).unwrap().0.start as usize;
        assert_eq!(after[..tail], before[..tail], "{rel}: no weight byte changed");
        verify(&re.join(rel), Some(&read_key(&k2)), &NoProgress).unwrap();
        let e = verify(&re.join(rel), Some(&read_key(&k1)), &NoProgress).unwrap_err();
        assert_eq!(e.kind(), onnx_protect_core::error::ErrorKind::WrongKey, "{rel}: {e}");
    }
    let (code, _, err) = batch("decrypt", e, r, &["--key-file", k1s, "--remove", "x"]);
    assert_eq!(code, 2, "recipient options belong to batch rewrap only: {err}");
}

#[test]
fn a_report_replaces_only_an_earlier_report_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(root().join("fixtures/models/cnn_torch/model.onnx"), src.join("m.onnx")).unwrap();
    let key = dir.path().join("k.key");
    keygen(&key);
    let rep = dir.path().join("notes.txt");
    std::fs::write(&rep, "my notes\n").unwrap();
    let out = dir.path().join("enc");
    let extra = ["--key-file", path_str(&key), "--report", path_str(&rep)];
    let args = batch_args("encrypt", path_str(&src), path_str(&out), &extra);
    let forced = [&args[..], &["--force"]].concat();
    let (code, _, err) = run(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is not a batch report"), "{err}");
    assert_eq!(std::fs::read_to_string(&rep).unwrap(), "my notes\n", "a file that is not a report is kept");
    assert!(!out.exists(), "refused before any work");
    // With --force it is replaced; then the report of that run may be replaced by the next.
    let (code, _, err) = run(&forced);
    assert_eq!(code, 0, "{err}");
    assert_eq!(report(&rep).len(), 1);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert_eq!(report(&rep)[0].1, "skipped", "{:?}", report(&rep));
}

/// `batch rekey` keeps a model's TPM recipient as `rekey` does: its stanza is wrapped
/// again for the recipient its label names (no TPM needed to wrap).
#[test]
fn batch_rekey_keeps_a_tpm_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = two_keys(dir.path(), &["-q"]);
    // The P-256 generator point as a TPM recipient (as in device_keys.rs).
    let tpm = "onnx-protect-tpm1qd43050juykyy3lchnnw2caygre8wqmasyk7kvaq7jsnj3wcnrpfvm7cs3u";
    let (enc, re) = (dir.path().join("enc"), dir.path().join("re"));
    let plain = root().join("fixtures/models/cnn_torch/model.onnx");
    let m = enc.join("m.onnx");
    std::fs::create_dir_all(&enc).unwrap();
    let (code, _, err) =
        run(&["encrypt", path_str(&plain), "-o", path_str(&m), "--key-file", path_str(&k1), "-r", tpm]);
    assert_eq!(code, 0, "{err}");
    let extra = ["--key-file", path_str(&k1), "--new-key-file", path_str(&k2)];
    let (code, out, err) = batch("rekey", path_str(&enc), path_str(&re), &extra);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("1 ok, 0 skipped, 0 failed"), "{out}");
    let (_, listing, _) = run(&["inspect", re.join("m.onnx").to_str().unwrap()]);
    assert!(listing.contains(&format!("tpm {tpm} (tier 1)")), "{listing}");
    let key = KeySource::key(onnx_protect_crypto::KeyFile::parse(&std::fs::read(&k2).unwrap()).unwrap().into_key());
    let model = Model::open(re.join("m.onnx")).unwrap();
    assert_eq!(decrypt_to_vec(&model, &key).unwrap(), std::fs::read(&plain).unwrap());
}
