//! `rekey` of tiered models and of the distribution-preserving mode: every tier is
//! re-encrypted under the new tier keys, the positions stay, the old keys stop
//! working, and a key below the top tier is refused without writing anything.

use std::path::{Path, PathBuf};

use onnx_protect_core::error::{CoreError, ErrorKind, UnusableKey};
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::protect::{
    decrypt_tier, decrypt_to_vec, encrypt, protection_view, verify, DecryptOptions, EncryptOptions,
};
use onnx_protect_core::rekey::{rekey, RekeyOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{Model, NoProgress};
use onnx_protect_select::Policy;

use crate::rekey_check::{assert_refused, temp_files};
use crate::util::{dp_policy_file, dp_where_possible, fixture_models, manifest_of, root, run};

fn key(b: u8) -> MasterKey {
    MasterKey::from_bytes([b; 32])
}

fn src(k: &MasterKey) -> KeySource {
    KeySource::key(k.clone())
}

fn to(k: &MasterKey) -> EncryptTo {
    EncryptTo::key(src(k))
}

fn dopts() -> DecryptOptions<'static> {
    DecryptOptions::default()
}

fn eopts(policy: &Policy) -> EncryptOptions<'_> {
    EncryptOptions::new(policy)
}

fn ropts() -> RekeyOptions<'static> {
    RekeyOptions::new(&NoProgress)
}

fn tiered(mode: &str, tiers: u32) -> Policy {
    let mut p = crate::util::half_policy();
    p.apply_override("mode", &format!("*={mode}")).unwrap();
    p.apply_override("coefficient", "*=0.5").unwrap();
    p.set_tiers(tiers).unwrap();
    p
}

/// The element bytes of every tensor of a model, by tensor index.
fn tensor_bytes(path: &Path) -> Vec<Vec<u8>> {
    let m = Model::open(path).unwrap();
    (0..m.tensors.len()).map(|i| m.tensor_bytes(i).map(|b| b.into_owned()).unwrap_or_default()).collect()
}

/// Every key-independent part of the manifest is kept; the data keys, and so every key
/// check value, stanza and MAC, change.
fn assert_positions_kept(before: &Path, after: &Path) {
    let (ma, mb) = (Model::open(before).unwrap(), Model::open(after).unwrap());
    let (pa, pb) = (manifest_of(before), manifest_of(after));
    let (ha, hb) = (&pa.sealed.header, &pb.sealed.header);
    assert_eq!(ha.tensors, hb.tensors, "tensor entries (spans, modes, tiers, stream ids)");
    assert_eq!((ha.tiers, ha.chunk_size, &ha.policy_summary), (hb.tiers, hb.chunk_size, &hb.policy_summary));
    assert_eq!(pa.sealed.envelope.restored_tiers, pb.sealed.envelope.restored_tiers);
    assert_eq!(ha.key_checks.len(), hb.key_checks.len());
    for (a, b) in ha.key_checks.iter().zip(&hb.key_checks) {
        assert_ne!(a, b, "every tier's key check value changes");
    }
    let (ea, eb) = (&pa.sealed.envelope, &pb.sealed.envelope);
    assert_eq!(ea.macs.len(), eb.macs.len());
    for (a, b) in ea.macs.iter().zip(&eb.macs) {
        assert_ne!(a, b, "every tier's MAC is recomputed");
    }
    assert_ne!(ea.content_digest, eb.content_digest, "the content changed under the new keys");
    // The stored bytes of some encrypted span changed. Only ctr/fp spans count: two keys can
    // give a short dp span (a few elements) the same permutation by chance.
    let streamed: Vec<_> = pa.targets.iter().filter(|t| t.mode != onnx_protect_select::Mode::Dp).collect();
    let changed = streamed.iter().any(|t| {
        let (x, y) = (ma.tensor_bytes(t.tensor).unwrap(), mb.tensor_bytes(t.tensor).unwrap());
        t.spans.iter().any(|&(a, b)| x[a as usize..b as usize] != y[a as usize..b as usize])
    });
    assert!(streamed.is_empty() || changed, "no encrypted ctr/fp span changed");
}

/// Library level, over every fixture (external data and varint storage included):
/// dp and fp with three tiers, and dp untiered.
#[test]
fn every_fixture_rekeys_with_tiers_and_the_dp_mode() {
    for (name, policy) in [("dp-3", tiered("dp", 3)), ("fp-3", tiered("fp", 3)), ("dp-1", tiered("dp", 1))] {
        for model in fixture_models() {
            // Format 2 permutes spans of at least 16 elements only.
            let policy =
                if name.starts_with("dp") { dp_where_possible(&model, policy.clone()).0 } else { policy.clone() };
            let dir = tempfile::tempdir().unwrap();
            let (a, b) = (dir.path().join("a").join("model.onnx"), dir.path().join("b").join("model.onnx"));
            encrypt(&model, &a, &to(&key(1)), &eopts(&policy))
                .unwrap_or_else(|e| panic!("{} {name}: {e}", model.display()));
            rekey(&a, &b, &src(&key(1)), &to(&key(2)), &ropts())
                .unwrap_or_else(|e| panic!("{} {name}: {e}", model.display()));
            let what = format!("{} {name}", model.display());
            assert_positions_kept(&a, &b);
            verify(&b, None, &NoProgress).unwrap_or_else(|e| panic!("{what}: {e}"));
            verify(&b, Some(&src(&key(2))), &NoProgress).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(verify(&b, Some(&src(&key(1))), &NoProgress).unwrap_err().kind(), ErrorKind::WrongKey, "{what}");
            let back = dir.path().join("dec").join("model.onnx");
            decrypt_tier(&b, &back, &src(&key(2)), None, &dopts()).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&model).unwrap(), "{what}");
            for f in Model::open(&model).unwrap().external_files.iter() {
                let restored = dir.path().join("dec").join(&f.location);
                assert_eq!(std::fs::read(&restored).unwrap(), std::fs::read(&f.path).unwrap(), "{what} {}", f.location);
            }
        }
    }
}

