//! `batch`: encrypt, decrypt, rekey or verify many models (docs/batch.md).
//!
//! * The file list is a directory walk (`--dir`, every `*.onnx`) or a list file
//!   (`--list`), sorted by relative path. `--shard I/N` keeps a deterministic
//!   part of it.
//! * Each model is written to `OUT/<relative path>`, external data files next
//!   to it. The library functions stage every output in a temporary file and
//!   rename it into place, so each output is either absent, old or complete.
//! * After a file's outputs are in place, a record is written atomically to
//!   `OUT/.onnx-protect-batch/done/<relative path>.json`. A re-run skips a file
//!   when its record names the same operation and settings, the same input
//!   SHA-256, and outputs that still exist with the recorded SHA-256.
//! * Files run in parallel on `--jobs` worker threads; one JSON line per file
//!   goes to `--report` (and to stdout with `--json`) as soon as it finishes.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use onnx_protect_core::protect::{self, DecryptOptions, EncryptOptions, KeySource};
use onnx_protect_core::rekey::{self, RekeyOptions};
use onnx_protect_crypto::Checksum;
use onnx_protect_format::{Model, NoProgress};
use onnx_protect_select::Policy;
use serde::{Deserialize, Serialize};

use crate::cmd_protect::PolicyArgs;
use crate::cmd_rekey::NewKeyArgs;
use crate::exit;
use crate::keys::KeyArgs;

/// Name of the state directory inside `--out-dir`.
pub const STATE_DIR: &str = ".onnx-protect-batch";

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    Encrypt,
    Decrypt,
    Rekey,
    Verify,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::Rekey => "rekey",
            Op::Verify => "verify",
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ShardBy {
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
    #[arg(long, value_name = "DIR", required_unless_present = "list", conflicts_with = "list")]
    dir: Option<PathBuf>,
    /// Process the models named in this file, one path per line (`#` starts a comment line).
    #[arg(long, value_name = "FILE")]
    list: Option<PathBuf>,
    /// With --list: where relative entries are resolved and what output paths are relative to
    /// (default: the current directory).
    #[arg(long, value_name = "DIR", requires = "list")]
    base: Option<PathBuf>,
    /// Output root: each model goes to OUT/<its path relative to DIR or BASE>. Not needed for verify.
    #[arg(long, value_name = "OUT")]
    out_dir: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
    /// For rekey: the new key.
    #[command(flatten)]
    new_key: NewKeyArgs,
    /// For encrypt: the policy (the same options as `encrypt`).
    #[command(flatten)]
    policy: PolicyArgs,
    /// Files processed at the same time (default: the number of CPUs).
    #[arg(long, short = 'j', value_name = "N")]
    jobs: Option<usize>,
    /// Process only shard I of N (0 ≤ I < N) of the sorted list.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// How files are assigned to shards.
    #[arg(long, value_enum, default_value = "index")]
    shard_by: ShardBy,
    /// Write one JSON line per file to this file (created or truncated).
    #[arg(long, value_name = "FILE.jsonl")]
    report: Option<PathBuf>,
    /// Print the JSON lines on stdout as well.
    #[arg(long)]
    json: bool,
    /// Process every file, even those a previous run finished.
    #[arg(long)]
    force: bool,
    /// Flush each output to the disk before renaming it into place.
    #[arg(long)]
    sync: bool,
    #[arg(long, short)]
    quiet: bool,
}

/// One model to process.
#[derive(Debug, Clone)]
pub struct Item {
    /// Path relative to the walk root or list base, with `/` separators.
    pub rel: String,
    pub input: PathBuf,
}

/// One line of the report.
#[derive(Serialize)]
struct Line<'a> {
    path: &'a str,
    op: &'static str,
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

/// A finished file's record in `OUT/.onnx-protect-batch/done/`.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Record {
    version: u32,
    op: String,
    settings: String,
    input_blake3: String,
    input_bytes: u64,
    outputs: Vec<OutputRecord>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct OutputRecord {
    /// Relative to the output root, `/` separators.
    path: String,
    bytes: u64,
    blake3: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses `I/N`.
pub fn parse_shard(s: &str) -> Result<(u64, u64)> {
    let (i, n) = s.split_once('/').ok_or_else(|| anyhow!("--shard {s}: expected I/N, for example 0/4"))?;
    let i: u64 = i.trim().parse().map_err(|_| anyhow!("--shard {s}: '{i}' is not a number"))?;
    let n: u64 = n.trim().parse().map_err(|_| anyhow!("--shard {s}: '{n}' is not a number"))?;
    if n == 0 || i >= n {
        bail!("--shard {s}: need 0 ≤ I < N");
    }
    Ok((i, n))
}

/// The shard of a relative path under `--shard-by hash`: the first 8 bytes of
/// SHA-256(path), big-endian, modulo N.
pub fn hash_shard(rel: &str, n: u64) -> u64 {
    let mut c = Checksum::new();
    c.update(rel.as_bytes());
    let d = c.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first) % n
}

