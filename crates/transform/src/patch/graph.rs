use std::collections::HashMap;

use onnx_protect_format::model::{Container, GraphKind, NodeId};
use onnx_protect_format::wire::{self, FieldReader, WireType};
use onnx_protect_format::write::{Content, Edit};
use onnx_protect_format::{DataType, Model, Origin, TensorId};

use super::{f32_bytes, read_f32};
use crate::error::{Result, TransformError};

/// A per-channel affine map `z = a[c]·x + b[c]` between the model input and the Conv.
#[derive(Debug, Clone)]
pub(super) struct Affine {
    pub(super) a: Vec<f64>,
    pub(super) b: Vec<f64>,
    /// The nodes that make it, from the input to the Conv.
    pub(super) nodes: Vec<NodeId>,
}

/// The patch-embedding layer that was found.
#[derive(Debug)]
pub(super) struct PatchEmbedding {
    pub(super) node: NodeId,
    pub(super) input: String,
    pub(super) weight: TensorId,
    pub(super) bias: Option<TensorId>,
    pub(super) affine: Affine,
}

/// A position embedding added after the patch embedding.
#[derive(Debug)]
pub(super) struct PositionEmbedding {
    pub(super) tensor: TensorId,
    pub(super) tokens: usize,
    /// `[T, D]` (token-major) or `[D, T]` / `[D, h, w]` (channel-major).
    pub(super) token_major: bool,
}

/// Conv attributes read from the node's bytes.
#[derive(Debug, Default)]
struct ConvAttrs {
    kernel_shape: Option<Vec<i64>>,
    strides: Option<Vec<i64>>,
    pads: Option<Vec<i64>>,
    dilations: Option<Vec<i64>>,
    group: Option<i64>,
    auto_pad: Option<String>,
}

/// Name lookups over the main graph.
pub(super) struct Graph<'m> {
    model: &'m Model,
    main: usize,
    inits: HashMap<&'m str, TensorId>,
    producer: HashMap<&'m str, NodeId>,
    /// Every use of a name by any node of any graph (conservative across scopes).
    consumers: HashMap<&'m str, Vec<(NodeId, usize)>>,
    outputs: Vec<&'m str>,
    inputs: Vec<&'m str>,
}

fn fmt_ints(v: &Option<Vec<i64>>) -> String {
    v.as_ref().map_or("default".into(), |v| format!("{v:?}"))
}

