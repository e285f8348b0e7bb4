//! Licences when a model opens (docs/shipping.md#licences, docs/format.md Appendix C): a
//! model whose header names a licence authority opens, for every operation that opens a
//! stanza (decrypt, load, verify with a key, rekey, rewrap), only with a licence of that
//! authority valid for the model, the stanza that opened it and the time; it grants the
//! tiers the licence names, at most.

use std::time::{SystemTime, UNIX_EPOCH};

use onnx_protect_keys::SignerKey;
use onnx_protect_licence::{evaluate, ModelFacts, Opener};
pub use onnx_protect_licence::{ClockFile, Licence, LicenceError, TpmReading, MAX_LICENCE_LEN};
use onnx_protect_proto::v2 as pb;

use crate::error::{BadManifest, Result, UnusableKey};

/// The longest model id a header may record (docs/format.md §3); a reader accepts any up to
/// this length.
pub const MAX_MODEL_ID_LEN: usize = 1024;

/// The longest model id an encryptor records: `id:` and it make a licence value of at most
/// 1024 bytes (docs/format.md Appendix C), so that a licence line can name it.
pub const MAX_NAMEABLE_MODEL_ID_LEN: usize = 1021;

/// What a model records at encryption: opening it will need a licence of `authority`.
#[derive(Debug, Clone)]
pub struct LicenceRequirement {
    /// The publisher's signer key that signs licences.
    pub authority: SignerKey,
    /// A model id licences may name (`model: id:…`), besides the content digest.
    pub model_id: Option<String>,
}

/// What a loader gives with its key: the licence, and how the time is told.
#[derive(Clone)]
pub struct LicenceCheck {
    /// The licence (parsed, not yet verified).
    pub licence: Licence,
    /// The recorded high-water mark (and TPM anchors) that detects a clock set back; `None`:
    /// the system clock alone.
    pub clock: Option<ClockFile>,
    /// A reading of the TPM's clock, for the TPM anchor.
    pub tpm: Option<TpmReading>,
}

/// Checks a model id an encryptor is to record: 1 to [`MAX_NAMEABLE_MODEL_ID_LEN`] bytes, no
/// control character, U+2028 or U+2029, no leading or trailing space (a licence line must be able to
/// name it, docs/format.md Appendix C).
pub fn check_model_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_NAMEABLE_MODEL_ID_LEN
        && !id.starts_with(' ')
        && !id.ends_with(' ')
        && !id.chars().any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}');
    if ok {
        Ok(())
    } else {
        Err(UnusableKey::ModelId { id: id.to_string(), max: MAX_NAMEABLE_MODEL_ID_LEN }.into())
    }
}

/// The requirement a header records, if any (its shape checked when the header was read).
pub(crate) fn requirement(h: &pb::Header) -> Result<Option<LicenceRequirement>> {
    if h.licence_authority.is_empty() {
        return Ok(None);
    }
    let bytes: [u8; 32] = h.licence_authority.as_slice().try_into().map_err(|_| BadManifest::LicenceAuthorityLength)?;
    let authority = SignerKey::from_bytes(&bytes).map_err(|_| BadManifest::LicenceAuthorityKey)?;
    let model_id = (!h.model_id.is_empty()).then(|| h.model_id.clone());
    Ok(Some(LicenceRequirement { authority, model_id }))
}

/// The header fields of a requirement.
pub(crate) fn header_fields(req: Option<&LicenceRequirement>) -> (Vec<u8>, String) {
    match req {
        None => (Vec::new(), String::new()),
        Some(r) => (r.authority.to_bytes().to_vec(), r.model_id.clone().unwrap_or_default()),
    }
}

/// The highest tier the model of header `h` and recorded content `digest` opens to,
/// `tier` being what the key reaches through the stanza (`kind`, `label`): `tier` for a
/// model without a licence authority; otherwise what a valid licence grants, at most `tier`.
pub(crate) fn granted_tier(
    h: &pb::Header,
    digest: &[u8],
    check: Option<&LicenceCheck>,
    opener: (&str, &str),
    tier: u32,
) -> Result<u32> {
    let Some(req) = requirement(h)? else { return Ok(tier) };
    let Some(check) = check else {
        return Err(LicenceError::Missing { authority: req.authority.to_text() }.into());
    };
    let digest: [u8; 32] = digest.try_into().map_err(|_| BadManifest::DigestLength)?;
    let facts = ModelFacts { authority: req.authority, content_digest: digest, model_id: req.model_id };
    // The signature and the names first: a licence for another model or device does not
    // move the recorded clock.
    let opener = Opener { kind: opener.0, label: opener.1 };
    let system = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    evaluate(&check.licence, &facts, opener, check.licence.terms.not_before)?;
    let now = match &check.clock {
        Some(c) => c.check(system, check.tpm.as_ref())?,
        None => system,
    };
    let grant = evaluate(&check.licence, &facts, opener, now)?;
    Ok(tier.min(grant.tiers))
}
