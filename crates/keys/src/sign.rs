//! Publisher signatures (docs/format.md §10): Ed25519 keys and their text forms.
//!
//! * A signer (public) key is written `onnx-protect-signer1…`: Bech32 (BIP 173) with that
//!   human-readable part over the 32-byte Ed25519 public key.
//! * A signing (secret) key is written `ONNX-PROTECT-SIGNING-KEY-1…`: Bech32, upper case,
//!   over the 32-byte Ed25519 seed. A signing key file holds that line and `#` comments
//!   (`keygen --signing` writes the public key as a comment).

use bech32::{FromBase32, ToBase32, Variant};
use ed25519_dalek::{Signer, SigningKey as DalekSigning, VerifyingKey};
use zeroize::Zeroizing;

use crate::error::KeysError;

/// Human-readable part of a signer (public) key string.
pub const SIGNER_HRP: &str = "onnx-protect-signer";
/// Human-readable part of a signing (secret) key string (written in upper case).
pub const SIGNING_KEY_HRP: &str = "onnx-protect-signing-key-";

/// An Ed25519 signing key. No `Debug`; the seed is wiped on drop (ed25519-dalek's
/// `zeroize` feature).
pub struct SigningKey(DalekSigning);

/// An Ed25519 public key of a publisher.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignerKey(VerifyingKey);

impl std::fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignerKey({})", self.to_text())
    }
}

fn decode(text: &str, hrp: &str, what: &str) -> Result<Zeroizing<Vec<u8>>, KeysError> {
    let bad = |why: &str| KeysError::BadSigningKey(format!("not {what}: {why}"));
    let (got, data, variant) = bech32::decode(text).map_err(|e| bad(&e.to_string()))?;
    if got != hrp {
        return Err(bad(&format!("it starts with '{got}1', expected '{hrp}1'")));
    }
    if variant != Variant::Bech32 {
        return Err(bad("Bech32m encoding, expected Bech32"));
    }
    let bytes = Zeroizing::new(Vec::<u8>::from_base32(&data).map_err(|e| bad(&e.to_string()))?);
    if bytes.len() != 32 {
        return Err(bad(&format!("{} bytes, expected 32", bytes.len())));
    }
    Ok(bytes)
}

impl SigningKey {
    /// A new random signing key.
    pub fn generate() -> Result<SigningKey, KeysError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut())
            .map_err(|e| KeysError::Crypto(onnx_protect_crypto::CryptoError::Rng { reason: e.to_string() }))?;
        Ok(SigningKey(DalekSigning::from_bytes(&seed)))
    }

    /// Parses a signing key file: one `ONNX-PROTECT-SIGNING-KEY-1…` line, blank lines and
    /// `#` comments. Errors never show the key.
    pub fn parse_file(text: &str) -> Result<SigningKey, KeysError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
        let line = lines.next().ok_or_else(|| {
            KeysError::BadSigningKey("no ONNX-PROTECT-SIGNING-KEY-1 line in the signing key file".into())
        })?;
        if lines.next().is_some() {
            return Err(KeysError::BadSigningKey("a signing key file holds exactly one key".into()));
        }
        let lower = Zeroizing::new(line.to_ascii_lowercase());
        let seed = decode(&lower, SIGNING_KEY_HRP, "a signing key (ONNX-PROTECT-SIGNING-KEY-1…)")?;
        let mut arr = Zeroizing::new([0u8; 32]);
        arr.copy_from_slice(&seed);
        Ok(SigningKey(DalekSigning::from_bytes(&arr)))
    }

    /// The key file text: a comment with the public key, then the secret line.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let seed = Zeroizing::new(self.0.to_bytes());
        let secret = bech32::encode(SIGNING_KEY_HRP, seed.to_base32(), Variant::Bech32).unwrap_or_default();
        Zeroizing::new(format!(
            "# onnx-protect signing key (Ed25519); keep it secret\n# public key: {}\n{}\n",
            self.public().to_text(),
            secret.to_ascii_uppercase()
        ))
    }

    /// The matching public key.
    pub fn public(&self) -> SignerKey {
        SignerKey(self.0.verifying_key())
    }

    /// Signs `message` (pure Ed25519, RFC 8032).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

