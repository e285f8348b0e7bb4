//! Detecting a clock set back (docs/shipping.md#what-a-licence-check-stops): a recorded
//! high-water mark of the system clock and, where a TPM is at hand, an anchor on the TPM's
//! clock, which only moves forward while the TPM is powered.
//!
//! * **High-water mark.** The latest system time seen by a licence check. A later check
//!   whose system clock is more than [`SET_BACK_TOLERANCE`] behind it is refused.
//! * **TPM anchor** (wall time `W`, TPM clock `C`): real time has advanced at least
//!   `(C' − C) × 3/4` since, `C'` the TPM clock now. The TPM clock counts only powered time
//!   and may run fast by a tolerance of its oscillator: counting 3/4 of it keeps the bound
//!   below real time for a clock up to a third fast. A system clock more than the tolerance
//!   behind `W + (C' − C) × 3/4` is refused: this catches a clock set back below the
//!   high-water mark plus the powered time since. Each TPM key has its own anchor (the
//!   reading names its *source*, the key's recipient): a check through one key, or with no
//!   TPM at all, leaves the others' anchors as they are. A TPM clock behind its anchor (the
//!   TPM was cleared) replaces that anchor with a new one. At most [`MAX_TPM_ANCHORS`] are
//!   kept; past that, the one used longest ago goes.
//!
//! The state is a file the machine's owner can delete or restore: it stops a clock set
//! back, not an owner who also rewinds the file (see the limits in docs/shipping.md).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::time::{format_utc, parse_utc};
use crate::LicenceError;

/// How far (seconds) the system clock may be behind the recorded bound: clock corrections
/// of a few minutes are not refused.
pub const SET_BACK_TOLERANCE: u64 = 600;
/// First line of the state file.
pub const CLOCK_STATE_TAG: &str = "onnx-protect-clock-v1";
/// The largest state file read.
const MAX_STATE_LEN: u64 = 16 * 1024;
/// The most TPM anchors a state keeps.
pub const MAX_TPM_ANCHORS: usize = 64;

/// A reading of a TPM's clock (milliseconds it has been powered since it was cleared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmReading {
    /// What was read: the TPM key that opened the model (its recipient string). Anchors
    /// are kept per source, recorded as a digest of it ([`source_id`]).
    pub source: String,
    /// `TPMS_CLOCK_INFO.clock`.
    pub clock_ms: u64,
}

/// A TPM anchor: the wall time and the TPM clock at the last check through its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmAnchor {
    /// The reading's [`source_id`]; `None` for an anchor recorded without one (a state file with a
    /// single `tpm:` line of two fields), which the first reading of a source without an
    /// anchor of its own takes over.
    pub source: Option<String>,
    /// The wall time (seconds since the epoch) the anchor stands for.
    pub wall: u64,
    /// The TPM clock (ms) then.
    pub clock_ms: u64,
}

/// The recorded state: the high-water mark and the TPM anchors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClockState {
    /// The latest system time seen (seconds since the epoch).
    pub high_water: u64,
    /// One anchor per TPM source, sorted by source (the one without a source first).
    pub tpm_anchors: Vec<TpmAnchor>,
}

/// How a state file names a reading's source: 32 hex digits of a SHA-256 of it (the file
/// does not list the machine's keys).
pub fn source_id(source: &str) -> String {
    let d = Sha256::new().chain_update(b"onnx-protect clock source\0").chain_update(source.as_bytes()).finalize();
    hex::encode(&d[..16])
}

