//! Writing an output (the model file and its external data files) in one pass.
//!
//! The output is the input with some ranges changed. It is cut into work items:
//!
//! * **runs**: stretches of the input holding the bytes of a chunk job (§7 of
//!   docs/format.md) that is encrypted, decrypted or re-encrypted here, together with
//!   the unchanged gaps between its spans (up to 8 MiB a run). Worker threads (rayon)
//!   transform each span straight from the read-only map into a pooled buffer (for
//!   `ctr`, keystream XOR source in one pass, no copy first) and hash the result when
//!   written leaves are asked for (the hash sees exactly the bytes that are written).
//!   When read leaves are asked for (decryption and key rotation check the MAC over
//!   the ciphertext they read), a run's spans are copied into the buffer first,
//!   hashed there and transformed in place;
//! * **puts**: new bytes of the edit plan (a re-encoded varint tensor, a replaced or
//!   removed manifest entry, length prefixes, spans transformed beforehand);
//! * **copies**: the stretches between runs, copied inside the kernel with
//!   `copy_file_range` (falling back to writes from the map where the kernel or the
//!   file systems refuse), so they never pass through this process.
//!
//! One writer thread does every write: each finished run with one `pwritev` whose
//! pieces alternate between the buffer (the spans) and the map (the gaps), so an
//! unchanged byte is copied once, by the kernel, straight into the output (a sparse
//! run is copied whole inside the kernel and its pieces written over it, see
//! [`sparse`]); and, while no run is waiting, the copies and puts. Runs reach it
//! through a short queue, which bounds the buffers in flight. Writes to one file from
//! several threads only contend for its lock (measured: the waiting thread spins in the
//! kernel). After each run the writer releases the run's pages of the map
//! (`MADV_DONTNEED`), so the resident set stays small whatever the size of the model
//! (releasing them in the workers instead was slower, docs/performance.md session 6),
//! and, for a durable output, every 64 MiB it starts the writeback of what it wrote, so
//! the fsync of the commit finds little left to do.
//!
//! Once every item is done, the caller's `append` gets the leaves: it builds the
//! appended bytes (an encryption's new manifest entry, written last) or refuses the
//! output (a decryption whose MAC does not match: every staged file is then removed).
//! So encrypting and decrypting read and write each byte once.
//!
//! **Patching** (the default for a file on Linux written without `--sync`): the writer
//! thread copies *everything* but the puts inside the kernel, in file order, as `cp`
//! does, and the workers transform each chunk job's pieces in place in a shared map of
//! the staged output once the copy has passed them ([`Gate`]): they fault the job's
//! pages in with one `MADV_POPULATE_WRITE` (which reports a failure as an error, not
//! as `SIGBUS`), hash and transform the pieces there, and drop the pages again. No
//! byte of the output passes through this process's memory on its way to the file,
//! and nothing waits for a worker: the copy runs at `cp`'s speed on one core while the
//! other core encrypts behind it. Measured on the 1 GiB benchmark model
//! (docs/performance.md, session 8). A durable output keeps the buffered pass above:
//! its writeback, started during the pass, would write every patched page twice.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use onnx_protect_crypto::{Leaf, LeafHash};
use onnx_protect_format::model::ExternalFile;
use onnx_protect_format::write::{Content, Edit, Plan};
use onnx_protect_format::{Model, Progress, TensorData};
use rayon::prelude::*;
use zeroize::Zeroize;

use crate::protect::{
    chunk_jobs, edits_for, Action, ChunkJob, CoreError, Gather, ReleaseOnDrop, Result, Staged, Target,
};

/// Spans of one chunk job closer than this are read and written together with the gap
/// between them. Measured on the 1 GiB benchmark model (docs/performance.md, run 5):
/// with spans every 20th row, merging gaps up to 64 KiB left ~10,000 `copy_file_range`
/// calls of ~76 KiB on the writer thread and took 1.56 s; merging every gap up to a
/// run's size (the gap bytes are then read by the workers and only written by the
/// writer, which splits the copying between the two cores) took 0.97 s. Long unchanged
/// stretches between chunk jobs are still copied in the kernel (faster when they
/// dominate: 0.67 s against 0.80 s when nearly nothing is encrypted).
const MERGE_GAP: u64 = RUN_MAX;
/// A run stops growing at this size (bounds the buffer of each worker).
const RUN_MAX: u64 = 8 << 20;
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
    pub(crate) given: Option<&'a std::collections::HashMap<usize, Vec<[u8; 32]>>>,
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
    /// The source file, for in-kernel copies; `None`: everything comes from `map`.
    src: Option<&'a File>,
    /// The external data file behind `map`, whose pages are released once written.
    ext: Option<&'a ExternalFile>,
    /// The model, when `map` is the model file's (its pages are released once written).
    model: Option<&'a Model>,
    dst: &'a File,
    path: PathBuf,
    /// The source's path (for errors).
    src_path: PathBuf,
    /// `(source end of an edit, output − source offset after it)`, in file order.
    shifts: Vec<(u64, i64)>,
    /// The staged output mapped shared and writable, when its chunk jobs are patched
    /// in place (see the module docs); its length is the output's without the bytes
    /// appended at the end.
    out_map: Option<memmap2::MmapRaw>,
    /// See [`Outputs::overwrite`].
    overwrite: bool,
}

impl Stream<'_> {
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

    /// The bytes of `range` of the source.
    fn slice(&self, range: Range<u64>) -> Result<&[u8]> {
        self.map
            .get(range.start as usize..range.end as usize)
            .ok_or_else(|| self.read_err(std::io::Error::other("range beyond the end of the file")))
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

    /// The output bytes `range` of [`Stream::out_map`], to be transformed in place.
    ///
    /// # Safety
    /// No other live slice from this function may overlap `range` (the workers' pieces
    /// are disjoint), and the writer must have finished writing `range` ([`Gate`]).
    #[allow(clippy::mut_from_ref)] // disjoint ranges of a shared map, see above
    unsafe fn out_slice(&self, range: Range<u64>) -> Result<&mut [u8]> {
        let m = self.out_map.as_ref().ok_or_else(|| CoreError::Output("internal: no output map".into()))?;
        if range.start > range.end || range.end > m.len() as u64 {
            return Err(CoreError::Output(format!("internal: patch {range:?} outside {}", self.path.display())));
        }
        // SAFETY: in bounds of the live map (checked above); exclusivity and the order
        // of the writes are the caller's contract.
        Ok(unsafe {
            std::slice::from_raw_parts_mut(m.as_mut_ptr().add(range.start as usize), (range.end - range.start) as usize)
        })
    }

    /// Faults in the whole pages covering `range` of the output map for writing
    /// (`MADV_POPULATE_WRITE`), reporting a failure instead of raising `SIGBUS` later.
    fn out_populate(&self, range: Range<u64>) -> std::io::Result<()> {
        const PAGE: u64 = 4096;
        self.out_advise(range.start / PAGE * PAGE..range.end.div_ceil(PAGE) * PAGE, Advice::PopulateWrite)
    }

    /// Drops this process's mapping of the whole pages inside `range` of the output
    /// map (`MADV_DONTNEED`); the page cache keeps what was written. A hint: an error
    /// only means the pages stay mapped.
    fn out_release(&self, range: Range<u64>) {
        const PAGE: u64 = 4096;
        let _ = self.out_advise(range.start.div_ceil(PAGE) * PAGE..range.end / PAGE * PAGE, Advice::DontNeed);
    }

    #[cfg(target_os = "linux")]
    fn out_advise(&self, pages: Range<u64>, advice: Advice) -> std::io::Result<()> {
        const PAGE: u64 = 4096;
        let Some(m) = self.out_map.as_ref() else { return Ok(()) };
        let end = pages.end.min((m.len() as u64).div_ceil(PAGE) * PAGE);
        if pages.start >= end {
            return Ok(());
        }
        let advice = match advice {
            Advice::PopulateWrite => libc::MADV_POPULATE_WRITE,
            Advice::DontNeed => libc::MADV_DONTNEED,
        };
        // SAFETY: whole pages within the live map (its last page counts whole);
        // MADV_POPULATE_WRITE faults them in as a write would (reporting failure
        // instead of raising SIGBUS), MADV_DONTNEED on a shared file map only drops
        // this process's page-table entries (the page cache keeps the bytes written);
        // neither changes what the map holds.
        let r = unsafe {
            libc::madvise(m.as_mut_ptr().add(pages.start as usize).cast(), (end - pages.start) as usize, advice)
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Never called: outputs are patched on Linux only ([`can_patch`]).
    #[cfg(not(target_os = "linux"))]
    fn out_advise(&self, _pages: Range<u64>, _advice: Advice) -> std::io::Result<()> {
        Err(std::io::Error::other("patching needs Linux"))
    }

    /// Copies `range` of the source unchanged to its output offset.
    fn copy(&self, range: Range<u64>) -> Result<()> {
        let out = self.out_at(range.start);
        let mut done = 0u64;
        if let Some(src) = self.src {
            done = copy_in_kernel(src, self.dst, range.start, out, range.end - range.start)
                .map_err(|e| self.read_err(e))?;
        }
        let rest = range.start + done..range.end;
        if rest.is_empty() {
            return Ok(());
        }
        let mut at = rest.start;
        while at < rest.end {
            let n = (rest.end - at).min(8 << 20);
            write_at(self.dst, self.slice(at..at + n)?, out + (at - range.start)).map_err(|e| self.write_err(e))?;
            self.release(at..at + n);
            at += n;
        }
        Ok(())
    }
}

/// A stretch of one source file rewritten through a buffer: the pieces of a chunk job
/// inside it, as `(source range, logical offset)`.
struct Run {
    range: Range<u64>,
    pieces: Vec<(Range<u64>, u64)>,
}

impl Run {
    /// The end of its last piece (a run may reach further, over unchanged bytes).
    fn run_end(&self) -> u64 {
        self.pieces.last().map_or(self.range.start, |p| p.0.end)
    }
}

/// Chunk job `job`: its runs are rewritten in `stream` (none: hashed only).
struct JobItem {
    job: usize,
    stream: usize,
    runs: Vec<Run>,
}

impl JobItem {
    fn out_bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.range.end - r.range.start).sum()
    }
}

