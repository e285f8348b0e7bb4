//! Parsing an ONNX `ModelProto` into an index of graphs, nodes and tensors.
//!
//! The parser walks the wire format directly (see [`crate::wire`]) and keeps
//! byte offsets instead of copies: a tensor's payload is a range of the mapped
//! file (or of an external data file), never a `Vec`. Fields the parser does not
//! need are skipped, not dropped: the file's bytes stay the single source of
//! truth, and writing goes through [`crate::write`], which patches them.
//!
//! This module holds [`Model`] (the index and access to tensor bytes); the parser is
//! in `parse` (`TensorProto` fields in `parse/tensor_proto`), the tensor types in
//! `tensor`, graphs and nodes in `graph`, locators in `locator`, and external data
//! (confinement, ranges, renaming) in `external`.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use onnx_protect_fsio::ReadMap;

use crate::error::{FormatError, Result};
use crate::progress::{NoProgress, Progress};
pub use crate::wire::Container;

/// Deepest nesting of graphs (main graph = depth 0) the parser accepts.
pub const MAX_GRAPH_DEPTH: usize = 64;

/// Index of a graph in [`Model::graphs`].
pub type GraphId = usize;
/// Index of a node in [`Model::nodes`].
pub type NodeId = usize;
/// Index of a tensor in [`Model::tensors`].
pub type TensorId = usize;

/// The sizes of external data files held in memory, by `location`
/// ([`Model::from_vec_in_memory`]).
type Sizes<'a> = dyn Fn(&str) -> Option<u64> + 'a;

mod external;
mod graph;
mod locator;
mod parse;
mod tensor;

pub use external::{check_location, resolve_location, ExternalFile, LocationSite};
pub use graph::{Attribute, Dim, Graph, GraphKind, Node, ValueType};
pub use locator::{Locator, Step};
use tensor::decode_varint_tensor;
pub use tensor::{encode_varint_payload, Origin, Tensor, TensorData};

/// An `opset_import` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opset {
    pub domain: String,
    pub version: i64,
}

/// A top-level `metadata_props` entry.
#[derive(Debug, Clone)]
pub struct MetadataEntry {
    pub key: String,
    pub value: String,
    /// The whole field (tag included) in the model file.
    pub range: Range<u64>,
}

/// Holds the model bytes: a read-only map of the file or an owned buffer (a small file
/// read whole, or bytes given in memory).
enum Backing {
    Mapped(ReadMap),
    Owned(Vec<u8>),
}

/// Model files up to this size are read whole rather than mapped: the map costs more
/// than the copy (its page faults, and an unmap that interrupts every core the process
/// has run on).
const READ_WHOLE_MAX: u64 = 1 << 20;

/// The whole of `file` (`len` bytes, as its metadata says) when it is small enough to read
/// rather than map; `None` otherwise. A file that is no longer `len` bytes long fails.
/// The file's offset moves (every other read of it is positional).
fn read_small(mut file: &File, len: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    if len > READ_WHOLE_MAX {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes)?;
    if bytes.len() as u64 != len {
        return Err(std::io::Error::other("the file changed size while it was read"));
    }
    Ok(Some(bytes))
}

