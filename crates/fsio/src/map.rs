//! Memory maps of files.
//!
//! # The contract of every map here
//!
//! A map shows the file as it is on the disk, for as long as the map lives. The file
//! **must not be truncated or written by anyone** (this process or another) while one
//! of its maps is alive: a truncation makes a later access to the lost pages raise
//! `SIGBUS`, and a write shows through a shared map (and through the pages of a
//! private map not yet copied), so bytes that were checked could change under the
//! reader. This cannot be enforced by a process; it is the contract of every loader
//! that maps model files. Callers keep it by never writing a file they read (outputs
//! are written to a new file and renamed into place) and document it to their users.
//! Every access is through bounds-checked slices.

use std::fs::File;
use std::ops::{Deref, DerefMut, Range};

/// Pages are released in whole pages of this size (the smallest page of the
/// platforms served; a larger page size only makes a release do less).
#[cfg(unix)]
const PAGE: u64 = 4096;

/// A shared, read-only map of a whole file.
pub struct ReadMap {
    map: memmap2::Mmap,
}

impl ReadMap {
    /// Maps `file` shared and read-only, under the contract of this module (the file
    /// is neither truncated nor written while the map lives).
    pub fn new(file: &File) -> std::io::Result<ReadMap> {
        // SAFETY: a read-only shared map; nothing is ever written through it. Soundness
        // of the slices it hands out rests on the module's contract: the file is not
        // truncated or modified while the map lives.
        let map = unsafe { memmap2::Mmap::map(file) }?;
        Ok(ReadMap { map })
    }

    /// Tells the kernel that this process is done with `range` of the map for now: the
    /// whole pages inside it stop counting toward the process's resident set. They stay
    /// in the page cache and fault back in, unchanged, if read again, so every slice
    /// into the map keeps seeing the same bytes. Pages only partly inside `range` are
    /// kept. A hint: an error only leaves the pages resident. A no-op on non-Unix systems.
    pub fn release(&self, range: Range<u64>) {
        #[cfg(unix)]
        {
            let start = range.start.div_ceil(PAGE).saturating_mul(PAGE);
            let end = (range.end.min(self.map.len() as u64) / PAGE) * PAGE;
            if start < end {
                // SAFETY: the map is shared and read-only. MADV_DONTNEED on such a map
                // only drops this process's page-table entries: the next read of an
                // address in the range faults the same page back in from the page cache
                // or the file, so existing `&[u8]` into the map keep seeing the same
                // bytes (under the module's contract: the file does not change). Nothing
                // is written through the map. `start..end` lies inside the map.
                let _ = unsafe {
                    self.map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start as usize,
                        (end - start) as usize,
                    )
                };
            }
        }
        #[cfg(not(unix))]
        let _ = range;
    }
}

impl std::fmt::Debug for ReadMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadMap").field("len", &self.map.len()).finish()
    }
}

impl Deref for ReadMap {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

/// A private copy-on-write map of a whole file: writes go to private copies of the
/// touched pages (anonymous memory) and never reach the file; untouched pages stay
/// shared with the page cache.
pub struct PrivateMap {
    map: memmap2::MmapMut,
}

impl PrivateMap {
    /// Maps `file` privately copy-on-write, under the contract of this module (the file
    /// is neither truncated nor written while the map lives: pages not yet copied would
    /// show the change).
    pub fn new(file: &File) -> std::io::Result<PrivateMap> {
        // SAFETY: a private (MAP_PRIVATE) map: writes through it change private copies
        // of the pages only, never the file. Soundness of the slices it hands out rests
        // on the module's contract: the file is not truncated or modified meanwhile.
        let map = unsafe { memmap2::MmapOptions::new().map_copy(file) }?;
        Ok(PrivateMap { map })
    }

    /// A private anonymous map of `len` zero bytes (no file behind it), for a buffer that
    /// is filled and patched by the caller. Transparent huge pages are asked for
    /// (`MADV_HUGEPAGE`, Linux; best effort), so filling a large buffer takes one page
    /// fault per 2 MiB instead of one per 4 KiB.
    pub fn anonymous(len: usize) -> std::io::Result<PrivateMap> {
        let map = memmap2::MmapMut::map_anon(len)?;
        #[cfg(target_os = "linux")]
        {
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        Ok(PrivateMap { map })
    }

    /// A private anonymous map of `len` zero bytes of which only a few pages are written:
    /// small pages only (`MADV_NOHUGEPAGE`, Linux; best effort), so that a page written
    /// makes 4 KiB resident, not 2 MiB.
    pub fn sparse(len: usize) -> std::io::Result<PrivateMap> {
        let map = memmap2::MmapMut::map_anon(len)?;
        #[cfg(target_os = "linux")]
        {
            let _ = map.advise(memmap2::Advice::NoHugePage);
        }
        Ok(PrivateMap { map })
    }

    /// Asks the kernel to leave the map out of core dumps (`MADV_DONTDUMP`), for pages
    /// that will hold secrets. Best effort: an error is ignored. Linux only; elsewhere a
    /// no-op.
    pub fn exclude_from_core_dumps(&self) {
        #[cfg(target_os = "linux")]
        {
            let _ = self.map.advise(memmap2::Advice::DontDump);
        }
    }
}

impl std::fmt::Debug for PrivateMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateMap").field("len", &self.map.len()).finish()
    }
}

impl Deref for PrivateMap {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl DerefMut for PrivateMap {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(dir: &std::path::Path, bytes: &[u8]) -> (std::path::PathBuf, File) {
        let path = dir.join("f.bin");
        std::fs::write(&path, bytes).unwrap();
        let f = File::open(&path).unwrap();
        (path, f)
    }

    #[test]
    fn a_read_map_shows_the_file_and_still_does_after_a_release() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..5 * 4096 + 123).map(|i| (i * 7 % 251) as u8).collect();
        let (_, f) = file_with(dir.path(), &bytes);
        let map = ReadMap::new(&f).unwrap();
        assert_eq!(&map[..], &bytes[..]);
        // Released ranges fault back in unchanged; ranges past the end are cut.
        map.release(0..u64::MAX);
        map.release(100..3 * 4096 + 7);
        assert_eq!(&map[..], &bytes[..]);
    }

    #[test]
    fn writes_to_a_private_map_never_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        const PAGE: usize = 4096;
        let bytes = vec![5u8; 3 * PAGE];
        let (path, f) = file_with(dir.path(), &bytes);
        let mut map = PrivateMap::new(&f).unwrap();
        map.exclude_from_core_dumps();
        map[PAGE..PAGE + 10].fill(9);
        assert_eq!(map[PAGE], 9);
        assert_eq!(map[0], 5);
        drop(map);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
}
