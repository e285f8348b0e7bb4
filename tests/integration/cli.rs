//! The `onnx-protect` binary: arguments, output and exit codes.

use crate::util::{fixture_models, run};

#[test]
fn inspect_prints_a_summary_for_every_fixture() {
    for path in fixture_models() {
        let (code, out, err) = run(&["inspect", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {err}", path.display());
        assert!(out.contains("ir_version") && out.contains("weights"), "{out}");
    }
}

#[test]
fn inspect_json_has_the_documented_schema_id() {
    let path = &fixture_models()[0];
    let (code, out, _) = run(&["inspect", "--json", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid json");
    assert_eq!(v["schema"], "onnx-protect/inspect/1");
    for key in ["op_types", "tensors", "weights", "external_files", "metadata_keys", "graphs", "opsets"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
}

#[test]
fn inspect_of_a_missing_file_fails_with_one_line() {
    let (code, _, err) = run(&["inspect", "/nonexistent/model.onnx"]);
    assert_ne!(code, 0);
    assert!(err.starts_with("error: "), "{err}");
}
