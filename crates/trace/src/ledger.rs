//! The ledger: which recipient got a fingerprinted copy of which model (docs/tracing.md §4).
//!
//! A ledger is a UTF-8 text file the publisher keeps. Lines that are empty or start with
//! `#` are comments; every other line is one entry, a JSON object on one line:
//!
//! ```text
//! # onnx-protect fingerprint ledger v1 (docs/tracing.md). It never holds the secret.
//! {"v":1,"recipient":"alice","key_id":"0123456789abcdef","original":"<64 hex>","model":"cnn.onnx","alpha":0.01,"tensors":8,"elements":15338,"time":1767225600}
//! ```
//!
//! `key_id` names the fingerprint secret ([`FingerprintKey::key_id`]), `original` the
//! unmarked model ([`weights_digest`]); `model`, `alpha`, `tensors`, `elements` and
//! `time` (Unix seconds) are for people. Unknown fields are ignored; an entry with
//! another `v` is refused.
//!
//! [`append`] never loses an entry: it takes an exclusive lock on `LEDGER.lock` (where
//! the file system has locks), reads and checks the whole ledger, writes the old bytes
//! and the new line to a private staging file in the same directory, flushes it and
//! renames it over the ledger. A reader sees the old ledger or the new one, never a part.
//!
//! [`FingerprintKey::key_id`]: crate::FingerprintKey::key_id
//! [`weights_digest`]: crate::weights_digest

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TraceError};
use crate::secret::RecipientId;

/// The entry version this crate writes and reads.
pub const LEDGER_VERSION: u32 = 1;
/// The comment line a new ledger starts with.
pub const LEDGER_HEADER: &str = "# onnx-protect fingerprint ledger v1 (docs/tracing.md). It never holds the secret.";
/// Longest ledger line, in bytes.
pub const MAX_LINE_LEN: usize = 4096;
/// Largest ledger read, in bytes (about a million entries).
pub const MAX_LEDGER_LEN: u64 = 1 << 30;

/// One recipient's fingerprinted copy of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub recipient: RecipientId,
    /// The variant of the recipient's mark (0 unless `--fingerprint-check` chose another).
    pub variant: u32,
    /// The fingerprint secret's key ID (16 hex digits).
    pub key_id: String,
    /// The original's [`weights_digest`](crate::weights_digest) (64 hex digits).
    pub original: String,
    /// The model file the copy was made from, for people.
    pub model: String,
    /// The strength α.
    pub alpha: f64,
    /// Tensors and elements that carry the fingerprint.
    pub tensors: u64,
    pub elements: u64,
    /// When the entry was written, in Unix seconds.
    pub time: u64,
    /// The number of classes of the copy's label lock (`encrypt --lock-outputs`), keyed by
    /// [`FingerprintKey::lock_seed`](crate::FingerprintKey::lock_seed); 0 for a copy without.
    pub lock: u64,
}

