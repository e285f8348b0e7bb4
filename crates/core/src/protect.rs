//! Encrypting, decrypting and verifying models (format version 1, `docs/format.md`).
//!
//! Encryption makes one pass (see the private module `writer`): the chosen byte ranges are
//! read, encrypted in a buffer, hashed in fixed-size chunks and written at their
//! offsets of the output, in parallel, while the unchanged bytes are copied inside
//! the kernel; the chunk digests and the manifest then feed the MAC and the keyless
//! checksum, and the manifest is appended as a top-level `metadata_props` entry.
//!
//! Decryption verifies the key check value and the MAC over the ciphertext before
//! writing anything, then writes the input with the ranges decrypted and the
//! manifest entry removed, which gives back the original file byte for byte.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use base64::Engine;
use onnx_protect_crypto::{
    random_salt, Checksum, CryptoError, KdfParams, Keystream, Leaf, LeafHash, MasterKey, SessionKeys, KDF_SALT_LEN,
};
use onnx_protect_format::model::MetadataEntry;
use onnx_protect_format::write::{metadata_field, Content, Edit, Plan};
use onnx_protect_format::{discover, DataType, FormatError, Locator, Model, NoProgress, Progress, Tensor, TensorData};
use onnx_protect_proto::v1 as pb;
use onnx_protect_proto::Message;
use onnx_protect_select::{fp_mask, select, Mode, Policy, PolicyError, Selection};
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::writer::{Leaves, Outputs};

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
    #[error("the model is already protected by onnx-protect (metadata key '{key}'); decrypt it first")]
    AlreadyProtected { key: String },
    #[error("the model is not protected by onnx-protect (no '{METADATA_KEY}' metadata entry)")]
    NotProtected,
    #[error("the model was protected with format '{key}', which this version does not support")]
    UnsupportedVersion { key: String },
    #[error("modified: the protection manifest is invalid: {0}")]
    BadManifest(String),
    #[error("wrong key: the key check value does not match this model")]
    WrongKey,
    #[error("modified: {0}")]
    Modified(String),
    #[error("{0}")]
    Key(String),
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Output(String),
}

impl CoreError {
    /// Stable short name of the error kind (used in JSON output and exit codes).
    pub fn kind(&self) -> &'static str {
        match self {
            CoreError::Format(e) => e.kind().as_str(),
            CoreError::Crypto(_) => "key",
            CoreError::Policy(_) => "policy",
            CoreError::AlreadyProtected { .. } => "already_protected",
            CoreError::NotProtected => "not_protected",
            CoreError::UnsupportedVersion { .. } => "unsupported_version",
            CoreError::BadManifest(_) => "bad_manifest",
            CoreError::WrongKey => "wrong_key",
            CoreError::Modified(_) => "modified",
            CoreError::Key(_) => "key",
            CoreError::Write { .. } => "io",
            CoreError::Output(_) => "output",
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Where the master key comes from.
pub enum KeySource {
    /// A 256-bit key (key file, environment variable, ...).
    Key(MasterKey),
    /// A passphrase, stretched with Argon2id; the parameters live in the manifest.
    Passphrase(Zeroizing<Vec<u8>>),
}

impl KeySource {
    pub(crate) fn master_for_encrypt(&self) -> Result<(MasterKey, Option<KdfParams>)> {
        match self {
            KeySource::Key(k) => Ok((k.clone(), None)),
            KeySource::Passphrase(p) => {
                let params = KdfParams::new_random()?;
                Ok((MasterKey::from_passphrase(p, &params)?, Some(params)))
            }
        }
    }

    /// The master key for a model whose manifest has `kdf` (a passphrase model) or not.
    /// A key is accepted for a tiered passphrase model: it is a tier key, derived from
    /// the passphrase's master (`derive-tier-key --passphrase-env`), checked like any key.
    pub(crate) fn master_for_decrypt(&self, kdf: Option<&pb::KdfParams>, tiered: bool) -> Result<MasterKey> {
        match (self, kdf) {
            (KeySource::Key(k), None) => Ok(k.clone()),
            (KeySource::Key(k), Some(_)) if tiered => Ok(k.clone()),
            (KeySource::Key(_), Some(_)) => {
                Err(CoreError::Key("this model was protected with a passphrase; give the passphrase, not a key".into()))
            }
            (KeySource::Passphrase(_), None) => {
                Err(CoreError::Key("this model was protected with a key file; give the key, not a passphrase".into()))
            }
            (KeySource::Passphrase(p), Some(k)) => {
                if k.algorithm != "argon2id" {
                    return Err(CoreError::BadManifest(format!("unknown KDF '{}'", k.algorithm)));
                }
                let salt: [u8; KDF_SALT_LEN] = k
                    .salt
                    .as_slice()
                    .try_into()
                    .map_err(|_| CoreError::BadManifest("KDF salt has the wrong length".into()))?;
                let params = KdfParams { salt, m_cost_kib: k.m_cost_kib, t_cost: k.t_cost, p_cost: k.p_cost };
                Ok(MasterKey::from_passphrase(p, &params)?)
            }
        }
    }
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
    pub nbytes: u64,
    pub encrypted_bytes: u64,
    pub subsequences: u64,
    pub chosen: u64,
    pub spans: Vec<(u64, u64)>,
    /// Access tier (0: untiered).
    pub tier: u32,
}

/// What `encrypt` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EncryptReport {
    pub input: String,
    pub output: String,
    pub weight_bytes: u64,
    pub encrypted_bytes: u64,
    pub tensors: Vec<TensorSummary>,
    pub skipped: Vec<(String, String)>,
    pub external_files: Vec<String>,
}

/// What `decrypt` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecryptReport {
    pub input: String,
    pub output: String,
    pub tensors: usize,
    pub decrypted_bytes: u64,
}

/// What `verify` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub input: String,
    /// `"checksum"` without a key, `"mac"` with one.
    pub check: &'static str,
    pub tensors: usize,
    /// Bytes still encrypted in the file.
    pub encrypted_bytes: u64,
    /// Bytes of the tiers already decrypted in this file (`decrypt --tier`), in clear.
    pub restored_bytes: u64,
}

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

pub(crate) fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
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

/// Whether a metadata key names an onnx-protect manifest: `onnx-protect/v` followed
/// by decimal digits and nothing else (docs/format.md §1). Other keys in the
/// `onnx-protect/` namespace (such as input-transform records) are not manifests.
pub fn is_manifest_key(key: &str) -> bool {
    key.strip_prefix("onnx-protect/v").is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}

pub(crate) fn leaf_hash_to_pb(h: LeafHash) -> i32 {
    match h {
        LeafHash::Sha256 => pb::LeafHash::Sha256 as i32,
        LeafHash::Blake3 => pb::LeafHash::Blake3 as i32,
    }
}

