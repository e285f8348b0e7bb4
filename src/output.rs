//! What commands print: `--json` and `-q`, and stdout that survives a closed pipe.

use std::io::Write;

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

/// Writes `text` and a newline to stdout. A closed pipe (the reader went away,
/// as with `| head`) is not an error; other write failures are.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let r = out.write_all(text.as_bytes()).and_then(|_| out.write_all(b"\n")).and_then(|_| out.flush());
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to standard output")),
        Ok(()) => Ok(()),
    }
}
