//! Exit codes (normative list in `docs/cli.md`).

use onnx_protect_core::error::{CoreError, ErrorKind};
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

/// The key is wrong, missing or unreadable.
pub const KEY: u8 = 4;
/// Integrity failure: the manifest or encrypted bytes were modified.
pub const MODIFIED: u8 = 5;
/// The model is in the wrong state (already protected, not protected, unknown format version).
pub const STATE: u8 = 6;
/// The policy file or an override is invalid.
pub const POLICY: u8 = 7;
/// `check`: a model fails the CI gate (not protected, or weaker than the policy asks).
pub const GATE: u8 = 8;

/// Maps an error to its exit code.
pub fn code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<crate::keys::KeyFileError>().is_some() {
            return KEY;
        }
        if let Some(f) = cause.downcast_ref::<FormatError>() {
            return if f.kind() == "io" { FAILURE } else { BAD_MODEL };
        }
        if cause.downcast_ref::<onnx_protect_crypto::CryptoError>().is_some() {
            return KEY;
        }
        if cause.downcast_ref::<onnx_protect_select::PolicyError>().is_some() {
            return POLICY;
        }
        if let Some(t) = cause.downcast_ref::<onnx_protect_transform::TransformError>() {
            return match t.kind() {
                "state" => STATE,
                "format" => BAD_MODEL,
                "crypto" => KEY,
                _ => FAILURE,
            };
        }
        if let Some(c) = cause.downcast_ref::<CoreError>() {
            return core_code(c.kind()).unwrap_or(FAILURE);
        }
    }
    FAILURE
}

/// The exit code of a kind of core error. Every kind is listed; `None` only for a kind
/// a newer core adds before it is listed here (a test fails until it is).
fn core_code(kind: ErrorKind) -> Option<u8> {
    Some(match kind {
        ErrorKind::WrongKey | ErrorKind::Key => KEY,
        ErrorKind::Modified | ErrorKind::BadManifest | ErrorKind::NotSigned => MODIFIED,
        ErrorKind::AlreadyProtected
        | ErrorKind::NotProtected
        | ErrorKind::UnsupportedVersion
        | ErrorKind::AlreadyDecrypted => STATE,
        ErrorKind::Policy => POLICY,
        ErrorKind::Io | ErrorKind::Output => FAILURE,
        ErrorKind::Model(_) => BAD_MODEL,
        _ => return None,
    })
}

/// An optional hint line for the user.
pub fn hint_for(e: &anyhow::Error) -> Option<&'static str> {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<CoreError>() {
            match c.kind() {
                ErrorKind::WrongKey => {
                    return Some("check that this is the key (or passphrase) the model was encrypted with")
                }
                ErrorKind::AlreadyProtected => {
                    return Some("decrypt the model first, or keep the original unprotected copy")
                }
                _ => {}
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_error_kind_has_an_exit_code() {
        for kind in ErrorKind::ALL {
            assert!(core_code(kind).is_some(), "no exit code for the core error kind {kind}");
        }
        assert_eq!(core_code(ErrorKind::Model("truncated")), Some(BAD_MODEL));
        assert_eq!(core_code(ErrorKind::Io), Some(FAILURE));
    }
}
