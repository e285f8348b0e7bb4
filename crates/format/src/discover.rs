//! Which tensors are weights, and which operators use them.
//!
//! A *constant* is an initializer, a sparse initializer, or the `value` tensor of a
//! `Constant` node, found by name in the node's graph or any enclosing graph
//! (innermost scope first). A constant passed through a *pass-through* operator is
//! still that constant: its data input flows to the output rearranged, converted
//! or cut, never combined with other values. The pass-through operators and their
//! data inputs are `DequantizeLinear`, `Cast`, `Transpose`, `Reshape`, `Identity`,
//! `Squeeze`, `Unsqueeze`, `Flatten`, `Slice`, `Split`, `Expand`, `Tile` (input 0)
//! and `Concat` (every input). So a recurrent weight `R` that an exporter builds at
//! run time from a constant with `Slice`, `Concat` and `Unsqueeze` is that constant.
//!
//! A *weight* is a constant that an operator consumes, other than through a
//! pass-through operator, and that is either
//!
//! * in a weight role of the role table ([`roles`]): the kernel of a `Conv`, the `B`
//!   of a `Gemm`, the `R` of an `LSTM`, ... (any element type), or
//! * a floating-point tensor, in any input of any operator (the bias a PyTorch
//!   export adds with `Add`, a position embedding, a scale fed to `Mul`, ...); its
//!   use has [`WeightKind::Other`] and the input's generic role name `input<i>`.
//!
//! Integer constants outside the role table (shapes, axes, indices) are not weights, nor
//! are the floating-point inputs that only give an output's shape (a `Resize`'s `roi` and
//! `scales`, an `Upsample`'s `scales`).
//!
//! Every weight also gets a [`TensorRole`]: what it is for in the model, derived
//! from the operator and input that consume it (see [`TensorRole`] for the rules).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::model::{GraphId, Model, NodeId, Origin, TensorId};

/// What a weight is for in its operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightKind {
    /// The main weight matrix/kernel/table (Conv W, Gemm B, MatMul operands, RNN W/R, embeddings).
    Main,
    /// Additive biases (Conv B, Gemm C, RNN B).
    Bias,
    /// Normalisation parameters (scale, bias, running statistics).
    Norm,
    /// Quantisation scales and zero points.
    Quant,
    /// A floating-point constant in an input the role table does not name.
    Other,
}

impl WeightKind {
    pub fn name(self) -> &'static str {
        match self {
            WeightKind::Main => "main",
            WeightKind::Bias => "bias",
            WeightKind::Norm => "norm",
            WeightKind::Quant => "quant",
            WeightKind::Other => "other",
        }
    }
}

/// What a weight is for in the model, whatever operator consumes it. Policies can
/// address weights by it (`[roles.NAME]`, `--coefficient role:NAME=C`).
///
/// | role | the constant is |
/// | --- | --- |
/// | `weight` | the main operand of `Conv`, `ConvTranspose`, `Gemm`, `MatMul` and their quantized forms |
/// | `embedding` | the table of a `Gather` |
/// | `recurrent` | the `W` or `R` of an `LSTM`, `GRU` or `RNN` |
/// | `bias` | a bias input (`Conv`/`ConvTranspose` `B`, `Gemm` `C`, recurrent `B`, `QLinearConv` `B`), or a constant of more than one element fed to `Add` or `Sub` with at most one dimension above 1 (a PyTorch Linear bias after `MatMul`) |
/// | `position-embedding` | a constant fed to `Add` with two or more dimensions above 1 (`[1, T, D]`: added to a token sequence) |
/// | `norm` | a parameter of `BatchNormalization`, `LayerNormalization`, `InstanceNormalization`, `GroupNormalization` or `RMSNormalization` |
/// | `scale` | a constant fed to `Mul` or `Div` |
/// | `quant` | a quantisation scale or zero point |
/// | `other` | any other floating-point constant |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TensorRole {
    Weight,
    Embedding,
    Recurrent,
    Bias,
    PositionEmbedding,
    Norm,
    Scale,
    Quant,
    Other,
}

impl TensorRole {
    /// Every role, in documentation order.
    pub const ALL: [TensorRole; 9] = [
        TensorRole::Weight,
        TensorRole::Embedding,
        TensorRole::Recurrent,
        TensorRole::Bias,
        TensorRole::PositionEmbedding,
        TensorRole::Norm,
        TensorRole::Scale,
        TensorRole::Quant,
        TensorRole::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TensorRole::Weight => "weight",
            TensorRole::Embedding => "embedding",
            TensorRole::Recurrent => "recurrent",
            TensorRole::Bias => "bias",
            TensorRole::PositionEmbedding => "position-embedding",
            TensorRole::Norm => "norm",
            TensorRole::Scale => "scale",
            TensorRole::Quant => "quant",
            TensorRole::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<TensorRole> {
        TensorRole::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// `(input index, role name, kind)` for each weight input of an ONNX operator.
pub fn roles(op_type: &str) -> &'static [(usize, &'static str, WeightKind)] {
    match onnx_roles(op_type) {
        [] => contrib_roles(op_type),
        table => table,
    }
}

/// The role table of an operator of `domain`: the default domain's, onnxruntime's
/// `com.microsoft` contrib operators', none for other domains.
pub fn roles_in(domain: &str, op_type: &str) -> &'static [(usize, &'static str, WeightKind)] {
    match domain {
        "" | "ai.onnx" => onnx_roles(op_type),
        "com.microsoft" => contrib_roles(op_type),
        _ => &[],
    }
}

