//! The fingerprint secret, recipient IDs and the keyed ±1 patterns (docs/tracing.md §1).
//!
//! A fingerprint secret file is text (at most [`MAX_SECRET_FILE_LEN`] bytes): lines that
//! are empty or start with `#` are comments, and exactly one line is
//! `onnx-protect-fingerprint-secret-v1 <64 hex digits>` (surrounding spaces, tabs and a
//! `\r` are ignored). It is deliberately not a key file: a decryption key given to a
//! recipient can never be taken for the secret that marks their copy.
//!
//! `PRK = HKDF-Extract-SHA256(salt = "onnx-protect/v1/fingerprint-salt", fingerprint key)`;
//! the pattern of recipient `R` over the tensor named `N` is the AES-256-CTR keystream
//! (zero initial counter block) under `HKDF-Expand(PRK, info, 32)` with
//! `info = "onnx-protect/v1/fingerprint-pattern" || u32be(len R) || R || u32be(len N) || N`,
//! followed by `u32be(v)` for a variant `v > 0` (variant 0 has no suffix).
//! Element `j` takes bit `j mod 8` (least significant first) of keystream byte `j div 8`:
//! `+1` for a set bit, `−1` for a clear one.

use onnx_protect_crypto::{KeySchedule, MasterKey};
use zeroize::Zeroizing;

use crate::error::{Result, TraceError};

