//! Private directories for outputs that leave through standard output.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::{fresh_name_with, lock, same_file, Lock, DIR_SUFFIX};

/// A directory only its owner can enter (mode 0700 from the `mkdir` that creates it),
/// for an output that a library writes to a path but that goes to standard output.
/// It is named `.onnx-protect-<pid>-<n>-<nonce>.dir` and held under an exclusive
/// `flock` while this value lives, so that [`remove_stale`](super::remove_stale) in its
/// parent removes it, with the files in it, once the process that made it has died.
/// [`PrivateDir::take`] opens a file in it and removes every name (the file's and the
/// directory's), so that reading it leaves nothing behind whatever happens to the
/// process. Dropping it removes the files in it and the directory.
#[derive(Debug)]
pub struct PrivateDir {
    /// The open directory, which holds the lock until the directory is gone.
    _lock: File,
    path: PathBuf,
}

impl PrivateDir {
    /// Creates a private directory in `parent` (which must exist).
    pub fn new(parent: &Path) -> std::io::Result<PrivateDir> {
        for _ in 0..100 {
            let path = fresh_name_with(parent, DIR_SUFFIX);
            let mut b = std::fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            match b.create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            let handle = open_dir(&path)?;
            // A cleaner that found the directory between `mkdir` and here holds the
            // lock and removes it: try another name.
            if lock(&handle)? == Lock::Busy || !same_file(&handle, &path) {
                continue;
            }
            return Ok(PrivateDir { _lock: handle, path });
        }
        Err(std::io::Error::new(
            ErrorKind::AlreadyExists,
            format!("no free private directory name in {}", parent.display()),
        ))
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the regular file `name` in the directory for reading, then removes its name
    /// and the directory: the open file stays readable until it is closed, and no name
    /// is left (nothing to clean up even after `SIGKILL`).
    pub fn take(self, name: &str) -> std::io::Result<File> {
        let path = self.path.join(name);
        let file = open_regular(&path)?;
        std::fs::remove_file(&path)?;
        // `Drop` removes the directory (and anything else in it).
        Ok(file)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        remove_with_files(&self.path);
    }
}

/// Opens a directory (not through a symbolic link) to lock it.
fn open_dir(path: &Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_DIRECTORY | libc::O_NOFOLLOW);
    o.open(path)
}

/// Opens a regular file for reading (not through a symbolic link, never a FIFO).
fn open_regular(path: &Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let f = o.open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(ErrorKind::InvalidInput, format!("{} is not a regular file", path.display())));
    }
    Ok(f)
}

/// Removes the files and links directly in `dir` (nothing is followed), then `dir`
/// itself if that left it empty.
fn remove_with_files(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| !t.is_dir()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes the private directory at `path`, with its files, if no live process holds
/// it; returns its path if it did.
#[cfg(unix)]
pub(super) fn remove_if_stale(path: &Path) -> Option<PathBuf> {
    let handle = open_dir(path).ok()?;
    if lock(&handle).ok()? != Lock::Held || !same_file(&handle, path) {
        return None;
    }
    remove_with_files(path);
    (!path.exists()).then(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::tests::entries;
    use crate::stage::{remove_stale, PREFIX};

    #[cfg(unix)]
    #[test]
    fn a_private_directory_is_its_owners_only_and_taking_its_file_leaves_no_name() {
        use std::io::Read;
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = PrivateDir::new(parent.path()).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        std::fs::write(dir.path().join("out"), b"the output").unwrap();
        let mut f = dir.take("out").unwrap();
        assert!(entries(parent.path()).is_empty(), "{:?}", entries(parent.path()));
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        assert_eq!(text, "the output");
        // Dropped without taking: nothing left either.
        let dir = PrivateDir::new(parent.path()).unwrap();
        std::fs::write(dir.path().join("out"), b"x").unwrap();
        drop(dir);
        assert!(entries(parent.path()).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn only_the_private_directories_of_dead_processes_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        let live = PrivateDir::new(parent.path()).unwrap();
        std::fs::write(live.path().join("out"), b"in use").unwrap();
        // As a killed process leaves one: a file in it, nobody holds its lock.
        let dead = parent.path().join(format!("{PREFIX}999999-0-0{DIR_SUFFIX}"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("stdout.onnx"), b"leftover").unwrap();
        // A link named like one is not followed, and not removed.
        let target = tempfile::tempdir().unwrap();
        std::fs::write(target.path().join("keep"), b"k").unwrap();
        let link = parent.path().join(format!("{PREFIX}999998-0-0{DIR_SUFFIX}"));
        std::os::unix::fs::symlink(target.path(), &link).unwrap();
        let removed = remove_stale(parent.path()).unwrap();
        assert_eq!(removed, std::slice::from_ref(&dead));
        assert!(!dead.exists());
        assert!(live.path().join("out").exists());
        assert!(target.path().join("keep").exists());
        assert!(std::fs::symlink_metadata(&link).is_ok());
    }
}
