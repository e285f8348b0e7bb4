//! Key options shared by the commands that need a key.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use onnx_protect_core::keys::KeySource;
use onnx_protect_crypto::{CryptoError, KeyFile, MAX_KEY_FILE_LEN};
use std::sync::Arc;
use std::time::Duration;

use onnx_protect_keys::{
    Identity, KeyCommand, Pkcs11Key, PluginPrompt, Recipient, SignerKey, SigningKey, DEFAULT_COMMAND_TIMEOUT,
};
use zeroize::Zeroizing;

pub use crate::exit::KeyFileError;

/// At most one key option: the group makes clap refuse two (exit 2).
#[derive(clap::Args, Default)]
#[group(id = "key", multiple = false)]
pub struct KeyArgs {
    /// Key file, as written by `keygen` or `derive-tier-key` (older files of 64 hex digits or 32 raw bytes are read too).
    #[arg(long, value_name = "FILE", value_parser = crate::stdio::file_path)]
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the key as 64 hex digits (or the text of a key file).
    #[arg(long, value_name = "VAR")]
    pub key_env: Option<String>,
    /// Environment variable holding a passphrase (stretched with Argon2id).
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
    /// File whose first line is a passphrase (stretched with Argon2id).
    #[arg(long, value_name = "FILE", value_parser = crate::stdio::file_path)]
    pub passphrase_file: Option<PathBuf>,
    /// Type the passphrase at a prompt (standard input must be a terminal; asked twice when it
    /// protects a model).
    #[arg(long)]
    pub passphrase: bool,
    /// Identity file: age X25519 identities (AGE-SECRET-KEY-1..., age-keygen, `keygen --recipient`), an age
    /// plugin's identities (AGE-PLUGIN-NAME-1..., run through age-plugin-NAME), or a TPM key file
    /// (`keygen --tpm`, reached through ONNX_PROTECT_TPM_TCTI): opens models encrypted to its recipient.
    /// `-i` as in age (not in `run`, where `-i` is an input).
    #[arg(long, short = 'i', value_name = "FILE", value_parser = crate::stdio::file_path)]
    pub identity: Option<PathBuf>,
    /// A secret key in a PKCS#11 token (HSM), as an RFC 7512 URI:
    /// pkcs11:token=T;object=LABEL with the query module-path=... and pin-source=... (docs/keys.md).
    #[arg(long, value_name = "URI")]
    pub pkcs11: Option<String>,
    /// An external program that wraps and unwraps data keys (a cloud KMS through its CLI):
    /// 'PROGRAM ARGS', run as PROGRAM ARGS wrap|unwrap with the protocol of docs/keys.md.
    #[arg(long, value_name = "'PROGRAM ARGS'")]
    pub key_command: Option<String>,
}

/// The licence a model needs to open (docs/shipping.md#licences).
#[derive(clap::Args, Default)]
pub struct LicenceArgs {
    /// A licence (onnx-protect-licence-v1 text signed by the publisher) for a model encrypted with
    /// --licence-authority: checked against the model, the recipient that opens it and the time.
    #[arg(long, value_name = "FILE", value_parser = crate::stdio::file_path)]
    pub licence: Option<PathBuf>,
    /// The file recording the latest time a licence check saw (detects a clock set back); default
    /// $ONNX_PROTECT_LICENCE_CLOCK, else $XDG_STATE_HOME or ~/.local/state /onnx-protect/licence-clock.
    #[arg(long, value_name = "FILE", requires = "licence")]
    pub licence_clock: Option<PathBuf>,
}

impl LicenceArgs {
    /// `key` with the licence, if one was given.
    pub fn apply(&self, key: KeySource) -> Result<KeySource> {
        let Some(path) = &self.licence else { return Ok(key) };
        let unreadable = |e: std::io::Error| onnx_protect_licence::LicenceError::Malformed {
            line: 0,
            reason: format!("cannot read {}: {e}", path.display()),
        };
        let mut text = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(onnx_protect_licence::MAX_LICENCE_LEN as u64 + 1).read_to_end(&mut text))
            .map_err(unreadable)?;
        let tcti = onnx_protect_tpm::tcti_from_env();
        onnx_protect_tpm::with_licence(key, &text, self.licence_clock.as_deref(), &tcti)
            .with_context(|| format!("licence {}", path.display()))
    }
}

