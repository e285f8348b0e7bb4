use tract_onnx::pb;

use super::emit::{parts, Emit};
use super::ops::normalise_per_channel;
use super::Ctx;
use crate::error::Result;

/// One `BatchNormalization` in its training-mode form (see [`batch_statistics`]).
pub(crate) struct BatchStatistics {
    /// Index of the layer in the main graph's node list before the rewrite.
    pub node: usize,
    /// Names of the values holding the batch's per-channel mean and variance, `[1, C, 1]`.
    pub mean: String,
    pub var: String,
}

/// Replaces every `BatchNormalization` of the main graph by its training-mode form,
/// which normalises with the mean and (population) variance of the batch it is given
/// per channel (over the samples and every axis after the channel axis) instead of its
/// running statistics, and makes those statistics graph outputs. Run on one batch of
/// calibration inputs, the outputs are the statistics each layer would be given by
/// re-estimating the layers one after the other in graph order.
pub(crate) fn batch_statistics(model: &mut pb::ModelProto) -> Result<Vec<BatchStatistics>> {
    let mut ctx = Ctx::of(model);
    let Some(g) = model.graph.as_mut() else { return Ok(Vec::new()) };
    let nodes = std::mem::take(&mut g.node);
    let mut out = Vec::with_capacity(nodes.len());
    let mut found = Vec::new();
    for (i, n) in nodes.into_iter().enumerate() {
        let standard = n.domain.is_empty() || n.domain == "ai.onnx";
        if !(standard && n.op_type == "BatchNormalization") {
            out.push(n);
            continue;
        }
        let (label, ins, y) = parts(&n, 5, &["epsilon", "momentum", "training_mode", "spatial"])?;
        let mut e = Emit { ctx: &mut ctx, base: label, nodes: Vec::new() };
        let (mean, var) = normalise_per_channel(&mut e, &n, &ins, y, &[0, 2]);
        out.extend(e.nodes);
        found.push(BatchStatistics { node: i, mean, var });
    }
    g.node = out;
    for s in &found {
        for name in [&s.mean, &s.var] {
            g.output.push(pb::ValueInfoProto { name: name.clone(), ..Default::default() });
        }
    }
    Ok(found)
}