#[derive(Serialize, Deserialize)]
struct Line {
    v: u32,
    recipient: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    variant: u32,
    key_id: String,
    original: String,
    model: String,
    alpha: f64,
    tensors: u64,
    elements: u64,
    time: u64,
    #[serde(default, skip_serializing_if = "is_zero64")]
    lock: u64,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_zero64(v: &u64) -> bool {
    *v == 0
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Entry {
    /// The entry as one ledger line (no newline).
    pub fn to_line(&self) -> String {
        let line = Line {
            v: LEDGER_VERSION,
            recipient: self.recipient.to_string(),
            variant: self.variant,
            key_id: self.key_id.clone(),
            original: self.original.clone(),
            model: self.model.clone(),
            alpha: self.alpha,
            tensors: self.tensors,
            elements: self.elements,
            time: self.time,
            lock: self.lock,
        };
        // Serialising a struct of strings and numbers cannot fail; an empty line would
        // be refused by `append`'s own check.
        serde_json::to_string(&line).unwrap_or_default()
    }

    /// Parses one entry line; the error is the reason, without the line's position.
    pub fn parse(text: &str) -> std::result::Result<Entry, String> {
        let l: Line = serde_json::from_str(text).map_err(|e| format!("not a ledger entry ({e})"))?;
        if l.v != LEDGER_VERSION {
            return Err(format!("entry version {} is not supported (this build reads version 1)", l.v));
        }
        let recipient = RecipientId::new(&l.recipient).map_err(|e| e.to_string())?;
        if !is_hex(&l.key_id, 16) {
            return Err("key_id must be 16 lowercase hex digits".into());
        }
        if !is_hex(&l.original, 64) {
            return Err("original must be 64 lowercase hex digits".into());
        }
        if l.model.len() > 1024 || l.model.contains(['\n', '\r']) {
            return Err("model must be one line of at most 1024 bytes".into());
        }
        check_alpha(l.alpha).map_err(|_| format!("alpha {} is outside (0, {MAX_ALPHA}]", l.alpha))?;
        Ok(Entry {
            recipient,
            variant: l.variant,
            key_id: l.key_id,
            original: l.original,
            model: l.model,
            alpha: l.alpha,
            tensors: l.tensors,
            elements: l.elements,
            time: l.time,
            lock: l.lock,
        })
    }

    /// Whether `other` records the same fingerprint (same recipient, variant, secret and
    /// original: the same patterns) and the same label lock.
    pub fn same_mark(&self, other: &Entry) -> bool {
        self.mark() == other.mark()
            && self.key_id == other.key_id
            && self.original == other.original
            && self.lock == other.lock
    }

    /// The recipient and the variant of their mark.
    pub fn mark(&self) -> Mark {
        Mark { recipient: self.recipient.clone(), variant: self.variant }
    }
}

/// One recipient's mark: whose it is and which variant of their patterns it uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mark {
    pub recipient: RecipientId,
    pub variant: u32,
}

impl From<RecipientId> for Mark {
    fn from(recipient: RecipientId) -> Mark {
        Mark { recipient, variant: 0 }
    }
}

/// A ledger as read from a file.
#[derive(Debug, Clone)]
pub struct Ledger {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
}

impl Ledger {
    /// Reads and checks the ledger at `path`.
    pub fn read(path: &Path) -> Result<Ledger> {
        let bytes = read_capped(path)?;
        Ok(Ledger { path: path.to_path_buf(), entries: parse(&bytes, path)? })
    }

    /// The marks of the entries made with secret `key_id` for the original `original`,
    /// each once, in ledger order. Errors when there is none.
    pub fn recipients(&self, key_id: &str, original: &str) -> Result<Vec<Mark>> {
        let with_key: Vec<&Entry> = self.entries.iter().filter(|e| e.key_id == key_id).collect();
        if with_key.is_empty() {
            return Err(TraceError::LedgerEmpty {
                path: self.path.clone(),
                key_id: key_id.to_string(),
                entries: self.entries.len(),
            });
        }
        let mut out: Vec<Mark> = Vec::new();
        for e in with_key.iter().filter(|e| e.original == original) {
            if !out.contains(&e.mark()) {
                out.push(e.mark());
            }
        }
        if out.is_empty() {
            return Err(TraceError::LedgerNoOriginal {
                path: self.path.clone(),
                original: original.to_string(),
                entries: with_key.len(),
            });
        }
        Ok(out)
    }
}

impl Ledger {
    /// The recipients whose copies of `original` were label-locked under secret `key_id`,
    /// each once, in ledger order, with the number of classes recorded.
    pub fn locks(&self, key_id: &str, original: &str) -> Vec<(RecipientId, u64)> {
        let mut out: Vec<(RecipientId, u64)> = Vec::new();
        for e in self.entries.iter().filter(|e| e.key_id == key_id && e.original == original && e.lock > 0) {
            if !out.iter().any(|(r, c)| *r == e.recipient && *c == e.lock) {
                out.push((e.recipient.clone(), e.lock));
            }
        }
        out
    }
}

fn read_capped(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path).map_err(TraceError::io("read ledger", path))?.len();
    if len > MAX_LEDGER_LEN {
        return Err(TraceError::Ledger {
            path: path.to_path_buf(),
            reason: format!("the file is {len} bytes, more than the {MAX_LEDGER_LEN} a ledger may have"),
        });
    }
    std::fs::read(path).map_err(TraceError::io("read ledger", path))
}

