//! `onnx-protect inspect MODEL [--json]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use onnx_protect_format::Model;

use crate::args::output::OutputArgs;
use crate::stdio::is_stdio;

#[derive(clap::Args)]
pub struct Args {
    /// The model to inspect; `-` reads it from standard input (no external data).
    model: PathBuf,
    // `--json`: the report of docs/inspect-json.md; `-q`: only check that the model parses.
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let model = if is_stdio(&a.model) {
        crate::stdio::read_model()?
    } else {
        let bar = crate::progress::Bar::new(a.out.quiet);
        Model::open_with_progress(&a.model, &bar).with_context(|| format!("{}", a.model.display()))?
    };
    if a.out.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let report = onnx_protect_core::inspect::inspect(&model);
    // The model's strings (names, labels, paths) print as text, never as terminal controls.
    if a.out.json {
        crate::output::emit(&onnx_protect_core::inspect::printable_json(&serde_json::to_string_pretty(&report)?))?;
    } else {
        crate::output::emit(report.to_text().trim_end())?;
        crate::common::inspect_section(&model)?;
    }
    Ok(ExitCode::SUCCESS)
}
