//! Key options: the key that opens or protects a model (and the new one of `rekey`), the
//! licence it may need, the recipients and signers of a model.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use onnx_protect_core::keys::KeySource;
use onnx_protect_crypto::{CryptoError, KeyFile};
use onnx_protect_keys::{Identity, Recipient, SignerKey, SigningKey};
use zeroize::Zeroizing;

use crate::exit::{usage, KeyFileError};
use crate::keys::{
    check_new_passphrase, check_recorded_tiers, key_command, parse_identity_file, parse_recipient, pkcs11_key,
    prompt_passphrase, read_capped, read_key_file, read_signing_key, split_tier,
};

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

/// The key that opens a protected model, with the licence it needs for a model encrypted
/// with `--licence-authority`.
#[derive(clap::Args, Default)]
pub struct OpenKeyArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub licence: LicenceArgs,
}

impl OpenKeyArgs {
    /// The key with its licence, or `None` if no key option was given.
    pub fn source(&self) -> Result<Option<KeySource>> {
        self.key.source()?.map(|k| self.licence.apply(k)).transpose()
    }

    /// The key with its licence; an error if none was given.
    pub fn required(&self) -> Result<KeySource> {
        self.licence.apply(self.key.required()?)
    }
}

/// Where the new key comes from: the same choices as the old key, prefixed `--new-`;
/// at most one (a clap group).
#[derive(clap::Args, Default, Clone)]
#[group(id = "new_key", multiple = false)]
pub struct NewKeyArgs {
    /// New key file (as written by `keygen`; older files of 64 hex digits or 32 raw bytes are read too).
    #[arg(long, value_name = "FILE", value_parser = crate::stdio::file_path)]
    pub new_key_file: Option<PathBuf>,
    /// Environment variable holding the new key as 64 hex digits.
    #[arg(long, value_name = "VAR")]
    pub new_key_env: Option<String>,
    /// Environment variable holding a new passphrase (stretched with Argon2id).
    #[arg(long, value_name = "VAR")]
    pub new_passphrase_env: Option<String>,
    /// File whose first line is a new passphrase (stretched with Argon2id).
    #[arg(long, value_name = "FILE", value_parser = crate::stdio::file_path)]
    pub new_passphrase_file: Option<PathBuf>,
    /// Type the new passphrase at a prompt, twice (standard input must be a terminal).
    #[arg(long)]
    pub new_passphrase: bool,
}

impl NewKeyArgs {
    /// The new key source; a usage error if none was given. A new passphrase shorter
    /// than the minimum is refused unless `allow_short` (`--allow-short-passphrase`).
    /// With `tiers` (the model's number of access tiers), a master key recording another
    /// number is refused.
    pub fn required(&self, allow_short: bool, tiers: Option<u32>) -> Result<KeySource> {
        if !self.any() {
            usage!(
                "a new key is required: give --new-key-file, --new-key-env, --new-passphrase, --new-passphrase-env or \
                 --new-passphrase-file"
            );
        }
        let source = if self.new_passphrase {
            KeySource::passphrase(prompt_passphrase("new ", true)?)
        } else {
            let as_old = KeyArgs {
                key_file: self.new_key_file.clone(),
                key_env: self.new_key_env.clone(),
                passphrase_env: self.new_passphrase_env.clone(),
                passphrase_file: self.new_passphrase_file.clone(),
                ..Default::default()
            };
            match tiers {
                Some(t) => as_old.required_master_for(t),
                None => as_old.required_master(),
            }
            .context("new key")?
        };
        check_new_passphrase(&source, allow_short, "the new passphrase")?;
        Ok(source)
    }

    /// Whether any new-key option was given.
    pub fn any(&self) -> bool {
        self.new_key_file.is_some()
            || self.new_key_env.is_some()
            || self.new_passphrase_env.is_some()
            || self.new_passphrase_file.is_some()
            || self.new_passphrase
    }
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
        let text = read_capped(path, onnx_protect_licence::MAX_LICENCE_LEN).map_err(unreadable)?;
        let tcti = onnx_protect_tpm::tcti_from_env();
        onnx_protect_core::keys::with_licence(key, &text, self.licence_clock.as_deref(), &tcti)
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

/// What a model is checked with (`verify`, `check`): a key, if any (with the licence it
/// needs), and the publishers whose signature it must carry.
#[derive(clap::Args)]
pub struct VerifyWith {
    #[command(flatten)]
    pub key: OpenKeyArgs,
    #[command(flatten)]
    pub signers: SignerArgs,
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
            None => usage!(
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
        let file = match (&self.key_file, &self.key_env) {
            (Some(p), _) => Some(read_key_file(p)?),
            // Errors about the variable name it; key-file errors get the name added.
            (None, Some(v)) => Some(KeyFile::from_env(v).map_err(|e| match e {
                CryptoError::EnvKeyMissing { .. }
                | CryptoError::EnvKeyNotUnicode { .. }
                | CryptoError::EnvKeyLength { .. }
                | CryptoError::EnvKeyNotHex { .. } => anyhow::Error::new(e),
                other => KeyFileError(format!("environment variable {v}: {other}")).into(),
            })?),
            (None, None) => None,
        };
        if let Some(file) = file {
            let key = match master_only {
                true => file.into_master().map_err(|e| KeyFileError(format!("{}: {e}", self.key_name())))?,
                false => file.into_key(),
            };
            return Ok(Some(KeySource::key(key)));
        }
        if let Some(v) = &self.passphrase_env {
            let s = std::env::var(v).with_context(|| format!("environment variable {v} is not set"))?;
            return Ok(Some(KeySource::passphrase(Zeroizing::new(s.into_bytes()))));
        }
        if self.passphrase {
            // A new passphrase (one that protects a model) is typed twice.
            return Ok(Some(KeySource::passphrase(prompt_passphrase("", master_only)?)));
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
            return Ok(Some(KeySource::new(parse_identity_file(p, &text)?)));
        }
        if let Some(uri) = &self.pkcs11 {
            return Ok(Some(KeySource::new(Identity::Provider(Arc::new(pkcs11_key(uri)?)))));
        }
        if let Some(line) = &self.key_command {
            return Ok(Some(KeySource::new(Identity::Provider(Arc::new(key_command(line)?)))));
        }
        if let Some(p) = &self.passphrase_file {
            let text = Zeroizing::new(
                std::fs::read(p)
                    .map_err(|e| KeyFileError(format!("cannot read passphrase file {}: {e}", p.display())))?,
            );
            let line = text.split(|&b| b == b'\n').next().unwrap_or(&[]);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            return Ok(Some(KeySource::passphrase(Zeroizing::new(line.to_vec()))));
        }
        Ok(None)
    }
}
