//! The rules of every command that writes files (docs/cli.md, "Outputs"): only regular
//! files are ever replaced, an existing one only with `--force`; a missing output
//! directory is created, and a note says so on standard error (not with `-q`). `--force`:
//! `args::output::WriteArgs`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The directory of an output file.
pub fn dir_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// `dir` if it does not exist yet (the command will create it), for [`note_created`].
pub fn missing(dir: &Path) -> Option<PathBuf> {
    (!dir.exists()).then(|| dir.to_path_buf())
}

/// Says on standard error that the command created `dir` (unless `quiet`), once the
/// command has succeeded and the directory is there.
pub fn note_created(dir: Option<PathBuf>, quiet: bool) {
    if let Some(d) = dir.filter(|d| d.is_dir()) {
        if !quiet {
            eprintln!("note: created directory {}", d.display());
        }
    }
}

/// Creates `dir` (and its parents) if it is missing, with the note; anything there that
/// is not a directory is refused.
pub fn create_dir(dir: &Path, quiet: bool) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        bail!("{} is not a directory", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    note_created(Some(dir.to_path_buf()), quiet);
    Ok(())
}
