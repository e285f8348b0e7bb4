//! encrypt → decrypt restores every model byte for byte; failures are refused
//! with their own error, a non-zero exit, and no output file.

use std::path::{Path, PathBuf};

use onnx_protect_core::error::ErrorKind;
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::protect::{decrypt_to_vec, encrypt, protection_view, verify, DecryptOptions, EncryptOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{Model, NoProgress};
use onnx_protect_select::Policy;

use crate::util::{copy_fixture, fixture_models, manifest_of, root, run};

fn key(b: u8) -> KeySource {
    KeySource::key(MasterKey::from_bytes([b; 32]))
}

fn enc(input: &Path, output: &Path, k: &KeySource, policy: &Policy) {
    encrypt(input, output, &EncryptTo::key(k.clone()), &EncryptOptions::new(policy))
        .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
}

/// Decrypts `input` into `output` (the same path with `in_place`).
fn dec(input: &Path, output: &Path, k: &KeySource, in_place: bool) {
    onnx_protect_core::protect::decrypt(input, output, k, &DecryptOptions { in_place, ..DecryptOptions::default() })
        .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
}

/// Encrypts `model` over itself.
fn enc_in_place(model: &Path, k: &KeySource, policy: &Policy) {
    encrypt(
        model,
        model,
        &EncryptTo::key(k.clone()),
        &EncryptOptions { in_place: true, ..EncryptOptions::new(policy) },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", model.display()));
}

fn policies() -> Vec<(&'static str, Policy)> {
    let mut ctr = crate::util::half_policy();
    ctr.apply_override("mode", "*=ctr").unwrap();
    ctr.apply_override("coefficient", "*=1").unwrap();
    let mut split = crate::util::half_policy();
    split.apply_override("subsequences", "*=5").unwrap();
    split.apply_override("coefficient", "*=0.5").unwrap();
    vec![("default", crate::util::half_policy()), ("ctr-all", ctr), ("fp-5-way", split)]
}

#[test]
fn every_fixture_round_trips_in_every_mode() {
    for model in fixture_models() {
        for (name, policy) in policies() {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("enc.onnx");
            enc(&model, &out, &key(7), &policy);
            let protected = std::fs::read(&out).unwrap();
            assert_ne!(protected, std::fs::read(&model).unwrap(), "{} {name}: nothing changed", model.display());
            verify(&out, None, &NoProgress).unwrap();
            verify(&out, Some(&key(7)), &NoProgress).unwrap();
            let back = dir.path().join("dec").join("model.onnx");
            dec(&out, &back, &key(7), false);
            assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&model).unwrap(), "{} {name}", model.display());
            for f in Model::open(&model).unwrap().external_files.iter() {
                let restored = dir.path().join("dec").join(&f.location);
                assert_eq!(std::fs::read(&restored).unwrap(), std::fs::read(&f.path).unwrap(), "{}", f.location);
            }
        }
    }
}

#[test]
fn encrypted_models_keep_every_non_encrypted_byte_and_existing_metadata() {
    let model = root().join("fixtures/models/metadata_unknown/model.onnx");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("enc.onnx");
    enc(&model, &out, &key(1), &crate::util::half_policy());
    let a = std::fs::read(&model).unwrap();
    let b = std::fs::read(&out).unwrap();
    // The original's length, then the manifest entry, last; differences only inside
    // encrypted spans.
    let (entry, _) = onnx_protect_core::format2::envelope::trailing_entry(&b).expect("the entry ends the file");
    assert_eq!(entry.start, a.len() as u64, "the entry is appended right after the original bytes");
    let m = Model::open(&out).unwrap();
    let p = protection_view(&m).unwrap();
    let mut allowed = vec![false; a.len()];
    for t in &p.targets {
        let tensor = &m.tensors[t.tensor];
        if let onnx_protect_format::TensorData::Raw { range } = &tensor.data {
            for &(x, y) in &t.spans {
                for i in range.start + x..range.start + y {
                    allowed[i as usize] = true;
                }
            }
        }
    }
    for i in 0..a.len() {
        if a[i] != b[i] {
            assert!(allowed[i], "byte {i} changed outside an encrypted span");
        }
    }
    let before = Model::open(&model).unwrap();
    let keys_before: Vec<_> = before.metadata.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
    let keys_after: Vec<_> =
        m.metadata.iter().filter(|e| e.key != "onnx-protect/v2").map(|e| (e.key.clone(), e.value.clone())).collect();
    assert_eq!(keys_before, keys_after);
}

