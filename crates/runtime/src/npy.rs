//! `.npy` arrays for model inputs and outputs: the workspace's one reader and
//! writer, [`onnx_protect_npy`] (C order, little-endian in memory, hostile
//! files refused with a reason), re-exported here.

pub use onnx_protect_npy::{numel, read_npz, Dtype, NpyArray, NpyError, Summary};