/// The entries of a ledger's bytes (`path` names it in errors).
pub fn parse(bytes: &[u8], path: &Path) -> Result<Vec<Entry>> {
    let bad = |line: usize, reason: String| TraceError::LedgerEntry { path: path.to_path_buf(), line, reason };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        bad(line, "not UTF-8 text: not a ledger".into())
    })?;
    let mut entries = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw).trim_matches([' ', '\t']);
        if line.len() > MAX_LINE_LEN {
            return Err(bad(i + 1, format!("longer than {MAX_LINE_LEN} bytes")));
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        entries.push(Entry::parse(line).map_err(|r| bad(i + 1, r))?);
    }
    Ok(entries)
}

/// What [`append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The entry was added.
    Added,
    /// An entry with the same mark was there already; the ledger was not written.
    AlreadyRecorded,
}

/// The lock file of a ledger: `LEDGER.lock` next to it.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Adds `entry` to the ledger at `path` (created when missing) atomically, without losing
/// an entry written before or at the same time (module docs). A ledger that does not
/// parse is left as it is and the error names its first bad line.
pub fn append(path: &Path, entry: &Entry) -> Result<Appended> {
    let line = entry.to_line();
    Entry::parse(&line).map_err(|reason| TraceError::Ledger { path: path.to_path_buf(), reason })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let lock_file = lock_path(path);
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_file)
        .map_err(TraceError::io("create the ledger lock", &lock_file))?;
    onnx_protect_fsio::file::lock_exclusive(&lock).map_err(TraceError::io("lock", &lock_file))?;
    let old = match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() => {
            return Err(TraceError::Ledger { path: path.to_path_buf(), reason: "not a regular file".into() })
        }
        Ok(_) => read_capped(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(TraceError::io("read ledger", path)(e)),
    };
    if parse(&old, path)?.iter().any(|e| e.same_mark(entry)) {
        return Ok(Appended::AlreadyRecorded);
    }
    let mut text = old;
    if text.is_empty() {
        text.extend_from_slice(LEDGER_HEADER.as_bytes());
        text.push(b'\n');
    } else if text.last() != Some(&b'\n') {
        text.push(b'\n');
    }
    text.extend_from_slice(line.as_bytes());
    text.push(b'\n');
    let mut staged = onnx_protect_fsio::Staging::new(&dir).map_err(TraceError::io("stage the ledger in", &dir))?;
    staged.file_mut().write_all(&text).map_err(TraceError::io("write ledger", path))?;
    staged.file().sync_all().map_err(TraceError::io("flush ledger", path))?;
    staged.close_writer().map_err(TraceError::io("write ledger", path))?;
    staged.publish(path, true).map_err(TraceError::io("replace ledger", path))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        // Makes the rename durable where directories can be flushed; best effort.
        let _ = d.sync_all();
    }
    drop(lock);
    Ok(Appended::Added)
}

/// Largest fingerprint strength α accepted (a marker's and a ledger entry's).
pub const MAX_ALPHA: f64 = 0.1;