/// The weight inputs of onnxruntime's `com.microsoft` operators that carry weights
/// (as its transformer optimizer and its 4-bit and 8-bit quantizers write them).
fn contrib_roles(op_type: &str) -> &'static [(usize, &'static str, WeightKind)] {
    use WeightKind::*;
    match op_type {
        "MatMulNBits" => &[(1, "B", Main), (2, "scales", Quant), (3, "zero_points", Quant), (5, "bias", Bias)],
        "MatMulBnb4" => &[(1, "B", Main), (2, "absmax", Quant)],
        "GatherBlockQuantized" => &[(0, "data", Main), (2, "scales", Quant), (3, "zero_points", Quant)],
        "DynamicQuantizeMatMul" => {
            &[(1, "B", Main), (2, "b_scale", Quant), (3, "b_zero_point", Quant), (4, "bias", Bias)]
        }
        "MatMulIntegerToFloat" => {
            &[(1, "B", Main), (3, "b_scale", Quant), (5, "b_zero_point", Quant), (6, "bias", Bias)]
        }
        "DynamicQuantizeLSTM" => &[
            (1, "W", Main),
            (2, "R", Main),
            (3, "B", Bias),
            (8, "W_scale", Quant),
            (9, "W_zero_point", Quant),
            (10, "R_scale", Quant),
            (11, "R_zero_point", Quant),
        ],
        "FusedMatMul" => &[(0, "A", Main), (1, "B", Main)],
        "FusedConv" => &[(1, "W", Main), (2, "B", Bias)],
        "FusedGemm" => &[(1, "B", Main), (2, "C", Bias)],
        "QGemm" => &[(3, "B", Main), (4, "b_scale", Quant), (5, "b_zero_point", Quant), (6, "C", Bias)],
        "Attention" => &[(1, "weights", Main), (2, "bias", Bias)],
        "QAttention" => {
            &[(1, "weight", Main), (2, "bias", Bias), (4, "weight_scale", Quant), (7, "weight_zero_point", Quant)]
        }
        "EmbedLayerNormalization" => &[
            (2, "word_embedding", Main),
            (3, "position_embedding", Main),
            (4, "segment_embedding", Main),
            (5, "gamma", Norm),
            (6, "beta", Norm),
        ],
        "SkipLayerNormalization" => &[(2, "gamma", Norm), (3, "beta", Norm), (4, "bias", Bias)],
        "BiasGelu" | "FastGelu" => &[(1, "bias", Bias)],
        _ => &[],
    }
}

/// The weight inputs of default-domain operators.
fn onnx_roles(op_type: &str) -> &'static [(usize, &'static str, WeightKind)] {
    use WeightKind::*;
    match op_type {
        "Conv" | "ConvTranspose" => &[(1, "W", Main), (2, "B", Bias)],
        "Gemm" => &[(0, "A", Main), (1, "B", Main), (2, "C", Bias)],
        "MatMul" => &[(0, "A", Main), (1, "B", Main)],
        "ConvInteger" => &[(1, "w", Main), (3, "w_zero_point", Quant)],
        "MatMulInteger" => &[(0, "A", Main), (1, "B", Main), (2, "a_zero_point", Quant), (3, "b_zero_point", Quant)],
        "QLinearConv" => &[(3, "w", Main), (4, "w_scale", Quant), (5, "w_zero_point", Quant), (8, "B", Bias)],
        "QLinearMatMul" => &[
            (0, "a", Main),
            (1, "a_scale", Quant),
            (2, "a_zero_point", Quant),
            (3, "b", Main),
            (4, "b_scale", Quant),
            (5, "b_zero_point", Quant),
        ],
        "LSTM" | "GRU" | "RNN" => &[(1, "W", Main), (2, "R", Main), (3, "B", Bias)],
        "Gather" => &[(0, "data", Main)],
        "BatchNormalization" => &[(1, "scale", Norm), (2, "B", Norm), (3, "input_mean", Norm), (4, "input_var", Norm)],
        "LayerNormalization" | "InstanceNormalization" => &[(1, "scale", Norm), (2, "B", Norm)],
        "GroupNormalization" => &[(1, "scale", Norm), (2, "bias", Norm)],
        "RMSNormalization" => &[(1, "scale", Norm)],
        _ => &[],
    }
}

/// The generic role name of input `index` (`input0`, `input1`, ...; `input` past 15), used
/// for inputs the role table does not name.
pub fn generic_role(index: usize) -> &'static str {
    const NAMES: [&str; 16] = [
        "input0", "input1", "input2", "input3", "input4", "input5", "input6", "input7", "input8", "input9", "input10",
        "input11", "input12", "input13", "input14", "input15",
    ];
    NAMES.get(index).copied().unwrap_or("input")
}

/// Whether `role` names an input of `op_type`: a role of its table, or a generic name.
pub fn is_role_of(op_type: &str, role: &str) -> bool {
    roles(op_type).iter().any(|(_, n, _)| *n == role) || role == "input" || (0..16).any(|i| generic_role(i) == role)
}

/// Operators whose first input passes a constant through to their output.
pub fn is_passthrough(op_type: &str) -> bool {
    op_type == "Concat"
        || matches!(
            op_type,
            "DequantizeLinear"
                | "QuantizeLinear"
                | "Cast"
                | "Transpose"
                | "Reshape"
                | "Identity"
                | "Squeeze"
                | "Unsqueeze"
                | "Flatten"
                | "Slice"
                | "Split"
                | "Expand"
                | "Tile"
        )
}

/// The data inputs of a pass-through node: every input of `Concat`, else the first.
fn data_inputs(op_type: &str, n_inputs: usize) -> std::ops::Range<usize> {
    if op_type == "Concat" {
        0..n_inputs
    } else {
        0..n_inputs.min(1)
    }
}

/// One use of a weight by an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightUse {
    pub node: NodeId,
    pub op_type: String,
    /// The input's role name in the operator ([`roles`]), or its generic name ([`generic_role`]).
    pub role: &'static str,
    pub kind: WeightKind,
    pub input_index: usize,
    /// Pass-through nodes between the constant and this node, nearest the constant first.
    pub via: Vec<NodeId>,
    /// What the weight is for, judged from this use.
    pub tensor_role: TensorRole,
}

/// A constant tensor consumed as a weight, with all its users.
#[derive(Debug, Clone)]
pub struct Weight {
    pub tensor: TensorId,
    pub uses: Vec<WeightUse>,
    /// Whether it belongs to the first layer of the main graph ([`Layers`]).
    pub first_layer: bool,
    /// Whether it belongs to the last layer of the main graph ([`Layers`]).
    pub last_layer: bool,
}

/// The first and last layers of a model.
///
/// A *layer node* is a node of the main graph, or of a subgraph inside it (`If`
/// branches, `Loop` and `Scan` bodies), with a weight in a `main` role (the kernel of a
/// `Conv`, the constant operand of a `MatMul`, the `W` of an `LSTM`, ...), or a call of a
/// model-local function that passes such a weight to its body. The *first
/// layer* is every layer node that a main graph input reaches through nodes that are not
/// layer nodes; the *last layer*, every layer node that reaches a main graph output that
/// way. Data flows into a subgraph through the names it reads from enclosing graphs and
/// through its inputs (fed by what its node reads), and out of it through its outputs
/// (its node's outputs). A layer's weights are its nodes' weights in `main` and `bias`
/// roles (for the first layer, not the recurrent weight `R`, which multiplies the
/// layer's own state rather than what arrives from the inputs), and the constant of an
/// `Add` applied directly to a layer node's output (the bias a PyTorch export adds
/// after `MatMul`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layers {
    First,
    Last,
}

impl Weight {
    /// The operator type the weight is attributed to in per-op summaries: its first user.
    pub fn primary_op(&self) -> &str {
        self.uses.first().map(|u| u.op_type.as_str()).unwrap_or("")
    }

