//! The error type of every operation of this crate ([`CoreError`]), its kinds
//! ([`ErrorKind`], in `kind.rs`) and the typed reasons its variants carry (`reasons.rs`:
//! [`BadManifest`], [`Modified`], [`UnusableKey`], [`OutputRefused`], ...).

mod kind;
mod reasons;

use std::path::PathBuf;

use onnx_protect_crypto::CryptoError;
use onnx_protect_format::FormatError;
use onnx_protect_keys::KeysError;
use onnx_protect_licence::LicenceError;
use onnx_protect_lock::LockError;
use onnx_protect_select::PolicyError;

pub use self::kind::{ErrorKind, LicenceKind};
pub use self::reasons::{
    BadManifest, LabelLockProblem, Modified, OutputRefused, PermutationProblem, Unsigned, UnusableKey,
};

/// What went wrong. Decryption failures are deliberately coarse: a wrong key and
/// modified bytes are told apart, but never *which* byte of ciphertext changed.
///
/// Each variant carries what a caller needs to act (which tensor, stanza, tier, file);
/// the sentences are made by `Display`. A variant that wraps another crate's error shows
/// it as its own message or as its source, never both.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A recipient, identity or signing key is unusable, or a stanza asks too much.
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error("the model is already protected by onnx-protect (metadata key '{key}'); decrypt it first")]
    AlreadyProtected { key: String },
    #[error("the model is not protected by onnx-protect (no 'onnx-protect/v2' or 'onnx-protect/v1' metadata entry)")]
    NotProtected,
    #[error("not signed by a trusted signer: {0}")]
    NotSigned(Unsigned),
    #[error("already decrypted for this key's tier: tiers 1 to {restored} are in clear in this file, and the key is for tier {key_tier}")]
    AlreadyDecrypted { restored: u32, key_tier: u32 },
    /// A manifest entry under the metadata key `key` (and, when the entry says, of
    /// `format_version`) that this version does not read.
    #[error("the model was protected with format '{key}'{}, which this version does not support", version_note(*.format_version))]
    UnsupportedVersion { key: String, format_version: Option<u32> },
    /// An operation that rewrites the protection met a format this version only reads.
    #[error("format {version} is read-only: a model in it cannot be {operation}; decrypt it and encrypt it again")]
    ReadOnlyFormat { version: u32, operation: &'static str },
    /// The manifest breaks a rule of its format (docs/format.md §3–§8, Appendix B).
    #[error("modified: the protection manifest is invalid: {0}")]
    BadManifest(BadManifest),
    #[error("wrong key: no recipient of this model matches the key given")]
    WrongKey,
    /// A seal does not match, or the model no longer matches its manifest.
    #[error("modified: {0}")]
    Modified(Modified),
    /// The key material is unusable for what is asked.
    #[error("{0}")]
    Key(UnusableKey),
    /// The key opens tier `key_tier` of `tiers` (`by_licence`: the key reaches further, and
    /// its licence grants no more), and `operation` needs the top tier's.
    #[error("{} tier {key_tier} of {tiers}; {operation} needs the top-tier key (tier {tiers})", reach(*by_licence))]
    NotTopKey { key_tier: u32, tiers: u32, operation: &'static str, by_licence: bool },
    /// The key reaches tier `key_tier` (`by_licence`: as far as its licence grants), below
    /// the tier `asked` for.
    #[error("{} tier {key_tier}; it cannot decrypt tier {asked}", reach(*by_licence))]
    TierOutOfReach { key_tier: u32, asked: u32, by_licence: bool },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    /// An output cannot be written as asked.
    #[error("{0}")]
    Output(OutputRefused),
    /// The model needs a licence, and the one given (if any) does not let it open.
    #[error(transparent)]
    Licence(#[from] LicenceError),
    /// The model's outputs cannot be locked (`encrypt --lock-outputs`): what was found.
    #[error("cannot lock the outputs: {0}")]
    Lock(LockError),
    /// A broken invariant of this crate or of a caller (a bug), never caused by a file or a key.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// ` (format_version N)` when the entry records one.
fn version_note(v: Option<u32>) -> String {
    v.map(|v| format!(" (format_version {v})")).unwrap_or_default()
}

impl From<BadManifest> for CoreError {
    fn from(e: BadManifest) -> Self {
        CoreError::BadManifest(e)
    }
}

impl From<Modified> for CoreError {
    fn from(e: Modified) -> Self {
        CoreError::Modified(e)
    }
}

impl From<UnusableKey> for CoreError {
    fn from(e: UnusableKey) -> Self {
        CoreError::Key(e)
    }
}

impl From<OutputRefused> for CoreError {
    fn from(e: OutputRefused) -> Self {
        CoreError::Output(e)
    }
}

/// A model that cannot be locked is [`CoreError::Lock`]; a model that cannot be read, or
/// a failed derivation, is the reader's or the primitive's own error.
impl From<LockError> for CoreError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Format(f) => CoreError::Format(f),
            LockError::Crypto(c) => CoreError::Crypto(c),
            other => CoreError::Lock(other),
        }
    }
}

