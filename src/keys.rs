//! Keys, passphrases, recipients and identities read for the commands: key files, key
//! commands, PKCS#11 keys, signing keys, the passphrase prompt and the rules a new key or
//! passphrase must meet.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use onnx_protect_core::keys::KeySource;
use onnx_protect_crypto::{KeyFile, MAX_KEY_FILE_LEN};
use onnx_protect_keys::{
    Identity, KeyCommand, Pkcs11Key, PluginPrompt, Recipient, SigningKey, Stanza, DEFAULT_COMMAND_TIMEOUT,
    KIND_AGE_PLUGIN, KIND_TPM, KIND_X25519,
};
use zeroize::Zeroizing;

use crate::exit::KeyFileError;

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
pub fn split_tier(text: &str) -> Result<(u32, &str)> {
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
pub fn parse_recipient(text: &str) -> Result<(Recipient, u32)> {
    let (tier, r) = split_tier(text)?;
    let recipient =
        onnx_protect_core::keys::parse_recipient(r, plugin_prompt()).map_err(|e| KeyFileError(e.to_string()))?;
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
pub fn parse_identity_file(path: &Path, text: &str) -> Result<Identity> {
    onnx_protect_core::keys::parse_identity_file(text, &onnx_protect_tpm::tcti_from_env(), plugin_prompt())
        .map_err(|e| KeyFileError(format!("identity file {}: {e}", path.display())).into())
}

/// A signing key file (`keygen --signing`).
pub fn read_signing_key(p: &Path) -> Result<SigningKey> {
    let text = Zeroizing::new(
        std::fs::read_to_string(p)
            .map_err(|e| KeyFileError(format!("cannot read signing key {}: {e}", p.display())))?,
    );
    SigningKey::parse_file(&text).map_err(|e| KeyFileError(format!("signing key {}: {e}", p.display())).into())
}

/// The first `max + 1` bytes of the file at `path`: one past the cap, so that a larger
/// (or endless) file is recognised as such without being read whole.
pub fn read_capped(path: &Path, max: usize) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut bytes = Zeroizing::new(Vec::new());
    std::fs::File::open(path)?.take(max as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads and parses a key file (at most `MAX_KEY_FILE_LEN` bytes are read).
pub fn read_key_file(path: &Path) -> Result<KeyFile, KeyFileError> {
    let bytes = read_capped(path, MAX_KEY_FILE_LEN)
        .map_err(|e| KeyFileError(format!("cannot read key file {}: {e}", path.display())))?;
    KeyFile::parse(&bytes).map_err(|e| KeyFileError(format!("key file {}: {e}", path.display())))
}

/// Refuses a master key recording `recorded` access tiers (`master tiers=N`) for a model
/// of `tiers` tiers as core's rule does (docs/format.md Appendix A), naming the key (`name`).
pub fn check_recorded_tiers(name: &str, recorded: u32, tiers: u32) -> Result<(), KeyFileError> {
    onnx_protect_core::format2::recipients::check_recorded_tiers(recorded, tiers)
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
    let (Identity::Passphrase(p), None) = (source.identity(), source.licence()) else { return Ok(()) };
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

/// The public recipient a stanza that `rekey` and `batch rekey` keep is wrapped again for:
/// its label, for the kinds whose label is one (`x25519`, `age-plugin`, `tpm`), when it
/// parses as a recipient of that kind.
pub fn kept_recipient(s: &Stanza) -> Option<Recipient> {
    if !matches!(s.kind.as_str(), KIND_X25519 | KIND_AGE_PLUGIN | KIND_TPM) {
        return None;
    }
    let r = onnx_protect_core::keys::parse_recipient(&s.label, plugin_prompt()).ok()?;
    let kind = match &r {
        Recipient::X25519(_) => KIND_X25519,
        Recipient::Provider(p) => p.kind(),
        _ => return None,
    };
    (kind == s.kind).then_some(r)
}
