//! Key files: the master key or a tier key, and what kind of key it is.
//!
//! The text form (docs/format.md, appendix "Key files and passphrases"):
//!
//! ```text
//! # onnx-protect master key of 3 access tiers (fingerprint 0123456789abcdef). Keep this file secret.
//! onnx-protect-key-v1 master tiers=3 <64 lowercase hex digits>
//! ```
//!
//! or, for the key of one access tier, `onnx-protect-key-v1 tier=1 <64 hex digits>`.
//! Lines that are empty or start with `#` are comments; exactly one key line
//! is required. The older forms, 32 raw bytes or 64 hex digits alone, are
//! still read; they do not say what kind of key they hold
//! ([`KeyKind::Unlabeled`]).

use core::fmt;

use zeroize::Zeroizing;

use crate::master::decode_hex_key;
use crate::{CryptoError, MasterKey, KEY_LEN};

/// The first token of a key line: the format's name and version.
pub const KEY_LINE_TAG: &str = "onnx-protect-key-v1";

/// What every key line starts with, whatever its version.
const KEY_LINE_FAMILY: &[u8] = b"onnx-protect-key-";

/// Largest key file read, in bytes. A key line is under 110 bytes; the rest is
/// room for comments.
pub const MAX_KEY_FILE_LEN: usize = 4096;

/// Largest number of access tiers (docs/format.md §11), and so the largest tier.
pub const MAX_TIERS: u32 = 16;

/// What a key file says about the key it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyKind {
    /// A master key, which is the key of the top tier of `tiers` access tiers
    /// (`tiers = 1`: an untiered key).
    Master {
        /// Number of access tiers it is the top of, 1 to [`MAX_TIERS`].
        tiers: u32,
    },
    /// The key of access tier `tier` (docs/format.md §11), derived from a master key.
    Tier {
        /// The tier, 1 to [`MAX_TIERS`].
        tier: u32,
    },
    /// A file in an older form (32 raw bytes or 64 hex digits), which does not
    /// say what it holds. It is taken as a master key where one is needed.
    Unlabeled,
}

impl KeyKind {
    /// The access tier whose key this is, when the file says so: `tiers` for a
    /// master key, `tier` for a tier key, `None` for an unlabeled file.
    pub fn tier(self) -> Option<u32> {
        match self {
            KeyKind::Master { tiers } => Some(tiers),
            KeyKind::Tier { tier } => Some(tier),
            KeyKind::Unlabeled => None,
        }
    }

    fn check(self) -> Result<KeyKind, CryptoError> {
        match self {
            KeyKind::Master { tiers: n } | KeyKind::Tier { tier: n } if !(1..=MAX_TIERS).contains(&n) => {
                Err(CryptoError::KeyKindTier { value: n, max: MAX_TIERS })
            }
            kind => Ok(kind),
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Master { tiers: 1 } => f.write_str("a master key"),
            KeyKind::Master { tiers } => write!(f, "a master key of {tiers} access tiers"),
            KeyKind::Tier { tier } => write!(f, "the key of access tier {tier}"),
            KeyKind::Unlabeled => f.write_str("a key of unrecorded kind"),
        }
    }
}

/// A key and what its file says it is.
///
/// Invariants: the kind's tier numbers are within 1..=[`MAX_TIERS`]; the key is
/// wiped on drop (by [`MasterKey`]); there is no `Debug`, and errors never carry
/// bytes of the file.
pub struct KeyFile {
    kind: KeyKind,
    key: MasterKey,
}

impl KeyFile {
    /// Pairs a key with its kind. Errors with [`CryptoError::KeyKindTier`] if a
    /// tier number is outside 1..=[`MAX_TIERS`].
    pub fn new(kind: KeyKind, key: MasterKey) -> Result<KeyFile, CryptoError> {
        Ok(KeyFile { kind: kind.check()?, key })
    }

    /// What the file says the key is.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The key.
    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    /// The key, whatever its kind.
    pub fn into_key(self) -> MasterKey {
        self.key
    }

    /// The key where a master key is needed (to encrypt, or to derive input
    /// transforms). A tier key is refused with [`CryptoError::WrongKeyKind`];
    /// an unlabeled file is accepted, since older files could not say.
    pub fn into_master(self) -> Result<MasterKey, CryptoError> {
        match self.kind {
            KeyKind::Tier { tier } => {
                Err(CryptoError::WrongKeyKind { found: KeyKind::Tier { tier }, needed: "a master key" })
            }
            _ => Ok(self.key),
        }
    }

