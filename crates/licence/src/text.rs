//! The licence text form, version 1 (docs/shipping.md#licences): strict lines, signed
//! byte for byte.
//!
//! ```text
//! onnx-protect-licence-v1
//! authority: onnx-protect-signer1…           the publisher's signer key (Appendix A)
//! licensee: ACME Robotics, plant 3           optional, informational, at most once
//! model: digest:<64 lowercase hex>           one or more: a content digest (format.md §9)
//! model: id:<publisher model id>               or a model id recorded at encryption
//! recipient: any | KIND [LABEL]              one or more: the stanza that may open it
//! tiers: N                                   the highest access tier granted, 1 to 16
//! not-before: YYYY-MM-DDTHH:MM:SSZ
//! not-after: YYYY-MM-DDTHH:MM:SSZ
//! signature: <Base64 of the 64-byte Ed25519 signature>
//! ```
//!
//! Lines end in `\n` (the last one may lack it), no `\r`, no blank lines, fields in this
//! order, each `NAME: VALUE` with one space; a value is 1 to 1024 characters of printable
//! UTF-8 (no control characters), without surrounding spaces. The signature is
//! `Ed25519(sk, "onnx-protect/licence/v1" ‖ B)`, `B` every byte of the text before
//! `signature:`.

use base64::{engine::general_purpose::STANDARD, Engine};
use onnx_protect_keys::{SignerKey, SigningKey};

use crate::time::{format_utc, parse_utc};
use crate::LicenceError;

/// First line of a version-1 licence.
pub const LICENCE_TAG: &str = "onnx-protect-licence-v1";
/// Domain separation of the signed bytes.
pub const LICENCE_SIGNATURE_LABEL: &[u8] = b"onnx-protect/licence/v1";
/// The largest licence text read.
pub const MAX_LICENCE_LEN: usize = 64 * 1024;
/// The most `model:` or `recipient:` lines.
pub const MAX_ENTRIES: usize = 64;
/// The longest value.
pub const MAX_VALUE_LEN: usize = 1024;
/// The highest access tier (format.md §3).
pub const MAX_TIERS: u32 = 16;

/// Which models a licence names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// The content digest of the protected model (`Envelope.content_digest`).
    Digest([u8; 32]),
    /// A model id the publisher recorded at encryption.
    Id(String),
}

/// Who may open the model under a licence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientRef {
    /// Any recipient of the model.
    Any,
    /// The stanza of this kind and label (`tpm onnx-protect-tpm1…`, `key 0123…`).
    Stanza {
        /// The stanza kind.
        kind: String,
        /// The stanza label (empty for a passphrase).
        label: String,
    },
}

/// The fields of a licence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// The publisher's key; the signature is checked with it.
    pub authority: SignerKey,
    /// Informational: who it was issued to.
    pub licensee: Option<String>,
    /// The models it opens (one or more).
    pub models: Vec<ModelRef>,
    /// The recipients it is for (one or more).
    pub recipients: Vec<RecipientRef>,
    /// The highest access tier it grants.
    pub tiers: u32,
    /// Valid from this instant (seconds since the epoch, UTC), inclusive.
    pub not_before: u64,
    /// Valid until this instant, inclusive.
    pub not_after: u64,
}

/// A parsed licence: its terms, the exact bytes signed and the signature, not yet verified.
#[derive(Debug, Clone)]
pub struct Licence {
    /// What it says.
    pub terms: Terms,
    signed: Vec<u8>,
    signature: [u8; 64],
}

impl Terms {
    /// Signs the terms with `key` (which must be the authority's) and returns the text.
    pub fn issue(&self, key: &SigningKey) -> Result<String, LicenceError> {
        if key.public() != self.authority {
            return Err(LicenceError::Malformed {
                line: 0,
                reason: "the signing key is not the licence's authority".into(),
            });
        }
        let body = self.body()?;
        // The text must read back as written: every value is checked as a reader would.
        let mut msg = LICENCE_SIGNATURE_LABEL.to_vec();
        msg.extend_from_slice(body.as_bytes());
        let text = format!("{body}signature: {}\n", STANDARD.encode(key.sign(&msg)));
        Licence::parse(text.as_bytes())?;
        Ok(text)
    }

