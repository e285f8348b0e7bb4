//! The error type of every operation of this crate, and its kinds.

use std::path::PathBuf;

use onnx_protect_crypto::CryptoError;
use onnx_protect_format::FormatError;
use onnx_protect_keys::KeysError;
use onnx_protect_licence::LicenceError;
use onnx_protect_select::PolicyError;

/// What went wrong. Decryption failures are deliberately coarse: a wrong key and
/// modified bytes are told apart, but never *which* byte of ciphertext changed.
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
    #[error("the model was protected with format '{key}', which this version does not support")]
    UnsupportedVersion { key: String },
    /// An operation that rewrites the protection met a format this version only reads.
    #[error("format {version} is read-only: a model in it cannot be {operation}; decrypt it and encrypt it again")]
    ReadOnlyFormat { version: u32, operation: &'static str },
    #[error("modified: the protection manifest is invalid: {0}")]
    BadManifest(String),
    #[error("wrong key: no recipient of this model matches the key given")]
    WrongKey,
    #[error("modified: {0}")]
    Modified(String),
    #[error("{0}")]
    Key(String),
    /// The key opens tier `key_tier` of `tiers`, and `operation` needs the top tier's.
    #[error("this key is for tier {key_tier} of {tiers}; {operation} needs the top-tier key (tier {tiers})")]
    NotTopKey { key_tier: u32, tiers: u32, operation: &'static str },
    /// The key reaches tier `key_tier`, below the tier `asked` for.
    #[error("this key is for tier {key_tier}; it cannot decrypt tier {asked}")]
    TierOutOfReach { key_tier: u32, asked: u32 },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Output(String),
    /// The model needs a licence, and the one given (if any) does not let it open.
    #[error(transparent)]
    Licence(#[from] LicenceError),
    /// The model's outputs cannot be locked (`encrypt --lock-outputs`): what was found.
    #[error("cannot lock the outputs: {0}")]
    Lock(String),
    /// A broken invariant of this crate (a bug), never caused by a file or a key.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why no signature of a trusted signer stands (docs/format.md §10).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unsigned {
    /// None of these signers (their key strings) signed the model.
    Missing { signers: Vec<String> },
    /// A format-1 model, which carries no signatures.
    Format1,
    /// A partially decrypted model: its signatures cover the canonical content, which
    /// only a key recomputes.
    NeedsKey,
    /// Rewrapping would keep `count` signatures over the old recipients.
    Stale { count: usize },
}

impl std::fmt::Display for Unsigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsigned::Missing { signers } => write!(f, "no signature of {} is on the model", signers.join(", ")),
            Unsigned::Format1 => f.write_str("format-1 models carry no signatures"),
            Unsigned::NeedsKey => {
                f.write_str("the signatures of a partially decrypted model can only be checked with a key")
            }
            Unsigned::Stale { count } => write!(
                f,
                "the model carries {count} signature(s) that cover the old recipients; re-sign with their keys or \
                 drop them"
            ),
        }
    }
}

/// Why a licence did not let a model open ([`ErrorKind::Licence`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LicenceKind {
    /// The model needs a licence and none was given (`"licence_missing"`).
    Missing,
    /// The licence text is malformed (`"licence_malformed"`).
    Malformed,
    /// The signature does not verify, or is by another authority (`"licence_bad_signature"`).
    BadSignature,
    /// The validity window has ended (`"licence_expired"`).
    Expired,
    /// The validity window has not started (`"licence_not_yet_valid"`).
    NotYetValid,
    /// The licence names other models (`"licence_wrong_model"`).
    WrongModel,
    /// The licence is for other recipients or devices (`"licence_wrong_device"`).
    WrongDevice,
    /// The system clock is behind a time already reached, or the recorded clock state
    /// cannot be used (`"licence_clock"`).
    Clock,
}

impl LicenceKind {
    /// Every kind.
    pub const ALL: [LicenceKind; 8] = [
        LicenceKind::Missing,
        LicenceKind::Malformed,
        LicenceKind::BadSignature,
        LicenceKind::Expired,
        LicenceKind::NotYetValid,
        LicenceKind::WrongModel,
        LicenceKind::WrongDevice,
        LicenceKind::Clock,
    ];

    /// The kind of a licence error.
    pub fn of(e: &LicenceError) -> LicenceKind {
        match e {
            LicenceError::Missing { .. } => LicenceKind::Missing,
            LicenceError::BadSignature { .. } => LicenceKind::BadSignature,
            LicenceError::WrongModel { .. } => LicenceKind::WrongModel,
            LicenceError::WrongDevice { .. } => LicenceKind::WrongDevice,
            LicenceError::NotYetValid { .. } => LicenceKind::NotYetValid,
            LicenceError::Expired { .. } => LicenceKind::Expired,
            LicenceError::ClockSetBack { .. } | LicenceError::State { .. } => LicenceKind::Clock,
            _ => LicenceKind::Malformed,
        }
    }

    /// The stable short name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            LicenceKind::Missing => "licence_missing",
            LicenceKind::Malformed => "licence_malformed",
            LicenceKind::BadSignature => "licence_bad_signature",
            LicenceKind::Expired => "licence_expired",
            LicenceKind::NotYetValid => "licence_not_yet_valid",
            LicenceKind::WrongModel => "licence_wrong_model",
            LicenceKind::WrongDevice => "licence_wrong_device",
            LicenceKind::Clock => "licence_clock",
        }
    }
}

