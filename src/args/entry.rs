//! The protected model whose manifest entry a command rewrites (`rewrap`, `sign`), and
//! where the result goes.

use std::path::PathBuf;

/// The protected model whose manifest a command rewrites (`rewrap`, `sign`) and where the
/// result goes: `-o`, or the input itself with `--in-place`.
#[derive(clap::Args)]
pub struct EntryArgs {
    /// The protected model (format 2).
    pub input: PathBuf,
    /// Where to write the changed model (external data files are copied next to it).
    #[arg(short, long, required_unless_present = "in_place", value_parser = crate::stdio::file_path)]
    pub output: Option<PathBuf>,
    /// Rewrite only the input's manifest entry, in place.
    #[arg(long)]
    pub in_place: bool,
}

impl EntryArgs {
    /// The output path: `-o`, else the input (`--in-place`).
    pub fn target(&self) -> PathBuf {
        self.output.clone().unwrap_or_else(|| self.input.clone())
    }
}
