//! `decrypt`: the original model back from a protected one, verified before it is renamed
//! into place; or, with `--stdout`, decrypted in memory and written to a pipe, never to a file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::memory::InMemory;
use onnx_protect_core::protect::{self, DecryptOptions};
use onnx_protect_keys::SignerKey;

use crate::args::key::{OpenKeyArgs, SignerArgs};
use crate::args::output::OutputArgs;
use crate::args::output::WriteArgs;
use crate::exit::usage;
use crate::progress::Bar;
use crate::stdio::{self, input_name, is_stdio};

#[derive(clap::Args)]
pub struct Args {
    /// The protected model; `-` reads it from standard input (no external data).
    input: PathBuf,
    /// Where to write the restored model; `-` is the same as --stdout.
    #[arg(short, long, required_unless_present_any = ["in_place", "stdout"])]
    output: Option<PathBuf>,
    #[command(flatten)]
    key: OpenKeyArgs,
    /// Overwrite the input (and its external data files).
    #[arg(long)]
    in_place: bool,
    /// Flush the outputs to the disk before renaming them into place (done anyway with --in-place).
    #[arg(long)]
    sync: bool,
    /// Tiered models: decrypt tiers up to T only (default: the key's own tier).
    #[arg(long, value_name = "T")]
    tier: Option<u32>,
    /// Decrypt in memory and write the model to standard output, which must be a pipe (docs/runtime.md).
    #[arg(long, conflicts_with_all = ["output", "in_place", "json"])]
    stdout: bool,
    /// With --stdout or -o -: write this external data file (by its location) instead of the model.
    #[arg(long, value_name = "LOCATION")]
    external: Option<String>,
    #[command(flatten)]
    signers: SignerArgs,
    #[command(flatten)]
    write: WriteArgs,
    #[command(flatten)]
    out: OutputArgs,
}

