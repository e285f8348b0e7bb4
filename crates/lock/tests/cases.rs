//! The output-layer finder and the byte rewrite on every case of `fixtures/lock`
//! (`make.py`), and on the classifiers of `fixtures/digits` and `fixtures/zoo`: what is
//! found, what is refused and why, that locking moves whole class slices, and that
//! unlocking restores every byte.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::{Path, PathBuf};

use onnx_protect_format::Model;
use onnx_protect_lock::{
    find_output_layer, rewrite_model, ClassPermutation, Direction, ErrorKind, LockSeed, OutputKind, Part, SEED_LEN,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn case(name: &str) -> Model {
    Model::open(root().join("fixtures/lock").join(name).join("model.onnx")).unwrap()
}

/// (case, classes, parts of the rewritten tensors in order, locked outputs)
type Accepted = (&'static str, usize, &'static [Part], &'static [(&'static str, OutputKind)]);
const ACCEPTED: &[Accepted] = {
    use OutputKind::{Indices as I, Scores as S};
    use Part::{Bias as B, Scale as Sc, Weight as W, ZeroPoint as Z};
    &[
        ("gemm_transb1", 5, &[W, B], &[("logits", S)]),
        ("gemm_transb0_softmax", 5, &[W, B], &[("logits", S), ("probs", S)]),
        ("gemm_nobias_argmax", 5, &[W], &[("label", I)]),
        ("gemm_bias_row", 5, &[W, B], &[("logits", S)]),
        ("gemm_bias_scalar", 5, &[W], &[("logits", S)]),
        ("matmul_add_logsoftmax", 5, &[W, B], &[("logp", S)]),
        ("matmul_bias_first_topk", 5, &[W, B], &[("logits", S), ("top_i", I)]),
        ("matmul_nobias_identity_cast", 5, &[W], &[("logits", S), ("label", I)]),
        ("matmul_rank3_reshape", 5, &[W, B], &[("probs", S)]),
        ("gemm_flatten0_argmax", 5, &[W, B], &[("all", S), ("best", I)]),
        ("matmul_batched_weight", 5, &[W], &[("logits", S)]),
        ("fp16_raw_and_int32_data", 5, &[W, B], &[("logits", S)]),
        ("bf16_cast", 5, &[W, B], &[("logits", S)]),
        ("double_data", 5, &[W, B], &[("logits", S)]),
        ("float_data", 5, &[W, B], &[("logits", S)]),
        ("constant_transpose", 5, &[W, B], &[("logits", S)]),
        ("dq_int8_per_class", 5, &[W, Sc, Z, B], &[("logits", S)]),
        ("qdq_uint8_bias_int32", 5, &[W, B, Sc], &[("logits", S)]),
        ("dq_int4_blocked", 5, &[W, Sc], &[("logits", S)]),
        ("external_data", 5, &[W, B], &[("logits", S)]),
    ]
};

/// (case, kind, words the message must contain)
const REFUSED: &[(&str, ErrorKind, &[&str])] = &[
    ("no_head_conv", ErrorKind::NotFound, &["output 'logits' comes from", "(Conv)"]),
    ("weight_shared", ErrorKind::Unsupported, &["weight 'W' is also read elsewhere"]),
    ("scores_feed_mul", ErrorKind::Unsupported, &["(Mul)", "whose output would change"]),
    ("argmax_axis0", ErrorKind::Unsupported, &["(ArgMax)", "over axis 0"]),
    ("reshape_splits_classes", ErrorKind::Unsupported, &["(Reshape)", "[-1, 5, 1]"]),
    ("topk_unsorted", ErrorKind::Unsupported, &["(TopK)", "sorted = 0"]),
    ("two_heads", ErrorKind::Ambiguous, &["head_a (Gemm)", "head_b (Gemm)"]),
    ("two_classes", ErrorKind::Unsupported, &["2 classes"]),
    ("weight_first_operand", ErrorKind::Unsupported, &["first operand 'W' is the constant"]),
    ("weight_is_input", ErrorKind::Unsupported, &["weight 'W' is an input of the graph"]),
    ("flatten_axis2", ErrorKind::Unsupported, &["(Flatten)", "axis 2"]),
    ("dq_blocked_along_classes", ErrorKind::Unsupported, &["blocks along the class axis"]),
    ("scores_in_subgraph", ErrorKind::Unsupported, &["inside a subgraph"]),
    ("int32_data_unpacked", ErrorKind::Unsupported, &["'Wq'", "int32_data", "byte for byte"]),
    ("output_is_constant", ErrorKind::NotFound, &["output 'logits' is the constant"]),
];

fn perm(seed: u8, classes: usize) -> ClassPermutation {
    ClassPermutation::derive(&LockSeed::from_bytes([seed; SEED_LEN]), classes).unwrap()
}

