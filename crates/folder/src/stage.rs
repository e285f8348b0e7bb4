//! An output folder that appears whole or not at all: built in a sibling directory and
//! renamed into place at the end; removed on any error.

use std::path::{Path, PathBuf};

use crate::error::{io, FolderError, Result};

/// A staging directory beside the output.
pub(crate) struct Staging {
    dir: PathBuf,
    out: PathBuf,
    done: bool,
}

/// Refuses an output that is neither missing nor an empty directory, has no parent
/// directory, or lies inside `input` (a folder, canonical).
pub(crate) fn check_output(input: &Path, out: &Path) -> Result<()> {
    let refuse = |reason| Err(FolderError::Output { path: out.to_path_buf(), reason });
    match std::fs::symlink_metadata(out) {
        Ok(m) if !m.is_dir() => return refuse("exists and is not a directory"),
        Ok(_) => {
            if std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
                return refuse("exists and is not empty");
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(FolderError::Io { path: out.to_path_buf(), source: e }),
    }
    if out.file_name().is_none() {
        return refuse("names no directory");
    }
    let parent = parent_of(out);
    let Ok(parent) = parent.canonicalize() else { return refuse("its parent directory does not exist") };
    if parent.starts_with(input) {
        return refuse("is inside the input folder");
    }
    Ok(())
}

fn parent_of(out: &Path) -> &Path {
    out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

impl Staging {
    /// A new, empty staging directory beside `out` (`.NAME.onnx-protect-XXXXXXXX`).
    pub(crate) fn new(out: &Path) -> Result<Staging> {
        let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = parent_of(out);
        loop {
            let mut r = [0u8; 4];
            getrandom::getrandom(&mut r).map_err(|e| FolderError::Io { path: out.to_path_buf(), source: e.into() })?;
            let suffix: String = r.iter().map(|b| format!("{b:02x}")).collect();
            let dir = parent.join(format!(".{name}.onnx-protect-{suffix}"));
            match std::fs::DirBuilder::new().create(&dir) {
                Ok(()) => return Ok(Staging { dir, out: out.to_path_buf(), done: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(FolderError::Io { path: dir, source: e }),
            }
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path under the staging directory of `rel`, its parent directories created.
    pub(crate) fn place(&self, rel: &str) -> Result<PathBuf> {
        let path = self.dir.join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(io(p))?;
        }
        Ok(path)
    }

    /// Renames the staging directory to the output (which may be an empty directory).
    pub(crate) fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.dir, &self.out).map_err(io(&self.out))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_appear_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("in")).unwrap();
        let input = d.path().join("in").canonicalize().unwrap();
        let out = d.path().join("out");
        check_output(&input, &out).unwrap();
        {
            let s = Staging::new(&out).unwrap();
            std::fs::write(s.place("a/b.txt").unwrap(), b"x").unwrap();
        }
        // Dropped without commit: nothing is left beside the input.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let s = Staging::new(&out).unwrap();
        std::fs::write(s.place("a/b.txt").unwrap(), b"x").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read(out.join("a/b.txt")).unwrap(), b"x");
        assert!(check_output(&input, &out).is_err(), "a folder that is not empty");
        std::fs::create_dir(d.path().join("empty")).unwrap();
        check_output(&input, &d.path().join("empty")).unwrap();
        assert!(check_output(&input, &input.join("sub")).is_err(), "inside the input");
        assert!(check_output(&input, &out.join("a/b.txt")).is_err(), "a file");
        assert!(check_output(&input, &d.path().join("none/out")).is_err(), "no parent");
    }
}
