//! Parsing an ONNX `ModelProto` into an index of graphs, nodes and tensors.
//!
//! The parser walks the wire format directly (see [`crate::wire`]) and keeps
//! byte offsets instead of copies: a tensor's payload is a range of the mapped
//! file (or of an external data file), never a `Vec`. Fields the parser does not
//! need are skipped, not dropped: the file's bytes stay the single source of
//! truth, and writing goes through [`crate::write`], which patches them.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use onnx_protect_fsio::ReadMap;

use crate::dtype::{DataType, TypedField};
use crate::error::{FormatError, Result};
use crate::progress::{NoProgress, Progress};
pub use crate::wire::Container;
use crate::wire::{self, Field, FieldReader, WireError, WireType};

/// Deepest nesting of graphs (main graph = depth 0) the parser accepts.
pub const MAX_GRAPH_DEPTH: usize = 64;

/// Index of a graph in [`Model::graphs`].
pub type GraphId = usize;
/// Index of a node in [`Model::nodes`].
pub type NodeId = usize;
/// Index of a tensor in [`Model::tensors`].
pub type TensorId = usize;

/// One step of a [`Locator`]: the `index`-th occurrence of field `field` in the parent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Step {
    pub field: u32,
    pub index: u32,
}

/// The structural path from the top-level `ModelProto` to a `TensorProto`,
/// independent of names (which may repeat across scopes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Locator(pub Vec<Step>);

impl std::fmt::Display for Locator {
    /// `field.index` steps joined by `/`, e.g. `7.0/5.3` (initializer 3 of the main graph).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write!(f, "{}.{}", s.field, s.index)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Locator {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.is_empty() {
            return Err("empty locator".into());
        }
        let mut steps = Vec::new();
        for part in s.split('/') {
            let (a, b) = part.split_once('.').ok_or_else(|| format!("locator step '{part}' is not FIELD.INDEX"))?;
            let field = locator_number(a).ok_or_else(|| format!("locator step '{part}' has a bad field number"))?;
            let index = locator_number(b).ok_or_else(|| format!("locator step '{part}' has a bad index"))?;
            steps.push(Step { field, index });
        }
        if steps.len() > 4 * MAX_GRAPH_DEPTH + 8 {
            return Err("locator is too long".into());
        }
        Ok(Locator(steps))
    }
}

/// A number of a locator step as [`Locator`]'s `Display` writes it: decimal digits only,
/// no leading zero (but `0` itself), no sign; `None` for anything else.
fn locator_number(s: &str) -> Option<u32> {
    let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// What kind of graph a [`Graph`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphKind {
    /// `ModelProto.graph`.
    Main,
    /// A graph-valued attribute of a node (`If` branches, `Loop`/`Scan` bodies, ...).
    Subgraph { node: NodeId, attribute: String },
    /// The body of a model-local `FunctionProto`.
    Function { domain: String, name: String },
    /// `TrainingInfoProto.initialization` or `.algorithm`.
    Training { index: usize, part: &'static str },
}

/// A graph (or function body) and what it defines.
#[derive(Debug, Clone)]
pub struct Graph {
    pub id: GraphId,
    /// The graph whose names are visible inside this one.
    pub parent: Option<GraphId>,
    pub kind: GraphKind,
    pub name: String,
    /// Human-readable path, e.g. `main/If_0.then_branch`.
    pub path: String,
    pub depth: usize,
    pub nodes: Vec<NodeId>,
    pub initializers: Vec<TensorId>,
    /// `(values, indices)` tensors of each sparse initializer.
    pub sparse_initializers: Vec<(TensorId, Option<TensorId>)>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// The declared type of each of `inputs` and `outputs` (graphs; empty for functions).
    pub input_types: Vec<ValueType>,
    pub output_types: Vec<ValueType>,
}

/// The declared type of a graph input or output (`ValueInfoProto.type`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ValueType {
    /// No type given.
    #[default]
    Unknown,
    /// A tensor: element type code and, if given, the shape (`None` dims: unnamed).
    Tensor { elem_type: i32, shape: Option<Vec<Dim>> },
    /// A sequence, map, optional or sparse tensor (`TypeProto` field number).
    Other(u32),
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Value(i64),
    Param(String),
    Unknown,
}

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueType::Unknown => write!(f, "?"),
            ValueType::Other(4) => write!(f, "sequence"),
            ValueType::Other(5) => write!(f, "map"),
            ValueType::Other(8) => write!(f, "sparse tensor"),
            ValueType::Other(9) => write!(f, "optional"),
            ValueType::Other(n) => write!(f, "type #{n}"),
            ValueType::Tensor { elem_type, shape } => {
                match crate::DataType::from_i32(*elem_type) {
                    Some(t) => write!(f, "{}", t.name())?,
                    None => write!(f, "type {elem_type}")?,
                }
                if let Some(dims) = shape {
                    let d: Vec<String> = dims
                        .iter()
                        .map(|d| match d {
                            Dim::Value(v) => v.to_string(),
                            Dim::Param(p) => p.clone(),
                            Dim::Unknown => "?".into(),
                        })
                        .collect();
                    write!(f, "[{}]", d.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

/// A node attribute that holds tensors or graphs (other attributes are not indexed).
#[derive(Debug, Clone)]
pub struct Attribute {
    pub name: String,
    pub tensors: Vec<TensorId>,
    pub graphs: Vec<GraphId>,
}

/// A node of some graph.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: NodeId,
    pub graph: GraphId,
    pub name: String,
    pub op_type: String,
    pub domain: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute>,
}

impl Node {
    /// Whether the node belongs to the default ONNX domain.
    pub fn is_onnx(&self) -> bool {
        self.domain.is_empty() || self.domain == "ai.onnx"
    }
    /// A label for messages: the node name, or `#index` when it has none.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            format!("#{} ({})", self.id, self.op_type)
        } else {
            format!("{} ({})", self.name, self.op_type)
        }
    }
}

/// Where a tensor sits in the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Initializer,
    SparseValues,
    SparseIndices,
    /// A tensor-valued attribute of a node (`Constant.value` among others).
    Attribute {
        node: NodeId,
        attribute: String,
    },
}

impl Origin {
    /// Stable short name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Origin::Initializer => "initializer",
            Origin::SparseValues => "sparse_values",
            Origin::SparseIndices => "sparse_indices",
            Origin::Attribute { .. } => "attribute",
        }
    }
}

/// Where a tensor's element bytes are stored.
#[derive(Debug, Clone)]
pub enum TensorData {
    /// `raw_data`: the element bytes are `range` of the model file.
    Raw { range: Range<u64> },
    /// `float_data` or `double_data`: little-endian values in one or more file
    /// ranges whose concatenation is the `raw_data` layout.
    Fixed { field: TypedField, segments: Vec<Range<u64>> },
    /// `int32_data`, `int64_data` or `uint64_data`: varints. `fields` are the whole
    /// field occurrences (tag included). `canonical` is true when re-encoding the
    /// decoded values as one packed field gives back exactly the stored bytes.
    Varint { field: TypedField, fields: Vec<Range<u64>>, count: u64, canonical: bool },
    /// External data: `range` of the side file [`Model::external_files`]`[file]`.
    External { file: usize, range: Range<u64> },
    /// `string_data` (not weights).
    Strings { count: u64 },
    /// No data at all (a tensor with zero elements).
    Empty,
}