/// The staged outputs of a pass (the external data files, then the model file, in
/// the order of the pass's streams), and a copier that fills them from the start,
/// unchanged, while the caller still plans what to change.
///
/// Planning a pass over the 1 GiB benchmark model (selection, manifest, edits, work
/// items) takes ~60 ms on one thread, about a sixth of what `cp` takes for the whole
/// file; the copy is the same either way (see [`write_outputs_with`]: it starts where
/// this one stopped, and only bytes whose place in the output is already known are
/// kept).
pub(crate) struct Outputs {
    // Dropped (the thread stopped) before the staged files are removed.
    copier: Option<Copier>,
    staged: Staged,
    /// Destination paths of the external data files.
    external: Vec<PathBuf>,
    /// Whether chunk jobs may be patched in place (module docs): the kernel can, and
    /// the output is not durable.
    patch: bool,
    /// Whether a stretch may be copied into the output with its spans' stored bytes and
    /// the spans written over them afterwards (the patched pass; the buffered pass's
    /// sparse runs).
    overwrite: bool,
}

/// The thread of the early copy: it returns where it stopped, as (stream, offset).
struct Copier {
    stop: std::sync::Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(usize, u64)>>,
    stopped_at: Option<(usize, u64)>,
}

impl Copier {
    /// Stops the copy: how many bytes from the start of each of `streams` streams'
    /// sources are in their staged files, unchanged.
    fn stop(mut self, streams: usize) -> Vec<u64> {
        self.halt();
        let (i, at) = self.stopped_at.unwrap_or((0, 0));
        (0..streams)
            .map(|k| {
                if k < i {
                    u64::MAX
                } else if k == i {
                    at
                } else {
                    0
                }
            })
            .collect()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.finish();
    }

    /// Waits for the copy (to its end unless stopped).
    fn finish(&mut self) {
        if let Some(h) = self.handle.take() {
            self.stopped_at = h.join().ok();
        }
    }
}

/// Whether every source file of `model` is on the file system of its staged output
/// (`m`: the model file's index in `staged`, after the external files).
#[cfg(unix)]
fn same_file_systems(model: &Model, staged: &Staged, m: usize) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |f: &File| f.metadata().map(|md| md.dev()).ok();
    let pairs = model
        .external_files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.file().ok(), i))
        .chain(std::iter::once((model.source_file(), m)));
    pairs.into_iter().all(|(src, i)| src.and_then(dev).is_some_and(|d| Some(d) == dev(staged.file_ref(i))))
}

#[cfg(not(unix))]
fn same_file_systems(_model: &Model, _staged: &Staged, _m: usize) -> bool {
    false
}

impl Drop for Copier {
    fn drop(&mut self) {
        self.halt();
    }
}

impl Outputs {
    /// Stages `output` and the external data files next to it. With `early`, and when
    /// every source is a file, a thread starts copying them (inside the kernel) into
    /// the staged files.
    ///
    /// `plaintext` says that the spans to be rewritten hold plaintext in the input (an
    /// encryption). A copy of them then lands in the output's page cache until the
    /// workers overwrite it, and the kernel may write it back to the output's disk
    /// meanwhile (on a copy-on-write file system or a flash medium the old blocks can
    /// outlive the overwrite). That exposes nothing new when the output is on the
    /// input's own file system, which holds the plaintext anyway; when it is on another
    /// one (a USB stick, a share the model is shipped from), nothing is copied before
    /// it is encrypted: no early copy, the buffered pass, and no sparse run copied
    /// whole.
    pub(crate) fn stage(model: &Model, output: &Path, early: bool, plaintext: bool) -> Result<Outputs> {
        let out_dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let mut staged = Staged::new();
        let mut external = Vec::new();
        for f in &model.external_files {
            let dest = out_dir.join(&f.location);
            staged.create(&dest)?;
            external.push(dest);
        }
        // The model file is staged last, so it is renamed into place last.
        let m = staged.create(output)?;
        let overwrite = !plaintext || same_file_systems(model, &staged, m);
        let mut outputs = Outputs { copier: None, staged, external, patch: can_patch() && overwrite, overwrite };
        if early && overwrite && model.source_file().is_some() && !NO_KERNEL_COPY.load(Ordering::Relaxed) {
            // Owned descriptors for the thread; a failure only means no early copy.
            let mut pairs = Vec::new();
            for (i, f) in model.external_files.iter().enumerate() {
                let (Ok(src), Ok(dst)) = (f.file().map(File::try_clone), outputs.staged.file_ref(i).try_clone()) else {
                    return Ok(outputs);
                };
                let (Ok(src), Ok(len)) = (src, f.bytes().map(|b| b.len() as u64)) else { return Ok(outputs) };
                pairs.push((src, dst, len));
            }
            let (Some(Ok(src)), Ok(dst)) =
                (model.source_file().map(File::try_clone), outputs.staged.file_ref(m).try_clone())
            else {
                return Ok(outputs);
            };
            pairs.push((src, dst, model.bytes().len() as u64));
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            let halt = stop.clone();
            let handle = std::thread::spawn(move || {
                for (i, (src, dst, len)) in pairs.iter().enumerate() {
                    let mut at = 0u64;
                    while at < *len {
                        if halt.load(Ordering::Relaxed) {
                            return (i, at);
                        }
                        let n = (len - at).min(COPY_STEP);
                        match copy_in_kernel(src, dst, at, at, n) {
                            Ok(done) if done == n => at += n,
                            Ok(done) => return (i, at + done),
                            Err(_) => return (i, at),
                        }
                    }
                }
                (pairs.len(), 0)
            });
            outputs.copier = Some(Copier { stop, handle: Some(handle), stopped_at: None });
        }
        Ok(outputs)
    }
}

