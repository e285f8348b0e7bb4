//! The format-1 manifest (docs/format.md Appendix B.1, B.2): where it lives, its
//! messages and their lengths, and its entries matched to the model.
//!
//! The manifest is stored as a top-level `metadata_props` entry under
//! [`METADATA_KEY_V1`], whose value is the base64 of an `Envelope` holding the encoded
//! `Manifest` and its seals (MACs and checksums, B.4).

use base64::Engine;
use onnx_protect_crypto::{KdfParams, LeafHash, KDF_SALT_LEN};
use onnx_protect_format::model::MetadataEntry;
use onnx_protect_format::write::metadata_field;
use onnx_protect_format::Model;
use onnx_protect_proto::v1 as pb;
use onnx_protect_proto::Message;

use crate::error::{BadManifest, CoreError, Result};
use crate::metadata::{b64, is_manifest_key};
use crate::target::{match_targets, EntryFacts, EntryRules, Target};

/// The `metadata_props` key of a format-1 manifest.
pub const METADATA_KEY_V1: &str = "onnx-protect/v1";
/// The format version written into [`pb::Manifest::format_version`].
pub const FORMAT_VERSION: u32 = 1;
/// Domain-separation labels of the integrity computation (B.4).
pub use onnx_protect_crypto::CHUNK_LABEL;
pub const MAC_INPUT_LABEL: &[u8] = b"onnx-protect/v1/mac-input";
pub const CHECKSUM_LABEL: &[u8] = b"onnx-protect/v1/checksum";
/// The chunk size format-1 files were written with (a reader takes the manifest's).
pub const CHUNK_SIZE: u64 = 4 << 20;

/// A parsed, validated format-1 manifest and where it sits in the model.
pub struct ProtectedV1 {
    pub entry: MetadataEntry,
    pub envelope: pb::Envelope,
    pub manifest: pb::Manifest,
    /// For each manifest tensor (same order): the model tensor and its spans.
    pub targets: Vec<Target>,
    /// The hash of the ciphertext chunks (`Manifest.leaf_hash`).
    pub leaf_hash: LeafHash,
}

/// The whole `metadata_props` field (tag included) that stores `envelope`.
pub(crate) fn entry_field(envelope: &pb::Envelope) -> Vec<u8> {
    metadata_field(METADATA_KEY_V1, &b64().encode(envelope.encode_to_vec()))
}

/// The Argon2id parameters a manifest records (B.3).
pub(crate) fn kdf_from_pb(k: &pb::KdfParams) -> Result<KdfParams> {
    if k.algorithm != "argon2id" {
        return Err(BadManifest::UnknownKdf { index: None, algorithm: k.algorithm.clone() }.into());
    }
    let salt: [u8; KDF_SALT_LEN] = k.salt.as_slice().try_into().map_err(|_| BadManifest::KdfSalt { index: None })?;
    Ok(KdfParams { salt, m_cost_kib: k.m_cost_kib, t_cost: k.t_cost, p_cost: k.p_cost })
}

/// The file's salt, as the key schedule takes it.
pub(crate) fn salt_of(p: &ProtectedV1) -> Result<[u8; 32]> {
    p.manifest.salt.as_slice().try_into().map_err(|_| BadManifest::SaltOrKeyCheck.into())
}

/// Finds the format-1 metadata entry, refusing other versions and duplicates.
fn find_manifest_entry(model: &Model) -> Result<Option<MetadataEntry>> {
    let ours: Vec<&MetadataEntry> = model.metadata.iter().filter(|m| is_manifest_key(&m.key)).collect();
    match ours.as_slice() {
        [] => Ok(None),
        [one] if one.key == METADATA_KEY_V1 => Ok(Some((*one).clone())),
        [one] => Err(CoreError::UnsupportedVersion { key: one.key.clone(), format_version: None }),
        _ => Err(BadManifest::TwoEntries.into()),
    }
}

/// Reads and validates the format-1 manifest of a protected model (B.5 steps 1–2).
pub fn read_protected(model: &Model) -> Result<ProtectedV1> {
    let entry = find_manifest_entry(model)?.ok_or(CoreError::NotProtected)?;
    let (envelope, manifest) = decode_entry(&entry)?;
    check_seal_lengths(&manifest, &envelope)?;
    let leaf_hash = match pb::LeafHash::try_from(manifest.leaf_hash) {
        Ok(pb::LeafHash::Sha256) => LeafHash::Sha256,
        Ok(pb::LeafHash::Blake3) => LeafHash::Blake3,
        Err(_) => return Err(BadManifest::LeafHash { value: manifest.leaf_hash }.into()),
    };
    if !(4096..=(1 << 30)).contains(&manifest.chunk_size) {
        return Err(BadManifest::Format1ChunkSize { size: manifest.chunk_size }.into());
    }
    let tiers = manifest.tiers;
    let rules = EntryRules {
        tier_ok: Box::new(move |t| if tiers > 1 { (1..=tiers).contains(&t) } else { t == 0 }),
        min_span: false,
        sealed: false,
    };
    let facts = manifest.tensors.iter().map(|e| EntryFacts::from((e, e.spans.as_slice())));
    let targets = match_targets(model, facts, &rules)?;
    Ok(ProtectedV1 { entry, envelope, manifest, targets, leaf_hash })
}

/// The envelope and manifest of a manifest entry, of this format version.
fn decode_entry(entry: &MetadataEntry) -> Result<(pb::Envelope, pb::Manifest)> {
    let raw = b64().decode(entry.value.as_bytes()).map_err(|cause| BadManifest::NotBase64 { cause })?;
    let envelope =
        pb::Envelope::decode(raw.as_slice()).map_err(|cause| BadManifest::Decode { message: "envelope", cause })?;
    let manifest = pb::Manifest::decode(envelope.manifest.as_slice())
        .map_err(|cause| BadManifest::Decode { message: "manifest", cause })?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(CoreError::UnsupportedVersion {
            key: METADATA_KEY_V1.to_string(),
            format_version: Some(manifest.format_version),
        });
    }
    Ok((envelope, manifest))
}

/// The salt, the key check values and the seals (one, or one per tier) have their lengths.
fn check_seal_lengths(manifest: &pb::Manifest, envelope: &pb::Envelope) -> Result<()> {
    if manifest.salt.len() != 32 || manifest.key_check.len() != 16 {
        return Err(BadManifest::SaltOrKeyCheck.into());
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
            return Err(BadManifest::TierSeals.into());
        }
    } else if envelope.mac.len() != 32 || envelope.checksum.len() != 32 || envelope.restored_tiers != 0 {
        return Err(BadManifest::Seals.into());
    }
    Ok(())
}
