//! A model decrypted by `onnx_protect_core::memory` laid out as a session's external data
//! files in memory ([`crate::files`]): what the Python package, the C library, the `ort`
//! crate and the Node engine hand onnxruntime, planned once here.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use onnx_protect_core::error::CoreError;
use onnx_protect_core::memory::{DecryptedBytes, Method, Skeleton};
use onnx_protect_format::{Model, TensorData};

use crate::files::{prepare_files, FilesPlan, ModelBuffer};
use crate::{Arena, Source, MIN_SHARED};

/// The decrypted buffers and the plan that names them: the model buffer after
/// [`FilesPlan::moves`], the external data files as decrypted.
pub struct LaidOut {
    pub plan: FilesPlan,
    pub model: DecryptedBytes,
    pub external: BTreeMap<String, DecryptedBytes>,
}

/// The graph and each file's buffer under its name ([`LaidOut::into_buffers`]).
pub type Buffers = (Vec<u8>, Vec<(String, FileBuffer)>);

/// One buffer of a session's files, taken out of a [`LaidOut`].
pub enum FileBuffer {
    /// A decrypted buffer, of which onnxruntime reads the first `usize` bytes.
    Decrypted(DecryptedBytes, usize),
    /// The aligned copies.
    Arena(Arena),
}

impl FileBuffer {
    /// The bytes onnxruntime is handed.
    pub fn bytes(&self) -> &[u8] {
        match self {
            FileBuffer::Decrypted(d, len) => &d[..*len],
            FileBuffer::Arena(a) => a.bytes(),
        }
    }
}

/// Plans the session files of the decrypted model `model` (indexed by `index`; its
/// `skeleton` when the model file is filled on demand) and its decrypted `external` files,
/// under file names that start with `tag` and a number new in the process (onnxruntime
/// takes the first file of a name given to a `SessionOptions`), and makes the moves in
/// the model buffer.
pub fn lay_out(
    index: &Model,
    mut model: DecryptedBytes,
    skeleton: Option<Skeleton>,
    external: BTreeMap<String, DecryptedBytes>,
    tag: &str,
) -> Result<LaidOut, CoreError> {
    static SESSIONS: AtomicU64 = AtomicU64::new(0);
    let prefix = format!("{tag}.{}.", SESSIONS.fetch_add(1, Ordering::Relaxed));
    let bytes = |l: &str| external.get(l).map(|d| &d[..]);
    let ahead = read_ahead(index, &external)?;
    // A model file filled on demand: the graph from its skeleton, its tensors where they
    // are; otherwise its tensors moved to aligned offsets.
    let plan = match &skeleton {
        Some(s) => {
            prepare_files(index, &s.bytes, ModelBuffer::Fixed { holes: &s.holes, at: &s.at }, bytes, &ahead, &prefix)
        }
        None => prepare_files(index, &model, ModelBuffer::Movable, bytes, &ahead, &prefix),
    }?;
    model.move_within(&plan.moves)?;
    Ok(LaidOut { plan, model, external })
}

/// The external tensors of fewer than [`MIN_SHARED`] bytes in files filled on demand, by
/// index, read and verified without filling the files' memory ([`DecryptedBytes::read_verified`]):
/// onnxruntime reads such tensors (quantisation scales and zero points) in a pass over the
/// graph before it reads the weights, and reading them through the memory would fill every
/// block it touches then, and again for the weights (an int8 ResNet-50's 25 blocks of 1 MiB:
/// 50 fills, with them read ahead 29).
fn read_ahead(
    index: &Model,
    external: &BTreeMap<String, DecryptedBytes>,
) -> Result<HashMap<usize, Vec<u8>>, CoreError> {
    let mut wanted: BTreeMap<usize, Vec<(usize, Range<usize>)>> = BTreeMap::new();
    for (i, t) in index.tensors.iter().enumerate() {
        let TensorData::External { file, range } = &t.data else { continue };
        let (Ok(start), Ok(end)) = (usize::try_from(range.start), usize::try_from(range.end)) else { continue };
        if t.nbytes < MIN_SHARED && start < end {
            wanted.entry(*file).or_default().push((i, start..end));
        }
    }
    let mut out = HashMap::new();
    for (file, tensors) in wanted {
        let Some(d) = index.external_files.get(file).and_then(|f| external.get(&f.location)) else { continue };
        if d.method() != Method::OnDemand {
            continue;
        }
        let ranges: Vec<Range<usize>> = tensors.iter().map(|(_, r)| r.clone()).collect();
        if let Some(read) = d.read_verified(&ranges) {
            out.extend(tensors.into_iter().map(|(i, _)| i).zip(read?));
        }
    }
    Ok(out)
}

impl LaidOut {
    /// How many bytes of the buffer `source` onnxruntime reads.
    pub fn len(&self, source: &Source) -> usize {
        match source {
            Source::Model => self.plan.model_len,
            Source::External(l) => self.external.get(l).map_or(0, |d| d.len()),
            Source::Arena => self.plan.arena.bytes().len(),
        }
    }

    /// The graph and each file's buffer under its name. External data files the graph
    /// does not name are verified (a chunk filled on demand that does not match fails)
    /// and dropped.
    pub fn into_buffers(self) -> Result<Buffers, CoreError> {
        let LaidOut { plan, model, mut external } = self;
        let (mut model, mut arena) = (Some(model), Some(plan.arena));
        let mut files = Vec::with_capacity(plan.files.len());
        for f in plan.files {
            let buffer = match f.source {
                Source::Model => model.take().map(|m| FileBuffer::Decrypted(m, plan.model_len)),
                Source::External(l) => external.remove(&l).map(|d| {
                    let len = d.len();
                    FileBuffer::Decrypted(d, len)
                }),
                Source::Arena => arena.take().map(FileBuffer::Arena),
            };
            files.push((f.name, buffer.ok_or(CoreError::Internal("a file of the session named twice"))?));
        }
        external.values().try_for_each(DecryptedBytes::settle)?;
        Ok((plan.graph, files))
    }
}
