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
//!   high-water mark plus the powered time since. A TPM clock behind the anchor (the TPM
//!   was cleared, or another TPM) drops the anchor and starts a new one.
//!
//! The state is a file the machine's owner can delete or restore: it stops a clock set
//! back, not an owner who also rewinds the file (see the limits in docs/shipping.md).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::time::{format_utc, parse_utc};
use crate::LicenceError;

/// How far (seconds) the system clock may be behind the recorded bound: clock corrections
/// of a few minutes are not refused.
pub const SET_BACK_TOLERANCE: u64 = 600;
/// First line of the state file.
pub const CLOCK_STATE_TAG: &str = "onnx-protect-clock-v1";
/// The largest state file read.
const MAX_STATE_LEN: u64 = 4096;

/// A reading of the TPM's clock (milliseconds it has been powered since it was cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TpmReading {
    /// `TPMS_CLOCK_INFO.clock`.
    pub clock_ms: u64,
}

/// The recorded state: the high-water mark and the TPM anchor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClockState {
    /// The latest system time seen (seconds since the epoch).
    pub high_water: u64,
    /// (wall time, TPM clock in ms) at the last check with a TPM.
    pub tpm_anchor: Option<(u64, u64)>,
}

impl ClockState {
    /// Checks the system clock `now` against the state and advances the state. Returns the
    /// time to evaluate licences at: the latest of `now` and the bounds (a clock a little
    /// behind them, within the tolerance, does not extend a licence).
    pub fn advance(&mut self, now: u64, tpm: Option<TpmReading>) -> Result<u64, LicenceError> {
        let set_back = |floor: u64, witness| LicenceError::ClockSetBack {
            now: format_utc(now),
            floor: format_utc(floor),
            witness,
        };
        if now.saturating_add(SET_BACK_TOLERANCE) < self.high_water {
            return Err(set_back(self.high_water, "the recorded high-water mark"));
        }
        let tpm_floor = match (self.tpm_anchor, tpm) {
            (Some((wall, c)), Some(r)) if r.clock_ms >= c => Some(wall.saturating_add((r.clock_ms - c) / 4 * 3 / 1000)),
            _ => None,
        };
        if let Some(floor) = tpm_floor {
            if now.saturating_add(SET_BACK_TOLERANCE) < floor {
                return Err(set_back(floor, "the TPM's clock"));
            }
        }
        let trusted = now.max(self.high_water).max(tpm_floor.unwrap_or(0));
        self.high_water = self.high_water.max(now);
        self.tpm_anchor = tpm.map(|r| (now.max(tpm_floor.unwrap_or(0)), r.clock_ms));
        Ok(trusted)
    }

    /// Parses the state file's text.
    pub fn parse(text: &str) -> Option<ClockState> {
        let mut lines = text.lines();
        if lines.next()? != CLOCK_STATE_TAG {
            return None;
        }
        let high_water = parse_utc(lines.next()?.strip_prefix("high-water: ")?)?;
        let tpm_anchor = match lines.next() {
            None => None,
            Some(l) => {
                let (w, c) = l.strip_prefix("tpm: ")?.split_once(' ')?;
                Some((parse_utc(w)?, c.parse().ok()?))
            }
        };
        lines.next().is_none().then_some(ClockState { high_water, tpm_anchor })
    }

    /// The state file's text.
    pub fn to_text(&self) -> String {
        let mut s = format!("{CLOCK_STATE_TAG}\nhigh-water: {}\n", format_utc(self.high_water));
        if let Some((w, c)) = self.tpm_anchor {
            s.push_str(&format!("tpm: {} {c}\n", format_utc(w)));
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
    pub fn check(&self, now: u64, tpm: Option<TpmReading>) -> Result<u64, LicenceError> {
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
