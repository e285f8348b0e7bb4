use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

const BLOCK: usize = 64 << 10;

/// Held by the test that forks, and by those that count drops: a fork fills every block of
/// every live region of the process and stops its drops.
static FORKS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn no_fork() -> std::sync::MutexGuard<'static, ()> {
    FORKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The byte at `offset` of the test pattern.
fn byte(offset: usize) -> u8 {
    (offset.wrapping_mul(2654435761) >> 13) as u8
}

fn opts(budget: usize, move_pages: bool) -> Options {
    Options { block: BLOCK, budget, move_pages, fill_idle: false, in_order_only: false }
}

/// A filler of the pattern for a region of `len` bytes, handing each block over in
/// pieces of `piece` bytes; the counter counts the fills.
fn pattern(len: usize, piece: usize, fills: Arc<AtomicUsize>) -> Filler {
    Box::new(move |b, fill| {
        fills.fetch_add(1, Ordering::SeqCst);
        let start = b * BLOCK;
        let n = (len - start).min(BLOCK);
        for (i, x) in fill.buf()[..n].iter_mut().enumerate() {
            *x = byte(start + i);
        }
        let mut at = 0;
        while at < n {
            at = (at + piece).min(n);
            fill.install(at);
        }
        Ok(())
    })
}

/// A region of `len` bytes of the pattern; the counter counts the fills.
fn region(len: usize, budget: usize, move_pages: bool) -> (OnDemand, Arc<AtomicUsize>) {
    let fills = Arc::new(AtomicUsize::new(0));
    match OnDemand::new(len, opts(budget, move_pages), pattern(len, 16 << 10, Arc::clone(&fills))) {
        Ok(r) => (r, fills),
        Err(e) => panic!("userfaultfd is needed for these tests: {e}"),
    }
}

/// Runs `test` with pages copied in, and moved in where the kernel can.
fn both(test: impl Fn(bool)) {
    test(false);
    test(true);
}

fn check(r: &OnDemand, len: usize) {
    let bytes = r.bytes();
    assert_eq!(bytes.len(), len.div_ceil(BLOCK) * BLOCK);
    for (i, &x) in bytes.iter().enumerate() {
        let want = if i < len { byte(i) } else { 0 };
        assert_eq!(x, want, "byte {i}");
    }
}

/// Waits (up to 20 s) until `cond` holds.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn pages_move_where_the_kernel_can_and_are_copied_when_asked() {
    let (r, _) = region(8 * BLOCK, 64 * BLOCK, false);
    assert!(!r.moves_pages());
    let (r, _) = region(8 * BLOCK, 64 * BLOCK, true);
    // Linux 6.8 and later move pages (UFFDIO_MOVE); older kernels copy.
    check(&r, 8 * BLOCK);
    eprintln!("this kernel moves pages: {}", r.moves_pages());
}

#[test]
fn reads_fill_each_block_once_when_within_budget() {
    both(|moving| {
        let len = 40 * BLOCK + 123;
        let (r, fills) = region(len, 64 * BLOCK, moving);
        assert!(r.resident() <= AHEAD * BLOCK, "only the first blocks are filled before anything is read");
        check(&r, len);
        check(&r, len);
        assert_eq!(fills.load(Ordering::SeqCst), 41);
        assert_eq!(r.resident(), 41 * BLOCK);
    });
}

#[test]
fn blocks_are_filled_ahead_of_the_reader_and_their_kept_pages_read_true() {
    both(|moving| {
        let len = 60 * BLOCK;
        let (r, fills) = region(len, 64 * BLOCK, moving);
        // The first blocks are filled before anything reads them.
        eventually("the head start", || fills.load(Ordering::SeqCst) >= AHEAD);
        assert_eq!(r.bytes()[0], byte(0));
        // Reading block 0 (its first page was kept back) moves the read-ahead on.
        eventually("the read-ahead", || fills.load(Ordering::SeqCst) > AHEAD);
        let before = fills.load(Ordering::SeqCst);
        // Every block filled so far reads true, its kept-back first page included, with
        // no fill more than the read-ahead's.
        for b in 0..before.min(AHEAD) {
            let page = page_size();
            for i in [b * BLOCK, b * BLOCK + page - 1, b * BLOCK + page, (b + 1) * BLOCK - 1] {
                assert_eq!(r.bytes()[i], byte(i), "byte {i}");
            }
        }
        check(&r, len);
        assert_eq!(fills.load(Ordering::SeqCst), 60, "each block filled once");
    });
}

