use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;

use super::Ctx;
use crate::error::{Result, RuntimeError};

pub(super) fn node(op: &str, inputs: &[&str], output: &str, name: String) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name,
        op_type: op.to_string(),
        ..Default::default()
    }
}

pub(super) fn attribute(name: &str, kind: AttributeType) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: kind as i32, ..Default::default() }
}

/// The nodes that replace one node, in order; every value they make has a fresh name.
pub(super) struct Emit<'a> {
    pub(super) ctx: &'a mut Ctx,
    /// The replaced node's name: the prefix of every new name.
    pub(super) base: String,
    pub(super) nodes: Vec<pb::NodeProto>,
}

impl Emit<'_> {
    /// Adds `op(inputs)` and returns the name of its output.
    pub(super) fn op(&mut self, op: &str, inputs: &[&str]) -> String {
        let out = self.ctx.fresh(&self.base);
        self.op_to(op, inputs, &out);
        out
    }

    /// Adds `op(inputs)` writing to `output`.
    pub(super) fn op_to(&mut self, op: &str, inputs: &[&str], output: &str) {
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
    pub(super) fn float_like(&mut self, v: f32, like: &str) -> String {
        let f = self.constant(pb::TensorProto {
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: v.to_le_bytes().to_vec(),
            ..Default::default()
        });
        self.op("CastLike", &[&f, like])
    }

    /// `Cast(x, to = FLOAT)`.
    pub(super) fn cast_to_float32(&mut self, x: &str) -> String {
        let out = self.op("Cast", &[x]);
        let to =
            pb::AttributeProto { i: pb::tensor_proto::DataType::Float as i64, ..attribute("to", AttributeType::Int) };
        if let Some(n) = self.nodes.last_mut() {
            n.attribute.push(to);
        }
        out
    }

    /// A 1-D `int64` constant.
    pub(super) fn ints(&mut self, v: &[i64]) -> String {
        self.constant(pb::TensorProto {
            dims: vec![v.len() as i64],
            data_type: pb::tensor_proto::DataType::Int64 as i32,
            raw_data: v.iter().flat_map(|i| i.to_le_bytes()).collect(),
            ..Default::default()
        })
    }

    /// `ReduceMean(x)` over `axes`, dimensions kept, in the form of the model's opset
    /// (axes an input from opset 18 on, an attribute before).
    pub(super) fn reduce_mean(&mut self, x: &str, axes: &[i64]) -> String {
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
pub(super) fn label_of(n: &pb::NodeProto) -> String {
    if n.name.is_empty() {
        n.output.first().cloned().unwrap_or_default()
    } else {
        n.name.clone()
    }
}

/// Checks a node's arity and attributes; returns its label (name, else first output),
/// its inputs and its output.
pub(super) fn parts<'n>(
    n: &'n pb::NodeProto,
    inputs: usize,
    attributes: &[&str],
) -> Result<(String, Vec<&'n str>, &'n str)> {
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