    /// The weight's role in the model: that of its first use in a named (table) role,
    /// else that of its first use.
    pub fn tensor_role(&self) -> TensorRole {
        self.uses
            .iter()
            .find(|u| u.kind != WeightKind::Other)
            .or_else(|| self.uses.first())
            .map(|u| u.tensor_role)
            .unwrap_or(TensorRole::Other)
    }
}

/// What a name is in the graph that defines it.
#[derive(Clone, Copy)]
enum Def {
    /// An initializer or sparse initializer.
    Tensor(TensorId),
    /// A node's output.
    Node(NodeId),
    /// A formal input of the graph (a function's, a subgraph's or the model's).
    Input,
}

/// Whether input `idx` of `n` is a floating-point input that only gives the output's shape.
fn gives_a_shape(n: &crate::model::Node, idx: usize) -> bool {
    n.is_onnx() && matches!((n.op_type.as_str(), idx), ("Resize", 1 | 2) | ("Upsample", 1))
}

/// Finds every weight in the model. Each tensor appears once, with all its uses in
/// graph order (one use per consuming node and input, whatever the number of paths).
pub fn discover(model: &Model) -> Vec<Weight> {
    let scopes: Vec<HashMap<&str, Def>> = model.graphs.iter().map(|g| scope_of(model, g.id)).collect();
    let calls = Calls::new(model);
    let mut found: BTreeMap<TensorId, Vec<WeightUse>> = BTreeMap::new();
    let record = |found: &mut BTreeMap<TensorId, Vec<WeightUse>>, node: NodeId, idx: usize, only_new: bool| {
        let n = &model.nodes[node];
        let Some(name) = n.inputs.get(idx).filter(|s| !s.is_empty()) else { return };
        let table = roles_in(&n.domain, &n.op_type);
        let named = table.iter().find(|(i, _, _)| *i == idx);
        for (tensor, via) in resolve_all(model, &scopes, &calls, n.graph, name) {
            let t = &model.tensors[tensor];
            let (role, kind) = match named {
                Some(&(_, role, kind)) => (role, kind),
                None if t.data_type.is_float() && !gives_a_shape(n, idx) => (generic_role(idx), WeightKind::Other),
                None => continue,
            };
            let uses = found.entry(tensor).or_default();
            if (only_new && !uses.is_empty()) || uses.iter().any(|u| u.node == node && u.input_index == idx) {
                continue;
            }
            let tensor_role = role_of(model, n.is_onnx(), &n.op_type, kind, tensor);
            uses.push(WeightUse { node, op_type: n.op_type.clone(), role, kind, input_index: idx, via, tensor_role });
        }
    };
    for node in &model.nodes {
        // A call of a model-local function is followed into its body instead.
        if node.op_type == "Constant" || (node.is_onnx() && is_passthrough(&node.op_type)) || calls.is_call(node.id) {
            continue;
        }
        for idx in 0..node.inputs.len() {
            record(&mut found, node.id, idx, false);
        }
    }
    // Constants that only pass-through nodes consume (a dead branch, a graph output):
    // still weights, used by the first such node.
    for node in model.nodes.iter().filter(|n| n.is_onnx() && is_passthrough(&n.op_type)) {
        for idx in data_inputs(&node.op_type, node.inputs.len()) {
            record(&mut found, node.id, idx, true);
        }
    }
    found.retain(|_, uses| !uses.is_empty());
    for uses in found.values_mut() {
        uses.sort_by_key(|u| (u.node, u.input_index));
    }
    let (first, last) = end_layers(model, &scopes, &found, &calls);
    found
        .into_iter()
        .map(|(tensor, uses)| Weight {
            tensor,
            first_layer: first.contains(&tensor),
            last_layer: last.contains(&tensor),
            uses,
        })
        .collect()
}

/// A value, named as the graph that defines it.
type Value<'a> = (GraphId, &'a str);

/// The data flow of the main graph and every subgraph inside it (`If` branches, `Loop`
/// and `Scan` bodies), with names resolved through the scopes.
struct Flow<'a> {
    model: &'a Model,
    /// Per graph: what each name it defines is ([`scope_of`]).
    scopes: &'a [HashMap<&'a str, Def>],
    /// Whether each graph is the main graph or nested in it.
    in_tree: Vec<bool>,
    /// The nodes reading each value.
    consumers: HashMap<Value<'a>, Vec<NodeId>>,
    /// The node outputs each value is, as a subgraph's output: `(node, output index)`.
    output_of: HashMap<Value<'a>, Vec<(NodeId, usize)>>,
}

impl<'a> Flow<'a> {
    fn new(model: &'a Model, scopes: &'a [HashMap<&'a str, Def>]) -> Self {
        let in_tree = (0..model.graphs.len())
            .map(|g| {
                let mut g = g;
                // Nesting is limited when the model is read; the bound only guards a cycle.
                for _ in 0..=crate::model::MAX_GRAPH_DEPTH + 1 {
                    match model.graphs[g].kind {
                        crate::model::GraphKind::Main => return true,
                        crate::model::GraphKind::Subgraph { node, .. } => g = model.nodes[node].graph,
                        _ => return false,
                    }
                }
                false
            })
            .collect::<Vec<_>>();
        let mut flow = Flow { model, scopes, in_tree, consumers: HashMap::new(), output_of: HashMap::new() };
        for g in model.graphs.iter().filter(|g| flow.in_tree[g.id]) {
            for &n in &g.nodes {
                for i in model.nodes[n].inputs.iter().filter(|i| !i.is_empty()) {
                    if let Some((v, _)) = flow.resolve(g.id, i) {
                        flow.consumers.entry(v).or_default().push(n);
                    }
                }
            }
            if let crate::model::GraphKind::Subgraph { node, .. } = g.kind {
                for (k, o) in g.outputs.iter().enumerate() {
                    let owner = &model.nodes[node];
                    let Some(j) = owner_output(&owner.op_type, k).filter(|&j| j < owner.outputs.len()) else {
                        continue;
                    };
                    if let Some((v, _)) = flow.resolve(g.id, o) {
                        flow.output_of.entry(v).or_default().push((node, j));
                    }
                }
            }
        }
        flow
    }

    /// The value `name` means in graph `g`, and what it is.
    fn resolve(&self, g: GraphId, name: &'a str) -> Option<(Value<'a>, Def)> {
        lookup(self.model, self.scopes, g, name).map(|(id, def)| ((id, name), def))
    }

    fn subgraphs(&self, n: NodeId) -> impl Iterator<Item = GraphId> + '_ {
        self.model.nodes[n].attributes.iter().flat_map(|a| a.graphs.iter().copied())
    }

