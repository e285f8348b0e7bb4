//! `-` as a path: standard input or standard output.
//!
//! Commands that accept `-` read the whole model from standard input into memory
//! (a stream has no directory, so a model with external data is refused) or write
//! their output model to standard output. Every other path option refuses `-`
//! when the arguments are parsed, so no command ever creates a file named `-`
//! (`./-` still names one).

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use onnx_protect_format::Model;
use onnx_protect_fsio::{PrivateDir, Staging};

use crate::exit::usage;

/// The path `-`.
pub fn is_stdio(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// How a path is shown in messages: `standard input` for `-`.
pub fn input_name(p: &Path) -> String {
    if is_stdio(p) {
        "standard input".into()
    } else {
        p.display().to_string()
    }
}

/// clap value parser for a path where `-` means nothing: refuses it.
pub fn file_path(s: &str) -> std::result::Result<PathBuf, String> {
    if s == "-" {
        return Err(
            "'-' (standard input or output) is not accepted here; give a file name (./- names a file called '-')"
                .into(),
        );
    }
    Ok(PathBuf::from(s))
}

/// The whole of standard input; refused when it is a terminal.
pub fn read_stdin() -> Result<Vec<u8>> {
    let mut input = std::io::stdin().lock();
    if input.is_terminal() {
        usage!("'-' reads a model from standard input, which is a terminal; pipe or redirect a model into it");
    }
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).context("cannot read standard input")?;
    Ok(bytes)
}

/// The model on standard input, parsed from memory (external data is refused: a
/// stream has no directory to find it in).
pub fn read_model() -> Result<Model> {
    let bytes = read_stdin()?;
    Model::from_vec(bytes, None).context("standard input")
}

/// A model to read: the path itself, or standard input staged under `$TMPDIR` for the
/// library calls that take a path. The staged copy is an output staging file
/// ([`onnx_protect_fsio::Staging`]): mode 0600 from the system call that creates it,
/// without a name where the system allows (Linux), so that nothing is left even when the
/// process is killed; elsewhere a named file that is removed when this value is dropped,
/// or by the next run after a crash.
pub struct Input {
    path: PathBuf,
    _staged: Option<Staging>,
}

impl Input {
    /// `p`, or for `-` standard input staged as a file.
    pub fn new(p: &Path) -> Result<Input> {
        if !is_stdio(p) {
            return Ok(Input { path: p.to_path_buf(), _staged: None });
        }
        let model = read_model()?;
        Input::staged(model.bytes(), &std::env::temp_dir())
    }

