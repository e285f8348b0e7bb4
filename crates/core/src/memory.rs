//! Decrypting a protected model into memory, without plaintext touching the disk.
//!
//! [`decrypt_in_memory`] returns a [`DecryptedModel`] that derefs to the original
//! model file's bytes, ready for a runtime that loads models from memory
//! (onnxruntime's session-from-bytes, `CreateSessionFromArray` in C, or tract).
//!
//! # Cost
//!
//! Format 2 with no tier restored in the file (every byte authenticated): the model file
//! and each external data file are read once (`pread`, chunk by chunk: no map of the file
//! adds to the resident set) into a private anonymous map (transparent huge pages where
//! the system gives them; a model file of at most 4 MiB is copied from the map the parser
//! read it through into the heap), where every byte is hashed and the encrypted spans are then
//! decrypted in place, in one parallel pass over content chunks; the bytes are
//! handed out only after the content digest, the MACs and any required signature match
//! (otherwise the decrypted spans are wiped first). The manifest entry is the file's last
//! top-level field, so the original model is the prefix of the buffer. A decryption that
//! changes a length (varint-stored tensors, external data files given back their
//! original names) checks the digest first and rebuilds the model in an owned buffer
//! ([`Method::Copied`]).
//!
//! Format 1 (read-only), and format 2 with tiers restored in the file: the key check and
//! the MACs (and, for format 2, the digest of the content as stored and in canonical
//! form) are verified first; then a model read from a file is mapped privately
//! copy-on-write (`MAP_PRIVATE`), so that only the pages the encrypted spans touch are
//! copied. A decryption below the top tier ends with its manifest entry rewritten, in an
//! owned buffer. A key whose tiers are all in clear in the file gets the file as it is.
//!
//! This is the memory sink of the one decryption plan a protected model's reader makes;
//! the other sink writes files ([`crate::protect::decrypt`]).
//!
//! [`decrypt_signed_on_demand`] (Linux) verifies the external data files in a pass that
//! only hashes them, then hands them over as memory filled chunk by chunk when first read
//! (each chunk read again and checked against its verified hash): what the onnxruntime
//! loaders use, so that weights the runtime copies into its own buffers do not stay.
//!
//! [`decrypt_tier_in_memory`] stops at a chosen tier, as `decrypt --tier` does. The
//! external data buffers are returned by `location` in [`DecryptedModel::external`],
//! which is what onnxruntime needs to take external initializers from memory.
//!
//! # Secrets in memory
//!
//! Decrypted pages are private anonymous memory. On Linux they are excluded from
//! core dumps (`MADV_DONTDUMP`), and the decrypted spans are overwritten with
//! zeros when the value is dropped (an owned buffer is zeroed whole). Like any
//! process memory they can still reach swap; lock the pages (or disable swap)
//! where that matters.
//!
//! The file must not be modified in place while the model is being decrypted or
//! while the result is alive (the usual contract of memory-mapped loaders).
//! Files replaced by a rename are detected, and every decrypted range of the
//! private map is written from the mapped bytes that the MAC was checked over
//! (then decrypted in place), not read back from the private map.
//!
//! # Example
//!
//! ```
//! use onnx_protect_core::keys::KeySource;
//! use onnx_protect_core::memory::{decrypt_in_memory, Method};
//! use onnx_protect_core::protect::{encrypt, EncryptOptions};
//! use onnx_protect_core::format2::recipients::EncryptTo;
//! use onnx_protect_crypto::MasterKey;
//! use onnx_protect_select::Policy;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let (plain, protected) = (dir.path().join("model.onnx"), dir.path().join("protected.onnx"));
//! # std::fs::write(&plain, onnx_protect_format::testutil::tiny_model())?;
//! let key = KeySource::Key(MasterKey::from_bytes([7; 32]));
//! let policy = Policy::default();
//! encrypt(&plain, &protected, &EncryptTo::key(key.clone()), &EncryptOptions::new(&policy))?;
//!
//! let model = decrypt_in_memory(&protected, &key)?;
//! assert_eq!(&model[..], &std::fs::read(&plain)?[..]); // byte-identical to the original
//! assert_eq!(model.method(), Method::Mapped); // patched in a private map, not copied
//! // Hand `&model[..]` to a runtime that loads models from memory.
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::{Deref, Range};
use std::path::Path;

