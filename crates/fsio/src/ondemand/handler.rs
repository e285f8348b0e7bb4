//! The handler thread of a region: serves faults, fills ahead of the reader and while
//! idle, and fills a block within the budget (the fills of a fork too).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use super::{abi, fatal, lock, Book, Fill, Filler, Region, State, AHEAD};

/// Where the read-ahead stands: the next block to look at and the block before which it stops.
#[derive(Clone, Copy)]
struct Ahead {
    next: usize,
    stop: usize,
}

impl Region {
    /// Blocks filled ahead of the reader: [`AHEAD`], or fewer where the budget is smaller
    /// (two blocks stay for the reader).
    fn ahead(&self) -> usize {
        AHEAD.min((self.budget / self.block).saturating_sub(2)).max(1)
    }

    /// The next block for the idle fill ([`Options::fill_idle`](super::Options::fill_idle)): the first not filled at or
    /// after the last one, if it fits in the budget without dropping any (blocks capped
    /// after `settle`, read a row at a time, are left to their readers).
    fn idle_block(&self) -> Option<usize> {
        if !self.fill_idle || self.settled.load(Ordering::Acquire) {
            return None;
        }
        let mut st = lock(&self.state);
        let book = &mut st.book;
        if book.gone || book.resident + self.block > self.budget {
            return None;
        }
        let b = (book.idle_from..self.blocks).find(|&b| book.filled[b] == 0 && !book.capped[b])?;
        book.idle_from = b + 1;
        Some(b)
    }

    /// The read-ahead after the reader was seen in block `b` (`in_order`: read from its first
    /// page on, after the block before it, or filled ahead).
    fn reader_at(&self, b: usize, ahead: Option<Ahead>, in_order: bool) -> Option<Ahead> {
        if self.in_order_only && !in_order {
            return ahead.filter(|a| a.next > b && a.next < a.stop);
        }
        let next = ahead.map_or(b + 1, |a| a.next.max(b + 1));
        Some(Ahead { next, stop: b + 1 + self.ahead() })
    }

