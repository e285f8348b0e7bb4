//! External data: the side files tensors keep their bytes in, confined to the model's
//! directory, with every range checked against the file.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use onnx_protect_fsio::ReadMap;

use super::{Model, Sizes, TensorData, TensorId};
use crate::error::{FormatError, Result};
use crate::wire::{self, Container};

/// An external data file referenced by at least one tensor.
#[derive(Debug)]
pub struct ExternalFile {
    /// The `location` string as written in the model.
    pub location: String,
    /// The resolved path (inside the model's directory); for a file held in memory
    /// ([`Model::from_vec_in_memory`]), the location's normal components.
    pub path: PathBuf,
    pub size: u64,
    pub tensors: Vec<TensorId>,
    /// Where each of its tensors writes `location`, in tensor order.
    pub sites: Vec<LocationSite>,
    map: OnceLock<std::result::Result<(File, ReadMap), String>>,
}

/// Where a tensor's (last) `location` value is written: the `value` field of its
/// `external_data` entry, for rewriting it under another name.
#[derive(Debug, Clone)]
pub struct LocationSite {
    pub tensor: TensorId,
    /// The whole `value` field (tag, length, string) of the `location` entry.
    pub value: Range<u64>,
    /// Enclosing length-delimited fields, outermost first: the tensor's, then the entry.
    pub ancestors: Vec<Container>,
}

impl ExternalFile {
    /// The mapped bytes of the file.
    pub fn bytes(&self) -> Result<&[u8]> {
        self.opened().map(|(_, m)| &m[..])
    }

    /// The open file behind [`ExternalFile::bytes`] (for positional reads and
    /// in-kernel copies of the same bytes).
    pub fn file(&self) -> Result<&File> {
        self.opened().map(|(f, _)| f)
    }

    fn opened(&self) -> Result<&(File, ReadMap)> {
        let m = self.map.get_or_init(|| {
            let f = File::open(&self.path).map_err(|e| e.to_string())?;
            // The file must not change while the model is open (the contract of
            // `ReadMap`, and of every mmap-based model loader).
            let m = ReadMap::new(&f).map_err(|e| e.to_string())?;
            if m.len() as u64 != self.size {
                return Err(format!("size changed from {} to {} bytes while open", self.size, m.len()));
            }
            Ok((f, m))
        });
        match m {
            Ok(m) => Ok(m),
            Err(e) => Err(FormatError::Io { path: self.path.clone(), source: std::io::Error::other(e.clone()) }),
        }
    }

    /// Forgets the file on disk: from now on [`ExternalFile::bytes`] and
    /// [`ExternalFile::file`] fail (for an index whose external data its user holds
    /// elsewhere, so that no read can reach the file).
    pub fn detach(&mut self) {
        let gone = Err(format!("external data file '{}' is not read from disk here", self.location));
        self.map = OnceLock::from(gone);
    }

    /// Tells the kernel that this process is done with `range` of the file for now:
    /// the pages inside it stop counting toward the process's resident set (they stay
    /// in the page cache and fault back in, unchanged, if read again). Streaming a
    /// file of any size through [`ExternalFile::bytes`] and releasing what was read
    /// keeps the peak RSS bounded. A no-op before the file is mapped, on non-Unix
    /// systems, and for pages only partly inside `range`.
    pub fn release(&self, range: Range<u64>) {
        if let Some(Ok((_, m))) = self.map.get() {
            m.release(range);
        }
    }
}

/// An external tensor as the parser found it: its `location`, `offset` and `length`
/// entries, resolved once the whole model is read.
pub(super) struct PendingExternal {
    pub(super) tensor: TensorId,
    pub(super) location: String,
    pub(super) offset: Option<String>,
    pub(super) length: Option<String>,
    /// The `external_data` entry holding the location, and its `value` field.
    pub(super) site: Option<(Container, Range<u64>)>,
}

