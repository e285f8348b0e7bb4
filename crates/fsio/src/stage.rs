//! Staging files: private files in a destination's directory that become an output
//! only when they are complete.
//!
//! A [`Staging`] file is created with mode 0600 by the very system call that creates
//! it, so no other user can ever open it. On Linux it is *unnamed* (`O_TMPFILE`): it
//! has no directory entry until [`Staging::publish`] links it, so a process killed at
//! any moment (even by `SIGKILL`) leaves nothing behind; the kernel frees its blocks
//! when the descriptor closes. Where `O_TMPFILE` is not available (file systems
//! without it, such as NFS, or other systems) the file is *named*
//! `.onnx-protect-<pid>-<n>-<nonce>.tmp` and held under an exclusive `flock` for as
//! long as this process may use it; [`remove_stale`] deletes the named staging files
//! whose lock nobody holds any more, that is, those of processes that died.
//!
//! A [`PrivateDir`] is a directory for an output that leaves through another door
//! (standard output): mode 0700 from its creation, named
//! `.onnx-protect-<pid>-<n>-<nonce>.dir` and locked while this process uses it, so that
//! [`remove_stale`] removes those of dead processes with what they hold.
//!
//! Publishing never replaces what it must not: with `replace == false` the file is
//! linked (or renamed with `RENAME_NOREPLACE`) to a destination that must not exist,
//! atomically, so a file that appeared meanwhile is never overwritten.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Every named staging file (and every temporary name of an unnamed one while it is
/// being published) starts with this.
pub const PREFIX: &str = ".onnx-protect-";
/// And ends with this.
pub const SUFFIX: &str = ".tmp";
/// A [`PrivateDir`]'s name starts with [`PREFIX`] and ends with this.
pub const DIR_SUFFIX: &str = ".dir";

mod private_dir;
pub use private_dir::PrivateDir;

/// A private file being written in a destination's directory (see the module
/// documentation). Dropping it unpublished removes it.
pub struct Staging {
    file: File,
    dir: PathBuf,
    /// `None`: unnamed (`O_TMPFILE`); `Some`: its path in `dir`.
    name: Option<PathBuf>,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging").field("dir", &self.dir).field("name", &self.name).finish()
    }
}

/// A fresh name for a staging file in `dir`: unique within this process, and tagged
/// with its id for a person who lists the directory.
fn fresh_name(dir: &Path) -> PathBuf {
    fresh_name_with(dir, SUFFIX)
}

/// [`fresh_name`] ending with `suffix`.
fn fresh_name_with(dir: &Path, suffix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    dir.join(format!("{PREFIX}{}-{n}-{:x}{suffix}", std::process::id(), nonce & 0xffff_ffff))
}

impl Staging {
    /// Creates a staging file in `dir` (which must exist): unnamed where the system and
    /// the file system allow it, named and locked otherwise.
    pub fn new(dir: &Path) -> std::io::Result<Staging> {
        #[cfg(target_os = "linux")]
        if let Some(s) = Staging::unnamed(dir)? {
            return Ok(s);
        }
        Staging::named(dir)
    }

