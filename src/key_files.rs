//! Writing new secret files (`keygen`, `derive-tier-key`): never over an existing file,
//! readable by their owner only, flushed before the command reports them.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use onnx_protect_crypto::{KeyFile, KeyKind, MasterKey};

use crate::stdio::is_stdio;

/// A key's fingerprint as lower-case hex, as reports print it.
pub fn fingerprint_hex(key: &MasterKey) -> String {
    key.fingerprint().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `text` to a new file readable by its owner only (never over an existing file),
/// or prints it for `-`.
pub fn write_secret_text(path: &Path, text: &str) -> Result<()> {
    if is_stdio(path) {
        return crate::output::emit(text.trim_end());
    }
    write_new_file(path, text)
        .with_context(|| format!("cannot create {} (keygen never overwrites a key)", path.display()))
}

/// Writes a new key file (never over an existing file), readable by its owner only.
pub fn write_key_file(path: &Path, kind: KeyKind, key: &MasterKey) -> Result<()> {
    let text = KeyFile::new(kind, key.clone())?.encode();
    write_new_file(path, &text).with_context(|| format!("cannot create key file {}", path.display()))
}

/// Creates `path` (refused if anything is there, a link included), mode 0600 from its
/// creation, and writes and flushes `text`; removes it again if that fails.
fn write_new_file(path: &Path, text: &str) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
    if written.is_err() {
        // The file is this call's own (create_new): no part of a key is left behind.
        let _ = std::fs::remove_file(path);
    }
    written
}
