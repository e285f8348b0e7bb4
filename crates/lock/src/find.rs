//! Finding a classifier's output layer: the final `Gemm` or `MatMul` (with an optional
//! `Add` of a constant bias) whose class axis can be permuted without changing anything
//! but the order of the scores.
//!
//! **The layer.** Walking back from each output of the main graph through `Identity`,
//! `Cast`, `Softmax`, `LogSoftmax`, `ArgMax`, `TopK`, `Flatten`, `Reshape`,
//! `QuantizeLinear` and `DequantizeLinear`, the first other node must be a `Gemm`, a
//! `MatMul`, or an `Add` of one of them and a constant. The layer's *weight* is the
//! `Gemm`'s `B` (`[K, C]`, or `[C, K]` with `transB = 1`) or the `MatMul`'s second
//! operand (`[…, K, C]`): a constant (initializer or `Constant` node), directly or through
//! `Identity`, `Cast`, `Transpose` and `DequantizeLinear` (whose per-axis scale and zero
//! point along the class axis are permuted with it). Its *biases* are the `Gemm`'s `C` and
//! the `Add`'s constant, when they vary along the class axis (last dimension `C`; a last
//! dimension of 1 is the same for every class and stays). `C`, the number of classes, is
//! the weight's class dimension; a lock needs `C ≥ 3` (with two classes the only locked
//! order is the swap).
//!
//! **What the scores may feed.** Every reader of the scores, and of what is computed from
//! them, must keep each class's value a function of that class alone, so that permuting the
//! classes permutes the outputs and nothing else: `Identity`, `Cast`, `Softmax`,
//! `LogSoftmax` (over any axis: they commute with a permutation of the class axis),
//! `QuantizeLinear` and `DequantizeLinear` with one scale, `Flatten` and `Reshape` that keep
//! the class index innermost in the last dimension (its length a multiple of `C`), and
//! `ArgMax` / `TopK` over the last axis, whose indices then name locked classes. Every
//! reader is checked, in every graph of the model; each tensor rewritten and each value on
//! the weight's path must have no other reader.

use std::collections::{HashMap, HashSet};

use onnx_protect_format::model::NodeId;
use onnx_protect_format::{DataType, Model, Tensor, TensorData, TensorId};
use serde::Serialize;

use crate::error::{LockError, Result};
use crate::graph::{Def, Graph};

/// Fewest classes a lock accepts.
pub const MIN_CLASSES: usize = 3;
/// Most classes a lock accepts (indices of the permutation are `u32`).
pub const MAX_CLASSES: usize = 1 << 24;
/// Most nodes a walk through the graph visits (a hostile graph cannot make it slow).
const MAX_WALK: usize = 4096;

/// What a rewritten tensor is to the output layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// The weight matrix.
    Weight,
    /// A bias (the `Gemm`'s `C` or the `Add`'s constant).
    Bias,
    /// A per-class quantisation scale of the weight or a bias.
    Scale,
    /// A per-class quantisation zero point of the weight or a bias.
    ZeroPoint,
}

impl Part {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Part::Weight => "weight",
            Part::Bias => "bias",
            Part::Scale => "scale",
            Part::ZeroPoint => "zero_point",
        }
    }
}

/// A constant whose slices along `axis` are the classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedTensor {
    pub tensor: TensorId,
    /// The class axis among the tensor's stored dimensions.
    pub axis: usize,
    pub part: Part,
}

/// How a locked graph output is read back in true class order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// Values whose last dimension holds the classes innermost: index `j` of the last
    /// dimension is locked class `j mod C`.
    Scores,
    /// Indices into such a last dimension (`ArgMax`, `TopK`): a value `i` names locked
    /// class `i mod C`.
    Indices,
}

impl OutputKind {
    /// `scores` or `indices`.
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Scores => "scores",
            OutputKind::Indices => "indices",
        }
    }
}

/// A main graph output that the lock changes, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedOutput {
    pub name: String,
    pub kind: OutputKind,
}

/// An output layer that can be locked.
#[derive(Debug, Clone)]
pub struct OutputLayer {
    /// The `Gemm` or `MatMul`.
    pub node: NodeId,
    /// The `Add` of a constant bias after it, if any.
    pub add: Option<NodeId>,
    /// The number of classes `C`.
    pub classes: usize,
    /// Every tensor the lock permutes, the weight first.
    pub tensors: Vec<LockedTensor>,
    /// Every main graph output the lock changes, in graph output order.
    pub outputs: Vec<LockedOutput>,
}

