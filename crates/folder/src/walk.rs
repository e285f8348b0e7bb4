//! Listing a folder: every regular file under it with its relative path, links and
//! special files refused.

use std::path::{Path, PathBuf};

use crate::error::{io, FolderError, Result};
use crate::path::path_problem;

/// The most files a folder may hold.
pub const MAX_FILES: usize = 1 << 16;
/// The deepest directory nesting under a folder.
pub const MAX_DEPTH: usize = 32;

/// A regular file of a folder.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// Relative to the folder, `/`-separated.
    pub rel: String,
    pub abs: PathBuf,
    pub len: u64,
}

/// Every regular file under `root`, sorted by relative path (bytes). A symbolic link, a
/// special file, a name that is not UTF-8 or not a plain relative path, more than
/// [`MAX_FILES`] files or [`MAX_DEPTH`] levels are refused.
pub(crate) fn walk(root: &Path) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    visit(root, "", 0, &mut found)?;
    found.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(found)
}

fn visit(dir: &Path, prefix: &str, depth: usize, found: &mut Vec<Found>) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(FolderError::TooLarge {
            what: format!("{prefix}: directories nest deeper than {MAX_DEPTH} levels"),
        });
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let abs = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            let shown = format!("{prefix}{}", name.to_string_lossy());
            return Err(FolderError::Name { path: shown, reason: "its name is not UTF-8" });
        };
        let rel = format!("{prefix}{name}");
        if let Some(reason) = path_problem(&rel) {
            return Err(FolderError::Name { path: rel, reason });
        }
        let meta = std::fs::symlink_metadata(&abs).map_err(io(&abs))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(FolderError::Link { path: rel });
        } else if kind.is_dir() {
            visit(&abs, &format!("{rel}/"), depth + 1, found)?;
        } else if kind.is_file() {
            if found.len() == MAX_FILES {
                return Err(FolderError::TooLarge { what: format!("the folder holds more than {MAX_FILES} files") });
            }
            found.push(Found { rel, abs, len: meta.len() });
        } else {
            return Err(FolderError::Special { path: rel });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_nested_files_in_byte_order() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("b/c")).unwrap();
        for f in ["z.txt", "b/c/x.bin", "B.json", "b/a"] {
            std::fs::write(d.path().join(f), f).unwrap();
        }
        std::fs::create_dir(d.path().join("empty")).unwrap();
        let rels: Vec<String> = walk(d.path()).unwrap().into_iter().map(|f| f.rel).collect();
        assert_eq!(rels, ["B.json", "b/a", "b/c/x.bin", "z.txt"]);
    }

    #[cfg(unix)]
    #[test]
    fn links_and_special_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.txt"), b"a").unwrap();
        std::os::unix::fs::symlink("a.txt", d.path().join("l.txt")).unwrap();
        assert!(matches!(walk(d.path()), Err(FolderError::Link { path }) if path == "l.txt"));
        std::fs::remove_file(d.path().join("l.txt")).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("..", d.path().join("sub/up")).unwrap();
        assert!(matches!(walk(d.path()), Err(FolderError::Link { path }) if path == "sub/up"));
        std::fs::remove_file(d.path().join("sub/up")).unwrap();
        let sock = std::os::unix::net::UnixListener::bind(d.path().join("s")).unwrap();
        assert!(matches!(walk(d.path()), Err(FolderError::Special { path }) if path == "s"));
        drop(sock);
    }
}
