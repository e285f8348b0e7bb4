//! Positional reads and writes, and the file system calls that `std` does not wrap.
//!
//! Every function takes borrowed `File`s, so each descriptor is open for the whole of
//! each call; none of them keeps a descriptor or a pointer after it returns.

use std::fs::File;

/// Reads exactly `buf.len()` bytes of `f` at offset `off` (`pread`), without moving the
/// file's cursor. A file that ends first gives [`std::io::ErrorKind::UnexpectedEof`].
#[cfg(unix)]
pub fn read_exact_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, off)
}

/// Reads exactly `buf.len()` bytes of `f` at offset `off`. A file that ends first gives
/// [`std::io::ErrorKind::UnexpectedEof`].
#[cfg(windows)]
pub fn read_exact_at(f: &File, mut buf: &mut [u8], mut off: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = f.seek_read(buf, off)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        off += n as u64;
    }
    Ok(())
}

/// Writes all of `buf` to `f` at offset `off` (`pwrite`), without moving the file's
/// cursor; the file grows as needed.
#[cfg(unix)]
pub fn write_all_at(f: &File, buf: &[u8], off: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, off)
}

/// Writes all of `buf` to `f` at offset `off`; the file grows as needed.
#[cfg(windows)]
pub fn write_all_at(f: &File, mut buf: &[u8], mut off: u64) -> std::io::Result<()> {
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

/// Allocates the blocks of the first `len` bytes of `f` (`fallocate`, mode 0), which
/// then has at least that length: later writes there cannot fail for lack of space.
/// File systems (and systems) that cannot preallocate are left to allocate as they
/// write: `Ok` without doing anything. A length beyond `off_t` gives
/// [`std::io::ErrorKind::FileTooLarge`].
#[cfg(target_os = "linux")]
pub fn preallocate(f: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let Ok(n) = libc::off_t::try_from(len) else { return Err(std::io::ErrorKind::FileTooLarge.into()) };
    if n == 0 {
        return Ok(());
    }
    loop {
        // SAFETY: the descriptor belongs to `f`, which is borrowed (open) for the whole
        // call; no memory is passed.
        if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, n) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => return Ok(()),
            _ => return Err(e),
        }
    }
}

/// Allocates the blocks of the first `len` bytes of `f`: not available on this system,
/// so nothing is done (the file system allocates as it writes).
#[cfg(not(target_os = "linux"))]
pub fn preallocate(_f: &File, _len: u64) -> std::io::Result<()> {
    Ok(())
}

