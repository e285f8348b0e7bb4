//! The fingerprint key, recipient IDs and the keyed ±1 patterns (docs/tracing.md §2).
//!
//! `PRK = HKDF-Extract-SHA256(salt = "onnx-protect/v1/fingerprint-salt", fingerprint key)`;
//! the pattern of recipient `R` over the tensor named `N` is the AES-256-CTR keystream
//! (zero initial counter block) under `HKDF-Expand(PRK, info, 32)` with
//! `info = "onnx-protect/v1/fingerprint-pattern" || u32be(len R) || R || u32be(len N) || N`.
//! Element `j` takes bit `j mod 8` (least significant first) of keystream byte `j div 8`:
//! `+1` for a set bit, `−1` for a clear one.

use onnx_protect_crypto::{KeyFile, KeySchedule, MasterKey};

use crate::error::{Result, TraceError};

/// HKDF salt of the fingerprint key schedule.
pub const FINGERPRINT_SALT: &[u8] = b"onnx-protect/v1/fingerprint-salt";
/// HKDF info label of a recipient's pattern over one tensor.
pub const PATTERN_LABEL: &[u8] = b"onnx-protect/v1/fingerprint-pattern";
/// Longest recipient ID, in bytes.
pub const MAX_RECIPIENT_ID_LEN: usize = 128;

/// The publisher's fingerprint secret: a 256-bit key, kept by the publisher only.
///
/// Invariants: the key schedule is wiped on drop (by [`KeySchedule`]); there is no
/// `Debug`, and only the key's public 8-byte fingerprint ([`FingerprintKey::key_id`]) is
/// ever shown.
pub struct FingerprintKey {
    schedule: KeySchedule,
    id: [u8; 8],
}

impl FingerprintKey {
    /// The fingerprint key of a 256-bit key.
    pub fn new(key: &MasterKey) -> FingerprintKey {
        FingerprintKey { schedule: KeySchedule::new(key, FINGERPRINT_SALT), id: key.fingerprint() }
    }

    /// The key of a key file (`keygen`); a tier key is refused.
    pub fn from_key_file(file: KeyFile) -> Result<FingerprintKey> {
        let key = file.into_master().map_err(TraceError::Key)?;
        Ok(FingerprintKey::new(&key))
    }

    /// The key's public fingerprint (16 hex digits), as `keygen` prints it and the ledger
    /// records it. It identifies the key; it does not reveal it.
    pub fn key_id(&self) -> String {
        hex::encode(self.id)
    }

    /// The pattern of `recipient` over `len` elements of the tensor named `tensor`.
    pub fn pattern(&self, recipient: &RecipientId, tensor: &str, len: usize) -> Result<Pattern> {
        let (r, n) = (recipient.as_str().as_bytes(), tensor.as_bytes());
        let len32 = |b: &[u8]| u32::try_from(b.len()).map(u32::to_be_bytes);
        let (rl, nl) = match (len32(r), len32(n)) {
            (Ok(rl), Ok(nl)) => (rl, nl),
            _ => return Err(TraceError::Parameter(format!("tensor name of {} bytes is too long", n.len()))),
        };
        let stream = self.schedule.keystream(&[PATTERN_LABEL, &rl, r, &nl, n]);
        let mut bits = vec![0u8; len.div_ceil(8)];
        stream.fill(0, &mut bits).map_err(TraceError::Key)?;
        Ok(Pattern { bits, len })
    }
}

/// A recipient ID: 1 to [`MAX_RECIPIENT_ID_LEN`] characters from `A–Z a–z 0–9 . _ - @ + :`
/// (a customer number, an e-mail address, a licence ID).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecipientId(String);

