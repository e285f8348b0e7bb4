//! Running protected ONNX models with the pure-Rust [tract] runtime, and
//! measuring how strong their protection is.
//!
//! * [`engine`]: load model bytes held in memory (external data from buffers),
//!   optimise for input shapes, run; operators tract lacks are named in
//!   [`RuntimeError::UnsupportedOps`].
//! * [`rewrite`]: in-memory rewrites of the graph for tract (`Gelu` by its
//!   definition, symbolic `value_info` dimensions dropped).
//! * [`npy`]: a small `.npy` reader and writer for inputs and outputs.
//! * [`attack`]: what a key-less attacker can rebuild from the public manifest
//!   (encrypted spans set to zero, to the tensor's mean, or initialised by role).
//! * [`bn`]: BatchNormalization re-estimation from unlabelled inputs, after a fill.
//! * [`assess`]: the report behind `onnx-protect assess`, headed by the best
//!   key-less attack.
//! * [`search`]: the smallest policy of a family whose best key-less attack meets a
//!   target, behind `onnx-protect policy search`.
//! * [`tiers`]: tier shares fitted to asked service levels on labelled data, behind
//!   `encrypt --tier-levels`.
//!
//! This crate is the only one in the workspace that depends on tract; the
//! `onnx-protect` binary uses it behind its default `tract` feature.
//!
//! ```
//! use std::collections::BTreeMap;
//! use onnx_protect_core::memory::InMemory;
//! use onnx_protect_core::protect::{encrypt, EncryptOptions};
//! use onnx_protect_core::keys::KeySource;
//! use onnx_protect_core::format2::recipients::EncryptTo;
//! use onnx_protect_crypto::MasterKey;
//! use onnx_protect_runtime::engine::{run_once, External};
//! use onnx_protect_runtime::npy::{Dtype, NpyArray};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let (plain, protected) = (dir.path().join("m.onnx"), dir.path().join("p.onnx"));
//! # std::fs::write(&plain, onnx_protect_format::testutil::tiny_model())?;
//! let key = KeySource::key(MasterKey::from_bytes([1; 32]));
//! let policy = onnx_protect_select::Policy::default();
//! encrypt(&plain, &protected, &EncryptTo::key(key.clone()), &EncryptOptions::new(&policy))?;
//!
//! // Decrypt in memory and run: no plaintext file is written.
//! let model = InMemory::file(&protected, &key).load()?;
//! let x = NpyArray::new(Dtype::F32, vec![1, 2], [1.0f32, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect())?;
//! let outputs = run_once(&model, &External::new(), &BTreeMap::from([("x".to_string(), x)]))?;
//! let (name, y) = &outputs[0];
//! assert_eq!((name.as_str(), y.to_f64()), ("y", vec![5.0, 7.0, 9.0])); // x · W with the original W
//! # Ok(())
//! # }
//! ```
//!
//! [tract]: https://github.com/sonos/tract

#![forbid(unsafe_code)]

pub mod assess;
pub mod attack;
pub mod bn;
pub mod engine;
pub mod error;
pub mod npy;
pub mod rewrite;
pub mod search;
pub mod tiers;

pub use error::{ErrorKind, Result, RuntimeError};