fn key_path(dir: &Path, name: &str, tier: Option<u32>) -> PathBuf {
    match tier {
        Some(t) => dir.join(format!("{name}.key.tier{t}")),
        None => dir.join(format!("{name}.key")),
    }
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "{args:?}: {out} {err}");
    out
}

/// With the CLI, on cnn_torch with three tiers in fp and in dp: decrypting to each tier
/// with the new derived tier keys gives what the old tier keys gave before the rekey.
#[test]
fn rekey_cli_re_encrypts_every_tier_of_cnn_torch() {
    let model = root().join("fixtures/models/cnn_torch/model.onnx");
    let original = tensor_bytes(&model);
    for mode in ["fp", "dp"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        ok(&["keygen", "-o", &s(&key_path(d, "old", None)), "--tiers", "3"]);
        ok(&["keygen", "-o", &s(&key_path(d, "new", None)), "--tiers", "3"]);
        // The new lower tier keys, derived one way from the new top key.
        for t in 1..3 {
            let out = d.join(format!("derived.key.tier{t}"));
            ok(&[
                "derive-tier-key",
                "--key-file",
                &s(&key_path(d, "new", None)),
                "--from",
                "3",
                "--tier",
                &t.to_string(),
                "-o",
                &s(&out),
            ]);
        }
        let old_tier = |t: u32| key_path(d, "old", (t < 3).then_some(t));
        let new_tier = |t: u32| if t < 3 { d.join(format!("derived.key.tier{t}")) } else { key_path(d, "new", None) };
        let enc = d.join("enc.onnx");
        let mode_arg = if mode == "dp" { s(&dp_policy_file(d)) } else { format!("*={mode}") };
        let how = if mode == "dp" { "--policy" } else { "--mode" };
        ok(&["encrypt", &s(&model), "-o", &s(&enc), "--key-file", &s(&old_tier(3)), "--tiers", "3", how, &mode_arg]);
        let before: Vec<PathBuf> = (1..=3).map(|t| d.join(format!("before{t}.onnx"))).collect();
        for t in 1..=3u32 {
            let b = &before[t as usize - 1];
            ok(&["decrypt", &s(&enc), "-o", &s(b), "--key-file", &s(&old_tier(t)), "--tier", &t.to_string()]);
        }
        let re = d.join("out").join("re.onnx");
        let report = ok(&[
            "rekey",
            &s(&enc),
            "-o",
            &s(&re),
            "--key-file",
            &s(&old_tier(3)),
            "--new-key-file",
            &s(&new_tier(3)),
            "--json",
        ]);
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert_eq!(report["tiers"], 3, "{report}");
        assert_positions_kept(&enc, &re);
        // Every old key, top or lower tier, is now a wrong key.
        for t in 1..=3 {
            let x = d.join("x.onnx");
            assert_refused(&["decrypt", &s(&re), "-o", &s(&x), "--key-file", &s(&old_tier(t))], 4, "wrong key", &x);
        }
        // Each new tier key restores exactly what the old one restored before the rekey.
        for t in 1..=3u32 {
            let after = d.join(format!("after{t}.onnx"));
            ok(&["decrypt", &s(&re), "-o", &s(&after), "--key-file", &s(&new_tier(t)), "--tier", &t.to_string()]);
            let (b, a) = (tensor_bytes(&before[t as usize - 1]), tensor_bytes(&after));
            let m = Model::open(&re).unwrap();
            let p = protection_view(&m).unwrap();
            let mut restored = 0;
            for target in p.targets.iter().filter(|x| x.tier <= t) {
                let i = target.tensor;
                for &(x, y) in &target.spans {
                    let r = x as usize..y as usize;
                    assert_eq!(a[i][r.clone()], b[i][r.clone()], "{mode}: tier-{t} decryption, tensor {i}, [{x}, {y})");
                    assert_eq!(a[i][r.clone()], original[i][r], "{mode}: tier-{t} decryption, tensor {i}, [{x}, {y})");
                    restored += 1;
                }
            }
            assert!(restored > 0, "{mode}: tier {t} restored nothing");
            if t < 3 {
                // The lower-tier result is still protected, and the new top key finishes it.
                let full = d.join(format!("full{t}.onnx"));
                ok(&["decrypt", &s(&after), "-o", &s(&full), "--key-file", &s(&new_tier(3))]);
                assert_eq!(std::fs::read(&full).unwrap(), std::fs::read(&model).unwrap(), "{mode} from tier {t}");
            }
        }
        // The new top key restores the original byte for byte.
        assert_eq!(std::fs::read(d.join("after3.onnx")).unwrap(), std::fs::read(&model).unwrap(), "{mode}");
        ok(&["verify", &s(&re), "--key-file", &s(&new_tier(1))]);
    }
}

