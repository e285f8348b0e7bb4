//! The files of a model and their digests, as model-signing's `files` serialization
//! lists them: a single file as `.`; a directory's regular files by their `/`-separated
//! path relative to it, sorted, without the ignored paths. Symbolic links and special
//! files are refused (model-signing's default, `allow_symlinks: false`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::BundleError;

/// The paths model-signing leaves out of a directory by default (`--ignore-git-paths`).
pub const GIT_PATHS: [&str; 4] = [".git", ".gitattributes", ".github", ".gitignore"];

/// The hash of each file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashType {
    Sha256,
    Blake3,
}

impl HashType {
    pub fn name(self) -> &'static str {
        match self {
            HashType::Sha256 => "sha256",
            HashType::Blake3 => "blake3",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<HashType, BundleError> {
        match s {
            "sha256" => Ok(HashType::Sha256),
            "blake3" => Ok(HashType::Blake3),
            _ => Err(BundleError::Unsupported(format!("hash type '{s}' (this version reads sha256 and blake3)"))),
        }
    }
}

/// One file and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    pub digest: Vec<u8>,
}

/// A model's files and digests (the statement's predicate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelManifest {
    /// The model's name: the last component of its path (informational).
    pub name: String,
    pub hash: HashType,
    /// Sorted by name.
    pub resources: Vec<Resource>,
    /// Paths relative to the model's directory that are not part of it.
    pub ignore_paths: Vec<String>,
}

fn io(path: &Path, e: std::io::Error) -> BundleError {
    BundleError::Io { path: path.to_path_buf(), source: e }
}

fn hash_file(path: &Path, hash: HashType) -> Result<Vec<u8>, BundleError> {
    let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut sha = Sha256::new();
    let mut b3 = blake3::Hasher::new();
    loop {
        let n = f.read(&mut buf).map_err(|e| io(path, e))?;
        if n == 0 {
            break;
        }
        match hash {
            HashType::Sha256 => sha.update(&buf[..n]),
            HashType::Blake3 => {
                b3.update(&buf[..n]);
            }
        }
    }
    Ok(match hash {
        HashType::Sha256 => sha.finalize().to_vec(),
        HashType::Blake3 => b3.finalize().as_bytes().to_vec(),
    })
}

/// A resource name read from a bundle: `.`, or a relative `/`-separated path without
/// empty, `.` or `..` components.
pub(crate) fn check_resource_name(name: &str) -> Result<(), &'static str> {
    if name == "." {
        return Ok(());
    }
    if name.is_empty() || name.starts_with('/') || name.contains('\\') || name.contains('\0') {
        return Err("not a relative path");
    }
    if name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err("has an empty, '.' or '..' component");
    }
    Ok(())
}

fn name_of(model: &Path) -> String {
    let name = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.is_empty() || name == ".." {
        std::fs::canonicalize(model)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default()
    } else {
        name
    }
}