impl SignerKey {
    /// Parses `onnx-protect-signer1…`.
    pub fn parse(text: &str) -> Result<SignerKey, KeysError> {
        let bytes = decode(&text.trim().to_ascii_lowercase(), SIGNER_HRP, "a signer key (onnx-protect-signer1…)")?;
        let mut arr = [0u8; 32];
        arr.copy_from_slice(&bytes);
        SignerKey::from_bytes(&arr)
    }

    /// Parses a file of signer keys: one per line, blank lines and `#` comments ignored.
    /// A signing key file is accepted too (its public key is used).
    pub fn parse_file(text: &str) -> Result<Vec<SignerKey>, KeysError> {
        if text.lines().any(|l| l.trim().to_ascii_uppercase().starts_with("ONNX-PROTECT-SIGNING-KEY-1")) {
            return Ok(vec![SigningKey::parse_file(text)?.public()]);
        }
        let keys: Vec<SignerKey> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(SignerKey::parse)
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            return Err(KeysError::BadSigningKey("no onnx-protect-signer1 key in the file".into()));
        }
        Ok(keys)
    }

    /// A public key from its 32 bytes; refuses encodings that are not a valid point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<SignerKey, KeysError> {
        VerifyingKey::from_bytes(bytes)
            .map(SignerKey)
            .map_err(|_| KeysError::BadSigningKey("not a valid Ed25519 public key".into()))
    }

    /// The 32 bytes stored in a model's `Signature.public_key`.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// `onnx-protect-signer1…`.
    pub fn to_text(&self) -> String {
        bech32::encode(SIGNER_HRP, self.0.to_bytes().to_base32(), Variant::Bech32).unwrap_or_default()
    }

    /// Whether `signature` is this key's signature of `message` (strict verification:
    /// small-order keys and non-canonical signatures are refused).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else { return false };
        self.0.verify_strict(message, &sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_round_trip_through_text() {
        let sk = SigningKey::generate().unwrap();
        let text = sk.to_file_text();
        assert!(text.contains("ONNX-PROTECT-SIGNING-KEY-1"));
        let sk2 = SigningKey::parse_file(&text).unwrap();
        let pk = SignerKey::parse(&sk.public().to_text()).unwrap();
        assert_eq!(pk, sk2.public());
        let sig = sk2.sign(b"message");
        assert!(pk.verify(b"message", &sig));
        assert!(!pk.verify(b"messagf", &sig));
        for i in 0..64 {
            let mut s = sig;
            s[i] ^= 0x01;
            assert!(!pk.verify(b"message", &s), "byte {i}");
        }
        assert!(!pk.verify(b"message", &sig[..63]));
        assert_eq!(SignerKey::parse_file(&text).unwrap(), vec![pk]);
    }

    #[test]
    fn wrong_strings_are_refused_with_a_reason() {
        let pk = SigningKey::generate().unwrap().public().to_text();
        assert!(pk.starts_with("onnx-protect-signer1"));
        let mut typo = pk.clone().into_bytes();
        let n = typo.len();
        typo[n - 3] = if typo[n - 3] == b'q' { b'p' } else { b'q' };
        assert!(SignerKey::parse(std::str::from_utf8(&typo).unwrap()).is_err());
        let age = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        assert!(SignerKey::parse(age).unwrap_err().to_string().contains("expected 'onnx-protect-signer1'"));
        assert!(SigningKey::parse_file("# nothing\n").is_err());
        let e = SigningKey::parse_file("ONNX-PROTECT-SIGNING-KEY-1QQQQ\n").err().unwrap().to_string();
        assert!(!e.contains("QQQQ"), "{e}");
    }
}
