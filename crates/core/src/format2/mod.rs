//! Format 2 (docs/format.md), which every encryption writes: a model's entry read and
//! matched to the model ([`ProtectedV2`]) and the verbs that read it (§7–§12), as its
//! methods: opening it with a key, verifying it, the key's tier and top key, what
//! `inspect` shows, and the decryption plan that the file and memory sinks carry out.
//!
//! * [`envelope`]: the entry found, decoded and shape-checked (§1–§3, §10, §11), and the
//!   bytes of a new one;
//! * `seal`: the MACs and signatures of an entry, made and checked in one place (§10);
//! * [`recipients`]: wrapping the data keys for recipients, and opening stanzas (§7, §8).

pub mod envelope;
pub mod recipients;
pub(crate) mod seal;

use std::collections::HashSet;
use std::path::Path;

use onnx_protect_crypto::{content_digest, FileLeaves, MasterKey, TierKeys};
use onnx_protect_format::{Model, TensorData};
use onnx_protect_keys::{Identity, SignerKey};
use onnx_protect_proto::v2 as pb;

use self::envelope::{check_external_sizes, parse_entry, trailing_entry, Sealed, METADATA_KEY_V2};
use self::recipients::{describe, open, Opened};
use self::seal::{check_seals, check_signatures, recorded_digest, write_entry, Expected};
use crate::error::{BadManifest, CoreError, Modified, Result, Unsigned, UnusableKey};
use crate::keys::KeySource;
use crate::metadata::is_manifest_key;
use crate::pass::action::{prepare, Action};
use crate::pass::content::{stored_leaves, Pass};
use crate::pass::decryption::{Decryption, NewEntry};
use crate::pass::staged::{durable, Outputs};
use crate::pass::{Hash, Out};
use crate::reader::{Ask, Reader};
use crate::summary::{bytes_by_protection, summaries, ProtectionInfo};
use crate::target::{check_disjoint_in_files, match_targets, EntryFacts, EntryRules, Target};

/// A version-2 protected model: its entry, and every header entry matched to the model.
#[derive(Debug, Clone)]
pub struct ProtectedV2 {
    pub sealed: Sealed,
    pub targets: Vec<Target>,
}

impl ProtectedV2 {
    /// The version-2 manifest of an open model, read and matched to it (docs/format.md §12
    /// steps 1–3): the entry must be the file's last field and its only manifest entry.
    pub fn read(model: &Model) -> Result<ProtectedV2> {
        let (range, value) = trailing_entry(model.bytes()).ok_or(Modified::NotLast)?;
        let last = model.metadata.iter().filter(|m| is_manifest_key(&m.key)).count();
        if last != 1 || !model.metadata.iter().any(|m| m.range == range) {
            return Err(Modified::NotTopLevel.into());
        }
        let sealed = parse_entry(value, range)?;
        ProtectedV2::match_model(model, sealed)
    }

