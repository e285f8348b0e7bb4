//! Shared helpers for the integration tests.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every valid fixture model: `fixtures/models/<case>/model.onnx`.
pub fn fixture_models() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("fixtures/models"))
        .expect("fixtures/models exists")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("model.onnx"))
        .filter(|p| p.exists())
        .collect();
    v.sort();
    assert!(v.len() >= 10, "expected the fixture models, found {}", v.len());
    v
}

/// The built binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_onnx-protect"))
}

/// Runs the binary, returning (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin()).args(args).output().expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Copies a fixture folder into a fresh temp dir, returning (guard, copied model path).
pub fn copy_fixture(model: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = model.parent().expect("model has a folder");
    for e in std::fs::read_dir(src).expect("read fixture dir") {
        let e = e.expect("entry");
        let meta = std::fs::symlink_metadata(e.path()).expect("meta");
        if meta.is_file() {
            std::fs::copy(e.path(), dir.path().join(e.file_name())).expect("copy");
        }
    }
    let p = dir.path().join(model.file_name().expect("name"));
    (dir, p)
}