pub(crate) fn mode_to_pb(m: Mode) -> i32 {
    match m {
        Mode::Ctr => pb::Mode::Ctr as i32,
        Mode::Fp => pb::Mode::FormatPreserving as i32,
        Mode::Dp => pb::Mode::DistributionPreserving as i32,
    }
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

/// Reads and validates the manifest of a protected model.
pub fn read_protected(model: &Model) -> Result<Protected> {
    let entry = find_manifest_entry(model)?.ok_or(CoreError::NotProtected)?;
    let raw = b64()
        .decode(entry.value.as_bytes())
        .map_err(|e| CoreError::BadManifest(format!("metadata value is not base64: {e}")))?;
    let envelope =
        pb::Envelope::decode(raw.as_slice()).map_err(|e| CoreError::BadManifest(format!("envelope: {e}")))?;
    let manifest = pb::Manifest::decode(envelope.manifest.as_slice())
        .map_err(|e| CoreError::BadManifest(format!("manifest: {e}")))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(CoreError::UnsupportedVersion {
            key: format!("{METADATA_KEY} format_version {}", manifest.format_version),
        });
    }
    let bad = |s: String| CoreError::BadManifest(s);
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
    let leaf_hash = match pb::LeafHash::try_from(manifest.leaf_hash) {
        Ok(pb::LeafHash::Sha256) => LeafHash::Sha256,
        Ok(pb::LeafHash::Blake3) => LeafHash::Blake3,
        Err(_) => return Err(bad(format!("unknown leaf hash {}", manifest.leaf_hash))),
    };
    if !(4096..=(1 << 30)).contains(&manifest.chunk_size) {
        return Err(bad(format!("chunk size {} is out of range", manifest.chunk_size)));
    }
    let by_locator: HashMap<&Locator, usize> = model.tensors.iter().map(|t| (&t.locator, t.id)).collect();
    let mut seen_streams = std::collections::HashSet::new();
    let mut seen_tensors = std::collections::HashSet::new();
    let mut spans_of: HashMap<usize, Vec<(u64, u64)>> = HashMap::new();
    let mut targets = Vec::with_capacity(manifest.tensors.len());
    for e in &manifest.tensors {
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
        let tier_ok = if tiers > 1 { (1..=tiers).contains(&e.tier) } else { e.tier == 0 };
        if !tier_ok {
            return Err(bad(format!("tensor '{}' has tier {} in a manifest with {tiers} tiers", e.name, e.tier)));
        }
        if !seen_streams.insert(e.stream_id) || !seen_tensors.insert((tid, e.tier)) {
            return Err(bad(format!("tensor '{}' or its stream id appears twice", e.name)));
        }
        let mode = match pb::Mode::try_from(e.mode) {
            Ok(pb::Mode::Ctr) => Mode::Ctr,
            Ok(pb::Mode::FormatPreserving) => Mode::Fp,
            Ok(pb::Mode::DistributionPreserving) => Mode::Dp,
            _ => return Err(bad(format!("tensor '{}' has unknown mode {}", e.name, e.mode))),
        };
        if e.spans.len() % 2 != 0 || e.spans.is_empty() {
            return Err(bad(format!("tensor '{}': spans must be non-empty [begin, end) pairs", e.name)));
        }
        let spans: Vec<(u64, u64)> = e.spans.chunks(2).map(|c| (c[0], c[1])).collect();
        let mut prev_end = None;
        let elem = (t.data_type.bits() / 8).max(1);
        for &(a, b) in &spans {
            // Spans may touch only in dp mode, where each span is one permutation unit.
            let overlaps = prev_end.is_some_and(|p| if mode == Mode::Dp { a < p } else { a <= p });
            if a >= b || b > t.nbytes || overlaps {
                return Err(bad(format!(
                    "tensor '{}': span [{a}, {b}) is empty, out of order or out of bounds",
                    e.name
                )));
            }
            if mode != Mode::Ctr && (a % elem != 0 || b % elem != 0) {
                return Err(bad(format!("tensor '{}': span [{a}, {b}) is not element-aligned", e.name)));
            }
            prev_end = Some(b);
        }
        if let TensorData::Varint { canonical: false, .. } | TensorData::Strings { .. } | TensorData::Empty = t.data {
            return Err(CoreError::Modified(format!("tensor '{}' changed its storage", e.name)));
        }
        if mode == Mode::Fp && fp_mask(t.data_type).is_none() {
            return Err(bad(format!("tensor '{}': no format-preserving mask for {}", e.name, t.data_type)));
        }
        if mode == Mode::Dp && (t.data_type.bits() < 8 || t.data_type.bits() % 8 != 0) {
            return Err(bad(format!("tensor '{}': dp mode needs whole-byte elements", e.name)));
        }
        let all = spans_of.entry(tid).or_default();
        all.extend(spans.iter().copied());
        all.sort_unstable();
        if all.windows(2).any(|w| w[1].0 < w[0].1) {
            return Err(bad(format!("tensor '{}': spans of different tiers overlap", e.name)));
        }
        targets.push(Target { tensor: tid, stream_id: e.stream_id, mode, spans, tier: e.tier });
    }
    Ok(Protected { entry, envelope, manifest, targets, leaf_hash })
}

/// Applies the keystream of `target` to `data`, which holds logical bytes starting at `offset`.
pub(crate) fn apply(
    ks: &Keystream,
    mode: Mode,
    dtype: DataType,
    offset: u64,
    data: &mut [u8],
    parallel: bool,
) -> Result<()> {
    match mode {
        Mode::Ctr => {
            if parallel {
                ks.apply_par(offset, data)?
            } else {
                ks.apply(offset, data)?
            }
        }
        Mode::Dp => {
            return Err(CoreError::Output(
                "the distribution-preserving mode permutes whole spans; it cannot be applied chunk by chunk".into(),
            ))
        }
        Mode::Fp => {
            let mask = fp_mask(dtype).ok_or_else(|| CoreError::BadManifest(format!("no mask for {dtype}")))?;
            if parallel {
                ks.apply_masked_par(offset, data, mask)?
            } else {
                ks.apply_masked(offset, data, mask)?
            }
        }
    }
    Ok(())
}

/// One unit of hashing work: a chunk of a tensor's concatenated span bytes.
pub(crate) struct ChunkJob {
    pub(crate) target: usize,
    pub(crate) index: u64,
    /// Logical sub-ranges making up this chunk.
    pub(crate) parts: Vec<(u64, u64)>,
}

pub(crate) fn chunk_jobs(targets: &[Target], chunk: u64) -> Vec<ChunkJob> {
    let mut jobs = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        let mut current = ChunkJob { target: ti, index: 0, parts: Vec::new() };
        let mut fill = 0u64;
        for &(a, b) in &t.spans {
            let mut pos = a;
            while pos < b {
                let take = (b - pos).min(chunk - fill);
                current.parts.push((pos, pos + take));
                fill += take;
                pos += take;
                if fill == chunk {
                    let next = ChunkJob { target: ti, index: current.index + 1, parts: Vec::new() };
                    jobs.push(std::mem::replace(&mut current, next));
                    fill = 0;
                }
            }
        }
        if !current.parts.is_empty() {
            jobs.push(current);
        }
    }
    jobs
}

/// Releases (see [`onnx_protect_format::model::ExternalFile::release`]) the file pages of an
/// external tensor's chunk job when the job is done, so hashing a file of any size keeps
/// only the chunks in flight resident.
pub(crate) struct ReleaseOnDrop<'a> {
    file: Option<&'a onnx_protect_format::model::ExternalFile>,
    range: Range<u64>,
}

impl<'a> ReleaseOnDrop<'a> {
    pub(crate) fn for_job(model: &'a Model, t: &Tensor, job: &ChunkJob) -> ReleaseOnDrop<'a> {
        match &t.data {
            TensorData::External { file, range } => {
                // The hull of the parts, widened by the kernel's fault-around window
                // (pages next to a faulting address are mapped with it: 64 KiB by default).
                const AROUND: u64 = 64 << 10;
                let lo = job.parts.first().map_or(0, |p| p.0);
                let hi = job.parts.last().map_or(0, |p| p.1);
                ReleaseOnDrop {
                    file: model.external_files.get(*file),
                    range: (range.start + lo).saturating_sub(AROUND)..range.start + hi + AROUND,
                }
            }
            _ => ReleaseOnDrop { file: None, range: 0..0 },
        }
    }
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.file {
            f.release(self.range.clone());
        }
    }
}

