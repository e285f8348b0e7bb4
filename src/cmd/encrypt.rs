//! `encrypt`: a protected model from a plain one (or `--dry-run`: the plan only).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::protect::{self, EncryptOptions};

use crate::args::fingerprint::{FingerprintArgs, LockArgs};
use crate::args::key::{KeyArgs, LicenceAuthorityArgs, RecipientArgs, SignArgs};
use crate::args::output::OutputArgs;
use crate::args::output::WriteArgs;
use crate::args::policy::PolicyArgs;
use crate::args::tier_levels::{self, TierLevelArgs};
use crate::exit::usage;
use crate::fingerprint::{prepare_fingerprint, FingerprintReport};
use crate::progress::Bar;
use crate::stdio::{self, input_name, is_stdio};

#[derive(clap::Args)]
pub struct Args {
    /// The model to protect; `-` reads it from standard input (no external data).
    input: PathBuf,
    /// Where to write the protected model (external data files go next to it, under names of
    /// their own when it is the input's directory); `-` writes it to standard output.
    #[arg(short, long, required_unless_present_any = ["in_place", "dry_run"])]
    output: Option<PathBuf>,
    /// Show what would be encrypted and its share of the weight bytes, and write nothing (no key
    /// needed; with --positions secret the rows are chosen with the key, so they are not shown).
    #[arg(long, conflicts_with_all = ["output", "in_place"])]
    dry_run: bool,
    /// List every weight left clear (by default, a summary by operator).
    #[arg(long, short)]
    verbose: bool,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    recipients: RecipientArgs,
    #[command(flatten)]
    sign: SignArgs,
    #[command(flatten)]
    licence_authority: LicenceAuthorityArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    tier_levels: TierLevelArgs,
    /// Write the model even if the policy encrypts none of its bytes (refused by default).
    #[arg(long)]
    allow_empty: bool,
    /// `secret`: choose which subsequences are encrypted with the key (among twice as many
    /// candidates as the policy encrypts) and seal their positions, so no key-less party can
    /// tell which rows are encrypted. Needs the fp or dp mode and no access tiers (docs/protection.md).
    #[arg(long, value_name = "public|secret", default_value = "public", value_parser = ["public", "secret"])]
    positions: String,
    /// Accept a passphrase shorter than 12 characters.
    #[arg(long)]
    allow_short_passphrase: bool,
    /// Overwrite the input (and its external data files).
    #[arg(long)]
    in_place: bool,
    /// Flush the outputs to the disk before renaming them into place (done anyway with --in-place).
    #[arg(long)]
    sync: bool,
    #[command(flatten)]
    fingerprint: FingerprintArgs,
    #[command(flatten)]
    lock: LockArgs,
    #[command(flatten)]
    write: WriteArgs,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(serde::Serialize)]
struct EncryptOutput {
    #[serde(flatten)]
    report: protect::EncryptReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<FingerprintReport>,
    /// `--tier-levels` / `--tier-data`: the fitted tier shares and the levels measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    tier_fit: Option<tier_levels::Fit>,
    /// `--dry-run`: nothing was written (`output` is empty).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dry_run: bool,
}

/// The line of `encrypt`'s report on the label lock, if any.
fn lock_text(lock: Option<&onnx_protect_core::lock::LockReport>) -> String {
    lock.map(|l| format!("\n  label lock: {l}")).unwrap_or_default()
}

/// `encrypt --dry-run`: the selection and its share, nothing written.
fn encrypt_dry_run(a: &Args, policy: &mut onnx_protect_select::Policy) -> Result<ExitCode> {
    if is_stdio(&a.input) {
        usage!("--dry-run reads the model from a file; give its path instead of -");
    }
    if a.lock.lock_outputs {
        usage!("--dry-run plans the weights' encryption only; run it without --lock-outputs");
    }
    let fit = tier_levels::fit(&a.tier_levels, policy, &a.input)?;
    let policy = &*policy;
    let bar = Bar::new(a.out.quiet);
    let opts = EncryptOptions { allow_empty: a.allow_empty, progress: &bar, ..EncryptOptions::new(policy) };
    let r = protect::encrypt_plan(&a.input, &opts).with_context(|| format!("encrypt {}", input_name(&a.input)))?;
    for w in &r.warnings {
        a.out.warn(Some(w));
    }
    let (fit_text, fit_warnings) = fit.as_ref().map(tier_levels::text).unwrap_or_default();
    for w in &fit_warnings {
        a.out.warn(Some(w));
    }
    let r = EncryptOutput { report: r, fingerprint: None, tier_fit: fit, dry_run: true };
    a.out.report(&r, false, || encrypt_text(&r.report, a.verbose, true) + &fit_text)?;
    Ok(ExitCode::SUCCESS)
}

