//! The facade applications use: inspect, encrypt, decrypt and verify ONNX models.
//!
//! A protected model's entry is read once into a [`protection::Protection`] (format 2, or
//! the read-only format 1) whose methods are the verbs; each format's reader answers them.
//! The modules, one room each:
//!
//! * [`protect`]: encrypt, decrypt, verify and sign model files;
//! * `encrypt`: encryption into format 2 (selection, data keys, header, the pass);
//! * [`memory`]: decryption into memory (the memory sink of a decryption);
//! * [`rekey`]: key rotation by re-encryption;
//! * [`rewrap`]: adding and removing recipients without touching a weight;
//! * [`check`]: the CI gate;
//! * [`inspect`]: the summary of a model;
//! * [`protection`]: the entry read once, dispatched to its format's reader;
//! * `reader`: the verbs each format's reader answers;
//! * [`format2`]: format 2, its entry ([`format2::ProtectedV2`]) and reader, with the
//!   entry's envelope, seal and recipients;
//! * [`format1`]: format 1, read only (docs/format.md Appendix B);
//! * [`pass`]: the bytes: the pass that reads, transforms, hashes and writes, what a span
//!   becomes, decryption plans, staged outputs, the journal of in-place rewrites;
//! * [`keys`]: the key material a caller gives, and tier keys;
//! * [`licence`]: licences checked when a stanza opens;
//! * [`lock`]: the label lock of the output layer;
//! * [`target`]: a manifest entry matched to a tensor; mode and storage codes;
//! * [`summary`]: what reports say of encrypted tensors;
//! * [`metadata`]: the metadata keys and names a protection goes by;
//! * [`error`]: every error and its kind.
//!
//! No two modules import each other in a circle (`tests/modules.rs`). This crate has no
//! `unsafe` code: file maps and system calls are in `onnx-protect-fsio`.
//!
//! ```
//! use onnx_protect_core::inspect::inspect;
//! use onnx_protect_format::Model;
//! # let bytes = onnx_protect_format::testutil::tiny_model();
//! let model = Model::from_vec(bytes, None)?;
//! let report = inspect(&model);
//! assert_eq!(report.weights.count, 1);
//! # Ok::<(), onnx_protect_format::FormatError>(())
//! ```

#![forbid(unsafe_code)]

pub mod check;
mod encrypt;
pub mod error;
pub mod format1;
pub mod format2;
pub mod inspect;
pub mod keys;
pub mod licence;
pub mod lock;
pub mod memory;
pub mod metadata;
pub mod pass;
pub mod protect;
pub mod protection;
mod reader;
pub mod rekey;
pub mod rewrap;
pub mod summary;
pub mod target;

pub use pass::action::Rewrite;
pub use pass::staged::OutputRules;
