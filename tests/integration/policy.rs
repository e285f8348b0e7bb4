//! `policy search` through the binary: the policy it writes meets the target when the
//! model is really encrypted with it and assessed; same inputs, same result; bad
//! inputs are refused with a reason.

use std::path::{Path, PathBuf};

use crate::util::{root, run};

fn cnn() -> PathBuf {
    root().join("fixtures/zoo/digits/cnn.onnx")
}

fn digits(file: &str) -> String {
    root().join("fixtures/digits").join(file).to_string_lossy().into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_policy_found_meets_the_target_once_the_model_is_encrypted_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let pol = dir.path().join("cnn.toml");
    let (code, out, err) = run(&["policy", "search", s(&cnn()), "--data", &digits("test.npz"), "-o", s(&pol)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("chosen: "), "{out}");
    assert!(out.contains("key-less fills only; against the training attacks"), "{out}");
    assert!(out.contains(&format!("python3 -m onnx_protect.assess --search {}", s(&cnn()))), "{out}");
    let report = json(&dir.path().join("cnn.report.json"));
    let chosen = report["chosen"].as_u64().unwrap() as usize;
    let points = report["points"].as_array().unwrap();
    let threshold = report["threshold"].as_f64().unwrap();
    assert!((threshold - (report["chance"].as_f64().unwrap() + 0.02)).abs() < 1e-12);
    assert_eq!(points[chosen]["meets"], true);
    let share = |p: &serde_json::Value| p["encrypted_bytes"].as_u64().unwrap();
    for p in &points[..chosen] {
        assert!(p["meets"] != true, "a cheaper point met the target: {p}");
        assert!(share(p) <= share(&points[chosen]));
        if p["status"] == "evaluated" {
            let best = p["best"]["accuracy"].as_f64().unwrap();
            assert!(best > threshold, "{p}");
        }
    }

    // Encrypt with the written policy, attack the real file: the same positions, so the
    // same key-less attacks stay within the target.
    let key = dir.path().join("k.key");
    assert_eq!(run(&["keygen", "-o", s(&key)]).0, 0);
    let enc = dir.path().join("enc.onnx");
    let (code, _, err) = run(&["encrypt", s(&cnn()), "-o", s(&enc), "--key-file", s(&key), "--policy", s(&pol), "-q"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&[
        "assess",
        s(&cnn()),
        s(&enc),
        "--inputs",
        &digits("test_x.npy"),
        "--labels",
        &digits("test_y.npy"),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["encrypted_bytes"].as_u64().unwrap(), share(&points[chosen]));
    // The fills read only the positions, which the real file shares with the search: each
    // stays within the target. The `no_key` row is left out: the ciphertext of a real file
    // comes from its fresh data key, so its accuracy varies from file to file (the search
    // scores the mean of several simulated draws; docs/protection.md gives the spread).
    for v in r["variants"].as_array().unwrap() {
        let (name, acc) = (v["variant"].as_str().unwrap(), v["accuracy"].as_f64());
        if let (true, Some(acc)) = (name.contains("_fill"), acc) {
            assert!(acc <= threshold, "{name} {acc} on the encrypted model, target {threshold}");
        }
    }
}

#[test]
fn npy_data_with_labels_give_the_same_search_and_repeat_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (npz, x, y, model) = (digits("test.npz"), digits("test_x.npy"), digits("test_y.npy"), cnn());
    let mut reports = Vec::new();
    let runs: [Vec<&str>; 3] = [vec!["--data", &npz], vec!["--data", &x, "--labels", &y], vec!["--data", &npz]];
    for (i, data) in runs.into_iter().enumerate() {
        let pol = dir.path().join(format!("p{i}.toml"));
        let mut args = vec!["policy", "search", s(&model), "-o", s(&pol), "-q"];
        args.extend(data.iter().copied());
        let (code, _, err) = run(&args);
        assert_eq!(code, 0, "{err}");
        reports
            .push((std::fs::read(&pol).unwrap(), std::fs::read(dir.path().join(format!("p{i}.report.json"))).unwrap()));
    }
    assert!(reports.windows(2).all(|w| w[0] == w[1]), "the same data gave different results");
}

#[test]
fn bad_search_inputs_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pol = dir.path().join("p.toml");
    let model = cnn();
    let base = |extra: &[&str]| {
        let mut a = vec!["policy", "search", s(&model), "-o", s(&pol)];
        a.extend_from_slice(extra);
        run(&a)
    };
    let x = digits("test_x.npy");
    let short_labels = dir.path().join("y10.npy");
    // 10 labels for 540 samples: an int64 .npy written by hand.
    let mut y = b"\x93NUMPY\x01\x00".to_vec();
    let header = "{'descr': '<i8', 'fortran_order': False, 'shape': (10,), }";
    let pad = 64 - (10 + header.len() + 1) % 64;
    let header = format!("{header}{}\n", " ".repeat(pad % 64));
    y.extend_from_slice(&(header.len() as u16).to_le_bytes());
    y.extend_from_slice(header.as_bytes());
    y.extend(std::iter::repeat_n(0u8, 80));
    std::fs::write(&short_labels, y).unwrap();
    for (extra, needle) in [
        (vec!["--data", x.as_str()], "no labels"),
        (vec!["--data", &digits("test.npz"), "--target", "chance+x"], "--target 'chance+x'"),
        (vec!["--data", x.as_str(), "--labels", s(&short_labels)], "10 labels for 540 samples"),
    ] {
        let (code, _, err) = base(&extra);
        assert_ne!(code, 0, "{extra:?}");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
        assert!(!pol.exists(), "no policy written on error");
    }
    // A target no policy of the family meets: the report is written, the policy is not.
    let (code, out, err) = base(&["--data", &digits("test.npz"), "--target", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("no policy of the search family meets the target 0"), "{err}");
    assert!(out.contains("no policy of the family meets the target"), "{out}");
    assert!(!pol.exists());
    let report_path = dir.path().join("p.report.json");
    let report = json(&report_path);
    assert!(report["chosen"].is_null());
    assert!(report["points"].as_array().unwrap().iter().all(|p| p["meets"] != true));
    // An existing output is replaced only with --force, and refused before the search runs.
    let before = std::fs::read(&report_path).unwrap();
    let (code, _, err) = base(&["--data", &digits("test.npz")]);
    assert_ne!(code, 0);
    assert!(err.contains("exists; pass --force"), "{err}");
    assert_eq!(std::fs::read(&report_path).unwrap(), before);
    assert!(!pol.exists());
    let (code, _, err) = base(&["--data", &digits("test.npz"), "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(pol.exists());
}

#[test]
fn encrypt_lists_every_weight_left_clear_and_counts_it_in_the_denominator() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    assert_eq!(run(&["keygen", "-o", s(&key)]).0, 0);
    let vit = root().join("fixtures/zoo/digits/vit.onnx");
    // Only the Linear weights of MatMul/Gemm: the position embedding, the biases added
    // after a MatMul and the LayerNorm parameters stay clear.
    let pol = dir.path().join("p.toml");
    std::fs::write(&pol, "version = 1\ninherit_builtin = false\n\n[roles.weight]\ncoefficient = 0.5\n").unwrap();
    let enc = dir.path().join("enc.onnx");
    let (code, out, err) =
        run(&["encrypt", s(&vit), "-o", s(&enc), "--key-file", s(&key), "--policy", s(&pol), "--json"]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let clear = r["clear"].as_array().unwrap();
    let names: Vec<&str> = clear.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(names.iter().any(|n| n.contains("pos")), "no position embedding among the clear weights: {names:?}");
    let roles: Vec<&str> = clear.iter().map(|c| c["role"].as_str().unwrap()).collect();
    for role in ["bias", "norm", "position-embedding"] {
        assert!(roles.contains(&role), "no clear weight of role {role}: {roles:?}");
    }
    // The denominator is every weight: the tensors with encrypted bytes plus the clear ones.
    let touched: u64 = r["tensors"].as_array().unwrap().iter().map(|t| t["nbytes"].as_u64().unwrap()).sum();
    let clear_bytes: u64 = clear.iter().map(|c| c["bytes"].as_u64().unwrap()).sum();
    assert!(clear_bytes > 0);
    assert_eq!(r["weight_bytes"].as_u64().unwrap(), touched + clear_bytes);
    // Every floating-point tensor stored in the file is one or the other.
    let model = onnx_protect_format::Model::open(&vit).unwrap();
    let float_bytes: u64 = model.tensors.iter().filter(|t| t.data_type.is_float()).map(|t| t.nbytes).sum();
    assert_eq!(float_bytes, r["weight_bytes"].as_u64().unwrap());

    // The text report with --verbose names each clear weight with its size and the share they make.
    let enc2 = dir.path().join("enc2.onnx");
    let (code, out, err) =
        run(&["encrypt", s(&vit), "-o", s(&enc2), "--key-file", s(&key), "--policy", s(&pol), "--verbose"]);
    assert_eq!(code, 0, "{err}");
    let pct = 100.0 * clear_bytes as f64 / r["weight_bytes"].as_u64().unwrap() as f64;
    assert!(out.contains(&format!("left clear: {} weights, {clear_bytes} bytes ({pct:.2}%", clear.len())), "{out}");
    for c in clear {
        assert!(out.contains(&format!("    {} {} bytes", c["name"].as_str().unwrap(), c["bytes"])), "{out}");
    }
}

/// The built-in policy finds the first and last layers inside `If` branches: a model whose
/// every weight sits in a subgraph (as Silero VAD's do) gets its branch weights encrypted,
/// and decrypts to the original byte for byte.
#[test]
fn the_built_in_policy_reaches_layers_inside_if_branches() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("fixtures/models/if_constants/model.onnx");
    let key = dir.path().join("k.key");
    assert_eq!(run(&["keygen", "-o", s(&key), "-q"]).0, 0);
    let out = dir.path().join("p.onnx");
    let (code, text, err) = run(&["encrypt", s(&model), "-o", s(&out), "--key-file", s(&key), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = v["tensors"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    for branch_weight in ["then_W", "else_W"] {
        assert!(names.contains(&branch_weight), "{branch_weight} in {names:?}");
    }
    let back = dir.path().join("back.onnx");
    assert_eq!(run(&["decrypt", s(&out), "-o", s(&back), "--key-file", s(&key), "-q"]).0, 0);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&model).unwrap());
}
