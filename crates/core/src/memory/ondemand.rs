//! Decryption into memory filled on demand ([`InMemory::on_demand`](super::InMemory::on_demand)).
//!
//! The model file is decrypted as by [`InMemory::load`](super::InMemory::load). The external data files
//! become one region of memory filled on demand ([`onnx_protect_fsio::ondemand`]): the
//! first read of a block makes a handler thread read its chunks from the file, hash and
//! decrypt them, and install each chunk once its hash is the one expected for it
//! (docs/format.md §9). Nothing unverified is handed over:
//!
//! * A header that lists the external files' chunk hashes (`external_leaves`, §3) is
//!   checked against the content digest first (with the model file's own chunk hashes),
//!   and each chunk is checked against its listed hash when it is filled. No pass over
//!   the external files comes first. A chunk that does not match is filled with zeros
//!   instead, and [`DecryptedBytes::settle`] refuses the whole load: what was built from
//!   the region must be thrown away.
//! * Without the list (files written before it existed), the external files are read
//!   once and only hashed, the digest is checked, and the chunks are checked against the
//!   hashes of that pass when filled.
//!
//! While a session is being built, the blocks filled longest ago are dropped beyond a
//! budget (a little more than the largest tensor of the region aligned to its element
//! type: one that is not is copied in one pass before it is read), so weights that the runtime
//! copied into buffers of its own (onnxruntime's prepacked `MatMul` weights) stop counting.
//! [`DecryptedBytes::settle`] ends that, after hashing every chunk that was never filled
//! (so the whole content is verified when it returns); every block read after it stays.
//! The chunks of tables only gathered from (embeddings), which a runtime does not read
//! while it builds a session, are hashed meanwhile on a thread of their own (`Ahead`), so
//! `settle` finds them done; after `settle`, at most `TABLE_CAP_BLOCKS` blocks wholly inside
//! such tables stay filled (the oldest goes when a row of another block is read). A
//! chunk that no longer matches after `settle` (its file changed on disk) ends the process
//! (see the fsio module).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::{Builder, JoinHandle};

use onnx_protect_crypto::{leaf_split, ContentLeaf, FileLeaves};
use onnx_protect_format::discover::TensorRole;
use onnx_protect_format::DataType;
use onnx_protect_fsio::file::read_exact_at;
use onnx_protect_fsio::ondemand::{self, Fill, OnDemand, Options};
use onnx_protect_fsio::PrivateMap;

use super::decrypted::{Backing, DecryptedBytes, DecryptedModel, FilledOnDemand, Skeleton};
use super::patch::{io_error, restore, too_large, Patcher, Piece, SpanSource};
use super::relocate::{model_holes, relocate, Located, Relocated};
use crate::error::{CoreError, Modified, Result};
use crate::pass::action::Action;
use crate::pass::decryption::{Decryption, NewEntry};
use crate::target::Target;

mod read;
use read::{hash_leaf, hash_leaves};

/// A chunk is read, hashed and decrypted in slices this long (they stay in the core's
/// cache between the three).
const SLICE: usize = 256 << 10;

/// The region's block: the digest chunk, and at least this much.
const BLOCK: u64 = 1 << 20;

/// A model file shorter than this is decrypted whole, even when asked to be filled on
/// demand ([`InMemory::model_on_demand`](super::InMemory::model_on_demand)).
const MODEL_MIN: u64 = 16 << 20;

/// A chunk a reader waits for is hashed and decrypted by two threads when it is this
/// large or larger: the 1 MiB chunks of a small model are done sooner by one thread than by
/// two, one of them started for the chunk (a 25 MiB int8 ResNet-50 opened in 86–95 ms with
/// two, 71–90 ms with one, seven runs each).
const SPLIT_MIN: u64 = 4 << 20;

/// Digest chunks larger than this are not filled on demand (a block holds a whole chunk).
const MAX_CHUNK: u64 = 64 << 20;

/// The budget is the largest external tensor and this many blocks more at most (the block
/// it ends in past its length, and room for filling ahead of the reader); see [`slack`].
const BUDGET_SLACK: u64 = 4;

