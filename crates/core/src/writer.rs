//! Writing an output (the model file and its external data files) in one pass.
//!
//! The output is the input with some ranges changed. It is cut into work items, which
//! the worker threads (rayon) take in file order:
//!
//! * **groups**: the chunk jobs (§7 of docs/format.md) whose bytes are encrypted,
//!   decrypted or re-encrypted here, with the stretches of the source that hold them
//!   (**runs**: their pieces and the unchanged gaps between them). Chunk jobs whose
//!   pieces interleave in a file (an access-tiered model's tiers share the rows of a
//!   weight) form one group, so that one worker owns every byte of the stretch it
//!   writes and feeds each job's hash in order; otherwise a group is one job. A worker
//!   reads each run a window ([`WINDOW`] bytes) at a time into a buffer of its own
//!   (`pread`), hashes the pieces' stored bytes there when read leaves are asked for
//!   (decryption and key rotation check the MAC over the ciphertext they read),
//!   transforms them in place, hashes the result when written leaves are asked for
//!   (the hash sees exactly the bytes that are written) and writes the window with one
//!   `pwrite`;
//! * **puts**: new bytes of the edit plan (a re-encoded varint tensor, a replaced or
//!   removed manifest entry, length prefixes, spans transformed beforehand);
//! * **copies**: the long stretches between runs, copied inside the kernel with
//!   `copy_file_range` (falling back to writes from the map where the kernel or the
//!   file systems refuse), so they never pass through this process;
//! * **hash-only jobs**: the leaves of targets whose new bytes are puts.
//!
//! Every output byte is written once, and the bytes of a span reach the output only
//! after they are transformed: an encryption never puts plaintext of a span into the
//! output's pages, a key rotation's plaintext only lives in the worker's buffer (wiped
//! after each group), and the output is never mapped (a failed write is an error, never
//! a `SIGBUS`). Both workers write at once (the kernel serializes writes to one file).
//! The pass does not map the source either (reads are `pread`s), so the resident set is
//! the workers' buffers whatever the size of the model.
//!
//! Once every item is done, the caller's `append` gets the leaves: it builds the
//! appended bytes (an encryption's new manifest entry, written last) or refuses the
//! output (a decryption whose MAC does not match: every staged file is then removed).
//! A durable output is handed to the disk every [`WRITEBACK_STEP`] bytes during the
//! pass, so the fsync of the commit finds little left to do.
//!
//! The system calls (positional reads and writes, preallocation, kernel copies,
//! writeback) are those of `onnx_protect_fsio::file`.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use onnx_protect_crypto::{Leaf, LeafHash};
use onnx_protect_format::model::ExternalFile;
use onnx_protect_format::write::{Content, Edit, Plan};
use onnx_protect_format::{Model, Progress, Tensor, TensorData};
use onnx_protect_fsio::file::{copy_range, preallocate, read_exact_at, start_writeback, write_all_at};
use rayon::prelude::*;
use zeroize::Zeroize;

use crate::action::{edits_with, new_pieces, Action};
use crate::error::{CoreError, Result};
use crate::manifest::{Target, CHUNK_SIZE};
use crate::seal::{chunk_jobs, ChunkJob, Gather, ReleaseOnDrop};
use crate::staged::{Outputs, Staged};

/// Bytes a worker reads, transforms and writes at a time. Smaller windows cost more
/// system calls; on the 1 GiB benchmark model of docs/performance.md, windows of
/// 512 KiB and 1 MiB take the same time.
const WINDOW: usize = 512 << 10;

/// Tests set a window of another size here (0: [`WINDOW`]).
#[cfg(test)]
static TEST_WINDOW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn window_len() -> usize {
    #[cfg(test)]
    if let w @ 1.. = TEST_WINDOW.load(Ordering::Relaxed) {
        return w;
    }
    WINDOW
}
/// Pieces of a group closer than this are written together with the gap between them
/// (through the window buffer, on both cores); longer unchanged stretches are copied
/// inside the kernel (one core, no pass through this process).
const MERGE_GAP: u64 = 1 << 20;
/// Unchanged stretches are copied in pieces of at most this size (parallelism, progress).
const COPY_STEP: u64 = 8 << 20;

/// Which leaves (chunk digests, §7 of docs/format.md) the pass computes.
#[derive(Clone, Copy)]
pub(crate) struct Leaves<'a> {
    pub(crate) chunk: u64,
    /// Leaves of the bytes written (the ciphertext an encryption or a key rotation
    /// writes), with this hash; `None`: not computed.
    pub(crate) written: Option<LeafHash>,
    /// Leaves of the bytes each chunk holds in the source (the ciphertext a decryption
    /// or a key rotation reads), with this hash; `None`: not computed. The pass that
    /// decrypts thus also computes what the MAC check needs.
    pub(crate) read: Option<LeafHash>,
    /// Written leaves the caller computed itself, by target (in chunk order): those
    /// targets' bytes are written but not hashed (`rekey`'s restored tiers, whose
    /// leaves are over their encryption under the new keys, not over the plaintext
    /// written).
    pub(crate) given: Option<&'a LeavesByTarget>,
}

/// Leaves by target index, each target's in chunk order.
pub(crate) type LeavesByTarget = HashMap<usize, Vec<[u8; 32]>>;

/// The leaves a pass computed for every chunk job, in job order (each list empty unless
/// [`Leaves`] asked for it).
struct PassLeaves {
    written: Vec<[u8; 32]>,
    read: Vec<[u8; 32]>,
}

/// The leaves of one chunk job.
struct JobLeaves {
    job: usize,
    written: Option<[u8; 32]>,
    read: Option<[u8; 32]>,
}

/// One output file and where its bytes come from.
struct Stream<'a> {
    /// The source bytes, mapped.
    map: &'a [u8],
    /// The source file, for reads and in-kernel copies; `None`: everything comes from `map`.
    src: Option<&'a File>,
    /// The external data file behind `map`, whose pages are released once copied from.
    ext: Option<&'a ExternalFile>,
    /// The model, when `map` is the model file's (its pages are released once copied from).
    model: Option<&'a Model>,
    dst: &'a File,
    path: PathBuf,
    /// The source's path (for errors).
    src_path: PathBuf,
    /// `(source end of an edit, output − source offset after it)`, in file order.
    shifts: Vec<(u64, i64)>,
}

impl Stream<'_> {
    /// Writes `bytes` at output offset `at`.
    fn write(&self, bytes: &[u8], at: u64) -> Result<()> {
        write_all_at(self.dst, bytes, at).map_err(|e| self.write_err(e))
    }

    /// The output offset of source byte `src` (outside length-changing edits).
    fn out_at(&self, src: u64) -> u64 {
        let i = self.shifts.partition_point(|s| s.0 <= src);
        let d = if i == 0 { 0 } else { self.shifts[i - 1].1 };
        src.wrapping_add_signed(d)
    }

    fn write_err(&self, e: std::io::Error) -> CoreError {
        CoreError::Write { path: self.path.clone(), source: e }
    }

    fn read_err(&self, e: std::io::Error) -> CoreError {
        let path = self.src_path.clone();
        CoreError::Format(onnx_protect_format::FormatError::Io { path, source: e })
    }

    /// The bytes of `range` of the source map.
    fn slice(&self, range: Range<u64>) -> Result<&[u8]> {
        self.map
            .get(range.start as usize..range.end as usize)
            .ok_or_else(|| self.read_err(std::io::Error::other("range beyond the end of the file")))
    }

    /// Reads `range` of the source into `buf` (of its length): from the file when there
    /// is one (no page of the source is mapped into this process), else from the map.
    fn read_into(&self, range: Range<u64>, buf: &mut [u8]) -> Result<()> {
        if range.end > self.map.len() as u64 {
            return Err(self.read_err(std::io::Error::other("range beyond the end of the file")));
        }
        match self.src {
            Some(f) => read_exact_at(f, buf, range.start).map_err(|e| self.read_err(e)),
            None => {
                buf.copy_from_slice(self.slice(range)?);
                Ok(())
            }
        }
    }

    /// Drops this process's mapping of the source pages of `range` (with the kernel's
    /// fault-around window on each side), so streaming a file of any size keeps the
    /// resident set small; the pages stay in the page cache.
    fn release(&self, range: Range<u64>) {
        const AROUND: u64 = 64 << 10;
        let wide = range.start.saturating_sub(AROUND)..range.end + AROUND;
        match (self.ext, self.model) {
            (Some(f), _) => f.release(wide),
            (None, Some(m)) => m.release(wide),
            (None, None) => {}
        }
    }

    /// Copies `range` of the source unchanged to its output offset.
    fn copy(&self, range: Range<u64>) -> Result<()> {
        let out = self.out_at(range.start);
        let mut done = 0u64;
        if let Some(src) = self.src {
            done = copy_in_kernel(src, self.dst, range.start, out, range.end - range.start)
                .map_err(|e| self.read_err(e))?;
        }
        let mut at = range.start + done;
        while at < range.end {
            let n = (range.end - at).min(COPY_STEP);
            self.write(self.slice(at..at + n)?, out + (at - range.start))?;
            self.release(at..at + n);
            at += n;
        }
        Ok(())
    }
}

