//! The committed known-answer vectors (fixtures/vectors/README.md) stay exact: every
//! format-2 case decrypts with the library and the binary to its original byte for byte
//! with each of its key materials, under its signer, and through its tier keys to its
//! partial decryptions; every format-1 case (read-only) still decrypts and verifies, and
//! keeps the integrity it had: a changed byte of its ciphertext or manifest is refused,
//! and any other changed byte comes back as exactly that change.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use onnx_protect_core::error::ErrorKind;
use onnx_protect_core::format1::manifest::read_protected;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::memory::InMemory;
use onnx_protect_core::protect::{decrypt, decrypt_to_vec, protection_view, verify, verify_signed, DecryptOptions};
use onnx_protect_core::rekey::{rekey, RekeyOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{Model, NoProgress, TensorData};
use onnx_protect_keys::{Identity, SignerKey, SigningKey, X25519Identity};
use zeroize::Zeroizing;

use crate::util::{manifest_of, root, run};

fn vectors() -> PathBuf {
    root().join("fixtures/vectors")
}

/// The case folders of one format version, by name.
fn cases(v2: bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(vectors())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains("_v2_") == v2)
        .collect();
    v.sort();
    v
}

/// `(protected model, original model)` of a case: files, or `model.onnx` in folders.
fn models_of(case: &Path) -> (PathBuf, PathBuf) {
    if case.join("protected").is_dir() {
        (case.join("protected/model.onnx"), case.join("original/model.onnx"))
    } else {
        (case.join("protected.onnx"), case.join("original.onnx"))
    }
}

/// The files of a folder by name, `model.onnx` and any side files (one file alone when
/// `model` is not named `model.onnx`).
fn outputs(model: &Path) -> BTreeMap<String, Vec<u8>> {
    if model.file_name().unwrap() != "model.onnx" {
        return BTreeMap::from([("model.onnx".to_string(), std::fs::read(model).unwrap())]);
    }
    std::fs::read_dir(model.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect()
}

fn key_file(path: &Path) -> KeySource {
    KeySource::key(MasterKey::parse_key_file(&std::fs::read(path).unwrap()).unwrap())
}

/// Each key material of a case, named by its file.
fn materials(case: &Path) -> Vec<(&'static str, KeySource)> {
    let mut out = Vec::new();
    if case.join("key.hex").is_file() {
        out.push(("key.hex", key_file(&case.join("key.hex"))));
    }
    if case.join("passphrase.txt").is_file() {
        let text = std::fs::read(case.join("passphrase.txt")).unwrap();
        let line = text.split(|&b| b == b'\n').next().unwrap().to_vec();
        out.push(("passphrase.txt", KeySource::passphrase(Zeroizing::new(line))));
    }
    if case.join("identity.txt").is_file() {
        let text = std::fs::read_to_string(case.join("identity.txt")).unwrap();
        out.push(("identity.txt", KeySource::new(Identity::parse_x25519_file(&text).unwrap())));
    }
    out
}

/// Key material of the same kind that is not the case's.
fn other_material(k: &KeySource) -> KeySource {
    match k.identity() {
        Identity::Key(_) => KeySource::key(MasterKey::from_bytes([0xa5; 32])),
        Identity::Passphrase(p) => KeySource::passphrase(Zeroizing::new([&p[..], b"x"].concat())),
        _ => KeySource::new(Identity::X25519(vec![X25519Identity::generate()])),
    }
}

fn signers_of(case: &Path) -> Vec<SignerKey> {
    match std::fs::read_to_string(case.join("signer.pub")) {
        Ok(text) => SignerKey::parse_file(&text).unwrap(),
        Err(_) => Vec::new(),
    }
}

/// Decrypts `protected` with `k` into a fresh folder and returns what it wrote.
fn decrypted(protected: &Path, k: &KeySource, signers: &[SignerKey]) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    decrypt(protected, &out, k, &DecryptOptions { signers, ..DecryptOptions::default() })
        .unwrap_or_else(|e| panic!("{}: {e}", protected.display()));
    outputs(&out)
}

