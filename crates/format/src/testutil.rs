//! Builders for small models in tests and examples (hand-encoded protobuf).

use crate::wire::{put_len_field, put_tag, put_varint, WireType};

/// Encodes a `TensorProto` with FLOAT `raw_data`.
pub fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        put_tag(&mut t, 1, WireType::Varint);
        put_varint(&mut t, d as u64);
    }
    put_tag(&mut t, 2, WireType::Varint);
    put_varint(&mut t, 1);
    put_len_field(&mut t, 8, name.as_bytes());
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
