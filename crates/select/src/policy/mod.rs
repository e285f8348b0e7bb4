//! Encryption policies: rules by operator type, by tensor role and by tensor name,
//! each a coefficient, a mode, a split and a selection rank.
//!
//! The TOML form is documented in `docs/policy.md`.

use std::collections::BTreeMap;

use onnx_protect_format::{Layers, Model, TensorRole, Weight};

mod error;
mod forms;
mod rule;
#[cfg(test)]
mod tests;

pub use error::PolicyError;
use rule::specificity;
pub use rule::{fp_mask, glob_match, weight_name, Applied, Mode, OpRule, Rank, Selector, Split};

/// Rules by operator type, tensor role and tensor name.
///
/// A weight is encrypted under one rule: the most specific name rule whose glob matches
/// its name; else the rule of its layer (first, then last) if it is in the first or
/// last layer; else the rule of its first use whose operator has a rule covering that
/// input; else the rule of its tensor role. A rule with coefficient 0 keeps the weight
/// clear.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Rules by operator type.
    pub rules: BTreeMap<String, OpRule>,
    /// Rules by tensor role.
    pub role_rules: BTreeMap<TensorRole, OpRule>,
    /// Rules for the first and last layers.
    pub layer_rules: BTreeMap<Layers, OpRule>,
    /// Rules by tensor-name glob.
    pub name_rules: BTreeMap<String, OpRule>,
    /// Public seed of the `sample-*` selections.
    pub seed: u64,
    /// Number of nested access tiers (1 = no tiers).
    pub tiers: u32,
    /// Share of the encrypted bytes in each tier, least important first (sums to 1);
    /// `None` means [`default_tier_shares`].
    pub tier_shares: Option<Vec<f64>>,
    /// Which chosen subsequences fill tier 1 first.
    pub tier_order: TierOrder,
    /// By class: the classes (rows of the class layer) each tier 1 … N − 1 adds; the others are
    /// the top tier's. `None`: the first `round(1 + k·(C − 1)/N)` classes at tier `k`.
    pub tier_classes: Option<Vec<Vec<u64>>>,
}

/// The order in which the chosen subsequences fill the tiers (docs/format.md §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TierOrder {
    /// [`TierOrder::Classes`] for a classifier whose class layer gives every tier a class of
    /// its own and a policy with no tier shares; [`TierOrder::Importance`] otherwise (the
    /// default: `--tiers N` alone).
    #[default]
    Auto,
    /// Least important first: tier 1 holds the least important subsequences, the top tier
    /// the most important.
    Importance,
    /// Most important first: tier 1 holds the most important subsequences, the top tier the
    /// least important, so a lower tier's holder lacks many of the least important rows
    /// rather than a few of the most important (`encrypt --tier-data` chooses it where it
    /// grades the service more evenly).
    Inverse,
    /// By class: every subsequence in tier 1 but the rows of the classifier's class layer,
    /// shared out so that the holder of tier `k` is served `round(1 + k·(C − 1)/N)` of the
    /// `C` classes (the first ones), the top tier all of them ([`crate::classes`]).
    Classes,
}

impl TierOrder {
    /// The name in a policy file (`tier_order`) and in the manifest's policy summary.
    pub fn name(self) -> &'static str {
        match self {
            TierOrder::Auto => "auto",
            TierOrder::Importance => "importance",
            TierOrder::Inverse => "inverse",
            TierOrder::Classes => "classes",
        }
    }

    /// The order named `s`, if any.
    pub fn parse(s: &str) -> Option<TierOrder> {
        match s {
            "auto" => Some(TierOrder::Auto),
            "importance" => Some(TierOrder::Importance),
            "inverse" => Some(TierOrder::Inverse),
            "classes" => Some(TierOrder::Classes),
            _ => None,
        }
    }
}

/// Most tiers a policy may ask for.
pub const MAX_TIERS: u32 = 16;