    /// Matches the header of `sealed` to `model` (§3–§6): every entry names the tensor it
    /// was made for, varint-stored tensors are whole and in the top tier, spans of
    /// different entries never share file bytes, and the external files are those the
    /// model uses.
    pub fn match_model(model: &Model, sealed: Sealed) -> Result<ProtectedV2> {
        check_external_sizes(model, &sealed.header)?;
        let tiers = sealed.header.tiers;
        let secret = match sealed.header.positions {
            0 => false,
            1 => true,
            mode => return Err(BadManifest::Positions { mode }.into()),
        };
        for e in &sealed.header.tensors {
            if secret == e.sealed_spans.is_empty() || (secret && !e.spans.is_empty()) {
                return Err(BadManifest::SpansVisibility { tensor: e.name.clone(), sealed: secret }.into());
            }
        }
        let rules = EntryRules { tier_ok: Box::new(move |t| (1..=tiers).contains(&t)), min_span: true, sealed: secret };
        let facts = sealed.header.tensors.iter().map(|e| EntryFacts::from((e, e.spans.as_slice())));
        let targets = match_targets(model, facts, &rules)?;
        let mut varint_tensors = HashSet::new();
        for t in &targets {
            let tensor = &model.tensors[t.tensor];
            if matches!(tensor.data, TensorData::Varint { .. }) && (t.tier != tiers || !varint_tensors.insert(t.tensor))
            {
                return Err(BadManifest::VarintTier { tensor: tensor.name.clone() }.into());
            }
        }
        check_disjoint_in_files(model, &targets)?;
        let used: Vec<&str> = model.external_files.iter().map(|f| f.location.as_str()).collect();
        if used != sealed.header.external_files.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(Modified::ExternalFiles.into());
        }
        crate::lock::read(model, &sealed.header)?;
        Ok(ProtectedV2 { sealed, targets })
    }

    /// Unseals the spans of every entry of the tiers `keys` reach (index `t − 1`; secret
    /// positions, docs/format.md §6) and checks them against the model as public spans are
    /// checked; entries of higher tiers keep no spans. A no-op for public positions.
    fn unseal(&mut self, model: &Model, keys: &[TierKeys]) -> Result<()> {
        let header = &self.sealed.header;
        if header.positions == 0 {
            return Ok(());
        }
        let reach = keys.len() as u32;
        let mut opened: Vec<(usize, Vec<u64>)> = Vec::new();
        for (i, e) in header.tensors.iter().enumerate() {
            if e.tier > reach {
                continue;
            }
            let spans = keys[e.tier as usize - 1]
                .unseal_spans(e.stream_id, &e.sealed_spans)
                .ok_or_else(|| Modified::SealedSpans { tensor: e.name.clone() })?;
            opened.push((i, spans));
        }
        let tiers = header.tiers;
        let rules = EntryRules { tier_ok: Box::new(move |t| (1..=tiers).contains(&t)), min_span: true, sealed: false };
        let facts = opened.iter().map(|(i, spans)| EntryFacts::from((&header.tensors[*i], spans.as_slice())));
        let targets = match_targets(model, facts, &rules)?;
        for ((i, _), t) in opened.iter().zip(targets) {
            self.targets[*i] = t;
        }
        check_disjoint_in_files(model, &self.targets)
    }

    /// The tier `key` opens, and whether its licence is what stops it there.
    fn opened_tier(&self, model: &Model, key: &KeySource) -> Result<(u32, bool)> {
        let (_, opened) = self.verify_opened(model, Some(key), &[])?;
        opened.map(|o| (o.tier, o.by_licence)).ok_or(CoreError::Internal("a key that opened nothing"))
    }

    /// Opens a stanza with `key` (docs/format.md §12 step 4) and unseals the secret
    /// positions of the tiers it reaches.
    pub(crate) fn unlock(&mut self, model: &Model, key: &KeySource) -> Result<Opened> {
        let opened = open(&self.sealed, key)?;
        self.unseal(model, &opened.keys)?;
        Ok(opened)
    }

    /// Verifies the model (docs/format.md §12): with a key, the MACs of the tiers it
    /// reaches and the given signers (before any content byte is read), then the digest of
    /// the content as stored and in canonical form; without, the given signers (when no
    /// tier is restored) and the digest of the content as stored. Returns the targets it
    /// checked (with the spans unsealed for the tiers the key reaches) and what the key opened.
    pub(crate) fn verify_opened(
        &self,
        model: &Model,
        key: Option<&KeySource>,
        signers: &[SignerKey],
    ) -> Result<(Vec<Target>, Option<Opened>)> {
        let env = &self.sealed.envelope;
        let stored_matches = || -> Result<()> {
            let stored = stored_leaves(model, self.sealed.entry.start, self.sealed.header.chunk_size)?;
            if env.restored_tiers == 0 {
                return Expected::of(&self.sealed)?.check(&stored);
            }
            if content_digest(&stored).as_slice() != env.stored_digest.as_slice() {
                return Err(Modified::Content.into());
            }
            Ok(())
        };
        match key {
            Some(k) => {
                let mut p = self.clone();
                let opened = p.unlock(model, k)?;
                check_seals(&p.sealed, &opened, signers)?;
                stored_matches()?;
                if env.restored_tiers > 0 {
                    Expected::of(&p.sealed)?.check(&canonical_leaves(model, &p, &opened)?)?;
                }
                Ok((p.targets, Some(opened)))
            }
            None if !signers.is_empty() && env.restored_tiers > 0 => Err(CoreError::NotSigned(Unsigned::NeedsKey)),
            None => {
                check_signatures(&self.sealed, &recorded_digest(&self.sealed)?, signers)?;
                stored_matches()?;
                Ok((self.targets.clone(), None))
            }
        }
    }

    /// The names a decryption writes the external data files under: the original ones a
    /// full decryption restores (`None`: their locations as they are).
    pub(crate) fn restored_names(&self, full: bool) -> Option<&[String]> {
        let names = &self.sealed.header.original_external_files;
        (full && !names.is_empty()).then_some(names.as_slice())
    }

    /// Writes `model` with its manifest entry replaced by one holding `env` (the content and
    /// the external data files unchanged) to `output`, staged and renamed into place.
    pub(crate) fn rewrite_entry(&self, model: &Model, env: pb::Envelope, output: &Path, in_place: bool) -> Result<()> {
        let outputs = Outputs::stage(model, output)?;
        let content_len = self.sealed.entry.start;
        let files = outputs.covered_files();
        let durable = durable(in_place, false);
        if !copied_in_kernel(model, content_len, &files)? {
            let pass =
                Pass { durable, ..Pass::unchanged(model, content_len, Hash::None, self.sealed.header.chunk_size) };
            pass.run(&files)?;
        }
        write_entry(&files, output, env, content_len)?;
        drop(files);
        outputs.staged.commit(durable)
    }
}

