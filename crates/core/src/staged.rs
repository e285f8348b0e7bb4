//! Output files that appear whole or not at all.
//!
//! Every output (the model file and its external data files) is written to a private
//! temporary file next to its destination and renamed into place only when all of
//! them are complete, the model file last; a failure at any point removes every
//! temporary file and every directory made for them. Outputs never overwrite the
//! input unless asked to, and are flushed to the disk before the rename when they
//! replace it.

use std::path::{Path, PathBuf};

use onnx_protect_format::write::{staged_output, FinalMode};
use onnx_protect_format::Model;

use crate::error::{CoreError, Result};
use crate::pass::Out;

/// Output files staged in temp files next to their destinations; nothing is
/// visible until [`Staged::commit`], and dropping it removes every temp file.
pub(crate) struct Staged {
    files: Vec<(tempfile::NamedTempFile, PathBuf, FinalMode)>,
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
        // The directories this creates (staged_output creates the missing ones).
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut missing: Vec<PathBuf> =
            dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).map(Path::to_path_buf).collect();
        missing.reverse();
        let (tmp, dest, mode) =
            staged_output(dest).map_err(|e| CoreError::Write { path: dest.to_path_buf(), source: e })?;
        self.created.extend(missing);
        self.files.push((tmp, dest, mode));
        Ok(self.files.len() - 1)
    }

    /// The open temporary file of output `i`, and its destination.
    pub(crate) fn out(&self, i: usize) -> Out<'_> {
        Out { file: self.files[i].0.as_file(), dest: &self.files[i].1 }
    }

    /// Renames every file into place, the last one staged (the model) last, after
    /// giving each its final permission bits (staged files are private until then);
    /// with `durable`, flushes each to the disk (`fsync`) first. Every file is closed,
    /// and the close checked, before the first rename: network file systems (NFS) may
    /// report a failed write only there, and `cp` checks it too.
    pub(crate) fn commit(mut self, durable: bool) -> Result<()> {
        let mut closed = Vec::with_capacity(self.files.len());
        for (tmp, dest, mode) in std::mem::take(&mut self.files) {
            let err = |e| CoreError::Write { path: dest.clone(), source: e };
            mode.apply(tmp.as_file()).map_err(err)?;
            if durable {
                tmp.as_file().sync_all().map_err(err)?;
            }
            let (file, path) = tmp.into_parts();
            onnx_protect_fsio::file::close_checked(file).map_err(err)?;
            closed.push((path, dest));
        }
        for (path, dest) in closed {
            path.persist(&dest).map_err(|e| CoreError::Write { path: dest.clone(), source: e.error })?;
            // Something is in place: the directories stay.
            self.created.clear();
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // The temporary files first, then the directories made for them, innermost
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
    /// owner until renamed into place; removed, with any directories made for them,
    /// when dropped uncommitted).
    pub(crate) fn stage(model: &Model, output: &Path) -> Result<Outputs> {
        let mut staged = Staged::new();
        let external = external_destinations(model, output);
        for dest in &external {
            staged.create(dest)?;
        }
        // The model file is staged last, so it is renamed into place last.
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
    let out_dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    model.external_files.iter().map(|f| out_dir.join(&f.location)).collect()
}

/// Refuses an output location that would overwrite the input without `in_place`, or
/// put the external data files of the output over those of the input.
pub(crate) fn check_output(model: &Model, input: &Path, output: &Path, in_place: bool) -> Result<()> {
    let same = match (std::fs::canonicalize(input), std::fs::canonicalize(output)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same && !in_place {
        return Err(CoreError::Output(format!(
            "output {} is the input; pass --in-place to overwrite it",
            output.display()
        )));
    }
    if !model.external_files.is_empty() && !in_place {
        let out_dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let in_dir = model.dir.clone().unwrap_or_else(|| PathBuf::from("."));
        if let (Ok(a), Ok(b)) = (std::fs::canonicalize(&in_dir), std::fs::canonicalize(out_dir)) {
            if a == b {
                return Err(CoreError::Output(format!(
                    "the model keeps external data in {}; write the output to another directory (or use --in-place)",
                    a.display()
                )));
            }
        }
    }
    Ok(())
}

/// Whether outputs are flushed to the disk before the rename: on request (`sync`), and
/// always when they replace the input (`in_place`), the only copy.
pub(crate) fn durable(in_place: bool, sync: bool) -> bool {
    in_place || sync
}
