//! `keygen`, `encrypt`, `decrypt` and `verify`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use onnx_protect_core::protect::{self, DecryptOptions, EncryptOptions};
use onnx_protect_crypto::{KeyFile, KeyKind, MasterKey};
use onnx_protect_select::Policy;

use crate::keys::KeyArgs;
use crate::progress::Bar;

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Where to write the new key (a key file that records its kind, docs/format.md appendix; mode 0600). Refuses to overwrite.
    #[arg(short, long)]
    output: PathBuf,
    /// Also write the keys of tiers 1..N-1 next to it (OUTPUT.tier1, ...); OUTPUT is the tier-N key.
    #[arg(long, value_name = "N", default_value_t = 1)]
    tiers: u32,
    #[arg(long)]
    json: bool,
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
    if a.tiers == 0 || a.tiers > onnx_protect_select::MAX_TIERS {
        bail!("--tiers must be between 1 and {}", onnx_protect_select::MAX_TIERS);
    }
    let key = MasterKey::generate()?;
    let paths: Vec<PathBuf> = (1..a.tiers).map(|t| tier_path(&a.output, t)).collect();
    for p in paths.iter().chain(std::iter::once(&a.output)) {
        if p.exists() {
            bail!("{} exists; keygen never overwrites a key", p.display());
        }
    }
    write_key_file(&a.output, KeyKind::Master { tiers: a.tiers }, &key)?;
    let mut k = key.clone();
    for t in (1..a.tiers).rev() {
        k = k.tier_down();
        write_key_file(&tier_path(&a.output, t), KeyKind::Tier { tier: t }, &k)?;
    }
    let fp: String = key.fingerprint().iter().map(|b| format!("{b:02x}")).collect();
    if a.json {
        let mut j = serde_json::json!({"key_file": a.output.display().to_string(), "fingerprint": fp});
        if a.tiers > 1 {
            j["tiers"] = a.tiers.into();
            j["tier_key_files"] = paths.iter().map(|p| p.display().to_string()).collect();
        }
        crate::output::emit(&j.to_string())?;
    } else {
        crate::output::emit(&format!("wrote key {} (fingerprint {fp})", a.output.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct DeriveTierKeyArgs {
    /// A key file: a master key (`keygen --tiers N`) or the key of a tier.
    #[arg(long, value_name = "FILE", required_unless_present_any = ["passphrase_env", "passphrase_file"])]
    key_file: Option<PathBuf>,
    /// The tier of the given key; needed only for key files that do not record it (older files).
    /// With a passphrase: the model's number of tiers.
    #[arg(long)]
    from: Option<u32>,
    /// Environment variable holding the passphrase a tiered model was encrypted with (needs --model).
    #[arg(long, value_name = "VAR", conflicts_with_all = ["key_file", "passphrase_file"], requires = "model")]
    passphrase_env: Option<String>,
    /// File whose first line is that passphrase (needs --model).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["key_file"], requires = "model")]
    passphrase_file: Option<PathBuf>,
    /// With a passphrase: the model it protects (its manifest holds the Argon2id
    /// parameters, so the tier keys are that model's).
    #[arg(long, value_name = "MODEL")]
    model: Option<PathBuf>,
    /// The (lower) tier whose key to write.
    #[arg(long)]
    tier: u32,
    /// Where to write the derived key (a key file that records its tier).
    #[arg(short, long)]
    output: PathBuf,
    #[arg(long)]
    json: bool,
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
    write_key_file(&a.output, KeyKind::Tier { tier: a.tier }, &k)?;
    if a.json {
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
    /// The model to protect.
    input: PathBuf,
    /// Where to write the protected model (external data files go next to it).
    #[arg(short, long, required_unless_present = "in_place")]
    output: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Overwrite the input (and its external data files).
    #[arg(long)]
    in_place: bool,
    /// Flush the outputs to the disk before renaming them into place (done anyway with --in-place).
    #[arg(long)]
    sync: bool,
    #[arg(long)]
    json: bool,
    #[arg(long, short)]
    quiet: bool,
}

/// The policy options of `encrypt` and `batch encrypt`.
#[derive(clap::Args)]
pub struct PolicyArgs {
    /// A TOML policy file (docs/policy.md); the built-in default otherwise.
    #[arg(long, value_name = "FILE")]
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

fn output_of(input: &std::path::Path, output: &Option<PathBuf>, in_place: bool) -> Result<PathBuf> {
    match (output, in_place) {
        (Some(o), false) => Ok(o.clone()),
        (None, true) => Ok(input.to_path_buf()),
        (Some(o), true) if o == input => Ok(o.clone()),
        (Some(_), true) => bail!("--in-place writes over the input; do not also give a different -o"),
        (None, false) => bail!("give -o OUTPUT or --in-place"),
    }
}

pub fn encrypt(a: EncryptArgs) -> Result<ExitCode> {
    let policy = a.policy.build()?;
    let key = a.key.required_master()?;
    let output = output_of(&a.input, &a.output, a.in_place)?;
    let bar = Bar::new(a.quiet);
    let r = protect::encrypt(
        &a.input,
        &output,
        &protect::EncryptTo::key(key),
        &EncryptOptions { policy: &policy, in_place: a.in_place, sync: a.sync, allow_empty: false, signing_keys: &[], progress: &bar },
    )
    .with_context(|| format!("encrypt {}", a.input.display()))?;
    if a.json {
        crate::output::emit(&serde_json::to_string_pretty(&r)?)?;
    } else {
        let pct = if r.weight_bytes > 0 { 100.0 * r.encrypted_bytes as f64 / r.weight_bytes as f64 } else { 0.0 };
        crate::output::emit(&format!(
            "encrypted {} bytes in {} tensors ({pct:.2}% of {} weight bytes) -> {}",
            r.encrypted_bytes,
            r.tensors.len(),
            r.weight_bytes,
            r.output
        ))?;
        for (name, why) in &r.skipped {
            crate::output::emit(&format!("  skipped {name}: {why}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct DecryptArgs {
    /// The protected model.
    input: PathBuf,
    /// Where to write the restored model.
    #[arg(short, long, required_unless_present_any = ["in_place", "stdout"])]
    output: Option<PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
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
    /// With --stdout: write this external data file (by its location) instead of the model.
    #[arg(long, value_name = "LOCATION", requires = "stdout")]
    external: Option<String>,
    #[arg(long)]
    json: bool,
    #[arg(long, short)]
    quiet: bool,
}

pub fn decrypt(a: DecryptArgs) -> Result<ExitCode> {
    let key = a.key.required()?;
    if a.stdout {
        return crate::cmd_run::decrypt_to_stdout(&a.input, &key, a.tier, a.external.as_deref());
    }
    let output = output_of(&a.input, &a.output, a.in_place)?;
    let bar = Bar::new(a.quiet);
    let r = protect::decrypt_tier(
        &a.input,
        &output,
        &key,
        a.tier,
        &DecryptOptions { in_place: a.in_place, sync: a.sync, signers: &[], progress: &bar },
    )
    .with_context(|| format!("decrypt {}", a.input.display()))?;
    if a.json {
        crate::output::emit(&serde_json::to_string_pretty(&r)?)?;
    } else {
        crate::output::emit(&format!(
            "decrypted {} bytes in {} tensors -> {}",
            r.decrypted_bytes, r.tensors, r.output
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The protected model.
    input: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    #[arg(long)]
    json: bool,
    #[arg(long, short)]
    quiet: bool,
}

pub fn verify(a: VerifyArgs) -> Result<ExitCode> {
    let key = a.key.source()?;
    let bar = Bar::new(a.quiet);
    let r = protect::verify(&a.input, key.as_ref(), &bar).with_context(|| format!("verify {}", a.input.display()))?;
    if a.json {
        crate::output::emit(&serde_json::to_string_pretty(&r)?)?;
    } else {
        let how =
            if r.check == "mac" { "key and MAC verified" } else { "manifest and checksum verified (no key given)" };
        let restored = if r.restored_bytes > 0 {
            format!(" ({} more in decrypted tiers, in clear)", r.restored_bytes)
        } else {
            String::new()
        };
        crate::output::emit(&format!(
            "ok: {how}; {} tensors, {} encrypted bytes{restored}",
            r.tensors, r.encrypted_bytes
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
