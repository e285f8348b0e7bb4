//! The facade applications use: inspect, encrypt, decrypt and verify ONNX models.
//!
//! The verbs are in [`protect`] (encrypt, decrypt, verify), [`memory`] (decryption into
//! memory), [`rekey`] (key rotation), [`check`] (the CI gate) and [`inspect`]. They are
//! pipelines over modules that each hold one step, in the order a key and a file meet
//! them: [`keys`] (where the master key comes from, tier keys), [`manifest`] (reading,
//! validating and building the manifest), `seal` (leaves, MACs, checksums), `unlock`
//! (the key check and the MACs before any output), `restore` (what a decryption up to a
//! tier does), `action` (what happens to a span), `staged` (outputs that appear whole or
//! not at all) and `writer` (the one pass that writes them). Errors are [`error::CoreError`].
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
pub mod manifest;
pub mod memory;
mod pass;
mod permute;
pub mod protect;
mod recipients;
pub mod rekey;
mod restore;
pub mod rewrap;
mod seal;
mod staged;
mod unlock;

pub use staged::OutputRules;
