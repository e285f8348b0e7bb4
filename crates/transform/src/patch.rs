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

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use onnx_protect_crypto::MasterKey;
use onnx_protect_format::model::{Container, GraphKind, NodeId};
use onnx_protect_format::wire::{self, FieldReader, WireType};
use onnx_protect_format::write::{metadata_field, Content, Edit, Plan};
use onnx_protect_format::{DataType, Model, Origin, TensorData, TensorId};
use serde::{Deserialize, Serialize};

use crate::block::{KeyedTransform, TransformSpec, ValueRange};
use crate::error::{Result, TransformError};

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

/// A per-channel affine map `z = a[c]·x + b[c]` between the model input and the Conv.
#[derive(Debug, Clone)]
struct Affine {
    a: Vec<f64>,
    b: Vec<f64>,
    /// The nodes that make it, from the input to the Conv.
    nodes: Vec<NodeId>,
}

/// The patch-embedding layer that was found.
#[derive(Debug)]
struct PatchEmbedding {
    node: NodeId,
    input: String,
    weight: TensorId,
    bias: Option<TensorId>,
    affine: Affine,
}

/// A position embedding added after the patch embedding.
#[derive(Debug)]
struct PositionEmbedding {
    tensor: TensorId,
    tokens: usize,
    /// `[T, D]` (token-major) or `[D, T]` / `[D, h, w]` (channel-major).
    token_major: bool,
}

/// Conv attributes read from the node's bytes.
#[derive(Debug, Default)]
struct ConvAttrs {
    kernel_shape: Option<Vec<i64>>,
    strides: Option<Vec<i64>>,
    pads: Option<Vec<i64>>,
    dilations: Option<Vec<i64>>,
    group: Option<i64>,
    auto_pad: Option<String>,
}

/// Name lookups over the main graph.
struct Graph<'m> {
    model: &'m Model,
    main: usize,
    inits: HashMap<&'m str, TensorId>,
    producer: HashMap<&'m str, NodeId>,
    /// Every use of a name by any node of any graph (conservative across scopes).
    consumers: HashMap<&'m str, Vec<(NodeId, usize)>>,
    outputs: Vec<&'m str>,
    inputs: Vec<&'m str>,
}

fn fmt_ints(v: &Option<Vec<i64>>) -> String {
    v.as_ref().map_or("default".into(), |v| format!("{v:?}"))
}

