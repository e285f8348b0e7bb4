//! The manifest of format version 2 (docs/format.md §1–§3, §10, §11): finding the
//! trailing entry, decoding the envelope, header and recipient stanzas with their
//! canonical-encoding checks, the keyless checksum, and the bytes of a new entry. The
//! entry is matched to the model by [`ProtectedV2::match_model`](super::ProtectedV2::match_model)
//! (§12 steps 1–3).

use std::collections::HashSet;
use std::ops::Range;

use base64::Engine;
use onnx_protect_crypto::{envelope_checksum, KdfParams, KDF_SALT_LEN};
use onnx_protect_format::write::metadata_field;
use onnx_protect_format::Model;
use onnx_protect_keys::Stanza;
use onnx_protect_proto::v2 as pb;
use onnx_protect_proto::Message;
use onnx_protect_select::MAX_TIERS;

use crate::error::{BadManifest, CoreError, Modified, Result};
use crate::metadata::b64;

/// The `metadata_props` key of a format-2 manifest.
pub const METADATA_KEY_V2: &str = "onnx-protect/v2";
/// The format version a version-2 header records.
pub const FORMAT_VERSION_V2: u32 = 2;
/// The content-digest chunk size this version writes for models of
/// [`SMALL_CONTENT`] bytes or more.
pub const CONTENT_CHUNK: u64 = 4 << 20;
/// The chunk size written for smaller models.
pub const SMALL_CONTENT_CHUNK: u64 = 1 << 20;
/// Models (the model file and its external files) under this many bytes get
/// [`SMALL_CONTENT_CHUNK`].
pub const SMALL_CONTENT: u64 = 64 << 20;

/// The content-digest chunk size written for a model of `bytes` bytes (model file and
/// external files).
pub fn content_chunk(bytes: u64) -> u64 {
    if bytes < SMALL_CONTENT {
        SMALL_CONTENT_CHUNK
    } else {
        CONTENT_CHUNK
    }
}
/// Caps on what a header may list (a hostile file cannot make a reader do more).
pub const MAX_ENTRIES: usize = 1 << 20;
/// The most recipient stanzas a model may carry.
pub const MAX_STANZAS: usize = 1024;
/// The most signatures a model may carry.
pub const MAX_SIGNATURES: usize = 64;
/// The largest encoded `Recipients` message (docs/format.md §8), refused before a stanza
/// is decoded.
pub const MAX_RECIPIENTS_LEN: usize = 1 << 20;

/// A decoded, shape-checked version-2 entry, before it is matched to the model.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// Byte range of the whole `metadata_props` field (tag included) in the model file;
    /// the model's content is everything before it.
    pub entry: Range<u64>,
    pub envelope: pb::Envelope,
    pub header: pb::Header,
    pub stanzas: Vec<Stanza>,
    /// The stanzas as stored (same order), for writing them again unchanged: a stanza of a
    /// kind this build does not know is skipped whole, its fields not examined.
    pub raw_stanzas: Vec<pb::Stanza>,
}

fn bad(e: BadManifest) -> CoreError {
    CoreError::BadManifest(e)
}

fn varint_at(bytes: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = *bytes.get(at + i)?;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // Minimal: no trailing zero group (except the single byte 0).
            if i > 0 && b == 0 {
                return None;
            }
            return Some((v, i + 1));
        }
    }
    None
}

/// Finds a version-2 manifest entry at the very end of `bytes` without parsing the
/// model (docs/format.md §1): `0x72 L 0x0A 0x0F "onnx-protect/v2" 0x12 L' VALUE` ending at
/// the last byte. Returns the field's range and the value.
pub fn trailing_entry(bytes: &[u8]) -> Option<(Range<u64>, &str)> {
    let (range, value) = trailing_entry_bytes(bytes)?;
    Some((range, std::str::from_utf8(value).ok()?))
}