/// The text report of an encryption (or of a dry run): what was encrypted, then the weights
/// left clear, summed by operator unless `verbose`.
fn encrypt_text(r: &protect::EncryptReport, verbose: bool, dry_run: bool) -> String {
    let pct = if r.weight_bytes > 0 { 100.0 * r.encrypted_bytes as f64 / r.weight_bytes as f64 } else { 0.0 };
    let (verb, dest) = if dry_run {
        ("would protect", " (dry run: nothing written)".to_string())
    } else {
        ("protected", format!(" -> {}", r.output))
    };
    let mut t = format!(
        "{verb} {} bytes in {} tensors ({pct:.2}% of {} weight bytes){dest}\n  {}",
        r.encrypted_bytes,
        r.tensors.len(),
        r.weight_bytes,
        onnx_protect_core::inspect::protection_breakdown(&onnx_protect_core::summary::bytes_by_protection(&r.tensors))
    );
    if dry_run || verbose {
        for e in &r.tensors {
            t += &format!(
                "\n  {} {} of {} bytes ({} {}, {})",
                e.name, e.encrypted_bytes, e.nbytes, e.op_type, e.role, e.mode
            );
        }
    }
    for (name, why) in &r.skipped {
        t += &format!("\n  skipped {name}: {why}");
    }
    if !r.clear.is_empty() {
        let bytes: u64 = r.clear.iter().map(|c| c.bytes).sum();
        let share = if r.weight_bytes > 0 { 100.0 * bytes as f64 / r.weight_bytes as f64 } else { 0.0 };
        t += &format!("\n  left clear: {} weights, {bytes} bytes ({share:.2}% of the weight bytes)", r.clear.len());
        if verbose {
            t += ":";
            for c in &r.clear {
                t += &format!("\n    {} {} bytes ({} {})", c.name, c.bytes, c.op_type, c.role);
            }
        } else {
            let mut by_op: std::collections::BTreeMap<&str, (usize, u64)> = std::collections::BTreeMap::new();
            for c in &r.clear {
                let e = by_op.entry(c.op_type.as_str()).or_default();
                *e = (e.0 + 1, e.1 + c.bytes);
            }
            let parts: Vec<String> = by_op.iter().map(|(op, (n, b))| format!("{op} {n} ({b} bytes)")).collect();
            t += &format!(":\n    {} (--verbose lists them)", parts.join(", "));
        }
    }
    t + &lock_text(r.lock.as_ref())
}

/// Everyone the model (or folder) is encrypted to, from the key and recipient options.
fn encrypt_to(a: &Args, policy: &onnx_protect_select::Policy) -> Result<EncryptTo> {
    let to = EncryptTo {
        master: a.key.optional_master_for(policy.tiers)?,
        recipients: a.recipients.recipients()?,
        ..Default::default()
    };
    if let Some(m) = &to.master {
        crate::keys::check_new_passphrase(m, a.allow_short_passphrase, "the passphrase")?;
    }
    if to.master.is_none() && to.recipients.is_empty() {
        usage!(
            "give a key (--key-file, --key-env, --passphrase-env, --passphrase-file) or a --recipient to encrypt to"
        );
    }
    Ok(to)
}

