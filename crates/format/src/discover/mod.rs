//! Which tensors are weights, and which operators use them.
//!
//! A *constant* is an initializer, a sparse initializer, or the `value` tensor of a
//! `Constant` node, found by name in the node's graph or any enclosing graph
//! (innermost scope first). A constant passed through a *pass-through* operator is
//! still that constant: its data input flows to the output rearranged, converted
//! or cut, never combined with other values. The pass-through operators and their
//! data inputs are `DequantizeLinear`, `QuantizeLinear`, `Cast`, `Transpose`,
//! `Reshape`, `Identity`, `Squeeze`, `Unsqueeze`, `Flatten`, `Slice`, `Split`,
//! `Expand`, `Tile` (input 0) and `Concat` (every input). So a recurrent weight `R`
//! that an exporter builds at run time from a constant with `Slice`, `Concat` and
//! `Unsqueeze` is that constant.
//!
//! A *weight* is a constant that an operator consumes, other than through a
//! pass-through operator, and that is either
//!
//! * in a weight role of the role table ([`roles`]): the kernel of a `Conv`, the `B`
//!   of a `Gemm`, the `R` of an `LSTM`, ... (any element type), or
//! * a floating-point tensor, in any input of any operator (the bias a PyTorch
//!   export adds with `Add`, a position embedding, a scale fed to `Mul`, ...), or an
//!   integer one that reaches it dequantized (`DequantizeLinear` on the way and no
//!   `QuantizeLinear` after it: the `Add` bias of a QDQ-quantized model); its use has
//!   [`WeightKind::Other`] and the input's generic role name `input<i>`.
//!
//! Integer constants outside the role table (shapes, axes, indices) are not weights, nor
//! are the floating-point inputs that only give an output's shape (a `Resize`'s `roi` and
//! `scales`, an `Upsample`'s `scales`).
//!
//! Every weight also gets a [`TensorRole`]: what it is for in the model, derived
//! from the operator and input that consume it (see [`TensorRole`] for the rules).

use std::collections::{BTreeMap, HashMap};

use crate::model::{Model, NodeId, TensorId};

mod layers;
mod scope;
mod table;
#[cfg(test)]
mod tests;

use layers::end_layers;
use scope::{resolve_all, scope_of, Calls, Def};
use table::{data_inputs, role_of};
pub use table::{generic_role, is_passthrough, is_role_of, roles, roles_in, TensorRole, WeightKind};

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

/// Whether input `idx` of `n` is a floating-point input that only gives the output's shape.
fn gives_a_shape(n: &crate::model::Node, idx: usize) -> bool {
    n.is_onnx() && matches!((n.op_type.as_str(), idx), ("Resize", 1 | 2) | ("Upsample", 1))
}

/// Whether the constant `t` reaches its consumer as floating-point values through the
/// pass-through nodes `via` (nearest the constant first): its own type, else dequantized
/// on the way (a `QuantizeLinear` after that makes it integer again).
fn arrives_as_float(model: &Model, t: &crate::model::Tensor, via: &[NodeId]) -> bool {
    via.iter().fold(t.data_type.is_float(), |float, &n| match model.nodes[n].op_type.as_str() {
        "DequantizeLinear" => true,
        "QuantizeLinear" => false,
        _ => float,
    })
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
                None if arrives_as_float(model, t, &via) && !gives_a_shape(n, idx) => {
                    (generic_role(idx), WeightKind::Other)
                }
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
