//! `rekey` keeps the key-independent positions, draws a fresh salt and refuses a
//! wrong key or a modified model before writing anything; `check` passes a
//! model protected as the policy asks and fails each kind of weaker protection.

mod check;

use std::path::{Path, PathBuf};

use onnx_protect_core::error::{CoreError, ErrorKind};
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::protect::{decrypt, encrypt, protection_view, DecryptOptions, EncryptOptions};
use onnx_protect_core::rekey::{rekey, RekeyOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{Model, NoProgress};
use onnx_protect_select::Policy;
use zeroize::Zeroizing;

use crate::util::{copy_fixture, fixture_models, manifest_of, path_str, root, run, run_keyed};

fn key(b: u8) -> KeySource {
    KeySource::key(MasterKey::from_bytes([b; 32]))
}

fn enc(input: &Path, output: &Path, k: &KeySource, policy: &Policy) {
    encrypt(input, output, &EncryptTo::key(k.clone()), &EncryptOptions::new(policy))
        .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
}

fn rk(input: &Path, output: &Path, old: &KeySource, new: &KeySource) -> onnx_protect_core::error::Result<()> {
    let opts = RekeyOptions::new(&NoProgress);
    rekey(input, output, old, &EncryptTo::key(new.clone()), &opts).map(|_| ())
}

fn dec(input: &Path, output: &Path, k: &KeySource) -> onnx_protect_core::error::Result<()> {
    decrypt(input, output, k, &DecryptOptions::default()).map(|_| ())
}

/// Every file of `dir` whose name starts with the temp-file prefix (none if `dir` does not exist).
pub(crate) fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".onnx-protect-"))
        .map(|e| e.path())
        .collect()
}

fn ctr_all() -> Policy {
    let mut p = crate::util::half_policy();
    p.apply_override("mode", "*=ctr").unwrap();
    p.apply_override("coefficient", "*=1").unwrap();
    p
}

#[test]
fn rekey_keeps_positions_draws_a_fresh_data_key_and_restores_under_the_new_key() {
    for model in fixture_models() {
        for (name, policy) in [("default", crate::util::half_policy()), ("ctr-all", ctr_all())] {
            let dir = tempfile::tempdir().unwrap();
            let a = dir.path().join("a").join("model.onnx");
            let b = dir.path().join("b").join("model.onnx");
            enc(&model, &a, &key(1), &policy);
            rk(&a, &b, &key(1), &key(2)).unwrap_or_else(|e| panic!("{} {name}: {e}", model.display()));
            let (ma, mb) = (Model::open(&a).unwrap(), Model::open(&b).unwrap());
            let (pa, pb) = (manifest_of(&a), manifest_of(&b));
            let (ha, hb) = (&pa.sealed.header, &pb.sealed.header);
            // Key-independent positions: every tensor entry is identical (locators, spans, modes, stream ids).
            assert_eq!(ha.tensors, hb.tensors, "{} {name}", model.display());
            assert_eq!((ha.tiers, ha.chunk_size, &ha.external_files), (hb.tiers, hb.chunk_size, &hb.external_files));
            assert_eq!(ha.policy_summary, hb.policy_summary);
            assert_eq!(
                pa.targets.iter().map(|t| (t.tensor, t.stream_id, t.mode, t.spans.clone())).collect::<Vec<_>>(),
                pb.targets.iter().map(|t| (t.tensor, t.stream_id, t.mode, t.spans.clone())).collect::<Vec<_>>()
            );
            // A fresh data key: a new key check value, a new stanza, new MACs and digest.
            assert_ne!(ha.key_checks, hb.key_checks, "the data key must be fresh");
            assert_ne!(pa.sealed.stanzas[0].body, pb.sealed.stanzas[0].body);
            assert_ne!(pa.sealed.envelope.macs, pb.sealed.envelope.macs);
            assert_ne!(pa.sealed.envelope.content_digest, pb.sealed.envelope.content_digest);
            // The ciphertext changed wherever a span is long enough to tell.
            for (ta, tb) in pa.targets.iter().zip(&pb.targets) {
                let (ca, cb) = (ma.tensor_bytes(ta.tensor).unwrap(), mb.tensor_bytes(tb.tensor).unwrap());
                let &(x, y) = ta.spans.iter().max_by_key(|(x, y)| y - x).unwrap();
                if y - x >= 8 {
                    assert_ne!(&ca[x as usize..y as usize], &cb[x as usize..y as usize], "{}", ta.tensor);
                }
            }
            drop((ma, mb));
            // The old key no longer opens the rekeyed model; the new key restores the original bytes.
            let out = dir.path().join("old").join("model.onnx");
            assert_eq!(dec(&b, &out, &key(1)).unwrap_err().kind(), ErrorKind::WrongKey);
            assert!(!out.exists());
            let back = dir.path().join("dec").join("model.onnx");
            dec(&b, &back, &key(2)).unwrap();
            assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&model).unwrap(), "{} {name}", model.display());
            for f in Model::open(&model).unwrap().external_files.iter() {
                let restored = dir.path().join("dec").join(&f.location);
                assert_eq!(std::fs::read(&restored).unwrap(), std::fs::read(&f.path).unwrap(), "{}", f.location);
            }
        }
    }
}

