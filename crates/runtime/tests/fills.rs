//! The key-less attacks of `assess` on the zoo's PyTorch exports: init-fill sets each
//! role as an attacker would initialise it and undoes what zero- and mean-fill cannot,
//! and BatchNormalization re-estimation from unlabelled inputs repairs what init-fill
//! leaves. Positions are simulated from a selection (the attacks read only positions).

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use onnx_protect_format::{discover, Model};
use onnx_protect_runtime::assess::{Bench, InputSource};
use onnx_protect_runtime::attack::{repair_exposed, Exposure, Fill};
use onnx_protect_runtime::bn;
use onnx_protect_runtime::engine::{parse_proto, External};
use onnx_protect_runtime::npy::NpyArray;
use onnx_protect_select::{select, Policy};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn zoo(name: &str) -> Model {
    Model::open(root().join("fixtures/zoo").join(name)).unwrap()
}

fn exposure(m: &Model, toml: &str) -> Exposure {
    let policy = Policy::from_toml(&format!("version = 1\ninherit_builtin = false\n{toml}")).unwrap();
    Exposure::of_selection(&select(m, &discover(m), &policy))
}

fn digits(file: &str) -> NpyArray {
    NpyArray::read(&root().join("fixtures/digits").join(file)).unwrap()
}

/// The digits test split, and the first 256 training inputs as calibration.
fn bench(m: &Model) -> Bench {
    let x = BTreeMap::from([(String::new(), digits("test_x.npy"))]);
    let y = digits("test_y.npy").to_labels().unwrap();
    let cal = BTreeMap::from([(String::new(), digits("train_x.npy").rows(0, 256).unwrap())]);
    Bench::new(m, &InputSource::Arrays(x), Some(y), Some(&cal)).unwrap()
}

fn accuracy(b: &Bench, m: &Model, e: &Exposure, fill: Fill, bn: bool) -> f64 {
    b.score(&b.attack(m, e, fill, bn).unwrap().unwrap().rows)
}

