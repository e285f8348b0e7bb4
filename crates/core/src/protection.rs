//! A protected model's entry, read once, in the format it was written in (as age's
//! `Header` is): [`Protection::read`] finds the manifest entry, decodes and validates
//! it and matches it to the model; every verb is a method of the parsed value, which
//! dispatches to its format (`format2`, or the read-only `format1`) in one place.

use std::path::Path;

use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{FormatError, Model, Progress};
use onnx_protect_keys::SignerKey;

use crate::error::{CoreError, Modified, Result};
use crate::format1::manifest::{read_protected, ProtectedV1, METADATA_KEY_V1};
use crate::format2::envelope::{parse_entry, trailing_entry_bytes, METADATA_KEY_V2};
use crate::format2::ProtectedV2;
use crate::keys::KeySource;
use crate::metadata::is_manifest_key;
use crate::pass::decryption::Decryption;
use crate::reader::{Ask, Reader};
use crate::summary::ProtectionInfo;
use crate::target::Target;

/// The protection of a model, decoded, validated and matched to the model.
pub enum Protection {
    /// Format 2 (docs/format.md), which every encryption writes.
    V2(ProtectedV2),
    /// Format 1 (docs/format.md Appendix B), read only.
    V1(ProtectedV1),
}

/// The key-independent facts of a protected model, whatever its format version: what is
/// encrypted (the targets), the access tiers, those already decrypted in the file.
#[derive(Debug, Clone)]
pub struct ProtectionView {
    pub format_version: u32,
    pub targets: Vec<Target>,
    /// Number of access tiers (0 or 1: untiered).
    pub tiers: u32,
    pub restored_tiers: u32,
    pub policy_summary: String,
    /// The positions are secret (sealed): `targets` list the tensors, without spans.
    pub secret_positions: bool,
}

impl ProtectionView {
    /// The targets whose spans are still encrypted in the file (every tier not restored).
    pub fn still_encrypted(&self) -> impl Iterator<Item = &Target> {
        self.targets.iter().filter(move |t| t.tier == 0 || t.tier > self.restored_tiers)
    }
}

impl Protection {
    /// The protection of `model`; `None` if it carries no manifest entry. An entry of a
    /// version this build does not read is [`CoreError::UnsupportedVersion`]; two entries
    /// are "modified" (docs/format.md §1).
    pub fn read(model: &Model) -> Result<Option<Protection>> {
        let keys: Vec<&str> = model.metadata.iter().map(|m| m.key.as_str()).filter(|k| is_manifest_key(k)).collect();
        match keys.as_slice() {
            [] => Ok(None),
            [k] if *k == METADATA_KEY_V2 => Ok(Some(Protection::V2(ProtectedV2::read(model)?))),
            [k] if *k == METADATA_KEY_V1 => Ok(Some(Protection::V1(read_protected(model)?))),
            [k] => Err(CoreError::UnsupportedVersion { key: k.to_string(), format_version: None }),
            _ => Err(Modified::TwoEntries.into()),
        }
    }

    /// The protection of a model that must be protected ([`CoreError::NotProtected`]).
    pub fn of(model: &Model) -> Result<Protection> {
        Self::read(model)?.ok_or(CoreError::NotProtected)
    }

    /// The format-2 entry of a model that `operation` (a past participle: "signed")
    /// rewrites: format 1 is [`CoreError::ReadOnlyFormat`].
    pub fn writable(self, operation: &'static str) -> Result<ProtectedV2> {
        match self {
            Protection::V2(p) => Ok(p),
            Protection::V1(_) => Err(CoreError::ReadOnlyFormat { version: 1, operation }),
        }
    }

    /// The format version of the entry.
    pub fn format_version(&self) -> u32 {
        match self {
            Protection::V2(_) => 2,
            Protection::V1(_) => 1,
        }
    }

