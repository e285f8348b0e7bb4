//! `rekey`: re-encrypt a protected model under a new key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use onnx_protect_core::protect::KeySource;
use onnx_protect_core::rekey::{self, RekeyOptions};

use crate::keys::KeyArgs;
use crate::progress::Bar;

/// Where the new key comes from: the same choices as the old key, prefixed `--new-`.
#[derive(clap::Args, Default, Clone)]
pub struct NewKeyArgs {
    /// New key file: 32 raw bytes or 64 hex digits (as written by `keygen`).
    #[arg(long, value_name = "FILE")]
    pub new_key_file: Option<PathBuf>,
    /// Environment variable holding the new key as 64 hex digits.
    #[arg(long, value_name = "VAR")]
    pub new_key_env: Option<String>,
    /// Environment variable holding a new passphrase (stretched with Argon2id).
    #[arg(long, value_name = "VAR")]
    pub new_passphrase_env: Option<String>,
    /// File whose first line is a new passphrase (stretched with Argon2id).
    #[arg(long, value_name = "FILE")]
    pub new_passphrase_file: Option<PathBuf>,
}

impl NewKeyArgs {
    /// The new key source; an error if none or more than one was given.
    pub fn required(&self) -> Result<KeySource> {
        let given = [
            self.new_key_file.is_some(),
            self.new_key_env.is_some(),
            self.new_passphrase_env.is_some(),
            self.new_passphrase_file.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        match given {
            0 => bail!(
                "a new key is required: give --new-key-file, --new-key-env, --new-passphrase-env or --new-passphrase-file"
            ),
            1 => {}
            _ => bail!("give only one of --new-key-file, --new-key-env, --new-passphrase-env, --new-passphrase-file"),
        }
        let as_old = KeyArgs {
            key_file: self.new_key_file.clone(),
            key_env: self.new_key_env.clone(),
            passphrase_env: self.new_passphrase_env.clone(),
            passphrase_file: self.new_passphrase_file.clone(),
        };
        as_old.required_master().context("new key")
    }

    /// Whether any new-key option was given.
    pub fn any(&self) -> bool {
        self.new_key_file.is_some()
            || self.new_key_env.is_some()
            || self.new_passphrase_env.is_some()
            || self.new_passphrase_file.is_some()
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The protected model.
    input: PathBuf,
    /// Where to write the re-encrypted model (external data files go next to it).
    #[arg(short, long, required_unless_present = "in_place")]
    output: Option<PathBuf>,
    /// The current key (checked, with the MAC, before anything is written).
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    new_key: NewKeyArgs,
    /// Overwrite the input (and its external data files), atomically.
    #[arg(long)]
    in_place: bool,
    /// Flush the outputs to the disk before renaming them into place (done anyway with --in-place).
    #[arg(long)]
    sync: bool,
    #[arg(long)]
    json: bool,
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let old = a.key.required()?;
    let new = a.new_key.required()?;
    let output = match (&a.output, a.in_place) {
        (Some(o), false) => o.clone(),
        (None, true) => a.input.clone(),
        (Some(o), true) if *o == a.input => o.clone(),
        (Some(_), true) => bail!("--in-place writes over the input; do not also give a different -o"),
        (None, false) => bail!("give -o OUTPUT or --in-place"),
    };
    let bar = Bar::new(a.quiet);
    let r = rekey::rekey(
        &a.input,
        &output,
        &old,
        &onnx_protect_core::protect::EncryptTo::key(new.clone()),
        &RekeyOptions { in_place: a.in_place, sync: a.sync, signing_keys: &[], progress: &bar },
    )
    .with_context(|| format!("rekey {}", a.input.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("re-encrypted {} bytes in {} tensors under the new key -> {}", r.rekeyed_bytes, r.tensors, r.output);
    }
    Ok(ExitCode::SUCCESS)
}