impl<'m> Graph<'m> {
    pub(super) fn new(model: &'m Model) -> Result<Graph<'m>> {
        let main = model
            .graphs
            .iter()
            .position(|g| g.kind == GraphKind::Main)
            .ok_or_else(|| TransformError::Unsupported("the model has no main graph".into()))?;
        let gr = &model.graphs[main];
        let mut inits = HashMap::new();
        for &t in &gr.initializers {
            inits.insert(model.tensors[t].name.as_str(), t);
        }
        let mut producer = HashMap::new();
        for &n in &gr.nodes {
            for o in &model.nodes[n].outputs {
                producer.insert(o.as_str(), n);
            }
        }
        let mut consumers: HashMap<&str, Vec<(NodeId, usize)>> = HashMap::new();
        for node in &model.nodes {
            for (i, name) in node.inputs.iter().enumerate() {
                if !name.is_empty() {
                    consumers.entry(name.as_str()).or_default().push((node.id, i));
                }
            }
        }
        let outputs = gr.outputs.iter().map(String::as_str).collect();
        let inputs = gr.inputs.iter().map(String::as_str).filter(|n| !inits.contains_key(n)).collect();
        Ok(Graph { model, main, inits, producer, consumers, outputs, inputs })
    }

    fn uses(&self, name: &str) -> usize {
        self.consumers.get(name).map_or(0, Vec::len) + self.outputs.iter().filter(|o| **o == name).count()
    }

    /// A name not used anywhere in the model.
    pub(super) fn fresh_name(&self, base: &str) -> String {
        let taken = |n: &str| {
            self.model.tensors.iter().any(|t| t.name == n)
                || self.model.nodes.iter().any(|x| x.outputs.iter().any(|o| o == n) || x.inputs.iter().any(|i| i == n))
                || self.model.graphs.iter().any(|g| g.inputs.iter().any(|i| i == n))
        };
        let mut name = base.to_string();
        let mut k = 1;
        while taken(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }

    /// A FLOAT constant of the main graph (initializer or `Constant` node output).
    fn constant(&self, name: &str) -> Option<TensorId> {
        if let Some(&t) = self.inits.get(name) {
            return Some(t);
        }
        let n = &self.model.nodes[*self.producer.get(name)?];
        if n.op_type != "Constant" || !n.is_onnx() {
            return None;
        }
        n.attributes.iter().find(|a| a.name == "value").and_then(|a| a.tensors.first().copied())
    }

    /// Per-channel values of a constant that broadcasts over NCHW by channel
    /// (a scalar, or `C` values shaped `[C,1,1]` / `[1,C,1,1]`).
    fn per_channel(&self, t: TensorId, channels: usize) -> Option<Vec<f64>> {
        let tensor = &self.model.tensors[t];
        if tensor.data_type != DataType::Float
            || !matches!(tensor.origin, Origin::Initializer | Origin::Attribute { .. })
        {
            return None;
        }
        let v = read_f32(self.model, t).ok()?;
        if v.len() == 1 {
            return Some(vec![f64::from(v[0]); channels]);
        }
        let dims: Vec<u64> = tensor.dims.iter().copied().skip_while(|&d| d == 1).collect();
        if v.len() == channels && (dims.len() == 3 && dims[1] == 1 && dims[2] == 1 || channels == 1) {
            return Some(v.iter().map(|&x| f64::from(x)).collect());
        }
        None
    }

    /// Follows `name` up through per-channel affine nodes to a model input.
    /// Returns the input name and the affine map, or why it is not one.
    fn trace_input(&self, name: &str, channels: usize) -> std::result::Result<(String, Affine), String> {
        let mut cur = name.to_string();
        let mut steps: Vec<(NodeId, &str, bool, Vec<f64>)> = Vec::new();
        for _ in 0..16 {
            if self.inputs.contains(&cur.as_str()) {
                let mut af = Affine { a: vec![1.0; channels], b: vec![0.0; channels], nodes: Vec::new() };
                for (n, op, const_first, k) in steps.into_iter().rev() {
                    for ((a, b), &kc) in af.a.iter_mut().zip(af.b.iter_mut()).zip(&k) {
                        (*a, *b) = match (op, const_first) {
                            ("Add", _) => (*a, *b + kc),
                            ("Sub", false) => (*a, *b - kc),
                            ("Sub", true) => (-*a, kc - *b),
                            ("Mul", _) => (*a * kc, *b * kc),
                            _ => (*a / kc, *b / kc), // Div by a constant
                        };
                    }
                    af.nodes.push(n);
                }
                if af.a.iter().chain(&af.b).any(|v| !v.is_finite()) || af.a.contains(&0.0) {
                    return Err("the normalisation before it is degenerate (zero or non-finite scale)".into());
                }
                return Ok((cur, af));
            }
            let Some(&nid) = self.producer.get(cur.as_str()) else {
                return Err(format!("its input '{cur}' is not a model input"));
            };
            let n = &self.model.nodes[nid];
            let op = n.op_type.as_str();
            if !n.is_onnx() || !matches!(op, "Add" | "Sub" | "Mul" | "Div") || n.inputs.len() != 2 {
                return Err(format!("its input comes from {}, not from the model input", n.label()));
            }
            let (k0, k1) = (self.constant(&n.inputs[0]), self.constant(&n.inputs[1]));
            let (k, const_first, next) = match (k0, k1) {
                (None, Some(k)) => (k, false, &n.inputs[0]),
                (Some(k), None) if op != "Div" => (k, true, &n.inputs[1]),
                _ => return Err(format!("{} is not a per-channel normalisation of the input", n.label())),
            };
            let Some(vals) = self.per_channel(k, channels) else {
                return Err(format!("{} does not use one constant per channel", n.label()));
            };
            steps.push((nid, op, const_first, vals));
            cur = next.clone();
        }
        Err("the chain from the input is too long".into())
    }

    /// Finds the Conv that is the patch embedding for block size `m`.
    pub(super) fn find_patch_embedding(&self, m: usize, wanted: Option<&str>) -> Result<PatchEmbedding> {
        let model = self.model;
        let mut reasons = Vec::new();
        let mut found = Vec::new();
        let convs: Vec<NodeId> = model.graphs[self.main]
            .nodes
            .iter()
            .copied()
            .filter(|&n| model.nodes[n].op_type == "Conv" && model.nodes[n].is_onnx())
            .filter(|&n| wanted.is_none_or(|w| model.nodes[n].name == w))
            .collect();
        if let Some(w) = wanted {
            if convs.is_empty() {
                return Err(TransformError::NoPatchEmbedding(format!("there is no Conv node named '{w}'")));
            }
        }
        for nid in convs {
            let node = &model.nodes[nid];
            match self.check_conv(nid, m) {
                Ok(pe) => found.push(pe),
                Err(Reject::NotFromInput(why)) => {
                    if wanted.is_some() {
                        reasons.push(format!("{}: {why}", node.label()));
                    }
                }
                Err(Reject::Bad(why)) => reasons.push(format!("{}: {why}", node.label())),
                Err(Reject::Hard(e)) => return Err(e),
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 if reasons.is_empty() => Err(TransformError::NoPatchEmbedding(
                "no Conv reads the model input (directly or through per-channel normalisation)".into(),
            )),
            0 => Err(TransformError::NoPatchEmbedding(reasons.join("; "))),
            _ => Err(TransformError::NoPatchEmbedding(format!(
                "several Convs qualify ({}); choose one with --node",
                found.iter().map(|p| model.nodes[p.node].label()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    fn check_conv(&self, nid: NodeId, m: usize) -> std::result::Result<PatchEmbedding, Reject> {
        let model = self.model;
        let node = &model.nodes[nid];
        let x = node.inputs.first().filter(|s| !s.is_empty()).ok_or(Reject::Bad("no data input".into()))?;
        let wname = node.inputs.get(1).filter(|s| !s.is_empty()).ok_or(Reject::Bad("no weight input".into()))?;
        let Some(&w) = self.inits.get(wname.as_str()) else {
            return Err(Reject::Bad(format!("its weight '{wname}' is not an initializer of the main graph")));
        };
        let wt = &model.tensors[w];
        if wt.dims.len() != 4 {
            return Err(Reject::Bad(format!("its weight has shape {:?}, not a 2-D convolution's", wt.dims)));
        }
        let channels = wt.dims[1] as usize;
        let (input, affine) = self.trace_input(x, channels).map_err(Reject::NotFromInput)?;
        let attrs = self.conv_attrs(nid).map_err(Reject::Hard)?;
        let (kh, kw) = (wt.dims[2] as i64, wt.dims[3] as i64);
        let strides = attrs.strides.clone().unwrap_or_else(|| vec![1, 1]);
        let zero_pads = attrs.pads.as_ref().is_none_or(|p| p.iter().all(|&v| v == 0));
        let unit_dil = attrs.dilations.as_ref().is_none_or(|d| d.iter().all(|&v| v == 1));
        let auto_ok = attrs.auto_pad.as_deref().is_none_or(|s| s == "NOTSET" || s == "VALID" || s.is_empty());
        let kernel_ok = attrs.kernel_shape.as_ref().is_none_or(|k| k == &vec![kh, kw]);
        if !(kh == kw && strides == vec![kh, kw] && zero_pads && unit_dil && auto_ok && kernel_ok) {
            return Err(Reject::Bad(format!(
                "reads the input but is not a patch embedding (kernel {kh}×{kw}, strides {}, pads {}, dilations {}, \
                 auto_pad {}); a patch embedding has kernel = stride and no padding",
                fmt_ints(&attrs.strides),
                fmt_ints(&attrs.pads),
                fmt_ints(&attrs.dilations),
                attrs.auto_pad.as_deref().unwrap_or("default")
            )));
        }
        if attrs.group.unwrap_or(1) != 1 {
            return Err(Reject::Bad(format!(
                "grouped convolution (group {}) is not supported",
                attrs.group.unwrap_or(1)
            )));
        }
        if kh as usize != m {
            return Err(Reject::Bad(format!(
                "its patch size is {kh}×{kh}; the block size must equal it (--block {kh})"
            )));
        }
        if wt.data_type != DataType::Float {
            return Err(Reject::Bad(format!("its weight is {}, not FLOAT", wt.data_type)));
        }
        // Everything the rewrite changes must be used by this Conv only, and the
        // input must go nowhere else (or other layers would see transformed data).
        let single = |name: &str, what: &str| -> std::result::Result<(), Reject> {
            if self.uses(name) != 1 {
                return Err(Reject::Bad(format!(
                    "{what} '{name}' is used {} times; it must feed only the patch embedding",
                    self.uses(name)
                )));
            }
            Ok(())
        };
        single(wname, "weight")?;
        single(&input, "model input")?;
        for &n in &affine.nodes {
            if let Some(o) = model.nodes[n].outputs.first() {
                single(o, "normalised input")?;
            }
        }
        let bias = match node.inputs.get(2).filter(|s| !s.is_empty()) {
            None => None,
            Some(bname) => {
                let Some(&b) = self.inits.get(bname.as_str()) else {
                    return Err(Reject::Bad(format!("its bias '{bname}' is not an initializer of the main graph")));
                };
                let bt = &model.tensors[b];
                if bt.data_type != DataType::Float || bt.dims != vec![wt.dims[0]] {
                    return Err(Reject::Bad(format!("its bias '{bname}' is not a FLOAT vector of {}", wt.dims[0])));
                }
                single(bname, "bias")?;
                Some(b)
            }
        };
        Ok(PatchEmbedding { node: nid, input, weight: w, bias, affine })
    }

    /// Follows the Conv output through shape-only nodes to an `Add` with an initializer.
    pub(super) fn find_position_embedding(&self, pe: &PatchEmbedding, d: usize) -> Result<PositionEmbedding> {
        let model = self.model;
        let none = |why: String| {
            TransformError::CannotAbsorb(format!(
                "block scrambling needs a position embedding added after the patch embedding, and {why}"
            ))
        };
        let mut cur = model.nodes[pe.node].outputs.first().cloned().unwrap_or_default();
        let mut transposed = false;
        for _ in 0..8 {
            let uses = self.consumers.get(cur.as_str()).cloned().unwrap_or_default();
            if uses.len() != 1 || self.outputs.contains(&cur.as_str()) {
                return Err(none(format!("'{cur}' is used by {} nodes", uses.len())));
            }
            let n = &model.nodes[uses[0].0];
            match n.op_type.as_str() {
                "Reshape" | "Flatten" | "Transpose" | "Identity" | "Squeeze" | "Unsqueeze" if uses[0].1 == 0 => {
                    transposed |= n.op_type == "Transpose";
                    cur = n.outputs.first().cloned().unwrap_or_default();
                }
                "Add" if n.inputs.len() == 2 => {
                    let other = &n.inputs[1 - uses[0].1];
                    let Some(&t) = self.inits.get(other.as_str()) else {
                        return Err(none(format!("{} adds '{other}', which is not an initializer", n.label())));
                    };
                    let tensor = &model.tensors[t];
                    if tensor.data_type != DataType::Float {
                        return Err(none(format!("'{other}' is not FLOAT")));
                    }
                    if self.uses(other) != 1 {
                        return Err(none(format!("'{other}' is used elsewhere too")));
                    }
                    let dims: Vec<usize> = tensor.dims.iter().map(|&x| x as usize).skip_while(|&x| x == 1).collect();
                    let (tokens, token_major) = match dims.as_slice() {
                        [t, dd] if *dd == d && (*t != d || transposed) => (*t, true),
                        [dd, t] if *dd == d => (*t, false),
                        [dd, h, w] if *dd == d => (h * w, false),
                        _ => {
                            return Err(none(format!(
                                "'{other}' has shape {:?}, not [tokens, {d}] or [{d}, tokens]",
                                tensor.dims
                            )))
                        }
                    };
                    return Ok(PositionEmbedding { tensor: t, tokens, token_major });
                }
                _ => return Err(none(format!("the patch embedding's output goes to {}", n.label()))),
            }
        }
        Err(none("the path from the patch embedding is too long".into()))
    }

    /// The main graph's field and the node's field in the model bytes.
    fn node_containers(&self, nid: NodeId) -> Result<(Container, Container)> {
        let buf = self.model.bytes();
        let bad = |why: &str| TransformError::Unsupported(format!("cannot locate the node in the file: {why}"));
        let werr = |_| bad("malformed protobuf");
        let mut top = FieldReader::new(buf, 0..buf.len() as u64).map_err(werr)?;
        let mut graph = None;
        while let Some(f) = top.next_field().map_err(werr)? {
            if f.number == 7 && f.wire == WireType::Len {
                graph = Some(f);
            }
        }
        let graph = graph.ok_or_else(|| bad("no graph"))?;
        let k = self.model.graphs[self.main].nodes.iter().position(|&n| n == nid).ok_or_else(|| bad("not in main"))?;
        let mut r = FieldReader::new(buf, graph.value_range()).map_err(werr)?;
        let mut i = 0;
        while let Some(f) = r.next_field().map_err(werr)? {
            if f.number == 1 {
                if i == k {
                    return Ok((Container::from(&graph), Container::from(&f)));
                }
                i += 1;
            }
        }
        Err(bad("node not found"))
    }

    /// Reads the Conv attributes the check needs from the node's bytes.
    fn conv_attrs(&self, nid: NodeId) -> Result<ConvAttrs> {
        let buf = self.model.bytes();
        let (_, node) = self.node_containers(nid)?;
        let bad = |_| TransformError::Unsupported("malformed Conv attributes".into());
        let mut out = ConvAttrs::default();
        let mut r = FieldReader::new(buf, node.value_start..node.end).map_err(bad)?;
        while let Some(f) = r.next_field().map_err(bad)? {
            if f.number != 5 || f.wire != WireType::Len {
                continue;
            }
            let (mut name, mut ints, mut i, mut s) = (String::new(), Vec::new(), None, None);
            let mut ar = FieldReader::new(buf, f.value_range()).map_err(bad)?;
            while let Some(a) = ar.next_field().map_err(bad)? {
                let bytes = || buf.get(a.value_start as usize..a.end as usize).unwrap_or_default();
                match (a.number, a.wire) {
                    (1, WireType::Len) => name = String::from_utf8_lossy(bytes()).into_owned(),
                    (3, WireType::Varint) => i = Some(a.scalar as i64),
                    (4, WireType::Len) => s = Some(String::from_utf8_lossy(bytes()).into_owned()),
                    (8, WireType::Varint) => ints.push(a.scalar as i64),
                    (8, WireType::Len) => {
                        wire::for_each_packed_varint(buf, a.value_range(), |v| ints.push(v as i64)).map_err(bad)?
                    }
                    _ => {}
                }
            }
            match name.as_str() {
                "kernel_shape" => out.kernel_shape = Some(ints),
                "strides" => out.strides = Some(ints),
                "pads" => out.pads = Some(ints),
                "dilations" => out.dilations = Some(ints),
                "group" => out.group = i,
                "auto_pad" => out.auto_pad = s,
                _ => {}
            }
        }
        Ok(out)
    }

    /// Edits that give Conv `nid` a bias: a third input on the node and a new
    /// FLOAT initializer at the end of the main graph.
    pub(super) fn add_bias_edits(&self, model: &Model, nid: NodeId, name: &str, values: &[f32]) -> Result<Vec<Edit>> {
        if model.ir_version.unwrap_or(0) < 4 {
            return Err(TransformError::CannotAbsorb(
                "the Conv has no bias, and adding one to a model of IR version < 4 is not supported".into(),
            ));
        }
        if model.nodes[nid].inputs.len() != 2 {
            return Err(TransformError::CannotAbsorb("the Conv has no bias but an unexpected input list".into()));
        }
        let (graph, node) = self.node_containers(nid)?;
        let mut input_field = Vec::new();
        wire::put_len_field(&mut input_field, 1, name.as_bytes());
        let mut tensor = Vec::new();
        wire::put_tag(&mut tensor, 1, WireType::Varint);
        wire::put_varint(&mut tensor, values.len() as u64);
        wire::put_tag(&mut tensor, 2, WireType::Varint);
        wire::put_varint(&mut tensor, 1); // FLOAT
        wire::put_len_field(&mut tensor, 8, name.as_bytes());
        wire::put_len_field(&mut tensor, 9, &f32_bytes(values));
        let mut init_field = Vec::new();
        wire::put_len_field(&mut init_field, 5, &tensor);
        // The node edit comes first: at equal offsets the plan keeps this order.
        Ok(vec![
            Edit { range: node.end..node.end, content: Content::Bytes(input_field), ancestors: vec![graph, node] },
            Edit { range: graph.end..graph.end, content: Content::Bytes(init_field), ancestors: vec![graph] },
        ])
    }
}

/// Why a Conv is not the patch embedding.
enum Reject {
    /// It does not read the model input (not a candidate at all).
    NotFromInput(String),
    /// It reads the input but cannot be used.
    Bad(String),
    /// A real error.
    Hard(TransformError),
}
