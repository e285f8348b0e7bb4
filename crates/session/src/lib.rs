//! What a loader hands to onnxruntime for a decrypted model, so that the large
//! weights are used in place instead of copied.
//!
//! onnxruntime takes an initializer from a caller-owned buffer without copying it
//! (`SessionOptions.add_initializer` in Python, `OrtApi::AddInitializer` in C,
//! `with_initializer` in Rust's `ort`) and uses that buffer for as long as the session
//! lives. Two facts decide what the graph handed to it must say about such a tensor:
//!
//! * **Graph optimisations read the graph, not the override.** Constant folding,
//!   the transpose optimiser and fusions (`Conv`+`BatchNormalization`, NCHWc weight
//!   reordering, the `Cast` inserted for float16 `MatMul` on the CPU) read the
//!   `TensorProto` in the graph, before the overrides replace the initializers. A graph
//!   that still names the ciphertext file for an overridden tensor gives wrong outputs
//!   wherever an optimiser reads that tensor (a `Transpose`'d external weight is folded
//!   from ciphertext).
//! * **The graph cannot go without the tensor.** An initializer must exist in the graph
//!   with its type and dims, and embedded data must have the size the dims say.
//!
//! So [`prepare`] shares only tensors that no optimiser is expected to read (a float
//! `MatMul`/`Gemm` weight, recurrent weights, an embedding table: consumers listed in
//! [`SHARED_USES`], never folded, at least [`Options::min_bytes`] long), and in the graph
//! gives each of them external data whose location is [`SENTINEL`], the directory `.`:
//! it exists, so the model loads, and it is not a regular file, so any read of it fails
//! with an error instead of returning bytes. A loader that sees session creation fail
//! builds the graph again without sharing (see [`Options::share`]). Every other
//! tensor with external data is written into the graph (`raw_data`), so the graph
//! names no file at all.

#![forbid(unsafe_code)]

pub mod decrypted;
pub mod files;
pub use decrypted::{lay_out, FileBuffer, LaidOut};
pub use files::{prepare_files, FilesPlan, ModelBuffer};

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use onnx_protect_format::wire::{put_len_field, FieldReader};
use onnx_protect_format::write::{Content, Edit, Plan};
use onnx_protect_format::{DataType, FormatError, Model, Origin, Tensor, TensorData};

/// The external data location given, in the graph, to every shared tensor: the
/// current directory (for a model loaded from bytes, the directory onnxruntime
/// resolves external data against). It exists, so validation passes; it is not a
/// regular file, so reading it fails loudly.
pub const SENTINEL: &str = ".";

/// Alignment of a shared tensor's first byte (onnxruntime's own CPU allocator aligns
/// to 64 bytes); a tensor not aligned in its buffer is copied into an aligned arena.
pub const ALIGN: usize = 64;

/// The smallest tensor the loaders share by default ([`Options::min_bytes`]): below it,
/// handing a tensor to onnxruntime in place costs more time than onnxruntime's copy of it
/// (docs/performance.md), and saves little memory.
pub const MIN_SHARED: u64 = 64 << 10;

/// The smallest tensor ever shared: tiny tensors (shapes, axes) must stay in the graph.
pub const MIN_SHAREABLE: u64 = 1024;

/// The largest graph protobuf can hold (2 GiB), less room for what onnxruntime adds.
pub const MAX_GRAPH: u64 = (2 << 30) - (1 << 20);

/// `(op_type, input index, element types)`: the uses under which a tensor is shared.
/// Each is a kernel input that onnxruntime's graph optimisations do not rewrite (for the
/// element types listed: a float16 `MatMul` weight gets a `Cast` on the CPU, which is
/// folded from the graph's data).
pub const SHARED_USES: &[(&str, usize, &[DataType])] = &[
    ("MatMul", 1, FLOAT),
    ("Gemm", 1, FLOAT),
    ("Gemm", 2, FLOAT),
    ("LSTM", 1, FLOAT),
    ("LSTM", 2, FLOAT),
    ("LSTM", 3, FLOAT),
    ("GRU", 1, FLOAT),
    ("GRU", 2, FLOAT),
    ("GRU", 3, FLOAT),
    ("RNN", 1, FLOAT),
    ("RNN", 2, FLOAT),
    ("RNN", 3, FLOAT),
    ("Gather", 0, GATHER),
];