impl<'m> Graph<'m> {
    fn new(model: &'m Model) -> Result<Graph<'m>> {
        let main = model
            .graphs
            .iter()
            .position(|g| g.kind == GraphKind::Main)
            .ok_or_else(|| TransformError::Unsupported("the model has no main graph".into()))?;
        let gr = &model.graphs[main];
        let mut inits = HashMap::new();
        for &t in &gr.initializers {
            inits.insert(model.tensors[t].name.as_str(), t);
        }
        let mut producer = HashMap::new();
        for &n in &gr.nodes {
            for o in &model.nodes[n].outputs {
                producer.insert(o.as_str(), n);
            }
        }
        let mut consumers: HashMap<&str, Vec<(NodeId, usize)>> = HashMap::new();
        for node in &model.nodes {
            for (i, name) in node.inputs.iter().enumerate() {
                if !name.is_empty() {
                    consumers.entry(name.as_str()).or_default().push((node.id, i));
                }
            }
        }
        let outputs = gr.outputs.iter().map(String::as_str).collect();
        let inputs = gr.inputs.iter().map(String::as_str).filter(|n| !inits.contains_key(n)).collect();
        Ok(Graph { model, main, inits, producer, consumers, outputs, inputs })
    }

    fn uses(&self, name: &str) -> usize {
        self.consumers.get(name).map_or(0, Vec::len) + self.outputs.iter().filter(|o| **o == name).count()
    }

    /// A name not used anywhere in the model.
    fn fresh_name(&self, base: &str) -> String {
        let taken = |n: &str| {
            self.model.tensors.iter().any(|t| t.name == n)
                || self.model.nodes.iter().any(|x| x.outputs.iter().any(|o| o == n) || x.inputs.iter().any(|i| i == n))
                || self.model.graphs.iter().any(|g| g.inputs.iter().any(|i| i == n))
        };
        let mut name = base.to_string();
        let mut k = 1;
        while taken(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }

    /// A FLOAT constant of the main graph (initializer or `Constant` node output).
    fn constant(&self, name: &str) -> Option<TensorId> {
        if let Some(&t) = self.inits.get(name) {
            return Some(t);
        }
        let n = &self.model.nodes[*self.producer.get(name)?];
        if n.op_type != "Constant" || !n.is_onnx() {
            return None;
        }
        n.attributes.iter().find(|a| a.name == "value").and_then(|a| a.tensors.first().copied())
    }

    /// Per-channel values of a constant that broadcasts over NCHW by channel
    /// (a scalar, or `C` values shaped `[C,1,1]` / `[1,C,1,1]`).
    fn per_channel(&self, t: TensorId, channels: usize) -> Option<Vec<f64>> {
        let tensor = &self.model.tensors[t];
        if tensor.data_type != DataType::Float
            || !matches!(tensor.origin, Origin::Initializer | Origin::Attribute { .. })
        {
            return None;
        }
        let v = read_f32(self.model, t).ok()?;
        if v.len() == 1 {
            return Some(vec![f64::from(v[0]); channels]);
        }
        let dims: Vec<u64> = tensor.dims.iter().copied().skip_while(|&d| d == 1).collect();
        if v.len() == channels && (dims.len() == 3 && dims[1] == 1 && dims[2] == 1 || channels == 1) {
            return Some(v.iter().map(|&x| f64::from(x)).collect());
        }
        None
    }

    /// Follows `name` up through per-channel affine nodes to a model input.
    /// Returns the input name and the affine map, or why it is not one.
    fn trace_input(&self, name: &str, channels: usize) -> std::result::Result<(String, Affine), String> {
        let mut cur = name.to_string();
        let mut steps: Vec<(NodeId, &str, bool, Vec<f64>)> = Vec::new();
        for _ in 0..16 {
            if self.inputs.contains(&cur.as_str()) {
                let mut af = Affine { a: vec![1.0; channels], b: vec![0.0; channels], nodes: Vec::new() };
                for (n, op, const_first, k) in steps.into_iter().rev() {
                    for ((a, b), &kc) in af.a.iter_mut().zip(af.b.iter_mut()).zip(&k) {
                        (*a, *b) = match (op, const_first) {
                            ("Add", _) => (*a, *b + kc),
                            ("Sub", false) => (*a, *b - kc),
                            ("Sub", true) => (-*a, kc - *b),
                            ("Mul", _) => (*a * kc, *b * kc),
                            _ => (*a / kc, *b / kc), // Div by a constant
                        };
                    }
                    af.nodes.push(n);
                }
                if af.a.iter().chain(&af.b).any(|v| !v.is_finite()) || af.a.contains(&0.0) {
                    return Err("the normalisation before it is degenerate (zero or non-finite scale)".into());
                }
                return Ok((cur, af));
            }
            let Some(&nid) = self.producer.get(cur.as_str()) else {
                return Err(format!("its input '{cur}' is not a model input"));
            };
            let n = &self.model.nodes[nid];
            let op = n.op_type.as_str();
            if !n.is_onnx() || !matches!(op, "Add" | "Sub" | "Mul" | "Div") || n.inputs.len() != 2 {
                return Err(format!("its input comes from {}, not from the model input", n.label()));
            }
            let (k0, k1) = (self.constant(&n.inputs[0]), self.constant(&n.inputs[1]));
            let (k, const_first, next) = match (k0, k1) {
                (None, Some(k)) => (k, false, &n.inputs[0]),
                (Some(k), None) if op != "Div" => (k, true, &n.inputs[1]),
                _ => return Err(format!("{} is not a per-channel normalisation of the input", n.label())),
            };
            let Some(vals) = self.per_channel(k, channels) else {
                return Err(format!("{} does not use one constant per channel", n.label()));
            };
            steps.push((nid, op, const_first, vals));
            cur = next.clone();
        }
        Err("the chain from the input is too long".into())
    }

    /// Finds the Conv that is the patch embedding for block size `m`.
    fn find_patch_embedding(&self, m: usize, wanted: Option<&str>) -> Result<PatchEmbedding> {
        let model = self.model;
        let mut reasons = Vec::new();
        let mut found = Vec::new();
        let convs: Vec<NodeId> = model.graphs[self.main]
            .nodes
            .iter()
            .copied()
            .filter(|&n| model.nodes[n].op_type == "Conv" && model.nodes[n].is_onnx())
            .filter(|&n| wanted.is_none_or(|w| model.nodes[n].name == w))
            .collect();
        if let Some(w) = wanted {
            if convs.is_empty() {
                return Err(TransformError::NoPatchEmbedding(format!("there is no Conv node named '{w}'")));
            }
        }
        for nid in convs {
            let node = &model.nodes[nid];
            match self.check_conv(nid, m) {
                Ok(pe) => found.push(pe),
                Err(Reject::NotFromInput(why)) => {
                    if wanted.is_some() {
                        reasons.push(format!("{}: {why}", node.label()));
                    }
                }
                Err(Reject::Bad(why)) => reasons.push(format!("{}: {why}", node.label())),
                Err(Reject::Hard(e)) => return Err(e),
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 if reasons.is_empty() => Err(TransformError::NoPatchEmbedding(
                "no Conv reads the model input (directly or through per-channel normalisation)".into(),
            )),
            0 => Err(TransformError::NoPatchEmbedding(reasons.join("; "))),
            _ => Err(TransformError::NoPatchEmbedding(format!(
                "several Convs qualify ({}); choose one with --node",
                found.iter().map(|p| model.nodes[p.node].label()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    fn check_conv(&self, nid: NodeId, m: usize) -> std::result::Result<PatchEmbedding, Reject> {
        let model = self.model;
        let node = &model.nodes[nid];
        let x = node.inputs.first().filter(|s| !s.is_empty()).ok_or(Reject::Bad("no data input".into()))?;
        let wname = node.inputs.get(1).filter(|s| !s.is_empty()).ok_or(Reject::Bad("no weight input".into()))?;
        let Some(&w) = self.inits.get(wname.as_str()) else {
            return Err(Reject::Bad(format!("its weight '{wname}' is not an initializer of the main graph")));
        };
        let wt = &model.tensors[w];
        if wt.dims.len() != 4 {
            return Err(Reject::Bad(format!("its weight has shape {:?}, not a 2-D convolution's", wt.dims)));
        }
        let channels = wt.dims[1] as usize;
        let (input, affine) = self.trace_input(x, channels).map_err(Reject::NotFromInput)?;
        let attrs = self.conv_attrs(nid).map_err(Reject::Hard)?;
        let (kh, kw) = (wt.dims[2] as i64, wt.dims[3] as i64);
        let strides = attrs.strides.clone().unwrap_or_else(|| vec![1, 1]);
        let zero_pads = attrs.pads.as_ref().is_none_or(|p| p.iter().all(|&v| v == 0));
        let unit_dil = attrs.dilations.as_ref().is_none_or(|d| d.iter().all(|&v| v == 1));
        let auto_ok = attrs.auto_pad.as_deref().is_none_or(|s| s == "NOTSET" || s == "VALID" || s.is_empty());
        let kernel_ok = attrs.kernel_shape.as_ref().is_none_or(|k| k == &vec![kh, kw]);
        if !(kh == kw && strides == vec![kh, kw] && zero_pads && unit_dil && auto_ok && kernel_ok) {
            return Err(Reject::Bad(format!(
                "reads the input but is not a patch embedding (kernel {kh}×{kw}, strides {}, pads {}, dilations {}, \
                 auto_pad {}); a patch embedding has kernel = stride and no padding",
                fmt_ints(&attrs.strides),
                fmt_ints(&attrs.pads),
                fmt_ints(&attrs.dilations),
                attrs.auto_pad.as_deref().unwrap_or("default")
            )));
        }
        if attrs.group.unwrap_or(1) != 1 {
            return Err(Reject::Bad(format!(
                "grouped convolution (group {}) is not supported",
                attrs.group.unwrap_or(1)
            )));
        }
        if kh as usize != m {
            return Err(Reject::Bad(format!(
                "its patch size is {kh}×{kh}; the block size must equal it (--block {kh})"
            )));
        }
        if wt.data_type != DataType::Float {
            return Err(Reject::Bad(format!("its weight is {}, not FLOAT", wt.data_type)));
        }
        // Everything the rewrite changes must be used by this Conv only, and the
        // input must go nowhere else (or other layers would see transformed data).
        let single = |name: &str, what: &str| -> std::result::Result<(), Reject> {
            if self.uses(name) != 1 {
                return Err(Reject::Bad(format!(
                    "{what} '{name}' is used {} times; it must feed only the patch embedding",
                    self.uses(name)
                )));
            }
            Ok(())
        };
        single(wname, "weight")?;
        single(&input, "model input")?;
        for &n in &affine.nodes {
            if let Some(o) = model.nodes[n].outputs.first() {
                single(o, "normalised input")?;
            }
        }
        let bias = match node.inputs.get(2).filter(|s| !s.is_empty()) {
            None => None,
            Some(bname) => {
                let Some(&b) = self.inits.get(bname.as_str()) else {
                    return Err(Reject::Bad(format!("its bias '{bname}' is not an initializer of the main graph")));
                };
                let bt = &model.tensors[b];
                if bt.data_type != DataType::Float || bt.dims != vec![wt.dims[0]] {
                    return Err(Reject::Bad(format!("its bias '{bname}' is not a FLOAT vector of {}", wt.dims[0])));
                }
                single(bname, "bias")?;
                Some(b)
            }
        };
        Ok(PatchEmbedding { node: nid, input, weight: w, bias, affine })
    }

    /// Follows the Conv output through shape-only nodes to an `Add` with an initializer.
    fn find_position_embedding(&self, pe: &PatchEmbedding, d: usize) -> Result<PositionEmbedding> {
        let model = self.model;
        let none = |why: String| {
            TransformError::CannotAbsorb(format!(
                "block scrambling needs a position embedding added after the patch embedding, and {why}"
            ))
        };
        let mut cur = model.nodes[pe.node].outputs.first().cloned().unwrap_or_default();
        let mut transposed = false;
        for _ in 0..8 {
            let uses = self.consumers.get(cur.as_str()).cloned().unwrap_or_default();
            if uses.len() != 1 || self.outputs.contains(&cur.as_str()) {
                return Err(none(format!("'{cur}' is used by {} nodes", uses.len())));
            }
            let n = &model.nodes[uses[0].0];
            match n.op_type.as_str() {
                "Reshape" | "Flatten" | "Transpose" | "Identity" | "Squeeze" | "Unsqueeze" if uses[0].1 == 0 => {
                    transposed |= n.op_type == "Transpose";
                    cur = n.outputs.first().cloned().unwrap_or_default();
                }
                "Add" if n.inputs.len() == 2 => {
                    let other = &n.inputs[1 - uses[0].1];
                    let Some(&t) = self.inits.get(other.as_str()) else {
                        return Err(none(format!("{} adds '{other}', which is not an initializer", n.label())));
                    };
                    let tensor = &model.tensors[t];
                    if tensor.data_type != DataType::Float {
                        return Err(none(format!("'{other}' is not FLOAT")));
                    }
                    if self.uses(other) != 1 {
                        return Err(none(format!("'{other}' is used elsewhere too")));
                    }
                    let dims: Vec<usize> = tensor.dims.iter().map(|&x| x as usize).skip_while(|&x| x == 1).collect();
                    let (tokens, token_major) = match dims.as_slice() {
                        [t, dd] if *dd == d && (*t != d || transposed) => (*t, true),
                        [dd, t] if *dd == d => (*t, false),
                        [dd, h, w] if *dd == d => (h * w, false),
                        _ => {
                            return Err(none(format!(
                                "'{other}' has shape {:?}, not [tokens, {d}] or [{d}, tokens]",
                                tensor.dims
                            )))
                        }
                    };
                    return Ok(PositionEmbedding { tensor: t, tokens, token_major });
                }
                _ => return Err(none(format!("the patch embedding's output goes to {}", n.label()))),
            }
        }
        Err(none("the path from the patch embedding is too long".into()))
    }

    /// The main graph's field and the node's field in the model bytes.
    fn node_containers(&self, nid: NodeId) -> Result<(Container, Container)> {
        let buf = self.model.bytes();
        let bad = |why: &str| TransformError::Unsupported(format!("cannot locate the node in the file: {why}"));
        let werr = |_| bad("malformed protobuf");
        let mut top = FieldReader::new(buf, 0..buf.len() as u64).map_err(werr)?;
        let mut graph = None;
        while let Some(f) = top.next_field().map_err(werr)? {
            if f.number == 7 && f.wire == WireType::Len {
                graph = Some(f);
            }
        }
        let graph = graph.ok_or_else(|| bad("no graph"))?;
        let k = self.model.graphs[self.main].nodes.iter().position(|&n| n == nid).ok_or_else(|| bad("not in main"))?;
        let mut r = FieldReader::new(buf, graph.value_range()).map_err(werr)?;
        let mut i = 0;
        while let Some(f) = r.next_field().map_err(werr)? {
            if f.number == 1 {
                if i == k {
                    return Ok((Container::from(&graph), Container::from(&f)));
                }
                i += 1;
            }
        }
        Err(bad("node not found"))
    }

    /// Reads the Conv attributes the check needs from the node's bytes.
    fn conv_attrs(&self, nid: NodeId) -> Result<ConvAttrs> {
        let buf = self.model.bytes();
        let (_, node) = self.node_containers(nid)?;
        let bad = |_| TransformError::Unsupported("malformed Conv attributes".into());
        let mut out = ConvAttrs::default();
        let mut r = FieldReader::new(buf, node.value_start..node.end).map_err(bad)?;
        while let Some(f) = r.next_field().map_err(bad)? {
            if f.number != 5 || f.wire != WireType::Len {
                continue;
            }
            let (mut name, mut ints, mut i, mut s) = (String::new(), Vec::new(), None, None);
            let mut ar = FieldReader::new(buf, f.value_range()).map_err(bad)?;
            while let Some(a) = ar.next_field().map_err(bad)? {
                let bytes = || buf.get(a.value_start as usize..a.end as usize).unwrap_or_default();
                match (a.number, a.wire) {
                    (1, WireType::Len) => name = String::from_utf8_lossy(bytes()).into_owned(),
                    (3, WireType::Varint) => i = Some(a.scalar as i64),
                    (4, WireType::Len) => s = Some(String::from_utf8_lossy(bytes()).into_owned()),
                    (8, WireType::Varint) => ints.push(a.scalar as i64),
                    (8, WireType::Len) => {
                        wire::for_each_packed_varint(buf, a.value_range(), |v| ints.push(v as i64)).map_err(bad)?
                    }
                    _ => {}
                }
            }
            match name.as_str() {
                "kernel_shape" => out.kernel_shape = Some(ints),
                "strides" => out.strides = Some(ints),
                "pads" => out.pads = Some(ints),
                "dilations" => out.dilations = Some(ints),
                "group" => out.group = i,
                "auto_pad" => out.auto_pad = s,
                _ => {}
            }
        }
        Ok(out)
    }

    /// Edits that give Conv `nid` a bias: a third input on the node and a new
    /// FLOAT initializer at the end of the main graph.
    fn add_bias_edits(&self, model: &Model, nid: NodeId, name: &str, values: &[f32]) -> Result<Vec<Edit>> {
        if model.ir_version.unwrap_or(0) < 4 {
            return Err(TransformError::CannotAbsorb(
                "the Conv has no bias, and adding one to a model of IR version < 4 is not supported".into(),
            ));
        }
        if model.nodes[nid].inputs.len() != 2 {
            return Err(TransformError::CannotAbsorb("the Conv has no bias but an unexpected input list".into()));
        }
        let (graph, node) = self.node_containers(nid)?;
        let mut input_field = Vec::new();
        wire::put_len_field(&mut input_field, 1, name.as_bytes());
        let mut tensor = Vec::new();
        wire::put_tag(&mut tensor, 1, WireType::Varint);
        wire::put_varint(&mut tensor, values.len() as u64);
        wire::put_tag(&mut tensor, 2, WireType::Varint);
        wire::put_varint(&mut tensor, 1); // FLOAT
        wire::put_len_field(&mut tensor, 8, name.as_bytes());
        wire::put_len_field(&mut tensor, 9, &f32_bytes(values));
        let mut init_field = Vec::new();
        wire::put_len_field(&mut init_field, 5, &tensor);
        // The node edit comes first: at equal offsets the plan keeps this order.
        Ok(vec![
            Edit { range: node.end..node.end, content: Content::Bytes(input_field), ancestors: vec![graph, node] },
            Edit { range: graph.end..graph.end, content: Content::Bytes(init_field), ancestors: vec![graph] },
        ])
    }
}

/// Why a Conv is not the patch embedding.
enum Reject {
    /// It does not read the model input (not a candidate at all).
    NotFromInput(String),
    /// It reads the input but cannot be used.
    Bad(String),
    /// A real error.
    Hard(TransformError),
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
