//! Builders for small models in tests and examples (hand-encoded protobuf).

use crate::wire::{put_len_field, put_tag, put_varint, WireType};

/// The dims, FLOAT `data_type` and name fields of a `TensorProto`.
fn float_tensor_header(name: &str, dims: &[i64]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        put_tag(&mut t, 1, WireType::Varint);
        put_varint(&mut t, d as u64);
    }
    put_tag(&mut t, 2, WireType::Varint);
    put_varint(&mut t, 1);
    put_len_field(&mut t, 8, name.as_bytes());
    t
}

/// Encodes a `TensorProto` with FLOAT `raw_data`.
pub fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> Vec<u8> {
    let mut t = float_tensor_header(name, dims);
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    put_len_field(&mut t, 9, &raw);
    t
}

/// Encodes a `NodeProto`.
pub fn node(op_type: &str, inputs: &[&str], outputs: &[&str], name: &str) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        put_len_field(&mut n, 1, i.as_bytes());
    }
    for o in outputs {
        put_len_field(&mut n, 2, o.as_bytes());
    }
    put_len_field(&mut n, 3, name.as_bytes());
    put_len_field(&mut n, 4, op_type.as_bytes());
    n
}

/// Wraps graph fields into a `ModelProto` with IR version 8 and opset 17.
pub fn model_with_graph(graph: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    put_tag(&mut m, 1, WireType::Varint);
    put_varint(&mut m, 8);
    let mut opset = Vec::new();
    put_tag(&mut opset, 2, WireType::Varint);
    put_varint(&mut opset, 17);
    put_len_field(&mut m, 8, &opset);
    put_len_field(&mut m, 7, graph);
    m
}

/// A model `y = x · W` with a 2×3 FLOAT initializer `W`.
pub fn tiny_model() -> Vec<u8> {
    let mut g = Vec::new();
    put_len_field(&mut g, 1, &node("MatMul", &["x", "W"], &["y"], "mm"));
    put_len_field(&mut g, 2, b"tiny");
    put_len_field(&mut g, 5, &float_tensor("W", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    let mut vi = Vec::new();
    put_len_field(&mut vi, 1, b"x");
    put_len_field(&mut g, 11, &vi);
    let mut vo = Vec::new();
    put_len_field(&mut vo, 1, b"y");
    put_len_field(&mut g, 12, &vo);
    model_with_graph(&g)
}

/// Encodes a FLOAT `TensorProto` whose data is external: `length` bytes at `offset` of
/// the file `location` (relative to the model's directory).
pub fn external_float_tensor(name: &str, dims: &[i64], location: &str, offset: u64, length: u64) -> Vec<u8> {
    let mut t = float_tensor_header(name, dims);
    for (k, v) in [("location", location.to_string()), ("offset", offset.to_string()), ("length", length.to_string())] {
        let mut e = Vec::new();
        put_len_field(&mut e, 1, k.as_bytes());
        put_len_field(&mut e, 2, v.as_bytes());
        put_len_field(&mut t, 13, &e);
    }
    put_tag(&mut t, 14, WireType::Varint);
    put_varint(&mut t, 1);
    t
}

/// A model `y = x · W_0 · W_1 · …`: one `MatMul` per initializer, in order (each an
/// encoded `TensorProto`, for example from [`float_tensor`] or [`external_float_tensor`],
/// named `W{i}`).
pub fn matmul_chain(initializers: &[Vec<u8>]) -> Vec<u8> {
    let mut g = Vec::new();
    let names: Vec<String> = (0..initializers.len()).map(|i| format!("W{i}")).collect();
    let values: Vec<String> =
        (0..=initializers.len()).map(|i| if i == 0 { "x".into() } else { format!("h{i}") }).collect();
    for (i, w) in names.iter().enumerate() {
        let out = if i + 1 == names.len() { "y" } else { values[i + 1].as_str() };
        put_len_field(&mut g, 1, &node("MatMul", &[values[i].as_str(), w], &[out], &format!("mm{i}")));
    }
    put_len_field(&mut g, 2, b"chain");
    for t in initializers {
        put_len_field(&mut g, 5, t);
    }
    let mut vi = Vec::new();
    put_len_field(&mut vi, 1, b"x");
    put_len_field(&mut g, 11, &vi);
    let mut vo = Vec::new();
    put_len_field(&mut vo, 1, b"y");
    put_len_field(&mut g, 12, &vo);
    model_with_graph(&g)
}

/// A length-delimited field `number` holding `payload` (tag and length included).
#[cfg(test)]
pub(crate) fn len_field(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    put_len_field(&mut f, number, payload);
    f
}
