//! The model-side transform: absorb a key-derived input transform into the
//! patch-embedding layer of a trained model, without retraining.
//!
//! A patch embedding is a 2-D `Conv` whose kernel equals its stride (`P×P`, no
//! padding, no dilation, one group), fed by the model input directly or through
//! per-channel affine normalisation (`Sub`/`Add`/`Mul`/`Div` by constants of one
//! value per channel). With block size `M = P` each output position of the Conv
//! sees exactly one block, so:
//!
//! * the **pixel shuffle** `v[p] = x[π[p]]` is undone by gathering the weight's
//!   input columns: `W'[o, p] = W[o, π[p]]`;
//! * the **neg/pos flip** `v[p] = lo + hi − x` is undone by negating column `p`
//!   and adding `(lo + hi)·W[o, π[p]]` to the bias (in general, with normalisation
//!   `z = a_c·x + b_c`, the columns are rescaled and the constant moves into the bias);
//! * **block scrambling** (block `b` of the input is plain block `σ[b]`) is undone
//!   for models whose position embedding is added right after the Conv (ViT):
//!   token `j` gets position embedding `σ[j]`. The layers after the position
//!   embedding must treat tokens symmetrically (attention, per-token MLPs, mean
//!   pooling), which is what a ViT does.
//!
//! FFX cannot be absorbed (it is not affine), and block scrambling cannot be
//! absorbed without a position embedding; both are refused.

use std::io::{BufWriter, Write};
use std::path::Path;

use onnx_protect_crypto::MasterKey;
use onnx_protect_format::write::{metadata_field, Content, Edit, Plan};
use onnx_protect_format::{DataType, Model, TensorData, TensorId};
use serde::{Deserialize, Serialize};

use crate::block::{KeyedTransform, TransformSpec, ValueRange};
use crate::error::{Result, TransformError};

mod graph;

use graph::{Affine, Graph};

/// The `metadata_props` key under which the transform's parameters are recorded.
pub const METADATA_KEY: &str = "onnx-protect/input-transform/v1";

/// Whether a metadata key is the manifest of an encrypted model: `onnx-protect/v`
/// followed by decimal digits (docs/format.md).
fn is_manifest_key(key: &str) -> bool {
    key.strip_prefix("onnx-protect/v").is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}

/// What to absorb, and where.
#[derive(Debug, Clone, Default)]
pub struct PatchOptions {
    pub spec: TransformSpec,
    /// The value range of the model input `[lo, hi]` (required for neg/pos flip).
    pub range: Option<ValueRange>,
    /// The name of the patch-embedding Conv node, if the model has several candidates.
    pub node: Option<String>,
}

impl PatchOptions {
    /// The checks that need no model: a valid spec, an affine transform (FFX cannot be
    /// absorbed), and the input range the neg/pos flip needs.
    pub fn validate(&self) -> Result<()> {
        self.spec.validate()?;
        if self.spec.ffx {
            return Err(TransformError::CannotAbsorb(
                "FFX is not affine, so no change of weights can undo it; train on FFX-transformed inputs instead"
                    .into(),
            ));
        }
        if self.spec.negpos && self.range.is_none() {
            return Err(TransformError::Spec(
                "the neg/pos flip needs the model input's value range (e.g. --range 0,1)".into(),
            ));
        }
        if let Some(r) = self.range {
            r.validate()?;
        }
        Ok(())
    }
}

/// The record stored as JSON under [`METADATA_KEY`]: what an input must go through.
/// It holds no secret (the key fingerprint is a one-way 8-byte identifier).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformRecord {
    /// Version of the key schedule and transform definitions (1).
    pub version: u32,
    /// Block size `M`.
    pub block: usize,
    /// Channels `C` of the input.
    pub channels: usize,
    /// The transforms, in the order they are applied.
    pub transforms: Vec<String>,
    /// Declared value range `[lo, hi]` (for neg/pos flip), if any.
    pub range: Option<[f64; 2]>,
    /// Memory layout the model's input uses.
    pub layout: String,
    /// The model input the transform applies to.
    pub input: String,
    /// Number of blocks per image (only with block scrambling).
    pub blocks: Option<usize>,
    /// `MasterKey::fingerprint` of the key, as 16 hex digits.
    pub key_fingerprint: String,
    /// The patch-embedding Conv node.
    pub patch_embedding: String,
    /// The position-embedding initializer that absorbed block scrambling, if any.
    pub position_embedding: Option<String>,
}

