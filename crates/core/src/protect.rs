//! Encrypting, decrypting and verifying models (format version 1, `docs/format.md`).
//!
//! Each verb is a short pipeline over the modules of this crate:
//!
//! * [`encrypt`]: open the model, refuse a protected one, check and stage the
//!   outputs, select what to encrypt (no key), derive the file's keys, build the
//!   manifest, then one pass of the writer encrypts the chosen ranges, hashes the
//!   ciphertext as it is written, and appends the manifest entry sealed over it
//!   (a top-level `metadata_props` entry, last in the file).
//! * [`decrypt`], [`decrypt_tier`]: read the manifest, check the key check value
//!   before anything is written, then one pass writes the input with the ranges
//!   decrypted and the manifest entry removed (or, below the top tier, updated),
//!   checking the MAC over the ciphertext it reads before any output appears. A full
//!   decryption gives back the original file byte for byte.
//! * [`verify`]: the key check and the MACs with a key, the keyless checksums without.
//!
//! The key source, the error type and the manifest reader are re-exported here for
//! callers of the verbs.

use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

use onnx_protect_crypto::{random_salt, Keystream, MasterKey};
use onnx_protect_format::write::{Content, Edit};
use onnx_protect_format::{discover, Model, NoProgress, Progress, TensorData};
use onnx_protect_proto::Message;
use onnx_protect_select::{select, Mode, Policy, PolicyError, Selection};

use crate::action::{prepare, Action};
use crate::keys::tier_sessions;
use crate::manifest::{build_manifest, entry_field, summaries};
use crate::restore::{plan_restore, restore_for, restored_model_bytes};
use crate::seal::{check_checksums, leaf_digests, seal_envelope};
use crate::staged::{check_output, durable, Outputs};
use crate::unlock::{tier_keys_of, unlock, unlock_master, untiered_keys, untiered_streams, PendingCheck, Unlocked};
use crate::writer::{write_outputs, Leaves, PassSpec};

pub use crate::error::{CoreError, ErrorKind, Result};
pub use crate::keys::KeySource;
pub use crate::manifest::{
    find_manifest_entry, is_manifest_key, protection_info, read_protected, Protected, ProtectionInfo, Target,
    TensorSummary, CHECKSUM_LABEL, CHUNK_LABEL, CHUNK_SIZE, FORMAT_VERSION, LEAF_HASH, MAC_INPUT_LABEL, METADATA_KEY,
    METADATA_PREFIX,
};

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

/// Options of [`decrypt`].
pub struct DecryptOptions<'a> {
    pub in_place: bool,
    /// As [`EncryptOptions::sync`].
    pub sync: bool,
    pub progress: &'a dyn Progress,
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
    refuse_ctr_with_tiers(&model, &selection, tiers)?;
    let (master, kdf) = key.master_for_encrypt()?;
    let salt = random_salt()?;
    let sessions = tier_sessions(&master, tiers, &salt);
    let (manifest, targets) = build_manifest(&model, &selection, &sessions, &salt, kdf.as_ref(), opts.policy);
    let manifest_bytes = manifest.encode_to_vec();
    let streams: Vec<Option<Keystream>> =
        targets.iter().map(|t| Some(sessions[t.tier.max(1) as usize - 1].keystream(t.stream_id))).collect();
    let actions = prepare(&model, &targets, streams, false)?;
    // One pass: the ciphertext is hashed as it is written; the manifest entry, sealed
    // over those leaves, is appended last.
    let spec = PassSpec {
        model: &model,
        targets: &targets,
        actions: &actions,
        extra: Vec::new(),
        leaves: Some(Leaves { chunk: CHUNK_SIZE, written: Some(LEAF_HASH), read: None, given: None }),
        durable: durable(opts.in_place, opts.sync),
        progress: opts.progress,
    };
    let external = write_outputs(spec, outputs, |leaves, _| {
        Ok(entry_field(&seal_envelope(&sessions, &targets, CHUNK_SIZE, manifest_bytes, leaves)?))
    })?;
    Ok(EncryptReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        weight_bytes,
        encrypted_bytes: selection.bytes(),
        tensors: summaries(&model, &manifest, &targets),
        skipped: selection.skipped.iter().map(|s| (model.tensors[s.tensor].name.clone(), s.reason.clone())).collect(),
        external_files: external,
    })
}