use onnx_protect_crypto::{content_digest, leaves_of, FileLeaves, Keystream};
use onnx_protect_format::write::{Content, Plan};
use onnx_protect_format::{FormatError, Model, TensorData};
use onnx_protect_fsio::file::read_exact_at;
use onnx_protect_fsio::PrivateMap;
use onnx_protect_keys::SignerKey;
use onnx_protect_proto::v2 as pb;
use rayon::prelude::*;

use crate::error::{BadManifest, CoreError, Result};
use crate::format2::envelope::entry_bytes;
use crate::format2::seal::Expected;
use crate::keys::KeySource;
use crate::pass::action::{apply, edits_for, Action};
use crate::pass::content::stored_leaves;
use crate::pass::decryption::{Decryption, NewEntry};
use crate::protection::{open_protected, Protection};
use crate::target::Target;

mod ondemand;
pub use ondemand::decrypt_signed_on_demand;

/// Spans at least this long are decrypted on all cores.
const PARALLEL_SPAN: usize = 1 << 20;

/// How a buffer was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// A private copy patched in place: an anonymous map holding a copy of the file (a
    /// heap buffer for a file of at most 4 MiB) (format 2), or a copy-on-write map of it in
    /// which only the pages holding encrypted bytes were copied (format 1).
    Mapped,
    /// An owned buffer holding a full copy (the fallback).
    Copied,
    /// Memory filled on demand: each chunk is read, checked against the hash verified
    /// before and decrypted the first time it is read ([`decrypt_signed_on_demand`]).
    OnDemand,
}

enum Backing {
    Map(PrivateMap),
    /// A small file's private copy, patched in place (reported as [`Method::Mapped`]).
    Heap(Vec<u8>),
    Owned(Vec<u8>),
    OnDemand {
        region: std::sync::Arc<ondemand::Region>,
        offset: usize,
    },
}

/// Decrypted bytes held in memory (a patched private map or an owned buffer).
///
/// Derefs to `&[u8]`. Plaintext spans are zeroed when it is dropped.
pub struct DecryptedBytes {
    backing: Backing,
    len: usize,
    /// Ranges that hold decrypted plaintext (wiped on drop, for maps).
    plaintext: Vec<Range<usize>>,
}

impl DecryptedBytes {
    /// How the buffer was produced.
    pub fn method(&self) -> Method {
        match self.backing {
            Backing::Map(_) | Backing::Heap(_) => Method::Mapped,
            Backing::Owned(_) => Method::Copied,
            Backing::OnDemand { .. } => Method::OnDemand,
        }
    }

    /// For memory filled on demand: stop dropping filled chunks over the budget (each
    /// chunk is then filled at most once more) and verify every chunk not read so far. An
    /// error ([`CoreError::Modified`], or the file that could not be read) when a chunk did
    /// not match its hash: it was read as zeros, and whatever was built from these bytes
    /// must be thrown away. Every buffer of the same region gives the same answer. A no-op
    /// for other buffers.
    pub fn settle(&self) -> Result<()> {
        match &self.backing {
            Backing::OnDemand { region, .. } => region.settle(),
            _ => Ok(()),
        }
    }

