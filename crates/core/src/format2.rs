//! The verbs on format 2 (docs/format.md): encrypting into it, and verifying and
//! decrypting its files, each a pipeline over `envelope` (the manifest), `recipients`
//! (data keys), `content` and `pass` (the bytes and their digest).

use std::collections::HashSet;
use std::path::Path;

use onnx_protect_crypto::{signed_message, tier_mac, tier_mac_matches, DataKey, TierKeys};
use onnx_protect_format::{discover, Model, Progress, TensorData};
use onnx_protect_keys::{SignerKey, SigningKey};
use onnx_protect_proto::v2 as pb;
use onnx_protect_proto::Message;
use onnx_protect_select::{select, Mode, Policy, PolicyError, Selection};

use crate::action::{prepare, Action};
use crate::content::{digest_of, plans, run_covered, stored_digest, transformed_digest, transformer};
use crate::envelope::{
    check_disjoint_in_files, entry_bytes, match_model, parse_entry, stanza_to_pb, trailing_entry, trailing_entry_bytes,
    ProtectedV2, CONTENT_CHUNK, DP_MIN_ELEMENTS, FORMAT_VERSION_V2,
};
use crate::error::{CoreError, Result, Unsigned};
use crate::keys::KeySource;
use crate::manifest::{storage_code_v2, tool_name, Target};
use crate::pass::{Hash, Out};
use crate::recipients::{open, wrap_all, EncryptTo, Opened};
use crate::staged::{durable, Outputs};

/// Opens a model file that should be protected: a file that no longer parses but ends
/// in a sound format-2 entry is "modified" (its content changed), not an invalid model.
pub fn open_protected(input: &Path, progress: &dyn Progress) -> Result<Model> {
    Model::open_with_progress(input, progress).map_err(|e| triage(input, e))
}

/// The error for a model file that does not parse: "modified" when it ends in a sound
/// version-2 entry, or in an entry whose value is not text (a manifest entry not encoded as
/// docs/format.md §1 says): under a well-formed entry every reason the model is invalid
/// (§4) is a modification, whatever its content digest. Else (and for a file that cannot
/// be read, or whose external data file is missing: a packaging slip, not a
/// modification) the parser's error.
pub(crate) fn triage(path: &Path, e: onnx_protect_format::FormatError) -> CoreError {
    use onnx_protect_format::ErrorKind as K;
    if e.kind() == K::Io {
        return e.into();
    }
    let Ok(bytes) = std::fs::read(path) else { return e.into() };
    let Some((range, raw)) = trailing_entry_bytes(&bytes) else { return e.into() };
    let Ok(value) = std::str::from_utf8(raw) else {
        return CoreError::Modified(format!("the model no longer parses ({e}): its manifest entry is not text"));
    };
    let Ok(sealed) = parse_entry(value, range) else { return e.into() };
    // A file the header lists that is not there is missing; a location the header does not
    // list is a change of the model.
    if let onnx_protect_format::FormatError::ExternalMissing { location, .. } = &e {
        if sealed.header.external_files.contains(location) {
            return e.into();
        }
    }
    CoreError::Modified(format!("the model no longer parses under its manifest ({e})"))
}

/// The version-2 manifest of an open model, matched to it.
pub(crate) fn read_v2(model: &Model) -> Result<ProtectedV2> {
    let (range, value) = trailing_entry(model.bytes())
        .ok_or_else(|| CoreError::Modified("the onnx-protect/v2 entry is not the last field of the file".into()))?;
    let last = model.metadata.iter().filter(|m| crate::manifest::is_manifest_key(&m.key)).count();
    if last != 1 || !model.metadata.iter().any(|m| m.range == range) {
        return Err(CoreError::Modified("more than one manifest entry, or the entry is not top-level".into()));
    }
    let sealed = parse_entry(value, range)?;
    match_model(model, sealed)
}

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
    /// (an output in the input's directory, [`crate::staged::protected_names`]).
    pub external_names: Option<&'a [String]>,
    pub progress: &'a dyn Progress,
}