impl OutputLayer {
    /// The layer's node, for messages.
    pub fn label(&self, model: &Model) -> String {
        model.nodes[self.node].label()
    }
}

/// Finds the model's output layer: the only one, or with `node`, the one whose `Gemm` or
/// `MatMul` has that name. Errors name what each graph output comes from when none
/// qualifies, and why a layer found cannot be locked.
pub fn find_output_layer(model: &Model, node: Option<&str>) -> Result<OutputLayer> {
    let g = Graph::new(model)?;
    let mut heads: Vec<(NodeId, Option<NodeId>)> = Vec::new();
    let mut found: Vec<String> = Vec::new();
    for o in g.outputs() {
        match head_of(&g, o) {
            Ok(h) if !heads.contains(&h) => heads.push(h),
            Ok(_) => {}
            Err(why) => found.push(format!("output '{o}' {why}")),
        }
    }
    if let Some(name) = node {
        let Some(&h) = heads.iter().find(|(n, _)| model.nodes[*n].name == name) else {
            let reason = if heads.is_empty() {
                found.join("; ")
            } else {
                format!("the candidates are {}", labels(model, &heads))
            };
            return Err(LockError::NoSuchNode { node: name.to_string(), reason });
        };
        heads = vec![h];
    }
    match heads.as_slice() {
        [] if g.outputs().is_empty() => Err(LockError::NotFound { found: "the main graph has no outputs".into() }),
        [] => Err(LockError::NotFound { found: found.join("; ") }),
        [(head, add)] => analyse(&g, *head, *add),
        _ => Err(LockError::Ambiguous { count: heads.len(), heads: labels(model, &heads) }),
    }
}

fn labels(model: &Model, heads: &[(NodeId, Option<NodeId>)]) -> String {
    heads.iter().map(|(n, _)| model.nodes[*n].label()).collect::<Vec<_>>().join(", ")
}

/// Operators that may stand between the scores and a graph output (checked in full by
/// [`Forward`]), and the input that carries the scores through them.
fn is_tail(op: &str) -> bool {
    matches!(
        op,
        "Identity"
            | "Cast"
            | "Softmax"
            | "LogSoftmax"
            | "ArgMax"
            | "TopK"
            | "Flatten"
            | "Reshape"
            | "QuantizeLinear"
            | "DequantizeLinear"
    )
}

/// Walks back from graph output `name` to the output layer: the `Gemm`/`MatMul` and the
/// `Add` after it, or what the output comes from instead.
fn head_of(g: &Graph, output: &str) -> std::result::Result<(NodeId, Option<NodeId>), String> {
    let model = g.model;
    let mut name = output;
    for _ in 0..MAX_WALK {
        let n = match g.def(name) {
            Some(Def::Node(n)) => n,
            Some(Def::Constant(..)) => return Err(format!("is the constant '{name}'")),
            Some(Def::Sparse) => return Err(format!("is the sparse initializer '{name}'")),
            Some(Def::Input) => return Err(format!("comes straight from the graph input '{name}'")),
            None => return Err(format!("'{name}' is not defined in the main graph")),
        };
        let node = &model.nodes[n];
        if !node.is_onnx() {
            return Err(format!("comes from {} of domain '{}'", node.label(), node.domain));
        }
        match node.op_type.as_str() {
            "Gemm" | "MatMul" => return Ok((n, None)),
            "Add" => {
                let computed: Vec<&String> = node.inputs.iter().filter(|i| !is_constant_like(g, i)).collect();
                let from = computed.first().and_then(|i| match g.def(i) {
                    Some(Def::Node(m)) => Some(m),
                    _ => None,
                });
                return match (computed.len(), from) {
                    (1, Some(m)) if matches!(model.nodes[m].op_type.as_str(), "Gemm" | "MatMul") => Ok((m, Some(n))),
                    _ => Err(format!(
                        "comes from {}, which does not add a constant to the output of a Gemm or MatMul",
                        node.label()
                    )),
                };
            }
            op if is_tail(op) => match node.inputs.first().filter(|i| !i.is_empty()) {
                Some(i) => name = i,
                None => return Err(format!("comes from {}, which has no data input", node.label())),
            },
            _ => return Err(format!("comes from {}", node.label())),
        }
    }
    Err("is too many nodes away from any Gemm or MatMul".into())
}

