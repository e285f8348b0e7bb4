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
