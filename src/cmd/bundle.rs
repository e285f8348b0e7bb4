//! `bundle keygen|sign|verify`: OpenSSF model-signing bundles (docs/signing.md), for any
//! model file or directory, protected or not (library: `onnx_protect_bundle`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use onnx_protect_bundle::{default_bundle, Certificates, Curve, PrivateKey, Trust};

use crate::args::output::OutputArgs;
use crate::common::{read_private, read_public};
use crate::exit::usage;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write an ECDSA private key (PKCS#8 PEM, mode 0600) and its public key (PEM).
    Keygen(KeygenArgs),
    /// Sign a model file or directory: a Sigstore bundle that `model_signing verify key` checks.
    Sign(SignArgs),
    /// Verify a model against a bundle (ours or model_signing's): with the signer's public key, or trusted certificates.
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// The private key to write (never replaces a file).
    #[arg(short, long, value_parser = crate::stdio::file_path)]
    output: PathBuf,
    /// Where to write the public key [default: the private key's path with `.pub.pem`].
    #[arg(long, value_parser = crate::stdio::file_path)]
    public: Option<PathBuf>,
    /// The curve: p256 (ECDSA with SHA-256) or p384 (with SHA-384).
    #[arg(long, default_value = "p256", value_parser = ["p256", "p384"])]
    curve: String,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(clap::Args)]
pub struct SignArgs {
    /// The model: a file, or a directory (every file under it is signed).
    model: PathBuf,
    /// The ECDSA private key in PEM (PKCS#8 or SEC1, as `bundle keygen` or `openssl` write it).
    #[arg(long, value_name = "KEY.pem", value_parser = crate::stdio::file_path)]
    key: PathBuf,
    /// The certificate of --key in PEM: the bundle carries it and the --certificate-chain
    /// certificates instead of a key hint, as `model_signing sign certificate` writes it.
    #[arg(long, value_name = "CERT.pem", value_parser = crate::stdio::file_path)]
    certificate: Option<PathBuf>,
    /// Certificates leading from --certificate to a root, in PEM (repeatable; a file may hold several).
    #[arg(long = "certificate-chain", value_name = "CHAIN.pem", requires = "certificate", value_parser = crate::stdio::file_path)]
    certificate_chain: Vec<PathBuf>,
    /// Where to write the bundle [default: MODEL.sig beside a model file, model.sig in a directory].
    #[arg(short, long, value_parser = crate::stdio::file_path)]
    output: Option<PathBuf>,
    #[command(flatten)]
    write: crate::args::output::WriteArgs,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The model: a file or a directory.
    model: PathBuf,
    /// The signer's public key in PEM.
    #[arg(long, value_name = "PUB.pem", value_parser = crate::stdio::file_path, required_unless_present = "certificate_chain", conflicts_with = "certificate_chain")]
    key: Option<PathBuf>,
    /// Trusted certificates in PEM (repeatable; a file may hold several): the bundle's
    /// certificate chain must lead from its signing certificate to one of them.
    #[arg(long = "certificate-chain", value_name = "ROOTS.pem", value_parser = crate::stdio::file_path)]
    certificate_chain: Vec<PathBuf>,
    /// The bundle [default: the one `bundle sign` writes, MODEL.sig or DIR/model.sig].
    #[arg(long, value_parser = crate::stdio::file_path)]
    bundle: Option<PathBuf>,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Keygen(k) => keygen(k),
        Command::Sign(s) => sign(s),
        Command::Verify(v) => verify(v),
    }
}

