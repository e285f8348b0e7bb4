//! Zero-copy, lossless reading and patching of ONNX model files.
//!
//! [`Model::open`] maps a file and indexes every graph, node and tensor in it —
//! initializers, `Constant` values, sparse tensors, tensors inside `If`/`Loop`/`Scan`
//! bodies and model-local functions — without copying tensor payloads. Each tensor
//! records where its bytes are: `raw_data`, a typed field, or an external data file
//! (whose location is confined to the model's directory).
//!
//! [`discover()`](fn@discover) finds the weights: constants consumed by Conv, Gemm, MatMul,
//! their quantized and recurrent relatives, embeddings and normalisation layers.
//!
//! [`write::Plan`] rewrites a model by editing byte ranges of the original file, so
//! a model read and written unchanged is byte-identical, and fields this crate
//! does not know survive.
//!
//! ```
//! use onnx_protect_format::{discover, Model};
//! # let bytes = onnx_protect_format::testutil::tiny_model();
//! let model = Model::from_vec(bytes, None)?;
//! for w in discover(&model) {
//!     let t = &model.tensors[w.tensor];
//!     println!("{} {:?} used by {}", t.name, t.dims, w.primary_op());
//! }
//! # Ok::<(), onnx_protect_format::FormatError>(())
//! ```

#![forbid(unsafe_code)]

pub mod discover;
pub mod dtype;
pub mod error;
pub mod model;
pub mod progress;
pub mod sniff;
pub mod testutil;
pub mod wire;
pub mod write;

pub use discover::{discover, Layers, TensorRole, Weight, WeightKind, WeightUse};
pub use dtype::{DataType, TypedField};
pub use error::{ErrorKind, FormatError, Result};
pub use model::{Container, Dim, LocationSite, Locator, Model, Origin, Tensor, TensorData, TensorId, ValueType};
pub use progress::{NoProgress, Progress};
