//! OpenSSF model-signing bundles for model files and directories, protected or not.
//!
//! The format is the one the `model-signing` package (sigstore/model-transparency, 1.x)
//! writes and verifies in its key-based flow:
//!
//! * a Sigstore bundle, JSON, media type `application/vnd.dev.sigstore.bundle.v0.3+json`,
//!   whose `verificationMaterial.publicKey.hint` is the SHA-256 (hex) of the signer's public
//!   key in PEM (SubjectPublicKeyInfo, LF line endings), and `tlogEntries` empty;
//! * a DSSE envelope (`dsseEnvelope`): `payloadType` `application/vnd.in-toto+json`, the
//!   payload in base64, one signature: ECDSA (P-256 with SHA-256, P-384 with SHA-384) in
//!   DER, base64, over DSSE's pre-authentication encoding
//!   `"DSSEv1 " len(type) " " type " " len(payload) " " payload`;
//! * the payload: an in-toto Statement v1 with predicate type
//!   `https://model_signing/signature/v1.0`: one subject (the model's name, and the SHA-256
//!   of the resources' digests concatenated in order) and a predicate with the
//!   `serialization` (`method` `files`, `hash_type`, `allow_symlinks`, `ignore_paths`) and
//!   the `resources`: one `{name, algorithm, digest}` per file, sorted by name; a
//!   directory's files by their path relative to it (`/`-separated), a single file as `.`.
//!
//! In the certificate flow, `verificationMaterial.x509CertificateChain` carries the signing
//! certificate and its chain instead of the hint ([`sign_manifest_with`]); a verifier that
//! trusts certificates ([`Trust::Certificates`]) validates that chain (module `cert`) and
//! checks the signature with the signing certificate's key.
//!
//! [`sign`] writes such a bundle; [`verify`] checks one (ours or `model-signing`'s) against
//! a model on disk. Every field of a bundle is hostile input: each refusal is a typed
//! [`BundleError`] naming the field. Curves and signatures come from RustCrypto (`p256`,
//! `p384`, `ecdsa`); nothing here is a primitive of its own.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use onnx_protect_bundle::{sign, verify, Curve, PrivateKey};
//! let dir = tempfile::tempdir()?;
//! let model = dir.path().join("model.onnx");
//! std::fs::write(&model, b"model bytes")?;
//! let key = PrivateKey::generate(Curve::P256)?;
//! let bundle = sign(&model, &key, None)?;
//! let checked = verify(&model, &bundle, &key.public(), None)?;
//! assert_eq!(checked.resources, 1);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod cert;
mod error;
mod keys;
mod manifest;
mod model;

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;

pub use cert::{Certificates, MAX_PATH};
pub use error::BundleError;
pub use keys::{Curve, PrivateKey, PublicKey};
pub use manifest::{
    compare, default_ignored, hash_files, hash_model, relative_inside, HashType, ModelManifest, Resource, GIT_PATHS,
};
pub use model::{
    default_bundle, model_files, model_manifest, sign_model, sign_model_with, verify_model, verify_model_with,
    write_bundle,
};

/// The bundle's media type.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The DSSE payload type.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The in-toto statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The model-signing predicate type this crate reads and writes.
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// Bundles larger than this are refused before they are parsed.
pub const MAX_BUNDLE_BYTES: usize = 64 << 20;

type Result<T, E = BundleError> = std::result::Result<T, E>;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// DSSE's pre-authentication encoding of an in-toto payload.
pub fn pae(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {PAYLOAD_TYPE} {} ", PAYLOAD_TYPE.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// The subject digest of a manifest: SHA-256 over the resources' digests, in order.
fn root_digest(resources: &[Resource]) -> [u8; 32] {
    let mut h = Sha256::new();
    for r in resources {
        h.update(&r.digest);
    }
    h.finalize().into()
}

/// The in-toto statement of a manifest (the bundle's payload).
fn statement(m: &ModelManifest) -> Vec<u8> {
    let resources: Vec<Value> = m
        .resources
        .iter()
        .map(|r| json!({"name": r.name, "algorithm": m.hash.name(), "digest": hex::encode(&r.digest)}))
        .collect();
    let v = json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": m.name, "digest": {"sha256": hex::encode(root_digest(&m.resources))}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": m.hash.name(),
                "allow_symlinks": false,
                "ignore_paths": m.ignore_paths,
            },
            "resources": resources,
        },
    });
    // Serialising a `Value` built here cannot fail.
    serde_json::to_vec_pretty(&v).unwrap_or_default()
}

