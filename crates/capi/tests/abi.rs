//! The C ABI end to end, called as C would call it: every key source, every failure
//! status a caller can meet, external data, and the buffers' lifetime.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::null_mut;

use onnx_protect::*;
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::protect::{encrypt, EncryptOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_select::Policy;

const KEY: [u8; 32] = [0x5a; 32];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models").join(name)
}

fn c(p: &Path) -> CString {
    CString::new(p.to_str().unwrap()).unwrap()
}

fn last_error() -> String {
    let p = onnx_protect_last_error();
    assert!(!p.is_null(), "a failed call leaves a message");
    // SAFETY: a valid C string until the next call on this thread.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Copies the `external_data` fixture into `dir` and encrypts it there with `source`.
fn protected(dir: &Path, source: KeySource) -> (PathBuf, PathBuf) {
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    for f in std::fs::read_dir(fixture("external_data")).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, src.join(f.file_name().unwrap())).unwrap();
        }
    }
    let out = dir.join("enc");
    std::fs::create_dir(&out).unwrap();
    let policy = Policy::default();
    encrypt(&src.join("model.onnx"), &out.join("model.onnx"), &EncryptTo::key(source), &EncryptOptions::new(&policy))
        .unwrap();
    (src, out.join("model.onnx"))
}

fn key_from_bytes(bytes: &[u8]) -> *mut OnnxProtectKey {
    let mut key = null_mut();
    // SAFETY: valid bytes and output pointer.
    let s = unsafe { onnx_protect_key_from_bytes(bytes.as_ptr(), bytes.len(), &mut key) };
    assert_eq!(s, OnnxProtectStatus::Ok, "{}", last_error());
    key
}

fn open(path: &Path) -> Result<*mut OnnxProtectFile, OnnxProtectStatus> {
    let mut file = null_mut();
    // SAFETY: valid path and output pointer.
    match unsafe { onnx_protect_open(c(path).as_ptr(), &mut file) } {
        OnnxProtectStatus::Ok => Ok(file),
        s => {
            assert!(file.is_null());
            Err(s)
        }
    }
}

/// Decrypts `path` with `key`: the model bytes and each external file, copied out.
/// A decrypted model copied out of the library: its bytes and its external files by location.
type Decrypted = (Vec<u8>, Vec<(String, Vec<u8>)>);

fn decrypt(path: &Path, key: *const OnnxProtectKey) -> Result<Decrypted, OnnxProtectStatus> {
    let file = open(path)?;
    let mut model = null_mut();
    // SAFETY: handles from this library, valid output pointer.
    let s = unsafe { onnx_protect_file_decrypt(file, key, 0, &mut model) };
    // SAFETY: freed once.
    unsafe { onnx_protect_file_free(file) };
    if s != OnnxProtectStatus::Ok {
        assert!(model.is_null());
        return Err(s);
    }
    let mut len = 0usize;
    // SAFETY: a live model; the bytes are valid until it is freed.
    let bytes = unsafe {
        let p = onnx_protect_model_data(model, &mut len);
        std::slice::from_raw_parts(p, len).to_vec()
    };
    let mut external = Vec::new();
    // SAFETY: a live model, valid output pointers.
    for i in 0..unsafe { onnx_protect_model_external_count(model) } {
        let (mut loc, mut data, mut n): (*const c_char, *const u8, usize) = (std::ptr::null(), std::ptr::null(), 0);
        // SAFETY: as above.
        let s = unsafe { onnx_protect_model_external(model, i, &mut loc, &mut data, &mut n) };
        assert_eq!(s, OnnxProtectStatus::Ok);
        // SAFETY: valid until the model is freed.
        let (loc, data) = unsafe {
            (CStr::from_ptr(loc).to_str().unwrap().to_string(), std::slice::from_raw_parts(data, n).to_vec())
        };
        external.push((loc, data));
    }
    // SAFETY: a live model, freed once.
    unsafe { onnx_protect_model_free(model) };
    Ok((bytes, external))
}

fn check_restored(src: &Path, got: Decrypted) {
    assert_eq!(got.0, std::fs::read(src.join("model.onnx")).unwrap(), "the model is byte-identical");
    assert_eq!(got.1.len(), 2, "both external files");
    for (loc, data) in got.1 {
        assert_eq!(data, std::fs::read(src.join(&loc)).unwrap(), "{loc} is byte-identical");
    }
}