impl TensorData {
    /// Stable short name of the storage kind.
    pub fn storage_name(&self) -> &'static str {
        match self {
            TensorData::Raw { .. } => "raw_data",
            TensorData::Fixed { field, .. } | TensorData::Varint { field, .. } => field.name(),
            TensorData::External { .. } => "external",
            TensorData::Strings { .. } => "string_data",
            TensorData::Empty => "empty",
        }
    }
}

/// One `TensorProto` found anywhere in the model.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub id: TensorId,
    pub name: String,
    pub data_type: DataType,
    pub dims: Vec<u64>,
    pub numel: u64,
    /// Length of the element bytes in `raw_data` layout.
    pub nbytes: u64,
    pub origin: Origin,
    /// The graph whose scope the tensor belongs to.
    pub graph: GraphId,
    pub locator: Locator,
    /// Enclosing length-delimited fields, outermost first; the last one is the
    /// `TensorProto` field itself.
    pub ancestors: Vec<Container>,
    pub data: TensorData,
}

impl Tensor {
    /// Maps the logical byte range `[a, b)` of the element bytes to ranges of the
    /// file that holds them (the model, or the external file): `(file range, logical
    /// start)` pieces in order. Empty for varint, string and empty storage, whose
    /// element bytes are not stored as such.
    pub fn file_pieces(&self, a: u64, b: u64) -> Vec<(Range<u64>, u64)> {
        match &self.data {
            TensorData::Raw { range } | TensorData::External { range, .. } => {
                vec![(range.start + a..range.start + b, a)]
            }
            TensorData::Fixed { segments, .. } => {
                let mut out = Vec::new();
                let mut logical = 0u64;
                for s in segments {
                    let len = s.end - s.start;
                    let (lo, hi) = (logical.max(a), (logical + len).min(b));
                    if lo < hi {
                        out.push((s.start + (lo - logical)..s.start + (hi - logical), lo));
                    }
                    logical += len;
                }
                out
            }
            _ => Vec::new(),
        }
    }

    /// Edits that store `bytes` (new element bytes, `raw_data` layout) into a
    /// varint-stored tensor: one packed field replaces the first occurrence, the
    /// others are removed, and enclosing length prefixes follow. Empty for other storage.
    pub fn varint_edits(&self, bytes: &[u8]) -> Vec<crate::write::Edit> {
        let TensorData::Varint { field, fields, .. } = &self.data else { return Vec::new() };
        let payload = encode_varint_payload(self.data_type, *field, bytes);
        let mut full = Vec::with_capacity(payload.len() + 12);
        wire::put_len_field(&mut full, field.number(), &payload);
        fields
            .iter()
            .enumerate()
            .map(|(i, r)| crate::write::Edit {
                range: r.clone(),
                content: crate::write::Content::Bytes(if i == 0 { std::mem::take(&mut full) } else { Vec::new() }),
                ancestors: self.ancestors.clone(),
            })
            .collect()
    }
}

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