fn rel_string(rel: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => {
                parts.push(s.to_str().ok_or_else(|| anyhow!("path {} is not valid UTF-8", rel.display()))?)
            }
            Component::CurDir => {}
            _ => bail!("path {} leaves the base directory", rel.display()),
        }
    }
    if parts.is_empty() {
        bail!("empty path in the list");
    }
    Ok(parts.join("/"))
}

fn is_model(name: &std::ffi::OsStr) -> bool {
    Path::new(name).extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

fn walk(root: &Path, dir: &Path, skip: Option<&Path>, out: &mut Vec<Item>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read directory {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("cannot read directory {}", dir.display()))?;
        let name = e.file_name();
        if name.to_string_lossy().starts_with(".onnx-protect") {
            continue;
        }
        let path = e.path();
        let ft = e.file_type().with_context(|| format!("cannot stat {}", path.display()))?;
        if ft.is_dir() {
            if let (Some(skip), Ok(c)) = (skip, std::fs::canonicalize(&path)) {
                if c == skip {
                    continue;
                }
            }
            walk(root, &path, skip, out)?;
        } else if is_model(&name) && (ft.is_file() || (ft.is_symlink() && path.is_file())) {
            let rel =
                path.strip_prefix(root).map_err(|_| anyhow!("{} is outside {}", path.display(), root.display()))?;
            out.push(Item { rel: rel_string(rel)?, input: path.clone() });
        }
    }
    Ok(())
}

/// The sorted, de-duplicated list of models.
fn collect(a: &Args, out_dir: Option<&Path>) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    if let Some(dir) = &a.dir {
        if !dir.is_dir() {
            bail!("--dir {}: not a directory", dir.display());
        }
        let skip = out_dir.and_then(|o| std::fs::canonicalize(o).ok());
        walk(dir, dir, skip.as_deref(), &mut items)?;
    } else if let Some(list) = &a.list {
        let text = std::fs::read_to_string(list).with_context(|| format!("cannot read list {}", list.display()))?;
        let base = a.base.clone().unwrap_or_else(|| PathBuf::from("."));
        let base_abs = std::path::absolute(&base).with_context(|| format!("base {}", base.display()))?;
        for (no, line) in text.lines().enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let p = Path::new(line);
            let (input, rel) = if p.is_absolute() {
                let rel = p.strip_prefix(&base_abs).map_err(|_| {
                    anyhow!("{}:{}: {} is not under the base {}", list.display(), no + 1, line, base_abs.display())
                })?;
                (p.to_path_buf(), rel.to_path_buf())
            } else {
                (base.join(p), p.to_path_buf())
            };
            let rel = rel_string(&rel).with_context(|| format!("{}:{}", list.display(), no + 1))?;
            items.push(Item { rel, input });
        }
    }
    items.sort_by(|x, y| x.rel.cmp(&y.rel));
    items.dedup_by(|x, y| x.rel == y.rel);
    Ok(items)
}

/// Keeps the items of shard `i` of `n`.
pub fn shard(items: Vec<Item>, i: u64, n: u64, by: ShardBy) -> Vec<Item> {
    items
        .into_iter()
        .enumerate()
        .filter(|(k, it)| match by {
            ShardBy::Index => *k as u64 % n == i,
            ShardBy::Hash => hash_shard(&it.rel, n) == i,
        })
        .map(|(_, it)| it)
        .collect()
}

fn key_id(k: &KeySource) -> String {
    match k {
        KeySource::Key(m) => format!("key:{}", hex(&m.fingerprint())),
        KeySource::Passphrase(_) => "passphrase".to_string(),
        KeySource::Identity(_) => "identity".to_string(),
    }
}

/// What the job needs, shared by the workers.
struct Job {
    op: Op,
    key: Option<KeySource>,
    new_key: Option<KeySource>,
    policy: Option<Policy>,
    out_dir: Option<PathBuf>,
    settings: String,
    force: bool,
    sync: bool,
    /// Output path → relative path of the model that writes it.
    claims: Mutex<HashMap<PathBuf, String>>,
}

