//! What a decryption into memory gives: the model file's bytes and its external data
//! files ([`DecryptedModel`]), each a [`DecryptedBytes`] that wipes its plaintext when
//! dropped, and how each buffer was made ([`Method`]).

use std::collections::BTreeMap;
use std::ops::{Deref, Range};
use std::sync::Arc;

use onnx_protect_format::Model;
use onnx_protect_fsio::PrivateMap;
use rayon::prelude::*;

use crate::error::{CoreError, Result};

/// Files and ranges up to this many bytes are hashed, patched and wiped without the thread
/// pool: waking it costs more than it saves.
pub(super) const SMALL: usize = 4 << 20;

/// Memory filled on demand that buffers are views of (`ondemand`'s region).
pub(super) trait FilledOnDemand: Send + Sync {
    /// The whole region.
    fn bytes(&self) -> &[u8];
    /// See [`DecryptedBytes::settle`].
    fn settle(&self) -> Result<()>;
    /// See [`DecryptedBytes::trim`].
    fn trim(&self);
}

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
    /// before and decrypted the first time it is read ([`InMemory::on_demand`](super::InMemory::on_demand)).
    OnDemand,
}

pub(super) enum Backing {
    Map(PrivateMap),
    /// A small file's private copy, patched in place (reported as [`Method::Mapped`]).
    Heap(Vec<u8>),
    Owned(Vec<u8>),
    OnDemand {
        region: Arc<dyn FilledOnDemand>,
        offset: usize,
    },
}

/// Decrypted bytes held in memory (a patched private map or an owned buffer).
///
/// Derefs to `&[u8]`. Plaintext spans are zeroed when it is dropped.
pub struct DecryptedBytes {
    pub(super) backing: Backing,
    pub(super) len: usize,
    /// Ranges that hold decrypted plaintext (wiped on drop, for maps).
    pub(super) plaintext: Vec<Range<usize>>,
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

    /// For memory filled on demand and settled without error: drops every filled chunk, so
    /// the memory held falls to what is read from now on; a chunk read again is read,
    /// verified and decrypted again (a chunk that no longer matches then ends the process, as
    /// any fill after `settle` does). For a reader that no longer needs what it read (a
    /// session that packed its own copy of the weights). A no-op for other buffers, and
    /// before a successful `settle`.
    pub fn trim(&self) {
        if let Backing::OnDemand { region, .. } = &self.backing {
            region.trim();
        }
    }

    /// Moves bytes within the buffer, each `(source, destination)` in the order given
    /// (a loader laying tensors out aligned once it no longer needs the bytes around
    /// them). Each destination must be at most its source and at or after the end of the
    /// previous destination, so no move overwrites bytes still to be moved; otherwise
    /// nothing is moved and [`CoreError::Internal`] is returned, as it is for memory filled
    /// on demand (unless there is nothing to move). Afterwards the whole buffer is wiped on
    /// drop.
    pub fn move_within(&mut self, moves: &[(Range<usize>, usize)]) -> Result<()> {
        if moves.is_empty() {
            return Ok(());
        }
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

    pub(super) fn owned(v: Vec<u8>) -> DecryptedBytes {
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
    pub(super) model: DecryptedBytes,
    pub(super) skeleton: Option<Skeleton>,
    pub(super) external: BTreeMap<String, DecryptedBytes>,
    pub(super) tensors: usize,
    pub(super) decrypted_bytes: u64,
    pub(super) format_version: u32,
    pub(super) tier: u32,
    pub(super) tiers: u32,
}

/// The model file's bytes without its large tensors, for a model file filled on demand
/// ([`InMemory::model_on_demand`](super::InMemory::model_on_demand)): what a loader reads
/// to build the graph it hands to a runtime, which then reads those tensors from
/// [`DecryptedModel::bytes`] (external data from memory, each tensor aligned there at
/// [`Skeleton::at`]), so that building the graph fills none of them.
#[derive(Debug)]
pub struct Skeleton {
    /// The model file's bytes, every byte verified and decrypted except those inside
    /// `holes`, which are zero.
    pub bytes: DecryptedBytes,
    /// The `raw_data` ranges of the initializers left out (sorted, disjoint): each must be
    /// read from the model's bytes, never from the skeleton.
    pub holes: Vec<Range<usize>>,
    /// Where the bytes of each of `holes` start in [`DecryptedModel::bytes`] (each a
    /// multiple of 64 bytes from its start, which is page-aligned).
    pub at: Vec<usize>,
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

    /// Takes the skeleton of a model file filled on demand (`None` for any other).
    pub fn take_skeleton(&mut self) -> Option<Skeleton> {
        self.skeleton.take()
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
    /// A mapped result or a model file filled on demand whose external files keep their
    /// locations has the layout of the protected model's content: `protected` is returned with its external files
    /// detached (`ExternalFile::detach`: nothing can read them
    /// from disk through the index).
    pub fn index(&self, mut protected: Model) -> Result<Model> {
        let same_files = protected.external_files.len() == self.external.len()
            && protected.external_files.iter().all(|f| self.external.contains_key(&f.location));
        if matches!(self.method(), Method::Mapped | Method::OnDemand) && same_files {
            protected.external_files.iter_mut().for_each(|f| f.detach());
            return Ok(protected);
        }
        drop(protected);
        self.index_anew()
    }

    /// The index of the decrypted bytes made anew ([`Model::from_vec_in_memory`], a copy of
    /// the model file's bytes), their external data resolved among the decrypted files.
    pub(super) fn index_anew(&self) -> Result<Model> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
