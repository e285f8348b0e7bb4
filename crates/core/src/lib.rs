//! The facade applications use: inspect, encrypt, decrypt and verify ONNX models.
//!
//! A protected model's entry is read once into a [`protection::Protection`] (format 2,
//! or the read-only format 1), whose methods are the verbs; the verbs on files are in
//! [`protect`], [`memory`] decrypts into memory, [`rekey`] and [`rewrap`] rotate keys,
//! [`check`] is the CI gate and [`inspect`] the summary. Every module, each one room:
//!
//! * verbs: [`protect`] (encrypt, decrypt, verify and sign files), `encrypt` (encryption
//!   into format 2), [`memory`] (decryption into memory: the memory sink), [`rekey`],
//!   [`rewrap`], [`check`], [`inspect`];
//! * reading a protection: [`protection`] (the entry read once, dispatched to its
//!   format), [`envelope`] (the format-2 entry: found, decoded, matched to the model),
//!   `reader` (the verbs each format's reader answers), `format2` (format-2 verbs as
//!   methods of the entry), [`format1`] (format 1, read only:
//!   its manifest, keys, seals and restore, docs/format.md Appendix B), [`target`] (a
//!   manifest entry matched to a tensor, the codes of modes and storages), [`summary`]
//!   (what reports say of encrypted tensors), [`metadata`] (the keys and names a
//!   protection goes by);
//! * keys: [`keys`] (the key material a caller gives, tier keys), [`recipients`]
//!   (wrapping and opening the data keys), `seal` (the MACs and signatures of a format-2
//!   entry, made and checked in one place), [`licence`] (licences checked when a stanza
//!   opens), [`lock`] (the label lock of the output layer);
//! * bytes: `action` and `permute` (what a span becomes), `content` (a pass over the
//!   covered files, described once) and `pass` (the one pass that reads, transforms,
//!   hashes and writes), `decryption` (one decryption plan and its file sink), `staged`
//!   (outputs that appear whole or not at all), [`journal`] (replacing a file's tail in
//!   place, safe against a crash), `crash` (crash points for tests);
//! * [`error`]: every error and its kind.
//!
//! This crate has no `unsafe` code: file maps and system calls are in `onnx-protect-fsio`.
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
