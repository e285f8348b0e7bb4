//! A label lock names only tensors whose bytes a reader can store back once it restores the
//! class order (docs/format.md §15, checked at §12 step 3 without a key): a lock naming a
//! STRING tensor, a tensor with no stored data, a 6-bit float in `int32_data`, or one tensor
//! twice is "modified", in the header check every reader makes and in `verify`.

#![allow(clippy::unwrap_used)] // tests may unwrap

use base64::Engine;
use onnx_protect_core::error::{BadManifest, CoreError, LabelLockProblem};
use onnx_protect_core::format2::envelope::{parse_entry, trailing_entry, METADATA_KEY_V2};
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::protect::{encrypt, verify, EncryptOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{Model, NoProgress};
use onnx_protect_proto::v2 as pb;
use onnx_protect_proto::Message;
use onnx_protect_select::Policy;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(number: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(number << 3 | 2), &mut out);
    varint(value.len() as u64, &mut out);
    out.extend_from_slice(value);
    out
}

fn varint_field(number: u32, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(number << 3), &mut out);
    varint(value, &mut out);
    out
}

/// A `TensorProto`: `dims`, `data_type`, `name`, then the storage fields given.
fn tensor(name: &str, data_type: u64, dims: &[u64], storage: &[u8]) -> Vec<u8> {
    let mut t: Vec<u8> = dims.iter().flat_map(|&d| varint_field(1, d)).collect();
    t.extend(varint_field(2, data_type));
    t.extend(bytes_field(8, name.as_bytes()));
    t.extend_from_slice(storage);
    t
}

fn packed(number: u32, values: &[u64]) -> Vec<u8> {
    let mut v = Vec::new();
    for &x in values {
        varint(x, &mut v);
    }
    bytes_field(number, &v)
}

/// Initializers of every kind the lock rules judge, each with 3 classes along axis 0, and a
/// node reading `x` into the output `y`.
fn model_bytes() -> Vec<u8> {
    let inits = [
        tensor("w", 1, &[3, 4], &bytes_field(9, &[0x3f; 48])), // FLOAT in raw_data
        tensor("s", 8, &[3], &[bytes_field(6, b"a"), bytes_field(6, b"b"), bytes_field(6, b"c")].concat()), // STRING
        tensor("e", 1, &[3, 0], &[]),                          // no stored data
        tensor("f6", 27, &[3], &packed(5, &[1, 2, 3])),        // FLOAT6E2M3 in int32_data
        tensor("f6raw", 28, &[3], &bytes_field(9, &[5, 6, 7])), // FLOAT6E3M2 in raw_data
        tensor("i8", 3, &[3], &packed(5, &[1, 2, 3])),         // INT8 in int32_data
    ];
    let node = [bytes_field(1, b"x"), bytes_field(2, b"y"), bytes_field(3, b"n"), bytes_field(4, b"Identity")].concat();
    let mut graph = bytes_field(1, &node);
    graph.extend(bytes_field(2, b"g"));
    for t in &inits {
        graph.extend(bytes_field(5, t));
    }
    graph.extend(bytes_field(11, &bytes_field(1, b"x")));
    graph.extend(bytes_field(12, &bytes_field(1, b"y")));
    [varint_field(1, 10), bytes_field(7, &graph), bytes_field(8, &varint_field(2, 21))].concat()
}

/// A lock of 3 classes over the tensors `names` (axis 0), read with output `y`.
fn lock_of(model: &Model, names: &[&str]) -> pb::LabelLock {
    let tensors = names
        .iter()
        .map(|n| {
            let t = model.tensors.iter().find(|t| t.name == *n).unwrap();
            pb::LockedTensor {
                locator: t.locator.to_string(),
                name: t.name.clone(),
                data_type: t.data_type.to_i32(),
                dims: t.dims.clone(),
                axis: 0,
                part: "weight".into(),
            }
        })
        .collect();
    pb::LabelLock {
        classes: 3,
        sealed_seed: vec![0; 48],
        tensors,
        outputs: vec![pb::LockedOutput { name: "y".into(), kind: pb::OutputKind::Scores as i32 }],
        node: "n".into(),
    }
}

