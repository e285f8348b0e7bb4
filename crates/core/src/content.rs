//! A model's covered files (docs/format.md §9) as the pass sees them: the plan of each
//! file (the model's content, then its external data files) from the targets' actions,
//! the transformer that applies those actions, and the content digests of a protected
//! model computed without writing (as stored, or in canonical form).

use std::ops::Range;

use onnx_protect_crypto::{content_digest, FileLeaves};
use onnx_protect_format::write::{Content, Edit, Plan};
use onnx_protect_format::{Model, NoProgress, Progress, TensorData};

use crate::action::{edits_with, new_pieces, Action};
use crate::error::{CoreError, Result};
use crate::manifest::Target;
use crate::pass::{self, FileJob, Hash, Out, PassLeaves, Transformer};

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

/// Applies `actions[tag]` to a piece of target `tag`.
pub(crate) fn transformer<'a>(
    model: &'a Model,
    targets: &'a [Target],
    actions: &'a [Action],
) -> impl Fn(usize, u64, &mut [u8]) -> Result<()> + Sync + 'a {
    move |tag, logical, buf| {
        let target = targets.get(tag).ok_or_else(|| CoreError::Internal("no such target".into()))?;
        let dtype = model.tensors[target.tensor].data_type;
        actions[tag].apply_chunk(target, dtype, logical, buf, false)
    }
}

/// The bytes of every covered file: the model's first `content_len` bytes, then each
/// external data file.
pub(crate) fn covered_sources(model: &Model, content_len: u64) -> Result<Vec<&[u8]>> {
    let content = model
        .bytes()
        .get(..content_len as usize)
        .ok_or_else(|| CoreError::Internal("content beyond the model".into()))?;
    let mut out = vec![content];
    for f in &model.external_files {
        out.push(f.bytes()?);
    }
    Ok(out)
}

/// Releases pages of the model's map (index 0) or of an external file's map.
pub(crate) fn releaser(model: &Model, file: usize) -> impl Fn(Range<u64>) + Sync + '_ {
    move |r| {
        if file == 0 {
            model.release(r)
        } else if let Some(f) = model.external_files.get(file - 1) {
            f.release(r)
        }
    }
}

/// Runs one pass over the covered files of `model` with `plans`, writing to `outputs`
/// (same order; `None` or an empty list: hash only).
#[allow(clippy::too_many_arguments)] // the pass's whole input, named at each call
pub(crate) fn run_covered(
    model: &Model,
    content_len: u64,
    plans: Vec<Plan>,
    xf: &dyn Transformer,
    hash: Hash,
    chunk: u64,
    outputs: &[Option<Out<'_>>],
    durable: bool,
    progress: &dyn Progress,
) -> Result<PassLeaves> {
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
    pass::run(&jobs, xf, hash, chunk, &lens, durable, progress)
}

/// The digest of the covered files as stored (docs/format.md §9).
pub(crate) fn stored_digest(model: &Model, content_len: u64, chunk: u64) -> Result<[u8; 32]> {
    let n = 1 + model.external_files.len();
    let mut plans = vec![Plan::new(content_len, Vec::new(), Vec::new())?];
    for f in &model.external_files {
        plans.push(Plan::new(f.size, Vec::new(), Vec::new())?);
    }
    let none = |_: usize, _: u64, _: &mut [u8]| Ok(());
    let leaves = run_covered(model, content_len, plans, &none, Hash::Input, chunk, &vec![None; n], false, &NoProgress)?;
    Ok(content_digest(&leaves.input))
}

/// The digest of the covered files with `actions` applied (the canonical form of a
/// partially decrypted model: its restored tiers encrypted again).
pub(crate) fn transformed_digest(
    model: &Model,
    content_len: u64,
    targets: &[Target],
    actions: &[Action],
    chunk: u64,
) -> Result<[u8; 32]> {
    let plans = plans(model, content_len, targets, actions, Vec::new())?;
    let n = plans.len();
    let xf = transformer(model, targets, actions);
    let leaves = run_covered(model, content_len, plans, &xf, Hash::Output, chunk, &vec![None; n], false, &NoProgress)?;
    Ok(content_digest(&leaves.output))
}

/// The digest of one side of a pass.
pub(crate) fn digest_of(leaves: &[FileLeaves]) -> [u8; 32] {
    content_digest(leaves)
}