/// A piece of a chunk job in a source file: its range, its logical offset in the
/// target's element bytes, and the job's place in its [`Group`].
#[derive(Clone, Debug, PartialEq)]
struct Piece {
    range: Range<u64>,
    logical: u64,
    slot: usize,
}

/// A stretch of one source file written through the window buffer: the pieces inside
/// it (in file order) and the unchanged bytes between and after them.
#[derive(Debug)]
struct Run {
    range: Range<u64>,
    pieces: Vec<Piece>,
}

#[cfg(test)]
impl Run {
    /// The end of its last piece (a run may reach further, over unchanged bytes).
    fn run_end(&self) -> u64 {
        self.pieces.last().map_or(self.range.start, |p| p.range.end)
    }
}

/// A chunk job (by index) and its pieces in one file, as `(file range, logical offset)`
/// in file order.
type PlacedJob = (usize, Vec<(Range<u64>, u64)>);

/// Chunk jobs (by index) whose pieces interleave in one stream, and the runs that hold
/// their pieces.
struct Group {
    stream: usize,
    jobs: Vec<usize>,
    runs: Vec<Run>,
}

/// What a worker does.
enum Item<'a> {
    Copy {
        stream: usize,
        range: Range<u64>,
    },
    Put {
        stream: usize,
        out: u64,
        bytes: &'a [u8],
    },
    Group(Group),
    /// Hash only: the leaves of a job whose new bytes are puts (or which keeps its bytes).
    Hash {
        job: usize,
    },
}

impl Item<'_> {
    /// Where it lies: (stream, source offset), for the file order of the work.
    fn key(&self) -> (usize, u64) {
        match self {
            Item::Copy { stream, range } => (*stream, range.start),
            Item::Put { stream, out, .. } => (*stream, *out),
            Item::Group(g) => (g.stream, g.runs.first().map_or(0, |r| r.range.start)),
            Item::Hash { .. } => (0, 0),
        }
    }

    /// Output bytes it writes (for progress).
    fn bytes(&self) -> u64 {
        match self {
            Item::Copy { range, .. } => range.end - range.start,
            Item::Put { bytes, .. } => bytes.len() as u64,
            Item::Group(g) => g.runs.iter().map(|r| r.range.end - r.range.start).sum(),
            Item::Hash { .. } => 0,
        }
    }
}

/// What one pass writes: the model file and its external data files, holding the input
/// with the targets' actions applied and `extra` edits of the model file.
pub(crate) struct PassSpec<'a> {
    pub(crate) model: &'a Model,
    pub(crate) targets: &'a [Target],
    /// The action of each target (same order).
    pub(crate) actions: &'a [Action],
    /// Edits of the model file besides the targets' (a replaced or removed manifest entry).
    pub(crate) extra: Vec<Edit>,
    /// The leaves to compute; `None`: none.
    pub(crate) leaves: Option<Leaves<'a>>,
    /// Flush every output to the disk (`fsync`) before it is renamed into place.
    pub(crate) durable: bool,
    pub(crate) progress: &'a dyn Progress,
}

/// Writes the outputs of `spec` into their staged files `outputs`, then appends to the model file the
/// bytes `append` returns. `append` receives the leaves of the written bytes and those
/// of the read bytes of every target in chunk-job order, as `spec.leaves` asks for them
/// (else empty slices); an error it returns removes every staged file. Every file is
/// renamed into place only when all are complete. Returns the external data files
/// written.
pub(crate) fn write_outputs(
    spec: PassSpec<'_>,
    outputs: Outputs,
    append: impl FnOnce(&[[u8; 32]], &[[u8; 32]]) -> Result<Vec<u8>>,
) -> Result<Vec<String>> {
    let PassSpec { model, targets, actions, extra, leaves, durable, progress } = spec;
    // The spans this pass transforms are not edits of the plan (they change no length):
    // they are the groups' pieces.
    let plan = Plan::new(model.bytes().len() as u64, edits_with(model, targets, actions, extra, false)?, Vec::new())?;
    let Outputs { staged, external, model: output } = outputs;
    let jobs = chunk_jobs(targets, leaves.map_or(CHUNK_SIZE, |l| l.chunk));
    let mut work = Work::new(model.external_files.len() + 1);
    let shifts = work.add_plan(&plan);
    let streams = open_streams(model, &staged, &external, &output, shifts)?;
    work.add_external_puts(model, targets, actions)?;
    work.mark_streamed(model, targets, actions);
    work.add_groups(model, targets, actions, &jobs, leaves.is_some());
    work.add_copies(&streams)?;
    let items = work.into_items();
    preallocate_outputs(&streams, plan.output_len())?;

    let decoded = decoded_for_read_leaves(model, targets, &jobs, &items, leaves)?;
    let pass = Pass {
        model,
        targets,
        actions,
        jobs: &jobs,
        streams: &streams,
        leaves,
        decoded: &decoded,
        failed: AtomicBool::new(false),
        window: window_len(),
        tally: Tally { done: AtomicU64::new(0), marks: Mutex::new((0, 0)), durable, progress },
    };
    let leaves = pass.run_all(&items)?;

    let tail = append(&leaves.written, &leaves.read)?;
    streams[model.external_files.len()].write(&tail, plan.output_len())?;
    drop(streams);
    staged.commit(durable)?;
    Ok(external.iter().map(|p| p.display().to_string()).collect())
}

/// The stream index of a tensor's bytes: its external data file's, or the model file's.
fn stream_of(t: &Tensor, model_stream: usize) -> usize {
    match &t.data {
        TensorData::External { file, .. } => *file,
        _ => model_stream,
    }
}

/// The streams of a pass: each external data file into its staged output, then the
/// model file (whose bytes move by `shifts` in the output) into the last one.
fn open_streams<'a>(
    model: &'a Model,
    staged: &'a Staged,
    external: &[PathBuf],
    output: &Path,
    shifts: Vec<(u64, i64)>,
) -> Result<Vec<Stream<'a>>> {
    let model_stream = model.external_files.len();
    let mut streams: Vec<Stream> = Vec::with_capacity(model_stream + 1);
    for (i, f) in model.external_files.iter().enumerate() {
        streams.push(Stream {
            map: f.bytes()?,
            src: Some(f.file()?),
            ext: Some(f),
            model: None,
            src_path: f.path.clone(),
            dst: staged.file_ref(i),
            path: external[i].clone(),
            shifts: Vec::new(),
        });
    }
    streams.push(Stream {
        map: model.bytes(),
        src: model.source_file(),
        ext: None,
        model: Some(model),
        src_path: model.path.clone().unwrap_or_else(|| PathBuf::from("<model in memory>")),
        dst: staged.file_ref(model_stream),
        path: output.to_path_buf(),
        shifts,
    });
    Ok(streams)
}