#[test]
fn over_budget_old_blocks_are_dropped_and_filled_again_with_the_same_bytes() {
    let _no_fork = no_fork();
    both(|moving| {
        let len = 64 * BLOCK;
        let budget = 8 * BLOCK;
        let (r, fills) = region(len, budget, moving);
        check(&r, len);
        assert!(r.resident() <= budget, "{} resident", r.resident());
        let first = fills.load(Ordering::SeqCst);
        assert_eq!(first, 64);
        // Block 0 was dropped: reading it again fills it again, with the same bytes (and the
        // handler may be filling the blocks after it meanwhile).
        assert_eq!(r.bytes()[5], byte(5));
        assert!(fills.load(Ordering::SeqCst) > first);
        check(&r, len);
        if moving {
            // Moving pages out of dropped blocks into new ones never made a move fail.
            assert_eq!(r.moves_pages(), fills_move(), "moves stayed possible");
        }
    });
}

/// Whether this kernel moves pages (a fresh region that asks for it).
fn fills_move() -> bool {
    region(4 * BLOCK, 64 * BLOCK, true).0.moves_pages()
}

#[test]
fn settled_regions_keep_what_they_fill() {
    both(|moving| {
        let len = 32 * BLOCK;
        let (r, fills) = region(len, 8 * BLOCK, moving);
        assert_eq!(r.settle(), Ok(()));
        // The handler may have filled blocks ahead before settling (dropped by it, as nothing
        // read them): from here on each block is filled at most once more.
        let at_settle = fills.load(Ordering::SeqCst);
        check(&r, len);
        let once = fills.load(Ordering::SeqCst);
        assert!(once - at_settle <= 32, "{} fills after settling", once - at_settle);
        // Nothing was dropped although the budget is a quarter of the region: reading it all
        // again fills nothing.
        assert_eq!(r.resident(), 32 * BLOCK);
        check(&r, len);
        assert_eq!(fills.load(Ordering::SeqCst), once);
        if at_settle == 0 {
            assert_eq!(once, 32);
        }
    });
}

#[test]
fn trimming_a_settled_region_drops_every_block_and_a_read_fills_it_again() {
    both(|moving| {
        let len = 24 * BLOCK + 100;
        let (r, fills) = region(len, 64 * BLOCK, moving);
        assert_eq!(r.settle(), Ok(()));
        check(&r, len);
        assert_eq!(r.resident(), 25 * BLOCK);
        let before = fills.load(Ordering::SeqCst);
        r.trim();
        assert_eq!(r.resident(), 0);
        // Read again: the same bytes, each block filled once more, and they stay.
        check(&r, len);
        assert_eq!(fills.load(Ordering::SeqCst) - before, 25);
        assert_eq!(r.resident(), 25 * BLOCK);
        check(&r, len);
        assert_eq!(fills.load(Ordering::SeqCst) - before, 25);
    });
}

#[test]
fn capped_blocks_stay_within_their_cap_after_settle_and_read_the_same_bytes() {
    both(|moving| {
        let len = 24 * BLOCK;
        let (r, fills) = region(len, 64 * BLOCK, moving);
        // Blocks 4 .. 20 (a gathered table), at most 3 of them filled at a time.
        r.cap_after_settle(4..20, 3 * BLOCK);
        assert_eq!(r.settle(), Ok(()));
        let bytes = r.bytes();
        // One byte of each block, as rows are gathered: the blocks outside the cap stay,
        // the capped ones never hold more than 3 blocks.
        for b in 0..24 {
            assert_eq!(bytes[b * BLOCK + 7], byte(b * BLOCK + 7), "block {b}");
            let capped_now = r.resident() - (0..24).filter(|&c| !(4..20).contains(&c) && c <= b).count() * BLOCK;
            assert!(capped_now <= 3 * BLOCK, "block {b}: {capped_now} bytes of capped blocks");
        }
        assert_eq!(r.resident(), (4 + 4 + 3) * BLOCK);
        // Every byte again: the dropped blocks are filled again with the same bytes.
        let before = fills.load(Ordering::SeqCst);
        check(&r, len);
        assert!(fills.load(Ordering::SeqCst) - before >= 13, "the 13 dropped blocks are filled again");
        assert!(r.resident() <= (4 + 4 + 3) * BLOCK);
        // Trim drops the capped blocks too.
        r.trim();
        assert_eq!(r.resident(), 0);
        check(&r, len);
    });
}

