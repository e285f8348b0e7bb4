//! Helpers shared by the integration tests of memory filled on demand.

use onnx_protect_select::Policy;

/// The built-in policy with `overrides` applied.
pub fn policy(overrides: &[(&str, &str)]) -> Policy {
    let mut p = Policy::default();
    for (k, v) in overrides {
        p.apply_override(k, v).unwrap();
    }
    p
}

/// A policy of every mode, each named.
pub fn every_mode() -> Vec<(&'static str, Policy)> {
    vec![
        ("built-in", policy(&[])),
        ("ctr, half", policy(&[("mode", "*=ctr"), ("coefficient", "*=0.5")])),
        ("fp, 0.3", policy(&[("mode", "*=fp"), ("coefficient", "*=0.3")])),
        ("dp", policy(&[("mode", "*=dp"), ("coefficient", "*=0.4")])),
    ]
}

/// Kibibytes resident in the mapping that holds `p` (`/proc/self/smaps`).
pub fn resident_kib(p: *const u8) -> u64 {
    let at = p as u64;
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ').filter(|(r, _)| r.contains('-') && !r.ends_with(':')) {
            let (lo, hi) = range.split_once('-').unwrap();
            let (lo, hi) = (u64::from_str_radix(lo, 16).unwrap(), u64::from_str_radix(hi, 16).unwrap());
            inside = (lo..hi).contains(&at);
        } else if let Some(kib) = line.strip_prefix("Rss:").filter(|_| inside) {
            return kib.trim().trim_end_matches(" kB").trim().parse().unwrap();
        }
    }
    panic!("no mapping holds {p:?}")
}
