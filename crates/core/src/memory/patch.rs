//! The memory sink of a decryption ([`load`]): copies of the model file and its external
//! data files, hashed and patched (every encrypted span decrypted, every restored tensor
//! written), released only once the content digest matched.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::Path;

use onnx_protect_crypto::{content_digest, leaves_of, FileLeaves, Keystream, Mode};
use onnx_protect_format::write::{Content, Plan};
use onnx_protect_format::{DataType, FormatError, Model, TensorData};
use onnx_protect_fsio::file::read_exact_at;
use onnx_protect_fsio::PrivateMap;
use onnx_protect_proto::v2 as pb;
use rayon::prelude::*;

use super::decrypted::{Backing, DecryptedBytes, DecryptedModel, SMALL};
use crate::error::{BadManifest, CoreError, Result};
use crate::format2::envelope::entry_bytes;
use crate::format2::seal::Expected;
use crate::pass::action::{apply, edits_for, Action};
use crate::pass::content::stored_leaves;
use crate::pass::decryption::{Decryption, NewEntry};
use crate::target::Target;

/// Spans at least this long are decrypted on all cores.
const PARALLEL_SPAN: usize = 1 << 20;

/// Calls `f` for each of the sorted, disjoint `items` whose file range overlaps `data`, the
/// file's bytes from offset `start`: with the item, the offset of the overlap inside the
/// item's range, and the overlapping part of `data`.
fn for_overlaps<T>(
    items: &[T],
    range: impl Fn(&T) -> &Range<u64>,
    start: u64,
    data: &mut [u8],
    mut f: impl FnMut(&T, u64, &mut [u8]) -> Result<()>,
) -> Result<()> {
    let end = start + data.len() as u64;
    let first = items.partition_point(|p| range(p).end <= start);
    for p in items[first..].iter().take_while(|p| range(p).start < end) {
        let r = range(p);
        let (lo, hi) = (r.start.max(start), r.end.min(end));
        f(p, lo - r.start, &mut data[(lo - start) as usize..(hi - start) as usize])?;
    }
    Ok(())
}

/// The memory sink of a decryption: the model file (from `file`, the one it was read
/// from, when given) and its external data files with every action applied, released
/// only after the pending digest matched (computed in the same pass as the copy where
/// the decryption changes no length; else before it).
pub(super) fn load(d: Decryption<'_>, file: Option<File>) -> Result<DecryptedModel> {
    let model = d.model;
    let sources = d.actions.iter().map(SpanSource::of).collect::<Result<Vec<_>>>()?;
    let patcher = Patcher { model, targets: &d.targets, sources: &sources };
    let fused = match (&d.pending, &d.names) {
        (Some(expected), None) => patcher.fused(&d, expected)?,
        _ => None,
    };
    let (bytes, mut external) = match fused {
        Some(done) => done,
        None => {
            if let Some(expected) = &d.pending {
                expected.check(&stored_leaves(model, d.content_len(), d.chunk)?)?;
            }
            (patcher.model_image(&d, file.as_ref())?, patcher.external_patched()?)
        }
    };
    for (f, name) in model.external_files.iter().zip(d.names.as_deref().unwrap_or_default()) {
        if let Some(b) = external.remove(&f.location) {
            external.insert(name.clone(), b);
        }
    }
    let bytes = match d.new_entry {
        NewEntry::Restored(env) => with_partial_entry(model, env, d.chunk, bytes, &external)?,
        NewEntry::Remove | NewEntry::Bytes(_) => bytes,
    };
    let (tensors, decrypted_bytes, format_version, tier, tiers) =
        (d.tensors, d.decrypted_bytes, d.format_version, d.tier, d.tiers);
    Ok(DecryptedModel { model: bytes, skeleton: None, external, tensors, decrypted_bytes, format_version, tier, tiers })
}

pub(super) fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| io_error(path, e))
}