/// Checks a strength: finite, above 0, at most [`MAX_ALPHA`].
pub fn check_alpha(alpha: f64) -> Result<()> {
    if alpha.is_finite() && alpha > 0.0 && alpha <= MAX_ALPHA {
        Ok(())
    } else {
        Err(TraceError::Parameter(format!("fingerprint strength {alpha} is outside (0, {MAX_ALPHA}]")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(r: &str) -> Entry {
        Entry {
            recipient: RecipientId::new(r).unwrap(),
            variant: 0,
            key_id: "0123456789abcdef".into(),
            original: "ab".repeat(32),
            model: "m.onnx".into(),
            alpha: 0.01,
            tensors: 3,
            elements: 1000,
            time: 1,
            lock: 0,
        }
    }

    #[test]
    fn lines_round_trip() {
        let e = entry("alice@example.org");
        assert_eq!(Entry::parse(&e.to_line()).unwrap(), e);
        // Unknown fields are ignored.
        let extra = e.to_line().replacen('{', "{\"note\":\"x\",", 1);
        assert_eq!(Entry::parse(&extra).unwrap(), e);
        // Variant 0 is not written; another variant is, and is another mark.
        assert!(!e.to_line().contains("variant"));
        let v = Entry { variant: 3, ..e.clone() };
        assert!(v.to_line().contains("\"variant\":3"));
        // A lock of 0 classes (none) is not written; a lock is, and is another record.
        assert!(!e.to_line().contains("lock"));
        let l = Entry { lock: 10, ..e.clone() };
        assert!(l.to_line().contains("\"lock\":10"));
        assert_eq!(Entry::parse(&l.to_line()).unwrap(), l);
        assert!(!l.same_mark(&e));
        assert_eq!(Entry::parse(&v.to_line()).unwrap(), v);
        assert!(!v.same_mark(&e));
    }

    #[test]
    fn bad_lines_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let good = entry("a").to_line();
        let cases = [
            ("{\"v\":1}".to_string(), "not a ledger entry"),
            (good.replace("\"v\":1", "\"v\":2"), "version 2"),
            (good.replace("\"a\"", "\"a b\""), "invalid recipient ID"),
            (good.replace("0123456789abcdef", "0123"), "key_id"),
            (good.replace(&"ab".repeat(32), "AB"), "original"),
            (good.replace("0.01", "0.5"), "alpha"),
            ("garbage".to_string(), "not a ledger entry"),
            ("x".repeat(5000), "longer than 4096"),
        ];
        for (line, want) in cases {
            let text = format!("# header\n{good}\n\n{line}\n");
            let e = parse(text.as_bytes(), &p).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("line 4"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = parse(b"# ok\n\xff\xfe\n", &p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn append_keeps_every_entry_and_skips_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ledger.txt");
        assert_eq!(append(&p, &entry("a")).unwrap(), Appended::Added);
        assert_eq!(append(&p, &entry("b")).unwrap(), Appended::Added);
        assert_eq!(append(&p, &entry("a")).unwrap(), Appended::AlreadyRecorded);
        // A ledger edited by hand without a final newline keeps its last line.
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str(&entry("c").to_line());
        std::fs::write(&p, &text).unwrap();
        assert_eq!(append(&p, &entry("d")).unwrap(), Appended::Added);
        let l = Ledger::read(&p).unwrap();
        let names: Vec<&str> = l.entries.iter().map(|e| e.recipient.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert!(std::fs::read_to_string(&p).unwrap().starts_with(LEDGER_HEADER));
    }

    #[test]
    fn concurrent_appends_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ledger.txt");
        std::thread::scope(|s| {
            for t in 0..4 {
                let p = &p;
                s.spawn(move || {
                    for i in 0..25 {
                        append(p, &entry(&format!("r{t}-{i}"))).unwrap();
                    }
                });
            }
        });
        assert_eq!(Ledger::read(&p).unwrap().entries.len(), 100);
    }

    #[test]
    fn a_malformed_ledger_is_not_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ledger.txt");
        std::fs::write(&p, "# h\nnot json\n").unwrap();
        let e = append(&p, &entry("a")).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "# h\nnot json\n");
    }

    #[test]
    fn recipients_are_filtered_by_secret_and_original() {
        let mut other_key = entry("x");
        other_key.key_id = "fedcba9876543210".into();
        let mut other_model = entry("y");
        other_model.original = "cd".repeat(32);
        let a2 = Entry { variant: 2, ..entry("a") };
        let l =
            Ledger { path: "l".into(), entries: vec![entry("a"), other_key, other_model, entry("b"), entry("a"), a2] };
        let r = l.recipients("0123456789abcdef", &"ab".repeat(32)).unwrap();
        let names: Vec<(&str, u32)> = r.iter().map(|m| (m.recipient.as_str(), m.variant)).collect();
        assert_eq!(names, [("a", 0), ("b", 0), ("a", 2)]);
        assert!(matches!(l.recipients("1111111111111111", &"ab".repeat(32)), Err(TraceError::LedgerEmpty { .. })));
        assert!(matches!(l.recipients("0123456789abcdef", &"ee".repeat(32)), Err(TraceError::LedgerNoOriginal { .. })));
    }
}