    /// The outputs of `n` that carry its inputs' values on ([`value_outputs`]).
    fn outputs(&self, n: NodeId) -> impl Iterator<Item = Value<'a>> + 'a {
        let node = &self.model.nodes[n];
        let carried = node.outputs.iter().take(value_outputs(node));
        carried.filter(|o| !o.is_empty()).map(move |o| (node.graph, o.as_str()))
    }

    /// Forward from the main graph's inputs, stopping at layer nodes: the layer nodes
    /// reached. A node with subgraphs passes each input it reads to the subgraph input at
    /// the same position, and its outputs are reached only through its subgraphs'
    /// outputs; `Shape` and `Size` read no values, and a `DynamicQuantizeLinear` passes
    /// values on through its quantized output only ([`value_outputs`]).
    fn first(&self, layer_nodes: &HashSet<NodeId>, main: GraphId) -> HashSet<NodeId> {
        let mut found = HashSet::new();
        let mut seen: HashSet<Value> = HashSet::new();
        let mut work: Vec<Value> = (self.model.graphs[main].inputs.iter())
            .filter(|i| matches!(self.scopes[main].get(i.as_str()), Some(Def::Input)))
            .map(|i| (main, i.as_str()))
            .collect();
        while let Some(v) = work.pop() {
            if !seen.insert(v) {
                continue;
            }
            for &(owner, j) in self.output_of.get(&v).into_iter().flatten() {
                let node = &self.model.nodes[owner];
                work.extend(node.outputs.get(j).filter(|o| !o.is_empty()).map(|o| (node.graph, o.as_str())));
            }
            for &n in self.consumers.get(&v).into_iter().flatten() {
                let node = &self.model.nodes[n];
                if layer_nodes.contains(&n) {
                    found.insert(n);
                    continue;
                }
                if reads_no_values(node) {
                    continue;
                }
                let subgraphs: Vec<GraphId> = self.subgraphs(n).collect();
                if subgraphs.is_empty() {
                    work.extend(self.outputs(n));
                    continue;
                }
                for (k, i) in node.inputs.iter().enumerate() {
                    if self.resolve(node.graph, i).is_some_and(|(w, _)| w == v) {
                        for &s in &subgraphs {
                            work.extend(self.model.graphs[s].inputs.get(k).map(|i| (s, i.as_str())));
                        }
                    }
                }
            }
        }
        found
    }

    /// Backward from the main graph's outputs, stopping at layer nodes: the layer nodes
    /// reached. An output of a node with subgraphs leads to the subgraph outputs that
    /// make it (not to the node's condition or trip count), a subgraph input to the node
    /// input at the same position; `Shape` and `Size` read no values, and a
    /// `DynamicQuantizeLinear`'s scale and zero point lead nowhere ([`value_outputs`]).
    fn last(&self, layer_nodes: &HashSet<NodeId>, main: GraphId) -> HashSet<NodeId> {
        let mut found = HashSet::new();
        let mut seen: HashSet<Value> = HashSet::new();
        let mut work: Vec<(GraphId, &str)> =
            self.model.graphs[main].outputs.iter().map(|o| (main, o.as_str())).collect();
        while let Some((g, name)) = work.pop() {
            let Some((v, src)) = self.resolve(g, name) else { continue };
            if !seen.insert(v) {
                continue;
            }
            match src {
                Def::Node(n) if layer_nodes.contains(&n) => {
                    found.insert(n);
                }
                Def::Node(n) => {
                    let node = &self.model.nodes[n];
                    let position = node.outputs.iter().position(|o| o == name);
                    if reads_no_values(node) || position.is_some_and(|j| j >= value_outputs(node)) {
                        continue;
                    }
                    let subgraphs: Vec<GraphId> = self.subgraphs(n).collect();
                    if subgraphs.is_empty() {
                        work.extend(node.inputs.iter().filter(|i| !i.is_empty()).map(|i| (node.graph, i.as_str())));
                        continue;
                    }
                    let j = node.outputs.iter().position(|o| o == name);
                    for s in subgraphs {
                        let outputs = &self.model.graphs[s].outputs;
                        let made_by = outputs.iter().enumerate().filter(|&(k, _)| owner_output(&node.op_type, k) == j);
                        work.extend(made_by.map(|(_, o)| (s, o.as_str())));
                    }
                }
                Def::Input => {
                    if let crate::model::GraphKind::Subgraph { node, .. } = self.model.graphs[v.0].kind {
                        let owner = &self.model.nodes[node];
                        let k = self.model.graphs[v.0].inputs.iter().position(|i| i == name);
                        let input = k.and_then(|k| owner.inputs.get(k)).filter(|i| !i.is_empty());
                        work.extend(input.map(|i| (owner.graph, i.as_str())));
                    }
                }
                Def::Tensor(_) => {}
            }
        }
        found
    }
}

/// Whether a node reads only the shapes of its inputs (`Shape`, `Size`), no values.
fn reads_no_values(node: &crate::model::Node) -> bool {
    node.is_onnx() && matches!(node.op_type.as_str(), "Shape" | "Size")
}

/// How many of a node's first outputs carry its inputs' values on to later layers: all,
/// except for `DynamicQuantizeLinear`, whose scale and zero point (outputs 1 and 2) are
/// statistics of its whole input that the quantized layer after it multiplies back in
/// (`onnxruntime.quantization.quantize_dynamic`), not a path from one layer to the next.
fn value_outputs(node: &crate::model::Node) -> usize {
    if node.is_onnx() && node.op_type == "DynamicQuantizeLinear" {
        1
    } else {
        usize::MAX
    }
}

/// Which output of a node with subgraphs the subgraph output `k` is: the same position,
/// except in a `Loop` body, whose first output is the loop condition.
fn owner_output(op_type: &str, k: usize) -> Option<usize> {
    if op_type == "Loop" {
        k.checked_sub(1)
    } else {
        Some(k)
    }
}

