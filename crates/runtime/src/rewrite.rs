//! Rewrites of a parsed model, in memory, that let tract 0.21 run what
//! onnxruntime runs. The model file is never changed; the rewritten graph computes
//! the same function.
//!
//! * **Symbolic dimensions in `value_info`** (`batch`, `s0`, …, as the PyTorch
//!   exporter writes them) become unknown dimensions. tract turns each name into a
//!   symbol, and a symbol does not unify with the concrete input shapes
//!   [`Loaded::prepare`](crate::engine::Loaded::prepare) sets, so inference failed
//!   ("Failed analyse for node … Reshape"). Fixed dimensions stay.
//! * **Symbolic dimensions of graph inputs and outputs** keep their meaning, but a
//!   name tract cannot read as a symbol (`DynamicDimension.0`, `height / 32`) is
//!   renamed to one it can, the same name to the same symbol.
//! * **`Gelu`** (opset 20), which tract 0.21 lacks, becomes the subgraph of its
//!   definition: `0.5·x·(1 + erf(x/√2))`, or with `approximate = "tanh"`
//!   `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
//! * **`Mish`** (opset 18), which tract 0.21 lacks, becomes `x·tanh(softplus(x))`.
//! * **`InstanceNormalization`**, which tract 0.21 normalises over the batch axis as
//!   well (wrong for a batch of more than one sample), becomes its definition over
//!   the spatial axes only: `x` is viewed as `[N, C, rest]`, normalised over `rest`
//!   (`ReduceMean`, in the form of the model's opset), scaled and shifted per
//!   channel, and given back its shape. PyTorch exports `GroupNorm` through it.
//!
//! * **`Gemm` and `LayerNormalization` on `float16` or `bfloat16`**, which tract 0.21
//!   computes in `float32` and then refuses ("Output mismatch after rewiring expansion
//!   … expected F16 got F32"), run on their inputs cast to `float32`, and the result is
//!   cast back to the type of the first input (`CastLike`). A node is taken for such when
//!   it reads a value of its graph known to be `float16` or `bfloat16` without type
//!   inference (an initializer, a `Constant`, a `Cast` to it, and what `Identity` and
//!   the reshaping operators make of one), as every `Gemm` and `LayerNormalization` of
//!   a model converted to `float16` does.
//!
//! Float constants are `float32` scalars cast to the input's type with `CastLike`, so
//! `float16` and `double` inputs keep their type. The rewrites apply to the main
//! graph and to every subgraph (`If`, `Loop`, `Scan` bodies). `LayerNormalization` (in
//! `float32`), `LSTM`, `GRU` and the attention of exported transformers (`MatMul`,
//! `Softmax`, `Transpose`) are operators tract runs as they are.

use std::collections::HashSet;

use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;

use crate::error::{Result, RuntimeError};

/// What [`for_tract`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// `Gelu` nodes replaced by their definition.
    pub gelu: usize,
    /// `Mish` nodes replaced by their definition.
    pub mish: usize,
    /// `InstanceNormalization` nodes replaced by their definition.
    pub instance_norm: usize,
    /// `float16`/`bfloat16` `Gemm` and `LayerNormalization` nodes run in `float32`.
    pub half_in_float32: usize,
    /// Symbolic dimensions removed from `value_info` entries.
    pub symbolic_dims: usize,
    /// Symbolic dimensions of inputs and outputs renamed to names tract reads.
    pub renamed_symbols: usize,
}

/// Rewrites `model` in place so that tract can load and run it (see the module docs).
pub fn for_tract(model: &mut pb::ModelProto) -> Result<Rewritten> {
    let mut ctx = Ctx::of(model);
    if let Some(g) = &mut model.graph {
        rewrite_graph(g, &mut ctx, &HashSet::new())?;
    }
    Ok(ctx.done)
}

/// Every value, node and initializer name of `g` and its subgraphs.
fn collect_names(g: &pb::GraphProto, names: &mut HashSet<String>) {
    for n in &g.node {
        names.extend(n.input.iter().chain(&n.output).cloned());
        names.insert(n.name.clone());
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                collect_names(sub, names);
            }
        }
    }
    names.extend(g.initializer.iter().map(|t| t.name.clone()));
    names.extend(g.input.iter().chain(&g.output).chain(&g.value_info).map(|v| v.name.clone()));
}

/// The state of one rewrite: names in use, the model's opset, what was done.
struct Ctx {
    taken: HashSet<String>,
    next: u64,
    /// Version of the default (`ai.onnx`) operator set.
    opset: i64,
    /// Dimension names renamed so far, and what to.
    symbols: std::collections::HashMap<String, String>,
    done: Rewritten,
}

impl Ctx {
    /// A context for rewriting `model`: every name it uses taken, its default-domain opset.
    fn of(model: &pb::ModelProto) -> Ctx {
        let mut taken = HashSet::new();
        if let Some(g) = &model.graph {
            collect_names(g, &mut taken);
        }
        let opset = model
            .opset_import
            .iter()
            .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .max()
            .unwrap_or(1);
        Ctx { taken, next: 0, opset, symbols: Default::default(), done: Rewritten::default() }
    }
}

impl Ctx {
    /// A name that no value or node of the model uses yet.
    fn fresh(&mut self, base: &str) -> String {
        loop {
            let candidate = format!("{base}::onnx_protect_{}", self.next);
            self.next += 1;
            if self.taken.insert(candidate.clone()) {
                return candidate;
            }
        }
    }
}