#[test]
fn every_accepted_case_is_found_as_described() {
    for &(name, classes, parts, outputs) in ACCEPTED {
        let model = case(name);
        let layer = find_output_layer(&model, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(layer.classes, classes, "{name}");
        assert_eq!(layer.tensors.iter().map(|t| t.part).collect::<Vec<_>>(), parts, "{name}");
        let got: Vec<(&str, OutputKind)> = layer.outputs.iter().map(|o| (o.name.as_str(), o.kind)).collect();
        assert_eq!(got, outputs, "{name}");
        for t in &layer.tensors {
            assert_eq!(model.tensors[t.tensor].dims[t.axis], classes as u64, "{name}: {:?}", t.part);
        }
    }
}

#[test]
fn every_refused_case_says_what_it_found() {
    for &(name, kind, words) in REFUSED {
        let e = find_output_layer(&case(name), None).err().unwrap_or_else(|| panic!("{name} was accepted"));
        assert_eq!(e.kind(), kind, "{name}: {e}");
        let msg = e.to_string();
        for w in words {
            assert!(msg.contains(w), "{name}: '{w}' not in: {msg}");
        }
    }
}

#[test]
fn a_named_layer_is_chosen_among_several() {
    let model = case("two_heads");
    let layer = find_output_layer(&model, Some("head_b")).unwrap();
    assert_eq!(model.nodes[layer.node].name, "head_b");
    assert_eq!(layer.outputs[0].name, "b");
    let e = find_output_layer(&model, Some("nope")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSuchNode);
    assert!(e.to_string().contains("head_a (Gemm), head_b (Gemm)"), "{e}");
}

/// Locks `model`, checks that each rewritten tensor's class slices moved whole, then
/// unlocks the locked model and compares every byte with the original.
fn round_trip(name: &str, model: &Model, seed: u8) {
    let layer = find_output_layer(model, None).unwrap_or_else(|e| panic!("{name}: {e}"));
    let p = perm(seed, layer.classes);
    let (locked_bytes, external) = rewrite_model(model, &layer, &p, Direction::Lock).unwrap();
    let dir = model.dir.clone();
    let mut locked_files: Vec<(String, Vec<u8>)> =
        model.external_files.iter().map(|f| (f.location.clone(), std::fs::read(&f.path).unwrap())).collect();
    for w in &external {
        locked_files[w.file].1[w.range.start as usize..w.range.end as usize].copy_from_slice(&w.bytes);
    }
    // A locked model with external data is read from a directory holding its locked side files.
    let tmp = std::env::temp_dir().join(format!("lock-case-{}-{name}", std::process::id()));
    let locked = if locked_files.is_empty() {
        Model::from_vec(locked_bytes.clone(), dir)
    } else {
        std::fs::create_dir_all(&tmp).unwrap();
        for (loc, data) in &locked_files {
            std::fs::write(tmp.join(loc), data).unwrap();
        }
        Model::from_vec(locked_bytes.clone(), Some(tmp.clone()))
    }
    .unwrap();
    let relayer = find_output_layer(&locked, None).unwrap();
    assert_eq!(relayer.tensors, layer.tensors, "{name}: the locked model has the same layer");
    let (c, p_true) = (layer.classes, p.locked_to_true());
    for lt in &layer.tensors {
        let t = &model.tensors[lt.tensor];
        let (before, after) = (model.tensor_bytes(lt.tensor).unwrap(), locked.tensor_bytes(lt.tensor).unwrap());
        let bits = t.data_type.bits() as usize;
        let inner: u64 = t.dims[lt.axis + 1..].iter().product();
        let outer: u64 = t.dims[..lt.axis].iter().product();
        if bits % 8 == 0 {
            let block = inner as usize * bits / 8;
            for o in 0..outer as usize {
                for (q, &t) in p_true.iter().enumerate() {
                    let to = (o * c + q) * block;
                    let from = (o * c + t as usize) * block;
                    assert_eq!(after[to..to + block], before[from..from + block], "{name} {:?} slice {q}", lt.part);
                }
            }
        }
        if lt.part == Part::Weight {
            assert_ne!(after, before, "{name}: the weight changed");
        }
    }
    let (restored, back) = rewrite_model(&locked, &relayer, &p, Direction::Unlock).unwrap();
    assert_eq!(restored, model.bytes(), "{name}: unlocking restores the model file");
    for w in &back {
        let f = &model.external_files[w.file];
        let original = std::fs::read(&f.path).unwrap();
        assert_eq!(w.bytes, original[w.range.start as usize..w.range.end as usize], "{name}: external bytes");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn locking_moves_whole_class_slices_and_unlocking_restores_every_byte() {
    for &(name, ..) in ACCEPTED {
        for seed in [1u8, 2, 3] {
            round_trip(name, &case(name), seed);
        }
    }
}

#[test]
fn the_digits_and_zoo_classifiers_lock_their_final_gemm() {
    let mut paths: Vec<PathBuf> = Vec::new();
    for dir in ["fixtures/digits", "fixtures/zoo/digits", "fixtures/zoo/vowels", "fixtures/zoo/osuleaf"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
            .collect();
        found.sort();
        paths.extend(found);
    }
    assert_eq!(paths.len(), 16);
    for path in paths {
        let name = path.display().to_string();
        let model = Model::open(&path).unwrap();
        let layer = find_output_layer(&model, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(model.nodes[layer.node].op_type, "Gemm", "{name}");
        let classes = if name.contains("vowels") {
            9
        } else if name.contains("osuleaf") {
            6
        } else {
            10
        };
        assert_eq!(layer.classes, classes, "{name}");
        assert_eq!(
            layer.tensors.iter().map(|t| (t.part, t.axis)).collect::<Vec<_>>(),
            [(Part::Weight, 0), (Part::Bias, 0)]
        );
        assert_eq!(layer.outputs.len(), 1);
        assert_eq!((layer.outputs[0].name.as_str(), layer.outputs[0].kind), ("logits", OutputKind::Scores));
        round_trip(&name.replace('/', "_"), &model, 7);
    }
}

#[test]
fn a_permutation_of_the_wrong_size_is_refused() {
    let model = case("gemm_transb1");
    let layer = find_output_layer(&model, None).unwrap();
    let e = rewrite_model(&model, &layer, &perm(1, 6), Direction::Lock).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Mismatch);
}
