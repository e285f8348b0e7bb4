//! `rewrap --in-place` killed (`SIGKILL`) at every step of its rewrite: the next run, or
//! the next reader, recovers without help (a complete journal rolled forward, nothing
//! half-done left), the next run says so, and the model opens with either the old
//! recipients or the new ones, never a mixture.
//!
//! Each case runs the rewrap in a child process (this test binary, running the ignored
//! test `child_rewraps_in_place`) that a crash point of the `test-hooks` feature kills.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};
use std::process::Command;

use onnx_protect_core::error::ErrorKind;
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::pass::journal::Recovery;
use onnx_protect_core::protect::{decrypt, decrypt_to_vec, encrypt, verify, DecryptOptions, EncryptOptions};
use onnx_protect_core::rewrap::{rewrap, Remove, RewrapOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{Model, NoProgress};
use onnx_protect_select::Policy;

fn plain() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/cnn_torch/model.onnx")
}

fn key(b: u8) -> KeySource {
    KeySource::key(MasterKey::from_bytes([b; 32]))
}

/// Replaces key `from` by key `to` in the model at `path`, in place.
fn swap(path: &Path, from: u8, to: u8) -> onnx_protect_core::error::Result<Recovery> {
    let add = EncryptTo::key(key(to));
    let remove = [Remove::Key(MasterKey::from_bytes([from; 32]))];
    let opts = RewrapOptions {
        add: &add,
        remove: &remove,
        signing_keys: &[],
        drop_signatures: false,
        in_place: true,
        outputs: Default::default(),
        progress: &NoProgress,
    };
    rewrap(path, path, &key(from), &opts).map(|r| r.recovered)
}

fn opens(path: &Path, k: u8) -> bool {
    match decrypt_to_vec(&Model::open(path).unwrap(), &key(k)) {
        Ok(b) => b == std::fs::read(plain()).unwrap(),
        Err(e) if e.kind() == ErrorKind::WrongKey => false,
        Err(e) => panic!("key {k}: {e}"),
    }
}

/// Run by the parent in a child process: swaps key 1 for key 2 in the model named by
/// `CRASH_TEST_MODEL` and is killed at the crash point `ONNX_PROTECT_CRASH_AT`.
#[test]
#[ignore = "run by a_killed_in_place_rewrap_is_recovered_by_the_next_run in a child process"]
fn child_rewraps_in_place() {
    let Ok(model) = std::env::var("CRASH_TEST_MODEL") else { return };
    swap(Path::new(&model), 1, 2).unwrap();
}

/// How the model is first accessed after the kill.
#[derive(Debug, Clone, Copy)]
enum Next {
    /// The same in-place rewrap, run again.
    Rewrap,
    /// A reader: decrypt to a file, then verify with the key.
    Decrypt,
}

#[test]
fn a_killed_in_place_rewrap_is_recovered_by_the_next_run() {
    // Each crash point, and whether the rewrite had reached the point of no return (its
    // journal complete, so the next run finishes it).
    let points = [
        ("rewrap:journal-half", false),
        ("rewrap:journal", true),
        ("rewrap:tail-half", true),
        ("rewrap:tail", true),
        ("rewrap:synced", true),
    ];
    for (point, forward) in points {
        for next in [Next::Rewrap, Next::Decrypt] {
            let case = format!("{point}, then {next:?}");
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("model.onnx");
            encrypt(&plain(), &path, &EncryptTo::key(key(1)), &EncryptOptions::new(&Policy::default())).unwrap();
            let status = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "child_rewraps_in_place", "--ignored", "--test-threads=1"])
                .env("CRASH_TEST_MODEL", &path)
                .env("ONNX_PROTECT_CRASH_AT", point)
                .output()
                .unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(status.status.signal(), Some(9), "{case}: the child was not killed: {status:?}");
            }
            let current = if forward { 2 } else { 1 };
            match next {
                // The next run completes or undoes the interrupted one first, says so, then
                // does its own work.
                Next::Rewrap => {
                    let recovered =
                        swap(&path, current, 3).unwrap_or_else(|e| panic!("{case}: the next run failed: {e}"));
                    let want = if forward { Recovery::RolledForward } else { Recovery::Nothing };
                    assert_eq!(recovered, want, "{case}");
                }
                // A reader finishes the interrupted rewrite before it reads: the model opens
                // with the key the rewrite left, wherever the kill fell.
                Next::Decrypt => {
                    let out = dir.path().join("out.onnx");
                    decrypt(&path, &out, &key(current), &DecryptOptions::default())
                        .unwrap_or_else(|e| panic!("{case}: decrypt after the kill: {e}"));
                    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(plain()).unwrap(), "{case}");
                    std::fs::remove_file(&out).unwrap();
                    assert!(!dir.path().join(".model.onnx.onnx-protect-tail").exists(), "{case}: the journal is left");
                    verify(&path, Some(&key(current)), &NoProgress).unwrap_or_else(|e| panic!("{case}: {e}"));
                    swap(&path, current, 3).unwrap_or_else(|e| panic!("{case}: the next run failed: {e}"));
                }
            }
            let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(left, ["model.onnx"], "{case}: files left next to the model");
            verify(&path, Some(&key(3)), &NoProgress).unwrap();
            assert!(opens(&path, 3), "{case}");
            assert!(!opens(&path, 1) && !opens(&path, 2), "{case}: a replaced key still opens the model");
        }
    }
}
