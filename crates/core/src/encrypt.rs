//! Encrypting a model into format 2 (docs/format.md §3–§10, §13): the weights a policy
//! selects (key-independent), fresh data keys wrapped for every recipient, the header,
//! then one pass that encrypts the chosen spans (after any rewrite of the plaintext: a
//! fingerprint, a label lock) and hashes every byte it writes; the entry, sealed over
//! that digest, is written last and the outputs are renamed into place.

use std::collections::HashSet;
use std::path::Path;

use onnx_protect_crypto::{DataKey, TierKeys};
use onnx_protect_format::{discover, Model, Progress, TensorData};
use onnx_protect_keys::SigningKey;
use onnx_protect_proto::v2 as pb;
use onnx_protect_select::{select, Mode, Policy, PolicyError, Selection};

use crate::error::{CoreError, Result};
use crate::format2::envelope::{CONTENT_CHUNK, FORMAT_VERSION_V2};
use crate::format2::recipients::{check_new, wrap_all, EncryptTo, SharedKeys};
use crate::format2::seal::write_sealed;
use crate::metadata::tool_name;
use crate::pass::action::{prepare, Action, Rewrite};
use crate::pass::content::{relocations, Pass};
use crate::pass::staged::{durable, Outputs};
use crate::pass::Hash;
use crate::target::{check_disjoint_in_files, complement, mode_code, storage_code, Target};

/// Options of [`encrypt`].
pub(crate) struct EncryptSpec<'a> {
    pub policy: &'a Policy,
    pub in_place: bool,
    pub sync: bool,
    pub allow_empty: bool,
    /// Choose which subsequences are encrypted with the key and seal the spans
    /// (docs/format.md §6): no key-less party can tell which rows are encrypted.
    pub secret_positions: bool,
    pub signing_keys: &'a [SigningKey],
    pub rewrite: Option<&'a Rewrite>,
    pub licence: Option<&'a crate::licence::LicenceRequirement>,
    /// Lock the class order of the output layer (docs/format.md §15).
    pub lock: Option<&'a crate::lock::LockOutputs>,
    /// The names the external data files get next to the output, when not their own
    /// (an output in the input's directory, [`crate::pass::staged::protected_names`]).
    pub external_names: Option<&'a [String]>,
    /// Keys drawn and wrapped once for several models, with this model's place among
    /// them (a model folder); `None`: a data key of its own.
    pub member: Option<&'a Member<'a>>,
    pub progress: &'a dyn Progress,
}

/// One model of several encrypted under the same [`SharedKeys`] (the models of a folder,
/// docs/format.md §16): the data keys and the stanzas are the group's, the header records
/// `folder`, and the model's stream ids start at `first_stream`.
pub struct Member<'a> {
    pub keys: &'a SharedKeys,
    /// The first stream id of this model's entries. Models under one data key must not
    /// share a stream id, or their keystreams would repeat (§7, §16): give each model the
    /// [`MemberReport::next_stream`](crate::protect::MemberReport::next_stream) of the one
    /// encrypted before it (0 for the first).
    pub first_stream: u64,
    /// The header's folder binding (docs/format.md §16).
    pub folder: Option<pb::FolderBinding>,
}

/// A [`Rewrite`] that may borrow.
type Hook<'h> = dyn Fn(&onnx_protect_format::Tensor, &[u8]) -> Option<Vec<u8>> + Sync + 'h;