/// `e` and each cause in its source chain that it does not already say, joined by ": "
/// (an error reported on one line: the command line's, the bindings').
pub fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cause = c.source();
    }
    s
}

/// [`with_causes`] of an error about the file at `path` (if any), which the message names
/// once: prefixed when the error does not already say it.
pub fn with_causes_at(e: &(dyn std::error::Error + 'static), path: Option<&std::path::Path>) -> String {
    let s = with_causes(e);
    match path.map(|p| p.display().to_string()) {
        Some(name) if !s.contains(&name) => format!("{name}: {s}"),
        _ => s,
    }
}

impl CoreError {
    /// The kind of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CoreError::Format(FormatError::Io { .. }) | CoreError::Write { .. } => ErrorKind::Io,
            CoreError::Format(e) => ErrorKind::Model(e.kind()),
            CoreError::Crypto(_)
            | CoreError::Key(_)
            | CoreError::NotTopKey { .. }
            | CoreError::TierOutOfReach { .. } => ErrorKind::Key,
            CoreError::Policy(_) | CoreError::Lock(_) => ErrorKind::Policy,
            CoreError::AlreadyProtected { .. } => ErrorKind::AlreadyProtected,
            CoreError::NotProtected => ErrorKind::NotProtected,
            CoreError::UnsupportedVersion { .. } | CoreError::ReadOnlyFormat { .. } => ErrorKind::UnsupportedVersion,
            CoreError::BadManifest(_) => ErrorKind::BadManifest,
            CoreError::WrongKey => ErrorKind::WrongKey,
            CoreError::Modified(_) => ErrorKind::Modified,
            CoreError::Output(_) => ErrorKind::Output,
            CoreError::Internal(_) => ErrorKind::Internal,
            CoreError::NotSigned(_) => ErrorKind::NotSigned,
            CoreError::AlreadyDecrypted { .. } => ErrorKind::AlreadyDecrypted,
            CoreError::Keys(KeysError::KdfOverLimit { .. } | KeysError::BadStanza { .. }) => ErrorKind::BadManifest,
            CoreError::Keys(_) => ErrorKind::Key,
            CoreError::Licence(e) => ErrorKind::Licence(LicenceKind::of(e)),
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// How a tier error names what limits the key: the key itself, or its licence.
fn reach(by_licence: bool) -> &'static str {
    match by_licence {
        true => "the licence grants this key",
        false => "this key is for",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_not_protected_message_names_the_manifest_keys() {
        let m = CoreError::NotProtected.to_string();
        assert!(m.contains(&format!("'{}'", crate::format1::manifest::METADATA_KEY_V1)), "{m}");
        assert!(m.contains(&format!("'{}'", crate::format2::envelope::METADATA_KEY_V2)), "{m}");
    }

    fn io() -> std::io::Error {
        std::io::Error::other("disk on fire")
    }

    /// One error of every variant, with the name of its kind.
    fn cases() -> Vec<(CoreError, &'static str)> {
        let stanza =
            KeysError::BadStanza { index: 2, kind: "tpm".into(), reason: "its body has 80 bytes, not 81".into() };
        vec![
            (CoreError::Format(FormatError::Io { path: "m".into(), source: io() }), "io"),
            (CoreError::Format(FormatError::NoGraph), "no_graph"),
            (CoreError::Format(FormatError::Invalid("x".into())), "invalid"),
            (CoreError::Write { path: "o".into(), source: io() }, "io"),
            (UnusableKey::NoRecipient.into(), "key"),
            (UnusableKey::RecordedTiers { recorded: 2, tiers: 3 }.into(), "key"),
            (CoreError::NotTopKey { key_tier: 1, tiers: 2, operation: "rekey", by_licence: false }, "key"),
            (CoreError::TierOutOfReach { key_tier: 1, asked: 2, by_licence: false }, "key"),
            (CoreError::Policy(PolicyError::Invalid("p".into())), "policy"),
            (CoreError::Lock(LockError::Mismatch("m".into())), "policy"),
            (CoreError::AlreadyProtected { key: "k".into() }, "already_protected"),
            (CoreError::NotProtected, "not_protected"),
            (
                CoreError::UnsupportedVersion { key: "onnx-protect/v3".into(), format_version: None },
                "unsupported_version",
            ),
            (CoreError::ReadOnlyFormat { version: 1, operation: "signed" }, "unsupported_version"),
            (BadManifest::Tiers { tiers: 17, max: 16 }.into(), "bad_manifest"),
            (BadManifest::Stanza { cause: stanza }.into(), "bad_manifest"),
            (CoreError::Keys(KeysError::TooManyStanzas { kind: "tpm".into(), count: 9, max: 8 }), "key"),
            (CoreError::WrongKey, "wrong_key"),
            (Modified::Mac { tier: 2 }.into(), "modified"),
            (Modified::NoLongerParses { cause: Box::new(FormatError::NoGraph) }.into(), "modified"),
            (OutputRefused::Exists { what: "output model".into(), path: "o".into() }.into(), "output"),
            (
                OutputRefused::Destination { what: "output model".into(), path: "o".into(), cause: io() }.into(),
                "output",
            ),
            (CoreError::NotSigned(Unsigned::Format1), "not_signed"),
            (CoreError::Internal("i"), "internal"),
            (CoreError::AlreadyDecrypted { restored: 1, key_tier: 1 }, "already_decrypted"),
        ]
    }

    #[test]
    fn kinds_keep_their_names() {
        for (e, name) in cases() {
            assert_eq!(e.kind().as_str(), name, "{e}");
            assert!(ErrorKind::ALL.iter().any(|k| std::mem::discriminant(k) == std::mem::discriminant(&e.kind())));
        }
        let mut names: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len(), "two kinds share a name");
    }

    /// A message says its cause once: a cause is shown in the message or is its source,
    /// never both (an error chain printed whole repeats nothing), and no kind's prefix
    /// ("modified: ") comes twice.
    #[test]
    fn no_message_repeats_its_cause() {
        for (e, _) in cases() {
            let message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                assert!(!message.contains(&s.to_string()), "{message} / its source {s}");
                source = s.source();
            }
            for prefix in ["modified: ", "wrong key", "internal error"] {
                assert!(message.matches(prefix).count() <= 1, "{message}");
            }
        }
    }

    #[test]
    fn an_unsupported_version_names_the_key_and_the_version_apart() {
        let e = CoreError::UnsupportedVersion { key: "onnx-protect/v1".into(), format_version: Some(3) };
        assert_eq!(
            e.to_string(),
            "the model was protected with format 'onnx-protect/v1' (format_version 3), which this version does not support"
        );
    }
}