/// The kind of a [`CoreError`], for callers that choose what to do by kind (exit
/// codes, JSON reports). [`ErrorKind::as_str`] gives a stable short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reading or writing a file failed (`"io"`).
    Io,
    /// The model file or its external data is invalid or unsafe to read; the payload
    /// is the reader's own kind, [`FormatError::kind`] (`"truncated"`, ...).
    Model(onnx_protect_format::ErrorKind),
    /// The key is unusable or of the wrong sort for this model (`"key"`).
    Key,
    /// The policy or an override is invalid (`"policy"`).
    Policy,
    /// The model is protected already (`"already_protected"`).
    AlreadyProtected,
    /// The model carries no manifest (`"not_protected"`).
    NotProtected,
    /// The manifest is of a format version this build does not read (`"unsupported_version"`).
    UnsupportedVersion,
    /// The manifest is malformed (`"bad_manifest"`).
    BadManifest,
    /// The key check value does not match (`"wrong_key"`).
    WrongKey,
    /// A MAC or checksum does not match, or the model no longer matches its manifest (`"modified"`).
    Modified,
    /// The output cannot be written as asked (`"output"`).
    Output,
    /// No signature of a trusted signer is on the model (`"not_signed"`).
    NotSigned,
    /// The key's tier is already decrypted in this file (`"already_decrypted"`).
    AlreadyDecrypted,
    /// A licence does not let the model open; the payload says why ([`LicenceKind::as_str`]).
    Licence(LicenceKind),
}

impl ErrorKind {
    /// Every kind without a payload, [`ErrorKind::Model`] once (with the payload
    /// `Invalid`) and [`ErrorKind::Licence`] once (`Missing`; [`LicenceKind::ALL`] lists
    /// its payloads): for callers that check they map every kind.
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::Io,
        ErrorKind::Model(onnx_protect_format::ErrorKind::Invalid),
        ErrorKind::Key,
        ErrorKind::Policy,
        ErrorKind::AlreadyProtected,
        ErrorKind::NotProtected,
        ErrorKind::UnsupportedVersion,
        ErrorKind::BadManifest,
        ErrorKind::WrongKey,
        ErrorKind::Modified,
        ErrorKind::Output,
        ErrorKind::NotSigned,
        ErrorKind::AlreadyDecrypted,
        ErrorKind::Licence(LicenceKind::Missing),
    ];

    /// The stable short name of the kind (used in JSON output).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::Model(kind) => kind.as_str(),
            ErrorKind::Key => "key",
            ErrorKind::Policy => "policy",
            ErrorKind::AlreadyProtected => "already_protected",
            ErrorKind::NotProtected => "not_protected",
            ErrorKind::UnsupportedVersion => "unsupported_version",
            ErrorKind::BadManifest => "bad_manifest",
            ErrorKind::WrongKey => "wrong_key",
            ErrorKind::Modified => "modified",
            ErrorKind::Output => "output",
            ErrorKind::NotSigned => "not_signed",
            ErrorKind::AlreadyDecrypted => "already_decrypted",
            ErrorKind::Licence(kind) => kind.as_str(),
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
            CoreError::Output(_) | CoreError::Internal(_) => ErrorKind::Output,
            CoreError::NotSigned(_) => ErrorKind::NotSigned,
            CoreError::AlreadyDecrypted { .. } => ErrorKind::AlreadyDecrypted,
            CoreError::Keys(KeysError::KdfOverLimit { .. } | KeysError::BadStanza { .. }) => ErrorKind::BadManifest,
            CoreError::Keys(_) => ErrorKind::Key,
            CoreError::Licence(e) => ErrorKind::Licence(LicenceKind::of(e)),
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_not_protected_message_names_the_manifest_keys() {
        let m = CoreError::NotProtected.to_string();
        assert!(m.contains(&format!("'{}'", crate::format1::manifest::METADATA_KEY)), "{m}");
        assert!(m.contains(&format!("'{}'", crate::envelope::METADATA_KEY_V2)), "{m}");
    }

    #[test]
    fn kinds_keep_their_names() {
        let io = || std::io::Error::other("x");
        let cases = [
            (CoreError::Format(FormatError::Io { path: "m".into(), source: io() }), "io"),
            (CoreError::Format(FormatError::NoGraph), "no_graph"),
            (CoreError::Format(FormatError::Invalid("x".into())), "invalid"),
            (CoreError::Write { path: "o".into(), source: io() }, "io"),
            (CoreError::Key("k".into()), "key"),
            (CoreError::NotTopKey { key_tier: 1, tiers: 2, operation: "rekey" }, "key"),
            (CoreError::TierOutOfReach { key_tier: 1, asked: 2 }, "key"),
            (CoreError::Policy(PolicyError::Invalid("p".into())), "policy"),
            (CoreError::AlreadyProtected { key: "k".into() }, "already_protected"),
            (CoreError::NotProtected, "not_protected"),
            (CoreError::UnsupportedVersion { key: "k".into() }, "unsupported_version"),
            (CoreError::ReadOnlyFormat { version: 1, operation: "signed" }, "unsupported_version"),
            (CoreError::BadManifest("b".into()), "bad_manifest"),
            (CoreError::WrongKey, "wrong_key"),
            (CoreError::Modified("m".into()), "modified"),
            (CoreError::Output("o".into()), "output"),
            (CoreError::NotSigned(Unsigned::Format1), "not_signed"),
            (CoreError::Internal("i".into()), "output"),
            (CoreError::AlreadyDecrypted { restored: 1, key_tier: 1 }, "already_decrypted"),
        ];
        for (e, name) in cases {
            assert_eq!(e.kind().as_str(), name, "{e}");
            assert!(ErrorKind::ALL.iter().any(|k| std::mem::discriminant(k) == std::mem::discriminant(&e.kind())));
        }
        let mut names: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len(), "two kinds share a name");
    }
}