/// Whether value `name` is a constant, directly or through `Identity`, `Cast`,
/// `Transpose` and `DequantizeLinear`.
fn is_constant_like(g: &Graph, name: &str) -> bool {
    let mut name = name;
    for _ in 0..MAX_WALK {
        match g.def(name) {
            Some(Def::Constant(..)) => return true,
            Some(Def::Node(n)) => {
                let node = &g.model.nodes[n];
                let through = node.is_onnx()
                    && matches!(node.op_type.as_str(), "Identity" | "Cast" | "Transpose" | "DequantizeLinear");
                match node.inputs.first() {
                    Some(i) if through => name = i,
                    _ => return false,
                }
            }
            _ => return false,
        }
    }
    false
}

fn refuse(g: &Graph, head: NodeId, reason: impl Into<String>) -> LockError {
    LockError::Unsupported { head: g.model.nodes[head].label(), reason: reason.into() }
}

/// Checks a found layer in full and lists what the lock rewrites and changes.
fn analyse(g: &Graph, head: NodeId, add: Option<NodeId>) -> Result<OutputLayer> {
    let model = g.model;
    let node = &model.nodes[head];
    let input = |i: usize| node.inputs.get(i).filter(|s| !s.is_empty()).map(String::as_str);
    let (Some(a), Some(b)) = (input(0), input(1)) else {
        return Err(refuse(g, head, "it has fewer than two inputs"));
    };
    if is_constant_like(g, a) {
        return Err(refuse(
            g,
            head,
            format!("its first operand '{a}' is the constant: the classes would not be the last axis of its output"),
        ));
    }
    let gemm = node.op_type == "Gemm";
    let (weight, chain) = constant_chain(g, head, b, Part::Weight)?;
    let rank = model.tensors[weight].dims.len();
    let class_axis = if gemm {
        if rank != 2 {
            return Err(refuse(g, head, format!("its weight '{b}' has rank {rank}, not 2")));
        }
        if g.int_attr(head, "transB", 0)? != 0 {
            0
        } else {
            1
        }
    } else {
        if rank < 2 {
            return Err(refuse(g, head, format!("its weight '{b}' has rank {rank}: the output has no class axis")));
        }
        rank - 1
    };
    let mut tensors = Vec::new();
    let axis = map_axis(g, head, &chain, weight, class_axis, &mut tensors)?;
    tensors.insert(0, LockedTensor { tensor: weight, axis, part: Part::Weight });
    let classes = usize::try_from(model.tensors[weight].dims[axis]).unwrap_or(usize::MAX);
    if !(MIN_CLASSES..=MAX_CLASSES).contains(&classes) {
        return Err(refuse(
            g,
            head,
            format!("it has {classes} classes; a lock needs {MIN_CLASSES} to {MAX_CLASSES} (with two classes the only locked order is the swap)"),
        ));
    }
    if gemm {
        if let Some(c) = input(2) {
            bias(g, head, c, classes, &mut tensors)?;
        }
    }
    let mut scores = node.outputs.first().filter(|s| !s.is_empty()).map(String::as_str);
    if let Some(add) = add {
        let y = scores.unwrap_or_default();
        if g.uses(y) != 1 {
            return Err(refuse(g, head, format!("its output '{y}' is read by more than the Add after it")));
        }
        let add_node = &model.nodes[add];
        let constant = add_node.inputs.iter().find(|i| *i != y).map(String::as_str).unwrap_or_default();
        bias(g, head, constant, classes, &mut tensors)?;
        scores = add_node.outputs.first().map(String::as_str);
    }
    let Some(scores) = scores else { return Err(refuse(g, head, "it has no output")) };
    let rank = if gemm { Some(2) } else { None };
    let outputs = Forward { g, head, classes }.run(scores, rank)?;
    let layer = OutputLayer { node: head, add, classes, tensors, outputs };
    check_storage(g, &layer)?;
    Ok(layer)
}

/// Adds the constant bias `name` (of `Gemm` `C` or an `Add`) when it varies by class:
/// its last dimension is `C` (permuted) or 1 (the same for every class: left as it is).
fn bias(g: &Graph, head: NodeId, name: &str, classes: usize, tensors: &mut Vec<LockedTensor>) -> Result<()> {
    let (t, chain) = constant_chain(g, head, name, Part::Bias)?;
    let dims = &g.model.tensors[t].dims;
    let Some(&last) = dims.last() else { return Ok(()) };
    if last == 1 {
        return Ok(());
    }
    if last != classes as u64 {
        return Err(refuse(
            g,
            head,
            format!("its bias '{name}' has dims {dims:?}, which do not add one value per class ({classes})"),
        ));
    }
    let mut extra = Vec::new();
    let axis = map_axis(g, head, &chain, t, dims.len() - 1, &mut extra)?;
    tensors.push(LockedTensor { tensor: t, axis, part: Part::Bias });
    tensors.extend(extra);
    Ok(())
}

