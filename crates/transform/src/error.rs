//! The crate's error type.
//!
//! No variant carries key material or anything derived from it (permutations,
//! flip masks, FFX tables): only shapes, names, positions and parameters.

use std::path::PathBuf;

use onnx_protect_crypto::CryptoError;
use onnx_protect_format::FormatError;

/// Everything that can go wrong when transforming inputs or a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransformError {
    /// The requested transform is not valid (block size, no transform chosen, bad range, ...).
    #[error("invalid transform: {0}")]
    Spec(String),
    /// The input tensor or image does not fit the transform (shape, layout, channels).
    #[error("{0}")]
    Shape(String),
    /// A value lies outside the declared value range (needed by neg/pos flip and FFX).
    #[error("value {value} at element {index} is outside the declared range [{lo}, {hi}]")]
    OutOfRange { index: usize, value: f64, lo: f64, hi: f64 },
    /// A `.npy` file that this crate cannot read or write (the npy error says which file
    /// and what is wrong; it is said once in a chain of causes).
    #[error(transparent)]
    Npy(#[from] onnx_protect_npy::NpyError),
    /// An image that cannot be decoded or encoded.
    #[error("image: {0}")]
    Image(String),
    /// Reading or writing a file failed.
    /// (The I/O error is part of the message, not a source: a chain says it once.)
    #[error("cannot access {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// The model has no patch-embedding layer the transform can be absorbed into.
    #[error("no patch-embedding layer: {0}")]
    NoPatchEmbedding(String),
    /// The requested input transform cannot be absorbed into this model.
    #[error("cannot absorb the transform: {0}")]
    CannotAbsorb(String),
    /// The model uses something this implementation does not handle.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The model is in the wrong state (already transformed, or encrypted).
    #[error("{0}")]
    State(String),
    /// The model could not be parsed or written.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A key-derivation or keystream failure.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// The kind of a [`TransformError`]. Exhaustive on purpose: callers that decide by
/// kind (exit codes) must place every new kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Spec,
    Shape,
    OutOfRange,
    Npy,
    Image,
    Io,
    NoPatchEmbedding,
    CannotAbsorb,
    Unsupported,
    State,
    /// The model could not be parsed or written: the format error's own kind.
    Format(onnx_protect_format::ErrorKind),
    Crypto,
}

impl ErrorKind {
    /// A short, stable identifier of the kind (`spec`, `shape`, ..., `format` for every format kind).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Spec => "spec",
            ErrorKind::Shape => "shape",
            ErrorKind::OutOfRange => "out_of_range",
            ErrorKind::Npy => "npy",
            ErrorKind::Image => "image",
            ErrorKind::Io => "io",
            ErrorKind::NoPatchEmbedding => "no_patch_embedding",
            ErrorKind::CannotAbsorb => "cannot_absorb",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::State => "state",
            ErrorKind::Format(_) => "format",
            ErrorKind::Crypto => "crypto",
        }
    }
}

impl TransformError {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TransformError::Spec(_) => ErrorKind::Spec,
            TransformError::Shape(_) => ErrorKind::Shape,
            TransformError::OutOfRange { .. } => ErrorKind::OutOfRange,
            TransformError::Npy(_) => ErrorKind::Npy,
            TransformError::Image(_) => ErrorKind::Image,
            TransformError::Io { .. } => ErrorKind::Io,
            TransformError::NoPatchEmbedding(_) => ErrorKind::NoPatchEmbedding,
            TransformError::CannotAbsorb(_) => ErrorKind::CannotAbsorb,
            TransformError::Unsupported(_) => ErrorKind::Unsupported,
            TransformError::State(_) => ErrorKind::State,
            TransformError::Format(e) => ErrorKind::Format(e.kind()),
            TransformError::Crypto(_) => ErrorKind::Crypto,
        }
    }
}

/// Result with [`TransformError`].
pub type Result<T, E = TransformError> = std::result::Result<T, E>;