    /// Moves bytes within the buffer, each `(source, destination)` in the order given
    /// (a loader laying tensors out aligned once it no longer needs the bytes around
    /// them). Each destination must be at most its source and at or after the end of the
    /// previous destination, so no move overwrites bytes still to be moved; otherwise
    /// nothing is moved and [`CoreError::Internal`] is returned, as it is for memory filled
    /// on demand. Afterwards the whole buffer is wiped on drop.
    pub fn move_within(&mut self, moves: &[(Range<usize>, usize)]) -> Result<()> {
        let mut end = 0usize;
        for (src, dest) in moves {
            let ok = src.start <= src.end && src.end <= self.len && *dest <= src.start && *dest >= end;
            if !ok {
                return Err(CoreError::Internal("a move within a decrypted buffer out of order or out of bounds"));
            }
            end = dest + src.len();
        }
        let buf: &mut [u8] = match &mut self.backing {
            Backing::Map(m) => &mut m[..self.len],
            Backing::Owned(v) | Backing::Heap(v) => &mut v[..self.len],
            Backing::OnDemand { .. } => {
                return Err(CoreError::Internal("bytes moved within memory filled on demand"));
            }
        };
        for (src, dest) in moves {
            buf.copy_within(src.clone(), *dest);
        }
        self.plaintext = std::iter::once(0..self.len).collect();
        Ok(())
    }

    /// Copies the bytes into a new `Vec` (for APIs that need owned bytes).
    pub fn to_vec(&self) -> Vec<u8> {
        self.deref().to_vec()
    }

    fn owned(v: Vec<u8>) -> DecryptedBytes {
        let len = v.len();
        DecryptedBytes { backing: Backing::Owned(v), len, plaintext: Vec::new() }
    }
}

impl Deref for DecryptedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.backing {
            Backing::Map(m) => &m[..self.len],
            Backing::Owned(v) | Backing::Heap(v) => &v[..self.len],
            Backing::OnDemand { region, offset } => &region.bytes()[*offset..*offset + self.len],
        }
    }
}

impl AsRef<[u8]> for DecryptedBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for DecryptedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptedBytes").field("len", &self.len).field("method", &self.method()).finish()
    }
}

impl Drop for DecryptedBytes {
    fn drop(&mut self) {
        match &mut self.backing {
            Backing::Map(m) => wipe(m, &self.plaintext),
            Backing::Owned(v) | Backing::Heap(v) => onnx_protect_fsio::wipe(v),
            // Wiped by the region when its last file is dropped.
            Backing::OnDemand { .. } => {}
        }
    }
}

/// Zeroes the `ranges` of `buf`: on the thread pool when they hold more than [`SMALL`]
/// bytes and are sorted, disjoint and inside `buf` (as the patches they come from are),
/// else on this thread, range by range.
fn wipe(buf: &mut [u8], ranges: &[Range<usize>]) {
    let total: usize = ranges.iter().map(|r| r.len()).sum();
    let ordered = ranges.windows(2).all(|w| w[0].end <= w[1].start)
        && ranges.iter().all(|r| r.start <= r.end && r.end <= buf.len());
    if total <= SMALL || !ordered {
        for r in ranges {
            if let Some(s) = buf.get_mut(r.clone()) {
                onnx_protect_fsio::wipe(s);
            }
        }
        return;
    }
    let mut pieces = Vec::with_capacity(ranges.len());
    let (mut rest, mut offset) = (buf, 0usize);
    for r in ranges {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(r.start - offset);
        let (piece, tail) = tail.split_at_mut(r.end - r.start);
        pieces.push(piece);
        (rest, offset) = (tail, r.end);
    }
    pieces.into_par_iter().for_each(|p| p.par_chunks_mut(1 << 20).for_each(onnx_protect_fsio::wipe));
}

/// A protected model decrypted into memory.
///
/// Derefs to the original model file's bytes. External data files, if the model
/// has any, are in [`DecryptedModel::external`], keyed by their `location`.
#[derive(Debug)]
pub struct DecryptedModel {
    model: DecryptedBytes,
    external: BTreeMap<String, DecryptedBytes>,
    tensors: usize,
    decrypted_bytes: u64,
    format_version: u32,
    tier: u32,
    tiers: u32,
}

impl DecryptedModel {
    /// The format version of the protected model.
    pub fn format_version(&self) -> u32 {
        self.format_version
    }

