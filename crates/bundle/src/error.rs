//! The error of every operation of this crate.

use std::path::PathBuf;

/// What went wrong with a bundle, a key or a model. Each kind carries what a user needs to
/// act; messages are made in `Display`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// A file that cannot be read (the system's error is the source, which every
    /// error chain prints after this).
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A key file that is not an ECDSA P-256 or P-384 key in PEM.
    #[error("{path}: {reason}")]
    Key { path: String, reason: String },
    /// A field of the bundle or of its statement is malformed.
    #[error("invalid bundle: {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A bundle written with a serialization or predicate this version does not read.
    #[error("unsupported bundle: {0}")]
    Unsupported(String),
    /// The bundle names another public key than the one given.
    #[error("the bundle was signed with another key than the one given (its public-key hint differs)")]
    KeyMismatch,
    /// The bundle's certificate chain does not lead to a trusted certificate, or its
    /// signing certificate is not usable for signing.
    #[error("the bundle's certificate chain is not trusted: {0}")]
    Untrusted(String),
    /// The signature does not verify with the key given.
    #[error("the bundle's signature does not verify with the key given")]
    BadSignature,
    /// The model on disk is not the model that was signed.
    #[error("the model does not match its signature: {}", describe(.missing, .extra, .changed))]
    Mismatch { missing: Vec<String>, extra: Vec<String>, changed: Vec<String> },
    /// The model holds a symbolic link, a special file, or is neither a file nor a directory.
    #[error("{path}: {reason}")]
    NotAModelFile { path: PathBuf, reason: &'static str },
}

impl BundleError {
    pub(crate) fn invalid(field: &str, reason: &str) -> BundleError {
        BundleError::Invalid { field: field.to_string(), reason: reason.to_string() }
    }

    /// Whether the error says the model or its signature was changed or forged (as opposed
    /// to a file that cannot be read or a key that is unusable).
    pub fn is_verification_failure(&self) -> bool {
        matches!(
            self,
            BundleError::Invalid { .. }
                | BundleError::KeyMismatch
                | BundleError::BadSignature
                | BundleError::Untrusted(_)
                | BundleError::Mismatch { .. }
        )
    }
}

fn describe(missing: &[String], extra: &[String], changed: &[String]) -> String {
    let mut parts = Vec::new();
    for (what, list) in [("missing", missing), ("not signed", extra), ("changed", changed)] {
        if !list.is_empty() {
            let shown: Vec<&str> = list.iter().take(5).map(String::as_str).collect();
            let more = if list.len() > 5 { format!(" and {} more", list.len() - 5) } else { String::new() };
            parts.push(format!("{what}: {}{more}", shown.join(", ")));
        }
    }
    parts.join("; ")
}
