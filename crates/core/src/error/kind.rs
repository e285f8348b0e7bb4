//! The kind of an error ([`ErrorKind`]), for callers that choose what to do by kind, and
//! the kind of a licence refusal ([`LicenceKind`]).

use onnx_protect_licence::LicenceError;

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

/// The kind of a [`CoreError`](super::CoreError), for callers that choose what to do by kind (exit
/// codes, JSON reports). [`ErrorKind::as_str`] gives a stable short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reading or writing a file failed (`"io"`).
    Io,
    /// The model file or its external data is invalid or unsafe to read; the payload
    /// is the reader's own kind, [`FormatError::kind`](onnx_protect_format::FormatError::kind) (`"truncated"`, ...).
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
    /// A broken invariant, a bug (`"internal"`).
    Internal,
}

impl ErrorKind {
    /// Every kind without a payload, [`ErrorKind::Model`] once (with the payload
    /// `Invalid`) and [`ErrorKind::Licence`] once (`Missing`; [`LicenceKind::ALL`] lists
    /// its payloads): for callers that check they map every kind.
    pub const ALL: [ErrorKind; 15] = [
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
        ErrorKind::Internal,
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
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