/// Where the bytes hashed for a target's leaves come from.
pub(crate) enum LeafSrc<'a> {
    /// The element bytes as stored in the file (ciphertext).
    File,
    /// The stored bytes are plaintext: XOR this keystream before hashing.
    Xor(&'a Keystream),
    /// The whole ciphertext element bytes of the tensor, computed beforehand.
    Bytes(&'a [u8]),
}

/// Parts shorter than this are gathered before they are hashed.
const GATHER: usize = 64 << 10;

/// Feeds a leaf hash through a buffer: small parts (single rows of a few KiB) are
/// gathered first, since the hash is several times faster on long inputs (BLAKE3
/// hashes 1 KiB blocks side by side in SIMD lanes). Call [`Gather::flush`] before
/// finalizing the leaf. The buffer is allocated on first use and kept for reuse.
#[derive(Default)]
pub(crate) struct Gather {
    buf: Vec<u8>,
}

impl Gather {
    /// Hashes `part` (now, or once enough is gathered).
    pub(crate) fn feed(&mut self, h: &mut Leaf, part: &[u8]) {
        if part.len() >= GATHER {
            self.flush(h);
            h.update(part);
        } else {
            self.feed_with(h, part, |_| Ok(())).unwrap_or(());
        }
    }

    /// Hashes `part` as `f` changes it, leaving `part` as it is.
    pub(crate) fn feed_with(
        &mut self,
        h: &mut Leaf,
        part: &[u8],
        f: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        if self.buf.len() + part.len() > GATHER {
            self.flush(h);
        }
        let at = self.buf.len();
        self.buf.extend_from_slice(part);
        f(&mut self.buf[at..])?;
        if self.buf.len() >= GATHER {
            self.flush(h);
        }
        Ok(())
    }

    /// Hashes what is gathered.
    pub(crate) fn flush(&mut self, h: &mut Leaf) {
        if !self.buf.is_empty() {
            h.update(&self.buf);
            self.buf.clear();
        }
    }
}

/// Chunk digests of the ciphertext, in chunk-job order (§7 of docs/format.md).
pub(crate) fn leaf_digests_ext(
    model: &Model,
    targets: &[Target],
    chunk: u64,
    hash: LeafHash,
    sources: &[LeafSrc],
) -> Result<Vec<[u8; 32]>> {
    // Varint tensors read from the file are decoded once, up front.
    let mut decoded: HashMap<usize, Vec<u8>> = HashMap::new();
    for (i, t) in targets.iter().enumerate() {
        if let (TensorData::Varint { .. }, Some(LeafSrc::File | LeafSrc::Xor(_))) =
            (&model.tensors[t.tensor].data, sources.get(i))
        {
            decoded.insert(t.tensor, model.tensor_bytes(t.tensor)?.into_owned());
        }
    }
    let jobs = chunk_jobs(targets, chunk);
    jobs.par_iter()
        .map(|job| -> Result<[u8; 32]> {
            let target = &targets[job.target];
            let t = &model.tensors[target.tensor];
            let src = sources.get(job.target).unwrap_or(&LeafSrc::File);
            let whole: Cow<[u8]> = match (src, decoded.get(&target.tensor)) {
                (LeafSrc::Bytes(b), _) => Cow::Borrowed(b),
                (_, Some(v)) => Cow::Borrowed(v.as_slice()),
                _ => model.tensor_bytes(t.id)?,
            };
            let mut h = Leaf::new(hash, target.stream_id, job.index);
            let _release = ReleaseOnDrop::for_job(model, t, job);
            let mut g = Gather::default();
            for &(a, b) in &job.parts {
                let part = whole
                    .get(a as usize..b as usize)
                    .ok_or_else(|| CoreError::BadManifest(format!("span of '{}' out of bounds", t.name)))?;
                match src {
                    LeafSrc::Xor(ks) => {
                        g.feed_with(&mut h, part, |p| apply(ks, target.mode, t.data_type, a, p, false))?
                    }
                    _ => g.feed(&mut h, part),
                }
            }
            g.flush(&mut h);
            Ok(h.finalize())
        })
        .collect()
}

pub(crate) fn mac_and_checksum(
    keys: Option<&SessionKeys>,
    manifest: &[u8],
    leaves: &[[u8; 32]],
) -> (Option<[u8; 32]>, [u8; 32]) {
    mac_and_checksum_of(keys, manifest, None, leaves)
}

/// The MAC (when `keys` is given) and the keyless checksum over the manifest, then
/// `u32be(tier)` for a tier's seal (§11), then the leaves (§7 of docs/format.md).
fn mac_and_checksum_of(
    keys: Option<&SessionKeys>,
    manifest: &[u8],
    tier: Option<u32>,
    leaves: &[[u8; 32]],
) -> (Option<[u8; 32]>, [u8; 32]) {
    let mut c = Checksum::new();
    c.update(CHECKSUM_LABEL);
    let mut m = keys.map(|k| {
        let mut m = k.mac();
        m.update(MAC_INPUT_LABEL);
        m
    });
    let mut both = |data: &[u8]| {
        c.update(data);
        if let Some(m) = m.as_mut() {
            m.update(data);
        }
    };
    both(&(manifest.len() as u64).to_be_bytes());
    both(manifest);
    if let Some(t) = tier {
        both(&t.to_be_bytes());
    }
    for l in leaves {
        both(l);
    }
    (m.map(|m| m.finalize()), c.finalize())
}

/// Output files staged in temp files next to their destinations; nothing is
/// visible until [`Staged::commit`], and dropping it removes every temp file.
pub(crate) struct Staged {
    files: Vec<(tempfile::NamedTempFile, PathBuf, onnx_protect_format::write::FinalMode)>,
    /// Directories created for the outputs, outermost first: removed again (when
    /// empty) if the outputs are dropped, so a failed run leaves nothing behind.
    created: Vec<PathBuf>,
}

impl Staged {
    pub(crate) fn new() -> Staged {
        Staged { files: Vec::new(), created: Vec::new() }
    }

    /// Stages an output for `dest` (through a symbolic link: for the file it points to).
    pub(crate) fn create(&mut self, dest: &Path) -> Result<usize> {
        // The directories this creates (staged_output creates the missing ones).
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut missing: Vec<PathBuf> =
            dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).map(Path::to_path_buf).collect();
        missing.reverse();
        let (tmp, dest, mode) = onnx_protect_format::write::staged_output(dest)
            .map_err(|e| CoreError::Write { path: dest.to_path_buf(), source: e })?;
        self.created.extend(missing);
        self.files.push((tmp, dest, mode));
        Ok(self.files.len() - 1)
    }

    pub(crate) fn file_ref(&self, i: usize) -> &std::fs::File {
        self.files[i].0.as_file()
    }

    /// Renames every file into place, the last one staged (the model) last, after
    /// giving each its final permission bits (staged files are private until then);
    /// with `durable`, flushes each to the disk (`fsync`) first. Every file is closed,
    /// and the close checked, before the first rename: network file systems (NFS) may
    /// report a failed write only there, and `cp` checks it too.
    pub(crate) fn commit(mut self, durable: bool) -> Result<()> {
        let mut closed = Vec::with_capacity(self.files.len());
        for (tmp, dest, mode) in std::mem::take(&mut self.files) {
            let err = |e| CoreError::Write { path: dest.clone(), source: e };
            mode.apply(tmp.as_file()).map_err(err)?;
            if durable {
                tmp.as_file().sync_all().map_err(err)?;
            }
            let (file, path) = tmp.into_parts();
            close_checked(file).map_err(err)?;
            closed.push((path, dest));
        }
        for (path, dest) in closed {
            path.persist(&dest).map_err(|e| CoreError::Write { path: dest.clone(), source: e.error })?;
            // Something is in place: the directories stay.
            self.created.clear();
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // The temporary files first, then the directories made for them, innermost
        // first (`remove_dir` leaves any that something else has filled meanwhile).
        self.files.clear();
        for d in self.created.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Closes `file`, returning the error `close` reports (which dropping a `File` ignores).
#[cfg(target_os = "linux")]
fn close_checked(file: std::fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just taken out of the `File`, so this is its only owner and it is
    // closed exactly once.
    if unsafe { libc::close(fd) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    // After EINTR the descriptor is closed on Linux and the data handed over; no retry.
    if e.kind() == std::io::ErrorKind::Interrupted {
        return Ok(());
    }
    Err(e)
}

#[cfg(not(target_os = "linux"))]
fn close_checked(file: std::fs::File) -> std::io::Result<()> {
    drop(file);
    Ok(())
}

/// Checks the output location and returns whether external side files must be written.
pub(crate) fn check_output(model: &Model, input: &Path, output: &Path, in_place: bool) -> Result<()> {
    let same = match (std::fs::canonicalize(input), std::fs::canonicalize(output)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same && !in_place {
        return Err(CoreError::Output(format!(
            "output {} is the input; pass --in-place to overwrite it",
            output.display()
        )));
    }
    if !model.external_files.is_empty() && !in_place {
        let out_dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let in_dir = model.dir.clone().unwrap_or_else(|| PathBuf::from("."));
        if let (Ok(a), Ok(b)) = (std::fs::canonicalize(&in_dir), std::fs::canonicalize(out_dir)) {
            if a == b {
                return Err(CoreError::Output(format!(
                    "the model keeps external data in {}; write the output to another directory (or use --in-place)",
                    a.display()
                )));
            }
        }
    }
    Ok(())
}

/// The MAC (when `keys` is given) and the keyless checksum of one tier (§11 of
/// docs/format.md): like [`mac_and_checksum`], with `u32be(tier)` after the manifest
/// and only that tier's leaves.
pub(crate) fn tier_seal(
    keys: Option<&SessionKeys>,
    manifest: &[u8],
    tier: u32,
    leaves: &[[u8; 32]],
) -> (Option<[u8; 32]>, [u8; 32]) {
    mac_and_checksum_of(keys, manifest, Some(tier), leaves)
}

/// The leaves of each tier (index `tier − 1`), from leaves in chunk-job order.
fn leaves_by_tier(targets: &[Target], chunk: u64, leaves: &[[u8; 32]], tiers: u32) -> Vec<Vec<[u8; 32]>> {
    let mut out = vec![Vec::new(); tiers as usize];
    for (job, leaf) in chunk_jobs(targets, chunk).iter().zip(leaves) {
        let t = targets[job.target].tier.max(1) as usize;
        if let Some(v) = out.get_mut(t - 1) {
            v.push(*leaf);
        }
    }
    out
}

/// What happens to one target while an output is written.
pub(crate) enum Action {
    /// Leave the stored bytes as they are.
    Skip,
    /// XOR this keystream, chunk by chunk.
    Xor(Box<Keystream>),
    /// Replace the element bytes by these (the whole tensor, transformed beforehand):
    /// varint-stored tensors and the distribution-preserving mode.
    Bytes(Vec<u8>),
    /// Re-encryption (`rekey`): XOR the old keystream, then the new one, chunk by chunk.
    Reencrypt(Box<(Keystream, Keystream)>),
}

impl Action {
    /// Applies a chunk-by-chunk action to `data`, logical bytes of `target` starting at
    /// `offset`; the other actions leave it as it is.
    pub(crate) fn apply_chunk(
        &self,
        target: &Target,
        dtype: DataType,
        offset: u64,
        data: &mut [u8],
        parallel: bool,
    ) -> Result<()> {
        match self {
            Action::Xor(ks) => apply(ks, target.mode, dtype, offset, data, parallel),
            Action::Reencrypt(pair) => {
                apply(&pair.0, target.mode, dtype, offset, data, parallel)?;
                apply(&pair.1, target.mode, dtype, offset, data, parallel)
            }
            Action::Skip | Action::Bytes(_) => Ok(()),
        }
    }
}

/// Encrypts (`decrypting = false`) or decrypts one span of `target` in place: `span`
/// holds its element bytes, which start at element-byte offset `a`.
pub(crate) fn transform_span(
    ks: &Keystream,
    target: &Target,
    dtype: DataType,
    a: u64,
    span: &mut [u8],
    decrypting: bool,
) -> Result<()> {
    if target.mode == Mode::Dp {
        crate::permute::permute_span(ks, a, span, (dtype.bits() / 8).max(1) as usize, decrypting)
    } else {
        // Large spans on the thread pool; small ones stay on this thread.
        apply(ks, target.mode, dtype, a, span, true)
    }
}

/// The span of `target` at `(a, b)` inside the whole element bytes `bytes`.
pub(crate) fn span_mut<'a>(
    model: &Model,
    target: &Target,
    bytes: &'a mut [u8],
    (a, b): (u64, u64),
) -> Result<&'a mut [u8]> {
    bytes
        .get_mut(a as usize..b as usize)
        .ok_or_else(|| CoreError::BadManifest(format!("span of '{}' out of bounds", model.tensors[target.tensor].name)))
}

/// The whole element bytes of a target's tensor with its spans encrypted
/// (`decrypting = false`) or decrypted.
pub(crate) fn transform_tensor(model: &Model, target: &Target, ks: &Keystream, decrypting: bool) -> Result<Vec<u8>> {
    let t = &model.tensors[target.tensor];
    let mut bytes = model.tensor_bytes(t.id)?.into_owned();
    for &(a, b) in &target.spans {
        transform_span(ks, target, t.data_type, a, span_mut(model, target, &mut bytes, (a, b))?, decrypting)?;
    }
    Ok(bytes)
}

/// Chooses the [`Action`] of every target; `None` streams are skipped.
pub(crate) fn prepare(
    model: &Model,
    targets: &[Target],
    streams: Vec<Option<Keystream>>,
    decrypting: bool,
) -> Result<Vec<Action>> {
    targets
        .iter()
        .zip(streams)
        .map(|(target, ks)| {
            let Some(ks) = ks else { return Ok(Action::Skip) };
            let varint = matches!(model.tensors[target.tensor].data, TensorData::Varint { .. });
            if varint || target.mode == Mode::Dp {
                Ok(Action::Bytes(transform_tensor(model, target, &ks, decrypting)?))
            } else {
                Ok(Action::Xor(Box::new(ks)))
            }
        })
        .collect()
}

/// The edit list for the model file itself, from the targets' actions.
pub(crate) fn edits_for(model: &Model, targets: &[Target], actions: &[Action], extra: Vec<Edit>) -> Result<Vec<Edit>> {
    edits_with(model, targets, actions, extra, true)
}

/// [`edits_for`], with the in-place transforms (chunk-by-chunk actions on `raw_data` and
/// typed fixed-width fields, which change no length) only if `transforms` is set: a
/// writer that transforms those spans itself needs just the edits that carry bytes.
pub(crate) fn edits_with(
    model: &Model,
    targets: &[Target],
    actions: &[Action],
    extra: Vec<Edit>,
    transforms: bool,
) -> Result<Vec<Edit>> {
    let mut edits = extra;
    for (ti, target) in targets.iter().enumerate() {
        let t = &model.tensors[target.tensor];
        let action = &actions[ti];
        if matches!(action, Action::Skip) {
            continue;
        }
        match (&t.data, action) {
            (TensorData::Raw { .. } | TensorData::Fixed { .. }, Action::Xor(_) | Action::Reencrypt(_))
                if transforms =>
            {
                for &(a, b) in &target.spans {
                    for (range, logical) in t.file_pieces(a, b) {
                        edits.push(Edit {
                            range,
                            content: Content::Transform { tag: ti, logical_start: logical },
                            ancestors: Vec::new(),
                        });
                    }
                }
            }
            (TensorData::Raw { .. } | TensorData::Fixed { .. }, Action::Bytes(bytes)) => {
                for &(a, b) in &target.spans {
                    for (range, logical) in t.file_pieces(a, b) {
                        let lo = logical as usize;
                        let hi = lo + (range.end - range.start) as usize;
                        let piece =
                            bytes.get(lo..hi).ok_or_else(|| CoreError::BadManifest("span out of bounds".into()))?;
                        edits.push(Edit { range, content: Content::Bytes(piece.to_vec()), ancestors: Vec::new() });
                    }
                }
            }
            (TensorData::Varint { .. }, Action::Bytes(bytes)) => {
                edits.extend(t.varint_edits(bytes));
            }
            (TensorData::External { .. }, _)
            | (TensorData::Raw { .. } | TensorData::Fixed { .. }, Action::Xor(_) | Action::Reencrypt(_)) => {}
            _ => return Err(CoreError::BadManifest(format!("tensor '{}' has no data to transform", t.name))),
        }
    }
    Ok(edits)
}

/// Builds the edit list for the model file itself: in-place transforms for
/// raw/typed fixed-width data, re-encoded fields for varint data. XOR modes only
/// (the distribution-preserving mode needs [`prepare`] and [`edits_for`]).
pub(crate) fn model_edits(
    model: &Model,
    targets: &[Target],
    streams: &[Keystream],
    extra: Vec<Edit>,
) -> Result<Vec<Edit>> {
    if targets.iter().any(|t| t.mode == Mode::Dp) {
        return Err(CoreError::Output("the distribution-preserving mode is not supported here".into()));
    }
    let actions = prepare(model, targets, streams.iter().cloned().map(Some).collect(), false)?;
    edits_for(model, targets, &actions, extra)
}

/// The envelope of a manifest (§7, §11 of docs/format.md): the MAC and checksum over
/// `leaves` (in chunk-job order of `targets`), per tier when `sessions` holds more than
/// one tier's keys (index `tier − 1`).
pub(crate) fn seal(
    sessions: &[SessionKeys],
    targets: &[Target],
    chunk: u64,
    manifest: Vec<u8>,
    leaves: &[[u8; 32]],
) -> Result<pb::Envelope> {
    let top = sessions.last().ok_or_else(|| CoreError::Output("no tier keys".into()))?;
    if sessions.len() > 1 {
        let by_tier = leaves_by_tier(targets, chunk, leaves, sessions.len() as u32);
        let mut env = pb::Envelope { manifest: Vec::new(), ..Default::default() };
        for (i, l) in by_tier.iter().enumerate() {
            let (mac, sum) = tier_seal(Some(&sessions[i]), &manifest, i as u32 + 1, l);
            env.tier_macs.push(mac.map(|m| m.to_vec()).unwrap_or_default());
            env.tier_checksums.push(sum.to_vec());
        }
        env.manifest = manifest;
        Ok(env)
    } else {
        let (mac, checksum) = mac_and_checksum(Some(top), &manifest, leaves);
        Ok(pb::Envelope {
            manifest,
            mac: mac.map(|m| m.to_vec()).unwrap_or_default(),
            checksum: checksum.to_vec(),
            ..Default::default()
        })
    }
}

/// The manifest form of Argon2id parameters.
pub(crate) fn kdf_to_pb(k: &KdfParams) -> pb::KdfParams {
    pb::KdfParams {
        algorithm: "argon2id".into(),
        salt: k.salt.to_vec(),
        m_cost_kib: k.m_cost_kib,
        t_cost: k.t_cost,
        p_cost: k.p_cost,
    }
}

/// The `tool` field of a manifest written by this version.
pub(crate) fn tool_name() -> String {
    format!("onnx-protect {}", env!("CARGO_PKG_VERSION"))
}

/// Whether outputs are flushed to the disk before the rename: on request (`sync`), and
/// always when they replace the input (`in_place`), the only copy.
pub(crate) fn durable(in_place: bool, sync: bool) -> bool {
    in_place || sync
}

/// Options of [`encrypt`].
pub struct EncryptOptions<'a> {
    pub policy: &'a Policy,
    pub in_place: bool,
    /// Flush every output to the disk (`fsync`) before renaming it into place, so it
    /// survives a power failure. Always done with `in_place`, whose outputs replace the
    /// input; otherwise off, as with `cp` (the rename still makes outputs appear whole
    /// or not at all).
    pub sync: bool,
    pub progress: &'a dyn Progress,
}

/// Tier keys `K_1 ..= K_top` from the key of tier `top` (index `t − 1`).
pub(crate) fn tier_keys(key: &MasterKey, top: u32) -> Vec<MasterKey> {
    let mut keys = vec![key.clone()];
    for _ in 1..top {
        let next = keys.last().map(MasterKey::tier_down).unwrap_or_else(|| key.clone());
        keys.push(next);
    }
    keys.reverse();
    keys
}

/// Encrypts `input` into `output` (atomically; external side files next to it).
pub fn encrypt(input: &Path, output: &Path, key: &KeySource, opts: &EncryptOptions) -> Result<EncryptReport> {
    let model = Model::open_with_progress(input, opts.progress)?;
    if let Some(m) = model.metadata.iter().find(|m| is_manifest_key(&m.key)) {
        return Err(CoreError::AlreadyProtected { key: m.key.clone() });
    }
    check_output(&model, input, output, opts.in_place)?;
    // Staged now, so an output that cannot be created is refused before any planning.
    let outputs = Outputs::stage(&model, output)?;
    let tiers = opts.policy.tiers.max(1);
    opts.policy.shares()?;
    let weights = discover(&model);
    let weight_bytes: u64 = weights.iter().map(|w| model.tensors[w.tensor].nbytes).sum();
    let selection = select(&model, &weights, opts.policy);
    if tiers > 1 {
        if let Some(c) = selection.chosen.iter().find(|c| c.mode == Mode::Ctr) {
            return Err(CoreError::Policy(PolicyError::Invalid(format!(
                "access tiers need the fp or dp mode, but '{}' ({} {}) would be encrypted with ctr, which gives NaN \
                 outputs at every partial tier; use --mode '*=fp' or --mode '*=dp'",
                model.tensors[c.tensor].name, c.op_type, c.role
            ))));
        }
    }
    let (master, kdf) = key.master_for_encrypt()?;
    let salt = random_salt()?;
    let sessions: Vec<SessionKeys> = tier_keys(&master, tiers).iter().map(|k| SessionKeys::derive(k, &salt)).collect();
    let (manifest, targets) = build_manifest(&model, &selection, &sessions, &salt, kdf.as_ref(), opts.policy);
    let manifest_bytes = manifest.encode_to_vec();
    let streams: Vec<Option<Keystream>> =
        targets.iter().map(|t| Some(sessions[t.tier.max(1) as usize - 1].keystream(t.stream_id))).collect();
    let actions = prepare(&model, &targets, streams, false)?;
    // One pass: the ciphertext is hashed as it is written; the manifest entry, sealed
    // over those leaves, is appended last.
    let external = crate::writer::write_outputs_with(
        &model,
        &targets,
        &actions,
        Vec::new(),
        Some(Leaves { chunk: CHUNK_SIZE, written: Some(LEAF_HASH), read: None, given: None }),
        |leaves, _| {
            let envelope = seal(&sessions, &targets, CHUNK_SIZE, manifest_bytes, leaves)?;
            Ok(metadata_field(METADATA_KEY, &b64().encode(envelope.encode_to_vec())))
        },
        output,
        outputs,
        durable(opts.in_place, opts.sync),
        opts.progress,
    )?;
    let tensors = summaries(&model, &manifest, &targets);
    Ok(EncryptReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        weight_bytes,
        encrypted_bytes: selection.bytes(),
        tensors,
        skipped: selection.skipped.iter().map(|s| (model.tensors[s.tensor].name.clone(), s.reason.clone())).collect(),
        external_files: external,
    })
}

fn summaries(model: &Model, manifest: &pb::Manifest, targets: &[Target]) -> Vec<TensorSummary> {
    manifest
        .tensors
        .iter()
        .zip(targets)
        .map(|(e, t)| {
            let tensor = &model.tensors[t.tensor];
            TensorSummary {
                name: e.name.clone(),
                locator: e.locator.clone(),
                op_type: e.op_type.clone(),
                role: e.role.clone(),
                data_type: tensor.data_type.name().to_string(),
                storage: tensor.data.storage_name().to_string(),
                mode: t.mode.name().to_string(),
                nbytes: e.nbytes,
                encrypted_bytes: t.spans.iter().map(|(a, b)| b - a).sum(),
                subsequences: e.subsequences,
                chosen: e.chosen,
                spans: t.spans.clone(),
                tier: t.tier,
            }
        })
        .collect()
}

fn build_manifest(
    model: &Model,
    selection: &Selection,
    sessions: &[SessionKeys],
    salt: &[u8; 32],
    kdf: Option<&KdfParams>,
    policy: &Policy,
) -> (pb::Manifest, Vec<Target>) {
    let tiered = sessions.len() > 1;
    let mut entries = Vec::new();
    let mut targets = Vec::new();
    for (i, c) in selection.chosen.iter().enumerate() {
        let t = &model.tensors[c.tensor];
        let (loc, off) = match &t.data {
            TensorData::External { file, range } => (model.external_files[*file].location.clone(), range.start),
            _ => (String::new(), 0),
        };
        let tier = if tiered { c.tier } else { 0 };
        entries.push(pb::TensorEntry {
            stream_id: i as u64,
            locator: t.locator.to_string(),
            name: t.name.clone(),
            data_type: t.data_type.to_i32(),
            storage: storage_code(t) as i32,
            nbytes: t.nbytes,
            mode: mode_to_pb(c.mode),
            spans: c.spans.iter().flat_map(|&(a, b)| [a, b]).collect(),
            op_type: c.op_type.clone(),
            role: c.role.clone(),
            subsequences: c.subsequences,
            chosen: c.chosen.len() as u64,
            external_location: loc,
            external_offset: off,
            tier,
        });
        targets.push(Target { tensor: c.tensor, stream_id: i as u64, mode: c.mode, spans: c.spans.clone(), tier });
    }
    let top_check = sessions.last().map(|s| s.key_check().to_vec()).unwrap_or_default();
    let manifest = pb::Manifest {
        format_version: FORMAT_VERSION,
        salt: salt.to_vec(),
        key_check: top_check,
        kdf: kdf.map(kdf_to_pb),
        tensors: entries,
        tool: tool_name(),
        policy_summary: policy.summary(),
        chunk_size: CHUNK_SIZE,
        leaf_hash: leaf_hash_to_pb(LEAF_HASH),
        tiers: if tiered { sessions.len() as u32 } else { 0 },
        tier_key_checks: if tiered { sessions.iter().map(|s| s.key_check().to_vec()).collect() } else { Vec::new() },
    };
    (manifest, targets)
}

/// The keys a caller holds for a protected model, after every check they allow.
pub(crate) struct Unlocked {
    /// The tier of the given key (the number of tiers for the top key; 0 when untiered).
    pub key_tier: u32,
    /// The keystream of each target the key can decrypt (same order as the targets).
    pub streams: Vec<Option<Keystream>>,
}

/// Checks the key, then every MAC and checksum the key allows (§7, §11 of docs/format.md).
pub(crate) fn unlock(model: &Model, p: &Protected, key: &KeySource) -> Result<Unlocked> {
    unlock_master(model, p, &key.master_for_decrypt(p.manifest.kdf.as_ref(), p.manifest.tiers > 1)?)
}

fn salt_of(p: &Protected) -> Result<[u8; 32]> {
    p.manifest.salt.as_slice().try_into().map_err(|_| CoreError::BadManifest("salt".into()))
}

/// The session keys of an untiered model, if `master` passes its key check.
pub(crate) fn untiered_keys(master: &MasterKey, p: &Protected) -> Result<SessionKeys> {
    let keys = SessionKeys::derive(master, &salt_of(p)?);
    if !keys.key_check_matches(&p.manifest.key_check) {
        return Err(CoreError::WrongKey);
    }
    Ok(keys)
}

/// The keystream of every target of an untiered model.
pub(crate) fn untiered_streams(keys: &SessionKeys, p: &Protected) -> Vec<Option<Keystream>> {
    p.targets.iter().map(|t| Some(keys.keystream(t.stream_id))).collect()
}

/// Checks the MAC and the keyless checksum of an untiered model, given the leaves of
/// its ciphertext (§7 of docs/format.md).
pub(crate) fn check_untiered_seal(keys: &SessionKeys, p: &Protected, leaves: &[[u8; 32]]) -> Result<()> {
    let (mac, checksum) = mac_and_checksum(Some(keys), &p.envelope.manifest, leaves);
    if !mac.is_some_and(|m| bool::from(subtle_eq(&m, &p.envelope.mac))) {
        return Err(CoreError::Modified("the MAC over the manifest and the encrypted bytes does not match".into()));
    }
    if checksum.as_slice() != p.envelope.checksum.as_slice() {
        return Err(CoreError::Modified("the stored checksum does not match".into()));
    }
    Ok(())
}

/// [`unlock`] with the master key already derived (a passphrase is stretched once).
pub(crate) fn unlock_master(model: &Model, p: &Protected, master: &MasterKey) -> Result<Unlocked> {
    let chunk = p.manifest.chunk_size;
    if p.manifest.tiers <= 1 {
        let keys = untiered_keys(master, p)?;
        let leaves = leaf_digests_ext(model, &p.targets, chunk, p.leaf_hash, &[])?;
        check_untiered_seal(&keys, p, &leaves)?;
        return Ok(Unlocked { key_tier: 0, streams: untiered_streams(&keys, p) });
    }
    let TierKeys { key_tier, sessions, streams } = tier_keys_of(master, p)?;
    let restored = p.envelope.restored_tiers;
    // Restored tiers hold plaintext: re-encrypt them to check their MACs.
    let pre: Vec<Option<Vec<u8>>> = p
        .targets
        .iter()
        .zip(&streams)
        .map(|(t, ks)| match ks {
            Some(ks)
                if t.tier <= restored
                    && (t.mode == Mode::Dp || matches!(model.tensors[t.tensor].data, TensorData::Varint { .. })) =>
            {
                transform_tensor(model, t, ks, false).map(Some)
            }
            _ => Ok(None),
        })
        .collect::<Result<_>>()?;
    let sources: Vec<LeafSrc> = p
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| match (&pre[i], &streams[i]) {
            (Some(b), _) => LeafSrc::Bytes(b),
            (None, Some(ks)) if t.tier <= restored => LeafSrc::Xor(ks),
            _ => LeafSrc::File,
        })
        .collect();
    let leaves = leaf_digests_ext(model, &p.targets, chunk, p.leaf_hash, &sources)?;
    check_tier_seals(p, key_tier, &sessions, &leaves)?;
    Ok(Unlocked { key_tier, streams })
}

