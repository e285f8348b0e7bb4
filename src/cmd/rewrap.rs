//! `rewrap`: add and remove the recipients of a protected model without touching a weight.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use onnx_protect_core::journal::{self, Recovery};
use onnx_protect_core::recipients::EncryptTo;
use onnx_protect_core::rewrap::{rewrap, Remove, RewrapOptions, RewrapReport};

use crate::exit::usage;
use crate::keys::{check_recorded_tiers, read_key_file, KeyArgs, RecipientArgs, SignArgs};
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
    /// The licence the key needs for a model encrypted with --licence-authority.
    #[command(flatten)]
    licence: crate::keys::LicenceArgs,
    #[command(flatten)]
    change: ChangeArgs,
    #[command(flatten)]
    write: crate::dest::WriteArgs,
    #[command(flatten)]
    out: OutputArgs,
}

/// What a rewrap changes: recipients added and removed, signatures renewed or dropped
/// (shared by `rewrap` and `batch rewrap`).
#[derive(clap::Args)]
pub struct ChangeArgs {
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
    /// Remove every stanza of this kind (key, passphrase, x25519, pkcs11, command).
    #[arg(long, value_name = "KIND")]
    remove_kind: Vec<String>,
    #[command(flatten)]
    sign: SignArgs,
    /// Drop the signatures that the new recipient list invalidates (other signers must sign again).
    #[arg(long)]
    drop_signatures: bool,
}

/// The recipients to add, the stanzas to remove and the signing keys of a [`ChangeArgs`].
pub struct Change {
    pub add: EncryptTo,
    pub remove: Vec<Remove>,
    pub signing_keys: Vec<onnx_protect_keys::SigningKey>,
    pub drop_signatures: bool,
}

impl ChangeArgs {
    /// Whether any option of the group was given.
    pub fn any(&self) -> bool {
        self.add_key_file.is_some()
            || !self.add.recipient.is_empty()
            || !self.add.recipients_file.is_empty()
            || !self.add.recipient_command.is_empty()
            || !self.remove_key_file.is_empty()
            || !self.remove.is_empty()
            || !self.remove_kind.is_empty()
            || !self.sign.sign_key.is_empty()
            || self.drop_signatures
    }

    /// Reads the keys and recipients; a usage error if nothing would change. With `tiers`
    /// (the model's number of access tiers), a key file to add that records another
    /// number is refused.
    pub fn build(&self, tiers: Option<u32>) -> Result<Change> {
        let mut remove: Vec<Remove> = self.remove.iter().cloned().map(Remove::Label).collect();
        remove.extend(self.remove_kind.iter().cloned().map(Remove::Kind));
        for p in &self.remove_key_file {
            remove.push(Remove::Key(read_key_file(p)?.into_key()));
        }
        let master = match &self.add_key_file {
            Some(p) => {
                let file = read_key_file(p)?;
                if let (onnx_protect_crypto::KeyKind::Master { tiers: recorded }, Some(t)) = (file.kind(), tiers) {
                    check_recorded_tiers(&format!("key file {}", p.display()), recorded, t)?;
                }
                Some(onnx_protect_core::keys::KeySource::Key(
                    file.into_master().with_context(|| format!("key file {}", p.display()))?,
                ))
            }
            None => None,
        };
        let add = EncryptTo { master, recipients: self.add.recipients()?, ..Default::default() };
        if remove.is_empty() && add.master.is_none() && add.recipients.is_empty() && self.sign.sign_key.is_empty() {
            usage!(
                "nothing to do: give recipients to add (--add-key-file, --recipient, --recipient-command) or remove \
                 (--remove...), or --sign-key"
            );
        }
        Ok(Change { add, remove, signing_keys: self.sign.keys()?, drop_signatures: self.drop_signatures })
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    let key = a.licence.apply(a.key.required()?)?;
    let tiers = if a.change.add_key_file.is_some() { crate::keys::model_tiers(&a.input) } else { None };
    let c = a.change.build(tiers)?;
    let output = a.output.clone().unwrap_or_else(|| a.input.clone());
    let created = crate::dest::missing(crate::dest::dir_of(&output));
    let bar = Bar::new(a.out.quiet);
    let opts = RewrapOptions {
        add: &c.add,
        remove: &c.remove,
        signing_keys: &c.signing_keys,
        drop_signatures: c.drop_signatures,
        in_place: a.in_place,
        outputs: a.write.rules(),
        progress: &bar,
    };
    // An earlier in-place rewrap of the model that a crash interrupted is finished (or
    // undone) first, here, so that it is reported whether this one succeeds or not.
    let earlier = if a.in_place {
        journal::recover(&a.input).with_context(|| format!("rewrap {}", a.input.display()))?
    } else {
        journal::finish_interrupted(&a.input)
    };
    let r = rewrap(&a.input, &output, &key, &opts).with_context(|| {
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
        format!("rewrap {}{first}", a.input.display())
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
