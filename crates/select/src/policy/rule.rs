use onnx_protect_format::discover::roles;
use onnx_protect_format::{DataType, Layers, Model, Origin, TensorRole, Weight, WeightKind, WeightUse};

use super::error::PolicyError;
use super::{DEFAULT_COEFFICIENT, DEFAULT_MODE, KNOWN_OPS};
use crate::importance::Norm;

/// How an operator's weights are encrypted; what each mode does to the bytes is the
/// cipher's ([`onnx_protect_crypto::Mode`]).
pub use onnx_protect_crypto::Mode;

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

/// How a weight's element bytes are split into subsequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// One subsequence per index of the first dimension (rows, output channels).
    FirstDim,
    /// This many element-aligned, near-equal chunks.
    Count(u64),
}

/// The bits the format-preserving mode may change, per little-endian byte of one
/// element of type `dtype`; `None` for types it does not support
/// ([`onnx_protect_crypto::fp_mask`] by the type's code).
pub fn fp_mask(dtype: DataType) -> Option<&'static [u8]> {
    onnx_protect_crypto::fp_mask(dtype.to_i32())
}

/// The policy for one operator type.
#[derive(Debug, Clone, PartialEq)]
pub struct OpRule {
    /// Fraction of the weight bytes to encrypt, in [0, 1].
    pub coefficient: f64,
    /// The mode; when [`OpRule::mode_set`] is false this is the built-in default and
    /// [`Policy::mode_of`](super::Policy::mode_of) gives the mode actually used.
    pub mode: Mode,
    /// Whether `mode` was set by a policy file or an override. A rule that keeps the
    /// built-in default follows the tier count: [`DEFAULT_MODE`] untiered,
    /// [`DEFAULT_TIERED_MODE`](super::DEFAULT_TIERED_MODE) with access tiers.
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

pub(super) fn layer_of(s: &str) -> Result<Layers, PolicyError> {
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
pub(super) fn specificity(pattern: &str) -> (std::cmp::Reverse<usize>, &str) {
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

pub(super) fn check_op(op: &str) -> Result<(), PolicyError> {
    if crate::onnx_ops::ONNX_OPS.binary_search(&op).is_err() && !KNOWN_OPS.contains(&op) {
        return Err(PolicyError::Invalid(format!(
            "unknown operator type '{op}' (an ONNX operator type such as Conv or Add; role:NAME for a tensor role, \
             name:GLOB for tensor names)"
        )));
    }
    Ok(())
}