/// The work items of a pass as they are gathered, and what they write of each stream.
struct Work<'a> {
    items: Vec<Item<'a>>,
    /// Per stream: the source ranges written by puts and runs; the rest is copied.
    covered: Vec<Vec<Range<u64>>>,
    /// Per stream: every source range that an edit, a put or a piece writes (a run may
    /// take in the gap between two pieces only if nothing else lies in it).
    occupied: Vec<Vec<(u64, u64)>>,
}

impl<'a> Work<'a> {
    fn new(streams: usize) -> Work<'a> {
        Work { items: Vec::new(), covered: vec![Vec::new(); streams], occupied: vec![Vec::new(); streams] }
    }

    /// The model file's stream (the last).
    fn model_stream(&self) -> usize {
        self.occupied.len() - 1
    }

    /// Puts for the new bytes of the plan of the model file (its in-place transforms
    /// are done by the groups). Returns the model stream's shifts: `(source end of an
    /// edit, output − source offset after it)`, in file order.
    fn add_plan(&mut self, plan: &'a Plan) -> Vec<(u64, i64)> {
        let ms = self.model_stream();
        let mut shifts = Vec::new();
        let mut delta = 0i64;
        for (r, c) in plan.edits() {
            self.occupied[ms].push((r.start, r.end));
            if let Content::Bytes(b) = c {
                let out = r.start.wrapping_add_signed(delta);
                delta += b.len() as i64 - (r.end - r.start) as i64;
                shifts.push((r.end, delta));
                self.covered[ms].push(r.clone());
                if !b.is_empty() {
                    self.items.push(Item::Put { stream: ms, out, bytes: b });
                }
            }
        }
        shifts
    }

    /// Puts for the spans of external tensors transformed beforehand.
    fn add_external_puts(&mut self, model: &Model, targets: &[Target], actions: &'a [Action]) -> Result<()> {
        for (ti, target) in targets.iter().enumerate() {
            let t = &model.tensors[target.tensor];
            if let (TensorData::External { file, .. }, Action::Bytes(bytes)) = (&t.data, &actions[ti]) {
                for (range, piece) in new_pieces(t, target, bytes)? {
                    self.covered[*file].push(range.clone());
                    self.occupied[*file].push((range.start, range.end));
                    self.items.push(Item::Put { stream: *file, out: range.start, bytes: piece });
                }
            }
        }
        Ok(())
    }

    /// Marks the spans transformed chunk by chunk as written, then sorts what is written.
    fn mark_streamed(&mut self, model: &Model, targets: &[Target], actions: &[Action]) {
        let ms = self.model_stream();
        for (ti, target) in targets.iter().enumerate() {
            let t = &model.tensors[target.tensor];
            if let Action::Xor(_) | Action::Reencrypt(_) = &actions[ti] {
                let stream = stream_of(t, ms);
                for &(a, b) in &target.spans {
                    self.occupied[stream].extend(t.file_pieces(a, b).into_iter().map(|(r, _)| (r.start, r.end)));
                }
            }
        }
        for o in &mut self.occupied {
            o.sort_unstable();
        }
    }

    /// The chunk jobs: written through the window buffer in groups (chunk-by-chunk
    /// actions), or, when `hashed`, only hashed.
    fn add_groups(&mut self, model: &Model, targets: &[Target], actions: &[Action], jobs: &[ChunkJob], hashed: bool) {
        let ms = self.model_stream();
        let mut placed: Vec<Vec<PlacedJob>> = vec![Vec::new(); ms + 1];
        for (ji, job) in jobs.iter().enumerate() {
            let t = &model.tensors[targets[job.target].tensor];
            let pieces: Vec<(Range<u64>, u64)> = match &actions[job.target] {
                Action::Xor(_) | Action::Reencrypt(_) => {
                    job.parts.iter().flat_map(|&(a, b)| t.file_pieces(a, b)).collect()
                }
                Action::Bytes(_) | Action::Skip => Vec::new(),
            };
            if !pieces.is_empty() {
                placed[stream_of(t, ms)].push((ji, pieces));
            } else if hashed {
                self.items.push(Item::Hash { job: ji });
            }
        }
        for (si, jobs_here) in placed.into_iter().enumerate() {
            for group in groups_of(si, jobs_here, &self.occupied[si]) {
                self.covered[si].extend(group.runs.iter().map(|r| r.range.clone()));
                self.items.push(Item::Group(group));
            }
        }
    }

    /// Copies: the complement of what is covered, per stream.
    fn add_copies(&mut self, streams: &[Stream]) -> Result<()> {
        for (si, cov) in self.covered.iter_mut().enumerate() {
            cov.sort_by_key(|r| (r.start, r.end));
            let len = streams[si].map.len() as u64;
            let mut pos = 0u64;
            for r in cov.iter() {
                if r.start < pos || r.end > len {
                    return Err(CoreError::Output(format!(
                        "internal: overlapping or out-of-bounds writes at {r:?} of {}",
                        streams[si].path.display()
                    )));
                }
                push_copies(&mut self.items, si, pos..r.start);
                pos = r.end;
            }
            push_copies(&mut self.items, si, pos..len);
        }
        Ok(())
    }

    /// The items in file order per stream, so the two workers each walk a stretch of a file.
    fn into_items(mut self) -> Vec<Item<'a>> {
        self.items.sort_by_key(Item::key);
        self.items
    }
}

/// Gives each output its final length and its blocks from the start (the appended tail
/// aside): the workers write anywhere in it, a full disk is refused before anything is
/// written, and the file system allocates the blocks once instead of block by block as
/// they are written. The model file (the last stream) gets `model_len` bytes.
fn preallocate_outputs(streams: &[Stream], model_len: u64) -> Result<()> {
    let last = streams.len().saturating_sub(1);
    for (si, s) in streams.iter().enumerate() {
        let len = if si == last { model_len } else { s.map.len() as u64 };
        preallocate(s.dst, len).map_err(|e| s.write_err(e))?;
        s.dst.set_len(len).map_err(|e| s.write_err(e))?;
    }
    Ok(())
}

/// The element bytes of the varint-stored targets that hash-only items read, decoded
/// once up front rather than once per chunk job (only when read leaves are asked for).
fn decoded_for_read_leaves(
    model: &Model,
    targets: &[Target],
    jobs: &[ChunkJob],
    items: &[Item],
    leaves: Option<Leaves>,
) -> Result<HashMap<usize, Vec<u8>>> {
    let mut decoded = HashMap::new();
    if leaves.is_some_and(|l| l.read.is_some()) {
        for item in items {
            let Item::Hash { job } = item else { continue };
            let target = jobs[*job].target;
            let t = &model.tensors[targets[target].tensor];
            if matches!(t.data, TensorData::Varint { .. }) && !decoded.contains_key(&target) {
                decoded.insert(target, model.tensor_bytes(t.id)?.into_owned());
            }
        }
    }
    Ok(decoded)
}

fn push_copies(items: &mut Vec<Item>, stream: usize, range: Range<u64>) {
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(COPY_STEP);
        items.push(Item::Copy { stream, range: at..at + n });
        at += n;
    }
}

