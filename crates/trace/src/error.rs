//! The crate's error type.
//!
//! No variant carries key material or anything derived from it (patterns, keystream
//! bytes): only names, counts, paths and parameters.

use std::path::PathBuf;

use onnx_protect_crypto::CryptoError;
use onnx_protect_format::FormatError;

/// Everything that can go wrong when fingerprinting or tracing a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// A recipient ID that is empty, too long or holds a character outside the allowed set.
    #[error("invalid recipient ID {id:?}: {reason}")]
    RecipientId { id: String, reason: &'static str },
    /// A fingerprint strength or false-positive probability out of range.
    #[error("{0}")]
    Parameter(String),
    /// The model has too few float weights to carry a fingerprint that can be found again.
    #[error("only {elements} float weight elements can carry a fingerprint (at least {min} are needed)")]
    TooFewWeights { elements: u64, min: u64 },
    /// The suspect shares no fingerprinted weight with the original.
    #[error("the suspect holds none of the original's {planned} fingerprinted weight tensors (by name, or as an int8/uint8 initializer with a scale and zero point)")]
    NoCommonWeights { planned: usize },
    /// A model could not be read (`what` says which one).
    #[error("{what}")]
    Model {
        what: String,
        #[source]
        source: FormatError,
    },
    /// A fingerprint secret file that is not one (`what` names it; never its bytes).
    #[error("fingerprint secret {what}: {reason}")]
    Secret { what: String, reason: String },
    /// The random number generator or a keystream failed.
    #[error("fingerprint secret: {0}")]
    Key(#[source] CryptoError),
    /// A ledger line that is not a valid entry.
    #[error("ledger {path}, line {line}: {reason}")]
    LedgerEntry { path: PathBuf, line: usize, reason: String },
    /// A ledger that cannot be used as a whole.
    #[error("ledger {path}: {reason}")]
    Ledger { path: PathBuf, reason: String },
    /// The ledger has no entry made with the given fingerprint secret.
    #[error("ledger {path} has no entry made with fingerprint secret {key_id} ({entries} entries under other secrets): wrong secret or wrong ledger")]
    LedgerEmpty { path: PathBuf, key_id: String, entries: usize },
    /// The ledger has entries for the secret, none for this original.
    #[error("ledger {path} has no entry for this original (weights digest {original}; {entries} entries for other models): wrong --original")]
    LedgerNoOriginal { path: PathBuf, original: String, entries: usize },
    /// The ledger's label locks do not fit the original.
    #[error("label lock: {0}")]
    Lock(String),
    /// Reading or writing a file failed.
    /// (The I/O error is part of the message, not a source: a chain says it once.)
    #[error("cannot {action} {path}: {error}")]
    Io { action: &'static str, path: PathBuf, error: std::io::Error },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, TraceError>;

impl TraceError {
    pub(crate) fn model(what: impl Into<String>) -> impl FnOnce(FormatError) -> TraceError {
        let what = what.into();
        move |source| TraceError::Model { what, source }
    }

    pub(crate) fn io<'p>(
        action: &'static str,
        path: &'p std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> TraceError + 'p {
        move |error| TraceError::Io { action, path: path.to_path_buf(), error }
    }
}
