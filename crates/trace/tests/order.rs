//! Label-locked copies (docs/tracing.md §7) on the digits MLP (10 classes) and a vowels
//! model (9): each recipient's marked and locked copy is named by its class order alone
//! when the bound allows it, and by its weight marks (read after the order is undone);
//! an unlocked copy shows the original order and matches no recipient's.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::PathBuf;

use onnx_protect_crypto::MasterKey;
use onnx_protect_format::write::Plan;
use onnx_protect_format::Model;
use onnx_protect_lock::{find_output_layer, placement, rewrite_model, ClassPermutation, Direction, Rewritten};
use onnx_protect_trace::{FingerprintKey, Mark, Marker, RecipientId, Tracer, DEFAULT_ALPHA};

fn open(rel: &str) -> Model {
    Model::open(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)).unwrap()
}

fn key() -> FingerprintKey {
    FingerprintKey::new(&MasterKey::from_bytes([5; 32]))
}

/// `model` with every planned tensor marked for `marker`'s recipient.
fn mark(model: &Model, marker: &Marker) -> Model {
    let rewritten: Vec<Rewritten> = model
        .tensors
        .iter()
        .filter_map(|t| {
            let bytes = model.tensor_bytes(t.id).unwrap();
            marker.rewrite(t, &bytes).map(|bytes| Rewritten { tensor: t.id, bytes })
        })
        .collect();
    let (edits, external) = placement(model, &rewritten).unwrap();
    assert!(external.is_empty());
    let plan = Plan::new(model.bytes().len() as u64, edits, Vec::new()).unwrap();
    let mut out = Vec::new();
    plan.write(model.bytes(), &mut out, &mut |_, _, _| Ok(())).unwrap();
    Model::from_vec(out, None).unwrap()
}

/// `model` locked with recipient `r`'s seed for the original of digest `digest`.
fn lock(model: &Model, k: &FingerprintKey, r: &RecipientId, digest: &str) -> (Model, ClassPermutation) {
    let layer = find_output_layer(model, None).unwrap();
    let perm = ClassPermutation::derive(&k.lock_seed(r, digest).unwrap(), layer.classes).unwrap();
    let (bytes, _) = rewrite_model(model, &layer, &perm, Direction::Lock).unwrap();
    (Model::from_vec(bytes, None).unwrap(), perm)
}

fn recipients(n: usize) -> Vec<RecipientId> {
    (0..n).map(|i| RecipientId::new(&format!("r{i:02}")).unwrap()).collect()
}

#[test]
fn each_locked_copy_is_named_by_its_class_order_and_its_marks() {
    for (rel, classes) in [("fixtures/digits/mlp.onnx", 10u64), ("fixtures/zoo/vowels/mlp.onnx", 9)] {
        let original = open(rel);
        let k = key();
        let rs = recipients(20);
        let marks: Vec<Mark> = rs.iter().cloned().map(Mark::from).collect();
        let locked: Vec<(RecipientId, u64)> = rs.iter().map(|r| (r.clone(), classes)).collect();
        let tracer = Tracer::for_marks(&original, &k, &marks).unwrap().with_locks(&locked).unwrap();
        let digest = tracer.original_digest().to_string();
        let mut orders = Vec::new();
        for r in &rs[..5] {
            let marker = Marker::new(&original, &k, r, DEFAULT_ALPHA).unwrap();
            let (suspect, perm) = lock(&mark(&original, &marker), &k, r, &digest);
            // The bound N/!C: 20/1,334,961 = 1.5e-5 for 10 classes, 20/133,496 for 9.
            let strict = tracer.trace(&suspect, 1e-6).unwrap();
            let order = strict.order.as_ref().unwrap();
            assert!(order.recovered && !order.identity, "{rel} {r}");
            assert_eq!(order.matches, [r.as_str()], "{rel} {r}");
            assert!(order.named.is_empty(), "{rel}: bound {} names nobody at 1e-6", order.bound);
            assert_eq!(order.scores[0].agreements, classes as usize);
            assert!(order.scores[1].agreements < classes as usize);
            let loose = tracer.trace(&suspect, 1e-3).unwrap();
            assert_eq!(loose.order.unwrap().named, [r.as_str()], "{rel} {r}");
            // The weight marks, read after the order is undone, name the recipient too.
            let named: Vec<&str> = strict.matches.iter().map(|m| m.recipient.as_str()).collect();
            assert_eq!(named, [r.as_str()], "{rel} {r}: best {:?}", strict.best);
            assert!(strict.best.z > 50.0, "{rel} {r}: z {}", strict.best.z);
            orders.push(perm);
        }
        assert!(orders.windows(2).all(|w| w[0] != w[1]), "recipients get distinct orders");
        // A copy unlocked with the key (decrypted): the original order, no order match;
        // the marks still name its recipient.
        let marker = Marker::new(&original, &k, &rs[7], DEFAULT_ALPHA).unwrap();
        let report = tracer.trace(&mark(&original, &marker), 1e-6).unwrap();
        let order = report.order.unwrap();
        assert!(order.recovered && order.identity && order.matches.is_empty(), "{rel}");
        assert_eq!(report.matches[0].recipient, "r07");
        // Someone outside the ledger: locked and marked with an unknown ID matches nobody.
        let outsider = RecipientId::new("outsider").unwrap();
        let marker = Marker::new(&original, &k, &outsider, DEFAULT_ALPHA).unwrap();
        let (suspect, _) = lock(&mark(&original, &marker), &k, &outsider, &digest);
        let report = tracer.trace(&suspect, 1e-3).unwrap();
        assert!(report.order.unwrap().named.is_empty() && report.matches.is_empty(), "{rel}");
    }
}

#[test]
fn a_lock_that_does_not_fit_the_original_is_an_error() {
    let original = open("fixtures/digits/mlp.onnx");
    let k = key();
    let marks = [Mark::from(RecipientId::new("a").unwrap())];
    let e = Tracer::for_marks(&original, &k, &marks)
        .unwrap()
        .with_locks(&[(RecipientId::new("a").unwrap(), 9)])
        .err()
        .unwrap();
    assert!(e.to_string().contains("lock of 9 classes"), "{e}");
}