#[test]
fn the_same_model_and_key_never_reuse_a_keystream() {
    let model = root().join("fixtures/models/cnn_torch/model.onnx");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
    enc(&model, &a, &key(3), &crate::util::half_policy());
    enc(&model, &b, &key(3), &crate::util::half_policy());
    let (ma, mb) = (Model::open(&a).unwrap(), Model::open(&b).unwrap());
    let (pa, pb) = (manifest_of(&a), manifest_of(&b));
    // A fresh data key per encryption: its key check value and the stanza's salt differ.
    assert_ne!(pa.sealed.header.key_checks, pb.sealed.header.key_checks, "the data key must be fresh");
    assert_ne!(pa.sealed.stanzas[0].salt, pb.sealed.stanzas[0].salt, "the stanza salt must be fresh");
    // Same positions, different ciphertext: XOR of the two ciphertexts is the XOR of
    // two keystreams, which must not be zero anywhere a span is long enough to tell.
    assert_eq!(pa.sealed.header.tensors.len(), pb.sealed.header.tensors.len());
    for (ta, tb) in pa.targets.iter().zip(&pb.targets) {
        assert_eq!(ta.spans, tb.spans);
        let ca = ma.tensor_bytes(ta.tensor).unwrap();
        let cb = mb.tensor_bytes(tb.tensor).unwrap();
        let &(x, y) = ta.spans.first().unwrap();
        assert_ne!(&ca[x as usize..y as usize], &cb[x as usize..y as usize]);
    }
    // Within one file, every tensor has its own stream id.
    let mut ids: Vec<u64> = pa.targets.iter().map(|t| t.stream_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), pa.targets.len());
}

#[test]
fn a_passphrase_round_trips_and_stores_its_kdf_parameters() {
    let model = root().join("fixtures/models/fp16/model.onnx");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("enc.onnx");
    let pass = KeySource::passphrase(zeroize::Zeroizing::new(b"correct horse battery staple".to_vec()));
    enc(&model, &out, &pass, &crate::util::half_policy());
    let m = Model::open(&out).unwrap();
    let p = manifest_of(&out);
    // One passphrase stanza (for the top and only tier) with its Argon2id parameters:
    // the cost onnx-protect writes (docs/format.md §8).
    let stanzas: Vec<_> = p.sealed.stanzas.iter().filter(|s| s.kind == onnx_protect_keys::KIND_PASSPHRASE).collect();
    assert_eq!(stanzas.len(), 1);
    let kdf = stanzas[0].kdf.as_ref().expect("kdf params stored");
    assert_eq!((kdf.m_cost_kib, kdf.t_cost, kdf.p_cost), (65536, 3, 1));
    assert_eq!(stanzas[0].label, "", "a passphrase stanza names no recipient");
    assert_eq!(decrypt_to_vec(&m, &pass).unwrap(), std::fs::read(&model).unwrap());
    let wrong = KeySource::passphrase(zeroize::Zeroizing::new(b"wrong".to_vec()));
    assert_eq!(decrypt_to_vec(&m, &wrong).unwrap_err().kind(), ErrorKind::WrongKey);
}