/// Signs the model at `model` (a file, or a directory and every file under it) with `key`;
/// returns the bundle's JSON text. `bundle_path`, when the bundle will be written inside
/// the model's directory, is left out of the manifest (and recorded in `ignore_paths`).
pub fn sign(model: &Path, key: &PrivateKey, bundle_path: Option<&Path>) -> Result<String> {
    let manifest = hash_model(model, HashType::Sha256, &manifest::default_ignored(model, bundle_path)?)?;
    sign_manifest(&manifest, key)
}

/// Signs an already computed manifest.
pub fn sign_manifest(manifest: &ModelManifest, key: &PrivateKey) -> Result<String> {
    sign_manifest_with(manifest, key, None)
}

/// The field of a bundle that holds its certificate chain.
pub const CHAIN_FIELD: &str = "verificationMaterial.x509CertificateChain.certificates";

/// Signs an already computed manifest; with `chain` (the signing certificate of `key`
/// first, then the certificates that lead to a root), the bundle carries the chain as
/// `model_signing sign certificate` writes it, instead of a public-key hint.
pub fn sign_manifest_with(manifest: &ModelManifest, key: &PrivateKey, chain: Option<&Certificates>) -> Result<String> {
    let material = match chain {
        None => json!({"publicKey": {"hint": key.public().hint()}, "tlogEntries": []}),
        Some(chain) => {
            if chain.leaf_key("the signing certificate")? != key.public() {
                return Err(BundleError::Key {
                    path: "the signing certificate".into(),
                    reason: "its public key is not the private key's".into(),
                });
            }
            let certs: Vec<Value> = chain.to_der_list()?.iter().map(|d| json!({"rawBytes": b64().encode(d)})).collect();
            json!({"x509CertificateChain": {"certificates": certs}, "tlogEntries": []})
        }
    };
    let payload = statement(manifest);
    let sig = key.sign_der(&pae(&payload))?;
    let bundle = json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": {
            "payload": b64().encode(&payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": b64().encode(sig), "keyid": ""}],
        },
    });
    Ok(serde_json::to_string(&bundle).unwrap_or_default())
}

/// What [`verify`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The model's name in the statement (informational: renaming a model keeps its signature).
    pub model_name: String,
    /// Files the signature covers.
    pub resources: usize,
    /// The hash of the files (`sha256` or `blake3`).
    pub hash: HashType,
}

fn field<'a>(v: &'a Value, path: &str) -> Result<&'a Value> {
    let mut at = v;
    for part in path.split('.') {
        at = at.get(part).ok_or_else(|| BundleError::invalid(path, "missing"))?;
    }
    Ok(at)
}

fn text<'a>(v: &'a Value, path: &str) -> Result<&'a str> {
    field(v, path)?.as_str().ok_or_else(|| BundleError::invalid(path, "not a string"))
}

fn base64_field(v: &Value, path: &str) -> Result<Vec<u8>> {
    b64().decode(text(v, path)?).map_err(|e| BundleError::invalid(path, &format!("not base64 ({e})")))
}