impl Reader for ProtectedV2 {
    fn verify(&self, model: &Model, key: Option<&KeySource>, signers: &[SignerKey]) -> Result<Vec<Target>> {
        Ok(self.verify_opened(model, key, signers)?.0)
    }

    /// The tier `key` opens, after every check it allows.
    fn key_tier(&self, model: &Model, key: &KeySource) -> Result<u32> {
        self.opened_tier(model, key).map(|(tier, _)| tier)
    }

    /// The top-tier key that `key` stands for (for a passphrase: its Argon2id output under
    /// the model's parameters), after every check it allows, and the number of tiers;
    /// refused below the top tier.
    fn top_key(&self, model: &Model, key: &KeySource) -> Result<(MasterKey, u32)> {
        let tiers = self.sealed.header.tiers;
        let (key_tier, by_licence) = self.opened_tier(model, key)?;
        if key_tier < tiers {
            return Err(CoreError::NotTopKey { key_tier, tiers, operation: "deriving tier keys", by_licence });
        }
        match key.identity() {
            Identity::Key(k) => Ok((k.clone(), tiers)),
            Identity::Passphrase(pass) => {
                let s = self
                    .sealed
                    .stanzas
                    .iter()
                    .find(|s| s.kind == onnx_protect_keys::KIND_PASSPHRASE && s.tier == tiers)
                    .and_then(|s| s.kdf)
                    .ok_or(UnusableKey::NoPassphraseStanza)?;
                onnx_protect_keys::check_kdf_limits(&s)?;
                Ok((MasterKey::from_passphrase(pass, &s)?, tiers))
            }
            Identity::X25519(_) | Identity::Provider(_) => Err(UnusableKey::IdentityTierKeys.into()),
        }
    }

    /// What `inspect` shows of the model's protection.
    fn info(&self, model: &Model) -> Result<ProtectionInfo> {
        let h = &self.sealed.header;
        let tensors = summaries(model, &h.tensors, &self.targets);
        let tier_classes = crate::summary::tier_classes(model, h.tiers, &h.policy_summary, &tensors);
        Ok(ProtectionInfo {
            key: METADATA_KEY_V2.to_string(),
            format_version: h.format_version,
            tool: h.tool.clone(),
            passphrase: self.sealed.stanzas.iter().any(|s| s.kind == onnx_protect_keys::KIND_PASSPHRASE),
            policy_summary: h.policy_summary.clone(),
            encrypted_bytes: tensors.iter().map(|t| t.encrypted_bytes).sum(),
            bytes_by_protection: bytes_by_protection(&tensors),
            tiers: h.tiers,
            restored_tiers: self.sealed.envelope.restored_tiers,
            leaf_hash: "blake3",
            tensors,
            positions: if h.positions != 0 { "secret" } else { "public" },
            label_lock: crate::lock::info(model, h)?,
            tier_classes,
            warning: None,
            recipients: self.sealed.stanzas.iter().map(describe).collect(),
            signatures: signer_texts(&self.sealed.envelope, "(invalid key)"),
        })
    }

