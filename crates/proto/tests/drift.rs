//! The checked-in generated code equals what prost-build makes from the .proto files today.

use std::path::PathBuf;

fn check(proto: &str, generated: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let proto_dir = root.join("proto");
    let fds = protox::compile([proto_dir.join(proto)], [&proto_dir]).expect("proto compiles");
    let out = tempfile::tempdir().expect("tempdir");
    // The folder binding is boxed: rarely present, it would otherwise make every header
    // (and every reader's value holding one) larger.
    prost_build::Config::new()
        .boxed(".onnx_protect.v2.Header.folder")
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("prost-build");
    let fresh = std::fs::read_to_string(out.path().join(generated)).expect("generated");
    let checked_in = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/generated").join(generated);
    if std::env::var_os("UPDATE_GENERATED").is_some() {
        std::fs::create_dir_all(checked_in.parent().expect("a parent")).expect("create the directory");
        std::fs::write(&checked_in, &fresh).expect("write the generated code");
    }
    let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == fresh,
        "{} is stale: run UPDATE_GENERATED=1 cargo test -p onnx-protect-proto",
        checked_in.display()
    );
}

#[test]
fn generated_code_is_current() {
    check("onnx_protect.proto", "onnx_protect.v1.rs");
}

#[test]
fn generated_v2_code_is_current() {
    check("onnx_protect_v2.proto", "onnx_protect.v2.rs");
}
