//! The one pass that writes an output (a model file and its external data files) and
//! hashes every byte it reads or writes into the content leaves of format 2
//! (docs/format.md §9).
//!
//! Each file's output is its input with a [`Plan`] applied: unchanged stretches,
//! same-length *transforms* (the encrypted spans: the caller's `Transformer` gets each
//! piece with its tag and logical offset) and new bytes. The work is cut into *items* of
//! one leaf chunk each, on the side whose leaves are wanted:
//!
//! * `Hash::Output` (encryption, key rotation): item `j` makes output bytes
//!   `[jC, (j+1)C)` and hashes them in order, so the leaves are those of the file as
//!   written;
//! * `Hash::Input` (decryption, verification by the pass): item `j` reads input bytes
//!   `[jC, (j+1)C)`, hashes them as stored, and writes what they become; new bytes of a
//!   different length than what they replace are written by a last step of their own;
//! * `Hash::Both` (partial decryption, which changes no length): both at once;
//! * `Hash::None`: only writing.
//!
//! The rayon workers take the items in file order. Every output byte is written once
//! with a positional write, from the input map or from a worker's buffer; a span's bytes
//! reach the output only transformed, and the buffers (which may hold plaintext) are
//! wiped when dropped. Outputs are preallocated to their length first, so a full disk is
//! refused before anything is written; an output that must be durable has its writeback
//! started as the pass goes, so the final `fsync` is short. Input map pages are released
//! after each item, so the resident set stays the workers' buffers whatever the size of
//! the model.
//!
//! Around it, what every verb's bytes go through:
//!
//! * `action`: what a span becomes (a keystream, a permutation, new bytes);
//! * `permute`: the keyed permutation of the distribution-preserving mode;
//! * `content`: one pass over the covered files, described once;
//! * `decryption`: one decryption plan, and its file sink;
//! * `staged`: outputs that appear whole or not at all;
//! * [`journal`]: replacing a file's tail in place, safe against a crash;
//! * `crash`: crash points for tests (feature `test-hooks`).

pub(crate) mod action;
pub(crate) mod content;
mod crash;
pub(crate) mod decryption;
pub mod journal;
pub(crate) mod permute;
pub(crate) mod staged;

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use onnx_protect_crypto::{ContentLeaf, FileLeaves};
use onnx_protect_format::write::{Content, Plan};
use onnx_protect_format::Progress;
use onnx_protect_fsio::file::{preallocate, start_writeback, write_all_at};
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::error::{CoreError, Result};

/// Largest buffer a worker transforms at a time.
const WINDOW: usize = 512 << 10;
/// A durable output has its writeback started after every this many bytes.
const WRITEBACK_STEP: u64 = 64 << 20;

/// Which side's content leaves the pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    None,
    Input,
    Output,
    Both,
}

/// Applies the action of a transform edit to a piece of it.
pub(crate) trait Transformer: Sync {
    /// Transforms `buf`, the bytes of the edit tagged `tag` from logical offset `logical`.
    fn apply(&self, tag: usize, logical: u64, buf: &mut [u8]) -> Result<()>;
}

impl<F: Fn(usize, u64, &mut [u8]) -> Result<()> + Sync> Transformer for F {
    fn apply(&self, tag: usize, logical: u64, buf: &mut [u8]) -> Result<()> {
        self(tag, logical, buf)
    }
}

/// One file of the pass.
pub(crate) struct FileJob<'a> {
    /// The input's bytes (a map, or a buffer).
    pub src: &'a [u8],
    /// Releases pages of a mapped input once read (a no-op for a buffer).
    pub release: &'a (dyn Fn(Range<u64>) + Sync),
    /// The edits that turn the input into the output.
    pub plan: Plan,
    /// Covered file index of its leaves (docs/format.md §9); every byte of `src` is covered
    /// (the model file's content stops before its manifest entry).
    pub index: u32,
    /// The staged output file; `None` hashes without writing.
    pub out: Option<Out<'a>>,
}

/// A staged output file and the destination it becomes (which errors name).
#[derive(Clone, Copy)]
pub(crate) struct Out<'a> {
    pub file: &'a File,
    pub dest: &'a Path,
}

/// The leaves a pass computed, one per file in the order given.
#[derive(Debug, Default)]
pub(crate) struct PassLeaves {
    pub input: Vec<FileLeaves>,
    pub output: Vec<FileLeaves>,
}

