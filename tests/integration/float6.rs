//! The 6-bit float types of ONNX (FLOAT6E2M3 = 27, FLOAT6E3M2 = 28, docs/format.md §5): a
//! model holding them parses; weights in `raw_data` are encrypted (`ctr`) and restored byte
//! for byte; weights stored one element per `int32_data` value, and the `fp` mode, which has
//! no mask for them, leave them clear with the reason.

use onnx_protobuf::{GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto};

use crate::util::{keygen_in, run};

fn float6_model() -> Vec<u8> {
    let mut g = GraphProto::new();
    g.name = "float6".into();
    let mut raw = TensorProto::new();
    raw.name = "w6_raw".into();
    raw.data_type = 27;
    raw.dims = vec![16, 8];
    raw.raw_data = (0..96u32).map(|i| (i * 37 + 11) as u8).collect(); // 128 elements × 6 bits
    let mut typed = TensorProto::new();
    typed.name = "w6_i32".into();
    typed.data_type = 28;
    typed.dims = vec![16, 8];
    typed.int32_data = (0..128).map(|i| (i * 7) % 64).collect();
    for w in [&raw, &typed] {
        let mut cast = NodeProto::new();
        cast.op_type = "Cast".into();
        cast.name = format!("cast_{}", w.name);
        cast.input = vec![w.name.clone()];
        cast.output = vec![format!("{}_f", w.name)];
        let mut to = onnx_protobuf::AttributeProto::new();
        to.name = "to".into();
        to.i = 1;
        to.type_ = onnx_protobuf::attribute_proto::AttributeType::INT.into();
        cast.attribute.push(to);
        let mut mm = NodeProto::new();
        mm.op_type = "MatMul".into();
        mm.name = format!("mm_{}", w.name);
        mm.input = vec!["x".into(), format!("{}_f", w.name)];
        mm.output = vec![format!("y_{}", w.name)];
        g.node.push(cast);
        g.node.push(mm);
        let mut y = ValueInfoProto::new();
        y.name = format!("y_{}", w.name);
        g.output.push(y);
    }
    let mut x = ValueInfoProto::new();
    x.name = "x".into();
    g.input.push(x);
    g.initializer = vec![raw, typed];
    let mut m = ModelProto::new();
    m.ir_version = 14;
    let mut opset = OperatorSetIdProto::new();
    opset.version = 25;
    m.opset_import.push(opset);
    m.graph = Some(g).into();
    m.write_to_bytes().unwrap()
}

#[test]
fn float6_weights_are_encrypted_in_raw_data_and_left_clear_where_they_have_no_byte_layout() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("float6.onnx");
    std::fs::write(&plain, float6_model()).unwrap();
    let key = keygen_in(dir.path());
    let (p, k) = (plain.to_str().unwrap(), key.to_str().unwrap());

    let (code, out, err) = run(&["inspect", p, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("FLOAT6E2M3") && out.contains("FLOAT6E3M2"), "{out}");

    let enc = dir.path().join("enc.onnx");
    let e = enc.to_str().unwrap();
    let (code, out, err) = run(&["encrypt", p, "-o", e, "--key-file", k, "--coefficient", "*=1", "--json"]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let text = doc.to_string();
    assert!(text.contains("6-bit elements stored one per int32_data value"), "{text}");
    let stored = std::fs::read(&enc).unwrap();
    let original = std::fs::read(&plain).unwrap();
    let raw: Vec<u8> = (0..96u32).map(|i| (i * 37 + 11) as u8).collect();
    assert!(original.windows(96).any(|w| w == raw));
    assert!(!stored.windows(96).any(|w| w == raw), "the raw_data FLOAT6 weight is encrypted");

    let dec = dir.path().join("dec.onnx");
    let (code, _, err) = run(&["decrypt", e, "-o", dec.to_str().unwrap(), "--key-file", k]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&dec).unwrap(), original, "restored byte for byte");

    let fp = dir.path().join("fp.onnx");
    let (code, out, err) = run(&[
        "encrypt",
        p,
        "-o",
        fp.to_str().unwrap(),
        "--key-file",
        k,
        "--coefficient",
        "*=1",
        "--mode",
        "*=fp",
        "--json",
        "--allow-empty",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no format-preserving mask"), "{out}");
}
