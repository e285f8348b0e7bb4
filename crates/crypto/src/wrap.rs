//! Wrapping a data key under a 32-byte symmetric key (the `key` and `passphrase`
//! recipient stanzas of docs/format.md §8):
//!
//! ```text
//! KEK  = HKDF-SHA256(salt = stanza salt (16 bytes), IKM = wrapping key, info = label || u32be(tier), 32)
//! body = ChaCha20-Poly1305(KEK, nonce = 12 zero bytes, aad = "", data key)   (48 bytes)
//! ```
//!
//! The KEK is unique to each stanza (its salt is fresh), so the fixed nonce is never
//! used twice with one key.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{fill_random, CryptoError, DataKey, MasterKey, KEY_LEN};

/// HKDF info prefix of a `key` stanza's KEK.
pub const WRAP_KEY_LABEL: &[u8] = b"onnx-protect/v2/wrap/key";
/// HKDF info prefix of a `passphrase` stanza's KEK.
pub const WRAP_PASSPHRASE_LABEL: &[u8] = b"onnx-protect/v2/wrap/passphrase";
/// Length of a stanza salt.
pub const STANZA_SALT_LEN: usize = 16;
/// Length of a wrapped data key: 32 bytes of ciphertext and a 16-byte tag.
pub const WRAPPED_LEN: usize = KEY_LEN + 16;

/// Which symmetric stanza a wrapping is for (it selects the HKDF label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrapKind {
    /// A key file, environment variable or tier key.
    Key,
    /// The Argon2id output of a passphrase.
    Passphrase,
}

impl WrapKind {
    fn label(self) -> &'static [u8] {
        match self {
            WrapKind::Key => WRAP_KEY_LABEL,
            WrapKind::Passphrase => WRAP_PASSPHRASE_LABEL,
        }
    }
}

/// A fresh random stanza salt.
pub fn random_stanza_salt() -> Result<[u8; STANZA_SALT_LEN], CryptoError> {
    let mut salt = [0u8; STANZA_SALT_LEN];
    fill_random(&mut salt)?;
    Ok(salt)
}

fn kek(key: &MasterKey, kind: WrapKind, salt: &[u8], tier: u32) -> Zeroizing<[u8; KEY_LEN]> {
    let hk = Hkdf::<Sha256>::new(Some(salt), key.as_bytes());
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    // 32 bytes is far below HKDF-SHA256's output limit: this cannot fail.
    let _ = hk.expand_multi_info(&[kind.label(), &tier.to_be_bytes()], out.as_mut());
    out
}

impl MasterKey {
    /// Wraps `data_key` (the data key of `tier`) under this key with a fresh salt
    /// drawn by the caller ([`random_stanza_salt`]). Returns the 48-byte body.
    pub fn wrap_data_key(
        &self,
        kind: WrapKind,
        salt: &[u8; STANZA_SALT_LEN],
        tier: u32,
        data_key: &DataKey,
    ) -> Vec<u8> {
        let kek = kek(self, kind, salt, tier);
        let cipher = ChaCha20Poly1305::new(kek.as_ref().into());
        let plain = data_key.to_bytes();
        // Encryption with ChaCha20-Poly1305 fails only for messages over 256 GiB.
        cipher.encrypt(&[0u8; 12].into(), plain.as_ref()).unwrap_or_default()
    }

    /// Opens a body written by [`MasterKey::wrap_data_key`]; `None` if this key (or the
    /// salt, tier or kind) is not the one it was wrapped with, or the body was changed.
    pub fn unwrap_data_key(&self, kind: WrapKind, salt: &[u8], tier: u32, body: &[u8]) -> Option<DataKey> {
        if salt.len() != STANZA_SALT_LEN || body.len() != WRAPPED_LEN {
            return None;
        }
        let kek = kek(self, kind, salt, tier);
        let cipher = ChaCha20Poly1305::new(kek.as_ref().into());
        let plain = Zeroizing::new(cipher.decrypt(&[0u8; 12].into(), body).ok()?);
        let bytes: [u8; KEY_LEN] = plain.as_slice().try_into().ok()?;
        Some(DataKey::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trips_and_refuses_every_other_input() {
        let key = MasterKey::from_bytes([3; 32]);
        let dk = DataKey::from_bytes([5; 32]);
        let salt = [1u8; 16];
        let body = key.wrap_data_key(WrapKind::Key, &salt, 2, &dk);
        assert_eq!(body.len(), WRAPPED_LEN);
        let back = key.unwrap_data_key(WrapKind::Key, &salt, 2, &body).unwrap();
        assert_eq!(*back.to_bytes(), *dk.to_bytes());
        assert!(key.unwrap_data_key(WrapKind::Key, &salt, 1, &body).is_none());
        assert!(key.unwrap_data_key(WrapKind::Passphrase, &salt, 2, &body).is_none());
        assert!(key.unwrap_data_key(WrapKind::Key, &[2u8; 16], 2, &body).is_none());
        assert!(MasterKey::from_bytes([4; 32]).unwrap_data_key(WrapKind::Key, &salt, 2, &body).is_none());
        for i in 0..body.len() {
            let mut b = body.clone();
            b[i] ^= 1;
            assert!(key.unwrap_data_key(WrapKind::Key, &salt, 2, &b).is_none(), "byte {i}");
        }
        assert!(key.unwrap_data_key(WrapKind::Key, &salt, 2, &body[..47]).is_none());
        assert!(key.unwrap_data_key(WrapKind::Key, &salt[..15], 2, &body).is_none());
    }
}