/// The groups of one stream's chunk jobs (`(job index, its pieces in file order)`):
/// jobs whose file ranges overlap (pieces interleave) share a group, and each group's
/// pieces, in file order, are cut into runs (see [`runs_of`]).
fn groups_of(stream: usize, mut jobs: Vec<PlacedJob>, occupied: &[(u64, u64)]) -> Vec<Group> {
    jobs.sort_by_key(|(ji, p)| (p.first().map_or(0, |r| r.0.start), *ji));
    /// A group being gathered: the end of its furthest piece, its jobs, their pieces.
    #[derive(Default)]
    struct Open {
        end: u64,
        jobs: Vec<usize>,
        pieces: Vec<Piece>,
    }
    let mut groups: Vec<Open> = Vec::new();
    for (ji, pieces) in jobs {
        let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else { continue };
        let (start, end) = (first.0.start, last.0.end);
        if groups.last().is_none_or(|g| start >= g.end) {
            groups.push(Open::default());
        }
        if let Some(g) = groups.last_mut() {
            g.end = g.end.max(end);
            let slot = g.jobs.len();
            g.jobs.push(ji);
            g.pieces.extend(pieces.into_iter().map(|(range, logical)| Piece { range, logical, slot }));
        }
    }
    groups
        .into_iter()
        .map(|Open { jobs, mut pieces, .. }| {
            // Stable: one job's pieces keep their order (which is their file order).
            pieces.sort_by_key(|p| p.range.start);
            Group { stream, jobs, runs: runs_of(pieces, occupied) }
        })
        .collect()
}

/// The runs of a group's pieces (in file order): merged across gaps of at most
/// [`MERGE_GAP`] bytes that nothing in `occupied` (every written range of the file,
/// sorted) touches.
fn runs_of(pieces: Vec<Piece>, occupied: &[(u64, u64)]) -> Vec<Run> {
    // The written ranges are looked up at positions that only grow (the ends of the
    // runs, in file order): a cursor walks them, once per loop below.
    let start = pieces.first().map_or(0, |p| p.range.start);
    let mut cursor = Cursor { occupied, at: occupied.partition_point(|o| o.0 < start) };
    let mut runs: Vec<Run> = Vec::new();
    for piece in pieces {
        match runs.last_mut() {
            // The gap is taken in if the first written range after the run is this piece.
            Some(r)
                if piece.range.start >= r.range.end
                    && piece.range.start - r.range.end <= MERGE_GAP
                    && occupied.get(cursor.first_at(r.range.end)) == Some(&(piece.range.start, piece.range.end)) =>
            {
                r.range.end = piece.range.end;
                r.pieces.push(piece);
            }
            _ => runs.push(Run { range: piece.range.clone(), pieces: vec![piece] }),
        }
    }
    // Each run also takes in the free stretch after it, up to whatever is written next
    // (at most MERGE_GAP): so the unchanged rows between two chunk jobs, or between the
    // runs of interleaved targets, are written with the run before them rather than
    // copied one by one. Not when the run ends inside a written range (a span split
    // between two chunk jobs is one edit); an insertion (an empty range) at its end
    // stops it there. Written ranges do not overlap one another.
    let mut cursor = Cursor { occupied, at: occupied.partition_point(|o| o.0 < start) };
    for r in &mut runs {
        let end = r.range.end;
        let i = cursor.first_at(end);
        let inside = i > 0 && occupied[i - 1].1 > end;
        if let Some(&(next, _)) = occupied.get(i).filter(|_| !inside) {
            r.range.end = next.min(end + MERGE_GAP);
        }
    }
    runs
}

/// A position in a sorted list of written ranges, moved forward only.
struct Cursor<'a> {
    occupied: &'a [(u64, u64)],
    at: usize,
}

impl Cursor<'_> {
    /// The index of the first written range starting at or after `from` (which must not
    /// be smaller than in the call before).
    fn first_at(&mut self, from: u64) -> usize {
        while self.occupied.get(self.at).is_some_and(|o| o.0 < from) {
            self.at += 1;
        }
        self.at
    }
}

/// Progress and, for a durable output, writeback, shared by the workers.
struct Tally<'p> {
    done: AtomicU64,
    /// (bytes reported, bytes handed to writeback)
    marks: Mutex<(u64, u64)>,
    durable: bool,
    progress: &'p dyn Progress,
}

impl Tally<'_> {
    fn add(&self, n: u64, streams: &[Stream]) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        let Ok(mut m) = self.marks.lock() else { return };
        if done > m.0 {
            m.0 = done;
            self.progress.set(done);
        }
        if self.durable && done - m.1 >= WRITEBACK_STEP {
            m.1 = done;
            for s in streams {
                start_writeback(s.dst);
            }
        }
    }
}

/// A worker thread's window buffer ([`Pass::run`]), kept for its next group (a fresh
/// buffer of a window's size is a fresh map: page faults), and how many bytes at its
/// start may hold data since it was last wiped.
#[derive(Default)]
struct WindowBuf {
    buf: Vec<u8>,
    dirty: usize,
}

impl WindowBuf {
    fn wipe(&mut self) {
        let n = self.dirty.min(self.buf.len());
        self.buf[..n].zeroize();
        self.dirty = 0;
    }
}

thread_local! {
    static WINDOW_BUF: std::cell::RefCell<WindowBuf> =
        const { std::cell::RefCell::new(WindowBuf { buf: Vec::new(), dirty: 0 }) };
}

/// What the workers share.
struct Pass<'a> {
    model: &'a Model,
    targets: &'a [Target],
    actions: &'a [Action],
    jobs: &'a [ChunkJob],
    streams: &'a [Stream<'a>],
    leaves: Option<Leaves<'a>>,
    decoded: &'a HashMap<usize, Vec<u8>>,
    failed: AtomicBool,
    /// Bytes per window ([`WINDOW`] but in tests).
    window: usize,
    tally: Tally<'a>,
}

/// A job's hashes while its group is written.
struct JobState {
    job: usize,
    written: Option<(Leaf, Gather)>,
    read: Option<(Leaf, Gather)>,
    given: Option<[u8; 32]>,
}