/// HKDF salt of the fingerprint key schedule.
pub const FINGERPRINT_SALT: &[u8] = b"onnx-protect/v1/fingerprint-salt";
/// HKDF info label of a recipient's pattern over one tensor.
pub const PATTERN_LABEL: &[u8] = b"onnx-protect/v1/fingerprint-pattern";
/// HKDF info label of a recipient's label-lock seed (docs/tracing.md §7).
pub const LOCK_SEED_LABEL: &[u8] = b"onnx-protect/v1/fingerprint-lock-seed";
/// The first token of a fingerprint secret line.
pub const SECRET_LINE_TAG: &str = "onnx-protect-fingerprint-secret-v1";
/// Largest fingerprint secret file read, in bytes.
pub const MAX_SECRET_FILE_LEN: usize = 4096;
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

    /// A fresh secret from the operating system's random number generator.
    pub fn generate() -> Result<(FingerprintKey, Zeroizing<String>)> {
        let key = MasterKey::generate().map_err(TraceError::Key)?;
        let fp = FingerprintKey::new(&key);
        let text = format!(
            "# onnx-protect fingerprint secret (key id {}). Keep it secret: whoever holds it can\n\
             # find and remove recipients' fingerprints. Never give it to a recipient.\n{SECRET_LINE_TAG} {}\n",
            fp.key_id(),
            key.to_hex().as_str()
        );
        Ok((fp, Zeroizing::new(text)))
    }

    /// Parses the text of a fingerprint secret file (module docs). `what` names the file
    /// in errors, which never show its bytes.
    pub fn parse(contents: &[u8], what: &str) -> Result<FingerprintKey> {
        let bad = |reason: &str| Err(TraceError::Secret { what: what.to_string(), reason: reason.to_string() });
        if contents.len() > MAX_SECRET_FILE_LEN {
            return bad("larger than 4096 bytes: not a fingerprint secret file");
        }
        let Ok(text) = std::str::from_utf8(contents) else {
            return bad("not text: not a fingerprint secret file (keygen --fingerprint-secret writes one)");
        };
        let mut found: Option<MasterKey> = None;
        for line in text.lines() {
            let line = line.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with("onnx-protect-key-") {
                return bad(
                    "it is a decryption key file, not a fingerprint secret (keygen --fingerprint-secret writes one)",
                );
            }
            let mut parts = line.split([' ', '\t']).filter(|p| !p.is_empty());
            if parts.next() != Some(SECRET_LINE_TAG) {
                return bad("a line is neither a comment nor an onnx-protect-fingerprint-secret-v1 line");
            }
            let (Some(hex_key), None) = (parts.next(), parts.next()) else {
                return bad("the secret line must hold exactly 64 hex digits after its tag");
            };
            let mut bytes = Zeroizing::new([0u8; 32]);
            if hex_key.len() != 64 || hex::decode_to_slice(hex_key, bytes.as_mut()).is_err() {
                return bad("the secret line must hold exactly 64 hex digits after its tag");
            }
            if found.is_some() {
                return bad("more than one secret line");
            }
            found = Some(MasterKey::from_bytes(*bytes));
        }
        match found {
            Some(key) => Ok(FingerprintKey::new(&key)),
            None => bad("no onnx-protect-fingerprint-secret-v1 line"),
        }
    }

    /// The secret's public key ID (16 hex digits: the first 8 bytes of
    /// SHA-256(`"onnx-protect/v1/fingerprint"` || secret)), as `keygen` prints it and the
    /// ledger records it. It identifies the secret; it does not reveal it.
    pub fn key_id(&self) -> String {
        hex::encode(self.id)
    }

    /// The pattern of `recipient` over `len` elements of the tensor named `tensor`
    /// (variant 0).
    pub fn pattern(&self, recipient: &RecipientId, tensor: &str, len: usize) -> Result<Pattern> {
        self.pattern_variant(recipient, 0, tensor, len)
    }

    /// The pattern of variant `variant` of `recipient`'s mark over `len` elements of the
    /// tensor named `tensor`. Variants are independent patterns for the same recipient,
    /// among which `encrypt --fingerprint-check` picks one that changes no prediction.
    pub fn pattern_variant(&self, recipient: &RecipientId, variant: u32, tensor: &str, len: usize) -> Result<Pattern> {
        let (r, n) = (recipient.as_str().as_bytes(), tensor.as_bytes());
        let len32 = |b: &[u8]| u32::try_from(b.len()).map(u32::to_be_bytes);
        let (rl, nl) = match (len32(r), len32(n)) {
            (Ok(rl), Ok(nl)) => (rl, nl),
            _ => return Err(TraceError::Parameter(format!("tensor name of {} bytes is too long", n.len()))),
        };
        let v = variant.to_be_bytes();
        let suffix: &[u8] = if variant == 0 { &[] } else { &v };
        let stream = self.schedule.keystream(&[PATTERN_LABEL, &rl, r, &nl, n, suffix]);
        let mut bits = vec![0u8; len.div_ceil(8)];
        stream.fill(0, &mut bits).map_err(TraceError::Key)?;
        Ok(Pattern { bits, len })
    }
}

