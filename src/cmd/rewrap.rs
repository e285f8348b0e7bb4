//! `rewrap`: add and remove the recipients of a protected model without touching a weight.

use std::process::ExitCode;

use anyhow::{Context, Result};
use onnx_protect_core::pass::journal::{self, Recovery};
use onnx_protect_core::rewrap::{rewrap, RewrapReport};

use crate::args::change::ChangeArgs;
use crate::args::entry::EntryArgs;
use crate::args::key::OpenKeyArgs;
use crate::args::output::{OutputArgs, WriteArgs};
use crate::exit::usage;
use crate::progress::Bar;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    entry: EntryArgs,
    /// The top-tier key (or passphrase, or identity) that opens the model now.
    #[command(flatten)]
    key: OpenKeyArgs,
    #[command(flatten)]
    change: ChangeArgs,
    #[command(flatten)]
    write: WriteArgs,
    #[command(flatten)]
    out: OutputArgs,
}

/// `rewrap DIR --in-place`: every model of a protected model folder rewrapped the same way
/// (docs/format.md §16).
fn rewrap_folder(a: &Args) -> Result<ExitCode> {
    let dir = a.entry.input.display().to_string();
    if !a.entry.in_place || a.entry.output.is_some() {
        usage!("{dir} is a model folder, which is rewrapped in place: pass --in-place (and no -o)");
    }
    if a.write.force {
        usage!("{dir} is a model folder, which --force does not apply to; see docs/cli.md#model-folders");
    }
    let key = a.key.required()?;
    // Interrupted rewraps are finished first, and said (opening the folder does it silently).
    let recovered = onnx_protect_folder::recover(&a.entry.input).with_context(|| format!("rewrap {dir}"))?;
    let first = onnx_protect_folder::Folder::open(&a.entry.input).ok();
    let tiers = match (&a.change.add_key_file, &first) {
        (Some(_), Some(f)) => Some(f.tiers()),
        _ => None,
    };
    let c = a.change.build(tiers)?;
    let bar = Bar::new(a.out.quiet);
    let opts = c.options(true, a.write.rules(), &bar);
    let mut r = onnx_protect_folder::rewrap(&a.entry.input, &key, &opts).with_context(|| format!("rewrap {dir}"))?;
    r.recovered.splice(0..0, recovered);
    a.out.report(&r, false, || {
        let mut t = String::new();
        for (path, how) in &r.recovered {
            let what = match how {
                Recovery::RolledBack => "undid",
                _ => "finished",
            };
            t += &format!("{what} an earlier in-place rewrap of {path} that was interrupted\n");
        }
        t += &format!("rewrapped model folder {} (folder id {}):", r.input, r.folder_id);
        for m in &r.models {
            let (path, w) = (onnx_protect_core::inspect::printable(&m.path), &m.report);
            t += &format!("\n  {path}: removed {} and added {} recipient stanza(s)", w.removed, w.added);
        }
        if let Some(m) = r.models.first() {
            t += &format!("\n  recipients now:\n    {}", m.report.recipients.join("\n    "));
        }
        t
    })?;
    Ok(ExitCode::SUCCESS)
}

pub fn run(a: Args) -> Result<ExitCode> {
    if a.entry.input.is_dir() {
        return rewrap_folder(&a);
    }
    let key = a.key.required()?;
    let tiers = if a.change.add_key_file.is_some() { crate::keys::model_tiers(&a.entry.input) } else { None };
    let c = a.change.build(tiers)?;
    let output = a.entry.target();
    let created = crate::dest::missing(crate::dest::dir_of(&output));
    let bar = Bar::new(a.out.quiet);
    let opts = c.options(a.entry.in_place, a.write.rules(), &bar);
    // An earlier in-place rewrap of the model that a crash interrupted is finished (or
    // undone) first, here, so that it is reported whether this one succeeds or not.
    let earlier = if a.entry.in_place {
        journal::recover(&a.entry.input).with_context(|| format!("rewrap {}", a.entry.input.display()))?
    } else {
        journal::finish_interrupted(&a.entry.input)
    };
    let r = rewrap(&a.entry.input, &output, &key, &opts).with_context(|| {
        let first = match earlier {
            Recovery::Nothing => String::new(),
            Recovery::RolledForward => {
                " (an earlier in-place rewrap of it, interrupted, was finished first: the model \
                                        now has the recipients that rewrap gave it)"
                    .into()
            }
            Recovery::RolledBack => {
                " (an earlier in-place rewrap of it, interrupted before it changed the file, was undone first)".into()
            }
        };
        format!("rewrap {}{first}", a.entry.input.display())
    })?;
    let recovered = if earlier == Recovery::Nothing { r.recovered } else { earlier };
    let r = RewrapReport { recovered, ..r };
    crate::dest::note_created(created, a.out.quiet);
    a.out.report(&r, false, || {
        let recovered = match r.recovered {
            Recovery::Nothing => "",
            Recovery::RolledForward => "finished an earlier in-place rewrap that was interrupted; ",
            Recovery::RolledBack => "undid an earlier in-place rewrap that was interrupted before it began; ",
        };
        format!(
            "{recovered}removed {} and added {} recipient stanza(s) -> {} ({} bytes written); recipients now:\n  {}",
            r.removed,
            r.added,
            r.output,
            r.bytes_written,
            r.recipients.join("\n  ")
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