/// Share of the encrypted bytes still encrypted for the holder of tier 1 (tiers 2 … N) under
/// the default tier shares of the importance order (a model [`TierOrder::Auto`] does not tier by
/// class, or `tier_order = "importance"`): the holder of tier `k` lacks a share falling geometrically
/// from this at `k = 1` to [`DEFAULT_TOP_TIER_SHARE`] at `k = N − 1`.
///
/// Measured under the built-in policy (every weight, `fp`, docs/protection-tiers.md): on
/// the digits CNN and MLP these shares give levels that climb by at least 15% of the range
/// from the key-less model to the original, where equal shares leave tier 1 at chance and
/// tier 2 at 32% on the digits CNN (6 keys). Models whose accuracy collapses once a few percent of their most
/// important rows are encrypted (ConvMixers, vision transformers, residual networks) need
/// shares fitted on their data: `encrypt --tier-levels` / `--tier-data`.
pub const DEFAULT_TIER1_STILL_ENCRYPTED: f64 = 0.35;

/// Share of the encrypted bytes in the top tier under the default tier shares (see
/// [`DEFAULT_TIER1_STILL_ENCRYPTED`]).
pub const DEFAULT_TOP_TIER_SHARE: f64 = 0.2;

/// The default shares of `tiers` access tiers, least important first: the share still
/// encrypted for the holder of tier `k` is `F_k = a · (b / a)^((k − 1) / (N − 2))`
/// (`a` = [`DEFAULT_TIER1_STILL_ENCRYPTED`], `b` = [`DEFAULT_TOP_TIER_SHARE`]; `√(a·b)`
/// for two tiers), and tier `k`'s share is `F_(k−1) − F_k` (`F_0 = 1`, `F_N = 0`).
pub fn default_tier_shares(tiers: u32) -> Vec<f64> {
    let n = tiers.max(1) as usize;
    if n == 1 {
        return vec![1.0];
    }
    let (a, b) = (DEFAULT_TIER1_STILL_ENCRYPTED, DEFAULT_TOP_TIER_SHARE);
    let still: Vec<f64> = (1..n)
        .map(|k| if n == 2 { (a * b).sqrt() } else { a * (b / a).powf((k - 1) as f64 / (n - 2) as f64) })
        .collect();
    let mut shares = Vec::with_capacity(n);
    let mut above = 1.0;
    for f in &still {
        shares.push(above - f);
        above = *f;
    }
    shares.push(above);
    shares
}

/// Tier class groups as `--tier-classes` takes them: classes by commas, runs as `a-b`, groups
/// by semicolons (`0-3;4,5,6`).
pub fn class_groups_text(groups: &[Vec<u64>]) -> String {
    let group = |g: &Vec<u64>| {
        let mut parts: Vec<String> = Vec::new();
        let mut i = 0;
        while i < g.len() {
            let mut j = i;
            while j + 1 < g.len() && g[j + 1] == g[j] + 1 {
                j += 1;
            }
            parts.push(if j > i { format!("{}-{}", g[i], g[j]) } else { g[i].to_string() });
            i = j + 1;
        }
        parts.join(",")
    };
    groups.iter().map(group).collect::<Vec<_>>().join(";")
}

/// Parses [`class_groups_text`]'s form.
pub fn parse_class_groups(text: &str) -> Result<Vec<Vec<u64>>, PolicyError> {
    let bad =
        || PolicyError::Invalid(format!("tier classes '{text}': give classes by commas, runs as a-b, tiers by ';'"));
    let number = |t: &str| t.trim().parse::<u64>().map_err(|_| bad());
    text.split(';')
        .map(|g| {
            let mut out = Vec::new();
            for part in g.split(',') {
                match part.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (number(a)?, number(b)?);
                        if a > b || b - a >= 1 << 20 {
                            return Err(bad());
                        }
                        out.extend(a..=b);
                    }
                    None => out.push(number(part)?),
                }
            }
            Ok(out)
        })
        .collect()
}

/// Checks tier levels asked for a policy of `tiers` tiers (`encrypt --tier-levels`): one
/// per tier below the top (`tiers − 1`), each in (0, 1), strictly increasing.
pub fn check_tier_levels(tiers: u32, levels: &[f64]) -> Result<(), PolicyError> {
    if tiers < 2 {
        return Err(PolicyError::Invalid("tier levels need --tiers N with N > 1".into()));
    }
    if levels.len() as u32 != tiers - 1 {
        return Err(PolicyError::Invalid(format!(
            "{} tier levels given for {tiers} tiers: give one per tier below the top ({})",
            levels.len(),
            tiers - 1
        )));
    }
    if let Some(l) = levels.iter().find(|l| !(l.is_finite() && **l > 0.0 && **l < 1.0)) {
        return Err(PolicyError::Invalid(format!("tier level {l} is outside (0, 1)")));
    }
    if let Some(w) = levels.windows(2).find(|w| w[1] <= w[0]) {
        return Err(PolicyError::Invalid(format!("tier levels must increase from tier 1 up: {} then {}", w[0], w[1])));
    }
    Ok(())
}

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
    // onnxruntime's com.microsoft operators that carry weights.
    "MatMulNBits",
    "MatMulBnb4",
    "GatherBlockQuantized",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
    "MatMulIntegerToFloat",
    "FusedMatMul",
    "FusedConv",
    "FusedGemm",
    "QGemm",
    "Attention",
    "QAttention",
    "EmbedLayerNormalization",
    "QEmbedLayerNormalization",
    "SkipLayerNormalization",
    "QLinearAdd",
    "QLinearMul",
    "QLinearConcat",
    "QMoE",
];