/// An external data file referenced by at least one tensor.
#[derive(Debug)]
pub struct ExternalFile {
    /// The `location` string as written in the model.
    pub location: String,
    /// The resolved path (inside the model's directory).
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

/// Holds the model bytes: a read-only map of the file or an owned buffer.
enum Backing {
    Mapped(ReadMap),
    Owned(Vec<u8>),
}

/// A parsed ONNX model.
pub struct Model {
    backing: Backing,
    /// The open model file when the bytes are mapped from it.
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
        } else {
            // The file must not be truncated or written while the model is open (the
            // contract of `ReadMap`). All access goes through bounds-checked slices.
            Backing::Mapped(ReadMap::new(&file).map_err(io)?)
        };
        let dir = path.parent().map(|p| if p.as_os_str().is_empty() { PathBuf::from(".") } else { p.to_path_buf() });
        let mut model = Model::parse(backing, Some(path.to_path_buf()), dir, progress)?;
        if matches!(model.backing, Backing::Mapped(_)) {
            model.file = Some(file);
        }
        Ok(model)
    }

    /// Parses model bytes held in memory. `dir` is where external data lives
    /// (`None` refuses external data).
    pub fn from_vec(bytes: Vec<u8>, dir: Option<PathBuf>) -> Result<Model> {
        Model::parse(Backing::Owned(bytes), None, dir, &NoProgress)
    }

    /// The open file that [`Model::bytes`] maps (`None` for models held in memory):
    /// for positional reads and in-kernel copies of the same bytes.
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

    fn parse(backing: Backing, path: Option<PathBuf>, dir: Option<PathBuf>, progress: &dyn Progress) -> Result<Model> {
        let mut model = Model {
            backing,
            file: None,
            path,
            dir,
            ir_version: None,
            producer_name: String::new(),
            producer_version: String::new(),
            domain: String::new(),
            model_version: None,
            opsets: Vec::new(),
            metadata: Vec::new(),
            graphs: Vec::new(),
            nodes: Vec::new(),
            tensors: Vec::new(),
            external_files: Vec::new(),
        };
        let mut header = Header::default();
        let mut p = Parser {
            buf: match &model.backing {
                Backing::Mapped(m) => &m[..],
                Backing::Owned(v) => &v[..],
            },
            graphs: Vec::new(),
            nodes: Vec::new(),
            tensors: Vec::new(),
            pending_external: Vec::new(),
            progress,
        };
        progress.start("parse", p.buf.len() as u64);
        let top = p.parse_model(&mut header).map_err(|e| crate::sniff::explain(p.buf, e))?;
        progress.finish();
        let Parser { graphs, nodes, tensors, pending_external, .. } = p;
        model.ir_version = header.ir_version;
        model.producer_name = header.producer_name;
        model.producer_version = header.producer_version;
        model.domain = header.domain;
        model.model_version = header.model_version;
        model.opsets = header.opsets;
        model.metadata = header.metadata;
        model.graphs = graphs;
        model.nodes = nodes;
        model.tensors = tensors;
        if !top {
            return Err(crate::sniff::explain(model.bytes(), FormatError::NoGraph));
        }
        model.resolve_external(pending_external)?;
        model.check_duplicates()?;
        Ok(model)
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

    /// The top-level metadata value for `key`, if present (the last one wins, as in protobuf maps).
    pub fn metadata_value(&self, key: &str) -> Option<&MetadataEntry> {
        self.metadata.iter().rev().find(|m| m.key == key)
    }

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

    fn resolve_external(&mut self, pending: Vec<PendingExternal>) -> Result<()> {
        let mut by_path: HashMap<PathBuf, usize> = HashMap::new();
        // The model file itself, as external data paths are resolved (canonical).
        let model_file = match (&self.path, pending.is_empty()) {
            (Some(p), false) => std::fs::canonicalize(p).ok(),
            _ => None,
        };
        for pe in pending {
            let tensor_name = self.tensors[pe.tensor].name.clone();
            let Some(dir) = self.dir.clone() else {
                return Err(FormatError::ExternalWithoutDir { tensor: tensor_name, location: pe.location });
            };
            let path = resolve_location(&dir, &pe.location, &tensor_name)?;
            if model_file.as_ref() == Some(&path) {
                // Its bytes would be read as weights, and writing the side file next to
                // an output would overwrite the output model.
                return Err(FormatError::ExternalPath {
                    tensor: tensor_name,
                    location: pe.location,
                    reason: "it names the model file itself".into(),
                });
            }
            let idx = match by_path.get(&path) {
                Some(&i) => i,
                None => {
                    let meta =
                        std::fs::metadata(&path).map_err(|e| FormatError::Io { path: path.clone(), source: e })?;
                    self.external_files.push(ExternalFile {
                        location: pe.location.clone(),
                        path: path.clone(),
                        size: meta.len(),
                        tensors: Vec::new(),
                        sites: Vec::new(),
                        map: OnceLock::new(),
                    });
                    by_path.insert(path, self.external_files.len() - 1);
                    self.external_files.len() - 1
                }
            };
            let file = &mut self.external_files[idx];
            let t = &mut self.tensors[pe.tensor];
            let range_err = |reason: String| FormatError::ExternalRange {
                tensor: t.name.clone(),
                location: pe.location.clone(),
                reason,
            };
            let offset = match &pe.offset {
                None => 0,
                Some(s) => {
                    parse_decimal(s).ok_or_else(|| range_err(format!("offset '{s}' is not a non-negative integer")))?
                }
            };
            let length = match &pe.length {
                None => file.size.checked_sub(offset).ok_or_else(|| {
                    range_err(format!("offset {offset} is past the end of the {}-byte file", file.size))
                })?,
                Some(s) => {
                    parse_decimal(s).ok_or_else(|| range_err(format!("length '{s}' is not a non-negative integer")))?
                }
            };
            let end = offset.checked_add(length).ok_or_else(|| range_err("offset + length overflows".into()))?;
            if end > file.size {
                return Err(range_err(format!(
                    "bytes [{offset}, {end}) are past the end of the {}-byte file",
                    file.size
                )));
            }
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
            t.data = TensorData::External { file: idx, range: offset..end };
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

    fn check_duplicates(&self) -> Result<()> {
        for g in &self.graphs {
            let mut seen: HashMap<&str, &'static str> = HashMap::new();
            let mut names: Vec<(&str, &'static str)> = Vec::new();
            names.extend(g.initializers.iter().map(|&t| (self.tensors[t].name.as_str(), "initializer")));
            names.extend(
                g.sparse_initializers.iter().map(|&(v, _)| (self.tensors[v].name.as_str(), "sparse initializer")),
            );
            for &n in &g.nodes {
                names.extend(self.nodes[n].outputs.iter().map(|o| (o.as_str(), "node output")));
            }
            for (name, what) in names {
                if !name.is_empty() && seen.insert(name, what).is_some() {
                    return Err(FormatError::DuplicateName { name: name.to_string(), graph: g.path.clone(), what });
                }
            }
        }
        Ok(())
    }
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Why `location` cannot name a file inside the model's directory, judged from the
/// string alone (docs/format.md §5): empty, a NUL byte, absolute, a drive letter, or a
/// `..` or root component. Symbolic links are [`resolve_location`]'s part.
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
    Ok(())
}

/// Resolves an external-data `location` inside `dir`, refusing absolute paths,
/// `..` components and symlinks that lead outside `dir`.
pub fn resolve_location(dir: &Path, location: &str, tensor: &str) -> Result<PathBuf> {
    let refuse = |reason: &str| FormatError::ExternalPath {
        tensor: tensor.to_string(),
        location: location.to_string(),
        reason: reason.to_string(),
    };
    check_location(location).map_err(refuse)?;
    let rel = Path::new(location);
    let joined = dir.join(rel);
    let canon_dir = dir.canonicalize().map_err(|e| FormatError::Io { path: dir.to_path_buf(), source: e })?;
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
    if !canon.starts_with(&canon_dir) {
        return Err(refuse("it resolves (through a symlink) to a file outside the model's directory"));
    }
    let meta = std::fs::metadata(&canon).map_err(|e| FormatError::Io { path: canon.clone(), source: e })?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file"));
    }
    Ok(canon)
}

/// Decodes a varint-stored tensor into `raw_data` layout.
pub(crate) fn decode_varint_tensor(buf: &[u8], t: &Tensor, fields: &[Range<u64>]) -> Result<Vec<u8>> {
    let width = t.data_type.bytes_per_typed_value() as usize;
    let mut out = Vec::with_capacity(t.nbytes as usize);
    for r in fields {
        let mut reader = FieldReader::new(buf, r.clone()).map_err(|e| wire_err(e, &t.name))?;
        while let Some(f) = reader.next_field().map_err(|e| wire_err(e, &t.name))? {
            let mut push = |v: u64| out.extend_from_slice(&v.to_le_bytes()[..width]);
            match f.wire {
                WireType::Varint => push(f.scalar),
                WireType::Len => {
                    wire::for_each_packed_varint(buf, f.value_range(), push).map_err(|e| wire_err(e, &t.name))?
                }
                _ => {}
            }
        }
    }
    // Sub-byte types: the last byte may be padding beyond nbytes only if counts disagree,
    // which parsing already rejected.
    out.truncate(t.nbytes as usize);
    Ok(out)
}

/// Encodes `raw_data`-layout bytes as the payload of a packed varint field
/// (without tag and length), following the ONNX typed-field rules for `dtype`.
pub fn encode_varint_payload(dtype: DataType, field: TypedField, bytes: &[u8]) -> Vec<u8> {
    let width = dtype.bytes_per_typed_value() as usize;
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for chunk in bytes.chunks(width.max(1)) {
        let mut le = [0u8; 8];
        le[..chunk.len()].copy_from_slice(chunk);
        let raw = u64::from_le_bytes(le);
        let v = if dtype.is_signed_int() && width < 8 {
            // Sign-extend from the element width, then encode as int32/int64 does (64-bit two's complement).
            let shift = 64 - 8 * width as u32;
            (((raw << shift) as i64) >> shift) as u64
        } else {
            raw
        };
        let _ = field;
        wire::put_varint(&mut out, v);
    }
    out
}

fn wire_err(e: WireError, context: &str) -> FormatError {
    match e {
        WireError::Truncated { at } => FormatError::Truncated { at, context: context.to_string() },
        WireError::Malformed { at, reason } => {
            FormatError::Malformed { at, context: context.to_string(), reason: reason.to_string() }
        }
    }
}

#[derive(Default)]
struct Header {
    ir_version: Option<i64>,
    producer_name: String,
    producer_version: String,
    domain: String,
    model_version: Option<i64>,
    opsets: Vec<Opset>,
    metadata: Vec<MetadataEntry>,
}

struct PendingExternal {
    tensor: TensorId,
    location: String,
    offset: Option<String>,
    length: Option<String>,
    /// The `external_data` entry holding the location, and its `value` field.
    site: Option<(Container, Range<u64>)>,
}

struct Parser<'a> {
    buf: &'a [u8],
    progress: &'a dyn Progress,
    graphs: Vec<Graph>,
    nodes: Vec<Node>,
    tensors: Vec<Tensor>,
    pending_external: Vec<PendingExternal>,
}

/// Per-field occurrence counter used to build locators.
#[derive(Default)]
struct Occurrences(HashMap<u32, u32>);

impl Occurrences {
    fn next(&mut self, field: u32) -> u32 {
        let c = self.0.entry(field).or_insert(0);
        let v = *c;
        *c += 1;
        v
    }
}

/// Where we are, for locators, length-prefix rewriting and error messages.
#[derive(Clone)]
struct Path2 {
    steps: Vec<Step>,
    ancestors: Vec<Container>,
    context: String,
}

impl Path2 {
    fn child(&self, f: &Field, index: u32, context: String) -> Path2 {
        let mut steps = self.steps.clone();
        steps.push(Step { field: f.number, index });
        let mut ancestors = self.ancestors.clone();
        ancestors.push(Container::from(f));
        Path2 { steps, ancestors, context }
    }
}

impl<'a> Parser<'a> {
    fn reader(&self, range: Range<u64>, ctx: &str) -> Result<FieldReader<'a>> {
        FieldReader::new(self.buf, range).map_err(|e| wire_err(e, ctx))
    }

    fn next(&self, r: &mut FieldReader<'a>, ctx: &str) -> Result<Option<Field>> {
        r.next_field().map_err(|e| wire_err(e, ctx))
    }

    fn string(&self, f: &Field, ctx: &str, what: &str) -> Result<String> {
        self.expect(f, WireType::Len, ctx, what)?;
        let bytes = &self.buf[f.value_start as usize..f.end as usize];
        std::str::from_utf8(bytes).map(str::to_string).map_err(|_| FormatError::Malformed {
            at: f.value_start,
            context: ctx.to_string(),
            reason: format!("{what} is not valid UTF-8"),
        })
    }

    fn expect(&self, f: &Field, wire: WireType, ctx: &str, what: &str) -> Result<()> {
        if f.wire != wire {
            return Err(FormatError::Malformed {
                at: f.start,
                context: ctx.to_string(),
                reason: format!("{what} (field {}) has wire type {:?}, expected {:?}", f.number, f.wire, wire),
            });
        }
        Ok(())
    }

    fn varint_field(&self, f: &Field, ctx: &str, what: &str) -> Result<u64> {
        self.expect(f, WireType::Varint, ctx, what)?;
        Ok(f.scalar)
    }

    /// Returns whether a graph was found.
    fn parse_model(&mut self, model: &mut Header) -> Result<bool> {
        let ctx = "ModelProto";
        let mut r = self.reader(0..self.buf.len() as u64, ctx)?;
        let root = Path2 { steps: Vec::new(), ancestors: Vec::new(), context: "model".into() };
        let mut occ = Occurrences::default();
        let mut graph_field: Option<(Field, u32)> = None;
        let mut functions = Vec::new();
        let mut training = Vec::new();
        while let Some(f) = self.next(&mut r, ctx)? {
            let idx = occ.next(f.number);
            match f.number {
                1 => model.ir_version = Some(self.varint_field(&f, ctx, "ir_version")? as i64),
                2 => model.producer_name = self.string(&f, ctx, "producer_name")?,
                3 => model.producer_version = self.string(&f, ctx, "producer_version")?,
                4 => model.domain = self.string(&f, ctx, "domain")?,
                5 => model.model_version = Some(self.varint_field(&f, ctx, "model_version")? as i64),
                7 => {
                    self.expect(&f, WireType::Len, ctx, "graph")?;
                    if graph_field.is_some() {
                        return Err(FormatError::Malformed {
                            at: f.start,
                            context: ctx.into(),
                            reason: "the graph field appears twice".into(),
                        });
                    }
                    graph_field = Some((f, idx));
                }
                8 => {
                    self.expect(&f, WireType::Len, ctx, "opset_import")?;
                    let mut op = Opset { domain: String::new(), version: 0 };
                    let c = "ModelProto.opset_import";
                    let mut rr = self.reader(f.value_range(), c)?;
                    while let Some(g) = self.next(&mut rr, c)? {
                        match g.number {
                            1 => op.domain = self.string(&g, c, "domain")?,
                            2 => op.version = self.varint_field(&g, c, "version")? as i64,
                            _ => {}
                        }
                    }
                    model.opsets.push(op);
                }
                14 => {
                    self.expect(&f, WireType::Len, ctx, "metadata_props")?;
                    let (key, value) = self.string_pair(&f, "ModelProto.metadata_props")?;
                    model.metadata.push(MetadataEntry { key, value, range: f.range() });
                }
                20 => {
                    self.expect(&f, WireType::Len, ctx, "training_info")?;
                    training.push((f, idx));
                }
                25 => {
                    self.expect(&f, WireType::Len, ctx, "functions")?;
                    functions.push((f, idx));
                }
                _ => {}
            }
        }
        let Some((gf, gidx)) = graph_field else {
            return Ok(false);
        };
        let path = root.child(&gf, gidx, "graph main".into());
        self.parse_graph(&gf, &path, None, GraphKind::Main, 0, "main".into())?;
        let main = 0;
        for (f, idx) in functions {
            self.parse_function(&f, &root.child(&f, idx, format!("function #{idx}")), idx)?;
        }
        for (n, (f, idx)) in training.into_iter().enumerate() {
            let tpath = root.child(&f, idx, format!("training_info #{n}"));
            let c = "TrainingInfoProto";
            let mut rr = self.reader(f.value_range(), c)?;
            let mut occ2 = Occurrences::default();
            while let Some(g) = self.next(&mut rr, c)? {
                let i2 = occ2.next(g.number);
                let part = match g.number {
                    1 => "initialization",
                    2 => "algorithm",
                    _ => continue,
                };
                self.expect(&g, WireType::Len, c, part)?;
                let p = tpath.child(&g, i2, format!("training_info #{n} {part}"));
                self.parse_graph(
                    &g,
                    &p,
                    Some(main),
                    GraphKind::Training { index: n, part },
                    1,
                    format!("training{n}.{part}"),
                )?;
            }
        }
        Ok(true)
    }

    fn string_pair(&self, f: &Field, ctx: &str) -> Result<(String, String)> {
        self.string_pair_at(f, ctx).map(|(k, v, _)| (k, v))
    }

    /// A `StringStringEntryProto`: key, value, and the range of the (last) `value` field.
    fn string_pair_at(&self, f: &Field, ctx: &str) -> Result<(String, String, Option<Range<u64>>)> {
        let mut key = String::new();
        let mut value = String::new();
        let mut at = None;
        let mut rr = self.reader(f.value_range(), ctx)?;
        while let Some(g) = self.next(&mut rr, ctx)? {
            match g.number {
                1 => key = self.string(&g, ctx, "key")?,
                2 => {
                    value = self.string(&g, ctx, "value")?;
                    at = Some(g.range());
                }
                _ => {}
            }
        }
        Ok((key, value, at))
    }

    fn new_graph(&mut self, parent: Option<GraphId>, kind: GraphKind, depth: usize, path: String) -> GraphId {
        let id = self.graphs.len();
        self.graphs.push(Graph {
            id,
            parent,
            kind,
            name: String::new(),
            path,
            depth,
            nodes: Vec::new(),
            initializers: Vec::new(),
            sparse_initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            input_types: Vec::new(),
            output_types: Vec::new(),
        });
        id
    }

    /// `ValueInfoProto.type` (`TypeProto`): a tensor's element type and shape. Fields
    /// of the wrong wire type are left out (the type is informational).
    fn value_type(&self, f: &Field, ctx: &str) -> Result<ValueType> {
        let mut out = ValueType::Unknown;
        let mut rr = self.reader(f.value_range(), ctx)?;
        while let Some(g) = self.next(&mut rr, ctx)? {
            match (g.number, g.wire) {
                (1, WireType::Len) => {
                    let (mut elem_type, mut shape) = (0i32, None);
                    let mut r2 = self.reader(g.value_range(), ctx)?;
                    while let Some(h) = self.next(&mut r2, ctx)? {
                        match (h.number, h.wire) {
                            (1, WireType::Varint) => elem_type = h.scalar as i32,
                            (2, WireType::Len) => shape = Some(self.shape(&h, ctx)?),
                            _ => {}
                        }
                    }
                    out = ValueType::Tensor { elem_type, shape };
                }
                (n @ (4 | 5 | 8 | 9), WireType::Len) => out = ValueType::Other(n),
                _ => {}
            }
        }
        Ok(out)
    }

    /// `TensorShapeProto`: its dimensions.
    fn shape(&self, f: &Field, ctx: &str) -> Result<Vec<Dim>> {
        let mut dims = Vec::new();
        let mut rr = self.reader(f.value_range(), ctx)?;
        while let Some(g) = self.next(&mut rr, ctx)? {
            if (g.number, g.wire) != (1, WireType::Len) {
                continue;
            }
            let mut d = Dim::Unknown;
            let mut r2 = self.reader(g.value_range(), ctx)?;
            while let Some(h) = self.next(&mut r2, ctx)? {
                match (h.number, h.wire) {
                    (1, WireType::Varint) => d = Dim::Value(h.scalar as i64),
                    (2, WireType::Len) => d = Dim::Param(self.string(&h, ctx, "dim_param")?),
                    _ => {}
                }
            }
            dims.push(d);
        }
        Ok(dims)
    }

    fn parse_function(&mut self, f: &Field, path: &Path2, idx: u32) -> Result<()> {
        let ctx = format!("function #{idx}");
        // First pass for the name, so the graph path reads well.
        let mut name = String::new();
        let mut domain = String::new();
        let mut rr = self.reader(f.value_range(), &ctx)?;
        while let Some(g) = self.next(&mut rr, &ctx)? {
            match g.number {
                1 => name = self.string(&g, &ctx, "name")?,
                10 => domain = self.string(&g, &ctx, "domain")?,
                _ => {}
            }
        }
        let gid = self.new_graph(None, GraphKind::Function { domain: domain.clone(), name: name.clone() }, 0, {
            if domain.is_empty() {
                format!("function:{name}")
            } else {
                format!("function:{domain}.{name}")
            }
        });
        self.graphs[gid].name = name;
        let mut occ = Occurrences::default();
        let mut rr = self.reader(f.value_range(), &ctx)?;
        while let Some(g) = self.next(&mut rr, &ctx)? {
            let i = occ.next(g.number);
            match g.number {
                4 => {
                    let s = self.string(&g, &ctx, "input")?;
                    self.graphs[gid].inputs.push(s);
                }
                5 => {
                    let s = self.string(&g, &ctx, "output")?;
                    self.graphs[gid].outputs.push(s);
                }
                7 => {
                    self.expect(&g, WireType::Len, &ctx, "node")?;
                    let p = path.child(&g, i, format!("{ctx} node #{i}"));
                    self.parse_node(&g, &p, gid, 0)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn parse_graph(
        &mut self,
        f: &Field,
        path: &Path2,
        parent: Option<GraphId>,
        kind: GraphKind,
        depth: usize,
        gpath: String,
    ) -> Result<GraphId> {
        if depth > MAX_GRAPH_DEPTH {
            return Err(FormatError::TooDeep { limit: MAX_GRAPH_DEPTH, context: path.context.clone() });
        }
        let gid = self.new_graph(parent, kind, depth, gpath.clone());
        let ctx = format!("graph {gpath}");
        let mut occ = Occurrences::default();
        let mut rr = self.reader(f.value_range(), &ctx)?;
        while let Some(g) = self.next(&mut rr, &ctx)? {
            let i = occ.next(g.number);
            match g.number {
                1 => {
                    self.expect(&g, WireType::Len, &ctx, "node")?;
                    let p = path.child(&g, i, format!("{ctx} node #{i}"));
                    self.parse_node(&g, &p, gid, depth)?;
                }
                2 => {
                    let s = self.string(&g, &ctx, "name")?;
                    self.graphs[gid].name = s;
                }
                5 => {
                    self.expect(&g, WireType::Len, &ctx, "initializer")?;
                    let p = path.child(&g, i, format!("{ctx} initializer #{i}"));
                    let t = self.parse_tensor(&g, &p, gid, Origin::Initializer)?;
                    self.graphs[gid].initializers.push(t);
                }
                15 => {
                    self.expect(&g, WireType::Len, &ctx, "sparse_initializer")?;
                    let p = path.child(&g, i, format!("{ctx} sparse_initializer #{i}"));
                    let pair = self.parse_sparse(&g, &p, gid, None)?;
                    self.graphs[gid].sparse_initializers.push(pair);
                }
                11 | 12 => {
                    self.expect(&g, WireType::Len, &ctx, "value info")?;
                    let mut name = String::new();
                    let mut ty = ValueType::Unknown;
                    let mut r3 = self.reader(g.value_range(), &ctx)?;
                    while let Some(h) = self.next(&mut r3, &ctx)? {
                        if h.number == 1 {
                            name = self.string(&h, &ctx, "value info name")?;
                        } else if h.number == 2 && h.wire == WireType::Len {
                            ty = self.value_type(&h, &ctx)?;
                        }
                    }
                    let graph = &mut self.graphs[gid];
                    if g.number == 11 {
                        graph.inputs.push(name);
                        graph.input_types.push(ty);
                    } else {
                        graph.outputs.push(name);
                        graph.output_types.push(ty);
                    }
                }
                _ => {}
            }
        }
        Ok(gid)
    }

    fn parse_sparse(
        &mut self,
        f: &Field,
        path: &Path2,
        gid: GraphId,
        attr: Option<(NodeId, &str)>,
    ) -> Result<(TensorId, Option<TensorId>)> {
        let ctx = path.context.clone();
        let mut values = None;
        let mut indices = None;
        let mut occ = Occurrences::default();
        let mut rr = self.reader(f.value_range(), &ctx)?;
        while let Some(g) = self.next(&mut rr, &ctx)? {
            let i = occ.next(g.number);
            match g.number {
                1 | 2 => {
                    self.expect(&g, WireType::Len, &ctx, "sparse tensor part")?;
                    let (origin, what) = if g.number == 1 {
                        (Origin::SparseValues, "values")
                    } else {
                        (Origin::SparseIndices, "indices")
                    };
                    let origin = match attr {
                        Some((node, name)) => Origin::Attribute { node, attribute: format!("{name}.{what}") },
                        None => origin,
                    };
                    let p = path.child(&g, i, format!("{ctx} {what}"));
                    let t = self.parse_tensor(&g, &p, gid, origin)?;
                    if g.number == 1 {
                        values = Some(t);
                    } else {
                        indices = Some(t);
                    }
                }
                _ => {}
            }
        }
        let values = values.ok_or_else(|| FormatError::Malformed {
            at: f.start,
            context: ctx.clone(),
            reason: "sparse tensor has no values".into(),
        })?;
        Ok((values, indices))
    }

    fn parse_node(&mut self, f: &Field, path: &Path2, gid: GraphId, depth: usize) -> Result<()> {
        let nid = self.nodes.len();
        self.nodes.push(Node {
            id: nid,
            graph: gid,
            name: String::new(),
            op_type: String::new(),
            domain: String::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            attributes: Vec::new(),
        });
        self.graphs[gid].nodes.push(nid);
        let ctx0 = path.context.clone();
        // First pass: identity, for readable contexts below.
        let mut rr = self.reader(f.value_range(), &ctx0)?;
        while let Some(g) = self.next(&mut rr, &ctx0)? {
            match g.number {
                1 => {
                    let s = self.string(&g, &ctx0, "input")?;
                    self.nodes[nid].inputs.push(s);
                }
                2 => {
                    let s = self.string(&g, &ctx0, "output")?;
                    self.nodes[nid].outputs.push(s);
                }
                3 => self.nodes[nid].name = self.string(&g, &ctx0, "name")?,
                4 => self.nodes[nid].op_type = self.string(&g, &ctx0, "op_type")?,
                7 => self.nodes[nid].domain = self.string(&g, &ctx0, "domain")?,
                _ => {}
            }
        }
        let gpath = self.graphs[gid].path.clone();
        let ctx = format!("graph {gpath} > node {}", self.nodes[nid].label());
        let mut occ = Occurrences::default();
        let mut rr = self.reader(f.value_range(), &ctx)?;
        while let Some(g) = self.next(&mut rr, &ctx)? {
            let i = occ.next(g.number);
            if g.number == 5 {
                self.expect(&g, WireType::Len, &ctx, "attribute")?;
                let p = path.child(&g, i, ctx.clone());
                self.parse_attribute(&g, &p, gid, nid, depth, &gpath)?;
            }
        }
        Ok(())
    }

    fn parse_attribute(
        &mut self,
        f: &Field,
        path: &Path2,
        gid: GraphId,
        nid: NodeId,
        depth: usize,
        gpath: &str,
    ) -> Result<()> {
        let ctx0 = path.context.clone();
        let mut name = String::new();
        let mut rr = self.reader(f.value_range(), &ctx0)?;
        let mut interesting = false;
        while let Some(g) = self.next(&mut rr, &ctx0)? {
            match g.number {
                1 => name = self.string(&g, &ctx0, "attribute name")?,
                5 | 6 | 10 | 11 | 22 | 23 => interesting = true,
                _ => {}
            }
        }
        if !interesting {
            return Ok(());
        }
        let ctx = format!("{ctx0} > attribute '{name}'");
        let mut attr = Attribute { name: name.clone(), tensors: Vec::new(), graphs: Vec::new() };
        let mut occ = Occurrences::default();
        let mut rr = self.reader(f.value_range(), &ctx)?;
        let node_label = self.nodes[nid].name.clone();
        while let Some(g) = self.next(&mut rr, &ctx)? {
            let i = occ.next(g.number);
            match g.number {
                5 | 10 => {
                    self.expect(&g, WireType::Len, &ctx, "tensor")?;
                    let p = path.child(&g, i, ctx.clone());
                    let t = self.parse_tensor(&g, &p, gid, Origin::Attribute { node: nid, attribute: name.clone() })?;
                    attr.tensors.push(t);
                }
                22 | 23 => {
                    self.expect(&g, WireType::Len, &ctx, "sparse tensor")?;
                    let p = path.child(&g, i, ctx.clone());
                    let (v, ix) = self.parse_sparse(&g, &p, gid, Some((nid, &name)))?;
                    attr.tensors.push(v);
                    attr.tensors.extend(ix);
                }
                6 | 11 => {
                    self.expect(&g, WireType::Len, &ctx, "graph")?;
                    if depth + 1 > MAX_GRAPH_DEPTH {
                        return Err(FormatError::TooDeep { limit: MAX_GRAPH_DEPTH, context: ctx.clone() });
                    }
                    let label = if node_label.is_empty() { format!("#{nid}") } else { node_label.clone() };
                    let sub = if g.number == 6 {
                        format!("{gpath}/{label}.{name}")
                    } else {
                        format!("{gpath}/{label}.{name}[{i}]")
                    };
                    let p = path.child(&g, i, format!("graph {sub}"));
                    let sg = self.parse_graph(
                        &g,
                        &p,
                        Some(gid),
                        GraphKind::Subgraph { node: nid, attribute: name.clone() },
                        depth + 1,
                        sub,
                    )?;
                    attr.graphs.push(sg);
                }
                _ => {}
            }
        }
        self.nodes[nid].attributes.push(attr);
        Ok(())
    }

    fn parse_tensor(&mut self, f: &Field, path: &Path2, gid: GraphId, origin: Origin) -> Result<TensorId> {
        let ctx = path.context.clone();
        let fields = self.tensor_fields(f, &ctx)?;
        let tname = if fields.name.is_empty() { ctx.clone() } else { fields.name.clone() };
        let (data_type, dims, numel, nbytes) = tensor_shape(&tname, &fields)?;
        fields.check_one_storage(f, &ctx, &tname)?;
        let len = Extent { tname: &tname, data_type, numel, nbytes, dims: &dims };
        let data = if fields.location_external {
            if data_type == DataType::String {
                return Err(FormatError::Malformed {
                    at: f.start,
                    context: ctx.clone(),
                    reason: format!("STRING tensor '{tname}' uses external data"),
                });
            }
            self.pending_external_data(&tname, fields.ext_entries)?
        } else if let Some(r) = fields.raw {
            raw_data(f, &ctx, &len, r)?
        } else if !fields.fixed.is_empty() {
            fixed_data(&len, fields.fixed)?
        } else if !fields.varints.is_empty() {
            self.varint_data(&ctx, &len, fields.varints)?
        } else if fields.strings > 0 {
            if data_type != DataType::String {
                return Err(wrong_field(&tname, TypedField::String, data_type));
            }
            check_len(&tname, "string_data", numel, fields.strings, "values")?;
            TensorData::Strings { count: fields.strings }
        } else {
            if nbytes != 0 || (data_type == DataType::String && numel != 0) {
                check_len(&tname, "tensor data", nbytes.max(numel), 0, "bytes")?;
            }
            TensorData::Empty
        };
        self.progress.set(f.end);
        let id = self.tensors.len();
        let mut tensor = Tensor {
            id,
            name: fields.name,
            data_type,
            dims,
            numel,
            nbytes,
            origin,
            graph: gid,
            locator: Locator(path.steps.clone()),
            ancestors: path.ancestors.clone(),
            data,
        };
        self.mark_canonical(&mut tensor)?;
        self.tensors.push(tensor);
        Ok(id)
    }

    /// The fields of a `TensorProto`, checked for their wire types; packed varints are
    /// validated here, so later decoding cannot fail.
    fn tensor_fields(&mut self, f: &Field, ctx: &str) -> Result<TensorFields> {
        let mut t = TensorFields::default();
        let ctx = ctx.to_string();
        let mut rr = self.reader(f.value_range(), &ctx)?;
        while let Some(g) = self.next(&mut rr, &ctx)? {
            match g.number {
                1 => match g.wire {
                    WireType::Varint => t.dims.push(g.scalar as i64),
                    WireType::Len => wire::for_each_packed_varint(self.buf, g.value_range(), |v| t.dims.push(v as i64))
                        .map_err(|e| wire_err(e, &ctx))?,
                    _ => self.expect(&g, WireType::Varint, &ctx, "dims")?,
                },
                2 => t.data_type = Some(self.varint_field(&g, &ctx, "data_type")? as i64),
                8 => t.name = self.string(&g, &ctx, "name")?,
                9 => {
                    self.expect(&g, WireType::Len, &ctx, "raw_data")?;
                    t.raw = Some(g.value_range());
                }
                4 | 10 => {
                    let tf = TypedField::from_number(g.number).unwrap_or(TypedField::Float);
                    let (w, size) = if g.number == 4 { (WireType::Fixed32, 4) } else { (WireType::Fixed64, 8) };
                    if g.wire == WireType::Len {
                        if (g.end - g.value_start) % size != 0 {
                            return Err(FormatError::Malformed {
                                at: g.start,
                                context: ctx.clone(),
                                reason: format!("packed {} length is not a multiple of {size}", tf.name()),
                            });
                        }
                        if g.end > g.value_start {
                            t.fixed.push((tf, g.value_range()));
                        }
                    } else {
                        self.expect(&g, w, &ctx, tf.name())?;
                        t.fixed.push((tf, g.value_range()));
                    }
                }
                5 | 7 | 11 => {
                    let tf = TypedField::from_number(g.number).unwrap_or(TypedField::Int32);
                    match g.wire {
                        WireType::Varint => t.varints.push((tf, g.range())),
                        // A packed field of length 0 holds no value: no storage at all
                        // (docs/format.md §5), as for `float_data` and `double_data`.
                        WireType::Len if g.end == g.value_start => {}
                        WireType::Len => {
                            wire::for_each_packed_varint(self.buf, g.value_range(), |_| {})
                                .map_err(|e| wire_err(e, &ctx))?;
                            t.varints.push((tf, g.range()));
                        }
                        _ => self.expect(&g, WireType::Varint, &ctx, tf.name())?,
                    }
                }
                6 => {
                    self.expect(&g, WireType::Len, &ctx, "string_data")?;
                    t.strings += 1;
                }
                13 => {
                    self.expect(&g, WireType::Len, &ctx, "external_data")?;
                    let (k, v, at) = self.string_pair_at(&g, &ctx)?;
                    t.ext_entries.push((k, v, Container::from(&g), at));
                }
                14 => t.location_external = self.varint_field(&g, &ctx, "data_location")? == 1,
                _ => {}
            }
        }
        Ok(t)
    }

    /// An external tensor: its `location`, `offset` and `length` entries are resolved
    /// once the whole model is read.
    fn pending_external_data(
        &mut self,
        tname: &str,
        entries: Vec<(String, String, Container, Option<Range<u64>>)>,
    ) -> Result<TensorData> {
        let (mut location, mut offset, mut length, mut site) = (None, None, None, None);
        for (k, v, entry, at) in entries {
            match k.as_str() {
                "location" => {
                    location = Some(v);
                    site = at.map(|r| (entry, r));
                }
                "offset" => offset = Some(v),
                "length" => length = Some(v),
                _ => {}
            }
        }
        let location = location.ok_or_else(|| FormatError::ExternalPath {
            tensor: tname.to_string(),
            location: String::new(),
            reason: "data_location is EXTERNAL but there is no 'location' entry".into(),
        })?;
        self.pending_external.push(PendingExternal { tensor: self.tensors.len(), location, offset, length, site });
        Ok(TensorData::Empty)
    }

    /// Varint-typed field occurrences holding as many values as the tensor has.
    fn varint_data(&mut self, ctx: &str, len: &Extent, varints: Vec<(TypedField, Range<u64>)>) -> Result<TensorData> {
        let tf = varints[0].0;
        if tf != len.data_type.typed_field() {
            return Err(wrong_field(len.tname, tf, len.data_type));
        }
        let mut count = 0u64;
        for (_, r) in &varints {
            let mut rr = self.reader(r.clone(), ctx)?;
            while let Some(h) = self.next(&mut rr, ctx)? {
                match h.wire {
                    WireType::Varint => count += 1,
                    _ => wire::for_each_packed_varint(self.buf, h.value_range(), |_| count += 1)
                        .map_err(|e| wire_err(e, ctx))?,
                }
            }
        }
        check_len(len.tname, tf.name(), len.typed_count()?, count, "values")?;
        let fields: Vec<Range<u64>> = varints.into_iter().map(|(_, r)| r).collect();
        Ok(TensorData::Varint { field: tf, fields, count, canonical: false })
    }

    /// Sets whether a varint-stored tensor's one field is exactly the canonical encoding
    /// of its values (so it can be re-encoded byte for byte). The 6-bit types' values map
    /// to no whole bytes: never canonical.
    fn mark_canonical(&self, tensor: &mut Tensor) -> Result<()> {
        if let TensorData::Varint { field, fields, .. } = &tensor.data {
            let canonical = fields.len() == 1 && tensor.data_type.bytes_per_typed_value() > 0 && {
                let plain = decode_varint_tensor(self.buf, tensor, fields)?;
                let payload = encode_varint_payload(tensor.data_type, *field, &plain);
                let mut full = Vec::with_capacity(payload.len() + 8);
                wire::put_len_field(&mut full, field.number(), &payload);
                let r = &fields[0];
                self.buf.get(r.start as usize..r.end as usize) == Some(&full[..])
            };
            if let TensorData::Varint { canonical: c, .. } = &mut tensor.data {
                *c = canonical;
            }
        }
        Ok(())
    }
}

/// The fields of one `TensorProto` as read, before they are checked against each other.
#[derive(Default)]
struct TensorFields {
    name: String,
    dims: Vec<i64>,
    data_type: Option<i64>,
    raw: Option<Range<u64>>,
    fixed: Vec<(TypedField, Range<u64>)>,
    varints: Vec<(TypedField, Range<u64>)>,
    strings: u64,
    /// `external_data` entries: key, value, the entry field and its `value` field.
    ext_entries: Vec<(String, String, Container, Option<Range<u64>>)>,
    location_external: bool,
}

impl TensorFields {
    /// A tensor keeps its data in one place: raw_data, external data, or one typed field.
    fn check_one_storage(&self, f: &Field, ctx: &str, tname: &str) -> Result<()> {
        let mut kinds = Vec::new();
        if self.raw.is_some() {
            kinds.push("raw_data");
        }
        if self.location_external {
            kinds.push("external");
        }
        for (tf, _) in self.fixed.iter().chain(self.varints.iter()) {
            if !kinds.contains(&tf.name()) {
                kinds.push(tf.name());
            }
        }
        if self.strings > 0 {
            kinds.push("string_data");
        }
        if kinds.len() > 1 {
            return Err(FormatError::Malformed {
                at: f.start,
                context: ctx.to_string(),
                reason: format!("tensor '{tname}' stores its data in more than one way: {}", kinds.join(", ")),
            });
        }
        Ok(())
    }
}

/// A tensor's type and size, for checking the length of its data.
struct Extent<'a> {
    tname: &'a str,
    data_type: DataType,
    numel: u64,
    nbytes: u64,
    dims: &'a [u64],
}

impl Extent<'_> {
    fn overflow(&self) -> FormatError {
        FormatError::DimOverflow { tensor: self.tname.to_string(), dims: self.dims.to_vec() }
    }

    /// Number of typed-field values the tensor's elements take.
    fn typed_count(&self) -> Result<u64> {
        self.data_type.typed_count(self.numel).ok_or_else(|| self.overflow())
    }
}

/// The element type, dims, element count and byte length of a tensor.
fn tensor_shape(tname: &str, t: &TensorFields) -> Result<(DataType, Vec<u64>, u64, u64)> {
    let dt_code = t.data_type.unwrap_or(0);
    let data_type = i32::try_from(dt_code)
        .ok()
        .and_then(DataType::from_i32)
        .ok_or_else(|| FormatError::UnknownDataType { tensor: tname.to_string(), data_type: dt_code })?;
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        dims.push(u64::try_from(d).map_err(|_| FormatError::NegativeDim { tensor: tname.to_string(), dim: d })?);
    }
    let overflow = || FormatError::DimOverflow { tensor: tname.to_string(), dims: dims.clone() };
    let numel = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(overflow)?;
    let nbytes = data_type.byte_len(numel).ok_or_else(overflow)?;
    if nbytes > i64::MAX as u64 {
        return Err(overflow());
    }
    Ok((data_type, dims, numel, nbytes))
}

/// `raw_data` of exactly the tensor's byte length (never for STRING tensors).
fn raw_data(f: &Field, ctx: &str, len: &Extent, r: Range<u64>) -> Result<TensorData> {
    if len.data_type == DataType::String {
        return Err(FormatError::Malformed {
            at: f.start,
            context: ctx.to_string(),
            reason: format!("STRING tensor '{}' uses raw_data", len.tname),
        });
    }
    check_len(len.tname, "raw_data", len.nbytes, r.end - r.start, "bytes")?;
    Ok(TensorData::Raw { range: r })
}

/// Fixed-size typed field occurrences (`float_data`, `double_data`) holding as many
/// values as the tensor has.
fn fixed_data(len: &Extent, fixed: Vec<(TypedField, Range<u64>)>) -> Result<TensorData> {
    let tf = fixed[0].0;
    if tf != len.data_type.typed_field() {
        return Err(wrong_field(len.tname, tf, len.data_type));
    }
    let size = if tf == TypedField::Float { 4 } else { 8 };
    let segments: Vec<Range<u64>> = fixed.into_iter().map(|(_, r)| r).collect();
    let actual: u64 = segments.iter().map(|r| (r.end - r.start) / size).sum();
    check_len(len.tname, tf.name(), len.typed_count()?, actual, "values")?;
    Ok(TensorData::Fixed { field: tf, segments })
}

/// Errors unless a data field holds the expected amount.
fn check_len(tensor: &str, field: &'static str, expected: u64, actual: u64, unit: &'static str) -> Result<()> {
    if actual == expected {
        return Ok(());
    }
    Err(FormatError::DataLength { tensor: tensor.to_string(), field, expected, actual, unit })
}

fn wrong_field(tensor: &str, tf: TypedField, dt: DataType) -> FormatError {
    FormatError::Malformed {
        at: 0,
        context: format!("tensor '{tensor}'"),
        reason: format!("{} cannot hold data_type {dt}", tf.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{external_float_tensor, float_tensor, matmul_chain};

    use crate::wire::{put_len_field, put_tag, put_varint, WireType};

    /// A FLOAT [2, 2] initializer `W0` in `raw_data`, with `extra` fields appended.
    fn raw_with(extra: &[u8]) -> Vec<u8> {
        let mut t = float_tensor("W0", &[2, 2], &[1.0; 4]);
        t.extend_from_slice(extra);
        t
    }

    fn field(number: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        put_len_field(&mut f, number, payload);
        f
    }

    /// docs/format.md §5: a packed typed field of length 0 holds no value and is not a way
    /// of storing data; one that holds a value is.
    #[test]
    fn an_empty_packed_typed_field_is_no_storage() {
        for number in [4, 5, 7, 10, 11] {
            let m = Model::from_vec(matmul_chain(&[raw_with(&field(number, &[]))]), None).unwrap();
            assert!(matches!(m.tensors[0].data, TensorData::Raw { .. }), "field {number}");
        }
        let e = Model::from_vec(matmul_chain(&[raw_with(&field(5, &[1]))]), None).err().unwrap();
        assert!(e.to_string().contains("more than one way"), "{e}");
        // With no other data and no element, an empty packed field leaves the tensor empty.
        let mut t = Vec::new();
        put_tag(&mut t, 1, WireType::Varint);
        put_varint(&mut t, 0);
        put_tag(&mut t, 2, WireType::Varint);
        put_varint(&mut t, 6);
        put_len_field(&mut t, 8, b"W0");
        t.extend_from_slice(&field(5, &[]));
        let m = Model::from_vec(matmul_chain(&[t]), None).unwrap();
        assert!(matches!(m.tensors[0].data, TensorData::Empty));
    }

    /// docs/format.md §5: external data and `raw_data` together store the data twice, and
    /// a STRING tensor keeps its values in `string_data` only.
    #[test]
    fn external_with_raw_data_and_external_strings_are_invalid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), [0u8; 16]).unwrap();
        let mut t = external_float_tensor("W0", &[2, 2], "w.bin", 0, 16);
        t.extend_from_slice(&field(9, &[0; 16]));
        let e = Model::from_vec(matmul_chain(&[t]), Some(dir.path().to_path_buf())).err().unwrap();
        assert!(e.to_string().contains("more than one way"), "{e}");
        let mut s = Vec::new();
        put_tag(&mut s, 1, WireType::Varint);
        put_varint(&mut s, 2);
        put_tag(&mut s, 2, WireType::Varint);
        put_varint(&mut s, 8);
        put_len_field(&mut s, 8, b"W0");
        for (k, v) in [("location", "w.bin"), ("length", "0")] {
            let mut e = Vec::new();
            put_len_field(&mut e, 1, k.as_bytes());
            put_len_field(&mut e, 2, v.as_bytes());
            put_len_field(&mut s, 13, &e);
        }
        put_tag(&mut s, 14, WireType::Varint);
        put_varint(&mut s, 1);
        let e = Model::from_vec(matmul_chain(&[s]), Some(dir.path().to_path_buf())).err().unwrap();
        assert!(e.to_string().contains("STRING"), "{e}");
    }

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

    /// An `If` node whose `then_branch` is `graph`.
    fn if_with(graph: &[u8]) -> Vec<u8> {
        let mut attr = field(1, b"then_branch");
        put_tag(&mut attr, 20, WireType::Varint);
        put_varint(&mut attr, 5);
        attr.extend_from_slice(&field(6, graph));
        [field(4, b"If"), field(5, &attr)].concat()
    }

    /// A GraphProto with graphs `k` levels deep below it.
    fn nested(k: usize) -> Vec<u8> {
        (0..k).fold(Vec::new(), |g, _| field(1, &if_with(&g)))
    }

    /// docs/format.md §4: the main graph and a function's nodes are at level 0, a
    /// `training_info` graph at level 1, an attribute's graph one below its node's graph;
    /// a level above 64 is an invalid model.
    #[test]
    fn graph_depth_is_counted_as_the_spec_says() {
        let opset = field(8, &[field(1, b""), vec![0x10, 21]].concat());
        let model = |fields: Vec<u8>| [vec![0x08, 10], fields, opset.clone()].concat();
        let main = |n: usize| model(field(7, &nested(n)));
        let func = |n: usize| {
            model(
                [
                    field(7, &[]),
                    field(25, &[field(1, b"f"), field(10, b"d"), field(7, &if_with(&nested(n - 1)))].concat()),
                ]
                .concat(),
            )
        };
        let train = |n: usize| model([field(7, &[]), field(20, &field(1, &nested(n - 1)))].concat());
        let ok = |b: Vec<u8>| match Model::from_vec(b, None) {
            Ok(_) => true,
            Err(e) => {
                assert!(matches!(e, FormatError::TooDeep { .. }), "{e}");
                false
            }
        };
        for (what, at_64, at_65) in [
            ("main", main(MAX_GRAPH_DEPTH), main(MAX_GRAPH_DEPTH + 1)),
            ("function", func(MAX_GRAPH_DEPTH), func(MAX_GRAPH_DEPTH + 1)),
            ("training", train(MAX_GRAPH_DEPTH), train(MAX_GRAPH_DEPTH + 1)),
        ] {
            assert!(ok(at_64), "{what} at level 64");
            assert!(!ok(at_65), "{what} at level 65");
        }
    }

    #[test]
    fn locators_parse_only_as_they_are_written() {
        let l: Locator = "7.0/5.10/0.0".parse().unwrap();
        assert_eq!(l.to_string(), "7.0/5.10/0.0");
        for bad in ["7.0/05.0", "07.0", "7.00", "7.+1", "7.-1", "7.", ".0", "7.0/", "7.0 ", "7.4294967296"] {
            assert!(bad.parse::<Locator>().is_err(), "{bad}");
        }
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
}
