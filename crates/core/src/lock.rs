//! The label lock of a protected model (`encrypt --lock-outputs`, docs/format.md §15):
//! the class order of the output layer is permuted under a seed sealed with the tier-1
//! data key, so every recipient's key opens it, the header (covered by the MACs and the
//! signatures) says which tensors are locked, and a full decryption puts every class
//! slice back, giving the original bytes.
//!
//! * encrypting: `plan` finds the layer and draws (or takes) the seed, `locked_bytes`
//!   gives the new element bytes of its tensors (after any other rewrite, such as a
//!   fingerprint), `header_lock` the header field;
//! * reading: [`read`] checks the header field against the model (every reader, no key),
//!   [`permutation`] opens the seed, `unlock_targets` turns a decryption's actions into
//!   ones that also restore the class order.

use std::collections::{HashMap, HashSet};

use onnx_protect_crypto::TierKeys;
use onnx_protect_format::model::GraphKind;
use onnx_protect_format::{Locator, Model, TensorData, TensorId};
use onnx_protect_lock::find::MAX_CLASSES;
use onnx_protect_lock::{
    find_output_layer, permute_elements, ClassPermutation, Direction, LockSeed, OutputKind, OutputLayer, MIN_CLASSES,
    SEED_LEN,
};
use onnx_protect_proto::v2 as pb;
use onnx_protect_select::Mode;
use zeroize::Zeroizing;

use crate::error::{BadManifest, CoreError, LabelLockProblem, Modified, Result};
use crate::pass::action::{apply, span_mut, Action, Rewrite};
use crate::target::{complement, Target};

/// Most tensors a lock may name (a weight, two biases and their quantisation parameters
/// need far fewer).
const MAX_LOCKED_TENSORS: usize = 16;
/// Length of a sealed seed: the seed and the 16-byte tag.
const SEALED_SEED_LEN: usize = SEED_LEN + 16;

/// What `encrypt --lock-outputs` asks for.
#[derive(Default)]
pub struct LockOutputs {
    /// The name of the output layer's `Gemm`/`MatMul`, for a model with several.
    pub node: Option<String>,
    /// The seed of the class order (a recipient's, derived from the fingerprint secret);
    /// `None` draws a fresh one.
    pub seed: Option<LockSeed>,
    /// Lock the labels alone: no weight byte is encrypted.
    pub only: bool,
}

/// What a lock did, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LockReport {
    /// The number of classes `C`.
    pub classes: usize,
    /// The output layer's node.
    pub node: String,
    /// The tensors whose class slices were permuted.
    pub tensors: Vec<String>,
    /// The graph outputs the lock changes, with how each is read (`scores`, `indices`).
    pub outputs: Vec<(String, &'static str)>,
    /// Whether the weights were left in clear (`--lock-outputs` alone).
    pub only: bool,
}

/// The lock in one line of a report: `C classes of NODE (TENSORS) in a keyed order;
/// outputs O (how) need the key`, and whether the weights are in clear.
impl std::fmt::Display for LockReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outs: Vec<String> = self.outputs.iter().map(|(n, k)| format!("{n} ({k})")).collect();
        write!(
            f,
            "{} classes of {} ({}) in a keyed order; outputs {} need the key{}",
            self.classes,
            self.node,
            self.tensors.join(", "),
            outs.join(", "),
            if self.only { "; weights in clear" } else { "" }
        )
    }
}

/// A lock about to be written.
pub(crate) struct Planned {
    pub layer: OutputLayer,
    pub perm: ClassPermutation,
    pub seed: LockSeed,
}

/// Finds the output layer of `model` and the class order of the lock.
pub(crate) fn plan(model: &Model, req: &LockOutputs) -> Result<Planned> {
    let layer = find_output_layer(model, req.node.as_deref()).map_err(CoreError::from)?;
    let seed = match &req.seed {
        Some(s) => LockSeed::from_bytes(*s.as_bytes()),
        None => LockSeed::generate().map_err(CoreError::from)?,
    };
    let perm = ClassPermutation::derive(&seed, layer.classes).map_err(CoreError::from)?;
    Ok(Planned { layer, perm, seed })
}