impl TransformRecord {
    /// The `transform-input` options that prepare an input for the model (without the key).
    pub fn command_hint(&self) -> String {
        let mut s = format!("onnx-protect transform-input --block {}", self.block);
        for t in &self.transforms {
            s.push_str(" --");
            s.push_str(t);
        }
        if let Some([lo, hi]) = self.range {
            s.push_str(&format!(" --range {lo},{hi}"));
        }
        s.push_str(&format!(" --layout {} --key-file KEY IN OUT", self.layout));
        s
    }

    /// Parses the record of a transformed model, if it has one.
    pub fn from_model(model: &Model) -> Result<Option<TransformRecord>> {
        match model.metadata_value(METADATA_KEY) {
            None => Ok(None),
            Some(e) => serde_json::from_str(&e.value)
                .map(Some)
                .map_err(|err| TransformError::State(format!("metadata '{METADATA_KEY}' is not valid: {err}"))),
        }
    }
}

/// What [`encrypt_patch_embedding`] changed.
#[derive(Debug, Clone, Serialize)]
pub struct PatchReport {
    /// The record written to the model.
    pub record: TransformRecord,
    /// The weight whose input columns were permuted/negated.
    pub weight: String,
    /// The bias that absorbed the constants, if any.
    pub bias: Option<String>,
    /// Whether the bias was added to the model (the Conv had none).
    pub bias_added: bool,
    /// The normalisation nodes between the input and the Conv.
    pub normalisation: Vec<String>,
}

/// Rewrites `model` so that it works on inputs transformed with `master` and
/// `opts.spec`, and writes the result atomically to `output`.
pub fn encrypt_patch_embedding(
    model: &Model,
    master: &MasterKey,
    opts: &PatchOptions,
    output: &Path,
) -> Result<PatchReport> {
    let (plan, report) = plan_patch_embedding(model, master, opts)?;
    let src = model.bytes();
    crate::io::write_atomic(output, |f| {
        let mut w = BufWriter::new(f);
        plan.write(src, &mut w, &mut |_, _, _| Ok(())).map_err(std::io::Error::other)?;
        w.flush()
    })?;
    Ok(report)
}

/// The request's own checks ([`PatchOptions::validate`]) and a model that carries
/// neither a transform nor encrypted weights.
fn check_patch_request(model: &Model, opts: &PatchOptions) -> Result<Option<ValueRange>> {
    opts.validate()?;
    if model.metadata_value(METADATA_KEY).is_some() {
        return Err(TransformError::State(format!(
            "the model already carries an input transform ('{METADATA_KEY}'); start from the original model"
        )));
    }
    if model.metadata.iter().any(|m| is_manifest_key(&m.key)) {
        return Err(TransformError::State(
            "the model's weights are encrypted by onnx-protect; decrypt it first".into(),
        ));
    }
    Ok(opts.range)
}

