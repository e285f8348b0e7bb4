//! The label lock of format 2 (`encrypt --lock-outputs`, docs/format.md §15): every
//! decryption with the key (to a file, into memory) gives back the original bytes, with
//! the weights encrypted or in clear, tiered or not, after `rekey`; a partial decryption
//! keeps it; a model that cannot be locked is refused with what was found and no output;
//! every byte of the manifest and of the locked tensors is authenticated.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};

use onnx_protect_core::error::{CoreError, ErrorKind};
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::lock::LockOutputs;
use onnx_protect_core::memory::InMemory;
use onnx_protect_core::protect::{decrypt, decrypt_tier, encrypt, DecryptOptions, EncryptOptions};
use onnx_protect_core::rekey::{rekey, RekeyOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{Model, NoProgress};
use onnx_protect_select::Policy;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn key(b: u8) -> KeySource {
    KeySource::key(MasterKey::from_bytes([b; 32]))
}

fn policy(overrides: &[(&str, &str)]) -> Policy {
    let mut p = Policy::default();
    for (k, v) in overrides {
        p.apply_override(k, v).unwrap();
    }
    p
}

/// Copies a model (with its side files) into `dir`.
fn copy_model(src: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(src.parent().unwrap()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let n = name.to_string_lossy();
        if e.path() == src
            || (!n.ends_with(".onnx") && !n.ends_with(".npy") && !n.ends_with(".npz") && !n.ends_with(".py"))
        {
            std::fs::copy(e.path(), dir.join(&name)).unwrap();
        }
    }
    dir.join(src.file_name().unwrap())
}

fn lock_encrypt(
    plain: &Path,
    out: &Path,
    p: &Policy,
    k: &KeySource,
    only: bool,
) -> onnx_protect_core::lock::LockReport {
    let lock = LockOutputs { only, ..Default::default() };
    let opts = EncryptOptions { lock: Some(&lock), allow_empty: true, ..EncryptOptions::new(p) };
    encrypt(plain, out, &EncryptTo::key(k.clone()), &opts).unwrap().lock.unwrap()
}

/// The classifiers of fixtures/digits and fixtures/zoo, and the lock cases of every storage.
fn models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ["mlp", "cnn", "convmixer", "vit"]
        .iter()
        .map(|m| root().join("fixtures/digits").join(format!("{m}.onnx")))
        .collect();
    for m in ["vowels/lstm", "vowels/gru", "osuleaf/conv1d", "families/digits-resnet", "families/vowels-transformer"] {
        v.push(root().join("fixtures/zoo").join(format!("{m}.onnx")));
    }
    for c in [
        "external_data",
        "float_data",
        "double_data",
        "fp16_raw_and_int32_data",
        "dq_int8_per_class",
        "qdq_uint8_bias_int32",
    ] {
        v.push(root().join("fixtures/lock").join(c).join("model.onnx"));
    }
    v
}

#[test]
fn every_decryption_gives_back_the_original_bytes() {
    let k = key(7);
    for src in models() {
        let dir = tempfile::tempdir().unwrap();
        let plain = copy_model(&src, &dir.path().join("plain"));
        let original = std::fs::read(&plain).unwrap();
        for (label, p, only) in [
            ("weights and labels", Policy::default(), false),
            ("labels alone", Policy::default(), true),
            ("fp mode", policy(&[("mode", "*=fp")]), false),
        ] {
            let out = dir.path().join(format!("enc-{only}-{}", label.len())).join("m.onnx");
            let report = lock_encrypt(&plain, &out, &p, &k, only);
            assert!(report.classes >= 3, "{}", src.display());
            if only {
                // The locked tensors are stored in another order, in clear.
                let (a, b) = (Model::open(&plain).unwrap(), Model::open(&out).unwrap());
                for name in &report.tensors {
                    let x = a.tensors.iter().find(|t| &t.name == name).unwrap();
                    let y = b.tensors.iter().find(|t| &t.name == name).unwrap();
                    assert_ne!(a.tensor_bytes(x.id).unwrap(), b.tensor_bytes(y.id).unwrap(), "{name}");
                }
            }
            let back = dir.path().join(format!("dec-{only}-{}", label.len())).join("m.onnx");
            decrypt(&out, &back, &k, &DecryptOptions::default()).unwrap();
            assert_eq!(std::fs::read(&back).unwrap(), original, "{} {label}", src.display());
            let m = InMemory::file(&out, &k).load().unwrap();
            assert_eq!(&m[..], &original[..], "{} {label} in memory", src.display());
            for f in &Model::open(&plain).unwrap().external_files {
                assert_eq!(&m.external()[&f.location][..], &std::fs::read(&f.path).unwrap()[..]);
                assert_eq!(std::fs::read(back.with_file_name(&f.location)).unwrap(), std::fs::read(&f.path).unwrap());
            }
        }
    }
}

#[test]
fn labels_alone_change_only_the_output_layer_and_encrypt_no_weight() {
    let dir = tempfile::tempdir().unwrap();
    let plain = root().join("fixtures/digits/mlp.onnx");
    let out = dir.path().join("l.onnx");
    let report = lock_encrypt(&plain, &out, &Policy::default(), &key(1), true);
    assert!(report.only);
    let (a, b) = (Model::open(&plain).unwrap(), Model::open(&out).unwrap());
    let info = onnx_protect_core::protect::protection_info(&b).unwrap().unwrap();
    assert_eq!(info.encrypted_bytes, 0);
    assert_eq!(info.label_lock.as_ref().unwrap().tensors, report.tensors);
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        let same = a.tensor_bytes(x.id).unwrap() == b.tensor_bytes(y.id).unwrap();
        assert_eq!(same, !report.tensors.contains(&x.name), "{}", x.name);
    }
}

