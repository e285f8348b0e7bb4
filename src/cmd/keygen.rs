//! `keygen`: a new key file, tier keys, a signing key, an age identity, a fingerprint
//! secret, a key in a PKCS#11 token or in the TPM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use onnx_protect_crypto::{KeyFile, KeyKind, MasterKey};

use crate::args::output::OutputArgs;
use crate::exit::usage;
use crate::key_files::{fingerprint_hex, write_key_file, write_secret_text};
use crate::stdio::is_stdio;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the new key (a key file that records its kind, docs/format.md appendix; mode 0600);
    /// `-` prints it on standard output. Refuses to overwrite. Without it, the key goes to standard
    /// output (as age-keygen does) unless that is a terminal, where a secret key is not printed.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Also write the keys of tiers 1..N-1 next to it (OUTPUT.tier1, ...); OUTPUT is the tier-N key.
    #[arg(long, value_name = "N", default_value_t = 1)]
    tiers: u32,
    /// Write an Ed25519 signing key (ONNX-PROTECT-SIGNING-KEY-1...) instead, and print its public
    /// signer key (onnx-protect-signer1...) for `--signer`.
    #[arg(long, conflicts_with_all = ["tiers", "recipient"])]
    signing: bool,
    /// Write an age X25519 identity (AGE-SECRET-KEY-1..., as age-keygen writes it) instead, and print
    /// its public recipient (age1...) for `encrypt --recipient`.
    #[arg(long, conflicts_with = "tiers")]
    recipient: bool,
    /// Write a fingerprint secret (onnx-protect-fingerprint-secret-v1, docs/tracing.md) instead: the
    /// publisher's secret for `encrypt --fingerprint` and `trace`. Never give it to a recipient.
    #[arg(long, conflicts_with_all = ["tiers", "signing", "recipient"])]
    fingerprint_secret: bool,
    /// Create the AES-256 key this PKCS#11 URI names in its token instead (sensitive, not extractable;
    /// refuses if one exists), for `--recipient pkcs11:...` and `--pkcs11`. Writes no file.
    #[arg(long, value_name = "URI", conflicts_with_all = ["tiers", "recipient", "signing", "fingerprint_secret", "output"])]
    pkcs11: Option<String>,
    /// Create a P-256 key inside this machine's TPM 2.0 instead (through ONNX_PROTECT_TPM_TCTI, default
    /// device:/dev/tpmrm0), write its TPM key file (the key's TPM-wrapped blob: useless on another machine)
    /// for `--identity`, and print its recipient (onnx-protect-tpm1...) for `encrypt --recipient`.
    #[arg(long, conflicts_with_all = ["tiers", "recipient", "signing", "fingerprint_secret", "pkcs11"])]
    tpm: bool,
    /// With --tpm: the key persistent at this handle (0x81000000 to 0x81ffffff), which the key file names:
    /// a handle that already holds a usable key (ECC P-256, ECDH, empty authorization) names that key
    /// and creates none; an empty one gets a new key; one holding anything else is refused.
    #[arg(long, value_name = "HANDLE", requires = "tpm")]
    tpm_handle: Option<String>,
    #[command(flatten)]
    out: OutputArgs,
}

/// `keygen --tpm`: the TPM key file's text and the key's recipient.
fn tpm_key(a: &Args) -> Result<(zeroize::Zeroizing<String>, String)> {
    let handle = match &a.tpm_handle {
        None => None,
        Some(h) => match h.strip_prefix("0x").map(|d| u32::from_str_radix(d, 16)) {
            Some(Ok(v)) if onnx_protect_tpm::check_persistent(v).is_ok() => Some(v),
            _ => usage!("--tpm-handle {h}: expected 0x81000000 to 0x81ffffff"),
        },
    };
    let tcti = onnx_protect_tpm::tcti_from_env();
    let tpm_err = |e: onnx_protect_tpm::TpmError| crate::exit::KeyFileError(e.to_string());
    let key = match handle {
        None => onnx_protect_tpm::create_key(&tcti).map_err(tpm_err)?,
        Some(h) => match onnx_protect_tpm::persistent_key(&tcti, h).map_err(tpm_err)? {
            (key, true) => key,
            (key, false) => {
                if !a.out.quiet {
                    eprintln!("note: 0x{h:08x} already holds a usable key: named, not created");
                }
                key
            }
        },
    };
    Ok((key.to_text(), key.recipient.to_text()))
}

