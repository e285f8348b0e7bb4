//! `trace`: whose fingerprinted copy is a suspect model (docs/tracing.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use onnx_protect_format::Model;
use onnx_protect_trace::{Ledger, TraceReport, Tracer};

use crate::args::output::OutputArgs;
use crate::stdio;

#[derive(clap::Args)]
pub struct Args {
    /// The suspect model (a plain or decrypted copy; float16/bfloat16/double weights and
    /// dynamically int8-quantised copies are read too).
    suspect: PathBuf,
    /// The ledger `encrypt --fingerprint` wrote.
    #[arg(long, value_name = "LEDGER", value_parser = stdio::file_path)]
    ledger: PathBuf,
    /// The fingerprint secret the copies were marked with.
    #[arg(long, value_name = "FILE", value_parser = stdio::file_path)]
    fingerprint_secret: PathBuf,
    /// The unmarked, unprotected original model the copies were made from.
    #[arg(long, value_name = "MODEL", value_parser = stdio::file_path)]
    original: PathBuf,
    /// Bound on the probability of naming a recipient for a copy that is not theirs.
    #[arg(long, value_name = "P", default_value_t = onnx_protect_trace::DEFAULT_FALSE_POSITIVE)]
    false_positive: f64,
    /// Text output: list every recipient's score, not only the best few.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(serde::Serialize)]
struct TraceOutput<'a> {
    suspect: String,
    original: String,
    ledger: String,
    /// The recipient named, or `null` when none reaches the threshold.
    recipient: Option<&'a str>,
    #[serde(flatten)]
    report: &'a TraceReport,
}

/// Opens a model that must not be protected (a protected suspect is decrypted first);
/// `role` says which one in errors. With `clear_ok`, a protected model whose weights are
/// all in clear (a label-locked copy, `encrypt --lock-outputs --clear-weights`) is read as
/// it is stored: that is the model its recipient runs.
fn open_plain(path: &Path, role: &str, clear_ok: bool) -> Result<Model> {
    let model = Model::open(path).with_context(|| format!("{role} {}", path.display()))?;
    if clear_ok {
        let info = onnx_protect_core::protect::protection_info(&model)
            .with_context(|| format!("{role} {}", path.display()))?;
        if info.is_some_and(|i| i.format_version == 2 && i.tensors.is_empty() && i.label_lock.is_some()) {
            return Ok(model);
        }
    }
    if let Some(m) = model.metadata.iter().find(|m| onnx_protect_core::metadata::is_manifest_key(&m.key)) {
        return Err(onnx_protect_core::error::CoreError::AlreadyProtected { key: m.key.clone() })
            .with_context(|| format!("{role} {}", path.display()));
    }
    Ok(model)
}

pub fn run(a: Args) -> Result<ExitCode> {
    onnx_protect_trace::detect::check_false_positive(a.false_positive)?;
    let key = crate::fingerprint::read_fingerprint_secret(&a.fingerprint_secret)?;
    let ledger = Ledger::read(&a.ledger)?;
    let original = open_plain(&a.original, "original", false)?;
    let suspect = open_plain(&a.suspect, "suspect", true)?;
    let tracer =
        Tracer::for_ledger(&original, &key, &ledger).with_context(|| format!("original {}", a.original.display()))?;
    let report = tracer.trace(&suspect, a.false_positive).with_context(|| format!("trace {}", a.suspect.display()))?;
    let found = report.matches.first().map(|m| m.recipient.as_str());
    let out = TraceOutput {
        suspect: a.suspect.display().to_string(),
        original: a.original.display().to_string(),
        ledger: a.ledger.display().to_string(),
        recipient: found,
        report: &report,
    };
    a.out.report(&out, false, || text(&out, a.all))?;
    Ok(if found.is_some() { ExitCode::SUCCESS } else { ExitCode::from(crate::exit::NOT_TRACED) })
}

/// A probability bound for people: `1`, `3.2e-9`, or `10^-3329.1` below what an f64 holds.
fn bound_text(bound: f64, log10: f64) -> String {
    if bound >= 1.0 {
        "1 (none)".into()
    } else if bound > 1e-300 {
        format!("{bound:.2e}")
    } else {
        format!("10^{log10:.1}")
    }
}

fn text(o: &TraceOutput, all: bool) -> String {
    let r = o.report;
    let verdict = match (o.recipient, r.identical) {
        (Some(id), _) => format!("recipient    {id}"),
        (None, true) => {
            "recipient    none: the suspect's fingerprinted weights equal the original's (an unmarked copy)".to_string()
        }
        (None, false) => "recipient    none: no recipient's score reaches the threshold".to_string(),
    };
    let mut t = format!(
        "{verdict}\nscore        {:.2} (threshold {:.2} for {} recipients at false-positive bound {:e})\n\
         bound        {} (probability that a copy not marked for {} scores this high)\n\
         compared     {} elements in {} of {} fingerprinted tensors ({} by name, {} transposed, {} dequantised, {} unchanged)",
        r.best.z,
        r.threshold,
        r.recipients,
        r.false_positive,
        bound_text(r.best.bound, r.best.log10_bound),
        r.best.recipient,
        r.elements,
        r.tensors.matched,
        r.tensors.planned,
        r.tensors.by_name,
        r.tensors.transposed,
        r.tensors.dequantized,
        r.tensors.unchanged,
    );
    if r.matches.len() > 1 {
        let others: Vec<String> = r.matches[1..].iter().map(|m| format!("{} ({:.2})", m.recipient, m.z)).collect();
        t += &format!("\nalso above    {}", others.join(", "));
    }
    if !r.unmatched.is_empty() {
        t += &format!("\nnot found    {} tensors of the original: {}", r.unmatched.len(), r.unmatched.join(", "));
    }
    let shown = if all { r.scores.len() } else { r.scores.len().min(5) };
    t += "\nscores";
    for s in &r.scores[..shown] {
        t += &format!("\n  {:>10.2}  {}", s.z, s.recipient);
    }
    if shown < r.scores.len() {
        t += &format!("\n  ... {} more (--all lists them)", r.scores.len() - shown);
    }
    t
}