    /// [`FORMAT_1_WARNING`](crate::format1::FORMAT_1_WARNING) for a format-1 model: its
    /// clear bytes were not authenticated.
    pub fn warning(&self) -> Option<&'static str> {
        crate::format1::warning_for(self.format_version)
    }

    /// The original model file's bytes.
    pub fn bytes(&self) -> &DecryptedBytes {
        &self.model
    }

    /// How the model bytes were produced.
    pub fn method(&self) -> Method {
        self.model.method()
    }

    /// Every external data file of the model, decrypted, keyed by the `location`
    /// string written in the model (empty for a self-contained model).
    pub fn external(&self) -> &BTreeMap<String, DecryptedBytes> {
        &self.external
    }

    /// The index of the decrypted model: its offsets are those of
    /// [`DecryptedModel::bytes`], its external files those of
    /// [`DecryptedModel::external`]. `protected` is the index of the protected model this
    /// was decrypted from: returned as it is for a mapped result without external data
    /// (a decryption in place moves no byte); otherwise the decrypted bytes are indexed
    /// anew ([`Model::from_vec_in_memory`], a copy of the model file's bytes), their
    /// external data resolved among the decrypted files, never on disk, where a file of
    /// the original name may be missing, or another file.
    ///
    /// A mapped result whose external files keep their locations has the layout of the
    /// protected model's content: `protected` is returned with its external files
    /// detached (`ExternalFile::detach`: nothing can read them
    /// from disk through the index).
    pub fn index(&self, mut protected: Model) -> Result<Model> {
        let same_files = protected.external_files.len() == self.external.len()
            && protected.external_files.iter().all(|f| self.external.contains_key(&f.location));
        if self.method() == Method::Mapped && same_files {
            protected.external_files.iter_mut().for_each(|f| f.detach());
            return Ok(protected);
        }
        drop(protected);
        let sizes = |l: &str| self.external.get(l).map(|d| d.len() as u64);
        Ok(Model::from_vec_in_memory(self.model.to_vec(), &sizes)?)
    }

    /// Splits the result into the model bytes and the external files.
    pub fn into_parts(self) -> (DecryptedBytes, BTreeMap<String, DecryptedBytes>) {
        (self.model, self.external)
    }

    /// Number of encrypted tensors that were decrypted.
    pub fn tensors(&self) -> usize {
        self.tensors
    }

    /// Number of bytes that were decrypted.
    pub fn decrypted_bytes(&self) -> u64 {
        self.decrypted_bytes
    }

    /// The tier the result is decrypted to: [`DecryptedModel::tiers`] for a full
    /// decryption (1 for an untiered model).
    pub fn tier(&self) -> u32 {
        self.tier
    }

    /// The model's number of access tiers (1: untiered).
    pub fn tiers(&self) -> u32 {
        self.tiers
    }
}

impl Deref for DecryptedModel {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.model
    }
}

impl AsRef<[u8]> for DecryptedModel {
    fn as_ref(&self) -> &[u8] {
        &self.model
    }
}

/// Verifies and decrypts the protected model at `path` into memory.
///
/// The key check value and the MAC are verified before anything is decrypted, so
/// a wrong key gives [`CoreError::WrongKey`] and modified bytes
/// [`CoreError::Modified`], exactly as with [`crate::protect::decrypt`].
pub fn decrypt_in_memory(path: &Path, key: &KeySource) -> Result<DecryptedModel> {
    decrypt_signed_in_memory(path, key, None, &[])
}

/// [`decrypt_in_memory`] for a model that is already open, read from a file
/// (`Model::open`) or parsed from memory (`Model::from_vec`); see the module
/// documentation for how each format is copied.
pub fn decrypt_model_in_memory(model: &Model, key: &KeySource) -> Result<DecryptedModel> {
    let file = match &model.path {
        Some(p) => Some(open(p)?),
        None => None,
    };
    load(Protection::of(model)?.into_decryption(model, key, None, &[])?, file)
}