/// Refuses the `ctr` mode in a tiered encryption: its keystream turns floats into NaN,
/// so every partial tier would give NaN outputs.
fn refuse_ctr_with_tiers(model: &Model, selection: &Selection, tiers: u32) -> Result<()> {
    if tiers <= 1 {
        return Ok(());
    }
    match selection.chosen.iter().find(|c| c.mode == Mode::Ctr) {
        Some(c) => Err(CoreError::Policy(PolicyError::Invalid(format!(
            "access tiers need the fp or dp mode, but '{}' ({} {}) would be encrypted with ctr, which gives NaN \
             outputs at every partial tier; use --mode '*=fp' or --mode '*=dp'",
            model.tensors[c.tensor].name, c.op_type, c.role
        )))),
        None => Ok(()),
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
    let FileDecryption { actions, entry, pending, outputs } = plan_file_decryption(&model, &p, key, tier, output)?;
    let entry = Edit { range: p.entry.range.clone(), content: Content::Bytes(entry), ancestors: Vec::new() };
    let leaves = pending.needs_leaves().then_some(Leaves {
        chunk: p.manifest.chunk_size,
        written: None,
        read: Some(p.leaf_hash),
        given: None,
    });
    let spec = PassSpec {
        model: &model,
        targets: &p.targets,
        actions: &actions,
        extra: vec![entry],
        leaves,
        durable: durable(opts.in_place, opts.sync),
        progress: opts.progress,
    };
    write_outputs(spec, outputs, |_, read| {
        pending.check(&p, read)?;
        Ok(Vec::new())
    })?;
    let done: Vec<&Target> =
        p.targets.iter().zip(&actions).filter(|(_, a)| !matches!(a, Action::Skip)).map(|(t, _)| t).collect();
    Ok(DecryptReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        tensors: done.len(),
        decrypted_bytes: done.iter().flat_map(|t| &t.spans).map(|(a, b)| b - a).sum(),
    })
}

/// A decryption into a file: the targets' actions, the replacement of the manifest
/// entry (empty: removed), what the pass still has to check, and the staged outputs.
struct FileDecryption {
    actions: Vec<Action>,
    entry: Vec<u8>,
    pending: PendingCheck,
    outputs: Outputs,
}

/// Checks the key and plans a decryption of `p` up to `tier` into `output`; the
/// outputs are staged once the key is checked (§7 of docs/format.md: nothing is
/// written before).
///
/// A full decryption is one pass: after the key check, the pass also hashes the
/// ciphertext it reads, and the MACs and checksums over those leaves are checked before
/// the staged outputs are renamed into place (a mismatch removes them). A partial one
/// (a lower tier's key, or tiers already restored in the file) checks first: its pass
/// would have to hash the tiers it leaves encrypted beside the ones it writes, and the
/// leaves of a restored tier are those of its plaintext encrypted again, which the pass
/// does not compute.
fn plan_file_decryption(
    model: &Model,
    p: &Protected,
    key: &KeySource,
    tier: Option<u32>,
    output: &Path,
) -> Result<FileDecryption> {
    let tiered = p.manifest.tiers > 1;
    let stage = || Outputs::stage(model, output);
    if !tiered && tier.is_none_or(|t| t == 1) {
        let keys = untiered_keys(&key.master_for_decrypt(p.manifest.kdf.as_ref(), false)?, p)?;
        let outputs = stage()?;
        let actions = prepare(model, &p.targets, untiered_streams(&keys, p), true)?;
        return Ok(FileDecryption { actions, entry: Vec::new(), pending: PendingCheck::Untiered(keys), outputs });
    }
    if !tiered {
        let r = plan_restore(model, p, key, tier, false)?;
        return Ok(FileDecryption {
            actions: r.actions,
            entry: r.entry,
            pending: PendingCheck::Checked,
            outputs: stage()?,
        });
    }
    let master = key.master_for_decrypt(p.manifest.kdf.as_ref(), true)?;
    let tk = tier_keys_of(&master, p)?;
    if p.envelope.restored_tiers == 0 && tier.unwrap_or(tk.key_tier) == p.manifest.tiers {
        let unlocked = Unlocked { key_tier: tk.key_tier, streams: tk.streams.clone() };
        let outputs = stage()?;
        let r = restore_for(model, p, unlocked, tier, false)?;
        return Ok(FileDecryption { actions: r.actions, entry: r.entry, pending: PendingCheck::Tiered(tk), outputs });
    }
    let r = restore_for(model, p, unlock_master(model, p, &master)?, tier, false)?;
    Ok(FileDecryption { actions: r.actions, entry: r.entry, pending: PendingCheck::Checked, outputs: stage()? })
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
            let leaves = leaf_digests(&model, &p.targets, p.manifest.chunk_size, p.leaf_hash, &[])?;
            check_checksums(&p, &leaves)?;
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
    use onnx_protect_crypto::LeafHash;
    use onnx_protect_proto::v1 as pb;

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
        let entry = entry_field(&envelope);
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
