//! Memory filled on demand (Linux, `userfaultfd`): an anonymous region whose blocks a
//! handler thread fills the first time anything reads them, and may drop again while
//! a budget is exceeded.
//!
//! [`OnDemand::new`] maps `len` bytes of anonymous memory and registers them with a
//! `userfaultfd` object (`UFFD_USER_MODE_ONLY`, which needs no privilege on Linux ≥ 5.11).
//! A read of a page that is not there stops the reading thread; the handler thread calls
//! the [`Filler`] for the page's block (a fixed size, a multiple of the page size), which
//! writes the block's bytes into a page-aligned buffer of the handler's ([`Fill::buf`])
//! and hands them over a prefix at a time ([`Fill::install`]): the pages of a prefix
//! appear in the block atomically and wake their readers; a page read past the data is
//! installed as zeros.
//!
//! **Filling ahead.** Until [`OnDemand::settle`], the handler fills up to [`AHEAD`]
//! blocks past the last block it saw read, while no fault waits; it starts with the first
//! blocks before anything is read. A block filled ahead keeps its first page back (in the handler's memory) until
//! that page is read: that read, served at once, tells the handler where the reader is,
//! so it fills further ahead without the reader ever catching up with it. Faults that
//! arrive while a block is being filled are looked at between its installs: a kept-back
//! page is installed at once, other faults wait for the block.
//!
//! **Installs.** Where the kernel has `UFFDIO_MOVE` (Linux ≥ 6.8), the buffer's pages are
//! moved into the block (no copy, no new page), and the buffer gets its pages back from
//! blocks dropped over the budget (no page freed and allocated again); otherwise, or when
//! a move fails, the bytes are copied in (`UFFDIO_COPY`) and dropped blocks are freed
//! (`MADV_DONTNEED`). Until [`OnDemand::settle`] is called, filled blocks are dropped
//! whenever more than `budget` bytes are filled, the oldest first, but those of the groups
//! being read last ([`OnDemand::group_blocks`]); a fill ahead drops none of the last
//! [`AHEAD`] (or fewer) blocks filled ahead that nothing read yet, and waits instead. A
//! block dropped and read again is filled again by the same call. After `settle`, filled blocks stay. With [`Options::fill_idle`]
//! the handler also fills blocks nothing asked for yet while it is idle, within the budget.
//!
//! **Failures.** A [`Filler`] that fails before `settle` leaves its block reading as
//! zeros (past what it installed) and the failure is returned by `settle`: whatever was
//! built from the region meanwhile must be thrown away. A block filled ahead whose fill
//! fails once `settle` was called is dropped (no reader waits for it). After `settle` a
//! failure of a fill a reader waits for ends the
//! process (`abort`, after one line on standard error): the reading thread is inside an
//! arbitrary instruction and cannot be handed an error, and handing it anything but the
//! block's true bytes is not an option.
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
//! region is dropped, and so are the handler's buffer and the pages it keeps back.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Fills block `index` of the region: writes its bytes into [`Fill::buf`] and hands them
/// over with [`Fill::install`], or says why it cannot (see the module documentation for
/// what a failure does).
pub type Filler = Box<dyn FnMut(usize, &mut Fill<'_>) -> Result<(), String> + Send>;

mod abi;
mod fork;
mod handler;
mod options;
mod sys;
use fork::register_for_fork;
pub use options::{Options, AHEAD};
use sys::{last_error, open_uffd, page_size, present, zero, Map};

/// A page kept back from a block filled ahead (plaintext: zeroed when dropped).
struct Kept(Box<[u8]>);

impl Drop for Kept {
    fn drop(&mut self) {
        // SAFETY: the box's own bytes, which nothing else references.
        unsafe { zero(self.0.as_mut_ptr(), self.0.len()) };
    }
}

/// The handler's bookkeeping; every fill happens under the state lock.
struct Book {
    /// Bytes installed from the start of each block (whole pages; 0: not filled). A block
    /// whose first page is kept back counts it.
    filled: Vec<usize>,
    /// First pages kept back, by block.
    kept: HashMap<usize, Kept>,
    order: VecDeque<usize>,
    resident: usize,
    /// Which pages of the buffer block are present (moves leave holes behind them).
    scratch: Vec<bool>,
    /// Faults read while a block was being filled, served after it.
    pending: Vec<usize>,
    /// The block of the last kept-back page served while a block was being filled.
    hint: Option<usize>,
    /// The first failure of a fill before `settle` (or of a fill ahead that `settle` met).
    failed: Option<String>,
    /// Installs move pages (else they copy).
    moving: bool,
    /// Blocks kept within [`Book::cap`] once settled ([`OnDemand::cap_after_settle`]).
    capped: Vec<bool>,
    /// The capped blocks filled after `settle`, oldest first, and their bytes.
    capped_order: VecDeque<usize>,
    capped_resident: usize,
    cap: usize,
    /// Nothing is dropped any more (a fork is coming).
    keep_all: bool,
    /// The group of each block ([`OnDemand::group_blocks`]; empty: none).
    group: Vec<u32>,
    /// The groups of the blocks last seen read: the latest, and the one before it.
    read_groups: [Option<u32>; 2],
    /// Blocks before this one were looked at by the idle fill ([`Options::fill_idle`]).
    idle_from: usize,
    /// The map is gone (the owner dropped it): nothing may be filled.
    gone: bool,
}

impl Book {
    /// Notes a read of block `b` (its group, if it is not the latest already).
    fn saw_read(&mut self, b: usize) {
        let g = self.group.get(b).copied();
        if g.is_some() && self.read_groups[0] != g {
            self.read_groups = [g, self.read_groups[0]];
        }
    }
}

struct State {
    filler: Filler,
    book: Book,
}

/// The region, shared by its owner, the handler thread and the fork handler. The map is
/// `blocks` blocks handed out, then one block the handler fills (its buffer), all of it
/// registered with the `userfaultfd`.
struct Region {
    /// Address of the map (kept as an integer: the map outlives every user of it).
    base: usize,
    blocks: usize,
    block: usize,
    page: usize,
    budget: usize,
    fill_idle: bool,
    in_order_only: bool,
    settled: AtomicBool,
    uffd: OwnedFd,
    /// A readable map of one block of zeros (never written), the source of zero installs.
    zeros: usize,
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

/// What a [`Filler`] writes a block into and hands it over with.
pub struct Fill<'a> {
    region: &'a Region,
    book: &'a mut Book,
    block: usize,
    /// Bytes handed over so far, from the block's start (whole pages).
    done: usize,
    /// Keep the first page back (a block filled ahead).
    keep_first: bool,
    /// The data ended (an install that was not of whole pages).
    ended: bool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether regions filled on demand can be made here: a `userfaultfd` opens and
/// completes its handshake (checked once per process).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| open_uffd(false).is_ok())
}

impl OnDemand {
    /// A region of `len` bytes (rounded up to whole blocks) filled by `filler`; see
    /// [`Options`]. An error when the system has no usable `userfaultfd` (older kernels, a
    /// sandbox that forbids it) or the block is not a multiple of the page size.
    pub fn new(len: usize, opts: Options, filler: Filler) -> io::Result<OnDemand> {
        let page = page_size();
        let block = opts.block;
        if page == 0 || block == 0 || block % page != 0 || len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "block size is not a multiple of the page size"));
        }
        let blocks = len.div_ceil(block);
        let too_large = || io::Error::new(io::ErrorKind::InvalidInput, "region too large");
        let map_len = blocks.checked_add(1).and_then(|n| n.checked_mul(block)).ok_or_else(too_large)?;
        let (uffd, can_move) = open_uffd(opts.move_pages)?;
        let map = Map::new(map_len)?;
        map.advise(libc::MADV_NOHUGEPAGE);
        map.advise(libc::MADV_DONTDUMP);
        let zeros = Map::new(block)?;
        // The handler's buffer (the block after the last) is made present before the map is
        // registered, as ordinary pages, so that nothing touching it waits for the handler
        // (sooner than copying a block of zeros in through the `userfaultfd`).
        map.populate(blocks * block, block)?;
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
        let moving = can_move && reg.ioctls & abi::IOCTL_MOVE != 0;
        // SAFETY: eventfd with valid flags has no preconditions; the descriptor is owned below.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return last_error("eventfd");
        }
        // SAFETY: `stop` is a new descriptor that nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let book = Book {
            filled: vec![0; blocks],
            kept: HashMap::new(),
            order: VecDeque::new(),
            resident: 0,
            scratch: vec![false; block / page],
            pending: Vec::new(),
            hint: None,
            failed: None,
            moving,
            capped: vec![false; blocks],
            capped_order: VecDeque::new(),
            capped_resident: 0,
            cap: usize::MAX,
            keep_all: false,
            group: Vec::new(),
            read_groups: [None; 2],
            idle_from: 0,
            gone: false,
        };
        let region = Arc::new(Region {
            base: map.addr,
            blocks,
            block,
            page,
            budget: opts.budget.max(block * 3),
            fill_idle: opts.fill_idle,
            in_order_only: opts.in_order_only,
            settled: AtomicBool::new(false),
            uffd,
            zeros: zeros.addr,
            state: Mutex::new(State { filler, book }),
        });
        lock(&region.state).book.scratch.iter_mut().for_each(|p| *p = true);
        let (r, s) = (Arc::clone(&region), stop.as_raw_fd());
        let thread = std::thread::Builder::new().name("onnx-protect-fill".into()).spawn(move || r.serve(s))?;
        // From here the region owns both maps (unmapped when it is dropped).
        let (_, _) = (map.into_addr(), zeros.into_addr());
        register_for_fork(&region);
        Ok(OnDemand { region, owner: std::process::id(), stop, thread: Some(thread) })
    }

    /// The whole region (rounded up to whole blocks); reading it fills it.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the first `blocks` blocks of the map live as long as `self` and are only
        // written by the handler through `UFFDIO_COPY`/`UFFDIO_MOVE` into pages that were
        // missing (never under a reader) or dropped (a reader then faults and gets the same
        // bytes).
        unsafe { std::slice::from_raw_parts(self.region.base as *const u8, self.region.blocks * self.region.block) }
    }

    /// Stops dropping filled blocks (from now on a block is filled at most once more; the
    /// blocks filled ahead that nothing read are dropped now) and returns the first failure
    /// of a fill so far, if any: the bytes read from the region until now may then be zeros
    /// where the failed block's data should be.
    pub fn settle(&self) -> Result<(), String> {
        self.region.settled.store(true, Ordering::Release);
        let mut st = lock(&self.region.state);
        // Blocks filled ahead whose kept-back first page was never read were not needed:
        // they go (a later read fills them again).
        let unread: Vec<usize> = st.book.kept.keys().copied().collect();
        for &b in &unread {
            self.region.drop_block(&mut st.book, b);
        }
        st.book.order.retain(|b| !unread.contains(b));
        match &st.book.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Drops every filled block (after [`settle`](Self::settle): a block read again is
    /// filled again, with the same bytes, and a fill that fails then ends the process, as
    /// any fill after `settle` does). For a reader that has taken what it needs from the
    /// region (a session that packed its own copy of the weights): the memory held falls to
    /// what is read from now on.
    pub fn trim(&self) {
        let mut st = lock(&self.region.state);
        let book = &mut st.book;
        let mut filled: Vec<usize> = book.order.drain(..).collect();
        filled.extend(book.capped_order.drain(..));
        book.capped_resident = 0;
        for b in filled {
            self.region.drop_block(&mut st.book, b);
        }
    }

    /// After [`settle`](Self::settle), keeps the blocks `blocks` (indexes; those out of
    /// range are ignored) filled after it within `cap` bytes: the oldest of them is dropped
    /// whenever a fill goes over (a block read again is filled again, as after
    /// [`trim`](Self::trim)). For blocks read a little at a time, never whole (the rows of
    /// a table gathered from), which would otherwise stay until every block of them was read.
    pub fn cap_after_settle(&self, blocks: impl IntoIterator<Item = usize>, cap: usize) {
        let mut st = lock(&self.region.state);
        let book = &mut st.book;
        for b in blocks {
            if let Some(c) = book.capped.get_mut(b) {
                *c = true;
            }
        }
        book.cap = cap.max(self.region.block);
    }

    /// Gives each block a group (`groups[b]`; the tensor it holds, say): until
    /// [`settle`](Self::settle), a block of the group being read, or of the block being
    /// filled, is dropped only when no block of another group is left to drop, and a block
    /// is not filled ahead at such a cost. A reader that reads one tensor several times in a
    /// row (onnxruntime's prepacking) then finds it filled each time while the tensor fits in
    /// the budget, where dropping the oldest block first would drop each block just before
    /// it is read again.
    pub fn group_blocks(&self, groups: Vec<u32>) {
        lock(&self.region.state).book.group = groups;
    }

    /// Bytes of filled blocks now in the region.
    pub fn resident(&self) -> usize {
        lock(&self.region.state).book.resident
    }

    /// Whether installs move pages (`UFFDIO_MOVE`) rather than copy them: asked for, given
    /// by the kernel, and no move has failed.
    pub fn moves_pages(&self) -> bool {
        lock(&self.region.state).book.moving
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
            // Unregistered, a page missing against the book (which must not happen) reads
            // as zeros below instead of waiting for a handler forever.
            let r = &self.region;
            let mut range = abi::Range { start: r.base as u64, len: ((r.blocks + 1) * r.block) as u64 };
            // SAFETY: `range` is a valid `uffdio_range`: the whole map, registered by `new`.
            unsafe { libc::ioctl(r.uffd.as_raw_fd(), abi::UFFDIO_UNREGISTER as _, &mut range) };
        }
        // No handler runs now: wipe what is present, then unmap.
        let r = &self.region;
        let mut st = lock(&r.state);
        let book = &mut st.book;
        book.gone = true;
        for (b, &n) in book.filled.iter().enumerate() {
            let from = if book.kept.contains_key(&b) { r.page } else { 0 };
            if n > from {
                // SAFETY: the installed pages of a block of the live map, which nothing else
                // reads now (`self` is being dropped, and the borrows of `bytes()` ended).
                unsafe { zero(r.at(b, from), n - from) };
            }
        }
        for (i, _) in book.scratch.iter().enumerate().filter(|(_, &present)| present) {
            // SAFETY: a present page of the handler's buffer, which no thread uses now.
            unsafe { zero(r.at(r.blocks, i * r.page), r.page) };
        }
        book.kept.clear();
        drop(st);
        r.unmap();
    }
}

