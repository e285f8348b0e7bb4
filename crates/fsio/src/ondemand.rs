//! Memory filled on demand (Linux, `userfaultfd`): an anonymous region whose blocks a
//! handler thread fills the first time anything reads them, and may drop again while
//! a budget is exceeded.
//!
//! [`OnDemand::new`] maps `len` bytes of anonymous memory and registers them with a
//! `userfaultfd` object (`UFFD_USER_MODE_ONLY`, which needs no privilege on Linux ≥ 5.11).
//! A read of a page that is not there stops the reading thread; the handler thread
//! calls the [`Filler`] for the page's block (a fixed size, a multiple of the page size)
//! into a private buffer, installs the pages its bytes cover atomically (`UFFDIO_COPY`,
//! which wakes the reader; a page read past them is installed as zeros) and then fills a
//! few blocks beyond it ahead of the reader while no other fault waits. Until [`OnDemand::settle`] is called, the
//! oldest filled blocks are dropped (`MADV_DONTNEED`) whenever more than `budget` bytes
//! are filled; a block dropped and read again is filled again by the same call. After
//! `settle`, filled blocks stay.
//!
//! A [`Filler`] that fails ends the process (`abort`, after one line on standard error):
//! the reading thread is inside an arbitrary instruction and cannot be handed an error,
//! and handing it anything but the block's true bytes is not an option.
//!
//! What the region cannot do:
//! * a system call given a pointer into a block not yet filled fails with `EFAULT`
//!   (faults taken inside the kernel are not handled in user-mode-only mode): copy out of
//!   the region in user space;
//! * `fork`: a process about to fork first fills every block of every live region and
//!   stops dropping them (a `pthread_atfork` handler), so the child, whose copy of the
//!   region is plain memory, sees every byte; the child has no handler thread.
//!
//! Pages of the region are left out of core dumps (`MADV_DONTDUMP`) and zeroed when the
//! region is dropped.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;

/// Fills block `index` of the region: writes the block's first bytes into the buffer (one
/// block long, holding whatever the last call left) and returns how many it wrote, or says
/// why it cannot. Only the pages those bytes touch are installed (the rest of a page is
/// zeroed); a page of the block past them reads as zeros when something reads it.
pub type Filler = Box<dyn FnMut(usize, &mut [u8]) -> Result<usize, String> + Send>;

/// How many blocks past a fault the handler fills ahead of the reader (at most), while
/// no other fault waits (64 MiB of 4 MiB blocks: onnxruntime's prepacking of one 4096² float
/// weight reads that much, and was measured fastest with 16 or more).
const AHEAD: usize = 16;

/// The kernel's `userfaultfd` ABI (`include/uapi/linux/userfaultfd.h`), for the
/// architectures whose `ioctl` numbers use the generic encoding.
mod abi {
    pub const UFFD_API: u64 = 0xAA;
    pub const UFFD_USER_MODE_ONLY: libc::c_int = 1;
    pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
    pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
    /// Bits of `uffdio_register.ioctls`: `_UFFDIO_WAKE` and `_UFFDIO_COPY`.
    pub const IOCTL_WAKE: u64 = 1 << 2;
    pub const IOCTL_COPY: u64 = 1 << 3;

    const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
        (dir << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
    }
    const READ: u64 = 2;
    const READ_WRITE: u64 = 3;
    pub const UFFDIO_API: u64 = ioc(READ_WRITE, 0x3F, size_of::<Api>());
    pub const UFFDIO_REGISTER: u64 = ioc(READ_WRITE, 0x00, size_of::<Register>());
    pub const UFFDIO_WAKE: u64 = ioc(READ, 0x02, size_of::<Range>());
    pub const UFFDIO_COPY: u64 = ioc(READ_WRITE, 0x03, size_of::<Copy>());

    #[repr(C)]
    pub struct Api {
        pub api: u64,
        pub features: u64,
        pub ioctls: u64,
    }
    #[repr(C)]
    pub struct Range {
        pub start: u64,
        pub len: u64,
    }
    #[repr(C)]
    pub struct Register {
        pub range: Range,
        pub mode: u64,
        pub ioctls: u64,
    }
    #[repr(C)]
    pub struct Copy {
        pub dst: u64,
        pub src: u64,
        pub len: u64,
        pub mode: u64,
        pub copy: i64,
    }
    /// `struct uffd_msg` with the page-fault member of its union.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    pub struct Msg {
        pub event: u8,
        pub reserved1: u8,
        pub reserved2: u16,
        pub reserved3: u32,
        pub flags: u64,
        pub address: u64,
        pub ptid: u32,
        pub pad: u32,
    }
    const _: () = assert!(size_of::<Msg>() == 32);
}

