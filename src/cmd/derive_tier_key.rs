//! `derive-tier-key`: the key of a lower access tier, derived one way from a higher one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use onnx_protect_core::protect;
use onnx_protect_crypto::KeyKind;

use crate::args::output::OutputArgs;
use crate::key_files::{fingerprint_hex, write_key_file};
use crate::stdio;

#[derive(clap::Args)]
pub struct Args {
    /// A key file: a master key (`keygen --tiers N`) or the key of a tier.
    #[arg(long, value_name = "FILE", required_unless_present_any = ["passphrase_env", "passphrase_file"], value_parser = stdio::file_path)]
    key_file: Option<PathBuf>,
    /// The tier of the given key; needed only for key files that do not record it (older files).
    /// With a passphrase: the model's number of tiers.
    #[arg(long)]
    from: Option<u32>,
    /// Environment variable holding the passphrase a tiered model was encrypted with (needs --model).
    #[arg(long, value_name = "VAR", conflicts_with_all = ["key_file", "passphrase_file"], requires = "model")]
    passphrase_env: Option<String>,
    /// File whose first line is that passphrase (needs --model).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["key_file"], requires = "model", value_parser = stdio::file_path)]
    passphrase_file: Option<PathBuf>,
    /// With a passphrase: the model it protects (its manifest holds the Argon2id
    /// parameters, so the tier keys are that model's).
    #[arg(long, value_name = "MODEL", value_parser = stdio::file_path)]
    model: Option<PathBuf>,
    /// The (lower) tier whose key to write.
    #[arg(long)]
    tier: u32,
    /// Where to write the derived key (a key file that records its tier). Never overwrites a file.
    #[arg(short, long, value_parser = stdio::file_path)]
    output: PathBuf,
    #[command(flatten)]
    out: OutputArgs,
}

/// The tier of the key in a key file: the one it records, or `--from` for a
/// file that records none. A `--from` that contradicts the file is an error.
fn tier_of_key_file(path: &std::path::Path, kind: KeyKind, from: Option<u32>) -> Result<u32> {
    match (kind.tier(), from) {
        (Some(recorded), Some(f)) if f != recorded => {
            bail!("key file {} holds {kind}, so it is the key of tier {recorded}, not --from {f}", path.display())
        }
        (Some(recorded), _) => Ok(recorded),
        (None, Some(f)) => Ok(f),
        (None, None) => bail!(
            "--from is required: key file {} does not record its tier (an older key file); give the tier of that key",
            path.display()
        ),
    }
}

/// `derive-tier-key`: the key of a lower tier, derived one way from a higher one.
pub fn run(a: Args) -> Result<ExitCode> {
    let (mut k, from) = match &a.key_file {
        Some(path) => {
            let file = crate::keys::read_key_file(path)?;
            let from = tier_of_key_file(path, file.kind(), a.from)?;
            (file.into_key(), from)
        }
        None => {
            let Some(model) = &a.model else { bail!("--model is required with a passphrase") };
            let source = crate::args::key::KeyArgs {
                passphrase_env: a.passphrase_env.clone(),
                passphrase_file: a.passphrase_file.clone(),
                ..Default::default()
            }
            .required()?;
            let m = onnx_protect_format::Model::open(model)?;
            let (k, tiers) =
                protect::top_master_key(&m, &source).with_context(|| format!("passphrase for {}", model.display()))?;
            if a.from.is_some_and(|f| f != tiers) {
                bail!("--from must be the model's number of tiers ({tiers}) with a passphrase");
            }
            (k, tiers)
        }
    };
    if a.tier == 0 || a.tier > from {
        bail!("--tier must be between 1 and {from} (the tier of the given key): a key only yields lower tiers");
    }
    for _ in a.tier..from {
        k = k.tier_down();
    }
    crate::dest::create_dir(crate::dest::dir_of(&a.output), a.out.quiet)?;
    write_key_file(&a.output, KeyKind::Tier { tier: a.tier }, &k)?;
    if a.out.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    if a.out.json {
        let fp = fingerprint_hex(&k);
        crate::output::emit(
            &serde_json::json!({"key_file": a.output.display().to_string(), "tier": a.tier, "fingerprint": fp})
                .to_string(),
        )?;
    } else {
        crate::output::emit(&format!("wrote the tier-{} key {}", a.tier, a.output.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
