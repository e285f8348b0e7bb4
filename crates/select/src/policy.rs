//! Encryption policies: rules by operator type, by tensor role and by tensor name,
//! each a coefficient, a mode, a split and a selection rank.
//!
//! The TOML form is documented in `docs/policy.md`.

use std::collections::BTreeMap;

use onnx_protect_format::discover::{is_role_of, roles};
use onnx_protect_format::{DataType, Layers, Model, Origin, TensorRole, Weight, WeightKind, WeightUse};

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

    /// Whether a span is transformed as a whole (dp: a permutation of its elements), not
    /// byte by byte: a tensor in this mode is transformed in memory, whole, never streamed
    /// chunk by chunk; each span is one unit (spans may touch and are never merged); its
    /// elements are whole bytes and a span holds at least [`Mode::min_span_elements`] of them.
    pub fn whole_spans(self) -> bool {
        match self {
            Mode::Ctr | Mode::Fp => false,
            Mode::Dp => true,
        }
    }

    /// The fewest elements one span may hold in this mode: [`DP_MIN_ELEMENTS`](crate::DP_MIN_ELEMENTS)
    /// in `dp`, whose shorter permutations hide too little (one element permuted is no change
    /// at all); 1 in the modes that work byte by byte.
    pub fn min_span_elements(self) -> u64 {
        if self.whole_spans() {
            crate::DP_MIN_ELEMENTS
        } else {
            1
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
        String | Float8E8M0 | Float6E2M3 | Float6E3M2 => return None,
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

    /// Whether this rule, as the rule of operator type `op`, encrypts a weight in input
    /// role `role` of kind `kind`.
    pub fn covers_in(&self, op: &str, role: &str, kind: WeightKind) -> bool {
        match &self.roles {
            Some(r) => r.iter().any(|x| x == role),
            // A running variance must stay positive: flipping its sign bit (as the
            // format-preserving mode may) turns the layer's output into NaN. Inputs the
            // role table does not name are covered for operators without a table (Add, Mul, ...).
            None => match kind {
                WeightKind::Main | WeightKind::Bias | WeightKind::Norm => role != "input_var",
                WeightKind::Other => roles(op).is_empty(),
                WeightKind::Quant => false,
            },
        }
    }
}

/// What a rule applies to: an operator type, a tensor role, or tensor names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Selector {
    /// Weights consumed by this operator type (any ONNX operator type).
    Op(String),
    /// Weights with this role in the model (`role:NAME`).
    Role(TensorRole),
    /// Weights of the first or the last layer (`layer:first`, `layer:last`).
    Layer(Layers),
    /// Weights whose name matches this glob (`name:GLOB`; `*` any run of characters, `?` one).
    Name(String),
}

impl Selector {
    /// Parses `OP`, `role:NAME` or `name:GLOB`.
    pub fn parse(s: &str) -> Result<Selector, PolicyError> {
        if let Some(r) = s.strip_prefix("role:") {
            return TensorRole::parse(r).map(Selector::Role).ok_or_else(|| {
                let known: Vec<&str> = TensorRole::ALL.iter().map(|r| r.name()).collect();
                PolicyError::Invalid(format!("unknown tensor role '{r}' (known: {})", known.join(", ")))
            });
        }
        if let Some(l) = s.strip_prefix("layer:") {
            return layer_of(l).map(Selector::Layer);
        }
        if let Some(g) = s.strip_prefix("name:") {
            if g.is_empty() {
                return Err(PolicyError::Invalid(
                    "name: needs a pattern, e.g. name:pos_embed or 'name:blocks.*.ln1.*'".into(),
                ));
            }
            return Ok(Selector::Name(g.to_string()));
        }
        check_op(s)?;
        Ok(Selector::Op(s.to_string()))
    }

    /// The text form: `Conv`, `role:bias`, `name:pos_*`.
    pub fn text(&self) -> String {
        match self {
            Selector::Op(op) => op.clone(),
            Selector::Role(r) => format!("role:{}", r.name()),
            Selector::Layer(l) => format!("layer:{}", layer_name(*l)),
            Selector::Name(g) => format!("name:{g}"),
        }
    }
}

/// `first` or `last`.
pub fn layer_name(l: Layers) -> &'static str {
    match l {
        Layers::First => "first",
        Layers::Last => "last",
    }
}

