use std::collections::BTreeMap;

use onnx_protect_format::discover::{is_role_of, roles};
use serde::Deserialize;

use super::rule::{check_op, layer_name, layer_of, Mode, OpRule, Rank, Selector, Split};
use super::{Policy, PolicyError, TierOrder};

/// A TOML error as "line L, column C: message" (1-based, columns in characters) when
/// the parser says where it is.
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    match e.span().and_then(|r| text.get(..r.start)) {
        Some(before) => {
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!("line {line}, column {column}: {}", e.message().trim_end())
        }
        None => e.message().trim_end().to_string(),
    }
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
    roles: BTreeMap<String, RuleForm>,
    #[serde(default)]
    layers: BTreeMap<String, RuleForm>,
    #[serde(default)]
    names: BTreeMap<String, RuleForm>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    tiers: Option<u32>,
    #[serde(default)]
    tier_shares: Option<Vec<f64>>,
    #[serde(default)]
    tier_order: Option<String>,
    #[serde(default)]
    tier_classes: Option<Vec<Vec<u64>>>,
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

fn check_roles(op: &str, r: &[String]) -> Result<(), PolicyError> {
    for x in r {
        if !is_role_of(op, x) {
            let mut known: Vec<&str> = roles(op).iter().map(|(_, n, _)| *n).collect();
            known.push("input0 … input15");
            return Err(PolicyError::Invalid(format!("ops.{op}: unknown role '{x}' (known: {})", known.join(", "))));
        }
    }
    Ok(())
}

/// Applies the fields of a rule form other than `roles` to `r`.
fn apply_form(r: &mut OpRule, form: &RuleForm, at: &str) -> Result<(), PolicyError> {
    if let Some(s) = &form.selection {
        r.rank = parse_rank(s, at)?;
    }
    if let Some(c) = form.coefficient {
        r.coefficient = check_coefficient(c, at)?;
    }
    if let Some(m) = form.mode {
        r.mode = m;
        r.mode_set = true;
    }
    if let Some(s) = &form.subsequences {
        r.split = parse_split(s, at)?;
    }
    Ok(())
}