    /// An unnamed file in `dir`, or `None` where that is not possible here (the file
    /// system or the kernel has no `O_TMPFILE`, or `/proc` is missing, through which
    /// it is linked).
    #[cfg(target_os = "linux")]
    fn unnamed(dir: &Path) -> std::io::Result<Option<Staging>> {
        use std::os::unix::fs::OpenOptionsExt;
        if !Path::new("/proc/self/fd").is_dir() {
            return Ok(None);
        }
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(dir);
        match opened {
            Ok(file) => {
                // Locked like a named file, so that the name it has for a moment while
                // it replaces a file (see `publish`) is never taken for a stale one.
                if lock(&file)? == Lock::Busy {
                    return Err(std::io::Error::other("a new unnamed file is locked by another process"));
                }
                Ok(Some(Staging { file, dir: dir.to_path_buf(), name: None }))
            }
            // No O_TMPFILE on this file system (EOPNOTSUPP), or a kernel that does not
            // know the flag and took it for O_DIRECTORY (EISDIR), or refuses it (EINVAL).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A named staging file in `dir`, created with mode 0600 and locked before anyone
    /// could take it for a stale one (a removal between its creation and its lock is
    /// detected, and another name is tried).
    pub fn named(dir: &Path) -> std::io::Result<Staging> {
        for _ in 0..100 {
            let path = fresh_name(dir);
            let mut opts = std::fs::OpenOptions::new();
            opts.read(true).write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let file = match opts.open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            // A cleaner that found the file between `open` and here holds the lock and
            // removes it: try another name.
            if lock(&file)? == Lock::Busy || !same_file(&file, &path) {
                drop(file);
                continue;
            }
            return Ok(Staging { file, dir: dir.to_path_buf(), name: Some(path) });
        }
        Err(std::io::Error::new(ErrorKind::AlreadyExists, format!("no free staging file name in {}", dir.display())))
    }

    /// Whether the file has no name (it vanishes with the process).
    pub fn is_unnamed(&self) -> bool {
        self.name.is_none()
    }

    /// The path of a named staging file.
    pub fn name(&self) -> Option<&Path> {
        self.name.as_deref()
    }

    /// A path that opens this very file while it is alive: its name, or for an unnamed
    /// file `/proc/self/fd/N` (this process's descriptor), for a reader that takes a path.
    pub fn path(&self) -> PathBuf {
        match &self.name {
            Some(name) => name.clone(),
            #[cfg(unix)]
            None => {
                use std::os::fd::AsRawFd;
                PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
            }
            #[cfg(not(unix))]
            None => self.dir.clone(),
        }
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The open file, to write through `std::io::Write`.
    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Closes the descriptor that wrote the file and reports the error `close` gives
    /// (network file systems may report a failed write only there), while keeping the
    /// file open (and locked) through a duplicate until it is published. A no-op for an
    /// unnamed file, whose file systems report write errors at the write or `fsync`.
    pub fn close_writer(&mut self) -> std::io::Result<()> {
        if self.name.is_none() {
            return Ok(());
        }
        let keep = self.file.try_clone()?;
        let writer = std::mem::replace(&mut self.file, keep);
        crate::file::close_checked(writer)
    }

    /// Gives the file the name `dest` (in the staging file's directory). With
    /// `replace`, an existing `dest` is replaced atomically (a rename); without, `dest`
    /// must not exist, and a file that exists there (even one that appeared while this
    /// one was written) is never touched: the error has kind
    /// [`ErrorKind::AlreadyExists`].
    pub fn publish(mut self, dest: &Path, replace: bool) -> std::io::Result<()> {
        match self.name.take() {
            Some(name) => {
                let done = if replace { std::fs::rename(&name, dest) } else { rename_noreplace(&name, dest) };
                if done.is_err() {
                    // Removed by `Drop`.
                    self.name = Some(name);
                }
                done
            }
            None if !replace => link_unnamed(&self.file, dest),
            None => {
                // A link cannot replace a file: link under a fresh name (this process's
                // lock keeps cleaners away from it), then rename that over `dest`.
                let tmp = loop {
                    let tmp = fresh_name(&self.dir);
                    match link_unnamed(&self.file, &tmp) {
                        Ok(()) => break tmp,
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(e),
                    }
                };
                std::fs::rename(&tmp, dest).inspect_err(|_| {
                    let _ = std::fs::remove_file(&tmp);
                })
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(name) = &self.name {
            let _ = std::fs::remove_file(name);
        }
    }
}

/// Whether the open `file` is the file at `path` (same device and inode).
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

/// What [`lock`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock {
    /// This descriptor now holds the exclusive lock.
    Held,
    /// Another open file holds it.
    Busy,
    /// The file system (or the system) has no locks: nothing to coordinate with, so no
    /// stale file can be told from a live one there; [`remove_stale`] removes nothing.
    Unsupported,
}

/// Tries to take an exclusive `flock` on `file` without waiting.
#[cfg(unix)]
fn lock(file: &File) -> std::io::Result<Lock> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: the descriptor belongs to `file`, borrowed (open) for the whole call;
        // no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Lock::Held);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(Lock::Busy),
            Some(libc::ENOLCK | libc::EOPNOTSUPP) => return Ok(Lock::Unsupported),
            _ => return Err(e),
        }
    }
}

#[cfg(not(unix))]
fn lock(_file: &File) -> std::io::Result<Lock> {
    Ok(Lock::Unsupported)
}

/// Links an unnamed (`O_TMPFILE`) file to `dest`, which must not exist.
#[cfg(target_os = "linux")]
fn link_unnamed(file: &File, dest: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    let to = std::ffi::CString::new(dest.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    loop {
        // SAFETY: both pointers are NUL-terminated strings owned by this frame, alive for
        // the whole call; the descriptor named by `from` belongs to `file`, borrowed
        // (open) for the whole call. linkat reads the strings and writes no user memory.
        let r = unsafe {
            libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW)
        };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn link_unnamed(_file: &File, _dest: &Path) -> std::io::Result<()> {
    Err(ErrorKind::Unsupported.into())
}

/// Renames `from` to `to` unless `to` exists (then [`ErrorKind::AlreadyExists`] and
/// nothing changes): `renameat2(RENAME_NOREPLACE)`, or where the file system lacks it,
/// a hard link (which fails on an existing name) and the removal of `from`.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let cstr = |p: &Path| {
            std::ffi::CString::new(p.as_os_str().as_bytes())
                .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "a path with a NUL byte"))
        };
        let (a, b) = (cstr(from)?, cstr(to)?);
        loop {
            // SAFETY: both pointers are NUL-terminated strings owned by this frame, alive
            // for the whole call; the call reads them and writes no user memory.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_renameat2,
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    libc::RENAME_NOREPLACE,
                )
            };
            if r == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => break,
                _ => return Err(e),
            }
        }
    }
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

