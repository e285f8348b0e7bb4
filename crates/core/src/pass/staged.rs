//! Output files that appear whole or not at all, and the rules every output obeys.
//!
//! Every output (the model file and its external data files) is written to a private
//! staging file in its destination's directory ([`StagedOutput`]: mode 0600 from its
//! creation, unnamed on Linux so that a killed process leaves nothing) and published
//! under its name only when all of them are complete, the model file last; a failure
//! at any point drops every staging file and removes every directory made for them.
//!
//! Before anything is staged, [`check_output`] applies the rules of [`OutputRules`]:
//! only regular files are ever replaced (never a device such as `/dev/null`, a FIFO or
//! a socket), an existing output only with `force` (or `in_place`), a missing output
//! directory is created only with `make_dirs`, no two outputs are the same file, no
//! output is an input file unless `in_place`, and a model whose tensors share bytes of
//! an external file is never encrypted.

use std::path::{Path, PathBuf};

use onnx_protect_format::write::{check_destination, Destination, StagedOutput};
use onnx_protect_format::Model;

use crate::error::{CoreError, OutputRefused, Result};
use crate::pass::Out;

/// How a command may treat the places it writes its outputs to (the model file and its
/// external data files). The default refuses to replace an existing file and creates a
/// missing output directory (a program names its paths itself; the command line asks
/// for `--mkdir`, so that a mistyped directory is not created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputRules {
    /// Replace outputs that exist. Only regular files are ever replaced: a device, a
    /// FIFO or a socket is refused whatever this says. Writing `in_place` replaces the
    /// input without it.
    pub force: bool,
    /// Create the output's directory, and its parents, when it is missing. Directories
    /// that external data locations name inside the output's directory (`sub/w.bin`)
    /// are part of the output and always created.
    pub make_dirs: bool,
}

impl Default for OutputRules {
    fn default() -> Self {
        OutputRules { force: false, make_dirs: true }
    }
}

/// Output files staged next to their destinations; nothing is visible until
/// [`Staged::commit`], and dropping it leaves nothing.
pub(crate) struct Staged {
    files: Vec<StagedOutput>,
    /// Directories created for the outputs, outermost first: removed again (when
    /// empty) if the outputs are dropped, so a failed run leaves nothing behind.
    created: Vec<PathBuf>,
}

impl Staged {
    pub(crate) fn new() -> Staged {
        Staged { files: Vec::new(), created: Vec::new() }
    }