    /// Parses the contents of a key file.
    ///
    /// * Exactly 32 bytes: the raw key (a 32-byte file is always taken as raw),
    ///   [`KeyKind::Unlabeled`].
    /// * A file with a line that starts with `onnx-protect-key-`: the typed form
    ///   (module docs). Every other line must be empty or a `#` comment; lines
    ///   may end in `\r\n` and carry surrounding spaces or tabs.
    /// * Otherwise 64 hex digits (either case), optionally surrounded by ASCII
    ///   whitespace, [`KeyKind::Unlabeled`].
    ///
    /// Errors: [`CryptoError::KeyFileTooLarge`] above [`MAX_KEY_FILE_LEN`]
    /// bytes; [`CryptoError::KeyFileLength`] for a file in none of these forms;
    /// [`CryptoError::KeyFileNotHex`], [`CryptoError::KeyFileSyntax`],
    /// [`CryptoError::KeyFileVersion`] and [`CryptoError::KeyKindTier`] for a
    /// malformed key. No error contains bytes of the file.
    pub fn parse(contents: &[u8]) -> Result<KeyFile, CryptoError> {
        if let Ok(raw) = <[u8; KEY_LEN]>::try_from(contents) {
            return Ok(KeyFile { kind: KeyKind::Unlabeled, key: MasterKey::from_bytes(raw) });
        }
        if contents.len() > MAX_KEY_FILE_LEN {
            return Err(CryptoError::KeyFileTooLarge { max: MAX_KEY_FILE_LEN });
        }
        let lines = || contents.split(|&b| b == b'\n').map(trim_line).enumerate().map(|(i, l)| (i + 1, l));
        if lines().any(|(_, l)| l.starts_with(KEY_LINE_FAMILY)) {
            return parse_typed(lines());
        }
        let trimmed = contents.trim_ascii();
        if trimmed.len() != 2 * KEY_LEN {
            return Err(CryptoError::KeyFileLength { found: contents.len() });
        }
        // Offset of `trimmed` inside `contents`, so positions refer to the file.
        let lead = contents.len() - contents.trim_ascii_start().len();
        let key = decode_hex_key(trimmed).map_err(|i| CryptoError::KeyFileNotHex { position: lead + i })?;
        Ok(KeyFile { kind: KeyKind::Unlabeled, key })
    }

    /// Reads a key from environment variable `var`, which holds 64 hex digits
    /// (either case, surrounding whitespace ignored; [`KeyKind::Unlabeled`]) or
    /// the text of a key file with a key line (as [`KeyFile::parse`] reads it, so
    /// `VAR="$(cat KEYFILE)"` works).
    ///
    /// Errors: [`CryptoError::EnvKeyMissing`], [`CryptoError::EnvKeyNotUnicode`],
    /// [`CryptoError::EnvKeyLength`], [`CryptoError::EnvKeyNotHex`], or the
    /// key file errors of [`KeyFile::parse`] for key-file text. The value is
    /// wiped after parsing and never appears in an error.
    pub fn from_env(var: &str) -> Result<KeyFile, CryptoError> {
        let value = std::env::var_os(var).ok_or_else(|| CryptoError::EnvKeyMissing { var: var.to_owned() })?;
        let value = Zeroizing::new(value.into_string().map_err(|os| {
            // Wipe the rejected value as well; it may still be key material.
            drop(Zeroizing::new(os.into_encoded_bytes()));
            CryptoError::EnvKeyNotUnicode { var: var.to_owned() }
        })?);
        if value.as_bytes().windows(KEY_LINE_FAMILY.len()).any(|w| w == KEY_LINE_FAMILY) {
            return KeyFile::parse(value.as_bytes());
        }
        let trimmed = value.trim_ascii();
        if trimmed.len() != 2 * KEY_LEN {
            return Err(CryptoError::EnvKeyLength { var: var.to_owned(), found: trimmed.chars().count() });
        }
        let key = decode_hex_key(trimmed.as_bytes())
            .map_err(|position| CryptoError::EnvKeyNotHex { var: var.to_owned(), position })?;
        Ok(KeyFile { kind: KeyKind::Unlabeled, key })
    }

