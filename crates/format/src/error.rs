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
    #[error("{0}")]
    Invalid(String),
}

impl FormatError {
    /// A short, stable identifier of the error kind (`truncated`, `malformed`, ...),
    /// used in JSON output and in the table of expected errors of the hostile fixtures.
    pub fn kind(&self) -> &'static str {
        match self {
            FormatError::Io { .. } => "io",
            FormatError::Truncated { .. } => "truncated",
            FormatError::Malformed { .. } => "malformed",
            FormatError::NoGraph => "no_graph",
            FormatError::NegativeDim { .. } => "negative_dim",
            FormatError::DimOverflow { .. } => "dim_overflow",
            FormatError::DataLength { .. } => "data_length",
            FormatError::UnknownDataType { .. } => "unknown_data_type",
            FormatError::TooDeep { .. } => "too_deep",
            FormatError::DuplicateName { .. } => "duplicate_name",
            FormatError::ExternalPath { .. } => "external_path",
            FormatError::ExternalRange { .. } => "external_range",
            FormatError::ExternalMissing { .. } => "external_missing",
            FormatError::Invalid(_) => "invalid",
        }
    }
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;
