//! Key-transformed inputs for `onnx-protect`.
//!
//! * [`block`]: block-wise image transforms derived from a secret key (pixel
//!   shuffle within `M×M` blocks, negative/positive flip, FFX format-preserving
//!   encryption of 8-bit values, block scrambling), and their inverses.
//! * [`derive`](mod@derive): the key schedule (HKDF-SHA256 under versioned labels, through
//!   `onnx_protect_crypto::KeySchedule` and `KeyedShuffle`) and the
//!   exact algorithms that turn keystreams into permutations, masks and FFX tables.
//! * [`patch`]: the model-side transform: rewrite a patch-embedding model's weights
//!   so that it works on key-transformed inputs exactly as the original did on
//!   plain inputs, without retraining.
//! * [`npy`], [`io`]: `.npy`, PNG and JPEG input and output.
//!
//! The normative description is `docs/transforms.md`. The library never prints.

#![forbid(unsafe_code)]

pub mod block;
pub mod derive;
pub mod error;
pub mod io;
pub mod npy;
pub mod patch;

pub use block::{transform_images, Direction, Images, KeyedTransform, Layout, Samples, TransformSpec, ValueRange};
pub use error::{ErrorKind, Result, TransformError};
pub use patch::{encrypt_patch_embedding, PatchOptions, PatchReport, METADATA_KEY};