/// Starts writeback of the dirty pages of `f` without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that a later `fsync` finds little
/// left to do. Only a hint: it promises no durability, and an error is ignored (the
/// `fsync` that follows does the work). A no-op on non-Linux systems.
#[cfg(target_os = "linux")]
pub fn start_writeback(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor belongs to `f`, which is borrowed (open) for the whole
    // call; no memory is passed. The call only schedules writeback.
    let _ = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Starts writeback of the dirty pages of `f`: a no-op on this system.
#[cfg(not(target_os = "linux"))]
pub fn start_writeback(_f: &File) {}

/// Copies `len` bytes of `src` at offset `from` to `dst` at offset `to` inside the
/// kernel (`copy_file_range`), so they never pass through this process. Returns how
/// many bytes were copied before the kernel refused (0 where it refuses at once or
/// cannot do it at all: across some file systems, special files, old kernels); the
/// caller writes the rest itself. A source that ends before `from + len` gives
/// [`std::io::ErrorKind::UnexpectedEof`].
#[cfg(target_os = "linux")]
pub fn copy_range(src: &File, dst: &File, from: u64, to: u64, len: u64) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let (Ok(mut off_in), Ok(mut off_out)) = (libc::loff_t::try_from(from), libc::loff_t::try_from(to)) else {
        return Ok(0);
    };
    let mut left = len;
    while left > 0 {
        let want = left.min(1 << 30) as usize;
        // SAFETY: both descriptors belong to borrowed `File`s (open for the whole call);
        // the offsets are valid pointers to local variables, which the call advances; no
        // user memory is read or written.
        let n = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, want, 0) };
        if n < 0 {
            // EXDEV (across file systems on older kernels), ENOSYS, EOPNOTSUPP, EINVAL
            // (special files): not possible here; the caller writes the bytes itself.
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
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

/// Copies bytes inside the kernel: not available on this system, so none are copied
/// (`Ok(0)`); the caller writes them itself.
#[cfg(not(target_os = "linux"))]
pub fn copy_range(_src: &File, _dst: &File, _from: u64, _to: u64, _len: u64) -> std::io::Result<u64> {
    Ok(0)
}

/// Closes `file`, returning the error `close` reports, which dropping a `File` ignores
/// (network file systems may report a failed write only there). After `EINTR` the
/// descriptor is closed on Linux and the data handed over: that is `Ok`, with no retry.
/// On other systems the file is dropped and `Ok` returned.
#[cfg(target_os = "linux")]
pub fn close_checked(file: File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just taken out of the `File`, so this is its only owner and it is
    // closed exactly once.
    if unsafe { libc::close(fd) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::Interrupted {
        return Ok(());
    }
    Err(e)
}

/// Closes `file` by dropping it (this system reports no error on close here).
#[cfg(not(target_os = "linux"))]
pub fn close_checked(file: File) -> std::io::Result<()> {
    drop(file);
    Ok(())
}

/// Waits for and takes an exclusive advisory lock (`flock`) on `file`, held until every
/// descriptor of this open file is closed. Returns `Ok(false)` without a lock where the
/// file system or the system has no such locks (`ENOLCK`, `EOPNOTSUPP`, non-Unix):
/// callers that need mutual exclusion then rely on their own atomic rename alone.
#[cfg(unix)]
pub fn lock_exclusive(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: the descriptor belongs to `file`, borrowed (open) for the whole call;
        // no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOLCK | libc::EOPNOTSUPP) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// No advisory locks on this system: `Ok(false)`.
#[cfg(not(unix))]
pub fn lock_exclusive(_file: &File) -> std::io::Result<bool> {
    Ok(false)
}

/// The identity of an open file: its device, inode and length. Two opens of one path
/// that give different identities saw different files (the path was replaced, for
/// example by a rename, or the file changed length). Where the system has no inode
/// numbers, only the length is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
}

/// The [`FileId`] of an open file.
pub fn file_id(f: &File) -> std::io::Result<FileId> {
    let m = f.metadata()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(FileId { dev: m.dev(), ino: m.ino(), len: m.len() })
    }
    #[cfg(not(unix))]
    {
        Ok(FileId { dev: 0, ino: 0, len: m.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).unwrap()
    }

    #[test]
    fn positional_writes_and_reads_round_trip_and_a_short_file_is_an_eof() {
        let dir = tempfile::tempdir().unwrap();
        let f = rw(&dir.path().join("a"));
        write_all_at(&f, b"world", 6).unwrap();
        write_all_at(&f, b"hello ", 0).unwrap();
        let mut buf = [0u8; 11];
        read_exact_at(&f, &mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello world");
        let mut past = [0u8; 4];
        let e = read_exact_at(&f, &mut past, 9).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_preallocated_file_has_its_length_and_reads_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let f = rw(&dir.path().join("p"));
        preallocate(&f, 0).unwrap();
        preallocate(&f, 100_000).unwrap();
        // Where the system cannot preallocate, the caller sets the length itself.
        f.set_len(100_000).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 100_000);
        let mut buf = vec![1u8; 100_000];
        read_exact_at(&f, &mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        start_writeback(&f);
        close_checked(f).unwrap();
    }

    #[test]
    fn a_kernel_copy_copies_what_it_reports_and_refuses_a_short_source() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.path().join("src"), &bytes).unwrap();
        let src = File::open(dir.path().join("src")).unwrap();
        let dst = rw(&dir.path().join("dst"));
        let done = copy_range(&src, &dst, 1000, 50, 150_000).unwrap();
        assert!(done == 0 || done == 150_000, "{done}");
        let mut got = vec![0u8; done as usize];
        read_exact_at(&dst, &mut got, 50).unwrap();
        assert_eq!(got, bytes[1000..1000 + done as usize]);
        if done > 0 {
            // The kernel copies here: a range past the source's end is an error.
            let e = copy_range(&src, &dst, 150_000, 0, 100_000).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        }
    }

    #[test]
    fn a_replaced_file_has_another_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::write(&path, b"first").unwrap();
        let before = file_id(&File::open(&path).unwrap()).unwrap();
        assert_eq!(file_id(&File::open(&path).unwrap()).unwrap(), before);
        let other = dir.path().join("n");
        std::fs::write(&other, b"other").unwrap();
        let keep = File::open(&path).unwrap(); // the old inode stays in use
        std::fs::rename(&other, &path).unwrap();
        assert_ne!(file_id(&File::open(&path).unwrap()).unwrap(), before);
        assert_eq!(file_id(&keep).unwrap(), before);
    }
}