    /// The file's text in the typed form: one comment line (kind and
    /// fingerprint) and the key line, each ending in `\n`. The same key and
    /// kind always give the same bytes. An unlabeled key is written in the
    /// older form, 64 lowercase hex digits and `\n`.
    pub fn encode(&self) -> Zeroizing<String> {
        let mut digits = Zeroizing::new([0u8; 2 * KEY_LEN]);
        // The output buffer is exactly twice the key length, so this cannot fail.
        let digits = match hex::encode_to_slice(self.key.as_bytes(), digits.as_mut()) {
            Ok(()) => core::str::from_utf8(digits.as_ref()).unwrap_or_default(),
            Err(_) => "",
        };
        let fingerprint: String = self.key.fingerprint().iter().map(|b| format!("{b:02x}")).collect();
        let (comment, fields) = match self.kind {
            KeyKind::Master { tiers } => (
                if tiers == 1 { "master key".to_owned() } else { format!("master key of {tiers} access tiers") },
                format!("master tiers={tiers}"),
            ),
            KeyKind::Tier { tier } => (format!("key of access tier {tier}"), format!("tier={tier}")),
            KeyKind::Unlabeled => {
                let mut out = Zeroizing::new(String::with_capacity(2 * KEY_LEN + 1));
                out.push_str(digits);
                out.push('\n');
                return out;
            }
        };
        let mut out = Zeroizing::new(String::with_capacity(256));
        out.push_str(&format!(
            "# onnx-protect {comment} (fingerprint {fingerprint}). Keep this file secret.\n{KEY_LINE_TAG} {fields} "
        ));
        out.push_str(digits);
        out.push('\n');
        out
    }
}

/// A line without surrounding spaces, tabs and carriage returns.
fn trim_line(line: &[u8]) -> &[u8] {
    let blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\r');
    let start = line.iter().position(|b| !blank(b)).unwrap_or(line.len());
    let end = line.iter().rposition(|b| !blank(b)).map_or(start, |i| i + 1);
    &line[start..end]
}

/// The typed form; `lines` are (1-based line number, line without surrounding whitespace).
fn parse_typed<'a>(lines: impl Iterator<Item = (usize, &'a [u8])>) -> Result<KeyFile, CryptoError> {
    let mut found: Option<KeyFile> = None;
    for (line, text) in lines {
        if text.is_empty() || text.starts_with(b"#") {
            continue;
        }
        if !text.starts_with(KEY_LINE_FAMILY) {
            return Err(CryptoError::KeyFileSyntax { line, reason: "neither a comment nor the key line" });
        }
        if found.is_some() {
            return Err(CryptoError::KeyFileSyntax { line, reason: "a second key line (a key file holds one key)" });
        }
        found = Some(parse_key_line(line, text)?);
    }
    // The caller saw a key line, so `found` is set; refuse rather than panic anyway.
    found.ok_or(CryptoError::KeyFileLength { found: 0 })
}

/// `onnx-protect-key-v1 (master tiers=N | tier=T) HEX`, fields separated by spaces or tabs.
fn parse_key_line(line: usize, text: &[u8]) -> Result<KeyFile, CryptoError> {
    let mut fields = text.split(|b| *b == b' ' || *b == b'\t').filter(|f| !f.is_empty());
    if fields.next() != Some(KEY_LINE_TAG.as_bytes()) {
        return Err(CryptoError::KeyFileVersion { line });
    }
    let fields: Vec<&[u8]> = fields.collect();
    let (kind, digits) = match fields.as_slice() {
        [b"master", tiers, digits] => {
            let tiers = tiers
                .strip_prefix(b"tiers=")
                .ok_or(CryptoError::KeyFileSyntax { line, reason: "a master key line needs `tiers=N`" })?;
            (KeyKind::Master { tiers: parse_tier(line, tiers)? }, *digits)
        }
        [tier, digits] if tier.starts_with(b"tier=") => {
            (KeyKind::Tier { tier: parse_tier(line, &tier[5..])? }, *digits)
        }
        _ => {
            return Err(CryptoError::KeyFileSyntax {
                line,
                reason: "expected `onnx-protect-key-v1 master tiers=N HEX` or `onnx-protect-key-v1 tier=T HEX`",
            })
        }
    };
    if digits.len() != 2 * KEY_LEN {
        return Err(CryptoError::KeyFileSyntax { line, reason: "the key must be 64 hex digits" });
    }
    let key = decode_hex_key(digits)
        .map_err(|_| CryptoError::KeyFileSyntax { line, reason: "the key must be 64 hex digits" })?;
    KeyFile::new(kind, key)
}

/// A tier number: 1 or 2 decimal digits without a leading zero, in 1..=MAX_TIERS.
fn parse_tier(line: usize, digits: &[u8]) -> Result<u32, CryptoError> {
    let well_formed = (1..=2).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) && digits[0] != b'0';
    if !well_formed {
        return Err(CryptoError::KeyFileSyntax { line, reason: "a tier count must be a whole number from 1 to 16" });
    }
    let value = digits.iter().fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
    if value > MAX_TIERS {
        return Err(CryptoError::KeyKindTier { value, max: MAX_TIERS });
    }
    Ok(value)
}
