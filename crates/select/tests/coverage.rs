//! Every floating-point tensor of the zoo's PyTorch exports can be reached by a policy,
//! and whatever a policy leaves clear is listed with its size.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::path::PathBuf;

use onnx_protect_format::{discover, Model, TensorRole};
use onnx_protect_select::{select, Policy, Selection, TierOrder};

fn zoo(path: &str) -> Model {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/zoo").join(path);
    Model::open(&p).unwrap()
}

fn float_bytes(m: &Model) -> u64 {
    m.tensors.iter().filter(|t| t.data_type.is_float()).map(|t| t.nbytes).sum()
}

fn run(m: &Model, toml: &str) -> Selection {
    select(m, &discover(m), &Policy::from_toml(toml).unwrap())
}

/// Tensor name → bytes chosen.
fn chosen(m: &Model, s: &Selection) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for c in &s.chosen {
        *out.entry(m.tensors[c.tensor].name.clone()).or_default() += c.bytes();
    }
    out
}

const ZOO: [&str; 12] = [
    "digits/cnn.onnx",
    "digits/mlp.onnx",
    "digits/convmixer.onnx",
    "digits/vit.onnx",
    "vowels/lstm.onnx",
    "vowels/gru.onnx",
    "vowels/cnn.onnx",
    "vowels/mlp.onnx",
    "vowels/vit.onnx",
    "osuleaf/conv1d.onnx",
    "osuleaf/convmixer.onnx",
    "osuleaf/vit.onnx",
];

#[test]
fn every_float_byte_of_every_zoo_model_is_a_weight() {
    for path in ZOO {
        let m = zoo(path);
        let w: u64 = discover(&m).iter().map(|w| m.tensors[w.tensor].nbytes).sum();
        assert_eq!(w, float_bytes(&m), "{path}");
    }
}

#[test]
fn chosen_and_clear_bytes_add_up_to_every_weight_byte() {
    for path in ZOO {
        let m = zoo(path);
        for toml in
            ["version = 1", "version = 1\n[roles.bias]\ncoefficient = 1\n", "version = 1\n[defaults]\ncoefficient = 0"]
        {
            let s = run(&m, toml);
            let mut tensors: Vec<usize> = s.chosen.iter().map(|c| c.tensor).collect();
            tensors.dedup();
            let chosen_tensor_bytes: u64 = tensors.iter().map(|&t| m.tensors[t].nbytes).sum();
            assert_eq!(chosen_tensor_bytes + s.clear_bytes(), float_bytes(&m), "{path} {toml}");
            assert!(s.clear.iter().all(|c| !tensors.contains(&c.tensor)), "{path}");
        }
    }
}

#[test]
fn the_recurrent_weight_an_exporter_slices_is_covered() {
    for path in ["vowels/lstm.onnx", "vowels/gru.onnx"] {
        let m = zoo(path);
        let s =
            run(&m, "version = 1\ninherit_builtin = false\n[ops.LSTM]\ncoefficient = 1\n[ops.GRU]\ncoefficient = 1\n");
        let c = chosen(&m, &s);
        let r = m.tensors.iter().find(|t| t.name == "rnn.weight_hh_l0").unwrap();
        assert_eq!(c.get("rnn.weight_hh_l0"), Some(&r.nbytes), "{path}: {c:?}");
        let rec: u64 = s.chosen.iter().map(|c| c.bytes()).sum();
        // W, R and B: everything but the head and the initial state's zero.
        assert!(rec as f64 > 0.9 * float_bytes(&m) as f64, "{path}: {rec} of {}", float_bytes(&m));
        let r = s.chosen.iter().find(|c| m.tensors[c.tensor].name == "rnn.weight_hh_l0").unwrap();
        let op = if path.contains("gru") { "GRU" } else { "LSTM" };
        assert_eq!((r.op_type.as_str(), r.role.as_str(), r.tensor_role), (op, "R", TensorRole::Recurrent));
    }
}