/// [`trailing_entry`] whatever the value's bytes are (text or not), by the search of
/// docs/format.md §1: the last occurrence of `0x0A 0x0F "onnx-protect/v2" 0x12`, a
/// minimal varint `L'` after it and `L'` bytes to the end of the file, and before it `0x72`
/// and the minimal varint of the byte count from that occurrence to the end.
pub(crate) fn trailing_entry_bytes(bytes: &[u8]) -> Option<(Range<u64>, &[u8])> {
    let mut key = vec![0x0A, METADATA_KEY_V2.len() as u8];
    key.extend_from_slice(METADATA_KEY_V2.as_bytes());
    key.push(0x12);
    // The value is base64 text, which never holds 0x0A, and the varint before it never
    // ends in 0x0A followed by 0x0F: the last occurrence is the entry's key.
    let at = memchr::memmem::rfind(bytes, &key)?;
    let (vlen, vl) = varint_at(bytes, at + key.len())?;
    let value_start = at + key.len() + vl;
    if value_start as u64 + vlen != bytes.len() as u64 {
        return None;
    }
    let mut prefix = vec![0x72];
    onnx_protect_format::wire::put_varint(&mut prefix, (bytes.len() - at) as u64);
    let start = at.checked_sub(prefix.len())?;
    (bytes[start..at] == prefix[..]).then(|| (start as u64..bytes.len() as u64, &bytes[value_start..]))
}

/// Decodes `bytes` as `M` and refuses any encoding other than the canonical one.
fn canonical<M: Message + Default>(bytes: &[u8], message: &'static str) -> Result<M> {
    let m = M::decode(bytes).map_err(|cause| bad(BadManifest::Decode { message, cause }))?;
    if m.encode_to_vec() != bytes {
        return Err(bad(BadManifest::NotCanonical { message }));
    }
    Ok(m)
}

/// Decodes and shape-checks the value of a version-2 entry found at `entry` (§2, §3,
/// §12 step 1), and checks its keyless checksum (§10).
pub fn parse_entry(value: &str, entry: Range<u64>) -> Result<Sealed> {
    let raw = b64().decode(value.as_bytes()).map_err(|cause| bad(BadManifest::NotBase64 { cause }))?;
    if b64().encode(&raw) != value {
        return Err(bad(BadManifest::NotCanonicalBase64));
    }
    let envelope: pb::Envelope = canonical(&raw, "envelope")?;
    let header: pb::Header = canonical(&envelope.header, "header")?;
    // The version is the entry's key; a version-2 header of another format_version
    // breaks a header rule (§3).
    if header.format_version != FORMAT_VERSION_V2 {
        return Err(bad(BadManifest::HeaderVersion { version: header.format_version }));
    }
    if envelope.recipients.len() > MAX_RECIPIENTS_LEN {
        return Err(bad(BadManifest::RecipientsTooLong { len: envelope.recipients.len(), max: MAX_RECIPIENTS_LEN }));
    }
    let recipients: pb::Recipients = canonical(&envelope.recipients, "recipients")?;
    check_shape(&envelope, &header, &recipients)?;
    // The envelope is canonical and its checksum (field 8, the last) is 32 bytes: its
    // encoding is the last 34 bytes (tag 0x42, length 32), and the bytes before it are
    // those the checksum covers.
    let prefix = raw.len().checked_sub(34).filter(|&at| raw[at..at + 2] == [0x42, 32]).map(|at| &raw[..at]);
    let prefix = prefix.ok_or(CoreError::Internal("a canonical envelope that does not end in its checksum"))?;
    if envelope_checksum(prefix).as_slice() != envelope.checksum.as_slice() {
        return Err(Modified::Checksum.into());
    }
    let stanzas: Vec<Stanza> =
        recipients.stanzas.iter().enumerate().map(|(i, s)| stanza_from_pb(i, s.clone())).collect::<Result<_>>()?;
    onnx_protect_keys::check_stanzas(&stanzas).map_err(|cause| bad(BadManifest::Stanza { cause }))?;
    Ok(Sealed { entry, envelope, header, stanzas, raw_stanzas: recipients.stanzas })
}

