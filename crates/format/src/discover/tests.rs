use super::*;
use crate::testutil::{float_tensor, model_with_graph, node};
use crate::wire::put_len_field;

fn model(nodes: &[Vec<u8>], tensors: &[Vec<u8>]) -> Model {
    let mut g = Vec::new();
    for n in nodes {
        put_len_field(&mut g, 1, n);
    }
    put_len_field(&mut g, 2, b"g");
    for t in tensors {
        put_len_field(&mut g, 5, t);
    }
    Model::from_vec(model_with_graph(&g), None).unwrap()
}

/// The names of the first layer's weights and of the last layer's, sorted.
fn end_layer_names(w: &BTreeMap<String, Weight>) -> (Vec<&str>, Vec<&str>) {
    let names = |f: fn(&Weight) -> bool| w.iter().filter(|(_, w)| f(w)).map(|(n, _)| n.as_str()).collect();
    (names(|w| w.first_layer), names(|w| w.last_layer))
}

fn by_name(m: &Model) -> BTreeMap<String, Weight> {
    discover(m).into_iter().map(|w| (m.tensors[w.tensor].name.clone(), w)).collect()
}

/// A `GraphProto` of `nodes` with the given input and output names.
fn graph(name: &str, nodes: &[Vec<u8>], inputs: &[&str], outputs: &[&str], tensors: &[Vec<u8>]) -> Vec<u8> {
    let mut g = Vec::new();
    for n in nodes {
        put_len_field(&mut g, 1, n);
    }
    put_len_field(&mut g, 2, name.as_bytes());
    for t in tensors {
        put_len_field(&mut g, 5, t);
    }
    for (field, names) in [(11, inputs), (12, outputs)] {
        for v in names {
            let mut vi = Vec::new();
            put_len_field(&mut vi, 1, v.as_bytes());
            put_len_field(&mut g, field, &vi);
        }
    }
    g
}

/// `node` with graph attributes (`AttributeProto.g`, type GRAPH).
fn with_graphs(mut n: Vec<u8>, graphs: &[(&str, Vec<u8>)]) -> Vec<u8> {
    for (name, g) in graphs {
        let mut a = Vec::new();
        put_len_field(&mut a, 1, name.as_bytes());
        put_len_field(&mut a, 6, g);
        crate::wire::put_tag(&mut a, 20, crate::wire::WireType::Varint);
        crate::wire::put_varint(&mut a, 5);
        put_len_field(&mut n, 5, &a);
    }
    n
}

#[test]
fn end_layers_follow_data_into_subgraphs_and_not_through_shapes() {
    // x -> MatMul(W0) -> MatMul(W1) -> Reshape(to Shape(x)) -> If(c) { MatMul(Wt) | Loop { MatMul(Wl) } } -> y
    let then_branch = graph("then", &[node("MatMul", &["r", "Wt"], &["ot"], "mt")], &[], &["ot"], &[]);
    let body = graph(
        "body",
        &[node("Identity", &["cond_in"], &["cond_out"], "keep"), node("MatMul", &["carried", "Wl"], &["next"], "ml")],
        &["i", "cond_in", "carried"],
        &["cond_out", "next"],
        &[float_tensor("Wl", &[2, 2], &[1.0; 4])],
    );
    let else_branch = graph(
        "else",
        &[with_graphs(node("Loop", &["", "", "r"], &["oe"], "loop"), &[("body", body)])],
        &[],
        &["oe"],
        &[],
    );
    let main = graph(
        "main",
        &[
            node("MatMul", &["x", "W0"], &["h"], "m0"),
            node("MatMul", &["h", "W1"], &["h1"], "m1"),
            node("Shape", &["x"], &["sx"], "shape"),
            node("Reshape", &["h1", "sx"], &["r"], "reshape"),
            with_graphs(
                node("If", &["c"], &["y"], "if"),
                &[("then_branch", then_branch), ("else_branch", else_branch)],
            ),
        ],
        &["x", "c"],
        &["y"],
        &[
            float_tensor("W0", &[2, 2], &[1.0; 4]),
            float_tensor("W1", &[2, 2], &[1.0; 4]),
            float_tensor("Wt", &[2, 2], &[1.0; 4]),
        ],
    );
    let m = Model::from_vec(model_with_graph(&main), None).unwrap();
    let w = by_name(&m);
    let (first, last) = end_layer_names(&w);
    assert_eq!(first, ["W0"], "Shape(x) carries no values to the layers after the Reshape");
    assert_eq!(last, ["Wl", "Wt"], "both branches make y; the Loop's output is its body's");
}

