//! The checked-in header is what cbindgen generates from the source today.
//! `ONNX_PROTECT_BLESS=1 cargo test -p onnx-protect-capi --test header` rewrites it.

use std::path::PathBuf;

#[test]
fn header_matches_the_source() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let path = dir.join("include/onnx_protect.h");
    if std::env::var_os("ONNX_PROTECT_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
        return;
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} is stale: regenerate it with `ONNX_PROTECT_BLESS=1 cargo test -p onnx-protect-capi --test header`",
        path.display()
    );
}