fn protected_fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let model = root().join("fixtures/models/cnn_torch/model.onnx");
    let keyfile = dir.join("k.key");
    let (code, _, err) = run(&["keygen", "-o", keyfile.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let out = dir.join("enc.onnx");
    let (code, _, err) = run(&[
        "encrypt",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--key-file",
        keyfile.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    (out, keyfile)
}

fn assert_refused(args: &[&str], code: i32, needle: &str, no_output: &Path) {
    let (got, out, err) = run(args);
    assert_eq!(got, code, "{args:?}: stdout {out} stderr {err}");
    let first = err.lines().next().unwrap_or("");
    assert!(first.starts_with("error: ") && first.contains(needle), "{args:?}: {err}");
    assert!(!no_output.exists(), "{args:?} left {}", no_output.display());
    // (A directory made for the output is removed with it.)
    let leftovers: Vec<_> = std::fs::read_dir(no_output.parent().unwrap())
        .map(|d| d.filter_map(|e| e.ok()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".onnx-protect-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left behind");
}

#[test]
fn a_wrong_key_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, _) = protected_fixture(dir.path());
    let other = dir.path().join("other.key");
    run(&["keygen", "-o", other.to_str().unwrap()]);
    let out = dir.path().join("out.onnx");
    let args = ["decrypt", enc.to_str().unwrap(), "-o", out.to_str().unwrap(), "--key-file", other.to_str().unwrap()];
    assert_refused(&args, 4, "wrong key", &out);
}

#[test]
fn a_flipped_byte_in_a_span_is_refused_as_modified() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, keyfile) = protected_fixture(dir.path());
    let m = Model::open(&enc).unwrap();
    let p = protection_view(&m).unwrap();
    let t = &m.tensors[p.targets[0].tensor];
    let onnx_protect_format::TensorData::Raw { range } = &t.data else { panic!("raw") };
    let at = (range.start + p.targets[0].spans[0].0) as usize;
    drop(m);
    let mut bytes = std::fs::read(&enc).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(&enc, &bytes).unwrap();
    let out = dir.path().join("out.onnx");
    let args = ["decrypt", enc.to_str().unwrap(), "-o", out.to_str().unwrap(), "--key-file", keyfile.to_str().unwrap()];
    assert_refused(&args, 5, "modified", &out);
    // Into directories that do not exist yet: they are made for the staged output
    // (the MAC is checked at the end of the pass) and removed again with it.
    let nested = dir.path().join("new/sub/out.onnx");
    let args =
        ["decrypt", enc.to_str().unwrap(), "-o", nested.to_str().unwrap(), "--key-file", keyfile.to_str().unwrap()];
    let (code, _, err) = run(&args);
    assert_eq!(code, 5, "{err}");
    assert!(!dir.path().join("new").exists(), "a failed decryption left the directories it made");
    let (code, _, err) = run(&["verify", enc.to_str().unwrap()]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("modified"));
}

#[test]
fn modified_external_ciphertext_leaves_no_output_and_in_place_leaves_the_input() {
    // Decryption checks the MAC after its one pass over the data, so it has written
    // staged files by then: they must all go, and `--in-place` must not replace
    // anything.
    let (dir, model) = copy_fixture(&root().join("fixtures/models/external_data/model.onnx"));
    let keyfile = dir.path().join("k.key");
    run(&["keygen", "-o", keyfile.to_str().unwrap()]);
    let (m, k) = (model.to_str().unwrap(), keyfile.to_str().unwrap());
    let (code, _, err) = run(&["encrypt", m, "--in-place", "--key-file", k, "--coefficient", "*=0.5"]);
    assert_eq!(code, 0, "{err}");
    let opened = Model::open(&model).unwrap();
    let p = protection_view(&opened).unwrap();
    let (file, at) = p
        .targets
        .iter()
        .find_map(|t| match &opened.tensors[t.tensor].data {
            onnx_protect_format::TensorData::External { file, .. } => {
                let pieces = opened.tensors[t.tensor].file_pieces(t.spans[0].0, t.spans[0].1);
                Some((*file, pieces.last()?.0.end - 1))
            }
            _ => None,
        })
        .expect("an encrypted span in an external file");
    let side = opened.external_files[file].path.clone();
    drop((p, opened));
    let mut bytes = std::fs::read(&side).unwrap();
    bytes[at as usize] ^= 0x40;
    std::fs::write(&side, &bytes).unwrap();
    let names = ["model.onnx", "weights.bin", "extra.bin"];
    let before: Vec<Vec<u8>> = names.iter().map(|f| std::fs::read(dir.path().join(f)).unwrap()).collect();

    let out = dir.path().join("out/model.onnx");
    assert_refused(&["decrypt", m, "-o", out.to_str().unwrap(), "--key-file", k], 5, "modified", &out);
    assert!(!dir.path().join("out").exists(), "the output folder made for the run was left behind");

    assert_refused(&["decrypt", m, "--in-place", "--key-file", k], 5, "modified", &dir.path().join("absent"));
    let after: Vec<Vec<u8>> = names.iter().map(|f| std::fs::read(dir.path().join(f)).unwrap()).collect();
    assert!(before == after, "the input changed");
}

