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

/// The built-in policy encrypts every weight; a policy that leaves weight bytes clear on a
/// family where a partial policy was measured to fail gets a one-line warning
/// (docs/protection.md#training-attacks); a graph of no family it knows, none.
#[test]
fn encrypt_warns_when_a_partial_policy_meets_a_family_where_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    assert_eq!(run(&["keygen", "-o", key.to_str().unwrap(), "-q"]).0, 0);
    let zoo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/zoo");
    let last_first = ["--coefficient", "*=0", "--coefficient", "layer:first=1", "--coefficient", "layer:last=1"];
    // Each family (a partial policy was measured to fail on each) warns, naming the zoo
    // model of the costliest failure.
    for (model, family) in [
        ("digits/vit", Some(("vision transformer", "digits/vit"))),
        ("families/digits-resnet", Some(("residual convolutional network", "families/digits-resnet"))),
        ("families/vowels-transformer", Some(("transformer encoder", "families/vowels-transformer"))),
        ("vowels/vit", Some(("transformer encoder", "families/vowels-transformer"))),
        ("digits/cnn", Some(("a convolutional network", "vowels/cnn"))),
        ("osuleaf/conv1d", Some(("a convolutional network", "vowels/cnn"))),
        ("digits/mlp", Some(("multilayer perceptron", "vowels/mlp"))),
        ("digits/convmixer", Some(("ConvMixer", "osuleaf/convmixer"))),
        ("osuleaf/convmixer", Some(("ConvMixer", "osuleaf/convmixer"))),
        ("vowels/gru", Some(("recurrent network", "vowels/lstm"))),
        ("vowels/lstm", Some(("recurrent network", "vowels/lstm"))),
    ] {
        for partial in [true, false] {
            let out = dir.path().join("p.onnx");
            let _ = std::fs::remove_file(&out);
            let src = zoo.join(format!("{model}.onnx"));
            let mut args = vec!["encrypt", src.to_str().unwrap(), "-o", out.to_str().unwrap()];
            args.extend(["--key-file", key.to_str().unwrap()]);
            if partial {
                args.extend(last_first);
            }
            let (code, stdout, err) = run(&args);
            assert_eq!(code, 0, "{model}: {err}");
            let warned = err.lines().filter(|l| l.starts_with("warning:")).collect::<Vec<_>>();
            match (family, partial) {
                (Some((f, measured)), true) => {
                    assert_eq!(warned.len(), 1, "{model}: {err}");
                    let w = warned[0];
                    assert!(w.contains(f) && w.contains("training-attacks"), "{model}: {err}");
                    assert!(w.contains(&format!("on the zoo's {measured},")), "{model}: {err}");
                }
                _ => assert!(warned.is_empty(), "{model} partial={partial}: {err}"),
            }
            if !partial {
                assert!(stdout.contains("(100.00% of"), "{model}: {stdout}");
            }
        }
    }
    // Every weight but the biases (0.5% clear, measured to fail on the vowels CNN) warns.
    let weights = dir.path().join("weights.toml");
    let roles = "[roles.weight]\ncoefficient = 1.0\n[roles.recurrent]\ncoefficient = 1.0\n";
    std::fs::write(&weights, format!("version = 1\ninherit_builtin = false\n{roles}")).unwrap();
    let out = dir.path().join("w.onnx");
    let (src, o, k) = (zoo.join("vowels/cnn.onnx"), out.to_str().unwrap(), key.to_str().unwrap());
    let (code, stdout, err) =
        run(&["encrypt", src.to_str().unwrap(), "-o", o, "--key-file", k, "--policy", weights.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("(99.49% of") && err.starts_with("warning: 0.5% of the weight bytes"), "{stdout} {err}");
    // The built-in policy on a quantised CNN leaves only scales and zero points clear: no warning.
    let quant = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models/quant_uint8/model.onnx");
    let out = dir.path().join("q.onnx");
    let (code, stdout, err) = run(&["encrypt", quant.to_str().unwrap(), "-o", out.to_str().unwrap(), "--key-file", k]);
    assert_eq!(code, 0, "{err}");
    assert!(!stdout.contains("(100.00% of") && !err.contains("warning:"), "{stdout} {err}");
    // A graph of no family it knows (a lone ConvTranspose) gets no warning, even half clear.
    let src = zoo.join("ops/conv_transpose.onnx");
    let out = dir.path().join("t.onnx");
    let (s, o, k) = (src.to_str().unwrap(), out.to_str().unwrap(), key.to_str().unwrap());
    let (code, stdout, err) = run(&["encrypt", s, "-o", o, "--key-file", k, "--coefficient", "*=0.5"]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("(50.68% of") && !err.contains("warning:"), "{stdout} {err}");
}

/// `rewrap` of a signed model names the two ways out (`--sign-key`, `--drop-signatures`),
/// and each of them then works.
#[test]
fn rewrap_of_a_signed_model_names_the_options_that_resolve_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    for args in [
        vec!["keygen", "-o", &p("k.key"), "-q"],
        vec!["keygen", "-o", &p("other.key"), "-q"],
        vec!["keygen", "--signing", "-o", &p("sign.sk"), "-q"],
    ] {
        assert_eq!(run(&args).0, 0, "{args:?}");
    }
    let (model, signed) = (crate::util::mlp(), p("signed.onnx"));
    let (key, other, sign_key) = (p("k.key"), p("other.key"), p("sign.sk"));
    let (code, _, err) =
        run(&["encrypt", model.to_str().unwrap(), "-o", &signed, "--key-file", &key, "--sign-key", &sign_key, "-q"]);
    assert_eq!(code, 0, "{err}");
    let rewrap = |out: &str, extra: &[&str]| {
        let mut args = vec!["rewrap", &signed, "-o", out, "--key-file", &key, "--add-key-file", &other];
        args.extend(extra);
        args.push("-q");
        run(&args)
    };
    let (code, _, err) = rewrap(&p("refused.onnx"), &[]);
    assert_eq!(code, 5, "{err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(first.contains("--sign-key") && first.contains("--drop-signatures"), "{err}");
    assert!(!dir.path().join("refused.onnx").exists());
    let (code, _, err) = rewrap(&p("resigned.onnx"), &["--sign-key", &sign_key]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = rewrap(&p("dropped.onnx"), &["--drop-signatures"]);
    assert_eq!(code, 0, "{err}");
}

/// `decrypt` of a directory that is no protected model folder (docs/cli.md#model-folders)
/// says so and points to `batch decrypt --dir`, exit 3 (no model in it), writing nothing.
#[test]
fn decrypt_of_a_directory_points_to_batch() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let key = dir.path().join("k.key");
    assert_eq!(run(&["keygen", "-o", key.to_str().unwrap(), "-q"]).0, 0);
    let out = dir.path().join("out.onnx");
    let (code, _, err) =
        run(&["decrypt", models.to_str().unwrap(), "-o", out.to_str().unwrap(), "--key-file", key.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains(models.to_str().unwrap()), "{err}");
    assert!(err.contains("not a protected model folder"), "{err}");
    assert!(err.contains(&format!("batch decrypt --dir {}", models.display())), "{err}");
    assert!(!out.exists());
}
