//! `onnx-protect inspect MODEL [--json]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use onnx_protect_format::Model;

#[derive(clap::Args)]
pub struct Args {
    /// The model to inspect.
    model: PathBuf,
    /// Print the machine-readable report (schema in docs/inspect-json.md).
    #[arg(long)]
    json: bool,
    /// Never draw a progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let bar = crate::progress::Bar::new(a.quiet);
    let model = Model::open_with_progress(&a.model, &bar).with_context(|| format!("{}", a.model.display()))?;
    let report = onnx_protect_core::inspect::inspect(&model);
    if a.json {
        crate::output::emit(&serde_json::to_string_pretty(&report)?)?;
    } else {
        crate::output::emit(report.to_text().trim_end())?;
    }
    if !a.json {
        crate::cmd_transform::inspect_section(&model)?;
    }
    Ok(ExitCode::from(crate::exit::OK))
}
