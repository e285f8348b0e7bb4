//! Incremental HMAC-SHA256 (authenticity) and SHA-256 (keyless checksum).

use core::fmt;

use hmac::{Hmac, Mac as _};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::MAC_LEN;

/// Incremental HMAC-SHA256 keyed with a file's MAC key; obtained from
/// [`crate::SessionKeys::mac`].
///
/// Feeding the same bytes in any split gives the same tag. The keyed state
/// is never printed. (The `hmac` crate offers no wiping of its internal
/// state; the MAC key itself is wiped by `SessionKeys`.)
#[derive(Clone)]
pub struct Mac {
    inner: Hmac<Sha256>,
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Mac([redacted])")
    }
}

impl Mac {
    /// HMAC-SHA256 keyed with `key` (any length, per RFC 2104).
    pub(crate) fn with_key(key: &[u8]) -> Mac {
        // HMAC accepts keys of every length (long keys are hashed, short ones
        // padded), so this constructor's error case is unreachable and does
        // not depend on input.
        let inner = <Hmac<Sha256> as hmac::Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
        Mac { inner }
    }

    /// Appends `data` to the authenticated message.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
    }

    /// The 32-byte tag over everything passed to `update`.
    pub fn finalize(self) -> [u8; MAC_LEN] {
        self.inner.finalize().into_bytes().into()
    }

    /// Whether `expected` equals the tag, compared in constant time.
    /// Returns false if `expected` is not exactly 32 bytes long.
    pub fn verify(self, expected: &[u8]) -> bool {
        let tag = self.finalize();
        expected.len() == MAC_LEN && bool::from(tag.ct_eq(expected))
    }
}

/// Incremental SHA-256: a keyless integrity checksum (detects corruption,
/// not tampering; use [`Mac`] for that).
#[derive(Clone, Default)]
pub struct Checksum {
    inner: Sha256,
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Checksum(SHA-256)")
    }
}

impl Checksum {
    /// An empty checksum computation.
    pub fn new() -> Checksum {
        Checksum::default()
    }

    /// Appends `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
    }

    /// SHA-256 of everything passed to `update`.
    pub fn finalize(self) -> [u8; 32] {
        self.inner.finalize().into()
    }
}

/// The hash function of a ciphertext chunk ("leaf") that the MAC and the
/// checksum cover (docs/format.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafHash {
    /// SHA-256: the leaf hash of the first release of format 1.
    Sha256,
    /// BLAKE3 with a 32-byte output: about 25× faster than SHA-256 in software
    /// on CPUs without SHA extensions (see docs/performance.md).
    Blake3,
}

/// Domain-separation label that starts every leaf.
pub const CHUNK_LABEL: &[u8] = b"onnx-protect/v1/chunk";

enum LeafState {
    Sha256(Sha256),
    Blake3(Box<blake3::Hasher>),
}

/// Incremental digest of one chunk of ciphertext:
/// `H("onnx-protect/v1/chunk" ‖ u64be(stream) ‖ u64be(index) ‖ chunk)` with `H`
/// the [`LeafHash`]. The chunk may be fed in any split.
pub struct Leaf {
    state: LeafState,
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            LeafState::Sha256(_) => f.write_str("Leaf(SHA-256)"),
            LeafState::Blake3(_) => f.write_str("Leaf(BLAKE3)"),
        }
    }
}

impl Leaf {
    /// Starts the leaf of chunk `index` of stream `stream`.
    pub fn new(hash: LeafHash, stream: u64, index: u64) -> Leaf {
        let mut leaf = Leaf {
            state: match hash {
                LeafHash::Sha256 => LeafState::Sha256(Sha256::new()),
                LeafHash::Blake3 => LeafState::Blake3(Box::new(blake3::Hasher::new())),
            },
        };
        leaf.update(CHUNK_LABEL);
        leaf.update(&stream.to_be_bytes());
        leaf.update(&index.to_be_bytes());
        leaf
    }

    /// Appends chunk bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            LeafState::Sha256(h) => h.update(data),
            LeafState::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The 32-byte leaf.
    pub fn finalize(self) -> [u8; 32] {
        match self.state {
            LeafState::Sha256(h) => h.finalize().into(),
            LeafState::Blake3(h) => *h.finalize().as_bytes(),
        }
    }
}

#[cfg(test)]
mod leaf_tests {
    use super::*;

    #[test]
    fn leaves_match_the_spec_formula_in_any_split() {
        let chunk: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut prefix = CHUNK_LABEL.to_vec();
        prefix.extend_from_slice(&5u64.to_be_bytes());
        prefix.extend_from_slice(&9u64.to_be_bytes());
        let whole = [prefix.as_slice(), chunk.as_slice()].concat();
        let sha: [u8; 32] = Sha256::digest(&whole).into();
        let b3 = *blake3::hash(&whole).as_bytes();
        assert_ne!(sha, b3);
        for (hash, want) in [(LeafHash::Sha256, sha), (LeafHash::Blake3, b3)] {
            let mut one = Leaf::new(hash, 5, 9);
            one.update(&chunk);
            assert_eq!(one.finalize(), want);
            let mut split = Leaf::new(hash, 5, 9);
            for piece in chunk.chunks(333) {
                split.update(piece);
            }
            assert_eq!(split.finalize(), want);
            // Stream and index are bound.
            let mut other = Leaf::new(hash, 9, 5);
            other.update(&chunk);
            assert_ne!(other.finalize(), want);
        }
    }

    #[test]
    fn blake3_known_answer() {
        // BLAKE3 of the empty input, from the reference test vectors.
        assert_eq!(
            hex::encode(blake3::hash(b"").as_bytes()),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }
}
