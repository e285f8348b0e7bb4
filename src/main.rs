//! `onnx-protect`: selective, authenticated encryption of ONNX model weights.
//!
//! This binary is the only place that prints, draws progress bars and chooses
//! exit codes (see `docs/cli.md`).

// Doc comments on the clap structs are `--help` text, where `<name>` stands for a value.
#![allow(rustdoc::invalid_html_tags)]

#[cfg(feature = "tract")]
mod cmd_assess;
mod cmd_batch;
mod cmd_check;
mod cmd_inspect;
mod cmd_policy;
mod cmd_protect;
mod cmd_rekey;
mod cmd_run;
mod cmd_transform;
mod exit;
mod keys;
mod output;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "onnx-protect", version, about = "Protect ONNX models by encrypting selected weights")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Summarise a model: versions, operators, weights and where they are stored.
    Inspect(cmd_inspect::Args),
    /// Write a new random 256-bit key file.
    Keygen(cmd_protect::KeygenArgs),
    /// Encrypt selected weights of a model (policy: docs/policy.md).
    Encrypt(cmd_protect::EncryptArgs),
    /// Verify and decrypt a protected model, restoring the original bytes.
    Decrypt(cmd_protect::DecryptArgs),
    /// Check a protected model: its checksum without a key, its MAC with one.
    Verify(cmd_protect::VerifyArgs),
    /// Write the key of a lower access tier, derived one way from a higher tier's key.
    DeriveTierKey(cmd_protect::DeriveTierKeyArgs),
    /// Re-encrypt a protected model under a new key (verifies the old key and MAC first).
    Rekey(cmd_rekey::Args),
    /// Encrypt, decrypt, rekey or verify many models: parallel, resumable, shardable (docs/batch.md).
    Batch(Box<cmd_batch::Args>),
    /// CI gate: fail unless every model is protected, intact and as strong as a policy asks (docs/ci.md).
    Check(cmd_check::Args),
    /// Apply (or undo) a key-derived block-wise transform to images or .npy tensors (docs/transforms.md).
    TransformInput(cmd_transform::TransformInputArgs),
    /// Rewrite a patch-embedding model (ConvMixer, ViT) to work only on key-transformed inputs.
    EncryptPatchEmbedding(cmd_transform::EncryptPatchEmbeddingArgs),
    /// Run a model in tract, decrypted in memory with the key, or as it is without one.
    #[cfg(feature = "tract")]
    Run(cmd_run::Args),
    /// How strong is the protection? Original, the key-less attacks, decrypted, each access tier: one table.
    #[cfg(feature = "tract")]
    Assess(cmd_assess::Args),
    /// Policies: `policy search` finds the smallest one that resists the key-less attacks on your data.
    Policy(cmd_policy::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => cmd_inspect::run(a),
        Command::Keygen(a) => cmd_protect::keygen(a),
        Command::Encrypt(a) => cmd_protect::encrypt(a),
        Command::Decrypt(a) => cmd_protect::decrypt(a),
        Command::Verify(a) => cmd_protect::verify(a),
        Command::DeriveTierKey(a) => cmd_protect::derive_tier_key(a),
        Command::Rekey(a) => cmd_rekey::run(a),
        Command::Batch(a) => cmd_batch::run(*a),
        Command::Check(a) => cmd_check::run(a),
        Command::TransformInput(a) => cmd_transform::transform_input(a),
        Command::EncryptPatchEmbedding(a) => cmd_transform::encrypt_patch_embedding_cmd(a),
        #[cfg(feature = "tract")]
        Command::Run(a) => cmd_run::run(a),
        #[cfg(feature = "tract")]
        Command::Assess(a) => cmd_assess::run(a),
        Command::Policy(a) => cmd_policy::run(a),
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