fn read_lock(model: &Model, names: &[&str]) -> Result<(), CoreError> {
    let header = pb::Header { label_lock: Some(lock_of(model, names)), ..Default::default() };
    onnx_protect_core::lock::read(model, &header).map(|_| ())
}

/// The tensors of a lock no reader can restore, with what the refusal names.
const REFUSED: [(&[&str], &str); 5] = [
    (&["s"], "holds strings"),
    (&["w", "e"], "stored as empty"),
    (&["f6"], "int32_data"),
    (&["f6", "w"], "int32_data"),
    (&["w", "s"], "holds strings"),
];

#[test]
fn a_lock_naming_a_tensor_that_cannot_be_stored_back_is_modified() {
    let model = Model::from_vec(model_bytes(), None).unwrap();
    for (names, what) in REFUSED {
        match read_lock(&model, names) {
            Err(CoreError::BadManifest(BadManifest::LabelLock(LabelLockProblem::Locator { tensor, why }))) => {
                assert!(names.contains(&tensor.as_str()) && tensor != "w", "{names:?}: {tensor}");
                assert!(why.contains("cannot be locked") && why.contains(what), "{names:?}: {why}");
            }
            other => panic!("{names:?}: {other:?}"),
        }
    }
    // Bytes that can be stored back: raw_data of any type, varints of whole-byte types.
    for names in [&["w"][..], &["f6raw"], &["i8"], &["w", "f6raw", "i8"]] {
        read_lock(&model, names).unwrap_or_else(|e| panic!("{names:?}: {e}"));
    }
}

#[test]
fn a_lock_naming_a_tensor_twice_is_modified() {
    let model = Model::from_vec(model_bytes(), None).unwrap();
    for names in [&["w", "w"][..], &["i8", "w", "i8"]] {
        match read_lock(&model, names) {
            Err(CoreError::BadManifest(BadManifest::LabelLock(LabelLockProblem::TensorTwice { tensor }))) => {
                assert_eq!(tensor, names[names.len() - 1]);
            }
            other => panic!("{names:?}: {other:?}"),
        }
    }
}

/// The same refusals when a protected model's header records such a lock (its checksum
/// recomputed): `verify` without a key says "modified" and why.
#[test]
fn verify_refuses_a_protected_model_whose_lock_names_such_a_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("m.onnx");
    std::fs::write(&plain, model_bytes()).unwrap();
    let out = dir.path().join("enc.onnx");
    let policy = Policy::default();
    let opts = EncryptOptions { allow_empty: true, ..EncryptOptions::new(&policy) };
    encrypt(&plain, &out, &EncryptTo::key(KeySource::key(MasterKey::from_bytes([5; 32]))), &opts).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let model = Model::open(&out).unwrap();
    let (range, value) = trailing_entry(&bytes).unwrap();
    let sealed = parse_entry(value, range.clone()).unwrap();
    for (names, what) in REFUSED.iter().copied().chain([(&["w", "w"][..], "named twice")]) {
        let mut header = sealed.header.clone();
        header.label_lock = Some(lock_of(&model, names));
        let mut env = sealed.envelope.clone();
        env.header = header.encode_to_vec();
        env.checksum.clear();
        env.checksum = onnx_protect_crypto::envelope_checksum(&env.encode_to_vec()).to_vec();
        let mut changed = bytes[..range.start as usize].to_vec();
        let value = base64::engine::general_purpose::STANDARD.encode(env.encode_to_vec());
        changed.extend_from_slice(&onnx_protect_format::write::metadata_field(METADATA_KEY_V2, &value));
        let path = dir.path().join("changed.onnx");
        std::fs::write(&path, &changed).unwrap();
        let e = verify(&path, None, &NoProgress).unwrap_err();
        assert!(matches!(e, CoreError::BadManifest(BadManifest::LabelLock(_))), "{names:?}: {e}");
        let text = e.to_string();
        assert!(text.starts_with("modified: ") && text.contains(what), "{names:?}: {text}");
    }
}
