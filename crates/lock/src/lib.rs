//! Key-locked outputs of a classifier (the label lock of `encrypt --lock-outputs`):
//! the class order of its output layer is permuted under a key, so the model runs
//! unchanged anywhere but reports wrong classes unless its outputs are read with the key.
//!
//! * [`find_output_layer`]: the final `Gemm`/`MatMul` (optionally `+ Add`) whose scores
//!   reach the graph outputs through operators that keep each class's value its own
//!   (`Softmax`, `LogSoftmax`, `ArgMax`, `TopK`, `Identity`, `Cast`, `Flatten`,
//!   `Reshape`, per-tensor `QuantizeLinear`/`DequantizeLinear`); every other model is
//!   refused with an error naming what was found.
//! * [`ClassPermutation`]: a derangement of the `C` classes drawn from a 32-byte
//!   [`LockSeed`] with the project's keyed shuffle, and reading locked outputs (scores,
//!   indices) in true order.
//! * [`rewrite_tensors`], [`permute_elements`]: the byte rewrite of the layer's weight,
//!   biases and per-class quantisation parameters (no operator added; outputs change
//!   order, not values), and its exact inverse.
//!
//! ```
//! use onnx_protect_lock::{find_output_layer, rewrite_model, ClassPermutation, Direction, LockSeed};
//! use onnx_protect_format::Model;
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/digits/mlp.onnx");
//! let model = Model::open(path)?;
//! let layer = find_output_layer(&model, None)?;
//! let perm = ClassPermutation::derive(&LockSeed::generate()?, layer.classes)?;
//! let (locked, _external) = rewrite_model(&model, &layer, &perm, Direction::Lock)?;
//! let locked = Model::from_vec(locked, None)?;
//! let (restored, _) = rewrite_model(&locked, &find_output_layer(&locked, None)?, &perm, Direction::Unlock)?;
//! assert_eq!(restored, model.bytes());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The library never prints; errors never carry a seed or a permutation.

#![forbid(unsafe_code)]

pub mod error;
pub mod find;
mod graph;
pub mod perm;
pub mod rewrite;

pub use error::{ErrorKind, LockError, Result};
pub use find::{
    find_output_layer, storage_refusal, LockedOutput, LockedTensor, OutputKind, OutputLayer, Part, MIN_CLASSES,
};
pub use perm::{ClassPermutation, LockSeed, SEED_LEN};
pub use rewrite::{permute_elements, placement, rewrite_model, rewrite_tensors, Direction, ExternalWrite, Rewritten};
