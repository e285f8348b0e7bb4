//! BatchNormalization re-estimation: the standard cheap repair of a damaged network
//! ("recalibrate BN after pruning"). With a few hundred unlabelled inputs, an attacker
//! recomputes every `BatchNormalization`'s running mean and variance from the
//! activations the (filled) model itself produces.
//!
//! Each layer gets the per-channel mean and population variance (over the samples and
//! every axis after the channel axis) of the input it sees in the repaired model, with
//! the layers before it already re-estimated: the statistics of one pass of the whole
//! calibration set in training mode. Only layers of the main graph are re-estimated.

use std::collections::HashSet;

use tract_onnx::pb;

use crate::engine::{Dim, External, Loaded};
use crate::error::{Result, RuntimeError};
use crate::npy::{Dtype, NpyArray};

/// Re-estimates every `BatchNormalization` of `proto`'s main graph from the model's
/// own activations on `calibration` (one array per model input, samples first).
/// Returns the number of layers re-estimated (0: the model has none).
///
/// When the calibration set fits the model's batch dimension, every layer is measured
/// in one run of the model with its layers in training mode
/// (`rewrite::batch_statistics`) on the whole set as one batch; otherwise one
/// layer at a time ([`reestimate_in_turn`]). Both give the same statistics.
pub fn reestimate(proto: &mut pb::ModelProto, external: &External, calibration: &[NpyArray]) -> Result<usize> {
    let mut probe = proto.clone();
    let stats = crate::rewrite::batch_statistics(&mut probe)?;
    if stats.is_empty() {
        return Ok(0);
    }
    let loaded = Loaded::from_proto(probe, external)?;
    let n = calibration.first().and_then(|a| a.shape.first().copied()).unwrap_or(0);
    let fits = loaded.inputs().iter().all(|i| !matches!(i.dims.first(), Some(Dim::Fixed(b)) if *b != n));
    if !fits {
        return reestimate_in_turn(proto, external, calibration);
    }
    let shapes: Vec<(Dtype, Vec<usize>)> = calibration.iter().map(|a| (a.dtype, a.shape.clone())).collect();
    let refs: Vec<&NpyArray> = calibration.iter().collect();
    let outputs = loaded.prepare_with(&shapes, false)?.run(&refs)?;
    let value = |name: &str| -> Result<Vec<f64>> {
        outputs
            .iter()
            .find(|(o, _)| o == name)
            .map(|(_, a)| a.to_f64())
            .ok_or_else(|| RuntimeError::Tract(format!("the batch statistic '{name}' was not computed")))
    };
    for s in &stats {
        let (mean, var) = (value(&s.mean)?, value(&s.var)?);
        set_statistics(proto, s.node, &mean, &var)?;
    }
    Ok(stats.len())
}

/// [`reestimate`] one layer at a time: the input of layer `i` is made a graph output,
/// the model runs on the calibration inputs in batches, and the per-channel statistics
/// of that input become layer `i`'s before layer `i + 1` is measured.
pub fn reestimate_in_turn(proto: &mut pb::ModelProto, external: &External, calibration: &[NpyArray]) -> Result<usize> {
    let Some(graph) = proto.graph.as_ref() else { return Ok(0) };
    let layers: Vec<usize> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type == "BatchNormalization" && (n.domain.is_empty() || n.domain == "ai.onnx"))
        .map(|(i, _)| i)
        .collect();
    for &i in &layers {
        let x = proto.graph.as_ref().and_then(|g| g.node[i].input.first().cloned()).unwrap_or_default();
        let mut probe = proto.clone();
        if let Some(g) = probe.graph.as_mut() {
            g.output.push(pb::ValueInfoProto { name: x.clone(), ..Default::default() });
        }
        let (mean, var) = channel_stats(probe, external, calibration, &x)?;
        set_statistics(proto, i, &mean, &var)?;
    }
    Ok(layers.len())
}