/// Rewrites `g` and its subgraphs; `outer_half` are the half-precision values of the
/// enclosing graphs ([`half_constants`]) that `g` can read.
fn rewrite_graph(g: &mut pb::GraphProto, ctx: &mut Ctx, outer_half: &HashSet<String>) -> Result<()> {
    for v in &mut g.value_info {
        ctx.done.symbolic_dims += forget_symbols(v);
    }
    for v in g.input.iter_mut().chain(g.output.iter_mut()) {
        ctx.done.renamed_symbols += rename_symbols(v, &mut ctx.symbols);
    }

    let half = half_constants(g, outer_half);
    let nodes = std::mem::take(&mut g.node);
    let mut out = Vec::with_capacity(nodes.len());
    for mut n in nodes {
        for a in &mut n.attribute {
            for sub in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                rewrite_graph(sub, ctx, &half)?;
            }
        }
        let standard = n.domain.is_empty() || n.domain == "ai.onnx";
        match n.op_type.as_str() {
            "Gelu" if standard => {
                out.extend(gelu(&n, ctx)?);
                ctx.done.gelu += 1;
            }
            "Mish" if standard => {
                out.extend(mish(&n, ctx)?);
                ctx.done.mish += 1;
            }
            "InstanceNormalization" if standard => {
                out.extend(instance_norm(&n, ctx)?);
                ctx.done.instance_norm += 1;
            }
            "Gemm" | "LayerNormalization" if standard && n.input.iter().any(|i| half.contains(i)) => {
                out.extend(in_float32(&n, ctx)?);
                ctx.done.half_in_float32 += 1;
            }
            _ => out.push(n),
        }
    }
    g.node = out;
    Ok(())
}

/// The values `g` can read that are known to be `float16` or `bfloat16` without type
/// inference: those of the enclosing graphs (`outer`) that `g` does not shadow, its
/// initializers and `Constant`s of those types, the outputs of `Cast`s to them, and
/// what `Identity`, `Reshape`, `Transpose`, `Squeeze`, `Unsqueeze` and `Flatten` make
/// of such a value (the PyTorch exporter shares equal initializers through `Identity`).
fn half_constants(g: &pb::GraphProto, outer: &HashSet<String>) -> HashSet<String> {
    use pb::tensor_proto::DataType;
    let half_type = |d: i64| d == DataType::Float16 as i64 || d == DataType::Bfloat16 as i64;
    let half = |t: &pb::TensorProto| half_type(i64::from(t.data_type));
    let local: HashSet<&str> = (g.input.iter().map(|v| v.name.as_str()))
        .chain(g.initializer.iter().map(|t| t.name.as_str()))
        .chain(g.node.iter().flat_map(|n| n.output.iter().map(String::as_str)))
        .collect();
    let mut names: HashSet<String> = outer.iter().filter(|n| !local.contains(n.as_str())).cloned().collect();
    names.extend(g.initializer.iter().filter(|t| half(t)).map(|t| t.name.clone()));
    for n in g.node.iter().filter(|n| n.domain.is_empty() || n.domain == "ai.onnx") {
        let attr = |name: &str| n.attribute.iter().find(|a| a.name == name);
        let made_half = match n.op_type.as_str() {
            "Constant" => attr("value").and_then(|a| a.t.as_ref()).is_some_and(half),
            "Cast" => attr("to").is_some_and(|a| half_type(a.i)),
            "Identity" | "Reshape" | "Transpose" | "Squeeze" | "Unsqueeze" | "Flatten" => {
                n.input.first().is_some_and(|i| names.contains(i))
            }
            _ => false,
        };
        if made_half {
            names.extend(n.output.iter().cloned());
        }
    }
    names
}

/// `n` on its inputs cast to `float32`, its first output cast back to the type of its
/// first input; its other outputs (a `LayerNormalization`'s mean and inverse standard
/// deviation, in the stash type) keep their names.
fn in_float32(n: &pb::NodeProto, ctx: &mut Ctx) -> Result<Vec<pb::NodeProto>> {
    let label = label_of(n);
    let (Some(first), Some(y)) =
        (n.input.first().filter(|i| !i.is_empty()), n.output.first().filter(|o| !o.is_empty()))
    else {
        return Err(RuntimeError::UnsupportedOps {
            ops: vec![format!("{} (node '{label}', no data input or output)", n.op_type)],
        });
    };
    let mut e = Emit { ctx, base: label, nodes: Vec::new() };
    let mut inner = n.clone();
    for i in inner.input.iter_mut().filter(|i| !i.is_empty()) {
        *i = e.cast_to_float32(i);
    }
    let result = e.ctx.fresh(&e.base);
    inner.output[0] = result.clone();
    e.nodes.push(inner);
    e.op_to("CastLike", &[&result, first], y);
    Ok(e.nodes)
}

/// Turns the symbolic dimensions of a value's shape into unknown ones; returns how many.
fn forget_symbols(v: &mut pb::ValueInfoProto) -> usize {
    let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) else {
        return 0;
    };
    let Some(shape) = &mut t.shape else { return 0 };
    let mut n = 0;
    for d in &mut shape.dim {
        if matches!(d.value, Some(DimValue::DimParam(_))) {
            d.value = None;
            n += 1;
        }
    }
    n
}

