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
//! * `format2`: the format-2 reader (verify, key tier, top key, info, decryption plan);
//! * [`format1`]: format 1, read only (docs/format.md Appendix B);
//! * [`envelope`]: the format-2 entry found, decoded, checked and matched to the model;
//! * `seal`: the MACs and signatures of a format-2 entry, made and checked in one place;
//! * [`recipients`]: wrapping the data keys for recipients, and opening stanzas;
//! * [`keys`]: the key material a caller gives, and tier keys;
//! * [`licence`]: licences checked when a stanza opens;
//! * [`lock`]: the label lock of the output layer;
//! * [`target`]: a manifest entry matched to a tensor; mode and storage codes;
//! * [`summary`]: what reports say of encrypted tensors;
//! * [`metadata`]: the metadata keys and names a protection goes by;
//! * `action`: what a span becomes (a keystream, a permutation, new bytes);
//! * `permute`: the keyed permutation of the distribution-preserving mode;
//! * `content`: one pass over the covered files, described once;
//! * `pass`: the pass that reads, transforms, hashes and writes;
//! * `decryption`: one decryption plan, and its file sink;
//! * `staged`: outputs that appear whole or not at all;
//! * [`journal`]: replacing a file's tail in place, safe against a crash;
//! * `crash`: crash points for tests (feature `test-hooks`);
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

mod action;
pub mod check;
mod content;
mod crash;
mod decryption;
mod encrypt;
pub mod envelope;
pub mod error;
pub mod format1;
mod format2;
pub mod inspect;
pub mod journal;
pub mod keys;
pub mod licence;
pub mod lock;
pub mod memory;
pub mod metadata;
mod pass;
mod permute;
pub mod protect;
pub mod protection;
mod reader;
pub mod recipients;
pub mod rekey;
pub mod rewrap;
mod seal;
mod staged;
pub mod summary;
pub mod target;

pub use action::Rewrite;
pub use staged::OutputRules;