#[test]
fn add_biases_and_the_position_embedding_are_reachable_by_role_op_and_name() {
    let m = zoo("vowels/vit.onnx");
    let base = "version = 1\ninherit_builtin = false\n";
    let pos = chosen(&m, &run(&m, &format!("{base}[roles.position-embedding]\ncoefficient = 1\n")));
    assert_eq!(pos.keys().collect::<Vec<_>>(), ["pos_embed"]);
    assert_eq!(pos["pos_embed"], 29 * 48 * 4);

    let bias = chosen(&m, &run(&m, &format!("{base}[roles.bias]\ncoefficient = 1\n")));
    for name in
        ["embed.bias", "blocks.0.attn.in_proj_bias", "blocks.1.fc2.bias", "blocks.0.attn.out_proj.bias", "head.bias"]
    {
        assert!(bias.contains_key(name), "{name}: {bias:?}");
    }
    assert!(!bias.contains_key("pos_embed") && !bias.contains_key("blocks.0.ln1.bias"), "{bias:?}");

    // An operator rule on Add reaches both the Linear biases it adds and the position embedding.
    let add = chosen(&m, &run(&m, &format!("{base}[ops.Add]\ncoefficient = 1\n")));
    assert!(
        add.contains_key("pos_embed") && add.contains_key("embed.bias") && !add.contains_key("head.bias"),
        "{add:?}"
    );
    let mut p = Policy::from_toml(base).unwrap();
    p.apply_override("coefficient", "Add=1").unwrap();
    assert_eq!(chosen(&m, &select(&m, &discover(&m), &p)), add);

    let norms = chosen(&m, &run(&m, &format!("{base}[names.\"blocks.*.ln?.*\"]\ncoefficient = 1\n")));
    assert_eq!(norms.len(), 8, "{norms:?}");
    assert!(norms.keys().all(|k| k.starts_with("blocks.") && k.contains(".ln")), "{norms:?}");
}

#[test]
fn the_most_specific_rule_wins() {
    let m = zoo("vowels/vit.onnx");
    // A name rule beats an operator rule, which beats a role rule.
    let s = run(
        &m,
        "version = 1\ninherit_builtin = false\n[roles.bias]\ncoefficient = 1\n[ops.Gemm]\ncoefficient = 0\n\
         [names.\"*\"]\ncoefficient = 0\n[names.\"head.*\"]\ncoefficient = 1\n",
    );
    let c = chosen(&m, &s);
    assert_eq!(c.keys().collect::<Vec<_>>(), ["head.bias", "head.weight"]);
    let rules: Vec<&str> = s.chosen.iter().map(|c| c.rule.as_str()).collect();
    assert_eq!(rules, ["name:head.*", "name:head.*"]);
    let s =
        run(&m, "version = 1\ninherit_builtin = false\n[roles.bias]\ncoefficient = 1\n[ops.Gemm]\ncoefficient = 0\n");
    let c = chosen(&m, &s);
    assert!(!c.contains_key("head.bias") && c.contains_key("embed.bias"), "{c:?}");
}

#[test]
fn the_clear_list_names_every_weight_left_clear_with_its_size_and_role() {
    let m = zoo("vowels/vit.onnx");
    let s =
        run(&m, "version = 1\ninherit_builtin = false\n[ops.MatMul]\ncoefficient = 1\n[ops.Gemm]\ncoefficient = 1\n");
    let clear: BTreeMap<String, (u64, TensorRole, String)> = s
        .clear
        .iter()
        .map(|c| (m.tensors[c.tensor].name.clone(), (c.nbytes, c.tensor_role, c.op_type.clone())))
        .collect();
    assert_eq!(clear["pos_embed"], (29 * 48 * 4, TensorRole::PositionEmbedding, "Add".to_string()));
    assert_eq!(clear["embed.bias"], (48 * 4, TensorRole::Bias, "Add".to_string()));
    assert_eq!(clear["blocks.0.ln1.weight"], (48 * 4, TensorRole::Norm, "LayerNormalization".to_string()));
    assert_eq!(clear["val_74"], (4, TensorRole::Scale, "Mul".to_string()));
    // Gemm's C is covered by the Gemm rule: not clear.
    assert!(!clear.contains_key("head.bias") && !clear.contains_key("val_6"), "{clear:?}");
    let names: Vec<&String> = clear.keys().collect();
    assert_eq!(names.len(), s.clear.len(), "each tensor once");
}