#[test]
fn settling_drops_the_blocks_filled_ahead_that_nothing_read() {
    both(|moving| {
        let len = 40 * BLOCK;
        let (r, fills) = region(len, 64 * BLOCK, moving);
        eventually("the head start", || fills.load(Ordering::SeqCst) >= AHEAD);
        // Block 0 read whole; the blocks after it were filled ahead, and nothing read them.
        assert!(r.bytes()[..BLOCK].iter().enumerate().all(|(i, &x)| x == byte(i)));
        assert!(r.resident() > BLOCK);
        assert_eq!(r.settle(), Ok(()));
        assert_eq!(r.resident(), BLOCK, "only the block that was read stays");
        // A dropped block read later is filled again, with the same bytes, and stays.
        check(&r, len);
        assert_eq!(r.resident(), 40 * BLOCK);
    });
}

#[test]
fn readers_on_many_threads_see_the_same_bytes() {
    both(|moving| {
        let len = 48 * BLOCK + 7;
        let (r, _) = region(len, 6 * BLOCK, moving);
        std::thread::scope(|s| {
            for t in 0..4 {
                let r = &r;
                s.spawn(move || {
                    let bytes = r.bytes();
                    // Scattered reads: most land on a block dropped since, filled again.
                    for k in 0..20_000 {
                        let i = (k * 7919 + t * 104729) % len;
                        assert_eq!(bytes[i], byte(i), "byte {i}");
                    }
                });
            }
        });
    });
}

#[test]
fn a_forked_child_sees_every_byte() {
    let _forking = no_fork();
    both(|moving| {
        let len = 40 * BLOCK;
        let (r, _) = region(len, 4 * BLOCK, moving);
        assert_eq!(r.bytes()[0], byte(0));
        // SAFETY: the child only reads memory and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = r.bytes()[..len].iter().enumerate().all(|(i, &x)| x == byte(i));
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just made.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
        check(&r, len);
    });
}

/// A filler whose block 3 fails (after handing over its first half).
fn failing_at_3() -> Filler {
    Box::new(|b, fill| {
        fill.buf().fill(1);
        if b == 3 {
            fill.install(BLOCK / 2);
            Err("block 3 changed on disk".into())
        } else {
            fill.install(BLOCK);
            Ok(())
        }
    })
}

#[test]
fn a_fill_failing_before_settle_reads_as_zeros_and_settle_reports_it() {
    both(|moving| {
        let r = OnDemand::new(8 * BLOCK, opts(8 * BLOCK, moving), failing_at_3()).expect("userfaultfd");
        let bytes = r.bytes();
        assert!(bytes[..3 * BLOCK].iter().all(|&x| x == 1));
        assert!(bytes[3 * BLOCK..3 * BLOCK + BLOCK / 2].iter().all(|&x| x == 1), "what was handed over stays");
        assert!(bytes[3 * BLOCK + BLOCK / 2..4 * BLOCK].iter().all(|&x| x == 0), "the rest reads as zeros");
        assert!(bytes[4 * BLOCK..].iter().all(|&x| x == 1));
        assert_eq!(r.settle(), Err("block 3 changed on disk".to_string()));
        assert_eq!(r.settle(), Err("block 3 changed on disk".to_string()), "and again");
    });
}

/// Run by `a_fill_failing_after_settle_ends_the_process` in a child process.
#[test]
#[ignore = "run in a child process by a_fill_failing_after_settle_ends_the_process"]
fn failing_filler_child() {
    if std::env::var_os("ONNX_PROTECT_ONDEMAND_CHILD").is_none() {
        return;
    }
    // A budget of three blocks: block 3 is not filled before the region settles.
    let r = OnDemand::new(8 * BLOCK, opts(3 * BLOCK, true), failing_at_3()).expect("userfaultfd");
    assert_eq!(r.settle(), Ok(()));
    let sum: u64 = r.bytes().iter().map(|&x| u64::from(x)).sum();
    println!("read every byte: {sum}");
}

