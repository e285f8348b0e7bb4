#![allow(clippy::unwrap_used)] // tests may unwrap
//! Bundles signed with a certificate chain (tests/data/certs, made by its make.py): the
//! chain is carried and validated; every byte of it is authenticated; untrusted chains,
//! leaves not for signing and leaves issued outside their issuer's validity are refused.

use std::path::{Path, PathBuf};

use base64::Engine;
use onnx_protect_bundle::{
    hash_model, open_bundle_with, sign_manifest_with, BundleError, Certificates, HashType, ModelManifest, PrivateKey,
    Trust,
};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/certs").join(name)
}

fn certs(names: &[&str]) -> Certificates {
    let mut pem = Vec::new();
    for n in names {
        pem.extend(std::fs::read(data(&format!("{n}.pem"))).unwrap());
        pem.extend(b"# text between blocks, as in CA bundles\n");
    }
    Certificates::from_pem(&pem, "test").unwrap()
}

fn key(name: &str) -> PrivateKey {
    PrivateKey::from_pem(&std::fs::read_to_string(data(&format!("{name}.key"))).unwrap(), name).unwrap()
}

fn manifest() -> (tempfile::TempDir, ModelManifest) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    std::fs::write(&model, b"model bytes").unwrap();
    let m = hash_model(&model, HashType::Sha256, &[]).unwrap();
    (dir, m)
}

fn sign(leaf: &str, chain: &[&str]) -> String {
    let (_dir, m) = manifest();
    let mut names = vec![leaf];
    names.extend_from_slice(chain);
    sign_manifest_with(&m, &key(leaf), Some(&certs(&names))).unwrap()
}

fn untrusted(bundle: &str, roots: &[&str]) -> String {
    match open_bundle_with(bundle, Trust::Certificates(&certs(roots))) {
        Err(BundleError::Untrusted(why)) => why,
        other => panic!("expected an untrusted chain, got {other:?}"),
    }
}

#[test]
fn a_chain_to_a_trusted_root_verifies_and_others_are_refused() {
    let bundle = sign("leaf", &["inter"]);
    let v: serde_json::Value = serde_json::from_str(&bundle).unwrap();
    let chain = v["verificationMaterial"]["x509CertificateChain"]["certificates"].as_array().unwrap();
    assert_eq!(chain.len(), 2);
    assert!(v["verificationMaterial"].get("publicKey").is_none());
    open_bundle_with(&bundle, Trust::Certificates(&certs(&["root"]))).unwrap();
    open_bundle_with(&bundle, Trust::Certificates(&certs(&["other-root", "root"]))).unwrap();
    // The leaf's key alone also verifies it (the chain is then not read).
    open_bundle_with(&bundle, Trust::Key(&key("leaf").public())).unwrap();
    assert!(untrusted(&bundle, &["other-root"]).contains("no trusted certificate"));
    // A trusted intermediate alone is not enough: the path must reach a trusted root.
    assert!(untrusted(&bundle, &["inter"]).contains("issued 'CN=inter'"));
    open_bundle_with(&sign("leaf", &[]), Trust::Certificates(&certs(&["inter", "root"]))).unwrap();
    // Without its intermediate; a leaf under another root; the other root in the bundle.
    assert!(untrusted(&sign("leaf", &[]), &["root"]).contains("'CN=inter'"));
    untrusted(&sign("stranger", &[]), &["root"]);
    assert!(untrusted(&sign("stranger", &["other-root"]), &["root"]).contains("not a trusted certificate"));
    // Not for signing; issued before its issuer was valid.
    assert!(untrusted(&sign("encipher", &["inter"]), &["root"]).contains("not for signing"));
    assert!(untrusted(&sign("early", &["inter"]), &["root"]).contains("not valid at the leaf's notBefore"));
}

#[test]
fn every_byte_of_the_chain_is_authenticated() {
    let bundle = sign("leaf", &["inter"]);
    let roots = certs(&["root"]);
    let mut v: serde_json::Value = serde_json::from_str(&bundle).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    for n in 0..2 {
        let at = format!("/verificationMaterial/x509CertificateChain/certificates/{n}/rawBytes");
        let der = b64.decode(v.pointer(&at).unwrap().as_str().unwrap()).unwrap();
        for i in 0..der.len() {
            let mut changed = der.clone();
            changed[i] ^= 0x01;
            *v.pointer_mut(&at).unwrap() = b64.encode(&changed).into();
            let r = open_bundle_with(&v.to_string(), Trust::Certificates(&roots));
            let e = r.expect_err(&format!("certificate {n} byte {i} changed: accepted"));
            assert!(e.is_verification_failure(), "certificate {n} byte {i}: {e}");
        }
        *v.pointer_mut(&at).unwrap() = b64.encode(&der).into();
    }
    open_bundle_with(&v.to_string(), Trust::Certificates(&roots)).unwrap();
}

#[test]
fn unusable_certificates_and_materials_are_refused() {
    let (_dir, m) = manifest();
    // A certificate that is not the signing key's.
    let e = sign_manifest_with(&m, &key("leaf"), Some(&certs(&["stranger"]))).unwrap_err();
    assert!(matches!(e, BundleError::Key { .. }), "{e}");
    // Files without a certificate, or with a broken one.
    assert!(Certificates::from_pem(b"no pem here", "x").is_err());
    let broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert!(Certificates::from_pem(broken, "x").unwrap_err().to_string().contains("certificate 1"));
    // A key-signed bundle checked against certificates; an empty or malformed chain.
    let keyed = onnx_protect_bundle::sign_manifest(&m, &key("leaf")).unwrap();
    let e = open_bundle_with(&keyed, Trust::Certificates(&certs(&["root"]))).unwrap_err();
    assert!(e.to_string().contains("signed with a key"), "{e}");
    let mut v: serde_json::Value = serde_json::from_str(&sign("leaf", &["inter"])).unwrap();
    let at = "/verificationMaterial/x509CertificateChain/certificates";
    for bad in [serde_json::json!([]), serde_json::json!([{"rawBytes": "%%"}]), serde_json::json!({})] {
        *v.pointer_mut(at).unwrap() = bad;
        let e = open_bundle_with(&v.to_string(), Trust::Certificates(&certs(&["root"]))).unwrap_err();
        assert!(matches!(e, BundleError::Invalid { .. }), "{e}");
    }
}