/// The actions of an encryption whose plaintext `hook` rewrites first: a rewritten target
/// is encrypted from its new bytes; a rewritten tensor that is not a target gets a target
/// of its own (all of its bytes, no entry in the header) that writes the new bytes.
fn rewritten_actions(
    model: &Model,
    weights: &[onnx_protect_format::TensorId],
    targets: &[Target],
    streams: Vec<Option<onnx_protect_crypto::Keystream>>,
    hook: &Hook<'_>,
) -> Result<(Vec<Target>, Vec<Action>)> {
    let mut all = targets.to_vec();
    let mut actions = Vec::with_capacity(targets.len());
    // The clear bytes of each rewritten tensor and the spans of all its entries (one per
    // tier): the bytes outside every span are written by one target of its own.
    let mut extra: Vec<(Target, Vec<u8>)> = Vec::new();
    let mut seen = HashSet::new();
    for (target, ks) in targets.iter().zip(streams) {
        let t = &model.tensors[target.tensor];
        seen.insert(target.tensor);
        let original = model.tensor_bytes(t.id)?;
        match (hook(t, &original), ks) {
            (Some(mut bytes), Some(ks)) => {
                let clean = bytes.clone();
                for &(a, b) in &target.spans {
                    let span = crate::pass::action::span_mut(model, target, &mut bytes, (a, b))?;
                    crate::pass::action::transform_span(&ks, target, t.data_type, a, span, false)?;
                }
                actions.push(Action::Bytes(bytes));
                // The bytes outside the spans change too (a varint-stored tensor is
                // rewritten whole by its own action).
                if !matches!(t.data, TensorData::Varint { .. }) {
                    match extra.iter_mut().find(|(x, _)| x.tensor == target.tensor) {
                        Some((x, _)) => x.spans.extend_from_slice(&target.spans),
                        None => extra.push((
                            Target { spans: target.spans.clone(), stream_id: u64::MAX, tier: 0, ..target.clone() },
                            clean,
                        )),
                    }
                }
            }
            (None, ks) => actions.extend(prepare(model, std::slice::from_ref(target), vec![ks], false)?),
            (Some(_), None) => actions.push(Action::Skip),
        }
    }
    for &w in weights {
        if !seen.insert(w) {
            continue;
        }
        let t = &model.tensors[w];
        let original = model.tensor_bytes(t.id)?;
        if let Some(bytes) = hook(t, &original) {
            if bytes.len() as u64 != t.nbytes {
                return Err(CoreError::Internal("a rewrite changed the length of a tensor"));
            }
            all.push(Target { tensor: w, stream_id: u64::MAX, mode: Mode::Ctr, spans: vec![(0, t.nbytes)], tier: 0 });
            actions.push(Action::Bytes(bytes));
        }
    }
    for (mut t, bytes) in extra {
        t.spans.sort_unstable();
        t.spans = complement(&t.spans, model.tensors[t.tensor].nbytes);
        if !t.spans.is_empty() {
            all.push(t);
            actions.push(Action::Bytes(bytes));
        }
    }
    Ok((all, actions))
}

/// The targets and actions of an encryption: the plaintext rewritten first (`rewrite`,
/// then the lock of `planned`, whose tensors get their locked bytes), then encrypted.
fn encrypt_actions(
    model: &Model,
    weights: &[onnx_protect_format::discover::Weight],
    targets: &[Target],
    streams: Vec<Option<onnx_protect_crypto::Keystream>>,
    planned: Option<&crate::lock::Planned>,
    rewrite: Option<&Rewrite>,
) -> Result<(Vec<Target>, Vec<Action>)> {
    let mut rewritten: Vec<onnx_protect_format::TensorId> = weights.iter().map(|w| w.tensor).collect();
    let locked = match planned {
        Some(p) => {
            rewritten.extend(p.layer.tensors.iter().map(|l| l.tensor));
            Some(crate::lock::locked_bytes(model, p, rewrite)?)
        }
        None => None,
    };
    let with_lock = |t: &onnx_protect_format::Tensor, b: &[u8]| -> Option<Vec<u8>> {
        match locked.as_ref().and_then(|m| m.get(&t.id)) {
            Some(bytes) => Some(bytes.clone()),
            None => rewrite.and_then(|h| h(t, b)),
        }
    };
    let hook: Option<&Hook<'_>> = if locked.is_some() { Some(&with_lock) } else { rewrite.map(|h| h as &Hook) };
    match hook {
        None => Ok((targets.to_vec(), prepare(model, targets, streams, false)?)),
        Some(hook) => rewritten_actions(model, &rewritten, targets, streams, hook),
    }
}

/// What an encryption did, for the report.
pub(crate) struct Encrypted {
    pub weight_bytes: u64,
    pub selection: Selection,
    pub header: pb::Header,
    pub targets: Vec<Target>,
    pub external: Vec<String>,
    pub stanzas: usize,
    pub lock: Option<crate::lock::LockReport>,
    /// The stream id after the last one this model's header uses.
    pub next_stream: u64,
}

