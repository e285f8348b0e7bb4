//! The facade applications use: inspect, encrypt, decrypt and verify ONNX models.
//!
//! The verbs are in [`protect`] (encrypt, decrypt, verify, sign), [`memory`] (decryption
//! into memory), [`rekey`] (key rotation by re-encryption), [`rewrap`] (adding and
//! removing recipients), [`check`] (the CI gate) and [`inspect`].
//!
//! Each verb reads a model's entry once into `protection::Protection` (format 2 or
//! format 1) and matches on it once. Format 2, which every encryption writes, is carried
//! out by `format2` over the modules that each hold one of its steps: [`envelope`]
//! (finding, decoding and building the entry), `recipients` (wrapping and opening the
//! data keys), `action` and `permute` (what happens to a span), `content` and `pass` (the
//! one pass that reads, transforms, hashes and writes the covered files), `staged`
//! (outputs that appear whole or not at all) and `journal` (replacing a file's tail in
//! place). Format 1 (docs/format.md
//! Appendix B) is read only, through [`manifest`], [`keys`] (its master key from a key or
//! passphrase), `seal`, `unlock` and `restore`. Errors are [`error::CoreError`].
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
pub mod envelope;
pub mod error;
mod format2;
pub mod inspect;
mod journal;
pub mod keys;
pub mod licence;
pub mod lock;
pub mod manifest;
pub mod memory;
mod pass;
mod permute;
pub mod protect;
mod protection;
mod recipients;
pub mod rekey;
mod restore;
pub mod rewrap;
mod seal;
mod staged;
mod unlock;

pub use staged::OutputRules;
