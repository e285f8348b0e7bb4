//! Errors of running and assessing models.

use std::path::PathBuf;

use onnx_protect_core::protect::CoreError;
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
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl RuntimeError {
    /// Stable short name of the error kind.
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeError::Core(e) => e.kind().as_str(),
            RuntimeError::Format(e) => e.kind(),
            RuntimeError::UnsupportedOps { .. } => "unsupported_op",
            RuntimeError::Tract(_) => "runtime",
            RuntimeError::Input(_) => "input",
            RuntimeError::Npy(_) => "npy",
            RuntimeError::Io { .. } => "io",
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