    fn body(&self) -> Result<String, LicenceError> {
        let mut out = format!("{LICENCE_TAG}\nauthority: {}\n", self.authority.to_text());
        if let Some(l) = &self.licensee {
            out.push_str(&format!("licensee: {l}\n"));
        }
        for m in &self.models {
            match m {
                ModelRef::Digest(d) => out.push_str(&format!("model: digest:{}\n", hex::encode(d))),
                ModelRef::Id(id) => out.push_str(&format!("model: id:{id}\n")),
            }
        }
        for r in &self.recipients {
            match r {
                RecipientRef::Any => out.push_str("recipient: any\n"),
                RecipientRef::Stanza { kind, label } if label.is_empty() => {
                    out.push_str(&format!("recipient: {kind}\n"))
                }
                RecipientRef::Stanza { kind, label } => out.push_str(&format!("recipient: {kind} {label}\n")),
            }
        }
        out.push_str(&format!(
            "tiers: {}\nnot-before: {}\nnot-after: {}\n",
            self.tiers,
            format_utc(self.not_before),
            format_utc(self.not_after)
        ));
        Ok(out)
    }
}

impl Licence {
    /// Parses a licence text. Every malformed field is an error naming its line.
    pub fn parse(text: &[u8]) -> Result<Licence, LicenceError> {
        if text.len() > MAX_LICENCE_LEN {
            return Err(bad(0, format!("{} bytes ({MAX_LICENCE_LEN} at most)", text.len())));
        }
        let text = std::str::from_utf8(text).map_err(|e| bad(0, format!("not UTF-8 (byte {})", e.valid_up_to())))?;
        let body_end =
            text.find("\nsignature: ").map(|i| i + 1).ok_or_else(|| bad(0, "no 'signature:' line".into()))?;
        let (body, sig_line) = text.split_at(body_end);
        let sig_line_no = body.matches('\n').count() + 1;
        let sig_text = sig_line.strip_suffix('\n').unwrap_or(sig_line);
        let signature = parse_signature(sig_line_no, sig_text)?;
        let terms = parse_body(body)?;
        Ok(Licence { terms, signed: body.as_bytes().to_vec(), signature })
    }

    /// Whether the signature verifies under the licence's own authority and that authority
    /// is `expected` (the one a model records).
    pub fn verify(&self, expected: &SignerKey) -> Result<(), LicenceError> {
        if self.terms.authority != *expected {
            return Err(LicenceError::BadSignature {
                reason: format!(
                    "the licence is from {}, the model needs one from {}",
                    self.terms.authority.to_text(),
                    expected.to_text()
                ),
            });
        }
        let mut msg = LICENCE_SIGNATURE_LABEL.to_vec();
        msg.extend_from_slice(&self.signed);
        if !expected.verify(&msg, &self.signature) {
            return Err(LicenceError::BadSignature { reason: "the signature does not verify".into() });
        }
        Ok(())
    }
}

fn bad(line: usize, reason: String) -> LicenceError {
    LicenceError::Malformed { line, reason }
}

fn parse_signature(n: usize, line: &str) -> Result<[u8; 64], LicenceError> {
    if line.contains('\n') {
        return Err(bad(n + 1, "text after the 'signature:' line".into()));
    }
    let v = line.strip_prefix("signature: ").unwrap_or_default();
    let bytes = STANDARD.decode(v).map_err(|e| bad(n, format!("signature: not Base64 ({e})")))?;
    bytes.try_into().map_err(|b: Vec<u8>| bad(n, format!("signature: {} bytes, expected 64", b.len())))
}

/// The lines of the body as (1-based number, name, value).
fn fields(body: &str) -> Result<Vec<(usize, &str, &str)>, LicenceError> {
    let mut lines = body.split_terminator('\n').enumerate().map(|(i, l)| (i + 1, l));
    match lines.next() {
        Some((_, LICENCE_TAG)) => {}
        Some((_, l)) if l.starts_with("onnx-protect-licence-") => {
            return Err(bad(1, format!("unknown version '{l}' (this onnx-protect reads {LICENCE_TAG})")))
        }
        _ => return Err(bad(1, format!("not a licence (the first line must be '{LICENCE_TAG}')"))),
    }
    let mut out = Vec::new();
    for (n, line) in lines {
        if line.contains('\r') {
            return Err(bad(n, "a carriage return (lines end in \\n only)".into()));
        }
        let (name, value) =
            line.split_once(": ").ok_or_else(|| bad(n, format!("'{}' is not 'NAME: VALUE'", shorten(line))))?;
        if value.is_empty() || value.len() > MAX_VALUE_LEN {
            return Err(bad(n, format!("{name}: the value has {} bytes (1 to {MAX_VALUE_LEN})", value.len())));
        }
        if value.starts_with(' ') || value.ends_with(' ') || value.chars().any(char::is_control) {
            return Err(bad(n, format!("{name}: surrounding spaces or control characters in the value")));
        }
        out.push((n, name, value));
    }
    Ok(out)
}

