//! `check`: the CI gate (docs/ci.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use onnx_protect_core::check::{check_model, reasons, CheckOptions, ModelCheck};
use onnx_protect_core::error::LicenceKind;
use onnx_protect_core::summary::ProtectionKind;

use crate::args::key::{SignerArgs, VerifyWith};
use crate::args::output::OutputArgs;
use crate::args::policy::load_policy;
use crate::exit::{self, usage};
use crate::progress::Bar;

#[derive(clap::Args)]
pub struct Args {
    /// The models to check; a directory stands for every `*.onnx` file under it (recursively).
    #[arg(required = true, value_name = "MODEL", value_parser = crate::stdio::file_path)]
    models: Vec<PathBuf>,
    /// Require at least the protection this TOML policy (docs/policy.md) would give.
    #[arg(long, value_name = "FILE", value_parser = crate::stdio::file_path)]
    policy: Option<PathBuf>,
    /// Require at least the protection of the built-in default policy.
    #[arg(long, conflicts_with = "policy")]
    builtin_policy: bool,
    /// Override a coefficient of the required policy: OP=VALUE (OP may be `*`). Repeatable.
    #[arg(long, value_name = "OP=C")]
    coefficient: Vec<String>,
    /// Override a mode of the required policy: OP=ctr|fp|dp (a tensor encrypted in ctr meets any mode). Repeatable.
    #[arg(long, value_name = "OP=MODE")]
    mode: Vec<String>,
    /// Override the split of the required policy: OP=first-dim|N. Repeatable.
    #[arg(long, value_name = "OP=N")]
    subsequences: Vec<String>,
    /// Require encrypted bytes in the strict sense: every bit under the keystream (ctr, and fp on
    /// integer types); fp on floats and dp count only when the policy given asks for them.
    #[arg(long)]
    require_encrypted: bool,
    /// Let a model without a manifest, or with nothing encrypted, pass (it fails by default).
    #[arg(long, conflicts_with = "require_encrypted")]
    allow_unprotected: bool,
    /// Require the encrypted spans to contain the policy's spans, not just as many bytes.
    #[arg(long)]
    strict_spans: bool,
    /// Let a format-1 model pass (only its encrypted spans are authenticated); it fails by default.
    #[arg(long = "allow-format-1")]
    allow_format_1: bool,
    /// The key to verify the MACs with (every byte, as `verify --key-file` does), not only the
    /// keyless digest, with the licence it needs for a model encrypted with
    /// --licence-authority; the signers required.
    #[command(flatten)]
    with: VerifyWith,
    #[command(flatten)]
    out: OutputArgs,
}

/// The models named, each directory replaced by the `*.onnx` files under it (recursively,
/// sorted by path, as `batch --dir` walks it); a directory without one is a usage error.
fn expand_directories(models: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::with_capacity(models.len());
    for m in models {
        if !m.is_dir() {
            out.push(m.clone());
            continue;
        }
        let found = onnx_protect_batch::collect(&onnx_protect_batch::Inputs::Dir(m.clone()), None)?;
        if found.is_empty() {
            usage!("{}: no *.onnx file under this directory", m.display());
        }
        out.extend(found.into_iter().map(|item| item.input));
    }
    Ok(out)
}

/// Whether a `--signer` value names a PEM public key file (an ECDSA signer of bundles).
fn is_pem_file(s: &str) -> bool {
    std::fs::read_to_string(s).is_ok_and(|t| t.contains("-----BEGIN PUBLIC KEY-----"))
}

