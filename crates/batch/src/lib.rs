//! Encrypt, decrypt, rekey, rewrap or verify many models: parallel, resumable, shardable
//! (`docs/batch.md`).
//!
//! * The file list is a directory walk ([`Inputs::Dir`], every `*.onnx`) or a list
//!   file ([`Inputs::List`]), sorted by relative path. A [`Shard`] keeps a
//!   deterministic part of it.
//! * Each model is written to `OUT/<relative path>`, external data files next to
//!   it. The core functions stage every output in a temporary file and rename it
//!   into place, so each output is either absent, old or complete.
//! * After a file's outputs are in place, a record is written atomically to
//!   `OUT/.onnx-protect-batch/done/<relative path>.json`. An output that exists is
//!   replaced only if that record names it (an earlier run wrote it) or with
//!   [`Options::force`]. A later run skips a file
//!   when its record names the same operation and settings, the same BLAKE3 digest
//!   of the input, and outputs that still exist with their recorded BLAKE3 digests.
//! * Files run in parallel on [`Options::jobs`] worker threads; the [`Observer`]
//!   hears of each file as soon as it is done (for a report and a progress bar).
//!
//! The crate never prints.
//!
//! ```no_run
//! use std::num::NonZeroUsize;
//! use onnx_protect_batch::{run, FileResult, Inputs, Observer, Operation, Options};
//! use onnx_protect_core::keys::KeySource;
//! use onnx_protect_crypto::MasterKey;
//!
//! struct Quiet;
//! impl Observer for Quiet {
//!     fn start(&self, _files: usize) {}
//!     fn done(&self, _result: &FileResult<'_>) {}
//! }
//!
//! let key = KeySource::key(MasterKey::generate()?);
//! let opts = Options {
//!     operation: Operation::Verify { key: Some(&key) },
//!     inputs: Inputs::Dir("models".into()),
//!     out_dir: None,
//!     jobs: NonZeroUsize::MIN,
//!     shard: None,
//!     force: false,
//!     make_dirs: false,
//!     sync: false,
//! };
//! let summary = run(&opts, &Quiet)?;
//! println!("{} ok, {} failed", summary.ok, summary.failed.len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod error;
pub mod list;
mod record;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use onnx_protect_core::error::CoreError;
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::protect::{self, DecryptOptions, EncryptOptions};
use onnx_protect_core::rekey::{self, RecipientOf, RekeyOptions};
use onnx_protect_core::rewrap::{self, Remove, RewrapOptions};
use onnx_protect_core::OutputRules;
use onnx_protect_format::{Model, NoProgress};
use onnx_protect_keys::{Identity, SigningKey};
use onnx_protect_select::Policy;

use error::file_io;
pub use error::{BatchError, BatchErrorKind, FileError, FileErrorKind};
pub use list::{collect, hash_shard, Inputs, Item, Shard, ShardBy};
pub use record::RECORD_VERSION;

/// Name of the state directory inside the output directory.
pub const STATE_DIR: &str = ".onnx-protect-batch";
/// Entries whose names start with this are never taken for models (the state
/// directory, temporary files).
pub const STATE_DIR_PREFIX: &str = ".onnx-protect";

