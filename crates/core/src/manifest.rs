//! The manifest a protected model carries (docs/format.md §1–5): its constants,
//! reading and validating it against the model, building a new one, and the
//! summaries reported to callers.
//!
//! The manifest is stored as a top-level `metadata_props` entry under
//! [`METADATA_KEY`], whose value is the base64 of an `Envelope` holding the encoded
//! `Manifest` and its seals (MACs and checksums, see the `seal` module).

use std::collections::{HashMap, HashSet};

use base64::Engine;
use onnx_protect_crypto::{KdfParams, LeafHash, KDF_SALT_LEN};
use onnx_protect_format::model::MetadataEntry;
use onnx_protect_format::write::metadata_field;
use onnx_protect_format::{Locator, Model, Tensor, TensorData};
use onnx_protect_proto::v1 as pb;
use onnx_protect_proto::Message;
use onnx_protect_select::{fp_mask, Mode};

use crate::error::{CoreError, Result};

/// The `metadata_props` key of a format-1 manifest.
pub const METADATA_KEY: &str = "onnx-protect/v1";
/// Every key this project writes starts with this prefix.
pub const METADATA_PREFIX: &str = "onnx-protect/";
/// The format version written into [`pb::Manifest::format_version`].
pub const FORMAT_VERSION: u32 = 1;
/// Ciphertext is hashed in chunks of this many bytes (per tensor) for the MAC.
pub const CHUNK_SIZE: u64 = 4 << 20;
/// The leaf hash new manifests are written with (§7 of docs/format.md).
pub const LEAF_HASH: LeafHash = LeafHash::Blake3;
/// Domain-separation labels of the integrity computation.
pub use onnx_protect_crypto::CHUNK_LABEL;
pub const MAC_INPUT_LABEL: &[u8] = b"onnx-protect/v1/mac-input";
pub const CHECKSUM_LABEL: &[u8] = b"onnx-protect/v1/checksum";

/// A parsed, validated manifest and where it sits in the model.
pub struct Protected {
    pub entry: MetadataEntry,
    pub envelope: pb::Envelope,
    pub manifest: pb::Manifest,
    /// For each manifest tensor (same order): the model tensor and its spans.
    pub targets: Vec<Target>,
    /// The hash of the ciphertext chunks (`Manifest.leaf_hash`).
    pub leaf_hash: LeafHash,
}

/// A manifest tensor matched to the model.
#[derive(Debug, Clone)]
pub struct Target {
    pub tensor: usize,
    pub stream_id: u64,
    pub mode: Mode,
    pub spans: Vec<(u64, u64)>,
    /// Access tier (1..=tiers), or 0 in an untiered manifest.
    pub tier: u32,
}

/// What a mode does to the bytes of a tensor, as reports name it: only bytes whose
/// every bit is XORed with the keystream are "encrypted".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protection {
    /// Every bit under the keystream: `ctr`, and `fp` on types whose format-preserving
    /// mask covers every bit (integers, BOOL).
    Encrypted,
    /// `fp` on floating-point types: sign and mantissa under the keystream, the exponent
    /// (the magnitude, within a factor of 2) in clear.
    ExponentClear,
    /// `dp`: the values are the layer's own, in a keyed order.
    Permuted,
}

impl Protection {
    /// What `mode` does to elements of `dtype`.
    pub fn of(mode: Mode, dtype: onnx_protect_format::DataType) -> Protection {
        match mode {
            Mode::Ctr => Protection::Encrypted,
            Mode::Dp => Protection::Permuted,
            Mode::Fp => match fp_mask(dtype) {
                Some(m) if m.iter().all(|&b| b == 0xFF) || dtype == onnx_protect_format::DataType::Bool => {
                    Protection::Encrypted
                }
                _ => Protection::ExponentClear,
            },
        }
    }

    /// The stable identifier used in JSON: `encrypted`, `exponent_clear`, `permuted`.
    pub fn id(self) -> &'static str {
        match self {
            Protection::Encrypted => "encrypted",
            Protection::ExponentClear => "exponent_clear",
            Protection::Permuted => "permuted",
        }
    }

    /// The words reports use: "encrypted", "sign and mantissa encrypted, exponent
    /// clear", "permuted".
    pub fn label(self) -> &'static str {
        match self {
            Protection::Encrypted => "encrypted",
            Protection::ExponentClear => "sign and mantissa encrypted, exponent clear",
            Protection::Permuted => "permuted",
        }
    }
}