/// The locked element bytes of each tensor of the layer: its plaintext (as `rewrite`
/// changes it, if at all) with the class slices in locked order.
pub(crate) fn locked_bytes(
    model: &Model,
    planned: &Planned,
    rewrite: Option<&Rewrite>,
) -> Result<HashMap<TensorId, Vec<u8>>> {
    let mut out = HashMap::new();
    for l in &planned.layer.tensors {
        let t = &model.tensors[l.tensor];
        let original = model.tensor_bytes(t.id)?;
        let base = rewrite.and_then(|h| h(t, &original));
        let base = Zeroizing::new(base.unwrap_or_else(|| original.into_owned()));
        let locked = permute_elements(&base, t.data_type, &t.dims, l.axis, &planned.perm, Direction::Lock)
            .map_err(CoreError::from)?;
        out.insert(t.id, locked);
    }
    Ok(out)
}

/// The header field of `planned`, its seed sealed with the tier-1 keys.
pub(crate) fn header_lock(model: &Model, planned: &Planned, tier1: &TierKeys) -> pb::LabelLock {
    let layer = &planned.layer;
    pb::LabelLock {
        classes: layer.classes as u32,
        sealed_seed: tier1.seal_lock_seed(planned.seed.as_bytes()),
        tensors: layer
            .tensors
            .iter()
            .map(|l| {
                let t = &model.tensors[l.tensor];
                pb::LockedTensor {
                    locator: t.locator.to_string(),
                    name: t.name.clone(),
                    data_type: t.data_type.to_i32(),
                    dims: t.dims.clone(),
                    axis: l.axis as u32,
                    part: l.part.name().to_string(),
                }
            })
            .collect(),
        outputs: layer
            .outputs
            .iter()
            .map(|o| pb::LockedOutput {
                name: o.name.clone(),
                kind: match o.kind {
                    OutputKind::Scores => pb::OutputKind::Scores as i32,
                    OutputKind::Indices => pb::OutputKind::Indices as i32,
                },
            })
            .collect(),
        node: layer.label(model),
    }
}

/// The report of `planned`.
pub(crate) fn report(model: &Model, planned: &Planned, only: bool) -> LockReport {
    let layer = &planned.layer;
    LockReport {
        classes: layer.classes,
        node: layer.label(model),
        tensors: layer.tensors.iter().map(|l| model.tensors[l.tensor].name.clone()).collect(),
        outputs: layer.outputs.iter().map(|o| (o.name.clone(), o.kind.name())).collect(),
        only,
    }
}

/// What the header's lock says, for display (`inspect`).
pub(crate) fn info(model: &Model, h: &pb::Header) -> Result<Option<LockReport>> {
    let Some(lock) = read(model, h)? else { return Ok(None) };
    let node = h.label_lock.as_ref().map(|l| l.node.clone()).unwrap_or_default();
    Ok(Some(LockReport {
        classes: lock.classes,
        node,
        tensors: lock.tensors.iter().map(|&(t, _)| model.tensors[t].name.clone()).collect(),
        outputs: lock.outputs.iter().map(|(n, k)| (n.clone(), k.name())).collect(),
        only: h.tensors.is_empty(),
    }))
}

/// A header's lock, matched to the model.
#[derive(Debug, Clone)]
pub struct HeaderLock {
    /// The number of classes `C`.
    pub classes: usize,
    /// Each locked tensor and its class axis.
    pub tensors: Vec<(TensorId, usize)>,
    /// Each locked graph output and how it is read.
    pub outputs: Vec<(String, OutputKind)>,
    sealed_seed: Vec<u8>,
}

fn bad(problem: LabelLockProblem) -> CoreError {
    BadManifest::LabelLock(problem).into()
}

