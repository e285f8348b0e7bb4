//! Key rotation: re-encrypting a protected model under a new key in one pass.
//!
//! [`rekey`] keeps every key-independent part of the manifest (tensors, locators,
//! spans, modes, stream ids, tiers, chunk size, policy summary) and replaces only the
//! salt, the key check values and the KDF parameters. It handles every mode
//! (`ctr`, `fp`, `dp`) and tiered models (docs/format.md §11). The procedure:
//!
//! 1. read and validate the manifest; check the old key's key check value (nothing
//!    has been written yet, so a wrong key leaves no output at all). A tiered model
//!    needs its top-tier key, the one key whose lower tier keys re-encrypt every
//!    tier. The old MACs and checksums are checked over the leaves the pass of step 3
//!    reads, before anything is renamed into place (as `decrypt` does); only a tiered
//!    model with tiers already restored in the file has them checked here, first;
//! 2. derive the new session keys (one per tier, the new key being the top-tier
//!    key); `dp` and varint-stored tensors get their new ciphertext in memory, one
//!    tensor at a time — span by span, decrypted with the old keystream (un-permuted)
//!    and encrypted with the new one (permuted);
//! 3. the output is written in one pass like an encryption (the private module `writer`):
//!    `ctr`/`fp` ranges pass through "old keystream, then new keystream" in a buffer
//!    and are hashed as they are written, the other tensors are written from their new
//!    ciphertext, unchanged bytes are copied, the old manifest entry is removed and
//!    the new one, sealed over the new leaves, appended (where `encrypt` puts it);
//!    external data files are written next to the output, and every file is staged
//!    and renamed into place only when all of them are complete.
//!
//! Plaintext exists only in memory (a worker's buffer is wiped after each run). In a model whose lower tiers
//! were already decrypted (`Envelope.restored_tiers`), those tiers stay plaintext and
//! their MACs are recomputed over their encryption under the new keys.

use std::path::{Path, PathBuf};

use onnx_protect_crypto::{random_salt, KdfParams, Keystream, SessionKeys};
use onnx_protect_format::write::{Content, Edit};
use onnx_protect_format::{Model, Progress, TensorData};
use onnx_protect_proto::v1 as pb;
use onnx_protect_proto::Message;
use onnx_protect_select::Mode;
use zeroize::Zeroizing;

use crate::action::{span_mut, transform_span, transform_tensor, Action};
use crate::error::{CoreError, Result};
use crate::keys::{tier_sessions, KeySource};
use crate::manifest::{
    entry_field, kdf_to_pb, leaf_hash_to_pb, read_protected, tool_name, Protected, LEAF_HASH, METADATA_KEY,
};
use crate::seal::{leaf_digests, seal_envelope, LeafSrc};
use crate::staged::{check_output, durable, external_destinations, Outputs};
use crate::unlock::{tier_keys_of, unlock_master, untiered_keys, untiered_streams, PendingCheck};
use crate::writer::{write_outputs, Leaves, LeavesByTarget, PassSpec};

/// Options of [`rekey`].
pub struct RekeyOptions<'a> {
    /// Overwrite the input (and its external data files).
    pub in_place: bool,
    /// As [`EncryptOptions::sync`](crate::protect::EncryptOptions::sync).
    pub sync: bool,
    pub progress: &'a dyn Progress,
}

/// What [`rekey`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RekeyReport {
    pub input: String,
    pub output: String,
    pub tensors: usize,
    /// Encrypted bytes re-encrypted under the new key.
    pub rekeyed_bytes: u64,
    /// Access tiers of the model (0: untiered); all of them are under the new key.
    pub tiers: u32,
    /// Whether the new master key comes from a passphrase.
    pub passphrase: bool,
    /// External data files written next to the output.
    pub external_files: Vec<String>,
}

