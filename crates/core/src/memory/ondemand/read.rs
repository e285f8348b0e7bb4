//! Chunks of a region's files read outside the region: hashed (the pass that checks the
//! digest, `settle`, the tables' thread), and small pieces read, verified and decrypted
//! without filling the region ([`Region::read_ranges`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::Path;

use onnx_protect_crypto::ContentLeaf;
use onnx_protect_fsio::file::read_exact_at;
use onnx_protect_fsio::PrivateMap;
use rayon::prelude::*;

use super::super::decrypted::SMALL;
use super::super::patch::io_error;
use super::Region;
use crate::error::{CoreError, Modified, Result};

/// The leaves `which` of covered file `index` (`size` bytes of `file`, chunks of `chunk`
/// bytes), each read into a page-aligned buffer and hashed (on the thread pool for a large
/// file).
pub(super) fn hash_leaves(
    file: &File,
    path: &Path,
    size: u64,
    index: u32,
    chunk: u64,
    which: &[u64],
) -> Result<Vec<[u8; 32]>> {
    let leaf = |slot: &mut Option<PrivateMap>, j: u64| hash_leaf(file, path, size, index, chunk, j, slot);
    if size as usize <= SMALL || which.len() <= 1 {
        let mut buf = None;
        which.iter().map(|&j| leaf(&mut buf, j)).collect()
    } else {
        which.par_iter().map_init(|| None, |buf, &j| leaf(buf, j)).collect()
    }
}

/// The leaf of chunk `j` (as [`hash_leaves`]), read into the buffer in `slot` (made on
/// first use).
pub(super) fn hash_leaf(
    file: &File,
    path: &Path,
    size: u64,
    index: u32,
    chunk: u64,
    j: u64,
    slot: &mut Option<PrivateMap>,
) -> Result<[u8; 32]> {
    let buf = match slot {
        Some(b) => b,
        None => slot.insert(PrivateMap::anonymous(chunk.min(size) as usize).map_err(|e| io_error(path, e))?),
    };
    let start = j * chunk;
    let len = (size - start).min(chunk) as usize;
    read_exact_at(file, &mut buf[..len], start).map_err(|e| io_error(path, e))?;
    let mut l = ContentLeaf::new(index, j);
    l.update(&buf[..len]);
    Ok(l.finalize())
}

/// A part of a range in one chunk: `(range, from, to)`, in file offsets.
type Part = (usize, u64, u64);

/// A part read: `(range, from, its bytes)`.
type Read = (usize, u64, Vec<u8>);

impl Region {
    /// The bytes of `ranges` of the external file at `offset` in the region, each chunk
    /// holding any of them read, checked against its hash and decrypted where the ranges
    /// lie, on the thread pool; the region is not filled (a reader that needs a few small
    /// tensors first then reads the rest in order fills each block once). `None` where this
    /// does not apply: a region whose budget holds all of it (each block is filled once
    /// anyway), no such file, a model file whose tensors moved in the region, a range past
    /// the file's end.
    pub(super) fn read_ranges(&self, offset: usize, ranges: &[Range<usize>]) -> Option<Result<Vec<Vec<u8>>>> {
        if self.keeps_all {
            return None;
        }
        let f = self.files.iter().find(|f| f.moved.is_none() && f.first_block as u64 * self.block == offset as u64)?;
        if ranges.iter().any(|r| r.start > r.end || r.end as u64 > f.size) {
            return None;
        }
        let chunk = self.check.chunk;
        // Each chunk, and the parts of ranges in it.
        let mut by_chunk: BTreeMap<u64, Vec<Part>> = BTreeMap::new();
        for (k, r) in ranges.iter().enumerate().filter(|(_, r)| r.start < r.end) {
            let (start, end) = (r.start as u64, r.end as u64);
            for j in start / chunk..=(end - 1) / chunk {
                by_chunk.entry(j).or_default().push((k, start.max(j * chunk), end.min((j + 1) * chunk)));
            }
        }
        let parts: Vec<(u64, Vec<Part>)> = by_chunk.into_iter().collect();
        let read = |buf: &mut Option<PrivateMap>, (j, pieces): &(u64, Vec<Part>)| {
            let start = j * chunk;
            let len = (f.size - start).min(chunk) as usize;
            let b = match buf {
                Some(b) => b,
                None => {
                    buf.insert(PrivateMap::anonymous(chunk.min(f.size) as usize).map_err(|e| io_error(&f.path, e))?)
                }
            };
            let data = &mut b[..len];
            read_exact_at(&f.file, data, start).map_err(|e| io_error(&f.path, e))?;
            let mut leaf = ContentLeaf::new(f.index, *j);
            leaf.update(data);
            if f.leaves.get(*j as usize) != Some(&leaf.finalize()) {
                return Err(CoreError::from(Modified::Content));
            }
            pieces
                .iter()
                .map(|&(k, from, to)| {
                    let part = &mut data[(from - start) as usize..(to - start) as usize];
                    self.decrypt.restore(&f.pieces, from, part)?;
                    let out = part.to_vec();
                    // The decrypted bytes left in the buffer: wiped now.
                    onnx_protect_fsio::wipe(part);
                    Ok((k, from, out))
                })
                .collect::<Result<Vec<_>>>()
        };
        let done: Result<Vec<Vec<Read>>> = parts.par_iter().map_init(|| None, read).collect();
        let mut out: Vec<Vec<u8>> = ranges.iter().map(|r| vec![0; r.len()]).collect();
        match done {
            Ok(done) => {
                for (k, from, bytes) in done.into_iter().flatten() {
                    let at = (from - ranges[k].start as u64) as usize;
                    out[k][at..at + bytes.len()].copy_from_slice(&bytes);
                }
                Some(Ok(out))
            }
            Err(e) => Some(Err(e)),
        }
    }
}
