//! Cryptographic core of `onnx-protect`: the primitives both file format versions use.
//!
//! Format 2 (docs/format.md §7–§10), which every encryption writes: a random
//! [`DataKey`] per encryption steps down the access tiers and gives each tier its
//! [`TierKeys`] (one AES-256-CTR [`Keystream`] per tensor stream, the MAC key, the key
//! check value); [`WrapKind`] wraps it for `key` and `passphrase` stanzas; the content
//! digest, MACs, signed message and checksum are in `content` ([`content_digest`],
//! [`leaves_of`], [`envelope_checksum`]).
//!
//! Format 1 (docs/format.md Appendix B, read only): everything secret flows from one
//! 256-bit [`MasterKey`] (random, from a key file or environment variable, or from a
//! passphrase via Argon2id with [`KdfParams`]) and the file's 32-byte salt through
//! HKDF-SHA256 to that file's [`SessionKeys`]: a keystream per tensor, applied
//! whole-byte ([`Keystream::apply`]) or restricted to chosen bits of each element
//! ([`Keystream::apply_masked`]), serially or on the rayon pool; a MAC key for
//! HMAC-SHA256 ([`Mac`]); a 16-byte key check value. The [`MasterKey`] is also what
//! key files hold in both formats (the key of a `key` stanza, the tier keys).
//!
//! Every derivation from the master key is an HKDF-SHA256 [`KeySchedule`]
//! (the per-file keys above, the tier-down step, the input-transform keys), and
//! every keyed permutation is a [`KeyedShuffle`] drawn from a keystream (the
//! distribution-preserving mode, the input transforms' permutations). Key files
//! are read and written by [`KeyFile`], which records what kind of key a file
//! holds.
//!
//! What each [`Mode`] means to the cipher (docs/format.md §6) is here too: the bits of an
//! element the format-preserving mode reaches ([`fp_mask`], by `data_type` code), and
//! which modes transform a span as a whole and how many elements such a span holds at
//! least ([`Mode::whole_spans`], [`Mode::min_span_elements`]).
//!
//! [`Checksum`] is a keyless SHA-256 for integrity checks.
//!
//! Invariants kept throughout: secret keys are wiped on drop and never
//! appear in `Debug` output or errors; all offsets and parameters coming from
//! files are range-checked and reported as [`CryptoError`], never panics;
//! the library never prints.
//!
//! ```
//! use onnx_protect_crypto::{random_salt, MasterKey, SessionKeys};
//!
//! let master = MasterKey::generate()?;
//! let salt = random_salt()?; // stored in the file header
//! let keys = SessionKeys::derive(&master, &salt);
//!
//! // Encrypt a tensor's bytes (stream id 7), then decrypt them again.
//! let original = b"raw fp32 tensor bytes...".to_vec();
//! let mut data = original.clone();
//! keys.keystream(7).apply(0, &mut data)?;
//! assert_ne!(data, original);
//! keys.keystream(7).apply(0, &mut data)?;
//! assert_eq!(data, original);
//!
//! // Only sign + mantissa bits of fp32 elements; exponents stay readable.
//! let fp32_mask = [0xFF, 0xFF, 0x7F, 0x80];
//! keys.keystream(8).apply_masked(0, &mut data, &fp32_mask)?;
//! for (new, old) in data.iter().zip(&original).skip(3).step_by(4) {
//!     assert_eq!(new & 0x7F, old & 0x7F);
//! }
//!
//! // Authenticate, and check the key on the reading side.
//! let mut mac = keys.mac();
//! mac.update(&data);
//! let tag = mac.finalize();
//! let reader = SessionKeys::derive(&master, &salt);
//! assert!(reader.key_check_matches(&keys.key_check()));
//! let mut check = reader.mac();
//! check.update(&data);
//! assert!(check.verify(&tag));
//! # Ok::<(), onnx_protect_crypto::CryptoError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod content;
mod data_key;
mod digest;
mod error;
mod key_file;
mod keystream;
mod master;
mod mode;
mod schedule;
mod session;
mod shuffle;
mod wrap;

#[cfg(test)]
mod kat_tests;

pub use content::{
    chunk_count, content_digest, envelope_checksum, leaf_split, leaves_of, signed_message, tier_mac, tier_mac_matches,
    ContentLeaf, FileLeaves, LeafTail, CONTENT_CHUNK_LABEL, CONTENT_LABEL, SIGNATURE_LABEL, V2_CHECKSUM_LABEL,
    V2_MAC_INPUT_LABEL,
};
pub use data_key::{
    DataKey, TierKeys, V2_CHOICE_LABEL, V2_KEY_CHECK_LABEL, V2_LABEL_LOCK_LABEL, V2_MAC_LABEL, V2_POSITIONS_AAD,
    V2_POSITIONS_LABEL, V2_PRK_SALT, V2_TENSOR_LABEL, V2_TIER_DOWN_LABEL, V2_TIER_SALT,
};
pub use digest::{Checksum, Leaf, LeafHash, Mac, CHUNK_LABEL};
pub use error::CryptoError;
pub use key_file::{KeyFile, KeyKind, KEY_LINE_TAG, MAX_KEY_FILE_LEN, MAX_TIERS};
pub use keystream::{aes256_ctr_xor, Keystream, MAX_MASK_LEN};
pub use master::{KdfParams, MasterKey, FINGERPRINT_LABEL, KDF_SALT_LEN, TIER_DOWN_LABEL, TIER_SALT};
pub use mode::{fp_mask, Mode, DP_MIN_ELEMENTS};
pub use schedule::KeySchedule;
pub use session::{random_salt, SessionKeys, KEY_CHECK_LABEL, MAC_KEY_LABEL, TENSOR_KEY_LABEL};
pub use shuffle::{KeyedShuffle, WordOrder, MAX_SHUFFLE_LEN};
pub use wrap::{random_stanza_salt, WrapKind, STANZA_SALT_LEN, WRAPPED_LEN, WRAP_KEY_LABEL, WRAP_PASSPHRASE_LABEL};

/// Length of the master key, tensor keys and the MAC key, in bytes.
pub const KEY_LEN: usize = 32;
/// Length of the per-encryption HKDF salt, in bytes.
pub const SALT_LEN: usize = 32;
/// Length of the key check value, in bytes.
pub const KEY_CHECK_LEN: usize = 16;
/// Length of an HMAC-SHA256 tag, in bytes.
pub const MAC_LEN: usize = 32;

/// Fills `buf` from the operating system's random number generator.
fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::getrandom(buf).map_err(|e| CryptoError::Rng { reason: e.to_string() })
}
