//! The rules of every command that writes files: `--force` replaces existing outputs
//! (regular files only), `--mkdir` (`-p`) creates a missing output directory
//! (docs/cli.md, "Outputs").

use std::path::Path;

use anyhow::{bail, Context, Result};
use onnx_protect_core::OutputRules;
use onnx_protect_format::write::check_destination;

/// `--force` and `--mkdir`, shared by the commands that write models and other files.
#[derive(clap::Args, Clone, Copy, Default)]
pub struct WriteArgs {
    /// Replace outputs that exist (regular files only: a device, a FIFO or a socket is never replaced).
    #[arg(long)]
    pub force: bool,
    /// Create the output directory (and its parents) if it is missing.
    #[arg(long, short = 'p')]
    pub mkdir: bool,
}

impl WriteArgs {
    /// The rules for the library calls that stage outputs.
    pub fn rules(&self) -> OutputRules {
        OutputRules { force: self.force, make_dirs: self.mkdir }
    }

    /// For a file a command writes itself: refuses a destination that is not a regular
    /// file, an existing one without `--force`, and a missing directory without
    /// `--mkdir` (with it, the directory is created).
    pub fn check_file(&self, path: &Path) -> Result<()> {
        let d = check_destination(path).with_context(|| format!("cannot write {}", path.display()))?;
        if d.exists && !self.force {
            bail!("{} exists; pass --force to replace it", path.display());
        }
        let dir = d.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        self.dir(dir)
    }

    /// For a directory a command writes into: it must exist, or is created with
    /// `--mkdir`.
    pub fn dir(&self, dir: &Path) -> Result<()> {
        mkdir_rule(dir, self.mkdir)
    }
}

/// A missing `dir` is created with `mkdir`, refused without it; anything there that is
/// not a directory is refused.
pub fn mkdir_rule(dir: &Path, mkdir: bool) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        bail!("{} is not a directory", dir.display());
    }
    if !mkdir {
        bail!("the output directory {} does not exist; create it, or pass --mkdir", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}
