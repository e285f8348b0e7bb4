use std::collections::{BTreeMap, HashMap, HashSet};

use super::scope::{lookup, Calls, Def};
use super::{TensorRole, WeightKind, WeightUse};
use crate::model::{GraphId, Model, NodeId, TensorId};

/// A value, named as the graph that defines it.
type Value<'a> = (GraphId, &'a str);

/// The data flow of the main graph and every subgraph inside it (`If` branches, `Loop`
/// and `Scan` bodies), with names resolved through the scopes.
struct Flow<'a> {
    model: &'a Model,
    /// Per graph: what each name it defines is ([`scope_of`](super::scope::scope_of)).
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

/// The weights of the first and of the last layer (see [`Layers`](super::Layers)).
pub(super) fn end_layers<'a>(
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