/// What to do with every model, and the keys and policy it needs.
pub enum Operation<'a> {
    Encrypt {
        key: &'a KeySource,
        policy: &'a Policy,
    },
    Decrypt {
        key: &'a KeySource,
    },
    /// The old key, then the new one (both top-tier keys for tiered models); the public
    /// recipient each kept stanza is wrapped again for ([`RekeyOptions::recipient_of`]:
    /// [`rekey::public_recipient`] knows `x25519` and `age-plugin`).
    Rekey {
        key: &'a KeySource,
        new_key: &'a KeySource,
        recipient_of: RecipientOf<'a>,
    },
    /// Re-wraps the data keys of format-2 models (docs/keys.md): `key` (the top tier's)
    /// opens each model; the stanzas `remove` matches are removed, the recipients of
    /// `add` added, and the model signed with `signing_keys` (other signatures are
    /// refused, or dropped with `drop_signatures`). No weight byte changes.
    Rewrap {
        key: &'a KeySource,
        add: &'a EncryptTo,
        remove: &'a [Remove],
        signing_keys: &'a [SigningKey],
        drop_signatures: bool,
    },
    /// With a key the MAC is checked, without one the keyless checksum.
    Verify {
        key: Option<&'a KeySource>,
    },
    /// Writes an OpenSSF model-signing bundle beside each model (`MODEL.sig`, covering the
    /// model file and its external data files; docs/signing.md), replacing an older one only
    /// with `force`. No output directory.
    SignBundle {
        key: &'a onnx_protect_bundle::PrivateKey,
    },
}

impl Operation<'_> {
    /// `encrypt`, `decrypt`, `rekey`, `rewrap` or `verify`.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Rewrap { .. } => "rewrap",
            Operation::Encrypt { .. } => "encrypt",
            Operation::Decrypt { .. } => "decrypt",
            Operation::Rekey { .. } => "rekey",
            Operation::Verify { .. } => "verify",
            Operation::SignBundle { .. } => "sign",
        }
    }

    /// What a resume record must match besides the input: the key fingerprint and
    /// policy summary (encrypt), the new key's fingerprint (rekey), the key's
    /// fingerprint or `checksum` (verify), the recipients added and removed and the
    /// signers (rewrap); decrypt's output does not depend on the key.
    fn settings(&self) -> String {
        match self {
            Operation::Encrypt { key, policy } => format!("encrypt;{};policy={}", key_id(key), policy.summary()),
            Operation::Decrypt { .. } => "decrypt".to_string(),
            Operation::Rekey { new_key, .. } => format!("rekey;new={}", key_id(new_key)),
            Operation::Verify { key } => format!("verify;{}", key.map(key_id).unwrap_or_else(|| "checksum".into())),
            Operation::SignBundle { key } => format!("sign;{}", key.public().hint()),
            Operation::Rewrap { add, remove, signing_keys, drop_signatures, .. } => {
                let added: Vec<String> = add
                    .master
                    .iter()
                    .map(key_id)
                    .chain(add.recipients.iter().map(|(r, t)| format!("{}@{t}", r.describe())))
                    .collect();
                let removed: Vec<String> = remove
                    .iter()
                    .map(|r| match r {
                        Remove::Label(l) => format!("label:{l}"),
                        Remove::Kind(k) => format!("kind:{k}"),
                        Remove::Key(k) => format!("key:{}", record::hex(&k.fingerprint())),
                    })
                    .collect();
                let signers: Vec<String> = signing_keys.iter().map(|k| k.public().to_text()).collect();
                format!(
                    "rewrap;add={};remove={};sign={};drop-signatures={drop_signatures}",
                    added.join(","),
                    removed.join(","),
                    signers.join(",")
                )
            }
        }
    }
}

/// A key as a resume record names it: its fingerprint, or `passphrase` or `identity`.
fn key_id(k: &KeySource) -> String {
    match k.identity() {
        Identity::Key(m) => format!("key:{}", record::hex(&m.fingerprint())),
        Identity::Passphrase(_) => "passphrase".to_string(),
        Identity::Provider(p) => format!("{}:{}", p.kind(), p.describe()),
        Identity::X25519(_) => "identity".to_string(),
    }
}