/// The keys a key gives for a tiered model, before any MAC is checked.
pub(crate) struct TierKeys {
    /// The key's tier (1..=N).
    pub(crate) key_tier: u32,
    /// The session keys of tiers 1..=key_tier (index `tier − 1`).
    sessions: Vec<SessionKeys>,
    /// The keystream of each target of those tiers (same order as the targets).
    pub(crate) streams: Vec<Option<Keystream>>,
}

/// Finds the tier of `master` in a tiered manifest by its key check value (none
/// matches: "wrong key") and derives the keys of that tier and the ones below.
pub(crate) fn tier_keys_of(master: &MasterKey, p: &Protected) -> Result<TierKeys> {
    let salt = salt_of(p)?;
    let given = SessionKeys::derive(master, &salt);
    let mut key_tier = 0;
    for (i, kc) in p.manifest.tier_key_checks.iter().enumerate() {
        if given.key_check_matches(kc) {
            key_tier = i as u32 + 1;
        }
    }
    if key_tier == 0 {
        return Err(CoreError::WrongKey);
    }
    let sessions: Vec<SessionKeys> =
        tier_keys(master, key_tier).iter().map(|k| SessionKeys::derive(k, &salt)).collect();
    let streams = p
        .targets
        .iter()
        .map(|t| (t.tier <= key_tier).then(|| sessions[t.tier as usize - 1].keystream(t.stream_id)))
        .collect();
    Ok(TierKeys { key_tier, sessions, streams })
}

