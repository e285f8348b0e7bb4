//! The key-less repairs of a model with access tiers: every tier still encrypted in
//! the file is unknown to the attacker, tiers restored in the file are plaintext.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::protect::{decrypt_tier, encrypt, protection_view, DecryptOptions, EncryptOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::Model;
use onnx_protect_runtime::attack::{repair, Fill};
use onnx_protect_select::Policy;

fn mlp() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/digits/mlp.onnx")
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Element indices covered by spans of the tiers in `tiers`, by tensor name.
fn covered(model: &Model, tiers: &[u32]) -> BTreeMap<String, Vec<bool>> {
    let p = protection_view(model).unwrap();
    let mut out: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    for t in p.targets.iter().filter(|t| tiers.contains(&t.tier)) {
        let tensor = &model.tensors[t.tensor];
        let mask = out.entry(tensor.name.clone()).or_insert_with(|| vec![false; tensor.nbytes as usize / 4]);
        for &(a, b) in &t.spans {
            for e in a / 4..b.div_ceil(4) {
                mask[e as usize] = true;
            }
        }
    }
    out
}

/// Checks the mean-fill of `protected`: the elements in `unknown` hold the mean of the
/// original's other elements (zero when there are none), every other element is the
/// original's.
fn check_mean_fill(protected: &Model, original: &Model, unknown: &BTreeMap<String, Vec<bool>>) {
    let repaired = repair(protected, Fill::Mean).unwrap();
    let repaired = Model::from_vec(repaired.model, None).unwrap();
    for (name, mask) in unknown {
        let values = |m: &Model| {
            let t = m.tensors.iter().find(|t| &t.name == name).unwrap();
            floats(&m.tensor_bytes(t.id).unwrap())
        };
        let (plain, filled) = (values(original), values(&repaired));
        let clear: Vec<f64> = plain.iter().zip(mask).filter(|(_, &m)| !m).map(|(&v, _)| f64::from(v)).collect();
        // A tensor encrypted whole has no clear mean: it is zero-filled instead.
        let mean = if clear.is_empty() { 0.0 } else { (clear.iter().sum::<f64>() / clear.len() as f64) as f32 };
        for (i, ((&p, &f), &m)) in plain.iter().zip(&filled).zip(mask).enumerate() {
            let want = if m { mean } else { p };
            assert_eq!(f.to_bits(), want.to_bits(), "{name}[{i}]: {f} (encrypted: {m}), want {want}");
        }
    }
}

#[test]
fn mean_fill_of_a_tiered_model_treats_every_encrypted_tier_as_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeySource::key(MasterKey::from_bytes([3; 32]));
    let mut policy = Policy::default();
    // fp ciphertext is finite and weight-like: counted as clear, it would move the mean.
    policy.apply_override("mode", "*=fp").unwrap();
    policy.apply_override("coefficient", "*=0.6").unwrap();
    policy.set_tiers(3).unwrap();
    let enc = dir.path().join("enc.onnx");
    encrypt(&mlp(), &enc, &EncryptTo::key(key.clone()), &EncryptOptions::new(&policy)).unwrap();
    let original = Model::open(mlp()).unwrap();
    let protected = Model::open(&enc).unwrap();
    let p = protection_view(&protected).unwrap();
    let tiers_of = |tensor: usize| p.targets.iter().filter(|t| t.tensor == tensor).count();
    assert!(p.targets.iter().any(|t| tiers_of(t.tensor) >= 2), "no tensor has spans in two tiers");
    check_mean_fill(&protected, &original, &covered(&protected, &[1, 2, 3]));

    // Tier 1 restored in the file: its spans are plaintext, tiers 2 and 3 are unknown.
    let t1 = dir.path().join("t1.onnx");
    let opts = DecryptOptions::default();
    decrypt_tier(&enc, &t1, &key, Some(1), &opts).unwrap();
    let restored = Model::open(&t1).unwrap();
    assert_eq!(protection_view(&restored).unwrap().restored_tiers, 1);
    check_mean_fill(&restored, &original, &covered(&restored, &[2, 3]));
}
