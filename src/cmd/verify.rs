//! `verify`: every byte against the digest without a key; the MACs with one; signers if asked.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use onnx_protect_core::protect;

use crate::args::key::{OpenKeyArgs, SignerArgs};
use crate::args::output::OutputArgs;
use crate::progress::Bar;
use crate::stdio::{self, input_name};

#[derive(clap::Args)]
pub struct Args {
    /// The protected model; `-` reads it from standard input (no external data).
    input: PathBuf,
    #[command(flatten)]
    key: OpenKeyArgs,
    #[command(flatten)]
    signers: SignerArgs,
    #[command(flatten)]
    out: OutputArgs,
}

/// `verify`.
pub fn run(a: Args) -> Result<ExitCode> {
    let key = a.key.source()?;
    let input = stdio::Input::new(&a.input)?;
    let bar = Bar::new(a.out.quiet);
    let signers = a.signers.signers()?;
    let mut r = protect::verify_signed(input.path(), key.as_ref(), &signers, &bar)
        .with_context(|| format!("verify {}", input_name(&a.input)))?;
    r.input = a.input.display().to_string();
    a.out.warn(r.warning);
    a.out.report(&r, false, || {
        let how = match (r.check, r.format_version) {
            ("mac", 2) => "every byte and the MACs verified with the key",
            ("mac", _) => "key and MAC of the encrypted bytes verified (format 1)",
            (_, 2) => "every byte matches the manifest's digest (keyless: detects accidents, not attacks)",
            _ => "manifest and checksum of the encrypted bytes verified (format 1, no key given)",
        };
        let how =
            if r.signers.is_empty() { how.to_string() } else { format!("{how}; signed by {}", r.signers.join(", ")) };
        let restored = if r.restored_bytes > 0 {
            format!(" ({} more in decrypted tiers, in clear)", r.restored_bytes)
        } else {
            String::new()
        };
        format!("ok: {how}; {} tensors, {} encrypted bytes{restored}", r.tensors, r.encrypted_bytes)
    })?;
    Ok(ExitCode::SUCCESS)
}