#[test]
fn a_key_given_as_bytes_hex_or_key_file_text_decrypts_with_external_data() {
    let dir = tempfile::tempdir().unwrap();
    let (src, enc) = protected(dir.path(), KeySource::key(MasterKey::from_bytes(KEY)));
    let hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
    let text = format!("onnx-protect-key-v1 master tiers=1 {hex}\n");
    for bytes in [&KEY[..], hex.as_bytes(), text.as_bytes()] {
        let key = key_from_bytes(bytes);
        check_restored(&src, decrypt(&enc, key).unwrap());
        // SAFETY: freed once.
        unsafe { onnx_protect_key_free(key) };
    }
    let file = open(&enc).unwrap();
    // SAFETY: a live file handle.
    unsafe {
        assert_eq!(onnx_protect_file_format_version(file), 2);
        assert_eq!(onnx_protect_file_tiers(file), 1);
        assert!(onnx_protect_file_tensors(file) > 0 && onnx_protect_file_encrypted_bytes(file) > 0);
        assert_eq!(onnx_protect_file_verify(file, std::ptr::null()), OnnxProtectStatus::Ok);
        onnx_protect_file_free(file);
    }
}

#[test]
fn a_key_file_an_environment_variable_and_a_passphrase_decrypt() {
    let dir = tempfile::tempdir().unwrap();
    let (src, enc) = protected(dir.path(), KeySource::key(MasterKey::from_bytes(KEY)));
    let key_file = dir.path().join("k.key");
    std::fs::write(&key_file, KEY).unwrap();
    let mut key = null_mut();
    // SAFETY: valid arguments.
    assert_eq!(unsafe { onnx_protect_key_from_file(c(&key_file).as_ptr(), &mut key) }, OnnxProtectStatus::Ok);
    check_restored(&src, decrypt(&enc, key).unwrap());
    // SAFETY: freed once.
    unsafe { onnx_protect_key_free(key) };

    let hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
    // SAFETY: this test binary's threads do not read this variable concurrently.
    unsafe { std::env::set_var("ONNX_PROTECT_CAPI_TEST_KEY", &hex) };
    let mut key = null_mut();
    // SAFETY: valid arguments.
    assert_eq!(
        unsafe { onnx_protect_key_from_env(c"ONNX_PROTECT_CAPI_TEST_KEY".as_ptr(), &mut key) },
        OnnxProtectStatus::Ok
    );
    check_restored(&src, decrypt(&enc, key).unwrap());
    // SAFETY: freed once; then a variable that is not set.
    unsafe {
        onnx_protect_key_free(key);
        assert_eq!(
            onnx_protect_key_from_env(c"ONNX_PROTECT_CAPI_TEST_UNSET".as_ptr(), &mut key),
            OnnxProtectStatus::Key
        );
    }
    assert!(key.is_null());
    assert!(last_error().contains("ONNX_PROTECT_CAPI_TEST_UNSET"), "{}", last_error());
    // The variable is named once, not "environment variable V: environment variable V ...".
    assert_eq!(last_error().matches("ONNX_PROTECT_CAPI_TEST_UNSET").count(), 1, "{}", last_error());

    let dir2 = tempfile::tempdir().unwrap();
    let pass = b"correct horse battery staple";
    let (src2, enc2) = protected(dir2.path(), KeySource::passphrase(zeroize::Zeroizing::new(pass.to_vec())));
    let mut key = null_mut();
    // SAFETY: valid arguments.
    assert_eq!(unsafe { onnx_protect_key_from_passphrase(pass.as_ptr(), pass.len(), &mut key) }, OnnxProtectStatus::Ok);
    check_restored(&src2, decrypt(&enc2, key).unwrap());
    // SAFETY: freed once.
    unsafe { onnx_protect_key_free(key) };
    let wrong = key_from_bytes(&KEY);
    assert_eq!(decrypt(&enc2, wrong), Err(OnnxProtectStatus::WrongKey));
    // SAFETY: freed once.
    unsafe { onnx_protect_key_free(wrong) };
}

