use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;

use super::emit::{attribute, label_of, parts, Emit};
use super::Ctx;
use crate::error::{Result, RuntimeError};

/// `n` on its inputs cast to `float32`, its first output cast back to the type of its
/// first input; its other outputs (a `LayerNormalization`'s mean and inverse standard
/// deviation, in the stash type) keep their names.
pub(super) fn in_float32(n: &pb::NodeProto, ctx: &mut Ctx) -> Result<Vec<pb::NodeProto>> {
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

/// The nodes that compute `Gelu` by its definition (ONNX opset 20).
pub(super) fn gelu(n: &pb::NodeProto, ctx: &mut Ctx) -> Result<Vec<pb::NodeProto>> {
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
pub(super) fn mish(n: &pb::NodeProto, ctx: &mut Ctx) -> Result<Vec<pb::NodeProto>> {
    let (label, ins, y) = parts(n, 1, &[])?;
    let mut e = Emit { ctx, base: label, nodes: Vec::new() };
    let soft = e.op("Softplus", &[ins[0]]);
    let squashed = e.op("Tanh", &[&soft]);
    e.op_to("Mul", &[ins[0], &squashed], y);
    Ok(e.nodes)
}

/// The nodes that compute `InstanceNormalization` by its definition: normalised per
/// sample and channel (see [`normalise_per_channel`]).
pub(super) fn instance_norm(n: &pb::NodeProto, ctx: &mut Ctx) -> Result<Vec<pb::NodeProto>> {
    let (label, ins, y) = parts(n, 3, &["epsilon"])?;
    let mut e = Emit { ctx, base: label, nodes: Vec::new() };
    normalise_per_channel(&mut e, n, &ins, y, &[2]);
    Ok(e.nodes)
}

/// Emits the nodes of a normalisation node `n` (inputs `x`, `scale`, `bias`; attribute
/// `epsilon`, default 1e-5) writing to `y`: `x` viewed as `[N, C, rest]` (the shape built
/// from `Shape(x)`; a `0` "copy this dimension" in the Reshape made tract's optimiser fail
/// for a batch of one), normalised by the mean and population variance over `axes` of that
/// view (`[2]`: per sample and channel; `[0, 2]`: per channel over the batch), scaled and
/// shifted per channel, given its shape back. Returns the names of the mean and variance.
pub(super) fn normalise_per_channel(
    e: &mut Emit,
    n: &pb::NodeProto,
    ins: &[&str],
    y: &str,
    axes: &[i64],
) -> (String, String) {
    let (x, scale, bias) = (ins[0], ins[1], ins[2]);
    let epsilon = n.attribute.iter().find(|a| a.name == "epsilon").map_or(1e-5, |a| a.f);
    let shape = e.op("Shape", &[x]);
    let (zero, two, rest) = (e.ints(&[0]), e.ints(&[2]), e.ints(&[-1]));
    let leading = e.op("Slice", &[&shape, &zero, &two]);
    let flat = e.op("Concat", &[&leading, &rest]);
    if let Some(c) = e.nodes.last_mut() {
        c.attribute.push(pb::AttributeProto { i: 0, ..attribute("axis", AttributeType::Int) });
    }
    let x3 = e.op("Reshape", &[x, &flat]);
    let mean = e.reduce_mean(&x3, axes);
    let centred = e.op("Sub", &[&x3, &mean]);
    let squared = e.op("Mul", &[&centred, &centred]);
    let variance = e.reduce_mean(&squared, axes);
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
    (mean, variance)
}
