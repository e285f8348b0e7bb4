//! Per-file key schedule: HKDF-SHA256 from the master key and a per-file salt.

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{fill_random, CryptoError, KeySchedule, Keystream, Mac, MasterKey, KEY_CHECK_LEN, KEY_LEN, SALT_LEN};

/// HKDF-Expand `info` prefix for tensor keys; the stream id follows as 8 bytes big-endian.
pub const TENSOR_KEY_LABEL: &[u8] = b"onnx-protect/v1/tensor";
/// HKDF-Expand `info` for the MAC key.
pub const MAC_KEY_LABEL: &[u8] = b"onnx-protect/v1/mac";
/// HKDF-Expand `info` for the key check value.
pub const KEY_CHECK_LABEL: &[u8] = b"onnx-protect/v1/key-check";

/// Draws a fresh per-encryption salt from the operating system's RNG.
///
/// Contract: every encryption must use a new salt; this is what makes each
/// tensor key, and so each (key, IV) pair, unique.
pub fn random_salt() -> Result<[u8; SALT_LEN], CryptoError> {
    let mut salt = [0u8; SALT_LEN];
    fill_random(&mut salt)?;
    Ok(salt)
}

/// All keys for one encrypted file, derived from the master key and the
/// file's salt (format version 1):
///
/// ```text
/// PRK        = HKDF-Extract(salt, master key)                       (SHA-256)
/// tensor key = HKDF-Expand(PRK, "onnx-protect/v1/tensor" || id_be64, 32)
/// MAC key    = HKDF-Expand(PRK, "onnx-protect/v1/mac", 32)
/// key check  = HKDF-Expand(PRK, "onnx-protect/v1/key-check", 16)
/// ```
///
/// Invariants: the PRK and MAC key are wiped on drop and never printed.
/// Tensor keys are derived on demand and live only inside a [`Keystream`].
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SessionKeys {
    schedule: KeySchedule,
    mac_key: [u8; KEY_LEN],
    key_check: [u8; KEY_CHECK_LEN],
}

impl core::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SessionKeys([redacted])")
    }
}

impl SessionKeys {
    /// Runs the key schedule above. Infallible: all output lengths are fixed.
    pub fn derive(master: &MasterKey, salt: &[u8; SALT_LEN]) -> SessionKeys {
        let schedule = KeySchedule::new(master, salt);
        SessionKeys {
            mac_key: *schedule.expand(&[MAC_KEY_LABEL]),
            key_check: *schedule.expand(&[KEY_CHECK_LABEL]),
            schedule,
        }
    }

    /// The 16-byte key check value stored in the file header, which lets a
    /// reader detect a wrong master key before decrypting anything.
    pub fn key_check(&self) -> [u8; KEY_CHECK_LEN] {
        self.key_check
    }

    /// Compares a stored key check value with this key's, in constant time.
    /// Returns false if `stored` has the wrong length.
    pub fn key_check_matches(&self, stored: &[u8]) -> bool {
        stored.len() == KEY_CHECK_LEN && bool::from(self.key_check.ct_eq(stored))
    }

    /// The AES-256-CTR keystream for stream `stream_id` (one per protected tensor).
    ///
    /// Contract: the caller gives each tensor in a file its own stream id.
    pub fn keystream(&self, stream_id: u64) -> Keystream {
        self.schedule.keystream(&[TENSOR_KEY_LABEL, &stream_id.to_be_bytes()])
    }

    /// A fresh HMAC-SHA256 computation keyed with this file's MAC key.
    pub fn mac(&self) -> Mac {
        Mac::with_key(&self.mac_key)
    }

    /// The MAC key, for the derivation known-answer test only.
    #[cfg(test)]
    pub(crate) fn mac_key(&self) -> [u8; KEY_LEN] {
        self.mac_key
    }
}

/// Tensor key for `stream_id`, for the derivation known-answer test only.
#[cfg(test)]
pub(crate) fn tensor_key(schedule: &KeySchedule, stream_id: u64) -> [u8; KEY_LEN] {
    *schedule.expand(&[TENSOR_KEY_LABEL, &stream_id.to_be_bytes()])
}