fn valid_source_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl ClockState {
    /// Checks the system clock `now` against the state and advances the state. Returns the
    /// time to evaluate licences at: the latest of `now` and the bounds (a clock a little
    /// behind them, within the tolerance, does not extend a licence). With a TPM reading,
    /// its source's anchor is checked and moved; the other anchors stay as they are.
    pub fn advance(&mut self, now: u64, tpm: Option<&TpmReading>) -> Result<u64, LicenceError> {
        let set_back = |floor: u64, witness| LicenceError::ClockSetBack {
            now: format_utc(now),
            floor: format_utc(floor),
            witness,
        };
        let source = tpm.map(|r| source_id(&r.source));
        if now.saturating_add(SET_BACK_TOLERANCE) < self.high_water {
            return Err(set_back(self.high_water, "the recorded high-water mark"));
        }
        // The source's own anchor, else one recorded without a source.
        let anchor = source.as_ref().and_then(|id| {
            self.tpm_anchors
                .iter()
                .position(|a| a.source.as_ref() == Some(id))
                .or_else(|| self.tpm_anchors.iter().position(|a| a.source.is_none()))
        });
        let tpm_floor = match (anchor.map(|i| &self.tpm_anchors[i]), tpm) {
            (Some(a), Some(r)) if r.clock_ms >= a.clock_ms => {
                Some(a.wall.saturating_add((r.clock_ms - a.clock_ms) / 4 * 3 / 1000))
            }
            _ => None,
        };
        if let Some(floor) = tpm_floor {
            if now.saturating_add(SET_BACK_TOLERANCE) < floor {
                return Err(set_back(floor, "the TPM's clock"));
            }
        }
        let trusted = now.max(self.high_water).max(tpm_floor.unwrap_or(0));
        self.high_water = self.high_water.max(now);
        if let (Some(r), Some(id)) = (tpm, source) {
            if let Some(i) = anchor {
                self.tpm_anchors.remove(i);
            }
            let wall = now.max(tpm_floor.unwrap_or(0));
            self.tpm_anchors.push(TpmAnchor { source: Some(id), wall, clock_ms: r.clock_ms });
            while self.tpm_anchors.len() > MAX_TPM_ANCHORS {
                let oldest = (0..self.tpm_anchors.len()).min_by_key(|&i| self.tpm_anchors[i].wall).unwrap_or(0);
                self.tpm_anchors.remove(oldest);
            }
            self.tpm_anchors.sort_by(|a, b| a.source.cmp(&b.source));
        }
        Ok(trusted)
    }

    /// Parses the state file's text: the tag, `high-water: TIME`, then `tpm: WALL CLOCK_MS
    /// SOURCE_ID` lines (at most [`MAX_TPM_ANCHORS`], one per source; a single line may have
    /// no source).
    pub fn parse(text: &str) -> Option<ClockState> {
        let mut lines = text.lines();
        if lines.next()? != CLOCK_STATE_TAG {
            return None;
        }
        let high_water = parse_utc(lines.next()?.strip_prefix("high-water: ")?)?;
        let mut tpm_anchors: Vec<TpmAnchor> = Vec::new();
        for l in lines {
            let mut f = l.strip_prefix("tpm: ")?.split(' ');
            let wall = parse_utc(f.next()?)?;
            let c = f.next()?;
            if c.is_empty() || !c.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let clock_ms = c.parse().ok()?;
            let source = match f.next() {
                None => None,
                Some(s) if valid_source_id(s) => Some(s.to_string()),
                Some(_) => return None,
            };
            if f.next().is_some() || tpm_anchors.iter().any(|a| a.source == source) {
                return None;
            }
            tpm_anchors.push(TpmAnchor { source, wall, clock_ms });
        }
        if tpm_anchors.len() > MAX_TPM_ANCHORS {
            return None;
        }
        tpm_anchors.sort_by(|a, b| a.source.cmp(&b.source));
        Some(ClockState { high_water, tpm_anchors })
    }

    /// The state file's text.
    pub fn to_text(&self) -> String {
        let mut s = format!("{CLOCK_STATE_TAG}\nhigh-water: {}\n", format_utc(self.high_water));
        for a in &self.tpm_anchors {
            s.push_str(&format!("tpm: {} {}", format_utc(a.wall), a.clock_ms));
            if let Some(src) = &a.source {
                s.push(' ');
                s.push_str(src);
            }
            s.push('\n');
        }
        s
    }
}

/// The state file of a machine (or user): read, advanced and written back under an
/// exclusive lock (`PATH.lock`), replaced atomically.
#[derive(Debug, Clone)]
pub struct ClockFile {
    path: PathBuf,
}

/// The environment variable naming the state file.
pub const CLOCK_STATE_ENV: &str = "ONNX_PROTECT_LICENCE_CLOCK";

impl ClockFile {
    /// The state at `path` (its directory is created, mode 0700, when first written).
    pub fn new(path: &Path) -> ClockFile {
        ClockFile { path: path.to_path_buf() }
    }

    /// The user's state file: `$ONNX_PROTECT_LICENCE_CLOCK` if set, else
    /// `$XDG_STATE_HOME/onnx-protect/licence-clock`, else
    /// `$HOME/.local/state/onnx-protect/licence-clock`; `None` without any of them.
    pub fn default_path() -> Option<PathBuf> {
        let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(p) = var(CLOCK_STATE_ENV) {
            return Some(p);
        }
        let state = var("XDG_STATE_HOME").or_else(|| var("HOME").map(|h| h.join(".local/state")))?;
        Some(state.join("onnx-protect").join("licence-clock"))
    }

    /// [`ClockState::advance`] on the recorded state, then records it. A missing file is a
    /// fresh state; an unreadable or malformed one is an error (never silently reset).
    pub fn check(&self, now: u64, tpm: Option<&TpmReading>) -> Result<u64, LicenceError> {
        let err = |reason: String| LicenceError::State { path: self.path.display().to_string(), reason };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        create_private_dir(&dir).map_err(|e| err(format!("creating its directory: {e}")))?;
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| err(format!("its lock file: {e}")))?;
        onnx_protect_fsio::file::lock_exclusive(&lock).map_err(|e| err(format!("locking it: {e}")))?;
        let mut state = match std::fs::File::open(&self.path) {
            Ok(f) => {
                let mut text = String::new();
                f.take(MAX_STATE_LEN + 1).read_to_string(&mut text).map_err(|e| err(e.to_string()))?;
                ClockState::parse(&text).ok_or_else(|| err("not a clock state file (malformed)".into()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ClockState::default(),
            Err(e) => return Err(err(e.to_string())),
        };
        let trusted = state.advance(now, tpm)?;
        let mut staged = onnx_protect_fsio::Staging::new(&dir).map_err(|e| err(e.to_string()))?;
        staged.file_mut().write_all(state.to_text().as_bytes()).map_err(|e| err(e.to_string()))?;
        staged.publish(&self.path, true).map_err(|e| err(e.to_string()))?;
        Ok(trusted)
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}