fn layer_of(s: &str) -> Result<Layers, PolicyError> {
    match s {
        "first" => Ok(Layers::First),
        "last" => Ok(Layers::Last),
        _ => Err(PolicyError::Invalid(format!("unknown layer '{s}' (known: first, last)"))),
    }
}

/// Whether `name` matches `pattern`: `*` matches any run of characters (also none), `?`
/// exactly one, every other character itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0usize, 0usize);
    // Position after the last `*` seen, and the name position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi + 1, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The name a weight is matched by: the tensor's name, or for an unnamed `Constant`
/// value, the node's first output.
pub fn weight_name<'m>(model: &'m Model, w: &Weight) -> &'m str {
    let t = &model.tensors[w.tensor];
    match &t.origin {
        Origin::Attribute { node, .. } if t.name.is_empty() => {
            model.nodes[*node].outputs.first().map(String::as_str).unwrap_or("")
        }
        _ => &t.name,
    }
}

/// How specific a glob is: its literal characters (more first), then the text.
fn specificity(pattern: &str) -> (std::cmp::Reverse<usize>, &str) {
    (std::cmp::Reverse(pattern.chars().filter(|&c| c != '*' && c != '?').count()), pattern)
}

/// The rule a policy applies to one weight, and why.
#[derive(Debug, Clone)]
pub struct Applied<'a> {
    pub rule: &'a OpRule,
    /// The rule's selector: the operator type, `role:NAME` or `name:GLOB`.
    pub by: Selector,
    /// The use the weight is reported under: the covering use for an operator rule,
    /// else the weight's first use.
    pub via: &'a WeightUse,
}

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
    "SkipLayerNormalization",
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
        }
    }
}

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