/// Checks every tier's MAC that the key of `key_tier` can check and every checksum,
/// given the leaves of all targets in chunk-job order (for tiers restored in the file,
/// the leaves of their plaintext encrypted again). A restored tier above the key
/// holds plaintext this key cannot encrypt, so it is not checked (§11 of docs/format.md).
fn check_tier_seals(p: &Protected, key_tier: u32, sessions: &[SessionKeys], leaves: &[[u8; 32]]) -> Result<()> {
    let tiers = p.manifest.tiers;
    let restored = p.envelope.restored_tiers;
    let by_tier = leaves_by_tier(&p.targets, p.manifest.chunk_size, leaves, tiers);
    for t in 1..=tiers {
        let i = t as usize - 1;
        let keys = (t <= key_tier).then(|| &sessions[i]);
        if keys.is_none() && t <= restored {
            continue; // plaintext of a tier above this key: nothing this key can check
        }
        let (mac, sum) = tier_seal(keys, &p.envelope.manifest, t, &by_tier[i]);
        if let Some(mac) = mac {
            if !bool::from(subtle_eq(&mac, &p.envelope.tier_macs[i])) {
                return Err(CoreError::Modified(format!("the MAC of tier {t} does not match")));
            }
        }
        if sum.as_slice() != p.envelope.tier_checksums[i].as_slice() {
            return Err(CoreError::Modified(format!("the checksum of tier {t} does not match")));
        }
    }
    Ok(())
}