/// The weights of the first and of the last layer (see [`Layers`]).
fn end_layers<'a>(
    model: &'a Model,
    scopes: &'a [HashMap<&'a str, Def>],
    found: &BTreeMap<TensorId, Vec<WeightUse>>,
    calls: &Calls,
) -> (HashSet<TensorId>, HashSet<TensorId>) {
    let Some(main) = model.graphs.iter().find(|g| matches!(g.kind, crate::model::GraphKind::Main)) else {
        return Default::default();
    };
    let flow = Flow::new(model, scopes);
    // The node of the main graph (or a subgraph in it) a use stands for: its own node, or
    // for a use inside a model-local function, the call in the main tree that passes the
    // weight in.
    let anchor = |u: &WeightUse| -> Option<NodeId> {
        if flow.in_tree[model.nodes[u.node].graph] {
            return Some(u.node);
        }
        u.via.iter().copied().find(|&n| flow.in_tree[model.nodes[n].graph] && calls.is_call(n))
    };
    let layer_nodes: HashSet<NodeId> =
        found.values().flatten().filter(|u| u.kind == WeightKind::Main).filter_map(anchor).collect();
    let first_nodes = flow.first(&layer_nodes, main.id);
    let last_nodes = flow.last(&layer_nodes, main.id);
    // The first layer's weights are those that multiply what arrives from the inputs:
    // not the recurrent `R`, which multiplies the layer's own state.
    let weights_of = |nodes: &HashSet<NodeId>, first: bool| -> HashSet<TensorId> {
        // Nodes whose Add constants count as the layer's bias: an Add fed by a layer node.
        let adds: HashSet<NodeId> = nodes
            .iter()
            .flat_map(|&n| flow.outputs(n))
            .flat_map(|v| flow.consumers.get(&v).into_iter().flatten().copied())
            .filter(|&a| model.nodes[a].op_type == "Add")
            .collect();
        found
            .iter()
            .filter(|(_, uses)| {
                uses.iter().any(|u| {
                    let at = anchor(u);
                    // Inside a function, a bias is any constant in a bias role (an `Add`).
                    let called = at.is_some_and(|a| a != u.node) && u.tensor_role == TensorRole::Bias;
                    (at.is_some_and(|a| nodes.contains(&a))
                        && (matches!(u.kind, WeightKind::Main | WeightKind::Bias) || called)
                        && !(first && u.role == "R"))
                        || (adds.contains(&u.node) && u.tensor_role == TensorRole::Bias)
                })
            })
            .map(|(&t, _)| t)
            .collect()
    };
    (weights_of(&first_nodes, true), weights_of(&last_nodes, false))
}

/// The role a use gives its tensor (the rules of [`TensorRole`]).
fn role_of(model: &Model, onnx: bool, op: &str, kind: WeightKind, tensor: TensorId) -> TensorRole {
    match kind {
        WeightKind::Main => match op {
            "Gather" | "GatherBlockQuantized" | "EmbedLayerNormalization" => TensorRole::Embedding,
            "LSTM" | "GRU" | "RNN" | "DynamicQuantizeLSTM" => TensorRole::Recurrent,
            _ => TensorRole::Weight,
        },
        WeightKind::Bias => TensorRole::Bias,
        WeightKind::Norm => TensorRole::Norm,
        WeightKind::Quant => TensorRole::Quant,
        WeightKind::Other if !onnx => TensorRole::Other,
        WeightKind::Other => {
            let t = &model.tensors[tensor];
            let wide = t.dims.iter().filter(|&&d| d > 1).count();
            match op {
                "Add" if wide >= 2 => TensorRole::PositionEmbedding,
                "Add" | "Sub" if t.numel > 1 => TensorRole::Bias,
                "Mul" | "Div" => TensorRole::Scale,
                _ => TensorRole::Other,
            }
        }
    }
}

fn scope_of(model: &Model, gid: GraphId) -> HashMap<&str, Def> {
    let g = &model.graphs[gid];
    let mut m: HashMap<&str, Def> = g.inputs.iter().map(|i| (i.as_str(), Def::Input)).collect();
    for &n in &g.nodes {
        for o in &model.nodes[n].outputs {
            if !o.is_empty() {
                m.insert(o.as_str(), Def::Node(n));
            }
        }
    }
    for &t in &g.initializers {
        m.insert(model.tensors[t].name.as_str(), Def::Tensor(t));
    }
    for &(v, _) in &g.sparse_initializers {
        m.insert(model.tensors[v].name.as_str(), Def::Tensor(v));
    }
    m
}

/// The calls of each model-local function, to follow a function's formal inputs to the
/// values its callers pass.
struct Calls<'a> {
    model: &'a Model,
    /// Function body graph by `(domain, name)`.
    functions: HashMap<(&'a str, &'a str), GraphId>,
    /// Call nodes by the function body graph they call.
    calls: HashMap<GraphId, Vec<NodeId>>,
}

impl<'a> Calls<'a> {
    fn new(model: &'a Model) -> Self {
        let functions: HashMap<(&str, &str), GraphId> = model
            .graphs
            .iter()
            .filter_map(|g| match &g.kind {
                crate::model::GraphKind::Function { domain, name } => Some(((domain.as_str(), name.as_str()), g.id)),
                _ => None,
            })
            .collect();
        let mut calls: HashMap<GraphId, Vec<NodeId>> = HashMap::new();
        if !functions.is_empty() {
            for n in model.nodes.iter().filter(|n| !n.is_onnx()) {
                if let Some(&f) = functions.get(&(n.domain.as_str(), n.op_type.as_str())) {
                    calls.entry(f).or_default().push(n.id);
                }
            }
        }
        Calls { model, functions, calls }
    }

    /// The function body a graph belongs to (the graph itself, or the body its scopes end in).
    fn body_of(&self, gid: GraphId) -> Option<GraphId> {
        let mut g = gid;
        for _ in 0..=crate::model::MAX_GRAPH_DEPTH + 1 {
            match self.model.graphs[g].parent {
                Some(p) => g = p,
                None => break,
            }
        }
        matches!(self.model.graphs[g].kind, crate::model::GraphKind::Function { .. }).then_some(g)
    }

    /// For `name` seen from `gid`, when it is formal input `k` of the function body `gid`
    /// is in: each call of that function and the value it passes as input `k`.
    fn arguments(&self, gid: GraphId, name: &str) -> Vec<(NodeId, &'a str)> {
        let Some(body) = self.body_of(gid) else { return Vec::new() };
        let Some(k) = self.model.graphs[body].inputs.iter().position(|i| i == name) else { return Vec::new() };
        let calls = self.calls.get(&body).map(Vec::as_slice).unwrap_or(&[]);
        calls
            .iter()
            .filter_map(|&c| self.model.nodes[c].inputs.get(k).filter(|i| !i.is_empty()).map(|i| (c, i.as_str())))
            .collect()
    }

    /// Whether node `n` calls a model-local function.
    fn is_call(&self, n: NodeId) -> bool {
        let node = &self.model.nodes[n];
        !node.is_onnx() && self.functions.contains_key(&(node.domain.as_str(), node.op_type.as_str()))
    }
}

/// Most nodes one resolution walks through (a hostile graph cannot make it slow).
const MAX_WALK: usize = 4096;