fn parse_body(body: &str) -> Result<Terms, LicenceError> {
    let all = fields(body)?;
    let mut it = all.iter().peekable();
    let mut take = |name: &str, optional: bool| -> Result<Option<(usize, &str)>, LicenceError> {
        match it.peek() {
            Some(&&(n, got, v)) if got == name => {
                it.next();
                Ok(Some((n, v)))
            }
            Some(&&(n, got, _)) if !optional => Err(bad(n, format!("'{got}:' where '{name}:' was expected"))),
            None if !optional => Err(bad(0, format!("no '{name}:' line"))),
            _ => Ok(None),
        }
    };
    let (n, v) = take("authority", false)?.unwrap_or_default();
    let authority = SignerKey::parse(v).map_err(|e| bad(n, format!("authority: {e}")))?;
    let licensee = take("licensee", true)?.map(|(_, v)| v.to_string());
    let mut models = Vec::new();
    while let Some((n, v)) = take("model", !models.is_empty())? {
        models.push(parse_model(n, v)?);
    }
    let mut recipients = Vec::new();
    while let Some((n, v)) = take("recipient", !recipients.is_empty())? {
        recipients.push(parse_recipient(n, v)?);
    }
    let (n, v) = take("tiers", false)?.unwrap_or_default();
    let tiers = parse_tiers(n, v)?;
    let (n, v) = take("not-before", false)?.unwrap_or_default();
    let not_before = parse_utc(v).ok_or_else(|| bad(n, format!("not-before: '{v}' is not YYYY-MM-DDTHH:MM:SSZ")))?;
    let (n, v) = take("not-after", false)?.unwrap_or_default();
    let not_after = parse_utc(v).ok_or_else(|| bad(n, format!("not-after: '{v}' is not YYYY-MM-DDTHH:MM:SSZ")))?;
    if not_after < not_before {
        return Err(bad(n, "not-after is before not-before".into()));
    }
    if let Some((n, name, _)) = it.next() {
        return Err(bad(*n, format!("'{name}:' is out of place or unknown")));
    }
    if models.len() > MAX_ENTRIES || recipients.len() > MAX_ENTRIES {
        return Err(bad(0, format!("more than {MAX_ENTRIES} model: or recipient: lines")));
    }
    Ok(Terms { authority, licensee, models, recipients, tiers, not_before, not_after })
}

fn parse_model(n: usize, v: &str) -> Result<ModelRef, LicenceError> {
    if let Some(h) = v.strip_prefix("digest:") {
        let ok = h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let mut d = [0u8; 32];
        if !ok || hex::decode_to_slice(h, &mut d).is_err() {
            return Err(bad(n, "model: a digest is 64 lowercase hex digits".into()));
        }
        Ok(ModelRef::Digest(d))
    } else if let Some(id) = v.strip_prefix("id:") {
        if id.is_empty() {
            return Err(bad(n, "model: an empty id".into()));
        }
        Ok(ModelRef::Id(id.to_string()))
    } else {
        Err(bad(n, format!("model: '{}' is neither 'digest:HEX' nor 'id:TEXT'", shorten(v))))
    }
}

fn parse_recipient(n: usize, v: &str) -> Result<RecipientRef, LicenceError> {
    if v == "any" {
        return Ok(RecipientRef::Any);
    }
    let (kind, label) = v.split_once(' ').unwrap_or((v, ""));
    let kind_ok = kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if kind.is_empty() || !kind_ok || label.starts_with(' ') {
        return Err(bad(n, format!("recipient: '{}' is not 'any' or 'KIND LABEL'", shorten(v))));
    }
    Ok(RecipientRef::Stanza { kind: kind.to_string(), label: label.to_string() })
}

fn parse_tiers(n: usize, v: &str) -> Result<u32, LicenceError> {
    let t = v
        .parse::<u32>()
        .ok()
        .filter(|t| (1..=MAX_TIERS).contains(t) && !v.starts_with('0') && !v.starts_with('+'))
        .ok_or_else(|| bad(n, format!("tiers: '{v}' is not a number from 1 to {MAX_TIERS}")))?;
    Ok(t)
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(48).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}
