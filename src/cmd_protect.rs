//! `keygen`, `encrypt`, `decrypt` and `verify`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use onnx_protect_core::protect::{self, DecryptOptions, EncryptOptions};
use onnx_protect_core::recipients::EncryptTo;
use onnx_protect_crypto::{KeyFile, KeyKind, MasterKey};
use onnx_protect_select::Policy;

use crate::dest::WriteArgs;
use crate::exit::usage;
use crate::keys::{KeyArgs, LicenceArgs, LicenceAuthorityArgs, RecipientArgs, SignArgs, SignerArgs};
use crate::output::OutputArgs;
use crate::progress::Bar;
use crate::stdio::{self, input_name, is_stdio};

#[derive(clap::Args)]
pub struct KeygenArgs {
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
fn tpm_key(a: &KeygenArgs) -> Result<(zeroize::Zeroizing<String>, String)> {
    let handle = match &a.tpm_handle {
        None => None,
        Some(h) => match h.strip_prefix("0x").map(|d| u32::from_str_radix(d, 16)) {
            Some(Ok(v)) if onnx_protect_tpm::check_persistent(v).is_ok() => Some(v),
            _ => usage!("--tpm-handle {h}: expected 0x81000000 to 0x81ffffff"),
        },
    };
    let tcti = onnx_protect_tpm::tcti_from_env();
    let tpm_err = |e: onnx_protect_tpm::TpmError| crate::keys::KeyFileError(e.to_string());
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

/// Writes `text` to a new file readable by its owner only (never over an existing file),
/// or prints it for `-`.
fn write_secret_text(path: &std::path::Path, text: &str) -> Result<()> {
    if is_stdio(path) {
        return crate::output::emit(text.trim_end());
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f =
        opts.open(path).with_context(|| format!("cannot create {} (keygen never overwrites a key)", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// `keygen --signing`, `keygen --recipient` and `keygen --fingerprint-secret`: the secret
/// to `-o`, the public string printed (to stderr when the secret goes to stdout).
fn keygen_public(a: &KeygenArgs, output: &std::path::Path) -> Result<ExitCode> {
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
fn keygen_to_stdout(a: &KeygenArgs) -> Result<ExitCode> {
    if a.tiers != 1 {
        usage!("--tiers writes one file per tier next to OUTPUT; give -o FILE, not -o -");
    }
    a.out.refuse_json_with_stdout(true)?;
    let key = MasterKey::generate()?;
    let text = KeyFile::new(KeyKind::Master { tiers: 1 }, key.clone())?.encode();
    crate::output::emit(text.trim_end())?;
    if !a.out.quiet {
        let fp: String = key.fingerprint().iter().map(|b| format!("{b:02x}")).collect();
        eprintln!("printed a new key (fingerprint {fp})");
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a new key file (never over an existing file), readable by its owner only.
fn write_key_file(path: &std::path::Path, kind: KeyKind, key: &MasterKey) -> Result<()> {
    let text = KeyFile::new(kind, key.clone())?.encode();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("cannot create key file {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn tier_path(base: &std::path::Path, t: u32) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(format!(".tier{t}"));
    PathBuf::from(s)
}

pub fn keygen(a: KeygenArgs) -> Result<ExitCode> {
    const { assert!(onnx_protect_select::MAX_TIERS == onnx_protect_crypto::MAX_TIERS) };
    if let Some(uri) = &a.pkcs11 {
        let key = crate::keys::pkcs11_key(uri)?;
        key.generate().map_err(|e| crate::keys::KeyFileError(e.to_string()))?;
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
    let fp: String = key.fingerprint().iter().map(|b| format!("{b:02x}")).collect();
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

#[derive(clap::Args)]
pub struct DeriveTierKeyArgs {
    /// A key file: a master key (`keygen --tiers N`) or the key of a tier.
    #[arg(long, value_name = "FILE", required_unless_present_any = ["passphrase_env", "passphrase_file"], value_parser = stdio::file_path)]
    key_file: Option<PathBuf>,
    /// The tier of the given key; needed only for key files that do not record it (older files).
    /// With a passphrase: the model's number of tiers.
    #[arg(long)]
    from: Option<u32>,
    /// Environment variable holding the passphrase a tiered model was encrypted with (needs --model).
    #[arg(long, value_name = "VAR", conflicts_with_all = ["key_file", "passphrase_file"], requires = "model")]
    passphrase_env: Option<String>,
    /// File whose first line is that passphrase (needs --model).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["key_file"], requires = "model", value_parser = stdio::file_path)]
    passphrase_file: Option<PathBuf>,
    /// With a passphrase: the model it protects (its manifest holds the Argon2id
    /// parameters, so the tier keys are that model's).
    #[arg(long, value_name = "MODEL", value_parser = stdio::file_path)]
    model: Option<PathBuf>,
    /// The (lower) tier whose key to write.
    #[arg(long)]
    tier: u32,
    /// Where to write the derived key (a key file that records its tier). Never overwrites a file.
    #[arg(short, long, value_parser = stdio::file_path)]
    output: PathBuf,
    #[command(flatten)]
    out: OutputArgs,
}

/// The tier of the key in a key file: the one it records, or `--from` for a
/// file that records none. A `--from` that contradicts the file is an error.
fn tier_of_key_file(path: &std::path::Path, kind: KeyKind, from: Option<u32>) -> Result<u32> {
    match (kind.tier(), from) {
        (Some(recorded), Some(f)) if f != recorded => {
            bail!("key file {} holds {kind}, so it is the key of tier {recorded}, not --from {f}", path.display())
        }
        (Some(recorded), _) => Ok(recorded),
        (None, Some(f)) => Ok(f),
        (None, None) => bail!(
            "--from is required: key file {} does not record its tier (an older key file); give the tier of that key",
            path.display()
        ),
    }
}

/// `derive-tier-key`: the key of a lower tier, derived one way from a higher one.
pub fn derive_tier_key(a: DeriveTierKeyArgs) -> Result<ExitCode> {
    let (mut k, from) = match &a.key_file {
        Some(path) => {
            let file = crate::keys::read_key_file(path)?;
            let from = tier_of_key_file(path, file.kind(), a.from)?;
            (file.into_key(), from)
        }
        None => {
            let Some(model) = &a.model else { bail!("--model is required with a passphrase") };
            let source = crate::keys::KeyArgs {
                key_file: None,
                key_env: None,
                passphrase_env: a.passphrase_env.clone(),
                passphrase_file: a.passphrase_file.clone(),
                ..Default::default()
            }
            .required()?;
            let m = onnx_protect_format::Model::open(model)?;
            let (k, tiers) =
                protect::top_master_key(&m, &source).with_context(|| format!("passphrase for {}", model.display()))?;
            if a.from.is_some_and(|f| f != tiers) {
                bail!("--from must be the model's number of tiers ({tiers}) with a passphrase");
            }
            (k, tiers)
        }
    };
    if a.tier == 0 || a.tier > from {
        bail!("--tier must be between 1 and {from} (the tier of the given key): a key only yields lower tiers");
    }
    for _ in a.tier..from {
        k = k.tier_down();
    }
    crate::dest::create_dir(crate::dest::dir_of(&a.output), a.out.quiet)?;
    write_key_file(&a.output, KeyKind::Tier { tier: a.tier }, &k)?;
    if a.out.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    if a.out.json {
        let fp: String = k.fingerprint().iter().map(|b| format!("{b:02x}")).collect();
        crate::output::emit(
            &serde_json::json!({"key_file": a.output.display().to_string(), "tier": a.tier, "fingerprint": fp})
                .to_string(),
        )?;
    } else {
        crate::output::emit(&format!("wrote the tier-{} key {}", a.tier, a.output.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct EncryptArgs {
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

/// `encrypt --lock-outputs`: outputs readable only with a key (docs/protection.md).
#[derive(clap::Args)]
pub struct LockArgs {
    /// Lock the class order of the output layer (a classifier's final Gemm or MatMul, with an
    /// optional Add, then Softmax/LogSoftmax/ArgMax/TopK): its rows and bias are stored in a keyed
    /// order, so the model run without the key reports wrong classes; run, the Python session,
    /// the C library and decrypt undo it with the key. With --fingerprint, each recipient's copy
    /// gets its own order, which trace reads.
    #[arg(long)]
    pub lock_outputs: bool,
    /// With --lock-outputs: the name of the output layer's Gemm or MatMul, for a model with several.
    #[arg(long, value_name = "NODE", requires = "lock_outputs")]
    pub lock_node: Option<String>,
    /// With --lock-outputs: encrypt no weight (the labels alone are locked; the model then runs
    /// anywhere without a loader, and only its answers need the key).
    #[arg(long, requires = "lock_outputs")]
    pub clear_weights: bool,
}

/// `encrypt --fingerprint ID`: a recipient's copy (docs/tracing.md).
#[derive(clap::Args)]
pub struct FingerprintArgs {
    /// Embed recipient ID's fingerprint in the weights, so a leaked decrypted copy can be traced
    /// to ID (docs/tracing.md). Needs --fingerprint-secret and --ledger.
    #[arg(long, value_name = "ID", requires_all = ["fingerprint_secret", "ledger"])]
    pub fingerprint: Option<String>,
    /// The publisher's fingerprint secret (keygen --fingerprint-secret).
    #[arg(long, value_name = "FILE", requires = "fingerprint", value_parser = stdio::file_path)]
    pub fingerprint_secret: Option<PathBuf>,
    /// The ledger that records who got which copy (created if missing; appended atomically).
    #[arg(long, value_name = "LEDGER", requires = "fingerprint", value_parser = stdio::file_path)]
    pub ledger: Option<PathBuf>,
    /// Fingerprint strength A: each marked weight moves by +A or -A times its tensor's standard deviation.
    #[arg(long, value_name = "ALPHA", requires = "fingerprint", default_value_t = onnx_protect_trace::DEFAULT_ALPHA)]
    pub fingerprint_strength: f64,
    /// Inputs (.npy, or .npz by input name) on which the marked copy must predict exactly the
    /// original's top-1 classes: the first of up to 64 variants of the mark that changes none
    /// is used (needs the tract feature).
    #[arg(long, value_name = "DATA", requires = "fingerprint", value_parser = stdio::file_path)]
    pub fingerprint_check: Option<PathBuf>,
}

/// What `encrypt --fingerprint` embedded.
#[derive(serde::Serialize)]
struct FingerprintReport {
    recipient: String,
    key_id: String,
    ledger: String,
    /// Whether the ledger already had this recipient's entry for this original.
    already_recorded: bool,
    alpha: f64,
    tensors: usize,
    elements: u64,
    /// The variant of the recipient's mark (0 unless --fingerprint-check chose another).
    variant: u32,
    /// With --fingerprint-check: the samples checked and the variants tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    checked: Option<crate::fingerprint_check::Checked>,
}

#[derive(serde::Serialize)]
struct EncryptOutput {
    #[serde(flatten)]
    report: protect::EncryptReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<FingerprintReport>,
    /// `--dry-run`: nothing was written (`output` is empty).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dry_run: bool,
}

impl LockArgs {
    /// The lock asked for, keyed by `seed` (a recipient's) or a fresh one.
    fn request(&self, seed: Option<onnx_protect_lock::LockSeed>) -> Option<onnx_protect_core::lock::LockOutputs> {
        self.lock_outputs.then(|| onnx_protect_core::lock::LockOutputs {
            node: self.lock_node.clone(),
            seed,
            only: self.clear_weights,
        })
    }
}

/// The line of `encrypt`'s report on the label lock, if any.
fn lock_text(lock: Option<&onnx_protect_core::lock::LockReport>) -> String {
    let Some(l) = lock else { return String::new() };
    let outs: Vec<String> = l.outputs.iter().map(|(n, k)| format!("{n} ({k})")).collect();
    format!(
        "\n  label lock: {} classes of {} ({}) in a keyed order; outputs {}{}",
        l.classes,
        l.node,
        l.tensors.join(", "),
        outs.join(", "),
        if l.only { "; weights left in clear" } else { "" }
    )
}

/// Reads a fingerprint secret file.
pub fn read_fingerprint_secret(path: &std::path::Path) -> Result<onnx_protect_trace::FingerprintKey> {
    use std::io::Read;
    let f = std::fs::File::open(path).with_context(|| format!("cannot read fingerprint secret {}", path.display()))?;
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    f.take(onnx_protect_trace::secret::MAX_SECRET_FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read fingerprint secret {}", path.display()))?;
    Ok(onnx_protect_trace::FingerprintKey::parse(&bytes, &path.display().to_string())?)
}

/// What `encrypt --fingerprint` prepared: the marker, its report and, with
/// `--lock-outputs`, the recipient's lock seed.
type Fingerprinting =
    (std::sync::Arc<onnx_protect_trace::Marker>, FingerprintReport, Option<onnx_protect_lock::LockSeed>);

/// The marker of `encrypt --fingerprint`, with its ledger entry written.
fn prepare_fingerprint(
    a: &FingerprintArgs,
    lock: &LockArgs,
    input: &std::path::Path,
    name: &str,
) -> Result<Option<Fingerprinting>> {
    let (Some(id), Some(secret), Some(ledger)) = (&a.fingerprint, &a.fingerprint_secret, &a.ledger) else {
        return Ok(None);
    };
    let recipient = onnx_protect_trace::RecipientId::new(id)?;
    let key = read_fingerprint_secret(secret)?;
    let model = onnx_protect_format::Model::open(input)?;
    if let Some(m) = model.metadata.iter().find(|m| onnx_protect_core::metadata::is_manifest_key(&m.key)) {
        return Err(onnx_protect_core::error::CoreError::AlreadyProtected { key: m.key.clone() }.into());
    }
    // A model that cannot be locked is refused before anything is marked or recorded.
    let layer = match lock.lock_outputs {
        true => Some(
            onnx_protect_lock::find_output_layer(&model, lock.lock_node.as_deref())
                .map_err(onnx_protect_core::error::CoreError::from)
                .with_context(|| format!("encrypt {name}"))?,
        ),
        false => None,
    };
    let (marker, checked) = match &a.fingerprint_check {
        None => (
            onnx_protect_trace::Marker::new(&model, &key, &recipient, a.fingerprint_strength)
                .with_context(|| format!("fingerprint {name}"))?,
            None,
        ),
        Some(data) => {
            let (m, c) = crate::fingerprint_check::choose(&model, &key, &recipient, a.fingerprint_strength, data)
                .with_context(|| format!("fingerprint {name}"))?;
            (m, Some(c))
        }
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut entry = marker.ledger_entry(name, now);
    // A recipient's label lock is keyed by the fingerprint secret, so trace can recompute it.
    let seed = match layer {
        Some(layer) => {
            entry.lock = layer.classes as u64;
            Some(key.lock_seed(&recipient, marker.original())?)
        }
        None => None,
    };
    let added = onnx_protect_trace::ledger::append(ledger, &entry)?;
    let report = FingerprintReport {
        recipient: recipient.to_string(),
        key_id: key.key_id(),
        ledger: ledger.display().to_string(),
        already_recorded: added == onnx_protect_trace::Appended::AlreadyRecorded,
        alpha: marker.alpha(),
        tensors: marker.tensors(),
        elements: marker.elements(),
        variant: marker.variant(),
        checked,
    };
    Ok(Some((std::sync::Arc::new(marker), report, seed)))
}

/// The policy options of `encrypt` and `batch encrypt`.
#[derive(clap::Args)]
pub struct PolicyArgs {
    /// A TOML policy file (docs/policy.md); the built-in default otherwise.
    #[arg(long, value_name = "FILE", value_parser = stdio::file_path)]
    pub policy: Option<PathBuf>,
    /// Override a coefficient: OP=VALUE in [0, 1] (OP may be `*`). Repeatable.
    #[arg(long, value_name = "OP=C")]
    pub coefficient: Vec<String>,
    /// Override a mode: OP=ctr|fp|dp. Repeatable. With --tiers N > 1 the default is fp and ctr is refused.
    #[arg(long, value_name = "OP=MODE")]
    pub mode: Vec<String>,
    /// Override the split: OP=first-dim|N. Repeatable.
    #[arg(long, value_name = "OP=N")]
    pub subsequences: Vec<String>,
    /// Override the selection rule: OP=even|l1|l2|sample-l1|sample-l2. Repeatable.
    #[arg(long, value_name = "OP=RULE")]
    pub selection: Vec<String>,
    /// Public seed of the sample-* selection rules.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Split the encrypted set into N nested access tiers by importance (N > 1: default mode fp; ctr refused).
    #[arg(long, value_name = "N")]
    pub tiers: Option<u32>,
    /// Share of the encrypted bytes per tier, least important first, e.g. 0.5,0.3,0.2.
    #[arg(long, value_name = "S1,S2,...", value_delimiter = ',')]
    pub tier_shares: Option<Vec<f64>>,
}

impl PolicyArgs {
    /// Whether any policy option was given.
    pub fn any(&self) -> bool {
        self.policy.is_some()
            || !self.coefficient.is_empty()
            || !self.mode.is_empty()
            || !self.subsequences.is_empty()
            || !self.selection.is_empty()
            || self.seed.is_some()
            || self.tiers.is_some()
            || self.tier_shares.is_some()
    }

    /// The policy file (or the built-in default) with the overrides applied.
    pub fn build(&self) -> Result<Policy> {
        let mut policy = load_policy(self.policy.as_ref(), &self.coefficient, &self.mode, &self.subsequences)?;
        for s in &self.selection {
            policy.apply_override("selection", s)?;
        }
        if let Some(seed) = self.seed {
            policy.seed = seed;
        }
        if let Some(t) = self.tiers {
            policy.set_tiers(t)?;
        }
        if let Some(s) = &self.tier_shares {
            policy.set_tier_shares(s)?;
            policy.shares()?;
        }
        Ok(policy)
    }
}

pub fn load_policy(path: Option<&PathBuf>, coeff: &[String], mode: &[String], subs: &[String]) -> Result<Policy> {
    let mut p = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read policy {}", p.display()))?;
            Policy::from_toml(&text).with_context(|| format!("{}", p.display()))?
        }
        None => Policy::default(),
    };
    for c in coeff {
        p.apply_override("coefficient", c)?;
    }
    for m in mode {
        p.apply_override("mode", m)?;
    }
    for s in subs {
        p.apply_override("subsequences", s)?;
    }
    Ok(p)
}

/// `encrypt --dry-run`: the selection and its share, nothing written.
fn encrypt_dry_run(a: &EncryptArgs, policy: &onnx_protect_select::Policy) -> Result<ExitCode> {
    if is_stdio(&a.input) {
        usage!("--dry-run reads the model from a file; give its path instead of -");
    }
    if a.lock.lock_outputs {
        usage!("--dry-run plans the weights' encryption only; run it without --lock-outputs");
    }
    let bar = Bar::new(a.out.quiet);
    let opts = EncryptOptions { allow_empty: a.allow_empty, progress: &bar, ..EncryptOptions::new(policy) };
    let r = protect::encrypt_plan(&a.input, &opts).with_context(|| format!("encrypt {}", input_name(&a.input)))?;
    for w in &r.warnings {
        a.out.warn(Some(w));
    }
    let r = EncryptOutput { report: r, fingerprint: None, dry_run: true };
    a.out.report(&r, false, || encrypt_text(&r.report, a.verbose, true))?;
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

pub fn encrypt(a: EncryptArgs) -> Result<ExitCode> {
    let policy = a.policy.build()?;
    if a.dry_run {
        return encrypt_dry_run(&a, &policy);
    }
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
    let fp_text = fp.as_ref().map(|f| {
        format!(
            "\n  fingerprint of {}: {} elements in {} tensors (strength {}{}), ledger {}{}",
            f.recipient,
            f.elements,
            f.tensors,
            f.alpha,
            match &f.checked {
                Some(c) => format!(
                    ", variant {}: no top-1 class changed on {} samples, {} variants tried",
                    f.variant, c.samples, c.tried
                ),
                None => String::new(),
            },
            f.ledger,
            if f.already_recorded { " (already recorded)" } else { "" }
        )
    });
    for w in &r.warnings {
        a.out.warn(Some(w));
    }
    let r = EncryptOutput { report: r, fingerprint: fp, dry_run: false };
    a.out.report(&r, to_stdout, || encrypt_text(&r.report, a.verbose, false) + fp_text.as_deref().unwrap_or(""))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct DecryptArgs {
    /// The protected model; `-` reads it from standard input (no external data).
    input: PathBuf,
    /// Where to write the restored model; `-` is the same as --stdout.
    #[arg(short, long, required_unless_present_any = ["in_place", "stdout"])]
    output: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    licence: LicenceArgs,
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

pub fn decrypt(a: DecryptArgs) -> Result<ExitCode> {
    let key = a.licence.apply(a.key.required()?)?;
    let signers = a.signers.signers()?;
    let target = if a.stdout { PathBuf::from("-") } else { stdio::output_of(&a.input, &a.output, a.in_place)? };
    if is_stdio(&target) {
        a.out.refuse_json_with_stdout(true)?;
        return crate::cmd_run::decrypt_to_stdout(&a.input, &key, a.tier, &signers, a.external.as_deref());
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

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The protected model; `-` reads it from standard input (no external data).
    input: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    licence: LicenceArgs,
    #[command(flatten)]
    signers: SignerArgs,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let key = a.key.source()?.map(|k| a.licence.apply(k)).transpose()?;
    let input = stdio::Input::new(&a.input)?;
    let bar = Bar::new(a.out.quiet);
    let signers = a.signers.signers()?;
    let mut r = protect::verify_signed(input.path(), key.as_ref(), &signers, &bar)
        .with_context(|| format!("verify {}", input_name(&a.input)))?;
    r.input = a.input.display().to_string();
    a.out.warn(r.warning);
    a.out.report(&r, false, || {
        let how = match (r.check, r.format_version) {
            ("mac", 2) => "every byte and the MACs verified with the key",
            ("mac", _) => "key and MAC of the encrypted bytes verified (format 1)",
            (_, 2) => "every byte matches the manifest's digest (keyless: detects accidents, not attacks)",
            _ => "manifest and checksum of the encrypted bytes verified (format 1, no key given)",
        };
        let how =
            if r.signers.is_empty() { how.to_string() } else { format!("{how}; signed by {}", r.signers.join(", ")) };
        let restored = if r.restored_bytes > 0 {
            format!(" ({} more in decrypted tiers, in clear)", r.restored_bytes)
        } else {
            String::new()
        };
        format!("ok: {how}; {} tensors, {} encrypted bytes{restored}", r.tensors, r.encrypted_bytes)
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct SignArgsCmd {
    /// The protected model (format 2).
    input: PathBuf,
    /// Where to write the signed model; with --in-place, the input's manifest is replaced.
    #[arg(short, long, required_unless_present = "in_place", value_parser = crate::stdio::file_path)]
    output: Option<PathBuf>,
    /// Replace the input's manifest entry (only the file's tail is written... a copy is staged and renamed).
    #[arg(long)]
    in_place: bool,
    #[command(flatten)]
    sign: SignArgs,
    #[command(flatten)]
    write: WriteArgs,
    #[command(flatten)]
    out: OutputArgs,
}

/// `sign`: adds publisher signatures to a protected model (after checking its content).
pub fn sign(a: SignArgsCmd) -> Result<ExitCode> {
    let keys = a.sign.keys()?;
    if keys.is_empty() {
        usage!("give the signing key with --sign-key FILE (keygen --signing writes one)");
    }
    let output = a.output.clone().unwrap_or_else(|| a.input.clone());
    let created = crate::dest::missing(crate::dest::dir_of(&output));
    let bar = Bar::new(a.out.quiet);
    let r = protect::sign(&a.input, &output, &keys, a.in_place, &a.write.rules(), &bar)
        .with_context(|| format!("sign {}", a.input.display()))?;
    crate::dest::note_created(created, a.out.quiet);
    a.out.report(&r, false, || format!("signed -> {} (signers: {})", r.output, r.signers.join(", ")))?;
    Ok(ExitCode::SUCCESS)
}
