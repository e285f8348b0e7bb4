//! `onnx-protect`: selective, authenticated encryption of ONNX model weights.
//!
//! This binary is the only place that prints, draws progress bars and chooses
//! exit codes (see `docs/cli.md`).

mod cmd_inspect;
mod exit;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => cmd_inspect::run(a),
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
