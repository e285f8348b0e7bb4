//! `Header.original_external_files` (docs/format.md §3): each name a location §5 allows that
//! names a file, no two alike. Names are alike when they name one file: split at `/` and
//! `\`, without their empty and `.` components, they give the same components. A header
//! breaking this is "modified", also when its checksum was recomputed.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};

use base64::Engine;
use onnx_protect_core::error::{BadManifest, CoreError, ErrorKind};
use onnx_protect_core::format2::envelope::{parse_entry, trailing_entry, METADATA_KEY_V2};
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::protect::{encrypt, verify, EncryptOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::NoProgress;
use onnx_protect_proto::Message;
use onnx_protect_select::Policy;

/// fixtures/models/external_data (two external data files) encrypted into its own folder,
/// so that the header records the files' original names.
fn protected(dir: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/external_data");
    for f in ["model.onnx", "weights.bin", "extra.bin"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let out = dir.join("model.enc.onnx");
    let policy = Policy::default();
    let to = EncryptTo::key(KeySource::key(MasterKey::from_bytes([3; 32])));
    encrypt(&dir.join("model.onnx"), &out, &to, &EncryptOptions::new(&policy)).unwrap();
    out
}

/// `path` with its header's original names replaced by `names` (checksum recomputed).
fn with_original_names(path: &Path, names: [&str; 2]) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let (range, value) = trailing_entry(&bytes).unwrap();
    let sealed = parse_entry(value, range.clone()).unwrap();
    assert_eq!(sealed.header.original_external_files, ["weights.bin", "extra.bin"]);
    let mut header = sealed.header.clone();
    header.original_external_files = names.iter().map(|n| n.to_string()).collect();
    let mut env = sealed.envelope.clone();
    env.header = header.encode_to_vec();
    env.checksum.clear();
    env.checksum = onnx_protect_crypto::envelope_checksum(&env.encode_to_vec()).to_vec();
    let mut changed = bytes[..range.start as usize].to_vec();
    let value = base64::engine::general_purpose::STANDARD.encode(env.encode_to_vec());
    changed.extend_from_slice(&onnx_protect_format::write::metadata_field(METADATA_KEY_V2, &value));
    changed
}

fn header_error(bytes: &[u8]) -> Option<CoreError> {
    let (range, value) = trailing_entry(bytes).unwrap();
    parse_entry(value, range).err()
}

#[test]
fn original_names_that_name_one_file_are_modified() {
    let dir = tempfile::tempdir().unwrap();
    let enc = protected(dir.path());
    for (names, file) in [
        (["data//w.bin", "data/w.bin"], "data/w.bin"),
        (["./w.bin", "w.bin"], "w.bin"),
        (["d/./w.bin", "d\\w.bin"], "d/w.bin"),
        (["d/w.bin/", "d/w.bin"], "d/w.bin"),
        (["w.bin", "w.bin"], "w.bin"),
    ] {
        let changed = with_original_names(&enc, names);
        match header_error(&changed) {
            Some(CoreError::BadManifest(BadManifest::OriginalNameTwice { name })) => {
                assert_eq!(name, file, "{names:?}")
            }
            other => panic!("{names:?}: {other:?}"),
        }
        let path = dir.path().join("changed.onnx");
        std::fs::write(&path, &changed).unwrap();
        let e = verify(&path, None, &NoProgress).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadManifest, "{names:?}: {e}");
        assert!(e.to_string().starts_with("modified: "), "{e}");
    }
}

#[test]
fn an_original_name_made_only_of_empty_and_dot_components_is_modified() {
    let dir = tempfile::tempdir().unwrap();
    let enc = protected(dir.path());
    for name in [".", "./", ".//.", ".\\."] {
        match header_error(&with_original_names(&enc, [name, "w.bin"])) {
            Some(CoreError::BadManifest(BadManifest::OriginalName { name: got, why })) => {
                assert_eq!(got, name);
                assert!(why.contains("names no file"), "{why}");
            }
            other => panic!("{name:?}: {other:?}"),
        }
    }
}

#[test]
fn original_names_of_two_files_with_empty_and_dot_components_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let enc = protected(dir.path());
    for names in [["data//w.bin", "./data/v.bin"], ["d/w.bin", "d/w.bin/x"], ["d\\\\w.bin", "w.bin"]] {
        let changed = with_original_names(&enc, names);
        assert!(header_error(&changed).is_none(), "{names:?}");
    }
}
