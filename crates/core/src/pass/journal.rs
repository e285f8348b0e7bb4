//! Replacing the tail of a file in place, safely against a crash at any moment
//! (`rewrap --in-place`, docs/keys.md).
//!
//! The journal `.NAME.onnx-protect-tail` beside the file holds, once complete, everything
//! needed to finish the rewrite:
//!
//! ```text
//! "onnx-protect-tail-v2 START OLD_LEN NEW_LEN\n" ‖ old tail ‖ new tail ‖ SHA-256 of all before it
//! ```
//!
//! It is written whole into a private staging file, flushed, and only then given its
//! name (never replacing one), while this process holds an exclusive lock on it until it
//! is removed. The file's tail is then overwritten from `START`, the file cut to its new
//! end and flushed, and the journal removed. So a journal under its name is always
//! complete unless the disk lost what was flushed, and [`recover`], run before any new
//! rewrite, rolls a complete journal forward (writes the new tail again: the file then is
//! what the interrupted rewrite would have made) and an incomplete one back (the file was
//! never touched: the journal is removed). A journal whose file no longer matches it (the
//! file changed meanwhile) is left alone with an error that names it.
//!
//! Between the first write of the new tail and the flush, the file is neither model: a
//! reader would refuse it as modified. So every reader that opens a model through this
//! crate ([`open_protected`](crate::protection::open_protected): `decrypt`, `verify`,
//! `check`, `rekey`, `rewrap`, the C ABI) first finishes an interrupted rewrite it finds
//! ([`finish_interrupted`]): after a crash, the next access sees the rewritten model.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::{CoreError, OutputRefused, Result};
use crate::pass::crash;

const MAGIC: &str = "onnx-protect-tail-v2";

/// The journal kept beside `file` while its tail is rewritten.
pub fn journal_path(file: &Path) -> PathBuf {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    file.with_file_name(format!(".{name}.onnx-protect-tail"))
}

/// What `recover` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recovery {
    /// No journal: nothing was interrupted.
    Nothing,
    /// A complete journal: the interrupted rewrite was finished.
    RolledForward,
    /// An incomplete journal: the file had not been touched; the journal was removed.
    RolledBack,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CoreError + '_ {
    move |e| CoreError::Write { path: path.to_path_buf(), source: e }
}

/// Flushes the directory holding `path`, so that a name added or removed in it survives a
/// power failure (where directories can be opened; elsewhere a no-op).
fn sync_dir(path: &Path) {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A parsed journal: where the tail starts, the old tail and the new one.
struct Journal {
    start: u64,
    old: Vec<u8>,
    new: Vec<u8>,
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut c = onnx_protect_crypto::Checksum::new();
    c.update(b);
    c.finalize()
}

fn encode(j: &Journal) -> Vec<u8> {
    let mut out = format!("{MAGIC} {} {} {}\n", j.start, j.old.len(), j.new.len()).into_bytes();
    out.extend_from_slice(&j.old);
    out.extend_from_slice(&j.new);
    let sum = sha256(&out);
    out.extend_from_slice(&sum);
    out
}

/// The journal in `bytes`, or `None` if it is not complete (cut short, or its checksum
/// does not match).
fn decode(bytes: &[u8]) -> Option<Journal> {
    let (body, sum) = bytes.split_at(bytes.len().checked_sub(32)?);
    if sha256(body).as_slice() != sum {
        return None;
    }
    let nl = body.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&body[..nl]).ok()?;
    let mut words = line.split(' ');
    if words.next()? != MAGIC {
        return None;
    }
    let mut num = || words.next()?.parse::<u64>().ok();
    let (start, old_len, new_len) = (num()?, usize::try_from(num()?).ok()?, usize::try_from(num()?).ok()?);
    let rest = &body[nl + 1..];
    if rest.len() != old_len.checked_add(new_len)? {
        return None;
    }
    Some(Journal { start, old: rest[..old_len].to_vec(), new: rest[old_len..].to_vec() })
}

