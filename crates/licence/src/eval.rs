//! Evaluating a licence against a model, the recipient that opened it, and a time.

use onnx_protect_keys::SignerKey;

use crate::text::{Licence, ModelRef, RecipientRef};
use crate::time::format_utc;
use crate::LicenceError;

/// What a protected model says about itself (its manifest, authenticated by its MACs).
#[derive(Debug, Clone)]
pub struct ModelFacts {
    /// The licence authority the model was encrypted for.
    pub authority: SignerKey,
    /// `Envelope.content_digest`.
    pub content_digest: [u8; 32],
    /// The publisher's model id, if one was recorded.
    pub model_id: Option<String>,
}

/// The stanza that opened the model.
#[derive(Debug, Clone, Copy)]
pub struct Opener<'a> {
    /// Its kind (`key`, `tpm`, …).
    pub kind: &'a str,
    /// Its label.
    pub label: &'a str,
}

/// What a valid licence grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The highest access tier that may be decrypted.
    pub tiers: u32,
    /// Until when (seconds since the epoch, UTC).
    pub not_after: u64,
}

/// Checks, in this order, the signature (by the model's authority), the model, the
/// recipient, then the validity window at `now` (seconds since the epoch, UTC; from
/// [`crate::ClockState::advance`] where set-back detection is wanted).
pub fn evaluate(licence: &Licence, model: &ModelFacts, opener: Opener<'_>, now: u64) -> Result<Grant, LicenceError> {
    licence.verify(&model.authority)?;
    let t = &licence.terms;
    let names_model = t.models.iter().any(|m| match m {
        ModelRef::Digest(d) => *d == model.content_digest,
        ModelRef::Id(id) => model.model_id.as_deref() == Some(id.as_str()),
    });
    if !names_model {
        let named: Vec<String> = t.models.iter().map(describe_model).collect();
        let mut this = format!("digest:{}", hex::encode(model.content_digest));
        if let Some(id) = &model.model_id {
            this.push_str(&format!(", id:{id}"));
        }
        return Err(LicenceError::WrongModel { named: named.join(", "), model: this });
    }
    let names_opener = t.recipients.iter().any(|r| match r {
        RecipientRef::Any => true,
        RecipientRef::Stanza { kind, label } => kind == opener.kind && label == opener.label,
    });
    if !names_opener {
        let named: Vec<String> = t.recipients.iter().map(describe_recipient).collect();
        return Err(LicenceError::WrongDevice {
            named: named.join(", "),
            opener: format!("{} {}", opener.kind, opener.label).trim_end().to_string(),
        });
    }
    if now < t.not_before {
        return Err(LicenceError::NotYetValid { not_before: format_utc(t.not_before), now: format_utc(now) });
    }
    if now > t.not_after {
        return Err(LicenceError::Expired { not_after: format_utc(t.not_after), now: format_utc(now) });
    }
    Ok(Grant { tiers: t.tiers, not_after: t.not_after })
}

fn describe_model(m: &ModelRef) -> String {
    match m {
        ModelRef::Digest(d) => format!("digest:{}", hex::encode(d)),
        ModelRef::Id(id) => format!("id:{id}"),
    }
}

fn describe_recipient(r: &RecipientRef) -> String {
    match r {
        RecipientRef::Any => "any".into(),
        RecipientRef::Stanza { kind, label } => format!("{kind} {label}").trim_end().to_string(),
    }
}