/// A batch run.
pub struct Options<'a> {
    pub operation: Operation<'a>,
    pub inputs: Inputs,
    /// Output root: each model goes to `out_dir/<rel>`. Required except for verify,
    /// where it only holds the resume records.
    pub out_dir: Option<PathBuf>,
    /// Files processed at the same time.
    pub jobs: NonZeroUsize,
    pub shard: Option<Shard>,
    /// Process every file, even those a previous run finished, and replace existing
    /// outputs that no record of an earlier run names. Without it such an output fails
    /// its file (only regular files are ever replaced, whatever this says).
    pub force: bool,
    /// Create the output directory (and its parents) if it is missing; without it a
    /// missing output directory is an error. Directories below it, which mirror the
    /// inputs' tree, are always created.
    pub make_dirs: bool,
    /// Flush each output to the disk before renaming it into place.
    pub sync: bool,
}

/// How a file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Finished by an earlier run (see the resume rule in the crate documentation).
    Skipped,
    Failed,
}

impl Status {
    /// `ok`, `skipped` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
        }
    }
}

/// One finished file, as the [`Observer`] hears of it.
pub struct FileResult<'a> {
    pub item: &'a Item,
    pub status: Status,
    /// The output model (`None` for verify).
    pub output: Option<&'a Path>,
    /// Bytes of the model and its external data files (0 if it could not be opened).
    pub input_bytes: u64,
    /// Bytes of all output files.
    pub output_bytes: u64,
    pub elapsed: Duration,
    pub error: Option<&'a FileError>,
}

/// Hears of a run's progress. Called from the worker threads.
pub trait Observer: Sync {
    /// Once, before any file: the number of files this run (or shard) will process.
    fn start(&self, files: usize);
    /// As soon as each file is done.
    fn done(&self, result: &FileResult<'_>);
}

/// What a run did.
#[derive(Debug)]
pub struct Summary {
    /// Files in the whole list (before sharding).
    pub listed: usize,
    /// Files this run processed (the shard's part of the list).
    pub files: usize,
    pub ok: usize,
    pub skipped: usize,
    /// The failed files' relative paths and errors, sorted by path.
    pub failed: Vec<(String, FileError)>,
    /// Bytes of the inputs read (models and external data).
    pub bytes_read: u64,
}

/// The files counted so far, shared by the workers.
#[derive(Default)]
struct Tally {
    ok: usize,
    skipped: usize,
    failed: Vec<(String, FileError)>,
}

/// What a worker found out about one file, failed or not.
struct Outcome {
    output: Option<PathBuf>,
    input_bytes: u64,
    output_bytes: u64,
}

/// What the job needs, shared by the workers.
struct Job<'a> {
    opts: &'a Options<'a>,
    settings: String,
    /// Output path → relative path of the model that writes it.
    claims: Mutex<HashMap<PathBuf, String>>,
}

