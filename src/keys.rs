//! Key options shared by the commands that need a key.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use onnx_protect_core::protect::KeySource;
use onnx_protect_crypto::{CryptoError, KeyFile, MAX_KEY_FILE_LEN};
use zeroize::Zeroizing;

/// A key or passphrase that could not be read (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyFileError(pub String);

#[derive(clap::Args, Default)]
pub struct KeyArgs {
    /// Key file, as written by `keygen` or `derive-tier-key` (older files of 64 hex digits or 32 raw bytes are read too).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the key as 64 hex digits (or the text of a key file).
    #[arg(long, value_name = "VAR")]
    pub key_env: Option<String>,
    /// Environment variable holding a passphrase (stretched with Argon2id).
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
    /// File whose first line is a passphrase (stretched with Argon2id).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
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
            None => bail!("a key is required: give --key-file, --key-env, --passphrase-env or --passphrase-file"),
        }
    }

    fn source_of(&self, master_only: bool) -> Result<Option<KeySource>> {
        let given = [
            self.key_file.is_some(),
            self.key_env.is_some(),
            self.passphrase_env.is_some(),
            self.passphrase_file.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if given > 1 {
            bail!("give only one of --key-file, --key-env, --passphrase-env, --passphrase-file");
        }
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
