//! Decryption into memory filled on demand ([`decrypt_signed_on_demand`]).
//!
//! The model file is decrypted as by [`decrypt_signed_in_memory`]. Each external data file
//! is read once and only hashed (chunk by chunk, no buffer of its size), and the content
//! digest is checked before anything is handed over, as docs/format.md §12 step 6 requires.
//! The external files then become one region of memory filled on demand
//! ([`onnx_protect_fsio::ondemand`]): the first read of a chunk makes a handler thread read
//! it from the file again, check it against the chunk's hash from the verified pass (the
//! file may have changed since), decrypt it and install it. While a session is being
//! built, the chunks filled longest ago are dropped beyond a budget (a little more than
//! the largest external tensor), so weights that the runtime copied into buffers of its
//! own (onnxruntime's prepacked `MatMul` weights) stop counting; [`DecryptedBytes::settle`]
//! ends that, after which every chunk read stays. A chunk whose bytes changed on disk
//! ends the process (see the fsio module): nothing unverified is handed over.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use onnx_protect_crypto::{content_digest, ContentLeaf, FileLeaves};
use onnx_protect_format::{DataType, TensorData};
use onnx_protect_fsio::file::read_exact_at;
use onnx_protect_fsio::ondemand::{self, OnDemand};
use rayon::prelude::*;

use super::{
    decrypt_signed_in_memory, for_overlaps, io_error, load, open_checked, out_of_bounds, sources_of, Backing,
    DecryptedBytes, DecryptedModel, Patcher, Piece, SMALL,
};
use crate::action::{apply, Action};
use crate::decryption::{Decryption, NewEntry};
use crate::error::{CoreError, Modified, Result};
use crate::keys::KeySource;
use crate::protection::Protection;
use crate::target::Target;
use onnx_protect_keys::SignerKey;

/// A chunk is read, hashed and decrypted in slices this long (they stay in the core's
/// cache between the three).
const SLICE: usize = 256 << 10;

/// The budget is the largest external tensor and this many chunks more (the chunks it
/// starts and ends in, and room for filling ahead of the reader).
const BUDGET_SLACK: u64 = 6;

/// [`decrypt_signed_in_memory`] whose external data files are filled on demand (see
/// the module documentation), where this system has `userfaultfd` and the decryption
/// is a full one that changes no length (format 2, nothing restored in the file, no
/// external file renamed); otherwise exactly [`decrypt_signed_in_memory`]. The result's
/// external files report [`Method::OnDemand`](super::Method::OnDemand) when filled on
/// demand; call [`DecryptedBytes::settle`] on them once the runtime has built what it
/// keeps.
///
/// A system call handed a pointer into a chunk not yet read fails with `EFAULT`;
/// a process forked while the result lives first fills it completely.
pub fn decrypt_signed_on_demand(
    path: &Path,
    key: &KeySource,
    tier: Option<u32>,
    signers: &[SignerKey],
) -> Result<DecryptedModel> {
    if !ondemand::available() {
        return decrypt_signed_in_memory(path, key, tier, signers);
    }
    let (file, model) = open_checked(path)?;
    let d = Protection::of(&model)?.reader().decryption(&model, key, tier, signers)?;
    match on_demand(d)? {
        Ok(done) => Ok(done),
        Err(d) => load(d, Some(file)),
    }
}

