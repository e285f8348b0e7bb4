//! What an attacker without the key can build from a protected model.
//!
//! The manifest of a protected model is public: it lists which tensors are
//! encrypted and which byte spans of each (an [`Exposure`]). An attacker who copies
//! the file can therefore overwrite exactly those spans. The repairs simulated here:
//!
//! * [`Fill::Zero`]: every encrypted element becomes zero;
//! * [`Fill::Mean`]: every encrypted element becomes the mean of the *clear*
//!   (non-encrypted) elements of the same tensor;
//! * [`Fill::Init`]: what an attacker who knows the architecture would initialise
//!   the element with, by the tensor's role ([`init_value`]): normalisation scales
//!   and running variances 1, normalisation biases and running means 0, `scale`
//!   constants 1, biases 0 when wholly encrypted, and every other element a draw
//!   from N(0, σ) with σ the standard deviation of the tensor's clear elements
//!   (seeded, so the same seed gives the same model);
//! * [`Fill::Noise`]: random bytes, which is what AES-CTR ciphertext is to anyone
//!   without the key (the `no_key` view of a `ctr` policy, for simulations that
//!   encrypt nothing).
//!
//! In a model with access tiers, the spans of every tier still encrypted in the file
//! (every tier above the restored ones) are unknown to the attacker alike: a
//! tensor's spans of all those tiers are filled, and only the elements outside all
//! of them count as clear. Spans of tiers already restored in the file are
//! plaintext and stay as they are.
//!
//! No fill needs the key. The result is a model (and its external data files)
//! in memory, ready to run.

use std::collections::BTreeMap;
use std::ops::Range;

use onnx_protect_core::protect::protection_view;
use onnx_protect_format::write::{Content, Edit, Plan};
use onnx_protect_format::{discover, DataType, Model, TensorData, TensorId, TensorRole, Weight};
use onnx_protect_select::Selection;

use crate::error::{Result, RuntimeError};

/// How the encrypted elements are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fill {
    /// Zero.
    Zero,
    /// The mean of the tensor's clear elements.
    Mean,
    /// The value an attacker would initialise the element with ([`init_value`]).
    Init { seed: u64 },
    /// Uniformly random bytes (the look of AES-CTR ciphertext without the key).
    Noise { seed: u64 },
}

impl Fill {
    /// `zero`, `mean`, `init` or `noise`.
    pub fn name(self) -> &'static str {
        match self {
            Fill::Zero => "zero",
            Fill::Mean => "mean",
            Fill::Init { .. } => "init",
            Fill::Noise { .. } => "noise",
        }
    }
}

/// The encrypted (unknown) byte spans of each tensor, as an attacker sees them:
/// `[begin, end)` offsets into the tensor's element bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exposure {
    pub spans: BTreeMap<TensorId, Vec<(u64, u64)>>,
}

impl Exposure {
    /// The spans a protected model's manifest lists for the tiers still encrypted in it.
    pub fn of_protected(protected: &Model) -> Result<Exposure> {
        let p = protection_view(protected)?;
        let mut spans: BTreeMap<TensorId, Vec<(u64, u64)>> = BTreeMap::new();
        for t in p.still_encrypted() {
            spans.entry(t.tensor).or_default().extend_from_slice(&t.spans);
        }
        Ok(Exposure { spans })
    }

    /// The spans a selection would encrypt (every tier).
    pub fn of_selection(selection: &Selection) -> Exposure {
        let mut spans: BTreeMap<TensorId, Vec<(u64, u64)>> = BTreeMap::new();
        for c in &selection.chosen {
            spans.entry(c.tensor).or_default().extend_from_slice(&c.spans);
        }
        Exposure { spans }
    }

    /// Total bytes of the spans.
    pub fn bytes(&self) -> u64 {
        self.spans.values().flatten().map(|(a, b)| b.saturating_sub(*a)).sum()
    }
}

