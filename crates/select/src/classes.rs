//! Access tiers by class: the rows of a classifier's last layer, one per class, shared out
//! over the tiers so that the holder of tier `k` is served a growing subset of the classes
//! ([`TierOrder::Classes`](crate::TierOrder::Classes)).

use onnx_protect_format::model::GraphKind;
use onnx_protect_format::{Dim, Model, Tensor, TensorId, ValueType, Weight, WeightKind};

/// The last layer of a classifier: a weight whose first or last dimension indexes the classes
/// of the model's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassLayer {
    pub tensor: TensorId,
    pub classes: u64,
    pub axis: ClassAxis,
}

/// Which stored dimension of the class layer's weight indexes the classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassAxis {
    /// The first: each class is one contiguous row (`Gemm` with `transB = 1`, `Conv`).
    Rows,
    /// The last: each class is every `classes`-th element, one per row of the other
    /// dimensions (`MatMul`, `Gemm` with `transB = 0`: `[features, classes]`).
    Columns,
}

impl ClassLayer {
    /// The classes whose bytes lie in `span` of the layer's weight `t`, in order.
    pub fn classes_in(&self, t: &Tensor, (a, b): (u64, u64)) -> Vec<u64> {
        let c = self.classes.max(1);
        let (unit, wraps) = match self.axis {
            ClassAxis::Rows => (t.nbytes / c, false),
            ClassAxis::Columns => (t.data_type.bits() / 8, true),
        };
        if unit == 0 || a >= b {
            return Vec::new();
        }
        let (first, end) = (a / unit, b.div_ceil(unit));
        if !wraps {
            return (first..end.min(c)).collect();
        }
        if end - first >= c {
            return (0..c).collect();
        }
        let mut out: Vec<u64> = (first..end).map(|e| e % c).collect();
        out.sort_unstable();
        out
    }
}

/// The class layer of `model`, if it has one (every output whose shape is declared being
/// `[batch, classes]`): the kernel of a last `Gemm` or `Conv` with one row per class
/// (`gemm_or_conv_rows`), else the weight of the output layer the label lock
/// finds ([`onnx_protect_lock::find_output_layer`]: a `Gemm` or `MatMul` whose scores reach
/// the outputs through operators that keep each class's value its own) when its class axis is
/// the weight's first stored dimension or, for elements of whole bytes, its last.
pub fn class_layer(model: &Model, weights: &[Weight]) -> Option<ClassLayer> {
    gemm_or_conv_rows(model, weights).or_else(|| {
        let declared = declared_classes(model)?;
        let layer = onnx_protect_lock::find_output_layer(model, None).ok()?;
        if declared.is_some_and(|d| i64::try_from(layer.classes).ok() != Some(d)) {
            return None;
        }
        let w = layer.tensors.iter().find(|t| t.part == onnx_protect_lock::Part::Weight)?;
        let t = &model.tensors[w.tensor];
        let axis = match w.axis {
            0 => ClassAxis::Rows,
            a if a + 1 == t.dims.len() && t.data_type.bits() % 8 == 0 && t.data_type.bits() > 0 => ClassAxis::Columns,
            _ => return None,
        };
        let classes = u64::try_from(layer.classes).ok()?;
        weights.iter().any(|x| x.tensor == w.tensor).then_some(ClassLayer { tensor: w.tensor, classes, axis })
    })
}

/// The number of classes the main graph's outputs declare: `None` unless every output whose
/// shape is declared has rank 2 (`[batch, classes]`), and they agree on `classes`;
/// `Some(None)` when none declares it.
fn declared_classes(model: &Model) -> Option<Option<i64>> {
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
    Some(declared)
}

/// The class layer found without the lock's walk: every output of the main graph whose shape is
/// declared has rank 2 (`[batch, classes]`); the last layer holds exactly one weight in a main
/// role; that weight is the kernel of a `Gemm` (input `B`, stored `[classes, features]`, so
/// `transB = 1`) or a `Conv` (input `W`, `[classes, …]`), reached directly or through
/// (de)quantisation and casts; and the number of classes (the layer's one-dimensional bias, else
/// the outputs' declared last dimension) is its first dimension (for `Gemm`, and not its second,
/// which would make the rows features).
fn gemm_or_conv_rows(model: &Model, weights: &[Weight]) -> Option<ClassLayer> {
    let declared = declared_classes(model)?;
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
    (shaped && classes >= 2 && dims.first() == Some(&classes)).then_some(ClassLayer {
        tensor: w.tensor,
        classes,
        axis: ClassAxis::Rows,
    })
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
