//! The model id an encryptor records (docs/format.md Appendix C): `encrypt` refuses one that
//! no licence line could name (over 1021 bytes, so that `id:` and it fit a value of 1024; a
//! control character, U+2028 or U+2029; a leading or trailing space), with no output, and
//! records any other.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};

use onnx_protect_core::error::{CoreError, UnusableKey};
use onnx_protect_core::format2::envelope::{parse_entry, trailing_entry};
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::licence::LicenceRequirement;
use onnx_protect_core::protect::{encrypt, EncryptOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_keys::SigningKey;
use onnx_protect_select::Policy;

fn plain() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/digits/mlp.onnx")
}

fn encrypt_with_id(id: &str, out: &Path) -> Result<(), CoreError> {
    let policy = Policy::default();
    let licence = LicenceRequirement { authority: SigningKey::generate().unwrap().public(), model_id: Some(id.into()) };
    let opts = EncryptOptions { licence: Some(licence), ..EncryptOptions::new(&policy) };
    let to = EncryptTo::key(KeySource::key(MasterKey::from_bytes([7; 32])));
    encrypt(&plain(), out, &to, &opts).map(|_| ())
}

/// The header field the output records.
fn recorded_id(out: &Path) -> String {
    let bytes = std::fs::read(out).unwrap();
    let (range, value) = trailing_entry(&bytes).unwrap();
    parse_entry(value, range).unwrap().header.model_id
}

#[test]
fn a_model_id_of_1021_bytes_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    for id in ["x".repeat(1021), "é".repeat(510) + "x", "det v3".into(), "\u{a0}nbsp\u{a0}".into()] {
        let out = dir.path().join("m.onnx");
        encrypt_with_id(&id, &out).unwrap_or_else(|e| panic!("{id:?}: {e}"));
        assert_eq!(recorded_id(&out), id);
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn a_model_id_no_licence_could_name_is_refused_with_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let refused = [
        "x".repeat(1022),
        "x".repeat(1024),
        "é".repeat(511),
        String::new(),
        " det-v3".into(),
        "det-v3 ".into(),
        "det\tv3".into(),
        "det\u{7f}v3".into(),
        "det\u{85}v3".into(),
        "det\nv3".into(),
        "det\u{2028}v3".into(),
        "det\u{2029}v3".into(),
    ];
    for id in refused {
        let out = dir.path().join("m.onnx");
        match encrypt_with_id(&id, &out) {
            Err(CoreError::Key(UnusableKey::ModelId { id: got, max })) => {
                assert_eq!((got.as_str(), max), (id.as_str(), 1021));
            }
            other => panic!("{id:?}: {other:?}"),
        }
        assert!(!out.exists(), "{id:?}: an output was written");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{id:?}: something was left");
    }
}