/// A model rebuilt by an attacker: the model file's bytes and its external files.
#[derive(Debug, Clone)]
pub struct Repaired {
    pub model: Vec<u8>,
    /// External data files by `location` (all of them, patched where needed).
    pub external: BTreeMap<String, Vec<u8>>,
    /// What the fill could not do as described, one line per tensor (for example a
    /// mean-fill of a tensor without a clear element, which is zero-filled instead).
    pub notes: Vec<String>,
}

/// Elements as `f64` and back, for the types a mean makes sense for.
fn decode(dt: DataType, c: &[u8]) -> Option<f64> {
    use DataType::*;
    Some(match dt {
        Float => f64::from(f32::from_le_bytes(c.try_into().ok()?)),
        Double => f64::from_le_bytes(c.try_into().ok()?),
        Float16 => f64::from(half::f16::from_le_bytes(c.try_into().ok()?).to_f32()),
        Bfloat16 => f64::from(half::bf16::from_le_bytes(c.try_into().ok()?).to_f32()),
        Int8 => f64::from(c[0] as i8),
        Uint8 => f64::from(c[0]),
        Int16 => f64::from(i16::from_le_bytes(c.try_into().ok()?)),
        Uint16 => f64::from(u16::from_le_bytes(c.try_into().ok()?)),
        Int32 => f64::from(i32::from_le_bytes(c.try_into().ok()?)),
        Uint32 => f64::from(u32::from_le_bytes(c.try_into().ok()?)),
        Int64 => i64::from_le_bytes(c.try_into().ok()?) as f64,
        Uint64 => u64::from_le_bytes(c.try_into().ok()?) as f64,
        _ => return None,
    })
}

fn encode(dt: DataType, v: f64) -> Option<Vec<u8>> {
    use DataType::*;
    let r = v.round();
    Some(match dt {
        Float => (v as f32).to_le_bytes().to_vec(),
        Double => v.to_le_bytes().to_vec(),
        Float16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
        Bfloat16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
        Int8 => vec![r as i8 as u8],
        Uint8 => vec![r as u8],
        Int16 => (r as i16).to_le_bytes().to_vec(),
        Uint16 => (r as u16).to_le_bytes().to_vec(),
        Int32 => (r as i32).to_le_bytes().to_vec(),
        Uint32 => (r as u32).to_le_bytes().to_vec(),
        Int64 => (r as i64).to_le_bytes().to_vec(),
        Uint64 => (r as u64).to_le_bytes().to_vec(),
        _ => return None,
    })
}

/// Byte spans widened to whole elements (whole bytes for sub-byte types), sorted, and
/// merged where they overlap or touch.
fn element_spans(spans: &[(u64, u64)], elem: u64, nbytes: u64) -> Vec<Range<usize>> {
    let mut widened: Vec<Range<usize>> = spans
        .iter()
        .map(|&(a, b)| ((a / elem) * elem) as usize..(b.div_ceil(elem) * elem).min(nbytes) as usize)
        .collect();
    widened.sort_unstable_by_key(|r| (r.start, r.end));
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(widened.len());
    for r in widened {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// Count, mean and population standard deviation of the finite elements outside
/// `spans`, if the type has a numeric reading and any element is clear.
fn clear_stats(dt: DataType, bytes: &[u8], spans: &[Range<usize>]) -> Option<(u64, f64, f64)> {
    let elem = (dt.bits() / 8) as usize;
    if elem == 0 || dt.bits() % 8 != 0 {
        return None;
    }
    let (mut sum, mut sq, mut n) = (0.0f64, 0.0f64, 0u64);
    let mut pos = 0usize;
    let mut add = |from: usize, to: usize| -> Option<()> {
        for c in bytes.get(from..to)?.chunks_exact(elem) {
            let v = decode(dt, c)?;
            if v.is_finite() {
                sum += v;
                sq += v * v;
                n += 1;
            }
        }
        Some(())
    };
    for s in spans {
        add(pos, s.start)?;
        pos = s.end;
    }
    add(pos, bytes.len())?;
    if n == 0 {
        return None;
    }
    let mean = sum / n as f64;
    Some((n, mean, (sq / n as f64 - mean * mean).max(0.0).sqrt()))
}

/// A splitmix64 generator: deterministic draws without a dependency.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// A generator for one tensor: the seed and the tensor's name, so draws do not
    /// depend on which other tensors are filled.
    fn for_tensor(seed: u64, name: &str) -> Rng {
        let mut h = Rng(seed ^ 0x6F6E_6E78_2D70_726F);
        let mut acc = h.next();
        for b in name.bytes() {
            acc = Rng(acc ^ u64::from(b)).next();
        }
        Rng(acc ^ h.next())
    }
}

/// What init-fill puts in an encrypted element of a tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InitValue {
    /// This constant.
    Constant(f64),
    /// A draw from N(0, σ).
    Normal(f64),
}