    /// What every use of the model must report ([`FORMAT_1_WARNING`](crate::format1::FORMAT_1_WARNING)
    /// for format 1).
    pub fn warning(&self) -> Option<&'static str> {
        crate::format1::warning_for(self.format_version())
    }

    /// The number of access tiers (1 for an untiered model).
    pub fn tiers(&self) -> u32 {
        match self {
            Protection::V2(p) => p.sealed.header.tiers,
            Protection::V1(p) => p.manifest.tiers.max(1),
        }
    }

    /// The key-independent facts of the protection.
    pub fn view(self) -> ProtectionView {
        match self {
            Protection::V2(p) => ProtectionView {
                format_version: 2,
                tiers: p.sealed.header.tiers,
                restored_tiers: p.sealed.envelope.restored_tiers,
                policy_summary: p.sealed.header.policy_summary,
                secret_positions: p.sealed.header.positions != 0,
                targets: p.targets,
            },
            Protection::V1(p) => ProtectionView {
                format_version: 1,
                tiers: p.manifest.tiers,
                restored_tiers: p.envelope.restored_tiers,
                policy_summary: p.manifest.policy_summary,
                secret_positions: false,
                targets: p.targets,
            },
        }
    }

    /// The reader of the entry's format: every verb is one of its methods (the
    /// decryption among them, which `protect` and `memory` carry out).
    pub(crate) fn reader(&self) -> &dyn Reader {
        match self {
            Protection::V2(p) => p,
            Protection::V1(p) => p,
        }
    }

    /// [`Reader::decryption`] by a protection that is not needed afterwards (format 2's is
    /// taken rather than copied).
    pub(crate) fn into_decryption<'m>(self, model: &'m Model, ask: Ask<'_>) -> Result<Decryption<'m>> {
        match self {
            Protection::V2(p) => p.into_decryption(model, ask),
            Protection::V1(p) => p.decryption(model, ask),
        }
    }

    /// What `inspect` shows of the protection.
    pub fn info(&self, model: &Model) -> Result<ProtectionInfo> {
        self.reader().info(model)
    }

    /// Verifies the model: with a key, every MAC the key allows; without, the keyless
    /// digest (format 2) or checksums (format 1); and the signatures of `signers`, when
    /// any are given. Returns the targets checked (secret positions unsealed as far as
    /// the key reaches).
    pub fn verify(&self, model: &Model, key: Option<&KeySource>, signers: &[SignerKey]) -> Result<Vec<Target>> {
        self.reader().verify(model, key, signers)
    }

    /// The access tier of `key`, after every check the key allows: the number of tiers
    /// for the top key (1 for an untiered format-2 model, 0 for an untiered format-1 model).
    pub fn key_tier(&self, model: &Model, key: &KeySource) -> Result<u32> {
        self.reader().key_tier(model, key)
    }

    /// The top-tier key that `key` stands for (for a passphrase: its Argon2id output
    /// under the model's parameters), after every check the key allows; and the number of
    /// tiers. Lower tier keys derive from it as from a key file's.
    pub fn top_key(&self, model: &Model, key: &KeySource) -> Result<(MasterKey, u32)> {
        self.reader().top_key(model, key)
    }
}

/// Opens a model file that should be protected: a file that no longer parses but ends
/// in a sound format-2 entry is "modified" (its content changed), not an invalid model.
/// An in-place rewrap of the file that a crash interrupted is finished first
/// ([`crate::pass::journal::finish_interrupted`]).
pub fn open_protected(input: &Path, progress: &dyn Progress) -> Result<Model> {
    crate::pass::journal::finish_interrupted(input);
    Model::open_with_progress(input, progress).map_err(|e| triage(input, e))
}

/// The error for a model file that does not parse: "modified" when it ends in a sound
/// version-2 entry, or in an entry whose value is not text (a manifest entry not encoded as
/// docs/format.md §1 says): under a well-formed entry every reason the model is invalid
/// (§4) is a modification, whatever its content digest. Else (and for a file that cannot
/// be read, or whose listed external data file is missing or not a regular file: a
/// packaging slip, not a modification) the parser's error.
fn triage(path: &Path, e: FormatError) -> CoreError {
    use onnx_protect_format::ErrorKind as K;
    if e.kind() == K::Io {
        return e.into();
    }
    let Ok(bytes) = std::fs::read(path) else { return e.into() };
    let Some((range, raw)) = trailing_entry_bytes(&bytes) else { return e.into() };
    let Ok(value) = std::str::from_utf8(raw) else {
        return Modified::EntryNotText { cause: Box::new(e) }.into();
    };
    let Ok(sealed) = parse_entry(value, range) else { return e.into() };
    // A file the header lists that is not there, or not a regular file there (a folder, a
    // pipe), is a packaging slip; a location the header does not list is a change of the
    // model.
    if let FormatError::ExternalMissing { location, .. } | FormatError::ExternalPath { location, .. } = &e {
        if sealed.header.external_files.contains(location) {
            return e.into();
        }
    }
    Modified::NoLongerParses { cause: Box::new(e) }.into()
}
