//! `batch`: the arguments of `onnx_protect_batch::run`, the JSON-lines report,
//! the progress bar over files and the summary (docs/batch.md).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use indicatif::{HumanBytes, ProgressBar};
use onnx_protect_batch::{BatchError, FileResult, Inputs, Observer, Operation, Options, Shard, ShardBy};
use onnx_protect_format::write::check_destination;
use serde::Serialize;

use crate::args::change::ChangeArgs;
use crate::args::key::{NewKeyArgs, OpenKeyArgs};
use crate::args::output::OutputArgs;
use crate::args::policy::PolicyArgs;
use crate::exit::{self, usage};
use crate::stdio::file_path;

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    Encrypt,
    Decrypt,
    Rekey,
    Rewrap,
    Verify,
    /// Write an OpenSSF model-signing bundle beside each model (MODEL.sig), with --bundle-key.
    Sign,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ShardByArg {
    /// SHA-256 of the relative path: a file keeps its shard when the list changes.
    Hash,
    /// Position in the sorted list modulo N: shards differ in size by at most one file.
    Index,
}

#[derive(clap::Args)]
pub struct Args {
    /// What to do with every model.
    #[arg(value_enum)]
    op: Op,
    /// Process every `*.onnx` file under this directory (recursively).
    #[arg(long, value_name = "DIR", required_unless_present = "list", conflicts_with = "list", value_parser = file_path)]
    dir: Option<PathBuf>,
    /// Process the models named in this file, one path per line (`#` starts a comment line).
    #[arg(long, value_name = "FILE", value_parser = file_path)]
    list: Option<PathBuf>,
    /// With --list: where relative entries are resolved and what output paths are relative to
    /// (default: the current directory).
    #[arg(long, value_name = "DIR", requires = "list", value_parser = file_path)]
    base: Option<PathBuf>,
    /// Output root: each model goes to OUT/<its path relative to DIR or BASE>. Not needed for verify;
    /// not used by sign.
    #[arg(long, value_name = "OUT", value_parser = file_path)]
    out_dir: Option<PathBuf>,
    /// sign: the ECDSA private key (PEM) the bundles are signed with.
    #[arg(long, value_name = "KEY.pem", value_parser = file_path)]
    bundle_key: Option<PathBuf>,
    /// The key; for decrypt, rekey, rewrap and verify with a key, the licence models encrypted
    /// with --licence-authority need (one licence for every model: it names them all, by id or digest).
    #[command(flatten)]
    key: OpenKeyArgs,
    /// For rekey: the new key.
    #[command(flatten)]
    new_key: NewKeyArgs,
    /// For rewrap: the recipients to add and remove, and the signatures (as for `rewrap`).
    #[command(flatten)]
    change: ChangeArgs,
    /// For encrypt and rekey: accept a (new) passphrase shorter than 12 characters.
    #[arg(long)]
    allow_short_passphrase: bool,
    /// For encrypt: the policy (the same options as `encrypt`).
    #[command(flatten)]
    policy: PolicyArgs,
    /// Files processed at the same time (default: the number of CPUs).
    #[arg(long, short = 'j', value_name = "N")]
    jobs: Option<NonZeroUsize>,
    /// Process only shard I of N (0 ≤ I < N) of the sorted list.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// How files are assigned to shards.
    #[arg(long, value_enum, default_value = "index")]
    shard_by: ShardByArg,
    /// Write one JSON line per file to this file (created, or replacing the report of an
    /// earlier run; any other existing file only with --force).
    #[arg(long, value_name = "FILE.jsonl", value_parser = file_path)]
    report: Option<PathBuf>,
    /// Process every file, even those a previous run finished, and replace existing outputs
    /// that no record of an earlier run names (regular files only).
    #[arg(long)]
    force: bool,
    /// Flush each output to the disk before renaming it into place.
    #[arg(long)]
    sync: bool,
    // `--json`: the report lines on standard output instead of the summary.
    #[command(flatten)]
    out: OutputArgs,
}

/// Creates the report file, or truncates an existing one that is a report of an earlier
/// run (its first line is a report line). Any other existing file is replaced only with
/// `--force`, and a device, FIFO or socket never.
fn open_report(p: &Path, force: bool) -> Result<File> {
    let d = check_destination(p).with_context(|| format!("cannot write report {}", p.display()))?;
    if d.exists && !force && !is_report(p) {
        usage!("--report {}: the file exists and is not a batch report; pass --force to replace it", p.display());
    }
    if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    File::create(p).with_context(|| format!("cannot create report {}", p.display()))
}

/// Whether `p` is empty or starts with a line this command writes to a report.
fn is_report(p: &Path) -> bool {
    use std::io::BufRead;
    let Ok(f) = File::open(p) else { return false };
    let mut first = String::new();
    // A report line is short; a file whose first 64 KiB hold no newline is not one.
    match std::io::BufReader::new(f.take(64 << 10)).read_line(&mut first) {
        Ok(0) => true,
        Ok(_) => serde_json::from_str::<serde_json::Value>(&first)
            .is_ok_and(|v| ["path", "op", "status", "exit_code"].iter().all(|k| v.get(k).is_some())),
        Err(_) => false,
    }
}