const FLOAT: &[DataType] = &[DataType::Float];
const GATHER: &[DataType] = &[
    DataType::Float,
    DataType::Float16,
    DataType::Double,
    DataType::Int8,
    DataType::Uint8,
    DataType::Int16,
    DataType::Int32,
    DataType::Int64,
];

/// Choices of [`prepare`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Share tensors (the in-place path); `false` writes every tensor into the graph
    /// (the fallback when onnxruntime refused the shared graph).
    pub share: bool,
    /// Smaller tensors stay in the graph ([`MIN_SHARED`] by default; never below
    /// [`MIN_SHAREABLE`]: tiny shape tensors must stay).
    pub min_bytes: u64,
    /// The largest graph to build.
    pub max_graph: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { share: true, min_bytes: MIN_SHARED, max_graph: MAX_GRAPH }
    }
}

/// Which buffer holds a shared tensor's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The decrypted model bytes given to [`prepare`].
    Model,
    /// The decrypted external data file of this `location`.
    External(String),
    /// [`Prepared::arena`] (the tensor was not aligned where it was).
    Arena,
}

/// One tensor to hand to onnxruntime from memory.
#[derive(Debug, Clone)]
pub struct Shared {
    pub name: String,
    pub data_type: DataType,
    pub dims: Vec<u64>,
    pub source: Source,
    /// Byte range in the source buffer (`raw_data` layout), aligned to [`ALIGN`] in it
    /// when the buffer itself is.
    pub range: Range<usize>,
}

/// The graph to load and the tensors to add as initializers.
pub struct Prepared {
    /// The model protobuf for onnxruntime: shared tensors point at [`SENTINEL`], every
    /// other tensor's data is in it. `None` when that is the decrypted bytes given to
    /// [`prepare`] as they are (nothing shared, no external data): no copy is made
    /// ([`Prepared::graph_bytes`]).
    pub graph: Option<Vec<u8>>,
    pub shared: Vec<Shared>,
    /// Copies of shared tensors that were not aligned in their buffer; zeroed on drop.
    pub arena: Arena,
}

impl Prepared {
    /// The graph: [`Prepared::graph`], or `bytes` (those given to [`prepare`]) when the
    /// graph is the model as it is.
    pub fn graph_bytes<'b>(&'b self, bytes: &'b [u8]) -> &'b [u8] {
        self.graph.as_deref().unwrap_or(bytes)
    }
}