/// `inner` as a `/`-separated path relative to the directory `model`, when it lies inside it
/// (`None` for a model file).
pub fn relative_inside(model: &Path, inner: Option<&Path>) -> Result<Option<String>, BundleError> {
    let Some(inner) = inner else { return Ok(None) };
    if !model.is_dir() {
        return Ok(None);
    }
    let dir = std::fs::canonicalize(model).map_err(|e| io(model, e))?;
    let parent = inner.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(parent) = std::fs::canonicalize(parent) else { return Ok(None) };
    let full = parent.join(inner.file_name().unwrap_or_default());
    Ok(full
        .strip_prefix(&dir)
        .ok()
        .map(|r| r.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")))
}

/// What a signature leaves out of a directory: git's files, and the bundle itself when it
/// is written inside.
pub fn default_ignored(model: &Path, bundle: Option<&Path>) -> Result<Vec<String>, BundleError> {
    if !model.is_dir() {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = GIT_PATHS.iter().map(|s| s.to_string()).collect();
    if let Some(b) = relative_inside(model, bundle)? {
        out.push(b);
    }
    Ok(out)
}

fn ignored(rel: &str, ignore: &[String]) -> bool {
    ignore.iter().any(|i| {
        let i = i.trim_end_matches('/');
        rel == i || rel.strip_prefix(i).is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The manifest of the model at `model` (a file or a directory).
pub fn hash_model(model: &Path, hash: HashType, ignore: &[String]) -> Result<ModelManifest, BundleError> {
    let meta = std::fs::symlink_metadata(model).map_err(|e| io(model, e))?;
    if meta.file_type().is_symlink() {
        return Err(BundleError::NotAModelFile { path: model.to_path_buf(), reason: "is a symbolic link" });
    }
    let mut resources = BTreeMap::new();
    if meta.is_file() {
        resources.insert(".".to_string(), hash_file(model, hash)?);
    } else if meta.is_dir() {
        walk(model, model, hash, ignore, &mut resources, 0)?;
    } else {
        return Err(BundleError::NotAModelFile {
            path: model.to_path_buf(),
            reason: "is neither a file nor a directory",
        });
    }
    let resources = resources.into_iter().map(|(name, digest)| Resource { name, digest }).collect();
    Ok(ModelManifest { name: name_of(model), hash, resources, ignore_paths: ignore.to_vec() })
}

fn walk(
    root: &Path,
    dir: &Path,
    hash: HashType,
    ignore: &[String],
    out: &mut BTreeMap<String, Vec<u8>>,
    depth: usize,
) -> Result<(), BundleError> {
    if depth > 64 {
        return Err(BundleError::NotAModelFile {
            path: dir.to_path_buf(),
            reason: "nests more than 64 directories deep",
        });
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| io(dir, e))?;
    entries.sort();
    for path in entries {
        let rel_path = path.strip_prefix(root).unwrap_or(&path);
        let mut parts = Vec::new();
        for c in rel_path.components() {
            let Component::Normal(s) = c else { continue };
            let Some(s) = s.to_str() else {
                return Err(BundleError::NotAModelFile { path: path.clone(), reason: "has a name that is not UTF-8" });
            };
            parts.push(s.to_string());
        }
        let rel = parts.join("/");
        if ignored(&rel, ignore) {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io(&path, e))?;
        if meta.file_type().is_symlink() {
            return Err(BundleError::NotAModelFile { path, reason: "is a symbolic link" });
        }
        if meta.is_dir() {
            walk(root, &path, hash, ignore, out, depth + 1)?;
        } else if meta.is_file() {
            out.insert(rel, hash_file(&path, hash)?);
        } else {
            return Err(BundleError::NotAModelFile { path, reason: "is a special file" });
        }
    }
    Ok(())
}

/// The manifest of a set of files of one directory, named by their `/`-separated paths
/// relative to it (a model file and its external data files); `name` is the model's name.
/// A file that does not exist is left out (a comparison then reports it missing).
pub fn hash_files(dir: &Path, names: &[String], hash: HashType, name: &str) -> Result<ModelManifest, BundleError> {
    let mut resources = BTreeMap::new();
    for n in names {
        check_resource_name(n).map_err(|why| BundleError::invalid(n, why))?;
        let path = n.split('/').fold(dir.to_path_buf(), |p, c| p.join(c));
        let meta = match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            other => other.map_err(|e| io(&path, e))?,
        };
        if !meta.is_file() {
            return Err(BundleError::NotAModelFile { path, reason: "is not a regular file" });
        }
        resources.insert(n.clone(), hash_file(&path, hash)?);
    }
    let resources = resources.into_iter().map(|(name, digest)| Resource { name, digest }).collect();
    Ok(ModelManifest { name: name.to_string(), hash, resources, ignore_paths: Vec::new() })
}

/// Every file of `signed` is in `actual` with the same digest, and no other. A mismatch names
/// the files by their paths in the model; the model file itself, whose path in a manifest of
/// one file is `.`, by the model's name.
pub fn compare(signed: &ModelManifest, actual: &ModelManifest) -> Result<(), BundleError> {
    let want: BTreeMap<&str, &[u8]> = signed.resources.iter().map(|r| (r.name.as_str(), r.digest.as_slice())).collect();
    let have: BTreeMap<&str, &[u8]> = actual.resources.iter().map(|r| (r.name.as_str(), r.digest.as_slice())).collect();
    if want.len() != signed.resources.len() {
        return Err(BundleError::invalid("predicate.resources", "a name appears twice"));
    }
    let shown = |k: &str| if k == "." && !actual.name.is_empty() { actual.name.clone() } else { k.to_string() };
    let missing: Vec<String> = want.keys().filter(|k| !have.contains_key(*k)).map(|k| shown(k)).collect();
    let extra: Vec<String> = have.keys().filter(|k| !want.contains_key(*k)).map(|k| shown(k)).collect();
    let changed: Vec<String> =
        want.iter().filter(|(k, d)| have.get(*k).is_some_and(|h| h != *d)).map(|(k, _)| shown(k)).collect();
    if missing.is_empty() && extra.is_empty() && changed.is_empty() {
        Ok(())
    } else {
        Err(BundleError::Mismatch { missing, extra, changed })
    }
}
