//! Name lookups over the main graph, and node attributes read from the model's bytes.
//!
//! The model index of `onnx-protect-format` keeps only the attributes that hold tensors
//! or graphs; the integer attributes an output layer depends on (`transB`, `axis`,
//! `perm`, ...) are read here from the node's own bytes.

use std::collections::HashMap;
use std::ops::Range;

use onnx_protect_format::model::{GraphKind, NodeId};
use onnx_protect_format::wire::{self, FieldReader, WireType};
use onnx_protect_format::{Model, TensorId};

use crate::error::{LockError, Result};

/// What a name of the main graph is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Def {
    /// An initializer, or the `value` of a `Constant` node (the node is given).
    Constant(TensorId, Option<NodeId>),
    /// The output of a node other than `Constant`.
    Node(NodeId),
    /// A graph input without an initializer.
    Input,
    /// A sparse initializer (never locked).
    Sparse,
}

/// The value of one node attribute, as far as output layers need it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Other,
}

/// The main graph: what each name is, who reads it, and where each node's bytes are.
pub(crate) struct Graph<'m> {
    pub model: &'m Model,
    pub main: usize,
    defs: HashMap<&'m str, Def>,
    /// Every reader of a name, in any graph of the model (conservative across scopes).
    consumers: HashMap<&'m str, Vec<(NodeId, usize)>>,
    /// The byte range of each main-graph node's `NodeProto`.
    node_bytes: HashMap<NodeId, Range<u64>>,
}

impl<'m> Graph<'m> {
    pub fn new(model: &'m Model) -> Result<Graph<'m>> {
        let main = model
            .graphs
            .iter()
            .position(|g| g.kind == GraphKind::Main)
            .ok_or_else(|| LockError::NotFound { found: "the model has no main graph".into() })?;
        let g = &model.graphs[main];
        let mut defs: HashMap<&str, Def> = HashMap::new();
        for i in &g.inputs {
            defs.insert(i.as_str(), Def::Input);
        }
        for &n in &g.nodes {
            let node = &model.nodes[n];
            let value = (node.is_onnx() && node.op_type == "Constant")
                .then(|| node.attributes.iter().find(|a| a.name == "value").and_then(|a| a.tensors.first().copied()))
                .flatten();
            for o in node.outputs.iter().filter(|o| !o.is_empty()) {
                defs.insert(o.as_str(), value.map_or(Def::Node(n), |t| Def::Constant(t, Some(n))));
            }
        }
        for &t in &g.initializers {
            defs.insert(model.tensors[t].name.as_str(), Def::Constant(t, None));
        }
        for &(v, _) in &g.sparse_initializers {
            defs.insert(model.tensors[v].name.as_str(), Def::Sparse);
        }
        let mut consumers: HashMap<&str, Vec<(NodeId, usize)>> = HashMap::new();
        for node in &model.nodes {
            for (i, name) in node.inputs.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
                consumers.entry(name.as_str()).or_default().push((node.id, i));
            }
        }
        let node_bytes = node_ranges(model, main)?;
        Ok(Graph { model, main, defs, consumers, node_bytes })
    }

    /// What `name` is in the main graph.
    pub fn def(&self, name: &str) -> Option<Def> {
        self.defs.get(name).copied()
    }

    /// The nodes (of any graph) reading `name`, with the input index.
    pub fn consumers(&self, name: &str) -> &[(NodeId, usize)] {
        self.consumers.get(name).map_or(&[], Vec::as_slice)
    }