/// The byte length `external_leaves` must have: 32 per chunk of each external file whose
/// size the header records (`None` when it records none, or the count overflows).
fn listed_leaves_len(h: &pb::Header) -> Option<u64> {
    if h.external_sizes.is_empty() {
        return None;
    }
    let chunks = h.external_sizes.iter().try_fold(0u64, |n, &len| n.checked_add(len.div_ceil(h.chunk_size)))?;
    chunks.checked_mul(32)
}

fn check_shape(env: &pb::Envelope, h: &pb::Header, r: &pb::Recipients) -> Result<()> {
    let tiers = h.tiers;
    if tiers == 0 || tiers > MAX_TIERS {
        return Err(bad(BadManifest::Tiers { tiers, max: MAX_TIERS }));
    }
    let n = tiers as usize;
    if h.key_checks.len() != n || h.key_checks.iter().any(|k| k.len() != 16) {
        return Err(bad(BadManifest::KeyChecks));
    }
    if !h.chunk_size.is_power_of_two() || !(1 << 16..=1 << 30).contains(&h.chunk_size) {
        return Err(bad(BadManifest::ChunkSize { size: h.chunk_size }));
    }
    if h.tensors.len() > MAX_ENTRIES || r.stanzas.len() > MAX_STANZAS || env.signatures.len() > MAX_SIGNATURES {
        return Err(bad(BadManifest::TooMany));
    }
    if r.stanzas.is_empty() {
        return Err(bad(BadManifest::NoStanza));
    }
    if !h.external_sizes.is_empty() && h.external_sizes.len() != h.external_files.len() {
        return Err(bad(BadManifest::ExternalSizes));
    }
    if !h.external_leaves.is_empty() && Some(h.external_leaves.len() as u64) != listed_leaves_len(h) {
        return Err(bad(BadManifest::ExternalLeaves));
    }
    if !h.licence_authority.is_empty() && h.licence_authority.len() != 32 {
        return Err(bad(BadManifest::LicenceAuthorityLength));
    }
    if h.licence_authority.is_empty() && !h.model_id.is_empty() {
        return Err(bad(BadManifest::ModelIdWithoutAuthority));
    }
    if h.model_id.len() > crate::licence::MAX_MODEL_ID_LEN {
        return Err(bad(BadManifest::ModelIdTooLong { max: crate::licence::MAX_MODEL_ID_LEN }));
    }
    check_original_names(h)?;
    if env.content_digest.len() != 32 || env.checksum.len() != 32 {
        return Err(bad(BadManifest::DigestLength));
    }
    if env.macs.len() != n || env.macs.iter().any(|m| m.len() != 32) {
        return Err(bad(BadManifest::Macs));
    }
    if env.restored_tiers >= tiers || (env.restored_tiers > 0) != (env.stored_digest.len() == 32) {
        return Err(bad(BadManifest::RestoredTiers));
    }
    if env.restored_tiers == 0 && !env.stored_digest.is_empty() {
        return Err(bad(BadManifest::StoredDigest));
    }
    let mut keys = HashSet::new();
    for s in &env.signatures {
        if s.public_key.len() != 32 || s.signature.len() != 64 || !keys.insert(s.public_key.clone()) {
            return Err(bad(BadManifest::Signature));
        }
    }
    for (i, s) in r.stanzas.iter().enumerate() {
        if !(1..=tiers).contains(&s.tier) {
            return Err(bad(BadManifest::StanzaTier { index: i, tier: s.tier }));
        }
    }
    Ok(())
}