impl PendingExternal {
    /// The bytes `[offset, offset + length)` of a side file of `size` bytes that the
    /// entries name (no offset: 0; no length: to the end of the file), checked to lie
    /// inside the file.
    fn range(&self, tensor: &str, size: u64) -> Result<Range<u64>> {
        let range_err = |reason: String| FormatError::ExternalRange {
            tensor: tensor.to_string(),
            location: self.location.clone(),
            reason,
        };
        let offset = match &self.offset {
            None => 0,
            Some(s) => {
                parse_decimal(s).ok_or_else(|| range_err(format!("offset '{s}' is not a non-negative integer")))?
            }
        };
        let length = match &self.length {
            None => size
                .checked_sub(offset)
                .ok_or_else(|| range_err(format!("offset {offset} is past the end of the {size}-byte file")))?,
            Some(s) => {
                parse_decimal(s).ok_or_else(|| range_err(format!("length '{s}' is not a non-negative integer")))?
            }
        };
        let end = offset.checked_add(length).ok_or_else(|| range_err("offset + length overflows".into()))?;
        if end > size {
            return Err(range_err(format!("bytes [{offset}, {end}) are past the end of the {size}-byte file")));
        }
        Ok(offset..end)
    }
}

impl Model {
    /// Edits that give every tensor stored in external file `file` the `location`
    /// `name` instead of its own (the enclosing length prefixes follow). Refused when a
    /// tensor's `location` field or a length prefix around it is not in its canonical
    /// form: writing the old name back would not restore the bytes exactly.
    pub fn relocation_edits(&self, file: usize, name: &str) -> Result<Vec<crate::write::Edit>> {
        let f =
            self.external_files.get(file).ok_or_else(|| FormatError::Invalid(format!("no external file #{file}")))?;
        let buf = self.bytes();
        let field = |s: &str| {
            let mut v = Vec::with_capacity(s.len() + 6);
            wire::put_len_field(&mut v, 2, s.as_bytes());
            v
        };
        let stored = field(&f.location);
        let mut edits = Vec::with_capacity(f.sites.len());
        for site in &f.sites {
            let minimal = site
                .ancestors
                .iter()
                .all(|c| c.value_start - c.len_start == wire::varint_len(c.end - c.value_start) as u64);
            if !minimal || buf.get(site.value.start as usize..site.value.end as usize) != Some(&stored[..]) {
                return Err(FormatError::Invalid(format!(
                    "tensor '{}': its external data location '{}' is not stored in canonical form, so it cannot be \
                     renamed and restored byte for byte",
                    self.tensors[site.tensor].name, f.location
                )));
            }
            edits.push(crate::write::Edit {
                range: site.value.clone(),
                content: crate::write::Content::Bytes(field(name)),
                ancestors: site.ancestors.clone(),
            });
        }
        if f.sites.len() != f.tensors.len() {
            return Err(FormatError::Invalid(format!(
                "external data file '{}': a tensor has no location field",
                f.location
            )));
        }
        Ok(edits)
    }