/// Every constant that reaches value `name`, as seen from graph `gid`, through
/// pass-through nodes: `(tensor, the pass-through nodes on the first path found,
/// nearest the constant first)`, each tensor once.
fn resolve_all<'a>(
    model: &'a Model,
    scopes: &[HashMap<&str, Def>],
    calls: &Calls<'a>,
    gid: GraphId,
    name: &'a str,
) -> Vec<(TensorId, Vec<NodeId>)> {
    let mut out: Vec<(TensorId, Vec<NodeId>)> = Vec::new();
    let mut seen_nodes: HashSet<NodeId> = HashSet::new();
    // (value name, graph it is seen from, pass-through nodes from it to the consumer)
    let mut stack: Vec<(&str, GraphId, Vec<NodeId>)> = vec![(name, gid, Vec::new())];
    // The path of a value read through node `n` on the way to `path`'s consumer.
    let through =
        |n: NodeId, path: &[NodeId]| -> Vec<NodeId> { std::iter::once(n).chain(path.iter().copied()).collect() };
    while let Some((name, gid, path)) = stack.pop() {
        let Some((_, def)) = lookup(model, scopes, gid, name) else { continue };
        let tensor = match def {
            Def::Input => {
                // A formal input of a model-local function: what each call passes in.
                for (call, input) in calls.arguments(gid, name) {
                    if seen_nodes.len() < MAX_WALK && seen_nodes.insert(call) {
                        stack.push((input, model.nodes[call].graph, through(call, &path)));
                    }
                }
                None
            }
            Def::Tensor(t) => Some(t),
            Def::Node(n) => {
                let node = &model.nodes[n];
                if !node.is_onnx() {
                    None
                } else if node.op_type == "Constant" {
                    let t = node.attributes.iter().find(|a| a.name == "value" || a.name == "sparse_value");
                    let t = t.and_then(|a| a.tensors.first().copied());
                    debug_assert!(t.is_none_or(|t| matches!(model.tensors[t].origin, Origin::Attribute { .. })));
                    t
                } else {
                    if is_passthrough(&node.op_type) && seen_nodes.len() < MAX_WALK && seen_nodes.insert(n) {
                        // Pushed in reverse so that inputs are visited in order.
                        for i in data_inputs(&node.op_type, node.inputs.len()).rev() {
                            if let Some(input) = node.inputs.get(i).filter(|s| !s.is_empty()) {
                                stack.push((input.as_str(), node.graph, through(n, &path)));
                            }
                        }
                    }
                    None
                }
            }
        };
        if let Some(t) = tensor {
            if !out.iter().any(|(x, _)| *x == t) {
                out.push((t, path));
            }
        }
    }
    out
}