/// Runs `opts.operation` over the listed models. Fails before any file is processed
/// if the options or the list cannot be used; a file that fails is reported in
/// [`Summary::failed`] and the others still run.
pub fn run(opts: &Options<'_>, observer: &dyn Observer) -> Result<Summary, BatchError> {
    let in_place = matches!(opts.operation, Operation::Verify { .. } | Operation::SignBundle { .. });
    if opts.out_dir.is_none() && !in_place {
        return Err(BatchError::NoOutputDir { op: opts.operation.name() });
    }
    if opts.out_dir.is_some() && matches!(opts.operation, Operation::SignBundle { .. }) {
        return Err(BatchError::OutputDirNotUsed { op: "sign" });
    }
    if let Some(o) = &opts.out_dir {
        if !o.is_dir() && !opts.make_dirs {
            return Err(BatchError::NoSuchOutputDir { dir: o.clone() });
        }
        std::fs::create_dir_all(o).map_err(error::batch_io("create the output directory", o))?;
        if let Inputs::Dir(d) = &opts.inputs {
            if !in_place && std::fs::canonicalize(d).ok() == std::fs::canonicalize(o).ok() {
                return Err(BatchError::OutputIsInput { dir: o.clone() });
            }
        }
    }
    let all = list::collect(&opts.inputs, opts.out_dir.as_deref())?;
    let listed = all.len();
    let items = match &opts.shard {
        Some(s) => s.of(all),
        None => all,
    };
    let job = Job { opts, settings: opts.operation.settings(), claims: Mutex::new(HashMap::new()) };
    observer.start(items.len());
    let next = AtomicUsize::new(0);
    let bytes_read = AtomicU64::new(0);
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.get().min(items.len().max(1)) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(k) else { break };
                let t0 = Instant::now();
                let mut o = Outcome { output: None, input_bytes: 0, output_bytes: 0 };
                let result = job.run(item, &mut o);
                let (status, error) = match result {
                    Ok(status) => (status, None),
                    Err(e) => (Status::Failed, Some(e)),
                };
                observer.done(&FileResult {
                    item,
                    status,
                    output: o.output.as_deref(),
                    input_bytes: o.input_bytes,
                    output_bytes: o.output_bytes,
                    elapsed: t0.elapsed(),
                    error: error.as_ref(),
                });
                bytes_read.fetch_add(o.input_bytes, Ordering::SeqCst);
                let mut t = tally.lock().unwrap_or_else(PoisonError::into_inner);
                match (status, error) {
                    (_, Some(e)) => t.failed.push((item.rel.clone(), e)),
                    (Status::Skipped, None) => t.skipped += 1,
                    (_, None) => t.ok += 1,
                }
            });
        }
    });
    let Tally { ok, skipped, mut failed } = tally.into_inner().unwrap_or_else(PoisonError::into_inner);
    failed.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Summary { listed, files: items.len(), ok, skipped, failed, bytes_read: bytes_read.into_inner() })
}