/// Decrypts a protected model that is already open into memory, for tiered models
/// up to tier `tier` (default: the key's own tier), as `decrypt --tier` does to a
/// file: below the top tier the model bytes are a valid model whose higher tiers stay
/// encrypted, with the manifest recording the restored tiers. A key whose tiers are all
/// in clear in the file already (and no `tier` asked for) gets the file as it is.
///
/// The model bytes are a copy unless the decryption changes no length and the model
/// was read from a file; external data files are private maps patched in place, as with
/// [`decrypt_in_memory`]. The key check value and every MAC the key allows are verified
/// before anything is decrypted.
pub fn decrypt_tier_in_memory(model: &Model, key: &KeySource, tier: Option<u32>) -> Result<DecryptedModel> {
    decrypt_model_signed_in_memory(model, key, tier, &[])
}

/// [`decrypt_tier_in_memory`] that also requires a valid signature of one of `signers`
/// (format 2; a format-1 model is refused when signers are given).
pub fn decrypt_model_signed_in_memory(
    model: &Model,
    key: &KeySource,
    tier: Option<u32>,
    signers: &[SignerKey],
) -> Result<DecryptedModel> {
    load(Protection::of(model)?.into_decryption(model, key, tier, signers)?, None)
}

/// What a runtime session is built from: the protected model at `path` decrypted as by
/// [`decrypt_signed_on_demand`] (with `on_demand`) or [`decrypt_signed_in_memory`], and the
/// index of the decrypted bytes ([`DecryptedModel::index`]), made from the one parse of the
/// protected model.
pub fn decrypt_for_session(
    path: &Path,
    key: &KeySource,
    tier: Option<u32>,
    signers: &[SignerKey],
    on_demand: bool,
) -> Result<(DecryptedModel, Model)> {
    let (file, model) = open_checked(path)?;
    let protection = Protection::of(&model)?;
    let locked = matches!(&protection, Protection::V2(p) if p.sealed.header.label_lock.is_some());
    let d = protection.into_decryption(&model, key, tier, signers)?;
    let decrypted = match ondemand::on_demand_if(on_demand, d)? {
        Ok(done) => done,
        Err(d) => load(d, Some(file))?,
    };
    // Below the top tier the label lock stays (format.md §15): a session would give the
    // scores in locked order, so it is refused rather than served.
    if locked && decrypted.tier() < decrypted.tiers() {
        return Err(CoreError::NotTopKey {
            key_tier: decrypted.tier(),
            tiers: decrypted.tiers(),
            operation: "running a model whose outputs are label-locked (below the top tier they come in locked order)",
            by_licence: false,
        });
    }
    let index = decrypted.index(model)?;
    Ok((decrypted, index))
}

/// [`decrypt_in_memory`] that also requires a valid signature of one of `signers`
/// (format 2), and stops at `tier` (default: the key's own).
pub fn decrypt_signed_in_memory(
    path: &Path,
    key: &KeySource,
    tier: Option<u32>,
    signers: &[SignerKey],
) -> Result<DecryptedModel> {
    decrypt_signed_in_memory_if(path, key, tier, signers, |_| Ok(()))
}

/// [`decrypt_signed_in_memory`] of a model whose protection `accept` accepts: it is called
/// once the manifest is read, before any key is tried (a loader that reads one format
/// version refuses the others there).
pub fn decrypt_signed_in_memory_if(
    path: &Path,
    key: &KeySource,
    tier: Option<u32>,
    signers: &[SignerKey],
    accept: impl FnOnce(&Protection) -> Result<()>,
) -> Result<DecryptedModel> {
    let (file, model) = open_checked(path)?;
    let protection = Protection::of(&model)?;
    accept(&protection)?;
    load(protection.into_decryption(&model, key, tier, signers)?, Some(file))
}