impl Pass<'_> {
    /// Runs every item on the thread pool (the rest are skipped once one fails), wipes
    /// the workers' window buffers, and returns the written and the read leaves of every
    /// chunk job as [`Pass::leaves`] asks for them (else empty).
    fn run_all(&self, items: &[Item]) -> Result<PassLeaves> {
        let total: u64 = items.iter().map(Item::bytes).sum();
        self.tally.progress.start("write", total);
        let results = items
            .par_iter()
            .with_max_len(1)
            .map(|item| -> Result<Vec<JobLeaves>> {
                if self.failed.load(Ordering::Relaxed) {
                    return Ok(Vec::new());
                }
                let r = self.run(item);
                if r.is_err() {
                    self.failed.store(true, Ordering::Relaxed);
                }
                r
            })
            .collect::<Result<Vec<_>>>();
        // The buffers outlive the pass (the threads are the pool's) and hold the last
        // window: plaintext weights after a decryption. Wiped on every worker.
        rayon::broadcast(|_| WINDOW_BUF.with(|b| b.borrow_mut().wipe()));
        let results = results?;
        self.tally.progress.finish();
        self.collect_leaves(results)
    }

    /// The leaves of every chunk job, in job order, from the items' results.
    fn collect_leaves(&self, results: Vec<Vec<JobLeaves>>) -> Result<PassLeaves> {
        let want = |h: Option<LeafHash>| if h.is_some() { self.jobs.len() } else { 0 };
        let mut written = vec![None; self.leaves.map_or(0, |l| want(l.written))];
        let mut read = vec![None; self.leaves.map_or(0, |l| want(l.read))];
        for jl in results.into_iter().flatten() {
            if let Some(w) = written.get_mut(jl.job) {
                *w = jl.written;
            }
            if let Some(r) = read.get_mut(jl.job) {
                *r = jl.read;
            }
        }
        let all = |v: Vec<Option<[u8; 32]>>| {
            v.into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| CoreError::Output("internal: a chunk of ciphertext was not hashed".into()))
        };
        Ok(PassLeaves { written: all(written)?, read: all(read)? })
    }

    fn run(&self, item: &Item) -> Result<Vec<JobLeaves>> {
        match item {
            Item::Copy { stream, range } => {
                self.streams[*stream].copy(range.clone())?;
                self.tally.add(range.end - range.start, self.streams);
                Ok(Vec::new())
            }
            Item::Put { stream, out, bytes } => {
                self.streams[*stream].write(bytes, *out)?;
                self.tally.add(bytes.len() as u64, self.streams);
                Ok(Vec::new())
            }
            Item::Hash { job } => Ok(self.hash_only(*job)?.into_iter().collect()),
            Item::Group(g) => {
                // The window buffer, as long as the group's longest run or a window.
                let longest = g.runs.iter().map(|r| r.range.end - r.range.start).max().unwrap_or(0);
                let need = longest.min(self.window as u64) as usize;
                let mut wb = WINDOW_BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
                if wb.buf.len() < need {
                    wb.buf.resize(need, 0);
                }
                wb.dirty = wb.dirty.max(need);
                let r = self.write_group(g, &mut wb.buf[..need]);
                // A key rotation passes through plaintext here, in no other place.
                if g.jobs.iter().any(|&j| matches!(self.actions[self.jobs[j].target], Action::Reencrypt(_))) {
                    wb.wipe();
                }
                WINDOW_BUF.with(|b| *b.borrow_mut() = wb);
                r
            }
        }
    }

    /// The leaves of `job` given, or the hashes to feed for it.
    fn job_state(&self, job: usize) -> Result<JobState> {
        let job_ref = &self.jobs[job];
        let target = &self.targets[job_ref.target];
        let leaves = self.leaves;
        let given =
            match leaves.filter(|l| l.written.is_some()).and_then(|l| l.given).and_then(|g| g.get(&job_ref.target)) {
                Some(g) => Some(
                    *g.get(job_ref.index as usize)
                        .ok_or_else(|| CoreError::Output("internal: a given leaf is missing".into()))?,
                ),
                None => None,
            };
        let leaf_for = |h: LeafHash| (Leaf::new(h, target.stream_id, job_ref.index), Gather::default());
        Ok(JobState {
            job,
            written: leaves.and_then(|l| l.written).filter(|_| given.is_none()).map(leaf_for),
            read: leaves.and_then(|l| l.read).map(leaf_for),
            given,
        })
    }

    fn finish(&self, st: JobState) -> Option<JobLeaves> {
        let fin = |h: Option<(Leaf, Gather)>| {
            h.map(|(mut leaf, mut g)| {
                g.flush(&mut leaf);
                leaf.finalize()
            })
        };
        self.leaves.map(|_| JobLeaves {
            job: st.job,
            written: st.given.or_else(|| fin(st.written)),
            read: fin(st.read),
        })
    }

    /// A job without pieces to write: the bytes the source holds for it, and those the
    /// output holds (its new bytes are puts, or it keeps its bytes).
    fn hash_only(&self, job: usize) -> Result<Option<JobLeaves>> {
        let mut st = self.job_state(job)?;
        if st.written.is_some() || st.read.is_some() {
            let job_ref = &self.jobs[job];
            let t = &self.model.tensors[self.targets[job_ref.target].tensor];
            let _release = ReleaseOnDrop::for_job(self.model, t, job_ref);
            let new_bytes = match &self.actions[job_ref.target] {
                Action::Bytes(b) if st.written.is_some() => Some(b.as_slice()),
                _ => None,
            };
            // The stored bytes (a varint tensor is decoded here unless it was up
            // front) only when a leaf needs them.
            let stored = match self.decoded.get(&job_ref.target) {
                Some(d) => std::borrow::Cow::Borrowed(d.as_slice()),
                None if st.read.is_some() || new_bytes.is_none() => self.model.tensor_bytes(t.id)?,
                None => std::borrow::Cow::Borrowed(&[][..]),
            };
            let out = new_bytes.unwrap_or(&stored);
            for (h, whole) in [(st.read.as_mut(), &*stored), (st.written.as_mut(), out)] {
                let Some((leaf, g)) = h else { continue };
                for &(a, b) in &job_ref.parts {
                    let part = whole
                        .get(a as usize..b as usize)
                        .ok_or_else(|| CoreError::BadManifest(format!("span of '{}' out of bounds", t.name)))?;
                    g.feed(leaf, part);
                }
            }
        }
        Ok(self.finish(st))
    }

    /// Writes the runs of `g` window by window through `buf` (a window is its length),
    /// transforming and hashing each job's pieces in file order.
    fn write_group(&self, g: &Group, buf: &mut [u8]) -> Result<Vec<JobLeaves>> {
        let s = &self.streams[g.stream];
        // The last piece of each job: its leaves are finished there.
        let mut last = vec![(0usize, 0usize); g.jobs.len()];
        for (ri, run) in g.runs.iter().enumerate() {
            for (pi, p) in run.pieces.iter().enumerate() {
                last[p.slot] = (ri, pi);
            }
        }
        let mut states: Vec<Option<JobState>> = Vec::with_capacity(g.jobs.len());
        for &j in &g.jobs {
            states.push(Some(self.job_state(j)?));
        }
        let mut done = Vec::with_capacity(g.jobs.len());
        for (ri, run) in g.runs.iter().enumerate() {
            if self.failed.load(Ordering::Relaxed) {
                return Ok(Vec::new());
            }
            let out = s.out_at(run.range.start);
            let mut pi = 0usize;
            let mut w0 = run.range.start;
            while w0 < run.range.end {
                let w1 = (w0 + buf.len() as u64).min(run.range.end);
                let window = &mut buf[..(w1 - w0) as usize];
                s.read_into(w0..w1, window)?;
                while let Some(p) = run.pieces.get(pi).filter(|p| p.range.start < w1) {
                    let (lo, hi) = (p.range.start.max(w0), p.range.end.min(w1));
                    let part = &mut window[(lo - w0) as usize..(hi - w0) as usize];
                    let job_ref = &self.jobs[g.jobs[p.slot]];
                    let target = &self.targets[job_ref.target];
                    let dtype = self.model.tensors[target.tensor].data_type;
                    let st = states[p.slot]
                        .as_mut()
                        .ok_or_else(|| CoreError::Output("internal: a piece after its job's last".into()))?;
                    if let Some((leaf, gather)) = st.read.as_mut() {
                        gather.feed(leaf, part);
                    }
                    self.actions[job_ref.target].apply_chunk(
                        target,
                        dtype,
                        p.logical + (lo - p.range.start),
                        part,
                        false,
                    )?;
                    if let Some((leaf, gather)) = st.written.as_mut() {
                        gather.feed(leaf, part);
                    }
                    if p.range.end > w1 {
                        break; // the rest of this piece is in the next window
                    }
                    if last[p.slot] == (ri, pi) {
                        if let Some(st) = states[p.slot].take() {
                            done.extend(self.finish(st));
                        }
                    }
                    pi += 1;
                }
                s.write(window, out + (w0 - run.range.start))?;
                self.tally.add(w1 - w0, self.streams);
                w0 = w1;
            }
        }
        Ok(done)
    }
}

/// Dirty pages of a durable output are handed to the disk every this many bytes
/// written, so the final `fsync` finds little left to do. (Other outputs leave
/// writeback to the kernel, as `cp` does.)
const WRITEBACK_STEP: u64 = 64 << 20;

/// Set once `copy_file_range` has refused a whole range: the rest of the process
/// writes unchanged bytes itself.
static NO_KERNEL_COPY: AtomicBool = AtomicBool::new(false);

