//! The ONNX backend test corpus (fetched by `scripts/fetch-corpus.sh`, not committed):
//! every model parses, round-trips byte-identically, and `inspect` agrees with an
//! independent description made with the `onnx` Python package.

use std::collections::BTreeMap;

use onnx_protect_format::write::Plan;
use onnx_protect_format::Model;
use serde_json::Value;

use crate::util::root;

type TensorKey = (String, String, Vec<u64>, String, u64);

fn lines() -> Vec<Value> {
    let path = root().join("corpus/expected.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!("{} is missing: run scripts/fetch-corpus.sh (the README's test command does)", path.display())
    });
    text.lines().map(|l| serde_json::from_str(l).expect("jsonl")).collect()
}

#[test]
fn corpus_parses_round_trips_and_matches_onnx_python() {
    let lines = lines();
    assert!(lines.len() > 1800, "corpus has only {} models", lines.len());
    let mut failures = Vec::new();
    let (mut compared_tensors, mut compared_models) = (0usize, 0usize);
    for exp in &lines {
        let file = exp["file"].as_str().expect("file");
        let path = root().join("corpus/data").join(file);
        let model = match Model::open(&path) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{file}: parse: {e}"));
                continue;
            }
        };
        let plan = Plan::new(model.bytes().len() as u64, Vec::new(), Vec::new()).expect("plan");
        let mut out = Vec::with_capacity(model.bytes().len());
        plan.write(model.bytes(), &mut out, &mut |_, _, _| Ok(())).expect("write");
        if out != model.bytes() {
            failures.push(format!("{file}: round trip differs"));
        }
        if exp.get("error").is_some() {
            continue;
        }
        let report = onnx_protect_core::inspect::inspect(&model);
        if exp["ir_version"].as_i64() != report.ir_version {
            failures.push(format!("{file}: ir_version"));
        }
        if exp["node_count"].as_u64() != Some(report.node_count as u64) {
            failures.push(format!("{file}: node_count {} vs {}", exp["node_count"], report.node_count));
        }
        let want_ops: BTreeMap<String, u64> = exp["op_counts"]
            .as_object()
            .expect("op_counts")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect();
        let mut got_ops = BTreeMap::new();
        for (k, v) in &report.op_types {
            *got_ops.entry(k.rsplit(':').next().unwrap_or(k).to_string()).or_insert(0u64) += *v as u64;
        }
        if want_ops != got_ops {
            failures.push(format!("{file}: op counts {want_ops:?} vs {got_ops:?}"));
        }
        let mut want: Vec<TensorKey> = exp["tensors"]
            .as_array()
            .expect("tensors")
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap_or("").to_string(),
                    t["data_type_name"].as_str().unwrap_or("").to_string(),
                    t["dims"].as_array().map(|a| a.iter().filter_map(|d| d.as_u64()).collect()).unwrap_or_default(),
                    t["storage"].as_str().unwrap_or("").to_string(),
                    t["nbytes"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let mut got: Vec<TensorKey> = report
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.data_type.to_string(), t.dims.clone(), t.storage.to_string(), t.nbytes))
            .collect();
        want.sort();
        got.sort();
        compared_tensors += want.len();
        compared_models += 1;
        if want != got {
            failures.push(format!("{file}: tensors differ:\n  onnx: {want:?}\n  ours: {got:?}"));
        }
        let want_keys: Vec<String> = exp
            .get("metadata_keys")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
            .unwrap_or_else(|| report.metadata_keys.clone());
        if want_keys != report.metadata_keys {
            failures.push(format!("{file}: metadata keys"));
        }
    }
    assert!(compared_models > 1800 && compared_tensors > 5000, "{compared_models} models, {compared_tensors} tensors");
    assert!(
        failures.is_empty(),
        "{} of {} corpus models failed:\n{}",
        failures.len(),
        lines.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_encrypts_and_decrypts_back_byte_for_byte() {
    use onnx_protect_core::format2::recipients::EncryptTo;
    use onnx_protect_core::keys::KeySource;
    use onnx_protect_core::protect::{decrypt_to_vec, encrypt, EncryptOptions};
    let lines = lines();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = KeySource::key(onnx_protect_crypto::MasterKey::from_bytes([5; 32]));
    let mut all = crate::util::half_policy();
    all.apply_override("coefficient", "*=1").expect("override");
    let (mut encrypted, mut failures) = (0usize, Vec::new());
    for (i, exp) in lines.iter().enumerate() {
        let file = exp["file"].as_str().expect("file");
        let path = root().join("corpus/data").join(file);
        let out = dir.path().join(format!("{i}.onnx"));
        let policy = if i % 2 == 0 { &all } else { &crate::util::half_policy() };
        // Models without weights are protected too (their every byte authenticated).
        let opts = EncryptOptions { allow_empty: true, ..EncryptOptions::new(policy) };
        let report = match encrypt(&path, &out, &EncryptTo::key(key.clone()), &opts) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{file}: encrypt: {e}"));
                continue;
            }
        };
        if !report.tensors.is_empty() {
            encrypted += 1;
        }
        let m = Model::open(&out).expect("reopen");
        match decrypt_to_vec(&m, &key) {
            Ok(v) if v == std::fs::read(&path).expect("read") => {}
            Ok(_) => failures.push(format!("{file}: decrypted bytes differ")),
            Err(e) => failures.push(format!("{file}: decrypt: {e}")),
        }
        let _ = std::fs::remove_file(&out);
    }
    assert!(encrypted >= 40, "only {encrypted} corpus models had weights to encrypt");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