/// The budget's blocks past the largest tensor in a region of `blocks` blocks: an eighth of
/// them, two at least (the block the tensor ends in, and one ahead), [`BUDGET_SLACK`] at
/// most. In a small region a fixed slack would keep most of it filled while onnxruntime
/// holds its own copies (a 25 MiB int8 ResNet-50 with external data: 1.24× the plain
/// session's peak RSS with four, 1.15× with two), and a reader that spends longer on each
/// byte (int8, fp16) needs less room ahead; a large one read at onnxruntime's fp32 pace does
/// (ViT-B/16, 330 MiB: 1.02–1.03× the plain session's time with four, 1.12–1.13× with two;
/// docs/performance.md). A reader that copies each byte once keeps [`BUDGET_SLACK`].
fn slack(blocks: usize) -> u64 {
    (blocks as u64 / 8).clamp(2, BUDGET_SLACK)
}

/// Blocks wholly inside a table only gathered from stay filled after `settle` within this
/// many blocks (a runtime reads rows of them, a block for each new row's block: without a
/// cap a long generation would keep the whole table).
const TABLE_CAP_BLOCKS: usize = 16;

/// How the runtime reads the region: [`InMemory::read_once`](super::InMemory::read_once),
/// [`InMemory::verify_on_read`](super::InMemory::verify_on_read),
/// [`InMemory::reads_few`](super::InMemory::reads_few).
#[derive(Clone, Copy)]
pub(super) struct Reader {
    pub once: bool,
    pub verify_on_read: bool,
    pub few: bool,
}

/// The on-demand load of `d` when `wanted` and the system can, or `d` back; with
/// `model_too`, the model file's large tensors are filled on demand as well.
pub(super) fn on_demand_if(
    wanted: bool,
    reader: Reader,
    model_too: bool,
    d: Decryption<'_>,
) -> Result<std::result::Result<DecryptedModel, Decryption<'_>>> {
    let model_fills = model_too && d.model.bytes().len() as u64 >= MODEL_MIN;
    if wanted && (model_fills || !d.model.external_files.is_empty()) && ondemand::available() {
        on_demand(d, reader, model_fills)
    } else {
        Ok(Err(d))
    }
}

