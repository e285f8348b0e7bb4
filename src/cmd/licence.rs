//! `licence issue`: a publisher signs a licence (docs/shipping.md#licences, docs/format.md
//! Appendix C) for models encrypted with `--licence-authority`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use onnx_protect_licence::{parse_utc, ModelRef, RecipientRef, Terms, MAX_TIERS};

use crate::args::output::OutputArgs;
use crate::exit::usage;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Sign a licence: which models open, for which recipients or devices, with which tiers, and when.
    Issue(IssueArgs),
}

#[derive(clap::Args)]
pub struct IssueArgs {
    /// The publisher's signing key (`keygen --signing`): the model's --licence-authority.
    #[arg(long, value_name = "FILE", value_parser = crate::stdio::file_path)]
    sign_key: PathBuf,
    /// A model it opens: digest:<64 hex> (a content digest) or id:<model id> (repeatable).
    #[arg(long, value_name = "digest:HEX|id:ID")]
    model: Vec<String>,
    /// A protected model it opens: its content digest (repeatable).
    #[arg(long, value_name = "FILE", value_parser = crate::stdio::file_path)]
    model_of: Vec<PathBuf>,
    /// Who may open it: `any`, or a stanza's kind and label as `inspect` lists them
    /// ('tpm onnx-protect-tpm1...', 'key 0123...', 'x25519 age1...') (repeatable; at least one).
    #[arg(long, value_name = "any|'KIND LABEL'", required = true)]
    recipient: Vec<String>,
    /// The highest access tier granted.
    #[arg(long, default_value_t = 1)]
    tiers: u32,
    /// Valid from (UTC, YYYY-MM-DDTHH:MM:SSZ).
    #[arg(long, value_name = "TIME")]
    not_before: String,
    /// Valid until (UTC, YYYY-MM-DDTHH:MM:SSZ).
    #[arg(long, value_name = "TIME")]
    not_after: String,
    /// Who it is issued to (informational).
    #[arg(long)]
    licensee: Option<String>,
    /// The licence file to write (never replaces a file).
    #[arg(short, long, value_parser = crate::stdio::file_path)]
    output: PathBuf,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Issue(i) => issue(i),
    }
}

fn models(a: &IssueArgs) -> Result<Vec<ModelRef>> {
    let mut out = Vec::new();
    for m in &a.model {
        if let Some(hex_text) = m.strip_prefix("digest:") {
            let d = hex::decode(hex_text).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
            let Some(d) = d else { usage!("--model {m}: a digest is 64 hex digits") };
            out.push(ModelRef::Digest(d));
        } else if let Some(id) = m.strip_prefix("id:") {
            out.push(ModelRef::Id(id.to_string()));
        } else {
            usage!("--model {m}: give digest:<64 hex digits> or id:<model id>");
        }
    }
    for f in &a.model_of {
        let (digest, req) =
            onnx_protect_core::protect::licence_facts(f).with_context(|| format!("--model-of {}", f.display()))?;
        if req.is_none() {
            usage!("--model-of {}: the model was encrypted without --licence-authority", f.display());
        }
        out.push(ModelRef::Digest(digest));
    }
    if out.is_empty() {
        usage!("name at least one model: --model digest:HEX, --model id:ID or --model-of FILE");
    }
    Ok(out)
}

fn recipients(a: &IssueArgs) -> Vec<RecipientRef> {
    a.recipient
        .iter()
        .map(|r| match r.trim() {
            "any" => RecipientRef::Any,
            r => {
                let (kind, label) = r.split_once(' ').unwrap_or((r, ""));
                RecipientRef::Stanza { kind: kind.to_string(), label: label.trim().to_string() }
            }
        })
        .collect()
}

fn issue(a: IssueArgs) -> Result<ExitCode> {
    let key = crate::keys::read_signing_key(&a.sign_key)?;
    let time = |what: &str, v: &str| match parse_utc(v) {
        Some(t) => Ok(t),
        None => Err(crate::exit::UsageError(format!("--{what} {v}: give a UTC time as YYYY-MM-DDTHH:MM:SSZ"))),
    };
    if !(1..=MAX_TIERS).contains(&a.tiers) {
        usage!("--tiers {}: 1 to {MAX_TIERS}", a.tiers);
    }
    let terms = Terms {
        authority: key.public(),
        licensee: a.licensee.clone(),
        models: models(&a)?,
        recipients: recipients(&a),
        tiers: a.tiers,
        not_before: time("not-before", &a.not_before)?,
        not_after: time("not-after", &a.not_after)?,
    };
    let text = terms.issue(&key).context("licence")?;
    let dir = crate::dest::dir_of(&a.output);
    let mut staged =
        onnx_protect_fsio::Staging::new(dir).with_context(|| format!("cannot write {}", a.output.display()))?;
    staged.file_mut().write_all(text.as_bytes()).with_context(|| format!("cannot write {}", a.output.display()))?;
    staged.publish(&a.output, false).with_context(|| format!("cannot write {} (it may exist)", a.output.display()))?;
    a.out.report(&serde_json::json!({ "licence": a.output.display().to_string() }), false, || {
        format!("licence for {} -> {}", terms.authority.to_text(), a.output.display())
    })?;
    Ok(ExitCode::SUCCESS)
}