    /// Stages an output for `dest` (through a symbolic link: for the file it points to).
    pub(crate) fn create(&mut self, dest: &Path) -> Result<usize> {
        // The directories this creates (StagedOutput::new creates the missing ones).
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut missing: Vec<PathBuf> =
            dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).map(Path::to_path_buf).collect();
        missing.reverse();
        let out = StagedOutput::new(dest).map_err(|e| CoreError::Write { path: dest.to_path_buf(), source: e })?;
        self.created.extend(missing);
        self.files.push(out);
        Ok(self.files.len() - 1)
    }

    /// The open staging file of output `i`, and its destination.
    pub(crate) fn out(&self, i: usize) -> Out<'_> {
        Out { file: self.files[i].file(), dest: self.files[i].dest() }
    }

    /// Publishes every file, the last one staged (the model) last, after giving each
    /// its final permission bits (staged files are private until then); with `durable`,
    /// flushes each to the disk (`fsync`) first. Every writer is closed, and the close
    /// checked, before the first file is published: network file systems (NFS) may
    /// report a failed write only there, and `cp` checks it too. A destination that had
    /// no file when staging began is never replaced by one that appeared meanwhile.
    pub(crate) fn commit(mut self, durable: bool) -> Result<()> {
        for f in &mut self.files {
            let dest = f.dest().to_path_buf();
            f.finish(durable).map_err(|e| CoreError::Write { path: dest, source: e })?;
        }
        for f in std::mem::take(&mut self.files) {
            let dest = f.dest().to_path_buf();
            f.publish().map_err(|e| CoreError::Write { path: dest, source: e })?;
            // Something is in place: the directories stay.
            self.created.clear();
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // The staging files first, then the directories made for them, innermost
        // first (`remove_dir` leaves any that something else has filled meanwhile).
        self.files.clear();
        for d in self.created.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The staged outputs of a pass: the external data files, then the model file, in the
/// order of the pass's streams.
pub(crate) struct Outputs {
    pub(crate) staged: Staged,
    /// Destination paths of the external data files.
    pub(crate) external: Vec<PathBuf>,
}

impl Outputs {
    /// Stages `output` and the external data files next to it (each private to its
    /// owner until published; nothing is left when dropped uncommitted).
    pub(crate) fn stage(model: &Model, output: &Path) -> Result<Outputs> {
        Outputs::stage_as(model, output, None)
    }

    /// [`Outputs::stage`], the external data files under `names` (one per file) instead
    /// of their locations.
    pub(crate) fn stage_as(model: &Model, output: &Path, names: Option<&[String]>) -> Result<Outputs> {
        let mut staged = Staged::new();
        let external = destinations_as(model, output, names);
        for dest in &external {
            staged.create(dest)?;
        }
        // The model file is staged last, so it is published last.
        staged.create(output)?;
        Ok(Outputs { staged, external })
    }

    /// The staged files in covered-file order (docs/format.md §9): the model, then each
    /// external data file.
    pub(crate) fn covered_files(&self) -> Vec<Option<Out<'_>>> {
        let n = self.external.len();
        std::iter::once(n).chain(0..n).map(|i| Some(self.staged.out(i))).collect()
    }
}

/// The path of each external data file of `model` when the model is written to
/// `output`: its `location`, in the output's directory.
pub(crate) fn external_destinations(model: &Model, output: &Path) -> Vec<PathBuf> {
    destinations_as(model, output, None)
}

/// [`external_destinations`] under `names` (one per external data file), if given.
fn destinations_as(model: &Model, output: &Path, names: Option<&[String]>) -> Vec<PathBuf> {
    let out_dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match names {
        Some(names) => names.iter().map(|n| out_dir.join(n)).collect(),
        None => model.external_files.iter().map(|f| out_dir.join(&f.location)).collect(),
    }
}

/// The names the external data files of `model` (about to be encrypted from `input`
/// into `output`) get next to the output: `None` (their own) unless the output goes
/// into the input's directory (without `in_place`), where the protected copy's files
/// need names of their own: `OUTPUT.data` for one file, `OUTPUT.1.data`, `OUTPUT.2.data`,
/// ... for several (docs/format.md §3, `original_external_files`).
pub(crate) fn protected_names(model: &Model, output: &Path, in_place: bool) -> Result<Option<Vec<String>>> {
    if model.external_files.is_empty() || in_place {
        return Ok(None);
    }
    let out_dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let in_dir = model.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    match (std::fs::canonicalize(&in_dir), std::fs::canonicalize(out_dir)) {
        (Ok(a), Ok(b)) if a == b => {}
        _ => return Ok(None),
    }
    let Some(base) = output.file_name().and_then(|n| n.to_str()) else {
        return Err(OutputRefused::NonUtf8Name { path: output.to_path_buf() }.into());
    };
    let n = model.external_files.len();
    Ok(Some((1..=n).map(|i| if n == 1 { format!("{base}.data") } else { format!("{base}.{i}.data") }).collect()))
}

/// Which file a path names, for telling two outputs (or an output and an input) apart:
/// an existing file by its device and inode (hard links and case-insensitive names
/// included), a new one by its canonical directory and name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileKey {
    Inode(u64, u64),
    Path(PathBuf),
}

fn key_of_existing(path: &Path) -> Option<FileKey> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(FileKey::Inode(m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        std::fs::canonicalize(path).ok().map(FileKey::Path)
    }
}

fn key_of(d: &Destination) -> FileKey {
    if d.exists {
        if let Some(k) = key_of_existing(&d.path) {
            return k;
        }
    }
    let dir = d.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    FileKey::Path(d.path.file_name().map(|n| dir.join(n)).unwrap_or(dir))
}

