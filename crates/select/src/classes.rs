//! Access tiers by class: the rows of a classifier's last layer, one per class, shared out
//! over the tiers so that the holder of tier `k` is served a growing subset of the classes
//! ([`TierOrder::Classes`](crate::TierOrder::Classes)).

use onnx_protect_format::model::GraphKind;
use onnx_protect_format::{Dim, Model, TensorId, ValueType, Weight, WeightKind};

/// The last layer of a classifier: a weight whose first dimension indexes the classes of the
/// model's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassLayer {
    pub tensor: TensorId,
    pub classes: u64,
}

/// The class layer of `model`, if it has one: every output of the main graph whose shape is
/// declared has rank 2 (`[batch, classes]`); the last layer holds exactly one weight in a main
/// role; that weight is the kernel of a `Gemm` (input `B`, stored `[classes, features]`, so
/// `transB = 1`) or a `Conv` (input `W`, `[classes, …]`), reached directly or through
/// (de)quantisation and casts; and the number of classes (the layer's one-dimensional bias, else
/// the outputs' declared last dimension) is its first dimension (for `Gemm`, and not its second,
/// which would make the rows features).
pub fn class_layer(model: &Model, weights: &[Weight]) -> Option<ClassLayer> {
    let main = model.graphs.iter().find(|g| g.kind == GraphKind::Main)?;
    let mut declared = None;
    if main.output_types.is_empty() {
        return None;
    }
    for t in &main.output_types {
        let dims = match t {
            ValueType::Tensor { shape: Some(dims), .. } if dims.len() == 2 => dims,
            // Rank not declared: the layer's shape decides.
            ValueType::Tensor { shape: None, .. } | ValueType::Unknown => continue,
            _ => return None,
        };
        if let Dim::Value(c) = dims[1] {
            if declared.is_some_and(|d| d != c) {
                return None;
            }
            declared = Some(c);
        }
    }
    let mut last = weights.iter().filter(|w| w.last_layer && w.uses.iter().any(|u| u.kind == WeightKind::Main));
    let (w, None) = (last.next()?, last.next()) else { return None };
    let [u] = w.uses.as_slice() else { return None };
    let dims = &model.tensors[w.tensor].dims;
    // Nodes on the way that keep each row a row: (de)quantisation, casts.
    let keeps_rows = |n: &usize| {
        matches!(model.nodes[*n].op_type.as_str(), "DequantizeLinear" | "QuantizeLinear" | "Cast" | "Identity")
    };
    if u.input_index != 1 || !u.via.iter().all(keeps_rows) || !matches!(u.op_type.as_str(), "Gemm" | "Conv") {
        return None;
    }
    let node = &model.nodes[u.node];
    if !node.is_onnx() || model.graphs.get(node.graph).map(|g| g.kind != GraphKind::Main).unwrap_or(true) {
        return None;
    }
    let bias = weights
        .iter()
        .find(|b| b.uses.iter().any(|b| b.node == u.node && b.input_index == 2))
        .map(|b| &model.tensors[b.tensor])
        .filter(|t| t.dims.len() == 1);
    let classes = match (bias, declared) {
        (Some(b), Some(d)) if b.dims[0] as i64 != d => return None,
        (Some(b), _) => b.dims[0],
        (None, Some(d)) if d > 0 => d as u64,
        _ => return None,
    };
    let shaped = match u.op_type.as_str() {
        "Gemm" => dims.len() == 2 && dims[1] != classes,
        _ => dims.len() >= 3,
    };
    (shaped && classes >= 2 && dims.first() == Some(&classes)).then_some(ClassLayer { tensor: w.tensor, classes })
}

/// How many classes the holder of each tier `1..=tiers` is served: `m_k = round(1 + k·(C − 1)/N)`
/// below the top, `C` at the top (even steps from about one class's share, what a model that
/// always answers one class scores, to all of them); `None` unless every tier adds a class.
pub fn classes_per_tier(classes: u64, tiers: u32) -> Option<Vec<u64>> {
    let n = u64::from(tiers.max(1));
    let mut served: Vec<u64> =
        (1..n).map(|k| ((1.0 + (k * (classes - 1)) as f64 / n as f64) + 0.5).floor() as u64).collect();
    served.push(classes);
    let rising = served.first().is_some_and(|&m| m >= 1) && served.windows(2).all(|w| w[0] < w[1]);
    (rising && tiers > 1).then_some(served)
}

/// The tier of each of `classes` classes with `tiers` tiers: the groups asked for (tier `k` of
/// `groups[k − 1]`, every class not in them the top tier's), else [`classes_per_tier`]'s; `None`
/// when a group names a class the layer does not have, or with the counts, when a tier would
/// add none.
pub fn class_tiers(classes: u64, tiers: u32, groups: Option<&[Vec<u64>]>) -> Option<Vec<u32>> {
    let mut out = vec![tiers.max(1); usize::try_from(classes).ok()?];
    match groups {
        Some(groups) => {
            for (tier, g) in (1u32..).zip(groups) {
                for &c in g {
                    *out.get_mut(usize::try_from(c).ok()?)? = tier;
                }
            }
        }
        None => {
            let served = classes_per_tier(classes, tiers)?;
            for (c, t) in out.iter_mut().enumerate() {
                *t = served.iter().position(|&m| (c as u64) < m).map_or(tiers, |k| k as u32 + 1);
            }
        }
    }
    Some(out)
}
