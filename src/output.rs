//! Standard output that survives a closed pipe (`--json` and `-q`: `args::output`).

use std::io::Write;

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