#[test]
fn a_flipped_byte_in_the_manifest_is_refused_as_modified() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, keyfile) = protected_fixture(dir.path());
    let m = Model::open(&enc).unwrap();
    let entry = m.metadata.iter().find(|e| e.key == "onnx-protect/v2").unwrap().clone();
    drop(m);
    let original = std::fs::read(&enc).unwrap();
    // Try several positions inside the base64 value; each must be refused.
    let value_start = entry.range.end as usize - entry.value.len();
    for offset in [4usize, 40, 77, entry.value.len() / 2, entry.value.len() - 3] {
        let mut bytes = original.clone();
        let at = value_start + offset;
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        std::fs::write(&enc, &bytes).unwrap();
        let out = dir.path().join("out.onnx");
        let args =
            ["decrypt", enc.to_str().unwrap(), "-o", out.to_str().unwrap(), "--key-file", keyfile.to_str().unwrap()];
        let (code, _, err) = run(&args);
        assert!(code == 5 || code == 4, "offset {offset}: exit {code}: {err}");
        assert!(err.contains("modified") || err.contains("wrong key"), "offset {offset}: {err}");
        assert!(!out.exists());
    }
}

#[test]
fn a_truncated_protected_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, keyfile) = protected_fixture(dir.path());
    let bytes = std::fs::read(&enc).unwrap();
    std::fs::write(&enc, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.path().join("out.onnx");
    let args = ["decrypt", enc.to_str().unwrap(), "-o", out.to_str().unwrap(), "--key-file", keyfile.to_str().unwrap()];
    assert_refused(&args, 3, "truncated", &out);
}

#[test]
fn encrypting_a_protected_model_again_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, keyfile) = protected_fixture(dir.path());
    let out = dir.path().join("twice.onnx");
    let args = ["encrypt", enc.to_str().unwrap(), "-o", out.to_str().unwrap(), "--key-file", keyfile.to_str().unwrap()];
    assert_refused(&args, 6, "already protected", &out);
}

#[test]
fn a_bad_policy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("fixtures/models/cnn_torch/model.onnx");
    let keyfile = dir.path().join("k.key");
    run(&["keygen", "-o", keyfile.to_str().unwrap()]);
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "version = 1\n[ops.Conv]\ncoefficient = 2.0\n").unwrap();
    let out = dir.path().join("out.onnx");
    let m = model.to_str().unwrap();
    let (o, k, p) = (out.to_str().unwrap(), keyfile.to_str().unwrap(), policy.to_str().unwrap());
    assert_refused(&["encrypt", m, "-o", o, "--key-file", k, "--policy", p], 7, "policy", &out);
    assert_refused(&["encrypt", m, "-o", o, "--key-file", k, "--coefficient", "Conv=abc"], 7, "not a number", &out);
    assert_refused(&["encrypt", m, "-o", o, "--key-file", k, "--mode", "Conv=rot13"], 7, "ctr, fp or dp", &out);
}

#[test]
fn an_unreadable_key_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("fixtures/models/cnn_torch/model.onnx");
    let out = dir.path().join("out.onnx");
    let missing = dir.path().join("nope.key");
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    assert_refused(&["encrypt", m, "-o", o, "--key-file", missing.to_str().unwrap()], 4, "key file", &out);
    let short = dir.path().join("short.key");
    std::fs::write(&short, b"abc").unwrap();
    assert_refused(&["encrypt", m, "-o", o, "--key-file", short.to_str().unwrap()], 4, "key file", &out);
}

const EXT_FILES: [&str; 3] = ["model.onnx", "weights.bin", "extra.bin"];

fn read_all(dir: &Path, names: &[&str]) -> Vec<Vec<u8>> {
    names.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect()
}

