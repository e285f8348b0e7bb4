//! Encryption policies: per operator type, a coefficient, a mode and a split.
//!
//! The TOML form is documented in `docs/policy.md`.

use std::collections::BTreeMap;

use onnx_protect_format::{discover::roles, DataType, WeightKind};

use crate::importance::Norm;
use serde::Deserialize;

/// How an operator's weights are encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// AES-256-CTR over every bit.
    Ctr,
    /// Keystream on sign and mantissa bits only (floats), every bit (8-bit integers).
    #[serde(alias = "format-preserving", alias = "format_preserving")]
    Fp,
    /// Keyed permutation of the elements inside each chosen subsequence: the
    /// encrypted values are the layer's own values (docs/format.md §5).
    #[serde(alias = "distribution-preserving", alias = "distribution_preserving")]
    Dp,
}

/// How the chosen subsequences of a weight are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rank {
    /// Evenly spread positions `⌊j·n/k⌋` (the patent's rule).
    Even,
    /// The `k` most important subsequences by a norm.
    Top(Norm),
    /// `k` subsequences drawn with probability ∝ importance from the policy's public seed.
    Sample(Norm),
}

impl Rank {
    pub fn name(self) -> &'static str {
        match self {
            Rank::Even => "even",
            Rank::Top(Norm::L1) => "l1",
            Rank::Top(Norm::L2) => "l2",
            Rank::Sample(Norm::L1) => "sample-l1",
            Rank::Sample(Norm::L2) => "sample-l2",
        }
    }
    pub fn parse(s: &str) -> Option<Rank> {
        Some(match s {
            "even" => Rank::Even,
            "l1" => Rank::Top(Norm::L1),
            "l2" => Rank::Top(Norm::L2),
            "sample-l1" => Rank::Sample(Norm::L1),
            "sample-l2" => Rank::Sample(Norm::L2),
            _ => return None,
        })
    }
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Ctr => "ctr",
            Mode::Fp => "fp",
            Mode::Dp => "dp",
        }
    }
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "ctr" => Some(Mode::Ctr),
            "fp" | "format-preserving" | "format_preserving" => Some(Mode::Fp),
            "dp" | "distribution-preserving" | "distribution_preserving" => Some(Mode::Dp),
            _ => None,
        }
    }
}

/// How a weight's element bytes are split into subsequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// One subsequence per index of the first dimension (rows, output channels).
    FirstDim,
    /// This many element-aligned, near-equal chunks.
    Count(u64),
}

/// The bits the format-preserving mode may change, per little-endian byte of one
/// element; `None` for types it does not support.
pub fn fp_mask(dtype: DataType) -> Option<&'static [u8]> {
    use DataType::*;
    Some(match dtype {
        Float | Complex64 => &[0xFF, 0xFF, 0x7F, 0x80],
        Double | Complex128 => &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x80],
        Float16 => &[0xFF, 0x83],
        Bfloat16 => &[0x7F, 0x80],
        Float8E4M3Fn | Float8E4M3Fnuz => &[0x87],
        Float8E5M2 | Float8E5M2Fnuz => &[0x83],
        Float4E2M1 => &[0x99],
        Bool => &[0x01],
        Uint8 | Int8 | Uint4 | Int4 | Uint2 | Int2 => &[0xFF],
        Uint16 | Int16 => &[0xFF, 0xFF],
        Int32 | Uint32 => &[0xFF; 4],
        Int64 | Uint64 => &[0xFF; 8],
        String | Float8E8M0 => return None,
    })
}

/// The policy for one operator type.
#[derive(Debug, Clone, PartialEq)]
pub struct OpRule {
    /// Fraction of the weight bytes to encrypt, in [0, 1].
    pub coefficient: f64,
    /// The mode; when [`OpRule::mode_set`] is false this is the built-in default and
    /// [`Policy::mode_of`] gives the mode actually used.
    pub mode: Mode,
    /// Whether `mode` was set by a policy file or an override. A rule that keeps the
    /// built-in default follows the tier count: [`DEFAULT_MODE`] untiered,
    /// [`DEFAULT_TIERED_MODE`] with access tiers.
    pub mode_set: bool,
    pub split: Split,
    /// Role names to encrypt; `None` means the main and bias roles of the operator
    /// and the normalisation roles except `input_var`.
    pub roles: Option<Vec<String>>,
    /// How the chosen subsequences are picked.
    pub rank: Rank,
}