/// The protected model at `path`, parsed, and an open handle of the very file it was
/// parsed from (the one the parser mapped).
fn open_checked(path: &Path) -> Result<(File, Model)> {
    let model = open_protected(path, &onnx_protect_format::NoProgress)?;
    let file = match model.source_file() {
        Some(f) => f.try_clone().map_err(|e| io_error(path, e))?,
        None => open(path)?,
    };
    Ok((file, model))
}

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
pub(crate) fn load(d: Decryption<'_>, file: Option<File>) -> Result<DecryptedModel> {
    let model = d.model;
    let sources = sources_of(&d.actions)?;
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
    Ok(DecryptedModel { model: bytes, external, tensors, decrypted_bytes, format_version, tier, tiers })
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, e: std::io::Error) -> CoreError {
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
                out.copy_from_slice(s.get(r).ok_or_else(|| out_of_bounds(&(start..start + out.len() as u64)))?);
                Ok(())
            }
            Source::File(f, path) => read_exact_at(f, out, start).map_err(|e| io_error(path, e)),
            Source::Filled => Ok(()),
        }
    }
}

/// Files up to this many bytes are hashed and patched without the thread pool.
const SMALL: usize = 4 << 20;

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
enum SpanSource<'a> {
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
struct Piece {
    range: Range<u64>,
    tag: usize,
    logical: u64,
}

/// What each target's spans become, from its action.
fn sources_of(actions: &[Action]) -> Result<Vec<SpanSource<'_>>> {
    actions
        .iter()
        .map(|a| match a {
            Action::Xor(ks) => Ok(SpanSource::Decrypt(ks)),
            Action::Bytes(b) => Ok(SpanSource::Bytes(b)),
            Action::Skip => Ok(SpanSource::Keep),
            Action::Reencrypt(_) => Err(CoreError::Internal("re-encryption while decrypting")),
        })
        .collect()
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

fn out_of_bounds(range: &Range<u64>) -> CoreError {
    CoreError::Format(FormatError::Invalid(format!("patch {range:?} is out of bounds")))
}