/// Blocks filled and in what order, with the filler: every fill happens under this lock.
struct State {
    filler: Filler,
    scratch: Vec<u8>,
    /// Bytes installed at the start of each block (whole pages; 0: not filled).
    filled: Vec<usize>,
    order: VecDeque<usize>,
    resident: usize,
    /// The map is gone (the owner dropped it): nothing may be filled.
    gone: bool,
}

/// The region, shared by its owner, the handler thread and the fork handler.
struct Region {
    /// Address of the map (kept as an integer: the map outlives every user of it).
    base: usize,
    map_len: usize,
    block: usize,
    page: usize,
    budget: usize,
    settled: AtomicBool,
    uffd: OwnedFd,
    state: Mutex<State>,
}

/// A region of memory filled on demand; see the module documentation.
pub struct OnDemand {
    region: Arc<Region>,
    /// The process that made it (a forked child has no handler thread to stop).
    owner: u32,
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

fn last_error<T>(what: &str) -> io::Result<T> {
    let e = io::Error::last_os_error();
    Err(io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether regions filled on demand can be made here: a `userfaultfd` opens and
/// completes its handshake (checked once per process).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| open_uffd().is_ok())
}

impl OnDemand {
    /// A region of `len` bytes (rounded up to whole blocks) of `block` bytes each, filled
    /// by `filler`; at most `budget` bytes of filled blocks stay until [`Self::settle`].
    /// An error when the system has no usable `userfaultfd` (older kernels, a sandbox
    /// that forbids it) or `block` is not a multiple of the page size.
    pub fn new(len: usize, block: usize, budget: usize, filler: Filler) -> io::Result<OnDemand> {
        // SAFETY: sysconf with a valid name has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
        if page == 0 || block == 0 || block % page != 0 || len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "block size is not a multiple of the page size"));
        }
        let blocks = len.div_ceil(block);
        let map_len =
            blocks.checked_mul(block).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "region too large"))?;
        let uffd = open_uffd()?;
        let map = Map::new(map_len)?;
        let mut reg = abi::Register {
            range: abi::Range { start: map.addr as u64, len: map_len as u64 },
            mode: abi::UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: `reg` is a valid `uffdio_register` for the duration of the call, and the
        // range is the anonymous map just made, which nothing else uses.
        if unsafe { libc::ioctl(uffd.as_raw_fd(), abi::UFFDIO_REGISTER as _, &mut reg) } != 0 {
            return last_error("userfaultfd register");
        }
        if reg.ioctls & (abi::IOCTL_COPY | abi::IOCTL_WAKE) != abi::IOCTL_COPY | abi::IOCTL_WAKE {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "userfaultfd cannot copy into this region"));
        }
        // SAFETY: eventfd with valid flags has no preconditions; the descriptor is owned below.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return last_error("eventfd");
        }
        // SAFETY: `stop` is a new descriptor that nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let state = State {
            filler,
            scratch: vec![0; block],
            filled: vec![0; blocks],
            order: VecDeque::new(),
            resident: 0,
            gone: false,
        };
        let region = Arc::new(Region {
            base: map.into_addr(),
            map_len,
            block,
            page,
            budget: budget.max(block * 3),
            settled: AtomicBool::new(false),
            uffd,
            state: Mutex::new(state),
        });
        let (r, s) = (Arc::clone(&region), stop.as_raw_fd());
        let thread = std::thread::Builder::new().name("onnx-protect-fill".into()).spawn(move || r.serve(s));
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                region.unmap();
                return Err(e);
            }
        };
        register_for_fork(&region);
        Ok(OnDemand { region, owner: std::process::id(), stop, thread: Some(thread) })
    }

    /// The whole region (rounded up to whole blocks); reading it fills it.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the map lives as long as `self` and is only written by the handler
        // through `UFFDIO_COPY` into pages that were missing (never under a reader) or
        // dropped with `MADV_DONTNEED` (a reader then faults and gets the same bytes).
        unsafe { std::slice::from_raw_parts(self.region.base as *const u8, self.region.map_len) }
    }

    /// Stops dropping filled blocks: from now on a block is filled at most once more.
    pub fn settle(&self) {
        self.region.settled.store(true, Ordering::Release);
    }

    /// Bytes of filled blocks now in the region.
    pub fn resident(&self) -> usize {
        lock(&self.region.state).resident
    }
}