/// The on-demand load of `d`, or `d` back when it does not apply or the region cannot be
/// made (memory, map limits); `reader`: how the runtime reads it ([`Reader`]);
/// `model_too`: the model file's large tensors in the region too (its other bytes in a
/// skeleton, [`DecryptedModel::skeleton`]).
fn on_demand(
    d: Decryption<'_>,
    reader: Reader,
    model_too: bool,
) -> Result<std::result::Result<DecryptedModel, Decryption<'_>>> {
    let model = d.model;
    let (Some(expected), None, NewEntry::Remove) = (&d.pending, &d.names, &d.new_entry) else { return Ok(Err(d)) };
    if d.chunk > MAX_CHUNK {
        return Ok(Err(d));
    }
    let chunk = d.chunk;
    let block = chunk.max(BLOCK);

    // The model file: its large tensors left to the region and the rest in a skeleton, or
    // all of it hashed and decrypted as by the one-read path.
    let sources = d.actions.iter().map(SpanSource::of).collect::<Result<Vec<_>>>()?;
    let patcher = Patcher { model, targets: &d.targets, sources: &sources };
    let mut holes = if model_too { model_holes(model, d.content_len()) } else { Vec::new() };
    let in_region = match holes.is_empty() {
        true => None,
        false => patcher.model_skeleton(&d, &holes)?,
    };
    if in_region.is_none() {
        // The model file is decrypted whole: none of its tensors is in the region.
        holes.clear();
    }
    let external_total: u64 = model.external_files.iter().map(|f| f.size).sum();
    if external_total == 0 && in_region.is_none() {
        return Ok(Err(d));
    }
    let at = relocate(&holes);
    let (model_bytes, first, skeleton) = match in_region {
        Some((skeleton, first, pieces)) => {
            let path = model.path.clone().unwrap_or_else(|| PathBuf::from("<model>"));
            let source = model.source_file().ok_or(CoreError::Internal("a skeleton of a model read from no file"))?;
            let handle = source.try_clone().map_err(|e| io_error(&path, e))?;
            let leaves = first.leaves.clone();
            let size = holes.iter().zip(&at).map(|(h, a)| a + (h.end - h.start)).max().unwrap_or(0);
            let tensors = holes.iter().cloned().zip(at.iter().copied()).collect();
            let moved = Some(Relocated { content_len: first.len, tensors });
            let f = ExternalFile { file: handle, path, size, first_block: 0, index: 0, leaves, pieces, moved };
            (Err(f), first, Some(skeleton))
        }
        None => match patcher.model_file_fused(&d)? {
            Some((bytes, first)) => (Ok(bytes), first, None),
            None => return Ok(Err(d)),
        },
    };

    // The external files' chunk hashes: listed in the header (checked against the digest
    // here, each chunk when it is read), or from a pass that hashes the files.
    let sizes: Vec<u64> = model.external_files.iter().map(|f| f.size).collect();
    let mut files = Vec::with_capacity(model.external_files.len() + 1);
    let mut first_block = 0usize;
    let own = match model_bytes {
        Ok(bytes) => Some(bytes),
        Err(f) => {
            first_block = usize::try_from(f.size.div_ceil(block)).map_err(|_| too_large())?;
            files.push(f);
            None
        }
    };
    // The region's file of external file `i`.
    let shift = files.len();
    let listed = expected.check_listed(&first, &sizes, chunk).transpose()?.is_some();
    let mut listed_leaves = expected.external.iter().copied();
    let mut all = vec![first];
    let mut pieces = patcher.external_pieces()?;
    for (fi, f) in model.external_files.iter().enumerate() {
        let handle = f.file()?.try_clone().map_err(|e| io_error(&f.path, e))?;
        let index = fi as u32 + 1;
        let n = usize::try_from(f.size.div_ceil(chunk)).map_err(|_| too_large())?;
        let leaves = if listed {
            listed_leaves.by_ref().take(n).collect()
        } else {
            hash_leaves(&handle, &f.path, f.size, index, chunk, &(0..n as u64).collect::<Vec<_>>())?
        };
        all.push(FileLeaves { len: f.size, leaves: leaves.clone() });
        let blocks = usize::try_from(f.size.div_ceil(block)).map_err(|_| too_large())?;
        files.push(ExternalFile {
            file: handle,
            path: f.path.clone(),
            size: f.size,
            first_block,
            index,
            leaves,
            pieces: pieces.remove(&fi).unwrap_or_default(),
            moved: None,
        });
        first_block += blocks;
    }
    if !listed {
        expected.check(&all)?;
    }
    // A chunk of the model file was hashed in the pass that checked the digest, as are
    // the external files' when their hashes are not listed.
    let check = Arc::new(Check {
        verified: Mutex::new(files.iter().map(|f| vec![f.index == 0 || !listed; f.leaves.len()]).collect()),
        failed: Mutex::new(None),
        chunk,
    });
    let located = Located { shift, holes: &holes, at: &at };

    // The budget: the largest tensor of the region (in whole blocks, either side), and slack.
    // Tables only gathered from (embeddings) are left out: a runtime reads the rows it
    // gathers, not the whole table at once, so a table larger than every other tensor
    // (a language model's) would otherwise keep every block read while the session is
    // built (a dropped block read again is filled again, verified as before).
    let tables: HashSet<usize> = onnx_protect_format::discover::discover(model)
        .into_iter()
        .filter(|w| !w.uses.is_empty() && w.uses.iter().all(|u| u.tensor_role == TensorRole::Embedding))
        .map(|w| w.tensor)
        .collect();
    // A tensor not aligned to its element type is copied by onnxruntime (and by the
    // loaders) in one pass before anything else reads it, so it needs no room either.
    let largest = model
        .tensors
        .iter()
        .enumerate()
        .filter(|(i, _)| !tables.contains(i))
        .filter_map(|(_, t)| located.of(t).map(|(_, r)| (t, r)))
        .filter(|(t, r)| r.start % t.data_type.bits().div_ceil(8).clamp(1, 16) == 0)
        .map(|(_, r)| r.end - r.start)
        .max()
        .unwrap_or(0);
    // A reader that copies each byte once needs no tensor kept whole, nor one that reads few
    // (onnxruntime with prepacking off reads a weight while it builds to make its own copy:
    // NCHWc filters, a folded cast).
    let once = reader.once || reader.few;
    let kept = if once { 0 } else { largest.div_ceil(block) };
    let slack = if once { BUDGET_SLACK } else { slack(first_block) };
    let budget = usize::try_from((kept + slack) * block).unwrap_or(usize::MAX);
    let block_len = usize::try_from(block).map_err(|_| CoreError::Internal("block size"))?;
    let region_len = first_block.checked_mul(block_len).ok_or_else(too_large)?;
    // The region first, then what fills it: `d` is still whole if the region cannot be made.
    // Nothing can read the region before it is handed out below, after the filler is in;
    // the handler's head start waits for the filler's lock until then.
    let slot: Arc<Mutex<Option<Filler>>> = Arc::new(Mutex::new(None));
    let mut filling = slot.lock().unwrap_or_else(PoisonError::into_inner);
    let from_slot = Arc::clone(&slot);
    let made = OnDemand::new(
        region_len,
        Options { block: block_len, budget, move_pages: true, fill_idle: !reader.few, in_order_only: reader.few },
        Box::new(move |b, fill| match from_slot.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            Some(f) => f.fill(b, fill),
            None => Err("a region read before its filler was set".into()),
        }),
    );
    let Ok(region) = made else {
        drop(filling);
        return Ok(Err(d));
    };
    let dtypes = d.targets.iter().map(|t| model.tensors[t.tensor].data_type).collect();
    let ranges = table_ranges(model, &tables, &located);
    let groups = block_groups(model, &files, block, first_block, &located);
    let Decryption { targets, actions, tensors, decrypted_bytes, format_version, tier, tiers, .. } = d;
    let files = Arc::new(files);
    *filling = Some(Filler {
        files: Arc::clone(&files),
        targets,
        actions,
        dtypes,
        block,
        check: Arc::clone(&check),
        chunk: None,
    });
    drop(filling);
    // The handler holds the region's lock while it fills: these wait for its first fill.
    region.cap_after_settle(table_blocks(&ranges, &files, block), TABLE_CAP_BLOCKS * block_len);
    region.group_blocks(groups);
    // A reader that copies once reads the tables whole too: their chunks are hashed as filled.
    // Verified when read, the tables need no thread either.
    let ahead = if listed && !reader.once && !reader.verify_on_read {
        Ahead::start(&files, &check, table_chunks(&ranges, chunk))
    } else {
        Ahead::none()
    };
    let verify_unread = !(listed && reader.verify_on_read);
    let region = Arc::new(Region { region, files, check, ahead, verify_unread, settled: OnceLock::new() });
    let on_demand = |e: &ExternalFile| {
        let backing = Backing::OnDemand {
            region: Arc::clone(&region) as Arc<dyn FilledOnDemand>,
            offset: e.first_block * block_len,
        };
        DecryptedBytes { backing, len: e.size as usize, plaintext: Vec::new() }
    };
    let external: BTreeMap<String, DecryptedBytes> = model
        .external_files
        .iter()
        .zip(region.files[shift..].iter())
        .map(|(f, e)| (f.location.clone(), on_demand(e)))
        .collect();
    let model_bytes = match own {
        Some(bytes) => bytes,
        None => on_demand(&region.files[0]),
    };
    let skeleton = skeleton.map(|bytes| Skeleton {
        bytes,
        holes: holes.iter().map(|h| h.start as usize..h.end as usize).collect(),
        at: at.iter().map(|&a| a as usize).collect(),
    });
    Ok(Ok(DecryptedModel {
        model: model_bytes,
        skeleton,
        external,
        tensors,
        decrypted_bytes,
        format_version,
        tier,
        tiers,
    }))
}