/// Renames the symbolic dimensions of a value that are not identifiers (letters, digits
/// and `_`, not starting with a digit) to `onnx_protect_sym_K`, one name per distinct
/// symbol; returns how many dimensions were renamed.
fn rename_symbols(v: &mut pb::ValueInfoProto, symbols: &mut std::collections::HashMap<String, String>) -> usize {
    let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) else {
        return 0;
    };
    let Some(shape) = &mut t.shape else { return 0 };
    let readable = |p: &str| {
        p.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let mut n = 0;
    for d in &mut shape.dim {
        if let Some(DimValue::DimParam(p)) = &mut d.value {
            if !readable(p) {
                let k = symbols.len();
                *p = symbols.entry(p.clone()).or_insert_with(|| format!("onnx_protect_sym_{k}")).clone();
                n += 1;
            }
        }
    }
    n
}

fn node(op: &str, inputs: &[&str], output: &str, name: String) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name,
        op_type: op.to_string(),
        ..Default::default()
    }
}

fn attribute(name: &str, kind: AttributeType) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: kind as i32, ..Default::default() }
}

/// The nodes that replace one node, in order; every value they make has a fresh name.
struct Emit<'a> {
    ctx: &'a mut Ctx,
    /// The replaced node's name: the prefix of every new name.
    base: String,
    nodes: Vec<pb::NodeProto>,
}

impl Emit<'_> {
    /// Adds `op(inputs)` and returns the name of its output.
    fn op(&mut self, op: &str, inputs: &[&str]) -> String {
        let out = self.ctx.fresh(&self.base);
        self.op_to(op, inputs, &out);
        out
    }

    /// Adds `op(inputs)` writing to `output`.
    fn op_to(&mut self, op: &str, inputs: &[&str], output: &str) {
        let name = self.ctx.fresh(&self.base);
        self.nodes.push(node(op, inputs, output, name));
    }

    fn constant(&mut self, t: pb::TensorProto) -> String {
        let out = self.ctx.fresh(&self.base);
        let name = self.ctx.fresh(&self.base);
        let value = pb::AttributeProto { t: Some(t), ..attribute("value", AttributeType::Tensor) };
        self.nodes.push(pb::NodeProto { attribute: vec![value], ..node("Constant", &[], &out, name) });
        out
    }

    /// The scalar `v` in the element type of `like`.
    fn float_like(&mut self, v: f32, like: &str) -> String {
        let f = self.constant(pb::TensorProto {
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: v.to_le_bytes().to_vec(),
            ..Default::default()
        });
        self.op("CastLike", &[&f, like])
    }

    /// `Cast(x, to = FLOAT)`.
    fn cast_to_float32(&mut self, x: &str) -> String {
        let out = self.op("Cast", &[x]);
        let to =
            pb::AttributeProto { i: pb::tensor_proto::DataType::Float as i64, ..attribute("to", AttributeType::Int) };
        if let Some(n) = self.nodes.last_mut() {
            n.attribute.push(to);
        }
        out
    }

    /// A 1-D `int64` constant.
    fn ints(&mut self, v: &[i64]) -> String {
        self.constant(pb::TensorProto {
            dims: vec![v.len() as i64],
            data_type: pb::tensor_proto::DataType::Int64 as i32,
            raw_data: v.iter().flat_map(|i| i.to_le_bytes()).collect(),
            ..Default::default()
        })
    }

    /// `ReduceMean(x)` over `axes`, dimensions kept, in the form of the model's opset
    /// (axes an input from opset 18 on, an attribute before).
    fn reduce_mean(&mut self, x: &str, axes: &[i64]) -> String {
        if self.ctx.opset >= 18 {
            let a = self.ints(axes);
            return self.op("ReduceMean", &[x, &a]);
        }
        let out = self.op("ReduceMean", &[x]);
        let attr = pb::AttributeProto { ints: axes.to_vec(), ..attribute("axes", AttributeType::Ints) };
        if let Some(n) = self.nodes.last_mut() {
            n.attribute.push(attr);
        }
        out
    }
}

/// How errors and new names call a node: its name, else its first output.
fn label_of(n: &pb::NodeProto) -> String {
    if n.name.is_empty() {
        n.output.first().cloned().unwrap_or_default()
    } else {
        n.name.clone()
    }
}

/// Checks a node's arity and attributes; returns its label (name, else first output),
/// its inputs and its output.
fn parts<'n>(n: &'n pb::NodeProto, inputs: usize, attributes: &[&str]) -> Result<(String, Vec<&'n str>, &'n str)> {
    let label = label_of(n);
    let refuse =
        |why: String| RuntimeError::UnsupportedOps { ops: vec![format!("{} (node '{label}', {why})", n.op_type)] };
    let ins: Vec<&str> = n.input.iter().map(String::as_str).collect();
    match (ins.as_slice(), n.output.as_slice()) {
        (i, [y]) if i.len() == inputs && i.iter().all(|s| !s.is_empty()) && !y.is_empty() => {
            if let Some(a) = n.attribute.iter().find(|a| !attributes.contains(&a.name.as_str())) {
                return Err(refuse(format!("unknown attribute '{}'", a.name)));
            }
            Ok((label, ins, y.as_str()))
        }
        _ => Err(refuse(format!("{} inputs and {} outputs", n.input.len(), n.output.len()))),
    }
}