/// How a bundle's signer is trusted.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// The signer's public key (model-signing's key flow): the bundle's hint, when present,
    /// must name it; a certificate chain in the bundle is not read.
    Key(&'a PublicKey),
    /// Trusted certificates (model-signing's certificate flow): the bundle's chain must lead
    /// from its signing certificate to one of them ([`Certificates`], module `cert`).
    Certificates(&'a Certificates),
}

/// The certificate chain a bundle carries (leaf first).
fn bundle_chain(bundle: &Value) -> Result<Certificates> {
    let list = bundle.pointer("/verificationMaterial/x509CertificateChain/certificates").ok_or_else(|| {
        let why = if bundle.pointer("/verificationMaterial/publicKey").is_some() {
            "missing (the bundle was signed with a key, not a certificate: verify it with the signer's public key)"
        } else {
            "missing"
        };
        BundleError::invalid(CHAIN_FIELD, why)
    })?;
    let list = list.as_array().ok_or_else(|| BundleError::invalid(CHAIN_FIELD, "not a list"))?;
    if list.is_empty() {
        return Err(BundleError::invalid(CHAIN_FIELD, "empty"));
    }
    let ders = list
        .iter()
        .enumerate()
        .map(|(i, c)| {
            base64_field(c, "rawBytes")
                .map_err(|_| BundleError::invalid(&format!("{CHAIN_FIELD}[{i}].rawBytes"), "missing or not base64"))
        })
        .collect::<Result<Vec<_>>>()?;
    Certificates::from_der_list(&ders, CHAIN_FIELD)
}

/// Checks the bundle's envelope and signature with the trusted signer; returns the signed
/// payload.
fn verified_payload(bundle: &Value, trust: Trust<'_>) -> Result<Vec<u8>> {
    let media = text(bundle, "mediaType")?;
    if media != BUNDLE_MEDIA_TYPE {
        return Err(BundleError::invalid("mediaType", &format!("'{media}', expected '{BUNDLE_MEDIA_TYPE}'")));
    }
    let key = match trust {
        Trust::Key(key) => {
            if let Some(hint) = bundle.pointer("/verificationMaterial/publicKey/hint").and_then(Value::as_str) {
                if hint != key.hint() {
                    return Err(BundleError::KeyMismatch);
                }
            }
            key.clone()
        }
        Trust::Certificates(roots) => cert::validate(&bundle_chain(bundle)?, roots)?,
    };
    let payload_type = text(bundle, "dsseEnvelope.payloadType")?;
    if payload_type != PAYLOAD_TYPE {
        return Err(BundleError::invalid("dsseEnvelope.payloadType", &format!("'{payload_type}'")));
    }
    let payload = base64_field(bundle, "dsseEnvelope.payload")?;
    let sigs = field(bundle, "dsseEnvelope.signatures")?
        .as_array()
        .ok_or_else(|| BundleError::invalid("dsseEnvelope.signatures", "not a list"))?;
    let [sig] = sigs.as_slice() else {
        return Err(BundleError::invalid("dsseEnvelope.signatures", &format!("{} signatures, expected 1", sigs.len())));
    };
    let der = base64_field(sig, "sig")?;
    if !key.verify_der(&pae(&payload), &der) {
        return Err(BundleError::BadSignature);
    }
    Ok(payload)
}

/// The manifest a verified statement holds, after its own consistency checks.
fn signed_manifest(payload: &[u8]) -> Result<(ModelManifest, bool)> {
    let st: Value =
        serde_json::from_slice(payload).map_err(|e| BundleError::invalid("payload", &format!("not JSON ({e})")))?;
    if text(&st, "_type")? != STATEMENT_TYPE {
        return Err(BundleError::invalid("payload._type", "not an in-toto Statement v1"));
    }
    let pt = text(&st, "predicateType")?;
    if pt != PREDICATE_TYPE {
        return Err(BundleError::Unsupported(format!("predicate type '{pt}' (this version reads {PREDICATE_TYPE})")));
    }
    let subjects = field(&st, "subject")?.as_array().ok_or_else(|| BundleError::invalid("subject", "not a list"))?;
    let [subject] = subjects.as_slice() else {
        return Err(BundleError::invalid("subject", &format!("{} subjects, expected 1", subjects.len())));
    };
    let name = text(subject, "name")?.to_string();
    let root = hex::decode(text(subject, "digest.sha256")?)
        .map_err(|_| BundleError::invalid("subject.digest.sha256", "not hex"))?;
    let ser = field(&st, "predicate.serialization")?;
    let method = text(ser, "method")?;
    if method != "files" {
        return Err(BundleError::Unsupported(format!("serialization method '{method}' (this version reads 'files')")));
    }
    let hash = HashType::parse(text(ser, "hash_type")?)?;
    let symlinks = ser.get("allow_symlinks").and_then(Value::as_bool).unwrap_or(false);
    let ignore_paths = match ser.get("ignore_paths") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .ok_or_else(|| BundleError::invalid("predicate.serialization.ignore_paths", "not a list"))?
            .iter()
            .map(|p| p.as_str().map(str::to_string).ok_or_else(|| BundleError::invalid("ignore_paths", "not a string")))
            .collect::<Result<Vec<_>>>()?,
    };
    let list = field(&st, "predicate.resources")?
        .as_array()
        .ok_or_else(|| BundleError::invalid("predicate.resources", "not a list"))?;
    let mut resources = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let at = |f: &str| format!("predicate.resources[{i}].{f}");
        let alg = r
            .get("algorithm")
            .and_then(Value::as_str)
            .ok_or_else(|| BundleError::invalid(&at("algorithm"), "missing"))?;
        if alg != hash.name() {
            return Err(BundleError::invalid(
                &at("algorithm"),
                &format!("'{alg}', the serialization says '{}'", hash.name()),
            ));
        }
        let name = r.get("name").and_then(Value::as_str).ok_or_else(|| BundleError::invalid(&at("name"), "missing"))?;
        manifest::check_resource_name(name).map_err(|why| BundleError::invalid(&at("name"), why))?;
        let digest = r
            .get("digest")
            .and_then(Value::as_str)
            .and_then(|d| hex::decode(d).ok())
            .filter(|d| d.len() == 32)
            .ok_or_else(|| BundleError::invalid(&at("digest"), "not 32 bytes of hex"))?;
        resources.push(Resource { name: name.to_string(), digest });
    }
    if root_digest(&resources).as_slice() != root.as_slice() {
        return Err(BundleError::invalid("subject.digest.sha256", "does not match the resources"));
    }
    Ok((ModelManifest { name, hash, resources, ignore_paths }, symlinks))
}