/// Bytes per kind of protection (JSON keys: [`Protection::id`]), every kind present.
pub fn bytes_by_protection(tensors: &[TensorSummary]) -> std::collections::BTreeMap<&'static str, u64> {
    let mut out: std::collections::BTreeMap<&'static str, u64> =
        [Protection::Encrypted, Protection::ExponentClear, Protection::Permuted].iter().map(|p| (p.id(), 0)).collect();
    for t in tensors {
        *out.entry(t.protection).or_default() += t.encrypted_bytes;
    }
    out
}

/// One encrypted tensor, as reported to callers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorSummary {
    pub name: String,
    pub locator: String,
    pub op_type: String,
    pub role: String,
    pub data_type: String,
    pub storage: String,
    pub mode: String,
    /// What the mode does to these bytes: [`Protection::id`].
    pub protection: &'static str,
    /// The same in words: [`Protection::label`].
    pub label: &'static str,
    pub nbytes: u64,
    /// Bytes under the mode (whatever it is: see `protection`).
    pub encrypted_bytes: u64,
    pub subsequences: u64,
    pub chosen: u64,
    pub spans: Vec<(u64, u64)>,
    /// Access tier (0: untiered).
    pub tier: u32,
}

/// A description of what a protected model has encrypted (for `inspect`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProtectionInfo {
    pub key: String,
    pub format_version: u32,
    pub tool: String,
    pub passphrase: bool,
    pub policy_summary: String,
    /// Bytes under any mode (see `bytes_by_protection` for what each mode hides).
    pub encrypted_bytes: u64,
    /// Those bytes per kind of protection ([`bytes_by_protection`]).
    pub bytes_by_protection: std::collections::BTreeMap<&'static str, u64>,
    /// Number of access tiers (0: untiered).
    pub tiers: u32,
    /// Tiers already decrypted in this file.
    pub restored_tiers: u32,
    /// The hash of the ciphertext chunks under the MAC (`"sha256"` or `"blake3"`, docs/format.md §7).
    pub leaf_hash: &'static str,
    pub tensors: Vec<TensorSummary>,
    /// Recipient stanzas (format 2): kind, tier and public label of each.
    pub recipients: Vec<String>,
    /// Public keys of the signatures on the model (format 2; not verified here).
    pub signatures: Vec<String>,
    /// `"public"`, or `"secret"` when the encrypted positions are sealed (only key
    /// holders know them; the tensors' spans and encrypted bytes are then not shown).
    pub positions: &'static str,
    /// The label lock (`encrypt --lock-outputs`, format 2), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_lock: Option<crate::lock::LockReport>,
    /// [`FORMAT_1_WARNING`](crate::protect::FORMAT_1_WARNING) for a format-1 file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<&'static str>,
}

pub(crate) fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The whole `metadata_props` field (tag included) that stores `envelope`.
pub(crate) fn entry_field(envelope: &pb::Envelope) -> Vec<u8> {
    metadata_field(METADATA_KEY, &b64().encode(envelope.encode_to_vec()))
}

fn storage_code(t: &Tensor) -> pb::Storage {
    match &t.data {
        TensorData::Raw { .. } => pb::Storage::RawData,
        TensorData::Fixed { field, .. } | TensorData::Varint { field, .. } => match field.name() {
            "float_data" => pb::Storage::FloatData,
            "double_data" => pb::Storage::DoubleData,
            "int32_data" => pb::Storage::Int32Data,
            "int64_data" => pb::Storage::Int64Data,
            _ => pb::Storage::Uint64Data,
        },
        TensorData::External { .. } => pb::Storage::External,
        _ => pb::Storage::Unspecified,
    }
}

/// The storage code of a tensor in a format-2 header (the same numbers as format 1's).
pub(crate) fn storage_code_v2(t: &Tensor) -> i32 {
    storage_code(t) as i32
}

/// Whether a metadata key names an onnx-protect manifest: `onnx-protect/v` followed
/// by decimal digits and nothing else (docs/format.md §1). Other keys in the
/// `onnx-protect/` namespace (such as input-transform records) are not manifests.
pub fn is_manifest_key(key: &str) -> bool {
    key.strip_prefix("onnx-protect/v").is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}

/// The Argon2id parameters a manifest records.
pub(crate) fn kdf_from_pb(k: &pb::KdfParams) -> Result<KdfParams> {
    if k.algorithm != "argon2id" {
        return Err(CoreError::BadManifest(format!("unknown KDF '{}'", k.algorithm)));
    }
    let salt: [u8; KDF_SALT_LEN] =
        k.salt.as_slice().try_into().map_err(|_| CoreError::BadManifest("KDF salt has the wrong length".into()))?;
    Ok(KdfParams { salt, m_cost_kib: k.m_cost_kib, t_cost: k.t_cost, p_cost: k.p_cost })
}

