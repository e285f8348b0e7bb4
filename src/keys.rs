//! Key options shared by the commands that need a key.

use std::path::PathBuf;

use anyhow::{Context, Result};
use onnx_protect_core::protect::KeySource;
use onnx_protect_crypto::MasterKey;
use zeroize::Zeroizing;

/// A key or passphrase that could not be read (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyFileError(pub String);

/// At most one key option: the group makes clap refuse two (exit 2).
#[derive(clap::Args, Default)]
#[group(id = "key", multiple = false)]
pub struct KeyArgs {
    /// Key file: 32 raw bytes or 64 hex digits (as written by `keygen`).
    #[arg(long, value_name = "FILE", value_parser = crate::stdio::file_path)]
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the key as 64 hex digits.
    #[arg(long, value_name = "VAR")]
    pub key_env: Option<String>,
    /// Environment variable holding a passphrase (stretched with Argon2id).
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
    /// File whose first line is a passphrase (stretched with Argon2id).
    #[arg(long, value_name = "FILE", value_parser = crate::stdio::file_path)]
    pub passphrase_file: Option<PathBuf>,
}

impl KeyArgs {
    /// The key source, or `None` if no key option was given.
    pub fn source(&self) -> Result<Option<KeySource>> {
        if let Some(p) = &self.key_file {
            let bytes = Zeroizing::new(
                std::fs::read(p).map_err(|e| KeyFileError(format!("cannot read key file {}: {e}", p.display())))?,
            );
            let key = MasterKey::parse_key_file(&bytes)
                .map_err(|e| KeyFileError(format!("key file {}: {e}", p.display())))?;
            return Ok(Some(KeySource::Key(key)));
        }
        if let Some(v) = &self.key_env {
            return Ok(Some(KeySource::Key(MasterKey::from_env(v)?)));
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

    /// The key source; a usage error if none was given.
    pub fn required(&self) -> Result<KeySource> {
        match self.source()? {
            Some(k) => Ok(k),
            None => crate::exit::usage!(
                "a key is required: give --key-file, --key-env, --passphrase-env or --passphrase-file"
            ),
        }
    }
}
