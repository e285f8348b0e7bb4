//! A protected folder read without a key: every model's binding checked against the
//! others and against the files there (docs/format.md §16).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use onnx_protect_core::keys::KeySource;
use onnx_protect_core::pass::journal::{finish_interrupted, Recovery};
use onnx_protect_core::protection::{open_protected, Protection};
use onnx_protect_format::{Model, NoProgress};
use onnx_protect_proto::v2 as pb;

use crate::binding::{file_hash, problem};
use crate::error::{io, FolderError, Result};
use crate::path::is_model_name;
use crate::walk::{walk, Found, Links};

/// A model of a protected folder.
#[derive(Debug, Clone)]
pub struct FolderModel {
    /// Relative to the folder, `/`-separated.
    pub path: String,
    /// The model file.
    pub abs: PathBuf,
    /// Its external data files, relative to the folder.
    pub data_files: Vec<String>,
}

/// A file of a protected folder copied unchanged (config, tokenizer, ...).
#[derive(Debug, Clone)]
pub struct CopiedFile {
    /// Relative to the folder, `/`-separated.
    pub path: String,
    pub abs: PathBuf,
    pub length: u64,
    /// `BLAKE3("onnx-protect/v2/folder-file" ‖ bytes)`.
    pub hash: [u8; 32],
}

impl CopiedFile {
    /// The hash in lowercase hex.
    pub fn hash_hex(&self) -> String {
        hex(&self.hash)
    }
}

/// A protected model folder whose bindings agree with each other and with its files
/// ([`Folder::open`]).
#[derive(Debug, Clone)]
pub struct Folder {
    root: PathBuf,
    id: [u8; 16],
    tiers: u32,
    models: Vec<FolderModel>,
    files: Vec<CopiedFile>,
}

/// What a model's header says of its folder.
struct Bound {
    binding: pb::FolderBinding,
    key_checks: Vec<Vec<u8>>,
    tiers: u32,
    recipients: Vec<(String, u32, String)>,
    streams: Vec<u64>,
    data_files: Vec<String>,
}

