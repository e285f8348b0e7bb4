//! Errors of running and assessing models.

use std::path::PathBuf;

use onnx_protect_core::error::CoreError;
use onnx_protect_format::FormatError;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// Reading the model or its protection manifest, or decrypting it.
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The model uses operators tract does not implement.
    #[error("tract cannot run operator{} {}", if .ops.len() == 1 { "" } else { "s" }, .ops.join(", "))]
    UnsupportedOps {
        /// `OpType (node 'name')` for each unsupported node.
        ops: Vec<String>,
    },
    /// tract refused or failed to run the model.
    #[error("tract: {0}")]
    Tract(String),
    /// The inputs do not fit the model.
    #[error("input: {0}")]
    Input(String),
    /// A `.npy` file that cannot be read or written, or an array that does not fit.
    #[error(transparent)]
    Npy(#[from] onnx_protect_npy::NpyError),
    /// (The I/O error is part of the message, not a source: a chain says it once.)
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
}

/// The kind of a [`RuntimeError`]. Exhaustive on purpose: callers that decide by kind
/// (exit codes) must place every new kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A [`CoreError`], with its kind.
    Core(onnx_protect_core::error::ErrorKind),
    Format(onnx_protect_format::ErrorKind),
    UnsupportedOp,
    Runtime,
    Input,
    Npy,
    Io,
}

impl RuntimeError {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RuntimeError::Core(e) => ErrorKind::Core(e.kind()),
            RuntimeError::Format(e) => ErrorKind::Format(e.kind()),
            RuntimeError::UnsupportedOps { .. } => ErrorKind::UnsupportedOp,
            RuntimeError::Tract(_) => ErrorKind::Runtime,
            RuntimeError::Input(_) => ErrorKind::Input,
            RuntimeError::Npy(_) => ErrorKind::Npy,
            RuntimeError::Io { .. } => ErrorKind::Io,
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
