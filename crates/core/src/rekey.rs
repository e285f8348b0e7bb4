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
//! Every recipient stays, under the new data keys: the stanzas whose label is a public
//! recipient (`x25519`, `age-plugin`, and whatever [`RekeyOptions::recipient_of`] finds,
//! such as `tpm`) are wrapped again for it, at their tier. The old key's own stanzas (those
//! of the key, or passphrase, that opens the model, at every tier) are replaced by the new
//! key when one is given and wrapped again for the old key otherwise. A stanza that is
//! neither (another key file's, a passphrase that is not the old key, a `pkcs11` or
//! `command` stanza) is refused ([`UnusableKey::CannotRewrap`]) unless
//! [`RekeyOptions::remove`] drops it or, for a key file's, [`RekeyOptions::keep_keys`]
//! gives its key; the report names every stanza dropped. The old
//! signatures cover the old content: each signer must sign again
//! ([`RekeyOptions::signing_keys`]) or [`RekeyOptions::drop_signatures`] drops them.
//!
//! A partially decrypted model is refused (decrypt it first); format-1 models are
//! read-only (decrypt, then encrypt again).

use std::path::{Path, PathBuf};

use std::sync::Arc;

use onnx_protect_crypto::{DataKey, MasterKey, TierKeys};
use onnx_protect_format::{Model, Progress, TensorData};
use onnx_protect_keys::{
    Identity, NoPrompt, PluginRecipient, Recipient, SigningKey, Stanza, KIND_AGE_PLUGIN, KIND_KEY, KIND_X25519,
};
use zeroize::Zeroizing;

use crate::error::{CoreError, Result, Unsigned, UnusableKey};
use crate::format2::recipients::{describe, wrap_all, EncryptTo, Opened};
use crate::format2::seal::{check_seals, write_sealed, Expected};
use crate::format2::ProtectedV2;
use crate::keys::{tier_chain, KeySource};
use crate::metadata::tool_name;
use crate::pass::action::{span_mut, transform_span, Action};
use crate::pass::content::{stored_leaves, Pass};
use crate::pass::staged::{check_output, durable, external_destinations, OutputRules, Outputs};
use crate::pass::Hash;
use crate::protection::{open_protected, Protection};
use crate::rewrap::Remove;

/// Options of [`rekey`].
pub struct RekeyOptions<'a> {
    /// Overwrite the input (and its external data files).
    pub in_place: bool,
    /// As [`EncryptOptions::sync`](crate::protect::EncryptOptions::sync).
    pub sync: bool,
    /// As [`EncryptOptions::outputs`](crate::protect::EncryptOptions::outputs).
    pub outputs: OutputRules,
    /// Publisher keys that sign the new model (the old signatures cover the old content
    /// and keys: each old signer must be among them unless `drop_signatures`).
    pub signing_keys: &'a [SigningKey],
    /// Drop the signatures of signers not in `signing_keys`; without it they are refused
    /// ([`Unsigned::StaleContent`]).
    pub drop_signatures: bool,
    /// Stanzas not to carry over (as `rewrap`'s removals).
    pub remove: &'a [Remove],
    /// Master keys whose `key` stanzas (at every tier) are kept: wrapped again for them (a
    /// `key` stanza records only a fingerprint, so its key must be given).
    pub keep_keys: &'a [MasterKey],
    /// The public recipient a kept stanza is wrapped again for (`None`: the header records
    /// none this build can use); [`public_recipient`] knows `x25519` and `age-plugin`.
    pub recipient_of: RecipientOf<'a>,
    pub progress: &'a dyn Progress,
}

/// How [`rekey`] finds the public recipient of a stanza it keeps.
pub type RecipientOf<'a> = &'a (dyn Fn(&Stanza) -> Option<Recipient> + Sync);

impl<'a> RekeyOptions<'a> {
    /// Writing to a new file, no signing key, nothing removed, the recipients
    /// [`public_recipient`] finds.
    pub fn new(progress: &'a dyn Progress) -> RekeyOptions<'a> {
        RekeyOptions {
            in_place: false,
            sync: false,
            outputs: OutputRules::default(),
            signing_keys: &[],
            drop_signatures: false,
            remove: &[],
            keep_keys: &[],
            recipient_of: &public_recipient,
            progress,
        }
    }
}

/// The public recipient a stanza's label names, for the kinds this crate wraps for
/// itself: `x25519` (`age1…`) and `age-plugin` (`age1NAME1…`, run without a prompt).
pub fn public_recipient(s: &Stanza) -> Option<Recipient> {
    match s.kind.as_str() {
        KIND_X25519 => Recipient::parse_public(&s.label).ok(),
        KIND_AGE_PLUGIN => {
            PluginRecipient::parse(&s.label, Arc::new(NoPrompt)).ok().map(|r| Recipient::Provider(Arc::new(r)))
        }
        _ => None,
    }
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
    /// The stanzas of the old model not carried over, each as reports show it with why
    /// (`removed`, `replaced by the new key`).
    pub removed: Vec<String>,
    /// Signatures of the old model not renewed (dropped).
    pub signatures_dropped: usize,
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
    crate::rewrap::require_top_tier(&old_keys, tiers, "rekey (every tier)")?;
    if p.sealed.envelope.restored_tiers > 0 {
        return Err(UnusableKey::PartialRekey.into());
    }
    let content_len = p.sealed.entry.start;
    check_seals(&p.sealed, &old_keys, &[])?;
    Expected::of(&p.sealed)?.check(&stored_leaves(&model, content_len, p.sealed.header.chunk_size)?)?;

    let signatures_dropped = stale_signatures(&p, opts)?;
    let (to, removed) = carried_over(&p, old, &old_keys, new, opts)?;

    let outputs = Outputs::stage(&model, output)?;
    let data_keys = DataKey::generate()?.chain_down(tiers);
    let new_keys: Vec<TierKeys> = data_keys.iter().map(DataKey::tier_keys).collect();
    let stanzas = wrap_all(&to, &data_keys)?;
    crate::format2::recipients::check_new(&stanzas)?;
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
        removed,
        signatures_dropped,
        external_files: external,
    })
}