/// A buffer whose shared tensors start at [`ALIGN`]-aligned addresses: `bytes()[0]` is
/// aligned, and each tensor's range in it starts at a multiple of [`ALIGN`].
pub struct Arena {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Arena {
    fn with_capacity(len: usize) -> Arena {
        let buf = vec![0u8; len + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        Arena { buf, start, len: 0 }
    }

    /// Appends `data` at the next aligned offset; returns its range.
    fn push(&mut self, data: &[u8]) -> Range<usize> {
        let at = self.len.next_multiple_of(ALIGN);
        let dst = &mut self.buf[self.start + at..self.start + at + data.len()];
        dst.copy_from_slice(data);
        self.len = at + data.len();
        at..self.len
    }

    /// The arena's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

/// An empty arena (nothing shared).
impl Default for Arena {
    fn default() -> Arena {
        Arena { buf: Vec::new(), start: 0, len: 0 }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        onnx_protect_fsio::wipe(&mut self.buf);
    }
}

/// The ONNX default domain, as node `domain`s write it.
fn default_domain(d: &str) -> bool {
    d.is_empty() || d == "ai.onnx"
}

/// Names that are constant in the model: initializers and `Constant` outputs of every
/// graph (a node whose inputs are all constant is folded by onnxruntime).
fn constants(model: &Model) -> HashSet<&str> {
    let mut out: HashSet<&str> =
        model.graphs.iter().flat_map(|g| &g.initializers).map(|&t| model.tensors[t].name.as_str()).collect();
    for n in &model.nodes {
        if n.op_type == "Constant" && default_domain(&n.domain) {
            out.extend(n.outputs.iter().map(String::as_str));
        }
    }
    out
}

/// Whether onnxruntime may use the main-graph initializer `t` in place: every use of its
/// name, in every graph, is one of [`SHARED_USES`] for its element type, by a node that
/// also reads a non-constant input and whose outputs feed no `BatchNormalization`.
fn shareable(
    model: &Model,
    t: &Tensor,
    consts: &HashSet<&str>,
    users: &HashMap<&str, Vec<usize>>,
    opts: &Options,
) -> bool {
    if !opts.share
        || t.origin != Origin::Initializer
        || !model.in_main_graph(t)
        || t.nbytes < opts.min_bytes.max(MIN_SHAREABLE)
    {
        return false;
    }
    if !matches!(t.data, TensorData::Raw { .. } | TensorData::External { .. }) {
        return false;
    }
    if model.graphs.iter().any(|g| g.inputs.iter().any(|i| i == &t.name)) {
        return false; // an overridable initializer is a graph input too
    }
    let Some(nodes) = users.get(t.name.as_str()) else { return false };
    nodes.iter().all(|&n| {
        let node = &model.nodes[n];
        let allowed = default_domain(&node.domain)
            && node.inputs.iter().enumerate().filter(|(_, i)| *i == &t.name).all(|(idx, _)| {
                SHARED_USES
                    .iter()
                    .any(|(op, i, types)| *op == node.op_type && *i == idx && types.contains(&t.data_type))
            });
        let folded = node.inputs.iter().all(|i| i.is_empty() || consts.contains(i.as_str()));
        let into_norm = node.outputs.iter().any(|o| {
            users.get(o.as_str()).is_some_and(|ns| ns.iter().any(|&m| model.nodes[m].op_type == "BatchNormalization"))
        });
        allowed && !folded && !into_norm
    })
}

/// Field numbers of `TensorProto` that hold or locate element data.
const DATA_FIELDS: &[u32] = &[4, 5, 7, 9, 10, 11, 13, 14];

/// The `TensorProto` of `t` without its data fields (`raw_data`, typed data,
/// `external_data`, `data_location`), as bytes to which new data fields are appended.
fn header(bytes: &[u8], t: &Tensor) -> Result<Vec<u8>, FormatError> {
    let c = t
        .ancestors
        .last()
        .ok_or_else(|| FormatError::Invalid(format!("tensor '{}' has no enclosing field", t.name)))?;
    let mut r = FieldReader::new(bytes, c.value_start..c.end)
        .map_err(|e| FormatError::Invalid(format!("tensor '{}': {e:?}", t.name)))?;
    let mut out = Vec::new();
    while let Some(f) = r.next_field().map_err(|e| FormatError::Invalid(format!("tensor '{}': {e:?}", t.name)))? {
        if !DATA_FIELDS.contains(&f.number) {
            out.extend_from_slice(&bytes[f.start as usize..f.end as usize]);
        }
    }
    Ok(out)
}

/// The location of `t`'s external data file `file` and its decrypted bytes, which
/// `external` gives.
fn external_file<'m, 'a>(
    model: &'m Model,
    t: &Tensor,
    file: usize,
    external: &impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<(&'m str, &'a [u8]), FormatError> {
    let loc = &model
        .external_files
        .get(file)
        .ok_or_else(|| FormatError::Invalid(format!("tensor '{}': no external file {file}", t.name)))?
        .location;
    let data = external(loc).ok_or_else(|| {
        FormatError::Invalid(format!("tensor '{}': external data file '{loc}' was not given", t.name))
    })?;
    Ok((loc, data))
}

/// Appends `external_data` entries naming [`SENTINEL`] and `data_location = EXTERNAL`.
fn sentinel_fields(out: &mut Vec<u8>, len: u64) {
    files::external_fields(out, SENTINEL, 0, len);
}

/// An edit replacing the whole value of `t`'s `TensorProto` with `value`.
fn replace(t: &Tensor, value: Vec<u8>) -> Result<Edit, FormatError> {
    let c = t
        .ancestors
        .last()
        .ok_or_else(|| FormatError::Invalid(format!("tensor '{}' has no enclosing field", t.name)))?;
    Ok(Edit { range: c.value_start..c.end, content: Content::Bytes(value), ancestors: t.ancestors.clone() })
}

fn usize_range(r: &Range<u64>) -> Result<Range<usize>, FormatError> {
    let conv = |v: u64| usize::try_from(v).map_err(|_| FormatError::Invalid("offset beyond the address space".into()));
    Ok(conv(r.start)?..conv(r.end)?)
}

/// Whether the graph [`prepare`] makes is the model's bytes as they are: no external data,
/// and nothing large enough to share under `opts`.
fn graph_is_model(model: &Model, opts: &Options) -> bool {
    let min = opts.min_bytes.max(MIN_SHAREABLE);
    let large = |t: &Tensor| opts.share && t.origin == Origin::Initializer && t.nbytes >= min;
    model.external_files.is_empty() && !model.tensors.iter().any(large)
}

/// Builds what onnxruntime is handed for the decrypted model `bytes`, indexed by
/// `model` (whose byte offsets are those of `bytes`); `external(location)` gives each
/// decrypted external data file.
///
/// Fails when a tensor's bytes are missing or out of range, or when the graph would
/// exceed [`Options::max_graph`] (a model whose unshared external data is over 2 GiB:
/// the caller then hands external data over by other means).
pub fn prepare<'a>(
    model: &Model,
    bytes: &[u8],
    external: impl Fn(&str) -> Option<&'a [u8]>,
    opts: &Options,
) -> Result<Prepared, FormatError> {
    if graph_is_model(model, opts) {
        if bytes.len() as u64 > opts.max_graph {
            return Err(FormatError::Invalid(format!(
                "the model would be {} bytes, more than a graph can hold",
                bytes.len()
            )));
        }
        return Ok(Prepared { graph: None, shared: Vec::new(), arena: Arena::default() });
    }
    let consts = constants(model);
    let mut users: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in model.nodes.iter().enumerate() {
        for name in n.inputs.iter().filter(|s| !s.is_empty()) {
            users.entry(name.as_str()).or_default().push(i);
        }
    }
    let mut edits = Vec::new();
    let mut shared = Vec::new();
    let mut unaligned: Vec<(usize, &[u8])> = Vec::new();
    let mut added = 0u64;
    for t in &model.tensors {
        let (buf, source, range): (&[u8], Source, Range<u64>) = match &t.data {
            TensorData::Raw { range } => (bytes, Source::Model, range.clone()),
            TensorData::External { file, range } => {
                let (loc, data) = external_file(model, t, *file, &external)?;
                (data, Source::External(loc.to_string()), range.clone())
            }
            _ => continue,
        };
        let r = usize_range(&range)?;
        let data = buf.get(r.clone()).ok_or_else(|| {
            FormatError::Invalid(format!("tensor '{}': bytes {range:?} are outside its buffer", t.name))
        })?;
        if shareable(model, t, &consts, &users, opts) {
            let mut value = header(bytes, t)?;
            sentinel_fields(&mut value, t.nbytes);
            edits.push(replace(t, value)?);
            let aligned = (buf.as_ptr() as usize + r.start) % ALIGN == 0;
            if !aligned {
                unaligned.push((shared.len(), data));
            }
            shared.push(Shared {
                name: t.name.clone(),
                data_type: t.data_type,
                dims: t.dims.clone(),
                source,
                range: r,
            });
        } else if matches!(t.data, TensorData::External { .. }) {
            let mut value = header(bytes, t)?;
            put_len_field(&mut value, 9, data);
            added += data.len() as u64;
            edits.push(replace(t, value)?);
        }
    }
    if bytes.len() as u64 + added > opts.max_graph {
        return Err(FormatError::Invalid(format!(
            "the model with its unshared external data would be {} bytes, more than a graph can hold",
            bytes.len() as u64 + added
        )));
    }
    let mut arena = Arena::with_capacity(unaligned.iter().map(|(_, d)| d.len() + ALIGN).sum());
    for (i, data) in unaligned {
        shared[i].range = arena.push(data);
        shared[i].source = Source::Arena;
    }
    let plan = Plan::new(bytes.len() as u64, edits, Vec::new())?;
    let mut graph = Vec::with_capacity(usize::try_from(plan.output_len()).unwrap_or(0));
    plan.write(bytes, &mut graph, &mut |_, _, _| Ok(()))?;
    Ok(Prepared { graph: Some(graph), shared, arena })
}

#[cfg(test)]
mod tests;