/// The bytes `(region file, range)` of the tables only gathered from: a runtime reads
/// none of them while it builds a session (it gathers rows later).
fn table_ranges(
    model: &onnx_protect_format::Model,
    tables: &HashSet<usize>,
    at: &Located<'_>,
) -> Vec<(usize, Range<u64>)> {
    tables.iter().filter_map(|&t| at.of(&model.tensors[t])).filter(|(_, r)| r.start < r.end).collect()
}

/// The chunks `(external file, chunk)` holding any byte of `ranges`, for [`Ahead`].
fn table_chunks(ranges: &[(usize, Range<u64>)], chunk: u64) -> Vec<(usize, u64)> {
    let all: std::collections::BTreeSet<(usize, u64)> =
        ranges.iter().flat_map(|(f, r)| (r.start / chunk..=(r.end - 1) / chunk).map(move |j| (*f, j))).collect();
    all.into_iter().collect()
}

/// The blocks of the region wholly inside one of `ranges` (a block ends at the next
/// multiple of `block` or at its file's end).
fn table_blocks(ranges: &[(usize, Range<u64>)], files: &[ExternalFile], block: u64) -> Vec<usize> {
    let mut out = Vec::new();
    for (file, range) in ranges {
        let Some(f) = files.get(*file) else { continue };
        let last = if range.end >= f.size { f.size.div_ceil(block) } else { range.end / block };
        out.extend((range.start.div_ceil(block)..last).map(|k| f.first_block + k as usize));
    }
    out
}