#[test]
fn the_input_is_never_changed_and_in_place_restores_external_data() {
    let (dir, model) = copy_fixture(&root().join("fixtures/models/external_data/model.onnx"));
    let keyfile = dir.path().join("k.key");
    run(&["keygen", "-o", keyfile.to_str().unwrap()]);
    let before = read_all(dir.path(), &EXT_FILES);
    let (m, k) = (model.to_str().unwrap(), keyfile.to_str().unwrap());
    let (code, _, err) = run(&["encrypt", m, "-o", m, "--key-file", k]);
    assert_ne!(code, 0, "{err}");
    assert_eq!(before, read_all(dir.path(), &EXT_FILES));
    // --in-place is the explicit way to overwrite, and decrypt --in-place restores.
    let (code, _, err) = run(&["encrypt", m, "--in-place", "--key-file", k, "--coefficient", "*=0.5"]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(std::fs::read(dir.path().join("weights.bin")).unwrap(), before[1]);
    let (code, _, err) = run(&["decrypt", m, "--in-place", "--key-file", k]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(before, read_all(dir.path(), &EXT_FILES));
}

/// model.onnx → model.enc.onnx in one folder: the protected copy's external data files get
/// names of their own (recorded in the header), the originals are untouched, and a full
/// decryption writes the original names and bytes back.
#[test]
fn external_data_encrypted_into_the_same_folder_gets_its_own_names_and_decrypts_back() {
    let (dir, model) = copy_fixture(&root().join("fixtures/models/external_data/model.onnx"));
    let d = dir.path();
    let keyfile = d.join("k.key");
    run(&["keygen", "-o", keyfile.to_str().unwrap()]);
    let before = read_all(d, &EXT_FILES);
    let enc = d.join("model.enc.onnx");
    let (m, e, k) = (model.to_str().unwrap(), enc.to_str().unwrap(), keyfile.to_str().unwrap());
    let (code, _, err) = run(&["encrypt", m, "-o", e, "--key-file", k, "--coefficient", "*=0.5"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(before, read_all(d, &EXT_FILES), "the input changed");
    let mine = ["model.enc.onnx.1.data", "model.enc.onnx.2.data"];
    let p = manifest_of(&enc);
    assert_eq!(p.sealed.header.external_files, mine);
    assert_eq!(p.sealed.header.original_external_files, ["weights.bin", "extra.bin"]);
    // The protected model names its own files, as any ONNX loader reads them.
    let protected = Model::open(&enc).unwrap();
    let locations: Vec<&str> = protected.external_files.iter().map(|f| f.location.as_str()).collect();
    assert_eq!(locations, mine);
    assert_ne!(std::fs::read(d.join(mine[0])).unwrap(), before[1]);
    let (code, _, err) = run(&["verify", e]);
    assert_eq!(code, 0, "{err}");
    // In memory too: the original model bytes, the data under the original names.
    let key =
        KeySource::key(onnx_protect_crypto::KeyFile::parse(&std::fs::read(&keyfile).unwrap()).unwrap().into_key());
    let mem = onnx_protect_core::memory::InMemory::file(&enc, &key).load().unwrap();
    assert_eq!(&mem[..], &before[0][..]);
    let names: Vec<&str> = mem.external().keys().map(String::as_str).collect();
    assert_eq!(names, ["extra.bin", "weights.bin"]);
    assert_eq!(&mem.external()["weights.bin"][..], &before[1][..]);

    // Decrypting next to the originals refuses to replace them; elsewhere it restores all.
    let (code, _, err) = run(&["decrypt", e, "-o", d.join("again.onnx").to_str().unwrap(), "--key-file", k]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("weights.bin exists; pass --force"), "{err}");
    for f in EXT_FILES {
        std::fs::remove_file(d.join(f)).unwrap();
    }
    let (code, _, err) = run(&["decrypt", e, "-o", m, "--key-file", k]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(before, read_all(d, &EXT_FILES), "not restored byte for byte");
    // In place cannot give the files their original names: refused, nothing changed.
    let prot_before = read_all(d, &["model.enc.onnx", mine[0], mine[1]]);
    let (code, _, err) = run(&["decrypt", e, "--in-place", "--key-file", k, "--force"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--in-place cannot"), "{err}");
    assert_eq!(prot_before, read_all(d, &["model.enc.onnx", mine[0], mine[1]]));
}

/// The protected copy's data files are authenticated under their names: a missing
/// (renamed) one is reported as missing, a changed, swapped or renamed-and-relinked
/// one as modified; nothing is written.
#[test]
fn renamed_or_changed_data_files_of_a_same_folder_copy_are_refused() {
    let (dir, model) = copy_fixture(&root().join("fixtures/models/external_data/model.onnx"));
    let d = dir.path();
    let keyfile = d.join("k.key");
    run(&["keygen", "-o", keyfile.to_str().unwrap()]);
    let enc = d.join("model.enc.onnx");
    let (m, e, k) = (model.to_str().unwrap(), enc.to_str().unwrap(), keyfile.to_str().unwrap());
    let (code, _, err) = run(&["encrypt", m, "-o", e, "--key-file", k, "--coefficient", "*=0.5"]);
    assert_eq!(code, 0, "{err}");
    let out = d.join("out").join("model.onnx");
    let o = out.to_str().unwrap();
    let (one, two) = (d.join("model.enc.onnx.1.data"), d.join("model.enc.onnx.2.data"));
    // Renamed away: missing, named, exit 3 (a packaging slip, not an attack).
    std::fs::rename(&one, d.join("moved.data")).unwrap();
    assert_refused(&["decrypt", e, "-o", o, "--key-file", k], 3, "'model.enc.onnx.1.data' does not exist", &out);
    assert_refused(&["verify", e], 3, "does not exist", &out);
    std::fs::rename(d.join("moved.data"), &one).unwrap();
    let (a, b) = (std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
    // Swapped: the lengths no longer match the header.
    std::fs::write(&one, &b).unwrap();
    std::fs::write(&two, &a).unwrap();
    assert_refused(&["decrypt", e, "-o", o, "--key-file", k], 5, "modified", &out);
    // One byte changed.
    let mut changed = a.clone();
    changed[7] ^= 1;
    std::fs::write(&one, &changed).unwrap();
    std::fs::write(&two, &b).unwrap();
    assert_refused(&["decrypt", e, "-o", o, "--key-file", k], 5, "modified", &out);
    // The model's location rewritten to the original name (and the file copied there):
    // the header's names no longer match the model.
    std::fs::write(&one, &a).unwrap();
    let bytes = std::fs::read(&enc).unwrap();
    let from = b"model.enc.onnx.1.data";
    let to = b"model.enc.onnx.1.datb";
    let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
    let mut edited = bytes.clone();
    edited[at..at + from.len()].copy_from_slice(to);
    std::fs::write(&enc, &edited).unwrap();
    std::fs::copy(&one, d.join("model.enc.onnx.1.datb")).unwrap();
    assert_refused(&["decrypt", e, "-o", o, "--key-file", k], 5, "modified", &out);
    std::fs::write(&enc, &bytes).unwrap();
    let (code, _, err) = run(&["decrypt", e, "-o", o, "--key-file", k]);
    assert_eq!(code, 0, "{err}");
}

/// A protected model whose external data file is missing (the usual layout, another
/// folder), or is a folder or a pipe where the file should be, is a bad model, exit 3,
/// named; not "modified".
#[test]
fn a_missing_external_data_file_is_missing_not_modified() {
    let (dir, model) = copy_fixture(&root().join("fixtures/models/external_data/model.onnx"));
    let keyfile = dir.path().join("k.key");
    run(&["keygen", "-o", keyfile.to_str().unwrap()]);
    let enc_dir = dir.path().join("enc");
    let enc = enc_dir.join("model.onnx");
    let (m, e, k) = (model.to_str().unwrap(), enc.to_str().unwrap(), keyfile.to_str().unwrap());
    let (code, _, err) = run(&["encrypt", m, "-o", e, "--key-file", k]);
    assert_eq!(code, 0, "{err}");
    std::fs::remove_file(enc_dir.join("extra.bin")).unwrap();
    let out = dir.path().join("dec").join("model.onnx");
    let o = out.to_str().unwrap();
    assert_refused(&["decrypt", e, "-o", o, "--key-file", k], 3, "external data file 'extra.bin' does not exist", &out);
    let (code, stdout, err) = run(&["check", e]);
    assert_ne!(code, 0, "{stdout}{err}");
    assert!(!stdout.contains("modified: modified"), "{stdout}");
    std::fs::create_dir(enc_dir.join("extra.bin")).unwrap();
    let refused = "external data location 'extra.bin' is refused: it is not a regular file";
    assert_refused(&["decrypt", e, "-o", o, "--key-file", k], 3, refused, &out);
    assert_refused(&["verify", e, "--key-file", k], 3, refused, &out);
    std::fs::remove_dir(enc_dir.join("extra.bin")).unwrap();
    let made = std::process::Command::new("mkfifo").arg(enc_dir.join("extra.bin")).status().unwrap();
    assert!(made.success());
    assert_refused(&["verify", e, "--key-file", k], 3, refused, &out);
}

#[test]
fn durable_outputs_with_sync_round_trip_with_their_external_files() {
    // --sync flushes every output before it is renamed into place; the bytes are those
    // of an ordinary run (checked by restoring the original through two durable steps).
    let (dir, model) = copy_fixture(&root().join("fixtures/models/external_data/model.onnx"));
    let keyfile = dir.path().join("k.key");
    run(&["keygen", "-o", keyfile.to_str().unwrap()]);
    let (enc, dec) = (dir.path().join("e/enc.onnx"), dir.path().join("d/model.onnx"));
    let (m, k) = (model.to_str().unwrap(), keyfile.to_str().unwrap());
    let (code, _, err) =
        run(&["encrypt", m, "-o", enc.to_str().unwrap(), "--key-file", k, "--sync", "--coefficient", "*=0.5"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        run(&["decrypt", enc.to_str().unwrap(), "-o", dec.to_str().unwrap(), "--key-file", k, "--sync"]);
    assert_eq!(code, 0, "{err}");
    for f in ["model.onnx", "weights.bin", "extra.bin"] {
        assert_eq!(
            std::fs::read(dir.path().join(f)).unwrap(),
            std::fs::read(dir.path().join("d").join(f)).unwrap(),
            "{f}"
        );
    }
    assert_ne!(
        std::fs::read(dir.path().join("weights.bin")).unwrap(),
        std::fs::read(dir.path().join("e/weights.bin")).unwrap()
    );
}

#[test]
fn decrypt_to_memory_equals_the_original() {
    for model in fixture_models() {
        if !Model::open(&model).unwrap().external_files.is_empty() {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("enc.onnx");
        enc(&model, &out, &key(9), &crate::util::half_policy());
        let m = Model::open(&out).unwrap();
        assert_eq!(decrypt_to_vec(&m, &key(9)).unwrap(), std::fs::read(&model).unwrap(), "{}", model.display());
    }
}

#[test]
fn inspect_names_the_leaf_hash_of_new_and_older_files() {
    let dir = tempfile::tempdir().unwrap();
    let (new, _) = protected_fixture(dir.path());
    let old = root().join("fixtures/vectors/cnn_torch_fp/protected.onnx");
    for (path, want) in [(new, "blake3"), (old, "sha256")] {
        let (code, out, err) = run(&["inspect", path.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{err}");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(doc["protection"]["leaf_hash"], want, "{}", path.display());
        let (code, text, err) = run(&["inspect", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let line = if want == "blake3" {
            "every byte: BLAKE3 content digest under HMAC-SHA256 (per tier)".to_string()
        } else {
            format!("HMAC-SHA256 over {} chunk hashes", want.to_uppercase())
        };
        assert!(text.contains(&line), "{text}");
    }
}

/// Outputs that replace a file keep its permission bits (`--in-place`, side files
/// included); new outputs get the mode any new file gets here (0666 less the umask),
/// not the owner-only mode of a temporary file.
#[cfg(unix)]
#[test]
fn replaced_files_keep_their_mode_and_new_files_get_the_usual_one() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let set = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let (dir, model) = copy_fixture(&root().join("fixtures/models/external_data/model.onnx"));
    let (weights, extra) = (dir.path().join("weights.bin"), dir.path().join("extra.bin"));
    set(&model, 0o640);
    set(&weights, 0o604);
    set(&extra, 0o600);
    let policy = crate::util::half_policy();
    enc_in_place(&model, &key(3), &policy);
    assert_eq!((mode(&model), mode(&weights), mode(&extra)), (0o640, 0o604, 0o600));
    // What a new file gets in this process (umask, default ACLs).
    let probe = dir.path().join("probe");
    std::fs::File::create(&probe).unwrap();
    let usual = mode(&probe);
    let out = dir.path().join("dec").join("model.onnx");
    dec(&model, &out, &key(3), false);
    for f in [&out, &out.with_file_name("weights.bin"), &out.with_file_name("extra.bin")] {
        assert_eq!(mode(f), usual, "{}", f.display());
    }
    // decrypt -o over an existing file (with force) keeps that file's mode.
    set(&out, 0o620);
    let force = onnx_protect_core::OutputRules { force: true, make_dirs: false };
    onnx_protect_core::protect::decrypt(
        &model,
        &out,
        &key(3),
        &onnx_protect_core::protect::DecryptOptions { outputs: force, ..Default::default() },
    )
    .unwrap();
    assert_eq!(mode(&out), 0o620);
}

/// Outputs written through a symbolic link replace the file it points to and keep the
/// link (as `cp` does; model caches link snapshots to blobs): in-place encryption must
/// not leave the plaintext behind the link. A link to a missing file is refused.
#[cfg(unix)]
#[test]
fn in_place_through_symbolic_links_replaces_the_files_behind_them() {
    let (dir, model) = copy_fixture(&root().join("fixtures/models/external_data/model.onnx"));
    let snap = dir.path().join("snap");
    let blobs = snap.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let names = ["model.onnx", "weights.bin", "extra.bin"];
    let mut originals = Vec::new();
    for n in names {
        let blob = blobs.join(format!("{n}.blob"));
        std::fs::rename(model.with_file_name(n), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snap.join(n)).unwrap();
        originals.push((blob.clone(), std::fs::read(&blob).unwrap()));
    }
    let link = snap.join("model.onnx");
    let policy = crate::util::half_policy();
    enc_in_place(&link, &key(4), &policy);
    for (n, (blob, plain)) in names.iter().zip(&originals) {
        assert!(std::fs::symlink_metadata(snap.join(n)).unwrap().file_type().is_symlink(), "{n} is still a link");
        assert_ne!(&std::fs::read(blob).unwrap(), plain, "{n}: the file behind the link was not encrypted");
    }
    verify(&link, Some(&key(4)), &NoProgress).unwrap();
    dec(&link, &link, &key(4), true);
    for (blob, plain) in &originals {
        assert_eq!(&std::fs::read(blob).unwrap(), plain);
    }
    // A link to nothing: refused, nothing created.
    let dangling = dir.path().join("dangling.onnx");
    std::os::unix::fs::symlink(dir.path().join("missing.onnx"), &dangling).unwrap();
    let cnn = root().join("fixtures/models/cnn_torch/model.onnx");
    let e = encrypt(&cnn, &dangling, &EncryptTo::key(key(4)), &EncryptOptions::new(&policy)).unwrap_err();
    let why = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
    assert!(format!("{e}: {why}").contains("symbolic link to a missing file"), "{e}: {why}");
    assert!(!dir.path().join("missing.onnx").exists());
}

#[test]
fn a_write_that_fails_midway_leaves_no_output_and_says_where() {
    // The file-size limit (RLIMIT_FSIZE: `ulimit -f 2`, 1 KiB where the shell counts
    // 512-byte blocks, 2 KiB where it counts KiB) makes the output's preallocation (or,
    // where the file system cannot preallocate, a write of the one-pass writer) fail as
    // a full disk would (EFBIG instead of ENOSPC): the 2560-byte weights.bin cannot be
    // written whole. Each command fails with one line naming the file it could not
    // write, exit 1, and nothing in the output folder; the inputs are unchanged.
    if !std::path::Path::new("/bin/sh").exists() {
        return;
    }
    let (dir, model) = copy_fixture(&root().join("fixtures/models/external_data/model.onnx"));
    let key = dir.path().join("k.key");
    run(&["keygen", "-o", key.to_str().unwrap()]);
    let (m, k) = (model.to_str().unwrap(), key.to_str().unwrap());
    let enc = dir.path().join("enc/model.onnx");
    let (code, _, err) = run(&["encrypt", m, "-o", enc.to_str().unwrap(), "--key-file", k, "--coefficient", "*=1"]);
    assert_eq!(code, 0, "{err}");
    let bin = crate::util::bin();
    let limited = |args: &[&str]| {
        let script = "trap '' XFSZ; ulimit -f 2; exec \"$0\" \"$@\"";
        let out = std::process::Command::new("/bin/sh").arg("-c").arg(script).arg(&bin).args(args).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let before = std::fs::read(&model).unwrap();
    let out_dir = dir.path().join("out");
    let cases: [(&str, &str, &str); 3] =
        [("encrypt", m, "enc2"), ("decrypt", enc.to_str().unwrap(), "dec"), ("rekey", enc.to_str().unwrap(), "rk")];
    for (cmd, input, sub) in cases {
        let out = out_dir.join(sub).join("model.onnx");
        let mut args = vec![cmd, input, "-o", out.to_str().unwrap(), "--key-file", k];
        if cmd == "rekey" {
            args.extend(["--new-key-file", k]);
        }
        let (code, err) = limited(&args);
        assert_eq!(code, 1, "{cmd}: {err}");
        assert_eq!(err.lines().count(), 1, "{cmd}: {err}");
        assert!(err.starts_with("error: ") && err.contains("cannot write") && err.contains(sub), "{cmd}: {err}");
        let left: Vec<_> = std::fs::read_dir(out.parent().unwrap()).map(|d| d.flatten().collect()).unwrap_or_default();
        assert!(left.is_empty(), "{cmd} left {left:?}");
    }
    assert!(std::fs::read(&model).unwrap() == before);
}
