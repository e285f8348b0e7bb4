//! A model's covered files (docs/format.md §9) as one pass sees them: [`Pass`] describes
//! a pass (which targets become what, which extra edits, which side is hashed, where it
//! writes), and runs it: the plan of each file (the model's content, then its external
//! data files) from the targets' actions, the transformer that applies those actions, and
//! `pass::run`. The content digests of a protected model computed without writing (as
//! stored, or in canonical form) are passes too.

use std::ops::Range;

use onnx_protect_crypto::{content_digest, FileLeaves};
use onnx_protect_format::write::{Content, Edit, Plan};
use onnx_protect_format::{Model, NoProgress, Progress, TensorData};

use crate::error::{CoreError, Result};
use crate::pass::action::{edits_with, new_pieces, Action};
use crate::pass::{self, FileJob, Hash, Out, PassLeaves};
use crate::target::Target;

/// One pass over the covered files of a model: each output is its input (the model's
/// first `content_len` bytes, then each external data file) with every target's action
/// and the `extra` edits of the model file applied.
pub(crate) struct Pass<'a> {
    pub model: &'a Model,
    /// The model file's covered bytes: everything before a manifest entry that ends the file.
    pub content_len: u64,
    pub targets: &'a [Target],
    /// One per target (same order).
    pub actions: &'a [Action],
    /// Edits of the model file beyond the targets' (new external data locations, a
    /// manifest entry removed).
    pub extra: Vec<Edit>,
    /// Which side's content leaves are computed.
    pub hash: Hash,
    /// The content-digest chunk size.
    pub chunk: u64,
    /// Flush outputs for durability as the pass goes (see `pass::run`).
    pub durable: bool,
    pub progress: &'a dyn Progress,
}

impl<'a> Pass<'a> {
    /// A pass that applies nothing: every output is its input (for hashing or copying).
    pub(crate) fn unchanged(model: &'a Model, content_len: u64, hash: Hash, chunk: u64) -> Pass<'a> {
        Pass {
            model,
            content_len,
            targets: &[],
            actions: &[],
            extra: Vec::new(),
            hash,
            chunk,
            durable: false,
            progress: &NoProgress,
        }
    }

    /// Runs the pass, writing to `outputs` (in covered-file order; `None` or an empty
    /// list: hash only).
    pub(crate) fn run(self, outputs: &[Option<Out<'_>>]) -> Result<PassLeaves> {
        let Pass { model, content_len, targets, actions, extra, hash, chunk, durable, progress } = self;
        let plans = plans(model, content_len, targets, actions, extra)?;
        let xf = move |tag: usize, logical: u64, buf: &mut [u8]| -> Result<()> {
            let target = targets.get(tag).ok_or(CoreError::Internal("a transform of no target"))?;
            let action = actions.get(tag).ok_or(CoreError::Internal("a transform of no action"))?;
            action.apply_chunk(target, model.tensors[target.tensor].data_type, logical, buf, false)
        };
        let sources = covered_sources(model, content_len)?;
        let releasers: Vec<_> = (0..sources.len()).map(|i| releaser(model, i)).collect();
        let jobs: Vec<FileJob> = plans
            .into_iter()
            .enumerate()
            .map(|(i, plan)| FileJob {
                src: sources[i],
                release: &releasers[i],
                plan,
                index: i as u32,
                out: outputs.get(i).copied().flatten(),
            })
            .collect();
        let lens: Vec<u64> = jobs.iter().map(|j| j.plan.output_len()).collect();
        pass::run(&jobs, &xf, hash, chunk, &lens, durable, progress)
    }

    /// Runs the pass without writing and returns the leaves of the side it hashes.
    pub(crate) fn leaves(self) -> Result<Vec<FileLeaves>> {
        let side = self.hash;
        let leaves = self.run(&[])?;
        Ok(if side == Hash::Output { leaves.output } else { leaves.input })
    }
}

/// The plan of every covered file: index 0 the model file's first `content_len` bytes
/// (with `extra` edits), then each external data file in the model's order.
pub(crate) fn plans(
    model: &Model,
    content_len: u64,
    targets: &[Target],
    actions: &[Action],
    extra: Vec<Edit>,
) -> Result<Vec<Plan>> {
    let edits = edits_with(model, targets, actions, extra, true)?;
    let mut plans = vec![Plan::new(content_len, edits, Vec::new())?];
    let mut per_file: Vec<Vec<Edit>> = model.external_files.iter().map(|_| Vec::new()).collect();
    for (ti, target) in targets.iter().enumerate() {
        let t = &model.tensors[target.tensor];
        let TensorData::External { file, .. } = &t.data else { continue };
        let edits = &mut per_file[*file];
        match &actions[ti] {
            Action::Skip => {}
            Action::Xor(_) | Action::Reencrypt(_) => {
                for &(a, b) in &target.spans {
                    for (range, logical) in t.file_pieces(a, b) {
                        let content = Content::Transform { tag: ti, logical_start: logical };
                        edits.push(Edit { range, content, ancestors: Vec::new() });
                    }
                }
            }
            Action::Bytes(bytes) => {
                for (range, piece) in new_pieces(t, target, bytes)? {
                    edits.push(Edit { range, content: Content::Bytes(piece.to_vec()), ancestors: Vec::new() });
                }
            }
        }
    }
    for (f, edits) in model.external_files.iter().zip(per_file) {
        plans.push(Plan::new(f.size, edits, Vec::new())?);
    }
    Ok(plans)
}

/// The edits that write `names` (one per external data file, if given) as the model's
/// external data locations (docs/format.md §3, `original_external_files`).
pub(crate) fn relocations(model: &Model, names: Option<&[String]>) -> Result<Vec<Edit>> {
    let mut edits = Vec::new();
    for (i, name) in names.unwrap_or_default().iter().enumerate() {
        edits.extend(model.relocation_edits(i, name)?);
    }
    Ok(edits)
}

/// The bytes of every covered file: the model's first `content_len` bytes, then each
/// external data file.
pub(crate) fn covered_sources(model: &Model, content_len: u64) -> Result<Vec<&[u8]>> {
    let content = model.bytes().get(..content_len as usize).ok_or(CoreError::Internal("content beyond the model"))?;
    let mut out = vec![content];
    for f in &model.external_files {
        out.push(f.bytes()?);
    }
    Ok(out)
}

/// Releases pages of the model's map (index 0) or of an external file's map.
fn releaser(model: &Model, file: usize) -> impl Fn(Range<u64>) + Sync + '_ {
    move |r| {
        if file == 0 {
            model.release(r)
        } else if let Some(f) = model.external_files.get(file - 1) {
            f.release(r)
        }
    }
}

/// The content leaves of the covered files as stored (docs/format.md §9), file 0 first.
pub(crate) fn stored_leaves(model: &Model, content_len: u64, chunk: u64) -> Result<Vec<FileLeaves>> {
    Pass::unchanged(model, content_len, Hash::Input, chunk).leaves()
}

/// The digest of one side of a pass.
pub(crate) fn digest_of(leaves: &[FileLeaves]) -> [u8; 32] {
    content_digest(leaves)
}
