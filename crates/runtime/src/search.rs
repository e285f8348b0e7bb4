//! Policy search: the smallest policy, among a fixed family, whose best key-less
//! attack meets a target on the user's labelled data.
//!
//! The family ([`family`]) is the one the built-in default was chosen from
//! (docs/protection.md): the last layer whole or not, the first layer whole or not,
//! the small roles (biases, normalisation parameters, position embeddings, scales)
//! whole or not, and a share `c` of the rows of every other weight ranked by L1
//! importance, in `ctr` mode. Each candidate is selected on the model (no encryption:
//! the attacks read only the positions), candidates are ordered by the bytes they
//! encrypt, and they are evaluated in that order until one meets the target:
//!
//! * the attacks are those of `assess`: zero-, mean- and init-fill, each followed by
//!   BatchNormalization re-estimation when calibration inputs are given and the model
//!   has BatchNormalization, and the file without the key, simulated as random bytes
//!   in the encrypted spans (what AES-CTR ciphertext is without the key);
//! * init-fill and the simulated ciphertext are random: each scores the mean of several
//!   draws (an attacker without labels cannot tell a lucky draw);
//! * a candidate fails as soon as one attack scores above the target, so most
//!   failing candidates cost one run (unless the search is exhaustive);
//! * candidates that select exactly the same bytes as a cheaper one are not run again.
//!
//! Everything is deterministic: selection is key-independent, the init-fill and the
//! simulated ciphertext are seeded, and tract runs the same way each time.

use onnx_protect_format::{discover, Model, Progress};
use onnx_protect_format::{Layers, TensorRole};
use onnx_protect_select::{select, Mode, Norm, OpRule, Policy, Rank, Split};

use crate::assess::Bench;
use crate::attack::{Exposure, Fill};
use crate::error::{Result, RuntimeError};

/// What the best key-less attack must stay within.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Accuracy at most chance (the share of the most frequent label) plus this.
    AboveChance(f64),
    /// Accuracy at most this.
    Accuracy(f64),
}

impl Target {
    /// Parses `chance`, `chance+D` (D in [0, 1]) or an accuracy in [0, 1].
    pub fn parse(s: &str) -> Option<Target> {
        let t = s.trim();
        let in_unit = |v: f64| (0.0..=1.0).contains(&v).then_some(v);
        if t == "chance" {
            return Some(Target::AboveChance(0.0));
        }
        if let Some(d) = t.strip_prefix("chance+") {
            return d.trim().parse::<f64>().ok().and_then(in_unit).map(Target::AboveChance);
        }
        t.parse::<f64>().ok().and_then(in_unit).map(Target::Accuracy)
    }

    /// The highest accuracy that meets the target.
    pub fn threshold(self, chance: f64) -> f64 {
        match self {
            Target::AboveChance(d) => chance + d,
            Target::Accuracy(a) => a,
        }
    }
}

/// One point of the policy family (see [`family`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Knobs {
    /// The last layer whole.
    pub last_layer: bool,
    /// The first layer whole.
    pub first_layer: bool,
    /// Biases, normalisation parameters, position embeddings and scales whole.
    pub small_roles: bool,
    /// Share of the rows of every other weight (weights, recurrent weights, embeddings),
    /// the most important by L1 first.
    pub coefficient: f64,
}

/// The coefficients of the family, in increasing order.
pub const COEFFICIENTS: [f64; 8] = [0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0];

impl Knobs {
    /// The policy of this point (`inherit_builtin = false`: nothing else is encrypted).
    pub fn policy(&self) -> Policy {
        let whole = OpRule { coefficient: 1.0, ..ctr_rule() };
        let mut p = Policy::empty();
        if self.last_layer {
            p.layer_rules.insert(Layers::Last, whole.clone());
        }
        if self.first_layer {
            p.layer_rules.insert(Layers::First, whole.clone());
        }
        use TensorRole as R;
        if self.small_roles {
            for r in [R::Bias, R::Norm, R::PositionEmbedding, R::Scale] {
                p.role_rules.insert(r, whole.clone());
            }
        }
        if self.coefficient > 0.0 {
            let rows = OpRule { coefficient: self.coefficient, rank: Rank::Top(Norm::L1), ..ctr_rule() };
            for r in [R::Weight, R::Recurrent, R::Embedding] {
                p.role_rules.insert(r, rows.clone());
            }
        }
        p
    }

    /// A short label: `last+first+small+0.1`.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if self.last_layer {
            parts.push("last".to_string());
        }
        if self.first_layer {
            parts.push("first".to_string());
        }
        if self.small_roles {
            parts.push("small".to_string());
        }
        if self.coefficient > 0.0 {
            parts.push(format!("{}", self.coefficient));
        }
        parts.join("+")
    }
}