#[test]
fn failures_have_their_status_and_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let (src, enc) = protected(dir.path(), KeySource::key(MasterKey::from_bytes(KEY)));
    let wrong = key_from_bytes(&[7; 32]);
    assert_eq!(decrypt(&enc, wrong), Err(OnnxProtectStatus::WrongKey));
    assert!(last_error().contains("wrong key"), "{}", last_error());

    assert_eq!(open(&src.join("model.onnx")), Err(OnnxProtectStatus::NotProtected));
    assert_eq!(open(&dir.path().join("missing.onnx")), Err(OnnxProtectStatus::Io));
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"\xff\xff\xff\xff not a model").unwrap();
    assert_eq!(open(&junk), Err(OnnxProtectStatus::MalformedModel));

    // One flipped byte in an external file: the MAC check refuses before any output.
    let right = key_from_bytes(&KEY);
    let weights = enc.with_file_name("weights.bin");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    assert_eq!(decrypt(&enc, right), Err(OnnxProtectStatus::Modified));
    let file = open(&enc).unwrap();
    // SAFETY: live handles, each freed once.
    unsafe {
        assert_eq!(onnx_protect_file_verify(file, std::ptr::null()), OnnxProtectStatus::Modified);
        assert_eq!(onnx_protect_file_verify(file, right), OnnxProtectStatus::Modified);
        assert_eq!(onnx_protect_file_trust_signer(file, c"not-a-signer".as_ptr()), OnnxProtectStatus::Key);
        onnx_protect_file_free(file);
        onnx_protect_key_free(right);
        onnx_protect_key_free(wrong);
    }

    let mut key = null_mut();
    // SAFETY: valid arguments.
    assert_eq!(unsafe { onnx_protect_key_from_bytes(b"short".as_ptr(), 5, &mut key) }, OnnxProtectStatus::Key);
    assert!(key.is_null());
    let empty = dir.path().join("ids.txt");
    std::fs::write(&empty, "# no identity\n").unwrap();
    // SAFETY: valid arguments.
    assert_eq!(unsafe { onnx_protect_key_from_identity_file(c(&empty).as_ptr(), &mut key) }, OnnxProtectStatus::Key);
}

#[test]
fn a_trusted_signer_is_required_once_given() {
    let dir = tempfile::tempdir().unwrap();
    let (_, enc) = protected(dir.path(), KeySource::key(MasterKey::from_bytes(KEY)));
    let signer = onnx_protect_keys::SigningKey::generate().unwrap().public().to_text();
    let file = open(&enc).unwrap();
    let key = key_from_bytes(&KEY);
    let mut model = null_mut();
    // SAFETY: live handles, each freed once.
    unsafe {
        assert_eq!(onnx_protect_file_trust_signer(file, CString::new(signer).unwrap().as_ptr()), OnnxProtectStatus::Ok);
        assert_eq!(onnx_protect_file_decrypt(file, key, 0, &mut model), OnnxProtectStatus::NotSigned);
        assert!(model.is_null());
        onnx_protect_file_free(file);
        onnx_protect_key_free(key);
    }
}

/// The graph and files of `onnx_protect_file_decrypt_for_session_with` (`flags` 0:
/// `onnx_protect_file_decrypt_for_session`), copied out, and what `onnx_protect_model_settle`
/// then says.
fn decrypt_for_session(
    path: &Path,
    key: *const OnnxProtectKey,
    flags: u32,
) -> Result<(Decrypted, OnnxProtectStatus), OnnxProtectStatus> {
    let file = open(path)?;
    let mut model = null_mut();
    // SAFETY: handles from this library, valid output pointer.
    let s = unsafe {
        match flags {
            0 => onnx_protect_file_decrypt_for_session(file, key, 0, &mut model),
            _ => onnx_protect_file_decrypt_for_session_with(file, key, 0, flags, &mut model),
        }
    };
    // SAFETY: freed once.
    unsafe { onnx_protect_file_free(file) };
    if s != OnnxProtectStatus::Ok {
        assert!(model.is_null());
        return Err(s);
    }
    let mut len = 0usize;
    // SAFETY: a live model; the bytes are valid until it is freed.
    let graph = unsafe { std::slice::from_raw_parts(onnx_protect_model_data(model, &mut len), len).to_vec() };
    let mut files = Vec::new();
    // SAFETY: a live model, valid output pointers.
    for i in 0..unsafe { onnx_protect_model_external_count(model) } {
        let (mut loc, mut data, mut n): (*const c_char, *const u8, usize) = (std::ptr::null(), std::ptr::null(), 0);
        // SAFETY: as above.
        assert_eq!(
            unsafe { onnx_protect_model_external(model, i, &mut loc, &mut data, &mut n) },
            OnnxProtectStatus::Ok
        );
        // SAFETY: valid until the model is freed.
        let (loc, data) = unsafe {
            (CStr::from_ptr(loc).to_str().unwrap().to_string(), std::slice::from_raw_parts(data, n).to_vec())
        };
        files.push((loc, data));
    }
    // SAFETY: a live model, then freed once.
    let settled = unsafe { onnx_protect_model_settle(model) };
    unsafe { onnx_protect_model_free(model) };
    Ok(((graph, files), settled))
}

