//! What a command prints (`--json`, `-q`) and which outputs it may replace (`--force`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use onnx_protect_core::OutputRules;
use onnx_protect_format::write::check_destination;

use crate::output::emit;

/// `--json` and `-q`, shared by the commands that print a result.
#[derive(clap::Args, Clone, Copy)]
pub struct OutputArgs {
    /// Print the result as JSON on standard output instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print nothing on success and draw no progress bar (errors still go to standard error).
    #[arg(long, short, conflicts_with = "json")]
    pub quiet: bool,
}

impl OutputArgs {
    /// Prints a command's result: nothing with `-q`, `value` as JSON with `--json`,
    /// else `text`. With `stdout_taken` (the output model goes to standard output)
    /// the text goes to standard error; `--json` is refused before the command runs.
    pub fn report<T: serde::Serialize>(
        &self,
        value: &T,
        stdout_taken: bool,
        text: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        if self.quiet {
            Ok(())
        } else if self.json {
            emit(&serde_json::to_string_pretty(value)?)
        } else if stdout_taken {
            eprintln!("{}", text());
            Ok(())
        } else {
            emit(&text())
        }
    }

    /// Prints `warning: W` on standard error for a library's warning `w` (format 1's
    /// partial authentication), unless `-q`.
    pub fn warn(&self, w: Option<&str>) {
        if let (Some(w), false) = (w, self.quiet) {
            eprintln!("warning: {w}");
        }
    }

    /// A usage error when `--json` is given while standard output carries a model.
    pub fn refuse_json_with_stdout(&self, stdout_taken: bool) -> anyhow::Result<()> {
        if self.json && stdout_taken {
            crate::exit::usage!("--json prints to standard output, where '-o -' writes the model; give one of them");
        }
        Ok(())
    }
}

/// `--force`, shared by the commands that write models and other files.
#[derive(clap::Args, Clone, Copy, Default)]
pub struct WriteArgs {
    /// Replace outputs that exist (regular files only: a device, a FIFO or a socket is never replaced).
    #[arg(long)]
    pub force: bool,
}

impl WriteArgs {
    /// The rules for the library calls that stage outputs.
    pub fn rules(&self) -> OutputRules {
        OutputRules { force: self.force, make_dirs: true }
    }

    /// For a file a command writes itself: refuses a destination that is not a regular
    /// file, and an existing one without `--force`.
    pub fn check_file(&self, path: &Path) -> Result<()> {
        let d = check_destination(path).with_context(|| format!("cannot write {}", path.display()))?;
        if d.exists && !self.force {
            bail!("{} exists; pass --force to replace it", path.display());
        }
        Ok(())
    }
}
