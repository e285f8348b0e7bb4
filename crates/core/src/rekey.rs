//! Key rotation by re-encryption: a format-2 model under a fresh data key.
//!
//! [`rekey`] keeps every key-independent part of the header (tensors, locators, spans,
//! modes, stream ids, tiers, chunk size, policy summary) and replaces the data keys, so
//! the key check values, the recipient stanzas, the MACs and the content digest change.
//! It is the rotation to use when a data key itself may have leaked; adding and removing
//! recipients needs no re-encryption (`rewrap`). The procedure:
//!
//! 1. open a top-tier stanza with the old key (nothing is written before), and verify
//!    the whole model: its content digest and every MAC;
//! 2. draw new data keys and wrap them for the new recipients; `dp` and varint-stored
//!    tensors get their new ciphertext in memory, one tensor at a time (decrypted with
//!    the old keystream, encrypted with the new one);
//! 3. one pass writes the output like an encryption: `ctr`/`fp` ranges pass through
//!    "old keystream, then new keystream" in a worker's buffer, and every written byte
//!    is hashed; the new entry, sealed over that digest, is appended last. Outputs are
//!    staged and renamed into place only when complete.
//!
//! A partially decrypted model is refused (decrypt it first); format-1 models are
//! read-only (decrypt, then encrypt again).

use std::path::{Path, PathBuf};

use onnx_protect_crypto::{DataKey, TierKeys};
use onnx_protect_format::{Model, Progress, TensorData};
use onnx_protect_keys::SigningKey;
use zeroize::Zeroizing;

use crate::action::{span_mut, transform_span, Action};
use crate::content::{stored_leaves, Pass};
use crate::envelope::ProtectedV2;
use crate::error::{CoreError, Result, UnusableKey};
use crate::keys::KeySource;
use crate::metadata::tool_name;
use crate::pass::Hash;
use crate::protection::{open_protected, Protection};
use crate::recipients::{wrap_all, EncryptTo, Opened};
use crate::seal::{check_seals, write_sealed, Expected};
use crate::staged::{check_output, durable, external_destinations, OutputRules, Outputs};

/// Options of [`rekey`].
pub struct RekeyOptions<'a> {
    /// Overwrite the input (and its external data files).
    pub in_place: bool,
    /// As [`EncryptOptions::sync`](crate::protect::EncryptOptions::sync).
    pub sync: bool,
    /// As [`EncryptOptions::outputs`](crate::protect::EncryptOptions::outputs).
    pub outputs: OutputRules,
    /// Publisher keys that sign the new model (the old signatures cover the old keys
    /// and are not kept).
    pub signing_keys: &'a [SigningKey],
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
    /// Access tiers of the model (1: untiered); all of them are under the new keys.
    pub tiers: u32,
    /// Recipient stanzas of the new model.
    pub recipients: usize,
    /// External data files written next to the output.
    pub external_files: Vec<String>,
}