/// Coefficient of a rule that a policy file or an override adds without giving one
/// (an operator, layer or name rule the policy lacks). `--coefficient '*=0.5'` on the
/// built-in policy encrypts half of every weight's rows, evenly spread.
pub const DEFAULT_COEFFICIENT: f64 = 0.5;

/// The built-in policy encrypts every weight whole: each role but `quant` at this
/// coefficient.
///
/// Chosen by measurement against the training attacks (docs/protection.md#training-attacks):
/// an attacker who keeps every clear weight frozen and re-learns only the encrypted
/// tensors from a few hundred labelled examples beat training from scratch by 17 points
/// on a ViT and by 9 points on a ResNet when only the first and the last layer were
/// encrypted (the previous built-in policy), and by 6 points on the ResNet with half of
/// every weight's rows and every small role encrypted as well. With every weight encrypted
/// the attacker starts from nothing the file gives: the attacks are training from scratch.
/// Smaller policies that hold on some families (the first and last layers on the CNNs, MLPs,
/// ConvMixers and the transformer encoder measured) are a policy file away (docs/policy.md).
pub const DEFAULT_ROLE_COEFFICIENT: f64 = 1.0;

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
    /// The built-in policy: every weight whole ([`DEFAULT_ROLE_COEFFICIENT`]), one rule per
    /// tensor role except `quant` (quantisation scales and zero points stay clear), mode
    /// [`DEFAULT_MODE`] (with tiers [`DEFAULT_TIERED_MODE`]), first-dimension split. No
    /// operator or layer rule, so `--coefficient '*=C'` reaches every rule and an operator
    /// rule (`[ops.Conv]`, `--coefficient Conv=C`) takes precedence over the role rules.
    fn default() -> Self {
        let whole = OpRule { coefficient: DEFAULT_ROLE_COEFFICIENT, ..OpRule::builtin() };
        let role_rules =
            TensorRole::ALL.into_iter().filter(|r| *r != TensorRole::Quant).map(|r| (r, whole.clone())).collect();
        Policy { role_rules, ..Policy::empty() }
    }
}

impl Policy {
    /// A policy with no rule: nothing is encrypted (`inherit_builtin = false` starts here).
    pub fn empty() -> Policy {
        Policy {
            rules: BTreeMap::new(),
            role_rules: BTreeMap::new(),
            layer_rules: BTreeMap::new(),
            name_rules: BTreeMap::new(),
            seed: 0,
            tiers: 1,
            tier_shares: None,
            tier_classes: None,
            tier_order: TierOrder::Auto,
        }
    }
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

    /// The rule this policy applies to weight `w` of `model`, if any (see [`Policy`]).
    pub fn rule_for_weight<'a>(&'a self, model: &Model, w: &'a Weight) -> Option<Applied<'a>> {
        let first = w.uses.first()?;
        let name = weight_name(model, w);
        let named = self
            .name_rules
            .iter()
            .filter(|(g, _)| glob_match(g, name))
            .min_by(|a, b| specificity(a.0).cmp(&specificity(b.0)));
        if let Some((glob, rule)) = named {
            return Some(Applied { rule, by: Selector::Name(glob.clone()), via: first });
        }
        let layers = [(w.first_layer, Layers::First), (w.last_layer, Layers::Last)];
        for (is, layer) in layers {
            if let Some(rule) = self.layer_rules.get(&layer).filter(|_| is) {
                return Some(Applied { rule, by: Selector::Layer(layer), via: first });
            }
        }
        let by_op = w.uses.iter().find_map(|u| {
            self.rules.get(&u.op_type).filter(|r| r.covers_in(&u.op_type, u.role, u.kind)).map(|r| (u, r))
        });
        if let Some((u, rule)) = by_op {
            return Some(Applied { rule, by: Selector::Op(u.op_type.clone()), via: u });
        }
        let role = w.tensor_role();
        self.role_rules.get(&role).map(|rule| Applied { rule, by: Selector::Role(role), via: first })
    }