/// Writes `output` and the external data files next to it: the input with the targets'
/// actions applied, `extra` edits of the model file, and the bytes `append` returns
/// appended to the model file. `append` receives the leaves of the written bytes and
/// those of the read bytes of every target in chunk-job order, as `leaves` asks for
/// them (else empty slices); an error it returns removes every staged file.
/// Every file is staged and renamed into place only when all are complete; with
/// `durable`, each is flushed to the disk (`fsync`) first. Returns the external data
/// files written.
#[allow(clippy::too_many_arguments)] // three callers, each passing all of them
pub(crate) fn write_outputs_with(
    model: &Model,
    targets: &[Target],
    actions: &[Action],
    extra: Vec<Edit>,
    leaves: Option<Leaves<'_>>,
    append: impl FnOnce(&[[u8; 32]], &[[u8; 32]]) -> Result<Vec<u8>>,
    output: &Path,
    mut outputs: Outputs,
    durable: bool,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let edits = edits_for(model, targets, actions, extra)?;
    let plan = Plan::new(model.bytes().len() as u64, edits, Vec::new())?;
    let model_stream = model.external_files.len();
    let copier = outputs.copier.take();
    let external = std::mem::take(&mut outputs.external);
    let staged = &outputs.staged;

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
            out_map: None,
            overwrite: outputs.overwrite,
        });
    }
    // The writer's own work (copies, puts) and the workers' (chunk jobs).
    let mut own: Vec<Op> = Vec::new();
    let mut job_items: Vec<JobItem> = Vec::new();
    // Ranges of each stream's source written by puts and runs; the rest is copied.
    let mut covered: Vec<Vec<Range<u64>>> = vec![Vec::new(); model_stream + 1];

    // Every range of each stream's source that an edit, a put or a piece writes (a run
    // may take in the gap between two pieces only if nothing else lies in it).
    let mut occupied: Vec<Vec<(u64, u64)>> = vec![Vec::new(); model_stream + 1];
    // The model file: puts for the plan's new bytes; transforms are done by the jobs.
    let mut shifts = Vec::new();
    let mut delta = 0i64;
    for (r, c) in plan.edits() {
        occupied[model_stream].push((r.start, r.end));
        if let Content::Bytes(b) = c {
            let out = r.start.wrapping_add_signed(delta);
            delta += b.len() as i64 - (r.end - r.start) as i64;
            shifts.push((r.end, delta));
            covered[model_stream].push(r.clone());
            if !b.is_empty() {
                own.push(Op::Put { stream: model_stream, out, bytes: b });
            }
        }
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
        out_map: None,
        overwrite: outputs.overwrite,
    });

    // External files: transformed-beforehand spans are puts.
    for (ti, target) in targets.iter().enumerate() {
        let t = &model.tensors[target.tensor];
        if let (TensorData::External { file, .. }, Action::Bytes(bytes)) = (&t.data, &actions[ti]) {
            for &(a, b) in &target.spans {
                for (range, logical) in t.file_pieces(a, b) {
                    let lo = logical as usize;
                    let hi = lo + (range.end - range.start) as usize;
                    let piece = bytes.get(lo..hi).ok_or_else(|| CoreError::BadManifest("span out of bounds".into()))?;
                    covered[*file].push(range.clone());
                    occupied[*file].push((range.start, range.end));
                    own.push(Op::Put { stream: *file, out: range.start, bytes: piece });
                }
            }
        }
    }

    for (ti, target) in targets.iter().enumerate() {
        let t = &model.tensors[target.tensor];
        if let (TensorData::External { file, .. }, Action::Xor(_) | Action::Reencrypt(_)) = (&t.data, &actions[ti]) {
            for &(a, b) in &target.spans {
                occupied[*file].extend(t.file_pieces(a, b).into_iter().map(|(r, _)| (r.start, r.end)));
            }
        }
    }
    for o in &mut occupied {
        o.sort_unstable();
    }

    // Chunk jobs: rewritten through a buffer or patched (XOR actions), or only hashed.
    let mut run_ranges: Vec<Vec<Range<u64>>> = vec![Vec::new(); model_stream + 1];
    let jobs = chunk_jobs(targets, leaves.map_or(crate::protect::CHUNK_SIZE, |l| l.chunk));
    for (ji, job) in jobs.iter().enumerate() {
        let target = &targets[job.target];
        let t = &model.tensors[target.tensor];
        let stream = match &t.data {
            TensorData::External { file, .. } => *file,
            _ => model_stream,
        };
        match &actions[job.target] {
            Action::Xor(_) | Action::Reencrypt(_) => {
                let runs = runs_of(t, job, &occupied[stream]);
                run_ranges[stream].extend(runs.iter().map(|r| r.range.clone()));
                job_items.push(JobItem { job: ji, stream, runs });
            }
            Action::Bytes(_) | Action::Skip if leaves.is_some() => {
                job_items.push(JobItem { job: ji, stream, runs: Vec::new() })
            }
            Action::Bytes(_) | Action::Skip => {}
        }
    }

    // Patching (module docs): a stream copied from a file, with runs to rewrite. Its
    // runs are copied with everything else and transformed in the output map.
    let can = !durable && outputs.patch;
    for (si, s) in streams.iter_mut().enumerate() {
        if can && s.src.is_some() && !run_ranges[si].is_empty() {
            let len = if si == model_stream { plan.output_len() } else { s.map.len() as u64 };
            s.dst.set_len(len).map_err(|e| s.write_err(e))?;
            // A file system that cannot map the file gets the buffered pass.
            s.out_map = memmap2::MmapRaw::map_raw(s.dst).ok();
        }
        if s.out_map.is_none() {
            covered[si].append(&mut run_ranges[si]);
        }
    }

    // What the early copy put in place: bytes up to the first edit that moves what
    // follows it (a put of another length) are where they belong in the output, the
    // rest is copied again.
    let pre = copier.map_or_else(|| vec![0; streams.len()], |c| c.stop(streams.len()));
    let moved = plan.edits().find_map(|(r, c)| match c {
        Content::Bytes(b) if b.len() as u64 != r.end - r.start => Some(r.start),
        _ => None,
    });
    let kept: Vec<u64> = (0..streams.len())
        .map(|si| if si == model_stream { pre[si].min(moved.unwrap_or(u64::MAX)) } else { pre[si] })
        .collect();

    // Copies: the complement of what is covered, per stream.
    for (si, cov) in covered.iter_mut().enumerate() {
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
            push_copies(&mut own, si, pos.max(kept[si]).min(r.start)..r.start);
            pos = r.end;
        }
        push_copies(&mut own, si, pos.max(kept[si]).min(len)..len);
    }
    // File order per stream, so the two workers each walk a stretch of a file and the
    // writer copies in file order.
    job_items.sort_by_key(|j| (j.stream, j.runs.first().map_or(0, |r| r.range.start)));
    own.sort_by_key(|op| match op {
        Op::Copy { stream, range } => (*stream, range.start),
        Op::Put { stream, out, .. } => (*stream, *out),
        Op::Buf { stream, .. } => (*stream, 0),
    });

    let total: u64 =
        job_items.iter().filter(|j| streams[j.stream].out_map.is_none()).map(JobItem::out_bytes).sum::<u64>()
            + own
                .iter()
                .map(|op| match op {
                    Op::Copy { range, .. } => range.end - range.start,
                    Op::Put { bytes, .. } => bytes.len() as u64,
                    Op::Buf { .. } => 0, // only workers send buffers
                })
                .sum::<u64>();
    // Hashing the source: varint tensors are decoded once, not once per chunk job.
    let mut decoded: std::collections::HashMap<usize, Vec<u8>> = std::collections::HashMap::new();
    if leaves.is_some_and(|l| l.read.is_some()) {
        for item in job_items.iter().filter(|j| j.runs.is_empty()) {
            let target = jobs[item.job].target;
            let t = &model.tensors[targets[target].tensor];
            if matches!(t.data, TensorData::Varint { .. }) && !decoded.contains_key(&target) {
                decoded.insert(target, model.tensor_bytes(t.id)?.into_owned());
            }
        }
    }
    progress.start("write", total);
    let failed = AtomicBool::new(false);
    let pool = Pool::default();
    let gate = Gate::new(streams.len());
    for (si, &k) in kept.iter().enumerate() {
        gate.advance(si, k);
    }
    // The writer copies and puts on its own whenever no run is waiting; the workers
    // only transform and hash runs.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Op>(QUEUE);
    let (results, written) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_ops(rx, own, &streams, &pool, &gate, &failed, durable, progress));
        let results = job_items
            .par_iter()
            .with_max_len(1)
            .map(|item| -> Result<Option<JobLeaves>> {
                if failed.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                let r = run_job(
                    model, targets, actions, &jobs, &streams, leaves, &decoded, &pool, &gate, &failed, &tx, item,
                );
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                r
            })
            .collect::<Result<Vec<_>>>();
        drop(tx);
        let written = writer.join().unwrap_or_else(|_| Err(CoreError::Output("the writer thread panicked".into())));
        (results, written)
    });
    let results = results?;
    written?;
    progress.finish();

    let want = |h: Option<LeafHash>| if h.is_some() { jobs.len() } else { 0 };
    let mut written = vec![None; leaves.map_or(0, |l| want(l.written))];
    let mut read = vec![None; leaves.map_or(0, |l| want(l.read))];
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
    let tail = append(&all(written)?, &all(read)?)?;
    for s in &mut streams {
        s.out_map = None;
    }
    let m = &streams[model_stream];
    // The early copy may have gone past the end of a shorter output.
    m.dst.set_len(plan.output_len()).map_err(|e| m.write_err(e))?;
    write_at(m.dst, &tail, plan.output_len()).map_err(|e| m.write_err(e))?;
    drop(streams);
    outputs.staged.commit(durable)?;
    Ok(external.iter().map(|p| p.display().to_string()).collect())
}