impl Folder {
    /// Opens the protected folder `dir` without a key, and refuses it unless (docs/format.md
    /// §16): it holds no link and no special file; every file named `*.onnx` is a
    /// protected model whose header's folder binding is well formed and names that file's
    /// own path; all bindings have the same folder id, model list and file list; every
    /// model has the same number of tiers, key check values and recipients (kind, tier,
    /// label) as the others, and no two share a stream id; every listed model and file is
    /// there, the files with their recorded length and hash; and no other file is there
    /// than these and the models' external data files (each named by one model only).
    ///
    /// The models' content is not hashed here: [`crate::verify`] and every decryption do
    /// that. A rewrite of a model's tail that a crash interrupted is finished first, as
    /// for a single model.
    pub fn open(dir: &Path) -> Result<Folder> {
        let meta = std::fs::metadata(dir).map_err(io(dir))?;
        if !meta.is_dir() {
            return Err(FolderError::NotADirectory { path: dir.to_path_buf() });
        }
        let root = dir.canonicalize().map_err(io(dir))?;
        let mut found = walk(&root, Links::FollowToFiles)?;
        // Every model's journal is looked at (no short cut).
        let recovered: Vec<Recovery> =
            found.iter().filter(|f| is_model_name(&f.rel)).map(|f| finish_interrupted(&f.abs)).collect();
        let interrupted = recovered.iter().any(|r| *r != Recovery::Nothing);
        if interrupted {
            found = walk(&root, Links::FollowToFiles)?;
        }
        let by_rel: HashMap<&str, &Found> = found.iter().map(|f| (f.rel.as_str(), f)).collect();
        let Some(first) = found.iter().find(|f| is_model_name(&f.rel)) else {
            return Err(FolderError::NoModel { path: dir.to_path_buf() });
        };
        let reference = bound(&first.rel, &first.abs)?;
        let b = &reference.binding;
        let mut models = Vec::new();
        let mut streams: HashMap<u64, String> = HashMap::new();
        let mut data_of: BTreeMap<String, String> = BTreeMap::new();
        for rel in &b.models {
            let f = by_rel.get(rel.as_str()).ok_or_else(|| FolderError::Missing { path: rel.clone() })?;
            let other;
            let m = if *rel == first.rel {
                &reference
            } else {
                other = bound(rel, &f.abs)?;
                agree(&other, &reference, rel, &first.rel)?;
                &other
            };
            for s in &m.streams {
                if let Some(prev) = streams.insert(*s, rel.clone()) {
                    return Err(FolderError::SharedStream { path: rel.clone(), first: prev, stream: *s });
                }
            }
            for d in &m.data_files {
                if let Some(prev) = data_of.insert(d.clone(), rel.clone()) {
                    let reason = format!("an external data file of both {prev} and {rel}");
                    return Err(FolderError::DataFile { path: d.clone(), reason });
                }
            }
            models.push(FolderModel { path: rel.clone(), abs: f.abs.clone(), data_files: m.data_files.clone() });
        }
        let listed: BTreeSet<&str> =
            b.models.iter().chain(b.files.iter().map(|f| &f.path)).map(String::as_str).collect();
        if let Some(d) = data_of.keys().find(|d| listed.contains(d.as_str())) {
            let reason = format!("an external data file of {} and listed by the folder binding", data_of[d]);
            return Err(FolderError::DataFile { path: d.clone(), reason });
        }
        for file in &b.files {
            let Some(f) = by_rel.get(file.path.as_str()) else {
                return Err(FolderError::Missing { path: file.path.clone() });
            };
            if f.len != file.length {
                let what = format!("it is {} bytes, the folder binding records {}", f.len, file.length);
                return Err(FolderError::FileChanged { path: file.path.clone(), what });
            }
        }
        if let Some(extra) = found.iter().find(|f| !listed.contains(f.rel.as_str()) && !data_of.contains_key(&f.rel)) {
            return Err(FolderError::Extra { path: extra.rel.clone() });
        }
        let mut files = Vec::with_capacity(b.files.len());
        for file in &b.files {
            let abs = by_rel[file.path.as_str()].abs.clone();
            let (length, hash) = file_hash(&abs)?;
            if length != file.length || hash[..] != file.hash[..] {
                let what = "its content differs from the one the folder binding records (BLAKE3)".to_string();
                return Err(FolderError::FileChanged { path: file.path.clone(), what });
            }
            files.push(CopiedFile { path: file.path.clone(), abs, length, hash });
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b.folder_id);
        Ok(Folder { root, id, tiers: reference.tiers, models, files })
    }

    /// The folder (canonical path).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder id every binding names.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// The folder id in lowercase hex.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    /// The number of access tiers of every model.
    pub fn tiers(&self) -> u32 {
        self.tiers
    }

    /// The models, sorted by path.
    pub fn models(&self) -> &[FolderModel] {
        &self.models
    }

    /// The files copied unchanged, sorted by path.
    pub fn files(&self) -> &[CopiedFile] {
        &self.files
    }

    /// Copies every copied file of the folder (config, tokenizer, ...) into the folder
    /// `to` at its relative path, each copy hashed after it is written and refused
    /// ([`FolderError::FileChanged`]) unless it is the file the binding records: a loader
    /// that reads the copies reads what the binding authenticates, whatever happens to the
    /// folder meanwhile.
    pub fn copy_files_to(&self, to: &Path) -> Result<()> {
        for f in &self.files {
            let dst = to.join(&f.path);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::copy(&f.abs, &dst).map_err(io(&dst))?;
            let (length, hash) = file_hash(&dst)?;
            if length != f.length || hash != f.hash {
                let what = "it changed while it was copied".to_string();
                return Err(FolderError::FileChanged { path: f.path.clone(), what });
            }
        }
        Ok(())
    }