fn floats(m: &Model, name: &str) -> Vec<f32> {
    let t = m.tensors.iter().find(|t| t.name == name).unwrap();
    m.tensor_bytes(t.id).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn init_fill_sets_each_role_as_an_attacker_would_initialise_it() {
    let m = zoo("digits/convmixer.onnx");
    let e = exposure(&m, "[roles.norm]\ncoefficient = 1\n[names.\"blocks.0.pw.weight\"]\ncoefficient = 0.5\n");
    let filled = |seed| Model::from_vec(repair_exposed(&m, &e, Fill::Init { seed }).unwrap().model, None).unwrap();
    let a = filled(1);
    for (name, want) in [("bn0.weight", 1.0), ("bn0.bias", 0.0), ("bn0.running_mean", 0.0), ("bn0.running_var", 1.0)] {
        assert!(floats(&a, name).iter().all(|&v| v == want), "{name}: {:?}", floats(&a, name));
    }
    // The pointwise kernel [64, 64, 1, 1]: rows 0, 2, 4, ... are encrypted (even spread, k = 32).
    let (plain, got) = (floats(&m, "blocks.0.pw.weight"), floats(&a, "blocks.0.pw.weight"));
    let rows = |v: &[f32], enc: bool| -> Vec<f64> {
        v.chunks(64)
            .enumerate()
            .filter(|(i, _)| (i % 2 == 0) == enc)
            .flat_map(|(_, r)| r.iter().map(|&x| f64::from(x)))
            .collect()
    };
    assert_eq!(rows(&got, false), rows(&plain, false), "clear rows are kept");
    let sd = |v: &[f64]| {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        (mean, (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64).sqrt())
    };
    let ((_, clear_sd), (drawn_mean, drawn_sd)) = (sd(&rows(&plain, false)), sd(&rows(&got, true)));
    assert!((drawn_sd / clear_sd - 1.0).abs() < 0.1, "σ {drawn_sd} of the draws, {clear_sd} of the clear elements");
    assert!(drawn_mean.abs() < 0.1 * clear_sd, "draws centred on 0: mean {drawn_mean}");
    assert_ne!(rows(&got, true), rows(&plain, true));
    // Seeded: the same seed draws the same values, another seed others.
    assert_eq!(filled(1).bytes(), a.bytes());
    assert_ne!(floats(&filled(2), "blocks.0.pw.weight"), got);
}

#[test]
fn init_fill_undoes_encrypted_layer_norms_that_defeat_zero_and_mean_fill() {
    let m = zoo("digits/vit.onnx");
    let e = exposure(&m, "[roles.norm]\ncoefficient = 1\n");
    let b = bench(&m);
    let chance = b.chance().unwrap();
    let (zero, mean, init) = (
        accuracy(&b, &m, &e, Fill::Zero, false),
        accuracy(&b, &m, &e, Fill::Mean, false),
        accuracy(&b, &m, &e, Fill::Init { seed: 0 }, false),
    );
    assert!(zero < chance + 0.02 && mean < chance + 0.02, "zero {zero}, mean {mean}");
    assert!(init > 0.9, "init-fill {init}");
}

#[test]
fn bn_reestimation_repairs_encrypted_batch_norms_that_init_fill_alone_cannot() {
    let m = zoo("digits/convmixer.onnx");
    let e = exposure(&m, "[roles.norm]\ncoefficient = 1\n");
    let b = bench(&m);
    let chance = b.chance().unwrap();
    let init = accuracy(&b, &m, &e, Fill::Init { seed: 0 }, false);
    let reestimated = accuracy(&b, &m, &e, Fill::Init { seed: 0 }, true);
    assert!(init < chance + 0.02, "init-fill {init}");
    assert!(reestimated > 0.95, "init-fill and re-estimation {reestimated}");
}

#[test]
fn bn_reestimation_in_one_pass_equals_layer_by_layer_and_keeps_the_original_working() {
    let m = zoo("digits/convmixer.onnx");
    let cal = [digits("train_x.npy").rows(0, 200).unwrap()];
    let ext = External::new();
    let mut one = parse_proto(m.bytes()).unwrap();
    let mut turn = one.clone();
    assert_eq!(bn::reestimate(&mut one, &ext, &cal).unwrap(), 9);
    assert_eq!(bn::reestimate_in_turn(&mut turn, &ext, &cal).unwrap(), 9);
    let stats = |p: &onnx_protect_runtime::engine::pb::ModelProto| -> Vec<f32> {
        let g = p.graph.as_ref().unwrap();
        g.initializer
            .iter()
            .filter(|t| t.name.contains(".reestimated_"))
            .flat_map(|t| t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())))
            .collect()
    };
    let (a, b) = (stats(&one), stats(&turn));
    assert_eq!(a.len(), 9 * 2 * 64);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "statistic {i}: {x} in one pass, {y} layer by layer");
    }
    // The original's statistics re-estimated on training inputs: the model still works.
    let bench = bench(&m);
    let e = Exposure::default();
    let plain = accuracy(&bench, &m, &e, Fill::Zero, false);
    let again = accuracy(&bench, &m, &e, Fill::Zero, true);
    assert!((plain - again).abs() < 0.02, "original {plain}, re-estimated {again}");
}

#[test]
fn a_model_without_batch_norm_has_nothing_to_reestimate() {
    let m = zoo("digits/vit.onnx");
    let b = bench(&m);
    let r = b.attack(&m, &Exposure::default(), Fill::Zero, true).unwrap();
    assert_eq!(r.err(), Some("the model has no BatchNormalization"));
    let no_cal =
        Bench::new(&m, &InputSource::Arrays(BTreeMap::from([(String::new(), digits("test_x.npy"))])), None, None)
            .unwrap();
    assert_eq!(
        no_cal.attack(&m, &Exposure::default(), Fill::Zero, true).unwrap().err(),
        Some("no calibration inputs given")
    );
}