/// `decrypt DIR -o OUT`: a protected model folder decrypted into a new folder (docs/format.md §16).
fn decrypt_folder(a: &Args) -> Result<ExitCode> {
    let dir = a.input.display().to_string();
    let refused = [
        (a.in_place, "--in-place"),
        (a.stdout, "--stdout"),
        (a.external.is_some(), "--external"),
        (a.write.force, "--force"),
    ];
    if let Some((_, option)) = refused.iter().find(|(given, _)| *given) {
        usage!("{dir} is a model folder, which {option} does not apply to; see docs/cli.md#model-folders");
    }
    let Some(output) = a.output.as_deref().filter(|o| !is_stdio(o)) else {
        usage!(
            "{dir} is a model folder: give the new folder to write with -o OUT (every model under a directory \
             that is not a protected folder: onnx-protect batch decrypt --dir {dir} --out-dir OUT)"
        );
    };
    let key = a.key.required()?;
    let signers = a.signers.signers()?;
    let bar = Bar::new(a.out.quiet);
    let opts = DecryptOptions { sync: a.sync, signers: &signers, progress: &bar, ..DecryptOptions::default() };
    let r = onnx_protect_folder::decrypt(&a.input, output, &key, a.tier, &opts).map_err(|e| {
        // A directory that is no protected folder may hold models protected one by one.
        use onnx_protect_folder::FolderError as F;
        let alone = matches!(&e, F::NoModel { .. } | F::NotBound { .. })
            || matches!(&e, F::Model { source, .. } if source.kind() == onnx_protect_core::error::ErrorKind::NotProtected);
        let hint = if alone {
            format!(
                " (not a protected model folder; models protected one by one: onnx-protect batch decrypt --dir {dir} \
                 --out-dir OUT)"
            )
        } else {
            String::new()
        };
        anyhow::Error::new(e).context(format!("decrypt {dir}{hint}"))
    })?;
    for m in &r.models {
        a.out.warn(m.report.warning);
    }
    a.out.report(&r, false, || {
        let mut t = format!("decrypted model folder {} -> {}", r.input, r.output);
        for m in &r.models {
            let (path, d) = (onnx_protect_core::inspect::printable(&m.path), &m.report);
            t += &format!("\n  {path}: {} bytes in {} tensors", d.decrypted_bytes, d.tensors);
        }
        t + &format!("\n  copied {} other file(s), each checked against its hash", r.files.len())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `decrypt`.
pub fn run(a: Args) -> Result<ExitCode> {
    if !is_stdio(&a.input) && a.input.is_dir() {
        return decrypt_folder(&a);
    }
    let key = a.key.required()?;
    let signers = a.signers.signers()?;
    let target = if a.stdout { PathBuf::from("-") } else { stdio::output_of(&a.input, &a.output, a.in_place)? };
    if is_stdio(&target) {
        a.out.refuse_json_with_stdout(true)?;
        return decrypt_to_stdout(&a.input, &key, a.tier, &signers, a.external.as_deref());
    }
    if a.external.is_some() {
        usage!("--external picks the file written to standard output; it needs --stdout or -o -");
    }
    let input = stdio::Input::new(&a.input)?;
    let created = crate::dest::missing(crate::dest::dir_of(&target));
    let bar = Bar::new(a.out.quiet);
    let mut r = protect::decrypt_tier(
        input.path(),
        &target,
        &key,
        a.tier,
        &DecryptOptions {
            in_place: a.in_place,
            sync: a.sync,
            outputs: a.write.rules(),
            signers: &signers,
            progress: &bar,
        },
    )
    .with_context(|| format!("decrypt {}", input_name(&a.input)))?;
    crate::dest::note_created(created, a.out.quiet);
    r.input = a.input.display().to_string();
    a.out.warn(r.warning);
    a.out.report(&r, false, || {
        format!("decrypted {} bytes in {} tensors -> {}", r.decrypted_bytes, r.tensors, r.output)
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the model decrypted in memory (or one of its external data files) to
/// standard output, which must be a pipe or a socket: plaintext never goes to a file.
/// `input` `-` is a model read from standard input into memory.
/// `tier`: tiered models decrypted up to that tier only (default: the key's own tier).
pub fn decrypt_to_stdout(
    input: &Path,
    key: &KeySource,
    tier: Option<u32>,
    signers: &[SignerKey],
    external: Option<&str>,
) -> Result<ExitCode> {
    let out = std::io::stdout();
    refuse_files_and_terminals(&out)?;
    let d = if is_stdio(input) {
        let model = stdio::read_model()?;
        InMemory::model(&model, key).tier(tier).signers(signers).load()
    } else {
        InMemory::file(input, key).tier(tier).signers(signers).load()
    }
    .with_context(|| format!("decrypt {}", input_name(input)))?;
    if let Some(w) = d.warning() {
        eprintln!("warning: {w}");
    }
    let bytes: &[u8] = match external {
        None => &d,
        Some(loc) => match d.external().get(loc) {
            Some(b) => b,
            None => {
                let known: Vec<&str> = d.external().keys().map(String::as_str).collect();
                usage!(
                    "{} has no external data file '{loc}' (it has: {})",
                    input_name(input),
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )
            }
        },
    };
    let mut lock = out.lock();
    match lock.write_all(bytes).and_then(|_| lock.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to standard output"))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Standard output must be a pipe or a socket: a terminal is refused, and (on Unix) a file.
fn refuse_files_and_terminals(out: &std::io::Stdout) -> Result<()> {
    use std::io::IsTerminal;
    if out.is_terminal() {
        usage!("--stdout (-o -) writes a binary model; pipe it into a program instead of a terminal");
    }
    #[cfg(unix)]
    let fd = std::os::fd::AsFd::as_fd(out).try_clone_to_owned().context("cannot inspect standard output")?;
    #[cfg(unix)]
    if std::fs::File::from(fd).metadata().context("cannot inspect standard output")?.is_file() {
        usage!(
            "--stdout (-o -) refuses to write plaintext into a file; use `decrypt -o FILE` if a file is what you want"
        );
    }
    Ok(())
}
