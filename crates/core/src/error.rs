//! The error type of every operation of this crate, and its kinds.

use std::path::PathBuf;

use onnx_protect_crypto::CryptoError;
use onnx_protect_format::FormatError;
use onnx_protect_keys::KeysError;
use onnx_protect_licence::LicenceError;
use onnx_protect_lock::LockError;
use onnx_protect_select::PolicyError;

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

/// How a manifest breaks a rule of its format ([`CoreError::BadManifest`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BadManifest {
    #[error("metadata value is not base64: {cause}")]
    NotBase64 { cause: base64::DecodeError },
    #[error("metadata value is not canonical base64")]
    NotCanonicalBase64,
    /// The message `message` (`envelope`, `header`, `recipients`, `manifest`) does not decode.
    #[error("{message}: {cause}")]
    Decode { message: &'static str, cause: onnx_protect_proto::DecodeError },
    #[error("{message} is not canonically encoded (unknown or repeated fields)")]
    NotCanonical { message: &'static str },
    #[error("the header of an onnx-protect/v2 entry has format_version {version}")]
    HeaderVersion { version: u32 },
    #[error("{tiers} tiers (1 to {max} allowed)")]
    Tiers { tiers: u32, max: u32 },
    #[error("the key check values do not match the tiers")]
    KeyChecks,
    #[error("chunk size {size} is not a power of two in [2^16, 2^30]")]
    ChunkSize { size: u64 },
    #[error("too many entries, stanzas or signatures")]
    TooMany,
    #[error("no recipient stanza")]
    NoStanza,
    #[error("the recipients take {len} bytes ({max} at most)")]
    RecipientsTooLong { len: usize, max: usize },
    #[error("the header records the sizes of some external data files but not of all")]
    ExternalSizes,
    #[error("the header's external chunk hashes are not 32 bytes for each chunk of the external data files it records the sizes of")]
    ExternalLeaves,
    #[error("the licence authority is not 32 bytes")]
    LicenceAuthorityLength,
    #[error("the licence authority is not an Ed25519 public key")]
    LicenceAuthorityKey,
    #[error("a model id without a licence authority")]
    ModelIdWithoutAuthority,
    #[error("a model id over {max} bytes")]
    ModelIdTooLong { max: usize },
    #[error("the header records the original names of some external data files but not of all")]
    OriginalNames,
    #[error("the original name '{name}' of an external data file is refused: {why}")]
    OriginalName { name: String, why: String },
    #[error("two external data files have the original name '{name}'")]
    OriginalNameTwice { name: String },
    #[error("the content digest or the checksum is not 32 bytes")]
    DigestLength,
    #[error("the MACs do not match the tiers")]
    Macs,
    #[error("restored tiers and the stored digest disagree")]
    RestoredTiers,
    #[error("a stored digest without restored tiers")]
    StoredDigest,
    #[error("a signature has the wrong length or its key appears twice")]
    Signature,
    #[error("stanza {index} is for tier {tier}, which the model does not have")]
    StanzaTier { index: usize, tier: u32 },
    #[error("stanza {index}: a {kind} stanza has no kdf")]
    StanzaKdf { index: usize, kind: String },
    /// A KDF other than Argon2id (in stanza `index`; format 1: in the manifest).
    #[error("{}unknown KDF '{algorithm}'", stanza_note(*.index))]
    UnknownKdf { index: Option<usize>, algorithm: String },
    #[error("{}KDF salt is not 16 bytes", stanza_note(*.index))]
    KdfSalt { index: Option<usize> },
    /// A stanza breaks the rules of docs/format.md §8 (checked without a key).
    #[error("{cause}")]
    Stanza { cause: KeysError },
    #[error("unknown positions mode {mode}")]
    Positions { mode: u32 },
    #[error("tensor '{tensor}': its spans must be {}", if *.sealed { "sealed" } else { "public" })]
    SpansVisibility { tensor: String, sealed: bool },
    #[error("varint-stored tensor '{tensor}' must have one entry, in the top tier")]
    VarintTier { tensor: String },
    #[error("tensor '{tensor}': {why}")]
    Locator { tensor: String, why: String },
    #[error("tensor '{tensor}' or its stream id appears twice")]
    TensorTwice { tensor: String },
    #[error("tensor '{tensor}': spans of different tiers overlap")]
    TierOverlap { tensor: String },
    #[error("tensor '{tensor}' has tier {tier}, which the manifest does not have")]
    UnknownTier { tensor: String, tier: u32 },
    #[error("tensor '{tensor}' has unknown mode {mode}")]
    UnknownMode { tensor: String, mode: i32 },
    #[error("tensor '{tensor}': spans must be non-empty [begin, end) pairs")]
    NoSpans { tensor: String },
    #[error("tensor '{tensor}': span [{}, {}) is empty, out of order or out of bounds", .span.0, .span.1)]
    BadSpan { tensor: String, span: (u64, u64) },
    #[error("tensor '{tensor}': span [{}, {}) is not element-aligned", .span.0, .span.1)]
    UnalignedSpan { tensor: String, span: (u64, u64) },
    #[error("tensor '{tensor}': permuted span [{}, {}) has fewer than {min} elements", .span.0, .span.1)]
    ShortSpan { tensor: String, span: (u64, u64), min: u64 },
    #[error("tensor '{tensor}': no format-preserving mask for {dtype}")]
    NoFpMask { tensor: String, dtype: onnx_protect_format::DataType },
    #[error("tensor '{tensor}': dp mode needs whole-byte elements")]
    DpElements { tensor: String },
    #[error("encrypted spans of different tensors share bytes of a file")]
    SharedFileBytes,
    /// A span of tensor `tensor` outside its bytes.
    #[error("span of '{tensor}' out of bounds")]
    SpanOutOfBounds { tensor: String },
    #[error("tensor '{tensor}' has no data to transform")]
    NoData { tensor: String },
    /// A span of a permuted tensor that holds a part of an element, or too many elements.
    #[error("{0}")]
    Permutation(PermutationProblem),
    #[error("unknown leaf hash {value}")]
    LeafHash { value: i32 },
    #[error("chunk size {size} is out of range")]
    Format1ChunkSize { size: u64 },
    #[error("salt or key check value has the wrong length")]
    SaltOrKeyCheck,
    #[error("tier key checks, MACs or checksums are missing or have the wrong length")]
    TierSeals,
    #[error("MAC or checksum has the wrong length")]
    Seals,
    #[error("more than one onnx-protect metadata entry")]
    TwoEntries,
    #[error("the manifest entry is out of bounds")]
    EntryOutOfBounds,
    #[error("too many external files")]
    TooManyExternalFiles,
    /// The label lock of the header (docs/format.md §15).
    #[error("label lock: {0}")]
    LabelLock(LabelLockProblem),
}

/// `stanza N: ` for a stanza's field.
fn stanza_note(index: Option<usize>) -> String {
    index.map(|i| format!("stanza {i}: ")).unwrap_or_default()
}

/// What is wrong with a span of the distribution-preserving mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PermutationProblem {
    #[error("span is not a whole number of elements")]
    PartElement,
    #[error("span offset too large for the distribution-preserving mode")]
    Offset,
    #[error("a distribution-preserving span has too many elements")]
    TooLong,
    #[error("permutation stream offset overflows")]
    StreamOffset,
}