impl OpRule {
    /// The built-in rule.
    pub fn builtin() -> OpRule {
        OpRule {
            coefficient: DEFAULT_COEFFICIENT,
            mode: DEFAULT_MODE,
            mode_set: false,
            split: Split::FirstDim,
            roles: None,
            rank: Rank::Even,
        }
    }

    /// The coefficient in parts per million, rounded to nearest.
    pub fn coefficient_ppm(&self) -> u32 {
        (self.coefficient.clamp(0.0, 1.0) * 1_000_000.0).round() as u32
    }

    /// Whether this rule encrypts a weight in `role` of kind `kind`.
    pub fn covers(&self, role: &str, kind: WeightKind) -> bool {
        match &self.roles {
            Some(r) => r.iter().any(|x| x == role),
            // A running variance must stay positive: flipping its sign bit (as the
            // format-preserving mode may) turns the layer's output into NaN.
            None => matches!(kind, WeightKind::Main | WeightKind::Bias | WeightKind::Norm) && role != "input_var",
        }
    }
}

/// Maps operator types to rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub rules: BTreeMap<String, OpRule>,
    /// Public seed of the `sample-*` selections.
    pub seed: u64,
    /// Number of nested access tiers (1 = no tiers).
    pub tiers: u32,
    /// Share of the encrypted bytes in each tier, least important first (sums to 1);
    /// `None` means equal shares.
    pub tier_shares: Option<Vec<f64>>,
}

/// Most tiers a policy may ask for.
pub const MAX_TIERS: u32 = 16;

/// Every operator type weight discovery knows.
pub const KNOWN_OPS: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
    "LSTM",
    "GRU",
    "RNN",
    "Gather",
    "BatchNormalization",
    "LayerNormalization",
    "InstanceNormalization",
];

/// Default coefficient of the built-in policy: half of each weight's bytes.
///
/// Chosen from the digits measurements in docs/protection.md. The encrypted positions
/// are public, so the attack that matters is the key-less one that zero- or mean-fills
/// them. With evenly spread rows that attack still kept 63% (CNN) and 73% (MLP) of the
/// test accuracy at 0.2, and 23% / 51% at 0.5, the smallest measured volume where it
/// dropped clearly on every model. Decryption cost grows with this number (see
/// docs/performance.md); lower it per model when load time matters more.
pub const DEFAULT_COEFFICIENT: f64 = 0.5;

/// Default mode of the built-in policy: AES-CTR over every bit.
///
/// Zero-fill and mean-fill attacks use the public positions and do not depend on the
/// mode, and CTR without the key gives no usable output, so CTR is never weaker than the
/// format-preserving mode under the best key-less attack (docs/protection.md); the
/// format-preserving mode's stealth buys nothing against an attacker who reads the
/// manifest. Use `fp` where a protected model must still produce finite outputs.
pub const DEFAULT_MODE: Mode = Mode::Ctr;

/// Default mode of the built-in policy when the policy has access tiers (`tiers > 1`):
/// format-preserving.
///
/// A tier that is still encrypted in `ctr` mode turns its weights into random floats
/// (huge exponents, NaN), so every partial tier gives NaN outputs and the tiers grade
/// nothing (docs/protection-tiers.md). `fp` (and `dp`) keep the values finite, and the
/// service level rises with each tier. An explicit `ctr` with tiers is refused at
/// encryption.
pub const DEFAULT_TIERED_MODE: Mode = Mode::Fp;

impl Default for Policy {
    /// Every known operator type, coefficient [`DEFAULT_COEFFICIENT`], mode [`DEFAULT_MODE`],
    /// first-dimension split, main + bias (+ normalisation) roles.
    fn default() -> Self {
        let rules = KNOWN_OPS.iter().map(|op| (op.to_string(), OpRule::builtin())).collect();
        Policy { rules, seed: 0, tiers: 1, tier_shares: None }
    }
}