/// Who may open a model, recorded at encryption (docs/shipping.md#licences).
#[derive(clap::Args, Default)]
pub struct LicenceAuthorityArgs {
    /// Opening the model will need a licence signed by this publisher key (onnx-protect-signer1...,
    /// `keygen --signing`); recorded in the manifest, covered by its MACs and signatures.
    #[arg(long, value_name = "SIGNER")]
    pub licence_authority: Option<String>,
    /// A model id that licences may name (model: id:ID), recorded with --licence-authority.
    #[arg(long, value_name = "ID", requires = "licence_authority")]
    pub model_id: Option<String>,
}

impl LicenceAuthorityArgs {
    /// The requirement to record, if any.
    pub fn requirement(&self) -> Result<Option<onnx_protect_core::licence::LicenceRequirement>> {
        let Some(text) = &self.licence_authority else { return Ok(None) };
        let authority = SignerKey::parse(text.trim()).map_err(|e| KeyFileError(format!("--licence-authority: {e}")))?;
        if let Some(id) = &self.model_id {
            onnx_protect_core::licence::check_model_id(id)?;
        }
        Ok(Some(onnx_protect_core::licence::LicenceRequirement { authority, model_id: self.model_id.clone() }))
    }
}

/// Public recipients a model is encrypted to, besides (or instead of) a key.
#[derive(clap::Args, Default)]
pub struct RecipientArgs {
    /// Encrypt to this public recipient: an age X25519 recipient (age1...), an age plugin recipient
    /// (age1NAME1..., through age-plugin-NAME), a TPM recipient (onnx-protect-tpm1..., no TPM needed) or a
    /// pkcs11: URI; repeatable. `T:RECIPIENT` wraps the data key of access tier T for it (default: the top tier).
    /// `-r` as in age.
    #[arg(long = "recipient", short = 'r', value_name = "RECIPIENT")]
    pub recipient: Vec<String>,
    /// File of public recipients, one per line (`#` comments, as for age -R); repeatable. `-R` as in age.
    #[arg(long, short = 'R', value_name = "FILE", value_parser = crate::stdio::file_path)]
    pub recipients_file: Vec<PathBuf>,
    /// Encrypt to this key command as well ('PROGRAM ARGS', docs/keys.md); repeatable. `T:'PROGRAM ARGS'`
    /// wraps the data key of access tier T for it.
    #[arg(long, value_name = "'PROGRAM ARGS'")]
    pub recipient_command: Vec<String>,
}

impl RecipientArgs {
    /// The recipients given, each with its tier (0: the top tier).
    pub fn recipients(&self) -> Result<Vec<(Recipient, u32)>> {
        let mut out = Vec::new();
        for r in &self.recipient {
            out.push(parse_recipient(r)?);
        }
        for path in &self.recipients_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| KeyFileError(format!("cannot read recipients file {}: {e}", path.display())))?;
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                out.push(parse_recipient(line).with_context(|| format!("recipients file {}", path.display()))?);
            }
        }
        for c in &self.recipient_command {
            let (tier, line) = split_tier(c)?;
            out.push((Recipient::Provider(Arc::new(key_command(line)?)), tier));
        }
        Ok(out)
    }
}

/// The environment variable that sets how long a key command may run, in seconds.
pub const KEY_COMMAND_TIMEOUT_ENV: &str = "ONNX_PROTECT_KEY_COMMAND_TIMEOUT";

/// A key command, with the timeout of [`KEY_COMMAND_TIMEOUT_ENV`] (default 60 s).
pub fn key_command(line: &str) -> Result<KeyCommand> {
    let timeout = match std::env::var(KEY_COMMAND_TIMEOUT_ENV) {
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(s) if s > 0.0 && s <= 86_400.0 => Duration::from_secs_f64(s),
            _ => crate::exit::usage!("{KEY_COMMAND_TIMEOUT_ENV}={v}: expected seconds, more than 0 and at most 86400"),
        },
        Err(_) => DEFAULT_COMMAND_TIMEOUT,
    };
    Ok(KeyCommand::parse(line, timeout).map_err(|e| KeyFileError(e.to_string()))?)
}

/// A PKCS#11 key from its URI.
pub fn pkcs11_key(uri: &str) -> Result<Pkcs11Key> {
    Ok(Pkcs11Key::parse(uri).map_err(|e| KeyFileError(e.to_string()))?)
}

/// `[T:]REST`: the tier (0 if none) and the rest.
fn split_tier(text: &str) -> Result<(u32, &str)> {
    Ok(match text.split_once(':') {
        Some((t, r)) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
            let t: u32 = t.parse().map_err(|_| KeyFileError(format!("recipient {text}: bad tier")))?;
            if t == 0 || t > onnx_protect_select::MAX_TIERS {
                return Err(KeyFileError(format!("recipient {text}: tier {t} is outside 1 to 16")).into());
            }
            (t, r)
        }
        _ => (0, text),
    })
}

