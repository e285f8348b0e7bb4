//! Format 1 (docs/format.md Appendix B), read only: every use of such a file is verified
//! and decrypted, none writes one. Its manifest ([`manifest`]: B.1, B.2), its keys and
//! seals (`unlock`: B.3, B.6; `seal`: B.4, B.6) and what decrypting it up to a tier does
//! (`restore`: B.5, B.6), as methods of the manifest read and matched to the model.
//! Format 1 authenticates only the manifest and the encrypted spans
//! ([`FORMAT_1_WARNING`]).

pub mod manifest;
mod restore;
mod seal;
mod unlock;

use onnx_protect_crypto::{LeafHash, MasterKey};
use onnx_protect_format::Model;
use onnx_protect_keys::SignerKey;

use self::manifest::ProtectedV1;
use crate::error::{CoreError, Result, Unsigned};
use crate::keys::KeySource;
use crate::pass::decryption::{Decryption, NewEntry};
use crate::reader::{Ask, Reader};
use crate::summary::{bytes_by_protection, summaries, ProtectionInfo};
use crate::target::Target;

/// What every use of a format-1 file reports (docs/format.md Appendix B): its MAC covers
/// the manifest and the encrypted spans, not the clear bytes.
pub const FORMAT_1_WARNING: &str = "format 1: only encrypted spans authenticated";

/// [`FORMAT_1_WARNING`] for a file of format `version`, else nothing.
pub fn warning_for(version: u32) -> Option<&'static str> {
    (version == 1).then_some(FORMAT_1_WARNING)
}

impl Reader for ProtectedV1 {
    /// Verifies the model: with a key, its key check and every MAC and checksum it allows
    /// (B.5 step 3); without, the keyless checksums. Format 1 has no signatures: trusted
    /// `signers` are refused.
    fn verify(&self, model: &Model, key: Option<&KeySource>, signers: &[SignerKey]) -> Result<Vec<Target>> {
        if !signers.is_empty() {
            return Err(CoreError::NotSigned(Unsigned::Format1));
        }
        match key {
            Some(k) => {
                unlock::unlock(model, self, k)?;
            }
            None => {
                let leaves = seal::leaf_digests(model, &self.targets, self.manifest.chunk_size, self.leaf_hash, &[])?;
                seal::check_checksums(self, &leaves)?;
            }
        }
        Ok(self.targets.clone())
    }

    /// The tier of `key` (0 for an untiered model), after every check it allows.
    fn key_tier(&self, model: &Model, key: &KeySource) -> Result<u32> {
        Ok(unlock::unlock(model, self, key)?.key_tier)
    }

    /// The top-tier key that `key` stands for (for a passphrase: its Argon2id output),
    /// after every check it allows, and the number of tiers; refused below the top tier.
    fn top_key(&self, model: &Model, key: &KeySource) -> Result<(MasterKey, u32)> {
        let master = unlock::master_key(key, self.manifest.kdf.as_ref(), self.manifest.tiers > 1)?;
        let unlocked = unlock::unlock_master(model, self, &master)?;
        let tiers = self.manifest.tiers.max(1);
        if self.manifest.tiers > 1 && unlocked.key_tier < self.manifest.tiers {
            return Err(CoreError::NotTopKey {
                key_tier: unlocked.key_tier,
                tiers,
                operation: "deriving tier keys",
                by_licence: false,
            });
        }
        Ok((master, tiers))
    }

    /// What `inspect` shows of the model's protection.
    fn info(&self, model: &Model) -> Result<ProtectionInfo> {
        let tensors = summaries(model, &self.manifest.tensors, &self.targets);
        Ok(ProtectionInfo {
            key: self.entry.key.clone(),
            format_version: self.manifest.format_version,
            tool: self.manifest.tool.clone(),
            passphrase: self.manifest.kdf.is_some(),
            policy_summary: self.manifest.policy_summary.clone(),
            encrypted_bytes: tensors.iter().map(|t| t.encrypted_bytes).sum(),
            bytes_by_protection: bytes_by_protection(&tensors),
            tiers: self.manifest.tiers,
            restored_tiers: self.envelope.restored_tiers,
            leaf_hash: match self.leaf_hash {
                LeafHash::Sha256 => "sha256",
                LeafHash::Blake3 => "blake3",
            },
            tensors,
            recipients: Vec::new(),
            signatures: Vec::new(),
            positions: "public",
            label_lock: None,
            tier_classes: None,
            warning: Some(FORMAT_1_WARNING),
        })
    }

    fn names_without_key(&self, _tier: Option<u32>) -> Option<Option<&[String]>> {
        Some(None)
    }

    /// The decryption of the model with `key` up to tier `tier` (default: the key's own),
    /// its key and every MAC checked first (B.5): a key whose tiers are all in clear in the
    /// file already, with no tier asked for, gets the file as it is. A decryption below the
    /// top tier keeps a format-1 entry, which only memory takes (the format is read-only).
    fn decryption<'m>(&self, model: &'m Model, ask: Ask<'_>) -> Result<Decryption<'m>> {
        if !ask.signers.is_empty() {
            return Err(CoreError::NotSigned(Unsigned::Format1));
        }
        let r = restore::plan_restore(model, self, ask.key, ask.tier)?;
        let (tensors, decrypted_bytes) = Decryption::count(&self.targets, &r.actions);
        Ok(Decryption {
            model,
            format_version: 1,
            targets: self.targets.clone(),
            actions: r.actions,
            tensors,
            decrypted_bytes,
            entry: self.entry.range.clone(),
            new_entry: if r.entry.is_empty() { NewEntry::Remove } else { NewEntry::Bytes(r.entry) },
            names: None,
            pending: None,
            chunk: self.manifest.chunk_size,
            tier: r.tier,
            tiers: self.manifest.tiers.max(1),
        })
    }
}
