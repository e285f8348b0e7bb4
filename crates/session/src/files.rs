//! The graph for onnxruntime's external data files in memory: every large tensor of the
//! decrypted model becomes external data in a file onnxruntime is handed from memory
//! (`AddExternalInitializersFromFilesInMemory`, Python
//! `SessionOptions.add_external_initializers_from_files_in_memory`), which it reads in
//! place when the session option [`DIRECT`] is set: the graph holds no weight bytes, and
//! the decrypted bytes are the only copy the weights have outside onnxruntime's own
//! packed forms.
//!
//! Unlike tensors added with `AddInitializer`, external data is resolved before the
//! graph optimisations run, so every optimiser (constant folding, `Conv` weight
//! reordering, fusions) reads the real bytes: every large tensor can go this way, not
//! only those no optimiser reads.
//!
//! The files, each named by the caller's prefix and a suffix (onnxruntime keeps every
//! file given to a `SessionOptions` and takes the first of a name, so a prefix must not
//! be used twice in a process):
//! * `{prefix}model`: the decrypted model buffer itself, after [`FilesPlan::moves`] moved
//!   each of its large tensors to an aligned offset in the same buffer (the bytes around
//!   them, protobuf framing, are no longer needed once the graph is built);
//! * `{prefix}{n}`: the model's external data file `n`, as decrypted;
//! * `{prefix}arena`: copies of the few tensors that could be aligned neither in place
//!   nor where they were.
//!
//! onnxruntime reads a tensor in place only when its bytes are aligned to the element
//! type (it copies one that is not), so each tensor is placed at a multiple of [`ALIGN`]
//! where there is room, else of its element size.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use onnx_protect_format::wire::{put_len_field, put_tag, put_varint, WireType};
use onnx_protect_format::write::Plan;
use onnx_protect_format::{DataType, FormatError, Model, Origin, Tensor, TensorData};

use crate::{header, replace, usize_range, Arena, ALIGN, MAX_GRAPH, MIN_SHAREABLE};

/// The onnxruntime session option (value `"1"`) under which it uses the buffers of
/// external data files given from memory in place instead of copying them. An
/// onnxruntime that does not know the option copies them (the result is the same,
/// at the cost of a copy).
pub const DIRECT: &str = "session.use_external_initializer_file_buffers_directly";

/// One buffer to hand to onnxruntime as an external data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// The location the graph names.
    pub name: String,
    /// Which buffer; for [`crate::Source::Model`], its first [`FilesPlan::model_len`] bytes.
    pub source: crate::Source,
}

/// What [`prepare_files`] decided.
pub struct FilesPlan {
    /// The model protobuf: every large tensor external in one of [`FilesPlan::files`],
    /// every other tensor's data in it.
    pub graph: Vec<u8>,
    pub files: Vec<File>,
    /// Moves to make in the decrypted model buffer once the graph is built, in this order:
    /// `(source range, destination)`. Sorted by source; each destination is at most its
    /// source and at or after the end of the previous destination, so moving them in
    /// order with `copy_within` never overwrites bytes still to be moved.
    pub moves: Vec<(Range<usize>, usize)>,
    /// How much of the model buffer the model file covers after the moves (the rest is
    /// not needed).
    pub model_len: usize,
    /// Tensors copied to be aligned.
    pub arena: Arena,
    /// How many tensors are external in the graph.
    pub tensors: usize,
}

/// Whether `t` becomes external data: an initializer or the value of a `Constant` node
/// of the main graph, of at least [`MIN_SHAREABLE`] bytes, stored in `raw_data` or
/// external data, of a type with a fixed size. Smaller tensors stay in the graph
/// (onnxruntime's shape inference reads small shape tensors from it), and so do those of
/// subgraphs and function bodies: onnxruntime (1.31) looks for their external data on
/// disk, never among the files it was given in memory.
fn external_candidate(model: &Model, t: &Tensor) -> bool {
    if !model.in_main_graph(t) {
        return false;
    }
    let origin = match &t.origin {
        Origin::Initializer => true,
        Origin::Attribute { node, attribute } => model
            .nodes
            .get(*node)
            .is_some_and(|n| n.op_type == "Constant" && crate::default_domain(&n.domain) && attribute == "value"),
        _ => false,
    };
    origin
        && matches!(t.data, TensorData::Raw { .. } | TensorData::External { .. })
        && t.data_type != DataType::String
        && t.nbytes >= MIN_SHAREABLE
}

/// Bytes a tensor of this type must be aligned to for onnxruntime to read it in place.
fn element_align(t: DataType) -> usize {
    usize::try_from(t.bits().div_ceil(8)).unwrap_or(1).clamp(1, 16)
}