/// The init-fill rule for a tensor: `stats` are (count, mean, σ) of its clear
/// elements, if any.
///
/// | tensor | value |
/// | --- | --- |
/// | normalisation scale (`scale` input of BatchNormalization, LayerNormalization, InstanceNormalization, GroupNormalization, RMSNormalization) or running variance (`input_var`) | 1 |
/// | normalisation bias or running mean | 0 |
/// | role `scale` (a constant fed to `Mul`/`Div`) | 1 |
/// | with two or more clear elements | N(0, σ of the clear elements) |
/// | role `weight` or `recurrent`, no clear element | N(0, 1/√(3·fan_in)): the spread of PyTorch's default uniform initialisation; fan_in is the product of the dimensions after the first for `Conv`/`Gemm`/recurrent, the second-last dimension for `MatMul` |
/// | role `embedding`, no clear element | N(0, 1) (PyTorch's `nn.Embedding`) |
/// | role `position-embedding`, no clear element | N(0, 0.02) (the usual truncated-normal initialisation) |
/// | anything else, no clear element | 0 |
pub fn init_value(model: &Model, weight: Option<&Weight>, stats: Option<(u64, f64, f64)>) -> InitValue {
    let Some(w) = weight else {
        return match stats {
            Some((n, _, s)) if n >= 2 => InitValue::Normal(s),
            _ => InitValue::Constant(0.0),
        };
    };
    let norm = w.uses.iter().find(|u| u.kind == onnx_protect_format::WeightKind::Norm);
    if let Some(u) = norm {
        return InitValue::Constant(if matches!(u.role, "scale" | "input_var") { 1.0 } else { 0.0 });
    }
    let role = w.tensor_role();
    if role == TensorRole::Scale {
        return InitValue::Constant(1.0);
    }
    if let Some((n, _, s)) = stats {
        if n >= 2 {
            return InitValue::Normal(s);
        }
    }
    let t = &model.tensors[w.tensor];
    match role {
        TensorRole::Weight | TensorRole::Recurrent => {
            let matmul = w.uses.first().is_some_and(|u| u.op_type == "MatMul");
            let fan_in = if matmul && t.dims.len() >= 2 {
                t.dims[t.dims.len() - 2]
            } else if t.dims.len() >= 2 {
                t.dims[1..].iter().product::<u64>()
            } else {
                t.numel
            };
            if w.uses.first().is_some_and(|u| matches!(u.op_type.as_str(), "LSTM" | "GRU" | "RNN")) {
                // W and R are [directions, gates·H, in]: PyTorch draws U(±1/√H).
                let gates: u64 = match w.primary_op() {
                    "LSTM" => 4,
                    "GRU" => 3,
                    _ => 1,
                };
                let h = t.dims.get(1).copied().unwrap_or(1) / gates;
                return InitValue::Normal(1.0 / (3.0 * h.max(1) as f64).sqrt());
            }
            InitValue::Normal(1.0 / (3.0 * fan_in.max(1) as f64).sqrt())
        }
        TensorRole::Embedding => InitValue::Normal(1.0),
        TensorRole::PositionEmbedding => InitValue::Normal(0.02),
        _ => InitValue::Constant(0.0),
    }
}