/// Re-encrypts the protected model `input` under fresh data keys for `new` into `output`.
///
/// The old key must open a top-tier stanza before anything is written, and the whole
/// model must verify; a wrong key gives [`CoreError::WrongKey`], a modified model
/// [`CoreError::Modified`], the key of a tier below the top [`CoreError::NotTopKey`], and in
/// each case no output file appears.
pub fn rekey(
    input: &Path,
    output: &Path,
    old: &KeySource,
    new: &EncryptTo,
    opts: &RekeyOptions,
) -> Result<RekeyReport> {
    let model = open_protected(input, opts.progress)?;
    let mut p = Protection::of(&model)?.writable("re-keyed")?;
    check_output(&model, input, output, opts.in_place, &opts.outputs)?;
    let tiers = p.sealed.header.tiers;
    let old_keys = p.unlock(&model, old)?;
    if old_keys.tier < tiers {
        return Err(CoreError::NotTopKey {
            key_tier: old_keys.tier,
            tiers,
            operation: "rekey (every tier)",
            by_licence: old_keys.by_licence,
        });
    }
    if p.sealed.envelope.restored_tiers > 0 {
        return Err(UnusableKey::PartialRekey.into());
    }
    let content_len = p.sealed.entry.start;
    check_seals(&p, &old_keys, &[])?;
    Expected::of(&p)?.check(&stored_leaves(&model, content_len, p.sealed.header.chunk_size)?)?;

    let outputs = Outputs::stage(&model, output)?;
    let data_keys = DataKey::generate()?.chain_down(tiers);
    let new_keys: Vec<TierKeys> = data_keys.iter().map(DataKey::tier_keys).collect();
    let stanzas = wrap_all(new, &data_keys)?;
    crate::recipients::check_new(&stanzas)?;
    let mut header = p.sealed.header.clone();
    header.key_checks = new_keys.iter().map(|k| k.key_check().to_vec()).collect();
    header.tool = tool_name();
    header.external_sizes = model.external_files.iter().map(|f| f.size).collect();
    if header.positions != 0 {
        // Secret positions are sealed under the tier keys: seal them again under the new ones.
        for (e, t) in header.tensors.iter_mut().zip(&p.targets) {
            let bounds: Vec<u64> = t.spans.iter().flat_map(|&(a, b)| [a, b]).collect();
            e.sealed_spans = new_keys[t.tier as usize - 1].seal_spans(t.stream_id, &bounds);
        }
    }
    if let (Some(lock), Some(label_lock)) = (crate::lock::read(&model, &header)?, header.label_lock.as_mut()) {
        // The seed of a label lock is sealed under the tier-1 key: sealed again under the
        // new one (the class order, and so the stored bytes, stay as they are).
        let old1 = old_keys.tier(1).ok_or(UnusableKey::OldKeyTier1)?;
        label_lock.sealed_seed = crate::lock::reseal(&lock, old1, &new_keys[0])?;
    }
    let actions = rekey_actions(&model, &p, &old_keys, &new_keys)?;
    let files = outputs.covered_files();
    let durable = durable(opts.in_place, opts.sync);
    let pass = Pass {
        model: &model,
        content_len,
        targets: &p.targets,
        actions: &actions,
        extra: Vec::new(),
        hash: Hash::Output,
        chunk: header.chunk_size,
        durable,
        progress: opts.progress,
    };
    write_sealed(pass, &files, output, &mut header, &stanzas, &new_keys, opts.signing_keys)?;
    drop(files);
    drop(actions);
    let external = outputs.external.iter().map(|p| p.display().to_string()).collect();
    outputs.staged.commit(durable)?;
    Ok(RekeyReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        tensors: p.targets.len(),
        rekeyed_bytes: p.targets.iter().map(crate::target::Target::bytes).sum(),
        tiers,
        recipients: stanzas.len(),
        external_files: external,
    })
}

/// The action of every target, from its old keystream to its new one: streamed targets
/// (ctr, fp) are re-encrypted as they are written; dp and varint-stored targets are
/// transformed whole beforehand, one tensor at a time.
fn rekey_actions(model: &Model, p: &ProtectedV2, old: &Opened, new: &[TierKeys]) -> Result<Vec<Action>> {
    let mut actions = Vec::with_capacity(p.targets.len());
    for target in &p.targets {
        let old_ks = old.tier(target.tier).ok_or(UnusableKey::OldKeyTiers)?.keystream(target.stream_id);
        let new_ks = new[target.tier as usize - 1].keystream(target.stream_id);
        let t = &model.tensors[target.tensor];
        actions.push(if target.mode.whole_spans() || matches!(t.data, TensorData::Varint { .. }) {
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
    Ok(actions)
}

/// The path of each external data file `rekey`, `encrypt` or `decrypt` writes for `model` next to `output`.
pub fn external_outputs(model: &Model, output: &Path) -> Vec<PathBuf> {
    external_destinations(model, output)
}
