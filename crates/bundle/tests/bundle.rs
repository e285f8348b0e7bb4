#![allow(clippy::unwrap_used)] // tests may unwrap
//! Signing and verifying bundles, and every way a bundle or a model can be wrong.

use std::path::Path;

use base64::Engine;
use onnx_protect_bundle::{hash_model, open_bundle, sign, verify, BundleError, Curve, HashType, PrivateKey, PublicKey};
use serde_json::Value;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn model_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("model");
    std::fs::create_dir_all(m.join("sub")).unwrap();
    std::fs::write(m.join("model.onnx"), b"graph").unwrap();
    std::fs::write(m.join("sub/weights.bin"), vec![7u8; 5000]).unwrap();
    std::fs::create_dir_all(m.join(".git")).unwrap();
    std::fs::write(m.join(".git/HEAD"), b"ref").unwrap();
    (d, m)
}

/// The bundle with its statement changed by `f` and signed again by `key` (a forger who has
/// the key can sign anything: these test the statement's own rules).
fn resigned(bundle: &str, key: &PrivateKey, f: impl Fn(&mut Value)) -> String {
    let mut b: Value = serde_json::from_str(bundle).unwrap();
    let payload = b64().decode(b["dsseEnvelope"]["payload"].as_str().unwrap()).unwrap();
    let mut st: Value = serde_json::from_slice(&payload).unwrap();
    f(&mut st);
    let payload = serde_json::to_vec(&st).unwrap();
    let manifest_bundle = {
        // Sign the changed payload the way the crate does.
        use p256::ecdsa::signature::Signer;
        let PrivateKey::P256(k) = key else { panic!() };
        let sig: p256::ecdsa::Signature = k.sign(&onnx_protect_bundle::pae(&payload));
        b["dsseEnvelope"]["payload"] = Value::String(b64().encode(&payload));
        b["dsseEnvelope"]["signatures"][0]["sig"] = Value::String(b64().encode(sig.to_der().as_bytes()));
        b
    };
    manifest_bundle.to_string()
}

fn invalid(e: &BundleError, field: &str) -> bool {
    matches!(e, BundleError::Invalid { field: f, .. } if f.contains(field))
}

#[test]
fn a_directory_and_a_file_sign_and_verify_with_both_curves() {
    let (_d, m) = model_dir();
    for curve in [Curve::P256, Curve::P384] {
        let key = PrivateKey::generate(curve).unwrap();
        let b = sign(&m, &key, None).unwrap();
        let v = verify(&m, &b, &key.public(), None).unwrap();
        assert_eq!(v.resources, 2, "git files are left out");
        let f = m.join("model.onnx");
        let b = sign(&f, &key, None).unwrap();
        assert_eq!(verify(&f, &b, &key.public(), None).unwrap().resources, 1);
        // Keys round-trip through PEM.
        let again = PrivateKey::from_pem(&key.to_pem().unwrap(), "k").unwrap();
        assert_eq!(again.public(), key.public());
        assert_eq!(PublicKey::from_pem(&key.public().to_pem(), "p").unwrap(), key.public());
    }
}

#[test]
fn changed_missing_and_extra_files_are_refused_by_name() {
    let (_d, m) = model_dir();
    let key = PrivateKey::generate(Curve::P256).unwrap();
    let b = sign(&m, &key, None).unwrap();
    let pk = key.public();
    let data = std::fs::read(m.join("sub/weights.bin")).unwrap();
    for i in [0, 1, 2499, 4999] {
        let mut d = data.clone();
        d[i] ^= 1;
        std::fs::write(m.join("sub/weights.bin"), &d).unwrap();
        let e = verify(&m, &b, &pk, None).unwrap_err();
        assert!(matches!(&e, BundleError::Mismatch { changed, .. } if changed == &["sub/weights.bin"]), "{e}");
    }
    std::fs::write(m.join("sub/weights.bin"), &data).unwrap();
    std::fs::write(m.join("extra.txt"), b"x").unwrap();
    let e = verify(&m, &b, &pk, None).unwrap_err();
    assert!(matches!(&e, BundleError::Mismatch { extra, .. } if extra == &["extra.txt"]), "{e}");
    std::fs::remove_file(m.join("extra.txt")).unwrap();
    std::fs::remove_file(m.join("model.onnx")).unwrap();
    let e = verify(&m, &b, &pk, None).unwrap_err();
    assert!(matches!(&e, BundleError::Mismatch { missing, .. } if missing == &["model.onnx"]), "{e}");
    assert!(e.is_verification_failure());
}

