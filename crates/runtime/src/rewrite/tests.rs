use super::*;
use tract_onnx::pb::attribute_proto::AttributeType;

use super::emit::node;
use super::ops::gelu;

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
    let then_body = pb::GraphProto { node: vec![node("Gemm", &["x", "W"], "t", "g1".into())], ..Default::default() };
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
    let dim =
        |p: &str| pb::tensor_shape_proto::Dimension { value: Some(DimValue::DimParam(p.into())), ..Default::default() };
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
