//! The errors of folder operations, each naming the file it is about (a path relative to
//! the folder, or the folder or output itself).

use std::path::PathBuf;

use onnx_protect_core::error::CoreError;
use onnx_protect_format::FormatError;

/// What went wrong with a folder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FolderError {
    /// A file or directory could not be read, written, created or renamed.
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The input is not a directory.
    #[error("{} is not a directory", .path.display())]
    NotADirectory { path: PathBuf },
    /// A symbolic link inside a folder being encrypted, or one not leading to a regular
    /// file in a folder read.
    #[error("{path}: a symbolic link inside the folder (refused)")]
    Link { path: String },
    /// Something that is neither a regular file nor a directory.
    #[error("{path}: not a regular file or a directory")]
    Special { path: String },
    /// A name that is not UTF-8, or not a plain relative path (docs/format.md §16).
    #[error("{path}: cannot be named in a folder binding: {reason}")]
    Name { path: String, reason: &'static str },
    /// More files, models or directory levels than a folder may have.
    #[error("{what}")]
    TooLarge { what: String },
    /// No file named `*.onnx`.
    #[error("{}: no ONNX model (a file named *.onnx) in the folder", .path.display())]
    NoModel { path: PathBuf },
    /// One model's error (the path is relative to the folder); the error is the source.
    #[error("{path}")]
    Model {
        path: String,
        #[source]
        source: CoreError,
    },
    /// A model's file could not be parsed (while encrypting); the error is the source.
    #[error("{path}")]
    Format {
        path: String,
        #[source]
        source: FormatError,
    },
    /// An external data file that two models name, or that is a model itself.
    #[error("{path}: {reason}")]
    DataFile { path: String, reason: String },
    /// A protected model without a folder binding (protected alone).
    #[error("modified: {path} was protected alone, not as a model of this folder")]
    NotBound { path: String },
    /// A binding that breaks a rule of docs/format.md §16.
    #[error("modified: {path}: its folder binding is invalid: {reason}")]
    BadBinding { path: String, reason: String },
    /// A model from another folder encryption.
    #[error("modified: {path} is from another folder encryption than {first} (their folder ids differ)")]
    OtherFolder { path: String, first: String },
    /// Two models whose bindings list other models or files.
    #[error("modified: {path} and {first} list other {what}")]
    Disagree { path: String, first: String, what: &'static str },
    /// A model whose binding names another path.
    #[error("modified: {path}: its folder binding says it is {says}")]
    Swapped { path: String, says: String },
    /// A model under another data key, or with other recipients or another number of tiers.
    #[error("modified: {path} is not under the data key and recipients of {first} ({what})")]
    OtherKey { path: String, first: String, what: &'static str },
    /// Two models whose headers share a stream id (their keystreams would repeat).
    #[error("modified: {path} and {first} use the same stream id {stream}")]
    SharedStream { path: String, first: String, stream: u64 },
    /// A file the bindings list that is not there.
    #[error("modified: {path} is missing (the folder binding lists it)")]
    Missing { path: String },
    /// A file no binding lists and no model names as its data.
    #[error("modified: {path} is not part of the protected folder (no folder binding lists it)")]
    Extra { path: String },
    /// A listed file of another length or content.
    #[error("modified: {path} changed: {what}")]
    FileChanged { path: String, what: String },
    /// The output cannot be written as asked.
    #[error("{}: {reason}", .path.display())]
    Output { path: PathBuf, reason: &'static str },
    /// An option a folder does not take.
    #[error("{0}")]
    Options(&'static str),
    /// A rewrap that stopped at model `path` after rewriting the models `done`; the error
    /// is the source.
    #[error("rewrap stopped at {path} after rewrapping {} (rewrap the other models alone to finish)", .done.join(", "))]
    PartlyRewrapped {
        path: Box<str>,
        done: Box<[String]>,
        #[source]
        source: CoreError,
    },
}

/// The kind of a [`FolderError`], for callers that choose what to do by kind (exit codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reading or writing failed.
    Io,
    /// The folder cannot be protected or read as it is: a link, a special file, a name, a
    /// size, no model, a shared data file.
    Invalid,
    /// The folder no longer matches its bindings.
    Modified,
    /// The output cannot be written as asked.
    Output,
    /// An option a folder does not take.
    Options,
    /// A model's own error: its [`CoreError`] or [`FormatError`] is the source.
    Model,
}

impl FolderError {
    /// The kind of the error.
    pub fn kind(&self) -> ErrorKind {
        use FolderError as E;
        match self {
            E::Io { .. } => ErrorKind::Io,
            E::NotADirectory { .. }
            | E::Link { .. }
            | E::Special { .. }
            | E::Name { .. }
            | E::TooLarge { .. }
            | E::NoModel { .. }
            | E::DataFile { .. } => ErrorKind::Invalid,
            E::NotBound { .. }
            | E::BadBinding { .. }
            | E::OtherFolder { .. }
            | E::Disagree { .. }
            | E::Swapped { .. }
            | E::OtherKey { .. }
            | E::SharedStream { .. }
            | E::Missing { .. }
            | E::Extra { .. }
            | E::FileChanged { .. } => ErrorKind::Modified,
            E::Output { .. } => ErrorKind::Output,
            E::Options(_) => ErrorKind::Options,
            E::Model { .. } | E::Format { .. } | E::PartlyRewrapped { .. } => ErrorKind::Model,
        }
    }
}

impl FolderError {
    /// The library's error kind a front end (Python, C) reports this as: a model's own
    /// error keeps its kind; otherwise `Io`, `Modified`, `Output`, and `BadManifest` for a
    /// folder that cannot be read as a protected one.
    pub fn core_kind(&self) -> onnx_protect_core::error::ErrorKind {
        use onnx_protect_core::error::ErrorKind as Core;
        match self {
            FolderError::Model { source, .. } => source.kind(),
            e => match e.kind() {
                ErrorKind::Io => Core::Io,
                ErrorKind::Modified => Core::Modified,
                ErrorKind::Output => Core::Output,
                _ => Core::BadManifest,
            },
        }
    }
}

impl FolderError {
    /// A short, stable name of the failure for reports: a model's own error's kind
    /// (`wrong_key`, `modified`, `truncated`, ...), else `modified`, `io`,
    /// `invalid_folder`, `output` or `options`.
    pub fn name(&self) -> &'static str {
        match self {
            FolderError::Model { source, .. } | FolderError::PartlyRewrapped { source, .. } => source.kind().as_str(),
            FolderError::Format { source, .. } => source.kind().as_str(),
            e => match e.kind() {
                ErrorKind::Io => "io",
                ErrorKind::Modified => "modified",
                ErrorKind::Output => "output",
                ErrorKind::Options => "options",
                ErrorKind::Invalid | ErrorKind::Model => "invalid_folder",
            },
        }
    }
}

pub type Result<T, E = FolderError> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FolderError {
    let path = path.into();
    move |source| FolderError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rewrap that stopped part way names the model it stopped at and those rewritten
    /// before it; the model's error is the source, said once.
    #[test]
    fn a_partial_rewrap_names_the_models() {
        let e = FolderError::PartlyRewrapped {
            path: "vision/model.onnx".into(),
            done: vec!["decoder.onnx".to_string()].into(),
            source: CoreError::Write { path: "vision/model.onnx".into(), source: std::io::Error::other("disk full") },
        };
        let text = onnx_protect_core::error::with_causes(&e);
        assert!(text.starts_with("rewrap stopped at vision/model.onnx after rewrapping decoder.onnx"), "{text}");
        assert!(text.ends_with("disk full"), "{text}");
        assert_eq!(text.matches("disk full").count(), 1, "{text}");
        assert_eq!(e.name(), "io");
        assert_eq!(e.kind(), ErrorKind::Model);
    }
}