/// The old signatures no signing key renews: refused unless `drop_signatures`.
fn stale_signatures(p: &ProtectedV2, opts: &RekeyOptions) -> Result<usize> {
    let renewed: Vec<Vec<u8>> = opts.signing_keys.iter().map(|k| k.public().to_bytes().to_vec()).collect();
    let stale = p.sealed.envelope.signatures.iter().filter(|s| !renewed.contains(&s.public_key)).count();
    if stale > 0 && !opts.drop_signatures {
        return Err(CoreError::NotSigned(Unsigned::StaleContent { count: stale }));
    }
    Ok(stale)
}

/// Everyone the new model is encrypted to: `new`, the old model's recipients wrapped again
/// (the old key's own stanzas by the old key when `new` has no key), less what
/// `opts.remove` drops; and the stanzas dropped, described. A stanza that can be neither
/// kept nor is dropped is refused.
fn carried_over(
    p: &ProtectedV2,
    old: &KeySource,
    opened: &Opened,
    new: &EncryptTo,
    opts: &RekeyOptions,
) -> Result<(EncryptTo, Vec<String>)> {
    let stanzas = &p.sealed.stanzas;
    let tiers = p.sealed.header.tiers;
    let own = own_stanzas(stanzas, old.identity(), opened.opener, tiers)?;
    let removed_by = crate::rewrap::removal_matcher(opts.remove, tiers);
    // The keys of `keep_keys` at every tier, by fingerprint.
    let kept_keys: Vec<(String, MasterKey)> =
        opts.keep_keys.iter().flat_map(|k| tier_chain(k, tiers)).map(|k| (hex(&k.fingerprint()), k)).collect();
    let mut kept = vec![false; opts.keep_keys.len()];
    let mut to = new.clone();
    let mut removed = Vec::new();
    let mut cannot = Vec::new();
    let mut keep_old_key = false;
    let mut matched = 0;
    for (i, s) in stanzas.iter().enumerate() {
        let keep_key = kept_keys.iter().position(|(fp, _)| s.kind == KIND_KEY && *fp == s.label);
        if removed_by(s) {
            matched += 1;
            removed.push(format!("{} (removed)", describe(s)));
        } else if let Some(k) = keep_key {
            kept[k / tiers as usize] = true;
            to.recipients.push((Recipient::Key(kept_keys[k].1.clone()), s.tier));
        } else if own[i] && new.master.is_some() {
            removed.push(format!("{} (replaced by the new key)", describe(s)));
        } else if let Some(r) = (opts.recipient_of)(s) {
            to.recipients.push((r, s.tier));
        } else if own[i] {
            keep_old_key = true;
        } else {
            cannot.push(describe(s));
        }
    }
    if matched == 0 && !opts.remove.is_empty() {
        return Err(UnusableKey::NothingToRemove.into());
    }
    if kept.contains(&false) {
        return Err(UnusableKey::NothingToKeep.into());
    }
    if !cannot.is_empty() {
        return Err(UnusableKey::CannotRewrap { stanzas: cannot }.into());
    }
    if keep_old_key {
        to.master = Some(KeySource::new(old.identity().clone()));
    }
    if to.master.is_none() && to.recipients.is_empty() {
        return Err(UnusableKey::RemoveAll.into());
    }
    Ok((to, removed))
}

/// Which stanzas are the old key's own: for a key, its stanzas at every tier; for a
/// passphrase, its stanza and the key stanzas of the tiers below (keys derived from the
/// passphrase's Argon2id output); for an identity, the stanza that opened the model.
fn own_stanzas(stanzas: &[Stanza], old: &Identity, opener: usize, tiers: u32) -> Result<Vec<bool>> {
    let chain_labels =
        |k: &MasterKey| -> Vec<String> { tier_chain(k, tiers).iter().map(|t| hex(&t.fingerprint())).collect() };
    let labels = match old {
        Identity::Key(k) => chain_labels(k),
        Identity::Passphrase(pass) => match stanzas.get(opener).and_then(|s| s.kdf.as_ref()) {
            Some(params) => chain_labels(&MasterKey::from_passphrase(pass, params)?),
            None => Vec::new(),
        },
        _ => Vec::new(),
    };
    Ok(stanzas
        .iter()
        .enumerate()
        .map(|(i, s)| i == opener || (s.kind == KIND_KEY && labels.contains(&s.label)))
        .collect())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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