/// A change of the plaintext made while encrypting (a recipient's fingerprint): given a
/// weight tensor and its element bytes, the new element bytes (same length), or `None`
/// to leave it.
pub type Rewrite = dyn Fn(&onnx_protect_format::Tensor, &[u8]) -> Option<Vec<u8>> + Sync;

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
                    let span = crate::action::span_mut(model, target, &mut bytes, (a, b))?;
                    crate::action::transform_span(&ks, target, t.data_type, a, span, false)?;
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
                return Err(CoreError::Internal(format!("a rewrite changed the length of '{}'", t.name)));
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

/// The ranges of `[0, len)` outside the sorted, disjoint `spans`.
pub(crate) fn complement(spans: &[(u64, u64)], len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    for &(a, b) in spans {
        if at < a {
            out.push((at, a));
        }
        at = at.max(b);
    }
    if at < len {
        out.push((at, len));
    }
    out
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
    let (header, targets) = build_header(model, &selection, &tier_keys, policy, false, None);
    Ok((weight_bytes, selection, header, targets))
}

/// Encrypts `model` (opened from `input`) into `output` in format 2.
pub(crate) fn encrypt(model: &Model, output: &Path, to: &EncryptTo, spec: &EncryptSpec) -> Result<Encrypted> {
    // The lock is planned first: a model that cannot be locked is refused before any output exists.
    let planned = spec.lock.map(|l| crate::lock::plan(model, l)).transpose()?;
    let lock_only = spec.lock.is_some_and(|l| l.only);
    let relocate = relocations(model, spec.external_names)?;
    let outputs = Outputs::stage_as(model, output, spec.external_names)?;
    let tiers = spec.policy.tiers.max(1);
    let (weights, weight_bytes, mut selection) = choose(model, spec.policy, spec.allow_empty, lock_only)?;
    let data_keys = DataKey::generate()?.chain_down(tiers);
    let tier_keys: Vec<TierKeys> = data_keys.iter().map(DataKey::tier_keys).collect();
    if spec.secret_positions {
        choose_secret_positions(model, &weights, spec.policy, &mut selection, &tier_keys)?;
    }
    let stanzas = wrap_all(to, &data_keys)?;
    crate::recipients::check_new(&stanzas)?;
    let (mut header, targets) =
        build_header(model, &selection, &tier_keys, spec.policy, spec.secret_positions, spec.licence);
    if let Some(names) = spec.external_names {
        header.original_external_files = std::mem::replace(&mut header.external_files, names.to_vec());
    }
    check_disjoint_in_files(model, &targets)?;
    let streams = targets.iter().map(|t| Some(tier_keys[t.tier as usize - 1].keystream(t.stream_id))).collect();
    if let Some(p) = &planned {
        header.label_lock = Some(crate::lock::header_lock(model, p, &tier_keys[0]));
    }
    let (all_targets, actions) = encrypt_actions(model, &weights, &targets, streams, planned.as_ref(), spec.rewrite)?;

    let content_len = model.bytes().len() as u64;
    let plans = plans(model, content_len, &all_targets, &actions, relocate)?;
    let files = outputs.covered_files();
    let xf = transformer(model, &all_targets, &actions);
    let durable = durable(spec.in_place, spec.sync);
    let leaves =
        run_covered(model, content_len, plans, &xf, Hash::Output, CONTENT_CHUNK, &files, durable, spec.progress)?;
    let digest = digest_of(&leaves.output);
    let h = header.encode_to_vec();
    let r = pb::Recipients { stanzas: stanzas.iter().map(stanza_to_pb).collect() }.encode_to_vec();
    let macs = tier_macs(&tier_keys, &h, &r, &digest);
    let signatures = sign_all(spec.signing_keys, &h, &r, &digest);
    let envelope = pb::Envelope {
        header: h,
        recipients: r,
        content_digest: digest.to_vec(),
        macs,
        signatures,
        ..Default::default()
    };
    let tail_at = leaves.output.first().map(|f| f.len).unwrap_or(0);
    write_entry(&files, output, envelope, tail_at)?;
    let external = outputs.external.iter().map(|p| p.display().to_string()).collect();
    drop(xf);
    drop(files);
    drop(all_targets);
    outputs.staged.commit(durable)?;
    let lock = planned.as_ref().map(|p| crate::lock::report(model, p, lock_only));
    Ok(Encrypted { weight_bytes, selection, header, targets, external, stanzas: stanzas.len(), lock })
}