/// Copies `len` bytes from `src` at `from` to `dst` at `to` inside the kernel, unless
/// it refused before in this process. Returns how many bytes were copied; the caller
/// writes the rest itself.
fn copy_in_kernel(src: &File, dst: &File, from: u64, to: u64, len: u64) -> std::io::Result<u64> {
    if NO_KERNEL_COPY.load(Ordering::Relaxed) {
        return Ok(0);
    }
    let done = copy_range(src, dst, from, to, len)?;
    if done == 0 && len > 0 {
        NO_KERNEL_COPY.store(true, Ordering::Relaxed);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{apply, edits_for};
    use crate::seal::{leaf_digests, LeafSrc};
    use onnx_protect_crypto::{MasterKey, SessionKeys};
    use onnx_protect_format::testutil::{float_tensor, model_with_graph, node};
    use onnx_protect_format::wire::put_len_field;
    use onnx_protect_format::write::metadata_field;
    use onnx_protect_select::Mode;
    use std::sync::atomic::AtomicU64;

    /// A model with a 512×256 and a 64×64 FLOAT initializer in `raw_data`.
    fn model_file(dir: &Path) -> PathBuf {
        let big: Vec<f32> = (0..512 * 256).map(|i| (i as f32).sin()).collect();
        let small: Vec<f32> = (0..64 * 64).map(|i| i as f32 * 0.25 - 3.0).collect();
        let mut g = Vec::new();
        put_len_field(&mut g, 1, &node("MatMul", &["x", "A"], &["h"], "mm1"));
        put_len_field(&mut g, 1, &node("MatMul", &["h", "B"], &["y"], "mm2"));
        put_len_field(&mut g, 2, b"g");
        put_len_field(&mut g, 5, &float_tensor("A", &[512, 256], &big));
        put_len_field(&mut g, 5, &float_tensor("B", &[64, 64], &small));
        let path = dir.join("m.onnx");
        std::fs::write(&path, model_with_graph(&g)).unwrap();
        path
    }

    fn tensor(model: &Model, name: &str) -> usize {
        model.tensors.iter().position(|t| t.name == name).unwrap()
    }

    /// Three targets: two interleaved on the rows of `A` (every other row, and one row
    /// in four of the others: the gaps of the first are partly written by the
    /// second), and all of `B` in the format-preserving mode.
    fn targets(model: &Model) -> Vec<Target> {
        let a = tensor(model, "A");
        let row = 256 * 4;
        let even = (0..512).step_by(2).map(|r| (r * row, (r + 1) * row)).collect();
        let odd = (1..512).step_by(4).map(|r| (r * row, (r + 1) * row)).collect();
        vec![
            Target { tensor: a, stream_id: 1, mode: Mode::Ctr, spans: even, tier: 0 },
            Target { tensor: a, stream_id: 2, mode: Mode::Ctr, spans: odd, tier: 0 },
            Target { tensor: tensor(model, "B"), stream_id: 3, mode: Mode::Fp, spans: vec![(0, 64 * 64 * 4)], tier: 0 },
        ]
    }

    /// The same output, written by the reference streaming writer ([`Plan::write`]).
    fn reference(
        model: &Model,
        targets: &[Target],
        streams: &[onnx_protect_crypto::Keystream],
        extra: Vec<Edit>,
        chunk: u64,
    ) -> Vec<u8> {
        let actions: Vec<Action> = streams.iter().map(|k| Action::Xor(Box::new(k.clone()))).collect();
        let sources: Vec<LeafSrc> = streams.iter().map(LeafSrc::Xor).collect();
        let leaves = leaf_digests(model, targets, chunk, LeafHash::Blake3, &sources).unwrap();
        let plan =
            Plan::new(model.bytes().len() as u64, edits_for(model, targets, &actions, extra).unwrap(), leaves.concat())
                .unwrap();
        let mut out = Vec::new();
        plan.write(model.bytes(), &mut out, &mut |tag, logical, chunk| {
            let t = &targets[tag];
            apply(&streams[tag], t.mode, model.tensors[t.tensor].data_type, logical, chunk, false)
                .map_err(|_| onnx_protect_format::FormatError::Invalid("keystream".into()))
        })
        .unwrap();
        out
    }

    /// The model of [`model_file`] in `dir`, its [`targets`], and their keystreams.
    fn three_targets(dir: &Path) -> (Model, Vec<Target>, Vec<onnx_protect_crypto::Keystream>) {
        let model = Model::open(model_file(dir)).unwrap();
        let targets = targets(&model);
        let keys = SessionKeys::derive(&MasterKey::from_bytes([7; 32]), &[9; 32]);
        let streams = (1..=3).map(|i| keys.keystream(i)).collect();
        (model, targets, streams)
    }

    /// Runs `f` with the window set to `len` bytes (a test switch: the pass's output
    /// does not depend on it, so other tests running meanwhile only change speed).
    fn with_window<T>(len: usize, f: impl FnOnce() -> T) -> T {
        // One test at a time sets it (a pass that runs meanwhile elsewhere may take it).
        static ONE: Mutex<()> = Mutex::new(());
        let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        TEST_WINDOW.store(len, Ordering::Relaxed);
        let r = f();
        TEST_WINDOW.store(0, Ordering::Relaxed);
        r
    }

    /// One pass of `actions` into `out` (staged here), nothing but `extra` edited.
    #[allow(clippy::too_many_arguments)]
    fn pass(
        model: &Model,
        targets: &[Target],
        actions: &[Action],
        extra: Vec<Edit>,
        leaves: Option<Leaves>,
        append: impl FnOnce(&[[u8; 32]], &[[u8; 32]]) -> Result<Vec<u8>>,
        out: &Path,
        progress: &dyn Progress,
    ) -> Result<Vec<String>> {
        let outputs = Outputs::stage(model, out)?;
        let spec = PassSpec { model, targets, actions, extra, leaves, durable: false, progress };
        write_outputs(spec, outputs, append)
    }

    /// The output of one pass with written leaves appended (as the reference writer does).
    fn one_pass(
        model: &Model,
        targets: &[Target],
        streams: &[onnx_protect_crypto::Keystream],
        extra: Vec<Edit>,
        chunk: u64,
        out: &Path,
    ) -> Vec<u8> {
        let actions: Vec<Action> = streams.iter().map(|k| Action::Xor(Box::new(k.clone()))).collect();
        let leaves = Some(Leaves { chunk, written: Some(LeafHash::Blake3), read: None, given: None });
        pass(model, targets, &actions, extra, leaves, |l, _| Ok(l.concat()), out, &onnx_protect_format::NoProgress)
            .unwrap();
        std::fs::read(out).unwrap()
    }

    #[test]
    fn one_pass_output_equals_the_reference_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (model, targets, streams) = three_targets(dir.path());
        let out = dir.path().join("a.onnx");
        // Small chunks: many jobs per target, runs cut at chunk boundaries (1000: inside
        // rows, so a span is split between two jobs while one edit covers all of it).
        // Windows of odd sizes cut pieces anywhere, inside elements too (`B` is in the
        // format-preserving mode, whose mask follows the element).
        for chunk in [4096u64, 1000, 1 << 20] {
            let want = reference(&model, &targets, &streams, Vec::new(), chunk);
            assert_ne!(&want[..model.bytes().len()], model.bytes());
            for window in [0, 1000, 4093, 65536] {
                let got = with_window(window, || one_pass(&model, &targets, &streams, Vec::new(), chunk, &out));
                assert!(got == want, "chunk {chunk}, window {window}");
            }
        }
        // A top-level field inserted before everything shifts every output offset.
        let insert = || {
            vec![Edit {
                range: 0..0,
                content: Content::Bytes(metadata_field("k", "some value")),
                ancestors: Vec::new(),
            }]
        };
        let want = reference(&model, &targets, &streams, insert(), 4096);
        assert_eq!(one_pass(&model, &targets, &streams, insert(), 4096, &out), want);
        // Bytes inserted right after a span (the end of row 2 of `A`, before the free row
        // 3): what follows moves, so no run may carry the unchanged row across the insertion.
        let t = &model.tensors[targets[0].tensor];
        let at = t.file_pieces(2 * 1024, 3 * 1024)[0].0.end;
        let inside = || vec![Edit { range: at..at, content: Content::Bytes(b"xyz".to_vec()), ancestors: Vec::new() }];
        let want_inside = reference(&model, &targets, &streams, inside(), 4096);
        assert_eq!(one_pass(&model, &targets, &streams, inside(), 4096, &out), want_inside);
        // Without copy_file_range (as on kernels or file systems that refuse it): the
        // same bytes. The switch is process-wide; other tests only get slower.
        NO_KERNEL_COPY.store(true, Ordering::Relaxed);
        let got = one_pass(&model, &targets, &streams, insert(), 4096, &out);
        NO_KERNEL_COPY.store(false, Ordering::Relaxed);
        assert_eq!(got, want);
    }

    #[test]
    fn a_model_in_memory_is_written_from_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (file_model, targets, streams) = three_targets(dir.path());
        let model = Model::from_vec(file_model.bytes().to_vec(), None).unwrap();
        assert!(model.source_file().is_none());
        let want = reference(&model, &targets, &streams, Vec::new(), 4096);
        for window in [0, 4093] {
            let got = with_window(window, || {
                one_pass(&model, &targets, &streams, Vec::new(), 4096, &dir.path().join("m.onnx"))
            });
            assert!(got == want, "window {window}");
        }
    }

    #[test]
    fn the_output_never_holds_the_plaintext_of_an_encrypted_span() {
        // After every write the pass reports, the staged output (and anything else in
        // its folder) is read: no encrypted row may be there as it is in the input.
        struct Probe<F: Fn() + Sync>(F);
        impl<F: Fn() + Sync> onnx_protect_format::Progress for Probe<F> {
            fn set(&self, _done: u64) {
                (self.0)()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let (model, targets, streams) = three_targets(dir.path());
        let out_dir = dir.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        // Every encrypted row (1 KiB of `A`, 1 KiB slices of `B`) and its plaintext.
        let mut rows: Vec<(u64, Vec<u8>)> = Vec::new();
        for target in &targets {
            let t = &model.tensors[target.tensor];
            for &(a, b) in &target.spans {
                for lo in (a..b).step_by(1024) {
                    for (range, _) in t.file_pieces(lo, (lo + 1024).min(b)) {
                        rows.push((range.start, model.bytes()[range.start as usize..range.end as usize].to_vec()));
                    }
                }
            }
        }
        let checks = AtomicU64::new(0);
        let check = || {
            for e in std::fs::read_dir(&out_dir).unwrap() {
                let bytes = std::fs::read(e.unwrap().path()).unwrap();
                for (at, plain) in &rows {
                    let here = bytes.get(*at as usize..*at as usize + plain.len());
                    assert!(here != Some(plain.as_slice()), "plaintext of the row at {at} in the output");
                }
            }
            checks.fetch_add(1, Ordering::Relaxed);
        };
        let actions: Vec<Action> = streams.iter().map(|k| Action::Xor(Box::new(k.clone()))).collect();
        let leaves = Some(Leaves { chunk: 4096, written: Some(LeafHash::Blake3), read: None, given: None });
        let out = out_dir.join("o.onnx");
        with_window(4096, || {
            let probe = Probe(check);
            pass(&model, &targets, &actions, Vec::new(), leaves, |l, _| Ok(l.concat()), &out, &probe).unwrap();
        });
        check();
        assert!(checks.load(Ordering::Relaxed) > 100, "too few writes were checked");
        assert_eq!(std::fs::read(&out).unwrap(), reference(&model, &targets, &streams, Vec::new(), 4096));
    }

    #[test]
    fn the_window_buffers_are_wiped_after_a_pass() {
        // In a pool of its own (the global one is shared with other tests): after a
        // decryption-like pass (read leaves, plaintext written), every worker's buffers
        // hold zeros only.
        let dir = tempfile::tempdir().unwrap();
        let (model, targets, streams) = three_targets(dir.path());
        let actions: Vec<Action> = streams.iter().map(|k| Action::Xor(Box::new(k.clone()))).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let out = dir.path().join("w.onnx");
        let leaves = Some(Leaves { chunk: 4096, written: None, read: Some(LeafHash::Blake3), given: None });
        let filled = pool.install(|| {
            let nop = &onnx_protect_format::NoProgress;
            pass(&model, &targets, &actions, Vec::new(), leaves, |_, _| Ok(Vec::new()), &out, nop).unwrap();
            rayon::broadcast(|_| {
                WINDOW_BUF.with(|b| {
                    let v = &b.borrow().buf;
                    (v.len(), v.iter().any(|&x| x != 0))
                })
            })
        });
        assert!(filled.iter().any(|&(len, _)| len > 0), "no buffer was used");
        assert!(filled.iter().all(|&(_, dirty)| !dirty), "a buffer kept bytes: {filled:?}");
    }

    #[test]
    fn an_output_shorter_than_its_input_is_cut_to_its_length() {
        // A decryption removes the manifest entry at the end of the file.
        let dir = tempfile::tempdir().unwrap();
        let path = model_file(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len() as u64;
        bytes.extend(metadata_field("k", &"v".repeat(5000)));
        std::fs::write(&path, &bytes).unwrap();
        let model = Model::open(&path).unwrap();
        let targets = targets(&model);
        let keys = SessionKeys::derive(&MasterKey::from_bytes([3; 32]), &[4; 32]);
        let streams: Vec<_> = (1..=3).map(|i| keys.keystream(i)).collect();
        let cut =
            || vec![Edit { range: n..bytes.len() as u64, content: Content::Bytes(Vec::new()), ancestors: Vec::new() }];
        let want = reference(&model, &targets, &streams, cut(), 4096);
        let out = dir.path().join("o.onnx");
        // An earlier, longer file at the output path is replaced, not overwritten.
        std::fs::write(&out, vec![1u8; bytes.len() + 10_000]).unwrap();
        assert_eq!(one_pass(&model, &targets, &streams, cut(), 4096, &out), want);
    }

    #[test]
    fn a_pass_hashes_what_it_reads_and_what_it_writes_together() {
        // What a decryption's pass computes for the MAC check (the leaves of the bytes
        // it reads) and what a key rotation's computes besides (the leaves of the bytes
        // it writes): here it encrypts, so the two differ.
        let dir = tempfile::tempdir().unwrap();
        let (model, targets, streams) = three_targets(dir.path());
        let actions: Vec<Action> = streams.iter().map(|k| Action::Xor(Box::new(k.clone()))).collect();
        for (chunk, window) in [4096u64, 1000, 1 << 20].into_iter().flat_map(|c| [0, 4093].map(|w| (c, w))) {
            let stored = leaf_digests(&model, &targets, chunk, LeafHash::Blake3, &[]).unwrap();
            let out = dir.path().join("s.onnx");
            let nop = &onnx_protect_format::NoProgress;
            let mut got = Vec::new();
            let read_only = Some(Leaves { chunk, written: None, read: Some(LeafHash::Blake3), given: None });
            let append = |w: &[[u8; 32]], r: &[[u8; 32]]| {
                assert!(w.is_empty());
                got = r.to_vec();
                Ok(Vec::new())
            };
            with_window(window, || pass(&model, &targets, &actions, Vec::new(), read_only, append, &out, nop)).unwrap();
            assert_eq!(got, stored, "chunk {chunk}, window {window}");
            let want = reference(&model, &targets, &streams, Vec::new(), chunk);
            assert_eq!(std::fs::read(&out).unwrap(), want[..model.bytes().len()], "window {window}");
            // Both at once: the written leaves are appended, as the reference does.
            let both =
                Some(Leaves { chunk, written: Some(LeafHash::Blake3), read: Some(LeafHash::Blake3), given: None });
            let mut got = Vec::new();
            let append = |w: &[[u8; 32]], r: &[[u8; 32]]| {
                got = r.to_vec();
                Ok(w.concat())
            };
            with_window(window, || pass(&model, &targets, &actions, Vec::new(), both, append, &out, nop)).unwrap();
            assert_eq!(got, stored, "chunk {chunk}, window {window}");
            assert_eq!(std::fs::read(&out).unwrap(), want, "chunk {chunk}, window {window}");
        }
    }

    /// The pieces of `job` of `target` in its tensor, as one job of a group (slot 0).
    fn pieces_of(model: &Model, target: &Target, job: &ChunkJob) -> Vec<Piece> {
        let t = &model.tensors[target.tensor];
        job.parts
            .iter()
            .flat_map(|&(a, b)| t.file_pieces(a, b))
            .map(|(range, logical)| Piece { range, logical, slot: 0 })
            .collect()
    }

    #[test]
    fn interleaved_chunk_jobs_share_a_group_and_the_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (model, targets, _) = three_targets(dir.path());
        let jobs = chunk_jobs(&targets, 4096);
        let placed: Vec<PlacedJob> = jobs
            .iter()
            .enumerate()
            .map(|(ji, job)| {
                let t = &model.tensors[targets[job.target].tensor];
                (ji, job.parts.iter().flat_map(|&(a, b)| t.file_pieces(a, b)).collect())
            })
            .collect();
        let mut occupied: Vec<(u64, u64)> =
            placed.iter().flat_map(|(_, p)| p.iter().map(|(r, _)| (r.start, r.end))).collect();
        occupied.sort_unstable();
        let hulls: Vec<(u64, u64)> =
            placed.iter().map(|(_, p)| (p.first().unwrap().0.start, p.last().unwrap().0.end)).collect();
        let groups = groups_of(0, placed, &occupied);
        // Every job is in one group.
        let mut all: Vec<usize> = groups.iter().flat_map(|g| g.jobs.iter().copied()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..jobs.len()).collect::<Vec<_>>());
        // Groups do not overlap, and none could be split in two that do not overlap: its
        // jobs, by start, each begin before the end of those before them.
        let span = |g: &Group| (g.runs.first().unwrap().pieces[0].range.start, g.runs.last().unwrap().run_end());
        assert!(groups.windows(2).all(|w| span(&w[0]).1 <= span(&w[1]).0));
        for g in &groups {
            let mut h: Vec<(u64, u64)> = g.jobs.iter().map(|&j| hulls[j]).collect();
            h.sort_unstable();
            let mut end = h[0].1;
            for &(a, b) in &h[1..] {
                assert!(a < end, "a group of jobs that do not overlap");
                end = end.max(b);
            }
        }
        // The two targets on the rows of `A` interleave: they share groups. `B`'s jobs
        // follow one another: a group each.
        assert!(groups.iter().any(|g| {
            let t: Vec<usize> = g.jobs.iter().map(|&j| jobs[j].target).collect();
            t.contains(&0) && t.contains(&1)
        }));
        assert!(groups.iter().filter(|g| g.jobs.iter().any(|&j| jobs[j].target == 2)).all(|g| g.jobs.len() == 1));
        // Every group's pieces are in file order, each job's in its own order.
        for g in &groups {
            let pieces: Vec<&Piece> = g.runs.iter().flat_map(|r| &r.pieces).collect();
            assert!(pieces.windows(2).all(|w| w[0].range.end <= w[1].range.start));
            for slot in 0..g.jobs.len() {
                let logical: Vec<u64> = pieces.iter().filter(|p| p.slot == slot).map(|p| p.logical).collect();
                assert!(logical.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }

    #[test]
    fn a_run_takes_in_a_gap_only_when_nothing_else_is_written_there() {
        let dir = tempfile::tempdir().unwrap();
        let model = Model::open(model_file(dir.path())).unwrap();
        let targets = targets(&model);
        let t = &model.tensors[targets[0].tensor];
        let jobs = chunk_jobs(&targets[..1], 1 << 20);
        let piece = |r: u64| t.file_pieces(r * 1024, (r + 1) * 1024)[0].0.clone();
        // Only the even rows written: the gaps (odd rows, 1 KiB) are taken in.
        let alone: Vec<(u64, u64)> = (0..512).step_by(2).map(&piece).map(|r| (r.start, r.end)).collect();
        let runs = runs_of(pieces_of(&model, &targets[0], &jobs[0]), &alone);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].range, piece(0).start..piece(510).end);
        // Rows 1, 5, 9, … belong to another target: a run ends before each of them.
        let mut both = alone.clone();
        both.extend((1..512).step_by(4).map(&piece).map(|r| (r.start, r.end)));
        both.sort_unstable();
        let runs = runs_of(pieces_of(&model, &targets[0], &jobs[0]), &both);
        // [0], [2 4], [6 8], …, [506 508], [510]: rows 3, 7, … are free gaps.
        assert_eq!(runs.len(), 129);
        assert_eq!(runs[0].range, piece(0));
        for (i, run) in runs.iter().enumerate().take(128).skip(1) {
            let first = 4 * i as u64 - 2;
            assert_eq!(run.range, piece(first).start..piece(first + 2).end);
            assert_eq!(run.pieces.len(), 2);
        }
        assert_eq!(runs[128].range, piece(510));
    }

    #[test]
    fn a_run_takes_in_the_free_stretch_after_it_up_to_the_next_written_range() {
        // Two targets on alternate rows of four: rows 0, 4, 8, … and 2, 6, 10, …; rows
        // 1, 3, 5, … are written by nobody. Each run of the first target is one row (the
        // next row it has is behind one of the second's) and takes in the free row after it.
        let dir = tempfile::tempdir().unwrap();
        let model = Model::open(model_file(dir.path())).unwrap();
        let targets = targets(&model);
        let t = &model.tensors[targets[0].tensor];
        let piece = |r: u64| t.file_pieces(r * 1024, (r + 1) * 1024)[0].0.clone();
        let occupied: Vec<(u64, u64)> = (0..512).step_by(2).map(&piece).map(|r| (r.start, r.end)).collect();
        // The job's own pieces: every fourth row.
        let job =
            ChunkJob { target: 0, index: 0, parts: (0..512).step_by(4).map(|r| (r * 1024, (r + 1) * 1024)).collect() };
        let runs = runs_of(pieces_of(&model, &targets[0], &job), &occupied);
        assert_eq!(runs.len(), 128);
        for (i, run) in runs.iter().enumerate() {
            let row = 4 * i as u64;
            assert_eq!(run.range, piece(row).start..piece(row + 2).start, "run {i}");
            assert_eq!(run.pieces.len(), 1);
        }
        // With nothing written after it, a run ends with its last piece.
        let runs = runs_of(pieces_of(&model, &targets[0], &job), &occupied[..1]);
        assert_eq!(runs.last().unwrap().range, piece(508));
        // One written range over two adjacent pieces (an edit of two merged spans): the
        // first run does not reach past it into the second's piece (the second takes
        // in the free stretch to the job's next piece).
        let job = ChunkJob { target: 0, index: 0, parts: vec![(0, 1024), (1024, 2048), (4096, 5120)] };
        let merged = [(piece(0).start, piece(1).end), (piece(4).start, piece(4).end)];
        let runs = runs_of(pieces_of(&model, &targets[0], &job), &merged);
        let got: Vec<_> = runs.iter().map(|r| (r.range.clone(), r.pieces.len())).collect();
        assert_eq!(got, vec![(piece(0), 1), (piece(1).start..piece(4).end, 2)]);
        // An insertion (an empty edit) right at a run's end: the run stops there, since
        // what follows moves in the output.
        let job = ChunkJob { target: 0, index: 0, parts: vec![(0, 1024)] };
        let at = piece(0).end;
        let runs = runs_of(
            pieces_of(&model, &targets[0], &job),
            &[(piece(0).start, at), (at, at), (piece(4).start, piece(4).end)],
        );
        assert_eq!(runs[0].range, piece(0));
    }
}
