//! Format 2 authenticates every byte (docs/format.md §9, §10): each byte of a protected
//! model, and of its external data files, changed in turn is refused by every verb that
//! reads it — decrypt, verify without and with a key, rekey and in-memory decryption,
//! through the library and through the binary — as "modified" (exit 5), and nothing is
//! written. The same holds for tiered models with the top key and with a tier-1 key, and
//! for a partially decrypted file. Every truncation is refused. Parsing and inspecting a
//! changed unprotected model never panics.
//!
//! The small fixtures are swept at every byte; the digit models (60 to 180 KiB) at one
//! byte in every 4 KiB page and at every byte of their manifest entry. The binary, a
//! process per verb and byte, is swept at a subsample.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use onnx_protect_core::error::{CoreError, ErrorKind};
use onnx_protect_core::format2::envelope::trailing_entry;
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::inspect::inspect;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::memory::InMemory;
use onnx_protect_core::protect::{decrypt, decrypt_tier, protection_info, verify, DecryptOptions, EncryptOptions};
use onnx_protect_core::rekey::{rekey, RekeyOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{Model, NoProgress};
use onnx_protect_select::Policy;

use crate::util::{fixture_models, root, run};

fn key() -> KeySource {
    KeySource::key(MasterKey::from_bytes([0x5a; 32]))
}

fn new_key() -> EncryptTo {
    EncryptTo::key(KeySource::key(MasterKey::from_bytes([0x77; 32])))
}

fn ropts() -> RekeyOptions<'static> {
    RekeyOptions::new(&NoProgress)
}

/// A scratch folder, in memory where the system has a tmpfs (thousands of staged files).
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap()
}

/// Encrypts fixture `model` (with its side files) into `dir/enc/model.onnx` under `k`.
fn protect(model: &Path, dir: &Path, k: &KeySource, policy: &Policy) -> PathBuf {
    let out = dir.join("enc").join("model.onnx");
    encrypt_to(model, &out, k, policy);
    out
}

fn encrypt_to(model: &Path, out: &Path, k: &KeySource, policy: &Policy) {
    onnx_protect_core::protect::encrypt(model, out, &EncryptTo::key(k.clone()), &EncryptOptions::new(policy))
        .unwrap_or_else(|e| panic!("{}: {e}", model.display()));
}

/// Every policy choice the sweep needs encrypts as much of each file as it can.
fn all_of_it() -> Policy {
    let mut p = crate::util::half_policy();
    p.apply_override("coefficient", "*=1").unwrap();
    p
}

/// Three tiers, l1 selection, in `mode` (dp only where format 2 allows it) for `model`.
fn tiered(mode: &str, model: &Path) -> Policy {
    let mut p = crate::util::half_policy();
    p.apply_override("mode", mode).unwrap();
    p.apply_override("selection", "*=l1").unwrap();
    p.set_tiers(3).unwrap();
    if mode == "*=dp" {
        let (p, dp) = crate::util::dp_where_possible(model, p);
        assert!(dp > 0, "{}: no tensor in the dp mode", model.display());
        return p;
    }
    p
}

