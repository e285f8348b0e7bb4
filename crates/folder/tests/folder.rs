#![allow(clippy::unwrap_used)] // tests may unwrap
//! Folders encrypted, opened, verified, decrypted and rewrapped through the library, and
//! the refusals of docs/format.md §16.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::protect::{DecryptOptions, EncryptOptions};
use onnx_protect_core::rewrap::RewrapOptions;
use onnx_protect_crypto::MasterKey;
use onnx_protect_folder::{decrypt, encrypt, rewrap, verify, ErrorKind, Folder, FolderError};
use onnx_protect_format::testutil::{external_float_tensor, matmul_chain, tiny_model};
use onnx_protect_format::NoProgress;
use onnx_protect_select::Policy;

fn key(b: u8) -> KeySource {
    KeySource::key(MasterKey::from_bytes([b; 32]))
}

/// A model folder: a decoder with external data, a model in a subdirectory, a config and
/// tokenizer files.
fn plain_folder(dir: &Path) -> PathBuf {
    let root = dir.join("plain");
    std::fs::create_dir_all(root.join("vision")).unwrap();
    let w = |i: u64| external_float_tensor(&format!("W{i}"), &[4, 4], "decoder.onnx.data", 64 * i, 64);
    std::fs::write(root.join("decoder.onnx"), matmul_chain(&[w(0), w(1)])).unwrap();
    let data: Vec<u8> = (0..32).flat_map(|i| (i as f32 * 0.25 - 3.0).to_le_bytes()).collect();
    std::fs::write(root.join("decoder.onnx.data"), data).unwrap();
    std::fs::write(root.join("vision/model.onnx"), tiny_model()).unwrap();
    std::fs::write(root.join("genai_config.json"), br#"{"model": {"type": "test"}}"#).unwrap();
    std::fs::write(root.join("tokenizer.json"), b"{\"vocab\": [1, 2, 3]}").unwrap();
    std::fs::write(root.join("vision/notes.txt"), b"").unwrap();
    root
}

fn protect(dir: &Path, key: &KeySource) -> (PathBuf, PathBuf) {
    let plain = plain_folder(dir);
    let out = dir.join("protected");
    let policy = Policy::default();
    encrypt(&plain, &out, &EncryptTo::key(key.clone()), &EncryptOptions::new(&policy)).unwrap();
    (plain, out)
}

/// Every file under `root`, by relative path.
fn contents(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn visit(dir: &Path, root: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                visit(&p, root, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    visit(root, root, &mut out);
    out
}

#[test]
fn a_folder_round_trips_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    let k = key(3);
    let (plain, out) = protect(d.path(), &k);
    let folder = Folder::open(&out).unwrap();
    let models: Vec<(&str, &[String])> = folder.models().iter().map(|m| (&*m.path, &m.data_files[..])).collect();
    assert_eq!(models, [("decoder.onnx", &["decoder.onnx.data".to_string()][..]), ("vision/model.onnx", &[][..])]);
    let files: Vec<&str> = folder.files().iter().map(|f| f.path.as_str()).collect();
    assert_eq!(files, ["genai_config.json", "tokenizer.json", "vision/notes.txt"]);
    assert_eq!(folder.check_key(&k).unwrap(), 1);
    assert!(matches!(folder.check_key(&key(4)), Err(FolderError::Model { .. })));
    let v = verify(&out, None, &[], &NoProgress).unwrap();
    assert_eq!(v.models.len(), 2);
    verify(&out, Some(&k), &[], &NoProgress).unwrap();
    // The models are encrypted, the copied files are not.
    let stored = contents(&out);
    assert_ne!(stored["decoder.onnx.data"], std::fs::read(plain.join("decoder.onnx.data")).unwrap());
    assert_eq!(stored["tokenizer.json"], std::fs::read(plain.join("tokenizer.json")).unwrap());
    let back = d.path().join("back");
    decrypt(&out, &back, &k, None, &DecryptOptions::default()).unwrap();
    assert_eq!(contents(&back), contents(&plain));
    // Nothing is left beside the outputs.
    let names: Vec<String> =
        std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

/// The error of opening the protected folder after `change`, and that decryption
/// refuses it too, writing nothing.
fn refused(change: impl FnOnce(&Path, &Path)) -> FolderError {
    let d = tempfile::tempdir().unwrap();
    let k = key(3);
    let (plain, out) = protect(d.path(), &k);
    change(&out, &plain);
    let back = d.path().join("back");
    let e = decrypt(&out, &back, &k, None, &DecryptOptions::default()).unwrap_err();
    assert!(!back.exists());
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2, "something was left");
    assert_eq!(Folder::open(&out).unwrap_err().to_string(), e.to_string());
    e
}

#[test]
fn a_missing_changed_or_extra_file_is_refused_by_name() {
    let e = refused(|out, _| std::fs::remove_file(out.join("tokenizer.json")).unwrap());
    assert!(matches!(&e, FolderError::Missing { path } if path == "tokenizer.json"), "{e}");
    let e = refused(|out, _| std::fs::remove_file(out.join("vision/model.onnx")).unwrap());
    assert!(matches!(&e, FolderError::Missing { path } if path == "vision/model.onnx"), "{e}");
    let e =
        refused(|out, _| std::fs::write(out.join("genai_config.json"), b"{\"model\": {\"type\": \"tesu\"}}").unwrap());
    assert!(matches!(&e, FolderError::FileChanged { path, .. } if path == "genai_config.json"), "{e}");
    let e = refused(|out, _| std::fs::write(out.join("vision/notes.txt"), b"x").unwrap());
    assert!(matches!(&e, FolderError::FileChanged { path, .. } if path == "vision/notes.txt"), "{e}");
    let e = refused(|out, _| std::fs::write(out.join("chat_template.jinja"), b"{{ x }}").unwrap());
    assert!(matches!(&e, FolderError::Extra { path } if path == "chat_template.jinja"), "{e}");
    assert_eq!(e.kind(), ErrorKind::Modified);
    let e = refused(|out, plain| std::fs::copy(plain.join("decoder.onnx"), out.join("extra.onnx")).map(drop).unwrap());
    assert!(matches!(&e, FolderError::Extra { path } if path == "extra.onnx"), "{e}");
    // Sorted before every listed model, it is the first opened: not protected.
    let e = refused(|out, plain| std::fs::copy(plain.join("decoder.onnx"), out.join("a.onnx")).map(drop).unwrap());
    assert!(matches!(&e, FolderError::Model { path, .. } if path == "a.onnx"), "{e}");
}

#[test]
fn a_swapped_model_or_one_of_another_folder_is_refused() {
    let e = refused(|out, _| {
        let (a, b) = (out.join("decoder.onnx"), out.join("vision/model.onnx"));
        let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        std::fs::write(&a, y).unwrap();
        std::fs::write(&b, x).unwrap();
        // The decoder's data file goes with it.
        std::fs::rename(out.join("decoder.onnx.data"), out.join("vision/decoder.onnx.data")).unwrap();
    });
    assert_eq!(e.to_string(), "modified: decoder.onnx: its folder binding says it is vision/model.onnx");
    // The same folder encrypted again under the same key: its decoder is not this one's.
    let e = refused(|out, plain| {
        let other = out.with_file_name("other");
        let policy = Policy::default();
        encrypt(plain, &other, &EncryptTo::key(key(3)), &EncryptOptions::new(&policy)).unwrap();
        std::fs::copy(other.join("vision/model.onnx"), out.join("vision/model.onnx")).unwrap();
        std::fs::remove_dir_all(other).unwrap();
    });
    assert!(matches!(&e, FolderError::OtherFolder { path, .. } if path == "vision/model.onnx"), "{e}");
    // A model protected alone.
    let e = refused(|out, plain| {
        let policy = Policy::default();
        let alone = out.join("vision/model.onnx");
        std::fs::remove_file(&alone).unwrap();
        let to = EncryptTo::key(key(3));
        onnx_protect_core::protect::encrypt(
            &plain.join("vision/model.onnx"),
            &alone,
            &to,
            &EncryptOptions::new(&policy),
        )
        .unwrap();
    });
    assert!(matches!(&e, FolderError::NotBound { path } if path == "vision/model.onnx"), "{e}");
}

#[test]
fn a_wrong_key_is_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let (_, out) = protect(d.path(), &key(3));
    let back = d.path().join("back");
    let e = decrypt(&out, &back, &key(9), None, &DecryptOptions::default()).unwrap_err();
    assert!(
        matches!(&e, FolderError::Model { path, source } if path == "decoder.onnx" && source.kind().as_str() == "wrong_key"),
        "{e}"
    );
    assert!(!back.exists());
    assert!(verify(&out, Some(&key(9)), &[], &NoProgress).is_err());
}

#[cfg(unix)]
#[test]
fn links_and_shared_data_files_are_refused_at_encryption() {
    let d = tempfile::tempdir().unwrap();
    let plain = plain_folder(d.path());
    let out = d.path().join("protected");
    let policy = Policy::default();
    let to = EncryptTo::key(key(1));
    std::os::unix::fs::symlink("tokenizer.json", plain.join("vocab.json")).unwrap();
    let e = encrypt(&plain, &out, &to, &EncryptOptions::new(&policy)).unwrap_err();
    assert!(matches!(&e, FolderError::Link { path } if path == "vocab.json"), "{e}");
    std::fs::remove_file(plain.join("vocab.json")).unwrap();
    // A second model reading the decoder's data file.
    let w = external_float_tensor("W0", &[4, 4], "decoder.onnx.data", 0, 64);
    std::fs::write(plain.join("twin.onnx"), matmul_chain(&[w])).unwrap();
    let e = encrypt(&plain, &out, &to, &EncryptOptions::new(&policy)).unwrap_err();
    assert!(matches!(&e, FolderError::DataFile { path, .. } if path == "decoder.onnx.data"), "{e}");
    assert!(e.to_string().contains("decoder.onnx and twin.onnx"), "{e}");
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "something was written");
}

