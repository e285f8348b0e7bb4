//! Protected model folders (docs/format.md §16): a folder such as a generative model's
//! (`genai_config.json`, `model.onnx` with `model.onnx.data`, tokenizer files, perhaps
//! several models) protected in one step. Every model of the folder (every file named
//! `*.onnx`, with its external data files) is encrypted under one data key wrapped once
//! for the same recipients, the other files are copied unchanged, and each model's header
//! carries a *folder binding*: the folder id drawn for this encryption, the model's own
//! path, every model's path and every copied file's path, length and hash. A reader
//! refuses a missing, changed, extra or swapped file, a model of another folder
//! encryption, and a model under another key.
//!
//! The verbs: [`encrypt`], [`decrypt`], [`verify`], [`rewrap`] (in place). Inspection
//! and other front ends start from [`Folder::open`], which checks a folder without a key:
//!
//! ```no_run
//! use onnx_protect_folder::Folder;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let folder = Folder::open(std::path::Path::new("protected-model"))?;
//! for m in folder.models() {
//!     // `m.path`: relative to the folder ("decoder/model.onnx"); `m.abs`: the file, to
//!     // open with a key as any protected model is opened.
//!     println!("{} ({} data files)", m.path, m.data_files.len());
//! }
//! for f in folder.files() {
//!     println!("{} {} bytes {}", f.path, f.length, f.hash_hex());
//! }
//! // Does this key file's key open every model (each under the one data key)?
//! let (key, _kind) = onnx_protect_core::keys::KeySource::from_key_file(&std::fs::read("model.key")?)?;
//! let tier = folder.check_key(&key)?;
//! # Ok(()) }
//! ```
//!
//! [`Folder::open`] does not hash the models' content (each model's reader does, as for
//! a single model); it does hash the copied files, which a loader then reads from
//! [`CopiedFile::abs`]. Errors are [`FolderError`]s naming the file they are about
//! (relative to the folder); a model's own error is the source of
//! [`FolderError::Model`].
//!
//! Modules: `walk` (the files of a folder, links and special files refused), `path`
//! (relative paths as bindings write them), `binding` (the binding's rules and the copied
//! files' hash), `folder` ([`Folder`]), `stage` (outputs that appear whole), `ops` (the
//! verbs), `error`.

#![forbid(unsafe_code)]

mod binding;
mod error;
mod folder;
mod ops;
mod path;
mod stage;
mod walk;

pub use binding::{file_hash, FILE_HASH_DOMAIN, FOLDER_ID_LEN, MAX_MODELS};
pub use error::{ErrorKind, FolderError, Result};
pub use folder::{CopiedFile, Folder, FolderModel};
pub use ops::{
    decrypt, encrypt, recover, rewrap, verify, DecryptedFolder, EncryptedFolder, FileEntry, ModelReport,
    RewrappedFolder, VerifiedFolder,
};
pub use path::MAX_PATH_LEN;
pub use walk::{MAX_DEPTH, MAX_FILES};