#[test]
fn a_dynamically_quantized_chain_has_one_first_and_one_last_layer() {
    // As quantize_dynamic writes a layer: x -> DynamicQuantizeLinear -> (q, s, z);
    // ConvInteger(q, Wk, z) -> Cast -> Mul(Mul(s, Wk_scale)) -> next layer. The input's
    // scale reaches every later layer's Mul, its data only the first ConvInteger.
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut prev = "x".to_string();
    for k in 0..3 {
        let (q, s, z) = (format!("q{k}"), format!("s{k}"), format!("z{k}"));
        let (w, ws, c, f, sc, out) = (
            format!("W{k}"),
            format!("W{k}_scale"),
            format!("c{k}"),
            format!("f{k}"),
            format!("sc{k}"),
            format!("h{k}"),
        );
        nodes.push(node("DynamicQuantizeLinear", &[&prev], &[&q, &s, &z], &format!("dq{k}")));
        nodes.push(node("ConvInteger", &[&q, &w, &z], &[&c], &format!("conv{k}")));
        nodes.push(node("Cast", &[&c], &[&f], &format!("cast{k}")));
        nodes.push(node("Mul", &[&s, &ws], &[&sc], &format!("scale{k}")));
        nodes.push(node("Mul", &[&f, &sc], &[&out], &format!("out{k}")));
        inits.push(float_tensor(&w, &[2, 1, 1, 1], &[1.0, -1.0]));
        inits.push(float_tensor(&ws, &[], &[0.5]));
        prev = out;
    }
    let main = graph("main", &nodes, &["x"], &[&prev], &inits);
    let m = Model::from_vec(model_with_graph(&main), None).unwrap();
    let w = by_name(&m);
    let (first, last) = end_layer_names(&w);
    assert_eq!((first, last), (vec!["W0"], vec!["W2"]), "the scale path of DynamicQuantizeLinear is not a layer path");
}

#[test]
fn weights_passed_to_a_local_function_are_found_through_its_body() {
    // main: x -> local.Dense(x, W, B) -> local.Dense(h, W2, B2) -> y; Dense(x, w, b) = MatMul(x, w) + b
    let mut f = Vec::new();
    put_len_field(&mut f, 1, b"Dense");
    for i in ["x", "w", "b"] {
        put_len_field(&mut f, 4, i.as_bytes());
    }
    put_len_field(&mut f, 5, b"y");
    put_len_field(&mut f, 7, &node("MatMul", &["x", "w"], &["t"], "mm"));
    put_len_field(&mut f, 7, &node("Add", &["t", "b"], &["y"], "add"));
    put_len_field(&mut f, 10, b"local");
    let call = |inputs: &[&str], out: &str, name: &str| {
        let mut n = node("Dense", inputs, &[out], name);
        put_len_field(&mut n, 7, b"local");
        n
    };
    let main = graph(
        "main",
        &[call(&["x", "W", "B"], "h", "d1"), call(&["h", "W2", "B2"], "y", "d2")],
        &["x"],
        &["y"],
        &[
            float_tensor("W", &[2, 2], &[1.0; 4]),
            float_tensor("B", &[2], &[0.5; 2]),
            float_tensor("W2", &[2, 2], &[1.0; 4]),
            float_tensor("B2", &[2], &[0.5; 2]),
        ],
    );
    let mut m = model_with_graph(&main);
    put_len_field(&mut m, 25, &f);
    let m = Model::from_vec(m, None).unwrap();
    let w = by_name(&m);
    assert_eq!(w.len(), 4);
    let u = &w["W"].uses;
    assert_eq!(u.len(), 1, "the body's MatMul, not the call: {u:?}");
    assert_eq!((u[0].op_type.as_str(), u[0].role, u[0].kind), ("MatMul", "B", WeightKind::Main));
    assert_eq!(m.nodes[u[0].via[0]].name, "d1", "the call is on the way");
    assert_eq!(w["W2"].uses[0].via.iter().map(|&n| m.nodes[n].name.as_str()).collect::<Vec<_>>(), ["d2"]);
    assert_eq!(w["B"].tensor_role(), TensorRole::Bias);
    let (first, last) = end_layer_names(&w);
    assert_eq!((first, last), (vec!["B", "W"], vec!["B2", "W2"]));
}

