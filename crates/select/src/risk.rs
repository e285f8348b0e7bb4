//! Model families on which leaving weights clear was measured not to hold against the
//! training attacks (docs/protection.md#training-attacks): an attacker who resets the
//! encrypted tensors and trains them (everything clear frozen), or fine-tunes everything,
//! on at most 10% of the zoo model's training split beat training the architecture from
//! scratch on the same data. `encrypt` warns when a policy leaves weight bytes clear on a
//! model of such a family, naming the costliest partial policy measured to fail there.

use std::collections::HashMap;

use onnx_protect_format::model::NodeId;
use onnx_protect_format::{Model, TensorRole, Weight};

/// A family of models, as far as the graph shows it (a heuristic: [`family`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Attention (a `MatMul` of two computed values, a `Softmax`) after a convolutional
    /// patch embedding: a vision transformer.
    VisionTransformer,
    /// Attention without a convolution: a transformer encoder.
    TransformerEncoder,
    /// A recurrent operator (`GRU`, `LSTM`, `RNN`).
    Recurrent,
    /// A residual `Add` whose branch holds a full (not depthwise) convolution with a kernel
    /// larger than 1: a ResNet.
    ResidualConvNet,
    /// A residual `Add` whose branch holds a depthwise convolution: a ConvMixer.
    ConvMixer,
    /// Convolutions, none of the above.
    ConvNet,
    /// Matrix products with constant weights (`Gemm`, `MatMul`) and none of the above.
    Mlp,
}

/// The costliest partial policy measured to fail on the zoo's model of a family: the
/// training attacks (docs/protection.md#training-attacks) beat training from scratch by
/// `gap` points with `share` percent of the weight bytes encrypted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Failure {
    pub model: &'static str,
    pub point: &'static str,
    pub share: f64,
    pub gap: f64,
}

impl Family {
    pub fn describe(self) -> &'static str {
        match self {
            Family::VisionTransformer => "a vision transformer (attention after a convolutional patch embedding)",
            Family::TransformerEncoder => "a transformer encoder (attention, no convolution)",
            Family::Recurrent => "a recurrent network (GRU, LSTM or RNN)",
            Family::ResidualConvNet => "a residual convolutional network (full convolutions inside residual branches)",
            Family::ConvMixer => "a ConvMixer (depthwise convolutions inside residual branches)",
            Family::ConvNet => "a convolutional network",
            Family::Mlp => "a multilayer perceptron",
        }
    }

    /// The costliest partial policy measured to fail on this family
    /// (`scripts/eval_relearn.py`; docs/protection.md#training-attacks).
    pub fn measured_failure(self) -> Failure {
        let f = |model, point, share, gap| Failure { model, point, share, gap };
        match self {
            Family::VisionTransformer => f("digits/vit", "weights", 95.0, 15.8),
            Family::TransformerEncoder => f("families/vowels-transformer", "first", 1.5, 4.4),
            Family::Recurrent => f("vowels/lstm", "first", 17.4, 3.2),
            Family::ResidualConvNet => f("families/digits-resnet", "last+first+small+0.5", 50.6, 3.3),
            Family::ConvMixer => f("osuleaf/convmixer", "last+first", 4.3, 2.8),
            Family::ConvNet => f("vowels/cnn", "weights", 99.5, 7.4),
            Family::Mlp => f("vowels/mlp", "weights", 99.6, 2.3),
        }
    }
}

/// Share of the weight bytes left clear, quantisation scales and zero points aside (the
/// built-in policy keeps them clear), below which no warning is given: every weight but the
/// biases (0.5% clear) failed on the zoo's vowels CNN.
pub const WARN_CLEAR_SHARE: f64 = 0.001;

