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
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;

use crate::error::Result;

mod batch;
mod emit;
mod ops;
#[cfg(test)]
mod tests;

pub(crate) use batch::batch_statistics;
use ops::{gelu, in_float32, instance_norm, mish};

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
