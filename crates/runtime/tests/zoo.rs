//! Every model of `fixtures/zoo` (PyTorch exports of CNN, MLP, ConvMixer, ViT,
//! LSTM, GRU and 1-D convolution classifiers, and the operator probes of `ops/`)
//! loads and runs in tract and gives the outputs onnxruntime gave, stored by the
//! zoo's generators as `<model>.ref.npy` for the inputs `<model>.x.npy` (or the
//! folder's `ref_x.npy`). `assess` runs all its variants on each model (the
//! BatchNormalization re-estimations wherever the model has a BatchNormalization).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::protect::{encrypt, EncryptOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_runtime::assess::{assess, AssessOptions, InputSource, VARIANTS};
use onnx_protect_runtime::engine::{External, Loaded};
use onnx_protect_runtime::npy::NpyArray;
use onnx_protect_select::Policy;

/// Largest difference allowed, relative to the largest magnitude of the reference row
/// (and at least 1).
const TOLERANCE: f64 = 1e-4;

fn zoo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/zoo")
}

/// Every `<data set>/<model>.onnx` of the zoo, sorted.
fn models() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(zoo()).unwrap() {
        let dir = dir.unwrap().path();
        if dir.is_dir() {
            for f in std::fs::read_dir(&dir).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "onnx") {
                    out.push(f);
                }
            }
        }
    }
    out.sort();
    out
}

/// The inputs the reference outputs of `model` were computed on.
fn inputs_of(model: &Path) -> NpyArray {
    let own = model.with_extension("x.npy");
    let path = if own.exists() { own } else { model.with_file_name("ref_x.npy") };
    NpyArray::read(&path).unwrap()
}

fn label(model: &Path) -> String {
    let dir = model.parent().unwrap().file_name().unwrap().to_string_lossy();
    format!("{dir}/{}", model.file_name().unwrap().to_string_lossy())
}

/// The first difference over the tolerance between `got` and `want` ([rows, ...] alike).
fn mismatch(got: &NpyArray, want: &NpyArray) -> Option<String> {
    if got.shape != want.shape {
        return Some(format!("shape {:?}, onnxruntime {:?}", got.shape, want.shape));
    }
    let (g, w) = (got.to_f64(), want.to_f64());
    let width = w.len() / want.shape[0].max(1);
    for (r, (gr, wr)) in g.chunks(width.max(1)).zip(w.chunks(width.max(1))).enumerate() {
        let scale = wr.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in gr.iter().zip(wr).enumerate() {
            // Written so that a NaN on either side is a mismatch.
            let close = (a - b).abs() <= TOLERANCE * scale;
            if !close {
                return Some(format!("row {r} element {i}: tract {a}, onnxruntime {b}"));
            }
        }
    }
    None
}

#[test]
fn the_zoo_covers_every_architecture() {
    let names: Vec<String> = models().iter().map(|m| label(m)).collect();
    for want in [
        "digits/cnn.onnx",
        "digits/mlp.onnx",
        "digits/convmixer.onnx",
        "digits/vit.onnx",
        "vowels/lstm.onnx",
        "vowels/gru.onnx",
        "osuleaf/conv1d.onnx",
        "ops/instancenorm.onnx",
        "ops/activations.onnx",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} is missing from {names:?}");
    }
}

#[test]
fn every_zoo_model_gives_the_outputs_of_onnxruntime_in_tract() {
    let mut failures = Vec::new();
    for model in models() {
        let dir = model.parent().unwrap();
        let stem = model.file_stem().unwrap().to_string_lossy();
        let x = inputs_of(&model);
        let want = NpyArray::read(&dir.join(format!("{stem}.ref.npy"))).unwrap();
        let bytes = std::fs::read(&model).unwrap();
        let loaded = match Loaded::new(&bytes, &External::new()) {
            Ok(l) => l,
            Err(e) => {
                failures.push(format!("{}: {e}", label(&model)));
                continue;
            }
        };
        // The whole reference batch, and a batch of one (the batch dimension is symbolic).
        for n in [x.shape[0], 1] {
            let xs = x.rows(0, n).unwrap();
            let outputs = loaded.prepare(&[(xs.dtype, xs.shape.clone())]).and_then(|p| p.run(&[&xs]));
            match outputs {
                Ok(o) => {
                    if let Some(why) = mismatch(&o[0].1, &want.rows(0, n).unwrap()) {
                        failures.push(format!("{} (batch {n}): {why}", label(&model)));
                    }
                }
                Err(e) => failures.push(format!("{} (batch {n}): {e}", label(&model))),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn assess_runs_every_variant_of_every_zoo_model() {
    let key = KeySource::key(MasterKey::from_bytes([7; 32]));
    let policy = Policy::default();
    let mut failures = Vec::new();
    for model in models() {
        let dir = tempfile::tempdir().unwrap();
        let enc = dir.path().join("model.onnx");
        // Operator probes without weights encrypt nothing; the variants still run.
        let opts = EncryptOptions { allow_empty: true, ..EncryptOptions::new(&policy) };
        encrypt(&model, &enc, &EncryptTo::key(key.clone()), &opts).unwrap_or_else(|e| panic!("{}: {e}", label(&model)));
        let x = BTreeMap::from([("input".to_string(), inputs_of(&model))]);
        let opts = AssessOptions {
            key: Some(&key),
            inputs: InputSource::Arrays(x.clone()),
            labels: None,
            calibration: Some(x),
            fill_seed: 0,
            fill_draws: 2,
        };
        let has_bn = std::fs::read(&model).unwrap().windows(18).any(|w| w == b"BatchNormalization");
        match assess(&model, &enc, &opts) {
            Ok(r) => {
                let names: Vec<&str> = r.variants.iter().map(|v| v.variant.as_str()).collect();
                assert_eq!(names, VARIANTS, "{}", label(&model));
                for v in &r.variants {
                    let bn_skipped = v.variant.ends_with("_bn") && !has_bn && v.status == "skipped";
                    // Random ciphertext in place of a weight may stop tract from loading the
                    // file at all: the copier gets nothing, which is a result, not a failure.
                    let no_key_refused = v.variant == "no_key" && v.status == "failed";
                    if v.status != "ok" && !bn_skipped && !no_key_refused {
                        failures.push(format!("{} {}: {:?}", label(&model), v.variant, v.error));
                    }
                }
                if r.best_attack.is_none() {
                    failures.push(format!("{}: no best attack", label(&model)));
                }
                let decrypted = r.variants.iter().find(|v| v.variant == "decrypted").unwrap();
                if decrypted.agreement != Some(1.0) || decrypted.max_distance != Some(0.0) {
                    failures.push(format!("{}: decrypted differs from the original: {decrypted:?}", label(&model)));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", label(&model))),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