impl Drop for OnDemand {
    fn drop(&mut self) {
        if std::process::id() == self.owner {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to the eventfd this value owns.
            unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        // No handler runs now: wipe the filled blocks (the others are not there, and
        // touching them would wait for a handler forever), then unmap.
        let mut st = lock(&self.region.state);
        st.gone = true;
        for (b, &n) in st.filled.iter().enumerate() {
            if n > 0 {
                let p = (self.region.base + b * self.region.block) as *mut u8;
                // SAFETY: the installed pages of a block of the live map, which nothing else
                // reads now (`self` is being dropped, and the borrows of `bytes()` ended).
                unsafe { zero(p, n) };
            }
        }
        drop(st);
        self.region.unmap();
    }
}

/// Writes zeros that the compiler may not elide.
///
/// # Safety
/// `p..p + len` is writable memory that nothing else accesses meanwhile.
unsafe fn zero(p: *mut u8, len: usize) {
    // SAFETY: as the caller promises.
    unsafe { std::ptr::write_bytes(p, 0, len) };
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    // SAFETY: a volatile read of the first byte, written above, keeps the writes.
    unsafe { std::ptr::read_volatile(p) };
}

/// An anonymous map owned until [`Map::into_addr`].
struct Map {
    addr: usize,
    len: usize,
}

impl Map {
    fn new(len: usize) -> io::Result<Map> {
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
        let map = Map { addr: p as usize, len };
        // SAFETY: advice on the map just made; failures only lose the advice.
        unsafe {
            libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
            libc::madvise(p, len, libc::MADV_DONTDUMP);
        }
        Ok(map)
    }

    fn into_addr(self) -> usize {
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

fn open_uffd() -> io::Result<OwnedFd> {
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
    let mut api = abi::Api { api: abi::UFFD_API, features: 0, ioctls: 0 };
    // SAFETY: `api` is a valid `uffdio_api` for the duration of the call.
    if unsafe { libc::ioctl(uffd.as_raw_fd(), abi::UFFDIO_API as _, &mut api) } != 0 {
        return last_error("userfaultfd handshake");
    }
    Ok(uffd)
}

impl Region {
    fn unmap(&self) {
        // SAFETY: the map this region owns; every user is gone (the handler was joined,
        // or never started, or this is a forked child without one).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.map_len) };
    }

    /// Blocks filled ahead of a fault: [`AHEAD`], or fewer where the budget is smaller
    /// (two blocks stay for the reader).
    fn ahead(&self) -> usize {
        AHEAD.min((self.budget / self.block).saturating_sub(2)).max(1)
    }

    fn blocks(&self) -> usize {
        self.map_len / self.block
    }

    /// The handler thread: serves faults, fills ahead while none waits, until `stop`.
    fn serve(&self, stop: libc::c_int) {
        let mut ahead: Option<(usize, usize)> = None;
        let mut msgs = [abi::Msg::default(); 16];
        loop {
            let mut fds = [
                libc::pollfd { fd: self.uffd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: stop, events: libc::POLLIN, revents: 0 },
            ];
            let timeout = if ahead.is_some() { 0 } else { -1 };
            // SAFETY: `fds` is a valid array of two pollfd for the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
            if n < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                fatal(&format!("poll of the userfaultfd failed: {}", io::Error::last_os_error()));
            }
            if fds[1].revents != 0 {
                return;
            }
            if fds[0].revents & libc::POLLIN != 0 {
                // SAFETY: reads at most `size_of_val(&msgs)` bytes into `msgs`, plain data.
                let got = unsafe {
                    libc::read(self.uffd.as_raw_fd(), msgs.as_mut_ptr().cast(), std::mem::size_of_val(&msgs))
                };
                if got < 0 {
                    let e = io::Error::last_os_error();
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                        continue;
                    }
                    fatal(&format!("reading the userfaultfd failed: {e}"));
                }
                for m in &msgs[..got as usize / size_of::<abi::Msg>()] {
                    if m.event != abi::UFFD_EVENT_PAGEFAULT {
                        continue;
                    }
                    let Some(b) = (m.address as usize).checked_sub(self.base).map(|o| o / self.block) else {
                        continue;
                    };
                    if b < self.blocks() {
                        self.serve_block(b, Some(m.address as usize));
                        ahead = Some((b + 1, self.ahead()));
                    }
                }
            } else if let Some((b, left)) = ahead {
                if b < self.blocks() && left > 0 {
                    self.serve_block(b, None);
                    ahead = Some((b + 1, left - 1));
                } else {
                    ahead = None;
                }
            }
        }
    }

