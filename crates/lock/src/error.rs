//! The crate's error type.
//!
//! No variant carries key material or anything derived from it (a permutation, a seed):
//! only names, shapes, operators and positions.

use onnx_protect_crypto::CryptoError;
use onnx_protect_format::FormatError;

/// Everything that can go wrong when finding, locking or unlocking an output layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// No graph output comes from an output layer this crate can lock; `found` says what
    /// each output comes from.
    #[error(
        "no output layer to lock: {found} (the scores must come from a final Gemm or MatMul with a constant \
         weight, optionally followed by Add of a constant bias, then Softmax, LogSoftmax, ArgMax, TopK, \
         Identity, Cast, Flatten or Reshape)"
    )]
    NotFound { found: String },
    /// Several output layers qualify; `heads` lists them.
    #[error("{count} output layers could be locked ({heads}); name one")]
    Ambiguous { count: usize, heads: String },
    /// The requested output layer (by node name) is not among the candidates.
    #[error("no output layer at node '{node}': {reason}")]
    NoSuchNode { node: String, reason: String },
    /// An output layer was found but cannot be locked without changing what some output
    /// means, or its tensors cannot be rewritten in place.
    #[error("cannot lock the output layer {head}: {reason}")]
    Unsupported { head: String, reason: String },
    /// Locked bytes or a lock record that do not fit the model (the wrong model, a
    /// changed tensor).
    #[error("the lock does not fit the model: {0}")]
    Mismatch(String),
    /// The model could not be read.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Deriving the permutation failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// The kind of a [`LockError`], for callers that decide by kind (exit codes).
/// Exhaustive on purpose: a new kind must be placed by every caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NotFound,
    Ambiguous,
    NoSuchNode,
    Unsupported,
    Mismatch,
    /// The model could not be read: the format error's own kind.
    Format(onnx_protect_format::ErrorKind),
    Crypto,
}

impl LockError {
    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            LockError::NotFound { .. } => ErrorKind::NotFound,
            LockError::Ambiguous { .. } => ErrorKind::Ambiguous,
            LockError::NoSuchNode { .. } => ErrorKind::NoSuchNode,
            LockError::Unsupported { .. } => ErrorKind::Unsupported,
            LockError::Mismatch(_) => ErrorKind::Mismatch,
            LockError::Format(e) => ErrorKind::Format(e.kind()),
            LockError::Crypto(_) => ErrorKind::Crypto,
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, LockError>;