/// A parsed ONNX model.
pub struct Model {
    backing: Backing,
    /// The open model file when the bytes are mapped or read from it.
    file: Option<File>,
    /// The file the model was read from, if any.
    pub path: Option<PathBuf>,
    /// The directory external data is resolved against.
    pub dir: Option<PathBuf>,
    pub ir_version: Option<i64>,
    pub producer_name: String,
    pub producer_version: String,
    pub domain: String,
    pub model_version: Option<i64>,
    pub opsets: Vec<Opset>,
    pub metadata: Vec<MetadataEntry>,
    pub graphs: Vec<Graph>,
    pub nodes: Vec<Node>,
    pub tensors: Vec<Tensor>,
    pub external_files: Vec<ExternalFile>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("bytes", &self.bytes().len())
            .field("graphs", &self.graphs.len())
            .field("nodes", &self.nodes.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Model {
    /// Maps `path` and parses it. External data is resolved against the file's directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Model> {
        Model::open_with_progress(path, &NoProgress)
    }

    /// [`Model::open`], reporting parse progress in bytes of the model file.
    pub fn open_with_progress(path: impl AsRef<Path>, progress: &dyn Progress) -> Result<Model> {
        let path = path.as_ref();
        let io = |e| FormatError::Io { path: path.to_path_buf(), source: e };
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(FormatError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other("not a regular file"),
            });
        }
        let backing = if meta.len() == 0 {
            Backing::Owned(Vec::new())
        } else if let Some(bytes) = read_small(&file, meta.len()).map_err(io)? {
            Backing::Owned(bytes)
        } else {
            // The file must not be truncated or written while the model is open (the
            // contract of `ReadMap`). All access goes through bounds-checked slices.
            Backing::Mapped(ReadMap::new(&file).map_err(io)?)
        };
        let dir = path.parent().map(|p| if p.as_os_str().is_empty() { PathBuf::from(".") } else { p.to_path_buf() });
        let mut model = Model::parse(backing, Some(path.to_path_buf()), dir, None, progress)?;
        if meta.len() > 0 {
            model.file = Some(file);
        }
        Ok(model)
    }

    /// Parses model bytes held in memory. `dir` is where external data lives
    /// (`None` refuses external data).
    pub fn from_vec(bytes: Vec<u8>, dir: Option<PathBuf>) -> Result<Model> {
        Model::parse(Backing::Owned(bytes), None, dir, None, &NoProgress)
    }

    /// Parses model bytes held in memory whose external data files are held in memory
    /// too (a decrypted model's): `sizes(location)` is the size of the file a `location`
    /// names (`None`: there is none). Nothing is read from disk: locations are checked
    /// ([`check_location`]) and matched by name (`./w.bin` is `w.bin`), ranges are
    /// checked against the sizes, and [`ExternalFile::bytes`] is an error; the caller
    /// holds the files' bytes.
    pub fn from_vec_in_memory(bytes: Vec<u8>, sizes: &dyn Fn(&str) -> Option<u64>) -> Result<Model> {
        Model::parse(Backing::Owned(bytes), None, None, Some(sizes), &NoProgress)
    }

    /// The open file that [`Model::bytes`] maps or was read from (`None` for models
    /// given in memory): for positional reads and in-kernel copies of the same bytes.
    pub fn source_file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// Drops this process's mapping of the whole pages inside `range` of the model
    /// file (as [`ExternalFile::release`] does for external data): they fault back in,
    /// unchanged, if read again. A no-op for models held in memory.
    pub fn release(&self, range: Range<u64>) {
        if let Backing::Mapped(m) = &self.backing {
            m.release(range);
        }
    }

    /// The model file's bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
        }
    }

    /// The element bytes of a tensor in `raw_data` layout (little-endian).
    /// Borrowed where the bytes are stored contiguously, decoded otherwise.
    pub fn tensor_bytes(&self, id: TensorId) -> Result<std::borrow::Cow<'_, [u8]>> {
        use std::borrow::Cow;
        let t = self.tensors.get(id).ok_or_else(|| FormatError::Invalid(format!("no tensor #{id}")))?;
        let buf = self.bytes();
        let slice = |r: &Range<u64>| -> Result<&[u8]> {
            buf.get(r.start as usize..r.end as usize)
                .ok_or_else(|| FormatError::Invalid(format!("tensor '{}': range {r:?} outside the model", t.name)))
        };
        match &t.data {
            TensorData::Raw { range } => Ok(Cow::Borrowed(slice(range)?)),
            TensorData::Fixed { segments, .. } => {
                if segments.len() == 1 {
                    return Ok(Cow::Borrowed(slice(&segments[0])?));
                }
                let mut out = Vec::with_capacity(t.nbytes as usize);
                for s in segments {
                    out.extend_from_slice(slice(s)?);
                }
                Ok(Cow::Owned(out))
            }
            TensorData::Varint { fields, .. } => Ok(Cow::Owned(decode_varint_tensor(buf, t, fields)?)),
            TensorData::External { file, range } => {
                let f = &self.external_files[*file];
                let b = f.bytes()?;
                Ok(Cow::Borrowed(b.get(range.start as usize..range.end as usize).ok_or_else(|| {
                    FormatError::ExternalRange {
                        tensor: t.name.clone(),
                        location: f.location.clone(),
                        reason: "file changed size".into(),
                    }
                })?))
            }
            TensorData::Strings { .. } | TensorData::Empty => Ok(Cow::Borrowed(&[])),
        }
    }

    /// Finds a tensor by its structural locator.
    pub fn tensor_by_locator(&self, loc: &Locator) -> Option<&Tensor> {
        self.tensors.iter().find(|t| &t.locator == loc)
    }

    /// Whether `t` belongs to the main graph (`ModelProto.graph`), not to a subgraph (an
    /// `If` branch, a `Loop` body), a function body or a training graph.
    pub fn in_main_graph(&self, t: &Tensor) -> bool {
        self.graphs.get(t.graph).is_some_and(|g| g.kind == GraphKind::Main)
    }

    /// The top-level metadata value for `key`, if present (the last one wins, as in protobuf maps).
    pub fn metadata_value(&self, key: &str) -> Option<&MetadataEntry> {
        self.metadata.iter().rev().find(|m| m.key == key)
    }
    /// Refuses a name given twice in one graph (initializers, sparse initializers and node
    /// outputs), reporting the first repetition in the file's order. Names are sorted, not
    /// hashed: what the file says decides no hash table's work.
    fn check_duplicates(&self) -> Result<()> {
        for g in &self.graphs {
            let initializers = g.initializers.iter().map(|&t| (self.tensors[t].name.as_str(), "initializer"));
            let sparse =
                g.sparse_initializers.iter().map(|&(v, _)| (self.tensors[v].name.as_str(), "sparse initializer"));
            let outputs =
                g.nodes.iter().flat_map(|&n| self.nodes[n].outputs.iter().map(|o| (o.as_str(), "node output")));
            // (name, place in the file's order, what it names), sorted by name then place.
            let mut names: Vec<(&str, usize, &'static str)> = initializers
                .chain(sparse)
                .chain(outputs)
                .enumerate()
                .filter(|(_, (name, _))| !name.is_empty())
                .map(|(i, (name, what))| (name, i, what))
                .collect();
            names.sort_unstable();
            // Within a run of one name, the second is its first repetition in the file's order.
            let first = names.windows(2).filter(|w| w[0].0 == w[1].0).map(|w| w[1]).min_by_key(|r| r.1);
            if let Some((name, _, what)) = first {
                return Err(FormatError::DuplicateName { name: name.to_string(), graph: g.path.clone(), what });
            }
        }
        Ok(())
    }
}
