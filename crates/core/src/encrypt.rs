//! Encrypting a model into format 2 (docs/format.md §3–§10, §13): the weights a policy
//! selects (key-independent), fresh data keys wrapped for every recipient, the header,
//! then one pass that encrypts the chosen spans (after any rewrite of the plaintext: a
//! fingerprint, a label lock) and hashes every byte it writes; the entry, sealed over
//! that digest, is written last and the outputs are renamed into place.

use std::collections::HashSet;
use std::path::Path;

use onnx_protect_crypto::{DataKey, Mode, TierKeys};
use onnx_protect_format::{discover, Model, NoProgress, Progress, TensorData};
use onnx_protect_keys::SigningKey;
use onnx_protect_proto::v2 as pb;
use onnx_protect_select::{select, Policy, PolicyError, Selection, TierOrder};

use crate::error::{CoreError, Result};
use crate::format2::envelope::{content_chunk, FORMAT_VERSION_V2};
use crate::format2::recipients::{check_new, wrap_all, EncryptTo, SharedKeys};
use crate::format2::seal::write_sealed;
use crate::metadata::tool_name;
use crate::pass::action::{prepare, Action, Rewrite};
use crate::pass::content::{relocations, Pass};
use crate::pass::staged::{durable, OutputRules, Outputs};
use crate::pass::Hash;
use crate::target::{check_disjoint_in_files, complement, mode_code, storage_code, Target};

/// Options of [`encrypt`](crate::protect::encrypt) and
/// [`encrypt_member`](crate::protect::encrypt_member).
pub struct EncryptOptions<'a> {
    pub policy: &'a Policy,
    pub in_place: bool,
    /// Flush every output to the disk (`fsync`) before renaming it into place, so it
    /// survives a power failure. Always done with `in_place`, whose outputs replace the
    /// input; otherwise off, as with `cp` (the rename still makes outputs appear whole
    /// or not at all).
    pub sync: bool,
    /// Allow a policy that encrypts no byte of the model (refused by default).
    pub allow_empty: bool,
    /// Choose the encrypted subsequences with the key and keep the positions secret
    /// (docs/format.md §6; fp or dp modes, no access tiers): no key-less party can tell
    /// which rows are encrypted.
    pub secret_positions: bool,
    /// Whether existing outputs may be replaced and a missing output directory created.
    pub outputs: OutputRules,
    /// Publisher keys that sign the model (docs/format.md §10).
    pub signing_keys: &'a [SigningKey],
    /// A change of the plaintext weights made while encrypting (for example a recipient's
    /// fingerprint); the decrypted model then holds the changed weights.
    pub rewrite: Option<&'a Rewrite>,
    /// Opening the model will need a licence of this authority (docs/shipping.md#licences).
    pub licence: Option<crate::licence::LicenceRequirement>,
    /// Lock the class order of the output layer (`--lock-outputs`, docs/format.md §15);
    /// a full decryption restores it.
    pub lock: Option<&'a crate::lock::LockOutputs>,
    pub progress: &'a dyn Progress,
}