/// A stretch of the output and where its bytes come from.
#[derive(Debug, Clone)]
struct Seg<'p> {
    src: Range<u64>,
    out: Range<u64>,
    kind: Kind<'p>,
}

#[derive(Debug, Clone, Copy)]
enum Kind<'p> {
    Copy,
    Transform { tag: usize, logical: u64 },
    Bytes(&'p [u8]),
}

/// The plan as consecutive segments covering the whole input and the whole output.
fn segments(plan: &Plan, src_len: u64) -> Vec<Seg<'_>> {
    fn push<'p>(segs: &mut Vec<Seg<'p>>, o: &mut u64, src: Range<u64>, out_len: u64, kind: Kind<'p>) {
        let out = *o..*o + out_len;
        *o += out_len;
        if src.start < src.end || out_len > 0 {
            segs.push(Seg { src, out, kind });
        }
    }
    let mut segs = Vec::new();
    let (mut s, mut o) = (0u64, 0u64);
    for (range, content) in plan.edits() {
        if s < range.start {
            push(&mut segs, &mut o, s..range.start, range.start - s, Kind::Copy);
        }
        match content {
            Content::Bytes(b) => push(&mut segs, &mut o, range.clone(), b.len() as u64, Kind::Bytes(b)),
            Content::Transform { tag, logical_start } => push(
                &mut segs,
                &mut o,
                range.clone(),
                range.end - range.start,
                Kind::Transform { tag: *tag, logical: *logical_start },
            ),
        }
        s = range.end;
    }
    if s < src_len {
        push(&mut segs, &mut o, s..src_len, src_len - s, Kind::Copy);
    }
    segs
}

/// The input and output leaves of one item (each when asked for).
type ItemLeaves = (Option<[u8; 32]>, Option<[u8; 32]>);

/// One leaf chunk of one file.
struct Item {
    file: usize,
    index: u64,
    range: Range<u64>,
}

/// Runs the pass over `files` with leaf chunks of `chunk` bytes. Outputs are
/// preallocated to `out_len[i]` bytes (at least what the plan writes; more leaves room
/// for a tail written afterwards). Returns the leaves `hash` asks for.
pub(crate) fn run(
    files: &[FileJob<'_>],
    xf: &dyn Transformer,
    hash: Hash,
    chunk: u64,
    out_len: &[u64],
    durable: bool,
    progress: &dyn Progress,
) -> Result<PassLeaves> {
    let chunk = chunk.max(4096);
    let segs: Vec<Vec<Seg>> = files.iter().map(|f| segments(&f.plan, f.src.len() as u64)).collect();
    for (i, f) in files.iter().enumerate() {
        if hash == Hash::Both && segs[i].iter().any(|s| s.src.end - s.src.start != s.out.end - s.out.start) {
            return Err(CoreError::Internal("a pass hashing both sides must not change lengths"));
        }
        if let Some(out) = f.out {
            let len = out_len.get(i).copied().unwrap_or(0).max(f.plan.output_len());
            preallocate(out.file, len).map_err(|e| write_err(out, e))?;
        }
    }
    let on_output = hash == Hash::Output;
    let mut items = Vec::new();
    for (fi, f) in files.iter().enumerate() {
        let total = if on_output { f.plan.output_len() } else { f.src.len() as u64 };
        let mut start = 0;
        let mut j = 0;
        while start < total {
            let end = (start + chunk).min(total);
            items.push(Item { file: fi, index: j, range: start..end });
            start = end;
            j += 1;
        }
    }
    let total: u64 = items.iter().map(|i| i.range.end - i.range.start).sum();
    progress.start("writing", total);
    let done = AtomicU64::new(0);
    let since_writeback: Vec<AtomicU64> = files.iter().map(|_| AtomicU64::new(0)).collect();
    let results: Vec<ItemLeaves> = items
        .par_iter()
        .map(|item| {
            let f = &files[item.file];
            let r = if on_output {
                output_item(f, &segs[item.file], item, xf)?
            } else {
                input_item(f, &segs[item.file], item, xf, hash)?
            };
            let n = item.range.end - item.range.start;
            progress.set(done.fetch_add(n, Ordering::Relaxed) + n);
            if durable && since_writeback[item.file].fetch_add(n, Ordering::Relaxed) + n >= WRITEBACK_STEP {
                since_writeback[item.file].store(0, Ordering::Relaxed);
                if let Some(out) = f.out {
                    start_writeback(out.file);
                }
            }
            Ok(r)
        })
        .collect::<Result<_>>()?;
    if !on_output {
        write_resized_bytes(files, &segs)?;
    }
    progress.finish();

    let mut leaves = PassLeaves::default();
    let mut at = 0;
    for (fi, f) in files.iter().enumerate() {
        let n = items[at..].iter().take_while(|i| i.file == fi).count();
        let these = &results[at..at + n];
        let covered_items = items[at..at + n].iter().zip(these);
        if matches!(hash, Hash::Input | Hash::Both) {
            let leaves_in: Vec<[u8; 32]> = covered_items.clone().filter_map(|(_, r)| r.0).collect();
            leaves.input.push(FileLeaves { len: f.src.len() as u64, leaves: leaves_in });
        }
        if matches!(hash, Hash::Output | Hash::Both) {
            let leaves_out: Vec<[u8; 32]> = covered_items.filter_map(|(_, r)| r.1).collect();
            let len = if hash == Hash::Both { f.src.len() as u64 } else { f.plan.output_len() };
            leaves.output.push(FileLeaves { len, leaves: leaves_out });
        }
        at += n;
    }
    Ok(leaves)
}

fn write_err(out: Out<'_>, e: std::io::Error) -> CoreError {
    CoreError::Write { path: out.dest.to_path_buf(), source: e }
}

/// Writes `data` at `offset` of the file's output, if it has one.
fn put(f: &FileJob<'_>, data: &[u8], offset: u64) -> Result<()> {
    match f.out {
        Some(out) => write_all_at(out.file, data, offset).map_err(|e| write_err(out, e)),
        None => Ok(()),
    }
}

fn src_slice<'a>(f: &FileJob<'a>, r: Range<u64>) -> Result<&'a [u8]> {
    f.src.get(r.start as usize..r.end as usize).ok_or(CoreError::Internal("a range outside the input"))
}

