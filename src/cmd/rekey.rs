//! `rekey`: re-encrypt a protected model under new data keys (and a new key), keeping its
//! other recipients.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::rekey::{self, RekeyOptions};
use onnx_protect_crypto::MasterKey;

use crate::args::change::RemovalArgs;
use crate::args::key::{NewKeyArgs, OpenKeyArgs};
use crate::args::output::OutputArgs;
use crate::progress::Bar;
use crate::stdio::{self, input_name};

/// Stanzas `rekey` drops instead of wrapping the new data keys for them (every other
/// recipient is kept), and key files whose stanzas it keeps.
#[derive(clap::Args, Default)]
#[command(
    mut_arg("remove_key_file", |a| a.help("Drop the stanzas of this key file (at every tier)")),
    mut_arg("remove", |a| a.help(
        "Drop the stanzas with this public label: a recipient (age1...), a key fingerprint (as `inspect` lists \
         them), a provider's label"
    )),
    mut_arg("remove_kind", |a| a.help(
        "Drop every stanza of this kind (key, passphrase, x25519, tpm, age-plugin, pkcs11, command)"
    )),
    // A changed argument moves to the end of the list: this one follows them, as declared.
    mut_arg("keep_key_file", |a| a)
)]
pub struct RemoveArgs {
    #[command(flatten)]
    removal: RemovalArgs,
    /// Keep this key file's stanzas (at every tier), wrapping the new data keys for it: a key file's
    /// stanza records only its fingerprint, so rekey needs the key to keep it. Repeatable.
    #[arg(long, value_name = "FILE", value_parser = crate::stdio::file_path)]
    keep_key_file: Vec<PathBuf>,
}

impl RemoveArgs {
    fn kept_keys(&self) -> Result<Vec<MasterKey>> {
        self.keep_key_file
            .iter()
            .map(|p| crate::keys::read_key_file(p)?.into_master().with_context(|| format!("key file {}", p.display())))
            .collect()
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The protected model; `-` reads it from standard input (no external data).
    input: PathBuf,
    /// Where to write the re-encrypted model (external data files go next to it); `-` writes
    /// it to standard output.
    #[arg(short, long, required_unless_present = "in_place")]
    output: Option<PathBuf>,
    /// The current key (checked, with the MAC, before anything is written), with its licence.
    #[command(flatten)]
    key: OpenKeyArgs,
    #[command(flatten)]
    new_key: NewKeyArgs,
    /// Accept a new passphrase shorter than 12 characters.
    #[arg(long)]
    allow_short_passphrase: bool,
    /// Public recipients of the re-encrypted model (besides the new key), as for `encrypt`.
    #[command(flatten)]
    recipients: crate::args::key::RecipientArgs,
    #[command(flatten)]
    sign: crate::args::key::SignArgs,
    /// Drop the signatures of signers not re-signing with --sign-key (the old signatures cover the
    /// old content and keys; without it they are refused).
    #[arg(long)]
    drop_signatures: bool,
    /// Recipients not to carry over to the re-encrypted model, and key files to keep.
    #[command(flatten)]
    remove: RemoveArgs,
    /// Overwrite the input (and its external data files), atomically.
    #[arg(long)]
    in_place: bool,
    /// Flush the outputs to the disk before renaming them into place (done anyway with --in-place).
    #[arg(long)]
    sync: bool,
    #[command(flatten)]
    write: crate::args::output::WriteArgs,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let old = a.key.required()?;
    let recipients = a.recipients.recipients()?;
    let signing_keys = a.sign.keys()?;
    let remove = a.remove.removal.removals()?;
    let keep_keys = a.remove.kept_keys()?;
    let (input, output) = stdio::rewrite_paths(&a.input, &a.output, a.in_place, &a.out)?;
    let master = if a.new_key.any() || recipients.is_empty() {
        Some(a.new_key.required(a.allow_short_passphrase, crate::keys::model_tiers(input.path()))?)
    } else {
        None
    };
    let new = EncryptTo { master, recipients, ..Default::default() };
    let created = crate::dest::missing(crate::dest::dir_of(output.path()));
    let bar = Bar::new(a.out.quiet);
    let mut r = rekey::rekey(
        input.path(),
        output.path(),
        &old,
        &new,
        &RekeyOptions {
            in_place: a.in_place,
            sync: a.sync,
            outputs: a.write.rules(),
            signing_keys: &signing_keys,
            drop_signatures: a.drop_signatures,
            remove: &remove,
            keep_keys: &keep_keys,
            recipient_of: &crate::keys::kept_recipient,
            progress: &bar,
        },
    )
    .with_context(|| format!("rekey {}", input_name(&a.input)))?;
    crate::dest::note_created(created, a.out.quiet);
    let to_stdout = output.is_stdout();
    (r.input, r.output) = (a.input.display().to_string(), output.name());
    output.finish()?;
    a.out.report(&r, to_stdout, || {
        let mut text = format!(
            "re-encrypted {} bytes in {} tensors under new data keys -> {}; {} recipient stanza(s)",
            r.rekeyed_bytes, r.tensors, r.output, r.recipients
        );
        if !r.removed.is_empty() {
            text.push_str(&format!("; not carried over: {}", r.removed.join(", ")));
        }
        if r.signatures_dropped > 0 {
            text.push_str(&format!("; {} signature(s) dropped", r.signatures_dropped));
        }
        onnx_protect_core::inspect::printable(&text).into_owned()
    })?;
    Ok(ExitCode::SUCCESS)
}