/// Appends `external_data` entries for `location`, `offset`, `length` and
/// `data_location = EXTERNAL`.
pub(crate) fn external_fields(out: &mut Vec<u8>, location: &str, offset: usize, len: u64) {
    for (k, v) in [("location", location.to_string()), ("offset", offset.to_string()), ("length", len.to_string())] {
        let mut e = Vec::new();
        put_len_field(&mut e, 1, k.as_bytes());
        put_len_field(&mut e, 2, v.as_bytes());
        put_len_field(out, 13, &e);
    }
    put_tag(out, 14, WireType::Varint);
    put_varint(out, 1);
}

/// Where one tensor's bytes go.
enum Place {
    /// In the model buffer, moved to this offset.
    Model(usize),
    /// In an external file (its index), where they are.
    External(usize, usize),
    /// Copied into the arena (its index among the copies).
    Arena(usize),
}

/// What the model buffer handed to onnxruntime as `{prefix}model` allows.
#[derive(Debug, Clone, Copy)]
pub enum ModelBuffer<'h> {
    /// The decrypted model, which the caller rearranges: each large tensor is moved to an
    /// aligned offset ([`FilesPlan::moves`]).
    Movable,
    /// A model file filled on demand: the `bytes` given are its skeleton, without the
    /// bytes inside `holes` (sorted `raw_data` ranges of large initializers), which the
    /// model buffer holds at `at` (one offset per hole, aligned), and holds nothing else:
    /// every other tensor stays in the graph. A tensor inside a hole that would be written
    /// into the graph is an error (its bytes are not in the skeleton).
    Fixed { holes: &'h [Range<usize>], at: &'h [usize] },
}