impl<'a> EncryptOptions<'a> {
    /// The defaults: write a new file, no signature, refuse an empty selection.
    pub fn new(policy: &'a Policy) -> EncryptOptions<'a> {
        EncryptOptions {
            policy,
            in_place: false,
            sync: false,
            allow_empty: false,
            secret_positions: false,
            outputs: OutputRules::default(),
            signing_keys: &[],
            rewrite: None,
            licence: None,
            lock: None,
            progress: &NoProgress,
        }
    }
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
    let by_class = policy.tier_order == TierOrder::Classes || policy.tier_classes.is_some();
    if by_class && tiers > 1 && selection.tier_order != TierOrder::Classes {
        let layer = onnx_protect_select::classes::class_layer(model, &weights);
        let named = policy.tier_classes.iter().flatten().flatten().max();
        return Err(match (layer, named) {
            (Some(l), Some(&class)) if class >= l.classes => {
                PolicyError::TierClassOutOfRange { class, classes: l.classes }
            }
            _ => PolicyError::NoClassLayer,
        }
        .into());
    }
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
        let refusal = if weights.is_empty() {
            PolicyError::NoWeights
        } else if let Some(s) = selection.skipped.first() {
            let (tensor, reason) = (model.tensors[s.tensor].name.clone(), s.reason.clone());
            PolicyError::NothingEncryptable { count: selection.skipped.len(), tensor, reason }
        } else {
            PolicyError::NothingSelected
        };
        return Err(CoreError::Policy(refusal));
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

/// Encrypts `model` (opened from `input`) into `output` in format 2, its external data
/// files under `external_names` when not their own (an output in the input's directory,
/// [`crate::pass::staged::protected_names`]), with the keys of `member` (a model folder's:
/// drawn and wrapped once for several models) or else fresh ones wrapped for `to`.
pub(crate) fn encrypt(
    model: &Model,
    output: &Path,
    to: &EncryptTo,
    opts: &EncryptOptions,
    external_names: Option<&[String]>,
    member: Option<&Member>,
) -> Result<Encrypted> {
    // The lock is planned first: a model that cannot be locked is refused before any output exists.
    if member.is_some() && opts.lock.is_some() {
        // The lock's seed is sealed under a zero nonce with a key of the data key (§15):
        // two models under one data key would use that nonce twice.
        return Err(CoreError::Policy(PolicyError::LockSharedKey));
    }
    let planned = opts.lock.map(|l| crate::lock::plan(model, l)).transpose()?;
    let lock_only = opts.lock.is_some_and(|l| l.only);
    let relocate = relocations(model, external_names)?;
    let outputs = Outputs::stage_as(model, output, external_names)?;
    let tiers = opts.policy.tiers.max(1);
    let (weights, weight_bytes, mut selection) = choose(model, opts.policy, opts.allow_empty, lock_only)?;
    let data_keys = match member {
        Some(m) if m.keys.tiers() != tiers => {
            return Err(CoreError::Internal("shared data keys of another number of tiers than the policy's"))
        }
        Some(m) => m.keys.data_keys.clone(),
        None => DataKey::generate()?.chain_down(tiers),
    };
    let first_stream = member.map_or(0, |m| m.first_stream);
    let tier_keys: Vec<TierKeys> = data_keys.iter().map(DataKey::tier_keys).collect();
    if opts.secret_positions {
        choose_secret_positions(model, &weights, opts.policy, &mut selection, &tier_keys, first_stream)?;
    }
    let stanzas = match member {
        Some(m) => m.keys.stanzas.clone(),
        None => {
            let stanzas = wrap_all(to, &data_keys)?;
            check_new(&stanzas)?;
            stanzas
        }
    };
    let (mut header, targets) = build_header(
        model,
        &selection,
        &tier_keys,
        opts.policy,
        opts.secret_positions,
        opts.licence.as_ref(),
        first_stream,
    )?;
    header.folder = member.and_then(|m| m.folder.clone()).map(Box::new);
    let next_stream = first_stream.saturating_add(selection.chosen.len() as u64);
    if let Some(names) = external_names {
        header.original_external_files = std::mem::replace(&mut header.external_files, names.to_vec());
    }
    check_disjoint_in_files(model, &targets)?;
    let streams = targets.iter().map(|t| Some(tier_keys[t.tier as usize - 1].keystream(t.stream_id))).collect();
    if let Some(p) = &planned {
        header.label_lock = Some(crate::lock::header_lock(model, p, &tier_keys[0]));
    }
    let (all_targets, actions) = encrypt_actions(model, &weights, &targets, streams, planned.as_ref(), opts.rewrite)?;

    let files = outputs.covered_files();
    let durable = durable(opts.in_place, opts.sync);
    let pass = Pass {
        model,
        content_len: model.bytes().len() as u64,
        targets: &all_targets,
        actions: &actions,
        extra: relocate,
        hash: Hash::Output,
        chunk: header.chunk_size,
        durable,
        progress: opts.progress,
    };
    write_sealed(pass, &files, output, &mut header, &stanzas, &tier_keys, opts.signing_keys)?;
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
        Some(c) => Err(CoreError::Policy(PolicyError::CtrWithTiers {
            tensor: model.tensors[c.tensor].name.clone(),
            op_type: c.op_type.clone(),
            role: c.role.clone(),
        })),
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
        Some(c) => Err(CoreError::Policy(PolicyError::ShortPermutation {
            min: c.mode.min_span_elements(),
            tensor: model.tensors[c.tensor].name.clone(),
            op_type: c.op_type.clone(),
            role: c.role.clone(),
            elements: model.tensors[c.tensor].nbytes / elem(c),
        })),
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
        chunk_size: content_chunk(
            model.external_files.iter().fold(model.bytes().len() as u64, |n, f| n.saturating_add(f.size)),
        ),
        external_files: model.external_files.iter().map(|f| f.location.clone()).collect(),
        tool: tool_name(),
        // The tier order as followed (`auto` resolved).
        policy_summary: Policy { tier_order: selection.tier_order, ..policy.clone() }.summary(),
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
    if tier_keys.len() > 1 {
        return Err(CoreError::Policy(PolicyError::SecretPositionsWithTiers));
    }
    if let Some(c) = selection.chosen.iter().find(|c| c.mode == Mode::Ctr) {
        let tensor = model.tensors[c.tensor].name.clone();
        return Err(CoreError::Policy(PolicyError::SecretPositionsWithCtr { tensor }));
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

#[cfg(test)]
mod tests {
    use onnx_protect_crypto::MasterKey;
    use onnx_protect_format::testutil::{float_tensor, matmul_chain, model_with_graph, node, tiny_model};
    use onnx_protect_format::wire::put_len_field;

    use super::*;
    use crate::error::ErrorKind;
    use crate::keys::KeySource;

    /// What `policy` (with `secret` positions) does to an encryption of `model`: refused,
    /// with the kind `policy` and a message saying so, no output written; the reason.
    fn refusal(model: Vec<u8>, policy: &Policy, secret: bool) -> PolicyError {
        let dir = tempfile::tempdir().unwrap();
        let (plain, out) = (dir.path().join("plain.onnx"), dir.path().join("out.onnx"));
        std::fs::write(&plain, model).unwrap();
        let to = EncryptTo::key(KeySource::key(MasterKey::from_bytes([1; 32])));
        let opts = EncryptOptions { secret_positions: secret, ..EncryptOptions::new(policy) };
        let e = crate::protect::encrypt(&plain, &out, &to, &opts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Policy, "{e}");
        assert!(e.to_string().starts_with("policy: "), "{e}");
        assert!(!out.exists(), "{e}");
        match e {
            CoreError::Policy(p) => p,
            other => panic!("not a policy error: {other}"),
        }
    }

    fn policy(overrides: &[(&str, &str)], tiers: u32) -> Policy {
        let mut p = Policy::default();
        for (what, spec) in overrides {
            p.apply_override(what, spec).unwrap();
        }
        p.set_tiers(tiers).unwrap();
        p
    }

    /// Each way a policy cannot encrypt a model as asked is its own variant, naming the
    /// tensor and the operator where there is one.
    #[test]
    fn a_policy_that_cannot_encrypt_a_model_as_asked_is_refused_with_its_reason() {
        let tiny = tiny_model;
        let e = refusal(tiny(), &policy(&[("coefficient", "*=0")], 1), false);
        assert!(matches!(e, PolicyError::NothingSelected), "{e}");
        let e = refusal(tiny(), &policy(&[("mode", "*=dp")], 1), false);
        assert!(matches!(&e, PolicyError::NothingEncryptable { count: 1, tensor, .. } if tensor == "W"), "{e}");
        let e = refusal(tiny(), &policy(&[("mode", "*=ctr")], 2), false);
        assert!(
            matches!(&e, PolicyError::CtrWithTiers { tensor, op_type, .. } if tensor == "W" && op_type == "MatMul"),
            "{e}"
        );
        let e = refusal(tiny(), &policy(&[("mode", "*=fp")], 2), true);
        assert!(matches!(e, PolicyError::SecretPositionsWithTiers), "{e}");
        let e = refusal(tiny(), &policy(&[("mode", "*=ctr")], 1), true);
        assert!(matches!(&e, PolicyError::SecretPositionsWithCtr { tensor } if tensor == "W"), "{e}");
        let wide = matmul_chain(&[float_tensor("W0", &[8, 64], &[0.5; 512])]);
        let e = refusal(wide, &policy(&[("mode", "*=dp"), ("subsequences", "*=1000")], 1), false);
        assert!(matches!(&e, PolicyError::ShortPermutation { min: 16, tensor, .. } if tensor == "W0"), "{e}");
        let mut graph = Vec::new();
        put_len_field(&mut graph, 1, &node("Relu", &["x"], &["y"], "relu"));
        let e = refusal(model_with_graph(&graph), &policy(&[], 1), false);
        assert!(matches!(e, PolicyError::NoWeights), "{e}");
    }
}