/// Gives layer `node` of the main graph new running statistics, as new initializers.
fn set_statistics(proto: &mut pb::ModelProto, node: usize, mean: &[f64], var: &[f64]) -> Result<()> {
    let g = proto.graph.as_mut().ok_or_else(|| RuntimeError::Input("the model has no graph".into()))?;
    let mut taken: HashSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
    taken.extend(g.node.iter().flat_map(|n| n.output.iter().chain(&n.input).cloned()));
    let n = g.node.get(node).ok_or_else(|| RuntimeError::Input(format!("no node #{node}")))?;
    if n.input.len() < 5 {
        return Err(RuntimeError::Input(format!("BatchNormalization '{}' has {} inputs", n.name, n.input.len())));
    }
    let base = if n.name.is_empty() { format!("bn{node}") } else { n.name.clone() };
    let dtype = g
        .initializer
        .iter()
        .find(|t| t.name == n.input[3])
        .map(|t| t.data_type)
        .unwrap_or(pb::tensor_proto::DataType::Float as i32);
    for (slot, values, what) in [(3, mean, "mean"), (4, var, "var")] {
        let mut name = format!("{base}.reestimated_{what}");
        while taken.contains(&name) {
            name.push('_');
        }
        taken.insert(name.clone());
        g.initializer.push(tensor(&name, dtype, values)?);
        g.node[node].input[slot] = name;
    }
    Ok(())
}

/// A 1-D tensor of `values` in the given ONNX element type (float, double or float16).
fn tensor(name: &str, dtype: i32, values: &[f64]) -> Result<pb::TensorProto> {
    use pb::tensor_proto::DataType as D;
    let raw: Vec<u8> = match dtype {
        x if x == D::Double as i32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        x if x == D::Float16 as i32 => values.iter().flat_map(|v| half::f16::from_f64(*v).to_le_bytes()).collect(),
        x if x == D::Float as i32 => values.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect(),
        other => {
            return Err(RuntimeError::Input(format!(
                "BatchNormalization statistics of element type {other} cannot be re-estimated"
            )))
        }
    };
    Ok(pb::TensorProto {
        name: name.to_string(),
        dims: vec![values.len() as i64],
        data_type: dtype,
        raw_data: raw,
        ..Default::default()
    })
}

/// Per-channel mean and population variance of value `x` (axis 1) over the calibration set.
fn channel_stats(
    probe: pb::ModelProto,
    external: &External,
    calibration: &[NpyArray],
    x: &str,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let loaded = Loaded::from_proto(probe, external)?;
    let (mut sum, mut sq, mut count): (Vec<f64>, Vec<f64>, u64) = (Vec::new(), Vec::new(), 0);
    crate::engine::run_batches(&loaded, calibration, false, |real, _, outputs| {
        let a = outputs
            .iter()
            .find(|(name, _)| name == x)
            .map(|(_, a)| a)
            .ok_or_else(|| RuntimeError::Tract(format!("the BatchNormalization input '{x}' was not computed")))?;
        if a.shape.len() < 2 {
            return Err(RuntimeError::Input(format!("BatchNormalization input '{x}' has shape {:?}", a.shape)));
        }
        let c = a.shape[1];
        let inner: usize = a.shape[2..].iter().product();
        if sum.is_empty() {
            (sum, sq) = (vec![0.0; c], vec![0.0; c]);
        }
        if sum.len() != c {
            return Err(RuntimeError::Input(format!("BatchNormalization input '{x}' changed its channel count")));
        }
        let v = a.to_f64();
        for row in v.chunks(c * inner.max(1)).take(real) {
            for (ch, block) in row.chunks(inner.max(1)).enumerate() {
                for &e in block {
                    sum[ch] += e;
                    sq[ch] += e * e;
                }
            }
        }
        count += (real * inner.max(1)) as u64;
        Ok(())
    })?;
    if count == 0 {
        return Err(RuntimeError::Input("no calibration samples".into()));
    }
    let n = count as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let var: Vec<f64> = sq.iter().zip(&mean).map(|(q, m)| (q / n - m * m).max(0.0)).collect();
    Ok((mean, var))
}