/// A policy file or override that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("policy: {0}")]
    Toml(String),
    #[error("policy: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    version: u32,
    #[serde(default)]
    defaults: Option<RuleForm>,
    /// `true` (default) starts from the built-in rules; `false` starts empty.
    #[serde(default = "yes")]
    inherit_builtin: bool,
    #[serde(default)]
    ops: BTreeMap<String, RuleForm>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    tiers: Option<u32>,
    #[serde(default)]
    tier_shares: Option<Vec<f64>>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RuleForm {
    coefficient: Option<f64>,
    mode: Option<Mode>,
    /// "first-dim" or a positive integer.
    subsequences: Option<toml::Value>,
    roles: Option<Vec<String>>,
    selection: Option<String>,
}

fn parse_split(v: &toml::Value, op: &str) -> Result<Split, PolicyError> {
    match v {
        toml::Value::String(s) if s == "first-dim" => Ok(Split::FirstDim),
        toml::Value::Integer(n) if *n >= 1 => Ok(Split::Count(*n as u64)),
        _ => Err(PolicyError::Invalid(format!("ops.{op}.subsequences must be \"first-dim\" or an integer ≥ 1"))),
    }
}

fn parse_rank(s: &str, at: &str) -> Result<Rank, PolicyError> {
    Rank::parse(s).ok_or_else(|| {
        PolicyError::Invalid(format!("{at}: selection '{s}' must be even, l1, l2, sample-l1 or sample-l2"))
    })
}

fn check_coefficient(c: f64, at: &str) -> Result<f64, PolicyError> {
    if !(0.0..=1.0).contains(&c) || c.is_nan() {
        return Err(PolicyError::Invalid(format!("{at}: coefficient {c} is outside [0, 1]")));
    }
    Ok(c)
}

fn check_op(op: &str) -> Result<(), PolicyError> {
    if !KNOWN_OPS.contains(&op) {
        return Err(PolicyError::Invalid(format!("unknown operator type '{op}' (known: {})", KNOWN_OPS.join(", "))));
    }
    Ok(())
}

fn check_roles(op: &str, r: &[String]) -> Result<(), PolicyError> {
    let known: Vec<&str> = roles(op).iter().map(|(_, n, _)| *n).collect();
    for x in r {
        if !known.contains(&x.as_str()) {
            return Err(PolicyError::Invalid(format!("ops.{op}: unknown role '{x}' (known: {})", known.join(", "))));
        }
    }
    Ok(())
}

impl Policy {
    /// The mode a rule encrypts with under this policy: its own if it was set, else the
    /// built-in default for the policy's tier count ([`DEFAULT_MODE`] untiered,
    /// [`DEFAULT_TIERED_MODE`] with `tiers > 1`).
    pub fn mode_of(&self, rule: &OpRule) -> Mode {
        if !rule.mode_set && self.tiers > 1 {
            DEFAULT_TIERED_MODE
        } else {
            rule.mode
        }
    }

    /// The rule for `op_type`, if the policy covers it.
    pub fn rule_for(&self, op_type: &str) -> Option<&OpRule> {
        self.rules.get(op_type)
    }