/// The on-demand load of `d`, or `d` back when it does not apply or the region cannot be
/// made (memory, map limits).
fn on_demand(d: Decryption<'_>) -> Result<std::result::Result<DecryptedModel, Decryption<'_>>> {
    let model = d.model;
    let total: u64 = model.external_files.iter().map(|f| f.size).sum();
    let (Some(expected), None, NewEntry::Remove) = (d.pending, &d.names, &d.new_entry) else { return Ok(Err(d)) };
    if total == 0 {
        return Ok(Err(d));
    }
    let chunk = usize::try_from(d.chunk).map_err(|_| CoreError::Internal("chunk size"))?;

    // The model file, hashed and decrypted as by the one-read path.
    let sources = sources_of(&d.actions)?;
    let patcher = Patcher { model, targets: &d.targets, sources: &sources };
    let Some((model_bytes, first)) = patcher.model_file_fused(&d)? else { return Ok(Err(d)) };
    let mut leaves = vec![first];

    // The external files: hashed only, then checked with everything else.
    let mut pieces = patcher.external_pieces()?;
    let mut files = Vec::with_capacity(model.external_files.len());
    let mut block = 0usize;
    for (fi, f) in model.external_files.iter().enumerate() {
        let handle = f.file()?.try_clone().map_err(|e| io_error(&f.path, e))?;
        let l = hash_file(&handle, &f.path, f.size, fi as u32 + 1, chunk)?;
        let blocks = usize::try_from(f.size.div_ceil(d.chunk)).map_err(|_| out_of_bounds(&(0..f.size)))?;
        files.push(Fill {
            file: handle,
            path: f.path.clone(),
            size: f.size,
            first: block,
            index: fi as u32 + 1,
            leaves: l.leaves.clone(),
            pieces: pieces.remove(&fi).unwrap_or_default(),
        });
        leaves.push(l);
        block += blocks;
    }
    if content_digest(&leaves) != expected {
        return Err(Modified::Content.into());
    }

    // The budget: the largest external tensor (in whole chunks, either side), and slack.
    let largest = model
        .tensors
        .iter()
        .filter_map(|t| match &t.data {
            TensorData::External { range, .. } => Some(range.end - range.start),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let budget = usize::try_from((largest.div_ceil(d.chunk) + BUDGET_SLACK) * d.chunk).unwrap_or(usize::MAX);
    // The region first, then what fills it: `d` is still whole if the region cannot be made.
    // Nothing can read the region before it is handed out below, after the filler is in.
    let slot: Arc<Mutex<Option<Filler>>> = Arc::new(Mutex::new(None));
    let filling = Arc::clone(&slot);
    let made = OnDemand::new(
        block * chunk,
        chunk,
        budget,
        Box::new(move |b, out| match filling.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            Some(f) => f.fill(b, out),
            None => Err("a region read before its filler was set".into()),
        }),
    );
    let Ok(region) = made else { return Ok(Err(d)) };
    let dtypes = d.targets.iter().map(|t| model.tensors[t.tensor].data_type).collect();
    let Decryption { targets, actions, tensors, decrypted_bytes, format_version, tier, tiers, .. } = d;
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Filler { files, targets, actions, dtypes, chunk });
    let region = Arc::new(region);
    let external: BTreeMap<String, DecryptedBytes> = model
        .external_files
        .iter()
        .scan(0usize, |first, f| {
            let offset = *first * chunk;
            *first += f.size.div_ceil(d.chunk) as usize;
            let backing = Backing::OnDemand { region: Arc::clone(&region), offset };
            Some((f.location.clone(), DecryptedBytes { backing, len: f.size as usize, plaintext: Vec::new() }))
        })
        .collect();
    Ok(Ok(DecryptedModel { model: model_bytes, external, tensors, decrypted_bytes, format_version, tier, tiers }))
}

/// The leaves of covered file `index` (`size` bytes of `file`), read chunk by chunk.
fn hash_file(file: &File, path: &Path, size: u64, index: u32, chunk: usize) -> Result<FileLeaves> {
    let n = usize::try_from(size.div_ceil(chunk as u64)).map_err(|_| out_of_bounds(&(0..size)))?;
    let leaf = |buf: &mut Vec<u8>, j: usize| -> Result<[u8; 32]> {
        let start = (j * chunk) as u64;
        let len = (size - start).min(chunk as u64) as usize;
        read_exact_at(file, &mut buf[..len], start).map_err(|e| io_error(path, e))?;
        let mut l = ContentLeaf::new(index, j as u64);
        l.update(&buf[..len]);
        Ok(l.finalize())
    };
    let leaves = if size as usize <= SMALL {
        let mut buf = vec![0u8; chunk.min(size as usize)];
        (0..n).map(|j| leaf(&mut buf, j)).collect::<Result<Vec<_>>>()?
    } else {
        (0..n).into_par_iter().map_init(|| vec![0u8; chunk], |buf, j| leaf(buf, j)).collect::<Result<Vec<_>>>()?
    };
    Ok(FileLeaves { len: size, leaves })
}

/// One external file of the region.
struct Fill {
    file: File,
    path: PathBuf,
    size: u64,
    /// Its first block in the region.
    first: usize,
    /// Its number among the covered files (docs/format.md §9).
    index: u32,
    /// The hash of each of its chunks, from the verified pass.
    leaves: Vec<[u8; 32]>,
    pieces: Vec<Piece>,
}

/// What fills the region: the files, and what each target's pieces become.
struct Filler {
    files: Vec<Fill>,
    targets: Vec<Target>,
    actions: Vec<Action>,
    dtypes: Vec<DataType>,
    chunk: usize,
}

impl Filler {
    /// Block `b`: the chunk of its file, read again, checked against its verified hash,
    /// with the pieces in it decrypted (or replaced by restored bytes): its length. The
    /// chunk goes through in slices of [`SLICE`] bytes, each read, hashed
    /// and decrypted while it is in the core's cache; the block is installed only once the
    /// whole chunk matched its hash (until then the decrypted bytes are this buffer's only).
    fn fill(&mut self, b: usize, out: &mut [u8]) -> std::result::Result<usize, String> {
        let f = &self.files[self.files.partition_point(|f| f.first <= b).saturating_sub(1)];
        let j = b - f.first;
        let start = (j * self.chunk) as u64;
        let len = f.size.saturating_sub(start).min(self.chunk as u64) as usize;
        let at = |what: &str| format!("{}: bytes {start}..{} {what}", f.path.display(), start + len as u64);
        let mut leaf = ContentLeaf::new(f.index, j as u64);
        // On this thread only: a thread of the rayon pool may be the reader waiting for
        // this block, so waiting for the pool here could wait forever.
        for (k, slice) in out[..len].chunks_mut(SLICE).enumerate() {
            let lo = start + (k * SLICE) as u64;
            read_exact_at(&f.file, slice, lo).map_err(|e| at(&format!("could not be read again: {e}")))?;
            leaf.update(slice);
            self.restore(f, lo, slice).map_err(|e| at(&format!("could not be decrypted: {e}")))?;
        }
        if f.leaves.get(j) != Some(&leaf.finalize()) {
            return Err(at("changed on disk after the model was verified"));
        }
        Ok(len)
    }

    /// Decrypts (or replaces by restored bytes) the pieces of `f` inside `data`, the
    /// file's bytes from offset `start`.
    fn restore(&self, f: &Fill, start: u64, data: &mut [u8]) -> Result<()> {
        for_overlaps(
            &f.pieces,
            |p| &p.range,
            start,
            data,
            |p, off, dst| {
                let (t, logical) = (&self.targets[p.tag], p.logical + off);
                match &self.actions[p.tag] {
                    Action::Xor(ks) => apply(ks, t.mode, self.dtypes[p.tag], logical, dst, false)?,
                    Action::Bytes(whole) => dst.copy_from_slice(&whole[logical as usize..logical as usize + dst.len()]),
                    Action::Skip | Action::Reencrypt(_) => {}
                }
                Ok(())
            },
        )
    }
}