/// The weights of `model`, their bytes, and what `policy` selects of them, after the
/// refusals every encryption applies (varint-stored tensors go to the top tier). With
/// `lock_only` every weight stays clear (the labels alone are locked).
pub(crate) fn choose(
    model: &Model,
    policy: &Policy,
    allow_empty: bool,
    lock_only: bool,
) -> Result<(Vec<onnx_protect_format::discover::Weight>, u64, Selection)> {
    let tiers = policy.tiers.max(1);
    policy.shares()?;
    let weights = discover(model);
    let weight_bytes: u64 = weights.iter().map(|w| model.tensors[w.tensor].nbytes).sum();
    let mut selection = select(model, &weights, policy);
    if lock_only {
        for c in selection.chosen.drain(..) {
            let t = &model.tensors[c.tensor];
            let (op_type, tensor_role) = (c.op_type, c.tensor_role);
            selection.clear.push(onnx_protect_select::Clear { tensor: t.id, nbytes: t.nbytes, op_type, tensor_role });
        }
        selection.clear.sort_by_key(|c| c.tensor);
    }
    refuse_ctr_with_tiers(model, &selection, tiers)?;
    refuse_short_permutations(model, &selection)?;
    if selection.bytes() == 0 && !allow_empty && !lock_only {
        let why = if weights.is_empty() {
            "the model has no weights to encrypt: no operator reads a floating-point constant tensor or a \
             weight input (parameters kept in node attribute lists, as the ai.onnx.ml tree, linear and SVM \
             operators keep them, are not encrypted)"
                .to_string()
        } else if let Some(s) = selection.skipped.first() {
            format!(
                "the policy encrypts 0 bytes of this model: the {} weight(s) it selects cannot be encrypted so \
                 ('{}': {}); choose another mode, or allow it explicitly",
                selection.skipped.len(),
                model.tensors[s.tensor].name,
                s.reason
            )
        } else {
            "the policy encrypts 0 bytes of this model; raise a coefficient, or allow it explicitly".to_string()
        };
        return Err(CoreError::Policy(PolicyError::Invalid(why)));
    }
    // Varint-stored tensors change length when encrypted: they go whole to the top tier,
    // so a partial decryption never changes a length (docs/format.md §3).
    for c in &mut selection.chosen {
        if matches!(model.tensors[c.tensor].data, TensorData::Varint { .. }) {
            c.tier = tiers;
        }
    }
    Ok((weights, weight_bytes, selection))
}

/// What an encryption of `model` under `policy` would encrypt, without a key and
/// without writing: the header's entries as a fresh data key would give them (public
/// positions) and the selection.
pub(crate) fn plan(
    model: &Model,
    policy: &Policy,
    allow_empty: bool,
) -> Result<(u64, Selection, pb::Header, Vec<Target>)> {
    let (_, weight_bytes, selection) = choose(model, policy, allow_empty, false)?;
    let data_keys = DataKey::generate()?.chain_down(policy.tiers.max(1));
    let tier_keys: Vec<TierKeys> = data_keys.iter().map(DataKey::tier_keys).collect();
    let (header, targets) = build_header(model, &selection, &tier_keys, policy, false, None, 0)?;
    Ok((weight_bytes, selection, header, targets))
}

