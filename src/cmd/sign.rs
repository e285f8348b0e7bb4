//! `sign`: publisher signatures added to a protected model.

use std::process::ExitCode;

use anyhow::{Context, Result};
use onnx_protect_core::protect;

use crate::args::entry::EntryArgs;
use crate::args::key::SignArgs;
use crate::args::output::{OutputArgs, WriteArgs};
use crate::exit::usage;
use crate::progress::Bar;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    entry: EntryArgs,
    #[command(flatten)]
    sign: SignArgs,
    #[command(flatten)]
    write: WriteArgs,
    #[command(flatten)]
    out: OutputArgs,
}

/// `sign`: adds publisher signatures to a protected model (after checking its content).
pub fn run(a: Args) -> Result<ExitCode> {
    let keys = a.sign.keys()?;
    if keys.is_empty() {
        usage!("give the signing key with --sign-key FILE (keygen --signing writes one)");
    }
    let output = a.entry.target();
    let created = crate::dest::missing(crate::dest::dir_of(&output));
    let bar = Bar::new(a.out.quiet);
    let r = protect::sign(&a.entry.input, &output, &keys, a.entry.in_place, &a.write.rules(), &bar)
        .with_context(|| format!("sign {}", a.entry.input.display()))?;
    crate::dest::note_created(created, a.out.quiet);
    a.out.report(&r, false, || format!("signed -> {} (signers: {})", r.output, r.signers.join(", ")))?;
    Ok(ExitCode::SUCCESS)
}