fn subtle_eq(a: &[u8], b: &[u8]) -> subtle::Choice {
    use subtle::ConstantTimeEq;
    if a.len() != b.len() {
        return subtle::Choice::from(0);
    }
    a.ct_eq(b)
}

/// Checks the key and the MAC of an untiered protected model; returns the session keys.
pub(crate) fn authenticate(model: &Model, p: &Protected, key: &KeySource) -> Result<SessionKeys> {
    if p.manifest.tiers > 1 {
        return Err(CoreError::Output("this operation does not support tiered models yet".into()));
    }
    let master = key.master_for_decrypt(p.manifest.kdf.as_ref(), false)?;
    unlock_master(model, p, &master)?;
    let salt: [u8; 32] = p.manifest.salt.as_slice().try_into().map_err(|_| CoreError::BadManifest("salt".into()))?;
    Ok(SessionKeys::derive(&master, &salt))
}

/// Options of [`decrypt`].
pub struct DecryptOptions<'a> {
    pub in_place: bool,
    /// As [`EncryptOptions::sync`].
    pub sync: bool,
    pub progress: &'a dyn Progress,
}

/// The decryption to perform: which targets, and what becomes of the manifest entry.
pub(crate) struct Restore {
    pub(crate) actions: Vec<Action>,
    /// Replacement of the manifest entry (empty: remove it).
    pub(crate) entry: Vec<u8>,
}

/// Checks the key (and every MAC it allows) and chooses what decryption up to `tier` does.
///
/// `as_is_ok`: a key whose tiers are all decrypted in the file already (and no `tier`
/// asked for) gives a restore that changes nothing, instead of an error; for running a
/// model in memory, where the file as it is is what that key serves.
pub(crate) fn plan_restore(
    model: &Model,
    p: &Protected,
    key: &KeySource,
    tier: Option<u32>,
    as_is_ok: bool,
) -> Result<Restore> {
    restore_for(model, p, unlock(model, p, key)?, tier, as_is_ok)
}