/// Encrypts `model` (opened from `input`) into `output` in format 2.
pub(crate) fn encrypt(model: &Model, output: &Path, to: &EncryptTo, spec: &EncryptSpec) -> Result<Encrypted> {
    // The lock is planned first: a model that cannot be locked is refused before any output exists.
    if spec.member.is_some() && spec.lock.is_some() {
        // The lock's seed is sealed under a zero nonce with a key of the data key (§15):
        // two models under one data key would use that nonce twice.
        return Err(CoreError::Policy(PolicyError::Invalid(
            "the outputs of a model that shares its data key with other models (a model folder) cannot be locked"
                .into(),
        )));
    }
    let planned = spec.lock.map(|l| crate::lock::plan(model, l)).transpose()?;
    let lock_only = spec.lock.is_some_and(|l| l.only);
    let relocate = relocations(model, spec.external_names)?;
    let outputs = Outputs::stage_as(model, output, spec.external_names)?;
    let tiers = spec.policy.tiers.max(1);
    let (weights, weight_bytes, mut selection) = choose(model, spec.policy, spec.allow_empty, lock_only)?;
    let data_keys = match spec.member {
        Some(m) if m.keys.tiers() != tiers => {
            return Err(CoreError::Internal("shared data keys of another number of tiers than the policy's"))
        }
        Some(m) => m.keys.data_keys.clone(),
        None => DataKey::generate()?.chain_down(tiers),
    };
    let first_stream = spec.member.map_or(0, |m| m.first_stream);
    let tier_keys: Vec<TierKeys> = data_keys.iter().map(DataKey::tier_keys).collect();
    if spec.secret_positions {
        choose_secret_positions(model, &weights, spec.policy, &mut selection, &tier_keys, first_stream)?;
    }
    let stanzas = match spec.member {
        Some(m) => m.keys.stanzas.clone(),
        None => {
            let stanzas = wrap_all(to, &data_keys)?;
            check_new(&stanzas)?;
            stanzas
        }
    };
    let (mut header, targets) =
        build_header(model, &selection, &tier_keys, spec.policy, spec.secret_positions, spec.licence, first_stream)?;
    header.folder = spec.member.and_then(|m| m.folder.clone()).map(Box::new);
    let next_stream = first_stream.saturating_add(selection.chosen.len() as u64);
    if let Some(names) = spec.external_names {
        header.original_external_files = std::mem::replace(&mut header.external_files, names.to_vec());
    }
    check_disjoint_in_files(model, &targets)?;
    let streams = targets.iter().map(|t| Some(tier_keys[t.tier as usize - 1].keystream(t.stream_id))).collect();
    if let Some(p) = &planned {
        header.label_lock = Some(crate::lock::header_lock(model, p, &tier_keys[0]));
    }
    let (all_targets, actions) = encrypt_actions(model, &weights, &targets, streams, planned.as_ref(), spec.rewrite)?;

    let files = outputs.covered_files();
    let durable = durable(spec.in_place, spec.sync);
    let pass = Pass {
        model,
        content_len: model.bytes().len() as u64,
        targets: &all_targets,
        actions: &actions,
        extra: relocate,
        hash: Hash::Output,
        chunk: CONTENT_CHUNK,
        durable,
        progress: spec.progress,
    };
    write_sealed(pass, &files, output, &mut header, &stanzas, &tier_keys, spec.signing_keys)?;
    let external = outputs.external.iter().map(|p| p.display().to_string()).collect();
    drop(files);
    drop(actions);
    outputs.staged.commit(durable)?;
    let lock = planned.as_ref().map(|p| crate::lock::report(model, p, lock_only));
    Ok(Encrypted { weight_bytes, selection, header, targets, external, stanzas: stanzas.len(), lock, next_stream })
}