fn push_copies(own: &mut Vec<Op>, stream: usize, range: Range<u64>) {
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(COPY_STEP);
        own.push(Op::Copy { stream, range: at..at + n });
        at += n;
    }
}

/// The runs of a chunk job: its file pieces, merged across gaps of at most
/// [`MERGE_GAP`] bytes that nothing in `occupied` (every written range of the file,
/// sorted) touches.
fn runs_of(t: &onnx_protect_format::Tensor, job: &ChunkJob, occupied: &[(u64, u64)]) -> Vec<Run> {
    // Whether the first written range at or after `from` is `next` itself.
    let free_until = |from: u64, next: &Range<u64>| {
        let i = occupied.partition_point(|o| o.0 < from);
        occupied.get(i) == Some(&(next.start, next.end))
    };
    let mut runs: Vec<Run> = Vec::new();
    // Pieces longer than a run are cut (a manifest's chunk size bounds nothing here).
    let pieces = job.parts.iter().flat_map(|&(a, b)| t.file_pieces(a, b)).flat_map(|(range, logical)| {
        (range.start..range.end).step_by(RUN_MAX as usize).map(move |at| {
            let end = (at + RUN_MAX).min(range.end);
            (at..end, logical + (at - range.start))
        })
    });
    for (range, logical) in pieces {
        match runs.last_mut() {
            Some(r)
                if range.start >= r.range.end
                    && range.start - r.range.end <= MERGE_GAP
                    && range.end - r.range.start <= RUN_MAX
                    && free_until(r.range.end, &range) =>
            {
                r.range.end = range.end;
                r.pieces.push((range, logical));
            }
            _ => runs.push(Run { range: range.clone(), pieces: vec![(range, logical)] }),
        }
    }
    // Each run also takes in the free stretch after it, up to whatever is written next
    // (at most MERGE_GAP): so a stretch between the interleaved runs of several targets
    // (a tiered model's rows) is written with the run before it, not copied on its own
    // (measured: one copy_file_range per row of a tiered model).
    // Not when the run ends inside a written range (a span split between two chunk
    // jobs is one edit); an insertion (an empty range) at its end stops it there.
    // Written ranges do not overlap one another.
    for r in &mut runs {
        let end = r.range.end;
        let i = occupied.partition_point(|o| o.0 < end);
        let inside = i > 0 && occupied[i - 1].1 > end;
        if let Some(&(next, _)) = occupied.get(i).filter(|_| !inside) {
            r.range.end = next.min(end + MERGE_GAP);
        }
    }
    runs
}

/// Work items wait for the writer in a queue of this many.
const QUEUE: usize = 4;

/// A write, done by the one writer thread (parallel writes to one file only contend
/// for its lock).
enum Op<'a> {
    Copy {
        stream: usize,
        range: Range<u64>,
    },
    Put {
        stream: usize,
        out: u64,
        bytes: &'a [u8],
    },
    /// Runs of one chunk job: their spans' new bytes are in a pooled buffer, the rest
    /// of each run is written from the source map. The buffer is wiped after the
    /// writes when `wipe` is set.
    Buf {
        stream: usize,
        buf: Vec<u8>,
        runs: Vec<RunOut<'a>>,
        wipe: bool,
    },
}

/// A run in an [`Op::Buf`]: its pieces' bytes are `buf[buf_start..buf_start + len]`,
/// one after the other, and the run goes to output offset `out`.
struct RunOut<'a> {
    run: &'a Run,
    buf_start: usize,
    len: usize,
    out: u64,
}

/// What [`Stream::out_advise`] asks of the kernel.
enum Advice {
    PopulateWrite,
    DontNeed,
}

/// How far the writer has copied each stream, for the workers that patch behind it.
/// The writer does its copies in file order, so a mark of `m` means every byte below
/// `m` that is not a put is in place.
struct Gate {
    /// Per stream, the mark; and whether the writer has finished its copies.
    state: Mutex<(Vec<u64>, bool)>,
    moved: Condvar,
}

impl Gate {
    fn new(streams: usize) -> Gate {
        Gate { state: Mutex::new((vec![0; streams], false)), moved: Condvar::new() }
    }

    /// The writer has copied `stream` up to source offset `end`.
    fn advance(&self, stream: usize, end: u64) {
        if let Ok(mut st) = self.state.lock() {
            if st.0[stream] < end {
                st.0[stream] = end;
                self.moved.notify_all();
            }
        }
    }

    /// The writer has no copies left (or stopped): nobody waits any longer.
    fn close(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.1 = true;
        }
        self.moved.notify_all();
    }

    /// Waits until `stream` is copied up to `end`: `Ok(false)` if the pass failed
    /// meanwhile, an error if the writer finished without getting there.
    fn wait(&self, stream: usize, end: u64, failed: &AtomicBool) -> Result<bool> {
        let lost = || CoreError::Output("internal: the writer stopped before a patched range".into());
        let mut st = self.state.lock().map_err(|_| lost())?;
        loop {
            if failed.load(Ordering::Relaxed) {
                return Ok(false);
            }
            if st.0[stream] >= end {
                return Ok(true);
            }
            if st.1 {
                return Err(lost());
            }
            st = self.moved.wait(st).map_err(|_| lost())?;
        }
    }
}

/// Whether this kernel has `MADV_POPULATE_WRITE` (Linux 5.14), without which a failed
/// write through a map would raise `SIGBUS` instead of returning an error: probed
/// once on an anonymous page.
#[cfg(target_os = "linux")]
fn can_patch() -> bool {
    static PROBE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBE.get_or_init(|| {
        let Ok(m) = memmap2::MmapMut::map_anon(4096) else { return false };
        // SAFETY: one whole page of a live private anonymous map; populating it only
        // allocates the page.
        unsafe { libc::madvise(m.as_ptr() as *mut libc::c_void, 4096, libc::MADV_POPULATE_WRITE) == 0 }
    })
}

#[cfg(not(target_os = "linux"))]
fn can_patch() -> bool {
    false
}

/// Run buffers (up to [`RUN_MAX`] bytes each), reused across runs and threads.
#[derive(Default)]
struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    /// A buffer of at least `len` bytes: a used one (grown if need be) or a new one of
    /// that size. (Always allocating [`RUN_MAX`] made each pass over a small model
    /// zero 8 MiB per buffer, most of the time of decrypting a 6 KB model.)
    fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self.0.lock().ok().and_then(|mut v| v.pop()).unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf
    }

    fn give(&self, buf: Vec<u8>) {
        if let Ok(mut v) = self.0.lock() {
            v.push(buf);
        }
    }
}