    /// The handler thread: serves faults, fills ahead while none waits, until `stop`.
    pub(super) fn serve(&self, stop: libc::c_int) {
        // The first blocks are filled before anything reads them (unless only a reader in
        // order is read ahead of).
        let mut ahead = (!self.in_order_only).then(|| Ahead { next: 0, stop: self.ahead() });
        let mut last = None;
        let mut msgs = [abi::Msg::default(); 16];
        loop {
            // Faults read while a block was being filled wait in `pending`: the userfaultfd
            // will not report them again, so none may be left there before `poll`, and
            // serving them can queue more.
            loop {
                let (pending, hint) = {
                    let mut st = lock(&self.state);
                    (std::mem::take(&mut st.book.pending), st.book.hint.take())
                };
                if let Some(b) = hint {
                    ahead = self.reader_at(b, ahead, true);
                }
                if pending.is_empty() {
                    break;
                }
                for addr in pending {
                    ahead = self.on_fault(addr, ahead, &mut last);
                }
            }
            let mut fds = [
                libc::pollfd { fd: self.uffd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: stop, events: libc::POLLIN, revents: 0 },
            ];
            if ahead.is_none() {
                ahead = self.idle_block().map(|b| Ahead { next: b, stop: b + 1 });
            }
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
                for addr in self.read_faults(&mut msgs) {
                    ahead = self.on_fault(addr, ahead, &mut last);
                }
            } else if let Some(a) = ahead {
                // Once settled, blocks filled stay: only what is read is filled.
                if a.next < self.blocks
                    && a.next < a.stop
                    && !self.settled.load(Ordering::Acquire)
                    && self.serve_block(a.next, None)
                {
                    ahead = Some(Ahead { next: a.next + 1, ..a });
                } else {
                    ahead = None;
                }
            }
        }
    }

    /// The addresses of the page faults waiting in the `userfaultfd` (none if none waits).
    fn read_faults(&self, msgs: &mut [abi::Msg; 16]) -> Vec<usize> {
        // SAFETY: reads at most `size_of_val(msgs)` bytes into `msgs`, plain data.
        let got = unsafe { libc::read(self.uffd.as_raw_fd(), msgs.as_mut_ptr().cast(), std::mem::size_of_val(msgs)) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                return Vec::new();
            }
            fatal(&format!("reading the userfaultfd failed: {e}"));
        }
        msgs[..got as usize / size_of::<abi::Msg>()]
            .iter()
            .filter(|m| m.event == abi::UFFD_EVENT_PAGEFAULT)
            .map(|m| m.address as usize)
            .collect()
    }

    /// The block of a fault at `addr`, if it is in a block handed out.
    fn block_of(&self, addr: usize) -> Option<usize> {
        let b = addr.checked_sub(self.base)? / self.block;
        (b < self.blocks).then_some(b)
    }

    /// The offset of `addr` in block `b` (an address in it).
    fn offset_in(&self, b: usize, addr: usize) -> usize {
        addr - self.base - b * self.block
    }

    /// Serves a fault at `addr`: a kept-back page at once, anything else by filling its
    /// block; returns the read-ahead from there. `last`: the block of the last fault.
    fn on_fault(&self, addr: usize, ahead: Option<Ahead>, last: &mut Option<usize>) -> Option<Ahead> {
        let Some(b) = self.block_of(addr) else { return ahead };
        let kept = self.give_kept(&mut lock(&self.state).book, b, addr);
        if !kept {
            self.serve_block(b, Some(addr));
        }
        // A reader in order crosses into the block after the last one at its first page (a
        // look at a small tensor in the next block lands anywhere in it).
        let in_order = kept || (self.offset_in(b, addr) < self.page && last.is_some_and(|l| b == l + 1));
        *last = Some(b);
        self.reader_at(b, ahead, in_order)
    }

    /// Installs the kept-back first page of block `b` if `addr` is in it: whether it did.
    fn give_kept(&self, book: &mut Book, b: usize, addr: usize) -> bool {
        if self.offset_in(b, addr) >= self.page {
            return false;
        }
        let Some(kept) = book.kept.remove(&b) else { return false };
        self.copy_in(b, 0, kept.0.as_ptr(), self.page);
        book.saw_read(b);
        true
    }

    /// Makes block `b` present; the reader of a fault at `fault` is woken even if it
    /// already was, and a page it reads past the block's bytes is installed as zeros.
    /// False when `b` was to be filled ahead (no fault) but that would drop a block of the
    /// group being read.
    fn serve_block(&self, b: usize, fault: Option<usize>) -> bool {
        let mut st = lock(&self.state);
        if fault.is_some() {
            st.book.saw_read(b);
        }
        let filled_now = st.book.filled[b] == 0;
        if filled_now {
            let State { filler, book } = &mut *st;
            if !self.fill(filler, book, b, fault.is_none()) {
                return false;
            }
        }
        let book = &mut st.book;
        if let Some(addr) = fault {
            let page_end = self.offset_in(b, addr) / self.page * self.page + self.page;
            if page_end > book.filled[b] {
                let from = book.filled[b];
                self.copy_in(b, from, self.zeros as *const u8, page_end - from);
                book.resident += page_end - from;
                book.filled[b] = page_end;
            } else if !filled_now && !self.give_kept(book, b, addr) {
                self.wake(b, book.filled[b]);
            }
        }
        true
    }

    /// Fills block `b` (keeping its first page back if `keep_first`: a block filled
    /// ahead), after making room within the budget; false if a block filled ahead would
    /// need room that only blocks of the group being read can make.
    fn fill(&self, filler: &mut Filler, book: &mut Book, b: usize, keep_first: bool) -> bool {
        if !self.make_room(book, b, keep_first) {
            return false;
        }
        self.prepare_scratch(book);
        let mut f = Fill { region: self, book, block: b, done: 0, keep_first, ended: false };
        let result = filler(b, &mut f);
        let Fill { done, .. } = f;
        let n = match result {
            Ok(()) if done == 0 => {
                // Nothing to install: one page of zeros (a reader may wait for it).
                self.copy_in(b, 0, self.zeros as *const u8, self.page);
                self.page
            }
            Ok(()) => done,
            Err(e) if !self.settled.load(Ordering::Acquire) => {
                // The block reads as zeros past what was installed; `settle` reports it.
                book.failed.get_or_insert(e);
                if done < self.block {
                    self.copy_in(b, done, self.zeros as *const u8, self.block - done);
                }
                self.block
            }
            Err(e) if keep_first => {
                // Filled ahead, once `settle` was called meanwhile: no reader waits for this
                // block, so it is dropped (reported by `settle` if it has not returned); a
                // reader that fills it again gets its true bytes or ends the process.
                book.failed.get_or_insert(e);
                book.filled[b] = done;
                book.resident += done;
                self.drop_block(book, b);
                return true;
            }
            Err(e) => fatal(&e),
        };
        book.filled[b] = n;
        book.resident += n;
        if book.capped[b] && !book.keep_all && self.settled.load(Ordering::Acquire) {
            book.capped_order.push_back(b);
            book.capped_resident += n;
            while book.capped_resident > book.cap {
                let Some(old) = book.capped_order.pop_front() else { break };
                if old == b {
                    book.capped_order.push_back(old);
                    break;
                }
                book.capped_resident -= book.filled[old];
                self.drop_block(book, old);
            }
        } else {
            book.order.push_back(b);
        }
        true
    }

    /// Before `settle`, drops filled blocks (never `b`) while filling `b` would go over the
    /// budget: the oldest first, but first those of other groups than `b`'s and the last
    /// two read ([`OnDemand::group_blocks`](super::OnDemand::group_blocks): a tensor read again after a look at another
    /// one stays). A block filled `ahead` drops no block of those groups and none of the
    /// last blocks filled ahead and not read yet, as many as are filled ahead of a reader
    /// (it would wait for them again; older ones, which it skipped, may go): false if it
    /// would have to.
    fn make_room(&self, book: &mut Book, b: usize, ahead: bool) -> bool {
        if self.settled.load(Ordering::Acquire) {
            return true;
        }
        let groups = std::mem::take(&mut book.group);
        let group = |x: usize| groups.get(x).copied();
        let kept = [group(b), book.read_groups[0], book.read_groups[1]];
        let mut room = true;
        let unread: Vec<usize> = match ahead {
            true => book.order.iter().rev().filter(|x| book.kept.contains_key(x)).take(self.ahead()).copied().collect(),
            false => Vec::new(),
        };
        while book.resident + self.block > self.budget {
            let unread = |x: usize| unread.contains(&x);
            let first = |keep: &dyn Fn(Option<u32>) -> bool| {
                book.order.iter().position(|&x| x != b && !unread(x) && !keep(group(x)))
            };
            let at = match groups.is_empty() {
                true => first(&|_| false),
                false if ahead => first(&|g| kept.contains(&g)),
                false => {
                    first(&|g| kept.contains(&g)).or_else(|| first(&|g| g == kept[0])).or_else(|| first(&|_| false))
                }
            };
            let Some(at) = at else {
                room = !ahead;
                break;
            };
            let Some(old) = book.order.remove(at) else { break };
            self.drop_block(book, old);
        }
        book.group = groups;
        room
    }

    /// Serves kept-back pages that readers wait for now; queues their other faults.
    pub(super) fn look_at_faults(&self, book: &mut Book) {
        let mut msgs = [abi::Msg::default(); 16];
        loop {
            let faults = self.read_faults(&mut msgs);
            if faults.is_empty() {
                return;
            }
            for addr in faults {
                match self.block_of(addr) {
                    Some(b) if self.give_kept(book, b, addr) => book.hint = Some(b),
                    Some(_) => book.pending.push(addr),
                    None => {}
                }
            }
        }
    }

    /// Fills every block, hands over every kept-back page and stops dropping them (before a
    /// fork).
    pub(super) fn fill_all(&self) {
        self.settled.store(true, Ordering::Release);
        let mut st = lock(&self.state);
        let State { filler, book } = &mut *st;
        if book.gone {
            return;
        }
        book.keep_all = true;
        for b in book.kept.keys().copied().collect::<Vec<_>>() {
            if let Some(kept) = book.kept.remove(&b) {
                self.copy_in(b, 0, kept.0.as_ptr(), self.page);
            }
        }
        for b in 0..self.blocks {
            if book.filled[b] == 0 {
                self.fill(filler, book, b, false);
            }
        }
        // The fills above may have read faults into `pending` while the handler waits in
        // `poll` for new ones: their readers are woken here, and fault again (a new message)
        // where their page is still missing.
        self.wake_at(self.base, self.blocks * self.block);
    }
}