/// How a header's label lock breaks docs/format.md §15.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LabelLockProblem {
    #[error("{classes} classes ({min} to {max} allowed)")]
    Classes { classes: usize, min: usize, max: usize },
    #[error("the sealed seed is {len} bytes, not {expected}")]
    SealedSeed { len: usize, expected: usize },
    #[error("{tensors} tensors and {outputs} outputs (1 to {max} tensors and at least one output needed)")]
    Counts { tensors: usize, outputs: usize, max: usize },
    #[error("tensor '{tensor}': {why}")]
    Locator { tensor: String, why: String },
    #[error("tensor '{tensor}' has no axis {axis} of {classes} classes (dims {dims:?})")]
    Axis { tensor: String, axis: usize, classes: usize, dims: Vec<u64> },
    #[error("tensor '{tensor}' is named twice")]
    TensorTwice { tensor: String },
    #[error("output '{output}' has unknown kind {kind}")]
    OutputKind { output: String, kind: i32 },
    #[error("'{output}' is not an output of the graph")]
    NotAnOutput { output: String },
    #[error("span of '{tensor}'")]
    Span { tensor: String },
}

/// How a model no longer matches its manifest, or a seal does not match
/// ([`CoreError::Modified`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Modified {
    #[error("the manifest's checksum does not match")]
    Checksum,
    /// The MAC of format 2's tier `tier`, or of a format-1 tier (`format1`).
    #[error("the MAC of tier {tier} does not match")]
    Mac { tier: u32 },
    /// The MAC of an untiered format-1 file.
    #[error("the MAC over the manifest and the encrypted bytes does not match")]
    Format1Mac,
    /// The keyless checksum of an untiered format-1 file (with a key, or without).
    #[error("{}", if *.keyless { "the checksum of the manifest and the encrypted bytes does not match" } else { "the stored checksum does not match" })]
    Format1Checksum { keyless: bool },
    #[error("the checksum of tier {tier} does not match")]
    TierChecksum { tier: u32 },
    #[error("the model's content does not match its manifest")]
    Content,
    #[error("the data key of tier {tier} does not match its key check")]
    KeyCheck { tier: u32 },
    #[error("the sealed positions of tensor '{tensor}' do not open")]
    SealedSpans { tensor: String },
    #[error("a signer key is not valid")]
    SignerKey,
    #[error("the signature of {signer} does not verify")]
    Signature { signer: String },
    #[error("external data file '{location}' is {actual} bytes; the header records {expected}")]
    ExternalSize { location: String, actual: u64, expected: u64 },
    #[error("the model's external data files are not those of its header")]
    ExternalFiles,
    #[error("the chunk hashes of the external data files in the header do not match their content")]
    ExternalLeaves,
    #[error("tensor '{tensor}' at {locator} is not in the model")]
    TensorMissing { tensor: String, locator: String },
    #[error("tensor at {locator} does not match the manifest (name, type, size or storage changed)")]
    TensorChanged { locator: String },
    #[error("tensor '{tensor}' changed its storage")]
    Storage { tensor: String },
    #[error("locked tensor '{tensor}' at {locator} is not in the model")]
    LockedTensorMissing { tensor: String, locator: String },
    #[error("locked tensor '{tensor}' at {locator} is not the one the header records")]
    LockedTensorChanged { tensor: String, locator: String },
    #[error("the sealed seed of the label lock does not open")]
    LockSeed,
    #[error("the onnx-protect/v2 entry is not the last field of the file")]
    NotLast,
    #[error("more than one manifest entry, or the entry is not top-level")]
    NotTopLevel,
    #[error("more than one onnx-protect manifest entry")]
    TwoEntries,
    /// Under a sound format-2 entry, the model no longer parses (`cause`: why).
    #[error("the model no longer parses under its manifest ({cause})")]
    NoLongerParses { cause: Box<FormatError> },
    /// The model no longer parses (`cause`), and its manifest entry is not text.
    #[error("the model no longer parses ({cause}): its manifest entry is not text")]
    EntryNotText { cause: Box<FormatError> },
    /// The file changed between reading its manifest and rewriting its tail.
    #[error("the file changed")]
    FileChanged,
}