/// The group of each of the region's `blocks` blocks: the tensor of the region with the
/// most bytes in it (its index + 1; 0 for none), so that a tensor read several times while
/// the session is built stays filled ([`OnDemand::group_blocks`]).
fn block_groups(
    model: &onnx_protect_format::Model,
    files: &[ExternalFile],
    block: u64,
    blocks: usize,
    at: &Located<'_>,
) -> Vec<u32> {
    let mut best = vec![(0u64, 0u32); blocks];
    for (i, t) in model.tensors.iter().enumerate() {
        let Some((file, range)) = at.of(t) else { continue };
        let Some(f) = files.get(file) else { continue };
        for k in range.start / block..range.end.div_ceil(block) {
            let bytes = range.end.min((k + 1) * block) - range.start.max(k * block);
            let slot = usize::try_from(k).ok().and_then(|k| best.get_mut(f.first_block + k));
            if let Some(slot) = slot.filter(|s| bytes > s.0) {
                *slot = (bytes, u32::try_from(i + 1).unwrap_or(u32::MAX));
            }
        }
    }
    best.into_iter().map(|(_, g)| g).collect()
}

/// A thread that hashes chunks no fill is expected to read before `settle` (the gathered
/// tables), on a core the session's builder leaves idle, so that `settle` finds them
/// verified. Each chunk is checked against its hash as `settle` would; the first mismatch
/// or read failure is kept for `settle`. Stopped (after the chunk it is hashing) by
/// `settle`, which hashes what is left, and when the region goes.
struct Ahead {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Ahead {
    fn none() -> Ahead {
        Ahead { stop: Arc::new(AtomicBool::new(true)), thread: Mutex::new(None) }
    }

    /// Starts hashing `todo`; none if there is nothing to do or no thread can be made
    /// (then `settle` hashes them).
    fn start(files: &Arc<Vec<ExternalFile>>, check: &Arc<Check>, todo: Vec<(usize, u64)>) -> Ahead {
        if todo.is_empty() {
            return Ahead::none();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (files, check, flag) = (Arc::clone(files), Arc::clone(check), Arc::clone(&stop));
        let spawned = std::thread::Builder::new()
            .name("onnx-protect-verify".into())
            .spawn(move || verify_ahead(&files, &check, &todo, &flag));
        Ahead { stop, thread: Mutex::new(spawned.ok()) }
    }

    /// Stops the thread and waits for it.
    fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = t.join();
        }
    }
}

fn verify_ahead(files: &[ExternalFile], check: &Check, todo: &[(usize, u64)], stop: &AtomicBool) {
    let mut buf = None;
    for &(fi, j) in todo {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let done = |v: &Vec<Vec<bool>>| v.get(fi).and_then(|f| f.get(j as usize)).copied().unwrap_or(true);
        if done(&check.verified.lock().unwrap_or_else(PoisonError::into_inner)) {
            continue;
        }
        let f = &files[fi];
        let failure = match hash_leaf(&f.file, &f.path, f.size, f.index, check.chunk, j, &mut buf) {
            Ok(l) if f.leaves.get(j as usize) == Some(&l) => {
                if let Some(v) = check.verified.lock().unwrap_or_else(PoisonError::into_inner)[fi].get_mut(j as usize) {
                    *v = true;
                }
                continue;
            }
            Ok(_) => Failure::Modified,
            Err(e) => Failure::of(&e, &f.path),
        };
        check.failed.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(failure);
        return;
    }
}

/// One file of the region: an external data file, or the model file itself (index 0).
struct ExternalFile {
    file: File,
    path: PathBuf,
    size: u64,
    /// Its first block in the region.
    first_block: usize,
    /// Its number among the covered files (docs/format.md §9).
    index: u32,
    /// The hash of each of its chunks: listed in the header (checked against the content
    /// digest), or from the pass that checked the digest.
    leaves: Vec<[u8; 32]>,
    pieces: Vec<Piece>,
    /// The model file's tensors at other offsets in the region than in the file.
    moved: Option<Relocated>,
}