/// The writer thread: performs the queued writes in arrival order, reports progress,
/// and after the first error only drains the queue (so no worker blocks on it).
#[allow(clippy::too_many_arguments)] // one caller
fn write_ops(
    rx: std::sync::mpsc::Receiver<Op>,
    own: Vec<Op>,
    streams: &[Stream],
    pool: &Pool,
    gate: &Gate,
    failed: &AtomicBool,
    durable: bool,
    progress: &dyn Progress,
) -> Result<()> {
    // Whatever happens, the workers that wait for copies are let go.
    struct Closing<'g>(&'g Gate);
    impl Drop for Closing<'_> {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let closing = Closing(gate);
    use std::sync::mpsc::TryRecvError;
    let mut first_err = None;
    let mut done = 0u64;
    let mut flushed = 0u64;
    let mut own = own.into_iter();
    loop {
        // Runs first (they hold buffers and keep the workers going), then own work.
        let op = match rx.try_recv() {
            Ok(op) => op,
            Err(TryRecvError::Empty) => match own.next() {
                Some(op) => op,
                None => {
                    closing.0.close();
                    match rx.recv() {
                        Ok(op) => op,
                        Err(_) => break,
                    }
                }
            },
            Err(TryRecvError::Disconnected) => match own.next() {
                Some(op) => op,
                None => break,
            },
        };
        // After an error (the writer's or a worker's) the queue is only drained.
        if first_err.is_some() || failed.load(Ordering::Relaxed) {
            if let Op::Buf { buf, .. } = op {
                pool.give(buf);
            }
            continue;
        }
        let r = match op {
            Op::Copy { stream, range } => {
                done += range.end - range.start;
                let end = range.end;
                let r = streams[stream].copy(range);
                if r.is_ok() {
                    gate.advance(stream, end);
                }
                r
            }
            Op::Put { stream, out, bytes } => {
                done += bytes.len() as u64;
                let s = &streams[stream];
                write_at(s.dst, bytes, out).map_err(|e| s.write_err(e))
            }
            Op::Buf { stream, mut buf, runs, wipe } => {
                let s = &streams[stream];
                let mut r = Ok(());
                let mut used = 0usize;
                for ro in &runs {
                    done += ro.run.range.end - ro.run.range.start;
                    r = write_run(s, &buf, ro);
                    used = used.max(ro.buf_start + ro.len);
                    if r.is_err() {
                        break;
                    }
                }
                // One release for the stretch the buffer's runs span: each release
                // interrupts the other cores to flush their TLBs, and a tiered model's
                // runs are single rows (one release per row took most of the writer's time).
                if let (Some(first), Some(last)) = (runs.first(), runs.last()) {
                    s.release(first.run.range.start..last.run.range.end);
                }
                if wipe {
                    buf[..used].zeroize();
                }
                pool.give(buf);
                r
            }
        };
        if let Err(e) = r {
            failed.store(true, Ordering::Relaxed);
            first_err = Some(e);
        }
        if durable && done - flushed >= WRITEBACK_STEP {
            flushed = done;
            for s in streams {
                start_writeback(s.dst);
            }
        }
        progress.set(done);
    }
    first_err.map_or(Ok(()), Err)
}

/// Dirty pages of a durable output are handed to the disk every this many bytes
/// written, so the final `fsync` finds little left to do. (Other outputs leave
/// writeback to the kernel, as `cp` does.)
const WRITEBACK_STEP: u64 = 64 << 20;

/// Starts writeback of the dirty pages of `f` without waiting for it.
#[cfg(target_os = "linux")]
fn start_writeback(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: `f` is open for the duration of the call; no memory is passed. The
    // call only schedules writeback; an error is harmless (the commit's fsync does it).
    let _ = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_f: &File) {}

/// A worker's part of a chunk job: transform and hash its runs, hand them to the writer.
#[allow(clippy::too_many_arguments)]
fn run_job<'a>(
    model: &Model,
    targets: &[Target],
    actions: &[Action],
    jobs: &[ChunkJob],
    streams: &[Stream],
    leaves: Option<Leaves<'_>>,
    decoded: &std::collections::HashMap<usize, Vec<u8>>,
    pool: &Pool,
    gate: &Gate,
    failed: &AtomicBool,
    tx: &std::sync::mpsc::SyncSender<Op<'a>>,
    item: &'a JobItem,
) -> Result<Option<JobLeaves>> {
    let send = |op: Op<'a>| tx.send(op).map_err(|_| CoreError::Output("the writer thread stopped".into()));
    let JobItem { job, stream, runs } = item;
    let job_ref = &jobs[*job];
    let target = &targets[job_ref.target];
    let t = &model.tensors[target.tensor];
    let action = &actions[job_ref.target];
    let given = match leaves.filter(|l| l.written.is_some()).and_then(|l| l.given).and_then(|g| g.get(&job_ref.target))
    {
        Some(g) => Some(
            *g.get(job_ref.index as usize)
                .ok_or_else(|| CoreError::Output("internal: a given leaf is missing".into()))?,
        ),
        None => None,
    };
    let leaf_for = |h: LeafHash| Leaf::new(h, target.stream_id, job_ref.index);
    let mut leaf = leaves.and_then(|l| l.written).filter(|_| given.is_none()).map(leaf_for);
    let mut read_leaf = leaves.and_then(|l| l.read).map(leaf_for);
    let done = |leaf: Option<Leaf>, read_leaf: Option<Leaf>| {
        leaves.map(|_| JobLeaves {
            job: *job,
            written: given.or_else(|| leaf.map(Leaf::finalize)),
            read: read_leaf.map(Leaf::finalize),
        })
    };
    if runs.is_empty() {
        // Hash only: the bytes the source holds for this job, and those the output holds.
        if leaf.is_some() || read_leaf.is_some() {
            let _release = ReleaseOnDrop::for_job(model, t, job_ref);
            let new_bytes = match action {
                Action::Bytes(b) if leaf.is_some() => Some(b.as_slice()),
                _ => None,
            };
            // The stored bytes (a varint tensor is decoded here unless it was up
            // front) only when a leaf needs them.
            let stored = match decoded.get(&job_ref.target) {
                Some(d) => std::borrow::Cow::Borrowed(d.as_slice()),
                None if read_leaf.is_some() || new_bytes.is_none() => model.tensor_bytes(t.id)?,
                None => std::borrow::Cow::Borrowed(&[][..]),
            };
            let out = new_bytes.unwrap_or(&stored);
            for (h, whole) in [(read_leaf.as_mut(), &*stored), (leaf.as_mut(), out)] {
                let Some(h) = h else { continue };
                for &(a, b) in &job_ref.parts {
                    let part = whole
                        .get(a as usize..b as usize)
                        .ok_or_else(|| CoreError::BadManifest(format!("span of '{}' out of bounds", t.name)))?;
                    h.update(part);
                }
            }
        }
        return Ok(done(leaf, read_leaf));
    }
    let s = &streams[*stream];
    if s.out_map.is_some() {
        // Patched in place once the writer's copy has passed the job (module docs).
        let (Some(first), Some(last)) = (runs.first(), runs.last()) else { return Ok(done(leaf, read_leaf)) };
        if !gate.wait(*stream, last.run_end(), failed)? {
            return Ok(None);
        }
        // Pieces are gathered for the hash (`Gather`) in buffers kept by each worker
        // thread for its next job (a fresh buffer is a fresh map: page faults). They
        // hold ciphertext only.
        thread_local! {
            static GATHERED: std::cell::RefCell<[Vec<u8>; 2]> = const { std::cell::RefCell::new([Vec::new(), Vec::new()]) };
        }
        let mut bufs = GATHERED.with(|g| std::mem::take(&mut *g.borrow_mut()));
        let [read_buf, written_buf] = &mut bufs;
        let mut read_g = read_leaf.as_mut().map(|h| (h, Gather::new(read_buf)));
        let mut written_g = leaf.as_mut().map(|h| (h, Gather::new(written_buf)));
        // 64 KiB: a multiple of every element size, so each part starts on an element.
        const SCRATCH: usize = 64 << 10;
        let mut scratch = matches!(action, Action::Reencrypt(_)).then(|| zeroize::Zeroizing::new(vec![0u8; SCRATCH]));
        for run in runs {
            let out = s.out_at(run.range.start);
            let at = |p: &Range<u64>| out + (p.start - run.range.start)..out + (p.end - run.range.start);
            // The pages of pieces less than CLOSE apart are faulted in together (one
            // call for the job at the default policy, few pages at sparse ones).
            const CLOSE: u64 = 64 << 10;
            let mut i = 0;
            while i < run.pieces.len() {
                let mut j = i + 1;
                while j < run.pieces.len() && run.pieces[j].0.start <= run.pieces[j - 1].0.end + CLOSE {
                    j += 1;
                }
                let group = at(&run.pieces[i].0).start..at(&run.pieces[j - 1].0).end;
                s.out_populate(group).map_err(|e| s.write_err(e))?;
                for (range, logical) in &run.pieces[i..j] {
                    // SAFETY: pieces of chunk jobs never overlap (each is a different
                    // part of one span, and spans are disjoint), and the gate has
                    // passed them.
                    let piece = unsafe { s.out_slice(at(range))? };
                    if let Some((h, g)) = read_g.as_mut() {
                        g.feed(h, piece);
                    }
                    if let Some(scratch) = scratch.as_mut() {
                        // A key rotation passes through plaintext: in a wiped buffer of
                        // this process, never in the output's pages.
                        for (k, part) in piece.chunks_mut(scratch.len()).enumerate() {
                            let tmp = &mut scratch[..part.len()];
                            tmp.copy_from_slice(part);
                            let off = *logical + (k * SCRATCH) as u64;
                            action.apply_chunk(target, t.data_type, off, tmp, false)?;
                            part.copy_from_slice(tmp);
                        }
                    } else {
                        action.apply_chunk(target, t.data_type, *logical, piece, false)?;
                    }
                    if let Some((h, g)) = written_g.as_mut() {
                        g.feed(h, piece);
                    }
                }
                i = j;
            }
        }
        for (h, g) in [read_g.as_mut(), written_g.as_mut()].into_iter().flatten() {
            g.flush(h);
        }
        GATHERED.with(|g| *g.borrow_mut() = bufs);
        // Only pages wholly inside the job: a page at either end may hold another job's piece.
        let span = s.out_at(first.range.start)..s.out_at(last.range.start) + (last.run_end() - last.range.start);
        s.out_release(span);
        return Ok(done(leaf, read_leaf));
    }
    let wipe = matches!(action, Action::Reencrypt(_));
    // Runs are packed into one buffer until it is full: one hand-over to the
    // writer per buffer, however small the runs. Only the pieces' bytes go into
    // the buffer (encrypted straight from the map); the gaps between them are
    // written from the map by the writer.
    let piece_bytes = |run: &Run| run.pieces.iter().map(|(p, _)| (p.end - p.start) as usize).sum::<usize>();
    // Bytes of this job's runs not yet in a buffer: what the next buffer needs, up to a run's size.
    let mut left: usize = runs.iter().map(piece_bytes).sum();
    let mut buf = pool.take(left.min(RUN_MAX as usize));
    let mut outs: Vec<RunOut> = Vec::new();
    let mut used = 0usize;
    let fail = |buf: Vec<u8>, used: usize, e: CoreError| {
        let mut buf = buf;
        if wipe {
            let end = used.min(buf.len());
            buf[..end].zeroize();
        }
        pool.give(buf);
        Err(e)
    };
    // Hashing (and, when the stored bytes are hashed, transforming in place) is done
    // once per buffer, over all its runs: the hash is several times faster on long
    // inputs, and a tiered model's runs are single rows (its tiers' spans interleave).
    // The buffer holds the job's bytes in chunk order from its start.
    let seal = |buf: &mut [u8], outs: &[RunOut], used: usize, read_leaf: &mut Option<Leaf>, leaf: &mut Option<Leaf>| {
        if let Some(h) = read_leaf.as_mut() {
            h.update(&buf[..used]);
            for ro in outs {
                let mut at = ro.buf_start;
                for (range, logical) in &ro.run.pieces {
                    let n = (range.end - range.start) as usize;
                    action.apply_chunk(target, t.data_type, *logical, &mut buf[at..at + n], false)?;
                    at += n;
                }
            }
        }
        if let Some(h) = leaf.as_mut() {
            h.update(&buf[..used]);
        }
        Ok::<(), CoreError>(())
    };
    for run in runs {
        let len = piece_bytes(run);
        if used + len > buf.len() && !outs.is_empty() {
            if let Err(e) = seal(&mut buf, &outs, used, &mut read_leaf, &mut leaf) {
                return fail(buf, used, e);
            }
            let full = std::mem::replace(&mut buf, pool.take(left.min(RUN_MAX as usize)));
            send(Op::Buf { stream: *stream, buf: full, runs: std::mem::take(&mut outs), wipe })?;
            used = 0;
        }
        if buf.len() < used + len {
            buf.resize(used + len, 0);
        }
        left -= len;
        let start = used;
        for (range, logical) in &run.pieces {
            let n = (range.end - range.start) as usize;
            let src = match s.slice(range.clone()) {
                Ok(src) => src,
                Err(e) => return fail(buf, used, e),
            };
            let dst = &mut buf[used..used + n];
            if read_leaf.is_some() {
                // The stored bytes, hashed and transformed in place when the buffer is sealed.
                dst.copy_from_slice(src);
            } else if let Err(e) = action.apply_chunk_b2b(target, t.data_type, *logical, src, dst) {
                return fail(buf, used + n, e);
            }
            used += n;
        }
        outs.push(RunOut { run, buf_start: start, len, out: s.out_at(run.range.start) });
    }
    if outs.is_empty() {
        pool.give(buf);
    } else {
        if let Err(e) = seal(&mut buf, &outs, used, &mut read_leaf, &mut leaf) {
            return fail(buf, used, e);
        }
        send(Op::Buf { stream: *stream, buf, runs: outs, wipe })?;
    }
    Ok(done(leaf, read_leaf))
}