fn ctr_rule() -> OpRule {
    OpRule { coefficient: 1.0, mode: Mode::Ctr, mode_set: true, split: Split::FirstDim, roles: None, rank: Rank::Even }
}

/// Every point of the family that encrypts something, in a fixed order.
pub fn family() -> Vec<Knobs> {
    let mut out = Vec::new();
    for last_layer in [false, true] {
        for first_layer in [false, true] {
            for small_roles in [false, true] {
                for coefficient in COEFFICIENTS {
                    if last_layer || first_layer || small_roles || coefficient > 0.0 {
                        out.push(Knobs { last_layer, first_layer, small_roles, coefficient });
                    }
                }
            }
        }
    }
    out
}

/// One attack's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttackScore {
    /// A variant name of `assess` (`no_key` is simulated, see the module docs).
    pub variant: String,
    /// Accuracy on the search data.
    pub accuracy: f64,
}

/// One candidate policy and what became of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Point {
    pub knobs: Knobs,
    pub label: String,
    /// The policy's one-line summary.
    pub policy: String,
    pub encrypted_bytes: u64,
    /// `encrypted_bytes` over the model's weight bytes.
    pub share: f64,
    /// `evaluated`, `skipped` (a cheaper candidate selects the same bytes; see `same_as`),
    /// or `not_reached` (a cheaper candidate met the target first).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_as: Option<String>,
    /// The attacks run, in order; a failing candidate stops at the first above the target.
    pub attacks: Vec<AttackScore>,
    /// Attacks whose model tract could not run (`variant: error`): they give the attacker
    /// nothing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    /// The best attack run.
    pub best: Option<AttackScore>,
    pub meets: Option<bool>,
}

/// The result of [`search`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct SearchReport {
    pub samples: usize,
    pub calibration_samples: usize,
    pub chance: f64,
    pub target: Target,
    /// The highest accuracy that meets the target.
    pub threshold: f64,
    pub weight_bytes: u64,
    /// Candidates in the order they were considered (increasing bytes).
    pub points: Vec<Point>,
    /// Index into `points` of the chosen policy, if any met the target.
    pub chosen: Option<usize>,
}

/// Options of [`search`].
pub struct SearchOptions<'a> {
    pub target: Target,
    /// Seed of the first init-fill draw and simulated ciphertext.
    pub seed: u64,
    /// Draws of each random attack (init-fill, simulated ciphertext); its score is their
    /// mean, as in `assess`. At least 1.
    pub draws: u32,
    /// Evaluate every candidate with every attack instead of stopping at the first
    /// candidate that meets the target (the whole curve of share against attack).
    pub exhaustive: bool,
    pub progress: &'a dyn Progress,
}

/// The attacks in the order they are tried, cheap and often strongest first: each a
/// name, its fill for a seed, and whether BatchNormalization is re-estimated after it.
/// A fill for a seed.
type FillOf = fn(u64) -> Fill;

fn attacks(bn: bool) -> Vec<(&'static str, FillOf, bool)> {
    let zero: FillOf = |_| Fill::Zero;
    let mean: FillOf = |_| Fill::Mean;
    let init: FillOf = |seed| Fill::Init { seed };
    let noise: FillOf = |seed| Fill::Noise { seed };
    let mut a = vec![("zero_fill", zero, false), ("init_fill", init, false), ("mean_fill", mean, false)];
    if bn {
        a.extend([("init_fill_bn", init, true), ("zero_fill_bn", zero, true), ("mean_fill_bn", mean, true)]);
    }
    a.push(("no_key", noise, false));
    a
}

/// What one attack gave.
enum Outcome {
    /// Its accuracy: the mean over the draws for a random fill.
    Scored(f64),
    /// It does not apply (BatchNormalization re-estimation without BatchNormalization).
    NotApplicable,
    /// The attacked model does not run (tract refuses it): the attacker gets nothing.
    Failed(String),
}

fn score(bench: &Bench, model: &Model, e: &Exposure, fill: FillOf, bn: bool, seed: u64, draws: u32) -> Outcome {
    let random = matches!(fill(seed), Fill::Init { .. } | Fill::Noise { .. });
    let n = if random { draws.max(1) } else { 1 };
    let mut sum = 0.0;
    for d in 0..u64::from(n) {
        match bench.attack(model, e, fill(seed.wrapping_add(d)), bn) {
            Ok(Ok(m)) => sum += bench.score(&m.rows),
            Ok(Err(_)) => return Outcome::NotApplicable,
            Err(err) => return Outcome::Failed(err.to_string()),
        }
    }
    Outcome::Scored(sum / f64::from(n))
}