/// The label lock of header `h`, checked against `model` (docs/format.md §15): every
/// tensor it names is at its locator with the recorded name, type and dimensions, its
/// class axis has `classes` elements, no tensor is named twice, its bytes can be stored back
/// (not STRING, not without stored data, not a 6-bit type in `int32_data`), and every
/// output it names is an output of the main graph. `None` when the header has no lock.
pub fn read(model: &Model, h: &pb::Header) -> Result<Option<HeaderLock>> {
    let Some(lock) = &h.label_lock else { return Ok(None) };
    let classes = lock.classes as usize;
    if !(MIN_CLASSES..=MAX_CLASSES).contains(&classes) {
        return Err(bad(LabelLockProblem::Classes { classes, min: MIN_CLASSES, max: MAX_CLASSES }));
    }
    if lock.sealed_seed.len() != SEALED_SEED_LEN {
        return Err(bad(LabelLockProblem::SealedSeed { len: lock.sealed_seed.len(), expected: SEALED_SEED_LEN }));
    }
    if lock.tensors.is_empty() || lock.tensors.len() > MAX_LOCKED_TENSORS || lock.outputs.is_empty() {
        return Err(bad(LabelLockProblem::Counts {
            tensors: lock.tensors.len(),
            outputs: lock.outputs.len(),
            max: MAX_LOCKED_TENSORS,
        }));
    }
    let mut seen = HashSet::new();
    let mut tensors = Vec::with_capacity(lock.tensors.len());
    for e in &lock.tensors {
        let loc: Locator =
            e.locator.parse().map_err(|why| bad(LabelLockProblem::Locator { tensor: e.name.clone(), why }))?;
        let t = model
            .tensor_by_locator(&loc)
            .ok_or_else(|| Modified::LockedTensorMissing { tensor: e.name.clone(), locator: e.locator.clone() })?;
        let axis = e.axis as usize;
        if t.name != e.name || t.data_type.to_i32() != e.data_type || t.dims != e.dims {
            return Err(Modified::LockedTensorChanged { tensor: e.name.clone(), locator: e.locator.clone() }.into());
        }
        if t.dims.get(axis) != Some(&(classes as u64)) {
            return Err(bad(LabelLockProblem::Axis { tensor: e.name.clone(), axis, classes, dims: t.dims.clone() }));
        }
        if !seen.insert(t.id) {
            return Err(bad(LabelLockProblem::TensorTwice { tensor: e.name.clone() }));
        }
        // Bytes that could not be stored back after the restore (the encryptor's check).
        if let Some(why) = onnx_protect_lock::storage_refusal(t) {
            return Err(bad(LabelLockProblem::Locator {
                tensor: e.name.clone(),
                why: format!("it cannot be locked: {why}"),
            }));
        }
        tensors.push((t.id, axis));
    }
    // The main graph's outputs only: functions and training graphs are at depth 0 too.
    let graph_outputs: HashSet<&str> = model
        .graphs
        .iter()
        .filter(|g| g.kind == GraphKind::Main)
        .flat_map(|g| g.outputs.iter().map(String::as_str))
        .collect();
    let mut outputs = Vec::with_capacity(lock.outputs.len());
    for o in &lock.outputs {
        let kind = match pb::OutputKind::try_from(o.kind) {
            Ok(pb::OutputKind::Scores) => OutputKind::Scores,
            Ok(pb::OutputKind::Indices) => OutputKind::Indices,
            _ => return Err(bad(LabelLockProblem::OutputKind { output: o.name.clone(), kind: o.kind })),
        };
        if !graph_outputs.contains(o.name.as_str()) {
            return Err(bad(LabelLockProblem::NotAnOutput { output: o.name.clone() }));
        }
        outputs.push((o.name.clone(), kind));
    }
    Ok(Some(HeaderLock { classes, tensors, outputs, sealed_seed: lock.sealed_seed.clone() }))
}

/// The class order of `lock`, its seed opened with the tier-1 keys (which every key of
/// the model reaches).
pub fn permutation(lock: &HeaderLock, tier1: &TierKeys) -> Result<ClassPermutation> {
    let seed = tier1.unseal_lock_seed(&lock.sealed_seed).ok_or(Modified::LockSeed)?;
    ClassPermutation::derive(&LockSeed::from_bytes(*seed), lock.classes).map_err(CoreError::from)
}

/// The seed of `lock`, opened with the tier-1 keys `old` and sealed again with `new`.
pub(crate) fn reseal(lock: &HeaderLock, old: &TierKeys, new: &TierKeys) -> Result<Vec<u8>> {
    let seed = old.unseal_lock_seed(&lock.sealed_seed).ok_or(Modified::LockSeed)?;
    Ok(new.seal_lock_seed(&seed))
}

