//! The fixture models parse, match the independent description made with the
//! `onnx` Python package, and survive a read/write round trip byte for byte.

use onnx_protect_format::write::Plan;
use onnx_protect_format::Model;
use serde_json::Value;

use crate::util::fixture_models;

#[test]
fn every_fixture_matches_its_onnx_python_description() {
    for path in fixture_models() {
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(path.with_file_name("expected.json")).expect("expected.json"),
        )
        .expect("json");
        let model = Model::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let report = onnx_protect_core::inspect::inspect(&model);
        let ctx = path.display().to_string();
        assert_eq!(Some(expected["ir_version"].as_i64().unwrap()), report.ir_version, "{ctx}");
        assert_eq!(expected["node_count"].as_u64().unwrap() as usize, report.node_count, "{ctx}");
        let ops: std::collections::BTreeMap<String, usize> = expected["op_counts"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap() as usize))
            .collect();
        // describe.py counts by op_type alone; the report qualifies non-ONNX domains.
        let mut got_ops = std::collections::BTreeMap::new();
        for (k, v) in &report.op_types {
            let op = k.rsplit(':').next().unwrap_or(k).to_string();
            *got_ops.entry(op).or_insert(0) += v;
        }
        assert_eq!(ops, got_ops, "{ctx}");
        let mut want: Vec<(String, String, Vec<u64>, String, u64)> = expected["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["data_type_name"].as_str().unwrap().to_string(),
                    t["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect(),
                    t["storage"].as_str().unwrap().to_string(),
                    t["nbytes"].as_u64().unwrap(),
                )
            })
            .collect();
        let mut got: Vec<(String, String, Vec<u64>, String, u64)> = report
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.data_type.to_string(), t.dims.clone(), t.storage.to_string(), t.nbytes))
            .collect();
        want.sort();
        got.sort();
        assert_eq!(want, got, "{ctx}");
    }
}

#[test]
fn every_fixture_round_trips_byte_identically() {
    for path in fixture_models() {
        let model = Model::open(&path).expect("parses");
        let plan = Plan::new(model.bytes().len() as u64, Vec::new(), Vec::new()).expect("plan");
        let mut out = Vec::new();
        plan.write(model.bytes(), &mut out, &mut |_, _, _| Ok(())).expect("write");
        assert_eq!(out, std::fs::read(&path).expect("read"), "{}", path.display());
    }
}

#[test]
fn every_tensor_payload_decodes_to_its_declared_length() {
    for path in fixture_models() {
        let model = Model::open(&path).expect("parses");
        for t in &model.tensors {
            if matches!(t.data, onnx_protect_format::TensorData::Strings { .. }) {
                continue;
            }
            let b = model.tensor_bytes(t.id).expect("bytes");
            assert_eq!(b.len() as u64, t.nbytes, "{} {}", path.display(), t.name);
        }
    }
}