/// What decryption up to `tier` does with the keys `unlocked` (whose MACs the caller
/// checks: before, or in the pass that writes).
fn restore_for(model: &Model, p: &Protected, unlocked: Unlocked, tier: Option<u32>, as_is_ok: bool) -> Result<Restore> {
    let tiers = p.manifest.tiers;
    let restored = p.envelope.restored_tiers;
    if as_is_ok && tiers > 1 && tier.is_none() && unlocked.key_tier <= restored {
        let entry = model
            .bytes()
            .get(p.entry.range.start as usize..p.entry.range.end as usize)
            .ok_or_else(|| CoreError::BadManifest("manifest entry out of bounds".into()))?
            .to_vec();
        return Ok(Restore { actions: p.targets.iter().map(|_| Action::Skip).collect(), entry });
    }
    let (upto, full) = if tiers > 1 {
        let upto = tier.unwrap_or(unlocked.key_tier);
        if upto > unlocked.key_tier {
            return Err(CoreError::Key(format!(
                "this key is for tier {}; it cannot decrypt tier {upto}",
                unlocked.key_tier
            )));
        }
        if upto <= restored {
            return Err(CoreError::Output(format!("tiers up to {restored} are already decrypted in this model")));
        }
        (upto, upto == tiers)
    } else {
        if tier.is_some_and(|t| t != 1) {
            return Err(CoreError::Output("this model has no tiers; omit --tier".into()));
        }
        (0, true)
    };
    let streams: Vec<Option<Keystream>> = p
        .targets
        .iter()
        .zip(unlocked.streams)
        .map(|(t, ks)| if tiers <= 1 || (t.tier > restored && t.tier <= upto) { ks } else { None })
        .collect();
    let actions = prepare(model, &p.targets, streams, true)?;
    let entry = if full {
        Vec::new()
    } else {
        let mut env = p.envelope.clone();
        env.restored_tiers = upto;
        metadata_field(METADATA_KEY, &b64().encode(env.encode_to_vec()))
    };
    Ok(Restore { actions, entry })
}

/// What a pass that reads a model's ciphertext (decryption, key rotation) still has
/// to check once it has hashed it.
pub(crate) enum Seal {
    /// The MAC and checksum of an untiered model, with these keys.
    Untiered(SessionKeys),
    /// Every tier's MAC the key can check, and every checksum.
    Tiered(TierKeys),
    /// Nothing: checked before the pass.
    Checked,
}

impl Seal {
    /// Whether the pass must compute the leaves of what it reads.
    pub(crate) fn needs_leaves(&self) -> bool {
        !matches!(self, Seal::Checked)
    }

    /// Checks the stored MACs and checksums against `read`, the leaves of the stored
    /// ciphertext in chunk-job order.
    pub(crate) fn check(&self, p: &Protected, read: &[[u8; 32]]) -> Result<()> {
        match self {
            Seal::Untiered(keys) => check_untiered_seal(keys, p, read),
            Seal::Tiered(tk) => check_tier_seals(p, tk.key_tier, &tk.sessions, read),
            Seal::Checked => Ok(()),
        }
    }
}

/// Verifies and decrypts `input` into `output`, restoring the original bytes.
pub fn decrypt(input: &Path, output: &Path, key: &KeySource, opts: &DecryptOptions) -> Result<DecryptReport> {
    decrypt_tier(input, output, key, None, opts)
}

/// Like [`decrypt`], for tiered models up to tier `tier` (default: the key's own
/// tier). Decrypting below the top tier writes a valid model whose higher tiers
/// stay encrypted, with the manifest recording which tiers are restored.
pub fn decrypt_tier(
    input: &Path,
    output: &Path,
    key: &KeySource,
    tier: Option<u32>,
    opts: &DecryptOptions,
) -> Result<DecryptReport> {
    let model = Model::open_with_progress(input, opts.progress)?;
    let p = read_protected(&model)?;
    check_output(&model, input, output, opts.in_place)?;
    // A full decryption is one pass: after the key check (a wrong key is refused before
    // anything is written), the pass also hashes the ciphertext it reads, and the MACs
    // and checksums over those leaves are checked before the staged outputs are renamed
    // into place (a mismatch removes them). A partial one (a lower tier's key, or tiers
    // already restored in the file) checks first: the pass would hash the tiers it leaves
    // encrypted beside the ones it writes (measured slower), and the leaves of a restored
    // tier are those of its plaintext encrypted again, which the pass does not compute.
    let tiered = p.manifest.tiers > 1;
    // The outputs are staged once the key is checked (§7 of docs/format.md: nothing is
    // written before).
    let stage = || Outputs::stage(&model, output);
    let (actions, entry, seal, outputs) = if !tiered && tier.is_none_or(|t| t == 1) {
        let keys = untiered_keys(&key.master_for_decrypt(p.manifest.kdf.as_ref(), false)?, &p)?;
        let outputs = stage()?;
        (prepare(&model, &p.targets, untiered_streams(&keys, &p), true)?, Vec::new(), Seal::Untiered(keys), outputs)
    } else if tiered {
        let master = key.master_for_decrypt(p.manifest.kdf.as_ref(), true)?;
        let tk = tier_keys_of(&master, &p)?;
        if p.envelope.restored_tiers == 0 && tier.unwrap_or(tk.key_tier) == p.manifest.tiers {
            let unlocked = Unlocked { key_tier: tk.key_tier, streams: tk.streams.clone() };
            let outputs = stage()?;
            let r = restore_for(&model, &p, unlocked, tier, false)?;
            (r.actions, r.entry, Seal::Tiered(tk), outputs)
        } else {
            let r = restore_for(&model, &p, unlock_master(&model, &p, &master)?, tier, false)?;
            (r.actions, r.entry, Seal::Checked, stage()?)
        }
    } else {
        let r = plan_restore(&model, &p, key, tier, false)?;
        (r.actions, r.entry, Seal::Checked, stage()?)
    };
    let entry = Edit { range: p.entry.range.clone(), content: Content::Bytes(entry), ancestors: Vec::new() };
    let leaves = seal.needs_leaves().then_some(Leaves {
        chunk: p.manifest.chunk_size,
        written: None,
        read: Some(p.leaf_hash),
        given: None,
    });
    let append = |_: &[[u8; 32]], read: &[[u8; 32]]| {
        seal.check(&p, read)?;
        Ok(Vec::new())
    };
    crate::writer::write_outputs_with(
        &model,
        &p.targets,
        &actions,
        vec![entry],
        leaves,
        append,
        output,
        outputs,
        durable(opts.in_place, opts.sync),
        opts.progress,
    )?;
    let done: Vec<&Target> =
        p.targets.iter().zip(&actions).filter(|(_, a)| !matches!(a, Action::Skip)).map(|(t, _)| t).collect();
    Ok(DecryptReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        tensors: done.len(),
        decrypted_bytes: done.iter().flat_map(|t| &t.spans).map(|(a, b)| b - a).sum(),
    })
}

/// Decrypts a protected model into memory: the returned bytes are the original
/// model file (for a tiered model with a lower-tier key: the model with the key's
/// tiers restored). Only the encrypted ranges are touched after the copy.
pub fn decrypt_to_vec(model: &Model, key: &KeySource) -> Result<Vec<u8>> {
    decrypt_tier_to_vec(model, key, None)
}

/// Like [`decrypt_to_vec`], for tiered models up to tier `tier` (default: the key's
/// own tier), as [`decrypt_tier`] does to a file: below the top tier the result is a
/// valid model whose higher tiers stay encrypted, with its manifest recording the
/// restored tiers.
pub fn decrypt_tier_to_vec(model: &Model, key: &KeySource, tier: Option<u32>) -> Result<Vec<u8>> {
    let p = read_protected(model)?;
    if p.targets.iter().any(|t| matches!(model.tensors[t.tensor].data, TensorData::External { .. })) {
        return Err(CoreError::Output(
            "the model keeps encrypted weights in external files; decrypt it with memory::decrypt_tier_in_memory"
                .into(),
        ));
    }
    let r = plan_restore(model, &p, key, tier, false)?;
    restored_model_bytes(model, &p, &r)
}

/// The model file's bytes with the actions of `r` applied and its manifest entry
/// replaced (or removed); external data files are not touched.
pub(crate) fn restored_model_bytes(model: &Model, p: &Protected, r: &Restore) -> Result<Vec<u8>> {
    let entry = Edit { range: p.entry.range.clone(), content: Content::Bytes(r.entry.clone()), ancestors: Vec::new() };
    let edits = edits_for(model, &p.targets, &r.actions, vec![entry])?;
    let plan = Plan::new(model.bytes().len() as u64, edits, Vec::new())?;
    let mut out = Vec::with_capacity(plan.output_len() as usize);
    let mut err = None;
    plan.write(model.bytes(), &mut out, &mut |tag, logical, chunk| {
        let target = &p.targets[tag];
        let t = &model.tensors[target.tensor];
        r.actions[tag].apply_chunk(target, t.data_type, logical, chunk, true).map_err(|e| {
            err = Some(e);
            FormatError::Invalid("keystream failed".into())
        })
    })
    .map_err(|e| err.take().unwrap_or(CoreError::Format(e)))?;
    Ok(out)
}