/// Parses `I/N`.
fn parse_shard(s: &str, by: ShardByArg) -> Result<Shard> {
    let Some((i, n)) = s.split_once('/') else { usage!("--shard {s}: expected I/N, for example 0/4") };
    let Ok(i) = i.trim().parse::<u64>() else { usage!("--shard {s}: '{i}' is not a number") };
    let Ok(n) = n.trim().parse::<u64>() else { usage!("--shard {s}: '{n}' is not a number") };
    let by = match by {
        ShardByArg::Hash => ShardBy::Hash,
        ShardByArg::Index => ShardBy::Index,
    };
    match Shard::new(i, n, by) {
        Some(shard) => Ok(shard),
        None => usage!("--shard {s}: need 0 ≤ I < N"),
    }
}

/// One line of the report.
#[derive(Serialize)]
struct Line<'a> {
    path: &'a str,
    op: &'a str,
    status: &'static str,
    input: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    input_bytes: u64,
    output_bytes: u64,
    seconds: f64,
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_kind: Option<&'static str>,
    exit_code: u8,
}

/// Writes the report lines and moves the bar as files finish.
struct Reporter {
    op: String,
    file: Option<Mutex<File>>,
    stdout: bool,
    bar: Option<ProgressBar>,
    bytes_done: AtomicU64,
    /// The first error writing the report; the run ends with it.
    error: Mutex<Option<anyhow::Error>>,
}

impl Reporter {
    fn line(&self, text: &str) -> Result<()> {
        if let Some(f) = &self.file {
            let mut f = f.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f.write_all(text.as_bytes())
                .and_then(|_| f.write_all(b"\n"))
                .and_then(|_| f.flush())
                .context("cannot write the report")?;
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
        Ok(())
    }
}

impl Observer for Reporter {
    fn start(&self, files: usize) {
        if let Some(pb) = &self.bar {
            pb.set_length(files as u64);
            pb.set_prefix(self.op.clone());
            pb.set_message("0 B");
        }
    }

    fn done(&self, r: &FileResult<'_>) {
        let line = Line {
            path: &r.item.rel,
            op: &self.op,
            status: r.status.as_str(),
            input: r.item.input.display().to_string(),
            output: r.output.map(|p| p.display().to_string()),
            input_bytes: r.input_bytes,
            output_bytes: r.output_bytes,
            seconds: r.elapsed.as_secs_f64(),
            error: r.error.map(|e| e.to_string()),
            error_kind: r.error.map(|e| e.name()),
            exit_code: r.error.map(|e| exit::code_for_error(e)).unwrap_or(exit::OK),
        };
        let text = serde_json::to_string(&line).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        if let Err(e) = self.line(&text) {
            self.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(e);
        }
        let done = self.bytes_done.fetch_add(r.input_bytes, Ordering::SeqCst) + r.input_bytes;
        if let Some(pb) = &self.bar {
            pb.set_message(HumanBytes(done).to_string());
            pb.inc(1);
        }
    }
}

fn progress_bar(quiet: bool) -> Option<ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(0);
    if let Some(style) =
        crate::progress::style("{prefix:>8} [{bar:40}] {pos}/{len} files, {msg} {elapsed_precise} {eta}")
    {
        pb.set_style(style);
    }
    Some(pb)
}

/// Refuses the options of another operation (a usage error).
fn refuse_other_operations_options(a: &Args) -> Result<()> {
    if a.op != Op::Encrypt && a.policy.any() {
        usage!("the policy options (--policy, --coefficient, --mode, --subsequences, --selection, --seed, --tiers, --tier-shares) apply to batch encrypt only");
    }
    if matches!(a.op, Op::Encrypt | Op::Sign) && a.key.licence.licence.is_some() {
        usage!("--licence applies to batch decrypt, rekey, rewrap and verify (the operations that open a model)");
    }
    if a.op != Op::Rekey && a.new_key.any() {
        usage!("--new-key-* options apply to batch rekey only");
    }
    if a.op != Op::Rewrap && a.change.any() {
        usage!("the recipient options (--add-key-file, --recipient..., --remove..., --sign-key, --drop-signatures) apply to batch rewrap only");
    }
    Ok(())
}