/// Finds the smallest policy of the family whose best key-less attack meets the target
/// on `bench`'s data (which must have labels). Returns the report and the chosen policy.
pub fn search(model: &Model, bench: &Bench, opts: &SearchOptions) -> Result<(SearchReport, Option<Policy>)> {
    let chance = bench.chance().ok_or_else(|| RuntimeError::Input("policy search needs labels".into()))?;
    let threshold = opts.target.threshold(chance);
    let weights = discover(model);
    let weight_bytes: u64 = weights.iter().map(|w| model.tensors[w.tensor].nbytes).sum();
    let has_bn = model.nodes.iter().any(|n| n.op_type == "BatchNormalization" && n.is_onnx());
    let bn = has_bn && bench.calibration_samples() > 0;
    let mut candidates: Vec<(Knobs, Policy, Exposure)> = family()
        .into_iter()
        .map(|k| {
            let p = k.policy();
            let e = Exposure::of_selection(&select(model, &weights, &p));
            (k, p, e)
        })
        .filter(|(_, _, e)| e.bytes() > 0)
        .collect();
    // Stable: equal byte counts keep the family order.
    candidates.sort_by_key(|(_, _, e)| e.bytes());
    let mut points: Vec<Point> = Vec::with_capacity(candidates.len());
    let mut chosen = None;
    opts.progress.start("policies", candidates.len() as u64);
    for (i, (k, p, e)) in candidates.iter().enumerate() {
        let mut point = Point {
            knobs: *k,
            label: k.label(),
            policy: p.summary(),
            encrypted_bytes: e.bytes(),
            share: if weight_bytes > 0 { e.bytes() as f64 / weight_bytes as f64 } else { 0.0 },
            status: "evaluated",
            same_as: None,
            attacks: Vec::new(),
            failed: Vec::new(),
            best: None,
            meets: None,
        };
        if chosen.is_some() && !opts.exhaustive {
            point.status = "not_reached";
        } else if let Some(j) = (0..i).find(|&j| candidates[j].2 == *e) {
            // The same bytes give the same attacks.
            let twin = &points[j];
            point.status = "skipped";
            point.same_as = Some(twin.label.clone());
            (point.attacks, point.failed) = (twin.attacks.clone(), twin.failed.clone());
            (point.best, point.meets) = (twin.best.clone(), twin.meets);
        } else {
            let mut meets = true;
            for (name, fill, with_bn) in attacks(bn) {
                let accuracy = match score(bench, model, e, fill, with_bn, opts.seed, opts.draws) {
                    Outcome::Scored(a) => a,
                    Outcome::NotApplicable => continue,
                    Outcome::Failed(why) => {
                        point.failed.push(format!("{name}: {why}"));
                        continue;
                    }
                };
                let score = AttackScore { variant: name.to_string(), accuracy };
                if point.best.as_ref().is_none_or(|b| accuracy > b.accuracy) {
                    point.best = Some(score.clone());
                }
                point.attacks.push(score);
                if accuracy > threshold {
                    meets = false;
                    if !opts.exhaustive {
                        break;
                    }
                }
            }
            point.meets = Some(meets);
        }
        if chosen.is_none() && point.meets == Some(true) {
            chosen = Some(i);
        }
        points.push(point);
        opts.progress.set(i as u64 + 1);
    }
    opts.progress.finish();
    let policy = chosen.map(|i| candidates[i].1.clone());
    let report = SearchReport {
        samples: bench.samples(),
        calibration_samples: bench.calibration_samples(),
        chance,
        target: opts.target,
        threshold,
        weight_bytes,
        points,
        chosen,
    };
    Ok((report, policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse("chance+0.02"), Some(Target::AboveChance(0.02)));
        assert_eq!(Target::parse("chance"), Some(Target::AboveChance(0.0)));
        assert_eq!(Target::parse("0.15"), Some(Target::Accuracy(0.15)));
        for bad in ["chance+", "chance-0.1", "1.5", "-0.1", "most", "chance+2"] {
            assert_eq!(Target::parse(bad), None, "{bad}");
        }
        assert!((Target::AboveChance(0.02).threshold(0.1) - 0.12).abs() < 1e-12);
    }

    #[test]
    fn the_family_covers_every_combination_once() {
        let f = family();
        assert_eq!(f.len(), 2 * 2 * 2 * COEFFICIENTS.len() - 1);
        let labels: std::collections::BTreeSet<String> = f.iter().map(Knobs::label).collect();
        assert_eq!(labels.len(), f.len());
        let p = Knobs { last_layer: true, first_layer: false, small_roles: true, coefficient: 0.1 }.policy();
        let back = Policy::from_toml(&p.to_toml()).unwrap();
        assert_eq!(back, p);
        assert!(p.rules.is_empty() && p.layer_rules.len() == 1 && p.role_rules.len() == 7);
    }
}