#[test]
fn a_fill_failing_after_settle_ends_the_process() {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "ondemand::tests::failing_filler_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("ONNX_PROTECT_ONDEMAND_CHILD", "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child finished: {stdout}");
    assert!(!stdout.contains("read every byte"), "{stdout}");
    assert!(stderr.contains("onnx-protect: block 3 changed on disk; stopping the process"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{:?}", out.status);
}

#[test]
fn blocks_with_little_data_install_only_the_pages_it_covers() {
    both(|moving| {
        let page = page_size();
        let filler: Filler = Box::new(|b, fill| {
            fill.buf()[..100].fill(b as u8 + 1);
            fill.install(100);
            Ok(())
        });
        let r = OnDemand::new(10 * BLOCK, opts(100 * BLOCK, moving), filler).expect("userfaultfd");
        for b in 0..10 {
            assert_eq!(r.bytes()[b * BLOCK + 99], b as u8 + 1);
            assert_eq!(r.bytes()[b * BLOCK + 100], 0, "the rest of the page is zeros");
        }
        assert_eq!(r.resident(), 10 * page, "one page per block, not a block");
        // A page past the data reads as zeros, and costs one page more.
        assert_eq!(r.bytes()[3 * BLOCK + 5 * page + 1], 0);
        assert_eq!(r.resident(), 10 * page + 5 * page);
    });
}

#[test]
fn a_system_call_given_an_unread_block_fails_until_it_is_read_in_user_space() {
    // Past the blocks filled ahead at the start.
    let len = (AHEAD + 8) * BLOCK;
    let at = (AHEAD + 4) * BLOCK;
    let (r, _) = region(len, 64 * BLOCK, true);
    let mut fds = [0; 2];
    // SAFETY: a pipe into a valid array of two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let send = |at: usize| -> Result<Vec<u8>, i32> {
        // SAFETY: writes 256 bytes of the live region into the pipe (whose buffer holds them).
        let n = unsafe { libc::write(fds[1], r.bytes()[at..].as_ptr().cast(), 256) };
        if n < 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        let mut back = vec![0u8; n as usize];
        // SAFETY: reads what was just written into a buffer as long.
        assert_eq!(unsafe { libc::read(fds[0], back.as_mut_ptr().cast(), back.len()) }, n);
        Ok(back)
    };
    let want: Vec<u8> = (at..at + 256).map(byte).collect();
    // Inside the kernel the fault is not served (user-mode-only); on kernels before 5.11,
    // which have no such mode, it is, with the true bytes.
    match send(at) {
        Err(e) => assert_eq!(e, libc::EFAULT),
        Ok(got) => assert_eq!(got, want),
    }
    assert_eq!(r.bytes()[at], byte(at)); // read in user space: filled
    assert_eq!(send(at), Ok(want));
    // SAFETY: closes the pipe made above.
    unsafe { libc::close(fds[0]) };
    // SAFETY: as above.
    unsafe { libc::close(fds[1]) };
}

/// Page migration (compaction) moves the pages of the region and of the handler's buffer
/// while blocks are installed and dropped: a move it interrupts can report `EEXIST` for a
/// page it did move, which the handler once took for a page still in its buffer (the next
/// copy from there failed with `EFAULT` and ended the process; a drop could then wipe a
/// missing page and wait forever). Compaction is asked for all along where this process may
/// (`/proc/sys/vm/compact_memory`, root); elsewhere the test runs without it.
#[test]
fn pages_stay_right_while_the_kernel_migrates_them() {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let compacting = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if std::fs::write("/proc/sys/vm/compact_memory", "1").is_err() {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            true
        })
    };
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_secs(6) {
        let len = 256 * BLOCK;
        let (r, _) = region(len, 8 * BLOCK, true);
        for _ in 0..3 {
            check(&r, len);
        }
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let compacted = compacting.join().unwrap_or(false);
    eprintln!("{rounds} rounds, compaction asked for: {compacted}");
}