struct Outcome {
    status: &'static str,
    output: Option<PathBuf>,
    input_bytes: u64,
    output_bytes: u64,
    error: Option<anyhow::Error>,
}

/// The version of [`Record`]; records of other versions are not trusted (the file is redone).
const RECORD_VERSION: u32 = 2;

fn blake3_file(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut c = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = std::io::Read::read(&mut f, &mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if k == 0 {
            break;
        }
        c.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex(c.finalize().as_bytes())))
}

/// BLAKE3 over the model file and its external data files (in model order), each
/// preceded by its location and length. External files are hashed in pieces whose
/// pages are released afterwards, so the resident set stays small.
fn input_digest(model: &Model) -> Result<(u64, String)> {
    let mut c = blake3::Hasher::new();
    let bytes = model.bytes();
    let mut total = bytes.len() as u64;
    c.update(&(bytes.len() as u64).to_be_bytes());
    c.update(bytes);
    for f in &model.external_files {
        let b = f.bytes()?;
        total += b.len() as u64;
        c.update(&(f.location.len() as u64).to_be_bytes());
        c.update(f.location.as_bytes());
        c.update(&(b.len() as u64).to_be_bytes());
        let mut at = 0;
        for piece in b.chunks(64 << 20) {
            c.update(piece);
            f.release(at as u64..(at + piece.len()) as u64);
            at += piece.len();
        }
    }
    Ok((total, hex(c.finalize().as_bytes())))
}

fn record_path(out_dir: &Path, rel: &str) -> PathBuf {
    out_dir.join(STATE_DIR).join("done").join(format!("{rel}.json"))
}

fn read_record(path: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes `text` to `path` atomically (temporary file in the same directory, then rename).
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let tmp = dir.join(format!(".onnx-protect-{}-{n}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write()
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            anyhow!(e)
        })
        .with_context(|| format!("cannot write {}", path.display()))
}

fn need(k: &Option<KeySource>) -> Result<&KeySource> {
    k.as_ref().ok_or_else(|| anyhow!("a key is required"))
}

fn rel_of(out_dir: &Path, p: &Path) -> Result<String> {
    rel_string(p.strip_prefix(out_dir).map_err(|_| anyhow!("{} is outside {}", p.display(), out_dir.display()))?)
}

/// Whether a previous run finished this file with the same settings and input.
fn finished(out_dir: &Path, rel: &str, op: Op, settings: &str, digest: &str) -> bool {
    let Some(r) = read_record(&record_path(out_dir, rel)) else { return false };
    r.version == RECORD_VERSION
        && r.op == op.name()
        && r.settings == settings
        && r.input_blake3 == digest
        && r.outputs.iter().all(|o| {
            let p = out_dir.join(&o.path);
            matches!(blake3_file(&p), Ok((n, d)) if n == o.bytes && d == o.blake3)
        })
}

impl Job {
    fn process(&self, item: &Item) -> Outcome {
        let mut o = Outcome { status: "failed", output: None, input_bytes: 0, output_bytes: 0, error: None };
        match self.run(item, &mut o) {
            Ok(status) => o.status = status,
            Err(e) => o.error = Some(e),
        }
        o
    }