/// Checks a bundle's signature with the signer's public key and the consistency of the
/// statement it signs; returns the signed manifest (to [`compare`] with the model's files).
pub fn open_bundle(bundle_json: &str, key: &PublicKey) -> Result<ModelManifest> {
    open_bundle_with(bundle_json, Trust::Key(key))
}

/// [`open_bundle`] with a signer trusted by its key or by a certificate chain.
pub fn open_bundle_with(bundle_json: &str, trust: Trust<'_>) -> Result<ModelManifest> {
    if bundle_json.len() > MAX_BUNDLE_BYTES {
        return Err(BundleError::invalid("bundle", "larger than 64 MiB"));
    }
    let bundle: Value =
        serde_json::from_str(bundle_json).map_err(|e| BundleError::invalid("bundle", &format!("not JSON ({e})")))?;
    let payload = verified_payload(&bundle, trust)?;
    Ok(signed_manifest(&payload)?.0)
}

/// Verifies the bundle `bundle_json` for the model at `model` (file or directory) with the
/// signer's public key: the signature over the statement, the statement's consistency,
/// then every file of the model against it (none missing, none extra, none changed).
/// `bundle_path`, when the bundle sits inside the model's directory, is not a model file.
pub fn verify(model: &Path, bundle_json: &str, key: &PublicKey, bundle_path: Option<&Path>) -> Result<Verified> {
    let signed = open_bundle(bundle_json, key)?;
    let mut ignored = signed.ignore_paths.clone();
    if let Some(extra) = manifest::relative_inside(model, bundle_path)? {
        ignored.push(extra);
    }
    let actual = hash_model(model, signed.hash, &ignored)?;
    compare(&signed, &actual)?;
    Ok(Verified { model_name: signed.name, resources: signed.resources.len(), hash: signed.hash })
}