/// A stored stanza as the key material sees it (docs/format.md §8): a `kdf` is read on a
/// `passphrase` stanza, refused on the other kinds the format defines, and not examined on
/// a kind it does not define (such a stanza is skipped whole).
fn stanza_from_pb(i: usize, s: pb::Stanza) -> Result<Stanza> {
    let kdf = match s.kdf {
        None => None,
        Some(_) if s.kind != onnx_protect_keys::KIND_PASSPHRASE => {
            if onnx_protect_keys::is_known_kind(&s.kind) {
                return Err(bad(BadManifest::StanzaKdf { index: i, kind: s.kind }));
            }
            None
        }
        Some(k) => {
            if k.algorithm != "argon2id" {
                return Err(bad(BadManifest::UnknownKdf { index: Some(i), algorithm: k.algorithm }));
            }
            let salt: [u8; KDF_SALT_LEN] =
                k.salt.as_slice().try_into().map_err(|_| bad(BadManifest::KdfSalt { index: Some(i) }))?;
            Some(KdfParams { salt, m_cost_kib: k.m_cost_kib, t_cost: k.t_cost, p_cost: k.p_cost })
        }
    };
    Ok(Stanza { kind: s.kind, tier: s.tier, label: s.label, salt: s.salt, kdf, body: s.body })
}

pub(crate) fn stanza_to_pb(s: &Stanza) -> pb::Stanza {
    pb::Stanza {
        kind: s.kind.clone(),
        tier: s.tier,
        label: s.label.clone(),
        salt: s.salt.clone(),
        kdf: s.kdf.as_ref().map(|k| pb::KdfParams {
            algorithm: "argon2id".into(),
            salt: k.salt.to_vec(),
            m_cost_kib: k.m_cost_kib,
            t_cost: k.t_cost,
            p_cost: k.p_cost,
        }),
        body: s.body.clone(),
    }
}

/// `original_external_files` (docs/format.md §3): empty, or one name per external data
/// file, each a location §5 allows that names a file, no two alike (naming one file).
fn check_original_names(h: &pb::Header) -> Result<()> {
    let names = &h.original_external_files;
    if names.is_empty() {
        return Ok(());
    }
    if names.len() != h.external_files.len() {
        return Err(bad(BadManifest::OriginalNames));
    }
    let mut files: Vec<Vec<&str>> = Vec::with_capacity(names.len());
    for n in names {
        let refuse = |why: &str| bad(BadManifest::OriginalName { name: n.clone(), why: why.to_string() });
        onnx_protect_format::model::check_location(n).map_err(&refuse)?;
        let file = file_components(n);
        if file.is_empty() {
            return Err(refuse("it names no file (only empty and '.' components)"));
        }
        if files.contains(&file) {
            return Err(bad(BadManifest::OriginalNameTwice { name: file.join("/") }));
        }
        files.push(file);
    }
    Ok(())
}

/// The file a location names (docs/format.md §3, §5): its components, split at `/` and `\`,
/// without the empty and `.` ones (`a//b`, `./a/b` and `a/b` name one file).
fn file_components(location: &str) -> Vec<&str> {
    location.split(['/', '\\']).filter(|c| !c.is_empty() && *c != ".").collect()
}

/// Compares each external data file's length with the one the header records (files
/// written before the lengths were recorded have none), before anything reads the files
/// (docs/format.md §3): a file grown or cut is refused at once, however large.
pub(crate) fn check_external_sizes(model: &Model, h: &pb::Header) -> Result<()> {
    for (i, &expected) in h.external_sizes.iter().enumerate() {
        let location = h.external_files.get(i).map(String::as_str).unwrap_or("");
        let actual = model.external_files.iter().find(|f| f.location == location).map(|f| f.size);
        match actual {
            Some(actual) if actual != expected => {
                return Err(Modified::ExternalSize { location: location.to_string(), actual, expected }.into())
            }
            _ => {}
        }
    }
    Ok(())
}