/// Builds the attacker's model from a protected model: the encrypted spans listed
/// in its (public) manifest are overwritten according to `fill`.
pub fn repair(protected: &Model, fill: Fill) -> Result<Repaired> {
    repair_exposed(protected, &Exposure::of_protected(protected)?, fill)
}

/// Builds the attacker's model from `model` (a protected model, or the original for a
/// simulation: the clear elements are the same) with the spans of `exposure` filled.
pub fn repair_exposed(model: &Model, exposure: &Exposure, fill: Fill) -> Result<Repaired> {
    let mut out = TensorEdits::new(model)?;
    let weights: BTreeMap<TensorId, Weight> = match fill {
        Fill::Init { .. } => discover(model).into_iter().map(|w| (w.tensor, w)).collect(),
        _ => BTreeMap::new(),
    };
    let mut notes = Vec::new();
    for (&tensor, spans) in &exposure.spans {
        let t = model
            .tensors
            .get(tensor)
            .ok_or_else(|| RuntimeError::Input(format!("tensor #{tensor} is not in the model")))?;
        let elem = (t.data_type.bits() / 8).max(1);
        let mut bytes = model.tensor_bytes(t.id)?.into_owned();
        let spans = element_spans(spans, elem, t.nbytes);
        if let Some(s) = spans.iter().find(|s| s.end > bytes.len()) {
            return Err(RuntimeError::Input(format!(
                "tensor '{}': span {s:?} is outside its {} bytes",
                t.name, t.nbytes
            )));
        }
        let regions: Vec<(usize, usize)> = spans.iter().map(|s| (s.start, s.end)).collect();
        let constant = |value: Vec<u8>, bytes: &mut Vec<u8>| {
            for &(a, b) in &regions {
                for (i, x) in bytes[a..b].iter_mut().enumerate() {
                    *x = value[i % value.len()];
                }
            }
        };
        match fill {
            Fill::Zero => constant(vec![0u8; elem as usize], &mut bytes),
            Fill::Mean => match clear_stats(t.data_type, &bytes, &spans).and_then(|(_, m, _)| encode(t.data_type, m)) {
                Some(v) => constant(v, &mut bytes),
                None => {
                    notes.push(format!("{}: every element is encrypted, no clear mean; zero-filled", t.name));
                    constant(vec![0u8; elem as usize], &mut bytes)
                }
            },
            Fill::Noise { seed } => {
                let mut rng = Rng::for_tensor(seed, &t.name);
                for &(a, b) in &regions {
                    for x in &mut bytes[a..b] {
                        *x = rng.next() as u8;
                    }
                }
            }
            Fill::Init { seed } => {
                let stats = clear_stats(t.data_type, &bytes, &spans);
                match init_value(model, weights.get(&tensor), stats) {
                    InitValue::Constant(v) => match encode(t.data_type, v) {
                        Some(v) => constant(v, &mut bytes),
                        None => {
                            notes.push(format!(
                                "{}: type {} has no numeric fill; zero-filled",
                                t.name,
                                t.data_type.name()
                            ));
                            constant(vec![0u8; elem as usize], &mut bytes)
                        }
                    },
                    InitValue::Normal(sigma) => {
                        let mut rng = Rng::for_tensor(seed, &t.name);
                        let e = elem as usize;
                        for &(a, b) in &regions {
                            for c in bytes[a..b].chunks_exact_mut(e) {
                                let v = encode(t.data_type, sigma * rng.normal()).unwrap_or_else(|| vec![0u8; e]);
                                c.copy_from_slice(&v[..e]);
                            }
                        }
                    }
                }
            }
        }
        out.put(t, &bytes, &spans)?;
    }
    Ok(Repaired { notes, ..out.finish()? })
}

/// A copy of a model (and its external data files) in memory with some tensors'
/// element bytes replaced, whatever their storage: `raw_data` or a fixed typed field
/// patched in place, varint fields re-encoded, external ranges patched in their file.
pub struct TensorEdits<'m> {
    model: &'m Model,
    edits: Vec<Edit>,
    external: BTreeMap<String, Vec<u8>>,
}

