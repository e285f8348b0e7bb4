//! What `rewrap` and `batch rewrap` change: recipients added and removed, signatures
//! renewed or dropped; the removals `rekey` shares.

use std::path::PathBuf;

use anyhow::{Context, Result};
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::rewrap::{Remove, RewrapOptions};
use onnx_protect_core::OutputRules;
use onnx_protect_format::Progress;

use crate::args::key::{RecipientArgs, SignArgs};
use crate::exit::usage;
use crate::keys::{check_recorded_tiers, read_key_file};

/// What a rewrap changes: recipients added and removed, signatures renewed or dropped
/// (shared by `rewrap` and `batch rewrap`).
#[derive(clap::Args)]
pub struct ChangeArgs {
    /// Add this key file as a recipient (with access tiers: its tier keys for the lower tiers).
    #[arg(long, value_name = "FILE", value_parser = crate::stdio::file_path)]
    pub add_key_file: Option<PathBuf>,
    #[command(flatten)]
    add: RecipientArgs,
    #[command(flatten)]
    removal: RemovalArgs,
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

impl Change {
    /// The options of a rewrap that makes this change.
    pub fn options<'a>(
        &'a self,
        in_place: bool,
        outputs: OutputRules,
        progress: &'a dyn Progress,
    ) -> RewrapOptions<'a> {
        RewrapOptions {
            add: &self.add,
            remove: &self.remove,
            signing_keys: &self.signing_keys,
            drop_signatures: self.drop_signatures,
            in_place,
            outputs,
            progress,
        }
    }
}

impl ChangeArgs {
    /// Whether any option of the group was given.
    pub fn any(&self) -> bool {
        self.add_key_file.is_some()
            || !self.add.recipient.is_empty()
            || !self.add.recipients_file.is_empty()
            || !self.add.recipient_command.is_empty()
            || !self.removal.remove_key_file.is_empty()
            || !self.removal.remove.is_empty()
            || !self.removal.remove_kind.is_empty()
            || !self.sign.sign_key.is_empty()
            || self.drop_signatures
    }

    /// Reads the keys and recipients; a usage error if nothing would change. With `tiers`
    /// (the model's number of access tiers), a key file to add that records another
    /// number is refused.
    pub fn build(&self, tiers: Option<u32>) -> Result<Change> {
        let remove = self.removal.removals()?;
        let master = match &self.add_key_file {
            Some(p) => {
                let file = read_key_file(p)?;
                if let (onnx_protect_crypto::KeyKind::Master { tiers: recorded }, Some(t)) = (file.kind(), tiers) {
                    check_recorded_tiers(&format!("key file {}", p.display()), recorded, t)?;
                }
                Some(onnx_protect_core::keys::KeySource::key(
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

/// The stanzas to remove from a protected model (`rewrap`, `batch rewrap`; `rekey` words
/// them as stanzas it drops).
#[derive(clap::Args, Default)]
pub struct RemovalArgs {
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
}

impl RemovalArgs {
    /// The removals, by label, by kind, then by key file (each key file read).
    pub fn removals(&self) -> Result<Vec<Remove>> {
        let mut remove: Vec<Remove> = self.remove.iter().cloned().map(Remove::Label).collect();
        remove.extend(self.remove_kind.iter().cloned().map(Remove::Kind));
        for p in &self.remove_key_file {
            remove.push(Remove::Key(read_key_file(p)?.into_key()));
        }
        Ok(remove)
    }
}