#[test]
fn a_policy_written_as_toml_reads_back_the_same() {
    let mut p = Policy::default();
    for o in ["role:bias=1", "name:pos_*=1", "Add=0.25", "role:weight=0.1", "layer:last=1"] {
        p.apply_override("coefficient", o).unwrap();
    }
    p.apply_override("selection", "role:weight=l1").unwrap();
    p.apply_override("mode", "name:pos_*=fp").unwrap();
    p.apply_override("subsequences", "Gemm=4").unwrap();
    p.seed = 7;
    let back = Policy::from_toml(&p.to_toml()).unwrap();
    assert_eq!(back, p, "{}", p.to_toml());
    assert_eq!(back.summary(), p.summary());
}

/// `tier_order = "inverse"` fills tier 1 with the most important rows and the top tier with
/// the least important: on the osuleaf Conv1d (3 tiers, top share 0.01) the top tier's rows
/// are those of tier 1 under the importance order's reading, reversed; both orders encrypt the
/// same bytes, and the order reads back from TOML and shows in the summary.
#[test]
fn the_inverse_tier_order_puts_the_least_important_rows_in_the_top_tier() {
    let m = zoo("osuleaf/conv1d.onnx");
    let toml = "version = 1\ntiers = 3\ntier_shares = [0.01, 0.98, 0.01]\n";
    let importance = run(&m, toml);
    let inverse = run(&m, &format!("{toml}tier_order = \"inverse\"\n"));
    // (tensor, subsequence) of one tier.
    let tier = |s: &Selection, t: u32| -> Vec<(usize, u64)> {
        let mut v: Vec<_> = s
            .chosen
            .iter()
            .filter(|c| c.tier == t)
            .flat_map(|c| c.chosen.iter().map(move |&i| (c.tensor, i)))
            .collect();
        v.sort_unstable();
        v
    };
    let all = |s: &Selection| -> u64 { s.chosen.iter().map(|c| c.bytes()).sum() };
    assert_eq!(all(&importance), all(&inverse));
    let (top_imp, top_inv) = (tier(&importance, 3), tier(&inverse, 3));
    assert!(!top_imp.is_empty() && !top_inv.is_empty());
    // The importance order's top-tier rows (the most important, features.0.weight's row 16
    // first) sit in tier 1 of the inverse order, and no top-tier row of one order is in the
    // other's top tier.
    assert!(top_imp.iter().all(|x| !top_inv.contains(x)), "{top_imp:?} / {top_inv:?}");
    let first = tier(&inverse, 1);
    assert!(top_imp.iter().all(|x| first.contains(x)), "{top_imp:?} not in tier 1 of {first:?}");
    let p = Policy::from_toml(&format!("{toml}tier_order = \"inverse\"\n")).unwrap();
    assert_eq!(p.tier_order, TierOrder::Inverse);
    assert!(p.summary().ends_with(";order=inverse"), "{}", p.summary());
    assert_eq!(Policy::from_toml(&p.to_toml()).unwrap(), p);
    assert!(!Policy::from_toml(toml).unwrap().summary().contains("order="));
    let e = Policy::from_toml(&format!("{toml}tier_order = \"random\"\n")).unwrap_err().to_string();
    assert!(e.contains("tier_order 'random' must be auto, importance, inverse or classes"), "{e}");
}

