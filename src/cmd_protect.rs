//! `keygen`, `encrypt`, `decrypt` and `verify`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use onnx_protect_core::protect::{self, DecryptOptions, EncryptOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_select::Policy;

use crate::keys::KeyArgs;
use crate::progress::Bar;

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Where to write the new key (64 hex digits and a newline, mode 0600). Refuses to overwrite.
    #[arg(short, long)]
    output: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn keygen(a: KeygenArgs) -> Result<ExitCode> {
    let key = MasterKey::generate()?;
    let hex = key.to_hex();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&a.output).with_context(|| format!("cannot create key file {}", a.output.display()))?;
    f.write_all(hex.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    let fp: String = key.fingerprint().iter().map(|b| format!("{b:02x}")).collect();
    if a.json {
        crate::output::emit(&serde_json::json!({"key_file": a.output.display().to_string(), "fingerprint": fp}).to_string())?;
    } else {
        crate::output::emit(&format!("wrote key {} (fingerprint {fp})", a.output.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct EncryptArgs {
    /// The model to protect.
    input: PathBuf,
    /// Where to write the protected model (external data files go next to it).
    #[arg(short, long, required_unless_present = "in_place")]
    output: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
    /// A TOML policy file (docs/policy.md); the built-in default otherwise.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Override a coefficient: OP=VALUE in [0, 1] (OP may be `*`). Repeatable.
    #[arg(long, value_name = "OP=C")]
    coefficient: Vec<String>,
    /// Override a mode: OP=ctr|fp. Repeatable.
    #[arg(long, value_name = "OP=MODE")]
    mode: Vec<String>,
    /// Override the split: OP=first-dim|N. Repeatable.
    #[arg(long, value_name = "OP=N")]
    subsequences: Vec<String>,
    /// Overwrite the input (and its external data files).
    #[arg(long)]
    in_place: bool,
    #[arg(long)]
    json: bool,
    #[arg(long, short)]
    quiet: bool,
}

pub fn load_policy(path: Option<&PathBuf>, coeff: &[String], mode: &[String], subs: &[String]) -> Result<Policy> {
    let mut p = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read policy {}", p.display()))?;
            Policy::from_toml(&text).with_context(|| format!("{}", p.display()))?
        }
        None => Policy::default(),
    };
    for c in coeff {
        p.apply_override("coefficient", c)?;
    }
    for m in mode {
        p.apply_override("mode", m)?;
    }
    for s in subs {
        p.apply_override("subsequences", s)?;
    }
    Ok(p)
}

fn output_of(input: &std::path::Path, output: &Option<PathBuf>, in_place: bool) -> Result<PathBuf> {
    match (output, in_place) {
        (Some(o), false) => Ok(o.clone()),
        (None, true) => Ok(input.to_path_buf()),
        (Some(o), true) if o == input => Ok(o.clone()),
        (Some(_), true) => bail!("--in-place writes over the input; do not also give a different -o"),
        (None, false) => bail!("give -o OUTPUT or --in-place"),
    }
}

pub fn encrypt(a: EncryptArgs) -> Result<ExitCode> {
    let policy = load_policy(a.policy.as_ref(), &a.coefficient, &a.mode, &a.subsequences)?;
    let key = a.key.required()?;
    let output = output_of(&a.input, &a.output, a.in_place)?;
    let bar = Bar::new(a.quiet);
    let r = protect::encrypt(
        &a.input,
        &output,
        &key,
        &EncryptOptions { policy: &policy, in_place: a.in_place, progress: &bar },
    )
    .with_context(|| format!("encrypt {}", a.input.display()))?;
    if a.json {
        crate::output::emit(&serde_json::to_string_pretty(&r)?)?;
    } else {
        let pct = if r.weight_bytes > 0 { 100.0 * r.encrypted_bytes as f64 / r.weight_bytes as f64 } else { 0.0 };
        crate::output::emit(&format!(
            "encrypted {} bytes in {} tensors ({pct:.2}% of {} weight bytes) -> {}",
            r.encrypted_bytes,
            r.tensors.len(),
            r.weight_bytes,
            r.output
        ))?;
        for (name, why) in &r.skipped {
            crate::output::emit(&format!("  skipped {name}: {why}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct DecryptArgs {
    /// The protected model.
    input: PathBuf,
    /// Where to write the restored model.
    #[arg(short, long, required_unless_present_any = ["in_place", "stdout"])]
    output: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
    /// Overwrite the input (and its external data files).
    #[arg(long)]
    in_place: bool,
    /// Decrypt in memory and write the model to standard output, which must be a pipe (docs/runtime.md).
    #[arg(long, conflicts_with_all = ["output", "in_place", "json"])]
    stdout: bool,
    /// With --stdout: write this external data file (by its location) instead of the model.
    #[arg(long, value_name = "LOCATION", requires = "stdout")]
    external: Option<String>,
    #[arg(long)]
    json: bool,
    #[arg(long, short)]
    quiet: bool,
}

pub fn decrypt(a: DecryptArgs) -> Result<ExitCode> {
    let key = a.key.required()?;
    if a.stdout {
        return crate::cmd_run::decrypt_to_stdout(&a.input, &key, a.external.as_deref());
    }
    let output = output_of(&a.input, &a.output, a.in_place)?;
    let bar = Bar::new(a.quiet);
    let r = protect::decrypt(&a.input, &output, &key, &DecryptOptions { in_place: a.in_place, progress: &bar })
        .with_context(|| format!("decrypt {}", a.input.display()))?;
    if a.json {
        crate::output::emit(&serde_json::to_string_pretty(&r)?)?;
    } else {
        crate::output::emit(&format!("decrypted {} bytes in {} tensors -> {}", r.decrypted_bytes, r.tensors, r.output))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The protected model.
    input: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    #[arg(long)]
    json: bool,
    #[arg(long, short)]
    quiet: bool,
}

pub fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let key = a.key.source()?;
    let bar = Bar::new(a.quiet);
    let r = protect::verify(&a.input, key.as_ref(), &bar).with_context(|| format!("verify {}", a.input.display()))?;
    if a.json {
        crate::output::emit(&serde_json::to_string_pretty(&r)?)?;
    } else {
        let how =
            if r.check == "mac" { "key and MAC verified" } else { "manifest and checksum verified (no key given)" };
        crate::output::emit(&format!("ok: {how}; {} tensors, {} encrypted bytes", r.tensors, r.encrypted_bytes))?;
    }
    Ok(ExitCode::SUCCESS)
}