/// The patch-embedding weight `w` ([o, c, m, m]) rewritten so that, on transformed
/// inputs, it computes what `w` computed on the original ones: each column moves to its
/// shuffled place, is rescaled by the normalisation's per-channel scale `a` and negated
/// where the flip mask flips. Also returns the per-output-channel bias change that
/// absorbs the normalisation's offset `b` and the flip's `lo + hi` (`lohi`).
fn absorb(
    w: &[f32],
    affine: &Affine,
    kt: &KeyedTransform,
    (o_ch, c_ch, m): (usize, usize, usize),
    lohi: f64,
) -> (Vec<f32>, Vec<f64>) {
    let l = m * m * c_ch;
    let (a, b) = (&affine.a, &affine.b);
    let chan = |p: usize| p % c_ch;
    let widx = |o: usize, p: usize| {
        let (i, j, c) = (p / (m * c_ch), (p / c_ch) % m, p % c_ch);
        ((o * c_ch + c) * m + i) * m + j
    };
    let mut w_new = vec![0f32; w.len()];
    let mut delta = vec![0f64; o_ch];
    for o in 0..o_ch {
        let (mut before, mut after) = (0f64, 0f64);
        for p in 0..l {
            let q = kt.shuffle().map_or(p, |s| s[p] as usize);
            let flipped = kt.flip_mask().is_some_and(|f| f[p] == 1);
            let s = if flipped { -1.0 } else { 1.0 };
            let t = if flipped { lohi } else { 0.0 };
            let wq = f64::from(w[widx(o, q)]);
            let wp = (wq * a[chan(q)] / (a[chan(p)] * s)) as f32;
            w_new[widx(o, p)] = wp;
            before += wq * b[chan(q)];
            after += f64::from(wp) * (a[chan(p)] * t + b[chan(p)]);
        }
        delta[o] = before - after;
    }
    (w_new, delta)
}

/// The position embedding `v` (`tokens` × `d`, token-major or not) with token `j` taking
/// the row of token `sigma[j]`.
fn reorder_tokens(v: &[f32], sigma: &[u32], tokens: usize, d: usize, token_major: bool) -> Vec<f32> {
    let mut nv = vec![0f32; v.len()];
    for j in 0..tokens {
        let src = sigma[j] as usize;
        for k in 0..d {
            if token_major {
                nv[j * d + k] = v[src * d + k];
            } else {
                nv[k * tokens + j] = v[k * tokens + src];
            }
        }
    }
    nv
}

