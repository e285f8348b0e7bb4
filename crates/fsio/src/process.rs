//! Ending a process group.

/// Sends `SIGKILL` to every process of the process group `pgid` (a child started
/// with `CommandExt::process_group(0)` leads the group whose id is its pid). A group
/// that no longer exists is not an error.
#[cfg(unix)]
pub fn kill_group(pgid: u32) -> std::io::Result<()> {
    let Ok(id) = libc::pid_t::try_from(pgid) else {
        return Err(std::io::Error::other("process group id out of range"));
    };
    if id <= 0 {
        // kill(0) and kill(-1) would reach this process's own group, or every process.
        return Err(std::io::Error::other("not a process group id"));
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of this process;
    // a negative pid names the process group `id`, and `id > 0` was checked above.
    let rc = unsafe { libc::kill(-id, libc::SIGKILL) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(e)
    }
}

/// Without process groups: nothing to do beyond killing the child itself.
#[cfg(not(unix))]
pub fn kill_group(_pgid: u32) -> std::io::Result<()> {
    Ok(())
}

/// Ends this process at once with `SIGKILL`, as `kill -9` would: no destructor, no
/// buffered write, no clean-up runs. For tests that check what a killed process leaves.
#[cfg(unix)]
pub fn kill_this_process() -> ! {
    // SAFETY: kill(2) takes plain integers and touches no memory of this process; it
    // targets this process only (getpid() > 0).
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL cannot be caught; this is not reached.
    std::process::abort()
}

/// Ends this process at once (`abort`: no destructor or clean-up runs).
#[cfg(not(unix))]
pub fn kill_this_process() -> ! {
    std::process::abort()
}