/// The files of folder `dir`, by name (empty if it does not exist).
fn folder(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

/// The bytes of a protected model file that frame its manifest entry (the field's tag
/// and length, the key `onnx-protect/v2`, the value's tag and length): changed, the file
/// no longer ends in an entry, so it reads as unprotected, of an unknown version or as
/// an invalid model rather than as a modified one.
fn framing(model_file: &[u8]) -> Range<usize> {
    let (entry, value) = trailing_entry(model_file).expect("a format-2 entry ends the file");
    entry.start as usize..model_file.len() - value.len()
}

/// Whether `e` is the refusal a changed byte must get: "modified" (a changed manifest is
/// "modified" too), or, for a byte of the entry's framing, any refusal of the file as
/// not (or no longer) protected — never "wrong key", never a success.
fn is_refusal(e: &CoreError, in_framing: bool) -> bool {
    match e.kind() {
        ErrorKind::Modified | ErrorKind::BadManifest => true,
        ErrorKind::NotProtected | ErrorKind::UnsupportedVersion | ErrorKind::Model(_) => in_framing,
        _ => false,
    }
}

/// Runs every library verb on the protected model at `enc` (its side files beside it)
/// with key `k`, writing into `out_dir`; each must refuse as [`is_refusal`] says and
/// leave `out_dir` empty. `keyed` adds the verbs that need the key's stanza (every verb
/// but keyless verify); `top` adds rekey, which needs the top tier's key.
fn assert_every_verb_refuses(ctx: &str, enc: &Path, k: &KeySource, out_dir: &Path, in_framing: bool, top: bool) {
    let out = out_dir.join("model.onnx");
    let dopts = DecryptOptions::default();
    let mut results: Vec<(&str, Result<(), CoreError>)> = vec![
        ("verify", verify(enc, None, &NoProgress).map(|_| ())),
        ("verify --key", verify(enc, Some(k), &NoProgress).map(|_| ())),
        ("decrypt", decrypt(enc, &out, k, &dopts).map(|_| ())),
        ("InMemory::file", InMemory::file(enc, k).load().map(|_| ())),
    ];
    if top {
        results.push(("rekey", rekey(enc, &out, k, &new_key(), &ropts()).map(|_| ())));
    }
    // In memory from a model parsed out of a buffer (a copy, not a map); a buffer that no
    // longer parses never reaches the decryption.
    if let Ok(m) = Model::from_vec(std::fs::read(enc).unwrap(), enc.parent().map(Path::to_path_buf)) {
        results.push(("InMemory::model", InMemory::model(&m, k).load().map(|_| ())));
    }
    for (verb, r) in results {
        match r {
            Ok(()) => panic!("{ctx}: {verb} accepted the changed file"),
            Err(e) => assert!(is_refusal(&e, in_framing), "{ctx}: {verb}: {e}"),
        }
        assert!(folder(out_dir).is_empty(), "{ctx}: {verb} left {:?}", folder(out_dir).keys());
    }
}

/// The baseline of a sweep: every verb [`assert_every_verb_refuses`] runs accepts the
/// unchanged folder (so a refusal in the sweep is the changed byte's doing).
fn assert_every_verb_accepts(ctx: &str, enc: &Path, k: &KeySource, out_dir: &Path, top: bool) {
    let out = out_dir.join("model.onnx");
    verify(enc, None, &NoProgress).unwrap_or_else(|e| panic!("{ctx}: verify: {e}"));
    verify(enc, Some(k), &NoProgress).unwrap_or_else(|e| panic!("{ctx}: verify --key: {e}"));
    decrypt(enc, &out, k, &DecryptOptions::default()).unwrap_or_else(|e| panic!("{ctx}: decrypt: {e}"));
    std::fs::remove_dir_all(out_dir).unwrap();
    InMemory::file(enc, k).load().unwrap_or_else(|e| panic!("{ctx}: InMemory::load: {e}"));
    if top {
        rekey(enc, &out, k, &new_key(), &ropts()).unwrap_or_else(|e| panic!("{ctx}: rekey: {e}"));
        std::fs::remove_dir_all(out_dir).unwrap();
    }
}

/// The positions a sweep changes in a file of `len` bytes: all of them, or one in every
/// 4 KiB page (at an offset that moves from page to page) and every byte of `also`.
fn positions(len: usize, every: bool, also: Range<usize>) -> Vec<usize> {
    if every {
        return (0..len).collect();
    }
    let mut v: Vec<usize> = (0..len.div_ceil(4096)).map(|p| (p * 4096 + (p * 1531) % 4096).min(len - 1)).collect();
    v.extend(also);
    v.sort_unstable();
    v.dedup();
    v
}

/// Changes each position of each file of the protected folder `enc_dir` in turn (one bit,
/// which moves with the offset) and asserts that every verb refuses it with `k`.
fn sweep_folder(name: &str, enc_dir: &Path, k: &KeySource, out_dir: &Path, every: bool, top: bool) -> usize {
    let enc_path = enc_dir.join("model.onnx");
    assert_every_verb_accepts(name, &enc_path, k, out_dir, top);
    let files = folder(enc_dir);
    let model_framing = framing(&files["model.onnx"]);
    let mut swept = 0;
    for (file, bytes) in &files {
        let also = if file == "model.onnx" { model_framing.start..bytes.len() } else { 0..0 };
        for i in positions(bytes.len(), every, also) {
            let mut changed = bytes.clone();
            changed[i] ^= 1 << (i % 8);
            std::fs::write(enc_dir.join(file), &changed).unwrap();
            let in_framing = file == "model.onnx" && model_framing.contains(&i);
            assert_every_verb_refuses(&format!("{name}: byte {i} of {file}"), &enc_path, k, out_dir, in_framing, top);
            swept += 1;
        }
        std::fs::write(enc_dir.join(file), bytes).unwrap();
    }
    swept
}

#[test]
fn every_changed_byte_of_a_small_protected_model_is_refused_by_every_verb() {
    let mut swept = 0usize;
    for path in fixture_models() {
        let name = path.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
        let dir = scratch();
        let enc = protect(&path, dir.path(), &key(), &all_of_it());
        swept += sweep_folder(&name, enc.parent().unwrap(), &key(), &dir.path().join("out"), true, true);
    }
    assert!(swept > 40_000, "only {swept} bytes swept");
}

#[test]
fn every_truncation_of_a_protected_model_is_refused() {
    for path in fixture_models() {
        let ctx = path.display().to_string();
        let dir = scratch();
        let enc = protect(&path, dir.path(), &key(), &all_of_it());
        let bytes = std::fs::read(&enc).unwrap();
        let probe = dir.path().join("enc").join("probe.onnx");
        for n in (0..bytes.len()).rev() {
            // In memory, from a parsed model (when the prefix still parses at all)...
            if let Ok(model) = Model::from_vec(bytes[..n].to_vec(), Some(dir.path().join("enc"))) {
                let _ = (inspect(&model), protection_info(&model));
                let e = InMemory::model(&model, &key()).load().err();
                assert!(e.is_some_and(|e| e.kind() != ErrorKind::WrongKey), "{ctx}: truncated to {n} bytes");
            }
            // ...and from the file (every 7th length: a truncation of the entry, and of
            // the content before it).
            if n % 7 == 0 {
                std::fs::write(&probe, &bytes[..n]).unwrap();
                let e = InMemory::file(&probe, &key()).load().err();
                assert!(e.is_some_and(|e| e.kind() != ErrorKind::WrongKey), "{ctx}: file truncated to {n} bytes");
                assert!(verify(&probe, None, &NoProgress).is_err(), "{ctx}: verify, truncated to {n} bytes");
            }
        }
    }
}

#[test]
fn one_byte_in_every_page_of_the_digit_models_is_refused_by_every_verb() {
    let mut swept = 0usize;
    for m in ["cnn", "mlp", "convmixer", "vit"] {
        let path = root().join(format!("fixtures/digits/{m}.onnx"));
        let dir = scratch();
        let enc = dir.path().join("enc").join("model.onnx");
        encrypt_to(&path, &enc, &key(), &crate::util::half_policy());
        swept += sweep_folder(m, enc.parent().unwrap(), &key(), &dir.path().join("out"), false, true);
    }
    assert!(swept > 100, "only {swept} bytes swept");
}

#[test]
fn every_changed_byte_of_a_tiered_model_is_refused_with_the_top_and_a_tier_1_key() {
    // Three tiers (l1 selection): the top key checks every tier's MAC, the tier-1 key
    // the MAC of tier 1, which covers every byte too (docs/format.md §10).
    let top = MasterKey::from_bytes([0x3c; 32]);
    let low = KeySource::key(top.tier_down().tier_down());
    let top = KeySource::key(top);
    for (name, mode) in [("cnn_torch", "*=dp"), ("roles_mix", "*=fp"), ("typed_fields", "*=dp")] {
        let path = root().join("fixtures/models").join(name).join("model.onnx");
        let dir = scratch();
        let enc = protect(&path, dir.path(), &top, &tiered(mode, &path));
        let out_dir = dir.path().join("out");
        let enc_dir = enc.parent().unwrap();
        sweep_folder(&format!("{name} {mode}, top key"), enc_dir, &top, &out_dir, true, true);
        sweep_folder(&format!("{name} {mode}, tier-1 key"), enc_dir, &low, &out_dir, true, false);
        // The tier-1 key's own decryption in memory, of the same changed bytes.
        let bytes = std::fs::read(&enc).unwrap();
        let frame = framing(&bytes);
        for i in (0..bytes.len()).step_by(3) {
            let mut changed = bytes.clone();
            changed[i] ^= 1 << (i % 8);
            let Ok(model) = Model::from_vec(changed, None) else { continue };
            match InMemory::model(&model, &low).load() {
                Ok(_) => panic!("{name}: byte {i}: the tier-1 key decrypted a changed file in memory"),
                Err(e) => assert!(is_refusal(&e, frame.contains(&i)), "{name}: byte {i}: {e}"),
            }
        }
    }
}

#[test]
fn every_changed_byte_of_a_partially_decrypted_model_is_refused() {
    // Tier 1 decrypted in the file (`restored_tiers` = 1): the keyless check is the
    // stored digest, the top key's the digest of the content with tier 1 encrypted
    // again (docs/format.md §11), and both see every byte.
    let top = MasterKey::from_bytes([0x3c; 32]);
    let low = KeySource::key(top.tier_down().tier_down());
    let top = KeySource::key(top);
    for (name, mode) in [("cnn_torch", "*=fp"), ("external_data", "*=dp")] {
        let path = root().join("fixtures/models").join(name).join("model.onnx");
        let dir = scratch();
        let mut policy = tiered(mode, &path);
        policy.apply_override("coefficient", "*=0.6").unwrap();
        let enc = protect(&path, dir.path(), &top, &policy);
        let partial = dir.path().join("partial").join("model.onnx");
        decrypt_tier(&enc, &partial, &low, None, &DecryptOptions::default()).unwrap();
        let p = onnx_protect_core::protect::protection_view(&Model::open(&partial).unwrap()).unwrap();
        assert_eq!(p.restored_tiers, 1, "{name}");
        assert!(p.targets.iter().any(|t| t.tier == 1), "{name}: tier 1 holds nothing");
        let out_dir = dir.path().join("out");
        let swept =
            sweep_folder(&format!("{name} {mode}, partial"), partial.parent().unwrap(), &top, &out_dir, true, false);
        assert!(swept > 1000, "{name}: only {swept} bytes swept");
    }
}

/// Runs the binary with `args`; it must exit 5 with an error line naming "modified" and
/// write nothing into `out_dir`. `framing` bytes may instead be refused as a bad model
/// (3), a model in the wrong state (6), or, by `check`, a model that is not protected (8).
fn assert_cli_refuses(ctx: &str, args: &[&str], out_dir: &Path, in_framing: bool) {
    let (code, stdout, err) = run(args);
    let first = err.lines().next().unwrap_or("");
    if in_framing && [3, 6, 8].contains(&code) {
        assert!(first.starts_with("error: "), "{ctx}: {args:?}: {err}");
    } else {
        assert_eq!(code, 5, "{ctx}: {args:?}: {stdout} {err}");
        assert!(first.starts_with("error: ") && first.contains("modified"), "{ctx}: {args:?}: {err}");
    }
    // Only `check` prints its verdict (FAIL) on standard output.
    assert!(stdout.is_empty() || args[0] == "check", "{ctx}: {args:?} printed {stdout}");
    assert!(folder(out_dir).is_empty(), "{ctx}: {args:?} left {:?}", folder(out_dir).keys());
}

#[test]
fn the_binary_refuses_changed_bytes_with_exit_5_and_no_output() {
    // Every verb of the binary on a subsample of the bytes of cnn_torch and of the
    // external-data folder: decrypt to a file, to standard output (in memory), verify
    // without and with the key, rekey, and the CI gate.
    let dir = scratch();
    let keyfile = dir.path().join("k.key");
    std::fs::write(&keyfile, format!("{}\n", "5a".repeat(32))).unwrap();
    let newkey = dir.path().join("n.key");
    std::fs::write(&newkey, format!("{}\n", "77".repeat(32))).unwrap();
    let (k, n) = (keyfile.to_str().unwrap(), newkey.to_str().unwrap());
    let mut swept = 0;
    for (name, step) in [("cnn_torch", 37), ("external_data", 23)] {
        let src = root().join("fixtures/models").join(name).join("model.onnx");
        let case = dir.path().join(name);
        let enc = protect(&src, &case, &key(), &all_of_it());
        let enc_dir = enc.parent().unwrap();
        let e = enc.to_str().unwrap();
        let out_dir = case.join("out");
        let out = out_dir.join("model.onnx");
        let o = out.to_str().unwrap();
        let files = folder(enc_dir);
        let frame = framing(&files["model.onnx"]);
        let commands: [&[&str]; 6] = [
            &["decrypt", e, "-o", o, "--key-file", k],
            &["decrypt", e, "--stdout", "--key-file", k],
            &["verify", e],
            &["verify", e, "--key-file", k],
            &["rekey", e, "-o", o, "--key-file", k, "--new-key-file", n],
            &["check", e, "--require-encrypted"],
        ];
        // The baseline: the unchanged folder passes every command.
        for args in commands {
            let (code, _, err) = run(args);
            assert_eq!(code, 0, "{name}: {args:?}: {err}");
            let _ = std::fs::remove_dir_all(&out_dir);
        }
        for (file, bytes) in &files {
            let mut at: Vec<usize> = (0..bytes.len()).step_by(step).collect();
            if file == "model.onnx" {
                at.extend([frame.start, frame.end - 1, frame.end, bytes.len() - 1]);
            }
            for i in at {
                let ctx = format!("{name}: byte {i} of {file}");
                let mut changed = bytes.clone();
                changed[i] ^= 1 << (i % 8);
                std::fs::write(enc_dir.join(file), &changed).unwrap();
                let in_framing = file == "model.onnx" && frame.contains(&i);
                for args in commands {
                    assert_cli_refuses(&ctx, args, &out_dir, in_framing);
                }
                swept += 1;
            }
            std::fs::write(enc_dir.join(file), bytes).unwrap();
        }
    }
    assert!(swept > 250, "only {swept} bytes swept");
}

#[test]
fn every_changed_byte_of_an_unprotected_model_parses_or_is_refused_without_a_panic() {
    for path in fixture_models() {
        let original = std::fs::read(&path).unwrap();
        let dir = path.parent().unwrap().to_path_buf();
        for i in 0..original.len() {
            for bit in [0x01u8, 0x80] {
                let mut bytes = original.clone();
                bytes[i] ^= bit;
                if let Ok(model) = Model::from_vec(bytes, Some(dir.clone())) {
                    let _ = inspect(&model);
                    let _ = protection_info(&model);
                }
            }
        }
        for n in 0..original.len() {
            if let Ok(model) = Model::from_vec(original[..n].to_vec(), Some(dir.clone())) {
                let _ = inspect(&model);
            }
        }
    }
}