#[test]
fn every_format_2_vector_decrypts_to_its_original_with_each_key_material() {
    let all = cases(true);
    assert!(all.len() >= 9, "only {} format-2 vectors", all.len());
    for case in &all {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let (protected, original) = models_of(case);
        let want = outputs(&original);
        let signers = signers_of(case);
        let m = materials(case);
        assert!(!m.is_empty(), "{name}: no key material");
        assert_eq!(manifest_of(&protected).sealed.header.format_version, 2, "{name}");
        verify(&protected, None, &NoProgress).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (kind, k) in &m {
            let ctx = format!("{name} with {kind}");
            assert!(decrypted(&protected, k, &signers) == want, "{ctx}: decrypt");
            let mem = InMemory::file(&protected, k).signers(&signers).load().unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert!(mem[..] == want["model.onnx"][..], "{ctx}: in memory");
            for (loc, bytes) in mem.external() {
                assert!(bytes[..] == want[loc][..], "{ctx}: in memory, {loc}");
            }
            verify_signed(&protected, Some(k), &signers, &NoProgress).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let e = InMemory::file(&protected, &other_material(k)).load().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::WrongKey, "{ctx}: another {kind}: {e}");
        }
        if !signers.is_empty() {
            verify_signed(&protected, None, &signers, &NoProgress).unwrap_or_else(|e| panic!("{name}: {e}"));
            let stranger = [SigningKey::generate().unwrap().public()];
            let e = verify_signed(&protected, None, &stranger, &NoProgress).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotSigned, "{name}: {e}");
        }
    }
}