impl RecipientId {
    /// Checks and wraps `id`.
    pub fn new(id: &str) -> Result<RecipientId> {
        let bad = |reason| Err(TraceError::RecipientId { id: id.chars().take(160).collect(), reason });
        if id.is_empty() {
            return bad("it is empty");
        }
        if id.len() > MAX_RECIPIENT_ID_LEN {
            return bad("it is longer than 128 bytes");
        }
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_@+:".contains(&b)) {
            return bad("only A-Z a-z 0-9 . _ - @ + : are allowed");
        }
        Ok(RecipientId(id.to_string()))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RecipientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A ±1 pattern over the elements of one tensor, one bit per element.
pub struct Pattern {
    bits: Vec<u8>,
    len: usize,
}

impl Pattern {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the pattern covers no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sign of element `j` (`+1.0` or `−1.0`); `j` must be below [`Pattern::len`].
    pub fn sign(&self, j: usize) -> f64 {
        if self.bits[j / 8] >> (j % 8) & 1 == 1 {
            1.0
        } else {
            -1.0
        }
    }

    /// `Σ values[j] · sign(j)` over the first `min(len, values.len())` elements.
    pub fn dot(&self, values: &[f64]) -> f64 {
        let mut sum = 0.0;
        for (chunk, &byte) in values.chunks(8).zip(&self.bits) {
            for (k, v) in chunk.iter().enumerate() {
                if byte >> k & 1 == 1 {
                    sum += v;
                } else {
                    sum -= v;
                }
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> FingerprintKey {
        FingerprintKey::new(&MasterKey::from_bytes([b; 32]))
    }

    #[test]
    fn recipient_ids_are_checked() {
        for ok in ["alice", "a", "customer-0042", "bob@example.org", "lic:7+x_y.z"] {
            assert!(RecipientId::new(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(129);
        for bad in ["", " alice", "alice bob", "a/b", "é", "a\n", long.as_str()] {
            assert!(matches!(RecipientId::new(bad), Err(TraceError::RecipientId { .. })), "{bad:?}");
        }
    }

    #[test]
    fn patterns_depend_on_key_recipient_and_tensor_only() {
        let (a, b) = (RecipientId::new("a").unwrap(), RecipientId::new("b").unwrap());
        let p = |k: &FingerprintKey, r: &RecipientId, t: &str| k.pattern(r, t, 1000).unwrap().bits;
        assert_eq!(p(&key(1), &a, "w"), p(&key(1), &a, "w"));
        assert_ne!(p(&key(1), &a, "w"), p(&key(2), &a, "w"));
        assert_ne!(p(&key(1), &a, "w"), p(&key(1), &b, "w"));
        assert_ne!(p(&key(1), &a, "w"), p(&key(1), &a, "v"));
        // The length prefixes keep (ID "ab", tensor "c") apart from (ID "a", tensor "bc").
        let ab = RecipientId::new("ab").unwrap();
        assert_ne!(p(&key(1), &ab, "c"), p(&key(1), &a, "bc"));
        // A longer pattern starts with the shorter one.
        let short = key(1).pattern(&a, "w", 13).unwrap();
        let long = key(1).pattern(&a, "w", 1000).unwrap();
        assert_eq!(short.bits.len(), 2);
        assert!((0..13).all(|j| short.sign(j) == long.sign(j)));
    }

    #[test]
    fn pattern_signs_are_balanced_and_dot_agrees_with_sign() {
        let p = key(3).pattern(&RecipientId::new("r").unwrap(), "t", 100_001).unwrap();
        let plus = (0..p.len()).filter(|&j| p.sign(j) > 0.0).count() as f64;
        // 100,001 fair coins: the count of +1 is within 5 standard deviations (158) of half.
        assert!((plus - 50_000.5).abs() < 5.0 * 158.2, "{plus}");
        let values: Vec<f64> = (0..p.len()).map(|j| (j % 7) as f64 - 3.0).collect();
        let direct: f64 = values.iter().enumerate().map(|(j, v)| v * p.sign(j)).sum();
        assert_eq!(p.dot(&values), direct);
        assert_eq!(p.dot(&values[..5]), (0..5).map(|j| values[j] * p.sign(j)).sum::<f64>());
    }

    #[test]
    fn the_key_id_is_the_key_fingerprint() {
        let m = MasterKey::from_bytes([9; 32]);
        assert_eq!(FingerprintKey::new(&m).key_id(), hex::encode(m.fingerprint()));
    }
}