    /// Sets the number of tiers (1 ..= MAX_TIERS).
    pub fn set_tiers(&mut self, t: u32) -> Result<(), PolicyError> {
        if t == 0 || t > MAX_TIERS {
            return Err(PolicyError::Invalid(format!("tiers must be between 1 and {MAX_TIERS}, not {t}")));
        }
        self.tiers = t;
        Ok(())
    }

    /// Sets the classes each tier below the top adds (tiers by class): every group non-empty, no
    /// class in two groups.
    pub fn set_tier_classes(&mut self, groups: Vec<Vec<u64>>) -> Result<(), PolicyError> {
        let mut seen = std::collections::BTreeSet::new();
        for g in &groups {
            if g.is_empty() {
                return Err(PolicyError::Invalid("every tier below the top must add at least one class".into()));
            }
            if let Some(c) = g.iter().find(|c| !seen.insert(**c)) {
                return Err(PolicyError::Invalid(format!("class {c} is given to two tiers")));
            }
        }
        self.tier_classes = Some(groups);
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
        if let Some(groups) = &self.tier_classes {
            if self.tier_shares.is_some() || !matches!(self.tier_order, TierOrder::Auto | TierOrder::Classes) {
                return Err(PolicyError::Invalid("tier classes are for tiers by class, without tier shares".into()));
            }
            if groups.len() as u32 + 1 != self.tiers {
                return Err(PolicyError::Invalid(format!(
                    "{} tier class groups given for {} tiers (one per tier below the top)",
                    groups.len(),
                    self.tiers
                )));
            }
        }
        match &self.tier_shares {
            Some(_) if self.tier_order == TierOrder::Classes => Err(PolicyError::Invalid(
                "tier shares are for the importance and inverse tier orders, not classes".into(),
            )),
            Some(s) if s.len() as u32 == self.tiers => Ok(s.clone()),
            Some(s) => Err(PolicyError::Invalid(format!("{} tier shares given for {} tiers", s.len(), self.tiers))),
            None => Ok(default_tier_shares(self.tiers)),
        }
    }

    /// Every rule with its selector: operator rules, then role, layer and name rules.
    pub fn all_rules(&self) -> Vec<(Selector, &OpRule)> {
        let ops = self.rules.iter().map(|(op, r)| (Selector::Op(op.clone()), r));
        let roles = self.role_rules.iter().map(|(role, r)| (Selector::Role(*role), r));
        let layers = self.layer_rules.iter().map(|(l, r)| (Selector::Layer(*l), r));
        let names = self.name_rules.iter().map(|(g, r)| (Selector::Name(g.clone()), r));
        ops.chain(roles).chain(layers).chain(names).collect()
    }

    /// A one-line description stored in the manifest.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (sel, r) in self.all_rules() {
            let split = match r.split {
                Split::FirstDim => "rows".to_string(),
                Split::Count(n) => n.to_string(),
            };
            let sel = sel.text();
            parts.push(format!("{sel}:{}:{}:{split}:{}", r.coefficient, self.mode_of(r).name(), r.rank.name()));
        }
        let mut s = parts.join(",");
        if self.tiers > 1 {
            s.push_str(&format!(";tiers={}", self.tiers));
            if let Some(shares) = &self.tier_shares {
                let shares: Vec<String> = shares.iter().map(f64::to_string).collect();
                s.push_str(&format!(";shares={}", shares.join(",")));
            }
            // By importance, the order before tiers by class, is not named.
            if !matches!(self.tier_order, TierOrder::Auto | TierOrder::Importance) {
                s.push_str(&format!(";order={}", self.tier_order.name()));
            }
            if let Some(groups) = &self.tier_classes {
                s.push_str(&format!(";classes={}", class_groups_text(groups)));
            }
        }
        if self.all_rules().iter().any(|(_, r)| matches!(r.rank, Rank::Sample(_))) {
            s.push_str(&format!(";seed={}", self.seed));
        }
        s
    }
}