/// A model signed as one file: a changed byte names that file, not its path `.` in the
/// bundle.
#[test]
fn a_changed_single_file_is_named() {
    let (_d, m) = model_dir();
    let f = m.join("model.onnx");
    let key = PrivateKey::generate(Curve::P256).unwrap();
    let b = sign(&f, &key, None).unwrap();
    std::fs::write(&f, b"graph!").unwrap();
    let e = verify(&f, &b, &key.public(), None).unwrap_err();
    assert!(matches!(&e, BundleError::Mismatch { changed, .. } if changed == &["model.onnx"]), "{e}");
    assert!(e.to_string().ends_with("changed: model.onnx"), "{e}");
    // The same through verify_model, which also reads a bundle file.
    let bundle = m.join("model.onnx.sig");
    std::fs::write(&bundle, &b).unwrap();
    let e = onnx_protect_bundle::verify_model(&f, &bundle, &key.public()).unwrap_err();
    assert!(matches!(&e, BundleError::Mismatch { changed, .. } if changed == &["model.onnx"]), "{e}");
}

#[test]
fn another_key_is_refused() {
    let (_d, m) = model_dir();
    let key = PrivateKey::generate(Curve::P256).unwrap();
    let other = PrivateKey::generate(Curve::P256).unwrap().public();
    let b = sign(&m, &key, None).unwrap();
    assert!(matches!(verify(&m, &b, &other, None), Err(BundleError::KeyMismatch)));
    // Without the hint, the signature itself decides.
    let mut v: Value = serde_json::from_str(&b).unwrap();
    v["verificationMaterial"]["publicKey"].as_object_mut().unwrap().remove("hint");
    assert!(matches!(verify(&m, &v.to_string(), &other, None), Err(BundleError::BadSignature)));
    assert!(verify(&m, &v.to_string(), &key.public(), None).is_ok());
}

#[test]
fn every_byte_of_the_payload_and_signature_is_authenticated() {
    let (_d, m) = model_dir();
    let key = PrivateKey::generate(Curve::P256).unwrap();
    let b = sign(&m, &key, None).unwrap();
    let v: Value = serde_json::from_str(&b).unwrap();
    for field in ["payload", "sig"] {
        let get = |v: &Value| {
            if field == "payload" {
                v["dsseEnvelope"]["payload"].clone()
            } else {
                v["dsseEnvelope"]["signatures"][0]["sig"].clone()
            }
        };
        let raw = b64().decode(get(&v).as_str().unwrap()).unwrap();
        for i in 0..raw.len() {
            let mut r = raw.clone();
            r[i] ^= 0x01;
            let mut w = v.clone();
            let enc = Value::String(b64().encode(&r));
            if field == "payload" {
                w["dsseEnvelope"]["payload"] = enc;
            } else {
                w["dsseEnvelope"]["signatures"][0]["sig"] = enc;
            }
            let e = verify(&m, &w.to_string(), &key.public(), None).unwrap_err();
            assert!(e.is_verification_failure(), "{field} byte {i}: {e}");
        }
    }
}

