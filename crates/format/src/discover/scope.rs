use std::collections::{HashMap, HashSet};

use super::table::{data_inputs, is_passthrough};
use crate::model::{GraphId, Model, NodeId, Origin, TensorId};

/// What a name is in the graph that defines it.
#[derive(Clone, Copy)]
pub(super) enum Def {
    /// An initializer or sparse initializer.
    Tensor(TensorId),
    /// A node's output.
    Node(NodeId),
    /// A formal input of the graph (a function's, a subgraph's or the model's).
    Input,
}

pub(super) fn scope_of(model: &Model, gid: GraphId) -> HashMap<&str, Def> {
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
pub(super) struct Calls<'a> {
    model: &'a Model,
    /// Function body graph by `(domain, name)`.
    functions: HashMap<(&'a str, &'a str), GraphId>,
    /// Call nodes by the function body graph they call.
    calls: HashMap<GraphId, Vec<NodeId>>,
}

impl<'a> Calls<'a> {
    pub(super) fn new(model: &'a Model) -> Self {
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
    pub(super) fn is_call(&self, n: NodeId) -> bool {
        let node = &self.model.nodes[n];
        !node.is_onnx() && self.functions.contains_key(&(node.domain.as_str(), node.op_type.as_str()))
    }
}

/// Most nodes one resolution walks through (a hostile graph cannot make it slow).
const MAX_WALK: usize = 4096;

/// Every constant that reaches value `name`, as seen from graph `gid`, through
/// pass-through nodes: `(tensor, the pass-through nodes on the first path found,
/// nearest the constant first)`, each tensor once.
pub(super) fn resolve_all<'a>(
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
pub(super) fn lookup(model: &Model, scopes: &[HashMap<&str, Def>], gid: GraphId, name: &str) -> Option<(GraphId, Def)> {
    let mut g = Some(gid);
    while let Some(id) = g {
        if let Some(def) = scopes[id].get(name) {
            return Some((id, *def));
        }
        g = model.graphs[id].parent;
    }
    None
}