/// What `name` is, as seen from graph `gid` (innermost scope first), and the graph that
/// defines it.
fn lookup(model: &Model, scopes: &[HashMap<&str, Def>], gid: GraphId, name: &str) -> Option<(GraphId, Def)> {
    let mut g = Some(gid);
    while let Some(id) = g {
        if let Some(def) = scopes[id].get(name) {
            return Some((id, *def));
        }
        g = model.graphs[id].parent;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{float_tensor, model_with_graph, node};
    use crate::wire::put_len_field;

    fn model(nodes: &[Vec<u8>], tensors: &[Vec<u8>]) -> Model {
        let mut g = Vec::new();
        for n in nodes {
            put_len_field(&mut g, 1, n);
        }
        put_len_field(&mut g, 2, b"g");
        for t in tensors {
            put_len_field(&mut g, 5, t);
        }
        Model::from_vec(model_with_graph(&g), None).unwrap()
    }

    /// The names of the first layer's weights and of the last layer's, sorted.
    fn end_layer_names(w: &BTreeMap<String, Weight>) -> (Vec<&str>, Vec<&str>) {
        let names = |f: fn(&Weight) -> bool| w.iter().filter(|(_, w)| f(w)).map(|(n, _)| n.as_str()).collect();
        (names(|w| w.first_layer), names(|w| w.last_layer))
    }

    fn by_name(m: &Model) -> BTreeMap<String, Weight> {
        discover(m).into_iter().map(|w| (m.tensors[w.tensor].name.clone(), w)).collect()
    }

    /// A `GraphProto` of `nodes` with the given input and output names.
    fn graph(name: &str, nodes: &[Vec<u8>], inputs: &[&str], outputs: &[&str], tensors: &[Vec<u8>]) -> Vec<u8> {
        let mut g = Vec::new();
        for n in nodes {
            put_len_field(&mut g, 1, n);
        }
        put_len_field(&mut g, 2, name.as_bytes());
        for t in tensors {
            put_len_field(&mut g, 5, t);
        }
        for (field, names) in [(11, inputs), (12, outputs)] {
            for v in names {
                let mut vi = Vec::new();
                put_len_field(&mut vi, 1, v.as_bytes());
                put_len_field(&mut g, field, &vi);
            }
        }
        g
    }

    /// `node` with graph attributes (`AttributeProto.g`, type GRAPH).
    fn with_graphs(mut n: Vec<u8>, graphs: &[(&str, Vec<u8>)]) -> Vec<u8> {
        for (name, g) in graphs {
            let mut a = Vec::new();
            put_len_field(&mut a, 1, name.as_bytes());
            put_len_field(&mut a, 6, g);
            crate::wire::put_tag(&mut a, 20, crate::wire::WireType::Varint);
            crate::wire::put_varint(&mut a, 5);
            put_len_field(&mut n, 5, &a);
        }
        n
    }

    #[test]
    fn end_layers_follow_data_into_subgraphs_and_not_through_shapes() {
        // x -> MatMul(W0) -> MatMul(W1) -> Reshape(to Shape(x)) -> If(c) { MatMul(Wt) | Loop { MatMul(Wl) } } -> y
        let then_branch = graph("then", &[node("MatMul", &["r", "Wt"], &["ot"], "mt")], &[], &["ot"], &[]);
        let body = graph(
            "body",
            &[
                node("Identity", &["cond_in"], &["cond_out"], "keep"),
                node("MatMul", &["carried", "Wl"], &["next"], "ml"),
            ],
            &["i", "cond_in", "carried"],
            &["cond_out", "next"],
            &[float_tensor("Wl", &[2, 2], &[1.0; 4])],
        );
        let else_branch = graph(
            "else",
            &[with_graphs(node("Loop", &["", "", "r"], &["oe"], "loop"), &[("body", body)])],
            &[],
            &["oe"],
            &[],
        );
        let main = graph(
            "main",
            &[
                node("MatMul", &["x", "W0"], &["h"], "m0"),
                node("MatMul", &["h", "W1"], &["h1"], "m1"),
                node("Shape", &["x"], &["sx"], "shape"),
                node("Reshape", &["h1", "sx"], &["r"], "reshape"),
                with_graphs(
                    node("If", &["c"], &["y"], "if"),
                    &[("then_branch", then_branch), ("else_branch", else_branch)],
                ),
            ],
            &["x", "c"],
            &["y"],
            &[
                float_tensor("W0", &[2, 2], &[1.0; 4]),
                float_tensor("W1", &[2, 2], &[1.0; 4]),
                float_tensor("Wt", &[2, 2], &[1.0; 4]),
            ],
        );
        let m = Model::from_vec(model_with_graph(&main), None).unwrap();
        let w = by_name(&m);
        let (first, last) = end_layer_names(&w);
        assert_eq!(first, ["W0"], "Shape(x) carries no values to the layers after the Reshape");
        assert_eq!(last, ["Wl", "Wt"], "both branches make y; the Loop's output is its body's");
    }

    #[test]
    fn a_dynamically_quantized_chain_has_one_first_and_one_last_layer() {
        // As quantize_dynamic writes a layer: x -> DynamicQuantizeLinear -> (q, s, z);
        // ConvInteger(q, Wk, z) -> Cast -> Mul(Mul(s, Wk_scale)) -> next layer. The input's
        // scale reaches every later layer's Mul, its data only the first ConvInteger.
        let mut nodes = Vec::new();
        let mut inits = Vec::new();
        let mut prev = "x".to_string();
        for k in 0..3 {
            let (q, s, z) = (format!("q{k}"), format!("s{k}"), format!("z{k}"));
            let (w, ws, c, f, sc, out) = (
                format!("W{k}"),
                format!("W{k}_scale"),
                format!("c{k}"),
                format!("f{k}"),
                format!("sc{k}"),
                format!("h{k}"),
            );
            nodes.push(node("DynamicQuantizeLinear", &[&prev], &[&q, &s, &z], &format!("dq{k}")));
            nodes.push(node("ConvInteger", &[&q, &w, &z], &[&c], &format!("conv{k}")));
            nodes.push(node("Cast", &[&c], &[&f], &format!("cast{k}")));
            nodes.push(node("Mul", &[&s, &ws], &[&sc], &format!("scale{k}")));
            nodes.push(node("Mul", &[&f, &sc], &[&out], &format!("out{k}")));
            inits.push(float_tensor(&w, &[2, 1, 1, 1], &[1.0, -1.0]));
            inits.push(float_tensor(&ws, &[], &[0.5]));
            prev = out;
        }
        let main = graph("main", &nodes, &["x"], &[&prev], &inits);
        let m = Model::from_vec(model_with_graph(&main), None).unwrap();
        let w = by_name(&m);
        let (first, last) = end_layer_names(&w);
        assert_eq!(
            (first, last),
            (vec!["W0"], vec!["W2"]),
            "the scale path of DynamicQuantizeLinear is not a layer path"
        );
    }

    #[test]
    fn weights_passed_to_a_local_function_are_found_through_its_body() {
        // main: x -> local.Dense(x, W, B) -> local.Dense(h, W2, B2) -> y; Dense(x, w, b) = MatMul(x, w) + b
        let mut f = Vec::new();
        put_len_field(&mut f, 1, b"Dense");
        for i in ["x", "w", "b"] {
            put_len_field(&mut f, 4, i.as_bytes());
        }
        put_len_field(&mut f, 5, b"y");
        put_len_field(&mut f, 7, &node("MatMul", &["x", "w"], &["t"], "mm"));
        put_len_field(&mut f, 7, &node("Add", &["t", "b"], &["y"], "add"));
        put_len_field(&mut f, 10, b"local");
        let call = |inputs: &[&str], out: &str, name: &str| {
            let mut n = node("Dense", inputs, &[out], name);
            put_len_field(&mut n, 7, b"local");
            n
        };
        let main = graph(
            "main",
            &[call(&["x", "W", "B"], "h", "d1"), call(&["h", "W2", "B2"], "y", "d2")],
            &["x"],
            &["y"],
            &[
                float_tensor("W", &[2, 2], &[1.0; 4]),
                float_tensor("B", &[2], &[0.5; 2]),
                float_tensor("W2", &[2, 2], &[1.0; 4]),
                float_tensor("B2", &[2], &[0.5; 2]),
            ],
        );
        let mut m = model_with_graph(&main);
        put_len_field(&mut m, 25, &f);
        let m = Model::from_vec(m, None).unwrap();
        let w = by_name(&m);
        assert_eq!(w.len(), 4);
        let u = &w["W"].uses;
        assert_eq!(u.len(), 1, "the body's MatMul, not the call: {u:?}");
        assert_eq!((u[0].op_type.as_str(), u[0].role, u[0].kind), ("MatMul", "B", WeightKind::Main));
        assert_eq!(m.nodes[u[0].via[0]].name, "d1", "the call is on the way");
        assert_eq!(w["W2"].uses[0].via.iter().map(|&n| m.nodes[n].name.as_str()).collect::<Vec<_>>(), ["d2"]);
        assert_eq!(w["B"].tensor_role(), TensorRole::Bias);
        let (first, last) = end_layer_names(&w);
        assert_eq!((first, last), (vec!["B", "W"], vec!["B2", "W2"]));
    }

    #[test]
    fn a_float_weight_quantized_in_the_graph_is_the_convolution_s() {
        // What onnxruntime's static quantizer writes when it keeps float weights:
        // W -> QuantizeLinear -> DequantizeLinear -> Conv.
        let m = model(
            &[
                node("QuantizeLinear", &["W", "s", "z"], &["Wq"], "q"),
                node("DequantizeLinear", &["Wq", "s", "z"], &["Wd"], "dq"),
                node("Conv", &["x", "Wd"], &["y"], "conv"),
            ],
            &[float_tensor("W", &[2, 1, 1, 1], &[0.5, -0.5]), float_tensor("s", &[], &[0.1])],
        );
        let w = by_name(&m);
        let u = &w["W"].uses[0];
        assert_eq!((u.op_type.as_str(), u.role, u.kind), ("Conv", "W", WeightKind::Main));
        let via: Vec<&str> = u.via.iter().map(|&n| m.nodes[n].op_type.as_str()).collect();
        assert_eq!(via, ["QuantizeLinear", "DequantizeLinear"]);
    }

    #[test]
    fn onnxruntime_contrib_operators_have_weights_and_other_domains_do_not() {
        let ms = |op: &str, inputs: &[&str], out: &str| {
            let mut n = node(op, inputs, &[out], out);
            put_len_field(&mut n, 7, b"com.microsoft");
            n
        };
        let mut packed = Vec::new();
        crate::wire::put_tag(&mut packed, 1, crate::wire::WireType::Varint);
        crate::wire::put_varint(&mut packed, 4);
        crate::wire::put_tag(&mut packed, 2, crate::wire::WireType::Varint);
        crate::wire::put_varint(&mut packed, 2); // UINT8
        put_len_field(&mut packed, 8, b"Wq");
        put_len_field(&mut packed, 9, &[1, 2, 3, 4]);
        let m = model(
            &[
                ms("MatMulNBits", &["x", "Wq", "scales"], "h"),
                node("Attention", &["h", "K", "V"], &["y"], "onnx_attention"),
                ms("DynamicQuantizeLSTM", &["x", "Wl", "Rl", "Bl", "", "", "", "", "Wls"], "l"),
            ],
            &[
                packed,
                float_tensor("scales", &[1], &[0.1]),
                float_tensor("K", &[2, 2], &[1.0; 4]),
                float_tensor("Wl", &[1, 2, 8], &[0.5; 16]),
                float_tensor("Rl", &[1, 2, 8], &[0.5; 16]),
                float_tensor("Bl", &[1, 16], &[0.0; 16]),
                float_tensor("Wls", &[1], &[0.1]),
            ],
        );
        let w = by_name(&m);
        let u = &w["Wq"].uses[0];
        assert_eq!((u.op_type.as_str(), u.role, u.kind), ("MatMulNBits", "B", WeightKind::Main));
        assert_eq!(w["scales"].uses[0].kind, WeightKind::Quant);
        // The default domain's Attention reads activations: its K is a generic input.
        assert_eq!(w["K"].uses[0].kind, WeightKind::Other);
        // quantize_dynamic's LSTM keeps int8 W and R with their scales.
        let roles: Vec<_> = ["Wl", "Rl", "Bl", "Wls"]
            .iter()
            .map(|n| (w[*n].uses[0].role, w[*n].uses[0].kind, w[*n].uses[0].tensor_role))
            .collect();
        assert_eq!(
            roles,
            [
                ("W", WeightKind::Main, TensorRole::Recurrent),
                ("R", WeightKind::Main, TensorRole::Recurrent),
                ("B", WeightKind::Bias, TensorRole::Bias),
                ("W_scale", WeightKind::Quant, TensorRole::Quant)
            ]
        );
    }

    #[test]
    fn a_recurrent_weight_built_with_slice_and_concat_is_its_constant() {
        let m = model(
            &[
                node("Slice", &["R0", "s0", "e0"], &["r_a"], "sa"),
                node("Slice", &["R0", "s1", "e1"], &["r_b"], "sb"),
                node("Concat", &["r_b", "r_a"], &["r_cat"], "cat"),
                node("Unsqueeze", &["r_cat", "ax"], &["r"], "un"),
                node("LSTM", &["x", "W0", "r", "B0"], &["y"], "lstm"),
            ],
            &[
                float_tensor("R0", &[8, 2], &[0.5; 16]),
                float_tensor("W0", &[1, 8, 3], &[0.1; 24]),
                float_tensor("B0", &[1, 16], &[0.0; 16]),
            ],
        );
        let w = by_name(&m);
        let r = &w["R0"];
        assert_eq!(r.uses.len(), 1, "one use whatever the number of paths");
        let u = &r.uses[0];
        assert_eq!(
            (u.op_type.as_str(), u.role, u.kind, u.tensor_role),
            ("LSTM", "R", WeightKind::Main, TensorRole::Recurrent)
        );
        let via: Vec<&str> = u.via.iter().map(|&n| m.nodes[n].op_type.as_str()).collect();
        assert_eq!(via, ["Slice", "Concat", "Unsqueeze"]);
        assert_eq!(w["W0"].tensor_role(), TensorRole::Recurrent);
        assert_eq!(w["B0"].tensor_role(), TensorRole::Bias);
    }

    #[test]
    fn float_constants_of_any_operator_get_a_role_by_structure() {
        let m = model(
            &[
                node("MatMul", &["x", "Wm"], &["h0"], "mm"),
                node("Add", &["h0", "bias"], &["h1"], "add_bias"),
                node("Add", &["h1", "pos"], &["h2"], "add_pos"),
                node("Mul", &["h2", "gamma"], &["h3"], "mul"),
                node("Add", &["h3", "eps"], &["h4"], "add_eps"),
                node("Pow", &["h4", "two"], &["y"], "pow"),
            ],
            &[
                float_tensor("Wm", &[4, 4], &[1.0; 16]),
                float_tensor("bias", &[4], &[1.0; 4]),
                float_tensor("pos", &[1, 3, 4], &[1.0; 12]),
                float_tensor("gamma", &[4], &[1.0; 4]),
                float_tensor("eps", &[], &[1e-5]),
                float_tensor("two", &[1], &[2.0]),
            ],
        );
        let w = by_name(&m);
        let role = |n: &str| w[n].tensor_role();
        assert_eq!(role("Wm"), TensorRole::Weight);
        assert_eq!(role("bias"), TensorRole::Bias);
        assert_eq!(role("pos"), TensorRole::PositionEmbedding);
        assert_eq!(role("gamma"), TensorRole::Scale);
        assert_eq!(role("eps"), TensorRole::Other);
        assert_eq!(role("two"), TensorRole::Other);
        let u = &w["bias"].uses[0];
        assert_eq!((u.op_type.as_str(), u.role, u.kind), ("Add", "input1", WeightKind::Other));
    }

    #[test]
    fn integer_constants_outside_the_role_table_are_not_weights() {
        let mut shape = Vec::new();
        put_len_field(&mut shape, 8, b"shape");
        shape.extend_from_slice(&[0x08, 0x01, 0x10, 0x07]); // dims [1], data_type INT64
        put_len_field(&mut shape, 9, &2i64.to_le_bytes());
        let m = model(&[node("Reshape", &["x", "shape"], &["y"], "r")], &[shape]);
        assert!(discover(&m).is_empty());
    }

    #[test]
    fn a_constant_only_a_pass_through_consumes_is_still_found() {
        let m = model(&[node("Concat", &["x", "tok"], &["y"], "cat")], &[float_tensor("tok", &[1, 4], &[0.0; 4])]);
        let w = by_name(&m);
        let u = &w["tok"].uses[0];
        assert_eq!((u.op_type.as_str(), u.role, u.tensor_role), ("Concat", "input1", TensorRole::Other));
    }

    #[test]
    fn cycles_of_pass_through_nodes_end() {
        let m = model(
            &[
                node("Identity", &["b"], &["a"], "i1"),
                node("Identity", &["a"], &["b"], "i2"),
                node("MatMul", &["x", "a"], &["y"], "mm"),
            ],
            &[],
        );
        assert!(discover(&m).is_empty());
    }
}