    /// Checks that `key` opens every model of the folder (each model's stanza opened, its
    /// key check values and MACs checked): with [`Folder::open`]'s check that every model
    /// records the same key check values, every model decrypts under one data key. Returns
    /// the access tier the key reaches (the lowest over the models, should a licence grant
    /// one less than another). Each model's content is not hashed (see [`crate::verify`]).
    pub fn check_key(&self, key: &KeySource) -> Result<u32> {
        let mut tier = u32::MAX;
        for m in &self.models {
            let model = open_protected(&m.abs, &NoProgress).map_err(|e| model_error(&m.path, e))?;
            let t = onnx_protect_core::protect::key_tier(&model, key).map_err(|e| model_error(&m.path, e))?;
            tier = tier.min(t);
        }
        Ok(tier)
    }
}

pub(crate) fn model_error(path: &str, source: onnx_protect_core::error::CoreError) -> FolderError {
    FolderError::Model { path: path.to_string(), source }
}

/// The folder facts of the model `rel` of the folder, at `abs`.
fn bound(rel: &str, abs: &Path) -> Result<Bound> {
    let model = open_protected(abs, &NoProgress).map_err(|e| model_error(rel, e))?;
    let p = match Protection::of(&model).map_err(|e| model_error(rel, e))? {
        Protection::V2(p) => p,
        Protection::V1(_) => return Err(FolderError::NotBound { path: rel.to_string() }),
    };
    let h = &p.sealed.header;
    let Some(binding) = h.folder.as_deref() else { return Err(FolderError::NotBound { path: rel.to_string() }) };
    if let Some(reason) = problem(binding) {
        return Err(FolderError::BadBinding { path: rel.to_string(), reason });
    }
    if binding.path != rel {
        return Err(FolderError::Swapped { path: rel.to_string(), says: binding.path.clone() });
    }
    Ok(Bound {
        binding: binding.clone(),
        key_checks: h.key_checks.clone(),
        tiers: h.tiers,
        recipients: p.sealed.stanzas.iter().map(|s| (s.kind.clone(), s.tier, s.label.clone())).collect(),
        streams: h.tensors.iter().map(|e| e.stream_id).collect(),
        data_files: data_files(rel, &model)?,
    })
}

/// The external data files of `model` (the file `rel` of the folder), relative to the
/// folder: where each location names it (a location never leaves the model's directory,
/// docs/format.md §5; the file there may be a link, which a folder read follows).
pub(crate) fn data_files(rel: &str, model: &Model) -> Result<Vec<String>> {
    let dir = rel.rsplit_once('/').map_or("", |(d, _)| d);
    let mut out = Vec::new();
    for f in &model.external_files {
        let parts = f.location.split(['/', '\\']).filter(|c| !c.is_empty() && *c != ".");
        let inside = dir.split('/').filter(|c| !c.is_empty()).chain(parts).collect::<Vec<_>>().join("/");
        if is_model_name(&inside) {
            let reason = format!("an external data file of {rel}, and named as a model (*.onnx)");
            return Err(FolderError::DataFile { path: inside, reason });
        }
        out.push(inside);
    }
    Ok(out)
}

/// Refuses `m` (the model `rel`) unless its binding and keys agree with those of
/// `first` (the model `first_rel`).
fn agree(m: &Bound, first: &Bound, rel: &str, first_rel: &str) -> Result<()> {
    let (a, b) = (&m.binding, &first.binding);
    let (path, first_path) = (rel.to_string(), first_rel.to_string());
    if a.folder_id != b.folder_id {
        return Err(FolderError::OtherFolder { path, first: first_path });
    }
    if a.models != b.models {
        return Err(FolderError::Disagree { path, first: first_path, what: "models" });
    }
    if a.files != b.files {
        return Err(FolderError::Disagree { path, first: first_path, what: "files" });
    }
    let what = if m.tiers != first.tiers {
        "another number of tiers"
    } else if m.key_checks != first.key_checks {
        "other key check values"
    } else if m.recipients != first.recipients {
        "other recipients"
    } else {
        return Ok(());
    };
    Err(FolderError::OtherKey { path, first: first_path, what })
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