/// Builds the graph and the files for the decrypted model `bytes`, indexed by `model`;
/// `external(location)` gives each decrypted external data file; `prefix` starts the
/// name of every file (see the module's documentation). For a [`ModelBuffer::Movable`]
/// buffer the caller makes the [`FilesPlan::moves`] in it after this returns and before
/// onnxruntime reads it.
///
/// Fails when a tensor's bytes are missing or out of range, or when the graph would
/// exceed [`MAX_GRAPH`].
pub fn prepare_files<'a>(
    model: &Model,
    bytes: &[u8],
    buffer: ModelBuffer<'_>,
    external: impl Fn(&str) -> Option<&'a [u8]>,
    prefix: &str,
) -> Result<FilesPlan, FormatError> {
    let model_file = format!("{prefix}model");
    let arena_file = format!("{prefix}arena");
    let external_file = |file: usize| format!("{prefix}{file}");
    // The model's own large tensors, by position, to lay out in order.
    let mut raw: Vec<(usize, Range<usize>)> = Vec::new();
    let mut places: HashMap<usize, Place> = HashMap::new();
    let mut copies: Vec<&[u8]> = Vec::new();
    let mut edits = Vec::new();
    let mut added = 0u64;
    for (i, t) in model.tensors.iter().enumerate() {
        match &t.data {
            TensorData::Raw { range } if external_candidate(model, t) => {
                let r = usize_range(range)?;
                if bytes.get(r.clone()).is_none() {
                    return Err(FormatError::Invalid(format!(
                        "tensor '{}': bytes {range:?} are outside the model",
                        t.name
                    )));
                }
                match buffer {
                    ModelBuffer::Movable => raw.push((i, r)),
                    // A tensor in no hole stays in the graph: the model buffer holds only the holes.
                    ModelBuffer::Fixed { holes, at } => match holes.binary_search_by_key(&r.start, |h| h.start) {
                        Ok(k) if holes[k] == r => {
                            let to = at.get(k).copied().ok_or_else(|| {
                                FormatError::Invalid(format!(
                                    "tensor '{}': no place for it in the model buffer",
                                    t.name
                                ))
                            })?;
                            places.insert(i, Place::Model(to));
                        }
                        _ if holes.iter().any(|h| h.start < r.end && r.start < h.end) => {
                            return Err(FormatError::Invalid(format!(
                                "tensor '{}': its bytes overlap a tensor left to be filled on demand",
                                t.name
                            )))
                        }
                        _ => {}
                    },
                }
            }
            TensorData::Raw { range } => {
                let ModelBuffer::Fixed { holes, .. } = buffer else { continue };
                let r = usize_range(range)?;
                if holes.iter().any(|h| h.start < r.end && r.start < h.end) {
                    return Err(FormatError::Invalid(format!(
                        "tensor '{}': its bytes were left to be filled on demand, and it would be written into the graph",
                        t.name
                    )));
                }
            }
            TensorData::External { file, range } => {
                let (loc, data) = crate::external_file(model, t, *file, &external)?;
                let r = usize_range(range)?;
                let piece = data.get(r.clone()).ok_or_else(|| {
                    FormatError::Invalid(format!("tensor '{}': bytes {range:?} are outside '{loc}'", t.name))
                })?;
                if !external_candidate(model, t) {
                    // Small: written into the graph, which then names no file of the model.
                    let mut value = header(bytes, t)?;
                    put_len_field(&mut value, 9, piece);
                    added += piece.len() as u64;
                    edits.push(replace(t, value)?);
                } else if (data.as_ptr() as usize + r.start) % element_align(t.data_type) == 0 {
                    places.insert(i, Place::External(*file, r.start));
                } else {
                    places.insert(i, Place::Arena(copies.len()));
                    copies.push(piece);
                }
            }
            _ => {}
        }
    }
    // Lay the model's tensors out in order, each moved down to the next aligned offset
    // (a multiple of ALIGN if there is room before its bytes, else of its element size),
    // or copied into the arena when neither fits.
    raw.sort_by_key(|(_, r)| r.start);
    let base = bytes.as_ptr() as usize;
    let mut moves = Vec::with_capacity(raw.len());
    let mut cursor = 0usize;
    for (i, r) in raw {
        let align = element_align(model.tensors[i].data_type);
        let aligned = |a: usize| (base + cursor).next_multiple_of(a) - base;
        let dest = [aligned(ALIGN), aligned(align)].into_iter().find(|&d| d <= r.start);
        match dest {
            Some(d) => {
                cursor = d + r.len();
                places.insert(i, Place::Model(d));
                if d != r.start {
                    moves.push((r, d));
                }
            }
            None => {
                places.insert(i, Place::Arena(copies.len()));
                copies.push(&bytes[r]);
            }
        }
    }
    let mut arena = Arena::with_capacity(copies.iter().map(|d| d.len() + ALIGN).sum());
    let arena_at: Vec<Range<usize>> = copies.iter().map(|d| arena.push(d)).collect();
    let mut used = (false, false, BTreeMap::new());
    for (&i, place) in &places {
        let t = &model.tensors[i];
        let (file, offset) = match place {
            Place::Model(d) => {
                used.0 = true;
                (model_file.as_str(), *d)
            }
            Place::External(file, at) => {
                let name = used.2.entry(*file).or_insert_with(|| external_file(*file));
                (name.as_str(), *at)
            }
            Place::Arena(k) => {
                used.1 = true;
                (arena_file.as_str(), arena_at[*k].start)
            }
        };
        let mut value = header(bytes, t)?;
        external_fields(&mut value, file, offset, t.nbytes);
        edits.push(replace(t, value)?);
    }
    let plan = Plan::new(bytes.len() as u64, edits, Vec::new())?;
    if plan.output_len() > MAX_GRAPH {
        return Err(FormatError::Invalid(format!(
            "the graph would be {} bytes (with {added} bytes of small external tensors), more than a graph can hold",
            plan.output_len()
        )));
    }
    let mut graph = Vec::with_capacity(usize::try_from(plan.output_len()).unwrap_or(0));
    plan.write(bytes, &mut graph, &mut |_, _, _| Ok(()))?;
    let mut files = Vec::new();
    if used.0 {
        files.push(File { name: model_file, source: crate::Source::Model });
    }
    for (file, name) in used.2 {
        let location = model.external_files[file].location.clone();
        files.push(File { name, source: crate::Source::External(location) });
    }
    if used.1 {
        files.push(File { name: arena_file, source: crate::Source::Arena });
    }
    let model_len = match buffer {
        ModelBuffer::Movable => cursor,
        ModelBuffer::Fixed { holes, at } => holes.iter().zip(at).map(|(h, a)| a + h.len()).max().unwrap_or(0),
    };
    Ok(FilesPlan { graph, files, moves, model_len, arena, tensors: places.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protect_format::testutil::{external_float_tensor, float_tensor, matmul_chain};

    /// The index of `bytes`, whose external files have the lengths of `files`.
    fn index(bytes: &[u8], files: &BTreeMap<String, usize>) -> Model {
        Model::from_vec_in_memory(bytes.to_vec(), &|l| files.get(l).map(|&n| n as u64)).expect("the model parses")
    }

    fn lens(external: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, usize> {
        external.iter().map(|(k, v)| (k.clone(), v.len())).collect()
    }

    fn floats(name: &str, n: usize, seed: f32) -> Vec<u8> {
        float_tensor(name, &[n as i64], &(0..n).map(|i| seed + i as f32).collect::<Vec<_>>())
    }

    /// The model buffer as onnxruntime reads it: `bytes` with the plan's moves made.
    fn moved(bytes: &[u8], plan: &FilesPlan) -> Vec<u8> {
        let mut out = bytes.to_vec();
        let mut end = 0;
        for (src, dest) in &plan.moves {
            assert!(*dest <= src.start && *dest >= end, "moves in order, each down: {:?}", plan.moves);
            out.copy_within(src.clone(), *dest);
            end = dest + src.len();
        }
        out
    }

    /// The bytes of each tensor of the plan's graph, read where the graph says, from the
    /// files (`model` after the moves, `arena`, `external`).
    fn read_back(plan: &FilesPlan, model: &[u8], external: &BTreeMap<String, Vec<u8>>) -> Vec<(String, Vec<u8>)> {
        let sizes = plan
            .files
            .iter()
            .map(|f| {
                let n = match &f.source {
                    crate::Source::Model => plan.model_len,
                    crate::Source::Arena => plan.arena.bytes().len(),
                    crate::Source::External(l) => external[l].len(),
                };
                (f.name.clone(), n)
            })
            .collect();
        let graph = index(&plan.graph, &sizes);
        graph
            .tensors
            .iter()
            .map(|t| {
                let bytes = match &t.data {
                    TensorData::External { file, range } => {
                        let loc = &graph.external_files[*file].location;
                        let f = plan.files.iter().find(|f| &f.name == loc).expect("a file of the plan");
                        let buf: &[u8] = match &f.source {
                            crate::Source::Model => &model[..plan.model_len],
                            crate::Source::Arena => plan.arena.bytes(),
                            crate::Source::External(l) => &external[l],
                        };
                        buf[range.start as usize..range.end as usize].to_vec()
                    }
                    _ => graph.tensor_bytes(t.id).expect("inline bytes").to_vec(),
                };
                (t.name.clone(), bytes)
            })
            .collect()
    }

    fn original(model: &Model, external: &BTreeMap<String, Vec<u8>>, bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        model
            .tensors
            .iter()
            .map(|t| {
                let b = match &t.data {
                    TensorData::External { file, range } => external[&model.external_files[*file].location]
                        [range.start as usize..range.end as usize]
                        .to_vec(),
                    TensorData::Raw { range } => bytes[range.start as usize..range.end as usize].to_vec(),
                    _ => unreachable!(),
                };
                (t.name.clone(), b)
            })
            .collect()
    }

    #[test]
    fn large_tensors_become_external_in_the_moved_model_buffer_with_their_bytes() {
        // Odd sizes and names put the raw_data of most tensors at unaligned offsets.
        let bytes = matmul_chain(&[floats("W0", 300, 1.0), floats("W1", 10, 2.0), floats("W2", 513, 3.0)]);
        let model = Model::from_vec(bytes.clone(), None).unwrap();
        let plan = prepare_files(&model, &bytes, ModelBuffer::Movable, |_| None, "p.").unwrap();
        assert_eq!(plan.tensors, 2, "W0 and W2 (over 1 KiB); W1 stays in the graph");
        assert_eq!(plan.files, vec![File { name: "p.model".into(), source: crate::Source::Model }]);
        assert!(plan.graph.len() + 3000 < bytes.len(), "the graph holds no large tensor's bytes");
        let after = moved(&bytes, &plan);
        let external = BTreeMap::new();
        assert_eq!(read_back(&plan, &after, &external), original(&model, &external, &bytes));
        let graph = index(&plan.graph, &[("p.model".to_string(), plan.model_len)].into());
        for t in &graph.tensors {
            if let TensorData::External { range, .. } = &t.data {
                assert_eq!((after.as_ptr() as usize + range.start as usize) % 4, 0, "{} aligned", t.name);
            } else {
                assert_eq!(t.name, "W1");
            }
        }
    }

    #[test]
    fn a_fixed_buffer_keeps_every_large_tensor_where_it_is_and_builds_the_graph_from_the_skeleton() {
        let bytes = matmul_chain(&[floats("W0", 300, 1.0), floats("W1", 10, 2.0), floats("W2", 513, 3.0)]);
        let model = Model::from_vec(bytes.clone(), None).unwrap();
        let raw = |name: &str| match &model.tensors.iter().find(|t| t.name == name).unwrap().data {
            TensorData::Raw { range } => range.start as usize..range.end as usize,
            _ => unreachable!(),
        };
        let holes = [raw("W0"), raw("W2")];
        let mut skeleton = bytes.clone();
        holes.iter().for_each(|h| skeleton[h.clone()].fill(0));
        // The model buffer holds W0 at 0 and W2 at 1280 (as the region lays them out).
        let at = [0, 1280];
        let mut buffer = vec![0u8; 1280 + holes[1].len()];
        buffer[..holes[0].len()].copy_from_slice(&bytes[holes[0].clone()]);
        buffer[1280..].copy_from_slice(&bytes[holes[1].clone()]);
        let fixed = ModelBuffer::Fixed { holes: &holes, at: &at };
        let plan = prepare_files(&model, &skeleton, fixed, |_| None, "f.").unwrap();
        assert!(plan.moves.is_empty() && plan.arena.bytes().is_empty(), "nothing moved or copied");
        assert_eq!((plan.tensors, plan.model_len), (2, buffer.len()));
        assert_eq!(plan.files, vec![File { name: "f.model".into(), source: crate::Source::Model }]);
        // onnxruntime reads the tensors from the model buffer, not the skeleton.
        let external = BTreeMap::new();
        assert_eq!(read_back(&plan, &buffer, &external), original(&model, &external, &bytes));
        // A hole over a tensor that stays in the graph (W1, under 1 KiB) is refused.
        let wrong = [raw("W0"), raw("W1")];
        let fixed = ModelBuffer::Fixed { holes: &wrong, at: &at };
        let e = prepare_files(&model, &skeleton, fixed, |_| None, "g.").err().unwrap();
        assert!(e.to_string().contains("'W1'"), "{e}");
    }

    #[test]
    fn external_files_keep_their_bytes_where_they_are_under_new_names() {
        let data: Vec<u8> = (0..8192u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let bytes = matmul_chain(&[
            external_float_tensor("W0", &[1024], "w.bin", 0, 4096),
            external_float_tensor("W1", &[4], "w.bin", 4096, 16),
            external_float_tensor("W2", &[1024], "w.bin", 8192, 4096),
        ]);
        let external: BTreeMap<String, Vec<u8>> = [("w.bin".to_string(), data)].into();
        let model = index(&bytes, &lens(&external));
        let plan =
            prepare_files(&model, &bytes, ModelBuffer::Movable, |l| external.get(l).map(|v| &v[..]), "q.").unwrap();
        assert!(plan.moves.is_empty());
        assert_eq!(plan.files, vec![File { name: "q.0".into(), source: crate::Source::External("w.bin".into()) }]);
        assert_eq!(read_back(&plan, &bytes, &external), original(&model, &external, &bytes));
        let graph = index(&plan.graph, &[("q.0".to_string(), 32768)].into());
        assert!(graph.external_files.iter().all(|f| f.location == "q.0"), "no location of the model is named");
        assert!(matches!(graph.tensors[1].data, TensorData::Raw { .. }), "the small one is written in");
    }

    #[test]
    fn a_tensor_unaligned_in_its_external_file_is_copied_aligned_into_the_arena() {
        let data: Vec<u8> = (0..4200u32).map(|i| i as u8).collect();
        let bytes = matmul_chain(&[external_float_tensor("W0", &[1024], "w.bin", 3, 4096)]);
        let model = index(&bytes, &[("w.bin".to_string(), 4200)].into());
        // The buffer's own address decides: pick a start whose offset 3 is unaligned.
        let mut store = vec![0u8; 4200 + 8];
        let skew = (4 - store.as_ptr() as usize % 4) % 4;
        store[skew..skew + 4200].copy_from_slice(&data);
        let buf = &store[skew..skew + 4200];
        let plan = prepare_files(&model, &bytes, ModelBuffer::Movable, |_| Some(buf), "r.").unwrap();
        assert_eq!(plan.files, vec![File { name: "r.arena".into(), source: crate::Source::Arena }]);
        assert_eq!(&plan.arena.bytes()[..4096], &data[3..4099]);
        assert_eq!(plan.arena.bytes().as_ptr() as usize % ALIGN, 0);
    }

    #[test]
    fn a_missing_external_file_or_bytes_past_its_end_are_errors() {
        let bytes = matmul_chain(&[external_float_tensor("W0", &[1024], "w.bin", 0, 4096)]);
        let model = index(&bytes, &[("w.bin".to_string(), 4096)].into());
        let err = prepare_files(&model, &bytes, ModelBuffer::Movable, |_| None, "s.").err().expect("no file given");
        assert!(err.to_string().contains("'w.bin' was not given"), "{err}");
        let short = [0u8; 100];
        let err =
            prepare_files(&model, &bytes, ModelBuffer::Movable, |_| Some(&short[..]), "s.").err().expect("too short");
        assert!(err.to_string().contains("outside 'w.bin'"), "{err}");
    }
}