/// A tensor read three times, a block of another read between (onnxruntime packing a
/// weight, then reading a bias): with the blocks grouped by tensor, the tensor's blocks
/// stay filled while it fits in the budget (the block read between costs at most one of
/// them per pass); dropping the oldest block first fills every one of them again.
#[test]
fn a_group_read_again_stays_filled_while_it_fits() {
    let _no_fork = no_fork();
    for grouped in [true, false] {
        let len = 40 * BLOCK;
        let per_block: Arc<Vec<AtomicUsize>> = Arc::new((0..40).map(|_| AtomicUsize::new(0)).collect());
        let (counts, inner) = (Arc::clone(&per_block), Arc::new(AtomicUsize::new(0)));
        let mut fill_pattern = pattern(len, 16 << 10, inner);
        let filler: Filler = Box::new(move |b, fill| {
            counts[b].fetch_add(1, Ordering::SeqCst);
            fill_pattern(b, fill)
        });
        let r = OnDemand::new(len, opts(22 * BLOCK, true), filler).expect("userfaultfd");
        if grouped {
            // Blocks 0..10 one tensor, 10..31 another, the rest a third.
            r.group_blocks(
                (0..40)
                    .map(|b| {
                        if b < 10 {
                            1
                        } else if b < 31 {
                            2
                        } else {
                            3
                        }
                    })
                    .collect(),
            );
        }
        let bytes = r.bytes();
        for i in (0..10 * BLOCK).step_by(4096) {
            assert_eq!(bytes[i], byte(i));
        }
        for pass in 0..3 {
            for i in (10 * BLOCK..31 * BLOCK).step_by(4096) {
                assert_eq!(bytes[i], byte(i), "byte {i}");
            }
            let other = (34 + pass) * BLOCK;
            assert_eq!(bytes[other], byte(other));
        }
        let refills: usize = (10..31).map(|b| per_block[b].load(Ordering::SeqCst).saturating_sub(1)).sum();
        if grouped {
            assert!(refills <= 2, "{refills} fills again of the tensor read three times");
        } else {
            assert!(refills >= 10, "without groups the oldest blocks go first: {refills} fills again");
        }
        assert!(r.resident() <= 22 * BLOCK, "{} blocks resident", r.resident() / BLOCK);
        check(&r, len);
    }
}

/// With `fill_idle`, the handler fills blocks nothing has read yet, in order, up to the
/// budget and never past it; what is read afterwards reads true.
#[test]
fn an_idle_handler_fills_blocks_up_to_the_budget() {
    let _no_fork = no_fork();
    let len = 40 * BLOCK;
    let fills = Arc::new(AtomicUsize::new(0));
    let opts = Options { fill_idle: true, ..opts(24 * BLOCK, true) };
    let r = OnDemand::new(len, opts, pattern(len, 16 << 10, Arc::clone(&fills))).expect("userfaultfd");
    eventually("the idle fill", || r.resident() == 24 * BLOCK);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.resident(), 24 * BLOCK, "no block past the budget");
    assert_eq!(fills.load(Ordering::SeqCst), 24, "none dropped");
    check(&r, len);
    assert!(r.resident() <= 24 * BLOCK);
    // Blocks capped after settle (a table read a row at a time) are not filled idly.
    // (The first blocks, filled ahead, take a while: the caps are set before the idle fill.)
    let mut inner = pattern(len, 16 << 10, Arc::new(AtomicUsize::new(0)));
    let slow_start: Filler = Box::new(move |b, fill| {
        if b < AHEAD {
            std::thread::sleep(Duration::from_millis(3));
        }
        inner(b, fill)
    });
    let r = OnDemand::new(len, Options { budget: 64 * BLOCK, ..opts }, slow_start).expect("userfaultfd");
    r.cap_after_settle(20..40, 4 * BLOCK);
    eventually("the idle fill", || r.resident() == 20 * BLOCK);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.resident(), 20 * BLOCK, "the capped blocks are left");
    check(&r, len);
    // Settled, the handler fills only what is read.
    let fills = Arc::new(AtomicUsize::new(0));
    let r = OnDemand::new(len, opts, pattern(len, 16 << 10, Arc::clone(&fills))).expect("userfaultfd");
    assert_eq!(r.settle(), Ok(()));
    std::thread::sleep(Duration::from_millis(50));
    let after = fills.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(fills.load(Ordering::SeqCst), after);
}