/// Sign, rewrap and rekey rewrite the protection: on a model not protected they say so
/// (not a format name), on a format-1 model that the format is read-only.
#[test]
fn operations_that_rewrite_the_protection_name_what_they_met() {
    use onnx_protect_core::protect::sign;
    use onnx_protect_core::rewrap::{rewrap, Remove, RewrapOptions};
    let dir = tempfile::tempdir().unwrap();
    let plain = root().join("fixtures/digits/mlp.onnx");
    let v1 = root().join("fixtures/vectors/cnn_torch_fp");
    let k1 = KeySource::key(MasterKey::parse_key_file(&std::fs::read(v1.join("key.hex")).unwrap()).unwrap());
    let signer = [onnx_protect_keys::SigningKey::generate().unwrap()];
    let out = dir.path().join("out.onnx");
    let remove = [Remove::Kind("passphrase".into())];
    let to = EncryptTo::default();
    let rw = RewrapOptions {
        add: &to,
        remove: &remove,
        signing_keys: &[],
        drop_signatures: false,
        in_place: false,
        outputs: Default::default(),
        progress: &NoProgress,
    };
    for (input, k, version) in [(plain, key(1), None), (v1.join("protected.onnx"), k1, Some(1))] {
        let errors = [
            ("signed", sign(&input, &out, &signer, false, &Default::default(), &NoProgress).map(|_| ())),
            ("re-wrapped", rewrap(&input, &out, &k, &rw).map(|_| ())),
            ("re-keyed", rk(&input, &out, &k, &key(2))),
        ];
        for (what, r) in errors {
            let e = r.expect_err(what);
            match version {
                None => assert!(matches!(e, CoreError::NotProtected), "{what}: {e}"),
                Some(v) => assert!(
                    matches!(e, CoreError::ReadOnlyFormat { version, operation } if version == v && operation == what),
                    "{what}: {e}"
                ),
            }
        }
        assert!(!out.exists());
    }
}