    /// The names of the external data files a decryption up to `tier` writes, when they
    /// are known without the key (`None` when the key decides between a full decryption,
    /// which restores the original names, and a partial one).
    fn names_without_key(&self, tier: Option<u32>) -> Option<Option<&[String]>> {
        let top = self.sealed.header.tiers;
        let full = top <= 1 || tier == Some(top);
        (full || self.sealed.header.original_external_files.is_empty() || tier.is_some())
            .then(|| self.restored_names(full))
    }

    /// The decryption of the model with `key` up to tier `tier` (default: the key's own),
    /// after every check that needs no content byte (§12 steps 4–5; with tiers restored in
    /// the file, step 6 for the canonical content too). A key whose tiers are all in clear
    /// in the file already, with no tier asked for, gets the file as it is; a tier asked for
    /// that is in clear already is [`CoreError::AlreadyDecrypted`].
    fn decryption<'m>(&self, model: &'m Model, ask: Ask<'_>) -> Result<Decryption<'m>> {
        self.clone().into_decryption(model, ask)
    }
}

impl ProtectedV2 {
    /// [`Reader::decryption`] that takes the protection (which the unlocking changes)
    /// rather than copying it.
    pub(crate) fn into_decryption<'m>(self, model: &'m Model, ask: Ask<'_>) -> Result<Decryption<'m>> {
        let mut p = self;
        let opened = p.unlock(model, ask.key)?;
        let r = p.sealed.envelope.restored_tiers;
        let to = decryption_tier(&p, &opened, ask.tier)?;
        check_seals(&p.sealed, &opened, ask.signers)?;
        let pending = if r > 0 {
            // The canonical digest needs the restored tiers encrypted again: checked first.
            Expected::of(&p.sealed)?.check(&canonical_leaves(model, &p, &opened)?)?;
            None
        } else {
            Some(Expected::of(&p.sealed)?)
        };
        let full = to == p.sealed.header.tiers;
        let actions = restore_actions(model, &p, &opened, |t| t > r && t <= to, true)?;
        let (tensors, decrypted_bytes) = Decryption::count(&p.targets, &actions);
        let (targets, actions) = with_unlock(model, &p, &opened, full, actions)?;
        let new_entry = if full {
            NewEntry::Remove
        } else {
            let mut env = p.sealed.envelope.clone();
            env.restored_tiers = to;
            NewEntry::Restored(env)
        };
        Ok(Decryption {
            model,
            format_version: 2,
            targets,
            actions,
            tensors,
            decrypted_bytes,
            entry: p.sealed.entry.clone(),
            new_entry,
            names: p.restored_names(full).map(<[String]>::to_vec),
            pending,
            chunk: p.sealed.header.chunk_size,
            tier: to,
            tiers: p.sealed.header.tiers,
        })
    }
}

/// The signers of `env`'s signatures as text (`invalid` for a key that is not one).
pub(crate) fn signer_texts(env: &pb::Envelope, invalid: &str) -> Vec<String> {
    env.signatures
        .iter()
        .filter_map(|s| <[u8; 32]>::try_from(s.public_key.as_slice()).ok())
        .map(|k| SignerKey::from_bytes(&k).map(|k| k.to_text()).unwrap_or_else(|_| invalid.into()))
        .collect()
}