    /// Resolves every external tensor: on disk, inside [`Model::dir`] (`sizes` is `None`);
    /// or, with `sizes`, among files held in memory, whose size `sizes(location)` gives
    /// (`None`: no such file), without touching the disk.
    pub(super) fn resolve_external(&mut self, pending: Vec<PendingExternal>, sizes: Option<&Sizes<'_>>) -> Result<()> {
        let mut by_path: HashMap<PathBuf, usize> = HashMap::new();
        // Each location is resolved once: a file holds many tensors, and resolving walks
        // every component of the path (a `readlink` each).
        let mut resolved: HashMap<String, PathBuf> = HashMap::new();
        // The model file itself, as external data paths are resolved (canonical).
        let model_file = match (&self.path, pending.is_empty()) {
            (Some(p), false) => std::fs::canonicalize(p).ok(),
            _ => None,
        };
        for pe in pending {
            let tensor_name = self.tensors[pe.tensor].name.clone();
            let (path, size) = match sizes {
                Some(sizes) => {
                    let (key, size) = in_memory(&pe.location, &tensor_name, sizes)?;
                    (key, Some(size))
                }
                None => {
                    let Some(dir) = self.dir.clone() else {
                        return Err(FormatError::ExternalWithoutDir { tensor: tensor_name, location: pe.location });
                    };
                    let path = match resolved.get(&pe.location) {
                        Some(path) => path.clone(),
                        None => {
                            let path = resolve_location(&dir, &pe.location, &tensor_name)?;
                            resolved.insert(pe.location.clone(), path.clone());
                            path
                        }
                    };
                    if model_file.as_ref() == Some(&path) {
                        // Its bytes would be read as weights, and writing the side file next to
                        // an output would overwrite the output model.
                        return Err(FormatError::ExternalPath {
                            tensor: tensor_name,
                            location: pe.location,
                            reason: "it names the model file itself".into(),
                        });
                    }
                    (path, None)
                }
            };
            let idx = match by_path.get(&path) {
                Some(&i) => i,
                None => {
                    let (size, map) = match size {
                        Some(size) => (size, OnceLock::from(Err(IN_MEMORY.to_string()))),
                        None => {
                            let meta = std::fs::metadata(&path)
                                .map_err(|e| FormatError::Io { path: path.clone(), source: e })?;
                            (meta.len(), OnceLock::new())
                        }
                    };
                    self.external_files.push(ExternalFile {
                        location: pe.location.clone(),
                        path: path.clone(),
                        size,
                        tensors: Vec::new(),
                        sites: Vec::new(),
                        map,
                    });
                    by_path.insert(path, self.external_files.len() - 1);
                    self.external_files.len() - 1
                }
            };
            let file = &mut self.external_files[idx];
            let t = &mut self.tensors[pe.tensor];
            let range = pe.range(&t.name, file.size)?;
            let length = range.end - range.start;
            if length != t.nbytes {
                return Err(FormatError::DataLength {
                    tensor: t.name.clone(),
                    field: "external data length",
                    expected: t.nbytes,
                    actual: length,
                    unit: "bytes",
                });
            }
            file.tensors.push(t.id);
            if let Some((entry, value)) = pe.site {
                let mut ancestors = t.ancestors.clone();
                ancestors.push(entry);
                file.sites.push(LocationSite { tensor: t.id, value, ancestors });
            }
            t.data = TensorData::External { file: idx, range };
        }
        Ok(())
    }

    /// The first two tensors (by id) whose external data share bytes of one file, if
    /// any: encrypting one of them would change the other, so such a model is never
    /// encrypted. Empty ranges share nothing.
    pub fn shared_external_bytes(&self) -> Option<(TensorId, TensorId)> {
        let mut pieces: Vec<(usize, u64, u64, TensorId)> = self
            .tensors
            .iter()
            .filter_map(|t| match &t.data {
                TensorData::External { file, range } if range.start < range.end => {
                    Some((*file, range.start, range.end, t.id))
                }
                _ => None,
            })
            .collect();
        pieces.sort_unstable();
        // The piece reaching furthest so far in the current file, to compare with the next.
        let mut reach: Option<(usize, u64, TensorId)> = None;
        for &(file, start, end, id) in &pieces {
            match reach {
                Some((f, e, other)) if f == file && start < e => return Some((other.min(id), other.max(id))),
                Some((f, e, _)) if f == file && e >= end => {}
                _ => reach = Some((file, end, id)),
            }
        }
        None
    }
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Why `location` cannot name a file inside the model's directory, judged from the
/// string alone (docs/format.md §5): empty, a NUL byte, absolute, a drive letter, a
/// `..` or root component, or only empty and `.` components. Symbolic links are [`resolve_location`]'s part.
pub fn check_location(location: &str) -> std::result::Result<(), &'static str> {
    if location.is_empty() {
        return Err("it is empty");
    }
    if location.contains('\0') {
        return Err("it contains a NUL byte");
    }
    let rel = Path::new(location);
    if rel.is_absolute() || location.starts_with('/') || location.starts_with('\\') {
        return Err("absolute paths are not allowed");
    }
    if location.len() >= 2 && location.as_bytes()[1] == b':' {
        return Err("drive-letter paths are not allowed");
    }
    for c in rel.components() {
        match c {
            std::path::Component::Normal(_) | std::path::Component::CurDir => {}
            _ => return Err("'..' and root components would leave the model's directory"),
        }
    }
    if location.split(['/', '\\']).any(|p| p == "..") {
        return Err("'..' would leave the model's directory");
    }
    // Empty and `.` components name nothing (`d//w.bin` is `d/w.bin`): a location made only
    // of them names no file (format.md §5).
    if location.split(['/', '\\']).all(|p| p.is_empty() || p == ".") {
        return Err("it names no file (only empty and '.' components)");
    }
    Ok(())
}