#[test]
fn a_partial_decryption_keeps_the_lock_and_the_full_one_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let plain = root().join("fixtures/digits/cnn.onnx");
    let k = key(3);
    let out = dir.path().join("t.onnx");
    let mut p = policy(&[("mode", "*=fp")]);
    p.set_tiers(2).unwrap();
    lock_encrypt(&plain, &out, &p, &k, false);
    let partial = dir.path().join("p.onnx");
    decrypt_tier(&out, &partial, &k, Some(1), &DecryptOptions::default()).unwrap();
    let info = onnx_protect_core::protect::protection_info(&Model::open(&partial).unwrap()).unwrap().unwrap();
    assert!(info.label_lock.is_some() && info.restored_tiers == 1);
    let full = dir.path().join("f.onnx");
    decrypt(&partial, &full, &k, &DecryptOptions::default()).unwrap();
    assert_eq!(std::fs::read(full).unwrap(), std::fs::read(&plain).unwrap());
}

#[test]
fn rekey_seals_the_seed_again_and_the_new_key_unlocks() {
    let dir = tempfile::tempdir().unwrap();
    let plain = root().join("fixtures/digits/mlp.onnx");
    let out = dir.path().join("l.onnx");
    lock_encrypt(&plain, &out, &Policy::default(), &key(1), true);
    let again = dir.path().join("r.onnx");
    let opts = RekeyOptions::new(&NoProgress);
    rekey(&out, &again, &key(1), &EncryptTo::key(key(2)), &opts).unwrap();
    let back = dir.path().join("d.onnx");
    assert!(matches!(decrypt(&again, &back, &key(1), &DecryptOptions::default()), Err(CoreError::WrongKey)));
    decrypt(&again, &back, &key(2), &DecryptOptions::default()).unwrap();
    assert_eq!(std::fs::read(back).unwrap(), std::fs::read(&plain).unwrap());
}

#[test]
fn a_model_that_cannot_be_locked_is_refused_with_what_was_found_and_no_output() {
    for (case, found) in [
        ("no_head_conv", "Conv"),
        ("two_heads", "output layers could be locked"),
        ("two_classes", "2"),
        ("scores_feed_mul", "Mul"),
        ("argmax_axis0", "ArgMax"),
        ("int32_data_unpacked", "packed"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let plain = root().join("fixtures/lock").join(case).join("model.onnx");
        let out = dir.path().join("o.onnx");
        let lock = LockOutputs { only: true, ..Default::default() };
        let p = Policy::default();
        let opts = EncryptOptions { lock: Some(&lock), ..EncryptOptions::new(&p) };
        let e = encrypt(&plain, &out, &EncryptTo::key(key(1)), &opts).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CoreError::Lock(_)) && e.kind() == ErrorKind::Policy, "{case}: {msg}");
        assert!(msg.contains(found) && !msg.contains('\n'), "{case}: {msg}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{case}: an output was left");
    }
}

fn refused(e: &CoreError) -> bool {
    matches!(e.kind(), ErrorKind::Modified | ErrorKind::BadManifest | ErrorKind::NotProtected | ErrorKind::Model(_))
}

#[test]
fn every_byte_of_the_manifest_and_of_the_locked_tensors_is_authenticated() {
    let dir = tempfile::tempdir().unwrap();
    let plain = root().join("fixtures/digits/mlp.onnx");
    let out = dir.path().join("l.onnx");
    lock_encrypt(&plain, &out, &Policy::default(), &key(1), true);
    let bytes = std::fs::read(&out).unwrap();
    let m = Model::open(&out).unwrap();
    let entry = m.metadata.iter().find(|e| e.key == "onnx-protect/v2").unwrap().range.clone();
    let mut positions: Vec<usize> = (entry.start as usize..entry.end as usize).collect();
    let (range, value) = onnx_protect_core::format2::envelope::trailing_entry(m.bytes()).unwrap();
    let sealed = onnx_protect_core::format2::envelope::parse_entry(value, range).unwrap();
    let lock = onnx_protect_core::lock::read(&m, &sealed.header).unwrap().unwrap();
    for &(t, _) in &lock.tensors {
        for (range, _) in m.tensors[t].file_pieces(0, m.tensors[t].nbytes) {
            positions.extend((range.start as usize..range.end as usize).step_by(7));
        }
    }
    drop(m);
    let probe = dir.path().join("probe.onnx");
    let back = dir.path().join("back.onnx");
    for i in positions {
        let mut b = bytes.clone();
        b[i] ^= 0x20;
        std::fs::write(&probe, &b).unwrap();
        let e = decrypt(&probe, &back, &key(1), &DecryptOptions::default()).unwrap_err();
        assert!(refused(&e), "byte {i}: {e}");
        assert!(!back.exists(), "byte {i}: an output was left");
        assert!(InMemory::file(&probe, &key(1)).load().is_err(), "byte {i} in memory");
    }
}