impl Policy {
    /// Parses a TOML policy file (format in docs/policy.md).
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let f: FileForm = toml::from_str(text).map_err(|e| PolicyError::Toml(toml_message(text, &e)))?;
        if f.version != 1 {
            return Err(PolicyError::Invalid(format!("version {} is not supported (expected 1)", f.version)));
        }
        let mut p = if f.inherit_builtin { Policy::default() } else { Policy::empty() };
        if let Some(seed) = f.seed {
            p.seed = seed;
        }
        if let Some(t) = f.tiers {
            p.set_tiers(t)?;
        }
        if let Some(shares) = f.tier_shares {
            p.set_tier_shares(&shares)?;
        }
        if let Some(groups) = f.tier_classes {
            p.set_tier_classes(groups)?;
        }
        if let Some(order) = &f.tier_order {
            p.tier_order = TierOrder::parse(order).ok_or_else(|| {
                PolicyError::Invalid(format!("tier_order '{order}' must be auto, importance, inverse or classes"))
            })?;
        }
        if let Some(d) = &f.defaults {
            if d.roles.is_some() {
                return Err(PolicyError::Invalid("defaults cannot set roles (they differ per operator)".into()));
            }
            for r in p
                .rules
                .values_mut()
                .chain(p.role_rules.values_mut())
                .chain(p.layer_rules.values_mut())
                .chain(p.name_rules.values_mut())
            {
                apply_form(r, d, "defaults")?;
            }
        }
        for (op, form) in f.ops {
            check_op(&op)?;
            let mut r = p.rules.get(&op).cloned().unwrap_or_else(OpRule::builtin);
            apply_form(&mut r, &form, &format!("ops.{op}"))?;
            if let Some(roles) = form.roles {
                check_roles(&op, &roles)?;
                r.roles = Some(roles);
            }
            p.rules.insert(op, r);
        }
        for (name, form) in f.roles {
            let Selector::Role(role) = Selector::parse(&format!("role:{name}"))? else { unreachable!() };
            if form.roles.is_some() {
                return Err(PolicyError::Invalid(format!("roles.{name}: `roles` belongs in an [ops.OP] rule")));
            }
            let mut r = p.role_rules.get(&role).cloned().unwrap_or_else(OpRule::builtin);
            apply_form(&mut r, &form, &format!("roles.{name}"))?;
            p.role_rules.insert(role, r);
        }
        for (name, form) in f.layers {
            let layer = layer_of(&name)?;
            if form.roles.is_some() {
                return Err(PolicyError::Invalid(format!("layers.{name}: `roles` belongs in an [ops.OP] rule")));
            }
            let mut r = p.layer_rules.get(&layer).cloned().unwrap_or_else(OpRule::builtin);
            apply_form(&mut r, &form, &format!("layers.{name}"))?;
            p.layer_rules.insert(layer, r);
        }
        for (glob, form) in f.names {
            if glob.is_empty() {
                return Err(PolicyError::Invalid("names: a pattern must not be empty".into()));
            }
            if form.roles.is_some() {
                return Err(PolicyError::Invalid(format!("names.\"{glob}\": `roles` belongs in an [ops.OP] rule")));
            }
            let mut r = p.name_rules.get(&glob).cloned().unwrap_or_else(OpRule::builtin);
            apply_form(&mut r, &form, &format!("names.\"{glob}\""))?;
            p.name_rules.insert(glob, r);
        }
        Ok(p)
    }

    /// Applies a command-line override `SELECTOR=VALUE` of `what` (`coefficient`, `mode`,
    /// `subsequences`, `selection`). The selector is `*` (every rule of the policy), an
    /// operator type, `role:NAME` or `name:GLOB` ([`Selector::parse`]); a rule it names
    /// that the policy lacks is added, starting from the built-in rule.
    pub fn apply_override(&mut self, what: &str, spec: &str) -> Result<(), PolicyError> {
        let (sel, value) = spec
            .rsplit_once('=')
            .ok_or_else(|| PolicyError::Invalid(format!("--{what} {spec}: expected SELECTOR=VALUE")))?;
        let targets: Vec<&mut OpRule> = if sel == "*" {
            self.rules
                .values_mut()
                .chain(self.role_rules.values_mut())
                .chain(self.layer_rules.values_mut())
                .chain(self.name_rules.values_mut())
                .collect()
        } else {
            vec![match Selector::parse(sel)? {
                Selector::Op(op) => self.rules.entry(op).or_insert_with(OpRule::builtin),
                Selector::Role(r) => self.role_rules.entry(r).or_insert_with(OpRule::builtin),
                Selector::Layer(l) => self.layer_rules.entry(l).or_insert_with(OpRule::builtin),
                Selector::Name(g) => self.name_rules.entry(g).or_insert_with(OpRule::builtin),
            }]
        };
        let at = format!("--{what} {sel}");
        for r in targets {
            match what {
                "coefficient" => {
                    let c: f64 = value.parse().map_err(|_| {
                        PolicyError::Invalid(format!("--coefficient {spec}: '{value}' is not a number"))
                    })?;
                    r.coefficient = check_coefficient(c, &at)?;
                }
                "mode" => {
                    r.mode = Mode::parse(value)
                        .ok_or_else(|| PolicyError::Invalid(format!("--mode {spec}: mode must be ctr, fp or dp")))?;
                    r.mode_set = true;
                }
                "selection" => r.rank = parse_rank(value, &at)?,
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

    /// The policy as a TOML file that [`Policy::from_toml`] reads back as this policy
    /// (`inherit_builtin = false`, every rule written out).
    pub fn to_toml(&self) -> String {
        let mut s = String::from("version = 1\ninherit_builtin = false\n");
        s.push_str(&format!("seed = {}\n", self.seed));
        if self.tiers > 1 {
            s.push_str(&format!("tiers = {}\n", self.tiers));
        }
        if let Some(shares) = &self.tier_shares {
            let shares: Vec<String> = shares.iter().map(|x| format!("{x:?}")).collect();
            s.push_str(&format!("tier_shares = [{}]\n", shares.join(", ")));
        }
        if self.tier_order != TierOrder::Auto {
            s.push_str(&format!("tier_order = \"{}\"\n", self.tier_order.name()));
        }
        if let Some(groups) = &self.tier_classes {
            let groups: Vec<String> = groups.iter().map(|g| format!("{g:?}")).collect();
            s.push_str(&format!("tier_classes = [{}]\n", groups.join(", ")));
        }
        for (sel, r) in self.all_rules() {
            let header = match &sel {
                Selector::Op(op) => format!("ops.{op}"),
                Selector::Role(role) => format!("roles.{}", role.name()),
                Selector::Layer(l) => format!("layers.{}", layer_name(*l)),
                Selector::Name(g) => format!("names.{}", toml_string(g)),
            };
            s.push_str(&format!("\n[{header}]\ncoefficient = {:?}\n", r.coefficient));
            if r.mode_set {
                s.push_str(&format!("mode = \"{}\"\n", r.mode.name()));
            }
            match r.split {
                Split::FirstDim => s.push_str("subsequences = \"first-dim\"\n"),
                Split::Count(n) => s.push_str(&format!("subsequences = {n}\n")),
            }
            s.push_str(&format!("selection = \"{}\"\n", r.rank.name()));
            if let Some(roles) = &r.roles {
                let roles: Vec<String> = roles.iter().map(|x| toml_string(x)).collect();
                s.push_str(&format!("roles = [{}]\n", roles.join(", ")));
            }
        }
        s
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
