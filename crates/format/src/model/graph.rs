//! What the index holds besides tensors: graphs, their declared input and output types,
//! and nodes with the attributes that hold tensors or graphs.

use super::{GraphId, NodeId, TensorId};

/// What kind of graph a [`Graph`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphKind {
    /// `ModelProto.graph`.
    Main,
    /// A graph-valued attribute of a node (`If` branches, `Loop`/`Scan` bodies, ...).
    Subgraph { node: NodeId, attribute: String },
    /// The body of a model-local `FunctionProto`.
    Function { domain: String, name: String },
    /// `TrainingInfoProto.initialization` or `.algorithm`.
    Training { index: usize, part: &'static str },
}

/// A graph (or function body) and what it defines.
#[derive(Debug, Clone)]
pub struct Graph {
    pub id: GraphId,
    /// The graph whose names are visible inside this one.
    pub parent: Option<GraphId>,
    pub kind: GraphKind,
    pub name: String,
    /// Human-readable path, e.g. `main/If_0.then_branch`.
    pub path: String,
    pub depth: usize,
    pub nodes: Vec<NodeId>,
    pub initializers: Vec<TensorId>,
    /// `(values, indices)` tensors of each sparse initializer.
    pub sparse_initializers: Vec<(TensorId, Option<TensorId>)>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// The declared type of each of `inputs` and `outputs` (graphs; empty for functions).
    pub input_types: Vec<ValueType>,
    pub output_types: Vec<ValueType>,
}

/// The declared type of a graph input or output (`ValueInfoProto.type`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ValueType {
    /// No type given.
    #[default]
    Unknown,
    /// A tensor: element type code and, if given, the shape (`None` dims: unnamed).
    Tensor { elem_type: i32, shape: Option<Vec<Dim>> },
    /// A sequence, map, optional or sparse tensor (`TypeProto` field number).
    Other(u32),
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Value(i64),
    Param(String),
    Unknown,
}

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueType::Unknown => write!(f, "?"),
            ValueType::Other(4) => write!(f, "sequence"),
            ValueType::Other(5) => write!(f, "map"),
            ValueType::Other(8) => write!(f, "sparse tensor"),
            ValueType::Other(9) => write!(f, "optional"),
            ValueType::Other(n) => write!(f, "type #{n}"),
            ValueType::Tensor { elem_type, shape } => {
                match crate::DataType::from_i32(*elem_type) {
                    Some(t) => write!(f, "{}", t.name())?,
                    None => write!(f, "type {elem_type}")?,
                }
                if let Some(dims) = shape {
                    let d: Vec<String> = dims
                        .iter()
                        .map(|d| match d {
                            Dim::Value(v) => v.to_string(),
                            Dim::Param(p) => p.clone(),
                            Dim::Unknown => "?".into(),
                        })
                        .collect();
                    write!(f, "[{}]", d.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

/// A node attribute that holds tensors or graphs (other attributes are not indexed).
#[derive(Debug, Clone)]
pub struct Attribute {
    pub name: String,
    pub tensors: Vec<TensorId>,
    pub graphs: Vec<GraphId>,
}

/// A node of some graph.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: NodeId,
    pub graph: GraphId,
    pub name: String,
    pub op_type: String,
    pub domain: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute>,
}

impl Node {
    /// Whether the node belongs to the default ONNX domain.
    pub fn is_onnx(&self) -> bool {
        self.domain.is_empty() || self.domain == "ai.onnx"
    }
    /// A label for messages: the node name, or `#index` when it has none.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            format!("#{} ({})", self.id, self.op_type)
        } else {
            format!("{} ({})", self.name, self.op_type)
        }
    }
}