/// Refuses the `ctr` mode in a tiered encryption: its keystream turns floats into NaN,
/// so every partial tier would give NaN outputs.
pub(crate) fn refuse_ctr_with_tiers(model: &Model, selection: &Selection, tiers: u32) -> Result<()> {
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

/// Refuses a policy whose spans are shorter than their mode allows
/// ([`Mode::min_span_elements`]: `dp` subsequences of too few elements hide too little,
/// one element permuted is no change at all), so such a span is neither made nor called
/// protected.
fn refuse_short_permutations(model: &Model, selection: &Selection) -> Result<()> {
    let elem = |c: &onnx_protect_select::Chosen| (model.tensors[c.tensor].data_type.bits() / 8).max(1);
    let short = |c: &&onnx_protect_select::Chosen| {
        c.mode.whole_spans() && c.spans.iter().any(|(a, b)| (b - a) / elem(c) < c.mode.min_span_elements())
    };
    match selection.chosen.iter().find(short) {
        Some(c) => Err(CoreError::Policy(PolicyError::Invalid(format!(
            "the dp mode needs subsequences of at least {} elements, but '{}' ({} {}, {} elements) \
             would be cut shorter (a shorter permutation hides too little); use fewer subsequences, or another \
             mode for it (for example --mode {}=fp)",
            c.mode.min_span_elements(),
            model.tensors[c.tensor].name,
            c.op_type,
            c.role,
            model.tensors[c.tensor].nbytes / elem(c),
            c.op_type
        )))),
        None => Ok(()),
    }
}

/// The header of a new encryption and its targets: one entry per chosen tensor (per
/// tier), stream ids in selection order from `first_stream`.
fn build_header(
    model: &Model,
    selection: &Selection,
    tier_keys: &[TierKeys],
    policy: &Policy,
    secret: bool,
    licence: Option<&crate::licence::LicenceRequirement>,
    first_stream: u64,
) -> Result<(pb::Header, Vec<Target>)> {
    let (licence_authority, model_id) = crate::licence::header_fields(licence);
    let mut entries = Vec::new();
    let mut targets = Vec::new();
    for (i, c) in selection.chosen.iter().enumerate() {
        let i = stream_id(first_stream, i)?;
        let t = &model.tensors[c.tensor];
        let tier = c.tier.clamp(1, tier_keys.len() as u32);
        entries.push(pb::TensorEntry {
            stream_id: i,
            locator: t.locator.to_string(),
            name: t.name.clone(),
            data_type: t.data_type.to_i32(),
            storage: storage_code(t),
            nbytes: t.nbytes,
            mode: mode_code(c.mode),
            spans: if secret { Vec::new() } else { c.spans.iter().flat_map(|&(a, b)| [a, b]).collect() },
            sealed_spans: if secret {
                let bounds: Vec<u64> = c.spans.iter().flat_map(|&(a, b)| [a, b]).collect();
                tier_keys[tier as usize - 1].seal_spans(i, &bounds)
            } else {
                Vec::new()
            },
            tier,
            op_type: c.op_type.clone(),
            role: c.role.clone(),
            subsequences: c.subsequences,
            chosen: c.chosen.len() as u64,
        });
        targets.push(Target { tensor: c.tensor, stream_id: i, mode: c.mode, spans: c.spans.clone(), tier });
    }
    let header = pb::Header {
        format_version: FORMAT_VERSION_V2,
        tiers: tier_keys.len() as u32,
        key_checks: tier_keys.iter().map(|k| k.key_check().to_vec()).collect(),
        tensors: entries,
        chunk_size: CONTENT_CHUNK,
        external_files: model.external_files.iter().map(|f| f.location.clone()).collect(),
        tool: tool_name(),
        policy_summary: policy.summary(),
        positions: u32::from(secret),
        // The external files are written with their lengths unchanged.
        external_sizes: model.external_files.iter().map(|f| f.size).collect(),
        licence_authority,
        model_id,
        label_lock: None,
        original_external_files: Vec::new(),
        // Set from what the encryption writes (`write_sealed`).
        external_leaves: Vec::new(),
        folder: None,
    };
    Ok((header, targets))
}

/// The stream id of the `i`-th chosen tensor of a model whose streams start at `first`.
fn stream_id(first: u64, i: usize) -> Result<u64> {
    first.checked_add(i as u64).filter(|&s| s != u64::MAX).ok_or(CoreError::Internal("stream ids past 2^64 - 1"))
}

/// Secret positions (docs/format.md §6): for every chosen tensor, the policy's choice
/// with twice its coefficient gives the candidates, and `k` of them (the policy's count)
/// are chosen with the key. Refused with `ctr` (its values give the rows away) and with
/// access tiers.
fn choose_secret_positions(
    model: &Model,
    weights: &[onnx_protect_format::discover::Weight],
    policy: &Policy,
    selection: &mut Selection,
    tier_keys: &[TierKeys],
    first_stream: u64,
) -> Result<()> {
    let invalid = |m: String| CoreError::Policy(PolicyError::Invalid(m));
    if tier_keys.len() > 1 {
        return Err(invalid("secret positions are not available with access tiers".into()));
    }
    if let Some(c) = selection.chosen.iter().find(|c| c.mode == Mode::Ctr) {
        return Err(invalid(format!(
            "secret positions need a mode whose ciphertext looks like weights (fp or dp); '{}' would be ctr, \
             whose values give the encrypted rows away",
            model.tensors[c.tensor].name
        )));
    }
    // Every kind of rule is widened: a weight may be chosen by its operator, its role,
    // its layer or its name.
    let mut wide = policy.clone();
    let rules = wide.rules.values_mut().chain(wide.role_rules.values_mut());
    for r in rules.chain(wide.layer_rules.values_mut()).chain(wide.name_rules.values_mut()) {
        r.coefficient = (r.coefficient * 2.0).min(1.0);
    }
    let candidates = select(model, weights, &wide);
    for (i, c) in selection.chosen.iter_mut().enumerate() {
        let t = &model.tensors[c.tensor];
        let Some(bounds) = onnx_protect_select::subsequence_bounds(t.data_type, &t.dims, t.numel, c.split) else {
            continue;
        };
        let pool = candidates.chosen.iter().find(|w| w.tensor == c.tensor).map(|w| w.chosen.clone());
        let pool = pool.unwrap_or_else(|| c.chosen.clone());
        let picked = tier_keys[0].choose(stream_id(first_stream, i)?, &pool, c.chosen.len());
        let mut spans: Vec<(u64, u64)> = Vec::new();
        for &p in &picked {
            let (a, b) = (bounds[p as usize], bounds[p as usize + 1]);
            match spans.last_mut() {
                Some(last) if last.1 == a && !c.mode.whole_spans() => last.1 = b,
                _ => spans.push((a, b)),
            }
        }
        c.chosen = picked;
        c.spans = spans;
    }
    Ok(())
}
