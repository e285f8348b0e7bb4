//! `onnx-protect`: selective, authenticated encryption of ONNX model weights.
//!
//! This binary is the only place that prints, draws progress bars and chooses
//! exit codes (see `docs/cli.md`).

#![forbid(unsafe_code)]
// Doc comments on the clap structs are `--help` text, where `<name>` stands for a value.
#![allow(rustdoc::invalid_html_tags)]

mod args;
mod cmd;
mod common;
mod dest;
mod exit;
mod fingerprint;
mod fingerprint_check;
mod key_files;
mod keys;
mod output;
mod progress;
mod stdio;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "onnx-protect",
    version,
    about = "Protect ONNX models by encrypting selected weights",
    after_help = exit::HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Summarise a model: versions, operators, weights and where they are stored.
    Inspect(cmd::inspect::Args),
    /// Write a new key: a 256-bit key file, an Ed25519 signing key (--signing), an age X25519 identity (--recipient) or a fingerprint secret (--fingerprint-secret).
    Keygen(cmd::keygen::Args),
    /// Encrypt selected weights of a model (policy: docs/policy.md).
    Encrypt(Box<cmd::encrypt::Args>),
    /// Verify and decrypt a protected model, restoring the original bytes.
    Decrypt(cmd::decrypt::Args),
    /// Check a protected model: every byte against its digest without a key, the MACs with one, signers if asked.
    Verify(cmd::verify::Args),
    /// Add a publisher signature (Ed25519) to a protected model.
    Sign(cmd::sign::Args),
    /// Signed licences for models encrypted with --licence-authority: issue (docs/shipping.md).
    #[command(subcommand)]
    Licence(cmd::licence::Command),
    /// OpenSSF model-signing bundles for any model file or directory: keygen, sign, verify (docs/signing.md).
    #[command(subcommand)]
    Bundle(cmd::bundle::Command),
    /// Add or remove the recipients of a protected model without touching a weight (key rotation by re-wrapping).
    Rewrap(cmd::rewrap::Args),
    /// Write the key of a lower access tier, derived one way from a higher tier's key.
    DeriveTierKey(cmd::derive_tier_key::Args),
    /// Re-encrypt a protected model under new data keys (verifies the old key and every byte first).
    Rekey(cmd::rekey::Args),
    /// Encrypt, decrypt, rekey or verify many models: parallel, resumable, shardable (docs/batch.md).
    Batch(Box<cmd::batch::Args>),
    /// CI gate: fail unless every model is protected, intact and as strong as a policy asks (docs/ci.md).
    Check(cmd::check::Args),
    /// Apply (or undo) a key-derived block-wise transform to images or .npy tensors (docs/transforms.md).
    TransformInput(cmd::transform::TransformInputArgs),
    /// Rewrite a patch-embedding model (ConvMixer, ViT) to work only on key-transformed inputs.
    EncryptPatchEmbedding(cmd::transform::EncryptPatchEmbeddingArgs),
    /// Name the recipient whose fingerprinted copy a suspect model is (docs/tracing.md).
    Trace(cmd::trace::Args),
    /// Run a model in tract, decrypted in memory with the key, or as it is without one.
    #[cfg(feature = "tract")]
    #[command(mut_arg("identity", |a| a.short(None)))]
    Run(cmd::run::Args),
    /// How strong is the protection? Original, the key-less attacks, decrypted, each access tier: one table.
    ///
    /// The training attacks (re-learning the encrypted tensors with everything clear frozen,
    /// fine-tuning, against training from scratch) need PyTorch: python3 -m onnx_protect.assess
    /// PROTECTED.onnx --data train.npz --test test.npz (docs/protection.md#training-attacks).
    #[cfg(feature = "tract")]
    Assess(cmd::assess::Args),
    /// Policies: `policy search` finds the smallest one that resists the key-less attacks on your data.
    #[command(subcommand)]
    Policy(cmd::policy::Command),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on standard output.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (onnx-protect.1 and one per command) into a directory.
    Man(ManArgs),
}

#[derive(clap::Args)]
struct ManArgs {
    /// The directory to write the pages into; without it, the main page goes to standard output.
    #[arg(short, long, value_name = "DIR", value_parser = stdio::file_path)]
    output: Option<PathBuf>,
    #[command(flatten)]
    write: args::output::WriteArgs,
}

/// `completions SHELL`: the script clap_complete generates from these definitions.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "onnx-protect", &mut script);
    output::emit(String::from_utf8_lossy(&script).trim_end())?;
    Ok(ExitCode::SUCCESS)
}

/// `man [-o DIR]`: roff pages clap_mangen generates from these definitions.
fn man(a: ManArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    // Built, so both forms list the same subcommands (`help` included).
    cmd.build();
    match &a.output {
        Some(dir) => {
            dest::create_dir(dir, false)?;
            // The pages this writes that are there already: replaced only with --force,
            // and only if they are regular files.
            for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
                let p = e.with_context(|| format!("cannot read {}", dir.display()))?.path();
                let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if n.starts_with("onnx-protect") && n.ends_with(".1") {
                    a.write.check_file(&p)?;
                }
            }
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write the pages into {}", dir.display()))?;
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page).context("cannot render the manual page")?;
            output::emit(String::from_utf8_lossy(&page).trim_end())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // The TSS 2.0 libraries print their own log lines on standard error; errors here are one
    // line. Set before any thread starts.
    if cfg!(feature = "tpm") && std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return exit::clap_error(e),
    };
    let result = match cli.command {
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Keygen(a) => cmd::keygen::run(a),
        Command::Encrypt(a) => cmd::encrypt::run(*a),
        Command::Decrypt(a) => cmd::decrypt::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Sign(a) => cmd::sign::run(a),
        Command::Bundle(a) => cmd::bundle::run(a),
        Command::Licence(a) => cmd::licence::run(a),
        Command::Rewrap(a) => cmd::rewrap::run(a),
        Command::DeriveTierKey(a) => cmd::derive_tier_key::run(a),
        Command::Rekey(a) => cmd::rekey::run(a),
        Command::Batch(a) => cmd::batch::run(*a),
        Command::Check(a) => cmd::check::run(a),
        Command::TransformInput(a) => cmd::transform::transform_input(a),
        Command::EncryptPatchEmbedding(a) => cmd::transform::encrypt_patch_embedding_cmd(a),
        Command::Trace(a) => cmd::trace::run(a),
        #[cfg(feature = "tract")]
        Command::Run(a) => cmd::run::run(a),
        #[cfg(feature = "tract")]
        Command::Assess(a) => cmd::assess::run(a),
        Command::Policy(a) => cmd::policy::run(a),
        Command::Completions { shell } => completions(shell),
        Command::Man(a) => man(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let code = exit::code_for(&e);
            eprintln!("error: {e:#}");
            if let Some(hint) = exit::hint_for(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(code)
        }
    }
}