impl Region {
    /// The address of byte `offset` of block `b` (block `blocks` is the handler's buffer).
    fn at(&self, b: usize, offset: usize) -> *mut u8 {
        (self.base + b * self.block + offset) as *mut u8
    }

    fn unmap(&self) {
        // SAFETY: the maps this region owns; every user is gone (the handler was joined,
        // or never started, or this is a forked child without one).
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, (self.blocks + 1) * self.block);
            libc::munmap(self.zeros as *mut libc::c_void, self.block);
        }
    }

    /// Makes every page of the handler's buffer present before a block is filled: holes
    /// (left by pages moved out) get the pages of blocks dropped, where pages move, else
    /// new zero pages.
    fn prepare_scratch(&self, book: &mut Book) {
        let pages = self.block / self.page;
        let mut i = 0;
        while i < pages {
            if book.scratch[i] {
                i += 1;
                continue;
            }
            let run = book.scratch[i..].iter().take_while(|&&p| !p).count();
            self.copy_in(self.blocks, i * self.page, self.zeros as *const u8, run * self.page);
            book.scratch[i..i + run].iter_mut().for_each(|p| *p = true);
            i += run;
        }
    }

    /// Drops block `b`: its pages go to the holes of the handler's buffer (same offsets)
    /// where pages move; what remains is freed.
    fn drop_block(&self, book: &mut Book, b: usize) {
        let from = if book.kept.remove(&b).is_some() { self.page } else { 0 };
        let end = book.filled[b];
        if book.moving {
            let mut p = from / self.page;
            while p < end / self.page {
                if book.scratch[p] {
                    p += 1;
                    continue;
                }
                let run = book.scratch[p..end / self.page].iter().take_while(|&&x| !x).count();
                let moved = self.move_pages(self.at(self.blocks, p * self.page), self.at(b, p * self.page), run);
                book.scratch[p..p + moved].iter_mut().for_each(|x| *x = true);
                if moved < run {
                    book.moving = false;
                    break;
                }
                p += run;
            }
        }
        // SAFETY: advice on pages of a block of the region; a reader of them meanwhile faults
        // and is served the same bytes again. Pages moved away are holes already.
        unsafe { libc::madvise(self.at(b, 0).cast(), end, libc::MADV_DONTNEED) };
        book.resident -= end;
        book.filled[b] = 0;
    }

    /// Moves `pages` pages from `src` to `dst` (both in the map), waking readers of `dst`:
    /// how many moved before a failure.
    fn move_pages(&self, dst: *mut u8, src: *mut u8, pages: usize) -> usize {
        self.transfer(abi::UFFDIO_MOVE, dst as usize, src as usize, pages * self.page).0 / self.page
    }

    /// Installs `len` bytes (whole pages) from `src` at `offset` of block `b` (which may be
    /// the handler's buffer) by copying, waking its readers.
    fn copy_in(&self, b: usize, offset: usize, src: *const u8, len: usize) {
        if let (_, Some(e)) = self.transfer(abi::UFFDIO_COPY, self.at(b, offset) as usize, src as usize, len) {
            fatal(&format!("installing a block of decrypted memory failed: {e}"))
        }
    }

    /// `request` (`UFFDIO_COPY` or `UFFDIO_MOVE`) of `len` bytes (whole pages) from `src` to
    /// `dst`, waking the readers of `dst`, asked again while the kernel does part of it:
    /// the bytes done, and the failure that stopped it.
    fn transfer(&self, request: u64, dst: usize, src: usize, len: usize) -> (usize, Option<io::Error>) {
        let mut done = 0usize;
        while done < len {
            let mut t = abi::Transfer {
                dst: (dst + done) as u64,
                src: (src + done) as u64,
                len: (len - done) as u64,
                mode: 0,
                done: 0,
            };
            // SAFETY: `t` is a valid `uffdio_copy` / `uffdio_move` (one layout); the
            // destination is whole pages of the registered map, missing (installs happen
            // under the state lock); the source is `len` readable bytes: the caller's for a
            // copy, and for a move present pages of the map that only the handler (this
            // thread, holding the state lock) uses.
            let r = unsafe { libc::ioctl(self.uffd.as_raw_fd(), request as _, &mut t) };
            if r == 0 {
                return (len, None);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) if t.done > 0 => done += t.done as usize,
                Some(libc::EAGAIN) => {}
                // The next destination page is present. Under the state lock that is a
                // page this transfer put there although the kernel did not count it: a
                // move that page migration interrupted can report `EEXIST` for the page
                // it moved (seen on Linux 6.18), its source then gone. Counted as done,
                // and its readers woken (the failed call woke none).
                Some(libc::EEXIST) if request != abi::UFFDIO_MOVE || !present(src + done) => {
                    self.wake_at(dst + done, self.page);
                    done += self.page;
                }
                _ => return (done, Some(e)),
            }
        }
        (len, None)
    }

    /// Wakes the readers of `len` bytes at `addr` (in the map).
    fn wake_at(&self, addr: usize, len: usize) {
        let mut r = abi::Range { start: addr as u64, len: len as u64 };
        // SAFETY: `r` is a valid `uffdio_range` of the registered region.
        unsafe { libc::ioctl(self.uffd.as_raw_fd(), abi::UFFDIO_WAKE as _, &mut r) };
    }

    /// Wakes the readers of the first `len` bytes of block `b`.
    fn wake(&self, b: usize, len: usize) {
        self.wake_at(self.at(b, 0) as usize, len);
    }
}

