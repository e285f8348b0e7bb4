//! What a command prints (`--json`, `-q`) and which outputs it may replace (`--force`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use onnx_protect_core::OutputRules;
use onnx_protect_format::write::check_destination;

use crate::output::emit;

/// The protected model whose manifest a command rewrites (`rewrap`, `sign`) and where the
/// result goes (the command's own `--in-place` makes `-o` optional).
#[derive(clap::Args)]
pub struct EntryArgs {
    /// The protected model (format 2).
    pub input: PathBuf,
    /// Where to write the changed model (external data files are copied next to it).
    #[arg(short, long, required_unless_present = "in_place", value_parser = crate::stdio::file_path)]
    pub output: Option<PathBuf>,
}

impl EntryArgs {
    /// The output path: `-o`, else the input (`--in-place`).
    pub fn target(&self) -> PathBuf {
        self.output.clone().unwrap_or_else(|| self.input.clone())
    }
}

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