/// The constant that value `name` (read by the layer) comes from, through `Identity`,
/// `Cast`, `Transpose` and `DequantizeLinear`; the nodes on the way, nearest the layer
/// first. Each value on the way must have no other reader.
fn constant_chain(g: &Graph, head: NodeId, name: &str, part: Part) -> Result<(TensorId, Vec<NodeId>)> {
    let model = g.model;
    let mut chain = Vec::new();
    let mut name = name;
    for _ in 0..MAX_WALK {
        if g.uses(name) != 1 {
            return Err(refuse(
                g,
                head,
                format!("its {} '{name}' is also read elsewhere, which the lock would change", part.name()),
            ));
        }
        match g.def(name) {
            Some(Def::Constant(t, _)) => return Ok((t, chain)),
            Some(Def::Node(n)) => {
                let node = &model.nodes[n];
                let through = node.is_onnx()
                    && matches!(node.op_type.as_str(), "Identity" | "Cast" | "Transpose" | "DequantizeLinear");
                if !through {
                    return Err(refuse(
                        g,
                        head,
                        format!("its {} '{name}' is computed by {}, not a constant", part.name(), node.label()),
                    ));
                }
                chain.push(n);
                name = node.inputs.first().map(String::as_str).unwrap_or_default();
            }
            Some(Def::Sparse) => {
                return Err(refuse(g, head, format!("its {} '{name}' is a sparse initializer", part.name())))
            }
            Some(Def::Input) | None => {
                return Err(refuse(
                    g,
                    head,
                    format!("its {} '{name}' is an input of the graph, not a constant", part.name()),
                ))
            }
        }
    }
    Err(refuse(g, head, format!("its {} is too many nodes away from a constant", part.name())))
}

/// The class axis in the stored constant `t`, given the class axis `axis` of the value the
/// layer reads, through the `chain` (nearest the layer first). Per-class quantisation
/// parameters met on the way are added to `extra`.
fn map_axis(
    g: &Graph,
    head: NodeId,
    chain: &[NodeId],
    t: TensorId,
    axis: usize,
    extra: &mut Vec<LockedTensor>,
) -> Result<usize> {
    let rank = g.model.tensors[t].dims.len();
    let mut axis = axis;
    for &n in chain {
        let node = &g.model.nodes[n];
        match node.op_type.as_str() {
            "Transpose" => {
                let perm = g.ints_attr(n, "perm")?.unwrap_or_else(|| (0..rank as i64).rev().collect());
                let mut seen = vec![false; rank];
                let valid = perm.len() == rank
                    && perm
                        .iter()
                        .all(|&p| usize::try_from(p).is_ok_and(|p| p < rank && !std::mem::replace(&mut seen[p], true)));
                if !valid {
                    return Err(refuse(g, head, format!("{} has perm {perm:?} for rank {rank}", node.label())));
                }
                axis = perm[axis] as usize;
            }
            "DequantizeLinear" => dequantize_params(g, head, n, rank, axis, extra)?,
            _ => {}
        }
    }
    Ok(axis)
}