#[test]
fn a_float_weight_quantized_in_the_graph_is_the_convolution_s() {
    // What onnxruntime's static quantizer writes when it keeps float weights:
    // W -> QuantizeLinear -> DequantizeLinear -> Conv.
    let m = model(
        &[
            node("QuantizeLinear", &["W", "s", "z"], &["Wq"], "q"),
            node("DequantizeLinear", &["Wq", "s", "z"], &["Wd"], "dq"),
            node("Conv", &["x", "Wd"], &["y"], "conv"),
        ],
        &[float_tensor("W", &[2, 1, 1, 1], &[0.5, -0.5]), float_tensor("s", &[], &[0.1])],
    );
    let w = by_name(&m);
    let u = &w["W"].uses[0];
    assert_eq!((u.op_type.as_str(), u.role, u.kind), ("Conv", "W", WeightKind::Main));
    let via: Vec<&str> = u.via.iter().map(|&n| m.nodes[n].op_type.as_str()).collect();
    assert_eq!(via, ["QuantizeLinear", "DequantizeLinear"]);
}

#[test]
fn onnxruntime_contrib_operators_have_weights_and_other_domains_do_not() {
    let ms = |op: &str, inputs: &[&str], out: &str| {
        let mut n = node(op, inputs, &[out], out);
        put_len_field(&mut n, 7, b"com.microsoft");
        n
    };
    let mut packed = Vec::new();
    crate::wire::put_tag(&mut packed, 1, crate::wire::WireType::Varint);
    crate::wire::put_varint(&mut packed, 4);
    crate::wire::put_tag(&mut packed, 2, crate::wire::WireType::Varint);
    crate::wire::put_varint(&mut packed, 2); // UINT8
    put_len_field(&mut packed, 8, b"Wq");
    put_len_field(&mut packed, 9, &[1, 2, 3, 4]);
    let m = model(
        &[
            ms("MatMulNBits", &["x", "Wq", "scales"], "h"),
            node("Attention", &["h", "K", "V"], &["y"], "onnx_attention"),
            ms("DynamicQuantizeLSTM", &["x", "Wl", "Rl", "Bl", "", "", "", "", "Wls"], "l"),
            ms("QEmbedLayerNormalization", &["ids", "", "Eq", "Pq", "", "Gq", "Bq", "", "Es"], "e"),
            ms("QLinearAdd", &["h", "hs", "hz", "Aq", "As", "Az", "ys", "yz"], "a"),
            ms("QLinearConcat", &["ys", "yz", "h", "hs", "hz", "Cq", "Cs", "Cz"], "c"),
            ms("QMoE", &["h", "r", "F1", "F1s", "", "F2", "F2s"], "moe"),
        ],
        &[
            packed,
            float_tensor("scales", &[1], &[0.1]),
            float_tensor("K", &[2, 2], &[1.0; 4]),
            float_tensor("Wl", &[1, 2, 8], &[0.5; 16]),
            float_tensor("Rl", &[1, 2, 8], &[0.5; 16]),
            float_tensor("Bl", &[1, 16], &[0.0; 16]),
            float_tensor("Wls", &[1], &[0.1]),
            uint8_tensor("Eq", &[2, 2]),
            uint8_tensor("Pq", &[2, 2]),
            uint8_tensor("Gq", &[2]),
            uint8_tensor("Bq", &[2]),
            float_tensor("Es", &[1], &[0.1]),
            uint8_tensor("Aq", &[2, 2]),
            uint8_tensor("Az", &[1]),
            uint8_tensor("Cq", &[1, 2]),
            uint8_tensor("F1", &[2, 2, 2]),
            uint8_tensor("F2", &[2, 2, 2]),
            float_tensor("F1s", &[2, 2], &[0.1; 4]),
            float_tensor("F2s", &[2, 2], &[0.1; 4]),
        ],
    );
    let w = by_name(&m);
    let u = &w["Wq"].uses[0];
    assert_eq!((u.op_type.as_str(), u.role, u.kind), ("MatMulNBits", "B", WeightKind::Main));
    assert_eq!(w["scales"].uses[0].kind, WeightKind::Quant);
    // The default domain's Attention reads activations: its K is a generic input.
    assert_eq!(w["K"].uses[0].kind, WeightKind::Other);
    // quantize_dynamic's LSTM keeps int8 W and R with their scales.
    let roles: Vec<_> = ["Wl", "Rl", "Bl", "Wls"]
        .iter()
        .map(|n| (w[*n].uses[0].role, w[*n].uses[0].kind, w[*n].uses[0].tensor_role))
        .collect();
    assert_eq!(
        roles,
        [
            ("W", WeightKind::Main, TensorRole::Recurrent),
            ("R", WeightKind::Main, TensorRole::Recurrent),
            ("B", WeightKind::Bias, TensorRole::Bias),
            ("W_scale", WeightKind::Quant, TensorRole::Quant)
        ]
    );
    // quantize_dynamic's fused BERT embedding: its uint8 tables are embeddings (an integer
    // constant outside the table would not be a weight at all).
    let roles: Vec<_> = ["Eq", "Pq", "Gq", "Bq", "Es"]
        .iter()
        .map(|n| (w[*n].uses[0].role, w[*n].uses[0].kind, w[*n].uses[0].tensor_role))
        .collect();
    assert_eq!(
        roles,
        [
            ("word_embedding_quant", WeightKind::Main, TensorRole::Embedding),
            ("position_embedding_quant", WeightKind::Main, TensorRole::Embedding),
            ("gamma_quant", WeightKind::Norm, TensorRole::Norm),
            ("beta_quant", WeightKind::Norm, TensorRole::Norm),
            ("word_embedding_scale", WeightKind::Quant, TensorRole::Quant)
        ]
    );
    // QOperator quantisation's constant operands (a position embedding added, a class token
    // concatenated) are weights; their zero points are not.
    assert_eq!((w["Aq"].uses[0].role, w["Aq"].uses[0].kind), ("B", WeightKind::Other));
    assert_eq!((w["Cq"].uses[0].role, w["Cq"].uses[0].kind), ("X", WeightKind::Other));
    assert!(!w.contains_key("Az"));
    // A quantised mixture of experts' uint8 expert weights, and their scales.
    let moe: Vec<_> = ["F1", "F2", "F1s"].iter().map(|n| (w[*n].uses[0].role, w[*n].uses[0].kind)).collect();
    assert_eq!(
        moe,
        [
            ("fc1_experts_weights", WeightKind::Main),
            ("fc2_experts_weights", WeightKind::Main),
            ("fc1_scales", WeightKind::Quant)
        ]
    );
}

