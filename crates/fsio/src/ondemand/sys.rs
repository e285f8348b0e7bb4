//! The system calls of a region: its anonymous maps, the `userfaultfd` and its handshake,
//! and writes of zeros that stay.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::abi;

pub(super) fn last_error<T>(what: &str) -> io::Result<T> {
    let e = io::Error::last_os_error();
    Err(io::Error::new(e.kind(), format!("{what}: {e}")))
}

pub(super) fn page_size() -> usize {
    // SAFETY: sysconf with a valid name has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0)
}

/// Writes zeros that the compiler may not elide.
///
/// # Safety
/// `p..p + len` is writable memory that nothing else accesses meanwhile.
pub(super) unsafe fn zero(p: *mut u8, len: usize) {
    // SAFETY: as the caller promises.
    unsafe { std::ptr::write_bytes(p, 0, len) };
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    if len > 0 {
        // SAFETY: a volatile read of the first byte, written above, keeps the writes.
        unsafe { std::ptr::read_volatile(p) };
    }
}

/// An anonymous map owned until [`Map::into_addr`].
pub(super) struct Map {
    pub(super) addr: usize,
    len: usize,
}

impl Map {
    pub(super) fn new(len: usize) -> io::Result<Map> {
        // SAFETY: a new private anonymous map; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return last_error("mmap");
        }
        Ok(Map { addr: p as usize, len })
    }

    pub(super) fn advise(&self, advice: libc::c_int) {
        // SAFETY: advice on the map this value owns; a failure only loses the advice.
        unsafe { libc::madvise(self.addr as *mut libc::c_void, self.len, advice) };
    }

    /// Makes the `len` bytes from `offset` (whole pages of the map) present, as zeros.
    pub(super) fn populate(&self, offset: usize, len: usize) -> io::Result<()> {
        let start = self.addr + offset;
        // SAFETY: advice on whole pages of the map this value owns.
        if unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            // Out of memory, say: the region is not made (its caller decrypts whole instead).
            return Err(e);
        }
        // Kernels before 5.14 do not know the advice: a write to each page.
        for p in (start..start + len).step_by(page_size()) {
            // SAFETY: `p` is inside the map this value owns, readable and writable.
            unsafe { std::ptr::write_volatile(p as *mut u8, 0) };
        }
        Ok(())
    }

    pub(super) fn into_addr(self) -> usize {
        let a = self.addr;
        std::mem::forget(self);
        a
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: unmaps the map this value owns, which nothing references.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// Whether the page at `addr` (a page of a map of this process) is present (`mincore`;
/// anonymous memory here has no swap copy to count).
pub(super) fn present(addr: usize) -> bool {
    let page = page_size();
    let mut v = 0u8;
    // SAFETY: `mincore` of one page-aligned page writes one byte into `v`; it reads no memory.
    let r = unsafe { libc::mincore((addr / page * page) as *mut libc::c_void, page, &mut v) };
    r == 0 && v & 1 == 1
}

/// A `userfaultfd` after its handshake, and whether it can move pages (asked for with
/// `want_move` and granted).
pub(super) fn open_uffd(want_move: bool) -> io::Result<(OwnedFd, bool)> {
    if want_move {
        if let Ok(fd) = handshake(abi::UFFD_FEATURE_MOVE) {
            return Ok((fd, true));
        }
    }
    handshake(0).map(|fd| (fd, false))
}

fn handshake(features: u64) -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: the userfaultfd system call with flags only; the descriptor is owned below.
    let mut fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | abi::UFFD_USER_MODE_ONLY) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // Kernels before 5.11 know no user-mode-only flag (and need none).
        // SAFETY: as above.
        fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    }
    if fd < 0 {
        return last_error("userfaultfd");
    }
    // SAFETY: a new descriptor that nothing else owns.
    let uffd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    let mut api = abi::Api { api: abi::UFFD_API, features, ioctls: 0 };
    // SAFETY: `api` is a valid `uffdio_api` for the duration of the call.
    if unsafe { libc::ioctl(uffd.as_raw_fd(), abi::UFFDIO_API as _, &mut api) } != 0 {
        return last_error("userfaultfd handshake");
    }
    if api.features & features != features {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "userfaultfd feature not granted"));
    }
    Ok(uffd)
}
