//! The folder binding a model's header carries (docs/format.md §16): built by the
//! encryptor, checked by readers.

use std::io::Read;
use std::path::Path;

use onnx_protect_proto::v2 as pb;

use crate::error::{io, Result};
use crate::path::{is_model_name, path_problem};

/// The domain of a copied file's hash.
pub const FILE_HASH_DOMAIN: &[u8] = b"onnx-protect/v2/folder-file";
/// The length of a folder id.
pub const FOLDER_ID_LEN: usize = 16;
/// The most models a folder may hold.
pub const MAX_MODELS: usize = 1024;

/// `BLAKE3("onnx-protect/v2/folder-file" ‖ bytes)` of the file at `path`, and its length.
pub fn file_hash(path: &Path) -> Result<(u64, [u8; 32])> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = blake3::Hasher::new();
    h.update(FILE_HASH_DOMAIN);
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, *h.finalize().as_bytes()))
}

/// Why `b` breaks a rule of docs/format.md §16, if it does: a 16-byte folder id; 1 to
/// [`MAX_MODELS`] models and at most [`crate::walk::MAX_FILES`] files in all, every path
/// a plain relative path, models named `*.onnx`, each list sorted by bytes without
/// duplicates, no path in both lists, `path` among the models, hashes of 32 bytes.
pub(crate) fn problem(b: &pb::FolderBinding) -> Option<String> {
    if b.folder_id.len() != FOLDER_ID_LEN {
        return Some(format!("the folder id is {} bytes, not {FOLDER_ID_LEN}", b.folder_id.len()));
    }
    if b.models.is_empty() || b.models.len() > MAX_MODELS {
        return Some(format!("it lists {} models (1 to {MAX_MODELS} allowed)", b.models.len()));
    }
    if b.models.len() + b.files.len() > crate::walk::MAX_FILES {
        return Some(format!("it lists more than {} files", crate::walk::MAX_FILES));
    }
    let files: Vec<&str> = b.files.iter().map(|f| f.path.as_str()).collect();
    for (what, list) in [("model", b.models.iter().map(String::as_str).collect::<Vec<_>>()), ("file", files.clone())] {
        for p in &list {
            if let Some(reason) = path_problem(p) {
                return Some(format!("{what} path {p:?}: {reason}"));
            }
        }
        if let Some(w) = list.windows(2).find(|w| w[0].as_bytes() >= w[1].as_bytes()) {
            return Some(format!("its {what} paths are not sorted without duplicates ({:?} before {:?})", w[0], w[1]));
        }
    }
    if let Some(m) = b.models.iter().find(|m| !is_model_name(m)) {
        return Some(format!("model {m:?} is not named *.onnx"));
    }
    if let Some(f) = files.iter().find(|f| b.models.binary_search_by(|m| m.as_bytes().cmp(f.as_bytes())).is_ok()) {
        return Some(format!("{f:?} is listed both as a model and as a file"));
    }
    if let Some(f) = b.files.iter().find(|f| f.hash.len() != 32) {
        return Some(format!("the hash of {:?} is {} bytes, not 32", f.path, f.hash.len()));
    }
    if !b.models.contains(&b.path) {
        return Some(format!("its own path {:?} is not among its models", b.path));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> pb::FolderBinding {
        pb::FolderBinding {
            folder_id: vec![1; 16],
            path: "b.onnx".into(),
            models: vec!["a/x.onnx".into(), "b.onnx".into()],
            files: vec![
                pb::FolderFile { path: "a/t.json".into(), length: 3, hash: vec![0; 32] },
                pb::FolderFile { path: "c.txt".into(), length: 0, hash: vec![0; 32] },
            ],
        }
    }

    #[test]
    fn a_canonical_binding_passes() {
        assert_eq!(problem(&good()), None);
    }

    type Change = Box<dyn Fn(&mut pb::FolderBinding)>;

    #[test]
    fn every_broken_rule_is_named() {
        let cases: Vec<(&str, Change)> = vec![
            ("folder id", Box::new(|b| b.folder_id.pop().map(drop).unwrap_or(()))),
            ("models", Box::new(|b| b.models.clear())),
            ("not sorted", Box::new(|b| b.models.reverse())),
            ("not sorted", Box::new(|b| b.models.push("b.onnx".into()))),
            ("not sorted", Box::new(|b| b.files.swap(0, 1))),
            ("not named", Box::new(|b| b.models[1] = "b.onn".into())),
            ("both", Box::new(|b| b.files[1].path = "b.onnx".into())),
            ("hash", Box::new(|b| b.files[0].hash.push(0))),
            ("own path", Box::new(|b| b.path = "c.onnx".into())),
            ("'..'", Box::new(|b| b.files[1].path = "../c.txt".into())),
            ("absolute", Box::new(|b| b.models[0] = "/a/x.onnx".into())),
        ];
        for (want, change) in cases {
            let mut b = good();
            change(&mut b);
            let got = problem(&b).unwrap_or_else(|| panic!("{want}: passed"));
            assert!(got.contains(want), "{want}: {got}");
        }
    }

    #[test]
    fn the_hash_is_domain_separated_blake3() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"tokens").unwrap();
        let (len, h) = file_hash(&p).unwrap();
        assert_eq!(len, 6);
        assert_eq!(&h, blake3::hash(b"onnx-protect/v2/folder-filetokens").as_bytes());
    }
}
