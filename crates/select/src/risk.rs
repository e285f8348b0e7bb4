//! Model families on which leaving weights clear was measured not to hold against the
//! re-learning attack (docs/protection.md#training-attacks): an attacker who keeps every
//! clear weight frozen and trains only the encrypted tensors on a few hundred labelled
//! examples beat training from scratch by 17 points on a ViT and 9 on a ResNet with the
//! first and last layers encrypted. `encrypt` warns when a policy leaves weight bytes
//! clear on a model of such a family.

use std::collections::HashMap;

use onnx_protect_format::model::NodeId;
use onnx_protect_format::{Model, Weight};

/// A family of models where a partial policy was measured not to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Attention (a `MatMul` of two computed values, a `Softmax`) after a convolutional
    /// patch embedding: a vision transformer.
    VisionTransformer,
    /// A residual `Add` whose branch holds a full (not depthwise) convolution with a kernel
    /// larger than 1: a ResNet.
    ResidualConvNet,
}

impl Family {
    pub fn describe(self) -> &'static str {
        match self {
            Family::VisionTransformer => "a vision transformer (attention after a convolutional patch embedding)",
            Family::ResidualConvNet => "a residual convolutional network (full convolutions inside residual branches)",
        }
    }
}

/// Share of the weight bytes left clear below which no warning is given (quantisation
/// scales and zero points, which the built-in policy keeps clear, are far smaller).
pub const WARN_CLEAR_SHARE: f64 = 0.01;

/// The family of `model` among those of [`Family`], if any.
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
    if attention && is_op("Conv") {
        return Some(Family::VisionTransformer);
    }
    // Convolutions whose kernel (input 1, [M, C/group, k...]) mixes channels and space.
    let full_conv: Vec<NodeId> = weights
        .iter()
        .filter(|w| {
            let d = &model.tensors[w.tensor].dims;
            d.len() >= 3 && d[1] > 1 && d[2..].iter().product::<u64>() > 1
        })
        .flat_map(|w| w.uses.iter().filter(|u| u.op_type == "Conv" && u.input_index == 1).map(|u| u.node))
        .collect();
    let residual = model.nodes.iter().filter(|n| n.op_type == "Add" && n.inputs.len() == 2).any(|add| {
        add.inputs.iter().all(|i| computed(i))
            && add.inputs.iter().any(|start| {
                // Walk the branch back from the Add to where it forks (a value with more
                // than one consumer), following each node's first computed input.
                let mut cur = start.as_str();
                for _ in 0..16 {
                    let Some(&id) = producer.get(cur) else { return false };
                    if full_conv.contains(&id) {
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
    });
    residual.then_some(Family::ResidualConvNet)
}

/// The one-line warning for a policy that leaves `clear_bytes` of `weight_bytes` clear on
/// `model`, if its family is one where that was measured not to hold.
pub fn relearning_warning(model: &Model, weights: &[Weight], clear_bytes: u64, weight_bytes: u64) -> Option<String> {
    if weight_bytes == 0 || (clear_bytes as f64) < WARN_CLEAR_SHARE * weight_bytes as f64 {
        return None;
    }
    let f = family(model, weights)?;
    Some(format!(
        "{:.1}% of the weight bytes are left clear on {}: on such models re-learning the encrypted tensors from a \
         few hundred labelled examples, everything clear frozen, beat training from scratch \
         (docs/protection.md#training-attacks); the built-in policy encrypts every weight; measure a policy with \
         python3 -m onnx_protect.assess",
        100.0 * clear_bytes as f64 / weight_bytes as f64,
        f.describe()
    ))
}