/// The `tool` field of a manifest written by this version.
pub(crate) fn tool_name() -> String {
    format!("onnx-protect {}", env!("CARGO_PKG_VERSION"))
}

/// The file's salt, as the key schedule takes it.
pub(crate) fn salt_of(p: &Protected) -> Result<[u8; 32]> {
    p.manifest.salt.as_slice().try_into().map_err(|_| CoreError::BadManifest("salt".into()))
}

/// Finds the onnx-protect metadata entry, refusing unknown versions and duplicates.
pub fn find_manifest_entry(model: &Model) -> Result<Option<MetadataEntry>> {
    let ours: Vec<&MetadataEntry> = model.metadata.iter().filter(|m| is_manifest_key(&m.key)).collect();
    match ours.as_slice() {
        [] => Ok(None),
        [one] if one.key == METADATA_KEY => Ok(Some((*one).clone())),
        [one] => Err(CoreError::UnsupportedVersion { key: one.key.clone() }),
        _ => Err(CoreError::BadManifest("more than one onnx-protect metadata entry".into())),
    }
}

fn bad(s: String) -> CoreError {
    CoreError::BadManifest(s)
}

/// Reads and validates the manifest of a protected model.
pub fn read_protected(model: &Model) -> Result<Protected> {
    let entry = find_manifest_entry(model)?.ok_or(CoreError::NotProtected)?;
    let (envelope, manifest) = decode_entry(&entry)?;
    check_seal_lengths(&manifest, &envelope)?;
    let leaf_hash = match pb::LeafHash::try_from(manifest.leaf_hash) {
        Ok(pb::LeafHash::Sha256) => LeafHash::Sha256,
        Ok(pb::LeafHash::Blake3) => LeafHash::Blake3,
        Err(_) => return Err(bad(format!("unknown leaf hash {}", manifest.leaf_hash))),
    };
    if !(4096..=(1 << 30)).contains(&manifest.chunk_size) {
        return Err(bad(format!("chunk size {} is out of range", manifest.chunk_size)));
    }
    let tiers = manifest.tiers;
    let rules = EntryRules {
        tier_ok: Box::new(move |t| if tiers > 1 { (1..=tiers).contains(&t) } else { t == 0 }),
        dp_min_elements: 1,
        sealed: false,
    };
    let targets = match_targets(model, manifest.tensors.iter().map(EntryFacts::from), &rules)?;
    Ok(Protected { entry, envelope, manifest, targets, leaf_hash })
}

/// The envelope and manifest of a manifest entry, of this format version.
fn decode_entry(entry: &MetadataEntry) -> Result<(pb::Envelope, pb::Manifest)> {
    let raw = b64().decode(entry.value.as_bytes()).map_err(|e| bad(format!("metadata value is not base64: {e}")))?;
    let envelope = pb::Envelope::decode(raw.as_slice()).map_err(|e| bad(format!("envelope: {e}")))?;
    let manifest = pb::Manifest::decode(envelope.manifest.as_slice()).map_err(|e| bad(format!("manifest: {e}")))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(CoreError::UnsupportedVersion {
            key: format!("{METADATA_KEY} format_version {}", manifest.format_version),
        });
    }
    Ok((envelope, manifest))
}

/// The salt, the key check values and the seals (one, or one per tier) have their lengths.
fn check_seal_lengths(manifest: &pb::Manifest, envelope: &pb::Envelope) -> Result<()> {
    if manifest.salt.len() != 32 || manifest.key_check.len() != 16 {
        return Err(bad("salt or key check value has the wrong length".into()));
    }
    let tiers = manifest.tiers;
    if tiers > 1 {
        if tiers > onnx_protect_select::MAX_TIERS
            || manifest.tier_key_checks.len() != tiers as usize
            || manifest.tier_key_checks.iter().any(|k| k.len() != 16)
            || envelope.tier_macs.len() != tiers as usize
            || envelope.tier_macs.iter().any(|m| m.len() != 32)
            || envelope.tier_checksums.len() != tiers as usize
            || envelope.tier_checksums.iter().any(|m| m.len() != 32)
            || envelope.restored_tiers >= tiers
        {
            return Err(bad("tier key checks, MACs or checksums are missing or have the wrong length".into()));
        }
    } else if envelope.mac.len() != 32 || envelope.checksum.len() != 32 || envelope.restored_tiers != 0 {
        return Err(bad("MAC or checksum has the wrong length".into()));
    }
    Ok(())
}