/// The `label` of each `key` stanza is the fingerprint of the key that opens it
/// (docs/format.md §8), for `key.hex` and every tier key.
#[test]
fn format_2_key_stanzas_are_labelled_with_the_key_fingerprint() {
    for case in cases(true) {
        let (protected, _) = models_of(&case);
        let p = manifest_of(&protected);
        let mut keys: Vec<(u32, PathBuf)> = vec![(p.sealed.header.tiers, case.join("key.hex"))];
        for t in 1..=p.sealed.header.tiers {
            keys.push((t, case.join(format!("tier{t}.hex"))));
        }
        for (tier, path) in keys.into_iter().filter(|(_, p)| p.is_file()) {
            let label = hex(&key_file(&path).master_key().unwrap().fingerprint());
            assert!(
                p.sealed.stanzas.iter().any(|s| s.kind == "key" && s.tier == tier && s.label == label),
                "{}: no key stanza of tier {tier} labelled {label}",
                path.display()
            );
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn the_tiered_format_2_vector_gives_its_partial_decryptions() {
    let tiered: Vec<PathBuf> = cases(true).into_iter().filter(|c| c.join("tier1.hex").is_file()).collect();
    assert!(!tiered.is_empty(), "no tiered format-2 vector");
    for case in tiered {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let (protected, original) = models_of(&case);
        let tiers = manifest_of(&protected).sealed.header.tiers;
        let top = key_file(&case.join(format!("tier{tiers}.hex")));
        let mut partials = 0;
        for t in 1..tiers {
            let k = key_file(&case.join(format!("tier{t}.hex")));
            let out = decrypted(&protected, &k, &[]);
            let file = case.join(format!("partial-t{t}.onnx"));
            if file.is_file() {
                partials += 1;
                assert!(
                    out["model.onnx"] == std::fs::read(&file).unwrap(),
                    "{name}: tier {t} is not {}",
                    file.display()
                );
                // The partial file: still protected, verified without a key, finished by the top key.
                verify(&file, None, &NoProgress).unwrap_or_else(|e| panic!("{name}: {e}"));
                let m = Model::open(&file).unwrap();
                assert_eq!(protection_view(&m).unwrap().restored_tiers, t, "{name}");
                assert!(decrypt_to_vec(&m, &top).unwrap() == std::fs::read(&original).unwrap(), "{name} from tier {t}");
                let e = decrypt_to_vec(&m, &k).map(|_| ());
                assert!(e.is_ok(), "{name}: tier {t}'s own key serves the partial file as it is: {e:?}");
            }
        }
        assert!(partials > 0, "{name}: no partial-t<T>.onnx");
    }
}

#[test]
fn the_binary_decrypts_every_vector_of_both_versions() {
    for case in cases(true).into_iter().chain(cases(false)) {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let (protected, original) = models_of(&case);
        let want = outputs(&original);
        let mut opts: Vec<Vec<String>> = Vec::new();
        let s = |p: PathBuf| p.to_str().unwrap().to_string();
        for (flag, file) in
            [("--key-file", "key.hex"), ("--passphrase-file", "passphrase.txt"), ("--identity", "identity.txt")]
        {
            if case.join(file).is_file() {
                opts.push(vec![flag.into(), s(case.join(file))]);
            }
        }
        if case.join("signer.pub").is_file() {
            for o in &mut opts {
                o.extend(["--signer".into(), s(case.join("signer.pub"))]);
            }
        }
        assert!(!opts.is_empty(), "{name}");
        for o in opts {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("model.onnx");
            let mut args = vec!["decrypt", protected.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"];
            args.extend(o.iter().map(String::as_str));
            let (code, _, err) = run(&args);
            assert_eq!(code, 0, "{name} {o:?}: {err}");
            assert!(outputs(&out) == want, "{name} {o:?}");
            let mut args = vec!["verify", protected.to_str().unwrap(), "-q"];
            args.extend(o.iter().map(String::as_str));
            let (code, _, err) = run(&args);
            assert_eq!(code, 0, "{name} {o:?}: {err}");
        }
    }
}

#[test]
fn every_format_1_vector_still_decrypts_and_verifies_read_only() {
    let all = cases(false);
    assert!(all.len() >= 5, "only {} format-1 vectors", all.len());
    for case in &all {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let (protected, original) = models_of(case);
        let want = outputs(&original);
        let k = key_file(&case.join("key.hex"));
        let m = Model::open(&protected).unwrap();
        assert_eq!(protection_view(&m).unwrap().format_version, 1, "{name}");
        assert!(decrypted(&protected, &k, &[]) == want, "{name}: decrypt");
        let mem = InMemory::model(&m, &k).load().unwrap();
        assert!(mem[..] == want["model.onnx"][..], "{name}: in memory");
        for (loc, bytes) in mem.external() {
            assert!(bytes[..] == want[loc][..], "{name}: in memory, {loc}");
        }
        for key in [None, Some(&k)] {
            let r = verify(&protected, key, &NoProgress).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(r.format_version, 1, "{name}");
        }
        let wrong = KeySource::key(MasterKey::from_bytes([0xa5; 32]));
        assert_eq!(InMemory::file(&protected, &wrong).load().unwrap_err().kind(), ErrorKind::WrongKey, "{name}");
        // Read-only: no signatures to check, no rekey; nothing is written.
        let signer = [SigningKey::generate().unwrap().public()];
        assert_eq!(verify_signed(&protected, None, &signer, &NoProgress).unwrap_err().kind(), ErrorKind::NotSigned);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("re").join("model.onnx");
        let new =
            onnx_protect_core::format2::recipients::EncryptTo::key(KeySource::key(MasterKey::from_bytes([1; 32])));
        let ropts = RekeyOptions::new(&NoProgress);
        let e = rekey(&protected, &out, &k, &new, &ropts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsupportedVersion, "{name}: {e}");
        assert!(!dir.path().join("re").exists(), "{name}: rekey left an output");
    }
}

/// The byte ranges of a format-1 protected model file that its MAC covers: the
/// ciphertext stored in the model file itself, and the manifest entry's value.
fn guarded_v1(model: &Model) -> Vec<Range<usize>> {
    let p = read_protected(model).unwrap();
    let mut out = Vec::new();
    for t in &p.targets {
        let tensor = &model.tensors[t.tensor];
        match &tensor.data {
            TensorData::Raw { .. } | TensorData::Fixed { .. } => {
                for &(a, b) in &t.spans {
                    out.extend(tensor.file_pieces(a, b).into_iter().map(|(r, _)| r.start as usize..r.end as usize));
                }
            }
            TensorData::Varint { fields, .. } if t.spans.iter().map(|(a, b)| b - a).sum::<u64>() == tensor.nbytes => {
                // All of it encrypted: the varints after each field's tag and length
                // (at most 3 bytes here).
                out.extend(fields.iter().map(|r| r.start as usize + 3..r.end as usize));
            }
            _ => {}
        }
    }
    out.push(p.entry.range.end as usize - p.entry.value.len()..p.entry.range.end as usize);
    out
}

/// The ciphertext each external data file of a format-1 model holds, by `location`.
fn guarded_v1_external(model: &Model) -> Vec<(String, Range<usize>)> {
    let p = read_protected(model).unwrap();
    let mut out = Vec::new();
    for t in &p.targets {
        let tensor = &model.tensors[t.tensor];
        if let TensorData::External { file, .. } = &tensor.data {
            let location = model.external_files[*file].location.clone();
            for &(a, b) in &t.spans {
                out.extend(
                    tensor
                        .file_pieces(a, b)
                        .into_iter()
                        .map(|(r, _)| (location.clone(), r.start as usize..r.end as usize)),
                );
            }
        }
    }
    out
}

/// Whether `got` is `want` with exactly one bit, `bit`, changed in one file.
fn one_bit_apart(got: &BTreeMap<String, Vec<u8>>, want: &BTreeMap<String, Vec<u8>>, bit: u8) -> bool {
    if got.keys().ne(want.keys()) {
        return false;
    }
    let mut diffs = got.iter().flat_map(|(name, g)| {
        let w = &want[name];
        let n = g.len().max(w.len());
        (0..n).filter(move |&j| g.get(j) != w.get(j)).map(move |j| (g.get(j).copied(), w.get(j).copied()))
    });
    matches!((diffs.next(), diffs.next()), (Some((Some(g), Some(w))), None) if g ^ w == bit)
}

/// Format 1's integrity, on its committed vectors: every byte of each file of a case
/// (the model and its side files), changed in turn, is refused when the MAC covers it
/// (ciphertext, manifest) and otherwise refused or decrypted in memory to the original
/// with exactly that bit changed — never to other bytes. Format 2 covers every byte
/// (tests/integration/sweep.rs).
#[test]
fn every_changed_byte_of_a_format_1_vector_is_refused_or_comes_back_as_that_change() {
    let mut swept = 0usize;
    for case in cases(false) {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let (protected, original) = models_of(&case);
        let k = key_file(&case.join("key.hex"));
        let dir = tempfile::tempdir().unwrap();
        for f in outputs(&protected).keys() {
            let from = if protected.file_name().unwrap() == "model.onnx" {
                protected.with_file_name(f)
            } else {
                protected.clone()
            };
            std::fs::copy(from, dir.path().join(f)).unwrap();
        }
        let path = dir.path().join("model.onnx");
        let model = Model::open(&path).unwrap();
        let mut guard: Vec<(String, Range<usize>)> =
            guarded_v1(&model).into_iter().map(|r| ("model.onnx".to_string(), r)).collect();
        guard.extend(guarded_v1_external(&model));
        drop(model);
        let want = outputs(&original);
        let in_memory = |d: onnx_protect_core::memory::DecryptedModel| {
            let mut got = BTreeMap::from([("model.onnx".to_string(), d[..].to_vec())]);
            got.extend(d.external().iter().map(|(l, b)| (l.clone(), b[..].to_vec())));
            got
        };
        // The baseline: the unchanged copy decrypts to the original.
        assert!(in_memory(InMemory::file(&path, &k).load().unwrap()) == want, "{name}");
        let mut accepted = 0;
        for (file, bytes) in outputs(&path) {
            for i in 0..bytes.len() {
                let ctx = format!("{name}: byte {i} of {file}");
                let bit = 1u8 << (i % 8);
                let mut changed = bytes.clone();
                changed[i] ^= bit;
                std::fs::write(dir.path().join(&file), &changed).unwrap();
                let is_guarded = guard.iter().any(|(f, r)| *f == file && r.contains(&i));
                // (A refusal may name any kind: in format 1 a changed salt is a wrong key.)
                match InMemory::file(&path, &k).load() {
                    Err(_) => {}
                    Ok(d) => {
                        assert!(!is_guarded, "{ctx}: the MAC covers it, but it was accepted");
                        assert!(one_bit_apart(&in_memory(d), &want, bit), "{ctx}: decrypted to other bytes");
                        accepted += 1;
                    }
                }
                swept += 1;
            }
            std::fs::write(dir.path().join(&file), &bytes).unwrap();
        }
        // Format 1 leaves the clear bytes unauthenticated: some change gets through.
        assert!(accepted > 0, "{name}: every change was refused");
    }
    assert!(swept > 25_000, "only {swept} bytes swept");
}

/// Format 1 authenticates only the encrypted spans: every command that reads a format-1
/// file says so, and the CI gate refuses one unless told to let it pass.
#[test]
fn every_use_of_a_format_1_file_says_only_its_encrypted_spans_are_authenticated() {
    const WARNING: &str = "format 1: only encrypted spans authenticated";
    let case = vectors().join("cnn_torch_ctr");
    let (protected, _) = models_of(&case);
    let p = protected.to_str().unwrap();
    let key = case.join("key.hex");
    let k = key.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.onnx");
    let o = out.to_str().unwrap();
    for args in [
        vec!["decrypt", p, "-o", o, "--key-file", k],
        vec!["verify", p],
        vec!["verify", p, "--key-file", k],
        vec!["check", p, "--allow-format-1"],
        vec!["inspect", p],
    ] {
        let (code, stdout, err) = run(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(
            err.contains(&format!("warning: {WARNING}")) || stdout.contains(WARNING),
            "{args:?}: no warning in\n{stdout}\n{err}"
        );
    }
    let (code, stdout, err) = run(&["verify", p, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["warning"], WARNING);
    // The gate: a format-1 file fails unless allowed.
    let (code, stdout, _) = run(&["check", p, "--json"]);
    assert_eq!(code, 8, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["models"][0]["failures"][0]["reason"], "format_1", "{stdout}");
}
