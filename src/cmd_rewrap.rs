//! `rewrap`: add and remove the recipients of a protected model without touching a weight.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use onnx_protect_core::protect::EncryptTo;
use onnx_protect_core::rewrap::{rewrap, Remove, RewrapOptions};

use crate::exit::usage;
use crate::keys::{read_key_file, KeyArgs, RecipientArgs, SignArgs};
use crate::output::OutputArgs;
use crate::progress::Bar;

#[derive(clap::Args)]
pub struct Args {
    /// The protected model (format 2).
    input: PathBuf,
    /// Where to write the re-wrapped model (external data files are copied next to it).
    #[arg(short, long, required_unless_present = "in_place", value_parser = crate::stdio::file_path)]
    output: Option<PathBuf>,
    /// Rewrite the input in place: only its manifest entry, at the end of the file, is rewritten.
    #[arg(long)]
    in_place: bool,
    /// The top-tier key (or passphrase, or identity) that opens the model now.
    #[command(flatten)]
    key: KeyArgs,
    /// Add this key file as a recipient (with access tiers: its tier keys for the lower tiers).
    #[arg(long, value_name = "FILE", value_parser = crate::stdio::file_path)]
    add_key_file: Option<PathBuf>,
    #[command(flatten)]
    add: RecipientArgs,
    /// Remove the stanzas of this key file (at every tier).
    #[arg(long, value_name = "FILE", value_parser = crate::stdio::file_path)]
    remove_key_file: Vec<PathBuf>,
    /// Remove the stanzas with this public label: a recipient (age1...), a key fingerprint (as
    /// `inspect` lists them), a provider's label.
    #[arg(long, value_name = "LABEL")]
    remove: Vec<String>,
    /// Remove every stanza of this kind (key, passphrase, x25519, ...).
    #[arg(long, value_name = "KIND")]
    remove_kind: Vec<String>,
    #[command(flatten)]
    sign: SignArgs,
    /// Drop the signatures that the new recipient list invalidates (other signers must sign again).
    #[arg(long)]
    drop_signatures: bool,
    #[command(flatten)]
    write: crate::dest::WriteArgs,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let key = a.key.required()?;
    let mut remove: Vec<Remove> = a.remove.iter().cloned().map(Remove::Label).collect();
    remove.extend(a.remove_kind.iter().cloned().map(Remove::Kind));
    for p in &a.remove_key_file {
        remove.push(Remove::Key(read_key_file(p)?.into_key()));
    }
    let master = match &a.add_key_file {
        Some(p) => Some(onnx_protect_core::protect::KeySource::Key(
            read_key_file(p)?.into_master().with_context(|| format!("key file {}", p.display()))?,
        )),
        None => None,
    };
    let add = EncryptTo { master, recipients: a.add.recipients()? };
    if remove.is_empty() && add.master.is_none() && add.recipients.is_empty() && a.sign.sign_key.is_empty() {
        usage!("nothing to do: give recipients to add (--add-key-file, --recipient) or remove (--remove...), or --sign-key");
    }
    let signing_keys = a.sign.keys()?;
    let output = a.output.clone().unwrap_or_else(|| a.input.clone());
    let created = crate::dest::missing(crate::dest::dir_of(&output));
    let bar = Bar::new(a.out.quiet);
    let opts = RewrapOptions {
        add: &add,
        remove: &remove,
        signing_keys: &signing_keys,
        drop_signatures: a.drop_signatures,
        in_place: a.in_place,
        outputs: a.write.rules(),
        progress: &bar,
    };
    let r = rewrap(&a.input, &output, &key, &opts).with_context(|| format!("rewrap {}", a.input.display()))?;
    crate::dest::note_created(created, a.out.quiet);
    a.out.report(&r, false, || {
        format!(
            "removed {} and added {} recipient stanza(s) -> {} ({} bytes written); recipients now:\n  {}",
            r.removed,
            r.added,
            r.output,
            r.bytes_written,
            r.recipients.join("\n  ")
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
