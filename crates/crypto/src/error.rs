//! The crate's single error type.
//!
//! Contract: no variant ever carries key material, passphrases, or bytes read
//! from a key source. Variants carry only lengths, positions, names and
//! numeric parameters, so an error can be logged or shown to a user safely.

/// Every failure this crate can report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The operating system's random number generator could not be read.
    #[error("the operating system's random number generator failed: {reason}")]
    Rng {
        /// The generator's own description of the failure.
        reason: String,
    },

    /// A key file had neither 32 bytes nor 64 hex digits (after trimming
    /// surrounding ASCII whitespace).
    #[error(
        "key file must hold 32 raw bytes or 64 hex digits (optionally surrounded by whitespace); \
         found {found} bytes"
    )]
    KeyFileLength {
        /// Total size of the key file in bytes.
        found: usize,
    },

    /// A key file had 64 characters (after trimming) but not all were hex digits.
    #[error(
        "key file must hold 32 raw bytes or 64 hex digits (optionally surrounded by whitespace); \
         found 64 characters that are not all hex digits (first non-hex character at byte {position})"
    )]
    KeyFileNotHex {
        /// Byte offset, within the whole file, of the first non-hex character.
        position: usize,
    },

    /// The environment variable that should hold the key is not set.
    #[error("environment variable {var} is not set; it must hold a 32-byte key as 64 hex digits")]
    EnvKeyMissing {
        /// Name of the variable.
        var: String,
    },

    /// The environment variable that should hold the key is not valid Unicode.
    #[error("environment variable {var} is not valid Unicode; it must hold a 32-byte key as 64 hex digits")]
    EnvKeyNotUnicode {
        /// Name of the variable.
        var: String,
    },

    /// The environment variable holds the wrong number of characters.
    #[error(
        "environment variable {var} must hold a 32-byte key as 64 hex digits; \
         found {found} characters"
    )]
    EnvKeyLength {
        /// Name of the variable.
        var: String,
        /// Number of characters after trimming surrounding whitespace.
        found: usize,
    },

    /// The environment variable holds 64 characters that are not all hex digits.
    #[error(
        "environment variable {var} must hold a 32-byte key as 64 hex digits; \
         found a non-hex character at position {position}"
    )]
    EnvKeyNotHex {
        /// Name of the variable.
        var: String,
        /// Position, after trimming, of the first non-hex character.
        position: usize,
    },

    /// A passphrase was empty.
    #[error("passphrase must not be empty")]
    EmptyPassphrase,

    /// A key-derivation parameter (typically read from a file) is out of range.
    #[error("KDF parameter {field} = {value} is outside the allowed range {min}..={max}")]
    KdfParam {
        /// Name of the offending `KdfParams` field.
        field: &'static str,
        /// The rejected value.
        value: u32,
        /// Smallest accepted value.
        min: u32,
        /// Largest accepted value.
        max: u32,
    },

    /// Argon2id itself reported a failure (e.g. memory could not be allocated).
    #[error("Argon2id key derivation failed: {reason}")]
    Kdf {
        /// Argon2's description of the failure.
        reason: String,
    },

    /// A keystream range `[offset, offset + len)` does not fit in the
    /// keystream (offset arithmetic would overflow).
    #[error("keystream range of {len} bytes at offset {offset} lies beyond the end of the keystream")]
    KeystreamRange {
        /// Requested starting offset.
        offset: u64,
        /// Requested length in bytes.
        len: usize,
    },

    /// An element bit mask was empty or too long.
    #[error("element mask must be 1 to {max} bytes long; found {len} bytes")]
    InvalidMask {
        /// Length of the rejected mask.
        len: usize,
        /// Longest accepted mask.
        max: usize,
    },

    /// A keyed shuffle was asked to permute more items than its `u32` indices allow.
    #[error("a keyed shuffle permutes at most {max} items; asked for {len}")]
    ShuffleTooLong {
        /// Requested number of items.
        len: usize,
        /// Largest accepted number of items.
        max: u64,
    },
}