/// Why a fill or the verification at `settle` failed (kept to be reported again).
#[derive(Debug, Clone)]
enum Failure {
    /// A chunk does not match its hash.
    Modified,
    /// A file could not be read (or a chunk decrypted): the file and why.
    Io { path: PathBuf, kind: std::io::ErrorKind, message: String },
}

impl Failure {
    fn of(e: &CoreError, path: &Path) -> Failure {
        match e {
            CoreError::Modified(_) => Failure::Modified,
            CoreError::Format(onnx_protect_format::FormatError::Io { path, source }) => {
                Failure::Io { path: path.clone(), kind: source.kind(), message: source.to_string() }
            }
            other => {
                Failure::Io { path: path.to_path_buf(), kind: std::io::ErrorKind::Other, message: other.to_string() }
            }
        }
    }

    fn error(&self) -> CoreError {
        match self {
            Failure::Modified => Modified::Content.into(),
            Failure::Io { path, kind, message } => io_error(path, std::io::Error::new(*kind, message.clone())),
        }
    }
}

/// Which chunks have been checked against their hash, and the first failure of a fill.
struct Check {
    /// Per external file, per chunk.
    verified: Mutex<Vec<Vec<bool>>>,
    failed: Mutex<Option<Failure>>,
    chunk: u64,
}

/// The region with what `settle` needs to finish the verification.
struct Region {
    region: OnDemand,
    files: Arc<Vec<ExternalFile>>,
    check: Arc<Check>,
    /// Hashes the gathered tables while the session is built.
    ahead: Ahead,
    /// Whether `settle` hashes the chunks never filled (else each is checked when first
    /// read, [`InMemory::verify_on_read`](super::InMemory::verify_on_read)).
    verify_unread: bool,
    /// The outcome of `settle` (kept: every file of the region settles it).
    settled: OnceLock<Option<Failure>>,
}

impl Drop for Region {
    fn drop(&mut self) {
        self.ahead.finish();
    }
}

impl FilledOnDemand for Region {
    /// The region's bytes.
    fn bytes(&self) -> &[u8] {
        self.region.bytes()
    }

    /// Stops dropping blocks; then every chunk never filled is hashed and checked, so the
    /// whole content is verified. Refused (and refused again on every call) if a chunk did
    /// not match or could not be read.
    fn settle(&self) -> Result<()> {
        match self.settled.get_or_init(|| self.finish().err()) {
            None => Ok(()),
            Some(f) => Err(f.error()),
        }
    }

    /// Drops every filled block once `settle` succeeded.
    fn trim(&self) {
        if matches!(self.settled.get(), Some(None)) {
            self.region.trim();
        }
    }
}

impl Region {
    fn finish(&self) -> std::result::Result<(), Failure> {
        if self.region.settle().is_err() {
            let failed = self.check.failed.lock().unwrap_or_else(PoisonError::into_inner).clone();
            return Err(failed.unwrap_or(Failure::Modified));
        }
        self.ahead.finish();
        if let Some(failed) = self.check.failed.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return Err(failed);
        }
        if !self.verify_unread {
            return Ok(());
        }
        let unverified: Vec<Vec<u64>> = {
            let v = self.check.verified.lock().unwrap_or_else(PoisonError::into_inner);
            v.iter().map(|f| f.iter().enumerate().filter(|(_, &ok)| !ok).map(|(j, _)| j as u64).collect()).collect()
        };
        for (f, which) in self.files.iter().zip(unverified) {
            if which.is_empty() {
                continue;
            }
            let got = hash_leaves(&f.file, &f.path, f.size, f.index, self.check.chunk, &which)
                .map_err(|e| Failure::of(&e, &f.path))?;
            if which.iter().zip(got).any(|(&j, l)| f.leaves.get(j as usize) != Some(&l)) {
                return Err(Failure::Modified);
            }
        }
        Ok(())
    }
}