pub(super) fn io_error(path: &Path, e: std::io::Error) -> CoreError {
    CoreError::Format(FormatError::Io { path: path.to_path_buf(), source: e })
}

/// Maps `file` privately copy-on-write, out of core dumps; `None` if the map is not
/// the expected length (the file is not the one that was parsed).
fn map_copy(file: &File, expect_len: usize, path: &Path) -> Result<Option<PrivateMap>> {
    if expect_len == 0 {
        return Ok(None);
    }
    // The file must not be truncated while mapped (the contract of `PrivateMap`, as of
    // `Model::open`); every access is a bounds-checked slice, and the length is checked
    // against the length that was parsed.
    let map = PrivateMap::new(file).map_err(|e| io_error(path, e))?;
    if map.len() != expect_len {
        return Ok(None);
    }
    map.exclude_from_core_dumps();
    Ok(Some(map))
}

/// A private anonymous buffer of `len` bytes for a copy of a file that is then patched
/// (see [`PrivateMap::anonymous`]); left out of core dumps. `None` for an empty file.
fn anonymous(len: usize, path: &Path) -> Result<Option<PrivateMap>> {
    if len == 0 {
        return Ok(None);
    }
    let map = PrivateMap::anonymous(len).map_err(|e| io_error(path, e))?;
    map.exclude_from_core_dumps();
    Ok(Some(map))
}

/// Where [`Patcher::hash_and_patch`] reads a file's bytes.
enum Source<'a> {
    /// A model held in memory.
    Slice(&'a [u8]),
    /// An open file, by positional reads (`pread`): the bytes go straight into the
    /// decrypted buffer, and no map of the file adds to the resident set.
    File(&'a File, &'a Path),
    /// The buffer already holds the bytes.
    Filled,
}

impl Source<'_> {
    /// Fills `out` with the bytes at `start`.
    fn read(&self, out: &mut [u8], start: u64) -> Result<()> {
        match self {
            Source::Slice(s) => {
                let r = start as usize..(start as usize).saturating_add(out.len());
                out.copy_from_slice(s.get(r).ok_or_else(out_of_bounds)?);
                Ok(())
            }
            Source::File(f, path) => read_exact_at(f, out, start).map_err(|e| io_error(path, e)),
            Source::Filled => Ok(()),
        }
    }
}

/// One same-length patch of a buffer.
struct Patch<'a> {
    range: Range<u64>,
    what: PatchKind<'a>,
}

enum PatchKind<'a> {
    /// Decrypt with target `tag`'s keystream; `logical` is the tensor offset of the first byte.
    Decrypt { tag: usize, logical: u64 },
    /// Replace with these bytes (same length).
    Bytes(&'a [u8]),
}

/// What the encrypted spans of one target become in memory.
#[derive(Clone, Copy)]
pub(super) enum SpanSource<'a> {
    /// Left as they are (a tier the key does not reach, or one already restored).
    Keep,
    /// The stored ciphertext with this keystream applied.
    Decrypt(&'a Keystream),
    /// The tensor's whole element bytes, restored beforehand (the
    /// distribution-preserving mode, varint-stored tensors).
    Bytes(&'a [u8]),
}

/// A piece of a target's spans in an external data file: `range` of the file holds the
/// target's bytes from tensor offset `logical` (what they become: [`SpanSource`]).
#[derive(Debug, Clone)]
pub(super) struct Piece {
    pub(super) range: Range<u64>,
    pub(super) tag: usize,
    pub(super) logical: u64,
}

impl SpanSource<'_> {
    /// What the spans of a target with `action` become (refused for a re-encryption).
    pub(super) fn of(action: &Action) -> Result<SpanSource<'_>> {
        match action {
            Action::Xor(ks) => Ok(SpanSource::Decrypt(ks)),
            Action::Bytes(b) => Ok(SpanSource::Bytes(b)),
            Action::Skip => Ok(SpanSource::Keep),
            Action::Reencrypt(_) => Err(CoreError::Internal("re-encryption while decrypting")),
        }
    }
}

