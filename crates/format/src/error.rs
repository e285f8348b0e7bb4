//! The error type of the format crate.

use std::path::PathBuf;

/// Everything that can be wrong with a model file or its external data.
///
/// Every variant names where the problem is: a byte offset, a tensor, a node,
/// a graph or a path, so a user can act on the one-line message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The bytes are not an ONNX model at all (empty, text, an image, an archive,
    /// random bytes): said in words rather than as a protobuf decoding failure.
    #[error("not an ONNX model: {reason}")]
    NotOnnx { reason: String },
    #[error("truncated protobuf: input ends inside a field at byte {at} (in {context})")]
    Truncated { at: u64, context: String },
    #[error("malformed protobuf at byte {at} (in {context}): {reason}")]
    Malformed { at: u64, context: String, reason: String },
    #[error("the model has no graph")]
    NoGraph,
    #[error("tensor '{tensor}' has a negative dimension {dim}")]
    NegativeDim { tensor: String, dim: i64 },
    #[error("tensor '{tensor}': the element count or byte size of dims {dims:?} overflows 64 bits")]
    DimOverflow { tensor: String, dims: Vec<u64> },
    #[error("tensor '{tensor}': {field} holds {actual} {unit} but dims × dtype need {expected}")]
    DataLength { tensor: String, field: &'static str, expected: u64, actual: u64, unit: &'static str },
    #[error("tensor '{tensor}' has unknown data_type {data_type}")]
    UnknownDataType { tensor: String, data_type: i64 },
    #[error("subgraphs nested deeper than {limit} levels at {context}")]
    TooDeep { limit: usize, context: String },
    #[error("{what} name '{name}' is defined twice in graph {graph}")]
    DuplicateName { name: String, graph: String, what: &'static str },
    #[error("tensor '{tensor}': external data location '{location}' is refused: {reason}")]
    ExternalPath { tensor: String, location: String, reason: String },
    #[error("tensor '{tensor}': external data in '{location}' is out of range: {reason}")]
    ExternalRange { tensor: String, location: String, reason: String },
    #[error("tensor '{tensor}': external data file '{location}' does not exist (looked for {path})")]
    ExternalMissing { tensor: String, location: String, path: PathBuf },
    /// A model given as bytes (no directory, e.g. read from a pipe) refers to external data.
    #[error(
        "tensor '{tensor}' keeps its data in the external file '{location}', which cannot be found for a \
         model given as a stream of bytes; give the model's path instead"
    )]
    ExternalWithoutDir { tensor: String, location: String },
    #[error("{0}")]
    Invalid(String),
}

/// The kind of a [`FormatError`], for callers that decide by kind (exit codes,
/// JSON reports). Exhaustive on purpose: a new kind must be placed by every caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Io,
    NotOnnx,
    Truncated,
    Malformed,
    NoGraph,
    NegativeDim,
    DimOverflow,
    DataLength,
    UnknownDataType,
    TooDeep,
    DuplicateName,
    ExternalPath,
    ExternalRange,
    ExternalMissing,
    ExternalWithoutDir,
    Invalid,
}

impl ErrorKind {
    /// A short, stable identifier (`truncated`, `not_onnx`, ...), used in JSON output
    /// and in the table of expected errors of the hostile fixtures.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::NotOnnx => "not_onnx",
            ErrorKind::Truncated => "truncated",
            ErrorKind::Malformed => "malformed",
            ErrorKind::NoGraph => "no_graph",
            ErrorKind::NegativeDim => "negative_dim",
            ErrorKind::DimOverflow => "dim_overflow",
            ErrorKind::DataLength => "data_length",
            ErrorKind::UnknownDataType => "unknown_data_type",
            ErrorKind::TooDeep => "too_deep",
            ErrorKind::DuplicateName => "duplicate_name",
            ErrorKind::ExternalPath => "external_path",
            ErrorKind::ExternalRange => "external_range",
            ErrorKind::ExternalMissing => "external_missing",
            ErrorKind::ExternalWithoutDir => "external_without_dir",
            ErrorKind::Invalid => "invalid",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FormatError {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FormatError::Io { .. } => ErrorKind::Io,
            FormatError::NotOnnx { .. } => ErrorKind::NotOnnx,
            FormatError::Truncated { .. } => ErrorKind::Truncated,
            FormatError::Malformed { .. } => ErrorKind::Malformed,
            FormatError::NoGraph => ErrorKind::NoGraph,
            FormatError::NegativeDim { .. } => ErrorKind::NegativeDim,
            FormatError::DimOverflow { .. } => ErrorKind::DimOverflow,
            FormatError::DataLength { .. } => ErrorKind::DataLength,
            FormatError::UnknownDataType { .. } => ErrorKind::UnknownDataType,
            FormatError::TooDeep { .. } => ErrorKind::TooDeep,
            FormatError::DuplicateName { .. } => ErrorKind::DuplicateName,
            FormatError::ExternalPath { .. } => ErrorKind::ExternalPath,
            FormatError::ExternalRange { .. } => ErrorKind::ExternalRange,
            FormatError::ExternalMissing { .. } => ErrorKind::ExternalMissing,
            FormatError::ExternalWithoutDir { .. } => ErrorKind::ExternalWithoutDir,
            FormatError::Invalid(_) => ErrorKind::Invalid,
        }
    }
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;