    fn run(&self, item: &Item, o: &mut Outcome) -> Result<&'static str> {
        let model = Model::open(&item.input)?;
        let Some(out_dir) = &self.out_dir else {
            // No resume records without --out-dir, so no need to hash the whole input.
            o.input_bytes = model.bytes().len() as u64 + model.external_files.iter().map(|f| f.size).sum::<u64>();
            drop(model);
            protect::verify(&item.input, self.key.as_ref(), &NoProgress)?;
            return Ok("ok");
        };
        let (input_bytes, digest) = input_digest(&model)?;
        o.input_bytes = input_bytes;
        let output = out_dir.join(&item.rel);
        let outputs: Vec<PathBuf> = if self.op == Op::Verify {
            Vec::new()
        } else {
            o.output = Some(output.clone());
            let mut v = rekey::external_outputs(&model, &output);
            v.push(output.clone());
            v
        };
        drop(model);
        if !self.force && finished(out_dir, &item.rel, self.op, &self.settings, &digest) {
            o.output_bytes = outputs.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
            return Ok("skipped");
        }
        {
            let mut claims = self.claims.lock().map_err(|_| anyhow!("internal error: a worker panicked"))?;
            for p in &outputs {
                if let Some(other) = claims.get(p) {
                    if other != &item.rel {
                        bail!(
                            "{} is also written by {other} (models that share external data files are not supported)",
                            p.display()
                        );
                    }
                }
            }
            for p in &outputs {
                claims.insert(p.clone(), item.rel.clone());
            }
        }
        match self.op {
            Op::Encrypt => {
                let policy = self.policy.as_ref().ok_or_else(|| anyhow!("internal error: no policy"))?;
                protect::encrypt(
                    &item.input,
                    &output,
                    &protect::EncryptTo::key(need(&self.key)?.clone()),
                    &EncryptOptions { policy, in_place: false, sync: self.sync, allow_empty: false, signing_keys: &[], progress: &NoProgress },
                )?;
            }
            Op::Decrypt => {
                protect::decrypt(
                    &item.input,
                    &output,
                    need(&self.key)?,
                    &DecryptOptions { in_place: false, sync: self.sync, signers: &[], progress: &NoProgress },
                )?;
            }
            Op::Rekey => {
                rekey::rekey(
                    &item.input,
                    &output,
                    need(&self.key)?,
                    &onnx_protect_core::protect::EncryptTo::key(need(&self.new_key)?.clone()),
                    &RekeyOptions { in_place: false, sync: self.sync, signing_keys: &[], progress: &NoProgress },
                )?;
            }
            Op::Verify => {
                protect::verify(&item.input, self.key.as_ref(), &NoProgress)?;
            }
        }
        let mut records = Vec::new();
        for p in &outputs {
            let (bytes, blake3) = blake3_file(p)?;
            o.output_bytes += bytes;
            records.push(OutputRecord { path: rel_of(out_dir, p)?, bytes, blake3 });
        }
        let record = Record {
            version: RECORD_VERSION,
            op: self.op.name().to_string(),
            settings: self.settings.clone(),
            input_blake3: digest,
            input_bytes,
            outputs: records,
        };
        write_atomic(&record_path(out_dir, &item.rel), &serde_json::to_string(&record)?)?;
        Ok("ok")
    }
}

/// Where report lines go.
struct Reporter {
    file: Option<Mutex<File>>,
    stdout: bool,
}