/// Refuses a manifest or envelope that sets fields this module does not know how to
/// carry over to a new key, rather than writing a model whose new envelope would lack them.
#[allow(clippy::needless_update)] // `..Default::default()` stands for fields a later schema adds.
fn refuse_unknown_fields(p: &Protected) -> Result<()> {
    let m = &p.manifest;
    let known = pb::Manifest {
        format_version: m.format_version,
        salt: m.salt.clone(),
        key_check: m.key_check.clone(),
        kdf: m.kdf.clone(),
        tensors: m.tensors.clone(),
        tool: m.tool.clone(),
        policy_summary: m.policy_summary.clone(),
        chunk_size: m.chunk_size,
        leaf_hash: m.leaf_hash,
        tiers: m.tiers,
        tier_key_checks: m.tier_key_checks.clone(),
        ..Default::default()
    };
    let e = &p.envelope;
    let known_envelope = pb::Envelope {
        manifest: e.manifest.clone(),
        mac: e.mac.clone(),
        checksum: e.checksum.clone(),
        tier_macs: e.tier_macs.clone(),
        tier_checksums: e.tier_checksums.clone(),
        restored_tiers: e.restored_tiers,
        ..Default::default()
    };
    if known != *m || known_envelope != *e {
        return Err(CoreError::UnsupportedVersion {
            key: format!("{METADATA_KEY} with manifest fields that rekey cannot carry over"),
        });
    }
    Ok(())
}

/// Re-encrypts the protected model `input` under `new` into `output`.
///
/// The old key must pass the key check before anything is written and every MAC
/// before any output appears; a wrong key gives [`CoreError::WrongKey`], a modified
/// model [`CoreError::Modified`]
/// (or [`CoreError::BadManifest`]), the key of a tier below the top of a tiered model
/// [`CoreError::Key`], and in each case no output file appears. For a tiered model
/// `old` and `new` are top-tier keys (`keygen --tiers N`); the new tier keys derive
/// from `new` as in `encrypt`.
pub fn rekey(
    input: &Path,
    output: &Path,
    old: &KeySource,
    new: &KeySource,
    opts: &RekeyOptions,
) -> Result<RekeyReport> {
    let model = Model::open_with_progress(input, opts.progress)?;
    let p = read_protected(&model)?;
    refuse_unknown_fields(&p)?;
    check_output(&model, input, output, opts.in_place)?;
    let (old_streams, pending) = check_old_key(&model, &p, old, opts.progress)?;
    // The old key is checked: the outputs can be staged.
    let outputs = Outputs::stage(&model, output)?;
    let (new_master, kdf) = new.master_for_encrypt()?;
    let mut salt = random_salt()?;
    while salt.as_slice() == p.manifest.salt.as_slice() {
        salt = random_salt()?;
    }
    let sessions = tier_sessions(&new_master, p.manifest.tiers.max(1), &salt);
    let manifest_bytes = new_manifest(&p, &sessions, &salt, kdf.as_ref())?.encode_to_vec();
    let (actions, restored_leaves) = rekey_actions(&model, &p, old_streams, &sessions)?;
    // The old entry is removed and the new one, sealed over the leaves of the written
    // ciphertext, appended (where encrypt puts it).
    let entry = Edit { range: p.entry.range.clone(), content: Content::Bytes(Vec::new()), ancestors: Vec::new() };
    let chunk = p.manifest.chunk_size;
    let spec = PassSpec {
        model: &model,
        targets: &p.targets,
        actions: &actions,
        extra: vec![entry],
        leaves: Some(Leaves {
            chunk,
            written: Some(LEAF_HASH),
            read: pending.needs_leaves().then_some(p.leaf_hash),
            given: Some(&restored_leaves),
        }),
        durable: durable(opts.in_place, opts.sync),
        progress: opts.progress,
    };
    let external = write_outputs(spec, outputs, |written, read| {
        pending.check(&p, read)?;
        let mut envelope = seal_envelope(&sessions, &p.targets, chunk, manifest_bytes, written)?;
        envelope.restored_tiers = p.envelope.restored_tiers;
        Ok(entry_field(&envelope))
    })?;
    Ok(RekeyReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        tensors: p.targets.len(),
        rekeyed_bytes: p.targets.iter().flat_map(|t| &t.spans).map(|(a, b)| b - a).sum(),
        tiers: p.manifest.tiers,
        passphrase: kdf.is_some(),
        external_files: external,
    })
}

