//! Resume records: `OUT/.onnx-protect-batch/done/<rel>.json`, written after a
//! file's outputs are in place, and the BLAKE3 digests they compare.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use onnx_protect_format::Model;
use serde::{Deserialize, Serialize};

use crate::error::{file_io, FileError};
use crate::STATE_DIR;

/// The version of the resume records written; records of other versions are not trusted (the file is redone).
pub const RECORD_VERSION: u32 = 2;

/// A finished file's record.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
pub(crate) struct Record {
    pub version: u32,
    pub op: String,
    pub settings: String,
    pub input_blake3: String,
    pub input_bytes: u64,
    pub outputs: Vec<OutputRecord>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
pub(crate) struct OutputRecord {
    /// Relative to the output root, `/` separators.
    pub path: String,
    pub bytes: u64,
    pub blake3: String,
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Size and BLAKE3 digest (hex) of a file, read in 1 MiB pieces.
pub(crate) fn blake3_file(path: &Path) -> Result<(u64, String), FileError> {
    let mut f = std::fs::File::open(path).map_err(file_io("open", path))?;
    let mut c = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(file_io("read", path))?;
        if k == 0 {
            break;
        }
        c.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex(c.finalize().as_bytes())))
}

/// Size and BLAKE3 digest over the model file and its external data files (in model
/// order), each preceded by its length (external files also by their location).
/// External files are hashed in pieces whose pages are released afterwards, so the
/// resident set stays small.
pub(crate) fn input_digest(model: &Model) -> Result<(u64, String), FileError> {
    let mut c = blake3::Hasher::new();
    let bytes = model.bytes();
    let mut total = bytes.len() as u64;
    c.update(&(bytes.len() as u64).to_be_bytes());
    c.update(bytes);
    for f in &model.external_files {
        let b = f.bytes().map_err(onnx_protect_core::error::CoreError::from)?;
        total += b.len() as u64;
        c.update(&(f.location.len() as u64).to_be_bytes());
        c.update(f.location.as_bytes());
        c.update(&(b.len() as u64).to_be_bytes());
        let mut at = 0u64;
        for piece in b.chunks(64 << 20) {
            c.update(piece);
            let end = at + piece.len() as u64;
            f.release(at..end);
            at = end;
        }
    }
    Ok((total, hex(c.finalize().as_bytes())))
}

/// The regular files under the directory `dir` (recursively), by `/`-separated path
/// relative to it, sorted by bytes; links and special files are left out.
pub(crate) fn files_under(dir: &Path) -> Result<Vec<(String, PathBuf)>, FileError> {
    fn visit(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> Result<(), FileError> {
        for e in std::fs::read_dir(dir).map_err(file_io("read directory", dir))? {
            let e = e.map_err(file_io("read directory", dir))?;
            let path = e.path();
            let rel = format!("{prefix}{}", e.file_name().to_string_lossy());
            let ft = e.file_type().map_err(file_io("stat", &path))?;
            if ft.is_dir() {
                visit(&path, &format!("{rel}/"), out)?;
            } else if ft.is_file() {
                out.push((rel, path));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    visit(dir, "", &mut out)?;
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// Size and BLAKE3 digest over every regular file of a model folder, in path order, each
/// preceded by the length of its relative path, the path and its length.
pub(crate) fn folder_digest(dir: &Path) -> Result<(u64, String), FileError> {
    let mut c = blake3::Hasher::new();
    let mut total = 0u64;
    for (rel, path) in files_under(dir)? {
        let mut f = std::fs::File::open(&path).map_err(file_io("open", &path))?;
        let len = f.metadata().map_err(file_io("stat", &path))?.len();
        c.update(&(rel.len() as u64).to_be_bytes());
        c.update(rel.as_bytes());
        c.update(&len.to_be_bytes());
        let n = std::io::copy(&mut f, &mut c).map_err(file_io("read", &path))?;
        if n != len {
            return Err(file_io("read", &path)(std::io::Error::other("the file changed while it was read")));
        }
        total += n;
    }
    Ok((total, hex(c.finalize().as_bytes())))
}

pub(crate) fn record_path(out_dir: &Path, rel: &str) -> PathBuf {
    out_dir.join(STATE_DIR).join("done").join(format!("{rel}.json"))
}

fn read_record(path: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether a previous run finished `rel` with the same operation, settings and
/// input, and its recorded outputs still exist with their recorded digests.
pub(crate) fn finished(out_dir: &Path, rel: &str, op: &str, settings: &str, digest: &str) -> bool {
    let Some(r) = read_record(&record_path(out_dir, rel)) else { return false };
    r.version == RECORD_VERSION
        && r.op == op
        && r.settings == settings
        && r.input_blake3 == digest
        && r.outputs.iter().all(|o| {
            let p = out_dir.join(&o.path);
            matches!(blake3_file(&p), Ok((n, d)) if n == o.bytes && d == o.blake3)
        })
}

/// Writes `record` to `path` atomically: a private staging file in its directory
/// (created if missing), flushed, then published over any older record.
pub(crate) fn write_record(path: &Path, record: &Record) -> Result<(), FileError> {
    let text = serde_json::to_string(record).map_err(|e| file_io("encode", path)(std::io::Error::other(e)))?;
    let write = || -> std::io::Result<()> {
        let mut out = onnx_protect_format::write::StagedOutput::new(path)?;
        out.file_mut().write_all(text.as_bytes())?;
        out.finish(true)?;
        out.publish()
    };
    write().map_err(file_io("write", path))
}

/// The output paths (under `out_dir`) that the record of `rel` names, whatever its
/// version or operation: the files an earlier batch run wrote for this model.
pub(crate) fn recorded_outputs(out_dir: &Path, rel: &str) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(record_path(out_dir, rel)) else { return Vec::new() };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return Vec::new() };
    let Some(outputs) = v.get("outputs").and_then(|o| o.as_array()) else { return Vec::new() };
    outputs.iter().filter_map(|o| o.get("path")?.as_str()).map(|p| out_dir.join(p)).collect()
}
