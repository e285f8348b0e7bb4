//! The error kinds the addon gives the JavaScript package. (An integration test: it links
//! the library as a dependency, so `cargo test` also builds the addon, the cdylib, which
//! scripts/test.sh hands to the JavaScript tests.)

use onnx_protect_core::error::ErrorKind;
use onnx_protect_node::js_kind;

/// Every core error kind has a kind of the JavaScript package (its classes in
/// js/src/errors.ts), none falls through to "internal" but the internal ones.
#[test]
fn every_kind_is_named() {
    let classes = [
        "io",
        "invalid_model",
        "key",
        "not_protected",
        "unsupported_version",
        "wrong_key",
        "modified",
        "not_signed",
        "already_decrypted",
        "licence_missing",
        "internal",
    ];
    for k in ErrorKind::ALL {
        let js = js_kind(k);
        let internal =
            matches!(k, ErrorKind::Output | ErrorKind::Internal | ErrorKind::Policy | ErrorKind::AlreadyProtected);
        assert_eq!(js == "internal", internal, "{k:?} -> {js}");
        assert!(classes.contains(&js), "{k:?} -> {js}");
    }
    for l in onnx_protect_core::error::LicenceKind::ALL {
        assert!(js_kind(ErrorKind::Licence(l)).starts_with("licence_"));
    }
}
