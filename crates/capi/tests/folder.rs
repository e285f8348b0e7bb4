//! Protected model folders through the C ABI: the folder check with and without a key,
//! the checked copy of the folder's other files, the models' names and paths, and every
//! refusal a loader must meet before it opens a model (docs/genai.md, "C and C++").

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};

use onnx_protect::*;
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::protect::EncryptOptions;
use onnx_protect_crypto::MasterKey;
use onnx_protect_select::Policy;

fn c(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

fn last_error() -> String {
    // SAFETY: a valid C string until the next call on this thread.
    unsafe { CStr::from_ptr(onnx_protect_last_error()) }.to_string_lossy().into_owned()
}

fn key(b: u8) -> *mut OnnxProtectKey {
    let bytes = [b; 32];
    let mut k = null_mut();
    // SAFETY: valid bytes and output pointer.
    assert_eq!(unsafe { onnx_protect_key_from_bytes(bytes.as_ptr(), 32, &mut k) }, OnnxProtectStatus::Ok);
    k
}

/// A folder with the `external_data` fixture as `model.onnx` (with its data files), a
/// tokenizer and a config in a subfolder, protected with key bytes `[7; 32]` into `dir/enc`.
fn folder(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/external_data");
    for name in ["model.onnx", "weights.bin", "extra.bin"] {
        std::fs::copy(fixture.join(name), src.join(name)).unwrap();
    }
    std::fs::write(src.join("tokenizer.json"), b"{\"model\": {\"vocab\": {\"a\": 0}}}").unwrap();
    std::fs::write(src.join("sub/config.json"), b"{\"decoder\": \"model.onnx\"}").unwrap();
    let enc = dir.join("enc");
    let to = EncryptTo::key(KeySource::key(MasterKey::from_bytes([7; 32])));
    onnx_protect_folder::encrypt(&src, &enc, &to, &EncryptOptions::new(&Policy::default())).unwrap();
    enc
}

fn open(
    dir: &Path,
    k: *const OnnxProtectKey,
    copy_to: Option<&Path>,
) -> Result<*mut OnnxProtectFolder, OnnxProtectStatus> {
    let mut out = null_mut();
    let to = copy_to.map(c);
    // SAFETY: valid strings, key and output pointer.
    let s =
        unsafe { onnx_protect_folder_open(c(dir).as_ptr(), k, to.as_ref().map_or(null(), |t| t.as_ptr()), &mut out) };
    if s == OnnxProtectStatus::Ok {
        Ok(out)
    } else {
        assert!(out.is_null(), "the output is NULL after a failure");
        Err(s)
    }
}

fn text(p: *const c_char) -> String {
    // SAFETY: strings the folder handed out, still alive.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()
}

#[test]
fn an_intact_folder_names_its_models_and_copies_its_other_files_checked() {
    let dir = tempfile::tempdir().unwrap();
    let enc = folder(dir.path());
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    let k = key(7);
    let f = open(&enc, k, Some(&private)).unwrap();
    // SAFETY: a live folder; valid output pointers.
    unsafe {
        assert_eq!(onnx_protect_folder_model_count(f), 1);
        let (mut name, mut path) = (null(), null());
        assert_eq!(onnx_protect_folder_model(f, 0, &mut name, &mut path), OnnxProtectStatus::Ok);
        assert_eq!(text(name), "model.onnx");
        assert_eq!(PathBuf::from(text(path)), enc.canonicalize().unwrap().join("model.onnx"));
        assert_eq!(onnx_protect_folder_model(f, 1, &mut name, &mut path), OnnxProtectStatus::InvalidArgument);
        assert!(name.is_null() && path.is_null());
        assert!(last_error().contains("model 1 does not exist"), "{}", last_error());
        onnx_protect_folder_free(f);
    }
    for rel in ["tokenizer.json", "sub/config.json"] {
        assert_eq!(std::fs::read(private.join(rel)).unwrap(), std::fs::read(enc.join(rel)).unwrap(), "{rel}");
    }
    let mut copied: Vec<_> = walk(&private);
    copied.sort();
    assert_eq!(copied, ["sub/config.json", "tokenizer.json"], "only the files that are not models or their data");
    // Without a key and without a copy: the check alone.
    let f = open(&enc, null(), None).unwrap();
    // SAFETY: a live folder, then freed once; NULL is accepted.
    unsafe {
        assert_eq!(onnx_protect_folder_model_count(f), 1);
        onnx_protect_folder_free(f);
        onnx_protect_folder_free(null_mut());
        assert_eq!(onnx_protect_folder_model_count(null()), 0);
    }
    // SAFETY: a key of this library.
    unsafe { onnx_protect_key_free(k) };
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_str().unwrap().to_string());
            }
        }
    }
    out
}

#[test]
fn a_changed_missing_extra_or_swapped_file_and_a_wrong_key_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let enc = folder(dir.path());
    let k = key(7);
    let wrong = key(8);
    assert_eq!(open(&enc, wrong, None).unwrap_err(), OnnxProtectStatus::WrongKey, "{}", last_error());
    assert!(last_error().contains("model.onnx"), "{}", last_error());
    type Change<'a> = (&'a str, &'a dyn Fn(&Path));
    let cases: [Change<'_>; 5] = [
        ("a changed byte of the tokenizer", &|d| {
            let mut b = std::fs::read(d.join("tokenizer.json")).unwrap();
            b[3] ^= 1;
            std::fs::write(d.join("tokenizer.json"), b).unwrap();
        }),
        ("a missing config", &|d| std::fs::remove_file(d.join("sub/config.json")).unwrap()),
        ("an extra file", &|d| std::fs::write(d.join("notes.txt"), b"x").unwrap()),
        ("a renamed model", &|d| std::fs::rename(d.join("model.onnx"), d.join("other.onnx")).unwrap()),
        ("a truncated data file", &|d| {
            let b = std::fs::read(d.join("weights.bin")).unwrap();
            std::fs::write(d.join("weights.bin"), &b[..b.len() - 1]).unwrap();
        }),
    ];
    for (what, change) in cases {
        let copy = dir.path().join("case");
        let _ = std::fs::remove_dir_all(&copy);
        std::fs::create_dir(&copy).unwrap();
        for rel in walk(&enc) {
            std::fs::create_dir_all(copy.join(&rel).parent().unwrap()).unwrap();
            std::fs::copy(enc.join(&rel), copy.join(&rel)).unwrap();
        }
        change(&copy);
        let private = dir.path().join("private");
        let _ = std::fs::remove_dir_all(&private);
        std::fs::create_dir(&private).unwrap();
        let s = open(&copy, k, Some(&private)).unwrap_err();
        let msg = last_error();
        assert!([OnnxProtectStatus::Modified, OnnxProtectStatus::MalformedModel].contains(&s), "{what}: {s:?} {msg}");
        assert!(!msg.is_empty() && !msg.contains('\n'), "{what}: one line: {msg}");
        assert!(walk(&private).is_empty(), "{what}: nothing copied before the folder was checked");
    }
    // SAFETY: keys of this library.
    unsafe {
        onnx_protect_key_free(k);
        onnx_protect_key_free(wrong);
    }
    let mut out = null_mut();
    // SAFETY: a NULL folder path is refused.
    assert_eq!(
        unsafe { onnx_protect_folder_open(null(), null(), null(), &mut out) },
        OnnxProtectStatus::InvalidArgument
    );
}
