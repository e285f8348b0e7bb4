//! Exit codes (normative list in `docs/cli.md`).

use onnx_protect_format::FormatError;

/// Success.
pub const OK: u8 = 0;
/// Any failure not listed below (I/O, bad arguments found after parsing).
pub const FAILURE: u8 = 1;
/// Command-line usage error (clap's own code).
#[allow(dead_code)]
pub const USAGE: u8 = 2;
/// The input model (or its external data) is invalid or unsafe to read.
pub const BAD_MODEL: u8 = 3;

/// Maps an error to its exit code.
pub fn code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<FormatError>().is_some() {
            return BAD_MODEL;
        }
    }
    FAILURE
}

/// An optional hint line for the user.
pub fn hint_for(e: &anyhow::Error) -> Option<&'static str> {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<FormatError>() {
            return match f.kind() {
                "external_path" => Some("external data must be a plain file inside the model's directory"),
                "truncated" => Some("the file is incomplete; was the download or copy interrupted?"),
                _ => None,
            };
        }
    }
    None
}