impl Reporter {
    fn line(&self, text: &str) -> Result<()> {
        if let Some(f) = &self.file {
            let mut f = f.lock().map_err(|_| anyhow!("internal error: a worker panicked"))?;
            f.write_all(text.as_bytes()).context("cannot write the report")?;
            f.write_all(b"\n").context("cannot write the report")?;
            f.flush().context("cannot write the report")?;
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
        Ok(())
    }
}

fn progress_bar(quiet: bool, files: usize) -> Option<ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(files as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} files, {msg} {elapsed_precise} eta {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    Some(pb)
}

pub fn run(a: Args) -> Result<ExitCode> {
    let op = a.op;
    if op != Op::Encrypt && a.policy.any() {
        bail!("the policy options (--policy, --coefficient, --mode, --subsequences, --selection, --seed, --tiers, --tier-shares) apply to batch encrypt only");
    }
    if op != Op::Rekey && a.new_key.any() {
        bail!("--new-key-* options apply to batch rekey only");
    }
    let policy = if op == Op::Encrypt { Some(a.policy.build()?) } else { None };
    let key = match op {
        Op::Verify => a.key.source()?,
        _ => Some(a.key.required()?),
    };
    let new_key = if op == Op::Rekey { Some(a.new_key.required()?) } else { None };
    let out_dir = match (&a.out_dir, op) {
        (Some(o), _) => Some(o.clone()),
        (None, Op::Verify) => None,
        (None, _) => bail!("batch {} needs --out-dir", op.name()),
    };
    let shard_spec = a.shard.as_deref().map(parse_shard).transpose()?;
    let jobs = a.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    if let Some(o) = &out_dir {
        std::fs::create_dir_all(o).with_context(|| format!("cannot create --out-dir {}", o.display()))?;
        if let Some(d) = &a.dir {
            if op != Op::Verify && std::fs::canonicalize(d).ok() == std::fs::canonicalize(o).ok() {
                bail!("--out-dir is the input directory; write the outputs somewhere else");
            }
        }
    }
    let all = collect(&a, out_dir.as_deref())?;
    let total_listed = all.len();
    let items = match shard_spec {
        Some((i, n)) => shard(all, i, n, a.shard_by),
        None => all,
    };
    let settings = match op {
        Op::Encrypt => format!(
            "encrypt;{};policy={}",
            key.as_ref().map(key_id).unwrap_or_default(),
            policy.as_ref().map(Policy::summary).unwrap_or_default()
        ),
        Op::Decrypt => "decrypt".to_string(),
        Op::Rekey => format!("rekey;new={}", new_key.as_ref().map(key_id).unwrap_or_default()),
        Op::Verify => format!("verify;{}", key.as_ref().map(key_id).unwrap_or_else(|| "checksum".into())),
    };
    let job = Job {
        op,
        key,
        new_key,
        policy,
        out_dir,
        settings,
        force: a.force,
        sync: a.sync,
        claims: Mutex::new(HashMap::new()),
    };
    let reporter = Reporter {
        file: match &a.report {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                }
                Some(Mutex::new(File::create(p).with_context(|| format!("cannot create report {}", p.display()))?))
            }
            None => None,
        },
        stdout: a.json,
    };
    let bar = progress_bar(a.quiet, items.len());
    if let Some(pb) = &bar {
        pb.set_prefix(op.name());
        pb.set_message("0 B");
    }
    let next = AtomicUsize::new(0);
    let bytes_done = AtomicU64::new(0);
    let counts = Mutex::new((0usize, 0usize, 0usize, BTreeSet::<u8>::new(), Vec::<(String, String)>::new()));
    let report_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.min(items.len().max(1)) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(k) else { break };
                let t0 = Instant::now();
                let o = job.process(item);
                let seconds = t0.elapsed().as_secs_f64();
                let code = o.error.as_ref().map(exit::code_for).unwrap_or(exit::OK);
                let line = Line {
                    path: &item.rel,
                    op: op.name(),
                    status: o.status,
                    input: item.input.display().to_string(),
                    output: o.output.as_ref().map(|p| p.display().to_string()),
                    input_bytes: o.input_bytes,
                    output_bytes: o.output_bytes,
                    seconds,
                    error: o.error.as_ref().map(|e| format!("{e:#}")),
                    error_kind: o.error.as_ref().map(error_kind),
                    exit_code: code,
                };
                let text = serde_json::to_string(&line).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
                if let Err(e) = reporter.line(&text) {
                    if let Ok(mut g) = report_error.lock() {
                        g.get_or_insert(e);
                    }
                }
                if let Ok(mut c) = counts.lock() {
                    match o.status {
                        "ok" => c.0 += 1,
                        "skipped" => c.1 += 1,
                        _ => {
                            c.2 += 1;
                            c.3.insert(code);
                            c.4.push((item.rel.clone(), line.error.clone().unwrap_or_default()));
                        }
                    }
                }
                let done = bytes_done.fetch_add(o.input_bytes, Ordering::SeqCst) + o.input_bytes;
                if let Some(pb) = &bar {
                    pb.set_message(HumanBytes(done).to_string());
                    pb.inc(1);
                }
            });
        }
    });
    if let Some(pb) = &bar {
        pb.finish_and_clear();
    }
    if let Some(e) = report_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let (ok, skipped, failed, codes, failures) =
        counts.into_inner().map_err(|_| anyhow!("internal error: a worker panicked"))?;
    let mut failures = failures;
    failures.sort();
    if !a.json {
        for (rel, err) in &failures {
            println!("failed {rel}: {err}");
        }
        let shard_note = match shard_spec {
            Some((i, n)) => format!(" (shard {i}/{n} of {total_listed})"),
            None => String::new(),
        };
        println!(
            "batch {}: {} files{shard_note}: {ok} ok, {skipped} skipped, {failed} failed; {} read",
            op.name(),
            items.len(),
            HumanBytes(bytes_done.load(Ordering::SeqCst))
        );
    }
    if failed > 0 {
        eprintln!(
            "error: batch {}: {failed} of {} files failed{}",
            op.name(),
            items.len(),
            if a.report.is_some() { " (see the report)" } else { "" }
        );
        let code = if codes.len() == 1 { codes.into_iter().next().unwrap_or(exit::FAILURE) } else { exit::FAILURE };
        return Ok(ExitCode::from(code));
    }
    Ok(ExitCode::SUCCESS)
}

fn error_kind(e: &anyhow::Error) -> &'static str {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<protect::CoreError>() {
            return c.kind().as_str();
        }
        if let Some(f) = cause.downcast_ref::<onnx_protect_format::FormatError>() {
            return f.kind();
        }
    }
    "error"
}