#[test]
fn rekey_refuses_a_lower_tier_key_without_writing() {
    let model = root().join("fixtures/models/cnn_torch/model.onnx");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(&["keygen", "-o", &s(&key_path(d, "old", None)), "--tiers", "3"]);
    ok(&["keygen", "-o", &s(&key_path(d, "new", None)), "--tiers", "3"]);
    let enc = d.join("enc.onnx");
    let top = s(&key_path(d, "old", None));
    let dp = s(&dp_policy_file(d));
    ok(&["encrypt", &s(&model), "-o", &s(&enc), "--key-file", &top, "--tiers", "3", "--policy", &dp]);
    let before = std::fs::read(&enc).unwrap();
    let out = d.join("out").join("re.onnx");
    let new = s(&key_path(d, "new", None));
    for t in [1, 2] {
        let low = s(&key_path(d, "old", Some(t)));
        assert_refused(&["rekey", &s(&enc), "-o", &s(&out), "--key-file", &low, "--new-key-file", &new], 4, "", &out);
        let (_, _, err) = run(&["rekey", &s(&enc), "-o", &s(&out), "--key-file", &low, "--new-key-file", &new]);
        assert!(err.contains(&format!("this key is for tier {t} of 3")) && err.contains("top-tier key"), "{err}");
        // In place: the input stays exactly as it was.
        let (code, _, err) = run(&["rekey", &s(&enc), "--in-place", "--key-file", &low, "--new-key-file", &new]);
        assert_eq!(code, 4, "{err}");
        assert_eq!(std::fs::read(&enc).unwrap(), before);
        assert!(temp_files(d).is_empty());
    }
    // An unrelated key is a wrong key, as ever.
    assert_refused(
        &["rekey", &s(&enc), "-o", &s(&out), "--key-file", &new, "--new-key-file", &top],
        4,
        "wrong key",
        &out,
    );
    // The top key works.
    ok(&["rekey", &s(&enc), "-o", &s(&out), "--key-file", &top, "--new-key-file", &new]);
}

/// A model whose tier 1 is decrypted in the file is refused (its restored tier would
/// have to be encrypted again under the new keys: decrypt it whole first), through the
/// library and the CLI, and nothing is written; the top key still restores the original.
#[test]
fn rekey_refuses_a_partially_decrypted_model_without_writing() {
    let model = root().join("fixtures/models/cnn_torch/model.onnx");
    let dir = tempfile::tempdir().unwrap();
    let (enc, t1) = (dir.path().join("e.onnx"), dir.path().join("t1.onnx"));
    let re = dir.path().join("out").join("r.onnx");
    let policy = dp_where_possible(&model, tiered("dp", 3)).0;
    encrypt(&model, &enc, &to(&key(1)), &eopts(&policy)).unwrap();
    let low = key(1).tier_down().tier_down();
    decrypt_tier(&enc, &t1, &src(&low), None, &dopts()).unwrap();
    assert_eq!(protection_view(&Model::open(&t1).unwrap()).unwrap().restored_tiers, 1);
    let before = std::fs::read(&t1).unwrap();
    let e = rekey(&t1, &re, &src(&key(1)), &to(&key(2)), &ropts()).unwrap_err();
    assert!(matches!(e, CoreError::Key(UnusableKey::PartialRekey)), "{e}");
    assert!(!re.exists() && temp_files(&dir.path().join("out")).is_empty());
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (old, new) = (dir.path().join("old.key"), dir.path().join("new.key"));
    std::fs::write(&old, format!("{}\n", "01".repeat(32))).unwrap();
    std::fs::write(&new, format!("{}\n", "02".repeat(32))).unwrap();
    let args = ["rekey", &s(&t1), "-o", &s(&re), "--key-file", &s(&old), "--new-key-file", &s(&new)];
    assert_refused(&args, 4, "decrypt it whole first", &re);
    let (code, _, err) = run(&["rekey", &s(&t1), "--in-place", "--key-file", &s(&old), "--new-key-file", &s(&new)]);
    assert_eq!(code, 4, "{err}");
    assert_eq!(std::fs::read(&t1).unwrap(), before, "the input is unchanged");
    assert!(temp_files(dir.path()).is_empty());
    // The top key finishes the partial decryption: the original, which encrypts again.
    let m = Model::open(&t1).unwrap();
    assert_eq!(decrypt_to_vec(&m, &src(&key(1))).unwrap(), std::fs::read(&model).unwrap());
    verify(&t1, Some(&src(&key(1))), &NoProgress).unwrap();
}