/// `keygen --signing`, `keygen --recipient` and `keygen --fingerprint-secret`: the secret
/// to `-o`, the public string printed (to stderr when the secret goes to stdout).
fn keygen_public(a: &Args, output: &std::path::Path) -> Result<ExitCode> {
    let (secret, public, what) = if a.signing {
        let k = onnx_protect_keys::SigningKey::generate()?;
        (k.to_file_text(), k.public().to_text(), "signer key")
    } else if a.fingerprint_secret {
        let (k, text) = onnx_protect_trace::FingerprintKey::generate()?;
        (text, k.key_id(), "fingerprint secret, key id")
    } else if a.tpm {
        if !is_stdio(output) && output.exists() {
            bail!("{} exists; keygen never overwrites a key", output.display());
        }
        let (text, public) = tpm_key(a)?;
        (text, public, "TPM recipient")
    } else {
        let (text, public) = onnx_protect_keys::new_x25519_identity_file();
        (text, public, "recipient")
    };
    a.out.refuse_json_with_stdout(is_stdio(output))?;
    if !is_stdio(output) {
        crate::dest::create_dir(crate::dest::dir_of(output), a.out.quiet)?;
    }
    write_secret_text(output, &secret)?;
    if a.out.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    if a.out.json {
        let field = match (a.signing, a.fingerprint_secret) {
            (true, _) => "signer",
            (_, true) => "key_id",
            _ => "recipient",
        };
        crate::output::emit(&serde_json::json!({"file": output.display().to_string(), field: public}).to_string())?;
    } else if is_stdio(output) {
        eprintln!("{what}: {public}");
    } else {
        crate::output::emit(&format!("wrote {} ({what} {public})", output.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `keygen -o -`: the key, as a key file holds it, on standard output; the
/// fingerprint on standard error unless `-q`.
fn keygen_to_stdout(a: &Args) -> Result<ExitCode> {
    if a.tiers != 1 {
        usage!("--tiers writes one file per tier next to OUTPUT; give -o FILE, not -o -");
    }
    a.out.refuse_json_with_stdout(true)?;
    let key = MasterKey::generate()?;
    let text = KeyFile::new(KeyKind::Master { tiers: 1 }, key.clone())?.encode();
    crate::output::emit(text.trim_end())?;
    if !a.out.quiet {
        let fp = fingerprint_hex(&key);
        eprintln!("printed a new key (fingerprint {fp})");
    }
    Ok(ExitCode::SUCCESS)
}

fn tier_path(base: &std::path::Path, t: u32) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(format!(".tier{t}"));
    PathBuf::from(s)
}

/// `keygen`.
pub fn run(a: Args) -> Result<ExitCode> {
    const { assert!(onnx_protect_select::MAX_TIERS == onnx_protect_crypto::MAX_TIERS) };
    if let Some(uri) = &a.pkcs11 {
        let key = crate::keys::pkcs11_key(uri)?;
        key.generate().map_err(|e| crate::exit::KeyFileError(e.to_string()))?;
        if a.out.json {
            crate::output::emit(&serde_json::json!({"pkcs11": key.label()}).to_string())?;
        } else if !a.out.quiet {
            crate::output::emit(&format!("created AES-256 key {}", key.label()))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let output = match a.output.as_deref() {
        Some(o) => o,
        // A secret key on a terminal stays in its scrollback (and in screen recordings):
        // printed there only when asked for by name (`-o -`).
        None if std::io::IsTerminal::is_terminal(&std::io::stdout()) => usage!(
            "keygen prints the new secret key on standard output, which is a terminal here; give -o FILE \
             (or -o - to print it anyway, or redirect standard output)"
        ),
        None => std::path::Path::new("-"),
    };
    if a.signing || a.recipient || a.fingerprint_secret || a.tpm {
        return keygen_public(&a, output);
    }
    if is_stdio(output) {
        return keygen_to_stdout(&a);
    }
    if a.tiers == 0 || a.tiers > onnx_protect_select::MAX_TIERS {
        bail!("--tiers must be between 1 and {}", onnx_protect_select::MAX_TIERS);
    }
    let key = MasterKey::generate()?;
    let paths: Vec<PathBuf> = (1..a.tiers).map(|t| tier_path(output, t)).collect();
    for p in paths.iter().map(PathBuf::as_path).chain(std::iter::once(output)) {
        if p.exists() {
            bail!("{} exists; keygen never overwrites a key", p.display());
        }
    }
    crate::dest::create_dir(crate::dest::dir_of(output), a.out.quiet)?;
    write_key_file(output, KeyKind::Master { tiers: a.tiers }, &key)?;
    let mut k = key.clone();
    for t in (1..a.tiers).rev() {
        k = k.tier_down();
        write_key_file(&tier_path(output, t), KeyKind::Tier { tier: t }, &k)?;
    }
    let fp = fingerprint_hex(&key);
    if a.out.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    if a.out.json {
        let mut j = serde_json::json!({"key_file": output.display().to_string(), "fingerprint": fp});
        if a.tiers > 1 {
            j["tiers"] = a.tiers.into();
            j["tier_key_files"] = paths.iter().map(|p| p.display().to_string()).collect();
        }
        crate::output::emit(&j.to_string())?;
    } else {
        crate::output::emit(&format!("wrote key {} (fingerprint {fp})", output.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
