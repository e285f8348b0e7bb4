//! What reports say about a protected model's encrypted tensors, whatever its format:
//! what each mode does to the bytes ([`ProtectionKind`]), one [`TensorSummary`] per
//! manifest entry, and the [`ProtectionInfo`] `inspect` shows.

use std::collections::BTreeMap;

use onnx_protect_format::Model;
use onnx_protect_select::{fp_mask, Mode};

use crate::target::Target;

/// What a mode does to the bytes of a tensor, as reports name it: only bytes whose
/// every bit is XORed with the keystream are "encrypted".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtectionKind {
    /// Every bit under the keystream: `ctr`, and `fp` on types whose format-preserving
    /// mask covers every bit (integers, BOOL).
    Encrypted,
    /// `fp` on floating-point types: sign and mantissa under the keystream, the exponent
    /// (the magnitude, within a factor of 2) in clear.
    ExponentClear,
    /// `dp`: the values are the layer's own, in a keyed order.
    Permuted,
}

impl ProtectionKind {
    /// Every kind, in report order.
    pub const ALL: [ProtectionKind; 3] =
        [ProtectionKind::Encrypted, ProtectionKind::ExponentClear, ProtectionKind::Permuted];

    /// What `mode` does to elements of `dtype`.
    pub fn of(mode: Mode, dtype: onnx_protect_format::DataType) -> ProtectionKind {
        match mode {
            Mode::Ctr => ProtectionKind::Encrypted,
            Mode::Dp => ProtectionKind::Permuted,
            Mode::Fp => match fp_mask(dtype) {
                Some(m) if m.iter().all(|&b| b == 0xFF) || dtype == onnx_protect_format::DataType::Bool => {
                    ProtectionKind::Encrypted
                }
                _ => ProtectionKind::ExponentClear,
            },
        }
    }

    /// The stable identifier used in JSON: `encrypted`, `exponent_clear`, `permuted`.
    pub fn id(self) -> &'static str {
        match self {
            ProtectionKind::Encrypted => "encrypted",
            ProtectionKind::ExponentClear => "exponent_clear",
            ProtectionKind::Permuted => "permuted",
        }
    }

    /// The words reports use: "encrypted", "sign and mantissa encrypted, exponent
    /// clear", "permuted".
    pub fn label(self) -> &'static str {
        match self {
            ProtectionKind::Encrypted => "encrypted",
            ProtectionKind::ExponentClear => "sign and mantissa encrypted, exponent clear",
            ProtectionKind::Permuted => "permuted",
        }
    }
}

/// Bytes per kind of protection (JSON keys: [`ProtectionKind::id`]), every kind present.
pub fn bytes_by_protection(tensors: &[TensorSummary]) -> BTreeMap<&'static str, u64> {
    let mut out: BTreeMap<&'static str, u64> = ProtectionKind::ALL.iter().map(|p| (p.id(), 0)).collect();
    for t in tensors {
        *out.entry(t.protection).or_default() += t.encrypted_bytes;
    }
    out
}

/// The tier order a policy summary records (`order=NAME`; none for importance).
pub fn recorded_order(policy_summary: &str) -> Option<&str> {
    policy_summary.split(';').find_map(|part| part.strip_prefix("order="))
}

/// The classes each of `tiers` tiers serves first when the summary records tiers by class: the
/// rows of the model's class layer, read from the spans of its `tensors` (each row in one tier).
pub fn tier_classes(
    model: &Model,
    tiers: u32,
    policy_summary: &str,
    tensors: &[TensorSummary],
) -> Option<Vec<Vec<u64>>> {
    if recorded_order(policy_summary) != Some("classes") {
        return None;
    }
    let layer = onnx_protect_select::classes::class_layer(model, &onnx_protect_format::discover(model))?;
    let t = &model.tensors[layer.tensor];
    let locator = t.locator.to_string();
    let mut out = vec![Vec::new(); tiers as usize];
    for s in tensors.iter().filter(|s| s.locator == locator) {
        let group = out.get_mut((s.tier as usize).checked_sub(1)?)?;
        for &span in &s.spans {
            group.extend(layer.classes_in(t, span));
        }
    }
    out.iter_mut().for_each(|g| {
        g.sort_unstable();
        g.dedup();
    });
    Some(out)
}

