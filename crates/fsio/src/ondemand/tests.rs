use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;

const BLOCK: usize = 64 << 10;

/// The byte at `offset` of the test pattern.
fn byte(offset: usize) -> u8 {
    (offset.wrapping_mul(2654435761) >> 13) as u8
}

/// A region of `len` bytes of the pattern; the counter counts the fills.
fn region(len: usize, budget: usize) -> (OnDemand, Arc<AtomicUsize>) {
    let fills = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&fills);
    let filler: Filler = Box::new(move |b, out| {
        f.fetch_add(1, Ordering::SeqCst);
        let start = b * BLOCK;
        let n = (len - start).min(BLOCK);
        for (i, x) in out[..n].iter_mut().enumerate() {
            *x = byte(start + i);
        }
        Ok(n)
    });
    match OnDemand::new(len, BLOCK, budget, filler) {
        Ok(r) => (r, fills),
        Err(e) => panic!("userfaultfd is needed for these tests: {e}"),
    }
}

fn check(r: &OnDemand, len: usize) {
    let bytes = r.bytes();
    assert_eq!(bytes.len(), len.div_ceil(BLOCK) * BLOCK);
    for (i, &x) in bytes.iter().enumerate() {
        let want = if i < len { byte(i) } else { 0 };
        assert_eq!(x, want, "byte {i}");
    }
}

#[test]
fn reads_fill_each_block_once_when_within_budget() {
    let len = 20 * BLOCK + 123;
    let (r, fills) = region(len, 64 * BLOCK);
    assert_eq!(r.resident(), 0, "nothing is filled before it is read");
    check(&r, len);
    check(&r, len);
    assert_eq!(fills.load(Ordering::SeqCst), 21);
    assert_eq!(r.resident(), 21 * BLOCK);
}

#[test]
fn over_budget_old_blocks_are_dropped_and_filled_again_with_the_same_bytes() {
    let len = 64 * BLOCK;
    let budget = 8 * BLOCK;
    let (r, fills) = region(len, budget);
    check(&r, len);
    assert!(r.resident() <= budget, "{} resident", r.resident());
    let first = fills.load(Ordering::SeqCst);
    assert_eq!(first, 64);
    // Block 0 was dropped: reading it again fills it again, with the same bytes (and the
    // handler may be filling the blocks after it meanwhile).
    assert_eq!(r.bytes()[5], byte(5));
    assert!(fills.load(Ordering::SeqCst) > first);
    check(&r, len);
}

#[test]
fn settled_regions_keep_what_they_fill() {
    let len = 32 * BLOCK;
    let (r, fills) = region(len, 8 * BLOCK);
    r.settle();
    check(&r, len);
    check(&r, len);
    assert_eq!(fills.load(Ordering::SeqCst), 32);
    assert_eq!(r.resident(), 32 * BLOCK);
}

#[test]
fn readers_on_many_threads_see_the_same_bytes() {
    let len = 48 * BLOCK + 7;
    let (r, _) = region(len, 6 * BLOCK);
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
}

#[test]
fn a_forked_child_sees_every_byte() {
    let len = 40 * BLOCK;
    let (r, _) = region(len, 4 * BLOCK);
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
}

/// Run by `a_failing_filler_ends_the_process` in a child process.
#[test]
#[ignore = "run in a child process by a_failing_filler_ends_the_process"]
fn failing_filler_child() {
    if std::env::var_os("ONNX_PROTECT_ONDEMAND_CHILD").is_none() {
        return;
    }
    let filler: Filler = Box::new(|b, out| {
        out.fill(1);
        if b == 3 {
            Err("block 3 changed on disk".into())
        } else {
            Ok(out.len())
        }
    });
    let r = OnDemand::new(8 * BLOCK, BLOCK, 8 * BLOCK, filler).expect("userfaultfd");
    let sum: u64 = r.bytes().iter().map(|&x| u64::from(x)).sum();
    println!("read every byte: {sum}");
}

#[test]
fn a_failing_filler_ends_the_process() {
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
    // SAFETY: sysconf with a valid name.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let filler: Filler = Box::new(|b, out| {
        out[..100].fill(b as u8 + 1);
        Ok(100)
    });
    let r = OnDemand::new(10 * BLOCK, BLOCK, 100 * BLOCK, filler).expect("userfaultfd");
    for b in 0..10 {
        assert_eq!(r.bytes()[b * BLOCK + 99], b as u8 + 1);
        assert_eq!(r.bytes()[b * BLOCK + 100], 0, "the rest of the page is zeros");
    }
    assert_eq!(r.resident(), 10 * page, "one page per block, not a block");
    // A page past the data reads as zeros, and costs one page more.
    assert_eq!(r.bytes()[3 * BLOCK + 5 * page + 1], 0);
    assert_eq!(r.resident(), 10 * page + 5 * page);
}

#[test]
fn a_system_call_given_an_unread_block_fails_until_it_is_read_in_user_space() {
    let len = 4 * BLOCK;
    let (r, _) = region(len, 64 * BLOCK);
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
    let want: Vec<u8> = (2 * BLOCK..2 * BLOCK + 256).map(byte).collect();
    // Inside the kernel the fault is not served (user-mode-only); on kernels before 5.11,
    // which have no such mode, it is, with the true bytes.
    match send(2 * BLOCK) {
        Err(e) => assert_eq!(e, libc::EFAULT),
        Ok(got) => assert_eq!(got, want),
    }
    assert_eq!(r.bytes()[2 * BLOCK], byte(2 * BLOCK)); // read in user space: filled
    assert_eq!(send(2 * BLOCK), Ok(want));
    // SAFETY: closes the pipe made above.
    unsafe { libc::close(fds[0]) };
    // SAFETY: as above.
    unsafe { libc::close(fds[1]) };
}
