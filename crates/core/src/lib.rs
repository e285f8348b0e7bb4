//! The facade applications use: inspect, encrypt, decrypt and verify ONNX models.
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
pub mod error;
pub mod inspect;
pub mod keys;
pub mod manifest;
pub mod memory;
mod permute;
pub mod protect;
pub mod rekey;
mod restore;
mod seal;
mod staged;
mod unlock;
mod writer;
