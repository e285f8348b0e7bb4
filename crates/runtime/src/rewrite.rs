//! Rewrites of a parsed model, in memory, that let tract 0.21 run what
//! onnxruntime runs. The model file is never changed; the rewritten graph computes
//! the same function.
//!
//! * **Symbolic dimensions in `value_info`** (`batch`, `s0`, …, as the PyTorch
//!   exporter writes them) become unknown dimensions. tract turns each name into a
//!   symbol, and a symbol does not unify with the concrete input shapes
//!   [`Loaded::prepare`](crate::engine::Loaded::prepare) sets, so inference failed
//!   ("Failed analyse for node … Reshape"). Fixed dimensions stay.
//! * **`Gelu`** (opset 20), which tract 0.21 lacks, becomes the subgraph of its
//!   definition: `0.5·x·(1 + erf(x/√2))`, or with `approximate = "tanh"`
//!   `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`. The constants are `float32`
//!   scalars cast to the input's type with `CastLike`, so `float16` and `double`
//!   inputs keep their type.
//!
//! Both apply to the main graph and to every subgraph (`If`, `Loop`, `Scan` bodies).
//! `LayerNormalization`, `LSTM`, `GRU` and the attention of exported transformers
//! (`MatMul`, `Softmax`, `Transpose`) are operators tract runs as they are.

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
    /// Symbolic dimensions removed from `value_info` entries.
    pub symbolic_dims: usize,
}

/// Rewrites `model` in place so that tract can load and run it (see the module docs).
pub fn for_tract(model: &mut pb::ModelProto) -> Result<Rewritten> {
    let mut names = HashSet::new();
    if let Some(g) = &model.graph {
        collect_names(g, &mut names);
    }
    let mut fresh = Fresh { taken: names, next: 0 };
    let mut done = Rewritten::default();
    if let Some(g) = &mut model.graph {
        rewrite_graph(g, &mut fresh, &mut done)?;
    }
    Ok(done)
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

/// Names that no value or node of the model uses yet.
struct Fresh {
    taken: HashSet<String>,
    next: u64,
}

impl Fresh {
    fn name(&mut self, base: &str) -> String {
        loop {
            let candidate = format!("{base}::onnx_protect_{}", self.next);
            self.next += 1;
            if self.taken.insert(candidate.clone()) {
                return candidate;
            }
        }
    }
}

fn rewrite_graph(g: &mut pb::GraphProto, fresh: &mut Fresh, done: &mut Rewritten) -> Result<()> {
    for v in &mut g.value_info {
        done.symbolic_dims += forget_symbols(v);
    }
    let nodes = std::mem::take(&mut g.node);
    let mut out = Vec::with_capacity(nodes.len());
    for mut n in nodes {
        for a in &mut n.attribute {
            for sub in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                rewrite_graph(sub, fresh, done)?;
            }
        }
        if n.op_type == "Gelu" && (n.domain.is_empty() || n.domain == "ai.onnx") {
            out.extend(gelu(&n, fresh)?);
            done.gelu += 1;
        } else {
            out.push(n);
        }
    }
    g.node = out;
    Ok(())
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

fn node(op: &str, inputs: &[&str], output: &str, name: String) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name,
        op_type: op.to_string(),
        ..Default::default()
    }
}

/// A `Constant` node holding the `float32` scalar `v`.
fn scalar(v: f32, output: &str, name: String) -> pb::NodeProto {
    let t = pb::TensorProto {
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: v.to_le_bytes().to_vec(),
        ..Default::default()
    };
    let value = pb::AttributeProto {
        name: "value".into(),
        r#type: AttributeType::Tensor as i32,
        t: Some(t),
        ..Default::default()
    };
    pb::NodeProto { attribute: vec![value], ..node("Constant", &[], output, name) }
}