/// A manifest entry's facts, whatever the format version.
pub(crate) struct EntryFacts<'a> {
    pub name: &'a str,
    pub locator: &'a str,
    pub data_type: i32,
    pub storage: i32,
    pub nbytes: u64,
    pub mode: i32,
    pub spans: &'a [u64],
    pub tier: u32,
    pub stream_id: u64,
}

impl<'a> From<&'a pb::TensorEntry> for EntryFacts<'a> {
    fn from(e: &'a pb::TensorEntry) -> Self {
        EntryFacts {
            name: &e.name,
            locator: &e.locator,
            data_type: e.data_type,
            storage: e.storage,
            nbytes: e.nbytes,
            mode: e.mode,
            spans: &e.spans,
            tier: e.tier,
            stream_id: e.stream_id,
        }
    }
}

/// What a format version requires of its entries beyond the common rules.
pub(crate) struct EntryRules {
    /// Whether `tier` is a valid tier of the manifest.
    pub tier_ok: Box<dyn Fn(u32) -> bool>,
    /// The fewest elements a distribution-preserving span may have.
    pub dp_min_elements: u64,
    /// Entries may list no span: their spans are sealed (secret positions), checked
    /// once unsealed.
    pub sealed: bool,
}

/// Matches every manifest entry to the model (§3–§6 of docs/format.md): each names a
/// tensor of the model as it was encrypted, once per tier, with its own stream id, and
/// spans that are in order, in bounds, aligned as the mode needs, and disjoint across
/// tiers.
pub(crate) fn match_targets<'a>(
    model: &Model,
    entries: impl Iterator<Item = EntryFacts<'a>>,
    rules: &EntryRules,
) -> Result<Vec<Target>> {
    let by_locator: HashMap<&Locator, usize> = model.tensors.iter().map(|t| (&t.locator, t.id)).collect();
    let mut seen_streams = HashSet::new();
    let mut seen_tensors = HashSet::new();
    let mut spans_of: HashMap<usize, Vec<(u64, u64)>> = HashMap::new();
    let mut targets = Vec::new();
    for e in entries {
        let tid = entry_tensor(model, &by_locator, &e, rules)?;
        if !seen_streams.insert(e.stream_id) || !seen_tensors.insert((tid, e.tier)) {
            return Err(bad(format!("tensor '{}' or its stream id appears twice", e.name)));
        }
        let (mode, spans) = entry_spans(&model.tensors[tid], &e, rules)?;
        let all = spans_of.entry(tid).or_default();
        all.extend(spans.iter().copied());
        all.sort_unstable();
        if all.windows(2).any(|w| w[1].0 < w[0].1) {
            return Err(bad(format!("tensor '{}': spans of different tiers overlap", e.name)));
        }
        targets.push(Target { tensor: tid, stream_id: e.stream_id, mode, spans, tier: e.tier });
    }
    Ok(targets)
}

/// The model tensor of a manifest entry: at its locator, with the name, type, size and
/// storage it had, in a tier the manifest has.
fn entry_tensor(
    model: &Model,
    by_locator: &HashMap<&Locator, usize>,
    e: &EntryFacts<'_>,
    rules: &EntryRules,
) -> Result<usize> {
    let loc: Locator = e.locator.parse().map_err(|s: String| bad(format!("tensor '{}': {s}", e.name)))?;
    let &tid = by_locator
        .get(&loc)
        .ok_or_else(|| CoreError::Modified(format!("tensor '{}' at {} is not in the model", e.name, e.locator)))?;
    let t = &model.tensors[tid];
    if t.name != e.name
        || t.data_type.to_i32() != e.data_type
        || t.nbytes != e.nbytes
        || storage_code(t) as i32 != e.storage
    {
        return Err(CoreError::Modified(format!(
            "tensor at {} does not match the manifest (name, type, size or storage changed)",
            e.locator
        )));
    }
    if !(rules.tier_ok)(e.tier) {
        return Err(bad(format!("tensor '{}' has tier {}, which the manifest does not have", e.name, e.tier)));
    }
    Ok(tid)
}

