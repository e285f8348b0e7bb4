//! `run`: run a (protected) model in tract after decrypting it in memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use onnx_protect_core::memory::InMemory;
use onnx_protect_core::protection::Protection;
use onnx_protect_format::Model;
use onnx_protect_runtime::engine::{run_once, External};
use onnx_protect_runtime::npy::{NpyArray, Summary};

use crate::args::key::OpenKeyArgs;
use crate::common::lift;

#[derive(clap::Args)]
pub struct Args {
    /// The model: protected (decrypted in memory with the key) or not.
    #[arg(value_parser = crate::stdio::file_path)]
    model: PathBuf,
    #[command(flatten)]
    key: OpenKeyArgs,
    /// An input array: NAME=FILE.npy (repeatable; FILE.npy alone for a one-input model).
    #[arg(long = "input", short = 'i', value_name = "NAME=FILE.npy")]
    inputs: Vec<String>,
    /// Write each output as DIR/<output name>.npy.
    #[arg(long, value_name = "DIR", value_parser = crate::stdio::file_path)]
    output_dir: Option<PathBuf>,
    #[command(flatten)]
    write: crate::args::output::WriteArgs,
    /// Print the output summaries as JSON on standard output instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct OutputReport {
    name: String,
    #[serde(flatten)]
    summary: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
}

#[derive(serde::Serialize)]
struct RunReport {
    model: String,
    /// `decrypted` (in memory, with the key), `protected_no_key` or `plain`.
    weights: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    decrypted_bytes: Option<u64>,
    outputs: Vec<OutputReport>,
}

/// A file name for an output: characters outside `[A-Za-z0-9._-]` become `_`.
fn file_name(output: &str) -> String {
    let s: String =
        output.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    if s.is_empty() || s.starts_with('.') {
        format!("output{s}")
    } else {
        s
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x != 0.0 && !(1e-4..1e6).contains(&x.abs()) => format!("{x:.4e}"),
        Some(x) => format!("{x:.6}"),
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    let key = a.key.source()?;
    let mut arrays: BTreeMap<String, NpyArray> = BTreeMap::new();
    let mut unnamed = Vec::new();
    for spec in &a.inputs {
        match spec.split_once('=') {
            Some((name, file)) if !name.is_empty() => {
                let arr = NpyArray::read(std::path::Path::new(file)).map_err(lift)?;
                if arrays.insert(name.to_string(), arr).is_some() {
                    crate::exit::usage!("--input {name} is given twice");
                }
            }
            _ => unnamed.push(spec.clone()),
        }
    }
    let model = Model::open(&a.model).with_context(|| format!("open {}", a.model.display()))?;
    let protection = Protection::read(&model).with_context(|| format!("read {}", a.model.display()))?;
    let protected = protection.is_some();
    let locked = matches!(&protection, Some(Protection::V2(p)) if p.sealed.header.label_lock.is_some());
    let decrypted;
    let (bytes, external, weights, decrypted_bytes): (&[u8], External, &'static str, Option<u64>) = match &key {
        Some(k) => {
            decrypted = InMemory::file(&a.model, k).load().with_context(|| format!("decrypt {}", a.model.display()))?;
            // Below the top tier the label lock stays (format.md §15): refused rather than
            // its scores printed in locked order.
            if locked && decrypted.tier() < decrypted.tiers() {
                return Err(anyhow::Error::new(onnx_protect_core::error::CoreError::NotTopKey {
                    key_tier: decrypted.tier(),
                    tiers: decrypted.tiers(),
                    operation:
                        "running a model whose outputs are label-locked (below the top tier they come in locked order)",
                    by_licence: false,
                }))
                .with_context(|| format!("run {}", a.model.display()));
            }
            if let Some(w) = decrypted.warning() {
                eprintln!("warning: {w}");
            }
            let ext: External = decrypted.external().iter().map(|(n, b)| (n.clone(), &b[..])).collect();
            (&decrypted, ext, "decrypted", Some(decrypted.decrypted_bytes()))
        }
        None => {
            let mut ext = External::new();
            for f in &model.external_files {
                ext.insert(f.location.clone(), f.bytes()?);
            }
            (model.bytes(), ext, if protected { "protected_no_key" } else { "plain" }, None)
        }
    };
    if !unnamed.is_empty() {
        let loaded = onnx_protect_runtime::engine::Loaded::new(bytes, &external).map_err(lift)?;
        let free: Vec<&str> =
            loaded.inputs().iter().map(|i| i.name.as_str()).filter(|n| !arrays.contains_key(*n)).collect();
        if unnamed.len() != 1 || free.len() != 1 {
            crate::exit::usage!(
                "give inputs as NAME=FILE.npy (the model's inputs: {})",
                loaded.inputs().iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        arrays.insert(free[0].to_string(), NpyArray::read(std::path::Path::new(&unnamed[0])).map_err(lift)?);
    }
    let outputs =
        run_once(bytes, &external, &arrays).map_err(lift).with_context(|| format!("run {}", a.model.display()))?;
    if let Some(dir) = &a.output_dir {
        for (name, _) in &outputs {
            a.write.check_file(&dir.join(format!("{}.npy", file_name(name))))?;
        }
        crate::dest::create_dir(dir, false)?;
    }
    let mut report = RunReport { model: a.model.display().to_string(), weights, decrypted_bytes, outputs: Vec::new() };
    for (name, arr) in &outputs {
        let file = match &a.output_dir {
            Some(dir) => {
                let p = dir.join(format!("{}.npy", file_name(name)));
                arr.write(&p).map_err(lift)?;
                Some(p.display().to_string())
            }
            None => None,
        };
        report.outputs.push(OutputReport { name: name.clone(), summary: arr.summary(), file });
    }
    if a.json {
        crate::output::emit(&serde_json::to_string_pretty(&report)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let how = match weights {
        "decrypted" => format!("decrypted in memory ({} bytes)", decrypted_bytes.unwrap_or(0)),
        "protected_no_key" => {
            "PROTECTED, NO KEY: the encrypted weights run as they are (what someone who copied the file gets)"
                .to_string()
        }
        _ => "not protected".to_string(),
    };
    let mut text = format!("{}: {how}\n", a.model.display());
    for o in &report.outputs {
        let s = &o.summary;
        text.push_str(&format!(
            "  {} {} {:?}: min {} max {} mean {} non-finite {}/{}{}\n",
            o.name,
            s.dtype.name(),
            s.shape,
            fmt_opt(s.min),
            fmt_opt(s.max),
            fmt_opt(s.mean),
            s.non_finite,
            s.elements,
            o.file.as_ref().map(|f| format!(" -> {f}")).unwrap_or_default()
        ));
    }
    crate::output::emit(text.trim_end())?;
    Ok(ExitCode::SUCCESS)
}