    /// `bytes` staged as a private file under `tmp`.
    fn staged(bytes: &[u8], tmp: &Path) -> Result<Input> {
        onnx_protect_fsio::stage::remove_stale_once(tmp);
        let mut staged =
            Staging::new(tmp).with_context(|| format!("cannot stage standard input in {}", tmp.display()))?;
        staged
            .file_mut()
            .write_all(bytes)
            .with_context(|| format!("cannot stage standard input in {}", tmp.display()))?;
        Ok(Input { path: staged.path(), _staged: Some(staged) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The name of the output in its private directory, for `-o -`.
const STDOUT_NAME: &str = "stdout.onnx";

/// Where a command writes its output model: the path itself, or for `-` a file in a
/// private directory under `$TMPDIR` ([`onnx_protect_fsio::PrivateDir`]: mode 0700,
/// removed with its files by the next run if this process dies) that [`Output::finish`]
/// streams to standard output. The library stages the output there as it stages every
/// output (a private file without a name on Linux) and gives it its name only when it is
/// complete; `finish` removes that name before the first byte is written out, so a
/// process killed while a slow reader holds it up leaves nothing behind.
pub struct Output {
    path: PathBuf,
    staged: Option<PrivateDir>,
}

impl Output {
    /// `p`, or for `-` a staged file (standard output must not be a terminal).
    pub fn new(p: &Path) -> Result<Output> {
        if !is_stdio(p) {
            return Ok(Output { path: p.to_path_buf(), staged: None });
        }
        refuse_terminal()?;
        Output::staged_in(&std::env::temp_dir())
    }

    /// An output for standard output, staged in a private directory under `tmp`.
    fn staged_in(tmp: &Path) -> Result<Output> {
        onnx_protect_fsio::stage::remove_stale_once(tmp);
        let dir = PrivateDir::new(tmp)
            .with_context(|| format!("cannot create a private directory for the output in {}", tmp.display()))?;
        Ok(Output { path: dir.path().join(STDOUT_NAME), staged: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the output is shown in messages: its path, or `standard output`.
    pub fn name(&self) -> String {
        if self.is_stdout() {
            "standard output".into()
        } else {
            self.path.display().to_string()
        }
    }

    /// Whether the output goes to standard output.
    pub fn is_stdout(&self) -> bool {
        self.staged.is_some()
    }

    /// Copies a staged output to standard output (a closed pipe is not an error), after
    /// removing its name.
    pub fn finish(self) -> Result<()> {
        let Some(dir) = self.staged else { return Ok(()) };
        let mut f = dir.take(STDOUT_NAME).with_context(|| format!("cannot read {}", self.path.display()))?;
        let mut out = std::io::stdout().lock();
        match std::io::copy(&mut f, &mut out).and_then(|_| out.flush()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(anyhow::Error::new(e).context("cannot write to standard output"))
            }
            _ => Ok(()),
        }
    }
}

/// The output path: `-o OUTPUT`, or the input itself with `--in-place`.
pub fn output_of(input: &Path, output: &Option<PathBuf>, in_place: bool) -> Result<PathBuf> {
    if in_place && (is_stdio(input) || output.as_deref().is_some_and(is_stdio)) {
        usage!("--in-place rewrites a file; it cannot be used with '-'");
    }
    match (output, in_place) {
        (Some(o), false) => Ok(o.clone()),
        (None, true) => Ok(input.to_path_buf()),
        (Some(o), true) if o == input => Ok(o.clone()),
        (Some(_), true) => usage!("--in-place writes over the input; do not also give a different -o"),
        (None, false) => usage!("give -o OUTPUT or --in-place"),
    }
}

/// The input and output of a command that rewrites a model (`encrypt`, `rekey`):
/// `-o OUTPUT` or `--in-place`, either side may be `-`. `--json` is refused with
/// `-o -`, and so is a model with external data.
pub fn rewrite_paths(
    input: &Path,
    output: &Option<PathBuf>,
    in_place: bool,
    out: &crate::args::output::OutputArgs,
) -> Result<(Input, Output)> {
    let target = output_of(input, output, in_place)?;
    out.refuse_json_with_stdout(is_stdio(&target))?;
    let input = Input::new(input)?;
    let output = Output::new(&target)?;
    if output.is_stdout() {
        refuse_external(input.path())?;
    }
    Ok((input, output))
}

/// Refuses to write a binary model to a terminal.
pub fn refuse_terminal() -> Result<()> {
    if std::io::stdout().is_terminal() {
        usage!("'-o -' writes a binary model to standard output, which is a terminal; pipe or redirect it");
    }
    Ok(())
}

/// A model given as `-` that has external data cannot be written to standard output.
pub fn refuse_external(input: &Path) -> Result<()> {
    let model = Model::open(input).with_context(|| format!("{}", input.display()))?;
    if let Some(f) = model.external_files.first() {
        usage!(
            "{} keeps tensors in external data files ('{}'), which cannot be written to standard output; give -o FILE",
            input.display(),
            f.location
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path(), std::fs::symlink_metadata(e.path()).unwrap())
            })
            .collect()
    }

    /// The plaintext model of `encrypt -` is staged as outputs are: a file private to its
    /// owner from the system call that creates it, without a name where the system
    /// allows (so that a killed process leaves nothing), and gone once dropped.
    #[test]
    fn standard_input_is_staged_privately_and_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = b"the plaintext model".to_vec();
        let input = Input::staged(&bytes, tmp.path()).unwrap();
        assert_eq!(std::fs::read(input.path()).unwrap(), bytes);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(input.path()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "the staged copy of standard input has mode {mode:o}");
            for (path, meta) in entries(tmp.path()) {
                assert!(meta.is_file(), "{} is not a private file", path.display());
                assert_eq!(meta.permissions().mode() & 0o077, 0, "{} is readable by others", path.display());
            }
        }
        #[cfg(target_os = "linux")]
        assert!(entries(tmp.path()).is_empty(), "the staged copy has a name: {:?}", entries(tmp.path()));
        drop(input);
        assert!(entries(tmp.path()).is_empty());
    }

    /// For `-o -`, the library writes the output into a directory only its owner can
    /// enter, which is gone, with the file, once dropped (a run that fails).
    #[test]
    fn an_output_to_standard_output_is_staged_in_a_private_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let out = Output::staged_in(tmp.path()).unwrap();
        assert!(out.is_stdout());
        let dir = out.path().parent().unwrap().to_path_buf();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", dir.display());
        }
        std::fs::write(out.path(), b"the output").unwrap();
        drop(out);
        assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
    }
}
