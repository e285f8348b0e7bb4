//! The list of models: a directory walk or a list file, sorted by relative path,
//! and the part of it one shard keeps.

use std::path::{Component, Path, PathBuf};

use onnx_protect_crypto::Checksum;

use crate::error::{batch_io, BatchError};
use crate::STATE_DIR_PREFIX;

/// Where the models come from.
#[derive(Debug, Clone)]
pub enum Inputs {
    /// Every file under this directory (recursively) whose name ends in `.onnx` (any case).
    Dir(PathBuf),
    /// The models named in this file, one path per line (`#` starts a comment line).
    /// Relative entries are resolved against `base` (default: the current directory);
    /// absolute ones must lie under it. Output paths are relative to `base`.
    List { file: PathBuf, base: Option<PathBuf> },
}

/// One model to process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Path relative to the walked directory or the list's base, with `/` separators.
    pub rel: String,
    /// Where the model is read from.
    pub input: PathBuf,
}

/// How files are assigned to shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardBy {
    /// Position in the sorted list modulo N: shards differ in size by at most one file.
    Index,
    /// The first 8 bytes of SHA-256 of the relative path, big-endian, modulo N: a
    /// file keeps its shard when the list changes.
    Hash,
}

/// Shard `index` of `count` (`index < count`) of the sorted list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: u64,
    count: u64,
    by: ShardBy,
}

impl Shard {
    /// `None` unless `index < count`.
    pub fn new(index: u64, count: u64, by: ShardBy) -> Option<Shard> {
        (index < count).then_some(Shard { index, count, by })
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether the file at position `position` of the sorted list, with relative path
    /// `rel`, belongs to this shard.
    fn keeps(&self, position: usize, rel: &str) -> bool {
        match self.by {
            ShardBy::Index => position as u64 % self.count == self.index,
            ShardBy::Hash => hash_shard(rel, self.count) == self.index,
        }
    }

    /// The items of this shard, in order.
    pub fn of(&self, items: Vec<Item>) -> Vec<Item> {
        items.into_iter().enumerate().filter(|(k, it)| self.keeps(*k, &it.rel)).map(|(_, it)| it).collect()
    }
}

/// The shard of a relative path under [`ShardBy::Hash`]: the first 8 bytes of
/// SHA-256(path), big-endian, modulo `n` (`n > 0`).
pub fn hash_shard(rel: &str, n: u64) -> u64 {
    let mut c = Checksum::new();
    c.update(rel.as_bytes());
    let d = c.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first) % n.max(1)
}

/// `rel` as `/`-separated normal components; `Err` with the reason otherwise.
pub(crate) fn rel_string(rel: &Path) -> Result<String, &'static str> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().ok_or("is not valid UTF-8")?),
            Component::CurDir => {}
            _ => return Err("leaves the base directory"),
        }
    }
    if parts.is_empty() {
        return Err("is empty");
    }
    Ok(parts.join("/"))
}

fn is_model(name: &std::ffi::OsStr) -> bool {
    Path::new(name).extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Every model under `dir`, skipping the directory `skip` (canonical) and entries whose
/// names start with [`STATE_DIR_PREFIX`] (the state directory, temporary files).
fn walk(root: &Path, dir: &Path, skip: Option<&Path>, out: &mut Vec<Item>) -> Result<(), BatchError> {
    let entries = std::fs::read_dir(dir).map_err(batch_io("read directory", dir))?;
    for e in entries {
        let e = e.map_err(batch_io("read directory", dir))?;
        let name = e.file_name();
        if name.to_string_lossy().starts_with(STATE_DIR_PREFIX) {
            continue;
        }
        let path = e.path();
        let ft = e.file_type().map_err(batch_io("stat", &path))?;
        if ft.is_dir() {
            if let (Some(skip), Ok(c)) = (skip, std::fs::canonicalize(&path)) {
                if c == skip {
                    continue;
                }
            }
            walk(root, &path, skip, out)?;
        } else if is_model(&name) && (ft.is_file() || (ft.is_symlink() && path.is_file())) {
            let rel = path
                .strip_prefix(root)
                .map_err(|_| BatchError::Path { path: path.clone(), reason: "is outside the walked directory" })
                .and_then(|r| rel_string(r).map_err(|reason| BatchError::Path { path: path.clone(), reason }))?;
            out.push(Item { rel, input: path.clone() });
        }
    }
    Ok(())
}

fn read_list(file: &Path, base: Option<&Path>) -> Result<Vec<Item>, BatchError> {
    let text = std::fs::read_to_string(file).map_err(batch_io("read list", file))?;
    let base = base.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let base_abs = std::path::absolute(&base).map_err(batch_io("resolve", &base))?;
    let mut items = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let bad = |reason: String| BatchError::List { file: file.to_path_buf(), line: no + 1, reason };
        let p = Path::new(line);
        let (input, rel) = if p.is_absolute() {
            let rel = p
                .strip_prefix(&base_abs)
                .map_err(|_| bad(format!("{line} is not under the base {}", base_abs.display())))?;
            (p.to_path_buf(), rel.to_path_buf())
        } else {
            (base.join(p), p.to_path_buf())
        };
        let rel = rel_string(&rel).map_err(|why| bad(format!("path {} {why}", rel.display())))?;
        items.push(Item { rel, input });
    }
    Ok(items)
}