/// `[T:]RECIPIENT`: an age X25519 recipient, an age plugin recipient (`age1NAME1…`), a TPM
/// recipient (`onnx-protect-tpm1…`) or a `pkcs11:` URI.
fn parse_recipient(text: &str) -> Result<(Recipient, u32)> {
    let (tier, r) = split_tier(text)?;
    let recipient = onnx_protect_tpm::parse_recipient(r, plugin_prompt()).map_err(|e| KeyFileError(e.to_string()))?;
    Ok((recipient, tier))
}

/// How age plugins reach the person: messages on standard error; a PIN at a no-echo prompt
/// on the terminal when standard input is one, else none (the plugin then fails).
struct TerminalPrompt;

impl PluginPrompt for TerminalPrompt {
    fn message(&self, text: &str) {
        eprintln!("{text}");
    }

    fn secret(&self, description: &str) -> Option<Zeroizing<String>> {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return None;
        }
        let mut line = Zeroizing::new(Vec::new());
        onnx_protect_fsio::tty::read_hidden_line(&format!("{description}: "), &mut line).ok()?;
        String::from_utf8(line.to_vec()).ok().map(Zeroizing::new)
    }
}

/// The prompt given to age plugins.
pub fn plugin_prompt() -> Arc<dyn PluginPrompt> {
    Arc::new(TerminalPrompt)
}

/// The identity an `--identity` file holds: age X25519 identities (`AGE-SECRET-KEY-1…`),
/// the identities of one age plugin (`AGE-PLUGIN-NAME-1…`) or a TPM key
/// (`onnx-protect-tpm-key-v1`, reached through `ONNX_PROTECT_TPM_TCTI`).
fn parse_identity_file(path: &Path, text: &str) -> Result<Identity> {
    onnx_protect_tpm::parse_identity_file(text, &onnx_protect_tpm::tcti_from_env(), plugin_prompt())
        .map_err(|e| KeyFileError(format!("identity file {}: {e}", path.display())).into())
}

/// Publisher keys that sign what a command writes.
#[derive(clap::Args, Default)]
pub struct SignArgs {
    /// Sign the model with this Ed25519 signing key file (`keygen --signing`); repeatable.
    #[arg(long, value_name = "FILE", value_parser = crate::stdio::file_path)]
    pub sign_key: Vec<PathBuf>,
}

impl SignArgs {
    pub fn keys(&self) -> Result<Vec<SigningKey>> {
        self.sign_key.iter().map(|p| read_signing_key(p)).collect()
    }
}

/// A signing key file (`keygen --signing`).
pub fn read_signing_key(p: &Path) -> Result<SigningKey> {
    let text = Zeroizing::new(
        std::fs::read_to_string(p)
            .map_err(|e| KeyFileError(format!("cannot read signing key {}: {e}", p.display())))?,
    );
    SigningKey::parse_file(&text).map_err(|e| KeyFileError(format!("signing key {}: {e}", p.display())).into())
}

/// Publishers whose signature a model must carry.
#[derive(clap::Args, Default)]
pub struct SignerArgs {
    /// Require a valid signature of this publisher: a signer key (onnx-protect-signer1...) or a file of
    /// them; repeatable (any one of them suffices).
    #[arg(long, value_name = "KEY|FILE")]
    pub signer: Vec<String>,
}

impl SignerArgs {
    pub fn signers(&self) -> Result<Vec<SignerKey>> {
        let mut out = Vec::new();
        for s in &self.signer {
            if s.trim().to_ascii_lowercase().starts_with(onnx_protect_keys::SIGNER_HRP) {
                out.push(SignerKey::parse(s).map_err(|e| KeyFileError(format!("--signer {s}: {e}")))?);
            } else {
                let text = std::fs::read_to_string(s).map_err(|e| {
                    KeyFileError(format!("--signer {s}: not a signer key, and cannot read it as a file: {e}"))
                })?;
                out.extend(SignerKey::parse_file(&text).map_err(|e| KeyFileError(format!("signer file {s}: {e}")))?);
            }
        }
        Ok(out)
    }
}