/// The scale and zero point of a `DequantizeLinear` on a constant's path: per-tensor ones
/// stay; per-axis ones along the class axis, and blocked ones of another axis, are
/// permuted with it; blocks along the class axis are refused.
fn dequantize_params(
    g: &Graph,
    head: NodeId,
    n: NodeId,
    rank: usize,
    class_axis: usize,
    extra: &mut Vec<LockedTensor>,
) -> Result<()> {
    let node = &g.model.nodes[n];
    let raw_axis = g.int_attr(n, "axis", 1)?;
    let block = g.int_attr(n, "block_size", 0)?;
    let dq_axis = if raw_axis < 0 { raw_axis + rank as i64 } else { raw_axis };
    for (i, part) in [(1usize, Part::Scale), (2, Part::ZeroPoint)] {
        let Some(name) = node.inputs.get(i).filter(|s| !s.is_empty()) else { continue };
        let Some(Def::Constant(t, _)) = g.def(name) else {
            return Err(refuse(g, head, format!("the {} '{name}' of {} is not a constant", part.name(), node.label())));
        };
        let dims = &g.model.tensors[t].dims;
        if dims.iter().product::<u64>() <= 1 {
            continue;
        }
        let axis = if block > 0 {
            if dq_axis == class_axis as i64 {
                return Err(refuse(g, head, format!("{} quantises in blocks along the class axis", node.label())));
            }
            (dims.len() == rank).then_some(class_axis)
        } else {
            (dims.len() == 1 && dq_axis == class_axis as i64).then_some(0)
        };
        let Some(axis) = axis else {
            if block == 0 && dims.len() == 1 {
                continue; // per-axis along another axis: unchanged by the class order
            }
            return Err(refuse(g, head, format!("the {} '{name}' of {} has dims {dims:?}", part.name(), node.label())));
        };
        if g.uses(name) != 1 {
            return Err(refuse(
                g,
                head,
                format!("the {} '{name}' of {} is also read elsewhere", part.name(), node.label()),
            ));
        }
        extra.push(LockedTensor { tensor: t, axis, part });
    }
    Ok(())
}

/// The state of a value computed from the scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Classes innermost in the last dimension; the rank when known.
    Scores(Option<usize>),
    /// Indices into such a last dimension.
    Indices,
    /// A value the lock does not change (the values of a sorted `TopK`).
    Plain,
}

/// The forward check from the scores to the graph outputs.
struct Forward<'g, 'm> {
    g: &'g Graph<'m>,
    head: NodeId,
    classes: usize,
}

impl Forward<'_, '_> {
    fn run(&self, scores: &str, rank: Option<usize>) -> Result<Vec<LockedOutput>> {
        let g = self.g;
        let mut states: HashMap<String, State> = HashMap::new();
        let mut work = vec![(scores.to_string(), State::Scores(rank))];
        let mut visited: HashSet<NodeId> = HashSet::new();
        while let Some((value, state)) = work.pop() {
            if states.insert(value.clone(), state).is_some() || state == State::Plain {
                continue;
            }
            for &(n, idx) in g.consumers(&value) {
                if visited.len() >= MAX_WALK {
                    return Err(refuse(g, self.head, "its scores feed too many nodes"));
                }
                visited.insert(n);
                for (out, s) in self.step(n, idx, &value, state)? {
                    work.push((out, s));
                }
            }
        }
        let mut outputs = Vec::new();
        for o in g.outputs() {
            match states.get(o) {
                Some(State::Scores(_)) => push_once(&mut outputs, o, OutputKind::Scores),
                Some(State::Indices) => push_once(&mut outputs, o, OutputKind::Indices),
                _ => {}
            }
        }
        if outputs.is_empty() {
            return Err(refuse(g, self.head, "its scores reach no graph output"));
        }
        Ok(outputs)
    }

