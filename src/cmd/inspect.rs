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

/// A model of a folder as `inspect DIR --json` shows it.
#[derive(serde::Serialize)]
struct FolderModelJson<'a> {
    path: &'a str,
    data_files: &'a [String],
    inspect: onnx_protect_core::inspect::Report,
}

/// `inspect DIR --json`.
#[derive(serde::Serialize)]
struct FolderJson<'a> {
    input: String,
    folder_id: String,
    tiers: u32,
    models: Vec<FolderModelJson<'a>>,
    files: Vec<onnx_protect_folder::FileEntry>,
}

/// `inspect DIR`: a protected model folder, checked without a key (docs/format.md §16), then
/// each of its models as `inspect` shows one, and the files copied unchanged.
fn inspect_folder(a: &Args) -> Result<ExitCode> {
    let folder = onnx_protect_folder::Folder::open(&a.model).with_context(|| format!("{}", a.model.display()))?;
    if a.out.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let mut models = Vec::new();
    for m in folder.models() {
        let model = Model::open(&m.abs).with_context(|| format!("{}: {}", a.model.display(), m.path))?;
        models.push((m, model));
    }
    let files: Vec<onnx_protect_folder::FileEntry> = folder.files().iter().map(Into::into).collect();
    if a.out.json {
        let json = FolderJson {
            input: a.model.display().to_string(),
            folder_id: folder.id_hex(),
            tiers: folder.tiers(),
            models: models
                .iter()
                .map(|(m, model)| FolderModelJson {
                    path: &m.path,
                    data_files: &m.data_files,
                    inspect: onnx_protect_core::inspect::inspect(model),
                })
                .collect(),
            files,
        };
        crate::output::emit(&onnx_protect_core::inspect::printable_json(&serde_json::to_string_pretty(&json)?))?;
        return Ok(ExitCode::SUCCESS);
    }
    let p = |t: &str| onnx_protect_core::inspect::printable(t).into_owned();
    crate::output::emit(&format!(
        "model folder {} (folder id {}): {} model(s) under one data key, {} other file(s)",
        p(&a.model.display().to_string()),
        folder.id_hex(),
        models.len(),
        files.len()
    ))?;
    for (m, model) in &models {
        let data: Vec<String> = m.data_files.iter().map(|d| p(d)).collect();
        let data = if data.is_empty() { String::new() } else { format!(" (data: {})", data.join(", ")) };
        crate::output::emit(&format!("\n== {}{data} ==", p(&m.path)))?;
        crate::output::emit(onnx_protect_core::inspect::inspect(model).to_text().trim_end())?;
        crate::common::inspect_section(model)?;
    }
    let mut t = "\nfiles copied unchanged:".to_string();
    for f in &files {
        t += &format!("\n  {} {} bytes blake3 {}", p(&f.path), f.length, f.blake3);
    }
    crate::output::emit(&t)?;
    Ok(ExitCode::SUCCESS)
}

pub fn run(a: Args) -> Result<ExitCode> {
    if !is_stdio(&a.model) && a.model.is_dir() {
        return inspect_folder(&a);
    }
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