impl FingerprintKey {
    /// The label-lock seed of `recipient`'s copy of the original whose
    /// [`weights_digest`](crate::weights_digest) is `original` (64 hex digits): the first 32
    /// bytes of the AES-256-CTR keystream under `HKDF-Expand(PRK, info, 32)`, `info =
    /// "onnx-protect/v1/fingerprint-lock-seed" || u32be(len R) || R || digest` (the digest's
    /// 32 bytes). Each recipient's copy of each model gets its own class order, which
    /// [`trace`](crate::Tracer::trace) recomputes from the secret.
    pub fn lock_seed(&self, recipient: &RecipientId, original: &str) -> Result<onnx_protect_lock::LockSeed> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(original, &mut digest)
            .map_err(|_| TraceError::Parameter(format!("weights digest '{original}' is not 64 hex digits")))?;
        let r = recipient.as_str().as_bytes();
        let rl = u32::try_from(r.len()).unwrap_or(u32::MAX).to_be_bytes();
        let stream = self.schedule.keystream(&[LOCK_SEED_LABEL, &rl, r, &digest]);
        let mut seed = Zeroizing::new([0u8; onnx_protect_lock::SEED_LEN]);
        stream.fill(0, seed.as_mut()).map_err(TraceError::Key)?;
        Ok(onnx_protect_lock::LockSeed::from_bytes(*seed))
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
        // Variant 0 is the plain pattern; every other variant is another pattern.
        let v = |n: u32| key(1).pattern_variant(&a, n, "w", 1000).unwrap().bits;
        assert_eq!(v(0), p(&key(1), &a, "w"));
        assert_ne!(v(1), v(0));
        assert_ne!(v(1), v(2));
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
    fn secret_files_round_trip_and_bad_ones_are_refused() {
        let (k, text) = FingerprintKey::generate().unwrap();
        let back = FingerprintKey::parse(text.as_bytes(), "s").unwrap();
        assert_eq!(back.key_id(), k.key_id());
        let r = RecipientId::new("a").unwrap();
        assert_eq!(back.pattern(&r, "w", 64).unwrap().bits, k.pattern(&r, "w", 64).unwrap().bits);
        let hexkey = "ab".repeat(32);
        let ok = format!("# c\r\n\n  {SECRET_LINE_TAG}\t{hexkey} \r\n");
        assert_eq!(
            FingerprintKey::parse(ok.as_bytes(), "s").unwrap().key_id(),
            hex::encode(MasterKey::from_bytes([0xab; 32]).fingerprint())
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "no onnx-protect-fingerprint-secret-v1 line"),
            (format!("onnx-protect-key-v1 master tiers=1 {hexkey}\n").into_bytes(), "decryption key file"),
            (format!("{hexkey}\n").into_bytes(), "neither a comment"),
            (format!("{SECRET_LINE_TAG} {}\n", &hexkey[..62]).into_bytes(), "exactly 64 hex digits"),
            (format!("{SECRET_LINE_TAG} {hexkey} x\n").into_bytes(), "exactly 64 hex digits"),
            (format!("{SECRET_LINE_TAG} {}zz\n", &hexkey[..62]).into_bytes(), "exactly 64 hex digits"),
            (format!("{SECRET_LINE_TAG} {hexkey}\n{SECRET_LINE_TAG} {hexkey}\n").into_bytes(), "more than one"),
            (vec![0xff, 0xfe, 0], "not text"),
            (vec![b'#'; 5000], "larger than 4096"),
        ];
        for (bytes, want) in cases {
            let e = FingerprintKey::parse(&bytes, "secret.txt").err().unwrap().to_string();
            assert!(e.contains(want) && e.contains("secret.txt"), "{e}");
            assert!(!e.contains(&hexkey[..16]), "{e}");
        }
    }

    #[test]
    fn lock_seeds_follow_the_documented_schedule() {
        let secret = MasterKey::from_bytes([3; 32]);
        let k = FingerprintKey::new(&secret);
        let (alice, bob) = (RecipientId::new("alice").unwrap(), RecipientId::new("bob").unwrap());
        let digest = "ab".repeat(32);
        let seed = k.lock_seed(&alice, &digest).unwrap();
        let ks = KeySchedule::new(&secret, b"onnx-protect/v1/fingerprint-salt").keystream(&[
            b"onnx-protect/v1/fingerprint-lock-seed",
            &5u32.to_be_bytes(),
            b"alice",
            &[0xab; 32],
        ]);
        let mut expected = [0u8; 32];
        ks.fill(0, &mut expected).unwrap();
        assert_eq!(seed.as_bytes(), &expected);
        assert_ne!(k.lock_seed(&bob, &digest).unwrap().as_bytes(), seed.as_bytes());
        assert_ne!(k.lock_seed(&alice, &"cd".repeat(32)).unwrap().as_bytes(), seed.as_bytes());
        assert!(k.lock_seed(&alice, "abc").is_err());
    }

    #[test]
    fn the_key_id_is_the_key_fingerprint() {
        let m = MasterKey::from_bytes([9; 32]);
        assert_eq!(FingerprintKey::new(&m).key_id(), hex::encode(m.fingerprint()));
    }
}