#[test]
fn an_output_that_is_not_empty_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let plain = plain_folder(d.path());
    let out = d.path().join("protected");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("x"), b"x").unwrap();
    let policy = Policy::default();
    let e = encrypt(&plain, &out, &EncryptTo::key(key(1)), &EncryptOptions::new(&policy)).unwrap_err();
    assert!(matches!(e, FolderError::Output { .. }), "{e}");
    assert_eq!(contents(&out).len(), 1);
    // An empty one is taken.
    std::fs::remove_file(out.join("x")).unwrap();
    encrypt(&plain, &out, &EncryptTo::key(key(1)), &EncryptOptions::new(&policy)).unwrap();
    Folder::open(&out).unwrap();
}

#[test]
fn rewrap_changes_every_model_the_same_way() {
    let d = tempfile::tempdir().unwrap();
    let (plain, out) = protect(d.path(), &key(3));
    let add = EncryptTo::key(key(5));
    let remove = [onnx_protect_core::rewrap::Remove::Key(MasterKey::from_bytes([3; 32]))];
    let opts = RewrapOptions {
        add: &add,
        remove: &remove,
        signing_keys: &[],
        drop_signatures: false,
        in_place: true,
        outputs: Default::default(),
        progress: &NoProgress,
    };
    let r = rewrap(&out, &key(3), &opts).unwrap();
    assert_eq!(r.models.len(), 2);
    let folder = Folder::open(&out).unwrap();
    assert!(folder.check_key(&key(3)).is_err());
    folder.check_key(&key(5)).unwrap();
    let back = d.path().join("back");
    decrypt(&out, &back, &key(5), None, &DecryptOptions::default()).unwrap();
    assert_eq!(contents(&back), contents(&plain));
    // A key that no longer opens it changes nothing.
    let before = contents(&out);
    assert!(rewrap(&out, &key(3), &opts).is_err());
    assert_eq!(contents(&out), before);
}