    /// The main graph's outputs.
    pub fn outputs(&self) -> &'m [String] {
        &self.model.graphs[self.main].outputs
    }

    /// How many times `name` is read: by nodes of any graph, and as a main graph output.
    pub fn uses(&self, name: &str) -> usize {
        self.consumers(name).len() + self.outputs().iter().filter(|o| *o == name).count()
    }

    /// The integer-valued attributes of a main-graph node, by name.
    pub fn attrs(&self, n: NodeId) -> Result<HashMap<String, Attr>> {
        let node = &self.model.nodes[n];
        let buf = self.model.bytes();
        let bad = |_| LockError::Unsupported {
            head: node.label(),
            reason: "its attributes are not well-formed protobuf".into(),
        };
        let range = self.node_bytes.get(&n).cloned().ok_or_else(|| LockError::Unsupported {
            head: node.label(),
            reason: "the node is not in the main graph".into(),
        })?;
        let mut out = HashMap::new();
        let mut r = FieldReader::new(buf, range).map_err(bad)?;
        while let Some(f) = r.next_field().map_err(bad)? {
            if f.number != 5 || f.wire != WireType::Len {
                continue;
            }
            let (mut name, mut int, mut ints, mut other) = (String::new(), None, Vec::new(), false);
            let mut ar = FieldReader::new(buf, f.value_range()).map_err(bad)?;
            while let Some(a) = ar.next_field().map_err(bad)? {
                match (a.number, a.wire) {
                    (1, WireType::Len) => {
                        let bytes = buf.get(a.value_start as usize..a.end as usize).unwrap_or_default();
                        name = String::from_utf8_lossy(bytes).into_owned();
                    }
                    (3, WireType::Varint) => int = Some(a.scalar as i64),
                    (8, WireType::Varint) => ints.push(a.scalar as i64),
                    (8, WireType::Len) => {
                        wire::for_each_packed_varint(buf, a.value_range(), |v| ints.push(v as i64)).map_err(bad)?
                    }
                    // A reference to a function's attribute: its value is not known here.
                    (21, _) => other = true,
                    _ => {}
                }
            }
            let value = match (other, int, ints.is_empty()) {
                (true, _, _) => Attr::Other,
                (false, Some(i), true) => Attr::Int(i),
                (false, None, false) => Attr::Ints(ints),
                _ => Attr::Other,
            };
            out.insert(name, value);
        }
        Ok(out)
    }

    /// Integer attribute `name` of node `n`, `default` when absent. An attribute present
    /// with another type (or a reference to a function attribute) is an error.
    pub fn int_attr(&self, n: NodeId, name: &str, default: i64) -> Result<i64> {
        match self.attrs(n)?.remove(name) {
            None => Ok(default),
            Some(Attr::Int(i)) => Ok(i),
            Some(_) => Err(LockError::Unsupported {
                head: self.model.nodes[n].label(),
                reason: format!("attribute '{name}' is not a plain integer"),
            }),
        }
    }

    /// Integer-list attribute `name` of node `n`, `None` when absent.
    pub fn ints_attr(&self, n: NodeId, name: &str) -> Result<Option<Vec<i64>>> {
        match self.attrs(n)?.remove(name) {
            None => Ok(None),
            Some(Attr::Ints(v)) => Ok(Some(v)),
            Some(_) => Err(LockError::Unsupported {
                head: self.model.nodes[n].label(),
                reason: format!("attribute '{name}' is not a list of integers"),
            }),
        }
    }

    /// The values of a constant integer tensor (INT64 or INT32, any storage).
    pub fn int_values(&self, t: TensorId) -> Result<Vec<i64>> {
        use onnx_protect_format::DataType;
        let tensor = &self.model.tensors[t];
        let bytes = self.model.tensor_bytes(t)?;
        Ok(match tensor.data_type {
            DataType::Int64 => {
                bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()
            }
            DataType::Int32 => {
                bytes.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap_or([0; 4])))).collect()
            }
            _ => {
                return Err(LockError::Mismatch(format!(
                    "tensor '{}' is {}, not an integer list",
                    tensor.name, tensor.data_type
                )))
            }
        })
    }
}

/// The byte range of each `NodeProto` of the main graph (`ModelProto.graph` = field 7,
/// `GraphProto.node` = field 1), matched to the index's nodes by position.
fn node_ranges(model: &Model, main: usize) -> Result<HashMap<NodeId, Range<u64>>> {
    let buf = model.bytes();
    let bad = |_| LockError::NotFound { found: "the model's graph is not well-formed protobuf".into() };
    let mut top = FieldReader::new(buf, 0..buf.len() as u64).map_err(bad)?;
    let mut graph = None;
    while let Some(f) = top.next_field().map_err(bad)? {
        if f.number == 7 && f.wire == WireType::Len {
            graph = Some(f.value_range());
        }
    }
    let Some(graph) = graph else { return Ok(HashMap::new()) };
    let nodes = &model.graphs[main].nodes;
    let mut out = HashMap::with_capacity(nodes.len());
    let mut r = FieldReader::new(buf, graph).map_err(bad)?;
    let mut k = 0usize;
    while let Some(f) = r.next_field().map_err(bad)? {
        if f.number == 1 && f.wire == WireType::Len {
            if let Some(&n) = nodes.get(k) {
                out.insert(n, f.value_range());
            }
            k += 1;
        }
    }
    Ok(out)
}
