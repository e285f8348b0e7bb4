//! Errors of a batch run: [`BatchError`] stops the run before any file is
//! processed; [`FileError`] fails one file and the run goes on.

use std::path::PathBuf;

use onnx_protect_core::error::CoreError;

/// Why a batch run could not start. No file has been processed when it is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Every operation but verify writes outputs, so it needs an output directory.
    #[error("batch {op} needs an output directory")]
    NoOutputDir { op: &'static str },
    /// The output directory is the walked input directory.
    #[error("the output directory {} is the input directory; write the outputs somewhere else", .dir.display())]
    OutputIsInput { dir: PathBuf },
    /// An operation that writes beside each model was given an output directory.
    #[error("batch {op} writes beside each model; --out-dir does not apply")]
    OutputDirNotUsed { op: &'static str },
    /// The output directory does not exist and may not be created.
    #[error("the output directory {} does not exist", .dir.display())]
    NoSuchOutputDir { dir: PathBuf },
    /// The directory to walk is not a directory.
    #[error("{}: not a directory", .path.display())]
    NotADirectory { path: PathBuf },
    /// A line of the list file that cannot be used.
    #[error("{}:{line}: {reason}", .file.display())]
    List { file: PathBuf, line: usize, reason: String },
    /// A path found while walking that cannot name an output (not UTF-8).
    #[error("path {}: {reason}", .path.display())]
    Path { path: PathBuf, reason: &'static str },
    /// A directory or the list file could not be read, or the output directory created.
    #[error("cannot {action} {}", .path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
}

/// The kind of a [`BatchError`]. Exhaustive on purpose: callers that decide by kind
/// (exit codes) must place every new kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchErrorKind {
    /// The options cannot be used together (no output directory, output = input, a
    /// missing output directory without leave to create it).
    Options,
    /// The input list: not a directory, a bad list line, a path that cannot be used.
    Inputs,
    Io,
}

impl BatchError {
    /// The kind of this error.
    pub fn kind(&self) -> BatchErrorKind {
        match self {
            BatchError::NoOutputDir { .. }
            | BatchError::OutputIsInput { .. }
            | BatchError::NoSuchOutputDir { .. }
            | BatchError::OutputDirNotUsed { .. } => BatchErrorKind::Options,
            BatchError::NotADirectory { .. } | BatchError::List { .. } | BatchError::Path { .. } => {
                BatchErrorKind::Inputs
            }
            BatchError::Io { .. } => BatchErrorKind::Io,
        }
    }
}

/// Why one file failed. The run goes on with the other files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Opening, encrypting, decrypting, re-keying or verifying the model failed.
    /// The [`CoreError`] is also this error's source, so callers that walk the
    /// source chain find it. The message carries the causes too (the operating
    /// system's reason for a failed write, as the single-file commands print it).
    #[error("{}", onnx_protect_core::error::with_causes(.0))]
    Core(#[from] CoreError),
    /// Another model of the same run writes this output (models that share external data files).
    #[error("{} is also written by {other} (models that share external data files are not supported)", .path.display())]
    SharedOutput { path: PathBuf, other: String },
    /// An output or the resume record could not be read back, hashed or written.
    /// (The I/O error is part of the message, not a source: a report line is one line.)
    #[error("cannot {action} {}: {error}", .path.display())]
    Io { action: &'static str, path: PathBuf, error: std::io::Error },
    /// Signing the model (a bundle beside it) failed.
    #[error("{0}")]
    Bundle(#[from] onnx_protect_bundle::BundleError),
    /// Encrypting, decrypting or verifying a model folder failed (the
    /// [`onnx_protect_folder::FolderError`] is also the source).
    #[error("{}", onnx_protect_core::error::with_causes(.0))]
    Folder(#[from] onnx_protect_folder::FolderError),
    /// An operation that does not take a model folder was given one.
    #[error("batch {op} does not take a model folder; run {op} on each of its models instead")]
    FolderOperation { op: &'static str },
}

/// The kind of a [`FileError`]. Exhaustive on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileErrorKind {
    /// A [`CoreError`]: its own kind tells more (it is the error's source).
    Core,
    SharedOutput,
    Io,
    /// A [`onnx_protect_bundle::BundleError`] (its source).
    Bundle,
    /// A [`onnx_protect_folder::FolderError`] (its source).
    Folder,
    /// A model folder given to an operation that does not take one.
    FolderOperation,
}

impl FileError {
    /// The kind of this error.
    pub fn kind(&self) -> FileErrorKind {
        match self {
            FileError::Core(_) => FileErrorKind::Core,
            FileError::SharedOutput { .. } => FileErrorKind::SharedOutput,
            FileError::Io { .. } => FileErrorKind::Io,
            FileError::Bundle(_) => FileErrorKind::Bundle,
            FileError::Folder(_) => FileErrorKind::Folder,
            FileError::FolderOperation { .. } => FileErrorKind::FolderOperation,
        }
    }

    /// A short, stable name of the failure for reports: the core error's kind
    /// (`wrong_key`, `modified`, `truncated`, ...), a folder error's
    /// ([`onnx_protect_folder::FolderError::name`]), `shared_output`, `folder_operation` or
    /// `io`.
    pub fn name(&self) -> &'static str {
        match self {
            FileError::Core(c) => c.kind().as_str(),
            FileError::SharedOutput { .. } => "shared_output",
            FileError::Io { .. } => "io",
            FileError::Bundle(_) => "bundle",
            FileError::Folder(f) => f.name(),
            FileError::FolderOperation { .. } => "folder_operation",
        }
    }
}

/// An [`FileError::Io`] for `path`.
pub(crate) fn file_io(action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.to_path_buf();
    move |error| FileError::Io { action, path, error }
}

/// A [`BatchError::Io`] for `path`.
pub(crate) fn batch_io(action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> BatchError {
    let path = path.to_path_buf();
    move |source| BatchError::Io { action, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_operating_systems_reason() {
        let e = FileError::from(CoreError::Write {
            path: PathBuf::from("out/model.onnx"),
            source: std::io::Error::from_raw_os_error(28),
        });
        let text = e.to_string();
        assert!(text.starts_with("cannot write out/model.onnx: "), "{text}");
        assert!(text.contains(&std::io::Error::from_raw_os_error(28).to_string()), "{text}");
        // A cause the message already holds is not repeated.
        let m = FileError::from(CoreError::Modified(onnx_protect_core::error::Modified::Checksum)).to_string();
        assert_eq!(m, "modified: the manifest's checksum does not match");
    }
}