/// Checks the old key (of the top tier, for a tiered model) and returns the old
/// keystream of every target, and what the pass still has to check. The old MACs are
/// checked over the leaves the pass reads (before anything is renamed into place), as
/// `decrypt` does; only a tiered model with tiers restored in the file is checked here,
/// first (the leaves of a restored tier are those of its plaintext encrypted again).
fn check_old_key(
    model: &Model,
    p: &Protected,
    old: &KeySource,
    progress: &dyn Progress,
) -> Result<(Vec<Option<Keystream>>, PendingCheck)> {
    let tiers = p.manifest.tiers;
    if tiers <= 1 {
        let keys = untiered_keys(&old.master_for_decrypt(p.manifest.kdf.as_ref(), false)?, p)?;
        return Ok((untiered_streams(&keys, p), PendingCheck::Untiered(keys)));
    }
    let master = old.master_for_decrypt(p.manifest.kdf.as_ref(), true)?;
    let tk = tier_keys_of(&master, p)?;
    if tk.key_tier < tiers {
        return Err(CoreError::Key(format!(
            "this key is for tier {} of {tiers}; rekey needs the top-tier key (tier {tiers}) to re-encrypt every tier",
            tk.key_tier
        )));
    }
    if p.envelope.restored_tiers == 0 {
        return Ok((tk.streams.clone(), PendingCheck::Tiered(tk)));
    }
    progress.start("verify", 0);
    let unlocked = unlock_master(model, p, &master)?;
    progress.finish();
    Ok((unlocked.streams, PendingCheck::Checked))
}

/// The manifest under the new keys `sessions` (index `tier − 1`): the old one with a
/// new salt, key check values, KDF parameters and tool, and the current leaf hash (an
/// older SHA-256 file is upgraded).
fn new_manifest(
    p: &Protected,
    sessions: &[SessionKeys],
    salt: &[u8; 32],
    kdf: Option<&KdfParams>,
) -> Result<pb::Manifest> {
    let top = sessions.last().ok_or_else(|| CoreError::Output("no tier keys".into()))?;
    let mut manifest = p.manifest.clone();
    manifest.salt = salt.to_vec();
    manifest.key_check = top.key_check().to_vec();
    if p.manifest.tiers > 1 {
        manifest.tier_key_checks = sessions.iter().map(|s| s.key_check().to_vec()).collect();
    }
    manifest.kdf = kdf.map(kdf_to_pb);
    manifest.tool = tool_name();
    manifest.leaf_hash = leaf_hash_to_pb(LEAF_HASH);
    Ok(manifest)
}

/// The action of every target, from its old keystream to its new one: streamed targets
/// (ctr, fp) are re-encrypted as they are written, and their new ciphertext is hashed on
/// the way; dp and varint-stored targets are transformed whole beforehand, one tensor at
/// a time; restored tiers stay plaintext, and their leaves (returned by target) are those
/// of their encryption under the new keys (§11).
fn rekey_actions(
    model: &Model,
    p: &Protected,
    old_streams: Vec<Option<Keystream>>,
    sessions: &[SessionKeys],
) -> Result<(Vec<Action>, LeavesByTarget)> {
    let restored = p.envelope.restored_tiers;
    let mut actions = Vec::with_capacity(p.targets.len());
    let mut restored_leaves = LeavesByTarget::new();
    for (ti, (target, old_ks)) in p.targets.iter().zip(old_streams).enumerate() {
        let old_ks = old_ks.ok_or_else(|| CoreError::Key("the old key cannot decrypt every tier".into()))?;
        let new_ks = sessions[target.tier.max(1) as usize - 1].keystream(target.stream_id);
        let t = &model.tensors[target.tensor];
        let plaintext = target.tier > 0 && target.tier <= restored;
        actions.push(if plaintext {
            // The file's bytes of a restored tier are plaintext already (nothing to wipe).
            let bytes = transform_tensor(model, target, &new_ks, false)?;
            let chunk = p.manifest.chunk_size;
            let leaves =
                leaf_digests(model, std::slice::from_ref(target), chunk, LEAF_HASH, &[LeafSrc::Bytes(&bytes)])?;
            restored_leaves.insert(ti, leaves);
            Action::Skip
        } else if target.mode == Mode::Dp || matches!(t.data, TensorData::Varint { .. }) {
            let mut bytes = Zeroizing::new(model.tensor_bytes(t.id)?.into_owned());
            for &span in &target.spans {
                let s = span_mut(model, target, &mut bytes, span)?;
                transform_span(&old_ks, target, t.data_type, span.0, s, true)?;
                transform_span(&new_ks, target, t.data_type, span.0, s, false)?;
            }
            Action::Bytes(std::mem::take(&mut *bytes))
        } else {
            Action::Reencrypt(Box::new((old_ks, new_ks)))
        });
    }
    Ok((actions, restored_leaves))
}

/// The path of each external data file `rekey`, `encrypt` or `decrypt` writes for `model` next to `output`.
pub fn external_outputs(model: &Model, output: &Path) -> Vec<PathBuf> {
    external_destinations(model, output)
}
