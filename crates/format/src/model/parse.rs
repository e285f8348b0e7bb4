//! The zero-copy walk over a `ModelProto`: graphs, functions, training graphs, nodes and
//! attributes, with the locator, the enclosing length prefixes and a readable context of
//! every field it descends into. `TensorProto` fields are read in [`tensor_proto`].

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use super::external::PendingExternal;
use super::{
    Attribute, Backing, Dim, Graph, GraphId, GraphKind, MetadataEntry, Model, Node, NodeId, Opset, Origin, Sizes, Step,
    Tensor, TensorId, ValueType, MAX_GRAPH_DEPTH,
};
use crate::error::{FormatError, Result};
use crate::progress::Progress;
use crate::wire::{Container, Field, FieldReader, WireError, WireType};

mod tensor_proto;
#[cfg(test)]
mod tests;

impl Model {
    pub(super) fn parse(
        backing: Backing,
        path: Option<PathBuf>,
        dir: Option<PathBuf>,
        external: Option<&Sizes<'_>>,
        progress: &dyn Progress,
    ) -> Result<Model> {
        let mut model = Model {
            backing,
            file: None,
            path,
            dir,
            ir_version: None,
            producer_name: String::new(),
            producer_version: String::new(),
            domain: String::new(),
            model_version: None,
            opsets: Vec::new(),
            metadata: Vec::new(),
            graphs: Vec::new(),
            nodes: Vec::new(),
            tensors: Vec::new(),
            external_files: Vec::new(),
        };
        let mut header = Header::default();
        let mut p = Parser {
            buf: match &model.backing {
                Backing::Mapped(m) => &m[..],
                Backing::Owned(v) => &v[..],
            },
            graphs: Vec::new(),
            nodes: Vec::new(),
            tensors: Vec::new(),
            pending_external: Vec::new(),
            progress,
        };
        progress.start("parse", p.buf.len() as u64);
        let top = p.parse_model(&mut header).map_err(|e| crate::sniff::explain(p.buf, e))?;
        progress.finish();
        let Parser { graphs, nodes, tensors, pending_external, .. } = p;
        model.ir_version = header.ir_version;
        model.producer_name = header.producer_name;
        model.producer_version = header.producer_version;
        model.domain = header.domain;
        model.model_version = header.model_version;
        model.opsets = header.opsets;
        model.metadata = header.metadata;
        model.graphs = graphs;
        model.nodes = nodes;
        model.tensors = tensors;
        if !top {
            return Err(crate::sniff::explain(model.bytes(), FormatError::NoGraph));
        }
        model.resolve_external(pending_external, external)?;
        model.check_duplicates()?;
        Ok(model)
    }
}

/// Whether `AttributeProto` field `number` holds a tensor or a graph (`t`, `g`, `tensors`,
/// `graphs`, `sparse_tensor`, `sparse_tensors`).
fn holds_tensor_or_graph(number: u32) -> bool {
    matches!(number, 5 | 6 | 10 | 11 | 22 | 23)
}

pub(super) fn wire_err(e: WireError, context: &dyn fmt::Display) -> FormatError {
    match e {
        WireError::Truncated { at } => FormatError::Truncated { at, context: context.to_string() },
        WireError::Malformed { at, reason } => {
            FormatError::Malformed { at, context: context.to_string(), reason: reason.to_string() }
        }
    }
}

#[derive(Default)]
struct Header {
    ir_version: Option<i64>,
    producer_name: String,
    producer_version: String,
    domain: String,
    model_version: Option<i64>,
    opsets: Vec<Opset>,
    metadata: Vec<MetadataEntry>,
}

struct Parser<'a> {
    buf: &'a [u8],
    progress: &'a dyn Progress,
    graphs: Vec<Graph>,
    nodes: Vec<Node>,
    tensors: Vec<Tensor>,
    pending_external: Vec<PendingExternal>,
}

