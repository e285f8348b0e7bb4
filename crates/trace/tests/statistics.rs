//! Identification and the false-positive bound, on a digits model (fixtures/digits/mlp.onnx):
//! every one of 50 recipients' copies is named, and thousands of unmarked and
//! wrongly-marked copies name nobody.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::HashMap;
use std::path::PathBuf;

use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{DataType, Model, TensorId};
use onnx_protect_trace::plan::{decode_float, encode_float};
use onnx_protect_trace::{threshold, FingerprintKey, How, Marker, Matched, RecipientId, Tracer, DEFAULT_ALPHA};

fn mlp() -> Model {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/digits/mlp.onnx");
    Model::open(p).expect("fixtures/digits/mlp.onnx opens")
}

fn key(b: u8) -> FingerprintKey {
    FingerprintKey::new(&MasterKey::from_bytes([b; 32]))
}

fn ids(prefix: &str, n: usize) -> Vec<RecipientId> {
    (0..n).map(|i| RecipientId::new(&format!("{prefix}{i:02}")).unwrap()).collect()
}

/// The planned tensors' values of `model` as `marker` changes them.
fn marked(model: &Model, marker: &Marker) -> HashMap<TensorId, Vec<f64>> {
    let mut out = HashMap::new();
    for t in &model.tensors {
        let bytes = model.tensor_bytes(t.id).unwrap();
        if let Some(new) = marker.rewrite(t, &bytes) {
            out.insert(t.id, decode_float(t.data_type, &new).unwrap());
        }
    }
    assert_eq!(out.len(), marker.tensors());
    out
}

/// A deterministic source of test noise (SplitMix64; not cryptographic, not a secret).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A standard normal sample (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[test]
fn each_of_50_recipients_copies_is_named_and_only_it() {
    let model = mlp();
    let k = key(7);
    let recipients = ids("customer-", 50);
    let tracer = Tracer::new(&model, &k, &recipients).unwrap();
    let t = threshold(50, 1e-6);
    for r in &recipients {
        let marker = Marker::new(&model, &k, r, DEFAULT_ALPHA).unwrap();
        let values = marked(&model, &marker);
        let report = tracer
            .trace_with(|p, _| Ok(Some(Matched { values: values[&p.tensor].clone(), how: How::Name })), 1e-6)
            .unwrap();
        assert_eq!(report.matches.len(), 1, "{r}: {:?}", report.matches);
        assert_eq!(report.matches[0].recipient, r.as_str());
        assert!(report.best.z > 10.0 * t, "{r}: z = {}", report.best.z);
        assert!(report.scores[1].z < t, "{r}: runner-up {:?}", report.scores[1]);
    }
}

#[test]
fn copies_stored_as_float16_bfloat16_or_double_are_named() {
    let model = mlp();
    let k = key(8);
    let recipients = ids("r", 50);
    let tracer = Tracer::new(&model, &k, &recipients).unwrap();
    let values = marked(&model, &Marker::new(&model, &k, &recipients[3], DEFAULT_ALPHA).unwrap());
    for dt in [DataType::Float16, DataType::Bfloat16, DataType::Double] {
        let report = tracer
            .trace_with(
                |p, _| {
                    let stored = encode_float(dt, &values[&p.tensor]).unwrap();
                    Ok(Some(Matched { values: decode_float(dt, &stored).unwrap(), how: How::Name }))
                },
                1e-6,
            )
            .unwrap();
        let named: Vec<&str> = report.matches.iter().map(|m| m.recipient.as_str()).collect();
        assert_eq!(named, ["r03"], "{dt}: best {:?}", report.best);
    }
}

/// 1,000 unmarked copies (the original plus independent noise of many kinds and sizes)
/// and 1,000 wrongly-marked copies (marked for someone outside the ledger, or with
/// another secret, plus noise), each traced against a 50-recipient ledger at p = 1e-6:
/// no recipient is named. Also: the scores of innocent recipients behave like the
/// standard normal the bound assumes (mean near 0, variance near 1).
#[test]
fn no_false_match_over_thousands_of_unmarked_and_wrongly_marked_copies() {
    let model = mlp();
    let k = key(9);
    let other_secret = key(10);
    let recipients = ids("r", 50);
    let tracer = Tracer::new(&model, &k, &recipients).unwrap();
    let originals: HashMap<TensorId, Vec<f64>> =
        tracer.planned().iter().map(|p| (p.tensor, tracer.original_values(p).unwrap())).collect();
    let sigma: HashMap<TensorId, f64> = tracer.planned().iter().map(|p| (p.tensor, p.sigma)).collect();
    let mut noise = Noise(42);
    let (mut n, mut sum, mut sum2, mut max_z) = (0u64, 0.0, 0.0, f64::MIN);
    for trial in 0..2000usize {
        let base: HashMap<TensorId, Vec<f64>> = if trial < 1000 {
            originals.clone()
        } else {
            let outsider = RecipientId::new(&format!("outsider-{trial}")).unwrap();
            let secret = if trial % 2 == 0 { &k } else { &other_secret };
            let r = if trial % 2 == 0 { outsider } else { recipients[trial % 50].clone() };
            marked(&model, &Marker::new(&model, secret, &r, DEFAULT_ALPHA).unwrap())
        };
        // Noise of a kind and size chosen per trial: Gaussian (fine-tuning-like), coarse
        // rounding (quantisation-like) or zeroing of small weights (pruning-like).
        let scale = DEFAULT_ALPHA * [0.1, 1.0, 10.0][trial % 3];
        let kind = (trial / 3) % 3;
        let copy: HashMap<TensorId, Vec<f64>> = base
            .iter()
            .map(|(id, v)| {
                let s = sigma[id];
                let out = v
                    .iter()
                    .map(|&x| match kind {
                        0 => x + scale * s * noise.normal(),
                        1 => (x / (scale * s * 4.0)).round() * scale * s * 4.0,
                        _ if x.abs() < 0.1 * s => 0.0,
                        _ => x,
                    })
                    .collect();
                (*id, out)
            })
            .collect();
        let report = tracer
            .trace_with(|p, _| Ok(Some(Matched { values: copy[&p.tensor].clone(), how: How::Name })), 1e-6)
            .unwrap();
        assert!(report.matches.is_empty(), "trial {trial}: false match {:?}", report.matches);
        for s in &report.scores {
            n += 1;
            sum += s.z;
            sum2 += s.z * s.z;
            max_z = max_z.max(s.z);
        }
    }
    let mean = sum / n as f64;
    let var = sum2 / n as f64 - mean * mean;
    // 100,000 scores; for a standard normal the sample mean is within 0.02 and the
    // variance within 0.05 of 0 and 1 with overwhelming probability. Correlated noise
    // (same noise stream per trial for all recipients) widens this a little.
    assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.1, "mean {mean}, variance {var}");
    assert!(max_z < threshold(50, 1e-6), "max innocent score {max_z}");
}