/// The segments of `segs` (sorted by both sides) that overlap `range` on the output side.
fn overlapping<'s, 'p>(segs: &'s [Seg<'p>], range: &Range<u64>, on_output: bool) -> &'s [Seg<'p>] {
    let side = |s: &Seg| if on_output { s.out.clone() } else { s.src.clone() };
    let first = segs.partition_point(|s| side(s).end <= range.start);
    let last = segs.partition_point(|s| side(s).start < range.end);
    if first < last {
        &segs[first..last]
    } else {
        &[]
    }
}

/// Output stretches at least this long that need no transform are written straight from
/// the input (or from new bytes), not through the window.
const DIRECT: usize = 256 << 10;

/// What an item writes, gathered into windows: consecutive output bytes are collected
/// in a buffer of [`WINDOW`] bytes (wiped when dropped: it may hold plaintext) and
/// written with one positional write, so rows of a few KiB do not cost a system call
/// each; the bytes are hashed, in output order, as they are written.
struct Sink<'f, 'a> {
    f: &'f FileJob<'a>,
    buf: Zeroizing<Vec<u8>>,
    len: usize,
    /// Output offset of `buf[0]`.
    start: u64,
    leaf: Option<ContentLeaf>,
}

impl<'f, 'a> Sink<'f, 'a> {
    fn new(f: &'f FileJob<'a>, capacity: usize, leaf: Option<ContentLeaf>) -> Self {
        Sink { f, buf: Zeroizing::new(vec![0u8; capacity.clamp(1, WINDOW)]), len: 0, start: 0, leaf }
    }