/// Applies the `pieces` inside `data`, the file's bytes from offset `start`: each
/// decrypted with its target's keystream, or replaced by its restored bytes; `of(tag)`
/// is what target `tag`'s spans become, its mode and its tensor's element type.
pub(super) fn restore<'s>(
    pieces: &[Piece],
    start: u64,
    data: &mut [u8],
    of: impl Fn(usize) -> Result<(SpanSource<'s>, Mode, DataType)>,
) -> Result<()> {
    let restore = |p: &Piece, off: u64, dst: &mut [u8]| {
        let (source, mode, dtype) = of(p.tag)?;
        let logical = p.logical + off;
        match source {
            SpanSource::Decrypt(ks) => apply(ks, mode, dtype, logical, dst, false),
            SpanSource::Bytes(whole) => {
                let at = logical as usize;
                dst.copy_from_slice(whole.get(at..at + dst.len()).ok_or_else(out_of_bounds)?);
                Ok(())
            }
            SpanSource::Keep => Ok(()),
        }
    };
    for_overlaps(pieces, |p| &p.range, start, data, restore)
}

/// The patches of an in-place plan of the model file.
fn plan_patches(plan: &Plan) -> Vec<Patch<'_>> {
    plan.edits()
        .map(|(r, c)| Patch {
            range: r.clone(),
            what: match c {
                Content::Transform { tag, logical_start } => PatchKind::Decrypt { tag: *tag, logical: *logical_start },
                Content::Bytes(b) => PatchKind::Bytes(b),
            },
        })
        .collect()
}

fn plaintext_ranges(patches: &[Patch<'_>]) -> Vec<Range<usize>> {
    patches.iter().map(|p| p.range.start as usize..p.range.end as usize).collect()
}

/// A patch outside the bytes it patches: the decryption was planned on another model (a
/// bug, not a fault of the file).
pub(super) fn out_of_bounds() -> CoreError {
    CoreError::Internal("a patch outside the bytes it patches")
}

/// A file whose length this system cannot address.
pub(super) fn too_large() -> CoreError {
    CoreError::Internal("a file longer than this system can address")
}

/// The targets of a decryption and what their spans become: applies patches to copies
/// of the files they come from.
pub(super) struct Patcher<'a> {
    pub(super) model: &'a Model,
    pub(super) targets: &'a [Target],
    pub(super) sources: &'a [SpanSource<'a>],
}