/// Removes the named staging files in `dir` that no live process holds (their lock is
/// free: the process that made them died), and the [`PrivateDir`]s of dead processes
/// with the files in them, and returns their paths. Those of live processes, and
/// entries of any other type (a directory with a staging file's name, a link), are left
/// alone.
#[cfg(unix)]
pub fn remove_stale(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(s) = name.to_str() else { continue };
        if !s.starts_with(PREFIX) {
            continue;
        }
        if s.ends_with(DIR_SUFFIX) && entry.file_type().is_ok_and(|t| t.is_dir()) {
            removed.extend(private_dir::remove_if_stale(&entry.path()));
            continue;
        }
        if !s.ends_with(SUFFIX) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        let Ok(file) =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path)
        else {
            continue;
        };
        // Locked and still the file at that name: nobody uses it any more (a process
        // that creates a file checks, once it holds the lock, that its name is still
        // its own, and starts over if it is not).
        if matches!(lock(&file), Ok(Lock::Held)) && same_file(&file, &path) && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Removes stale staging files: nothing to do on systems without `flock`.
#[cfg(not(unix))]
pub fn remove_stale(_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(Vec::new())
}

/// [`remove_stale`] for `dir`, once per process and directory (the first staging file
/// made there runs it); errors are ignored, as the clean-up is only a courtesy.
pub fn remove_stale_once(dir: &Path) {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock, PoisonError};
    static DONE: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let first = DONE.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner).insert(key);
    if first {
        let _ = remove_stale(dir);
    }
}

/// The permission bits this process gives a new file created with mode 0666: 0666
/// less the process's umask (read from `/proc/self/status` on Linux; elsewhere by
/// setting a restrictive umask for an instant and restoring it).
#[cfg(unix)]
pub fn new_file_mode() -> u32 {
    0o666 & !umask()
}