/// Whether the file `f` (of length `len`) is in a state the rewrite of `j` passes
/// through: its bytes from `j.start` each the old tail's or the new tail's, and its end
/// between the two tails' ends.
fn consistent(f: &File, len: u64, j: &Journal) -> std::io::Result<bool> {
    let (short, long) = (j.old.len().min(j.new.len()) as u64, j.old.len().max(j.new.len()) as u64);
    let Some(tail) = len.checked_sub(j.start) else { return Ok(false) };
    if tail < short || tail > long {
        return Ok(false);
    }
    let mut now = vec![0u8; tail as usize];
    onnx_protect_fsio::file::read_exact_at(f, &mut now, j.start)?;
    Ok(now.iter().enumerate().all(|(i, b)| j.old.get(i) == Some(b) || j.new.get(i) == Some(b)))
}

/// Writes `j.new` at `j.start` of `f`, cuts the file there and flushes it.
fn write_tail(f: &File, j: &Journal, path: &Path) -> Result<()> {
    let half = j.new.len() / 2;
    onnx_protect_fsio::file::write_all_at(f, &j.new[..half], j.start).map_err(io(path))?;
    crash::point("rewrap:tail-half");
    onnx_protect_fsio::file::write_all_at(f, &j.new[half..], j.start + half as u64).map_err(io(path))?;
    crash::point("rewrap:tail");
    f.set_len(j.start + j.new.len() as u64).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Finishes or undoes a rewrite of `path`'s tail that a crash interrupted (see the module
/// documentation); waits for a rewrite still running in another process to end first.
pub fn recover(path: &Path) -> Result<Recovery> {
    let jpath = journal_path(path);
    let jfile = match File::open(&jpath) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recovery::Nothing),
        Err(e) => return Err(io(&jpath)(e)),
    };
    // A live rewrite holds the lock until it has removed its journal.
    onnx_protect_fsio::file::lock_exclusive(&jfile).map_err(io(&jpath))?;
    let same = |a: &File| -> bool {
        let (Ok(x), Ok(y)) = (
            onnx_protect_fsio::file::file_id(a),
            File::open(&jpath).and_then(|f| onnx_protect_fsio::file::file_id(&f)),
        ) else {
            return false;
        };
        x == y
    };
    if !same(&jfile) {
        return Ok(Recovery::Nothing);
    }
    let bytes = std::fs::read(&jpath).map_err(io(&jpath))?;
    let Some(j) = decode(&bytes) else {
        std::fs::remove_file(&jpath).map_err(io(&jpath))?;
        sync_dir(&jpath);
        return Ok(Recovery::RolledBack);
    };
    let f = OpenOptions::new().read(true).write(true).open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    if !consistent(&f, len, &j).map_err(io(path))? {
        return Err(OutputRefused::JournalMismatch { path: path.to_path_buf(), journal: jpath }.into());
    }
    write_tail(&f, &j, path)?;
    std::fs::remove_file(&jpath).map_err(io(&jpath))?;
    sync_dir(&jpath);
    Ok(Recovery::RolledForward)
}

/// [`recover`] for a reader about to open `path`: a rewrite of its tail that a crash
/// interrupted is finished (or undone) first, so the reader sees a whole model. Only a
/// journal beside the file costs anything (one `stat` otherwise). A journal that cannot be
/// applied (the file changed since, or is not writable here) is left as it is and the file
/// read as it is: `Recovery::Nothing`.
pub fn finish_interrupted(path: &Path) -> Recovery {
    if std::fs::symlink_metadata(journal_path(path)).is_err() {
        return Recovery::Nothing;
    }
    recover(path).unwrap_or(Recovery::Nothing)
}