impl Patcher<'_> {
    /// Decrypts `piece`, a copy of `reference`'s bytes at the patch, with target `tag`'s
    /// keystream from tensor offset `logical`.
    fn decrypt(&self, tag: usize, logical: u64, piece: &mut [u8], parallel: bool) -> Result<()> {
        let SpanSource::Decrypt(ks) = self.sources[tag] else {
            return Err(CoreError::Internal("a decrypt patch for a target without a keystream"));
        };
        let target = &self.targets[tag];
        apply(ks, target.mode, self.model.tensors[target.tensor].data_type, logical, piece, parallel)
    }

    /// Applies the patches to `buf` in parallel: a decrypted range becomes the
    /// authenticated ciphertext of `reference` (the bytes the MAC was checked over)
    /// with the keystream of its target applied.
    fn patch(&self, buf: &mut [u8], reference: &[u8], patches: &[Patch<'_>]) -> Result<()> {
        // Split the buffer into disjoint mutable pieces, one per patch (patches are sorted and disjoint).
        let mut pieces: Vec<(&mut [u8], &Patch)> = Vec::with_capacity(patches.len());
        let mut rest: &mut [u8] = buf;
        let mut offset = 0u64;
        for p in patches {
            if p.range.start < offset || p.range.end < p.range.start {
                return Err(CoreError::Internal("patches that overlap or are out of order"));
            }
            let skip = (p.range.start - offset) as usize;
            let len = (p.range.end - p.range.start) as usize;
            if skip + len > rest.len() {
                return Err(out_of_bounds());
            }
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
            let (piece, tail) = tail.split_at_mut(len);
            pieces.push((piece, p));
            rest = tail;
            offset = p.range.end;
        }
        pieces.into_par_iter().try_for_each(|(piece, p)| -> Result<()> {
            match p.what {
                PatchKind::Bytes(b) => piece.copy_from_slice(b),
                PatchKind::Decrypt { tag, logical } => {
                    // The ciphertext comes from `reference`, the map that was hashed for the MAC,
                    // not from the private map. Writing first also means each page of the private
                    // map takes one copy-on-write fault, not a read fault and then a write fault.
                    let authentic =
                        reference.get(p.range.start as usize..p.range.end as usize).ok_or_else(out_of_bounds)?;
                    piece.copy_from_slice(authentic);
                    self.decrypt(tag, logical, piece, piece.len() >= PARALLEL_SPAN)?;
                }
            }
            Ok(())
        })
    }

    /// The model file's covered content with the decryption's actions applied and the
    /// manifest entry removed or replaced: a private copy-on-write map of `file` patched
    /// in place when no edit changes a length, else an owned copy.
    fn model_image(&self, d: &Decryption<'_>, file: Option<&File>) -> Result<DecryptedBytes> {
        let model = self.model;
        let content_len = d.content_len();
        let src = model.bytes();
        let edits = edits_for(model, self.targets, &d.actions, d.extra_edits()?)?;
        let plan = Plan::new(content_len, edits, Vec::new())?;
        if let (Some(file), true) = (file, plan.is_in_place()) {
            let path = model.path.as_deref().unwrap_or(Path::new("<model>"));
            if let Some(mut map) = map_copy(file, src.len(), path)? {
                let patches = plan_patches(&plan);
                self.patch(&mut map, src, &patches)?;
                let plaintext = plaintext_ranges(&patches);
                return Ok(DecryptedBytes { backing: Backing::Map(map), len: content_len as usize, plaintext });
            }
        }
        // The fallback: stream the plan into an owned buffer.
        let content = src.get(..content_len as usize).ok_or_else(out_of_bounds)?;
        let mut out = Vec::with_capacity(plan.output_len() as usize);
        let mut err = None;
        plan.write(content, &mut out, &mut |tag, logical, chunk| {
            let target = &self.targets[tag];
            let t = &model.tensors[target.tensor];
            d.actions[tag].apply_chunk(target, t.data_type, logical, chunk, chunk.len() >= PARALLEL_SPAN).map_err(|e| {
                err = Some(e);
                FormatError::Invalid("keystream failed".into())
            })
        })
        .map_err(|e| err.take().unwrap_or(CoreError::Format(e)))?;
        Ok(DecryptedBytes::owned(out))
    }

    /// Every external data file of the model, with the spans of each target restored:
    /// one private copy-on-write map (or an owned copy) per file.
    fn external_patched(&self) -> Result<BTreeMap<String, DecryptedBytes>> {
        let mut per_file = self.external_patches()?;
        let mut external = BTreeMap::new();
        for (fi, f) in self.model.external_files.iter().enumerate() {
            let reference = f.bytes()?;
            let patches = per_file.remove(&fi).unwrap_or_default();
            let handle = open(&f.path)?;
            let bytes = match map_copy(&handle, reference.len(), &f.path)? {
                Some(mut map) => {
                    self.patch(&mut map, reference, &patches)?;
                    let len = map.len();
                    DecryptedBytes { backing: Backing::Map(map), len, plaintext: plaintext_ranges(&patches) }
                }
                None => {
                    let mut v = reference.to_vec();
                    self.patch(&mut v, reference, &patches)?;
                    DecryptedBytes::owned(v)
                }
            };
            external.insert(f.location.clone(), bytes);
        }
        Ok(external)
    }

    /// The patches of each external data file (by index), sorted.
    fn external_patches(&self) -> Result<BTreeMap<usize, Vec<Patch<'_>>>> {
        let patch = |p: Piece| Patch {
            what: match self.sources[p.tag] {
                SpanSource::Bytes(whole) => {
                    let lo = p.logical as usize;
                    PatchKind::Bytes(&whole[lo..lo + (p.range.end - p.range.start) as usize])
                }
                _ => PatchKind::Decrypt { tag: p.tag, logical: p.logical },
            },
            range: p.range,
        };
        Ok(self
            .external_pieces()?
            .into_iter()
            .map(|(f, pieces)| (f, pieces.into_iter().map(patch).collect()))
            .collect())
    }

    /// What becomes of each external data file (by index): the pieces of the targets'
    /// spans in it that change, sorted, with the bytes of a restored tensor checked to
    /// cover them.
    pub(super) fn external_pieces(&self) -> Result<BTreeMap<usize, Vec<Piece>>> {
        self.pieces(|data| match data {
            TensorData::External { file, .. } => Some(*file),
            _ => None,
        })
    }

    /// The pieces of the targets' spans in the model file itself (`raw_data` and typed
    /// fields, which keep their length), sorted; `None` if a target stored otherwise
    /// (varint fields) changes.
    fn model_pieces(&self) -> Result<Option<Vec<Piece>>> {
        let varint = self.targets.iter().zip(self.sources).any(|(t, s)| {
            !matches!(s, SpanSource::Keep) && matches!(self.model.tensors[t.tensor].data, TensorData::Varint { .. })
        });
        if varint {
            return Ok(None);
        }
        let mut all =
            self.pieces(|data| matches!(data, TensorData::Raw { .. } | TensorData::Fixed { .. }).then_some(0))?;
        Ok(Some(all.remove(&0).unwrap_or_default()))
    }

    /// The pieces of the targets' spans that change, per file as `file_of` places each
    /// tensor's data (`None`: not one of the files), sorted.
    fn pieces(&self, file_of: impl Fn(&TensorData) -> Option<usize>) -> Result<BTreeMap<usize, Vec<Piece>>> {
        let mut per_file: BTreeMap<usize, Vec<Piece>> = BTreeMap::new();
        for (ti, target) in self.targets.iter().enumerate() {
            let t = &self.model.tensors[target.tensor];
            let Some(file) = file_of(&t.data) else { continue };
            for &(a, b) in &target.spans {
                for (range, logical) in t.file_pieces(a, b) {
                    match self.sources[ti] {
                        SpanSource::Keep => continue,
                        SpanSource::Decrypt(_) => {}
                        SpanSource::Bytes(whole) => {
                            let hi = logical as usize + (range.end - range.start) as usize;
                            if whole.len() < hi {
                                return Err(BadManifest::SpanOutOfBounds { tensor: t.name.clone() }.into());
                            }
                        }
                    }
                    per_file.entry(file).or_default().push(Piece { range, tag: ti, logical });
                }
            }
        }
        for pieces in per_file.values_mut() {
            pieces.sort_by_key(|p| p.range.start);
        }
        Ok(per_file)
    }

    /// Reads the first bytes of `source` into `buf` (as long), hashes the first `hashed`
    /// of them into the content leaves of covered file `index` (chunks of `chunk` bytes) and
    /// applies `patches` to `buf`, one chunk per worker: every byte is read once, and a
    /// decrypted range is written over the very bytes that were hashed (this process's
    /// own memory, which nothing else changes).
    fn hash_and_patch(
        &self,
        buf: &mut [u8],
        source: &Source<'_>,
        patches: &[Patch<'_>],
        index: u32,
        hashed: u64,
        chunk: u64,
    ) -> Result<FileLeaves> {
        let c = chunk.max(4096) as usize;
        let work = |(j, out): (usize, &mut [u8])| -> Result<Option<[u8; 32]>> {
            let start = (j * c) as u64;
            let end = start + out.len() as u64;
            source.read(out, start)?;
            let leaf = (start < hashed).then(|| {
                let mut leaf = onnx_protect_crypto::ContentLeaf::new(index, j as u64);
                leaf.update(&out[..(end.min(hashed) - start) as usize]);
                leaf.finalize()
            });
            for_overlaps(
                patches,
                |p| &p.range,
                start,
                out,
                |p, off, dst| {
                    match p.what {
                        PatchKind::Bytes(b) => dst.copy_from_slice(&b[off as usize..off as usize + dst.len()]),
                        PatchKind::Decrypt { tag, logical } => self.decrypt(tag, logical + off, dst, false)?,
                    }
                    Ok(())
                },
            )?;
            Ok(leaf)
        };
        // A small file is done on this thread: waking the pool costs more than it saves
        // (and its first use starts the pool's threads).
        let leaves = if buf.len() <= SMALL {
            buf.chunks_mut(c).enumerate().map(work).collect::<Result<Vec<_>>>()?
        } else {
            buf.par_chunks_mut(c).enumerate().map(work).collect::<Result<Vec<_>>>()?
        };
        Ok(FileLeaves { len: hashed, leaves: leaves.into_iter().flatten().collect() })
    }

    /// The model file of the one-read path: copied into a private anonymous buffer, hashed
    /// (its content leaves) and patched in one pass; `None` when the decryption changes a
    /// length or edits the manifest entry in place.
    pub(super) fn model_file_fused(&self, d: &Decryption<'_>) -> Result<Option<(DecryptedBytes, FileLeaves)>> {
        let model = self.model;
        let src = model.bytes();
        let content_len = d.content_len();
        let edits = edits_for(model, self.targets, &d.actions, d.extra_edits()?)?;
        let plan = Plan::new(content_len, edits, Vec::new())?;
        if !plan.is_in_place() || !d.entry_cut() {
            return Ok(None);
        }
        let path = model.path.as_deref().unwrap_or(Path::new("<model>"));
        let patches = plan_patches(&plan);
        let plaintext = plaintext_ranges(&patches);
        if src.len() <= SMALL {
            // A small file: copied from the bytes the parser read into the heap (one copy,
            // no zeroing first), which costs no map, no page fault and no unmap.
            let mut buf = src.to_vec();
            let leaves = self.hash_and_patch(&mut buf, &Source::Filled, &patches, 0, content_len, d.chunk);
            let bytes = DecryptedBytes { backing: Backing::Heap(buf), len: content_len as usize, plaintext };
            return Ok(Some((bytes, leaves?)));
        }
        let Some(mut map) = anonymous(src.len(), path)? else { return Ok(None) };
        let source = match model.source_file() {
            Some(file) => Source::File(file, path),
            None => Source::Slice(src),
        };
        let leaves = self.hash_and_patch(&mut map, &source, &patches, 0, content_len, d.chunk);
        let bytes = DecryptedBytes { backing: Backing::Map(map), len: content_len as usize, plaintext };
        Ok(Some((bytes, leaves?)))
    }

    /// The model file of a model whose large tensors are filled on demand: its content
    /// read by positional reads and hashed (its content leaves) in one parallel pass, and
    /// copied with the decryption applied into a private anonymous buffer except the bytes
    /// inside `holes` (sorted, disjoint ranges of the content: the tensors the region
    /// fills), which stay zero and never become resident. With the model file's pieces,
    /// for the region's filler. `None` when the decryption changes a length or edits the
    /// manifest entry in place, or the model was not read from a file.
    pub(super) fn model_skeleton(
        &self,
        d: &Decryption<'_>,
        holes: &[Range<u64>],
    ) -> Result<Option<(DecryptedBytes, FileLeaves, Vec<Piece>)>> {
        let model = self.model;
        let content_len = d.content_len();
        let plan = Plan::new(content_len, edits_for(model, self.targets, &d.actions, d.extra_edits()?)?, Vec::new())?;
        let (Some(file), true, Some(pieces)) =
            (model.source_file(), plan.is_in_place() && d.entry_cut(), self.model_pieces()?)
        else {
            return Ok(None);
        };
        let path = model.path.as_deref().unwrap_or(Path::new("<model>"));
        let len = usize::try_from(content_len).map_err(|_| too_large())?;
        if len == 0 {
            return Ok(None);
        }
        let mut map = PrivateMap::sparse(len).map_err(|e| io_error(path, e))?;
        map.exclude_from_core_dumps();
        let c = usize::try_from(d.chunk.max(4096)).map_err(|_| too_large())?;
        let work = |scratch: &mut Option<PrivateMap>, (j, out): (usize, &mut [u8])| -> Result<[u8; 32]> {
            let buf = match scratch {
                Some(b) => b,
                None => scratch.insert(PrivateMap::anonymous(c).map_err(|e| io_error(path, e))?),
            };
            let start = (j * c) as u64;
            let data = &mut buf[..out.len()];
            read_exact_at(file, data, start).map_err(|e| io_error(path, e))?;
            let mut leaf = onnx_protect_crypto::ContentLeaf::new(0, j as u64);
            leaf.update(data);
            for kept in outside(holes, start..start + out.len() as u64) {
                let r = (kept.start - start) as usize..(kept.end - start) as usize;
                out[r.clone()].copy_from_slice(&data[r.clone()]);
                restore(&pieces, kept.start, &mut out[r], |tag| {
                    let t = &self.targets[tag];
                    Ok((self.sources[tag], t.mode, self.model.tensors[t.tensor].data_type))
                })?;
            }
            Ok(leaf.finalize())
        };
        let leaves = map.par_chunks_mut(c).enumerate().map_init(|| None, work).collect::<Result<Vec<_>>>()?;
        let plaintext = pieces
            .iter()
            .flat_map(|p| outside(holes, p.range.clone()))
            .map(|r| r.start as usize..r.end as usize)
            .collect();
        let skeleton = DecryptedBytes { backing: Backing::Map(map), len, plaintext };
        Ok(Some((skeleton, FileLeaves { len: content_len, leaves }, pieces)))
    }

    /// The one-read path of a decryption whose digest is still to be checked and which
    /// changes no length: the model and each external file are copied into private
    /// anonymous buffers (huge pages where the system gives them), hashed and patched in
    /// one parallel pass, and released only if the digest is `expected` (else every
    /// patched range is wiped). `None` when the path does not apply.
    #[allow(clippy::type_complexity)] // the model's bytes and its external files'
    fn fused(
        &self,
        d: &Decryption<'_>,
        expected: &Expected,
    ) -> Result<Option<(DecryptedBytes, BTreeMap<String, DecryptedBytes>)>> {
        let model = self.model;
        let Some((model_bytes, first)) = self.model_file_fused(d)? else { return Ok(None) };
        let mut leaves = Vec::with_capacity(1 + model.external_files.len());
        leaves.push(first);
        let mut per_file = self.external_patches()?;
        let mut external = BTreeMap::new();
        for (fi, f) in model.external_files.iter().enumerate() {
            let file = f.file()?;
            let patches = per_file.remove(&fi).unwrap_or_default();
            let len = usize::try_from(f.size).map_err(|_| too_large())?;
            let Some(mut map) = anonymous(len, &f.path)? else { return Ok(None) };
            let l =
                self.hash_and_patch(&mut map, &Source::File(file, &f.path), &patches, fi as u32 + 1, f.size, d.chunk);
            let len = map.len();
            let plaintext = plaintext_ranges(&patches);
            external.insert(f.location.clone(), DecryptedBytes { backing: Backing::Map(map), len, plaintext });
            leaves.push(l?);
        }
        expected.check(&leaves)?;
        Ok(Some((model_bytes, external)))
    }
}