/// A UINT8 tensor of `dims` (raw data 1, 2, 3, …).
fn uint8_tensor(name: &str, dims: &[i64]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        crate::wire::put_tag(&mut t, 1, crate::wire::WireType::Varint);
        crate::wire::put_varint(&mut t, d as u64);
    }
    crate::wire::put_tag(&mut t, 2, crate::wire::WireType::Varint);
    crate::wire::put_varint(&mut t, 2); // UINT8
    put_len_field(&mut t, 8, name.as_bytes());
    let n: i64 = dims.iter().product();
    put_len_field(&mut t, 9, &(1..=n as u8).collect::<Vec<_>>());
    t
}

#[test]
fn a_recurrent_weight_built_with_slice_and_concat_is_its_constant() {
    let m = model(
        &[
            node("Slice", &["R0", "s0", "e0"], &["r_a"], "sa"),
            node("Slice", &["R0", "s1", "e1"], &["r_b"], "sb"),
            node("Concat", &["r_b", "r_a"], &["r_cat"], "cat"),
            node("Unsqueeze", &["r_cat", "ax"], &["r"], "un"),
            node("LSTM", &["x", "W0", "r", "B0"], &["y"], "lstm"),
        ],
        &[
            float_tensor("R0", &[8, 2], &[0.5; 16]),
            float_tensor("W0", &[1, 8, 3], &[0.1; 24]),
            float_tensor("B0", &[1, 16], &[0.0; 16]),
        ],
    );
    let w = by_name(&m);
    let r = &w["R0"];
    assert_eq!(r.uses.len(), 1, "one use whatever the number of paths");
    let u = &r.uses[0];
    assert_eq!(
        (u.op_type.as_str(), u.role, u.kind, u.tensor_role),
        ("LSTM", "R", WeightKind::Main, TensorRole::Recurrent)
    );
    let via: Vec<&str> = u.via.iter().map(|&n| m.nodes[n].op_type.as_str()).collect();
    assert_eq!(via, ["Slice", "Concat", "Unsqueeze"]);
    assert_eq!(w["W0"].tensor_role(), TensorRole::Recurrent);
    assert_eq!(w["B0"].tensor_role(), TensorRole::Bias);
}