/// Computes the edit plan of [`encrypt_patch_embedding`] without writing anything.
pub fn plan_patch_embedding(model: &Model, master: &MasterKey, opts: &PatchOptions) -> Result<(Plan, PatchReport)> {
    let spec = opts.spec;
    let range = check_patch_request(model, opts)?;

    let g = Graph::new(model)?;
    let pe = g.find_patch_embedding(spec.block, opts.node.as_deref())?;
    let m = spec.block;
    let wt = &model.tensors[pe.weight];
    let (o_ch, c_ch) = (wt.dims[0] as usize, wt.dims[1] as usize);
    let w = read_f32(model, pe.weight)?;
    let bias = match pe.bias {
        Some(b) => Some(read_f32(model, b)?),
        None => None,
    };

    // Position embedding (only needed, and only looked for, with block scrambling).
    let pos = if spec.scramble_blocks { Some(g.find_position_embedding(&pe, o_ch)?) } else { None };
    let blocks = pos.as_ref().map_or(0, |p| p.tokens);
    let kt = KeyedTransform::derive(master, &spec, c_ch, blocks)?;

    let (w_new, delta) = absorb(&w, &pe.affine, &kt, (o_ch, c_ch, m), range.map_or(0.0, |r| r.lo + r.hi));
    let needs_bias = delta.iter().any(|&d| d != 0.0);

    let mut edits = Vec::new();
    edits.extend(tensor_edits(model, pe.weight, &f32_bytes(&w_new))?);
    let mut bias_name = pe.bias.map(|t| model.tensors[t].name.clone());
    let mut bias_added = false;
    match (&bias, pe.bias) {
        (Some(bv), Some(bid)) if needs_bias => {
            let nb: Vec<f32> = bv.iter().zip(&delta).map(|(&x, &d)| (f64::from(x) + d) as f32).collect();
            edits.extend(tensor_edits(model, bid, &f32_bytes(&nb))?);
        }
        (Some(_), Some(_)) => {}
        _ if needs_bias => {
            let name = g.fresh_name(&format!("{}.onnx_protect_bias", wt.name));
            let nb: Vec<f32> = delta.iter().map(|&d| d as f32).collect();
            edits.extend(g.add_bias_edits(model, pe.node, &name, &nb)?);
            bias_name = Some(name);
            bias_added = true;
        }
        _ => {}
    }
    if let (Some(p), Some(sigma)) = (&pos, kt.block_order()) {
        let nv = reorder_tokens(&read_f32(model, p.tensor)?, sigma, p.tokens, o_ch, p.token_major);
        edits.extend(tensor_edits(model, p.tensor, &f32_bytes(&nv))?);
    }

    let record = TransformRecord {
        version: 1,
        block: m,
        channels: c_ch,
        transforms: spec.names().into_iter().map(String::from).collect(),
        range: range.map(|r| [r.lo, r.hi]),
        layout: "nchw".into(),
        input: pe.input.clone(),
        blocks: pos.as_ref().map(|p| p.tokens),
        key_fingerprint: hex::encode(master.fingerprint()),
        patch_embedding: model.nodes[pe.node].name.clone(),
        position_embedding: pos.as_ref().map(|p| model.tensors[p.tensor].name.clone()),
    };
    let json = serde_json::to_string(&record).map_err(|e| TransformError::State(e.to_string()))?;
    let plan = Plan::new(model.bytes().len() as u64, edits, metadata_field(METADATA_KEY, &json))?;
    let report = PatchReport {
        record,
        weight: wt.name.clone(),
        bias: bias_name,
        bias_added,
        normalisation: pe.affine.nodes.iter().map(|&n| model.nodes[n].label()).collect(),
    };
    Ok((plan, report))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The values of a FLOAT tensor.
fn read_f32(model: &Model, id: TensorId) -> Result<Vec<f32>> {
    let t = &model.tensors[id];
    if t.data_type != DataType::Float {
        return Err(TransformError::Unsupported(format!("tensor '{}' is {}, not FLOAT", t.name, t.data_type)));
    }
    let bytes = model.tensor_bytes(id)?;
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Same-length edits that replace a tensor's element bytes with `new` (raw layout).
fn tensor_edits(model: &Model, id: TensorId, new: &[u8]) -> Result<Vec<Edit>> {
    let t = &model.tensors[id];
    if new.len() as u64 != t.nbytes {
        return Err(TransformError::Unsupported(format!("tensor '{}': size mismatch", t.name)));
    }
    match &t.data {
        TensorData::Raw { range } => Ok(vec![Edit {
            range: range.clone(),
            content: Content::Bytes(new.to_vec()),
            ancestors: t.ancestors.clone(),
        }]),
        TensorData::Fixed { segments, .. } => {
            let mut at = 0usize;
            let mut v = Vec::new();
            for s in segments {
                let n = (s.end - s.start) as usize;
                v.push(Edit {
                    range: s.clone(),
                    content: Content::Bytes(new[at..at + n].to_vec()),
                    ancestors: t.ancestors.clone(),
                });
                at += n;
            }
            Ok(v)
        }
        TensorData::External { .. } => Err(TransformError::Unsupported(format!(
            "tensor '{}' is stored in external data; this command edits weights inside the model file only",
            t.name
        ))),
        other => Err(TransformError::Unsupported(format!(
            "tensor '{}' is stored as {}, which this command cannot edit",
            t.name,
            other.storage_name()
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn command_hint_lists_the_options() {
        let r = TransformRecord {
            version: 1,
            block: 2,
            channels: 1,
            transforms: vec!["shuffle".into(), "negpos".into()],
            range: Some([0.0, 1.0]),
            layout: "nchw".into(),
            input: "input".into(),
            blocks: None,
            key_fingerprint: "00".into(),
            patch_embedding: "pe".into(),
            position_embedding: None,
        };
        assert_eq!(
            r.command_hint(),
            "onnx-protect transform-input --block 2 --shuffle --negpos --range 0,1 --layout nchw --key-file KEY IN OUT"
        );
    }
}