    /// Parses a TOML policy file (format in docs/policy.md).
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let f: FileForm = toml::from_str(text).map_err(|e| PolicyError::Toml(e.message().to_string()))?;
        if f.version != 1 {
            return Err(PolicyError::Invalid(format!("version {} is not supported (expected 1)", f.version)));
        }
        let mut p =
            if f.inherit_builtin { Policy::default() } else { Policy { rules: BTreeMap::new(), ..Policy::default() } };
        if let Some(seed) = f.seed {
            p.seed = seed;
        }
        if let Some(t) = f.tiers {
            p.set_tiers(t)?;
        }
        if let Some(shares) = f.tier_shares {
            p.set_tier_shares(&shares)?;
        }
        if let Some(d) = &f.defaults {
            if d.roles.is_some() {
                return Err(PolicyError::Invalid("defaults cannot set roles (they differ per operator)".into()));
            }
            for r in p.rules.values_mut() {
                if let Some(c) = d.coefficient {
                    r.coefficient = check_coefficient(c, "defaults")?;
                }
                if let Some(m) = d.mode {
                    r.mode = m;
                    r.mode_set = true;
                }
                if let Some(s) = &d.subsequences {
                    r.split = parse_split(s, "defaults")?;
                }
                if let Some(s) = &d.selection {
                    r.rank = parse_rank(s, "defaults")?;
                }
            }
        }
        for (op, form) in f.ops {
            check_op(&op)?;
            let mut r = p.rules.get(&op).cloned().unwrap_or_else(OpRule::builtin);
            if let Some(s) = &form.selection {
                r.rank = parse_rank(s, &format!("ops.{op}"))?;
            }
            if let Some(c) = form.coefficient {
                r.coefficient = check_coefficient(c, &format!("ops.{op}"))?;
            }
            if let Some(m) = form.mode {
                r.mode = m;
                r.mode_set = true;
            }
            if let Some(s) = &form.subsequences {
                r.split = parse_split(s, &op)?;
            }
            if let Some(roles) = form.roles {
                check_roles(&op, &roles)?;
                r.roles = Some(roles);
            }
            p.rules.insert(op, r);
        }
        Ok(p)
    }

    /// Applies a command-line override `OP=VALUE` of `what` (`coefficient`, `mode`, `subsequences`).
    pub fn apply_override(&mut self, what: &str, spec: &str) -> Result<(), PolicyError> {
        let (op, value) =
            spec.split_once('=').ok_or_else(|| PolicyError::Invalid(format!("--{what} {spec}: expected OP=VALUE")))?;
        let ops: Vec<String> = if op == "*" {
            self.rules.keys().cloned().collect()
        } else {
            check_op(op).map(|_| vec![op.to_string()])?
        };
        for op in ops {
            let r = self.rules.entry(op.clone()).or_insert_with(OpRule::builtin);
            match what {
                "coefficient" => {
                    let c: f64 = value.parse().map_err(|_| {
                        PolicyError::Invalid(format!("--coefficient {spec}: '{value}' is not a number"))
                    })?;
                    r.coefficient = check_coefficient(c, &format!("--coefficient {op}"))?;
                }
                "mode" => {
                    r.mode = Mode::parse(value)
                        .ok_or_else(|| PolicyError::Invalid(format!("--mode {spec}: mode must be ctr, fp or dp")))?;
                    r.mode_set = true;
                }
                "selection" => r.rank = parse_rank(value, &format!("--selection {op}"))?,
                "subsequences" => {
                    r.split = if value == "first-dim" {
                        Split::FirstDim
                    } else {
                        match value.parse::<u64>() {
                            Ok(n) if n >= 1 => Split::Count(n),
                            _ => {
                                return Err(PolicyError::Invalid(format!(
                                    "--subsequences {spec}: expected first-dim or an integer ≥ 1"
                                )))
                            }
                        }
                    }
                }
                _ => return Err(PolicyError::Invalid(format!("unknown override {what}"))),
            }
        }
        Ok(())
    }

    /// Sets the number of tiers (1 ..= MAX_TIERS).
    pub fn set_tiers(&mut self, t: u32) -> Result<(), PolicyError> {
        if t == 0 || t > MAX_TIERS {
            return Err(PolicyError::Invalid(format!("tiers must be between 1 and {MAX_TIERS}, not {t}")));
        }
        self.tiers = t;
        Ok(())
    }

    /// Sets the tier shares (positive, summing to 1 within 1e-6, one per tier).
    pub fn set_tier_shares(&mut self, shares: &[f64]) -> Result<(), PolicyError> {
        let sum: f64 = shares.iter().sum();
        if shares.is_empty() || shares.iter().any(|s| !s.is_finite() || *s <= 0.0) || (sum - 1.0).abs() > 1e-6 {
            return Err(PolicyError::Invalid("tier shares must be positive and sum to 1".into()));
        }
        self.tier_shares = Some(shares.to_vec());
        Ok(())
    }

    /// The shares per tier, least important first.
    pub fn shares(&self) -> Result<Vec<f64>, PolicyError> {
        match &self.tier_shares {
            Some(s) if s.len() as u32 == self.tiers => Ok(s.clone()),
            Some(s) => Err(PolicyError::Invalid(format!("{} tier shares given for {} tiers", s.len(), self.tiers))),
            None => Ok(vec![1.0 / f64::from(self.tiers); self.tiers as usize]),
        }
    }

    /// A one-line description stored in the manifest.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (op, r) in &self.rules {
            let split = match r.split {
                Split::FirstDim => "rows".to_string(),
                Split::Count(n) => n.to_string(),
            };
            parts.push(format!("{op}:{}:{}:{split}:{}", r.coefficient, self.mode_of(r).name(), r.rank.name()));
        }
        let mut s = parts.join(",");
        if self.tiers > 1 {
            s.push_str(&format!(";tiers={}", self.tiers));
            if let Some(shares) = &self.tier_shares {
                let shares: Vec<String> = shares.iter().map(f64::to_string).collect();
                s.push_str(&format!(";shares={}", shares.join(",")));
            }
        }
        if self.rules.values().any(|r| matches!(r.rank, Rank::Sample(_))) {
            s.push_str(&format!(";seed={}", self.seed));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_covers_every_known_operator() {
        let p = Policy::default();
        for op in KNOWN_OPS {
            assert!(p.rule_for(op).is_some(), "{op}");
        }
    }

    #[test]
    fn toml_overrides_one_operator() {
        let p = Policy::from_toml(
            "version = 1\n[ops.Conv]\ncoefficient = 0.1\nmode = \"ctr\"\nsubsequences = 8\nroles = [\"W\"]\n",
        )
        .unwrap();
        let c = p.rule_for("Conv").unwrap();
        assert_eq!((c.coefficient, c.mode, c.split), (0.1, Mode::Ctr, Split::Count(8)));
        assert_eq!(p.rule_for("MatMul").unwrap().coefficient, DEFAULT_COEFFICIENT);
    }

    #[test]
    fn bad_policies_are_refused_with_a_reason() {
        for (text, needle) in [
            ("version = 2", "version 2"),
            ("version = 1\n[ops.Conv]\ncoefficient = 1.5", "outside [0, 1]"),
            ("version = 1\n[ops.Frobnicate]\ncoefficient = 0.1", "unknown operator"),
            ("version = 1\n[ops.Conv]\nroles = [\"Q\"]", "unknown role"),
            ("version = 1\n[ops.Conv]\nmode = \"xor\"", "policy"),
            ("version = 1\nbogus = 3", "policy"),
            ("not toml at all [", "policy"),
        ] {
            let e = Policy::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn the_default_mode_follows_the_tier_count_but_a_set_mode_does_not() {
        let mut p = Policy::default();
        let conv = |p: &Policy| p.mode_of(p.rule_for("Conv").unwrap());
        assert_eq!(conv(&p), DEFAULT_MODE);
        p.set_tiers(3).unwrap();
        assert_eq!(conv(&p), DEFAULT_TIERED_MODE);
        assert!(p.summary().contains("Conv:0.5:fp:"), "{}", p.summary());
        p.apply_override("mode", "Conv=ctr").unwrap();
        assert_eq!(conv(&p), Mode::Ctr);
        assert_eq!(p.mode_of(p.rule_for("Gemm").unwrap()), DEFAULT_TIERED_MODE);
        let f = Policy::from_toml("version = 1\ntiers = 2\n[defaults]\nmode = \"dp\"\n").unwrap();
        assert_eq!(conv(&f), Mode::Dp);
        let f = Policy::from_toml("version = 1\ntiers = 2\n[ops.Gemm]\nmode = \"ctr\"\n").unwrap();
        assert_eq!((conv(&f), f.mode_of(f.rule_for("Gemm").unwrap())), (Mode::Fp, Mode::Ctr));
    }

    #[test]
    fn overrides_parse() {
        let mut p = Policy::default();
        p.apply_override("coefficient", "Conv=0.1").unwrap();
        p.apply_override("mode", "MatMul=ctr").unwrap();
        assert_eq!(p.rule_for("Conv").unwrap().coefficient, 0.1);
        assert_eq!(p.rule_for("MatMul").unwrap().mode, Mode::Ctr);
        assert!(p.apply_override("coefficient", "Conv").is_err());
        assert!(p.apply_override("mode", "Conv=rot13").is_err());
    }
}
