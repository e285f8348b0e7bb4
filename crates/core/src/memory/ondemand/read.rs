//! Chunks of a region's files hashed outside the region: by the pass that checks the digest,
//! by `settle`, and by the tables' thread.

use std::fs::File;
use std::path::Path;

use onnx_protect_crypto::ContentLeaf;
use onnx_protect_fsio::file::read_exact_at;
use onnx_protect_fsio::PrivateMap;
use rayon::prelude::*;

use super::super::decrypted::SMALL;
use super::super::patch::io_error;
use crate::error::Result;

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
