//! End-to-end tests of the library crates and the `onnx-protect` binary.

mod batch;
mod bundle;
mod cli;
mod conventions;
mod corpus;
mod device_keys;
mod fixtures;
mod float6;
mod key_files;
mod licences;
mod malformed;
mod policy;
mod protect;
mod providers;
mod reference;
mod rekey_check;
mod rekey_tiers;
mod runtime;
mod safe_checks;
mod safe_outputs;
mod sweep;
mod tiers;
mod trace;
mod transform;
mod util;
mod vectors;
