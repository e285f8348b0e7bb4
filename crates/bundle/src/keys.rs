//! ECDSA keys in PEM: P-256 with SHA-256 and P-384 with SHA-384 (RustCrypto `p256`,
//! `p384`), as model-signing's key flow uses them.

use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use sha2::{Digest, Sha256};

use crate::error::BundleError;

/// The curves this crate signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    pub fn parse(s: &str) -> Option<Curve> {
        match s {
            "p256" | "P-256" | "prime256v1" | "secp256r1" => Some(Curve::P256),
            "p384" | "P-384" | "secp384r1" => Some(Curve::P384),
            _ => None,
        }
    }
}

/// An ECDSA signing key.
#[derive(Clone)]
pub enum PrivateKey {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

/// An ECDSA verifying key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

fn key_error(path: &str, reason: impl Into<String>) -> BundleError {
    BundleError::Key { path: path.to_string(), reason: reason.into() }
}

/// The base64 body of the first PEM block labelled `label`, as one PEM text.
fn pem_block(text: &str, label: &str) -> Option<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let a = text.find(&begin)?;
    let b = text[a..].find(&end)? + a + end.len();
    Some(text[a..b].to_string())
}

impl PrivateKey {
    /// A new random key.
    pub fn generate(curve: Curve) -> Result<PrivateKey, BundleError> {
        // A scalar from 48 random bytes reduced by the curve's own constructor: retried on
        // the (negligible) out-of-range draws.
        for _ in 0..64 {
            let mut bytes = [0u8; 48];
            getrandom::getrandom(&mut bytes).map_err(|e| key_error("random", e.to_string()))?;
            let key = match curve {
                Curve::P256 => p256::ecdsa::SigningKey::from_slice(&bytes[..32]).ok().map(PrivateKey::P256),
                Curve::P384 => p384::ecdsa::SigningKey::from_slice(&bytes).ok().map(PrivateKey::P384),
            };
            if let Some(k) = key {
                return Ok(k);
            }
        }
        Err(key_error("random", "no valid scalar drawn"))
    }

    /// Parses a private key in PEM: PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`, as
    /// `openssl ecparam -genkey` writes it). `name` is used in errors.
    pub fn from_pem(text: &str, name: &str) -> Result<PrivateKey, BundleError> {
        if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(key_error(
                name,
                "an encrypted private key; decrypt it first (openssl pkey -in KEY -out PLAIN)",
            ));
        }
        if let Some(block) = pem_block(text, "PRIVATE KEY") {
            if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(&block) {
                return Ok(PrivateKey::P256(k));
            }
            if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_pem(&block) {
                return Ok(PrivateKey::P384(k));
            }
            return Err(key_error(name, "a PKCS#8 key that is not ECDSA P-256 or P-384"));
        }
        if let Some(block) = pem_block(text, "EC PRIVATE KEY") {
            use p256::elliptic_curve::SecretKey;
            if let Ok(k) = SecretKey::<p256::NistP256>::from_sec1_pem(&block) {
                return Ok(PrivateKey::P256(k.into()));
            }
            if let Ok(k) = SecretKey::<p384::NistP384>::from_sec1_pem(&block) {
                return Ok(PrivateKey::P384(k.into()));
            }
            return Err(key_error(name, "an EC private key that is not on P-256 or P-384"));
        }
        Err(key_error(name, "no PEM private key (-----BEGIN PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----)"))
    }

    /// The key in PKCS#8 PEM.
    pub fn to_pem(&self) -> Result<zeroize::Zeroizing<String>, BundleError> {
        let pem = match self {
            PrivateKey::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
            PrivateKey::P384(k) => k.to_pkcs8_pem(LineEnding::LF),
        };
        pem.map_err(|e| key_error("key", e.to_string()))
    }

    pub fn public(&self) -> PublicKey {
        match self {
            PrivateKey::P256(k) => PublicKey::P256(*k.verifying_key()),
            PrivateKey::P384(k) => PublicKey::P384(*k.verifying_key()),
        }
    }

    pub fn curve(&self) -> Curve {
        match self {
            PrivateKey::P256(_) => Curve::P256,
            PrivateKey::P384(_) => Curve::P384,
        }
    }

    /// The DER signature of `msg` (ECDSA with the curve's hash, RFC 6979 nonces).
    pub(crate) fn sign_der(&self, msg: &[u8]) -> Result<Vec<u8>, BundleError> {
        use p256::ecdsa::signature::Signer;
        Ok(match self {
            PrivateKey::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign(msg);
                s.to_der().as_bytes().to_vec()
            }
            PrivateKey::P384(k) => {
                let s: p384::ecdsa::Signature = k.sign(msg);
                s.to_der().as_bytes().to_vec()
            }
        })
    }
}

