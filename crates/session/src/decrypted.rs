//! A model decrypted by `onnx_protect_core::memory` laid out as a session's external data
//! files in memory ([`crate::files`]): what the Python package, the C library, the `ort`
//! crate and the Node engine hand onnxruntime, planned once here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use onnx_protect_core::error::CoreError;
use onnx_protect_core::memory::{DecryptedBytes, Skeleton};
use onnx_protect_format::Model;

use crate::files::{prepare_files, FilesPlan, ModelBuffer};
use crate::{Arena, Source};

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
    // A model file filled on demand: the graph from its skeleton, its tensors where they
    // are; otherwise its tensors moved to aligned offsets.
    let plan = match &skeleton {
        Some(s) => prepare_files(index, &s.bytes, ModelBuffer::Fixed { holes: &s.holes, at: &s.at }, bytes, &prefix),
        None => prepare_files(index, &model, ModelBuffer::Movable, bytes, &prefix),
    }?;
    model.move_within(&plan.moves)?;
    Ok(LaidOut { plan, model, external })
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