/// Per-field occurrence counter used to build locators (a message has few distinct
/// field numbers: a list searched in order).
#[derive(Default)]
struct Occurrences(Vec<(u32, u32)>);

impl Occurrences {
    fn next(&mut self, field: u32) -> u32 {
        match self.0.iter_mut().find(|(f, _)| *f == field) {
            Some((_, c)) => {
                *c += 1;
                *c - 1
            }
            None => {
                self.0.push((field, 1));
                0
            }
        }
    }
}

/// Where we are, for locators, length-prefix rewriting and error messages.
#[derive(Clone)]
struct Path2<'c> {
    steps: Vec<Step>,
    ancestors: Vec<Container>,
    context: Ctx<'c>,
}

impl Path2<'_> {
    fn child<'c>(&self, f: &Field, index: u32, context: Ctx<'c>) -> Path2<'c> {
        let mut steps = Vec::with_capacity(self.steps.len() + 1);
        steps.extend_from_slice(&self.steps);
        steps.push(Step { field: f.number, index });
        let mut ancestors = Vec::with_capacity(self.ancestors.len() + 1);
        ancestors.extend_from_slice(&self.ancestors);
        ancestors.push(Container::from(f));
        Path2 { steps, ancestors, context }
    }
}

/// The readable context of a place in the model, made into text only for an error (most
/// places never need theirs, and a model has many).
#[derive(Clone, Copy)]
enum Ctx<'c> {
    /// The text as it is.
    Text(&'c str),
    /// `"{within} {what} #{index}"`: the `index`th field of one kind (`initializer`, `node`).
    Item { within: &'c Ctx<'c>, what: &'static str, index: u32 },
    /// `"{within} {what}"`: a part (a sparse tensor's `values` or `indices`).
    Part { within: &'c Ctx<'c>, what: &'static str },
    /// `"{within} > attribute '{name}'"`.
    Attribute { within: &'c Ctx<'c>, name: &'c str },
}

impl fmt::Display for Ctx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ctx::Text(t) => f.write_str(t),
            Ctx::Item { within, what, index } => write!(f, "{within} {what} #{index}"),
            Ctx::Part { within, what } => write!(f, "{within} {what}"),
            Ctx::Attribute { within, name } => write!(f, "{within} > attribute '{name}'"),
        }
    }
}