/// Whether a run whose pieces hold `piece_bytes` bytes in `pieces` pieces is written
/// faster by copying all of it inside the kernel and then writing the pieces over the
/// copy than with one `pwritev` from the map and the buffer. Writes from user memory
/// cost ~1.5× the kernel's own copy here (0.59 s against 0.40 s for 1 GiB), and the
/// gaps of a sparse run are not yet mapped (the workers only read the pieces); each
/// extra `pwrite` costs a few µs. Measured with a scratch program on the 1 GiB model
/// (docs/performance.md, session 5): with a 4 KiB row in every 20, copy-then-overwrite
/// took 0.55 s against 1.01 s; with every other row it lost.
fn sparse(run_bytes: u64, piece_bytes: u64, pieces: u64) -> bool {
    4 * piece_bytes + 16384 * pieces <= run_bytes
}

/// Writes one run: the gaps from the source map, the pieces from `buf`. A sparse run
/// (see [`sparse`]) is copied inside the kernel first and its pieces written over it.
fn write_run(s: &Stream, buf: &[u8], ro: &RunOut) -> Result<()> {
    let run_bytes = ro.run.range.end - ro.run.range.start;
    if let Some(src) = s.src.filter(|_| s.overwrite && sparse(run_bytes, ro.len as u64, ro.run.pieces.len() as u64)) {
        let copied = copy_in_kernel(src, s.dst, ro.run.range.start, ro.out, run_bytes).map_err(|e| s.read_err(e))?;
        if copied == run_bytes {
            let mut at = ro.buf_start;
            for (range, _) in &ro.run.pieces {
                let n = (range.end - range.start) as usize;
                let out = ro.out + (range.start - ro.run.range.start);
                write_at(s.dst, &buf[at..at + n], out).map_err(|e| s.write_err(e))?;
                at += n;
            }
            return Ok(());
        }
        // The kernel refused part of it: the whole run is written below (over what was copied).
    }
    let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * ro.run.pieces.len());
    let mut pos = ro.run.range.start;
    let mut at = ro.buf_start;
    for (range, _) in &ro.run.pieces {
        if pos < range.start {
            parts.push(s.slice(pos..range.start)?);
        }
        let n = (range.end - range.start) as usize;
        parts.push(&buf[at..at + n]);
        at += n;
        pos = range.end;
    }
    if pos < ro.run.range.end {
        parts.push(s.slice(pos..ro.run.range.end)?);
    }
    write_parts_at(s.dst, &parts, ro.out).map_err(|e| s.write_err(e))
}