/// What [`ExternalFile::bytes`] says of a file held in memory.
const IN_MEMORY: &str = "this external data file is held in memory, not read from disk";

/// A `location` among external data files held in memory: the key that identifies its
/// file (its normal components joined by `/`, so that `./w.bin` and `w.bin` are one
/// file) and the file's size, given by `sizes` for the `location` as written or for that
/// key.
fn in_memory(location: &str, tensor: &str, sizes: &Sizes<'_>) -> Result<(PathBuf, u64)> {
    let refuse = |reason: &str| FormatError::ExternalPath {
        tensor: tensor.to_string(),
        location: location.to_string(),
        reason: reason.to_string(),
    };
    check_location(location).map_err(refuse)?;
    let key: PathBuf = Path::new(location)
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    let size = sizes(location)
        .or_else(|| key.to_str().and_then(sizes))
        .ok_or_else(|| refuse("no external data file of that name is held in memory"))?;
    Ok((key, size))
}

/// Resolves an external-data `location` inside `dir`, refusing absolute paths, `..`
/// components and what is not a regular file. Symbolic links are followed wherever they
/// lead, as onnxruntime follows them (a model cache links each snapshot's files to blobs
/// kept elsewhere): the location is the model's, the links are its directory owner's.
pub fn resolve_location(dir: &Path, location: &str, tensor: &str) -> Result<PathBuf> {
    let refuse = |reason: &str| FormatError::ExternalPath {
        tensor: tensor.to_string(),
        location: location.to_string(),
        reason: reason.to_string(),
    };
    check_location(location).map_err(refuse)?;
    let rel = Path::new(location);
    let joined = dir.join(rel);
    let canon = match joined.canonicalize() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FormatError::ExternalMissing {
                tensor: tensor.to_string(),
                location: location.to_string(),
                path: joined,
            })
        }
        Err(e) => return Err(FormatError::Io { path: joined, source: e }),
    };
    let meta = std::fs::metadata(&canon).map_err(|e| FormatError::Io { path: canon.clone(), source: e })?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file"));
    }
    Ok(canon)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{external_float_tensor, float_tensor, len_field as field, matmul_chain};
    use crate::wire::{put_tag, put_varint, WireType};

    /// docs/format.md §3: `external_files` is in model order: the main graph (fields in file
    /// order, a subgraph where its attribute occurs), then the functions, then
    /// `training_info`, whatever order these fields have in the file.
    #[test]
    fn external_files_are_in_model_order() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.bin", "b.bin"] {
            std::fs::write(dir.path().join(f), [0u8; 16]).unwrap();
        }
        // A function whose Constant node holds a tensor in b.bin, written before the graph
        // whose initializer is in a.bin.
        let mut attr = field(1, b"value");
        put_tag(&mut attr, 20, WireType::Varint);
        put_varint(&mut attr, 4);
        attr.extend_from_slice(&field(5, &external_float_tensor("c", &[2, 2], "b.bin", 0, 16)));
        let mut n = crate::testutil::node("Constant", &[], &["c"], "k");
        n.extend_from_slice(&field(5, &attr));
        let mut func = field(1, b"f");
        func.extend_from_slice(&field(7, &n));
        func.extend_from_slice(&field(10, b"local"));
        let graph_model = matmul_chain(&[external_float_tensor("W0", &[2, 2], "a.bin", 0, 16)]);
        let bytes = [field(25, &func), graph_model].concat();
        let m = Model::from_vec(bytes, Some(dir.path().to_path_buf())).unwrap();
        let order: Vec<&str> = m.external_files.iter().map(|f| f.location.as_str()).collect();
        assert_eq!(order, ["a.bin", "b.bin"]);
    }

    #[cfg(unix)]
    #[test]
    fn a_location_that_names_the_model_file_itself_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // The model's bytes would be taken for weights: a tensor of 16 bytes at offset 0.
        let bytes = matmul_chain(&[external_float_tensor("W0", &[2, 2], "self.onnx", 0, 16)]);
        std::fs::write(dir.path().join("self.onnx"), &bytes).unwrap();
        let Err(e) = Model::open(dir.path().join("self.onnx")) else { panic!("accepted") };
        assert!(e.to_string().contains("names the model file itself"), "{e}");
        // The same through "./" and through a symbolic link.
        let bytes = matmul_chain(&[external_float_tensor("W0", &[2, 2], "./link.onnx", 0, 16)]);
        std::fs::write(dir.path().join("m.onnx"), &bytes).unwrap();
        std::os::unix::fs::symlink("m.onnx", dir.path().join("link.onnx")).unwrap();
        let Err(e) = Model::open(dir.path().join("m.onnx")) else { panic!("accepted") };
        assert!(e.to_string().contains("names the model file itself"), "{e}");
    }

    /// docs/format.md §5: a symbolic link in the model's directory is followed wherever it
    /// leads (a model cache links each snapshot's files to blobs kept beside the snapshots);
    /// the location itself still cannot leave the directory, and a link to a directory is
    /// not a file.
    #[cfg(unix)]
    #[test]
    fn a_link_leading_out_of_the_model_s_directory_is_followed() {
        let root = tempfile::tempdir().unwrap();
        let (snapshot, blobs) = (root.path().join("snapshots/rev"), root.path().join("blobs"));
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(&blobs).unwrap();
        let weights: Vec<u8> = (0..16).collect();
        std::fs::write(blobs.join("1f0a"), &weights).unwrap();
        std::os::unix::fs::symlink("../../blobs/1f0a", snapshot.join("w.bin")).unwrap();
        std::os::unix::fs::symlink("../../blobs", snapshot.join("dir.bin")).unwrap();
        let bytes = matmul_chain(&[external_float_tensor("W0", &[2, 2], "w.bin", 0, 16)]);
        let m = Model::from_vec(bytes, Some(snapshot.clone())).unwrap();
        assert_eq!(&m.tensor_bytes(0).unwrap()[..], &weights[..]);
        let bytes = matmul_chain(&[external_float_tensor("W0", &[2, 2], "dir.bin", 0, 16)]);
        let e = Model::from_vec(bytes, Some(snapshot.clone())).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let bytes = matmul_chain(&[external_float_tensor("W0", &[2, 2], "../../blobs/1f0a", 0, 16)]);
        let e = Model::from_vec(bytes, Some(snapshot)).unwrap_err();
        assert!(matches!(e, FormatError::ExternalPath { .. }), "{e}");
    }

    /// docs/format.md §5: a location made only of empty and `.` components names no file;
    /// read from a directory or from memory, it is refused and the error says so.
    #[test]
    fn a_location_of_only_empty_and_dot_components_names_no_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), [0u8; 16]).unwrap();
        for bad in [".", "./", "././", ".//.", ".\\.", "./\\"] {
            assert_eq!(check_location(bad), Err("it names no file (only empty and '.' components)"), "{bad}");
            let bytes = matmul_chain(&[external_float_tensor("W0", &[2, 2], bad, 0, 16)]);
            let e = Model::from_vec(bytes.clone(), Some(dir.path().to_path_buf())).unwrap_err();
            assert!(
                matches!(&e, FormatError::ExternalPath { location, reason, .. }
                    if location == bad && reason.contains("names no file")),
                "{bad}: {e}"
            );
            let e = Model::from_vec_in_memory(bytes, &|_| Some(16)).unwrap_err();
            assert!(e.to_string().contains("names no file"), "{bad}: {e}");
        }
        // Empty and `.` components around a name are allowed.
        for fine in ["./w.bin", ".//w.bin", "././w.bin", "w.bin/."] {
            assert_eq!(check_location(fine), Ok(()), "{fine}");
        }
    }

    #[test]
    fn tensors_sharing_bytes_of_an_external_file_are_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), vec![0u8; 64]).unwrap();
        std::fs::write(dir.path().join("v.bin"), vec![0u8; 64]).unwrap();
        let open = |tensors: &[Vec<u8>]| {
            std::fs::write(dir.path().join("m.onnx"), matmul_chain(tensors)).unwrap();
            Model::open(dir.path().join("m.onnx")).unwrap()
        };
        // Disjoint (touching) ranges, and the same range in two files: nothing shared.
        let m = open(&[
            external_float_tensor("W0", &[2, 2], "w.bin", 0, 16),
            external_float_tensor("W1", &[2, 2], "w.bin", 16, 16),
            external_float_tensor("W2", &[2, 2], "v.bin", 0, 16),
            float_tensor("W3", &[2, 2], &[1.0; 4]),
        ]);
        assert_eq!(m.shared_external_bytes(), None);
        // One byte in common, and a range inside a longer one listed before it.
        let m = open(&[
            external_float_tensor("W0", &[2, 2], "w.bin", 0, 16),
            external_float_tensor("W1", &[2, 2], "w.bin", 15, 16),
        ]);
        assert_eq!(m.shared_external_bytes(), Some((0, 1)));
        let m = open(&[
            external_float_tensor("W0", &[4, 4], "w.bin", 0, 64),
            external_float_tensor("W1", &[2, 2], "v.bin", 0, 16),
            external_float_tensor("W2", &[2, 2], "w.bin", 40, 16),
        ]);
        assert_eq!(m.shared_external_bytes(), Some((0, 2)));
    }

    /// `Model::from_vec_in_memory` resolves locations among the sizes it is given, with
    /// no directory to read from, and its index hands out no bytes of its own (the
    /// caller holds them): no file is opened.
    #[test]
    fn external_data_held_in_memory_is_resolved_by_name_without_the_disk() {
        let bytes = matmul_chain(&[
            external_float_tensor("W0", &[2, 2], "w.bin", 0, 16),
            external_float_tensor("W1", &[2, 2], "./w.bin", 16, 16),
            external_float_tensor("W2", &[2, 2], "sub/v.bin", 0, 16),
        ]);
        let sizes = |l: &str| match l {
            "w.bin" => Some(32),
            "sub/v.bin" => Some(16),
            _ => None,
        };
        let m = Model::from_vec_in_memory(bytes.clone(), &sizes).unwrap();
        let files: Vec<(&str, u64, usize)> =
            m.external_files.iter().map(|f| (f.location.as_str(), f.size, f.tensors.len())).collect();
        assert_eq!(files, [("w.bin", 32, 2), ("sub/v.bin", 16, 1)], "`./w.bin` is the file `w.bin`");
        assert!(m.dir.is_none());
        let e = m.external_files[0].bytes().unwrap_err();
        assert!(matches!(&e, FormatError::Io { source, .. } if source.to_string().contains("held in memory")), "{e}");
        assert!(matches!(m.tensor_bytes(0), Err(FormatError::Io { .. })));

        // A location that no file held in memory has.
        let e = Model::from_vec_in_memory(bytes.clone(), &|l| (l == "w.bin").then_some(32)).unwrap_err();
        assert!(
            matches!(&e, FormatError::ExternalPath { tensor, location, reason }
                if tensor == "W2" && location == "sub/v.bin" && reason.contains("held in memory")),
            "{e}"
        );
        // A range past the end of the size given.
        let e = Model::from_vec_in_memory(bytes, &|l| Some(if l == "w.bin" { 31 } else { 16 })).unwrap_err();
        assert!(matches!(&e, FormatError::ExternalRange { tensor, .. } if tensor == "W1"), "{e}");
        // Locations leaving the directory are refused, as on disk.
        for bad in ["../w.bin", "/w.bin", "a/../../w.bin"] {
            let bytes = matmul_chain(&[external_float_tensor("W0", &[2, 2], bad, 0, 16)]);
            let e = Model::from_vec_in_memory(bytes, &|_| Some(16)).unwrap_err();
            assert!(matches!(&e, FormatError::ExternalPath { location, .. } if location == bad), "{bad}: {e}");
        }
    }
}