/// A step of a fill: its result, or the error and what failed ("could not be read", …).
type Step<T> = std::result::Result<T, (CoreError, &'static str)>;

/// What fills the region: the files, and what each target's pieces become.
struct Filler {
    files: Arc<Vec<ExternalFile>>,
    targets: Vec<Target>,
    actions: Vec<Action>,
    dtypes: Vec<DataType>,
    block: u64,
    check: Arc<Check>,
    /// The model file's chunk last verified and decrypted, for blocks of tensors moved in
    /// the region ([`Relocated`]): `(chunk, its bytes)`.
    chunk: Option<(u64, PrivateMap)>,
}

impl Filler {
    /// Block `b`: its chunks read from the file, each hashed and decrypted in slices of
    /// [`SLICE`] bytes while they are in the core's cache, and handed over once it matches
    /// its hash (until then its decrypted bytes are the handler's only).
    fn fill(&mut self, b: usize, fill: &mut Fill<'_>) -> std::result::Result<(), String> {
        let fi = self.files.partition_point(|f| f.first_block <= b).saturating_sub(1);
        let files = Arc::clone(&self.files);
        let f = &files[fi];
        if let Some(moved) = &f.moved {
            return self.fill_moved(f, moved, b, fill);
        }
        let chunk = self.check.chunk;
        let start = (b - f.first_block) as u64 * self.block;
        let len = f.size.saturating_sub(start).min(self.block);
        let mut at = 0u64;
        while at < len {
            let end = (at + chunk).min(len);
            let j = (start + at) / chunk;
            let range = start + at..start + end;
            // Not on the rayon pool: a thread of it may be the reader waiting for this block,
            // so waiting for the pool here could wait forever. While a reader waits (its core
            // idle), a thread of our own takes a whole chunk's second half.
            let two = fill.reader_waits() && end - at == chunk && chunk >= SPLIT_MIN;
            let split = two.then(|| self.in_two(f, start + at, &mut fill.buf()[at as usize..end as usize], j));
            let leaf = match split.flatten() {
                Some(Ok(leaf)) => leaf,
                Some(Err((e, what))) => return Err(self.failed(e, &f.path, &range, what)),
                None => {
                    let mut leaf = ContentLeaf::new(f.index, j);
                    let mut lo = at;
                    while lo < end {
                        let hi = (lo + SLICE as u64).min(end);
                        let buf = &mut fill.buf()[lo as usize..hi as usize];
                        if let Err((e, what)) = self.slices(f, start + lo, buf, |d| leaf.update(d)) {
                            return Err(self.failed(e, &f.path, &range, what));
                        }
                        fill.poll();
                        lo = hi;
                    }
                    Some(leaf.finalize())
                }
            };
            if leaf.is_none() || f.leaves.get(j as usize) != leaf.as_ref() {
                let e = Modified::Content.into();
                return Err(self.failed(e, &f.path, &range, "does not match its hash (changed on disk?)"));
            }
            if let Some(v) = self.check.verified.lock().unwrap_or_else(PoisonError::into_inner)[fi].get_mut(j as usize)
            {
                *v = true;
            }
            fill.install(end as usize);
            at = end;
        }
        Ok(())
    }

    /// Block `b` of the model file's tensors moved in the region: each tensor's bytes in
    /// it copied from its file chunks, each chunk read, hashed and decrypted (or kept from
    /// the last fill) and used only if it matches its hash; the gaps between tensors zero.
    fn fill_moved(
        &mut self,
        f: &ExternalFile,
        moved: &Relocated,
        b: usize,
        fill: &mut Fill<'_>,
    ) -> std::result::Result<(), String> {
        let start = (b - f.first_block) as u64 * self.block;
        let len = f.size.saturating_sub(start).min(self.block);
        let end = start + len;
        let mut at = start;
        let first = moved.tensors.partition_point(|(r, to)| to + (r.end - r.start) <= start);
        for (r, to) in moved.tensors[first..].iter().take_while(|(_, to)| *to < end) {
            let (lo, hi) = (start.max(*to), end.min(to + (r.end - r.start)));
            fill.buf()[(at - start) as usize..(lo - start) as usize].fill(0);
            // The file's bytes `src` go to the region's `lo..hi`.
            let src = r.start + (lo - to)..r.start + (hi - to);
            let chunk = self.check.chunk;
            let mut pos = src.start;
            while pos < src.end {
                let j = pos / chunk;
                if let Err((e, what)) = self.chunk_of(f, moved, j) {
                    return Err(self.failed(e, &f.path, &(j * chunk..(j + 1) * chunk), what));
                }
                let Some((_, data)) = &self.chunk else { return Err("no chunk kept".into()) };
                let upto = src.end.min((j + 1) * chunk);
                let from = (pos - j * chunk) as usize;
                let dst = (lo + (pos - src.start) - start) as usize;
                let n = (upto - pos) as usize;
                fill.buf()[dst..dst + n].copy_from_slice(&data[from..from + n]);
                pos = upto;
            }
            fill.poll();
            at = hi;
        }
        fill.buf()[(at - start) as usize..len as usize].fill(0);
        fill.install(len as usize);
        Ok(())
    }

    /// Makes `self.chunk` chunk `j` of the model file `f`, verified and decrypted: kept from
    /// the last fill (a block's first bytes come from the chunk the block before ended in),
    /// or read, hashed and decrypted now.
    fn chunk_of(&mut self, f: &ExternalFile, moved: &Relocated, j: u64) -> Step<()> {
        if matches!(&self.chunk, Some((c, _)) if *c == j) {
            return Ok(());
        }
        let mut buf = match self.chunk.take() {
            Some((_, b)) => b,
            None => {
                let b = PrivateMap::anonymous(self.check.chunk as usize)
                    .map_err(|e| (io_error(&f.path, e), "could not be read"))?;
                b.exclude_from_core_dumps();
                b
            }
        };
        let pos = j * self.check.chunk;
        let len = moved.content_len.saturating_sub(pos).min(self.check.chunk) as usize;
        let mut leaf = ContentLeaf::new(f.index, j);
        self.slices(f, pos, &mut buf[..len], |d| leaf.update(d))?;
        if f.leaves.get(j as usize) != Some(&leaf.finalize()) {
            return Err((Modified::Content.into(), "does not match its hash (changed on disk?)"));
        }
        self.chunk = Some((j, buf));
        Ok(())
    }

    /// Chunk `j` of `f` (at file offset `pos`, the whole of `buf`: a whole chunk) read,
    /// hashed and decrypted into `buf` by this thread and a second one, half each (not
    /// threads of the rayon pool: one of them may be the reader waiting for this block).
    /// Its leaf (`None` if the halves did not add up), or the failure; `None` if the chunk
    /// cannot be split or no thread could be started.
    fn in_two(&self, f: &ExternalFile, pos: u64, buf: &mut [u8], j: u64) -> Option<Step<Option<[u8; 32]>>> {
        let (mut first, mut tail) = ContentLeaf::split(f.index, j, buf.len())?;
        let split = leaf_split(buf.len());
        let (a, b) = buf.split_at_mut(split);
        let done = std::thread::scope(|s| {
            let second = Builder::new()
                .name("onnx-protect-fill".into())
                .spawn_scoped(s, || self.slices(f, pos + split as u64, b, |d| tail.update(d)))
                .ok()?;
            let x = self.slices(f, pos, a, |d| first.update(d));
            let y = second.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            Some(x.and(y))
        })?;
        Some(done.map(|()| first.join(tail)))
    }

    /// The file's bytes from offset `pos` read into `buf`, a slice of [`SLICE`] bytes at a
    /// time: each hashed by `hash` and decrypted while it is in the core's cache. On failure,
    /// the error and what failed.
    fn slices(&self, f: &ExternalFile, pos: u64, buf: &mut [u8], mut hash: impl FnMut(&[u8])) -> Step<()> {
        for (i, slice) in buf.chunks_mut(SLICE).enumerate() {
            let at = pos + (i * SLICE) as u64;
            read_exact_at(&f.file, slice, at).map_err(|e| (io_error(&f.path, e), "could not be read"))?;
            hash(slice);
            let of = |tag: usize| Ok((SpanSource::of(&self.actions[tag])?, self.targets[tag].mode, self.dtypes[tag]));
            restore(&f.pieces, at, slice, of).map_err(|e| (e, "could not be decrypted"))?;
        }
        Ok(())
    }

    /// Keeps the first failure (for `settle`) and says what failed, for the region.
    fn failed(&self, e: CoreError, path: &Path, range: &std::ops::Range<u64>, what: &str) -> String {
        self.check.failed.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(Failure::of(&e, path));
        format!("{}: bytes {}..{} {what}", path.display(), range.start, range.end)
    }
}