/// Writes `text` to `path` through a staged file renamed into place (replacing a file only
/// with `--force`), readable only by its owner when `secret`.
fn write_atomic(path: &Path, text: &str, write: &crate::args::output::WriteArgs, secret: bool) -> Result<()> {
    write.check_file(path)?;
    let dir = crate::dest::dir_of(path);
    let mut staged =
        onnx_protect_fsio::stage::Staging::new(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
    std::io::Write::write_all(staged.file_mut(), text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    if !secret {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = staged.file().set_permissions(std::fs::Permissions::from_mode(0o644));
        }
    }
    staged.publish(path, write.force).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn keygen(a: KeygenArgs) -> Result<ExitCode> {
    let curve = Curve::parse(&a.curve).unwrap_or(Curve::P256);
    let public_path = a.public.clone().unwrap_or_else(|| {
        let mut p = a.output.clone().into_os_string();
        p.push(".pub.pem");
        PathBuf::from(p)
    });
    if a.output.exists() || public_path.exists() {
        usage!("{} or {} exists; keygen never replaces a key", a.output.display(), public_path.display());
    }
    let key = PrivateKey::generate(curve)?;
    let never = crate::args::output::WriteArgs::default();
    write_atomic(&a.output, &key.to_pem()?, &never, true)?;
    write_atomic(&public_path, &key.public().to_pem(), &never, false)?;
    let report = serde_json::json!({"key": a.output.display().to_string(), "public": public_path.display().to_string(), "curve": a.curve});
    a.out.report(&report, false, || {
        format!("wrote {} and its public key {}", a.output.display(), public_path.display())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Every certificate of the PEM files, in order.
fn read_certificates(paths: &[PathBuf]) -> Result<Option<Certificates>> {
    let mut all: Option<Certificates> = None;
    for p in paths {
        let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        let certs = Certificates::from_pem(&bytes, &p.display().to_string())?;
        match all.as_mut() {
            Some(a) => a.extend(certs),
            None => all = Some(certs),
        }
    }
    Ok(all)
}

fn sign(a: SignArgs) -> Result<ExitCode> {
    let key = read_private(&a.key)?;
    let paths: Vec<PathBuf> = a.certificate.iter().chain(&a.certificate_chain).cloned().collect();
    let chain = read_certificates(&paths)?;
    if let (Some(chain), Some(cert)) = (&chain, &a.certificate) {
        if chain.leaf_key(&cert.display().to_string())? != key.public() {
            return Err(onnx_protect_bundle::BundleError::Key {
                path: cert.display().to_string(),
                reason: format!("its public key is not the public key of {}", a.key.display()),
            }
            .into());
        }
    }
    let output = a.output.clone().unwrap_or_else(|| default_bundle(&a.model));
    let created = crate::dest::missing(crate::dest::dir_of(&output));
    crate::dest::create_dir(crate::dest::dir_of(&output), true)?;
    let manifest = onnx_protect_bundle::sign_model_with(&a.model, &key, chain.as_ref(), &output, a.write.force)
        .with_context(|| format!("sign {}", a.model.display()))?;
    crate::dest::note_created(created, a.out.quiet);
    let mut report = serde_json::json!({"model": a.model.display().to_string(), "bundle": output.display().to_string(), "files": manifest.resources.len(), "public_key_hint": key.public().hint()});
    if let Some(chain) = &chain {
        report["certificates"] = chain.len().into();
        report["certificate_subject"] = chain.leaf_subject().into();
    }
    a.out.report(&report, false, || format!("signed {} -> {}", a.model.display(), output.display()))?;
    Ok(ExitCode::SUCCESS)
}

fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let key = a.key.as_deref().map(read_public).transpose()?;
    let roots = read_certificates(&a.certificate_chain)?;
    let trust = match (&key, &roots) {
        (Some(k), _) => Trust::Key(k),
        (None, Some(r)) => Trust::Certificates(r),
        (None, None) => usage!("give the signer's --key or the trusted --certificate-chain"),
    };
    let bundle = a.bundle.clone().unwrap_or_else(|| default_bundle(&a.model));
    let v = onnx_protect_bundle::verify_model_with(&a.model, &bundle, trust)
        .with_context(|| format!("verify {} with {}", a.model.display(), bundle.display()))?;
    let by = if key.is_some() { "signed by the given key" } else { "signed by a certificate the given chain trusts" };
    let report = serde_json::json!({"model": a.model.display().to_string(), "bundle": bundle.display().to_string(), "files": v.resources.len(), "hash": v.hash.name()});
    a.out.report(&report, false, || {
        format!(
            "ok: {} matches {} ({} file(s), {}, {by})",
            a.model.display(),
            bundle.display(),
            v.resources.len(),
            v.hash.name()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