/// The gate for one model. With PEM signers, a bundle beside the model (MODEL.sig, else
/// model.sig in its directory) that one of them verifies meets the signature requirement;
/// otherwise the in-model signature of an Ed25519 signer must (when any is given).
fn check_one(
    model: &std::path::Path,
    opts: &CheckOptions,
    bundle_signers: &[onnx_protect_bundle::PublicKey],
) -> ModelCheck {
    if bundle_signers.is_empty() {
        return check_model(model, opts);
    }
    let bundle = bundle_beside(model, bundle_signers);
    let none: [onnx_protect_keys::SignerKey; 0] = [];
    let in_model = CheckOptions { signers: if bundle.is_ok() { &none } else { opts.signers }, ..*opts };
    let mut r = check_model(model, &in_model);
    match bundle {
        Ok(_) => {
            r.integrity = Some(match r.integrity {
                Some("mac") => "mac+bundle",
                Some(_) => "checksum+bundle",
                None => "bundle",
            })
        }
        Err(e) if opts.signers.is_empty() => {
            r.passed = false;
            r.failures.push(onnx_protect_core::check::Failure {
                reason: onnx_protect_core::check::reasons::MODIFIED,
                op_type: None,
                tensor: None,
                detail: format!("{e:#}"),
            });
        }
        Err(_) => {}
    }
    r
}

/// The bundle beside `model` verified by one of `signers`: its path. `MODEL.sig` is tried
/// first, then `model.sig` in the model's directory (model_signing's default name); a
/// bundle that exists and does not verify does not stop the other from being tried.
fn bundle_beside(model: &std::path::Path, signers: &[onnx_protect_bundle::PublicKey]) -> Result<PathBuf> {
    let candidates = [onnx_protect_bundle::default_bundle(model), crate::dest::dir_of(model).join("model.sig")];
    let present: Vec<&PathBuf> = candidates.iter().filter(|p| p.is_file()).collect();
    if present.is_empty() {
        anyhow::bail!(
            "no signature bundle beside the model ({} or {})",
            candidates[0].display(),
            candidates[1].display()
        );
    }
    let mut failures = Vec::new();
    for path in present {
        let mut last = None;
        for key in signers {
            match onnx_protect_bundle::verify_model(model, path, key) {
                Ok(_) => return Ok(path.to_path_buf()),
                Err(e) => last = Some(anyhow::Error::from(e)),
            }
        }
        failures.push(match last {
            Some(e) => format!("bundle {}: {e:#}", path.display()),
            None => format!("bundle {}: no signer", path.display()),
        });
    }
    anyhow::bail!("{}", failures.join("; "))
}

