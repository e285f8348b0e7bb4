//! End-to-end tests of the library crates and the `onnx-protect` binary.

mod cli;
mod fixtures;
mod util;
