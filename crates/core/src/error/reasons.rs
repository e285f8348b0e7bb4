//! The typed reasons [`CoreError`](super::CoreError)(super::CoreError)'s variants carry: how a manifest breaks
//! a rule of its format, how a model no longer matches it, why key material or an output
//! cannot be used as asked, why no trusted signature stands.

use std::path::PathBuf;

use onnx_protect_format::FormatError;
use onnx_protect_keys::KeysError;

/// How a manifest breaks a rule of its format ([`CoreError::BadManifest`](super::CoreError::BadManifest)).
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
/// ([`CoreError::Modified`](super::CoreError::Modified)).
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

/// Why key material cannot be used for what is asked ([`CoreError::Key`](super::CoreError::Key)).
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

/// Why an output cannot be written as asked ([`CoreError::Output`](super::CoreError::Output)).
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
