//! Every byte of a protected model, changed one at a time, and every truncation of it:
//! decryption either refuses, or gives back the original with exactly that one bit
//! changed (the byte lies outside what the MAC covers, e.g. in the graph). It never gives back
//! other bytes than the original's, and a changed byte of ciphertext or of the manifest
//! is always refused. Parsing and inspecting a changed unprotected model never panics.

use std::ops::Range;

use onnx_protect_core::inspect::inspect;
use onnx_protect_core::memory::decrypt_model_in_memory;
use onnx_protect_core::protect::{
    decrypt, decrypt_tier_to_vec, decrypt_to_vec, encrypt, protection_info, read_protected, verify, DecryptOptions,
    EncryptOptions, KeySource,
};
use onnx_protect_core::rekey::{rekey, RekeyOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{Model, NoProgress, TensorData};

use crate::util::fixture_models;

fn key() -> KeySource {
    KeySource::Key(MasterKey::from_bytes([0x5a; 32]))
}

/// Byte ranges of `bytes` (a protected model file) that a change must never get
/// through: the ciphertext stored in the model file itself, and the manifest entry.
fn guarded(bytes: &[u8], dir: &std::path::Path) -> Vec<Range<usize>> {
    let model = Model::from_vec(bytes.to_vec(), Some(dir.to_path_buf())).unwrap();
    let p = read_protected(&model).unwrap();
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
    let entry = model.metadata.iter().find(|e| onnx_protect_core::protect::is_manifest_key(&e.key)).unwrap();
    out.push(entry.range.end as usize - entry.value.len()..entry.range.end as usize);
    out
}

/// Decrypts `bytes` both ways in memory: `Ok` only if both succeed with the same result
/// (after inspecting it).
fn decrypt_both(bytes: Vec<u8>, dir: &std::path::Path, external: bool) -> Result<Vec<u8>, String> {
    let model = Model::from_vec(bytes, Some(dir.to_path_buf())).map_err(|e| e.to_string())?;
    // What `inspect` shows of a changed protected model: never a panic.
    let _ = (inspect(&model), protection_info(&model));
    let mapped = decrypt_model_in_memory(&model, &key()).map(|d| d.bytes().to_vec());
    if external {
        return mapped.map_err(|e| e.to_string());
    }
    let copied = decrypt_to_vec(&model, &key());
    match (mapped, copied) {
        (Ok(a), Ok(b)) => {
            assert!(a == b, "the two in-memory decryptions disagree");
            Ok(a)
        }
        (Err(a), Err(_)) => Err(a.to_string()),
        (a, b) => panic!("one decryption refused, the other did not: {:?} / {:?}", a.err(), b.err()),
    }
}

#[test]
fn every_changed_byte_of_a_protected_model_is_refused_or_comes_back_as_it_was() {
    let mut checked = 0usize;
    for path in fixture_models() {
        let ctx = path.display().to_string();
        let (dir, _) = crate::util::copy_fixture(&path);
        let enc_path = dir.path().join("enc.onnx");
        let mut policy = onnx_protect_select::Policy::default();
        // Everything the policy can take, so that most of each file is ciphertext.
        policy.apply_override("coefficient", "*=1").unwrap();
        let opts = EncryptOptions { policy: &policy, in_place: false, sync: false, progress: &NoProgress };
        encrypt(&path, &enc_path, &key(), &opts).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let enc = std::fs::read(&enc_path).unwrap();
        let original = std::fs::read(&path).unwrap();
        let external = !Model::open(&path).unwrap().external_files.is_empty();
        // Decrypting the unchanged file gives the original (the baseline of the sweep).
        assert!(decrypt_both(enc.clone(), dir.path(), external).unwrap() == original, "{ctx}");
        let guard = guarded(&enc, dir.path());
        let is_guarded = |i: usize| guard.iter().any(|r| r.contains(&i));
        for i in 0..enc.len() {
            let mut bytes = enc.clone();
            bytes[i] ^= 1 << (i % 8);
            match decrypt_both(bytes, dir.path(), external) {
                Err(_) => {}
                Ok(out) => {
                    assert!(!is_guarded(i), "{ctx}: byte {i} (guarded) changed and decryption accepted it");
                    assert_eq!(out.len(), original.len(), "{ctx}: byte {i}");
                    // The same one-bit change, at the same offset of the original unless
                    // a re-encoded (varint) tensor before it changed length.
                    let diff: Vec<usize> = (0..out.len()).filter(|&j| out[j] != original[j]).collect();
                    assert!(
                        diff.len() == 1 && out[diff[0]] ^ original[diff[0]] == 1 << (i % 8),
                        "{ctx}: byte {i} changed, the output differs at {diff:?}"
                    );
                }
            }
            checked += 1;
        }
        // Every truncation loses (part of) the manifest: refused.
        for n in 0..enc.len() {
            let r = decrypt_both(enc[..n].to_vec(), dir.path(), external);
            assert!(r.is_err(), "{ctx}: truncated to {n} bytes and accepted");
        }
    }
    assert!(checked > 20_000, "only {checked} positions checked");
}

/// The ciphertext each external data file of the protected model `enc` holds, by the
/// file's `location`.
fn guarded_external(enc: &std::path::Path) -> Vec<(String, Range<usize>)> {
    let model = Model::open(enc).unwrap();
    let p = read_protected(&model).unwrap();
    let mut out = Vec::new();
    for t in &p.targets {
        let tensor = &model.tensors[t.tensor];
        if let TensorData::External { file, .. } = &tensor.data {
            let location = model.external_files[*file].location.clone();
            for &(a, b) in &t.spans {
                for (r, _) in tensor.file_pieces(a, b) {
                    out.push((location.clone(), r.start as usize..r.end as usize));
                }
            }
        }
    }
    out
}

/// The bytes of the protected model file at `path` whose base64 characters encode
/// `Envelope.mac` (field 2, after the manifest, field 1): the one part of the entry the
/// keyless checksum cannot cover, since only the key can check it (docs/format.md §7).
fn mac_in_file(path: &std::path::Path) -> Range<usize> {
    let model = Model::open(path).unwrap();
    let p = read_protected(&model).unwrap();
    let m = p.envelope.manifest.len();
    let varint_len = |mut v: usize| {
        let mut n = 1;
        while v >= 0x80 {
            v >>= 7;
            n += 1;
        }
        n
    };
    // Tag and length of the manifest, the manifest, then the MAC's tag and length.
    let start = 1 + varint_len(m) + m + 2;
    let value_start = p.entry.range.end as usize - p.entry.value.len();
    value_start + start / 3 * 4..value_start + (start + 32).div_ceil(3) * 4
}

/// The files of folder `dir`, by name.
fn folder(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `got` is `want` with exactly one bit, `bit`, changed in one file.
fn one_bit_apart(
    got: &std::collections::BTreeMap<String, Vec<u8>>,
    want: &std::collections::BTreeMap<String, Vec<u8>>,
    bit: u8,
) -> bool {
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

#[test]
fn every_changed_byte_of_a_protected_folder_is_refused_without_output_or_comes_back_as_it_was() {
    // The sweep through the file path: the one-pass writer, whose MAC check comes after
    // it has staged the output (a refusal must leave nothing behind), and every file of
    // the protected folder, the external data files included. Key rotation (which
    // checks the old MAC in its pass) and `verify` with and without the key are swept
    // at every third byte.
    let new_key = KeySource::Key(MasterKey::from_bytes([0x77; 32]));
    for name in ["cnn_torch", "typed_fields", "external_data"] {
        let src = crate::util::root().join("fixtures/models").join(name);
        let original = folder(&src);
        let original: std::collections::BTreeMap<_, _> =
            original.into_iter().filter(|(n, _)| n.ends_with(".onnx") || n.ends_with(".bin")).collect();
        // In memory where the system has a tmpfs: thousands of staged files.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
        let enc_dir = dir.path().join("enc");
        let enc_path = enc_dir.join("model.onnx");
        let mut policy = onnx_protect_select::Policy::default();
        policy.apply_override("coefficient", "*=1").unwrap();
        let opts = EncryptOptions { policy: &policy, in_place: false, sync: false, progress: &NoProgress };
        encrypt(&src.join("model.onnx"), &enc_path, &key(), &opts).unwrap();
        let enc = folder(&enc_dir);
        let mut guard: Vec<(String, Range<usize>)> =
            guarded(&enc["model.onnx"], &enc_dir).into_iter().map(|r| ("model.onnx".to_string(), r)).collect();
        guard.extend(guarded_external(&enc_path));
        let mac_chars = mac_in_file(&enc_path);
        let out_dir = dir.path().join("out");
        let out = out_dir.join("model.onnx");
        let dopts = DecryptOptions { in_place: false, sync: false, progress: &NoProgress };
        let ropts = RekeyOptions { in_place: false, sync: false, progress: &NoProgress };
        let mut swept = 0usize;
        for (file, bytes) in &enc {
            for i in 0..bytes.len() {
                let ctx = format!("{name}: byte {i} of {file}");
                let bit = 1u8 << (i % 8);
                let mut changed = bytes.clone();
                changed[i] ^= bit;
                std::fs::write(enc_dir.join(file), &changed).unwrap();
                let is_guarded = guard.iter().any(|(f, r)| f == file && r.contains(&i));
                match decrypt(&enc_path, &out, &key(), &dopts) {
                    Err(_) => assert!(folder(&out_dir).is_empty(), "{ctx}: refused, but left files behind"),
                    Ok(_) => {
                        assert!(!is_guarded, "{ctx} (guarded) accepted");
                        assert!(one_bit_apart(&folder(&out_dir), &original, bit), "{ctx}: not the original");
                        std::fs::remove_dir_all(&out_dir).unwrap();
                    }
                }
                if i % 3 == 0 {
                    let keyless = verify(&enc_path, None, &NoProgress);
                    let keyed = verify(&enc_path, Some(&key()), &NoProgress);
                    assert!(!is_guarded || keyed.is_err(), "{ctx} (guarded) verified with the key");
                    let keyless_blind = file == "model.onnx" && mac_chars.contains(&i);
                    assert!(!is_guarded || keyless.is_err() || keyless_blind, "{ctx} (guarded) verified without a key");
                    match rekey(&enc_path, &out, &key(), &new_key, &ropts) {
                        Err(_) => assert!(folder(&out_dir).is_empty(), "{ctx}: rekey refused, but left files"),
                        Ok(_) => {
                            assert!(!is_guarded, "{ctx} (guarded) accepted by rekey");
                            let back = dir.path().join("back/model.onnx");
                            decrypt(&out, &back, &new_key, &dopts).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                            assert!(one_bit_apart(&folder(back.parent().unwrap()), &original, bit), "{ctx}: rekey");
                            std::fs::remove_dir_all(&out_dir).unwrap();
                            std::fs::remove_dir_all(back.parent().unwrap()).unwrap();
                        }
                    }
                }
                swept += 1;
            }
            std::fs::write(enc_dir.join(file), bytes).unwrap();
        }
        assert!(swept > 1000, "{name}: only {swept} bytes swept");
    }
}

#[test]
fn every_changed_byte_of_a_tiered_model_is_refused_or_comes_back_as_the_tier_gives_it() {
    // Three tiers (dp mode, l1 selection): with the top key the original comes back,
    // with the tier-1 key the model with tiers 2 and 3 still encrypted.
    let top = MasterKey::from_bytes([0x3c; 32]);
    let low = top.tier_down().tier_down();
    let mut policy = onnx_protect_select::Policy::default();
    policy.apply_override("mode", "*=dp").unwrap();
    policy.apply_override("selection", "*=l1").unwrap();
    policy.set_tiers(3).unwrap();
    for name in ["cnn_torch", "roles_mix", "typed_fields"] {
        let path = crate::util::root().join("fixtures/models").join(name).join("model.onnx");
        let dir = tempfile::tempdir().unwrap();
        let enc_path = dir.path().join("enc.onnx");
        let opts = EncryptOptions { policy: &policy, in_place: false, sync: false, progress: &NoProgress };
        encrypt(&path, &enc_path, &KeySource::Key(top.clone()), &opts).unwrap();
        let enc = std::fs::read(&enc_path).unwrap();
        let guard = guarded(&enc, dir.path());
        let open = |b: Vec<u8>| Model::from_vec(b, None).map_err(|e| e.to_string());
        let enc_with = |i: usize| {
            let mut bytes = enc.clone();
            bytes[i] ^= 1 << (i % 8);
            bytes
        };
        for (k, label) in [(&top, "top"), (&low, "tier 1")] {
            let ks = KeySource::Key(k.clone());
            let want = decrypt_tier_to_vec(&open(enc.clone()).unwrap(), &ks, None).unwrap();
            for i in 0..enc.len() {
                let Ok(model) = open(enc_with(i)) else { continue };
                let Ok(out) = decrypt_tier_to_vec(&model, &ks, None) else { continue };
                if guard.iter().any(|r| r.contains(&i)) {
                    // Only what this key cannot check: the MAC of a tier above it. The
                    // top key still refuses the file.
                    assert!(label != "top", "{name}, {label}: byte {i} (guarded) accepted");
                    let top_key = KeySource::Key(top.clone());
                    let again = decrypt_tier_to_vec(&open(enc_with(i)).unwrap(), &top_key, None);
                    assert!(again.is_err(), "{name}: byte {i} accepted by the tier-1 key and the top key");
                }
                let diff: Vec<usize> = (0..out.len().min(want.len())).filter(|&j| out[j] != want[j]).collect();
                assert!(
                    out.len() == want.len() && diff.len() == 1 && out[diff[0]] ^ want[diff[0]] == 1 << (i % 8),
                    "{name}, {label}: byte {i} changed, the output differs at {diff:?}"
                );
            }
        }
    }
}

#[test]
fn every_changed_byte_of_a_tiered_file_is_refused_without_output_or_decrypted_as_the_tier_gives_it() {
    // The file path of a tiered model (its MACs and checksums are checked after the
    // pass, like an untiered one's): with the top key at every byte, with the tier-1
    // key at every third.
    let top = MasterKey::from_bytes([0x3c; 32]);
    let low = top.tier_down().tier_down();
    for (name, mode) in [("cnn_torch", "*=fp"), ("typed_fields", "*=dp")] {
        let mut policy = onnx_protect_select::Policy::default();
        policy.apply_override("mode", mode).unwrap();
        policy.apply_override("selection", "*=l1").unwrap();
        policy.set_tiers(3).unwrap();
        let path = crate::util::root().join("fixtures/models").join(name).join("model.onnx");
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
        let enc_path = dir.path().join("enc.onnx");
        let opts = EncryptOptions { policy: &policy, in_place: false, sync: false, progress: &NoProgress };
        encrypt(&path, &enc_path, &KeySource::Key(top.clone()), &opts).unwrap();
        let enc = std::fs::read(&enc_path).unwrap();
        let guard = guarded(&enc, dir.path());
        let out_dir = dir.path().join("out");
        let out = out_dir.join("model.onnx");
        let dopts = DecryptOptions { in_place: false, sync: false, progress: &NoProgress };
        for (k, label, step) in [(&top, "top", 1), (&low, "tier 1", 3)] {
            let ks = KeySource::Key(k.clone());
            decrypt(&enc_path, &out, &ks, &dopts).unwrap();
            let want = folder(&out_dir);
            std::fs::remove_dir_all(&out_dir).unwrap();
            for i in (0..enc.len()).step_by(step) {
                let ctx = format!("{name}, {label}: byte {i}");
                let bit = 1u8 << (i % 8);
                let mut changed = enc.clone();
                changed[i] ^= bit;
                std::fs::write(&enc_path, &changed).unwrap();
                match decrypt(&enc_path, &out, &ks, &dopts) {
                    Err(_) => assert!(folder(&out_dir).is_empty(), "{ctx}: refused, but left files behind"),
                    Ok(_) => {
                        if guard.iter().any(|r| r.contains(&i)) {
                            // Only what this key cannot check: the MAC of a tier above it.
                            assert!(label != "top", "{ctx} (guarded) accepted");
                            let top_key = KeySource::Key(top.clone());
                            let again = dir.path().join("again.onnx");
                            assert!(decrypt(&enc_path, &again, &top_key, &dopts).is_err(), "{ctx}: top key too");
                        }
                        assert!(one_bit_apart(&folder(&out_dir), &want, bit), "{ctx}: not what the tier gives");
                        std::fs::remove_dir_all(&out_dir).unwrap();
                    }
                }
            }
            std::fs::write(&enc_path, &enc).unwrap();
        }
        // Key rotation of the tiered file (the top key; its tier MACs are checked after
        // the pass too), every third byte: refused with nothing left, or it gives a
        // file that decrypts under the new key to the original with that one bit changed.
        let new_top = MasterKey::from_bytes([0x4d; 32]);
        let ropts = RekeyOptions { in_place: false, sync: false, progress: &NoProgress };
        let original = folder(path.parent().unwrap());
        let original: std::collections::BTreeMap<_, _> =
            original.into_iter().filter(|(n, _)| n.ends_with(".onnx") || n.ends_with(".bin")).collect();
        for i in (0..enc.len()).step_by(3) {
            let ctx = format!("{name}, rekey: byte {i}");
            let bit = 1u8 << (i % 8);
            let mut changed = enc.clone();
            changed[i] ^= bit;
            std::fs::write(&enc_path, &changed).unwrap();
            match rekey(&enc_path, &out, &KeySource::Key(top.clone()), &KeySource::Key(new_top.clone()), &ropts) {
                Err(_) => assert!(folder(&out_dir).is_empty(), "{ctx}: refused, but left files behind"),
                Ok(_) => {
                    assert!(!guard.iter().any(|r| r.contains(&i)), "{ctx} (guarded) accepted");
                    let back = dir.path().join("back/model.onnx");
                    decrypt(&out, &back, &KeySource::Key(new_top.clone()), &dopts)
                        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    assert!(one_bit_apart(&folder(back.parent().unwrap()), &original, bit), "{ctx}");
                    std::fs::remove_dir_all(&out_dir).unwrap();
                    std::fs::remove_dir_all(back.parent().unwrap()).unwrap();
                }
            }
        }
        std::fs::write(&enc_path, &enc).unwrap();
    }
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