/// The nodes that compute `Gelu` by its definition (ONNX opset 20).
fn gelu(n: &pb::NodeProto, fresh: &mut Fresh) -> Result<Vec<pb::NodeProto>> {
    let label = if n.name.is_empty() { n.output.first().cloned().unwrap_or_default() } else { n.name.clone() };
    let refuse = |why: String| RuntimeError::UnsupportedOps { ops: vec![format!("Gelu (node '{label}', {why})")] };
    let (x, y) = match (n.input.as_slice(), n.output.as_slice()) {
        ([x], [y]) if !x.is_empty() && !y.is_empty() => (x.as_str(), y.as_str()),
        _ => return Err(refuse(format!("{} inputs and {} outputs", n.input.len(), n.output.len()))),
    };
    let mut approximate = "none".to_string();
    for a in &n.attribute {
        match a.name.as_str() {
            "approximate" => approximate = String::from_utf8_lossy(&a.s).into_owned(),
            other => return Err(refuse(format!("unknown attribute '{other}'"))),
        }
    }
    let base = label.as_str();
    let mut nodes = Vec::new();
    // A scalar constant of x's type.
    let constant = |v: f32, nodes: &mut Vec<pb::NodeProto>, fresh: &mut Fresh| {
        let (f, c) = (fresh.name(base), fresh.name(base));
        nodes.push(scalar(v, &f, fresh.name(base)));
        nodes.push(node("CastLike", &[&f, x], &c, fresh.name(base)));
        c
    };
    let one = constant(1.0, &mut nodes, fresh);
    let half = constant(0.5, &mut nodes, fresh);
    // `inner` is the argument of erf or tanh, `squashed` its value.
    let squashed = match approximate.as_str() {
        "none" => {
            let scale = constant(std::f32::consts::FRAC_1_SQRT_2, &mut nodes, fresh);
            let (inner, squashed) = (fresh.name(base), fresh.name(base));
            nodes.push(node("Mul", &[x, &scale], &inner, fresh.name(base)));
            nodes.push(node("Erf", &[&inner], &squashed, fresh.name(base)));
            squashed
        }
        "tanh" => {
            let cubic = constant(0.044715, &mut nodes, fresh);
            // √(2/π)
            let scale = constant((2.0 / std::f64::consts::PI).sqrt() as f32, &mut nodes, fresh);
            let [x2, x3, cx3, sum, inner, squashed] = std::array::from_fn(|_| fresh.name(base));
            nodes.push(node("Mul", &[x, x], &x2, fresh.name(base)));
            nodes.push(node("Mul", &[&x2, x], &x3, fresh.name(base)));
            nodes.push(node("Mul", &[&x3, &cubic], &cx3, fresh.name(base)));
            nodes.push(node("Add", &[x, &cx3], &sum, fresh.name(base)));
            nodes.push(node("Mul", &[&sum, &scale], &inner, fresh.name(base)));
            nodes.push(node("Tanh", &[&inner], &squashed, fresh.name(base)));
            squashed
        }
        other => return Err(refuse(format!("approximate='{other}'"))),
    };
    let [plus_one, times_x] = std::array::from_fn(|_| fresh.name(base));
    nodes.push(node("Add", &[&squashed, &one], &plus_one, fresh.name(base)));
    nodes.push(node("Mul", &[x, &plus_one], &times_x, fresh.name(base)));
    nodes.push(node("Mul", &[&times_x, &half], y, fresh.name(base)));
    Ok(nodes)
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

    fn fresh() -> Fresh {
        Fresh { taken: ["x", "y", "g"].iter().map(|s| s.to_string()).collect(), next: 0 }
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

    /// A model `y = Gelu(x)` (with the `approximate` attribute when given), hand-encoded.
    fn gelu_model(approximate: Option<&str>) -> Vec<u8> {
        use onnx_protect_format::testutil::{model_with_graph, node};
        use onnx_protect_format::wire::{put_len_field, put_tag, put_varint, WireType};
        let mut n = node("Gelu", &["x"], &["y"], "g");
        if let Some(a) = approximate {
            let mut attr = Vec::new();
            put_len_field(&mut attr, 1, b"approximate");
            put_len_field(&mut attr, 4, a.as_bytes());
            put_tag(&mut attr, 20, WireType::Varint);
            put_varint(&mut attr, AttributeType::String as u64);
            put_len_field(&mut n, 5, &attr);
        }
        let mut g = Vec::new();
        put_len_field(&mut g, 1, &n);
        put_len_field(&mut g, 2, b"gelu");
        for (field, name) in [(11, b"x"), (12, b"y")] {
            let mut v = Vec::new();
            put_len_field(&mut v, 1, name);
            put_len_field(&mut g, field, &v);
        }
        model_with_graph(&g)
    }

    #[test]
    fn gelu_runs_in_tract_with_both_approximations() {
        use crate::engine::{run_once, External};
        use crate::npy::{Dtype, NpyArray};
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
            let input = NpyArray::new(Dtype::F32, vec![8], x.iter().flat_map(|v| v.to_le_bytes()).collect()).unwrap();
            let inputs = std::collections::BTreeMap::from([("x".to_string(), input)]);
            let out = run_once(&gelu_model(approximate), &External::new(), &inputs).unwrap();
            for (got, want) in out[0].1.to_f64().iter().zip(want) {
                assert!((got - want).abs() <= 1e-6, "{approximate:?}: {got} vs {want}");
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
        assert_eq!(for_tract(&mut model).unwrap(), Rewritten { gelu: 2, symbolic_dims: 0 });
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
    fn fresh_names_skip_taken_ones() {
        let mut f = Fresh { taken: HashSet::from(["g::onnx_protect_0".to_string()]), next: 0 };
        assert_eq!(f.name("g"), "g::onnx_protect_1");
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
}
