//! The key schedule of format version 2 (docs/format.md §7): a random data key per
//! encryption, one-way steps down the access tiers, and per tier the tensor keys, the
//! MAC key and the key check value.
//!
//! ```text
//! DK_{t-1}  = HKDF-SHA256(salt = "onnx-protect/v2/tier-salt", IKM = DK_t,
//!                         info = "onnx-protect/v2/tier-down", 32)
//! PRK_t     = HKDF-Extract(salt = "onnx-protect/v2/data-key", IKM = DK_t)
//! tensor    = HKDF-Expand(PRK_t, "onnx-protect/v2/tensor" || u64be(stream), 32)
//! MAC key   = HKDF-Expand(PRK_t, "onnx-protect/v2/mac", 32)
//! key check = HKDF-Expand(PRK_t, "onnx-protect/v2/key-check", 16)
//! ```

use core::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::session::{hkdf_expand, hkdf_extract};
use crate::{fill_random, CryptoError, Keystream, Mac, KEY_CHECK_LEN, KEY_LEN};

/// HKDF salt of the one-way step to the tier below.
pub const V2_TIER_SALT: &[u8] = b"onnx-protect/v2/tier-salt";
/// HKDF info of the one-way step to the tier below.
pub const V2_TIER_DOWN_LABEL: &[u8] = b"onnx-protect/v2/tier-down";
/// HKDF-Extract salt of a tier's PRK.
pub const V2_PRK_SALT: &[u8] = b"onnx-protect/v2/data-key";
/// HKDF-Expand `info` prefix of tensor keys (the stream id follows, 8 bytes big-endian).
pub const V2_TENSOR_LABEL: &[u8] = b"onnx-protect/v2/tensor";
/// HKDF-Expand `info` of the MAC key.
pub const V2_MAC_LABEL: &[u8] = b"onnx-protect/v2/mac";
/// HKDF-Expand `info` of the key check value.
pub const V2_KEY_CHECK_LABEL: &[u8] = b"onnx-protect/v2/key-check";

/// The 32-byte data key of one access tier of one protected model.
///
/// Invariants: wiped on drop, never shown by `Debug` or errors. Its bytes leave this
/// type only through [`DataKey::to_bytes`], for wrapping it for a recipient.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey {
    bytes: [u8; KEY_LEN],
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

impl DataKey {
    /// A fresh data key from the operating system's random number generator.
    ///
    /// Contract: every encryption draws a new one; with stream ids unique within a model
    /// this makes every tensor key, and so every (key, counter) pair, unique.
    pub fn generate() -> Result<DataKey, CryptoError> {
        let mut bytes = [0u8; KEY_LEN];
        fill_random(&mut bytes)?;
        Ok(DataKey { bytes })
    }

    /// A data key from its bytes (an unwrapped recipient stanza).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> DataKey {
        DataKey { bytes }
    }

    /// The key's bytes, to be wrapped for a recipient. The copy is wiped when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.bytes)
    }

    /// The data key of the tier below (one way: it never yields a higher tier's key).
    pub fn tier_down(&self) -> DataKey {
        let prk = Zeroizing::new(hkdf_extract(V2_TIER_SALT, &self.bytes));
        DataKey { bytes: hkdf_expand(&prk, &[V2_TIER_DOWN_LABEL]) }
    }

    /// The keys this data key gives its tier.
    pub fn tier_keys(&self) -> TierKeys {
        let prk = hkdf_extract(V2_PRK_SALT, &self.bytes);
        let mac_key = hkdf_expand(&prk, &[V2_MAC_LABEL]);
        let key_check = hkdf_expand(&prk, &[V2_KEY_CHECK_LABEL]);
        TierKeys { prk, mac_key, key_check }
    }

    /// The data keys of tiers `1..=top`, tier 1 first, given this key as tier `top`'s.
    pub fn chain_down(&self, top: u32) -> Vec<DataKey> {
        let mut keys = Vec::with_capacity(top as usize);
        let mut k = self.clone();
        for _ in 0..top {
            let next = k.tier_down();
            keys.push(std::mem::replace(&mut k, next));
        }
        keys.reverse();
        keys
    }
}

/// The keys of one tier of one model: tensor keystreams, the MAC key and the key check
/// value. Wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TierKeys {
    prk: [u8; 32],
    mac_key: [u8; KEY_LEN],
    key_check: [u8; KEY_CHECK_LEN],
}

impl fmt::Debug for TierKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TierKeys([redacted])")
    }
}

impl TierKeys {
    /// The AES-256-CTR keystream of stream `stream_id`.
    ///
    /// Contract: each entry of a model's header has its own stream id.
    pub fn keystream(&self, stream_id: u64) -> Keystream {
        let key = Zeroizing::new(hkdf_expand::<KEY_LEN>(&self.prk, &[V2_TENSOR_LABEL, &stream_id.to_be_bytes()]));
        Keystream::new(&key)
    }

    /// A fresh HMAC-SHA256 keyed with this tier's MAC key.
    pub fn mac(&self) -> Mac {
        Mac::with_key(&self.mac_key)
    }

    /// The 16-byte key check value stored in the header.
    pub fn key_check(&self) -> [u8; KEY_CHECK_LEN] {
        self.key_check
    }

    /// Whether `stored` equals this tier's key check value (constant time).
    pub fn key_check_matches(&self, stored: &[u8]) -> bool {
        stored.len() == KEY_CHECK_LEN && bool::from(self.key_check.ct_eq(stored))
    }

    /// The MAC key, for the derivation known-answer test only.
    #[cfg(test)]
    pub(crate) fn mac_key(&self) -> [u8; KEY_LEN] {
        self.mac_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_down_is_deterministic_and_changes_the_key() {
        let k = DataKey::from_bytes([7; 32]);
        assert_eq!(*k.tier_down().to_bytes(), *k.tier_down().to_bytes());
        assert_ne!(*k.tier_down().to_bytes(), *k.to_bytes());
    }

    #[test]
    fn chain_down_lists_lower_tiers_first_and_ends_with_the_key() {
        let k = DataKey::from_bytes([9; 32]);
        let chain = k.chain_down(3);
        assert_eq!(chain.len(), 3);
        assert_eq!(*chain[2].to_bytes(), *k.to_bytes());
        assert_eq!(*chain[1].to_bytes(), *k.tier_down().to_bytes());
        assert_eq!(*chain[0].to_bytes(), *k.tier_down().tier_down().to_bytes());
    }

    #[test]
    fn tiers_have_distinct_keys_and_checks() {
        let k = DataKey::from_bytes([1; 32]);
        let (a, b) = (k.tier_keys(), k.tier_down().tier_keys());
        assert_ne!(a.key_check(), b.key_check());
        assert_ne!(a.mac_key(), b.mac_key());
        assert!(a.key_check_matches(&a.key_check()));
        assert!(!a.key_check_matches(&b.key_check()));
        assert!(!a.key_check_matches(&a.key_check()[..15]));
        let mut x = vec![0u8; 64];
        let mut y = x.clone();
        a.keystream(1).apply(0, &mut x).unwrap();
        a.keystream(2).apply(0, &mut y).unwrap();
        assert_ne!(x, y);
    }
}