/// `encrypt DIR -o OUT`: every model of a model folder under one data key, the other files
/// copied (docs/format.md §16).
fn encrypt_folder(a: &Args, policy: &onnx_protect_select::Policy) -> Result<ExitCode> {
    let dir = a.input.display().to_string();
    let refused = [
        (a.in_place, "--in-place"),
        (a.dry_run, "--dry-run"),
        (a.lock.lock_outputs, "--lock-outputs"),
        (a.fingerprint.fingerprint.is_some(), "--fingerprint"),
        (a.write.force, "--force"),
    ];
    if let Some((_, option)) = refused.iter().find(|(given, _)| *given) {
        usage!("{dir} is a model folder, which {option} does not apply to; see docs/cli.md#model-folders");
    }
    let Some(output) = a.output.as_deref().filter(|o| !is_stdio(o)) else {
        usage!("{dir} is a model folder: give the new folder to write with -o OUT");
    };
    let to = encrypt_to(a, policy)?;
    let signing_keys = a.sign.keys()?;
    let bar = Bar::new(a.out.quiet);
    let opts = EncryptOptions {
        sync: a.sync,
        allow_empty: a.allow_empty,
        secret_positions: a.positions == "secret",
        signing_keys: &signing_keys,
        licence: a.licence_authority.requirement()?,
        progress: &bar,
        ..EncryptOptions::new(policy)
    };
    let r = onnx_protect_folder::encrypt(&a.input, output, &to, &opts).with_context(|| format!("encrypt {dir}"))?;
    for m in &r.models {
        for w in &m.report.warnings {
            a.out.warn(Some(&format!("{}: {w}", m.path)));
        }
    }
    a.out.report(&r, false, || {
        let mut t = format!("protected model folder {} -> {} (folder id {})", r.input, r.output, r.folder_id);
        for m in &r.models {
            let text = encrypt_text(&m.report, a.verbose, false).replace('\n', "\n    ");
            t += &format!("\n  {}: {text}", onnx_protect_core::inspect::printable(&m.path));
        }
        let bytes: u64 = r.files.iter().map(|f| f.length).sum();
        t + &format!("\n  copied {} other file(s) unchanged ({bytes} bytes)", r.files.len())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `encrypt`.
pub fn run(a: Args) -> Result<ExitCode> {
    let mut policy = a.policy.build()?;
    a.tier_levels.check(&policy)?;
    if a.tier_levels.any() && is_stdio(&a.input) {
        usage!("--tier-levels and --tier-data read the model from a file; give its path instead of -");
    }
    if !is_stdio(&a.input) && a.input.is_dir() {
        if a.tier_levels.any() {
            usage!("{} is a model folder: --tier-levels and --tier-data fit one model", a.input.display());
        }
        return encrypt_folder(&a, &policy);
    }
    if a.dry_run {
        return encrypt_dry_run(&a, &mut policy);
    }
    let fit = tier_levels::fit(&a.tier_levels, &mut policy, &a.input)?;
    let (fit_text, fit_warnings) = fit.as_ref().map(tier_levels::text).unwrap_or_default();
    let to = encrypt_to(&a, &policy)?;
    let signing_keys = a.sign.keys()?;
    let (input, output) = stdio::rewrite_paths(&a.input, &a.output, a.in_place, &a.out)?;
    let mut fingerprint = prepare_fingerprint(&a.fingerprint, &a.lock, input.path(), &input_name(&a.input))?;
    let lock = a.lock.request(fingerprint.as_mut().and_then(|f| f.2.take()));
    // The hook type is `'static`: it owns a handle on the marker.
    let rewrite = fingerprint.as_ref().map(|(m, _, _)| {
        let m = std::sync::Arc::clone(m);
        move |t: &onnx_protect_format::Tensor, b: &[u8]| m.rewrite(t, b)
    });
    let created = crate::dest::missing(crate::dest::dir_of(output.path()));
    let bar = Bar::new(a.out.quiet);
    let opts = EncryptOptions {
        rewrite: rewrite.as_ref().map(|f| f as &onnx_protect_core::Rewrite),
        in_place: a.in_place,
        sync: a.sync,
        allow_empty: a.allow_empty,
        secret_positions: a.positions == "secret",
        lock: lock.as_ref(),
        outputs: a.write.rules(),
        signing_keys: &signing_keys,
        licence: a.licence_authority.requirement()?,
        progress: &bar,
        ..EncryptOptions::new(&policy)
    };
    let mut r = protect::encrypt(input.path(), output.path(), &to, &opts)
        .with_context(|| format!("encrypt {}", input_name(&a.input)))?;
    if let Some((m, _, _)) = &fingerprint {
        if m.rewritten() != m.tensors() {
            bail!(
                "internal: the fingerprint changed {} of {} planned tensors of {}",
                m.rewritten(),
                m.tensors(),
                input_name(&a.input)
            );
        }
    }
    crate::dest::note_created(created, a.out.quiet);
    let to_stdout = output.is_stdout();
    (r.input, r.output) = (a.input.display().to_string(), output.name());
    output.finish()?;
    let fp = fingerprint.map(|(_, f, _)| f);
    let fp_text = fp.as_ref().map(FingerprintReport::text);
    for w in r.warnings.iter().chain(&fit_warnings) {
        a.out.warn(Some(w));
    }
    let r = EncryptOutput { report: r, fingerprint: fp, tier_fit: fit, dry_run: false };
    a.out.report(&r, to_stdout, || {
        encrypt_text(&r.report, a.verbose, false) + &fit_text + fp_text.as_deref().unwrap_or("")
    })?;
    Ok(ExitCode::SUCCESS)
}