/// Why key material cannot be used for what is asked ([`CoreError::Key`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnusableKey {
    #[error("no recipient: give a key, a passphrase or a recipient to encrypt to")]
    NoRecipient,
    #[error("an identity opens models; to encrypt for it, give its public recipient (--recipient)")]
    IdentityToEncrypt,
    #[error("recipient {recipient} is for tier {tier}, but the model has {tiers}")]
    RecipientTier { recipient: String, tier: u32, tiers: u32 },
    /// A master key recording `recorded` tiers (`master tiers=N`) for a model of `tiers`.
    #[error("the master key of {}, and this model has {}: give a key made by `keygen --tiers {tiers}`",
        tiers_note(*.recorded), tiers_note(*.tiers))]
    RecordedTiers { recorded: u32, tiers: u32 },
    /// A new stanza list a reader would refuse.
    #[error("{0}")]
    NewStanzas(KeysError),
    #[error("{count} recipient stanzas (1 to {max} allowed)")]
    StanzaCount { count: usize, max: usize },
    #[error("the recipient stanzas take {len} bytes ({max} at most)")]
    RecipientsTooLong { len: usize, max: usize },
    #[error("this model was protected with a passphrase; give the passphrase, not a key")]
    PassphraseModel,
    #[error("this model was protected with a key file; give the key, not a passphrase")]
    KeyFileModel,
    #[error("this model is in format 1, which opens with a key file or a passphrase only")]
    Format1Identity,
    #[error(
        "key provider {provider}: the data key it returned for stanza {index} does not match the model's key check"
    )]
    ProviderAnswer { provider: String, index: usize },
    #[error("the model has no passphrase stanza for its top tier")]
    NoPassphraseStanza,
    #[error("an identity has no tier keys to derive; use a key file or a passphrase")]
    IdentityTierKeys,
    #[error("a partially decrypted model cannot be signed; sign the encrypted model")]
    PartialSign,
    #[error("format-1 files are read-only: a partial decryption would write one; decrypt with the top-tier key and encrypt again, or run the model in memory")]
    Format1Partial,
    #[error("tiers of this model are decrypted in the file; decrypt it whole first")]
    PartialRekey,
    #[error("the old key cannot open tier 1")]
    OldKeyTier1,
    #[error("the old key cannot decrypt every tier")]
    OldKeyTiers,
    #[error("every recipient would be removed: the model could never be opened again")]
    RemoveAll,
    #[error("no recipient of the model matches what should be removed")]
    NothingToRemove,
    /// Stanzas `rekey` cannot wrap the new data keys for (their header records no public
    /// recipient), each as reports show it.
    #[error(
        "the new data keys cannot be wrapped for {}: the model records no public recipient for them; give the key \
         file of a key stanza (--keep-key-file FILE), or drop them (--remove LABEL, --remove-kind KIND, \
         --remove-key-file FILE) and add them again if need be (--recipient, --recipient-command)",
        .stanzas.join(", ")
    )]
    CannotRewrap { stanzas: Vec<String> },
    #[error("a key file to keep is not a recipient of the model")]
    NothingToKeep,
    #[error("model id {id:?}: 1 to {max} bytes of printable text without surrounding spaces")]
    ModelId { id: String, max: usize },
}