impl<'a> Parser<'a> {
    fn reader(&self, range: Range<u64>, ctx: &dyn fmt::Display) -> Result<FieldReader<'a>> {
        FieldReader::new(self.buf, range).map_err(|e| wire_err(e, ctx))
    }

    fn next(&self, r: &mut FieldReader<'a>, ctx: &dyn fmt::Display) -> Result<Option<Field>> {
        r.next_field().map_err(|e| wire_err(e, ctx))
    }

    fn string(&self, f: &Field, ctx: &dyn fmt::Display, what: &str) -> Result<String> {
        self.expect(f, WireType::Len, ctx, what)?;
        let bytes = &self.buf[f.value_start as usize..f.end as usize];
        std::str::from_utf8(bytes).map(str::to_string).map_err(|_| FormatError::Malformed {
            at: f.value_start,
            context: ctx.to_string(),
            reason: format!("{what} is not valid UTF-8"),
        })
    }

    fn expect(&self, f: &Field, wire: WireType, ctx: &dyn fmt::Display, what: &str) -> Result<()> {
        if f.wire != wire {
            return Err(FormatError::Malformed {
                at: f.start,
                context: ctx.to_string(),
                reason: format!("{what} (field {}) has wire type {:?}, expected {:?}", f.number, f.wire, wire),
            });
        }
        Ok(())
    }

    fn varint_field(&self, f: &Field, ctx: &dyn fmt::Display, what: &str) -> Result<u64> {
        self.expect(f, WireType::Varint, ctx, what)?;
        Ok(f.scalar)
    }

    /// Returns whether a graph was found.
    fn parse_model(&mut self, model: &mut Header) -> Result<bool> {
        let ctx: &dyn fmt::Display = &"ModelProto";
        let mut r = self.reader(0..self.buf.len() as u64, ctx)?;
        let root = Path2 { steps: Vec::new(), ancestors: Vec::new(), context: Ctx::Text("model") };
        let mut occ = Occurrences::default();
        let mut graph_field: Option<(Field, u32)> = None;
        let mut functions = Vec::new();
        let mut training = Vec::new();
        while let Some(f) = self.next(&mut r, ctx)? {
            let idx = occ.next(f.number);
            match f.number {
                1 => model.ir_version = Some(self.varint_field(&f, ctx, "ir_version")? as i64),
                2 => model.producer_name = self.string(&f, ctx, "producer_name")?,
                3 => model.producer_version = self.string(&f, ctx, "producer_version")?,
                4 => model.domain = self.string(&f, ctx, "domain")?,
                5 => model.model_version = Some(self.varint_field(&f, ctx, "model_version")? as i64),
                7 => {
                    self.expect(&f, WireType::Len, ctx, "graph")?;
                    if graph_field.is_some() {
                        return Err(FormatError::Malformed {
                            at: f.start,
                            context: ctx.to_string(),
                            reason: "the graph field appears twice".into(),
                        });
                    }
                    graph_field = Some((f, idx));
                }
                8 => {
                    self.expect(&f, WireType::Len, ctx, "opset_import")?;
                    let op = self.opset(&f)?;
                    model.opsets.push(op);
                }
                14 => {
                    self.expect(&f, WireType::Len, ctx, "metadata_props")?;
                    let (key, value) = self.string_pair(&f, &"ModelProto.metadata_props")?;
                    model.metadata.push(MetadataEntry { key, value, range: f.range() });
                }
                20 => {
                    self.expect(&f, WireType::Len, ctx, "training_info")?;
                    training.push((f, idx));
                }
                25 => {
                    self.expect(&f, WireType::Len, ctx, "functions")?;
                    functions.push((f, idx));
                }
                _ => {}
            }
        }
        let Some((gf, gidx)) = graph_field else {
            return Ok(false);
        };
        let path = root.child(&gf, gidx, Ctx::Text("graph main"));
        self.parse_graph(&gf, &path, None, GraphKind::Main, 0, "main".into())?;
        let main = 0;
        for (f, idx) in functions {
            let c = format!("function #{idx}");
            self.parse_function(&f, &root.child(&f, idx, Ctx::Text(&c)), idx)?;
        }
        for (n, (f, idx)) in training.into_iter().enumerate() {
            let c = format!("training_info #{n}");
            self.parse_training(&f, &root.child(&f, idx, Ctx::Text(&c)), n, main)?;
        }
        Ok(true)
    }

    /// An `opset_import` entry (`OperatorSetIdProto`).
    fn opset(&self, f: &Field) -> Result<Opset> {
        let mut op = Opset { domain: String::new(), version: 0 };
        let c: &dyn fmt::Display = &"ModelProto.opset_import";
        let mut rr = self.reader(f.value_range(), c)?;
        while let Some(g) = self.next(&mut rr, c)? {
            match g.number {
                1 => op.domain = self.string(&g, c, "domain")?,
                2 => op.version = self.varint_field(&g, c, "version")? as i64,
                _ => {}
            }
        }
        Ok(op)
    }

    /// The `n`-th `TrainingInfoProto`: its `initialization` and `algorithm` graphs, at
    /// level 1 below the main graph `main`, whose names they see.
    fn parse_training(&mut self, f: &Field, tpath: &Path2, n: usize, main: GraphId) -> Result<()> {
        let c: &dyn fmt::Display = &"TrainingInfoProto";
        let mut rr = self.reader(f.value_range(), c)?;
        let mut occ = Occurrences::default();
        while let Some(g) = self.next(&mut rr, c)? {
            let i = occ.next(g.number);
            let part = match g.number {
                1 => "initialization",
                2 => "algorithm",
                _ => continue,
            };
            self.expect(&g, WireType::Len, c, part)?;
            let c = format!("training_info #{n} {part}");
            let p = tpath.child(&g, i, Ctx::Text(&c));
            let kind = GraphKind::Training { index: n, part };
            self.parse_graph(&g, &p, Some(main), kind, 1, format!("training{n}.{part}"))?;
        }
        Ok(())
    }

    fn string_pair(&self, f: &Field, ctx: &dyn fmt::Display) -> Result<(String, String)> {
        self.string_pair_at(f, ctx).map(|(k, v, _)| (k, v))
    }

    /// A `StringStringEntryProto`: key, value, and the range of the (last) `value` field.
    fn string_pair_at(&self, f: &Field, ctx: &dyn fmt::Display) -> Result<(String, String, Option<Range<u64>>)> {
        let mut key = String::new();
        let mut value = String::new();
        let mut at = None;
        let mut rr = self.reader(f.value_range(), ctx)?;
        while let Some(g) = self.next(&mut rr, ctx)? {
            match g.number {
                1 => key = self.string(&g, ctx, "key")?,
                2 => {
                    value = self.string(&g, ctx, "value")?;
                    at = Some(g.range());
                }
                _ => {}
            }
        }
        Ok((key, value, at))
    }

    fn new_graph(&mut self, parent: Option<GraphId>, kind: GraphKind, depth: usize, path: String) -> GraphId {
        let id = self.graphs.len();
        self.graphs.push(Graph {
            id,
            parent,
            kind,
            name: String::new(),
            path,
            depth,
            nodes: Vec::new(),
            initializers: Vec::new(),
            sparse_initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            input_types: Vec::new(),
            output_types: Vec::new(),
        });
        id
    }

    /// `ValueInfoProto.type` (`TypeProto`): a tensor's element type and shape. Fields
    /// of the wrong wire type are left out (the type is informational).
    fn value_type(&self, f: &Field, ctx: &dyn fmt::Display) -> Result<ValueType> {
        let mut out = ValueType::Unknown;
        let mut rr = self.reader(f.value_range(), ctx)?;
        while let Some(g) = self.next(&mut rr, ctx)? {
            match (g.number, g.wire) {
                (1, WireType::Len) => {
                    let (mut elem_type, mut shape) = (0i32, None);
                    let mut r2 = self.reader(g.value_range(), ctx)?;
                    while let Some(h) = self.next(&mut r2, ctx)? {
                        match (h.number, h.wire) {
                            (1, WireType::Varint) => elem_type = h.scalar as i32,
                            (2, WireType::Len) => shape = Some(self.shape(&h, ctx)?),
                            _ => {}
                        }
                    }
                    out = ValueType::Tensor { elem_type, shape };
                }
                (n @ (4 | 5 | 8 | 9), WireType::Len) => out = ValueType::Other(n),
                _ => {}
            }
        }
        Ok(out)
    }

    /// `TensorShapeProto`: its dimensions.
    fn shape(&self, f: &Field, ctx: &dyn fmt::Display) -> Result<Vec<Dim>> {
        let mut dims = Vec::new();
        let mut rr = self.reader(f.value_range(), ctx)?;
        while let Some(g) = self.next(&mut rr, ctx)? {
            if (g.number, g.wire) != (1, WireType::Len) {
                continue;
            }
            let mut d = Dim::Unknown;
            let mut r2 = self.reader(g.value_range(), ctx)?;
            while let Some(h) = self.next(&mut r2, ctx)? {
                match (h.number, h.wire) {
                    (1, WireType::Varint) => d = Dim::Value(h.scalar as i64),
                    (2, WireType::Len) => d = Dim::Param(self.string(&h, ctx, "dim_param")?),
                    _ => {}
                }
            }
            dims.push(d);
        }
        Ok(dims)
    }

    fn parse_function(&mut self, f: &Field, path: &Path2, idx: u32) -> Result<()> {
        let ctx = format!("function #{idx}");
        // First pass for the name, so the graph path reads well.
        let mut name = String::new();
        let mut domain = String::new();
        let mut rr = self.reader(f.value_range(), &ctx)?;
        while let Some(g) = self.next(&mut rr, &ctx)? {
            match g.number {
                1 => name = self.string(&g, &ctx, "name")?,
                10 => domain = self.string(&g, &ctx, "domain")?,
                _ => {}
            }
        }
        let gid = self.new_graph(None, GraphKind::Function { domain: domain.clone(), name: name.clone() }, 0, {
            if domain.is_empty() {
                format!("function:{name}")
            } else {
                format!("function:{domain}.{name}")
            }
        });
        self.graphs[gid].name = name;
        let mut occ = Occurrences::default();
        let mut rr = self.reader(f.value_range(), &ctx)?;
        while let Some(g) = self.next(&mut rr, &ctx)? {
            let i = occ.next(g.number);
            match g.number {
                4 => {
                    let s = self.string(&g, &ctx, "input")?;
                    self.graphs[gid].inputs.push(s);
                }
                5 => {
                    let s = self.string(&g, &ctx, "output")?;
                    self.graphs[gid].outputs.push(s);
                }
                7 => {
                    self.expect(&g, WireType::Len, &ctx, "node")?;
                    self.parse_node(&g, path, i, &ctx, gid, 0)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn parse_graph(
        &mut self,
        f: &Field,
        path: &Path2,
        parent: Option<GraphId>,
        kind: GraphKind,
        depth: usize,
        gpath: String,
    ) -> Result<GraphId> {
        if depth > MAX_GRAPH_DEPTH {
            return Err(FormatError::TooDeep { limit: MAX_GRAPH_DEPTH, context: path.context.to_string() });
        }
        let gid = self.new_graph(parent, kind, depth, gpath.clone());
        let ctx = format!("graph {gpath}");
        let within = Ctx::Text(&ctx);
        let mut occ = Occurrences::default();
        let mut rr = self.reader(f.value_range(), &ctx)?;
        while let Some(g) = self.next(&mut rr, &ctx)? {
            let i = occ.next(g.number);
            match g.number {
                1 => {
                    self.expect(&g, WireType::Len, &ctx, "node")?;
                    self.parse_node(&g, path, i, &ctx, gid, depth)?;
                }
                2 => {
                    let s = self.string(&g, &ctx, "name")?;
                    self.graphs[gid].name = s;
                }
                5 => {
                    self.expect(&g, WireType::Len, &ctx, "initializer")?;
                    let p = path.child(&g, i, Ctx::Item { within: &within, what: "initializer", index: i });
                    let t = self.parse_tensor(&g, p, gid, Origin::Initializer)?;
                    self.graphs[gid].initializers.push(t);
                }
                15 => {
                    self.expect(&g, WireType::Len, &ctx, "sparse_initializer")?;
                    let p = path.child(&g, i, Ctx::Item { within: &within, what: "sparse_initializer", index: i });
                    let pair = self.parse_sparse(&g, &p, gid, None)?;
                    self.graphs[gid].sparse_initializers.push(pair);
                }
                11 | 12 => {
                    self.expect(&g, WireType::Len, &ctx, "value info")?;
                    let mut name = String::new();
                    let mut ty = ValueType::Unknown;
                    let mut r3 = self.reader(g.value_range(), &ctx)?;
                    while let Some(h) = self.next(&mut r3, &ctx)? {
                        if h.number == 1 {
                            name = self.string(&h, &ctx, "value info name")?;
                        } else if h.number == 2 && h.wire == WireType::Len {
                            ty = self.value_type(&h, &ctx)?;
                        }
                    }
                    let graph = &mut self.graphs[gid];
                    if g.number == 11 {
                        graph.inputs.push(name);
                        graph.input_types.push(ty);
                    } else {
                        graph.outputs.push(name);
                        graph.output_types.push(ty);
                    }
                }
                _ => {}
            }
        }
        Ok(gid)
    }

    fn parse_sparse(
        &mut self,
        f: &Field,
        path: &Path2,
        gid: GraphId,
        attr: Option<(NodeId, &str)>,
    ) -> Result<(TensorId, Option<TensorId>)> {
        let ctx = path.context;
        let mut values = None;
        let mut indices = None;
        let mut occ = Occurrences::default();
        let mut rr = self.reader(f.value_range(), &ctx)?;
        while let Some(g) = self.next(&mut rr, &ctx)? {
            let i = occ.next(g.number);
            match g.number {
                1 | 2 => {
                    self.expect(&g, WireType::Len, &ctx, "sparse tensor part")?;
                    let (origin, what) = if g.number == 1 {
                        (Origin::SparseValues, "values")
                    } else {
                        (Origin::SparseIndices, "indices")
                    };
                    let origin = match attr {
                        Some((node, name)) => Origin::Attribute { node, attribute: format!("{name}.{what}") },
                        None => origin,
                    };
                    let p = path.child(&g, i, Ctx::Part { within: &path.context, what });
                    let t = self.parse_tensor(&g, p, gid, origin)?;
                    if g.number == 1 {
                        values = Some(t);
                    } else {
                        indices = Some(t);
                    }
                }
                _ => {}
            }
        }
        let values = values.ok_or_else(|| FormatError::Malformed {
            at: f.start,
            context: ctx.to_string(),
            reason: "sparse tensor has no values".into(),
        })?;
        Ok((values, indices))
    }

    /// Node `f`, the `index`th node field of `parent` (described as "`gctx` node #`index`"
    /// in errors: the text is made only when needed).
    fn parse_node(
        &mut self,
        f: &Field,
        parent: &Path2,
        index: u32,
        gctx: &str,
        gid: GraphId,
        depth: usize,
    ) -> Result<()> {
        let node = Ctx::Item { within: &Ctx::Text(gctx), what: "node", index };
        let nid = self.nodes.len();
        self.nodes.push(Node {
            id: nid,
            graph: gid,
            name: String::new(),
            op_type: String::new(),
            domain: String::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            attributes: Vec::new(),
        });
        self.graphs[gid].nodes.push(nid);
        // First pass: identity, for readable contexts below.
        let mut attributes = false;
        let mut rr = self.reader(f.value_range(), &node)?;
        while let Some(g) = self.next(&mut rr, &node)? {
            match g.number {
                1 => {
                    let s = self.string(&g, &node, "input")?;
                    self.nodes[nid].inputs.push(s);
                }
                2 => {
                    let s = self.string(&g, &node, "output")?;
                    self.nodes[nid].outputs.push(s);
                }
                3 => self.nodes[nid].name = self.string(&g, &node, "name")?,
                4 => self.nodes[nid].op_type = self.string(&g, &node, "op_type")?,
                7 => self.nodes[nid].domain = self.string(&g, &node, "domain")?,
                5 => attributes |= self.attribute_needs_parse(&g),
                _ => {}
            }
        }
        // Attributes without tensors or graphs (and well-formed) need no path: skip them.
        if !attributes {
            return Ok(());
        }
        // The node's path, for the tensors and graphs its attributes hold.
        let path = &parent.child(f, index, node);
        let gpath = self.graphs[gid].path.clone();
        let ctx = format!("graph {gpath} > node {}", self.nodes[nid].label());
        let mut occ = Occurrences::default();
        let mut rr = self.reader(f.value_range(), &ctx)?;
        while let Some(g) = self.next(&mut rr, &ctx)? {
            let i = occ.next(g.number);
            if g.number == 5 {
                self.expect(&g, WireType::Len, &ctx, "attribute")?;
                let p = path.child(&g, i, Ctx::Text(&ctx));
                self.parse_attribute(&g, &p, gid, nid, depth, &gpath)?;
            }
        }
        Ok(())
    }

    /// Whether attribute field `f` holds a tensor or a graph, or is not well formed (the
    /// full parse then reports where): any other attribute is skipped.
    fn attribute_needs_parse(&self, f: &Field) -> bool {
        if f.wire != WireType::Len {
            return true;
        }
        let Ok(mut rr) = FieldReader::new(self.buf, f.value_range()) else { return true };
        loop {
            match rr.next_field() {
                Ok(None) => return false,
                Ok(Some(g)) => match g.number {
                    n if holds_tensor_or_graph(n) => return true,
                    1 if g.wire != WireType::Len
                        || std::str::from_utf8(&self.buf[g.value_start as usize..g.end as usize]).is_err() =>
                    {
                        return true
                    }
                    _ => {}
                },
                Err(_) => return true,
            }
        }
    }

    fn parse_attribute(
        &mut self,
        f: &Field,
        path: &Path2,
        gid: GraphId,
        nid: NodeId,
        depth: usize,
        gpath: &str,
    ) -> Result<()> {
        let ctx0 = path.context;
        let mut name = String::new();
        let mut rr = self.reader(f.value_range(), &ctx0)?;
        let mut interesting = false;
        while let Some(g) = self.next(&mut rr, &ctx0)? {
            match g.number {
                1 => name = self.string(&g, &ctx0, "attribute name")?,
                n if holds_tensor_or_graph(n) => interesting = true,
                _ => {}
            }
        }
        if !interesting {
            return Ok(());
        }
        let ctx = Ctx::Attribute { within: &path.context, name: &name };
        let (mut tensors, mut graphs) = (Vec::new(), Vec::new());
        let mut occ = Occurrences::default();
        let mut rr = self.reader(f.value_range(), &ctx)?;
        while let Some(g) = self.next(&mut rr, &ctx)? {
            let i = occ.next(g.number);
            match g.number {
                5 | 10 => {
                    self.expect(&g, WireType::Len, &ctx, "tensor")?;
                    let p = path.child(&g, i, ctx);
                    let t = self.parse_tensor(&g, p, gid, Origin::Attribute { node: nid, attribute: name.clone() })?;
                    tensors.push(t);
                }
                22 | 23 => {
                    self.expect(&g, WireType::Len, &ctx, "sparse tensor")?;
                    let p = path.child(&g, i, ctx);
                    let (v, ix) = self.parse_sparse(&g, &p, gid, Some((nid, &name)))?;
                    tensors.push(v);
                    tensors.extend(ix);
                }
                6 | 11 => {
                    self.expect(&g, WireType::Len, &ctx, "graph")?;
                    if depth + 1 > MAX_GRAPH_DEPTH {
                        return Err(FormatError::TooDeep { limit: MAX_GRAPH_DEPTH, context: ctx.to_string() });
                    }
                    let node_name = &self.nodes[nid].name;
                    let label = if node_name.is_empty() { format!("#{nid}") } else { node_name.clone() };
                    let sub = if g.number == 6 {
                        format!("{gpath}/{label}.{name}")
                    } else {
                        format!("{gpath}/{label}.{name}[{i}]")
                    };
                    let c = format!("graph {sub}");
                    let p = path.child(&g, i, Ctx::Text(&c));
                    let sg = self.parse_graph(
                        &g,
                        &p,
                        Some(gid),
                        GraphKind::Subgraph { node: nid, attribute: name.clone() },
                        depth + 1,
                        sub,
                    )?;
                    graphs.push(sg);
                }
                _ => {}
            }
        }
        self.nodes[nid].attributes.push(Attribute { name, tensors, graphs });
        Ok(())
    }
}