/// The tier a decryption goes to: `asked`, or the key's own; a key whose tiers the file
/// has in clear already gets the file as it is (tier `r`) when no tier is asked for.
/// Refused when the key does not reach the tier asked for, or the file has it already.
fn decryption_tier(p: &ProtectedV2, opened: &Opened, asked: Option<u32>) -> Result<u32> {
    let r = p.sealed.envelope.restored_tiers;
    if opened.tier <= r {
        return match asked {
            None => Ok(r),
            Some(_) => Err(CoreError::AlreadyDecrypted { restored: r, key_tier: opened.tier }),
        };
    }
    let t = asked.unwrap_or(opened.tier);
    if t > opened.tier || t == 0 {
        return Err(CoreError::TierOutOfReach { key_tier: opened.tier, asked: t, by_licence: opened.by_licence });
    }
    if t <= r {
        return Err(CoreError::AlreadyDecrypted { restored: r, key_tier: t });
    }
    Ok(t)
}

/// The leaves of the content in canonical form (docs/format.md §11): those of the files as
/// stored when no tier is restored, else of the content with the restored tiers encrypted
/// again with `opened`'s keys.
fn canonical_leaves(model: &Model, p: &ProtectedV2, opened: &Opened) -> Result<Vec<FileLeaves>> {
    let r = p.sealed.envelope.restored_tiers;
    let content_len = p.sealed.entry.start;
    let chunk = p.sealed.header.chunk_size;
    if r == 0 {
        return stored_leaves(model, content_len, chunk);
    }
    let actions = restore_actions(model, p, opened, |t| t <= r, false)?;
    let pass =
        Pass { targets: &p.targets, actions: &actions, ..Pass::unchanged(model, content_len, Hash::Output, chunk) };
    pass.leaves()
}

/// The action of every target: tiers for which `which` holds get the keystream of their
/// tier (`decrypting` or encrypting); the others are left as they are.
fn restore_actions(
    model: &Model,
    p: &ProtectedV2,
    opened: &Opened,
    which: impl Fn(u32) -> bool,
    decrypting: bool,
) -> Result<Vec<Action>> {
    let streams = p
        .targets
        .iter()
        .map(|t| if which(t.tier) { opened.tier(t.tier).map(|k| k.keystream(t.stream_id)) } else { None })
        .collect();
    prepare(model, &p.targets, streams, decrypting)
}

/// The targets and actions of a decryption, extended in a full decryption of a
/// label-locked model to restore the class order (docs/format.md §15), so the output is
/// the original; a partial decryption keeps the lock, as it keeps the manifest.
fn with_unlock(
    model: &Model,
    p: &ProtectedV2,
    opened: &Opened,
    full: bool,
    actions: Vec<Action>,
) -> Result<(Vec<Target>, Vec<Action>)> {
    match (full, crate::lock::read(model, &p.sealed.header)?) {
        (true, Some(lock)) => {
            let tier1 = opened.tier(1).ok_or(CoreError::Internal("a full decryption without the tier-1 key"))?;
            let perm = crate::lock::permutation(&lock, tier1)?;
            crate::lock::unlock_targets(model, &p.targets, actions, &lock, &perm)
        }
        _ => Ok((p.targets.clone(), actions)),
    }
}

/// Copies every covered file unchanged (the model up to its manifest entry, each
/// external file whole) into its staged output inside the kernel (`copy_file_range`,
/// as `cp` does), from the very files the model was read from. `false` when the
/// system cannot (another file system, no such call), after which the caller's pass
/// writes every byte itself.
fn copied_in_kernel(model: &Model, content_len: u64, files: &[Option<Out<'_>>]) -> Result<bool> {
    let Some(src) = model.source_file() else { return Ok(false) };
    let mut sources: Vec<(&std::fs::File, u64)> = vec![(src, content_len)];
    for f in &model.external_files {
        sources.push((f.file()?, f.size));
    }
    for ((file, len), out) in sources.into_iter().zip(files) {
        let Some(out) = out else { continue };
        let done = onnx_protect_fsio::file::copy_range(file, out.file, 0, 0, len)
            .map_err(|e| CoreError::Write { path: out.dest.to_path_buf(), source: e })?;
        if done != len {
            return Ok(false);
        }
    }
    Ok(true)
}