#[test]
fn selectors_are_checked() {
    let mut p = Policy::default();
    for (spec, needle) in [
        ("Frobnicate=1", "unknown operator type 'Frobnicate'"),
        ("role:kernel=1", "unknown tensor role 'kernel'"),
        ("name:=1", "needs a pattern"),
        ("layer:middle=1", "unknown layer 'middle'"),
        ("Add", "expected SELECTOR=VALUE"),
    ] {
        let e = p.apply_override("coefficient", spec).unwrap_err().to_string();
        assert!(e.contains(needle), "{spec}: {e}");
    }
    for (toml, needle) in [
        ("version = 1\n[roles.kernel]\ncoefficient = 1", "unknown tensor role"),
        ("version = 1\n[roles.bias]\nroles = [\"B\"]", "belongs in an [ops.OP] rule"),
        ("version = 1\n[names.\"x\"]\ncoefficient = 2", "outside [0, 1]"),
        ("version = 1\n[ops.Add]\nroles = [\"Q\"]", "unknown role 'Q'"),
    ] {
        let e = Policy::from_toml(toml).unwrap_err().to_string();
        assert!(e.contains(needle), "{toml}: {e}");
    }
    assert!(Policy::from_toml("version = 1\n[ops.Add]\nroles = [\"input1\"]").is_ok());
}