/// `no access tiers`, `N access tiers`.
fn tiers_note(n: u32) -> String {
    if n == 1 {
        "no access tiers".to_string()
    } else {
        format!("{n} access tiers")
    }
}

/// Why an output cannot be written as asked ([`CoreError::Output`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputRefused {
    #[error("output {} is the input; pass --in-place to overwrite it", .path.display())]
    IsInput { path: PathBuf },
    /// The external data files would get other names (`(location, name)`), which
    /// `in_place` cannot do.
    #[error("the external data files would be written under other names ({}), which --in-place cannot do; write the output to a new file",
        .renames.iter().map(|(l, n)| format!("'{l}' as '{n}'")).collect::<Vec<_>>().join(", "))]
    RenamedInPlace { renames: Vec<(String, String)> },
    #[error("the model keeps external data in {}; write the output to another directory (or use --in-place)", .dir.display())]
    ExternalInInputDir { dir: PathBuf },
    #[error("the output directory {} does not exist", .dir.display())]
    NoDirectory { dir: PathBuf },
    #[error(
        "tensors '{first}' and '{second}' share bytes of an external data file: encrypting one would change the other"
    )]
    SharedExternal { first: String, second: String },
    /// `what` (`output model`, `external data file 'w.bin'`) cannot go to `path`.
    #[error("cannot write the {what} to {}: {cause}", .path.display())]
    Destination { what: String, path: PathBuf, cause: std::io::Error },
    #[error("{} exists; pass --force to replace it (the {what})", .path.display())]
    Exists { what: String, path: PathBuf },
    #[error("the {what} and the {other} would both be written to {}", .path.display())]
    TwoOutputs { what: String, other: String, path: PathBuf },
    #[error("the {what} would be written over a file of the input model ({})", .path.display())]
    OverInput { what: String, path: PathBuf },
    #[error("the output name {} is not UTF-8, so its external data files cannot be named after it; write the output to another directory", .path.display())]
    NonUtf8Name { path: PathBuf },
    #[error("the model keeps weights in external files; decrypt it into memory with memory::InMemory")]
    ExternalData,
    #[error("this model has no tiers; omit --tier")]
    NoTiers,
    #[error("{} changed after an interrupted rewrite of its tail; its journal {} no longer matches it and is left as it is", .path.display(), .journal.display())]
    JournalMismatch { path: PathBuf, journal: PathBuf },
    #[error("another rewrite of {} is running (its journal {} exists)", .path.display(), .journal.display())]
    RewriteRunning { path: PathBuf, journal: PathBuf },
    #[error("{} changed while its tail was being rewritten", .path.display())]
    TailChanged { path: PathBuf },
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
    /// Re-encrypting would keep `count` signatures over the old content and recipients.
    StaleContent { count: usize },
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
                "the model carries {count} signature(s) that cover the old recipients; re-sign with their keys \
                 (--sign-key) or drop them (--drop-signatures)"
            ),
            Unsigned::StaleContent { count } => write!(
                f,
                "the model carries {count} signature(s) over the content and keys that rekey replaces; re-sign with \
                 their keys (--sign-key) or drop them (--drop-signatures)"
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