    /// Makes block `b` present; the reader of a fault at `fault` is woken even if it
    /// already was, and a page it reads past the block's bytes is installed as zeros.
    fn serve_block(&self, b: usize, fault: Option<usize>) {
        let mut st = lock(&self.state);
        let filled_now = st.filled[b] == 0;
        if filled_now {
            self.fill(&mut st, b);
        }
        if let Some(addr) = fault {
            let page_end = (addr - self.base - b * self.block) / self.page * self.page + self.page;
            if page_end > st.filled[b] {
                let zeros = vec![0u8; page_end - st.filled[b]];
                self.install(b, st.filled[b], &zeros);
                st.resident += zeros.len();
                st.filled[b] = page_end;
            } else if !filled_now {
                self.wake(b, st.filled[b]);
            }
        }
        if filled_now && !self.settled.load(Ordering::Acquire) {
            while st.resident > self.budget {
                let Some(old) = st.order.pop_front() else { break };
                if old == b {
                    st.order.push_back(old);
                    break;
                }
                self.drop_block(&mut st, old);
            }
        }
    }

    fn fill(&self, st: &mut State, b: usize) {
        let State { filler, scratch, .. } = st;
        let n = match filler(b, scratch) {
            Ok(n) => n.min(self.block),
            Err(e) => fatal(&e),
        };
        // Whole pages: the tail of the last one zeroed; at least one page (a reader waits).
        let end = n.div_ceil(self.page).max(1) * self.page;
        scratch[n..end].fill(0);
        self.install(b, 0, &scratch[..end]);
        st.filled[b] = end;
        st.order.push_back(b);
        st.resident += end;
    }

    /// Installs `data` (whole pages) at `offset` of block `b`, waking its readers.
    fn install(&self, b: usize, offset: usize, data: &[u8]) {
        let dst = self.base + b * self.block + offset;
        let mut done = 0usize;
        while done < data.len() {
            let mut c = abi::Copy {
                dst: (dst + done) as u64,
                src: data[done..].as_ptr() as u64,
                len: (data.len() - done) as u64,
                mode: 0,
                copy: 0,
            };
            // SAFETY: `c` is a valid `uffdio_copy`; the source is `data` (live, long enough),
            // the destination whole pages of a block of the registered region.
            let r = unsafe { libc::ioctl(self.uffd.as_raw_fd(), abi::UFFDIO_COPY as _, &mut c) };
            if r == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) if c.copy > 0 => done += c.copy as usize,
                Some(libc::EAGAIN) => {}
                // A page is there already (cannot happen under the lock, but a page that is
                // there holds the same bytes): wake its readers.
                Some(libc::EEXIST) => {
                    self.wake(b, offset + data.len());
                    break;
                }
                _ => fatal(&format!("installing a block of decrypted memory failed: {e}")),
            }
        }
    }

    fn drop_block(&self, st: &mut State, b: usize) {
        // SAFETY: advice on the installed pages of a block of the region; a reader of them
        // meanwhile faults and is served the same bytes again.
        unsafe { libc::madvise((self.base + b * self.block) as *mut libc::c_void, st.filled[b], libc::MADV_DONTNEED) };
        st.resident -= st.filled[b];
        st.filled[b] = 0;
    }

    /// Wakes the readers of the first `len` bytes of block `b`.
    fn wake(&self, b: usize, len: usize) {
        let mut r = abi::Range { start: (self.base + b * self.block) as u64, len: len as u64 };
        // SAFETY: `r` is a valid `uffdio_range` of the registered region.
        unsafe { libc::ioctl(self.uffd.as_raw_fd(), abi::UFFDIO_WAKE as _, &mut r) };
    }

    /// Fills every block and stops dropping them (before a fork).
    fn fill_all(&self) {
        self.settled.store(true, Ordering::Release);
        let mut st = lock(&self.state);
        for b in 0..self.blocks() {
            if st.filled[b] == 0 && !st.gone {
                self.fill(&mut st, b);
            }
        }
    }
}

fn fatal(what: &str) -> ! {
    eprintln!("onnx-protect: {what}; stopping the process rather than hand over unverified bytes");
    std::process::abort()
}

/// Live regions, for the fork handler.
static LIVE: Mutex<Vec<Weak<Region>>> = Mutex::new(Vec::new());

fn register_for_fork(region: &Arc<Region>) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a prepare handler that only fills regions (no async-signal
        // constraints apply before the fork).
        unsafe { libc::pthread_atfork(Some(before_fork), None, None) };
    });
    let mut live = LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(region));
}

extern "C" fn before_fork() {
    let live: Vec<Arc<Region>> = {
        let l = LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        l.iter().filter_map(Weak::upgrade).collect()
    };
    for r in live {
        r.fill_all();
    }
}

#[cfg(test)]
mod tests;