/// The family of `model` among those of [`Family`], if any, from its operators and the
/// shapes of its weights.
pub fn family(model: &Model, weights: &[Weight]) -> Option<Family> {
    let mut producer: HashMap<&str, NodeId> = HashMap::new();
    let mut consumers: HashMap<&str, usize> = HashMap::new();
    for n in &model.nodes {
        for o in n.outputs.iter().filter(|o| !o.is_empty()) {
            producer.insert(o, n.id);
        }
        for i in n.inputs.iter().filter(|i| !i.is_empty()) {
            *consumers.entry(i).or_default() += 1;
        }
    }
    let computed = |name: &str| producer.contains_key(name);
    let is_op = |op: &str| model.nodes.iter().any(|n| n.is_onnx() && n.op_type == op);
    let attention = is_op("Softmax")
        && model
            .nodes
            .iter()
            .any(|n| n.op_type == "MatMul" && n.inputs.len() == 2 && n.inputs.iter().all(|i| computed(i)));
    let conv = is_op("Conv");
    if attention {
        return Some(if conv { Family::VisionTransformer } else { Family::TransformerEncoder });
    }
    if ["GRU", "LSTM", "RNN"].into_iter().any(is_op) {
        return Some(Family::Recurrent);
    }
    // Convolutions with a spatial kernel (input 1, [M, C/group, k...]): depthwise (one
    // input channel per group) or full (mixing channels and space).
    let spatial_conv = |depthwise: bool| -> Vec<NodeId> {
        weights
            .iter()
            .filter(|w| {
                let d = &model.tensors[w.tensor].dims;
                d.len() >= 3 && (d[1] == 1) == depthwise && d[2..].iter().product::<u64>() > 1
            })
            .flat_map(|w| w.uses.iter().filter(|u| u.op_type == "Conv" && u.input_index == 1).map(|u| u.node))
            .collect()
    };
    // Whether a two-input Add of computed values has a branch holding one of `convs`.
    let residual_over = |convs: &[NodeId]| {
        model.nodes.iter().filter(|n| n.op_type == "Add" && n.inputs.len() == 2).any(|add| {
            add.inputs.iter().all(|i| computed(i))
                && add.inputs.iter().any(|start| {
                    // Walk the branch back from the Add to where it forks (a value with more
                    // than one consumer), following each node's first computed input.
                    let mut cur = start.as_str();
                    for _ in 0..16 {
                        let Some(&id) = producer.get(cur) else { return false };
                        if convs.contains(&id) {
                            return true;
                        }
                        let Some(next) = model.nodes[id].inputs.iter().find(|i| computed(i)) else { return false };
                        if consumers.get(next.as_str()).copied().unwrap_or(0) > 1 {
                            return false;
                        }
                        cur = next;
                    }
                    false
                })
        })
    };
    if residual_over(&spatial_conv(false)) {
        return Some(Family::ResidualConvNet);
    }
    if residual_over(&spatial_conv(true)) {
        return Some(Family::ConvMixer);
    }
    if conv {
        return Some(Family::ConvNet);
    }
    let products = weights.iter().any(|w| w.uses.iter().any(|u| u.op_type == "Gemm" || u.op_type == "MatMul"));
    products.then_some(Family::Mlp)
}

/// The one-line warning for a policy that leaves `clear_bytes` of `weight_bytes` clear
/// (quantisation scales and zero points among them do not count) on
/// `model`, if it is of a [`Family`] (on each, a partial policy was measured not to hold).
pub fn relearning_warning(model: &Model, weights: &[Weight], clear_bytes: u64, weight_bytes: u64) -> Option<String> {
    let quant: u64 = weights
        .iter()
        .filter(|w| w.uses.iter().any(|u| u.tensor_role == TensorRole::Quant))
        .fold(0u64, |sum, w| sum.saturating_add(model.tensors[w.tensor].nbytes));
    let clear_bytes = clear_bytes.saturating_sub(quant);
    if weight_bytes == 0 || (clear_bytes as f64) < WARN_CLEAR_SHARE * weight_bytes as f64 {
        return None;
    }
    let f = family(model, weights)?;
    let m = f.measured_failure();
    Some(format!(
        "{:.1}% of the weight bytes are left clear on {}: on the zoo's {}, with {:.1}% encrypted ({}), the \
         training attacks (the encrypted tensors re-learnt from at most 10% of its training split, everything \
         clear frozen, or everything fine-tuned) beat training from scratch by {:.1} points, and a share that \
         holds on one model is no guarantee on another (docs/protection.md#training-attacks); the built-in policy \
         encrypts every weight; measure a policy with python3 -m onnx_protect.assess",
        100.0 * clear_bytes as f64 / weight_bytes as f64,
        f.describe(),
        m.model,
        m.share,
        m.point,
        m.gap,
    ))
}

/// `ai.onnx.ml` operators that keep learnt parameters in node attribute lists (coefficients,
/// intercepts, support vectors, tree thresholds and leaf values, offsets and scales, imputed
/// values, thresholds): the format encrypts tensors, so these stay clear.
const ATTRIBUTE_PARAMETERS: &[&str] = &[
    "LinearClassifier",
    "LinearRegressor",
    "SVMClassifier",
    "SVMRegressor",
    "TreeEnsembleClassifier",
    "TreeEnsembleRegressor",
    "TreeEnsemble",
    "Scaler",
    "Imputer",
    "Binarizer",
];

/// A warning naming the nodes (up to five) that keep learnt parameters in attribute lists,
/// which no policy encrypts; `None` when the model has none.
pub fn attribute_parameters_warning(model: &Model) -> Option<String> {
    let nodes: Vec<String> = model
        .nodes
        .iter()
        .filter(|n| n.domain == "ai.onnx.ml" && ATTRIBUTE_PARAMETERS.contains(&n.op_type.as_str()))
        .map(|n| n.label())
        .collect();
    let (first, more) = nodes.split_at(nodes.len().min(5));
    let more = if more.is_empty() { String::new() } else { format!(" and {} more", more.len()) };
    (!nodes.is_empty()).then(|| {
        format!(
            "{} ai.onnx.ml node{} keep{} learnt parameters in attribute lists, which are not encrypted (whoever \
             has the file has them): {}{more}",
            nodes.len(),
            if nodes.len() == 1 { "" } else { "s" },
            if nodes.len() == 1 { "s" } else { "" },
            first.join(", ")
        )
    })
}