#[test]
fn the_first_and_last_layers_are_found_in_every_zoo_model() {
    let expect: [(&str, &[&str], &[&str]); 6] = [
        ("digits/cnn.onnx", &["conv1.bias", "conv1.weight"], &["fc.bias", "fc.weight"]),
        ("digits/vit.onnx", &["patch_embed.bias", "patch_embed.weight"], &["head.bias", "head.weight"]),
        ("vowels/vit.onnx", &["embed.bias", "val_1"], &["head.bias", "head.weight"]),
        ("vowels/lstm.onnx", &["val_43", "val_66"], &["head.bias", "head.weight"]),
        ("osuleaf/convmixer.onnx", &["patch_embed.bias", "patch_embed.weight"], &["head.bias", "head.weight"]),
        ("vowels/mlp.onnx", &["fc1.bias", "fc1.weight"], &["fc3.bias", "fc3.weight"]),
    ];
    for (path, first, last) in expect {
        let m = zoo(path);
        let w = discover(&m);
        let names = |f: &dyn Fn(&onnx_protect_format::Weight) -> bool| -> Vec<String> {
            let mut v: Vec<String> = w.iter().filter(|x| f(x)).map(|x| m.tensors[x.tensor].name.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(names(&|x| x.first_layer), first, "{path} first");
        assert_eq!(names(&|x| x.last_layer), last, "{path} last");
    }
    // Addressed by `layer:first` / `layer:last`, ahead of operator rules.
    let m = zoo("vowels/vit.onnx");
    let c = chosen(
        &m,
        &run(&m, "version = 1\ninherit_builtin = false\n[layers.last]\ncoefficient = 1\n[ops.Gemm]\ncoefficient = 0\n"),
    );
    assert_eq!(c.keys().collect::<Vec<_>>(), ["head.bias", "head.weight"]);
}

/// `--tiers N` alone on a classifier tiers by class: its class layer (the last `Gemm`, one row
/// per class) is shared out so that tier `k` serves the first `round(1 + k·(C − 1)/N)` classes,
/// and every other chosen row sits in tier 1; the same bytes are encrypted as without tiers,
/// and the summary names the order followed.
#[test]
fn default_tiers_of_a_classifier_serve_more_classes_at_each_tier() {
    use onnx_protect_select::classes::{class_layer, classes_per_tier};
    for (path, classes, served) in
        [("digits/mlp.onnx", 10, [4, 7, 10]), ("vowels/gru.onnx", 9, [4, 6, 9]), ("osuleaf/vit.onnx", 6, [3, 4, 6])]
    {
        let m = zoo(path);
        let layer = class_layer(&m, &discover(&m)).unwrap();
        assert_eq!(layer.classes, classes, "{path}");
        assert_eq!(classes_per_tier(classes, 3).unwrap(), served, "{path}");
        let s = run(&m, "version = 1\ntiers = 3\n");
        assert_eq!(s.tier_order, TierOrder::Classes, "{path}");
        let untiered = run(&m, "version = 1\n");
        assert_eq!(s.bytes(), untiered.bytes(), "{path}");
        let row_bytes = m.tensors[layer.tensor].nbytes / classes;
        for c in &s.chosen {
            if c.tensor == layer.tensor {
                let lo = if c.tier == 1 { 0 } else { served[c.tier as usize - 2] };
                let hi = served[c.tier as usize - 1];
                assert_eq!(c.chosen, (lo..hi).collect::<Vec<_>>(), "{path} tier {}", c.tier);
                assert_eq!(c.spans, vec![(lo * row_bytes, hi * row_bytes)], "{path} tier {}", c.tier);
            } else {
                assert_eq!(c.tier, 1, "{path}: {} is not the class layer", m.tensors[c.tensor].name);
            }
        }
        // Shares or an order asked for keep the importance ladder.
        let shares = run(&m, "version = 1\ntiers = 3\ntier_shares = [0.5, 0.25, 0.25]\n");
        assert_eq!(shares.tier_order, TierOrder::Importance, "{path}");
        let p = Policy::from_toml("version = 1\ntiers = 3\ntier_order = \"importance\"\n").unwrap();
        assert_eq!(select(&m, &discover(&m), &p).tier_order, TierOrder::Importance, "{path}");
        assert!(!p.summary().contains("order="), "{}", p.summary());
    }
    let e = Policy::from_toml("version = 1\ntiers = 3\ntier_order = \"classes\"\ntier_shares = [0.5, 0.25, 0.25]\n")
        .and_then(|p| p.shares())
        .unwrap_err()
        .to_string();
    assert!(e.contains("tier shares are for the importance and inverse tier orders"), "{e}");
}

/// Models that are not classifiers as the class order reads them keep the importance order:
/// a `MatMul` head (rows are features), a square `Gemm` (rows or columns?), outputs that are not
/// `[batch, classes]`; and the class counts need a class of their own at every tier.
#[test]
fn tiers_by_class_need_a_class_layer_with_a_class_for_every_tier() {
    use onnx_protect_select::classes::{class_layer, classes_per_tier};
    for path in [
        "ops/rnn_tanh.onnx",
        "ops/multihead_attention.onnx",
        "ops/lstm_bidirectional_2.onnx",
        "ops/conv_transpose.onnx",
    ] {
        let m = zoo(path);
        assert_eq!(class_layer(&m, &discover(&m)), None, "{path}");
        assert_eq!(run(&m, "version = 1\ntiers = 3\n").tier_order, TierOrder::Importance, "{path}");
        let p = Policy::from_toml("version = 1\ntiers = 3\ntier_order = \"classes\"\n").unwrap();
        // Refused by the encryption (PolicyError::NoClassLayer): the selection says it fell back.
        assert_eq!(select(&m, &discover(&m), &p).tier_order, TierOrder::Importance, "{path}");
    }
    assert_eq!(classes_per_tier(10, 2), Some(vec![6, 10]));
    assert_eq!(classes_per_tier(6, 5), Some(vec![2, 3, 4, 5, 6]));
    assert_eq!(classes_per_tier(2, 2), None);
    assert_eq!(classes_per_tier(6, 6), None);
    assert_eq!(classes_per_tier(2, 3), None);
    assert_eq!(classes_per_tier(10, 1), None);
}

/// A policy that leaves rows of the class layer clear (`*=0.5`) keeps the importance order:
/// a class whose row is clear would be served at every tier.
#[test]
fn tiers_by_class_need_every_row_of_the_class_layer() {
    let m = zoo("digits/mlp.onnx");
    let mut p = Policy::from_toml("version = 1\ntiers = 3\n").unwrap();
    p.apply_override("coefficient", "*=0.5").unwrap();
    assert_eq!(select(&m, &discover(&m), &p).tier_order, TierOrder::Importance);
}

/// The class layer over the label lock's head cases (fixtures/lock, outputs declared without a
/// shape): found where the rows of a `Gemm` kernel are the classes, whatever their storage (raw,
/// `float_data`, fp16, external data, uint8 through `DequantizeLinear`) and whatever follows the
/// logits (`TopK`, a quantisation), behind a `Transpose` too; found along the last axis where the
/// columns are the classes (`transB = 0`, `MatMul`, per-class int8, a rank-3 `MatMul` input, a
/// batched weight); not where a class is neither a row nor a column of whole bytes (int4), nor
/// where the weight is shared, one of two heads or not a constant, nor without a layer.
#[test]
fn the_class_layer_of_each_head_shape() {
    use onnx_protect_select::classes::{class_layer, ClassAxis};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/lock");
    let order = |case: &str| {
        let m = Model::open(dir.join(case).join("model.onnx")).unwrap();
        let layer = class_layer(&m, &discover(&m)).map(|l| (l.classes, l.axis));
        (layer, run(&m, "version = 1\ntiers = 3\n").tier_order)
    };
    for case in [
        "gemm_transb1",
        "float_data",
        "fp16_raw_and_int32_data",
        "external_data",
        "topk_unsorted",
        "qdq_uint8_bias_int32",
        "constant_transpose",
    ] {
        assert_eq!(order(case), (Some((5, ClassAxis::Rows)), TierOrder::Classes), "{case}");
    }
    for case in [
        "gemm_transb0_softmax",
        "dq_int8_per_class",
        "matmul_add_logsoftmax",
        "matmul_bias_first_topk",
        "matmul_nobias_identity_cast",
        "matmul_rank3_reshape",
        "double_data",
        "bf16_cast",
        "matmul_batched_weight",
    ] {
        assert_eq!(order(case), (Some((5, ClassAxis::Columns)), TierOrder::Classes), "{case}");
    }
    for case in ["dq_int4_blocked", "weight_shared", "two_heads", "weight_is_input", "no_head_conv"] {
        assert_eq!(order(case), (None, TierOrder::Importance), "{case}");
    }
}

/// Tiers by class along the last axis (`MatMul` `[features, classes]`): each row of the
/// weight is cut where the tier of its class changes, so tier `k` holds the elements of its
/// classes in every row, the same bytes are encrypted as without tiers, and the classes each
/// tier holds read back from its spans.
#[test]
fn tiers_by_class_along_the_last_axis_cut_every_row() {
    use onnx_protect_select::classes::class_layer;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/lock");
    for (case, text, groups) in [
        ("matmul_add_logsoftmax", "", vec![vec![0, 1], vec![2, 3], vec![4]]),
        ("gemm_transb0_softmax", "tier_classes = [[4], [0, 2]]\n", vec![vec![4], vec![0, 2], vec![1, 3]]),
    ] {
        let m = Model::open(dir.join(case).join("model.onnx")).unwrap();
        let layer = class_layer(&m, &discover(&m)).unwrap();
        let t = &m.tensors[layer.tensor];
        let (rows, elem) = (t.dims[0], t.data_type.bits() / 8);
        let s = run(&m, &format!("version = 1\ntiers = 3\n{text}"));
        assert_eq!(s.tier_order, TierOrder::Classes, "{case}");
        assert_eq!(s.bytes(), run(&m, "version = 1\n").bytes(), "{case}");
        for (tier, classes) in (1u32..).zip(&groups) {
            let c = s.chosen.iter().find(|c| c.tensor == layer.tensor && c.tier == tier).unwrap();
            let mut want: Vec<(u64, u64)> = Vec::new();
            for r in 0..rows {
                for &k in classes {
                    let a = (r * layer.classes + k) * elem;
                    match want.last_mut() {
                        Some(last) if last.1 == a => last.1 = a + elem,
                        _ => want.push((a, a + elem)),
                    }
                }
            }
            assert_eq!(c.spans, want, "{case} tier {tier}");
            assert_eq!(c.chosen, (0..rows).collect::<Vec<_>>(), "{case} tier {tier}");
            let mut read: Vec<u64> = c.spans.iter().flat_map(|&sp| layer.classes_in(t, sp)).collect();
            read.sort_unstable();
            read.dedup();
            assert_eq!(&read, classes, "{case} tier {tier}");
        }
    }
}

/// Tier classes chosen by the policy (`tier_classes`, `--tier-classes`): each tier below the top
/// gets the rows of the classes it adds, the top tier the rest; the groups read back from TOML
/// and the summary, their text form parses back, and bad groups are refused.
#[test]
fn tier_classes_put_the_rows_of_the_classes_asked_in_their_tiers() {
    use onnx_protect_select::{class_groups_text, classes::class_tiers, parse_class_groups};
    let m = zoo("digits/mlp.onnx");
    let p = Policy::from_toml("version = 1\ntiers = 3\ntier_classes = [[9, 0, 2], [5, 6, 7]]\n").unwrap();
    p.shares().unwrap();
    let s = select(&m, &discover(&m), &p);
    assert_eq!(s.tier_order, TierOrder::Classes);
    let head = s.chosen.iter().find(|c| c.tier == 3).unwrap().tensor;
    let rows = |t: u32| s.chosen.iter().find(|c| c.tensor == head && c.tier == t).unwrap().chosen.clone();
    assert_eq!((rows(1), rows(2), rows(3)), (vec![0, 2, 9], vec![5, 6, 7], vec![1, 3, 4, 8]));
    assert!(p.summary().ends_with(";tiers=3;classes=9,0,2;5-7"), "{}", p.summary());
    assert_eq!(Policy::from_toml(&p.to_toml()).unwrap(), p, "{}", p.to_toml());
    assert_eq!(parse_class_groups("9,0,2;5-7").unwrap(), vec![vec![9, 0, 2], vec![5, 6, 7]]);
    assert_eq!(class_groups_text(&[vec![0, 1, 2, 3], vec![5], vec![7, 8, 10]]), "0-3;5;7-8,10");
    assert_eq!(class_tiers(4, 3, Some(&[vec![3], vec![0]])), Some(vec![2, 3, 3, 1]));
    assert_eq!(class_tiers(4, 3, Some(&[vec![4], vec![0]])), None, "class 4 of 4");
    for bad in ["", "1;;2", "a", "3-1", "1-2-3", "0-2000000"] {
        assert!(parse_class_groups(bad).and_then(|g| Policy::default().set_tier_classes(g)).is_err(), "{bad}");
    }
    let mut twice = Policy::default();
    assert!(twice
        .set_tier_classes(vec![vec![1, 2], vec![2]])
        .unwrap_err()
        .to_string()
        .contains("class 2 is given to two tiers"));
    for (toml, why) in [
        ("tiers = 2\ntier_classes = [[0], [1]]\n", "2 tier class groups given for 2 tiers"),
        ("tiers = 3\ntier_classes = [[0], [1]]\ntier_shares = [0.5, 0.25, 0.25]\n", "without tier shares"),
        ("tiers = 3\ntier_classes = [[0], [1]]\ntier_order = \"inverse\"\n", "without tier shares"),
    ] {
        let e = Policy::from_toml(&format!("version = 1\n{toml}")).and_then(|p| p.shares()).unwrap_err().to_string();
        assert!(e.contains(why), "{toml}: {e}");
    }
}

/// Tier classes that would cut a `[features, classes]` head into more than
/// `MAX_CLASS_SPANS` spans (every other class of 1,024 in 1,025 rows) are not followed (the
/// encryption refuses them), where the default tiers of the same head are.
#[test]
fn tier_classes_cutting_a_column_head_into_too_many_spans_are_not_followed() {
    use onnx_protect_format::testutil::{float_tensor, matmul_chain};
    use onnx_protect_select::MAX_CLASS_SPANS;
    let (rows, classes) = (1025usize, 1024usize);
    let w = float_tensor("W0", &[rows as i64, classes as i64], &vec![0.5; rows * classes]);
    let m = Model::from_vec(matmul_chain(&[w]), None).unwrap();
    assert_eq!(run(&m, "version = 1\ntiers = 3\n").tier_order, TierOrder::Classes);
    let even: Vec<String> = (0..classes).step_by(2).map(|c| c.to_string()).collect();
    let alternating = format!("version = 1\ntiers = 2\ntier_classes = [[{}]]\n", even.join(", "));
    assert!((rows * classes) as u64 > MAX_CLASS_SPANS);
    assert_eq!(run(&m, &alternating).tier_order, TierOrder::Importance);
    // Half as many rows: followed.
    let w = float_tensor("W0", &[512, classes as i64], &vec![0.5; 512 * classes]);
    let m = Model::from_vec(matmul_chain(&[w]), None).unwrap();
    assert_eq!(run(&m, &alternating).tier_order, TierOrder::Classes);
}