#[test]
fn malformed_bundles_are_refused_with_the_field_named() {
    let (_d, m) = model_dir();
    let key = PrivateKey::generate(Curve::P256).unwrap();
    let pk = key.public();
    let b = sign(&m, &key, None).unwrap();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_str(&b).unwrap();
        f(&mut v);
        v.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "bundle"),
        (edit(&|v| v["mediaType"] = "application/other".into()), "mediaType"),
        (edit(&|v| v["dsseEnvelope"]["payloadType"] = "text/plain".into()), "payloadType"),
        (edit(&|v| v["dsseEnvelope"]["payload"] = "***".into()), "payload"),
        (edit(&|v| v["dsseEnvelope"]["signatures"] = Value::Array(vec![])), "signatures"),
        (
            edit(&|v| {
                let s = v["dsseEnvelope"]["signatures"][0].clone();
                v["dsseEnvelope"]["signatures"] = Value::Array(vec![s.clone(), s]);
            }),
            "signatures",
        ),
        (
            edit(&|v| {
                v.as_object_mut().unwrap().remove("dsseEnvelope");
            }),
            "dsseEnvelope",
        ),
    ];
    for (text, field) in cases {
        let e = open_bundle(&text, &pk).unwrap_err();
        assert!(invalid(&e, field), "{field}: {e}");
    }
    // The statement's rules, with a valid signature over the changed statement.
    type Change = Box<dyn Fn(&mut Value)>;
    let st_cases: Vec<(Change, &str)> = vec![
        (Box::new(|s| s["_type"] = "x".into()), "_type"),
        (
            Box::new(|s| {
                s["subject"] = Value::Array(vec![]);
            }),
            "subject",
        ),
        (Box::new(|s| s["subject"][0]["digest"]["sha256"] = "00".repeat(32).into()), "subject.digest"),
        (Box::new(|s| s["predicate"]["resources"][0]["name"] = "../evil".into()), "resources[0].name"),
        (Box::new(|s| s["predicate"]["resources"][0]["name"] = "/etc/passwd".into()), "resources[0].name"),
        (Box::new(|s| s["predicate"]["resources"][0]["digest"] = "abc".into()), "resources[0].digest"),
        (Box::new(|s| s["predicate"]["resources"][0]["algorithm"] = "blake3".into()), "resources[0].algorithm"),
        (Box::new(|s| s["predicate"]["serialization"]["ignore_paths"] = 3.into()), "ignore_paths"),
    ];
    for (f, field) in st_cases {
        let e = open_bundle(&resigned(&b, &key, f), &pk).unwrap_err();
        assert!(invalid(&e, field), "{field}: {e}");
    }
    for (f, what) in [
        (
            Box::new(|s: &mut Value| s["predicateType"] = "https://model_signing/Digests/v0.1".into())
                as Box<dyn Fn(&mut Value)>,
            "predicate",
        ),
        (Box::new(|s: &mut Value| s["predicate"]["serialization"]["method"] = "shards".into()), "shards"),
        (Box::new(|s: &mut Value| s["predicate"]["serialization"]["hash_type"] = "md5".into()), "md5"),
    ] {
        let e = open_bundle(&resigned(&b, &key, f), &pk).unwrap_err();
        assert!(matches!(&e, BundleError::Unsupported(m) if m.contains(what)), "{what}: {e}");
    }
}

#[test]
fn links_special_files_and_bad_keys_are_refused() {
    let (_d, m) = model_dir();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/etc/hostname", m.join("link")).unwrap();
        let e = hash_model(&m, HashType::Sha256, &[]).unwrap_err();
        assert!(matches!(e, BundleError::NotAModelFile { .. }), "{e}");
        std::fs::remove_file(m.join("link")).unwrap();
    }
    for (text, why) in [
        ("", "no PEM"),
        ("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA==\n-----END ENCRYPTED PRIVATE KEY-----\n", "encrypted"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not ECDSA"),
    ] {
        let e = PrivateKey::from_pem(text, "k.pem").err().unwrap();
        assert!(matches!(&e, BundleError::Key { reason, .. } if reason.contains(why)), "{why}: {e}");
    }
    assert!(PublicKey::from_pem("nothing", "p.pem").is_err());
    assert!(Path::new(&m).is_dir());
}