/// The MAC of every tier (docs/format.md §10) over the encoded header `h`, recipients `r`
/// and the content digest, one per key of `keys` (tier 1 first).
pub(crate) fn tier_macs(keys: &[TierKeys], h: &[u8], r: &[u8], digest: &[u8; 32]) -> Vec<Vec<u8>> {
    keys.iter().enumerate().map(|(i, k)| tier_mac(k, i as u32 + 1, h, r, digest).to_vec()).collect()
}

/// The edits that write `names` (one per external data file, if given) as the models'
/// external data locations (docs/format.md §3, `original_external_files`).
pub(crate) fn relocations(model: &Model, names: Option<&[String]>) -> Result<Vec<onnx_protect_format::write::Edit>> {
    let mut edits = Vec::new();
    for (i, name) in names.unwrap_or_default().iter().enumerate() {
        edits.extend(model.relocation_edits(i, name)?);
    }
    Ok(edits)
}

/// A signature of each of `keys` (docs/format.md §10) over the same message as the MACs.
pub(crate) fn sign_all(keys: &[SigningKey], h: &[u8], r: &[u8], digest: &[u8; 32]) -> Vec<pb::Signature> {
    let msg = signed_message(h, r, digest);
    keys.iter()
        .map(|k| pb::Signature { public_key: k.public().to_bytes().to_vec(), signature: k.sign(&msg).to_vec() })
        .collect()
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

/// Refuses a policy whose `dp` subsequences have fewer than [`DP_MIN_ELEMENTS`]
/// elements in some tensor: such a permutation hides too little (one element permuted
/// is no change at all), so it is neither done nor called protected.
fn refuse_short_permutations(model: &Model, selection: &Selection) -> Result<()> {
    let elem = |c: &onnx_protect_select::Chosen| (model.tensors[c.tensor].data_type.bits() / 8).max(1);
    let short = |c: &&onnx_protect_select::Chosen| {
        c.mode.whole_spans() && c.spans.iter().any(|(a, b)| (b - a) / elem(c) < DP_MIN_ELEMENTS)
    };
    match selection.chosen.iter().find(short) {
        Some(c) => Err(CoreError::Policy(PolicyError::Invalid(format!(
            "the dp mode needs subsequences of at least {DP_MIN_ELEMENTS} elements, but '{}' ({} {}, {} elements) \
             would be cut shorter (a shorter permutation hides too little); use fewer subsequences, or another \
             mode for it (for example --mode {}=fp)",
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
/// tier), stream ids in selection order.
fn build_header(
    model: &Model,
    selection: &Selection,
    tier_keys: &[TierKeys],
    policy: &Policy,
    secret: bool,
    licence: Option<&crate::licence::LicenceRequirement>,
) -> (pb::Header, Vec<Target>) {
    let (licence_authority, model_id) = crate::licence::header_fields(licence);
    let mut entries = Vec::new();
    let mut targets = Vec::new();
    for (i, c) in selection.chosen.iter().enumerate() {
        let t = &model.tensors[c.tensor];
        let tier = c.tier.clamp(1, tier_keys.len() as u32);
        entries.push(pb::TensorEntry {
            stream_id: i as u64,
            locator: t.locator.to_string(),
            name: t.name.clone(),
            data_type: t.data_type.to_i32(),
            storage: storage_code_v2(t),
            nbytes: t.nbytes,
            mode: mode_code(c.mode),
            spans: if secret { Vec::new() } else { c.spans.iter().flat_map(|&(a, b)| [a, b]).collect() },
            sealed_spans: if secret {
                let bounds: Vec<u64> = c.spans.iter().flat_map(|&(a, b)| [a, b]).collect();
                tier_keys[tier as usize - 1].seal_spans(i as u64, &bounds)
            } else {
                Vec::new()
            },
            tier,
            op_type: c.op_type.clone(),
            role: c.role.clone(),
            subsequences: c.subsequences,
            chosen: c.chosen.len() as u64,
        });
        targets.push(Target { tensor: c.tensor, stream_id: i as u64, mode: c.mode, spans: c.spans.clone(), tier });
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
    };
    (header, targets)
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
        let picked = tier_keys[0].choose(i as u64, &pool, c.chosen.len());
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

fn mode_code(m: Mode) -> i32 {
    match m {
        Mode::Ctr => pb::Mode::Ctr as i32,
        Mode::Fp => pb::Mode::FormatPreserving as i32,
        Mode::Dp => pb::Mode::DistributionPreserving as i32,
    }
}

/// The digest of the content in canonical form (docs/format.md §11): the stored digest
/// when no tier is restored, else the content with the restored tiers encrypted again
/// with `opened`'s keys.
pub(crate) fn canonical_digest(model: &Model, p: &ProtectedV2, opened: &Opened) -> Result<[u8; 32]> {
    let r = p.sealed.envelope.restored_tiers;
    let content_len = p.sealed.entry.start;
    let chunk = p.sealed.header.chunk_size;
    if r == 0 {
        return stored_digest(model, content_len, chunk);
    }
    let actions = restore_actions(model, p, opened, |t| t <= r, false)?;
    transformed_digest(model, content_len, &p.targets, &actions, chunk)
}

/// The action of every target: tiers for which `which` holds get the keystream of their
/// tier (`decrypting` or encrypting); the others are left as they are.
pub(crate) fn restore_actions(
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

/// Checks every MAC of the tiers `opened` reaches and the signatures of `signers` (when
/// any are given) over the header, the recipients and the recorded content digest
/// (docs/format.md §10). They need no content byte, so they are checked before the content
/// is read: what the header says of it (the external files' lengths) is then authentic.
pub(crate) fn check_seals(p: &ProtectedV2, opened: &Opened, signers: &[SignerKey]) -> Result<()> {
    let env = &p.sealed.envelope;
    let recorded = recorded_digest(p)?;
    for (i, k) in opened.keys.iter().enumerate() {
        let t = i as u32 + 1;
        if !tier_mac_matches(k, t, &env.header, &env.recipients, &recorded, &env.macs[i]) {
            return Err(CoreError::Modified(format!("the MAC of tier {t} does not match")));
        }
    }
    check_signatures(p, &recorded, signers)
}

/// The content digest the envelope records (32 bytes: checked when it was parsed).
pub(crate) fn recorded_digest(p: &ProtectedV2) -> Result<[u8; 32]> {
    p.sealed.envelope.content_digest.as_slice().try_into().map_err(|_| CoreError::BadManifest("content digest".into()))
}

/// Compares `digest`, the content's in canonical form (docs/format.md §11), with the one
/// the envelope records.
pub(crate) fn check_digest(p: &ProtectedV2, digest: &[u8; 32]) -> Result<()> {
    if digest.as_slice() != p.sealed.envelope.content_digest.as_slice() {
        return Err(CoreError::Modified("the model's content does not match its manifest".into()));
    }
    Ok(())
}

/// Checks the signatures of `signers` over the canonical `digest`: at least one trusted
/// signer signed, and every signature of a trusted signer verifies.
pub(crate) fn check_signatures(p: &ProtectedV2, digest: &[u8; 32], signers: &[SignerKey]) -> Result<()> {
    if signers.is_empty() {
        return Ok(());
    }
    let env = &p.sealed.envelope;
    let msg = signed_message(&env.header, &env.recipients, digest);
    let trusted: HashSet<[u8; 32]> = signers.iter().map(SignerKey::to_bytes).collect();
    let mut found = false;
    for s in &env.signatures {
        let Ok(pk) = <[u8; 32]>::try_from(s.public_key.as_slice()) else { continue };
        if !trusted.contains(&pk) {
            continue;
        }
        let key = SignerKey::from_bytes(&pk).map_err(|_| CoreError::Modified("a signer key is not valid".into()))?;
        if !key.verify(&msg, &s.signature) {
            return Err(CoreError::Modified(format!("the signature of {} does not verify", key.to_text())));
        }
        found = true;
    }
    if !found {
        let signers = signers.iter().map(SignerKey::to_text).collect();
        return Err(CoreError::NotSigned(Unsigned::Missing { signers }));
    }
    Ok(())
}

/// Opens a stanza with `key` and unseals the secret positions of the tiers it reaches.
pub(crate) fn unlock(model: &Model, p: &mut ProtectedV2, key: &KeySource) -> Result<Opened> {
    let opened = open(&p.sealed, key)?;
    crate::envelope::unseal(model, p, &opened.keys)?;
    Ok(opened)
}

/// The tier a decryption goes to: `asked`, or the key's own; refused when the key does
/// not reach it or the file has it already.
pub(crate) fn target_tier(p: &ProtectedV2, opened: &Opened, asked: Option<u32>) -> Result<u32> {
    let r = p.sealed.envelope.restored_tiers;
    if opened.tier <= r {
        return Err(CoreError::AlreadyDecrypted { restored: r, key_tier: opened.tier });
    }
    let t = asked.unwrap_or(opened.tier);
    if t > opened.tier || t == 0 {
        return Err(CoreError::TierOutOfReach { key_tier: opened.tier, asked: t });
    }
    if t <= r {
        return Err(CoreError::AlreadyDecrypted { restored: r, key_tier: t });
    }
    Ok(t)
}

/// The targets and actions of a decryption, extended in a full decryption of a
/// label-locked model to restore the class order (docs/format.md §15), so the output is
/// the original; a partial decryption keeps the lock, as it keeps the manifest.
pub(crate) fn with_unlock(
    model: &Model,
    p: &ProtectedV2,
    opened: &Opened,
    full: bool,
    actions: Vec<Action>,
) -> Result<(Vec<Target>, Vec<Action>)> {
    match (full, crate::lock::read(model, &p.sealed.header)?) {
        (true, Some(lock)) => {
            let tier1 = opened.tier(1).ok_or_else(|| CoreError::Output("internal: no tier-1 key".into()))?;
            let perm = crate::lock::permutation(&lock, tier1)?;
            crate::lock::unlock_targets(model, &p.targets, actions, &lock, &perm)
        }
        _ => Ok((p.targets.clone(), actions)),
    }
}

/// What a decryption did, for the report.
pub(crate) struct Decrypted {
    pub tensors: usize,
    pub decrypted_bytes: u64,
}

/// How [`decrypt`] decrypts: up to which tier, checking which signers, how durably.
pub(crate) struct DecryptSpec<'a> {
    pub tier: Option<u32>,
    pub signers: &'a [SignerKey],
    pub in_place: bool,
    pub sync: bool,
    pub progress: &'a dyn Progress,
    /// The protected model's path and the output rules, checked again once the tier
    /// decrypted (and so the external data files' names) is known.
    pub input: &'a Path,
    pub rules: &'a crate::staged::OutputRules,
}

/// The names a decryption writes the external data files under: the original ones a
/// full decryption restores (`None`: their locations as they are).
pub(crate) fn restored_names(p: &ProtectedV2, full: bool) -> Option<&[String]> {
    let names = &p.sealed.header.original_external_files;
    (full && !names.is_empty()).then_some(names.as_slice())
}

/// Verifies and decrypts `p` (of `model`) into `output`.
pub(crate) fn decrypt(
    model: &Model,
    p: &ProtectedV2,
    key: &KeySource,
    output: &Path,
    spec: &DecryptSpec,
) -> Result<Decrypted> {
    let DecryptSpec { tier, signers, in_place, sync, progress, .. } = *spec;
    let mut p = p.clone();
    let opened = unlock(model, &mut p, key)?;
    let p = &p;
    let top = p.sealed.header.tiers;
    let r = p.sealed.envelope.restored_tiers;
    let to = target_tier(p, &opened, tier)?;
    check_seals(p, &opened, signers)?;
    if r > 0 {
        // The canonical digest needs the restored tiers encrypted again: checked first.
        check_digest(p, &canonical_digest(model, p, &opened)?)?;
    }
    let full = to == top;
    let names = restored_names(p, full);
    crate::staged::check_output_as(model, spec.input, output, in_place, spec.rules, names)?;
    let outputs = Outputs::stage_as(model, output, names)?;
    let actions = restore_actions(model, p, &opened, |t| t > r && t <= to, true)?;
    let (targets, actions) = with_unlock(model, p, &opened, full, actions)?;
    let content_len = p.sealed.entry.start;
    let plans = plans(model, content_len, &targets, &actions, relocations(model, names)?)?;
    let files = outputs.covered_files();
    let xf = transformer(model, &targets, &actions);
    let hash = match (r == 0, full) {
        (true, true) => Hash::Input,
        (true, false) => Hash::Both,
        (false, true) => Hash::None,
        (false, false) => Hash::Output,
    };
    let durable = durable(in_place, sync);
    let leaves =
        run_covered(model, content_len, plans, &xf, hash, p.sealed.header.chunk_size, &files, durable, progress)?;
    if r == 0 {
        check_digest(p, &digest_of(&leaves.input))?;
    }
    if !full {
        let mut env = p.sealed.envelope.clone();
        env.restored_tiers = to;
        env.stored_digest = digest_of(&leaves.output).to_vec();
        write_entry(&files, output, env, content_len)?;
    }
    drop(files);
    outputs.staged.commit(durable)?;
    let done: Vec<&Target> =
        p.targets.iter().zip(&actions).filter(|(_, a)| !matches!(a, Action::Skip)).map(|(t, _)| t).collect();
    Ok(Decrypted { tensors: done.len(), decrypted_bytes: done.iter().flat_map(|t| &t.spans).map(|(a, b)| b - a).sum() })
}

/// Verifies `p` (of `model`): with a key, the MACs of the tiers it reaches and the given
/// signers (before any content byte is read), then the digest of the content as stored and
/// in canonical form; without, the given signers (when no tier is restored) and the digest
/// of the content as stored.
/// Returns the targets it checked (with the spans unsealed for the tiers the key reaches).
pub(crate) fn verify(
    model: &Model,
    p: &ProtectedV2,
    key: Option<&KeySource>,
    signers: &[SignerKey],
) -> Result<Vec<Target>> {
    let env = &p.sealed.envelope;
    let stored_matches = || -> Result<()> {
        let stored = stored_digest(model, p.sealed.entry.start, p.sealed.header.chunk_size)?;
        let expect = if env.restored_tiers > 0 { &env.stored_digest } else { &env.content_digest };
        if stored.as_slice() != expect.as_slice() {
            return Err(CoreError::Modified("the model's content does not match its manifest".into()));
        }
        Ok(())
    };
    match key {
        Some(k) => {
            let mut p = p.clone();
            let opened = unlock(model, &mut p, k)?;
            let p = &p;
            check_seals(p, &opened, signers)?;
            stored_matches()?;
            if env.restored_tiers > 0 {
                check_digest(p, &canonical_digest(model, p, &opened)?)?;
            }
            Ok(p.targets.clone())
        }
        None if !signers.is_empty() && env.restored_tiers > 0 => Err(CoreError::NotSigned(Unsigned::NeedsKey)),
        None => {
            check_signatures(p, &recorded_digest(p)?, signers)?;
            stored_matches()?;
            Ok(p.targets.clone())
        }
    }
}

/// The top-tier key that `key` stands for (for a passphrase: its Argon2id output under
/// the model's parameters), and the number of tiers; refused below the top tier.
pub(crate) fn top_key(p: &ProtectedV2, key: &KeySource) -> Result<(onnx_protect_crypto::MasterKey, u32)> {
    let tiers = p.sealed.header.tiers;
    let opened = open(&p.sealed, key)?;
    if opened.tier < tiers {
        return Err(CoreError::NotTopKey { key_tier: opened.tier, tiers, operation: "deriving tier keys" });
    }
    match key.without_licence() {
        KeySource::Key(k) => Ok((k.clone(), tiers)),
        KeySource::Passphrase(pass) => {
            let s = p
                .sealed
                .stanzas
                .iter()
                .find(|s| s.kind == onnx_protect_keys::KIND_PASSPHRASE && s.tier == tiers)
                .and_then(|s| s.kdf)
                .ok_or_else(|| CoreError::Key("the model has no passphrase stanza for its top tier".into()))?;
            onnx_protect_keys::check_kdf_limits(&s)?;
            Ok((onnx_protect_crypto::MasterKey::from_passphrase(pass, &s)?, tiers))
        }
        KeySource::Identity(_) | KeySource::Licensed(..) => {
            Err(CoreError::Key("an identity has no tier keys to derive; use a key file or a passphrase".into()))
        }
    }
}

/// The envelope of `p` with the signatures of `keys` added (replacing earlier ones of
/// the same keys).
pub(crate) fn with_signatures(p: &ProtectedV2, keys: &[SigningKey]) -> pb::Envelope {
    let mut env = p.sealed.envelope.clone();
    let digest: [u8; 32] = env.content_digest.as_slice().try_into().unwrap_or([0; 32]);
    let new = sign_all(keys, &env.header, &env.recipients, &digest);
    env.signatures.retain(|s| !new.iter().any(|n| n.public_key == s.public_key));
    env.signatures.extend(new);
    env
}

/// Writes `model` with its manifest entry replaced by one holding `env` (the content and
/// the external data files unchanged) to `output`, staged and renamed into place.
pub(crate) fn rewrite_entry(
    model: &Model,
    p: &ProtectedV2,
    env: pb::Envelope,
    output: &Path,
    in_place: bool,
) -> Result<()> {
    let outputs = Outputs::stage(model, output)?;
    let content_len = p.sealed.entry.start;
    let files = outputs.covered_files();
    let durable = durable(in_place, false);
    if !copied_in_kernel(model, content_len, &files)? {
        let none: Vec<Action> = p.targets.iter().map(|_| Action::Skip).collect();
        let plans = plans(model, content_len, &p.targets, &none, Vec::new())?;
        let xf = transformer(model, &p.targets, &none);
        run_covered(
            model,
            content_len,
            plans,
            &xf,
            Hash::None,
            p.sealed.header.chunk_size,
            &files,
            durable,
            &onnx_protect_format::NoProgress,
        )?;
    }
    write_entry(&files, output, env, content_len)?;
    drop(files);
    outputs.staged.commit(durable)
}

/// Writes the manifest entry of `envelope` at `at` in the model's output (the first of
/// `files`, the outputs of a pass to `output`).
pub(crate) fn write_entry(files: &[Option<Out<'_>>], output: &Path, envelope: pb::Envelope, at: u64) -> Result<()> {
    let model_out = files
        .first()
        .copied()
        .flatten()
        .map(|o| o.file)
        .ok_or_else(|| CoreError::Internal("no model output".into()))?;
    onnx_protect_fsio::file::write_all_at(model_out, &entry_bytes(envelope), at)
        .map_err(|e| CoreError::Write { path: output.to_path_buf(), source: e })
}

/// Copies every covered file unchanged (the model up to its manifest entry, each
/// external file whole) into its staged output inside the kernel (`copy_file_range`,
/// as `cp` does), from the very files the model was read from. `false` when the
/// system cannot (another file system, no such call), after which the caller's pass
/// writes every byte itself.
fn copied_in_kernel(model: &Model, content_len: u64, files: &[Option<crate::pass::Out<'_>>]) -> Result<bool> {
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