/// The nodes that compute `Gelu` by its definition (ONNX opset 20).
fn gelu(n: &pb::NodeProto, ctx: &mut Ctx) -> Result<Vec<pb::NodeProto>> {
    let (label, ins, y) = parts(n, 1, &["approximate"])?;
    let x = ins[0];
    let approximate = n
        .attribute
        .iter()
        .find(|a| a.name == "approximate")
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
        .unwrap_or_else(|| "none".into());
    let mut e = Emit { ctx, base: label.clone(), nodes: Vec::new() };
    // `squashed` is erf(x/√2), or tanh of its approximation.
    let squashed = match approximate.as_str() {
        "none" => {
            let scale = e.float_like(std::f32::consts::FRAC_1_SQRT_2, x);
            let inner = e.op("Mul", &[x, &scale]);
            e.op("Erf", &[&inner])
        }
        "tanh" => {
            let cubic = e.float_like(0.044715, x);
            // √(2/π)
            let scale = e.float_like((2.0 / std::f64::consts::PI).sqrt() as f32, x);
            let x2 = e.op("Mul", &[x, x]);
            let x3 = e.op("Mul", &[&x2, x]);
            let cx3 = e.op("Mul", &[&x3, &cubic]);
            let sum = e.op("Add", &[x, &cx3]);
            let inner = e.op("Mul", &[&sum, &scale]);
            e.op("Tanh", &[&inner])
        }
        other => {
            return Err(RuntimeError::UnsupportedOps {
                ops: vec![format!("Gelu (node '{label}', approximate='{other}')")],
            })
        }
    };
    let one = e.float_like(1.0, x);
    let half = e.float_like(0.5, x);
    let plus_one = e.op("Add", &[&squashed, &one]);
    let times_x = e.op("Mul", &[x, &plus_one]);
    e.op_to("Mul", &[&times_x, &half], y);
    Ok(e.nodes)
}

/// The nodes that compute `Mish` by its definition (ONNX opset 18).
fn mish(n: &pb::NodeProto, ctx: &mut Ctx) -> Result<Vec<pb::NodeProto>> {
    let (label, ins, y) = parts(n, 1, &[])?;
    let mut e = Emit { ctx, base: label, nodes: Vec::new() };
    let soft = e.op("Softplus", &[ins[0]]);
    let squashed = e.op("Tanh", &[&soft]);
    e.op_to("Mul", &[ins[0], &squashed], y);
    Ok(e.nodes)
}

/// The nodes that compute `InstanceNormalization` by its definition: `x` viewed as
/// `[N, C, rest]` (the shape built from `Shape(x)`; a `0` "copy this dimension" in the
/// Reshape made tract's optimiser fail for a batch of one), normalised per sample and
/// channel over `rest`, scaled and shifted per channel, given its shape back.
fn instance_norm(n: &pb::NodeProto, ctx: &mut Ctx) -> Result<Vec<pb::NodeProto>> {
    let (label, ins, y) = parts(n, 3, &["epsilon"])?;
    let (x, scale, bias) = (ins[0], ins[1], ins[2]);
    let epsilon = n.attribute.iter().find(|a| a.name == "epsilon").map_or(1e-5, |a| a.f);
    let mut e = Emit { ctx, base: label, nodes: Vec::new() };
    let shape = e.op("Shape", &[x]);
    let (zero, two, rest) = (e.ints(&[0]), e.ints(&[2]), e.ints(&[-1]));
    let leading = e.op("Slice", &[&shape, &zero, &two]);
    let flat = e.op("Concat", &[&leading, &rest]);
    if let Some(c) = e.nodes.last_mut() {
        c.attribute.push(pb::AttributeProto { i: 0, ..attribute("axis", AttributeType::Int) });
    }
    let x3 = e.op("Reshape", &[x, &flat]);
    let mean = e.reduce_mean(&x3, &[2]);
    let centred = e.op("Sub", &[&x3, &mean]);
    let squared = e.op("Mul", &[&centred, &centred]);
    let variance = e.reduce_mean(&squared, &[2]);
    let eps = e.float_like(epsilon, x);
    let shifted = e.op("Add", &[&variance, &eps]);
    let deviation = e.op("Sqrt", &[&shifted]);
    let normal = e.op("Div", &[&centred, &deviation]);
    let column = e.ints(&[-1, 1]);
    let scale = e.op("Reshape", &[scale, &column]);
    let bias = e.op("Reshape", &[bias, &column]);
    let scaled = e.op("Mul", &[&normal, &scale]);
    let y3 = e.op("Add", &[&scaled, &bias]);
    e.op_to("Reshape", &[&y3, &shape], y);
    Ok(e.nodes)
}

/// One `BatchNormalization` in its training-mode form (see [`batch_statistics`]).
pub(crate) struct BatchStatistics {
    /// Index of the layer in the main graph's node list before the rewrite.
    pub node: usize,
    /// Names of the values holding the batch's per-channel mean and variance, `[1, C, 1]`.
    pub mean: String,
    pub var: String,
}