impl Job<'_> {
    fn run(&self, item: &Item, o: &mut Outcome) -> Result<Status, FileError> {
        if item.input.is_dir() {
            return self.run_folder(item, o);
        }
        let model = Model::open(&item.input).map_err(CoreError::from)?;
        let Some(out_dir) = &self.opts.out_dir else {
            // No resume records without an output directory, so no need to hash the whole input.
            o.input_bytes = model.bytes().len() as u64 + model.external_files.iter().map(|f| f.size).sum::<u64>();
            drop(model);
            match self.opts.operation {
                Operation::Verify { key } => {
                    protect::verify(&item.input, key, &NoProgress)?;
                }
                Operation::SignBundle { key } => {
                    let bundle = onnx_protect_bundle::default_bundle(&item.input);
                    o.output = Some(bundle.clone());
                    // A bundle this key signed, which still verifies, is kept (a re-run skips it).
                    if !self.opts.force
                        && onnx_protect_bundle::verify_model(&item.input, &bundle, &key.public()).is_ok()
                    {
                        return Ok(Status::Skipped);
                    }
                    onnx_protect_bundle::sign_model(&item.input, key, &bundle, self.opts.force)?;
                }
                _ => {
                    // `run` refuses every other operation without an output directory.
                    return Err(CoreError::Internal(
                        "a batch operation that writes outputs without an output directory",
                    )
                    .into());
                }
            }
            return Ok(Status::Ok);
        };
        let (input_bytes, digest) = record::input_digest(&model)?;
        o.input_bytes = input_bytes;
        let output = out_dir.join(&item.rel);
        let outputs: Vec<PathBuf> = if matches!(self.opts.operation, Operation::Verify { .. }) {
            Vec::new()
        } else {
            o.output = Some(output.clone());
            let mut v = rekey::external_outputs(&model, &output);
            v.push(output.clone());
            v
        };
        drop(model);
        let op = self.opts.operation.name();
        if !self.opts.force && record::finished(out_dir, &item.rel, op, &self.settings, &digest) {
            o.output_bytes = outputs.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
            return Ok(Status::Skipped);
        }
        self.claim(&outputs, &item.rel)?;
        let sync = self.opts.sync;
        // Existing outputs are replaced when an earlier run's record names them all (it
        // wrote them), or when forced; otherwise the core refuses the first one.
        let recorded = record::recorded_outputs(out_dir, &item.rel);
        let force = self.opts.force || outputs.iter().filter(|p| p.exists()).all(|p| recorded.contains(p));
        let rules = OutputRules { force, make_dirs: true };
        match self.opts.operation {
            Operation::Encrypt { key, policy } => {
                let opts = EncryptOptions { sync, outputs: rules, ..EncryptOptions::new(policy) };
                protect::encrypt(&item.input, &output, &EncryptTo::key(key.clone()), &opts)?;
            }
            Operation::Decrypt { key } => {
                let opts = DecryptOptions { sync, outputs: rules, ..DecryptOptions::default() };
                protect::decrypt(&item.input, &output, key, &opts)?;
            }
            Operation::Rekey { key, new_key, recipient_of } => {
                let opts = RekeyOptions { sync, outputs: rules, recipient_of, ..RekeyOptions::new(&NoProgress) };
                rekey::rekey(&item.input, &output, key, &EncryptTo::key(new_key.clone()), &opts)?;
            }
            Operation::Rewrap { key, add, remove, signing_keys, drop_signatures } => {
                let opts = RewrapOptions {
                    add,
                    remove,
                    signing_keys,
                    drop_signatures,
                    in_place: false,
                    outputs: rules,
                    progress: &NoProgress,
                };
                rewrap::rewrap(&item.input, &output, key, &opts)?;
            }
            Operation::Verify { key } => {
                protect::verify(&item.input, key, &NoProgress)?;
            }
            Operation::SignBundle { .. } => {
                // `run` refuses an output directory for sign.
                return Err(CoreError::Internal("batch sign with an output directory").into());
            }
        }
        let mut records = Vec::new();
        for p in &outputs {
            let (bytes, blake3) = record::blake3_file(p)?;
            o.output_bytes += bytes;
            let rel =
                p.strip_prefix(out_dir).ok().and_then(|r| list::rel_string(r).ok()).ok_or_else(|| FileError::Io {
                    action: "record",
                    path: p.clone(),
                    error: std::io::Error::other("the output lies outside the output directory"),
                })?;
            records.push(record::OutputRecord { path: rel, bytes, blake3 });
        }
        self.write_record(out_dir, item, op, digest, input_bytes, records)
    }

    /// The record of `item`'s run: the operation, the settings, the input's digest and size,
    /// and the outputs written.
    fn write_record(
        &self,
        out_dir: &Path,
        item: &Item,
        op: &str,
        digest: String,
        input_bytes: u64,
        outputs: Vec<record::OutputRecord>,
    ) -> Result<Status, FileError> {
        let rec = record::Record {
            version: RECORD_VERSION,
            op: op.to_string(),
            settings: self.settings.clone(),
            input_blake3: digest,
            input_bytes,
            outputs,
        };
        record::write_record(&record::record_path(out_dir, &item.rel), &rec)?;
        Ok(Status::Ok)
    }

    /// A model folder (docs/format.md §16): encrypted, decrypted or verified whole, into
    /// the folder `OUT/<rel>`; its record lists every file of that folder.
    fn run_folder(&self, item: &Item, o: &mut Outcome) -> Result<Status, FileError> {
        let op = self.opts.operation.name();
        if !matches!(
            self.opts.operation,
            Operation::Encrypt { .. } | Operation::Decrypt { .. } | Operation::Verify { .. }
        ) {
            return Err(FileError::FolderOperation { op });
        }
        let (input_bytes, digest) = record::folder_digest(&item.input)?;
        o.input_bytes = input_bytes;
        let sync = self.opts.sync;
        let Some(out_dir) = &self.opts.out_dir else {
            if let Operation::Verify { key } = self.opts.operation {
                onnx_protect_folder::verify(&item.input, key, &[], &NoProgress)?;
                return Ok(Status::Ok);
            }
            return Err(CoreError::Internal("a batch operation that writes outputs without an output directory").into());
        };
        let output = out_dir.join(&item.rel);
        let writes = !matches!(self.opts.operation, Operation::Verify { .. });
        if writes {
            o.output = Some(output.clone());
        }
        if !self.opts.force && record::finished(out_dir, &item.rel, op, &self.settings, &digest) {
            o.output_bytes = match writes {
                true => {
                    record::files_under(&output)?.iter().filter_map(|(_, p)| p.metadata().ok()).map(|m| m.len()).sum()
                }
                false => 0,
            };
            return Ok(Status::Skipped);
        }
        if writes {
            self.claim(std::slice::from_ref(&output), &item.rel)?;
            if let Some(parent) = output.parent() {
                std::fs::create_dir_all(parent).map_err(file_io("create the directory", parent))?;
            }
        }
        let aside = if writes { self.set_aside(out_dir, &output, &item.rel)? } else { None };
        let done = match self.opts.operation {
            Operation::Encrypt { key, policy } => {
                let opts = EncryptOptions { sync, ..EncryptOptions::new(policy) };
                onnx_protect_folder::encrypt(&item.input, &output, &EncryptTo::key(key.clone()), &opts).map(drop)
            }
            Operation::Decrypt { key } => {
                let opts = DecryptOptions { sync, ..DecryptOptions::default() };
                onnx_protect_folder::decrypt(&item.input, &output, key, None, &opts).map(drop)
            }
            Operation::Verify { key } => onnx_protect_folder::verify(&item.input, key, &[], &NoProgress).map(drop),
            _ => return Err(FileError::FolderOperation { op }),
        };
        if let Some(old) = aside {
            // The earlier output goes back when the new one failed (nothing of it is left),
            // and is removed once the new one is in place.
            match &done {
                Err(_) => std::fs::rename(&old, &output).map_err(file_io("restore", &output))?,
                Ok(()) => std::fs::remove_dir_all(&old).map_err(file_io("remove", &old))?,
            }
        }
        done?;
        let mut records = Vec::new();
        if writes {
            for (rel, p) in record::files_under(&output)? {
                let (bytes, blake3) = record::blake3_file(&p)?;
                o.output_bytes += bytes;
                records.push(record::OutputRecord { path: format!("{}/{rel}", item.rel), bytes, blake3 });
            }
        }
        self.write_record(out_dir, item, op, digest, input_bytes, records)
    }

    /// Moves an existing output folder of `rel` out of the way when an earlier run's record
    /// names every file in it, or with `force`; its new name (a sibling whose name starts
    /// with [`STATE_DIR_PREFIX`]) is returned. An empty or missing output stays as it is;
    /// another one is refused by the folder operation.
    fn set_aside(&self, out_dir: &Path, output: &Path, rel: &str) -> Result<Option<PathBuf>, FileError> {
        if !output.is_dir() || std::fs::read_dir(output).map_err(file_io("read directory", output))?.next().is_none() {
            return Ok(None);
        }
        let recorded = record::recorded_outputs(out_dir, rel);
        let files = record::files_under(output)?;
        if !self.opts.force && !files.iter().all(|(_, p)| recorded.contains(p)) {
            return Ok(None);
        }
        let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let old = output.with_file_name(format!("{STATE_DIR_PREFIX}-old-{name}-{}", std::process::id()));
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(file_io("remove", &old))?;
        }
        std::fs::rename(output, &old).map_err(file_io("move aside", output))?;
        Ok(Some(old))
    }

    /// Claims `outputs` for `rel`; an output another model of this run writes is refused.
    fn claim(&self, outputs: &[PathBuf], rel: &str) -> Result<(), FileError> {
        let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        for p in outputs {
            if let Some(other) = claims.get(p) {
                if other != rel {
                    return Err(FileError::SharedOutput { path: p.clone(), other: other.clone() });
                }
            }
        }
        for p in outputs {
            claims.insert(p.clone(), rel.to_string());
        }
        Ok(())
    }
}