/// A policy file or override that cannot be used, or a policy that cannot encrypt a
/// given model as asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("policy: {0}")]
    Toml(String),
    #[error("policy: {0}")]
    Invalid(String),
    /// The model has no weight to select.
    #[error(
        "policy: the model has no weights to encrypt: no operator reads a floating-point constant tensor or a \
         weight input (parameters kept in node attribute lists, as the ai.onnx.ml tree, linear and SVM operators \
         keep them, are not encrypted)"
    )]
    NoWeights,
    /// The policy selects `count` weights and none can be encrypted as it says (the first,
    /// `tensor`, for `reason`).
    #[error(
        "policy: the policy encrypts 0 bytes of this model: the {count} weight(s) it selects cannot be encrypted \
         so ('{tensor}': {reason}); choose another mode, or allow it explicitly"
    )]
    NothingEncryptable { count: usize, tensor: String, reason: String },
    /// The policy selects no byte of the model.
    #[error("policy: the policy encrypts 0 bytes of this model; raise a coefficient, or allow it explicitly")]
    NothingSelected,
    /// Access tiers with the `ctr` mode, here for `tensor` (the `op_type` operator's
    /// `role` input).
    #[error(
        "policy: access tiers need the fp or dp mode, but '{tensor}' ({op_type} {role}) would be encrypted with \
         ctr, which gives NaN outputs at every partial tier; use --mode '*=fp' or --mode '*=dp'"
    )]
    CtrWithTiers { tensor: String, op_type: String, role: String },
    /// `tensor` (`elements` elements) would be cut into `dp` spans of fewer than `min`.
    #[error(
        "policy: the dp mode needs subsequences of at least {min} elements, but '{tensor}' ({op_type} {role}, \
         {elements} elements) would be cut shorter (a shorter permutation hides too little); use fewer \
         subsequences, or another mode for it (for example --mode {op_type}=fp)"
    )]
    ShortPermutation { min: u64, tensor: String, op_type: String, role: String, elements: u64 },
    /// Secret positions asked for with access tiers.
    #[error("policy: secret positions are not available with access tiers")]
    SecretPositionsWithTiers,
    /// Secret positions asked for with `tensor` in the `ctr` mode.
    #[error(
        "policy: secret positions need a mode whose ciphertext looks like weights (fp or dp); '{tensor}' would be \
         ctr, whose values give the encrypted rows away"
    )]
    SecretPositionsWithCtr { tensor: String },
    /// A label lock asked for on a model that shares its data key with others.
    #[error(
        "policy: the outputs of a model that shares its data key with other models (a model folder) cannot be locked"
    )]
    LockSharedKey,
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
    if crate::onnx_ops::ONNX_OPS.binary_search(&op).is_err() && !KNOWN_OPS.contains(&op) {
        return Err(PolicyError::Invalid(format!(
            "unknown operator type '{op}' (an ONNX operator type such as Conv or Add; role:NAME for a tensor role, \
             name:GLOB for tensor names)"
        )));
    }
    Ok(())
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
        }
        if self.all_rules().iter().any(|(_, r)| matches!(r.rank, Rank::Sample(_))) {
            s.push_str(&format!(";seed={}", self.seed));
        }
        s
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_every_role_but_quant_whole_and_star_reaches_every_rule() {
        let p = Policy::default();
        assert!(p.rules.is_empty() && p.layer_rules.is_empty() && p.name_rules.is_empty());
        for role in TensorRole::ALL {
            match p.role_rules.get(&role) {
                Some(r) => assert_eq!(
                    (r.coefficient, r.mode, r.split, r.rank),
                    (1.0, Mode::Ctr, Split::FirstDim, Rank::Even),
                    "{role:?}"
                ),
                None => assert_eq!(role, TensorRole::Quant),
            }
        }
        // '*=0.5' gives every role half of its rows.
        let mut q = Policy::default();
        q.apply_override("coefficient", "*=0.5").unwrap();
        assert!(q.role_rules.values().all(|r| r.coefficient == 0.5));
    }

    #[test]
    fn a_toml_syntax_error_names_its_line_and_column() {
        let e = Policy::from_toml("version = 1\n[ops.Conv]\ncoefficient = = 0.1\n").unwrap_err().to_string();
        assert!(e.starts_with("policy: line 3, column 15: "), "{e}");
        let e = Policy::from_toml("version = 1\n[ops.Conv]\ncoefficient = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("line 3, column "), "{e}");
    }

    #[test]
    fn toml_overrides_one_operator() {
        let p = Policy::from_toml(
            "version = 1\n[ops.Conv]\ncoefficient = 0.1\nmode = \"ctr\"\nsubsequences = 8\nroles = [\"W\"]\n",
        )
        .unwrap();
        let c = p.rule_for("Conv").unwrap();
        assert_eq!((c.coefficient, c.mode, c.split), (0.1, Mode::Ctr, Split::Count(8)));
        // The built-in policy's other rules are kept: every role whole.
        assert_eq!(p.rule_for("MatMul"), None);
        assert_eq!(p.role_rules[&TensorRole::Weight].coefficient, DEFAULT_ROLE_COEFFICIENT);
        // Without inheriting, only the rules of the file.
        let q = Policy::from_toml(
            "version = 1
inherit_builtin = false
[ops.Conv]
coefficient = 0.1
",
        )
        .unwrap();
        assert_eq!((q.rules.len(), q.layer_rules.len(), q.role_rules.len()), (1, 0, 0));
        assert_eq!(q.rule_for("Conv").unwrap().coefficient, 0.1);
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
        let weight = |p: &Policy| p.mode_of(&p.role_rules[&TensorRole::Weight]);
        assert_eq!(weight(&p), DEFAULT_MODE);
        p.set_tiers(3).unwrap();
        assert_eq!(weight(&p), DEFAULT_TIERED_MODE);
        assert!(p.summary().contains("role:weight:1:fp:"), "{}", p.summary());
        assert!(p.summary().contains("role:norm:1:fp:"), "{}", p.summary());
        p.apply_override("mode", "Conv=ctr").unwrap();
        let conv = |p: &Policy| p.mode_of(p.rule_for("Conv").unwrap());
        assert_eq!(conv(&p), Mode::Ctr);
        assert_eq!(weight(&p), DEFAULT_TIERED_MODE);
        let f = Policy::from_toml("version = 1\ntiers = 2\n[defaults]\nmode = \"dp\"\n").unwrap();
        assert_eq!(weight(&f), Mode::Dp);
        let f = Policy::from_toml("version = 1\ntiers = 2\n[ops.Gemm]\nmode = \"ctr\"\n").unwrap();
        assert_eq!((weight(&f), f.mode_of(f.rule_for("Gemm").unwrap())), (Mode::Fp, Mode::Ctr));
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