/// The targets and actions of a full decryption extended so that the output also has
/// the class order restored: each locked tensor's plaintext (its stored bytes with the
/// actions applied) is unlocked, the actions of its targets write those bytes, and a
/// target of its own (no header entry, as a fingerprint's) writes the rest of it.
pub(crate) fn unlock_targets(
    model: &Model,
    targets: &[Target],
    mut actions: Vec<Action>,
    lock: &HeaderLock,
    perm: &ClassPermutation,
) -> Result<(Vec<Target>, Vec<Action>)> {
    let mut all = targets.to_vec();
    for &(tid, axis) in &lock.tensors {
        let t = &model.tensors[tid];
        let mine: Vec<usize> = (0..targets.len()).filter(|&i| targets[i].tensor == tid).collect();
        let mut bytes = Zeroizing::new(model.tensor_bytes(tid)?.into_owned());
        for &i in &mine {
            let target = &targets[i];
            for &(a, b) in &target.spans {
                let span = span_mut(model, target, &mut bytes, (a, b))?;
                match &actions[i] {
                    Action::Skip => {}
                    Action::Xor(ks) => apply(ks, target.mode, t.data_type, a, span, false)?,
                    Action::Bytes(whole) => span.copy_from_slice(
                        whole
                            .get(a as usize..b as usize)
                            .ok_or_else(|| bad(LabelLockProblem::Span { tensor: t.name.clone() }))?,
                    ),
                    Action::Reencrypt(_) => return Err(CoreError::Internal("re-encryption in an unlock")),
                }
            }
        }
        let plain =
            permute_elements(&bytes, t.data_type, &t.dims, axis, perm, Direction::Unlock).map_err(CoreError::from)?;
        for &i in &mine {
            actions[i] = Action::Bytes(plain.clone());
        }
        let rest = if matches!(t.data, TensorData::Varint { .. }) {
            // A varint-stored target is rewritten whole by its own action.
            if mine.is_empty() {
                vec![(0, t.nbytes)]
            } else {
                Vec::new()
            }
        } else {
            let mut covered: Vec<(u64, u64)> = mine.iter().flat_map(|&i| targets[i].spans.iter().copied()).collect();
            covered.sort_unstable();
            complement(&covered, t.nbytes)
        };
        if !rest.is_empty() {
            all.push(Target { tensor: tid, stream_id: u64::MAX, mode: Mode::Ctr, spans: rest, tier: 0 });
            actions.push(Action::Bytes(plain));
        }
    }
    Ok((all, actions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protect_format::testutil::{node, tiny_model};
    use onnx_protect_format::wire::put_len_field;

    /// `tiny_model` (`y = x · W`, W 2×3) with a model-local function whose output is `fy`.
    fn model_with_function() -> Model {
        let mut f = Vec::new();
        put_len_field(&mut f, 1, b"f");
        put_len_field(&mut f, 4, b"fx");
        put_len_field(&mut f, 5, b"fy");
        put_len_field(&mut f, 7, &node("Relu", &["fx"], &["fy"], "r"));
        put_len_field(&mut f, 10, b"local");
        let mut bytes = tiny_model();
        put_len_field(&mut bytes, 25, &f);
        Model::from_vec(bytes, None).unwrap()
    }

    fn header(output: &str) -> pb::Header {
        let model = model_with_function();
        let w = model.tensors.iter().find(|t| t.name == "W").unwrap();
        pb::Header {
            label_lock: Some(pb::LabelLock {
                classes: 3,
                sealed_seed: vec![0; SEALED_SEED_LEN],
                tensors: vec![pb::LockedTensor {
                    locator: w.locator.to_string(),
                    name: "W".into(),
                    data_type: w.data_type.to_i32(),
                    dims: w.dims.clone(),
                    axis: 1,
                    part: "weight".into(),
                }],
                outputs: vec![pb::LockedOutput { name: output.into(), kind: pb::OutputKind::Scores as i32 }],
                node: String::new(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_locked_output_must_be_an_output_of_the_main_graph() {
        let model = model_with_function();
        assert!(model.graphs.iter().any(|g| g.kind != GraphKind::Main && g.outputs.iter().any(|o| o == "fy")));
        let lock = read(&model, &header("y")).unwrap().unwrap();
        assert_eq!(lock.outputs, vec![("y".to_string(), OutputKind::Scores)]);
        for name in ["fy", "fx", "nothing"] {
            let err = read(&model, &header(name)).unwrap_err();
            assert!(
                matches!(&err, CoreError::BadManifest(BadManifest::LabelLock(LabelLockProblem::NotAnOutput { output })) if output == name),
                "{name}: {err:?}"
            );
        }
    }
}