/// Format 1 is read-only: `rekey` refuses a format-1 file (decrypt it and encrypt it
/// again) without writing anything, through the library and the CLI; the file still
/// decrypts exactly, and a flipped ciphertext bit in it is still refused.
#[test]
fn rekey_refuses_a_format_1_file_which_still_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let vector = root().join("fixtures/vectors/cnn_torch_fp");
    let old = KeySource::key(MasterKey::parse_key_file(&std::fs::read(vector.join("key.hex")).unwrap()).unwrap());
    let enc = vector.join("protected.onnx");
    let re = dir.path().join("re/model.onnx");
    let e = rk(&enc, &re, &old, &key(9)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsupportedVersion, "{e}");
    assert!(matches!(e, CoreError::ReadOnlyFormat { version: 1, operation: "re-keyed" }), "{e}");
    assert!(!re.exists() && temp_files(&dir.path().join("re")).is_empty());
    let new = dir.path().join("new.key");
    std::fs::write(&new, format!("{}\n", "09".repeat(32))).unwrap();
    let key_hex = vector.join("key.hex");
    let (e, o, k, n) = (path_str(&enc), path_str(&re), path_str(&key_hex), path_str(&new));
    assert_refused(&["rekey", e, "-o", o, "--key-file", k, "--new-key-file", n], 6, "read-only", &re);

    let out = dir.path().join("d/model.onnx");
    dec(&enc, &out, &old).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(vector.join("original.onnx")).unwrap());
    let m = Model::open(&enc).unwrap();
    let p = protection_view(&m).unwrap();
    assert_eq!(p.format_version, 1);
    let t = &m.tensors[p.targets[0].tensor];
    let at = t.file_pieces(p.targets[0].spans[0].0, p.targets[0].spans[0].1)[0].0.start as usize;
    drop((p, m));
    let mut tampered = std::fs::read(&enc).unwrap();
    tampered[at] ^= 0x02;
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, &tampered).unwrap();
    let out2 = dir.path().join("d2/model.onnx");
    assert_eq!(dec(&bad, &out2, &old).unwrap_err().kind(), ErrorKind::Modified);
    assert!(!out2.exists() && temp_files(&dir.path().join("d2")).is_empty());
}

#[test]
fn rekey_switches_between_passphrases_and_keys() {
    let model = root().join("fixtures/models/fp16/model.onnx");
    let dir = tempfile::tempdir().unwrap();
    let pass = KeySource::passphrase(Zeroizing::new(b"old passphrase".to_vec()));
    let (a, b, c) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"), dir.path().join("c.onnx"));
    enc(&model, &a, &pass, &crate::util::half_policy());
    rk(&a, &b, &pass, &key(5)).unwrap();
    let kinds = |p: &Path| manifest_of(p).sealed.stanzas.iter().map(|s| (s.kind.clone(), s.kdf.is_some())).collect();
    let k: Vec<(String, bool)> = kinds(&b);
    assert_eq!(k, [("key".to_string(), false)], "a key needs no KDF parameters");
    let new_pass = KeySource::passphrase(Zeroizing::new(b"new passphrase".to_vec()));
    rk(&b, &c, &key(5), &new_pass).unwrap();
    let mc = Model::open(&c).unwrap();
    let k: Vec<(String, bool)> = kinds(&c);
    assert_eq!(k, [("passphrase".to_string(), true)], "a passphrase stanza with its Argon2id parameters");
    assert_eq!(onnx_protect_core::protect::decrypt_to_vec(&mc, &new_pass).unwrap(), std::fs::read(&model).unwrap());
    assert_eq!(onnx_protect_core::protect::decrypt_to_vec(&mc, &pass).unwrap_err().kind(), ErrorKind::WrongKey);
}

