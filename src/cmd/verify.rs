//! `verify`: every byte against the digest without a key; the MACs with one; signers if asked.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use onnx_protect_core::protect;

use crate::args::key::VerifyWith;
use crate::args::output::OutputArgs;
use crate::progress::Bar;
use crate::stdio::{self, input_name};

#[derive(clap::Args)]
pub struct Args {
    /// The protected model; `-` reads it from standard input (no external data).
    input: PathBuf,
    #[command(flatten)]
    with: VerifyWith,
    #[command(flatten)]
    out: OutputArgs,
}

/// `verify DIR`: a protected model folder (docs/format.md §16).
fn verify_folder(a: &Args) -> Result<ExitCode> {
    let key = a.with.key.source()?;
    let bar = Bar::new(a.out.quiet);
    let signers = a.with.signers.signers()?;
    let r = onnx_protect_folder::verify(&a.input, key.as_ref(), &signers, &bar)
        .with_context(|| format!("verify {}", a.input.display()))?;
    for m in &r.models {
        a.out.warn(m.report.warning);
    }
    a.out.report(&r, false, || {
        let how = if key.is_some() {
            "every byte and the MACs verified with the key"
        } else {
            "every byte matches the digests (keyless)"
        };
        let mut t = format!("ok: model folder {} (folder id {}): its bindings agree; {how}", r.input, r.folder_id);
        for m in &r.models {
            let (path, v) = (onnx_protect_core::inspect::printable(&m.path), &m.report);
            t += &format!("\n  {path}: {} tensors, {} encrypted bytes", v.tensors, v.encrypted_bytes);
            if !v.signers.is_empty() {
                t += &format!("; signed by {}", v.signers.join(", "));
            }
        }
        t + &format!("\n  {} other file(s) match their hashes", r.files.len())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `verify`.
pub fn run(a: Args) -> Result<ExitCode> {
    if !stdio::is_stdio(&a.input) && a.input.is_dir() {
        return verify_folder(&a);
    }
    let key = a.with.key.source()?;
    let input = stdio::Input::new(&a.input)?;
    let bar = Bar::new(a.out.quiet);
    let signers = a.with.signers.signers()?;
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