/// The sorted, de-duplicated list of models. A walk skips `out_dir` when it lies inside.
pub fn collect(inputs: &Inputs, out_dir: Option<&Path>) -> Result<Vec<Item>, BatchError> {
    let mut items = match inputs {
        Inputs::Dir(dir) => {
            if !dir.is_dir() {
                return Err(BatchError::NotADirectory { path: dir.clone() });
            }
            let skip = out_dir.and_then(|o| std::fs::canonicalize(o).ok());
            let mut items = Vec::new();
            walk(dir, dir, skip.as_deref(), &mut items)?;
            items
        }
        Inputs::List { file, base } => read_list(file, base.as_deref())?,
    };
    items.sort_by(|x, y| x.rel.cmp(&y.rel));
    items.dedup_by(|x, y| x.rel == y.rel);
    Ok(items)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn items(rels: &[&str]) -> Vec<Item> {
        rels.iter().map(|r| Item { rel: r.to_string(), input: PathBuf::from(r) }).collect()
    }

    #[test]
    fn shards_partition_the_list() {
        let all = items(&["a", "b", "c", "d", "e", "f", "g"]);
        for by in [ShardBy::Index, ShardBy::Hash] {
            let mut seen: Vec<String> =
                (0..3).flat_map(|i| Shard::new(i, 3, by).unwrap().of(all.clone())).map(|it| it.rel).collect();
            seen.sort();
            assert_eq!(seen, ["a", "b", "c", "d", "e", "f", "g"], "{by:?}");
        }
        assert!(Shard::new(3, 3, ShardBy::Index).is_none());
        assert!(Shard::new(0, 0, ShardBy::Hash).is_none());
    }

    #[test]
    fn hash_shard_is_sha256_of_the_path() {
        // int.from_bytes(hashlib.sha256(b"a/model.onnx").digest()[:8], "big") % 7
        let mut c = Checksum::new();
        c.update(b"a/model.onnx");
        let d = c.finalize();
        let want = u64::from_be_bytes(d[..8].try_into().unwrap()) % 7;
        assert_eq!(hash_shard("a/model.onnx", 7), want);
    }

    #[test]
    fn list_lines_are_resolved_and_refused_as_documented() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("l.txt");
        std::fs::write(&list, "# c\n\nb.onnx\r\n./a/x.onnx\nb.onnx\n").unwrap();
        let got = collect(&Inputs::List { file: list.clone(), base: Some(dir.path().into()) }, None).unwrap();
        assert_eq!(got.iter().map(|i| i.rel.as_str()).collect::<Vec<_>>(), ["a/x.onnx", "b.onnx"]);
        std::fs::write(&list, "ok.onnx\n../up.onnx\n").unwrap();
        let e = collect(&Inputs::List { file: list.clone(), base: None }, None).unwrap_err();
        assert!(matches!(e, BatchError::List { line: 2, .. }), "{e}");
        assert!(e.to_string().contains("leaves the base directory"), "{e}");
        std::fs::write(&list, "/elsewhere/m.onnx\n").unwrap();
        let e = collect(&Inputs::List { file: list, base: Some(dir.path().into()) }, None).unwrap_err();
        assert!(e.to_string().contains("is not under the base"), "{e}");
        let e = collect(&Inputs::Dir(dir.path().join("l.txt")), None).unwrap_err();
        assert!(matches!(e, BatchError::NotADirectory { .. }), "{e}");
    }
}