/// The parts of `range` outside the sorted, disjoint `holes`.
pub(super) fn outside(holes: &[Range<u64>], range: Range<u64>) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut at = range.start;
    let first = holes.partition_point(|h| h.end <= range.start);
    for h in holes[first..].iter().take_while(|h| h.start < range.end) {
        if h.start > at {
            out.push(at..h.start);
        }
        at = at.max(h.end);
    }
    if at < range.end {
        out.push(at..range.end);
    }
    out
}

/// A decryption up to a tier below the top stays a protected model (docs/format.md §11),
/// as `decrypt --tier` writes it: `content` (the model file's content with the tiers
/// decrypted) followed by the entry of `env` (which records the restored tiers) with the
/// digest of the new content as its stored digest (`external` holds its external data files).
fn with_partial_entry(
    model: &Model,
    mut env: pb::Envelope,
    chunk: u64,
    content: DecryptedBytes,
    external: &BTreeMap<String, DecryptedBytes>,
) -> Result<DecryptedBytes> {
    let mut files = vec![leaves_of(0, &content, chunk)];
    for (i, f) in model.external_files.iter().enumerate() {
        let bytes =
            external.get(&f.location).ok_or(CoreError::Internal("an external data file without its decrypted copy"))?;
        let index = u32::try_from(i + 1).map_err(|_| BadManifest::TooManyExternalFiles)?;
        files.push(leaves_of(index, bytes, chunk));
    }
    env.stored_digest = content_digest(&files).to_vec();
    let entry = entry_bytes(env);
    let mut out = Vec::with_capacity(content.len() + entry.len());
    out.extend_from_slice(&content);
    out.extend_from_slice(&entry);
    // `content` is dropped here, its decrypted spans wiped; `out` is wiped when dropped.
    Ok(DecryptedBytes::owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn outside_leaves_the_parts_of_a_range_between_the_holes() {
        let holes = [10..20, 30..40, 40..45, 60..70];
        assert_eq!(outside(&holes, 0..100), vec![0..10, 20..30, 45..60, 70..100]);
        assert_eq!(outside(&holes, 12..18), Vec::<Range<u64>>::new());
        assert_eq!(outside(&holes, 15..35), vec![20..30]);
        assert_eq!(outside(&holes, 45..60), vec![45..60]);
        assert_eq!(outside(&[], 3..9), vec![3..9]);
    }

    /// Patches that do not fit the buffer they patch come from a plan made for another
    /// model: a fault of this crate, reported as one, never as an invalid model.
    #[test]
    fn patches_out_of_bounds_or_overlapping_are_an_internal_fault() {
        let model = Model::from_vec(onnx_protect_format::testutil::tiny_model(), None).unwrap();
        let patcher = Patcher { model: &model, targets: &[], sources: &[] };
        let reference = [7u8; 16];
        let bytes = |range: Range<u64>| Patch { range, what: PatchKind::Bytes(&[1; 4]) };
        for (what, patches) in [
            ("past the end", vec![bytes(14..18)]),
            ("overlapping", vec![bytes(2..6), bytes(4..8)]),
            ("out of order", vec![bytes(8..12), bytes(0..4)]),
        ] {
            let mut buf = reference;
            let e = patcher.patch(&mut buf, &reference, &patches).unwrap_err();
            assert!(matches!(e, CoreError::Internal(_)) && e.kind() == ErrorKind::Internal, "{what}: {e}");
            assert_eq!(buf, reference, "{what}: nothing patched");
        }
        let mut buf = reference;
        patcher.patch(&mut buf, &reference, &[bytes(0..4), bytes(12..16)]).unwrap();
        assert_eq!(buf, [1, 1, 1, 1, 7, 7, 7, 7, 7, 7, 7, 7, 1, 1, 1, 1]);
    }
}