#[test]
fn float_constants_of_any_operator_get_a_role_by_structure() {
    let m = model(
        &[
            node("MatMul", &["x", "Wm"], &["h0"], "mm"),
            node("Add", &["h0", "bias"], &["h1"], "add_bias"),
            node("Add", &["h1", "pos"], &["h2"], "add_pos"),
            node("Mul", &["h2", "gamma"], &["h3"], "mul"),
            node("Add", &["h3", "eps"], &["h4"], "add_eps"),
            node("Pow", &["h4", "two"], &["y"], "pow"),
        ],
        &[
            float_tensor("Wm", &[4, 4], &[1.0; 16]),
            float_tensor("bias", &[4], &[1.0; 4]),
            float_tensor("pos", &[1, 3, 4], &[1.0; 12]),
            float_tensor("gamma", &[4], &[1.0; 4]),
            float_tensor("eps", &[], &[1e-5]),
            float_tensor("two", &[1], &[2.0]),
        ],
    );
    let w = by_name(&m);
    let role = |n: &str| w[n].tensor_role();
    assert_eq!(role("Wm"), TensorRole::Weight);
    assert_eq!(role("bias"), TensorRole::Bias);
    assert_eq!(role("pos"), TensorRole::PositionEmbedding);
    assert_eq!(role("gamma"), TensorRole::Scale);
    assert_eq!(role("eps"), TensorRole::Other);
    assert_eq!(role("two"), TensorRole::Other);
    let u = &w["bias"].uses[0];
    assert_eq!((u.op_type.as_str(), u.role, u.kind), ("Add", "input1", WeightKind::Other));
}

#[test]
fn integer_constants_outside_the_role_table_are_not_weights() {
    let mut shape = Vec::new();
    put_len_field(&mut shape, 8, b"shape");
    shape.extend_from_slice(&[0x08, 0x01, 0x10, 0x07]); // dims [1], data_type INT64
    put_len_field(&mut shape, 9, &2i64.to_le_bytes());
    let m = model(&[node("Reshape", &["x", "shape"], &["y"], "r")], &[shape]);
    assert!(discover(&m).is_empty());
}

/// An INT8 TensorProto `name` of dims `[n]` in `raw_data`.
fn int8_tensor(name: &str, values: &[i8]) -> Vec<u8> {
    let mut t = Vec::new();
    put_len_field(&mut t, 8, name.as_bytes());
    t.extend_from_slice(&[0x08, values.len() as u8, 0x10, 0x03]); // dims [n], data_type INT8
    put_len_field(&mut t, 9, &values.iter().map(|&v| v as u8).collect::<Vec<_>>());
    t
}

#[test]
fn an_integer_constant_dequantized_on_its_way_is_a_weight_and_one_used_as_it_is_not() {
    // A QDQ model's Add bias: b_q (INT8) -> DequantizeLinear -> Add; c_q (INT8) added as
    // it is (an integer Add: no weight).
    let m = model(
        &[
            node("DequantizeLinear", &["b_q", "s"], &["b"], "dq"),
            node("Add", &["x", "b"], &["y"], "add"),
            node("Add", &["n", "c_q"], &["z"], "add2"),
        ],
        &[int8_tensor("b_q", &[1, -2, 3]), int8_tensor("c_q", &[4, 5, 6]), float_tensor("s", &[], &[0.1])],
    );
    let w = by_name(&m);
    let u = &w["b_q"].uses[0];
    assert_eq!((u.op_type.as_str(), u.role, u.kind), ("Add", "input1", WeightKind::Other));
    assert_eq!(u.via.iter().map(|&n| m.nodes[n].name.as_str()).collect::<Vec<_>>(), ["dq"]);
    assert!(!w.contains_key("c_q"), "{:?}", w.keys().collect::<Vec<_>>());
}

#[test]
fn a_constant_only_a_pass_through_consumes_is_still_found() {
    let m = model(&[node("Concat", &["x", "tok"], &["y"], "cat")], &[float_tensor("tok", &[1, 4], &[0.0; 4])]);
    let w = by_name(&m);
    let u = &w["tok"].uses[0];
    assert_eq!((u.op_type.as_str(), u.role, u.tensor_role), ("Concat", "input1", TensorRole::Other));
}

#[test]
fn cycles_of_pass_through_nodes_end() {
    let m = model(
        &[
            node("Identity", &["b"], &["a"], "i1"),
            node("Identity", &["a"], &["b"], "i2"),
            node("MatMul", &["x", "a"], &["y"], "mm"),
        ],
        &[],
    );
    assert!(discover(&m).is_empty());
}