    /// The outputs of node `n`, which reads `value` (in `state`) as input `idx`, and their
    /// states; an error if `n` would change what a class's value means.
    fn step(&self, n: NodeId, idx: usize, value: &str, state: State) -> Result<Vec<(String, State)>> {
        let g = self.g;
        let node = &g.model.nodes[n];
        let no =
            |why: &str| Err(refuse(g, self.head, format!("the scores (as '{value}') feed {}, {why}", node.label())));
        if node.graph != g.main {
            return no("inside a subgraph");
        }
        if !node.is_onnx() {
            return no("an operator of another domain");
        }
        let first_out = || node.outputs.first().filter(|s| !s.is_empty()).cloned();
        let same = |s: State| Ok(first_out().map(|o| vec![(o, s)]).unwrap_or_default());
        let op = node.op_type.as_str();
        if idx != 0 {
            return no("as a parameter rather than as its data");
        }
        match (op, state) {
            ("Identity" | "Cast", _) => same(state),
            ("Softmax" | "LogSoftmax", State::Scores(_)) => same(state),
            ("QuantizeLinear" | "DequantizeLinear", State::Scores(_)) => {
                if !self.per_tensor_params(node) {
                    return no("whose scale or zero point is not one constant value");
                }
                same(state)
            }
            ("Flatten", State::Scores(rank)) => {
                let axis = g.int_attr(n, "axis", 1)?;
                let keeps = axis <= 0 || rank.is_some_and(|r| (axis as u64) < r as u64);
                if !keeps {
                    return no(&format!("whose axis {axis} may take the classes out of the last dimension"));
                }
                same(State::Scores(Some(2)))
            }
            ("Reshape", State::Scores(_)) => {
                let shape = node.inputs.get(1).and_then(|s| match g.def(s) {
                    Some(Def::Constant(t, _)) => g.int_values(t).ok(),
                    _ => None,
                });
                let Some(shape) = shape else { return no("whose shape is not a constant") };
                match shape.last() {
                    Some(&l) if l > 0 && l as u64 % self.classes as u64 == 0 => same(State::Scores(Some(shape.len()))),
                    _ => {
                        no(&format!("whose shape {shape:?} does not end in a multiple of the {} classes", self.classes))
                    }
                }
            }
            ("ArgMax", State::Scores(rank)) => {
                let axis = g.int_attr(n, "axis", 0)?;
                if !is_last(axis, rank) {
                    return no(&format!("over axis {axis}, not the last (class) axis"));
                }
                same(State::Indices)
            }
            ("TopK", State::Scores(rank)) => {
                let axis = g.int_attr(n, "axis", -1)?;
                if !is_last(axis, rank) {
                    return no(&format!("over axis {axis}, not the last (class) axis"));
                }
                if g.int_attr(n, "sorted", 1)? != 1 {
                    return no("unsorted (sorted = 0): the order of its values is not defined");
                }
                let mut out = Vec::new();
                for (k, o) in node.outputs.iter().enumerate().filter(|(_, o)| !o.is_empty()) {
                    out.push((o.clone(), if k == 1 { State::Indices } else { State::Plain }));
                }
                Ok(out)
            }
            (_, State::Indices) => no("which would read class indices in the locked order"),
            _ => no("whose output would change"),
        }
    }

    /// Whether a (De)QuantizeLinear's scale and zero point are single constant values.
    fn per_tensor_params(&self, node: &onnx_protect_format::model::Node) -> bool {
        node.inputs.iter().skip(1).filter(|s| !s.is_empty()).all(|s| match self.g.def(s) {
            Some(Def::Constant(t, _)) => self.g.model.tensors[t].numel <= 1,
            _ => false,
        })
    }
}

fn is_last(axis: i64, rank: Option<usize>) -> bool {
    axis == -1 || rank.is_some_and(|r| r >= 1 && axis == r as i64 - 1)
}

fn push_once(outputs: &mut Vec<LockedOutput>, name: &str, kind: OutputKind) {
    if !outputs.iter().any(|o| o.name == name) {
        outputs.push(LockedOutput { name: name.to_string(), kind });
    }
}

/// Refuses tensors whose bytes cannot be permuted and restored exactly (docs/format.md §15):
/// one named twice, non-canonical varint storage, and what [`storage_refusal`] refuses.
fn check_storage(g: &Graph, layer: &OutputLayer) -> Result<()> {
    let mut seen = HashSet::new();
    for lt in &layer.tensors {
        let t = &g.model.tensors[lt.tensor];
        let why = match &t.data {
            _ if !seen.insert(lt.tensor) => Some("it appears twice in the layer".to_string()),
            TensorData::Varint { canonical: false, field, .. } if t.data_type != DataType::String => Some(format!(
                "its {} is not stored as one packed field of minimal varints, so it could not be restored byte for byte",
                field.name()
            )),
            _ => storage_refusal(t),
        };
        if let Some(why) = why {
            return Err(refuse(g, layer.node, format!("its {} '{}' cannot be locked: {why}", lt.part.name(), t.name)));
        }
    }
    Ok(())
}

/// Why the bytes of tensor `t` could not be stored back once its class slices moved
/// (docs/format.md §15, checked by the encryptor and by every reader of a lock): it holds
/// strings, it has no stored data, or it is of a 6-bit type in `int32_data` (whose values
/// map to no whole bytes). `None`: they can (a varint-stored tensor if its encoding is
/// canonical, which the encryptor checks besides).
pub fn storage_refusal(t: &Tensor) -> Option<String> {
    match &t.data {
        _ if t.data_type == DataType::String => Some("it holds strings".to_string()),
        TensorData::Varint { .. } if t.data_type.bytes_per_typed_value() == 0 => {
            Some(format!("{} in int32_data is not supported", t.data_type))
        }
        TensorData::Strings { .. } | TensorData::Empty => Some(format!("it is stored as {}", t.data.storage_name())),
        _ => None,
    }
}