/// Replaces every `BatchNormalization` of the main graph by its training-mode form,
/// which normalises with the mean and (population) variance of the batch it is given
/// per channel (over the samples and every axis after the channel axis) instead of its
/// running statistics, and makes those statistics graph outputs. Run on one batch of
/// calibration inputs, the outputs are the statistics each layer would be given by
/// re-estimating the layers one after the other in graph order.
pub(crate) fn batch_statistics(model: &mut pb::ModelProto) -> Result<Vec<BatchStatistics>> {
    let mut ctx = Ctx::of(model);
    let Some(g) = model.graph.as_mut() else { return Ok(Vec::new()) };
    let nodes = std::mem::take(&mut g.node);
    let mut out = Vec::with_capacity(nodes.len());
    let mut found = Vec::new();
    for (i, n) in nodes.into_iter().enumerate() {
        let standard = n.domain.is_empty() || n.domain == "ai.onnx";
        if !(standard && n.op_type == "BatchNormalization") {
            out.push(n);
            continue;
        }
        let (label, ins, y) = parts(&n, 5, &["epsilon", "momentum", "training_mode", "spatial"])?;
        let (x, scale, bias) = (ins[0], ins[1], ins[2]);
        let epsilon = n.attribute.iter().find(|a| a.name == "epsilon").map_or(1e-5, |a| a.f);
        let mut e = Emit { ctx: &mut ctx, base: label, nodes: Vec::new() };
        let shape = e.op("Shape", &[x]);
        let (zero, two, rest) = (e.ints(&[0]), e.ints(&[2]), e.ints(&[-1]));
        let leading = e.op("Slice", &[&shape, &zero, &two]);
        let flat = e.op("Concat", &[&leading, &rest]);
        if let Some(c) = e.nodes.last_mut() {
            c.attribute.push(pb::AttributeProto { i: 0, ..attribute("axis", AttributeType::Int) });
        }
        let x3 = e.op("Reshape", &[x, &flat]);
        let mean = e.reduce_mean(&x3, &[0, 2]);
        let centred = e.op("Sub", &[&x3, &mean]);
        let squared = e.op("Mul", &[&centred, &centred]);
        let var = e.reduce_mean(&squared, &[0, 2]);
        let eps = e.float_like(epsilon, x);
        let shifted = e.op("Add", &[&var, &eps]);
        let deviation = e.op("Sqrt", &[&shifted]);
        let normal = e.op("Div", &[&centred, &deviation]);
        let column = e.ints(&[-1, 1]);
        let scale = e.op("Reshape", &[scale, &column]);
        let bias = e.op("Reshape", &[bias, &column]);
        let scaled = e.op("Mul", &[&normal, &scale]);
        let y3 = e.op("Add", &[&scaled, &bias]);
        e.op_to("Reshape", &[&y3, &shape], y);
        out.extend(e.nodes);
        found.push(BatchStatistics { node: i, mean, var });
    }
    g.node = out;
    for s in &found {
        for name in [&s.mean, &s.var] {
            g.output.push(pb::ValueInfoProto { name: name.clone(), ..Default::default() });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gelu_node(approximate: Option<&str>) -> pb::NodeProto {
        let mut n = node("Gelu", &["x"], "y", "g".into());
        if let Some(a) = approximate {
            n.attribute.push(pb::AttributeProto {
                name: "approximate".into(),
                r#type: AttributeType::String as i32,
                s: a.as_bytes().to_vec(),
                ..Default::default()
            });
        }
        n
    }

    fn fresh() -> Ctx {
        let taken = ["x", "y", "g"].iter().map(|s| s.to_string()).collect();
        Ctx { taken, next: 0, opset: 20, symbols: Default::default(), done: Rewritten::default() }
    }

    #[test]
    fn gelu_becomes_erf_or_tanh_and_keeps_its_output_name() {
        let exact = gelu(&gelu_node(None), &mut fresh()).unwrap();
        assert!(exact.iter().any(|n| n.op_type == "Erf") && !exact.iter().any(|n| n.op_type == "Tanh"));
        let tanh = gelu(&gelu_node(Some("tanh")), &mut fresh()).unwrap();
        assert!(tanh.iter().any(|n| n.op_type == "Tanh") && !tanh.iter().any(|n| n.op_type == "Erf"));
        for nodes in [&exact, &tanh] {
            assert_eq!(nodes.last().unwrap().output, ["y"]);
            // Every value is produced once, and before it is used.
            let mut seen: HashSet<&str> = HashSet::from(["x"]);
            for n in nodes.iter() {
                assert!(n.input.iter().all(|i| seen.contains(i.as_str())), "{n:?}");
                assert!(n.output.iter().all(|o| seen.insert(o.as_str())), "{n:?}");
            }
        }
    }

    /// A hand-encoded model of one node `y = op(x, W…)` at `opset`: `attrs` are encoded
    /// AttributeProto messages, `weights` initializers (name, dims, values).
    fn one_node_model(op: &str, attrs: &[Vec<u8>], weights: &[(&str, &[i64], &[f32])], opset: u64) -> Vec<u8> {
        typed_one_node_model(op, attrs, weights, opset, None)
    }

    /// [`one_node_model`] whose input `x` may be declared float32 of rank `x_rank`,
    /// every dimension symbolic.
    fn typed_one_node_model(
        op: &str,
        attrs: &[Vec<u8>],
        weights: &[(&str, &[i64], &[f32])],
        opset: u64,
        x_rank: Option<usize>,
    ) -> Vec<u8> {
        use onnx_protect_format::testutil::{float_tensor, node};
        use onnx_protect_format::wire::{put_len_field, put_tag, put_varint, WireType};
        let inputs: Vec<&str> = std::iter::once("x").chain(weights.iter().map(|w| w.0)).collect();
        let mut n = node(op, &inputs, &["y"], "n");
        for a in attrs {
            put_len_field(&mut n, 5, a);
        }
        let mut g = Vec::new();
        put_len_field(&mut g, 1, &n);
        put_len_field(&mut g, 2, b"one");
        for (name, dims, values) in weights {
            put_len_field(&mut g, 5, &float_tensor(name, dims, values));
        }
        for (field, name) in [(11, b"x"), (12, b"y")] {
            let mut v = Vec::new();
            put_len_field(&mut v, 1, name);
            if let (11, Some(rank)) = (field, x_rank) {
                let mut shape = Vec::new();
                for i in 0..rank {
                    let mut dim = Vec::new();
                    put_len_field(&mut dim, 2, format!("d{i}").as_bytes());
                    put_len_field(&mut shape, 1, &dim);
                }
                let mut tensor = Vec::new();
                put_tag(&mut tensor, 1, WireType::Varint);
                put_varint(&mut tensor, 1);
                put_len_field(&mut tensor, 2, &shape);
                let mut ty = Vec::new();
                put_len_field(&mut ty, 1, &tensor);
                put_len_field(&mut v, 2, &ty);
            }
            put_len_field(&mut g, field, &v);
        }
        let mut m = Vec::new();
        put_tag(&mut m, 1, WireType::Varint);
        put_varint(&mut m, 8);
        let mut set = Vec::new();
        put_tag(&mut set, 2, WireType::Varint);
        put_varint(&mut set, opset);
        put_len_field(&mut m, 8, &set);
        put_len_field(&mut m, 7, &g);
        m
    }

    fn string_attr(name: &str, value: &str) -> Vec<u8> {
        use onnx_protect_format::wire::{put_len_field, put_tag, put_varint, WireType};
        let mut a = Vec::new();
        put_len_field(&mut a, 1, name.as_bytes());
        put_len_field(&mut a, 4, value.as_bytes());
        put_tag(&mut a, 20, WireType::Varint);
        put_varint(&mut a, AttributeType::String as u64);
        a
    }

    fn int_attr(name: &str, value: u64) -> Vec<u8> {
        use onnx_protect_format::wire::{put_len_field, put_tag, put_varint, WireType};
        let mut a = Vec::new();
        put_len_field(&mut a, 1, name.as_bytes());
        put_tag(&mut a, 3, WireType::Varint);
        put_varint(&mut a, value);
        put_tag(&mut a, 20, WireType::Varint);
        put_varint(&mut a, AttributeType::Int as u64);
        a
    }

    fn float_attr(name: &str, value: f32) -> Vec<u8> {
        use onnx_protect_format::wire::{put_len_field, put_tag, put_varint, WireType};
        let mut a = Vec::new();
        put_len_field(&mut a, 1, name.as_bytes());
        put_tag(&mut a, 2, WireType::Fixed32);
        a.extend_from_slice(&value.to_le_bytes());
        put_tag(&mut a, 20, WireType::Varint);
        put_varint(&mut a, AttributeType::Float as u64);
        a
    }

    /// Runs `model` in tract on the float32 array `x` of `shape`; returns `y`.
    fn run_f32(model: &[u8], shape: Vec<usize>, x: &[f32]) -> Vec<f64> {
        use crate::engine::{run_once, External};
        use crate::npy::{Dtype, NpyArray};
        let input = NpyArray::new(Dtype::F32, shape, x.iter().flat_map(|v| v.to_le_bytes()).collect()).unwrap();
        let inputs = std::collections::BTreeMap::from([("x".to_string(), input)]);
        run_once(model, &External::new(), &inputs).unwrap()[0].1.to_f64()
    }

    #[test]
    fn gelu_runs_in_tract_with_both_approximations() {
        let x = [-3.0f32, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0];
        // torch.nn.functional.gelu in float64, without and with approximate='tanh'.
        let exact = [
            -0.00404969409489031,
            -0.15865525393145702,
            -0.15426876936299344,
            0.0,
            0.34573123063700656,
            0.841344746068543,
            1.9544997361036416,
            2.99595030590511,
        ];
        let tanh = [
            -0.0036373920817729943,
            -0.15880800939172324,
            -0.15428599017485606,
            0.0,
            0.34571400982514394,
            0.8411919906082768,
            1.954597694087775,
            2.996362607918227,
        ];
        for (approximate, want) in [(None, exact), (Some("none"), exact), (Some("tanh"), tanh)] {
            let attrs: Vec<Vec<u8>> = approximate.map(|a| string_attr("approximate", a)).into_iter().collect();
            let got = run_f32(&one_node_model("Gelu", &attrs, &[], 20), vec![8], &x);
            for (got, want) in got.iter().zip(want) {
                assert!((got - want).abs() <= 1e-6, "{approximate:?}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn mish_runs_in_tract() {
        let x = [-3.0f32, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0];
        let got = run_f32(&one_node_model("Mish", &[], &[], 18), vec![7], &x);
        for (g, &x) in got.iter().zip(&x) {
            let x = f64::from(x);
            let want = x * x.exp().ln_1p().tanh();
            assert!((g - want).abs() <= 1e-6, "mish({x}): {g} vs {want}");
        }
    }

    /// tract's own InstanceNormalization also averages over the batch: with two
    /// samples of different scale, only the per-sample definition gives these values.
    #[test]
    fn instance_norm_runs_in_tract_per_sample_at_old_and_new_opsets() {
        let (n, c, l) = (2usize, 2usize, 3usize);
        let x: Vec<f32> = [0.0, 1.0, 5.0, -2.0, 2.0, 3.0, 10.0, 40.0, 70.0, 1.0, 1.5, 4.0].to_vec();
        let (scale, bias) = ([1.5f32, -0.5], [0.25f32, 1.0]);
        let eps = 0.01f32;
        let mut want = Vec::new();
        for s in 0..n {
            for ch in 0..c {
                let v: Vec<f64> = x[(s * c + ch) * l..][..l].iter().map(|&v| f64::from(v)).collect();
                let mean = v.iter().sum::<f64>() / l as f64;
                let var = v.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / l as f64;
                let sd = (var + f64::from(eps)).sqrt();
                want.extend(v.iter().map(|v| (v - mean) / sd * f64::from(scale[ch]) + f64::from(bias[ch])));
            }
        }
        let weights: [(&str, &[i64], &[f32]); 2] = [("s", &[2], &scale), ("b", &[2], &bias)];
        // With and without a declared (symbolic) shape of x.
        for (opset, rank) in [(17, None), (20, None), (17, Some(3)), (20, Some(3))] {
            let attrs = [float_attr("epsilon", eps)];
            let model = typed_one_node_model("InstanceNormalization", &attrs, &weights, opset, rank);
            let got = run_f32(&model, vec![n, c, l], &x);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5, "opset {opset} rank {rank:?} element {i}: {g} vs {w}");
            }
            // One sample alone.
            let got = run_f32(&model, vec![1, c, l], &x[..c * l]);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5, "opset {opset} rank {rank:?} batch 1 element {i}: {g} vs {w}");
            }
        }
    }

    /// A float16 model of `nodes` with float16 initializers (name, dims, values) and a
    /// float16 input `x`, output `y`.
    fn half_model(nodes: &[Vec<u8>], weights: &[(&str, &[i64], &[f32])]) -> Vec<u8> {
        use onnx_protect_format::testutil::model_with_graph;
        use onnx_protect_format::wire::{put_len_field, put_tag, put_varint, WireType};
        let mut g = Vec::new();
        for n in nodes {
            put_len_field(&mut g, 1, n);
        }
        put_len_field(&mut g, 2, b"half");
        for (name, dims, values) in weights {
            let mut t = Vec::new();
            for &d in *dims {
                put_tag(&mut t, 1, WireType::Varint);
                put_varint(&mut t, d as u64);
            }
            put_tag(&mut t, 2, WireType::Varint);
            put_varint(&mut t, 10); // FLOAT16
            put_len_field(&mut t, 8, name.as_bytes());
            let raw: Vec<u8> = values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
            put_len_field(&mut t, 9, &raw);
            put_len_field(&mut g, 5, &t);
        }
        for (field, name) in [(11, b"x"), (12, b"y")] {
            let mut v = Vec::new();
            put_len_field(&mut v, 1, name);
            put_len_field(&mut g, field, &v);
        }
        model_with_graph(&g)
    }

    /// Runs `model` in tract on the float16 array `x` of `shape`; returns `y`.
    fn run_f16(model: &[u8], shape: Vec<usize>, x: &[f32]) -> Vec<f64> {
        use crate::engine::{run_once, External};
        use crate::npy::{Dtype, NpyArray};
        let bytes = x.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        let input = NpyArray::new(Dtype::F16, shape, bytes).unwrap();
        let inputs = std::collections::BTreeMap::from([("x".to_string(), input)]);
        let out = run_once(model, &External::new(), &inputs).unwrap();
        assert_eq!(out[0].1.dtype, Dtype::F16, "the output keeps the model's type");
        out[0].1.to_f64()
    }

    #[test]
    fn float16_gemm_and_layer_norm_run_in_tract_in_float32() {
        use onnx_protect_format::testutil::node;
        use onnx_protect_format::wire::put_len_field;
        let f16 = |v: f32| f64::from(half::f16::from_f32(v));
        // y = x · Wᵀ + B, W [3, 4], x [2, 4].
        let x = [0.5f32, -1.0, 2.0, 0.25, 1.5, 0.0, -0.75, 3.0];
        let w = [0.1f32, 0.2, -0.3, 0.4, -0.5, 0.6, 0.7, -0.8, 0.9, 1.0, -1.1, 1.2];
        let b = [0.05f32, -0.25, 1.0];
        let mut gemm = node("Gemm", &["x", "W", "B"], &["y"], "gemm");
        put_len_field(&mut gemm, 5, &int_attr("transB", 1));
        let model = half_model(&[gemm], &[("W", &[3, 4], &w), ("B", &[3], &b)]);
        let got = run_f16(&model, vec![2, 4], &x);
        for r in 0..2 {
            for o in 0..3 {
                let want = (0..4).map(|k| f16(x[r * 4 + k]) * f16(w[o * 4 + k])).sum::<f64>() + f16(b[o]);
                let g = got[r * 3 + o];
                assert!((g - want).abs() <= 1e-2 * want.abs().max(1.0), "gemm [{r}, {o}]: {g} vs {want}");
            }
        }
        // y = LayerNormalization(x, S, B) over the last axis, S reached through an Identity
        // as the PyTorch exporter shares equal initializers.
        let s = [1.0f32, 0.5, 2.0, -1.0];
        let ln = node("LayerNormalization", &["x", "S", "LB"], &["y"], "ln");
        let model = half_model(
            &[node("Identity", &["S0"], &["S"], "share"), ln],
            &[("S0", &[4], &s), ("LB", &[4], &[0.0, 0.1, 0.2, 0.3])],
        );
        let got = run_f16(&model, vec![2, 4], &x);
        for r in 0..2 {
            let v: Vec<f64> = x[r * 4..][..4].iter().map(|&v| f16(v)).collect();
            let mean = v.iter().sum::<f64>() / 4.0;
            let sd = (v.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 4.0 + 1e-5).sqrt();
            for k in 0..4 {
                let want = (v[k] - mean) / sd * f16(s[k]) + f16([0.0, 0.1, 0.2, 0.3][k]);
                let g = got[r * 4 + k];
                assert!((g - want).abs() <= 1e-2 * want.abs().max(1.0), "layer norm [{r}, {k}]: {g} vs {want}");
            }
        }
    }

    #[test]
    fn gelu_with_an_unknown_approximation_is_refused_by_name() {
        let e = gelu(&gelu_node(Some("cubic")), &mut fresh()).unwrap_err();
        assert_eq!(e.to_string(), "tract cannot run operator Gelu (node 'g', approximate='cubic')");
    }

    #[test]
    fn gelu_inside_a_subgraph_is_rewritten_too() {
        let body = pb::GraphProto { node: vec![gelu_node(None)], ..Default::default() };
        let branch = pb::AttributeProto {
            name: "then_branch".into(),
            r#type: AttributeType::Graph as i32,
            g: Some(body),
            ..Default::default()
        };
        let mut cond = node("If", &["c"], "z", "if".into());
        cond.attribute.push(branch);
        let mut outer = gelu_node(None);
        outer.output = vec!["y2".into()];
        let mut model = pb::ModelProto {
            graph: Some(pb::GraphProto { node: vec![cond, outer], ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(for_tract(&mut model).unwrap(), Rewritten { gelu: 2, ..Default::default() });
        let g = model.graph.unwrap();
        let inner = g.node[0].attribute[0].g.as_ref().unwrap();
        for nodes in [&g.node, &inner.node] {
            assert!(nodes.iter().all(|n| n.op_type != "Gelu"));
            assert!(nodes.iter().any(|n| n.op_type == "Erf"));
        }
        // Names made for the two rewrites do not collide.
        let outputs: Vec<&String> = g.node.iter().chain(&inner.node).flat_map(|n| &n.output).collect();
        assert_eq!(outputs.iter().collect::<HashSet<_>>().len(), outputs.len());
    }

    #[test]
    fn a_branch_gemm_on_an_outer_float16_weight_runs_in_float32_and_a_shadowing_name_is_not_half() {
        let half_w = pb::TensorProto {
            name: "W".into(),
            dims: vec![2, 2],
            data_type: pb::tensor_proto::DataType::Float16 as i32,
            raw_data: vec![0; 8],
            ..Default::default()
        };
        let branch = |name: &str, body: pb::GraphProto| pb::AttributeProto {
            name: name.into(),
            r#type: AttributeType::Graph as i32,
            g: Some(body),
            ..Default::default()
        };
        let then_body =
            pb::GraphProto { node: vec![node("Gemm", &["x", "W"], "t", "g1".into())], ..Default::default() };
        // The else branch defines its own float32 W, which hides the outer one.
        let own_w = pb::TensorProto { name: "W".into(), data_type: 1, ..half_w.clone() };
        let else_body = pb::GraphProto {
            node: vec![node("Gemm", &["x", "W"], "e", "g2".into())],
            initializer: vec![own_w],
            ..Default::default()
        };
        let mut cond = node("If", &["c"], "z", "if".into());
        cond.attribute.extend([branch("then_branch", then_body), branch("else_branch", else_body)]);
        let mut model = pb::ModelProto {
            graph: Some(pb::GraphProto { node: vec![cond], initializer: vec![half_w], ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(for_tract(&mut model).unwrap(), Rewritten { half_in_float32: 1, ..Default::default() });
        let g = model.graph.unwrap();
        let ops = |k: usize| -> Vec<String> {
            g.node[0].attribute[k].g.as_ref().unwrap().node.iter().map(|n| n.op_type.clone()).collect()
        };
        assert_eq!(ops(0), ["Cast", "Cast", "Gemm", "CastLike"]);
        assert_eq!(ops(1), ["Gemm"]);
    }

    #[test]
    fn fresh_names_skip_taken_ones() {
        let mut f = fresh();
        f.taken.insert("g::onnx_protect_0".to_string());
        assert_eq!(f.fresh("g"), "g::onnx_protect_1");
    }

    #[test]
    fn symbolic_dims_are_forgotten_and_fixed_ones_kept() {
        let dim = |v| pb::tensor_shape_proto::Dimension { value: Some(v), ..Default::default() };
        let mut v = pb::ValueInfoProto {
            name: "v".into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto {
                        dim: vec![dim(DimValue::DimParam("batch".into())), dim(DimValue::DimValue(128))],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(forget_symbols(&mut v), 1);
        let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.unwrap().value else { unreachable!() };
        let dims: Vec<_> = t.shape.unwrap().dim.into_iter().map(|d| d.value).collect();
        assert_eq!(dims, vec![None, Some(DimValue::DimValue(128))]);
    }

    #[test]
    fn unreadable_input_symbols_are_renamed_alike_and_readable_ones_kept() {
        let dim = |p: &str| pb::tensor_shape_proto::Dimension {
            value: Some(DimValue::DimParam(p.into())),
            ..Default::default()
        };
        let value = |dims: Vec<pb::tensor_shape_proto::Dimension>| pb::ValueInfoProto {
            name: "v".into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto { dim: dims }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let names = |v: pb::ValueInfoProto| -> Vec<String> {
            let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.unwrap().value else { unreachable!() };
            t.shape
                .unwrap()
                .dim
                .into_iter()
                .map(|d| match d.value {
                    Some(DimValue::DimParam(p)) => p,
                    _ => String::new(),
                })
                .collect()
        };
        let mut symbols = Default::default();
        let mut a = value(vec![dim("DynamicDimension.0"), dim("batch_size"), dim("h / 32")]);
        let mut b = value(vec![dim("DynamicDimension.0")]);
        assert_eq!(rename_symbols(&mut a, &mut symbols), 2);
        assert_eq!(rename_symbols(&mut b, &mut symbols), 1);
        assert_eq!(names(a), ["onnx_protect_sym_0", "batch_size", "onnx_protect_sym_1"]);
        assert_eq!(names(b), ["onnx_protect_sym_0"], "the same name, the same symbol");
    }
}