/// Writes `parts` one after the other at `off`: with `pwritev`, 1024 at a time.
#[cfg(target_os = "linux")]
fn write_parts_at(f: &File, parts: &[&[u8]], mut off: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut iov: Vec<libc::iovec> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() })
        .collect();
    let mut first = 0usize;
    while first < iov.len() {
        let count = (iov.len() - first).min(1024) as libc::c_int;
        // SAFETY: each iovec points into a live `&[u8]` of `parts` (advanced only within
        // it below) and is only read by the kernel; `f` is open for the call.
        let n = unsafe { libc::pwritev(f.as_raw_fd(), iov[first..].as_ptr(), count, off as libc::off_t) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut n = n as usize;
        off += n as u64;
        while n > 0 {
            let v = &mut iov[first];
            if n >= v.iov_len {
                n -= v.iov_len;
                first += 1;
            } else {
                // SAFETY: `n < iov_len`, so the advanced pointer stays inside the same slice.
                v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
                v.iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn write_parts_at(f: &File, parts: &[&[u8]], mut off: u64) -> std::io::Result<()> {
    for p in parts {
        write_at(f, p, off)?;
        off += p.len() as u64;
    }
    Ok(())
}

/// Set once `copy_file_range` has refused a whole range: the rest of the process
/// writes unchanged bytes itself.
static NO_KERNEL_COPY: AtomicBool = AtomicBool::new(false);

/// Copies `len` bytes from `src` at `from` to `dst` at `to` inside the kernel. Returns
/// how many bytes were copied before the kernel refused (0 where it cannot do it at
/// all); the caller writes the rest itself.
#[cfg(target_os = "linux")]
fn copy_in_kernel(src: &File, dst: &File, from: u64, to: u64, len: u64) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    if NO_KERNEL_COPY.load(Ordering::Relaxed) {
        return Ok(0);
    }
    let (mut off_in, mut off_out) = (from as libc::loff_t, to as libc::loff_t);
    let mut left = len;
    while left > 0 {
        let want = left.min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the duration of the call (borrowed
        // `File`s); the offsets are valid pointers to local variables, which the call
        // advances; no user memory is read or written.
        let n = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, want, 0) };
        if n < 0 {
            // EXDEV (across file systems on older kernels), ENOSYS, EOPNOTSUPP, EINVAL
            // (special files): not possible here; the caller writes the bytes itself.
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if left == len {
                NO_KERNEL_COPY.store(true, Ordering::Relaxed);
            }
            break;
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("file ends before byte {}", from + len),
            ));
        }
        left -= n as u64;
    }
    Ok(len - left)
}

#[cfg(not(target_os = "linux"))]
fn copy_in_kernel(_src: &File, _dst: &File, _from: u64, _to: u64, _len: u64) -> std::io::Result<u64> {
    Ok(0)
}

#[cfg(unix)]
fn write_at(f: &File, buf: &[u8], off: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, off)
}