/// Replaces everything of `path` from `start` (its current tail, `old`) by `new`, through
/// a journal (see the module documentation). Refused if the file's tail is no longer
/// `old`, or if another rewrite of it is running.
pub fn rewrite_tail(path: &Path, start: u64, old: &[u8], new: &[u8]) -> Result<()> {
    let jpath = journal_path(path);
    let j = Journal { start, old: old.to_vec(), new: new.to_vec() };
    let dir = jpath.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    onnx_protect_fsio::stage::remove_stale_once(dir);
    let mut staged = onnx_protect_fsio::Staging::new(dir).map_err(io(&jpath))?;
    let bytes = encode(&j);
    let half = bytes.len() / 2;
    std::io::Write::write_all(staged.file_mut(), &bytes[..half]).map_err(io(&jpath))?;
    crash::point("rewrap:journal-half");
    std::io::Write::write_all(staged.file_mut(), &bytes[half..]).map_err(io(&jpath))?;
    staged.file().sync_all().map_err(io(&jpath))?;
    // Locked before it has its name, and until it is removed: `recover` waits for us.
    let lock = staged.file().try_clone().map_err(io(&jpath))?;
    onnx_protect_fsio::file::lock_exclusive(&lock).map_err(io(&jpath))?;
    staged.close_writer().map_err(io(&jpath))?;
    staged.publish(&jpath, false).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            OutputRefused::RewriteRunning { path: path.to_path_buf(), journal: jpath.clone() }.into()
        } else {
            io(&jpath)(e)
        }
    })?;
    sync_dir(&jpath);
    crash::point("rewrap:journal");
    let done = (|| {
        let f = OpenOptions::new().read(true).write(true).open(path).map_err(io(path))?;
        let len = f.metadata().map_err(io(path))?.len();
        let mut now = vec![0u8; usize::try_from(len.saturating_sub(start)).unwrap_or(usize::MAX).min(old.len() + 1)];
        onnx_protect_fsio::file::read_exact_at(&f, &mut now, start).map_err(io(path))?;
        if len != start + old.len() as u64 || now != old {
            return Err(OutputRefused::TailChanged { path: path.to_path_buf() }.into());
        }
        write_tail(&f, &j, path)
    })();
    if let Err(e) = done {
        // The file's tail is the old one (it was checked before anything was written) or
        // a write failed: the journal stays for `recover` in the latter case only.
        if matches!(e, CoreError::Output(OutputRefused::TailChanged { .. })) {
            let _ = std::fs::remove_file(&jpath);
        }
        return Err(e);
    }
    crash::point("rewrap:synced");
    std::fs::remove_file(&jpath).map_err(io(&jpath))?;
    sync_dir(&jpath);
    drop(lock);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(dir: &Path) -> (PathBuf, Journal) {
        let path = dir.join("m.bin");
        std::fs::write(&path, b"contentOLDTAIL").unwrap();
        (path, Journal { start: 7, old: b"OLDTAIL".to_vec(), new: b"newer tail!".to_vec() })
    }

    #[test]
    fn a_rewrite_replaces_the_tail_and_leaves_no_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (path, j) = setup(dir.path());
        rewrite_tail(&path, j.start, &j.old, &j.new).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"contentnewer tail!");
        assert!(!journal_path(&path).exists());
        assert_eq!(recover(&path).unwrap(), Recovery::Nothing);
        // A tail that is not the one read is not overwritten.
        let e = rewrite_tail(&path, j.start, &j.old, &j.new).unwrap_err();
        assert!(matches!(e, CoreError::Output(OutputRefused::TailChanged { .. })), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"contentnewer tail!");
        assert!(!journal_path(&path).exists());
    }

    #[test]
    fn a_complete_journal_rolls_forward_from_every_state_the_file_passes_through() {
        let dir = tempfile::tempdir().unwrap();
        let (path, j) = setup(dir.path());
        for state in [&b"contentOLDTAIL"[..], b"contentnewTAIL", b"contentnewer tail", b"contentnewer tail!"] {
            std::fs::write(&path, state).unwrap();
            std::fs::write(journal_path(&path), encode(&j)).unwrap();
            assert_eq!(recover(&path).unwrap(), Recovery::RolledForward);
            assert_eq!(std::fs::read(&path).unwrap(), b"contentnewer tail!");
            assert!(!journal_path(&path).exists());
        }
    }

    #[test]
    fn an_incomplete_journal_rolls_back_and_a_changed_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (path, j) = setup(dir.path());
        let full = encode(&j);
        for cut in [0, 10, full.len() - 1] {
            std::fs::write(journal_path(&path), &full[..cut]).unwrap();
            assert_eq!(recover(&path).unwrap(), Recovery::RolledBack);
            assert_eq!(std::fs::read(&path).unwrap(), b"contentOLDTAIL");
            assert!(!journal_path(&path).exists());
        }
        std::fs::write(&path, b"contentXXXXXXX").unwrap();
        std::fs::write(journal_path(&path), &full).unwrap();
        let e = recover(&path).unwrap_err();
        assert!(matches!(e, CoreError::Output(OutputRefused::JournalMismatch { .. })), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"contentXXXXXXX");
        assert!(journal_path(&path).exists());
    }
}