/// Refuses, before anything is written, an output that would break a rule of
/// [`OutputRules`] or overwrite data (see the module documentation): the input
/// without `in_place`; the external data files of the output over those of the input;
/// a destination that is not a regular file; an existing file without `force`; a
/// missing output directory without `make_dirs`; an external data location that would
/// be written over the output model or over another output; for a model about to be
/// encrypted (no manifest), tensors that share bytes of an external file.
pub(crate) fn check_output(
    model: &Model,
    input: &Path,
    output: &Path,
    in_place: bool,
    rules: &OutputRules,
) -> Result<()> {
    check_output_as(model, input, output, in_place, rules, None)
}

/// [`check_output`] for external data files written under `names` (one per file) next
/// to the output instead of their own locations.
pub(crate) fn check_output_as(
    model: &Model,
    input: &Path,
    output: &Path,
    in_place: bool,
    rules: &OutputRules,
    names: Option<&[String]>,
) -> Result<()> {
    let same = match (std::fs::canonicalize(input), std::fs::canonicalize(output)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same && !in_place {
        return Err(OutputRefused::IsInput { path: output.to_path_buf() }.into());
    }
    let out_dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let (true, Some(n)) = (in_place, names) {
        let renames = model.external_files.iter().zip(n).map(|(f, n)| (f.location.clone(), n.clone())).collect();
        return Err(OutputRefused::RenamedInPlace { renames }.into());
    }
    if !model.external_files.is_empty() && !in_place && names.is_none() {
        let in_dir = model.dir.clone().unwrap_or_else(|| PathBuf::from("."));
        if let (Ok(a), Ok(b)) = (std::fs::canonicalize(&in_dir), std::fs::canonicalize(out_dir)) {
            if a == b {
                return Err(OutputRefused::ExternalInInputDir { dir: a }.into());
            }
        }
    }
    if !in_place && !rules.make_dirs && !out_dir.is_dir() {
        return Err(OutputRefused::NoDirectory { dir: out_dir.to_path_buf() }.into());
    }
    if model.metadata.iter().all(|m| !crate::metadata::is_manifest_key(&m.key)) {
        if let Some((a, b)) = model.shared_external_bytes() {
            let (first, second) = (model.tensors[a].name.clone(), model.tensors[b].name.clone());
            return Err(OutputRefused::SharedExternal { first, second }.into());
        }
    }
    // Every destination: what it is now, and which file it names.
    let mut dests = destinations_as(model, output, names);
    let labels: Vec<&str> = match names {
        Some(n) => n.iter().map(String::as_str).collect(),
        None => model.external_files.iter().map(|f| f.location.as_str()).collect(),
    };
    let locations = labels.iter().map(|l| format!("external data file '{l}'"));
    let names: Vec<String> = locations.chain(std::iter::once("output model".to_string())).collect();
    dests.push(output.to_path_buf());
    let mut keys: Vec<(FileKey, &str)> = Vec::with_capacity(dests.len());
    let inputs: Vec<FileKey> = std::iter::once(input.to_path_buf())
        .chain(model.external_files.iter().map(|f| f.path.clone()))
        .filter_map(|p| key_of_existing(&p))
        .collect();
    for (path, name) in dests.iter().zip(&names) {
        let d = check_destination(path).map_err(|cause| OutputRefused::Destination {
            what: name.clone(),
            path: path.clone(),
            cause,
        })?;
        if d.exists && !in_place && !rules.force {
            return Err(OutputRefused::Exists { what: name.clone(), path: path.clone() }.into());
        }
        let key = key_of(&d);
        if let Some((_, other)) = keys.iter().find(|(k, _)| *k == key) {
            let (what, other) = (name.clone(), other.to_string());
            return Err(OutputRefused::TwoOutputs { what, other, path: d.path }.into());
        }
        if !in_place && inputs.contains(&key) {
            return Err(OutputRefused::OverInput { what: name.clone(), path: d.path }.into());
        }
        keys.push((key, name));
    }
    Ok(())
}

/// Whether outputs are flushed to the disk before the rename: on request (`sync`), and
/// always when they replace the input (`in_place`), the only copy.
pub(crate) fn durable(in_place: bool, sync: bool) -> bool {
    in_place || sync
}