#[cfg(windows)]
fn write_at(f: &File, mut buf: &[u8], mut off: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = f.seek_write(buf, off)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protect::{apply, leaf_digests_ext, LeafSrc};
    use onnx_protect_crypto::{MasterKey, SessionKeys};
    use onnx_protect_format::testutil::{float_tensor, model_with_graph, node};
    use onnx_protect_format::wire::put_len_field;
    use onnx_protect_format::write::metadata_field;
    use onnx_protect_select::Mode;

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
        let leaves = leaf_digests_ext(model, targets, chunk, LeafHash::Blake3, &sources).unwrap();
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

    /// The ways a pass can run: (patched in place, started by an early copy that ran
    /// to its end).
    const WAYS: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

    /// Staged outputs for `out`, taking the given way (an early copy is waited for, so
    /// the pass finds all of it done).
    fn outputs(model: &Model, out: &Path, (patch, early): (bool, bool)) -> Outputs {
        let mut o = Outputs::stage(model, out, early, true).unwrap();
        o.patch &= patch;
        if let Some(c) = o.copier.as_mut() {
            c.finish();
        }
        o
    }

    /// The output of one pass, the same whichever way it goes (checked here).
    fn one_pass(
        model: &Model,
        targets: &[Target],
        streams: &[onnx_protect_crypto::Keystream],
        extra: impl Fn() -> Vec<Edit>,
        chunk: u64,
        out: &Path,
    ) -> Vec<u8> {
        let actions: Vec<Action> = streams.iter().map(|k| Action::Xor(Box::new(k.clone()))).collect();
        let leaves = Some(Leaves { chunk, written: Some(LeafHash::Blake3), read: None, given: None });
        let mut first: Option<Vec<u8>> = None;
        for way in WAYS {
            write_outputs_with(
                model,
                targets,
                &actions,
                extra(),
                leaves,
                |l, _| Ok(l.concat()),
                out,
                outputs(model, out, way),
                false,
                &onnx_protect_format::NoProgress,
            )
            .unwrap();
            let got = std::fs::read(out).unwrap();
            match &first {
                None => first = Some(got),
                Some(f) => assert!(*f == got, "the pass (patched, early copy) = {way:?} wrote other bytes"),
            }
        }
        first.unwrap()
    }

    #[test]
    fn one_pass_output_equals_the_reference_writer_with_and_without_kernel_copies() {
        let dir = tempfile::tempdir().unwrap();
        let (model, targets, streams) = three_targets(dir.path());
        // Small chunks: many jobs per target, runs cut at chunk boundaries (1000: inside
        // rows, so a span is split between two jobs while one edit covers all of it).
        for chunk in [4096u64, 1000, 1 << 20] {
            let want = reference(&model, &targets, &streams, Vec::new(), chunk);
            assert_ne!(&want[..model.bytes().len()], model.bytes());
            assert_eq!(one_pass(&model, &targets, &streams, Vec::new, chunk, &dir.path().join("a.onnx")), want);
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
        assert_eq!(one_pass(&model, &targets, &streams, insert, 4096, &dir.path().join("b.onnx")), want);
        // Bytes inserted right after a span (the end of row 2 of `A`, before the free row
        // 3): what follows moves, so no run may carry the unchanged row across the insertion.
        let t = &model.tensors[targets[0].tensor];
        let at = t.file_pieces(2 * 1024, 3 * 1024)[0].0.end;
        let inside = || vec![Edit { range: at..at, content: Content::Bytes(b"xyz".to_vec()), ancestors: Vec::new() }];
        let want_inside = reference(&model, &targets, &streams, inside(), 4096);
        assert_eq!(one_pass(&model, &targets, &streams, inside, 4096, &dir.path().join("i.onnx")), want_inside);
        // Without copy_file_range (as on kernels or file systems that refuse it): the
        // same bytes. The switch is process-wide; other tests only get slower.
        NO_KERNEL_COPY.store(true, Ordering::Relaxed);
        let got = one_pass(&model, &targets, &streams, insert, 4096, &dir.path().join("c.onnx"));
        NO_KERNEL_COPY.store(false, Ordering::Relaxed);
        assert_eq!(got, want);
    }

    #[test]
    fn plaintext_spans_are_not_copied_to_another_file_system() {
        // The model on tmpfs (/dev/shm), its output on the temporary directory's file
        // system: an encryption must not copy the plaintext of its spans there.
        use std::os::unix::fs::MetadataExt;
        let shm = Path::new("/dev/shm");
        let other = tempfile::tempdir().unwrap();
        let Ok(src) = tempfile::tempdir_in(shm) else {
            eprintln!("skipped: no /dev/shm");
            return;
        };
        let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
        if dev(src.path()) == dev(other.path()) {
            eprintln!("skipped: /dev/shm and the temporary directory share a file system");
            return;
        }
        let model = Model::open(model_file(src.path())).unwrap();
        let away = other.path().join("o.onnx");
        let o = Outputs::stage(&model, &away, true, true).unwrap();
        assert!(!o.overwrite && !o.patch && o.copier.is_none(), "plaintext copied across file systems");
        // Ciphertext (a decryption's or a rotation's input) may be.
        let o = Outputs::stage(&model, &away, true, false).unwrap();
        assert!(o.overwrite && o.patch == can_patch());
        // Beside its input, plaintext may be copied too.
        let o = Outputs::stage(&model, &src.path().join("o.onnx"), true, true).unwrap();
        assert!(o.overwrite && o.patch == can_patch());
        drop(o);
        // And the pass across file systems writes the same bytes as the reference.
        let targets = targets(&model);
        let keys = SessionKeys::derive(&MasterKey::from_bytes([8; 32]), &[1; 32]);
        let streams: Vec<_> = (1..=3).map(|i| keys.keystream(i)).collect();
        let want = reference(&model, &targets, &streams, Vec::new(), 4096);
        assert_eq!(one_pass(&model, &targets, &streams, Vec::new, 4096, &away), want);
    }

    #[test]
    fn an_output_shorter_than_its_input_is_cut_to_its_length() {
        // A decryption removes the manifest entry at the end of the file: an early copy
        // has put the input's last bytes beyond the output's end.
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
        assert_eq!(one_pass(&model, &targets, &streams, cut, 4096, &dir.path().join("o.onnx")), want);
    }

    #[test]
    fn a_pass_hashes_what_it_reads_and_what_it_writes_together() {
        // What a decryption's pass computes for the MAC check (the leaves of the bytes
        // it reads) and what a key rotation's computes besides (the leaves of the bytes
        // it writes): here it encrypts, so the two differ.
        let dir = tempfile::tempdir().unwrap();
        let (model, targets, streams) = three_targets(dir.path());
        let actions: Vec<Action> = streams.iter().map(|k| Action::Xor(Box::new(k.clone()))).collect();
        for (chunk, way) in [4096u64, 1 << 20].into_iter().flat_map(|c| WAYS.map(|w| (c, w))) {
            let stored = leaf_digests_ext(&model, &targets, chunk, LeafHash::Blake3, &[]).unwrap();
            let out = dir.path().join("s.onnx");
            let nop = &onnx_protect_format::NoProgress;
            let mut got = Vec::new();
            let read_only = Some(Leaves { chunk, written: None, read: Some(LeafHash::Blake3), given: None });
            let append = |w: &[[u8; 32]], r: &[[u8; 32]]| {
                assert!(w.is_empty());
                got = r.to_vec();
                Ok(Vec::new())
            };
            let o = outputs(&model, &out, way);
            write_outputs_with(&model, &targets, &actions, Vec::new(), read_only, append, &out, o, false, nop).unwrap();
            assert_eq!(got, stored, "chunk {chunk}, way {way:?}");
            let want = reference(&model, &targets, &streams, Vec::new(), chunk);
            assert_eq!(std::fs::read(&out).unwrap(), want[..model.bytes().len()], "way {way:?}");
            // Both at once: the written leaves are appended, as the reference does.
            let both =
                Some(Leaves { chunk, written: Some(LeafHash::Blake3), read: Some(LeafHash::Blake3), given: None });
            let mut got = Vec::new();
            let append = |w: &[[u8; 32]], r: &[[u8; 32]]| {
                got = r.to_vec();
                Ok(w.concat())
            };
            let o = outputs(&model, &out, way);
            write_outputs_with(&model, &targets, &actions, Vec::new(), both, append, &out, o, false, nop).unwrap();
            assert_eq!(got, stored, "chunk {chunk}, way {way:?}");
            assert_eq!(std::fs::read(&out).unwrap(), want, "chunk {chunk}, way {way:?}");
        }
    }

    #[test]
    fn sparse_runs_are_copied_in_the_kernel_and_overwritten_with_the_same_result() {
        // 64 rows of 16 KiB, one row in eight encrypted: each run is sparse.
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..64 * 4096).map(|i| (i as f32 * 0.001).cos()).collect();
        let mut g = Vec::new();
        put_len_field(&mut g, 1, &node("MatMul", &["x", "W"], &["y"], "mm"));
        put_len_field(&mut g, 2, b"g");
        put_len_field(&mut g, 5, &float_tensor("W", &[64, 4096], &values));
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, model_with_graph(&g)).unwrap();
        let model = Model::open(&path).unwrap();
        let row = 4096 * 4;
        let spans: Vec<(u64, u64)> = (0..64).step_by(8).map(|r| (r * row, (r + 1) * row)).collect();
        let targets = vec![Target { tensor: tensor(&model, "W"), stream_id: 1, mode: Mode::Ctr, spans, tier: 0 }];
        let t = &model.tensors[targets[0].tensor];
        let occupied: Vec<(u64, u64)> =
            targets[0].spans.iter().map(|&(a, b)| t.file_pieces(a, b)[0].0.clone()).map(|r| (r.start, r.end)).collect();
        let runs = runs_of(t, &chunk_jobs(&targets, 1 << 20)[0], &occupied);
        assert_eq!(runs.len(), 1);
        assert!(runs.iter().all(|r| {
            let piece_bytes: u64 = r.pieces.iter().map(|(p, _)| p.end - p.start).sum();
            sparse(r.range.end - r.range.start, piece_bytes, r.pieces.len() as u64)
        }));
        let keys = SessionKeys::derive(&MasterKey::from_bytes([5; 32]), &[6; 32]);
        let streams = vec![keys.keystream(1)];
        let want = reference(&model, &targets, &streams, Vec::new(), 1 << 20);
        assert_ne!(&want[..model.bytes().len()], model.bytes());
        assert_eq!(one_pass(&model, &targets, &streams, Vec::new, 1 << 20, &dir.path().join("a.onnx")), want);
        // With every output offset shifted by a field inserted in front.
        let insert =
            || vec![Edit { range: 0..0, content: Content::Bytes(metadata_field("k", "v")), ancestors: Vec::new() }];
        let shifted = reference(&model, &targets, &streams, insert(), 1 << 20);
        assert_eq!(one_pass(&model, &targets, &streams, insert, 1 << 20, &dir.path().join("s.onnx")), shifted);
        // Where the kernel refuses to copy, the whole run is written from the map.
        NO_KERNEL_COPY.store(true, Ordering::Relaxed);
        let got = one_pass(&model, &targets, &streams, Vec::new, 1 << 20, &dir.path().join("b.onnx"));
        NO_KERNEL_COPY.store(false, Ordering::Relaxed);
        assert_eq!(got, want);
    }

    #[test]
    fn only_few_long_pieces_make_a_run_sparse() {
        let run = 8u64 << 20;
        // One 4 KiB row in 20 (the 1 GiB benchmark at *=0.05): sparse.
        assert!(sparse(run, run / 20, run / 20 / 4096));
        // Every other row: not sparse, one pwritev is cheaper.
        assert!(!sparse(run, run / 2, run / 2 / 4096));
        // Few bytes in many small pieces: the pwrites would cost more than they save.
        assert!(!sparse(run, run / 20, run / 20 / 256));
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
        let runs = runs_of(t, &jobs[0], &alone);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].range, piece(0).start..piece(510).end);
        // Rows 1, 5, 9, … belong to another target: a run ends before each of them.
        let mut both = alone.clone();
        both.extend((1..512).step_by(4).map(&piece).map(|r| (r.start, r.end)));
        both.sort_unstable();
        let runs = runs_of(t, &jobs[0], &both);
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
        let runs = runs_of(t, &job, &occupied);
        assert_eq!(runs.len(), 128);
        for (i, run) in runs.iter().enumerate() {
            let row = 4 * i as u64;
            assert_eq!(run.range, piece(row).start..piece(row + 2).start, "run {i}");
            assert_eq!(run.pieces.len(), 1);
        }
        // With nothing written after it, a run ends with its last piece.
        let runs = runs_of(t, &job, &occupied[..1]);
        assert_eq!(runs.last().unwrap().range, piece(508));
        // One written range over two adjacent pieces (an edit of two merged spans): the
        // first run does not reach past it into the second's piece (the second takes
        // in the free stretch to the job's next piece).
        let job = ChunkJob { target: 0, index: 0, parts: vec![(0, 1024), (1024, 2048), (4096, 5120)] };
        let merged = [(piece(0).start, piece(1).end), (piece(4).start, piece(4).end)];
        let runs = runs_of(t, &job, &merged);
        let got: Vec<_> = runs.iter().map(|r| (r.range.clone(), r.pieces.len())).collect();
        assert_eq!(got, vec![(piece(0), 1), (piece(1).start..piece(4).end, 2)]);
        // An insertion (an empty edit) right at a run's end: the run stops there, since
        // what follows moves in the output.
        let job = ChunkJob { target: 0, index: 0, parts: vec![(0, 1024)] };
        let at = piece(0).end;
        let runs = runs_of(t, &job, &[(piece(0).start, at), (at, at), (piece(4).start, piece(4).end)]);
        assert_eq!(runs[0].range, piece(0));
    }

    #[test]
    fn parts_are_written_in_order_past_the_iovec_limit() {
        // 3000 parts (more than the 1024 iovecs of one pwritev), some empty.
        let data: Vec<Vec<u8>> = (0..3000u32).map(|i| vec![(i % 251) as u8; (i % 7) as usize]).collect();
        let parts: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parts");
        let f = File::create(&path).unwrap();
        write_at(&f, b"head", 0).unwrap();
        write_parts_at(&f, &parts, 4).unwrap();
        let mut want = b"head".to_vec();
        want.extend(data.concat());
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }
}