/// The mode and the spans of a manifest entry, checked against its tensor `t`.
fn entry_spans(t: &Tensor, e: &EntryFacts<'_>, rules: &EntryRules) -> Result<(Mode, Vec<(u64, u64)>)> {
    let mode = match pb::Mode::try_from(e.mode) {
        Ok(pb::Mode::Ctr) => Mode::Ctr,
        Ok(pb::Mode::FormatPreserving) => Mode::Fp,
        Ok(pb::Mode::DistributionPreserving) => Mode::Dp,
        _ => return Err(bad(format!("tensor '{}' has unknown mode {}", e.name, e.mode))),
    };
    if e.spans.len() % 2 != 0 || (e.spans.is_empty() && !rules.sealed) {
        return Err(bad(format!("tensor '{}': spans must be non-empty [begin, end) pairs", e.name)));
    }
    let spans: Vec<(u64, u64)> = e.spans.chunks(2).map(|c| (c[0], c[1])).collect();
    let mut prev_end = None;
    let elem = (t.data_type.bits() / 8).max(1);
    for &(a, b) in &spans {
        // Spans may touch only in dp mode, where each span is one permutation unit.
        let overlaps = prev_end.is_some_and(|p| if mode.whole_spans() { a < p } else { a <= p });
        if a >= b || b > t.nbytes || overlaps {
            return Err(bad(format!("tensor '{}': span [{a}, {b}) is empty, out of order or out of bounds", e.name)));
        }
        if mode != Mode::Ctr && (a % elem != 0 || b % elem != 0) {
            return Err(bad(format!("tensor '{}': span [{a}, {b}) is not element-aligned", e.name)));
        }
        if mode.whole_spans() && (b - a) / elem < rules.dp_min_elements {
            return Err(bad(format!(
                "tensor '{}': permuted span [{a}, {b}) has fewer than {} elements",
                e.name, rules.dp_min_elements
            )));
        }
        prev_end = Some(b);
    }
    if let TensorData::Varint { canonical: false, .. } | TensorData::Strings { .. } | TensorData::Empty = t.data {
        return Err(CoreError::Modified(format!("tensor '{}' changed its storage", e.name)));
    }
    if mode == Mode::Fp && fp_mask(t.data_type).is_none() {
        return Err(bad(format!("tensor '{}': no format-preserving mask for {}", e.name, t.data_type)));
    }
    if mode.whole_spans() && (t.data_type.bits() < 8 || t.data_type.bits() % 8 != 0) {
        return Err(bad(format!("tensor '{}': dp mode needs whole-byte elements", e.name)));
    }
    Ok((mode, spans))
}

/// What a manifest entry of either format records about its tensor, for its summary.
struct Recorded<'a> {
    name: &'a str,
    locator: &'a str,
    op_type: &'a str,
    role: &'a str,
    nbytes: u64,
    subsequences: u64,
    chosen: u64,
}

/// The summary of a tensor that `e` records and `t` targets.
fn summary(model: &Model, e: Recorded, t: &Target) -> TensorSummary {
    let tensor = &model.tensors[t.tensor];
    TensorSummary {
        name: e.name.to_string(),
        locator: e.locator.to_string(),
        op_type: e.op_type.to_string(),
        role: e.role.to_string(),
        data_type: tensor.data_type.name().to_string(),
        storage: tensor.data.storage_name().to_string(),
        mode: t.mode.name().to_string(),
        protection: Protection::of(t.mode, tensor.data_type).id(),
        label: Protection::of(t.mode, tensor.data_type).label(),
        nbytes: e.nbytes,
        encrypted_bytes: t.spans.iter().map(|(a, b)| b - a).sum(),
        subsequences: e.subsequences,
        chosen: e.chosen,
        spans: t.spans.clone(),
        tier: t.tier,
    }
}

/// The summary of every tensor of a format-1 manifest, with its target.
pub(crate) fn summaries(model: &Model, manifest: &pb::Manifest, targets: &[Target]) -> Vec<TensorSummary> {
    manifest
        .tensors
        .iter()
        .zip(targets)
        .map(|(e, t)| {
            let recorded = Recorded {
                name: &e.name,
                locator: &e.locator,
                op_type: &e.op_type,
                role: &e.role,
                nbytes: e.nbytes,
                subsequences: e.subsequences,
                chosen: e.chosen,
            };
            summary(model, recorded, t)
        })
        .collect()
}

/// The summary of every tensor of a format-2 header, with its target.
pub(crate) fn summaries_v2(
    model: &Model,
    header: &onnx_protect_proto::v2::Header,
    targets: &[Target],
) -> Vec<TensorSummary> {
    header
        .tensors
        .iter()
        .zip(targets)
        .map(|(e, t)| {
            let recorded = Recorded {
                name: &e.name,
                locator: &e.locator,
                op_type: &e.op_type,
                role: &e.role,
                nbytes: e.nbytes,
                subsequences: e.subsequences,
                chosen: e.chosen,
            };
            summary(model, recorded, t)
        })
        .collect()
}
