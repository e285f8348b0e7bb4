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

    /// A key file is in none of the accepted forms: no key line, and neither
    /// 32 bytes nor 64 hex digits (after trimming surrounding ASCII whitespace).
    #[error(
        "not a key file: a key file holds an `onnx-protect-key-v1` line, 64 hex digits or 32 raw bytes; \
         found {found} bytes that are none of these"
    )]
    KeyFileLength {
        /// Total size of the key file in bytes.
        found: usize,
    },

    /// A key file had 64 characters (after trimming) but not all were hex digits.
    #[error("a key file of 64 characters must be 64 hex digits; the first non-hex character is at byte {position}")]
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

    /// A key file is larger than any key file is.
    #[error("not a key file: it is larger than {max} bytes")]
    KeyFileTooLarge {
        /// Largest key file read, in bytes.
        max: usize,
    },

    /// A key file in the typed form has a malformed line.
    #[error("key file line {line}: {reason}")]
    KeyFileSyntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A key line of a version this build does not read.
    #[error("key file line {line}: unknown key line version (this build reads `onnx-protect-key-v1` lines)")]
    KeyFileVersion {
        /// 1-based line number.
        line: usize,
    },

    /// A key file records a tier number outside 1..=max.
    #[error("key file records tier {value}; tiers are numbered 1 to {max}")]
    KeyKindTier {
        /// The recorded number.
        value: u32,
        /// Largest tier.
        max: u32,
    },

    /// A key of the wrong kind for its use (a tier key where a master key is needed).
    #[error("this is {found}; {needed} is needed here")]
    WrongKeyKind {
        /// What the key file says the key is.
        found: crate::KeyKind,
        /// What the caller needs.
        needed: &'static str,
    },
}