impl<'m> TensorEdits<'m> {
    /// Starts from `model` as it is (its external files copied into memory).
    pub fn new(model: &'m Model) -> Result<TensorEdits<'m>> {
        let mut external = BTreeMap::new();
        for f in &model.external_files {
            external.insert(f.location.clone(), f.bytes()?.to_vec());
        }
        Ok(TensorEdits { model, edits: Vec::new(), external })
    }

    /// Gives `t` the element bytes `bytes` (its whole new content, `raw_data` layout);
    /// only the byte ranges `spans` of it change (a varint-stored tensor is re-encoded
    /// whole).
    pub fn put(&mut self, t: &onnx_protect_format::Tensor, bytes: &[u8], spans: &[Range<usize>]) -> Result<()> {
        let model = self.model;
        match &t.data {
            TensorData::Raw { .. } | TensorData::Fixed { .. } => {
                for s in spans {
                    for (range, logical) in t.file_pieces(s.start as u64, s.end as u64) {
                        let from = logical as usize;
                        let len = (range.end - range.start) as usize;
                        self.edits.push(Edit {
                            range,
                            content: Content::Bytes(bytes[from..from + len].to_vec()),
                            ancestors: Vec::new(),
                        });
                    }
                }
            }
            TensorData::Varint { .. } => {
                self.edits.extend(t.varint_edits(bytes));
            }
            TensorData::External { file, .. } => {
                let loc = &model.external_files[*file].location;
                let buf = self
                    .external
                    .get_mut(loc)
                    .ok_or_else(|| RuntimeError::Input(format!("external file '{loc}' is missing")))?;
                for s in spans {
                    for (range, logical) in t.file_pieces(s.start as u64, s.end as u64) {
                        let from = logical as usize;
                        let len = (range.end - range.start) as usize;
                        let dst = buf.get_mut(range.start as usize..range.end as usize).ok_or_else(|| {
                            RuntimeError::Input(format!("tensor '{}': range outside external file '{loc}'", t.name))
                        })?;
                        dst.copy_from_slice(&bytes[from..from + len]);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The model's bytes with every edit applied, and its external files (no notes).
    pub fn finish(self) -> Result<Repaired> {
        let src = self.model.bytes();
        let plan = Plan::new(src.len() as u64, self.edits, Vec::new())?;
        let mut out = Vec::with_capacity(plan.output_len() as usize);
        plan.write(src, &mut out, &mut |_, _, _| Ok(()))?;
        Ok(Repaired { model: out, external: self.external, notes: Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_clear_elements_skip_the_spans() {
        let v: Vec<u8> = [1.0f32, 100.0, 100.0, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(clear_stats(DataType::Float, &v, std::slice::from_ref(&(4..12))), Some((2, 2.0, 1.0)));
        assert_eq!(clear_stats(DataType::Float, &v, std::slice::from_ref(&(0..16))), None);
        assert_eq!(element_spans(&[(5, 9)], 4, 16), vec![4..12]);
        // Spans of different tiers: sorted, and merged where whole elements overlap or touch.
        assert_eq!(element_spans(&[(12, 14), (0, 3), (3, 5), (14, 16)], 4, 16), vec![0..8, 12..16]);
        assert_eq!(encode(DataType::Uint8, 2.6), Some(vec![3]));
    }

    #[test]
    fn normal_draws_have_the_asked_spread_and_repeat_with_the_seed() {
        let draw = |seed| {
            let mut r = Rng::for_tensor(seed, "w");
            (0..20_000).map(|_| r.normal()).collect::<Vec<f64>>()
        };
        let a = draw(1);
        assert_eq!(a, draw(1));
        assert_ne!(a, draw(2));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let sd = (a.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / a.len() as f64).sqrt();
        assert!(mean.abs() < 0.03 && (sd - 1.0).abs() < 0.03, "mean {mean}, sd {sd}");
    }
}