/// The top-tier master key that the passphrase in `key` stands for in `model` (whose
/// manifest holds the Argon2id parameters), after the key check and every MAC; and the
/// model's number of tiers. Lower tier keys derive from it as from a key file's.
/// A key file is returned as it is, after the same checks.
pub fn top_master_key(model: &Model, key: &KeySource) -> Result<(MasterKey, u32)> {
    let p = read_protected(model)?;
    let master = key.master_for_decrypt(p.manifest.kdf.as_ref(), p.manifest.tiers > 1)?;
    let unlocked = unlock_master(model, &p, &master)?;
    let tiers = p.manifest.tiers.max(1);
    if p.manifest.tiers > 1 && unlocked.key_tier < p.manifest.tiers {
        return Err(CoreError::Key(format!(
            "this key is for tier {} of {tiers}; the top-tier key (tier {tiers}) is needed",
            unlocked.key_tier
        )));
    }
    Ok((master, tiers))
}

/// The access tier of `key` for a protected model, after the key check and every
/// MAC the key allows: the number of tiers for the top key, 0 for an untiered model.
pub fn key_tier(model: &Model, key: &KeySource) -> Result<u32> {
    let p = read_protected(model)?;
    Ok(unlock(model, &p, key)?.key_tier)
}

/// Verifies a protected model: with a key, the key check and the MACs the key
/// allows; without, the manifest's form and the keyless checksums of the encrypted bytes.
pub fn verify(input: &Path, key: Option<&KeySource>, progress: &dyn Progress) -> Result<VerifyReport> {
    let model = Model::open_with_progress(input, progress)?;
    let p = read_protected(&model)?;
    let check = match key {
        Some(k) => {
            unlock(&model, &p, k)?;
            "mac"
        }
        None => {
            let leaves = leaf_digests_ext(&model, &p.targets, p.manifest.chunk_size, p.leaf_hash, &[])?;
            if p.manifest.tiers > 1 {
                let by_tier = leaves_by_tier(&p.targets, p.manifest.chunk_size, &leaves, p.manifest.tiers);
                for t in p.envelope.restored_tiers + 1..=p.manifest.tiers {
                    let i = t as usize - 1;
                    let (_, sum) = tier_seal(None, &p.envelope.manifest, t, &by_tier[i]);
                    if sum.as_slice() != p.envelope.tier_checksums[i].as_slice() {
                        return Err(CoreError::Modified(format!("the checksum of tier {t} does not match")));
                    }
                }
            } else {
                let (_, checksum) = mac_and_checksum(None, &p.envelope.manifest, &leaves);
                if checksum.as_slice() != p.envelope.checksum.as_slice() {
                    return Err(CoreError::Modified(
                        "the checksum of the manifest and the encrypted bytes does not match".into(),
                    ));
                }
            }
            "checksum"
        }
    };
    let restored = p.envelope.restored_tiers;
    let bytes = |t: &Target| t.spans.iter().map(|(a, b)| b - a).sum::<u64>();
    let in_clear = |t: &&Target| t.tier > 0 && t.tier <= restored;
    Ok(VerifyReport {
        input: input.display().to_string(),
        check,
        tensors: p.targets.len(),
        encrypted_bytes: p.targets.iter().filter(|t| !in_clear(t)).map(bytes).sum(),
        restored_bytes: p.targets.iter().filter(in_clear).map(bytes).sum(),
    })
}

/// A description of what a protected model has encrypted (for `inspect`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProtectionInfo {
    pub key: String,
    pub format_version: u32,
    pub tool: String,
    pub passphrase: bool,
    pub policy_summary: String,
    pub encrypted_bytes: u64,
    /// Number of access tiers (0: untiered).
    pub tiers: u32,
    /// Tiers already decrypted in this file.
    pub restored_tiers: u32,
    /// The hash of the ciphertext chunks under the MAC (`"sha256"` or `"blake3"`, docs/format.md §7).
    pub leaf_hash: &'static str,
    pub tensors: Vec<TensorSummary>,
}

/// Reads the protection manifest, if any, for display.
pub fn protection_info(model: &Model) -> Result<Option<ProtectionInfo>> {
    if find_manifest_entry(model)?.is_none() {
        return Ok(None);
    }
    let p = read_protected(model)?;
    let tensors = summaries(model, &p.manifest, &p.targets);
    Ok(Some(ProtectionInfo {
        key: p.entry.key.clone(),
        format_version: p.manifest.format_version,
        tool: p.manifest.tool.clone(),
        passphrase: p.manifest.kdf.is_some(),
        policy_summary: p.manifest.policy_summary.clone(),
        encrypted_bytes: tensors.iter().map(|t| t.encrypted_bytes).sum(),
        tiers: p.manifest.tiers,
        restored_tiers: p.envelope.restored_tiers,
        leaf_hash: match p.leaf_hash {
            LeafHash::Sha256 => "sha256",
            LeafHash::Blake3 => "blake3",
        },
        tensors,
    }))
}

/// Used by tests and `NoProgress` callers.
pub fn no_progress() -> &'static dyn Progress {
    &NoProgress
}

/// Test helper: writes the format crate's tiny model to `dir/plain.onnx` and encrypts it
/// to `dir/protected.onnx` with a key of `key_byte`s. Returns both paths and the key.
#[cfg(test)]
pub(crate) fn encrypt_tiny(dir: &Path, key_byte: u8, policy: &Policy) -> (PathBuf, PathBuf, KeySource) {
    let plain = dir.join("plain.onnx");
    std::fs::write(&plain, onnx_protect_format::testutil::tiny_model()).unwrap();
    let out = dir.join("protected.onnx");
    let key = KeySource::Key(MasterKey::from_bytes([key_byte; 32]));
    let opts = EncryptOptions { policy, in_place: false, sync: false, progress: &NoProgress };
    encrypt(&plain, &out, &key, &opts).unwrap();
    (plain, out, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protected_tiny(dir: &Path) -> (PathBuf, KeySource) {
        let (_, out, key) = encrypt_tiny(dir, 9, &Policy::default());
        (out, key)
    }

    /// The protected model with its manifest's `leaf_hash` replaced (the MAC is not recomputed).
    fn with_leaf_hash(path: &Path, value: i32) -> Model {
        let model = Model::open(path).unwrap();
        let p = read_protected(&model).unwrap();
        let mut manifest = p.manifest.clone();
        manifest.leaf_hash = value;
        let envelope = pb::Envelope { manifest: manifest.encode_to_vec(), ..p.envelope.clone() };
        let entry = metadata_field(METADATA_KEY, &b64().encode(envelope.encode_to_vec()));
        let bytes = model.bytes();
        let r = p.entry.range.clone();
        let out = [&bytes[..r.start as usize], &entry[..], &bytes[r.end as usize..]].concat();
        Model::from_vec(out, None).unwrap()
    }

    #[test]
    fn new_manifests_use_blake3_leaves_and_the_choice_is_authenticated() {
        let dir = tempfile::tempdir().unwrap();
        let (path, key) = protected_tiny(dir.path());
        let model = Model::open(&path).unwrap();
        let p = read_protected(&model).unwrap();
        assert_eq!(p.leaf_hash, LeafHash::Blake3);
        assert_eq!(p.manifest.leaf_hash, pb::LeafHash::Blake3 as i32);
        assert!(decrypt_to_vec(&model, &key).is_ok());
        // Downgrading the manifest to SHA-256 leaves is caught by the MAC.
        let downgraded = with_leaf_hash(&path, pb::LeafHash::Sha256 as i32);
        assert_eq!(read_protected(&downgraded).unwrap().leaf_hash, LeafHash::Sha256);
        assert!(matches!(decrypt_to_vec(&downgraded, &key), Err(CoreError::Modified(_))));
    }

    #[test]
    fn an_unknown_leaf_hash_is_a_bad_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = protected_tiny(dir.path());
        let Err(err) = read_protected(&with_leaf_hash(&path, 7)) else { panic!("leaf_hash 7 was accepted") };
        assert!(matches!(&err, CoreError::BadManifest(m) if m.contains("unknown leaf hash 7")), "{err}");
    }
}