pub fn run(a: Args) -> Result<ExitCode> {
    refuse_other_operations_options(&a)?;
    // The operation as it is typed.
    let op_name = clap::ValueEnum::to_possible_value(&a.op).map(|v| v.get_name().to_string()).unwrap_or_default();
    if a.out_dir.is_none() && a.op != Op::Verify && a.op != Op::Sign {
        usage!("batch {op_name} needs --out-dir");
    }
    if a.op == Op::Sign {
        if a.out_dir.is_some() {
            usage!("batch sign writes each bundle beside its model; --out-dir does not apply");
        }
        if a.bundle_key.is_none() {
            usage!("batch sign needs --bundle-key KEY.pem (an ECDSA private key, `bundle keygen` writes one)");
        }
    }
    let bundle_key = a.bundle_key.as_deref().map(crate::common::read_private).transpose()?;
    let shard = a.shard.as_deref().map(|s| parse_shard(s, a.shard_by)).transpose()?;
    let policy = if a.op == Op::Encrypt { Some(a.policy.build()?) } else { None };
    let key = match a.op {
        Op::Verify => a.key.source()?,
        Op::Sign => a.key.key.source()?,
        Op::Encrypt => {
            let k = a.key.key.required_master_for(policy.as_ref().map_or(1, |p| p.tiers))?;
            crate::keys::check_new_passphrase(&k, a.allow_short_passphrase, "the passphrase")?;
            Some(k)
        }
        Op::Decrypt | Op::Rekey | Op::Rewrap => Some(a.key.required()?),
    };
    let new_key = if a.op == Op::Rekey { Some(a.new_key.required(a.allow_short_passphrase, None)?) } else { None };
    let change = if a.op == Op::Rewrap { Some(a.change.build(None)?) } else { None };
    let operation = match (a.op, &key, &new_key, &policy) {
        (Op::Encrypt, Some(key), _, Some(policy)) => Operation::Encrypt { key, policy },
        (Op::Decrypt, Some(key), _, _) => Operation::Decrypt { key },
        (Op::Rekey, Some(key), Some(new_key), _) => {
            Operation::Rekey { key, new_key, recipient_of: &crate::keys::kept_recipient }
        }
        (Op::Rewrap, Some(key), _, _) => match &change {
            Some(c) => Operation::Rewrap {
                key,
                add: &c.add,
                remove: &c.remove,
                signing_keys: &c.signing_keys,
                drop_signatures: c.drop_signatures,
            },
            None => usage!("batch rewrap: nothing to change"),
        },
        (Op::Verify, key, _, _) => Operation::Verify { key: key.as_ref() },
        (Op::Sign, _, _, _) => match &bundle_key {
            Some(key) => Operation::SignBundle { key },
            None => usage!("batch sign needs --bundle-key"),
        },
        _ => usage!("batch {op_name}: a key option is missing"),
    };
    let inputs = match (&a.dir, &a.list) {
        (Some(d), _) => Inputs::Dir(d.clone()),
        (None, Some(l)) => Inputs::List { file: l.clone(), base: a.base.clone() },
        (None, None) => usage!("give --dir DIR or --list FILE"),
    };
    let jobs = a.jobs.unwrap_or_else(|| std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN));
    let created = a.out_dir.as_deref().and_then(crate::dest::missing);
    let opts = Options {
        operation,
        inputs,
        out_dir: a.out_dir.clone(),
        jobs,
        shard,
        force: a.force,
        make_dirs: true,
        sync: a.sync,
    };
    let file = match &a.report {
        Some(p) => Some(Mutex::new(open_report(p, a.force)?)),
        None => None,
    };
    let reporter = Reporter {
        op: op_name.clone(),
        file,
        stdout: a.out.json,
        bar: progress_bar(a.out.quiet),
        bytes_done: AtomicU64::new(0),
        error: Mutex::new(None),
    };
    let summary = match onnx_protect_batch::run(&opts, &reporter) {
        Ok(s) => s,
        Err(BatchError::OutputIsInput { .. }) => {
            usage!("--out-dir is the input directory; write the outputs somewhere else")
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(pb) = &reporter.bar {
        pb.finish_and_clear();
    }
    crate::dest::note_created(created, a.out.quiet);
    if let Some(e) = reporter.error.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
        return Err(e);
    }
    summarize(&a, &op_name, shard, &summary)
}

/// Prints the failed files and the summary line, and chooses the exit code: the failed
/// files' common code, else the generic failure.
fn summarize(a: &Args, op_name: &str, shard: Option<Shard>, summary: &onnx_protect_batch::Summary) -> Result<ExitCode> {
    let failed = summary.failed.len();
    let print_summary = !a.out.json && (failed > 0 || !a.out.quiet);
    if print_summary {
        for (rel, err) in &summary.failed {
            println!("failed {rel}: {err}");
        }
        let shard_note = match shard {
            Some(s) => format!(" (shard {}/{} of {})", s.index(), s.count(), summary.listed),
            None => String::new(),
        };
        println!(
            "batch {op_name}: {} files{shard_note}: {} ok, {} skipped, {failed} failed; {} read",
            summary.files,
            summary.ok,
            summary.skipped,
            HumanBytes(summary.bytes_read)
        );
    }
    if failed == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "error: batch {op_name}: {failed} of {} files failed{}",
        summary.files,
        if a.report.is_some() { " (see the report)" } else { "" }
    );
    let codes: BTreeSet<u8> = summary.failed.iter().map(|(_, e)| exit::code_for_error(e)).collect();
    let mut codes = codes.into_iter();
    Ok(ExitCode::from(match (codes.next(), codes.next()) {
        (Some(one), None) => one,
        _ => exit::FAILURE,
    }))
}
