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

/// What a walk does with a symbolic link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Links {
    /// Refuse it (the folder being encrypted: docs/format.md §16).
    Refuse,
    /// Take a link to a regular file as that file, wherever it leads (a protected folder
    /// read from a model cache's snapshot, whose files link to blobs kept beside it); a
    /// link to anything else is refused.
    FollowToFiles,
}

/// Every regular file under `root`, sorted by relative path (bytes). A symbolic link (as
/// `links` says), a special file, a name that is not UTF-8 or not a plain relative path,
/// more than [`MAX_FILES`] files or [`MAX_DEPTH`] levels are refused.
pub(crate) fn walk(root: &Path, links: Links) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    visit(root, "", 0, links, &mut found)?;
    found.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(found)
}

fn visit(dir: &Path, prefix: &str, depth: usize, links: Links, found: &mut Vec<Found>) -> Result<()> {
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
        let mut meta = std::fs::symlink_metadata(&abs).map_err(io(&abs))?;
        if meta.file_type().is_symlink() {
            match std::fs::metadata(&abs) {
                Ok(target) if links == Links::FollowToFiles && target.is_file() => meta = target,
                _ => return Err(FolderError::Link { path: rel }),
            }
        }
        let kind = meta.file_type();
        if kind.is_dir() {
            visit(&abs, &format!("{rel}/"), depth + 1, links, found)?;
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
        let rels: Vec<String> = walk(d.path(), Links::Refuse).unwrap().into_iter().map(|f| f.rel).collect();
        assert_eq!(rels, ["B.json", "b/a", "b/c/x.bin", "z.txt"]);
    }

    #[cfg(unix)]
    #[test]
    fn links_and_special_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.txt"), b"a").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("blob"), b"blob").unwrap();
        std::os::unix::fs::symlink(outside.path().join("blob"), d.path().join("l.txt")).unwrap();
        assert!(matches!(walk(d.path(), Links::Refuse), Err(FolderError::Link { path }) if path == "l.txt"));
        // Read, a link to a regular file is that file, wherever it leads.
        let read = walk(d.path(), Links::FollowToFiles).unwrap();
        assert_eq!(read.iter().map(|f| (f.rel.as_str(), f.len)).collect::<Vec<_>>(), [("a.txt", 1), ("l.txt", 4)]);
        std::fs::remove_file(d.path().join("l.txt")).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("..", d.path().join("sub/up")).unwrap();
        for links in [Links::Refuse, Links::FollowToFiles] {
            assert!(matches!(walk(d.path(), links), Err(FolderError::Link { path }) if path == "sub/up"));
        }
        std::fs::remove_file(d.path().join("sub/up")).unwrap();
        std::os::unix::fs::symlink("missing", d.path().join("gone")).unwrap();
        assert!(matches!(walk(d.path(), Links::FollowToFiles), Err(FolderError::Link { path }) if path == "gone"));
        std::fs::remove_file(d.path().join("gone")).unwrap();
        let sock = std::os::unix::net::UnixListener::bind(d.path().join("s")).unwrap();
        assert!(matches!(walk(d.path(), Links::Refuse), Err(FolderError::Special { path }) if path == "s"));
        drop(sock);
    }
}