/// Reads and parses a key file (at most `MAX_KEY_FILE_LEN` bytes are read, so
/// a huge or endless file is refused without being read whole).
pub fn read_key_file(path: &Path) -> Result<KeyFile, KeyFileError> {
    let cannot = |e: std::io::Error| KeyFileError(format!("cannot read key file {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Zeroizing::new(Vec::new());
    // One byte past the cap, so that a larger file is recognised as such.
    file.take(MAX_KEY_FILE_LEN as u64 + 1).read_to_end(&mut bytes).map_err(cannot)?;
    KeyFile::parse(&bytes).map_err(|e| KeyFileError(format!("key file {}: {e}", path.display())))
}

impl KeyArgs {
    /// The key source, or `None` if no key option was given. A key file may
    /// hold any kind of key (a tier key decrypts the tiers it reaches).
    pub fn source(&self) -> Result<Option<KeySource>> {
        self.source_of(false)
    }

    /// The key source; an error if none was given. Any kind of key file.
    pub fn required(&self) -> Result<KeySource> {
        Self::present(self.source()?)
    }

    /// The key source where a master key is needed (to encrypt, or to derive
    /// input transforms); an error if none was given, or if the key file holds
    /// a tier key.
    pub fn required_master(&self) -> Result<KeySource> {
        Self::present(self.source_of(true)?)
    }

    fn present(source: Option<KeySource>) -> Result<KeySource> {
        match source {
            Some(k) => Ok(k),
            None => crate::exit::usage!(
                "a key is required: give --key-file, --key-env, --passphrase, --passphrase-env, --passphrase-file, \
                 --identity, --pkcs11 or --key-command"
            ),
        }
    }

    /// The master key (or passphrase) that encrypts a model of `tiers` access tiers, if one
    /// was given (where recipients may stand instead of it): a key file or variable recording another number of tiers (`master
    /// tiers=N`, docs/format.md Appendix A) is refused.
    pub fn optional_master_for(&self, tiers: u32) -> Result<Option<KeySource>> {
        if let Some(recorded) = self.recorded_tiers()? {
            check_recorded_tiers(&self.key_name(), recorded, tiers)?;
        }
        self.source_of(true)
    }

    /// [`Self::optional_master_for`], an error if no key was given.
    pub fn required_master_for(&self, tiers: u32) -> Result<KeySource> {
        Self::present(self.optional_master_for(tiers)?)
    }

    /// The number of tiers a master key file or variable records; `None` for a tier key, a
    /// file of the older form, a passphrase or an identity.
    pub fn recorded_tiers(&self) -> Result<Option<u32>> {
        let file = match (&self.key_file, &self.key_env) {
            (Some(p), _) => read_key_file(p)?,
            (None, Some(v)) => match KeyFile::from_env(v) {
                Ok(f) => f,
                Err(_) => return Ok(None), // reported by `source_of`, with its context
            },
            (None, None) => return Ok(None),
        };
        Ok(match file.kind() {
            onnx_protect_crypto::KeyKind::Master { tiers } => Some(tiers),
            _ => None,
        })
    }

    fn key_name(&self) -> String {
        match (&self.key_file, &self.key_env) {
            (Some(p), _) => format!("key file {}", p.display()),
            (None, Some(v)) => format!("environment variable {v}"),
            (None, None) => "the key".into(),
        }
    }

    fn source_of(&self, master_only: bool) -> Result<Option<KeySource>> {
        if let Some(p) = &self.key_file {
            let file = read_key_file(p)?;
            let key = if master_only {
                file.into_master().map_err(|e| KeyFileError(format!("key file {}: {e}", p.display())))?
            } else {
                file.into_key()
            };
            return Ok(Some(KeySource::Key(key)));
        }
        if let Some(v) = &self.key_env {
            // Errors about the variable name it; key-file errors get the name added.
            let file = KeyFile::from_env(v).map_err(|e| match e {
                CryptoError::EnvKeyMissing { .. }
                | CryptoError::EnvKeyNotUnicode { .. }
                | CryptoError::EnvKeyLength { .. }
                | CryptoError::EnvKeyNotHex { .. } => anyhow::Error::new(e),
                other => KeyFileError(format!("environment variable {v}: {other}")).into(),
            })?;
            let key = if master_only {
                file.into_master().map_err(|e| KeyFileError(format!("environment variable {v}: {e}")))?
            } else {
                file.into_key()
            };
            return Ok(Some(KeySource::Key(key)));
        }
        if let Some(v) = &self.passphrase_env {
            let s = std::env::var(v).with_context(|| format!("environment variable {v} is not set"))?;
            return Ok(Some(KeySource::Passphrase(Zeroizing::new(s.into_bytes()))));
        }
        if self.passphrase {
            // A new passphrase (one that protects a model) is typed twice.
            return Ok(Some(KeySource::Passphrase(prompt_passphrase("", master_only)?)));
        }
        if let Some(p) = &self.identity {
            if master_only {
                return Err(KeyFileError(format!(
                    "{} is an identity, which opens models; to encrypt for it, give its recipient (--recipient age1…)",
                    p.display()
                ))
                .into());
            }
            let text = Zeroizing::new(
                std::fs::read_to_string(p)
                    .map_err(|e| KeyFileError(format!("cannot read identity file {}: {e}", p.display())))?,
            );
            return Ok(Some(KeySource::Identity(parse_identity_file(p, &text)?)));
        }
        if let Some(uri) = &self.pkcs11 {
            return Ok(Some(KeySource::Identity(Identity::Provider(Arc::new(pkcs11_key(uri)?)))));
        }
        if let Some(line) = &self.key_command {
            return Ok(Some(KeySource::Identity(Identity::Provider(Arc::new(key_command(line)?)))));
        }
        if let Some(p) = &self.passphrase_file {
            let text = Zeroizing::new(
                std::fs::read(p)
                    .map_err(|e| KeyFileError(format!("cannot read passphrase file {}: {e}", p.display())))?,
            );
            let line = text.split(|&b| b == b'\n').next().unwrap_or(&[]);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            return Ok(Some(KeySource::Passphrase(Zeroizing::new(line.to_vec()))));
        }
        Ok(None)
    }
}

/// Refuses a master key recording `recorded` access tiers (`master tiers=N`) for a model
/// of `tiers` tiers as core's rule does (docs/format.md Appendix A), naming the key (`name`).
pub fn check_recorded_tiers(name: &str, recorded: u32, tiers: u32) -> Result<(), KeyFileError> {
    onnx_protect_core::recipients::check_recorded_tiers(recorded, tiers)
        .map_err(|e| KeyFileError(format!("{name} is {e}")))
}

/// The number of access tiers of a format-2 protected model, read without a key; `None`
/// when it cannot be told (not protected, format 1, or an error that the command itself
/// will report).
pub fn model_tiers(path: &Path) -> Option<u32> {
    use onnx_protect_core::protection::Protection;
    let model = onnx_protect_format::Model::open(path).ok()?;
    let p = Protection::read(&model).ok()??;
    (p.format_version() == 2).then(|| p.tiers())
}

/// The shortest passphrase that protects a model without `--allow-short-passphrase`, in
/// characters (Unicode scalar values; bytes for a passphrase that is not UTF-8).
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// Refuses a passphrase shorter than [`MIN_PASSPHRASE_CHARS`] that would protect a model
/// (`what` names it in the message), unless `allow_short`. Keys and identities pass.
pub fn check_new_passphrase(source: &KeySource, allow_short: bool, what: &str) -> Result<(), KeyFileError> {
    let KeySource::Passphrase(p) = source else { return Ok(()) };
    let n = std::str::from_utf8(p).map(|s| s.chars().count()).unwrap_or(p.len());
    if n < MIN_PASSPHRASE_CHARS && !allow_short {
        return Err(KeyFileError(format!(
            "{what} has {n} characters; a passphrase needs at least {MIN_PASSPHRASE_CHARS} \
             (pass --allow-short-passphrase to use a shorter one, or use a key file: keygen)"
        )));
    }
    Ok(())
}

/// Reads a passphrase at a prompt on the terminal (`/dev/tty`), without echo; with
/// `confirm`, twice, and the two must match. Standard input must be a terminal, so a
/// script that pipes into the command is not left waiting on a prompt it cannot see.
/// `prefix` goes before "passphrase" in the prompt (`"new "` for rekey's new one).
pub fn prompt_passphrase(prefix: &str, confirm: bool) -> Result<Zeroizing<Vec<u8>>> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        crate::exit::usage!(
            "--{}passphrase asks at a prompt, and standard input is not a terminal; use --{}passphrase-env VAR or \
             --{}passphrase-file FILE",
            flag(prefix),
            flag(prefix),
            flag(prefix)
        );
    }
    let ask = |prompt: &str| -> Result<Zeroizing<Vec<u8>>> {
        let mut line = Zeroizing::new(Vec::new());
        onnx_protect_fsio::tty::read_hidden_line(prompt, &mut line)
            .map_err(|e| KeyFileError(format!("cannot read the passphrase at the terminal: {e}")))?;
        Ok(line)
    };
    let first = ask(&format!("Enter {prefix}passphrase: "))?;
    if confirm {
        let again = ask(&format!("Repeat the {prefix}passphrase: "))?;
        if *again != *first {
            return Err(KeyFileError("the two passphrases differ".into()).into());
        }
    }
    Ok(first)
}

/// `new-` for the prompt prefix `new `.
fn flag(prefix: &str) -> String {
    prefix.trim().chars().chain((!prefix.is_empty()).then_some('-')).collect()
}