impl Fill<'_> {
    /// The block's buffer (one block long, page-aligned, holding whatever the last fill
    /// left): write the block's bytes here before handing them over.
    pub fn buf(&mut self) -> &mut [u8] {
        let r = self.region;
        // SAFETY: the handler's buffer block of the live map, every page of it present
        // (`prepare_scratch`), used only by the handler thread, which holds the state lock
        // (borrowed by `self`) while this borrow lives.
        unsafe { std::slice::from_raw_parts_mut(r.at(r.blocks, 0), r.block) }
    }

    /// Hands over the buffer's bytes up to `end` (from where the last call stopped): they
    /// become the block's bytes. `end` is a multiple of the page size, except for the last
    /// call, at the end of the block's data (the rest of that page reads as zeros).
    pub fn install(&mut self, end: usize) {
        let r = self.region;
        let end = end.min(r.block);
        if self.ended || end <= self.done {
            return;
        }
        let page_end = end.div_ceil(r.page) * r.page;
        if page_end != end {
            self.buf()[end..page_end].fill(0);
            self.ended = true;
        }
        let mut from = self.done;
        if from == 0 && self.keep_first && page_end > r.page {
            let first: Box<[u8]> = self.buf()[..r.page].into();
            self.book.kept.insert(self.block, Kept(first));
            from = r.page;
        }
        self.put(from, page_end);
        self.done = page_end;
        r.look_at_faults(self.book);
    }

    /// Whether a reader waits for this block (a fault, not a fill ahead): its thread then
    /// uses no CPU until the block's pages are in, so a filler may put a second thread to work.
    pub fn reader_waits(&self) -> bool {
        !self.keep_first
    }

    /// Serves readers waiting for a kept-back page now (each has its page at once, and
    /// tells the handler where it reads); their other faults wait for this block. A filler
    /// calls it between pieces of work on a block, so such a reader never waits for a
    /// whole block.
    pub fn poll(&mut self) {
        self.region.look_at_faults(self.book);
    }

    /// Installs the buffer's pages `[from, to)` at the same offsets of the block.
    fn put(&mut self, from: usize, to: usize) {
        let r = self.region;
        let book = &mut *self.book;
        let pages = (to - from) / r.page;
        let first = from / r.page;
        let mut moved = 0;
        if book.moving {
            moved = r.move_pages(r.at(self.block, from), r.at(r.blocks, from), pages);
            book.scratch[first..first + moved].iter_mut().for_each(|p| *p = false);
            if moved < pages {
                book.moving = false;
            }
        }
        if moved < pages {
            let at = from + moved * r.page;
            r.copy_in(self.block, at, r.at(r.blocks, at), to - at);
        }
    }
}

fn fatal(what: &str) -> ! {
    eprintln!("onnx-protect: {what}; stopping the process rather than hand over unverified bytes");
    std::process::abort()
}

#[cfg(test)]
mod tests;