/// One encrypted tensor, as reported to callers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorSummary {
    pub name: String,
    pub locator: String,
    pub op_type: String,
    pub role: String,
    pub data_type: String,
    pub storage: String,
    pub mode: String,
    /// What the mode does to these bytes: [`ProtectionKind::id`].
    pub protection: &'static str,
    /// The same in words: [`ProtectionKind::label`].
    pub label: &'static str,
    pub nbytes: u64,
    /// Bytes under the mode (whatever it is: see `protection`).
    pub encrypted_bytes: u64,
    pub subsequences: u64,
    pub chosen: u64,
    pub spans: Vec<(u64, u64)>,
    /// Access tier (0: untiered).
    pub tier: u32,
}

/// A description of what a protected model has encrypted (for `inspect`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProtectionInfo {
    pub key: String,
    pub format_version: u32,
    pub tool: String,
    pub passphrase: bool,
    pub policy_summary: String,
    /// Bytes under any mode (see `bytes_by_protection` for what each mode hides).
    pub encrypted_bytes: u64,
    /// Those bytes per kind of protection ([`bytes_by_protection`]).
    pub bytes_by_protection: BTreeMap<&'static str, u64>,
    /// Number of access tiers (0: untiered).
    pub tiers: u32,
    /// Tiers already decrypted in this file.
    pub restored_tiers: u32,
    /// The hash of the ciphertext chunks under the MAC (`"sha256"` or `"blake3"`, docs/format.md §7).
    pub leaf_hash: &'static str,
    pub tensors: Vec<TensorSummary>,
    /// Recipient stanzas (format 2): kind, tier and public label of each.
    pub recipients: Vec<String>,
    /// Public keys of the signatures on the model (format 2; not verified here).
    pub signatures: Vec<String>,
    /// `"public"`, or `"secret"` when the encrypted positions are sealed (only key
    /// holders know them; the tensors' spans and encrypted bytes are then not shown).
    pub positions: &'static str,
    /// Tiers by class (format 2, the manifest's summary recording `order=classes`): the classes
    /// (rows of the class layer) each tier serves first, tier 1 first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier_classes: Option<Vec<Vec<u64>>>,
    /// The label lock (`encrypt --lock-outputs`, format 2), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_lock: Option<crate::lock::LockReport>,
    /// [`FORMAT_1_WARNING`](crate::format1::FORMAT_1_WARNING) for a format-1 file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<&'static str>,
}

/// What a manifest entry of either format records about its tensor, for its summary.
pub(crate) struct Recorded<'a> {
    name: &'a str,
    locator: &'a str,
    op_type: &'a str,
    role: &'a str,
    nbytes: u64,
    subsequences: u64,
    chosen: u64,
}

/// A [`Recorded`] from the tensor entry of each format (the same fields in both).
macro_rules! recorded_from {
    ($($entry:ty),*) => {$(
        impl<'a> From<&'a $entry> for Recorded<'a> {
            fn from(e: &'a $entry) -> Self {
                Recorded {
                    name: &e.name,
                    locator: &e.locator,
                    op_type: &e.op_type,
                    role: &e.role,
                    nbytes: e.nbytes,
                    subsequences: e.subsequences,
                    chosen: e.chosen,
                }
            }
        }
    )*};
}

recorded_from!(onnx_protect_proto::v1::TensorEntry, onnx_protect_proto::v2::TensorEntry);

/// The summary of every manifest entry (of either format) with its target, in order.
pub(crate) fn summaries<'a, E: Into<Recorded<'a>>>(
    model: &Model,
    entries: impl IntoIterator<Item = E>,
    targets: &[Target],
) -> Vec<TensorSummary> {
    entries.into_iter().zip(targets).map(|(e, t)| summary(model, e.into(), t)).collect()
}

/// The summary of a tensor that `e` records and `t` targets.
fn summary(model: &Model, e: Recorded, t: &Target) -> TensorSummary {
    let tensor = &model.tensors[t.tensor];
    let kind = ProtectionKind::of(t.mode, tensor.data_type);
    TensorSummary {
        name: e.name.to_string(),
        locator: e.locator.to_string(),
        op_type: e.op_type.to_string(),
        role: e.role.to_string(),
        data_type: tensor.data_type.name().to_string(),
        storage: tensor.data.storage_name().to_string(),
        mode: t.mode.name().to_string(),
        protection: kind.id(),
        label: kind.label(),
        nbytes: e.nbytes,
        encrypted_bytes: t.bytes(),
        subsequences: e.subsequences,
        chosen: e.chosen,
        spans: t.spans.clone(),
        tier: t.tier,
    }
}