impl PublicKey {
    /// Parses a public key in PEM (`PUBLIC KEY`, SubjectPublicKeyInfo).
    pub fn from_pem(text: &str, name: &str) -> Result<PublicKey, BundleError> {
        let block = pem_block(text, "PUBLIC KEY")
            .ok_or_else(|| key_error(name, "no PEM public key (-----BEGIN PUBLIC KEY-----)"))?;
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(&block) {
            return Ok(PublicKey::P256(k));
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(&block) {
            return Ok(PublicKey::P384(k));
        }
        Err(key_error(name, "a public key that is not ECDSA P-256 or P-384"))
    }

    /// A key from its SubjectPublicKeyInfo in DER (a certificate's key); `None` when it is
    /// not ECDSA P-256 or P-384.
    pub fn from_spki_der(der: &[u8]) -> Option<PublicKey> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Some(PublicKey::P256(k));
        }
        p384::ecdsa::VerifyingKey::from_public_key_der(der).ok().map(PublicKey::P384)
    }

    /// Whether `der` is this key's ECDSA signature of the digest `prehash` (a certificate's
    /// signature, whose hash the certificate names).
    pub(crate) fn verify_prehash_der(&self, prehash: &[u8], der: &[u8]) -> bool {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        match self {
            PublicKey::P256(k) => p256::ecdsa::Signature::from_der(der).is_ok_and(|s| {
                let s = s.normalize_s().unwrap_or(s);
                k.verify_prehash(prehash, &s).is_ok()
            }),
            PublicKey::P384(k) => p384::ecdsa::Signature::from_der(der).is_ok_and(|s| {
                let s = s.normalize_s().unwrap_or(s);
                k.verify_prehash(prehash, &s).is_ok()
            }),
        }
    }

    /// The key in PEM (SubjectPublicKeyInfo, LF line endings, a final newline).
    pub fn to_pem(&self) -> String {
        let pem = match self {
            PublicKey::P256(k) => k.to_public_key_pem(LineEnding::LF),
            PublicKey::P384(k) => k.to_public_key_pem(LineEnding::LF),
        };
        pem.unwrap_or_default()
    }

    /// The bundle's public-key hint: the SHA-256 (hex) of [`PublicKey::to_pem`].
    pub fn hint(&self) -> String {
        hex::encode(Sha256::digest(self.to_pem().as_bytes()))
    }

    /// Whether `der` is this key's ECDSA signature of `msg` (the curve's hash; high `s`
    /// accepted, as OpenSSL does).
    pub(crate) fn verify_der(&self, msg: &[u8], der: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier;
        match self {
            PublicKey::P256(k) => p256::ecdsa::Signature::from_der(der).is_ok_and(|s| {
                let s = s.normalize_s().unwrap_or(s);
                k.verify(msg, &s).is_ok()
            }),
            PublicKey::P384(k) => p384::ecdsa::Signature::from_der(der).is_ok_and(|s| {
                let s = s.normalize_s().unwrap_or(s);
                k.verify(msg, &s).is_ok()
            }),
        }
    }
}