#[test]
fn a_session_gets_a_graph_without_large_tensors_and_files_that_hold_their_bytes() {
    use onnx_protect_format::{Model, TensorData};
    let dir = tempfile::tempdir().unwrap();
    let (src, enc) = protected(dir.path(), KeySource::key(MasterKey::from_bytes(KEY)));
    let key = key_from_bytes(&KEY);
    let flags =
        [0, ONNX_PROTECT_VERIFY_ON_READ, ONNX_PROTECT_READS_FEW, ONNX_PROTECT_VERIFY_ON_READ | ONNX_PROTECT_READS_FEW];
    let ((graph, files), settled) = decrypt_for_session(&enc, key, 0).unwrap();
    assert_eq!(settled, OnnxProtectStatus::Ok);
    // The same bytes with every flag (the files' names are new for each call).
    let data = |files: &[(String, Vec<u8>)]| files.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>();
    for f in flags {
        let ((_, again), settled) = decrypt_for_session(&enc, key, f).unwrap();
        assert_eq!((data(&again), settled), (data(&files), OnnxProtectStatus::Ok), "flags {f}");
    }
    assert_eq!(
        decrypt_for_session(&enc, key, 4).map(|r| r.1),
        Err(OnnxProtectStatus::InvalidArgument),
        "an unknown flag"
    );
    assert!(files.iter().all(|(n, _)| n.starts_with("onnx-protect-c.")), "names of the session's own");
    let sizes: std::collections::BTreeMap<String, u64> =
        files.iter().map(|(n, d)| (n.clone(), d.len() as u64)).collect();
    let g = Model::from_vec_in_memory(graph, &|l| sizes.get(l).copied()).unwrap();
    let plain = Model::open(src.join("model.onnx")).unwrap();
    let mut external = 0;
    for t in &g.tensors {
        let want = plain.tensor_bytes(plain.tensors.iter().position(|p| p.name == t.name).unwrap()).unwrap();
        match &t.data {
            TensorData::External { file, range } => {
                external += 1;
                assert!(t.nbytes >= 1024, "{}: only large tensors leave the graph", t.name);
                let data = &files.iter().find(|(n, _)| n == &g.external_files[*file].location).unwrap().1;
                assert_eq!(&data[range.start as usize..range.end as usize], &want[..], "{}", t.name);
            }
            _ => {
                assert!(t.nbytes < 1024, "{} stays in the graph", t.name);
                assert_eq!(&g.tensor_bytes(t.id).unwrap()[..], &want[..], "{}", t.name);
            }
        }
    }
    assert!(external > 0);
    // A changed byte of an external file: the call or the settling says modified.
    let side = std::fs::read_dir(enc.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e != "onnx"))
        .unwrap();
    let mut bytes = std::fs::read(&side).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&side, bytes).unwrap();
    // Verified on read too: every byte is copied out before settling, so the changed chunk
    // is read (as zeros) first.
    for f in flags {
        let got = decrypt_for_session(&enc, key, f);
        assert!(
            matches!(got, Err(OnnxProtectStatus::Modified) | Ok((_, OnnxProtectStatus::Modified))),
            "flags {f}: {:?}",
            got.map(|r| r.1)
        );
    }
    // SAFETY: freed once.
    unsafe { onnx_protect_key_free(key) };
}
