//! Progress bars for library operations, shown only when stderr is a terminal.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use onnx_protect_format::Progress;

/// Inputs smaller than this finish too fast for a bar to be useful.
const MIN_BYTES: u64 = 64 << 20;

/// The time left, from the average rate since the start (`elapsed` for `fraction` of
/// the work): empty until a second has passed and 2% is done, when a guess from the
/// first few chunks (file-system caches warming up, a first burst of reads) would be noise.
pub fn eta_text(elapsed: Duration, fraction: f64) -> String {
    if elapsed < Duration::from_secs(1) || !(0.02..1.0).contains(&fraction) {
        return String::new();
    }
    let left = (elapsed.as_secs_f64() * (1.0 - fraction) / fraction).round() as u64;
    match left {
        0..=59 => format!("{left}s"),
        60..=3599 => format!("{}m{:02}s", left / 60, left % 60),
        _ => format!("{}h{:02}m", left / 3600, left % 3600 / 60),
    }
}

/// A style whose `{eta}` is [`eta_text`] (indicatif's own estimate follows the recent
/// rate and can say minutes for a job of a second).
pub fn style(template: &str) -> Option<ProgressStyle> {
    let eta = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = w.write_str(&eta_text(state.elapsed(), state.fraction() as f64));
    };
    ProgressStyle::with_template(template).ok().map(|s| s.with_key("eta", eta).progress_chars("=> "))
}

/// Draws an indicatif bar per phase, for totals of at least `min`.
pub struct Bar {
    enabled: bool,
    min: u64,
    template: &'static str,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bar {
    /// A bar of bytes that draws only if stderr is a terminal and `quiet` is false.
    pub fn new(quiet: bool) -> Bar {
        Bar::drawing(quiet, MIN_BYTES, "{msg:>10} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
    }

    /// A bar that counts (`policies 12/63`), under the same conditions.
    #[cfg(feature = "tract")]
    pub fn counting(quiet: bool) -> Bar {
        Bar::drawing(quiet, 0, "{msg} [{bar:40}] {pos}/{len} {elapsed}")
    }

    fn drawing(quiet: bool, min: u64, template: &'static str) -> Bar {
        Bar { enabled: !quiet && std::io::stderr().is_terminal(), min, template, bar: Mutex::new(None) }
    }
}

impl Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        if !self.enabled || total < self.min {
            return;
        }
        let pb = ProgressBar::new(total);
        if let Some(style) = style(self.template) {
            pb.set_style(style);
        }
        pb.set_message(what.to_string());
        if let Ok(mut g) = self.bar.lock() {
            *g = Some(pb);
        }
    }
    fn set(&self, done: u64) {
        if let Ok(g) = self.bar.lock() {
            if let Some(pb) = g.as_ref() {
                pb.set_position(done);
            }
        }
    }
    fn finish(&self) {
        if let Ok(mut g) = self.bar.lock() {
            if let Some(pb) = g.take() {
                pb.finish_and_clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_waits_for_a_second_and_follows_the_average_rate() {
        let s = Duration::from_secs;
        // A one-second job: nothing until a second has passed, then what is left of it.
        assert_eq!(eta_text(Duration::from_millis(300), 0.3), "");
        assert_eq!(eta_text(Duration::from_millis(999), 0.9), "");
        assert_eq!(eta_text(s(1), 0.5), "1s");
        // A slow first chunk does not make a long guess: too little done yet.
        assert_eq!(eta_text(s(3), 0.01), "");
        assert_eq!(eta_text(s(10), 0.25), "30s");
        assert_eq!(eta_text(s(60), 0.5), "1m00s");
        assert_eq!(eta_text(s(100), 0.02), "1h21m");
        assert_eq!(eta_text(s(5), 1.0), "");
    }
}