#[cfg(unix)]
fn umask() -> u32 {
    #[cfg(target_os = "linux")]
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(v) = status.lines().find_map(|l| l.strip_prefix("Umask:")) {
            if let Ok(m) = u32::from_str_radix(v.trim(), 8) {
                return m & 0o777;
            }
        }
    }
    // SAFETY: umask only swaps the process's file-creation mask; no memory is passed.
    // For the instant between the two calls, files other threads create get the
    // restrictive mask 0077, never a wider one.
    let old = unsafe { libc::umask(0o077) };
    // SAFETY: as above; this restores the original mask.
    unsafe { libc::umask(old) };
    // `mode_t` is `u32` on Linux and narrower on some other systems.
    #[allow(clippy::useless_conversion)]
    let old = u32::from(old);
    old & 0o777
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The names in `dir`, sorted.
    pub(super) fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[cfg(unix)]
    fn mode(f: &File) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        f.metadata().unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn an_unnamed_staging_file_is_invisible_until_published() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Staging::new(dir.path()).unwrap();
        #[cfg(target_os = "linux")]
        assert!(s.is_unnamed(), "ext4, xfs, btrfs and tmpfs have O_TMPFILE");
        s.file_mut().write_all(b"payload").unwrap();
        #[cfg(unix)]
        assert_eq!(mode(s.file()), 0o600);
        if s.is_unnamed() {
            assert!(entries(dir.path()).is_empty());
        }
        s.close_writer().unwrap();
        let dest = dir.path().join("out.bin");
        s.publish(&dest, false).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"payload");
        assert_eq!(entries(dir.path()), ["out.bin"]);
    }

    #[test]
    fn the_path_of_a_staging_file_opens_it_named_or_not() {
        let dir = tempfile::tempdir().unwrap();
        for mut s in [Staging::new(dir.path()).unwrap(), Staging::named(dir.path()).unwrap()] {
            s.file_mut().write_all(b"staged").unwrap();
            assert_eq!(std::fs::read(s.path()).unwrap(), b"staged", "{s:?}");
        }
    }

    #[test]
    fn a_dropped_staging_file_leaves_nothing_named_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Staging::new(dir.path()).unwrap();
        let mut b = Staging::named(dir.path()).unwrap();
        a.file_mut().write_all(b"x").unwrap();
        b.file_mut().write_all(b"y").unwrap();
        assert!(!b.is_unnamed());
        #[cfg(unix)]
        assert_eq!(mode(b.file()), 0o600);
        assert_eq!(entries(dir.path()).len(), usize::from(a.name().is_some()) + 1);
        drop((a, b));
        assert!(entries(dir.path()).is_empty());
    }

    #[test]
    fn publishing_without_replace_never_touches_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("taken");
        for named in [false, true] {
            std::fs::write(&dest, b"keep me").unwrap();
            let mut s = if named { Staging::named(dir.path()).unwrap() } else { Staging::new(dir.path()).unwrap() };
            s.file_mut().write_all(b"new").unwrap();
            let e = s.publish(&dest, false).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::AlreadyExists, "named: {named}");
            assert_eq!(std::fs::read(&dest).unwrap(), b"keep me");
            assert_eq!(entries(dir.path()), ["taken"], "named: {named}");
            // With replace, the file is swapped whole.
            let mut s = if named { Staging::named(dir.path()).unwrap() } else { Staging::new(dir.path()).unwrap() };
            s.file_mut().write_all(b"new").unwrap();
            s.close_writer().unwrap();
            s.publish(&dest, true).unwrap();
            assert_eq!(std::fs::read(&dest).unwrap(), b"new");
            assert_eq!(entries(dir.path()), ["taken"], "named: {named}");
            std::fs::remove_file(&dest).unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn only_the_staging_files_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A live one (this process holds its lock).
        let live = Staging::named(dir.path()).unwrap();
        // A dead one: a file with a staging name that nobody locks, as a killed process
        // leaves it.
        let dead = dir.path().join(format!("{PREFIX}999999-0-0{SUFFIX}"));
        std::fs::write(&dead, b"leftover").unwrap();
        // Not ours by name, and a directory with a staging name: left alone.
        std::fs::write(dir.path().join("model.onnx"), b"m").unwrap();
        std::fs::create_dir(dir.path().join(format!("{PREFIX}dir{SUFFIX}"))).unwrap();
        let removed = remove_stale(dir.path()).unwrap();
        assert_eq!(removed, std::slice::from_ref(&dead));
        assert!(!dead.exists());
        assert!(live.name().unwrap().exists());
        let mut left = entries(dir.path());
        left.retain(|n| !n.starts_with(".onnx-protect-") || n.ends_with("dir.tmp"));
        assert_eq!(left, [format!("{PREFIX}dir{SUFFIX}"), "model.onnx".to_string()]);
        drop(live);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn staging_on_tmpfs_is_unnamed_too() {
        if !Path::new("/dev/shm").is_dir() {
            return;
        }
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let mut s = Staging::new(dir.path()).unwrap();
        assert!(s.is_unnamed());
        s.file_mut().write_all(b"shm").unwrap();
        assert!(entries(dir.path()).is_empty());
        s.publish(&dir.path().join("o"), false).unwrap();
        assert_eq!(entries(dir.path()), ["o"]);
    }

    /// A lock held by another process (`flock --no-fork FILE sleep`, util-linux) keeps its file; once
    /// that process is killed, the file is stale and removed.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_locked_by_a_live_process_stays_and_goes_when_it_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{PREFIX}12345-0-abc{SUFFIX}"));
        std::fs::write(&path, b"in use").unwrap();
        let Ok(mut child) =
            std::process::Command::new("flock").arg("--no-fork").arg(&path).args(["sleep", "600"]).spawn()
        else {
            panic!("util-linux flock is needed for this test");
        };
        // Wait until the child holds the lock (a probe that gets it lets it go again).
        loop {
            let probe = File::open(&path).unwrap();
            if lock(&probe).unwrap() == Lock::Busy {
                break;
            }
            drop(probe);
            assert!(child.try_wait().unwrap().is_none(), "flock exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(remove_stale(dir.path()).unwrap().is_empty());
        assert!(path.exists());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(remove_stale(dir.path()).unwrap(), std::slice::from_ref(&path));
        assert!(!path.exists());
    }

    #[cfg(unix)]
    #[test]
    fn new_files_get_0666_less_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o666);
        let f = o.open(dir.path().join("probe")).unwrap();
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, new_file_mode());
    }
}
