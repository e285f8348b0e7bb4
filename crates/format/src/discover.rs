//! Which tensors are weights, and which operators use them.
//!
//! A *constant* is an initializer, a sparse initializer, or the `value` tensor of a
//! `Constant` node, found by name in the node's graph or any enclosing graph
//! (innermost scope first). A constant passed through `DequantizeLinear`, `Cast`,
//! `Transpose`, `Reshape`, `Identity`, `Squeeze`, `Unsqueeze` or `Flatten`
//! (their data input) is still that constant. A *weight* is a constant that an
//! operator in the role table below consumes in a weight role.

use std::collections::{BTreeMap, HashMap};

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
}

impl WeightKind {
    pub fn name(self) -> &'static str {
        match self {
            WeightKind::Main => "main",
            WeightKind::Bias => "bias",
            WeightKind::Norm => "norm",
            WeightKind::Quant => "quant",
        }
    }
}

/// `(input index, role name, kind)` for each weight input of an ONNX operator.
pub fn roles(op_type: &str) -> &'static [(usize, &'static str, WeightKind)] {
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
        _ => &[],
    }
}

/// Operators whose first input passes a constant through to their output.
pub fn is_passthrough(op_type: &str) -> bool {
    matches!(
        op_type,
        "DequantizeLinear" | "Cast" | "Transpose" | "Reshape" | "Identity" | "Squeeze" | "Unsqueeze" | "Flatten"
    )
}

/// One use of a weight by an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightUse {
    pub node: NodeId,
    pub op_type: String,
    pub role: &'static str,
    pub kind: WeightKind,
    pub input_index: usize,
    /// Pass-through nodes between the constant and this node, nearest the constant first.
    pub via: Vec<NodeId>,
}

/// A constant tensor consumed as a weight, with all its users.
#[derive(Debug, Clone)]
pub struct Weight {
    pub tensor: TensorId,
    pub uses: Vec<WeightUse>,
}

impl Weight {
    /// The operator type the weight is attributed to in per-op summaries: its first user.
    pub fn primary_op(&self) -> &str {
        self.uses.first().map(|u| u.op_type.as_str()).unwrap_or("")
    }
}

#[derive(Clone, Copy)]
enum Def {
    Tensor(TensorId),
    Node(NodeId),
}

/// Finds every weight in the model. Each tensor appears once, with all its uses in
/// graph order.
pub fn discover(model: &Model) -> Vec<Weight> {
    let scopes: Vec<HashMap<&str, Def>> = model.graphs.iter().map(|g| scope_of(model, g.id)).collect();
    let mut found: BTreeMap<TensorId, Vec<WeightUse>> = BTreeMap::new();
    for node in &model.nodes {
        if !node.is_onnx() {
            continue;
        }
        for &(idx, role, kind) in roles(&node.op_type) {
            let Some(name) = node.inputs.get(idx).filter(|n| !n.is_empty()) else { continue };
            if let Some((tensor, via)) = resolve(model, &scopes, node.graph, name, 0) {
                found.entry(tensor).or_default().push(WeightUse {
                    node: node.id,
                    op_type: node.op_type.clone(),
                    role,
                    kind,
                    input_index: idx,
                    via,
                });
            }
        }
    }
    found.into_iter().map(|(tensor, uses)| Weight { tensor, uses }).collect()
}

fn scope_of(model: &Model, gid: GraphId) -> HashMap<&str, Def> {
    let g = &model.graphs[gid];
    let mut m = HashMap::new();
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

/// Resolves `name` as seen from graph `gid` to a constant tensor, following pass-through nodes.
fn resolve(
    model: &Model,
    scopes: &[HashMap<&str, Def>],
    gid: GraphId,
    name: &str,
    depth: usize,
) -> Option<(TensorId, Vec<NodeId>)> {
    if depth > 16 {
        return None;
    }
    let mut g = Some(gid);
    while let Some(id) = g {
        if let Some(def) = scopes[id].get(name) {
            return match *def {
                Def::Tensor(t) => Some((t, Vec::new())),
                Def::Node(n) => {
                    let node = &model.nodes[n];
                    if !node.is_onnx() {
                        return None;
                    }
                    if node.op_type == "Constant" {
                        let t = node.attributes.iter().find(|a| a.name == "value" || a.name == "sparse_value")?;
                        let tensor = *t.tensors.first()?;
                        debug_assert!(matches!(model.tensors[tensor].origin, Origin::Attribute { .. }));
                        Some((tensor, Vec::new()))
                    } else if is_passthrough(&node.op_type) {
                        let input = node.inputs.first().filter(|s| !s.is_empty())?;
                        let (t, mut via) = resolve(model, scopes, node.graph, input, depth + 1)?;
                        via.push(n);
                        Some((t, via))
                    } else {
                        None
                    }
                }
            };
        }
        g = model.graphs[id].parent;
    }
    None
}
