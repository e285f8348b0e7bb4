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

use crate::schedule::{hkdf_expand, hkdf_extract};
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
/// HKDF-Expand `info` of the key that seals secret positions.
pub const V2_POSITIONS_LABEL: &[u8] = b"onnx-protect/v2/positions";
/// HKDF-Expand `info` of the key that chooses secret positions (informational: readers
/// never need it).
pub const V2_CHOICE_LABEL: &[u8] = b"onnx-protect/v2/choice";
/// Associated data of sealed positions.
pub const V2_POSITIONS_AAD: &[u8] = b"onnx-protect/v2/positions";
/// HKDF-Expand `info` of the key that seals a label lock's seed, and its associated data.
pub const V2_LABEL_LOCK_LABEL: &[u8] = b"onnx-protect/v2/label-lock";

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

    /// Seals the spans of stream `stream_id` (secret positions, docs/format.md §6):
    /// ChaCha20-Poly1305 under `HKDF-Expand(PRK_t, "onnx-protect/v2/positions", 32)`, nonce
    /// `4 zero bytes || u64be(stream_id)`, associated data `"onnx-protect/v2/positions"`,
    /// plaintext the span bounds as consecutive `u64be` values.
    pub fn seal_spans(&self, stream_id: u64, bounds: &[u64]) -> Vec<u8> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let key = Zeroizing::new(hkdf_expand::<KEY_LEN>(&self.prk, &[V2_POSITIONS_LABEL]));
        let cipher = chacha20poly1305::ChaCha20Poly1305::new(key.as_ref().into());
        let plain: Vec<u8> = bounds.iter().flat_map(|b| b.to_be_bytes()).collect();
        let nonce = positions_nonce(stream_id);
        // Encryption fails only for messages over 256 GiB.
        cipher.encrypt(&nonce.into(), Payload { msg: &plain, aad: V2_POSITIONS_AAD }).unwrap_or_default()
    }

    /// Opens sealed spans; `None` if they were not sealed by this tier's key for `stream_id`.
    pub fn unseal_spans(&self, stream_id: u64, sealed: &[u8]) -> Option<Vec<u64>> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let key = Zeroizing::new(hkdf_expand::<KEY_LEN>(&self.prk, &[V2_POSITIONS_LABEL]));
        let cipher = chacha20poly1305::ChaCha20Poly1305::new(key.as_ref().into());
        let plain =
            cipher.decrypt(&positions_nonce(stream_id).into(), Payload { msg: sealed, aad: V2_POSITIONS_AAD }).ok()?;
        if plain.len() % 8 != 0 {
            return None;
        }
        Some(plain.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8]))).collect())
    }

    /// Seals a label lock's 32-byte seed (docs/format.md §15): ChaCha20-Poly1305 under
    /// `HKDF-Expand(PRK_1, "onnx-protect/v2/label-lock", 32)`, a zero nonce (the key seals
    /// one message: every encryption draws a new data key), associated data
    /// `"onnx-protect/v2/label-lock"`. 48 bytes.
    pub fn seal_lock_seed(&self, seed: &[u8; KEY_LEN]) -> Vec<u8> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let key = Zeroizing::new(hkdf_expand::<KEY_LEN>(&self.prk, &[V2_LABEL_LOCK_LABEL]));
        let cipher = chacha20poly1305::ChaCha20Poly1305::new(key.as_ref().into());
        // Encryption fails only for messages over 256 GiB.
        cipher.encrypt(&[0u8; 12].into(), Payload { msg: seed, aad: V2_LABEL_LOCK_LABEL }).unwrap_or_default()
    }

    /// Opens a sealed lock seed; `None` if it was not sealed by this tier's key.
    pub fn unseal_lock_seed(&self, sealed: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let key = Zeroizing::new(hkdf_expand::<KEY_LEN>(&self.prk, &[V2_LABEL_LOCK_LABEL]));
        let cipher = chacha20poly1305::ChaCha20Poly1305::new(key.as_ref().into());
        let plain =
            Zeroizing::new(cipher.decrypt(&[0u8; 12].into(), Payload { msg: sealed, aad: V2_LABEL_LOCK_LABEL }).ok()?);
        let seed: [u8; KEY_LEN] = plain.as_slice().try_into().ok()?;
        Some(Zeroizing::new(seed))
    }

    /// Keyed scores for choosing secret positions: `k` of the `candidates` (subsequence
    /// indices) of stream `stream_id`, those with the smallest
    /// `HMAC-SHA256(HKDF-Expand(PRK_t, "onnx-protect/v2/choice"), u64be(stream) || u64be(i))`.
    /// Returned sorted ascending. Nobody without the key can tell which were chosen.
    pub fn choose(&self, stream_id: u64, candidates: &[u64], k: usize) -> Vec<u64> {
        let key = Zeroizing::new(hkdf_expand::<KEY_LEN>(&self.prk, &[V2_CHOICE_LABEL]));
        let mut scored: Vec<([u8; 32], u64)> = candidates
            .iter()
            .map(|&i| {
                let mut m = Mac::with_key(key.as_ref());
                m.update(&stream_id.to_be_bytes());
                m.update(&i.to_be_bytes());
                (m.finalize(), i)
            })
            .collect();
        scored.sort_unstable();
        let mut chosen: Vec<u64> = scored.into_iter().take(k).map(|(_, i)| i).collect();
        chosen.sort_unstable();
        chosen
    }
}

fn positions_nonce(stream_id: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&stream_id.to_be_bytes());
    n
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
    fn sealed_spans_open_with_their_tier_and_stream_only() {
        let a = DataKey::from_bytes([1; 32]).tier_keys();
        let b = DataKey::from_bytes([2; 32]).tier_keys();
        let sealed = a.seal_spans(7, &[0, 16, 64, 128]);
        assert_eq!(a.unseal_spans(7, &sealed), Some(vec![0, 16, 64, 128]));
        assert_eq!(a.unseal_spans(8, &sealed), None);
        assert_eq!(b.unseal_spans(7, &sealed), None);
        let mut changed = sealed.clone();
        changed[0] ^= 1;
        assert_eq!(a.unseal_spans(7, &changed), None);
        let chosen = a.choose(7, &[1, 3, 5, 7, 9, 11], 3);
        assert_eq!(chosen.len(), 3);
        assert!(chosen.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(chosen, a.choose(7, &[1, 3, 5, 7, 9, 11], 3), "deterministic");
        assert_ne!(a.choose(7, &(0..64).collect::<Vec<_>>(), 8), b.choose(7, &(0..64).collect::<Vec<_>>(), 8));
    }

    #[test]
    fn a_sealed_lock_seed_opens_with_its_tier_key_only_and_every_byte_is_authenticated() {
        let a = DataKey::from_bytes([1; 32]).tier_keys();
        let b = DataKey::from_bytes([2; 32]).tier_keys();
        let seed = [0x5Au8; 32];
        let sealed = a.seal_lock_seed(&seed);
        assert_eq!(sealed.len(), 48);
        assert_eq!(a.unseal_lock_seed(&sealed).as_deref(), Some(&seed));
        assert!(b.unseal_lock_seed(&sealed).is_none());
        for i in 0..sealed.len() {
            let mut changed = sealed.clone();
            changed[i] ^= 0x10;
            assert!(a.unseal_lock_seed(&changed).is_none(), "byte {i}");
        }
        assert!(a.unseal_lock_seed(&sealed[..47]).is_none());
        // Not the positions key: a seed sealed as positions does not open.
        assert!(a.unseal_lock_seed(&a.seal_spans(0, &[1, 2, 3, 4])).is_none());
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