/// The `metadata_props` field that stores `envelope`, its checksum filled in.
pub(crate) fn entry_bytes(mut envelope: pb::Envelope) -> Vec<u8> {
    envelope.checksum.clear();
    envelope.checksum = envelope_checksum(&envelope.encode_to_vec()).to_vec();
    metadata_field(METADATA_KEY_V2, &b64().encode(envelope.encode_to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_under_64_mib_are_hashed_in_1_mib_chunks_and_larger_ones_in_4_mib() {
        assert_eq!(content_chunk(0), 1 << 20);
        assert_eq!(content_chunk((64 << 20) - 1), 1 << 20);
        assert_eq!(content_chunk(64 << 20), 4 << 20);
        assert_eq!(content_chunk(u64::MAX), 4 << 20);
    }

    /// A header of one tier, with external files of `sizes` bytes and `leaves` bytes of
    /// listed chunk hashes, and an envelope of the right shape around it.
    fn shape(sizes: &[u64], leaves: usize) -> Result<()> {
        let h = pb::Header {
            format_version: FORMAT_VERSION_V2,
            tiers: 1,
            key_checks: vec![vec![0; 16]],
            chunk_size: 1 << 16,
            external_files: (0..sizes.len()).map(|i| format!("f{i}.bin")).collect(),
            external_sizes: sizes.to_vec(),
            external_leaves: vec![7; leaves],
            ..Default::default()
        };
        let env = pb::Envelope {
            content_digest: vec![0; 32],
            checksum: vec![0; 32],
            macs: vec![vec![0; 32]],
            ..Default::default()
        };
        let r = pb::Recipients { stanzas: vec![pb::Stanza { kind: "key".into(), tier: 1, ..Default::default() }] };
        check_shape(&env, &h, &r)
    }

    #[test]
    fn listed_chunk_hashes_are_32_bytes_per_chunk_of_the_recorded_sizes() {
        // 2 chunks of 64 KiB, then 1 (a file of one byte), then none (an empty file).
        let sizes = [(1 << 16) + 1, 1, 0];
        assert!(shape(&sizes, 0).is_ok(), "none listed");
        assert!(shape(&sizes, 3 * 32).is_ok(), "one per chunk");
        for wrong in [32, 2 * 32, 3 * 32 - 1, 3 * 32 + 1, 4 * 32] {
            let e = shape(&sizes, wrong).unwrap_err();
            assert!(matches!(e, CoreError::BadManifest(BadManifest::ExternalLeaves)), "{wrong}: {e}");
        }
        // Listed hashes need the recorded sizes.
        let e = shape(&[], 32).unwrap_err();
        assert!(matches!(e, CoreError::BadManifest(BadManifest::ExternalLeaves)), "{e}");
    }

    #[test]
    fn the_trailing_entry_is_found_only_at_the_very_end() {
        let mut model = vec![0x3a, 3, 1, 2, 3];
        let field = metadata_field(METADATA_KEY_V2, "QUJD");
        model.extend_from_slice(&field);
        let (range, value) = trailing_entry(&model).unwrap();
        assert_eq!(range, 5..model.len() as u64);
        assert_eq!(value, "QUJD");
        let mut longer = model.clone();
        longer.push(0);
        assert!(trailing_entry(&longer).is_none());
        assert!(trailing_entry(&model[..model.len() - 1]).is_none());
        // A long value needs a two-byte length.
        let long = "A".repeat(300);
        let mut m2 = vec![1, 2];
        m2.extend_from_slice(&metadata_field(METADATA_KEY_V2, &long));
        assert_eq!(trailing_entry(&m2).unwrap().0, 2..m2.len() as u64);
        assert!(trailing_entry(b"").is_none());
        // A field length whose varint holds 0x0A (1290 = 0x8A 0x0A) and a value length of
        // ten (0x0A): found all the same.
        for value_len in [1290 - 19 - 2, 10] {
            let mut m3 = vec![0x0A, 0x0A, 0x0A];
            let field = metadata_field(METADATA_KEY_V2, &"B".repeat(value_len));
            m3.extend_from_slice(&field);
            assert_eq!(trailing_entry(&m3).unwrap().0, 3..m3.len() as u64, "{value_len}");
        }
        // A prefix that is not minimal is not the entry.
        let mut m4 = vec![1];
        m4.push(0x72);
        m4.extend_from_slice(&[0x80 | (field.len() as u8 - 2), 0x00]);
        m4.extend_from_slice(&field[2..]);
        assert!(trailing_entry(&m4).is_none());
    }
}