/// A reader that keeps reading one tensor (a weight packed in several passes) while the
/// read-ahead has filled the blocks after it: filling further ahead never drops a block
/// filled ahead that nothing read yet, so none of them is filled twice.
#[test]
fn blocks_filled_ahead_and_not_read_yet_stay_while_the_reader_lingers() {
    let _no_fork = no_fork();
    let len = 40 * BLOCK;
    let per_block: Arc<Vec<AtomicUsize>> = Arc::new((0..40).map(|_| AtomicUsize::new(0)).collect());
    let counts = Arc::clone(&per_block);
    let mut fill_pattern = pattern(len, 16 << 10, Arc::new(AtomicUsize::new(0)));
    let filler: Filler = Box::new(move |b, fill| {
        counts[b].fetch_add(1, Ordering::SeqCst);
        fill_pattern(b, fill)
    });
    // Nine blocks of budget: seven filled ahead, two for the reader.
    let r = OnDemand::new(len, opts(9 * BLOCK, true), filler).expect("userfaultfd");
    // Blocks 0..4 one tensor, every other block a tensor of its own.
    r.group_blocks((0..40).map(|b| if b < 4 { 1 } else { b as u32 + 1 }).collect());
    eventually("the head start", || r.resident() >= 7 * BLOCK);
    let bytes = r.bytes();
    for _pass in 0..3 {
        for i in (0..4 * BLOCK).step_by(4096) {
            assert_eq!(bytes[i], byte(i), "byte {i}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in (4 * BLOCK..len).step_by(4096) {
        assert_eq!(bytes[i], byte(i), "byte {i}");
    }
    let twice: Vec<usize> = (4..40).filter(|&b| per_block[b].load(Ordering::SeqCst) > 1).collect();
    assert!(twice.is_empty(), "blocks filled again: {twice:?}");
    assert!(r.resident() <= 9 * BLOCK, "{} blocks resident", r.resident() / BLOCK);
    check(&r, len);
}

/// With `in_order_only`, nothing is filled before it is read, a read that does not follow
/// the last one fills its block alone, and a reader in order is read ahead of.
#[test]
fn only_a_reader_in_order_is_read_ahead_of() {
    let _no_fork = no_fork();
    let len = 48 * BLOCK;
    let fills = Arc::new(AtomicUsize::new(0));
    let opts = Options { in_order_only: true, ..opts(48 * BLOCK, true) };
    let r = OnDemand::new(len, opts, pattern(len, 16 << 10, Arc::clone(&fills))).expect("userfaultfd");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(fills.load(Ordering::SeqCst), 0, "nothing filled before a read");
    // Scattered reads: each fills its own block and no other.
    for (i, b) in [30, 3, 17, 41].into_iter().enumerate() {
        assert_eq!(r.bytes()[b * BLOCK + 100], byte(b * BLOCK + 100));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(fills.load(Ordering::SeqCst), i + 1, "block {b} alone");
    }
    // A look in the middle of the block after the last one read (a small tensor there):
    // that block alone.
    assert_eq!(r.bytes()[42 * BLOCK + BLOCK / 2], byte(42 * BLOCK + BLOCK / 2));
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(fills.load(Ordering::SeqCst), 5, "block 42 alone");
    // Its first page after the block before it: the reader is in order, blocks ahead are filled.
    assert_eq!(r.bytes()[43 * BLOCK], byte(43 * BLOCK));
    eventually("the read-ahead", || fills.load(Ordering::SeqCst) >= 7);
    check(&r, len);
}

/// Faults that arrive while a block is filled are read then (to serve kept-back pages at
/// once) and queued: each is served, also when serving the queue queues more and nothing
/// is left to fill ahead (readers of scattered blocks, one after another, each arriving
/// while the block before is filled).
#[test]
fn faults_read_while_a_block_is_filled_are_all_served() {
    let _no_fork = no_fork();
    let len = 48 * BLOCK;
    let fills = Arc::new(AtomicUsize::new(0));
    let mut inner = pattern(len, 4 << 10, Arc::clone(&fills));
    let slow: Filler = Box::new(move |b, fill| {
        std::thread::sleep(Duration::from_millis(12));
        inner(b, fill)
    });
    let opts = Options { in_order_only: true, ..opts(48 * BLOCK, true) };
    let r = Arc::new(OnDemand::new(len, opts, slow).expect("userfaultfd"));
    let (done, finished) = std::sync::mpsc::channel();
    let blocks = [40, 5, 29, 13, 47, 21, 35, 9, 25, 1];
    for (i, b) in blocks.into_iter().enumerate() {
        let (r, done) = (Arc::clone(&r), done.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5 * i as u64));
            let got = r.bytes()[b * BLOCK + 4096 + 7];
            let _ = done.send((b, got));
        });
    }
    for _ in blocks {
        let (b, got) = finished.recv_timeout(Duration::from_secs(20)).expect("a reader was never served");
        assert_eq!(got, byte(b * BLOCK + 4096 + 7), "block {b}");
    }
    assert_eq!(fills.load(Ordering::SeqCst), blocks.len(), "each block filled once, no other");
}