/// A protected copy of cnn_torch and two key files, made with the CLI.
fn cli_setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let model = root().join("fixtures/models/cnn_torch/model.onnx");
    let (old, new) = (dir.join("old.key"), dir.join("new.key"));
    for k in [&old, &new] {
        let (code, _, err) = run(&["keygen", "-o", k.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
    }
    let enc = dir.join("enc.onnx");
    run_keyed("encrypt", &model, &enc, &old, &["--coefficient", "*=0.5"]);
    (enc, old, new)
}

#[test]
fn rekey_cli_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, old, new) = cli_setup(dir.path());
    let out = dir.path().join("re.onnx");
    let (e, o, k, n) = (enc.to_str().unwrap(), out.to_str().unwrap(), old.to_str().unwrap(), new.to_str().unwrap());
    let (code, stdout, err) = run(&["rekey", e, "-o", o, "--key-file", k, "--new-key-file", n, "--json"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["tensors"], 10);
    let back = dir.path().join("back.onnx");
    let (code, _, err) = run(&["decrypt", o, "-o", back.to_str().unwrap(), "--key-file", n]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(root().join("fixtures/models/cnn_torch/model.onnx")).unwrap()
    );
    // The new key comes from an environment variable just as well.
    let hex = std::fs::read_to_string(&new).unwrap();
    let out2 = dir.path().join("re2.onnx");
    let st = std::process::Command::new(crate::util::bin())
        .args(["rekey", o, "-o", out2.to_str().unwrap(), "--key-file", n, "--new-key-env", "OP_TEST_NEW_KEY"])
        .env("OP_TEST_NEW_KEY", hex.trim())
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    // No new key, or two new keys: usage errors.
    let (code, _, err) = run(&["rekey", o, "-o", out2.to_str().unwrap(), "--key-file", n]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: a new key is required"), "{err}");
    let (code, _, err) =
        run(&["rekey", o, "-o", out2.to_str().unwrap(), "--key-file", n, "--new-key-file", n, "--new-key-env", "V"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
}

pub(crate) fn assert_refused(args: &[&str], code: i32, needle: &str, no_output: &Path) {
    let (got, out, err) = run(args);
    assert_eq!(got, code, "{args:?}: stdout {out} stderr {err}");
    assert!(out.is_empty(), "{args:?}: printed {out}");
    let first = err.lines().next().unwrap_or("");
    assert!(first.starts_with("error: ") && first.contains(needle), "{args:?}: {err}");
    assert!(!no_output.exists(), "{args:?} left {}", no_output.display());
    assert!(temp_files(no_output.parent().unwrap()).is_empty(), "temp files left behind");
}

#[test]
fn rekey_refuses_a_wrong_old_key_and_a_tampered_model_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, old, new) = cli_setup(dir.path());
    let out = dir.path().join("out").join("re.onnx");
    let (e, o, k, n) = (enc.to_str().unwrap(), out.to_str().unwrap(), old.to_str().unwrap(), new.to_str().unwrap());
    // Wrong old key (the new key given as the old one).
    assert_refused(&["rekey", e, "-o", o, "--key-file", n, "--new-key-file", k], 4, "wrong key", &out);
    // One flipped ciphertext bit inside an encrypted span.
    let m = Model::open(&enc).unwrap();
    let p = protection_view(&m).unwrap();
    let t = &m.tensors[p.targets[2].tensor];
    let onnx_protect_format::TensorData::Raw { range } = &t.data else { panic!("raw") };
    let at = (range.start + p.targets[2].spans[0].0 + 1) as usize;
    drop(m);
    let original = std::fs::read(&enc).unwrap();
    let mut bytes = original.clone();
    bytes[at] ^= 0x40;
    std::fs::write(&enc, &bytes).unwrap();
    assert_refused(&["rekey", e, "-o", o, "--key-file", k, "--new-key-file", n], 5, "modified", &out);
    // In place: the tampered input stays exactly as it was.
    let (code, _, err) = run(&["rekey", e, "--in-place", "--key-file", k, "--new-key-file", n]);
    assert_eq!(code, 5, "{err}");
    assert_eq!(std::fs::read(&enc).unwrap(), bytes);
    assert!(temp_files(dir.path()).is_empty());
    // Not protected at all.
    let plain = root().join("fixtures/models/cnn_torch/model.onnx");
    let p = path_str(&plain);
    assert_refused(&["rekey", p, "-o", o, "--key-file", k, "--new-key-file", n], 6, "not protected", &out);
}

#[test]
fn rekey_in_place_rewrites_external_data_too() {
    let (dir, model) = copy_fixture(&root().join("fixtures/models/external_data/model.onnx"));
    let names = ["model.onnx", "weights.bin", "extra.bin"];
    let read_all = || names.iter().map(|f| std::fs::read(dir.path().join(f)).unwrap()).collect::<Vec<_>>();
    let original = read_all();
    let (old_dir, new_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (old, new) = (crate::util::keygen_in(old_dir.path()), crate::util::keygen_in(new_dir.path()));
    let (m, k, n) = (model.to_str().unwrap(), old.to_str().unwrap(), new.to_str().unwrap());
    let (code, _, err) = run(&["encrypt", m, "--in-place", "--key-file", k, "--coefficient", "*=0.5"]);
    assert_eq!(code, 0, "{err}");
    let encrypted = read_all();
    assert_ne!(encrypted[1], original[1], "weights.bin holds encrypted spans");
    let (code, _, err) = run(&["rekey", m, "--in-place", "--key-file", k, "--new-key-file", n]);
    assert_eq!(code, 0, "{err}");
    let rekeyed = read_all();
    assert_ne!(rekeyed[1], encrypted[1], "the external ciphertext was re-encrypted");
    assert_eq!(rekeyed[1].len(), encrypted[1].len());
    let (code, _, err) = run(&["decrypt", m, "--in-place", "--key-file", k]);
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = run(&["decrypt", m, "--in-place", "--key-file", n]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(read_all(), original);
    assert!(temp_files(dir.path()).is_empty());
}

// ---------------------------------------------------------------- an interrupted rewrap

#[test]
fn a_model_left_half_rewrapped_opens_and_the_next_rewrap_says_it_finished_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let s = crate::util::path_str;
    let (k1, k2, k3) = (crate::util::keygen_in(d), d.join("k2.key"), d.join("k3.key"));
    for k in [&k2, &k3] {
        assert_eq!(run(&["keygen", "-o", s(k), "-q"]).0, 0);
    }
    let plain = root().join("fixtures/models/cnn_torch/model.onnx");
    let m = d.join("m.onnx");
    assert_eq!(run(&["encrypt", s(&plain), "-o", s(&m), "--key-file", s(&k1), "-q"]).0, 0);
    // What `rewrap --in-place` swapping k1 for k2 writes, and the file as a kill in the middle
    // of its tail's rewrite leaves it, with its complete journal (the form of
    // crates/core/src/pass/journal.rs): neither the old model nor the new one.
    let swapped = d.join("swapped.onnx");
    let swap = ["--key-file", s(&k1), "--remove-key-file", s(&k1), "--add-key-file", s(&k2)];
    let (code, _, err) = run(&[&["rewrap", s(&m), "-o", s(&swapped)][..], &swap, &["-q"]].concat());
    assert_eq!(code, 0, "{err}");
    let (old, new) = (std::fs::read(&m).expect("read"), std::fs::read(&swapped).expect("read"));
    let start = old.iter().zip(&new).position(|(a, b)| a != b).expect("the tails differ");
    let (old_tail, new_tail) = (&old[start..], &new[start..]);
    let mut journal = format!("onnx-protect-tail-v2 {start} {} {}\n", old_tail.len(), new_tail.len()).into_bytes();
    journal.extend_from_slice(old_tail);
    journal.extend_from_slice(new_tail);
    let mut sum = onnx_protect_crypto::Checksum::new();
    sum.update(&journal);
    journal.extend_from_slice(&sum.finalize());
    let mut half_done = old.clone();
    let half = new_tail.len() / 2;
    half_done.truncate(start + half.max(old_tail.len()));
    half_done[start..start + half].copy_from_slice(&new_tail[..half]);
    let jpath = d.join(".m.onnx.onnx-protect-tail");
    let interrupt = || {
        std::fs::write(&m, &half_done).expect("write");
        std::fs::write(&jpath, &journal).expect("write");
    };
    let alone = d.join("alone.onnx");
    std::fs::write(&alone, &half_done).expect("write");
    assert_eq!(run(&["verify", s(&alone), "-q"]).0, 5, "the half-rewritten file without its journal is modified");
    interrupt();
    // A reader finishes the rewrite first: the model opens with the key it gave.
    let out = d.join("out.onnx");
    let (code, _, err) = run(&["decrypt", s(&m), "-o", s(&out), "--key-file", s(&k2), "-q"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&out).expect("read"), std::fs::read(&plain).expect("read"));
    assert_eq!(std::fs::read(&m).expect("read"), new);
    assert!(!jpath.exists());
    // The same rewrap run again: its key was the one removed, so it fails (4), and says that
    // the earlier rewrap was finished, which is why.
    interrupt();
    let (code, _, err) = run(&[&["rewrap", s(&m), "--in-place"][..], &swap, &["-q"]].concat());
    assert_eq!(code, 4, "{err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(first.contains("an earlier in-place rewrap of it, interrupted, was finished first"), "{err}");
    assert!(first.contains("wrong key"), "{err}");
    assert_eq!(std::fs::read(&m).expect("read"), new);
    // A rewrap that succeeds says so too (text and JSON).
    interrupt();
    let next = ["rewrap", s(&m), "--in-place", "--key-file", s(&k2), "--add-key-file", s(&k3)];
    let (code, text, err) = run(&next);
    assert_eq!(code, 0, "{err}");
    assert!(text.starts_with("finished an earlier in-place rewrap that was interrupted; "), "{text}");
    interrupt();
    let (code, json, err) = run(&[&next[..], &["--json"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(json.contains("\"recovered\": \"rolled_forward\""), "{json}");
}

// ---------------------------------------------------------------- rekey keeps the recipients

#[test]
fn rekey_keeps_every_recipient_and_refuses_to_drop_one_or_a_signature_unasked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let s = crate::util::path_str;
    let publisher = crate::util::keygen_in(d);
    let (new_key, customer_key) = (d.join("new.key"), d.join("customer.key"));
    for k in [&new_key, &customer_key] {
        assert_eq!(run(&["keygen", "-o", s(k), "-q"]).0, 0);
    }
    let age_id = d.join("age.identity");
    let (code, out, err) = run(&["keygen", "--recipient", "-o", s(&age_id), "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let age = doc["recipient"].as_str().expect("a recipient").to_string();
    let sk = d.join("pub.sk");
    assert_eq!(run(&["keygen", "--signing", "-o", s(&sk), "-q"]).0, 0);
    let signer = std::fs::read_to_string(&sk)
        .expect("read")
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .expect("a public key line");
    // A TPM recipient wraps without a TPM (the P-256 generator point, as in device_keys.rs).
    let tpm = "onnx-protect-tpm1qd43050juykyy3lchnnw2caygre8wqmasyk7kvaq7jsnj3wcnrpfvm7cs3u";
    let plain = root().join("fixtures/models/cnn_torch/model.onnx");
    let m = d.join("m.onnx");
    let enc = ["encrypt", s(&plain), "-o", s(&m), "--key-file", s(&publisher), "-r", &age, "-r", tpm];
    let (code, _, err) = run(&[&enc[..], &["--sign-key", s(&sk), "-q"]].concat());
    assert_eq!(code, 0, "{err}");
    let out = d.join("r.onnx");
    let rekey = ["rekey", s(&m), "-o", s(&out), "--key-file", s(&publisher), "--new-key-file", s(&new_key)];

    // The signature covers the old content: re-sign or drop it, else exit 5 and nothing written.
    let (code, _, err) = run(&rekey);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("--sign-key") && err.contains("--drop-signatures"), "{err}");
    assert!(!out.exists());
    let (code, text, err) = run(&[&rekey[..], &["--sign-key", s(&sk)]].concat());
    assert_eq!(code, 0, "{err}");
    let fp = |k: &Path| {
        let key = onnx_protect_crypto::KeyFile::parse(&std::fs::read(k).expect("read")).expect("key").into_key();
        key.fingerprint().iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert!(
        text.contains(&format!("not carried over: key {} (tier 1) (replaced by the new key)", fp(&publisher))),
        "{text}"
    );
    // The customer's identity still opens it, as the new key does; the old key does not; the
    // TPM recipient is still there; the publisher's signature verifies.
    let plain_out = d.join("plain.onnx");
    for (opt, k) in [("--identity", &age_id), ("--key-file", &new_key)] {
        let (code, _, err) = run(&["decrypt", s(&out), "-o", s(&plain_out), opt, s(k), "--force", "-q"]);
        assert_eq!(code, 0, "{opt}: {err}");
        assert_eq!(std::fs::read(&plain_out).expect("read"), std::fs::read(&plain).expect("read"));
    }
    assert_eq!(run(&["decrypt", s(&out), "-o", s(&plain_out), "--key-file", s(&publisher), "--force", "-q"]).0, 4);
    let (_, listing, _) = run(&["inspect", s(&out)]);
    assert!(
        listing.contains(&format!("x25519 {age} (tier 1)")) && listing.contains(&format!("tpm {tpm} (tier 1)")),
        "{listing}"
    );
    assert_eq!(run(&["verify", s(&out), "--signer", &signer, "-q"]).0, 0);
    // Dropping the signature is said, and the model is then unsigned.
    let (code, text, err) = run(&[&rekey[..], &["--drop-signatures", "--force"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("1 signature(s) dropped"), "{text}");
    assert_eq!(run(&["verify", s(&out), "--signer", &signer, "-q"]).0, 5);

    // Another key file's stanza records only its fingerprint: refused (4) unless kept with its
    // key or removed, each said.
    let add = ["rewrap", s(&m), "--in-place", "--key-file", s(&publisher), "--add-key-file", s(&customer_key)];
    let (code, _, err) = run(&[&add[..], &["--drop-signatures", "-q"]].concat());
    assert_eq!(code, 0, "{err}");
    std::fs::remove_file(&out).expect("remove");
    let (code, _, err) = run(&rekey);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains(&format!("cannot be wrapped for key {} (tier 1)", fp(&customer_key))), "{err}");
    assert!(!out.exists());
    let (code, _, err) = run(&[&rekey[..], &["--keep-key-file", s(&customer_key), "-q"]].concat());
    assert_eq!(code, 0, "{err}");
    assert_eq!(run(&["decrypt", s(&out), "-o", s(&plain_out), "--key-file", s(&customer_key), "--force", "-q"]).0, 0);
    let (code, text, err) = run(&[&rekey[..], &["--remove-key-file", s(&customer_key), "--force"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(text.contains(&format!("key {} (tier 1) (removed)", fp(&customer_key))), "{text}");
    assert_eq!(run(&["decrypt", s(&out), "-o", s(&plain_out), "--key-file", s(&customer_key), "--force", "-q"]).0, 4);
    assert_eq!(run(&["decrypt", s(&out), "-o", s(&plain_out), "--identity", s(&age_id), "--force", "-q"]).0, 0);
    // Without a new key, the old key keeps its access beside the recipients added.
    let (code, out2, err) = run(&["keygen", "--recipient", "-o", s(&d.join("age2.identity")), "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out2).expect("JSON");
    let age2 = doc["recipient"].as_str().expect("a recipient").to_string();
    let keep = ["rekey", s(&m), "-o", s(&out), "--key-file", s(&publisher), "--remove-key-file", s(&customer_key)];
    let (code, _, err) = run(&[&keep[..], &["-r", &age2, "--force", "-q"]].concat());
    assert_eq!(code, 0, "{err}");
    assert_eq!(run(&["decrypt", s(&out), "-o", s(&plain_out), "--key-file", s(&publisher), "--force", "-q"]).0, 0);
}