/// The targets of a decryption and what their spans become: applies patches to copies
/// of the files they come from.
struct Patcher<'a> {
    model: &'a Model,
    targets: &'a [Target],
    sources: &'a [SpanSource<'a>],
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
                return Err(CoreError::Format(FormatError::Invalid("patches overlap".into())));
            }
            let skip = (p.range.start - offset) as usize;
            let len = (p.range.end - p.range.start) as usize;
            if skip + len > rest.len() {
                return Err(out_of_bounds(&p.range));
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
                    let authentic = reference
                        .get(p.range.start as usize..p.range.end as usize)
                        .ok_or_else(|| out_of_bounds(&p.range))?;
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
        let content = src.get(..content_len as usize).ok_or_else(|| out_of_bounds(&(0..content_len)))?;
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
    fn external_pieces(&self) -> Result<BTreeMap<usize, Vec<Piece>>> {
        let mut per_file: BTreeMap<usize, Vec<Piece>> = BTreeMap::new();
        for (ti, target) in self.targets.iter().enumerate() {
            let t = &self.model.tensors[target.tensor];
            let TensorData::External { file, .. } = &t.data else { continue };
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
                    per_file.entry(*file).or_default().push(Piece { range, tag: ti, logical });
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
    fn model_file_fused(&self, d: &Decryption<'_>) -> Result<Option<(DecryptedBytes, FileLeaves)>> {
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
            let len = usize::try_from(f.size).map_err(|_| out_of_bounds(&(0..f.size)))?;
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
    use onnx_protect_crypto::MasterKey;

    #[test]
    fn moves_within_a_buffer_are_made_in_order_and_refused_out_of_order() {
        let mut b = DecryptedBytes::owned((0u8..32).collect());
        b.move_within(&[(4..8, 1), (10..14, 5), (14..20, 14)]).unwrap();
        assert_eq!(&b[1..9], &[4, 5, 6, 7, 10, 11, 12, 13]);
        assert_eq!(&b[14..20], &[14, 15, 16, 17, 18, 19]);
        let before = b.to_vec();
        for bad in [
            vec![(4..8, 5)],             // up, not down
            vec![(4..8, 0), (9..12, 2)], // onto the previous destination
            vec![(30..40, 0)],           // past the end
        ] {
            assert!(matches!(b.move_within(&bad), Err(CoreError::Internal(_))), "{bad:?}");
            assert_eq!(b.to_vec(), before, "nothing moved for {bad:?}");
        }
    }
    use onnx_protect_select::Policy;

    #[test]
    fn wipe_zeroes_exactly_the_ranges_in_parallel_and_in_order() {
        let n = 3 * SMALL;
        let ranges = vec![0..10, 4096..SMALL + 1, SMALL + 1..2 * SMALL, n - 7..n];
        for given in [ranges.clone(), ranges.iter().rev().cloned().collect(), vec![5..20, 10..30, n..n + 1]] {
            let mut buf = vec![0xA5u8; n];
            wipe(&mut buf, &given);
            for (i, &b) in buf.iter().enumerate() {
                let inside = given.iter().any(|r| r.contains(&i));
                assert_eq!(b == 0, inside, "byte {i} with ranges {given:?}");
            }
        }
    }

    fn protect(dir: &Path, mode: &str) -> (std::path::PathBuf, std::path::PathBuf, KeySource) {
        let mut policy = Policy::default();
        policy.apply_override("mode", &format!("*={mode}")).unwrap();
        crate::protect::encrypt_tiny(dir, 3, &policy)
    }

    #[test]
    fn mapped_result_is_the_original_and_the_file_is_untouched() {
        for mode in ["ctr", "fp"] {
            let dir = tempfile::tempdir().unwrap();
            let (plain, protected, key) = protect(dir.path(), mode);
            let before = std::fs::read(&protected).unwrap();
            let m = decrypt_in_memory(&protected, &key).unwrap();
            assert_eq!(m.method(), Method::Mapped, "{mode}");
            assert_eq!(&m[..], &std::fs::read(&plain).unwrap()[..]);
            assert!(m.decrypted_bytes() > 0 && m.tensors() > 0);
            drop(m);
            assert_eq!(std::fs::read(&protected).unwrap(), before, "the file must never be written");
        }
    }

    #[test]
    fn a_model_parsed_from_memory_takes_the_one_pass_copy_too() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, protected, key) = protect(dir.path(), "ctr");
        let model = Model::from_vec(std::fs::read(&protected).unwrap(), None).unwrap();
        let m = decrypt_model_in_memory(&model, &key).unwrap();
        assert_eq!(m.method(), Method::Mapped);
        assert_eq!(&m[..], &std::fs::read(&plain).unwrap()[..]);
    }

    #[test]
    fn wrong_key_and_unprotected_models_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, protected, _) = protect(dir.path(), "fp");
        let wrong = KeySource::Key(MasterKey::from_bytes([4; 32]));
        assert!(matches!(decrypt_in_memory(&protected, &wrong), Err(CoreError::WrongKey)));
        assert!(matches!(decrypt_in_memory(&plain, &wrong), Err(CoreError::NotProtected)));
    }

    #[test]
    fn a_flipped_ciphertext_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, protected, key) = protect(dir.path(), "ctr");
        let model = Model::open(&protected).unwrap();
        let p = crate::format2::ProtectedV2::read(&model).unwrap();
        let t = &model.tensors[p.targets[0].tensor];
        let (range, _) = t.file_pieces(p.targets[0].spans[0].0, p.targets[0].spans[0].1)[0].clone();
        drop(model);
        let mut bytes = std::fs::read(&protected).unwrap();
        bytes[range.start as usize] ^= 1;
        std::fs::write(&protected, bytes).unwrap();
        let e = decrypt_in_memory(&protected, &key).unwrap_err();
        assert!(matches!(e, CoreError::Modified(crate::error::Modified::Content)), "{e}");
    }
}