/// The exit code of a set of verdicts: modified beats unreadable beats a key problem beats
/// a licence refusal (its own code, 10 to 16) beats any other gate failure.
fn code_of(results: &[ModelCheck]) -> u8 {
    let has = |r: &str| results.iter().flat_map(|m| &m.failures).any(|f| f.reason == r);
    let licence = LicenceKind::ALL.into_iter().find(|k| has(k.as_str()));
    if results.iter().all(|m| m.passed) {
        exit::OK
    } else if has(reasons::MODIFIED) {
        exit::MODIFIED
    } else if has(reasons::BAD_MODEL) {
        exit::BAD_MODEL
    } else if has(reasons::WRONG_KEY) {
        exit::KEY
    } else if let Some(kind) = licence {
        exit::licence_code(kind)
    } else {
        exit::GATE
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    let use_policy = a.policy.is_some()
        || a.builtin_policy
        || !a.coefficient.is_empty()
        || !a.mode.is_empty()
        || !a.subsequences.is_empty();
    let policy =
        if use_policy { Some(load_policy(a.policy.as_ref(), &a.coefficient, &a.mode, &a.subsequences)?) } else { None };
    let bar = Bar::new(a.out.quiet);
    let key = a.with.key.key.source()?;
    if a.with.key.licence.licence.is_some() && key.is_none() {
        usage!("--licence goes with the key that opens the model: give a key option (--key-file, --identity, ...)");
    }
    let key = key.map(|k| a.with.key.licence.apply(k)).transpose()?;
    let (ed25519, pem): (Vec<String>, Vec<String>) =
        a.with.signers.signer.iter().cloned().partition(|s| !is_pem_file(s));
    let signers = SignerArgs { signer: ed25519 }.signers()?;
    let bundle_signers =
        pem.iter().map(|p| crate::common::read_public(std::path::Path::new(p))).collect::<Result<Vec<_>>>()?;
    let opts = CheckOptions {
        policy: policy.as_ref(),
        require_encrypted: a.require_encrypted,
        allow_unprotected: a.allow_unprotected,
        strict_spans: a.strict_spans,
        allow_format_1: a.allow_format_1,
        key: key.as_ref(),
        signers: &signers,
        progress: &bar,
    };
    let models = expand_directories(&a.models)?;
    let results: Vec<ModelCheck> = models.iter().map(|m| check_one(m, &opts, &bundle_signers)).collect();
    let code = code_of(&results);
    let failed = results.iter().filter(|m| !m.passed).count();
    if a.out.quiet {
        // Nothing on standard output; a failure still gets its line on standard error.
    } else if a.out.json {
        let doc = serde_json::json!({
            "passed": failed == 0,
            "exit_code": code,
            "policy": policy.as_ref().map(|p| p.summary()),
            "require_encrypted": a.require_encrypted,
            "allow_unprotected": a.allow_unprotected,
            "models": results,
        });
        crate::output::emit(&serde_json::to_string_pretty(&doc)?)?;
    } else {
        for m in &results {
            print_text(m);
        }
    }
    if failed > 0 {
        let mut why: Vec<&str> = results.iter().flat_map(|m| &m.failures).map(|f| f.reason).collect();
        why.sort_unstable();
        why.dedup();
        eprintln!("error: check failed for {failed} of {} models ({})", results.len(), why.join(", "));
    }
    Ok(ExitCode::from(code))
}

fn print_text(m: &ModelCheck) {
    let verdict = if m.passed { "PASS" } else { "FAIL" };
    let state = if !m.protected {
        "not protected".to_string()
    } else {
        let integrity = match m.integrity {
            Some("mac") => "checksum and MACs ok",
            Some("mac+signature") => "checksum, MACs and signature ok",
            Some("checksum+signature") => "checksum and signature ok",
            Some("mac+bundle") => "checksum, MACs and signature bundle ok",
            Some("checksum+bundle") => "checksum and signature bundle ok",
            Some(_) => "checksum ok",
            None => "integrity not verified",
        };
        let by = |p: ProtectionKind| m.bytes_by_protection.get(p.id()).copied().unwrap_or(0);
        format!(
            "protected, {integrity}, {} tensors: {} bytes {}, {} bytes {}, {} bytes {}",
            m.tensors,
            by(ProtectionKind::Encrypted),
            ProtectionKind::Encrypted.label(),
            by(ProtectionKind::ExponentClear),
            ProtectionKind::ExponentClear.label(),
            by(ProtectionKind::Permuted),
            ProtectionKind::Permuted.label()
        )
    };
    println!("{verdict} {}: {state}", m.path);
    if let Some(w) = m.warning {
        println!("  warning: {w}");
    }
    for op in &m.ops {
        println!(
            "  {}: policy {} {} -> {:.2}% of {} weight bytes {} ({}/{} tensors){}",
            op.op_type,
            op.coefficient,
            op.mode,
            100.0 * op.encrypted_fraction,
            op.weight_bytes,
            op.label,
            op.tensors_encrypted,
            op.tensors,
            if op.passed { "" } else { " FAIL" }
        );
    }
    for f in &m.failures {
        let mut at = Vec::new();
        if let Some(op) = &f.op_type {
            at.push(op.as_str());
        }
        if let Some(t) = &f.tensor {
            at.push(t.as_str());
        }
        let at = if at.is_empty() { String::new() } else { format!(" [{}]", at.join(" ")) };
        // A library message that starts with the reason already ("modified: ...") says it once.
        let detail = f.detail.strip_prefix(f.reason).and_then(|d| d.strip_prefix(": ")).unwrap_or(&f.detail);
        println!("  {}{at}: {detail}", f.reason);
    }
}