    /// Continues at output offset `at` (flushing first if that is not where the window ends).
    fn seek(&mut self, at: u64) -> Result<()> {
        if at != self.start + self.len as u64 {
            self.flush()?;
            self.start = at;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.len > 0 {
            let data = &self.buf[..self.len];
            if let Some(l) = &mut self.leaf {
                l.update(data);
            }
            put(self.f, data, self.start)?;
            self.start += self.len as u64;
            self.len = 0;
        }
        Ok(())
    }

    /// Bytes that are written as they are, at output offset `at`.
    fn bytes(&mut self, at: u64, mut data: &[u8]) -> Result<()> {
        self.seek(at)?;
        if data.len() >= DIRECT {
            self.flush()?;
            if let Some(l) = &mut self.leaf {
                l.update(data);
            }
            put(self.f, data, self.start)?;
            self.start += data.len() as u64;
            return Ok(());
        }
        while !data.is_empty() {
            let n = data.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            if self.len == self.buf.len() {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// `src`, transformed as edit `tag` from logical offset `logical`, at output offset `at`.
    fn transformed(
        &mut self,
        at: u64,
        mut src: &[u8],
        tag: usize,
        mut logical: u64,
        xf: &dyn Transformer,
    ) -> Result<()> {
        self.seek(at)?;
        while !src.is_empty() {
            let n = src.len().min(self.buf.len() - self.len);
            let window = &mut self.buf[self.len..self.len + n];
            window.copy_from_slice(&src[..n]);
            xf.apply(tag, logical, window)?;
            self.len += n;
            src = &src[n..];
            logical += n as u64;
            if self.len == self.buf.len() {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Option<[u8; 32]>> {
        self.flush()?;
        Ok(self.leaf.take().map(|l| l.finalize()))
    }
}

/// Makes output bytes `item.range` of one file and hashes them.
fn output_item(f: &FileJob<'_>, segs: &[Seg<'_>], item: &Item, xf: &dyn Transformer) -> Result<ItemLeaves> {
    let size = (item.range.end - item.range.start) as usize;
    let mut sink = Sink::new(f, size, Some(ContentLeaf::new(f.index, item.index)));
    for seg in overlapping(segs, &item.range, true) {
        let lo = seg.out.start.max(item.range.start);
        let hi = seg.out.end.min(item.range.end);
        let delta = lo - seg.out.start;
        match seg.kind {
            Kind::Copy => sink.bytes(lo, src_slice(f, seg.src.start + delta..seg.src.start + delta + (hi - lo))?)?,
            Kind::Bytes(b) => sink.bytes(lo, &b[delta as usize..(hi - seg.out.start) as usize])?,
            Kind::Transform { tag, logical } => {
                let src = src_slice(f, seg.src.start + delta..seg.src.start + delta + (hi - lo))?;
                sink.transformed(lo, src, tag, logical + delta, xf)?
            }
        }
    }
    let leaf = sink.finish()?;
    if let Some(src) = source_span(segs, &item.range) {
        (f.release)(src);
    }
    Ok((None, leaf))
}

/// Reads input bytes `item.range` of one file, hashes them as stored (and, for
/// [`Hash::Both`], as written) and writes what they become.
fn input_item(f: &FileJob<'_>, segs: &[Seg<'_>], item: &Item, xf: &dyn Transformer, hash: Hash) -> Result<ItemLeaves> {
    let mut in_leaf = (hash != Hash::None).then(|| ContentLeaf::new(f.index, item.index));
    let out_leaf = (hash == Hash::Both).then(|| ContentLeaf::new(f.index, item.index));
    if let Some(l) = &mut in_leaf {
        l.update(src_slice(f, item.range.clone())?);
    }
    let size = (item.range.end - item.range.start) as usize;
    let mut sink = Sink::new(f, size, out_leaf);
    for seg in overlapping(segs, &item.range, false) {
        let lo = seg.src.start.max(item.range.start);
        let hi = seg.src.end.min(item.range.end);
        let delta = lo - seg.src.start;
        match seg.kind {
            Kind::Copy => sink.bytes(seg.out.start + delta, src_slice(f, lo..hi)?)?,
            Kind::Bytes(b) => {
                if b.len() as u64 == seg.src.end - seg.src.start {
                    sink.bytes(seg.out.start + delta, &b[delta as usize..(hi - seg.src.start) as usize])?;
                }
            }
            Kind::Transform { tag, logical } => {
                sink.transformed(seg.out.start + delta, src_slice(f, lo..hi)?, tag, logical + delta, xf)?
            }
        }
    }
    let out = sink.finish()?;
    (f.release)(item.range.clone());
    Ok((in_leaf.map(|l| l.finalize()), out))
}

/// New bytes whose length differs from what they replace: written once, after the items
/// (their output offsets do not follow the input's chunks).
fn write_resized_bytes(files: &[FileJob<'_>], segs: &[Vec<Seg<'_>>]) -> Result<()> {
    for (f, segs) in files.iter().zip(segs) {
        for seg in segs {
            if let Kind::Bytes(b) = seg.kind {
                if b.len() as u64 != seg.src.end - seg.src.start && !b.is_empty() {
                    put(f, b, seg.out.start)?;
                }
            }
        }
    }
    Ok(())
}

/// The input range read for output range `range` (for releasing map pages).
fn source_span(segs: &[Seg<'_>], range: &Range<u64>) -> Option<Range<u64>> {
    let over = overlapping(segs, range, true);
    let first = over.first()?;
    let last = over.last()?;
    Some(first.src.start..last.src.end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protect_crypto::leaves_of;
    use onnx_protect_format::write::Edit;

    fn xor_tag(tag: usize, logical: u64, buf: &mut [u8]) -> Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= (tag as u64 * 31 + logical + i as u64) as u8 | 1;
        }
        Ok(())
    }

    fn reference(src: &[u8], plan: &Plan) -> Vec<u8> {
        let mut out = Vec::new();
        let mut t = |tag: usize, logical: u64, buf: &mut [u8]| {
            xor_tag(tag, logical, buf).map_err(|e| onnx_protect_format::FormatError::Invalid(e.to_string()))
        };
        plan.write(src, &mut out, &mut t).unwrap();
        out
    }

    fn edits() -> Vec<Edit> {
        let e = |range: Range<u64>, content| Edit { range, content, ancestors: Vec::new() };
        vec![
            e(100..5000, Content::Transform { tag: 0, logical_start: 0 }),
            e(70_000..200_000, Content::Transform { tag: 1, logical_start: 17 }),
            e(200_010..200_020, Content::Bytes(vec![9; 10])),
            e(250_000..250_004, Content::Bytes(vec![1, 2, 3, 4, 5, 6, 7])),
            e(260_000..260_100, Content::Bytes(Vec::new())),
        ]
    }

    fn run_one(hash: Hash, chunk: u64, edits: Vec<Edit>) -> (Vec<u8>, Vec<u8>, PassLeaves) {
        let src: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let plan = Plan::new(src.len() as u64, edits, Vec::new()).unwrap();
        let expect = reference(&src, &plan);
        let out = tempfile::tempfile().unwrap();
        let release = |_: Range<u64>| {};
        let dest = Out { file: &out, dest: Path::new("out") };
        let job = FileJob { src: &src, release: &release, plan, index: 2, out: Some(dest) };
        let leaves = run(&[job], &xor_tag, hash, chunk, &[0], false, &onnx_protect_format::NoProgress).unwrap();
        let mut got = Vec::new();
        use std::io::{Read, Seek};
        let mut out = out;
        out.seek(std::io::SeekFrom::Start(0)).unwrap();
        out.read_to_end(&mut got).unwrap();
        got.truncate(expect.len());
        assert_eq!(got, expect, "the pass writes what the reference writer writes");
        (expect, src, leaves)
    }

    #[test]
    fn output_leaves_are_those_of_the_written_file() {
        for chunk in [4096, 65_536, 1 << 20] {
            let (expect, _, leaves) = run_one(Hash::Output, chunk, edits());
            assert_eq!(leaves.output, vec![leaves_of(2, &expect, chunk)], "chunk {chunk}");
            assert!(leaves.input.is_empty());
        }
    }

    #[test]
    fn input_leaves_are_those_of_the_covered_input() {
        for chunk in [4096, 65_536, 1 << 20] {
            let (_, src, leaves) = run_one(Hash::Input, chunk, edits());
            assert_eq!(leaves.input, vec![leaves_of(2, &src, chunk)], "chunk {chunk}");
        }
    }

    #[test]
    fn both_sides_hash_when_no_length_changes() {
        let same: Vec<Edit> = edits().into_iter().take(3).collect();
        let (expect, src, leaves) = run_one(Hash::Both, 65_536, same);
        assert_eq!(leaves.input, vec![leaves_of(2, &src, 65_536)]);
        assert_eq!(leaves.output, vec![leaves_of(2, &expect, 65_536)]);
        let src: Vec<u8> = vec![0; 1000];
        let plan =
            Plan::new(1000, vec![Edit { range: 1..2, content: Content::Bytes(vec![]), ancestors: vec![] }], vec![])
                .unwrap();
        let out = tempfile::tempfile().unwrap();
        let release = |_: Range<u64>| {};
        let dest = Out { file: &out, dest: Path::new("out") };
        let job = FileJob { src: &src, release: &release, plan, index: 0, out: Some(dest) };
        assert!(run(&[job], &xor_tag, Hash::Both, 4096, &[0], false, &onnx_protect_format::NoProgress).is_err());
    }

    #[test]
    fn writing_only_matches_the_reference() {
        let (_, _, leaves) = run_one(Hash::None, 4096, edits());
        assert!(leaves.input.is_empty() && leaves.output.is_empty());
    }
}
