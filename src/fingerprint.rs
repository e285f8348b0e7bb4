//! `encrypt --fingerprint`: the fingerprint secret, the marker of a
//! recipient's copy with its ledger entry, and what the report says about it.

use anyhow::{Context, Result};

use crate::args::fingerprint::{FingerprintArgs, LockArgs};

/// What `encrypt --fingerprint` embedded.
#[derive(serde::Serialize)]
pub struct FingerprintReport {
    recipient: String,
    key_id: String,
    ledger: String,
    /// Whether the ledger already had this recipient's entry for this original.
    already_recorded: bool,
    alpha: f64,
    tensors: usize,
    elements: u64,
    /// The variant of the recipient's mark (0 unless --fingerprint-check chose another).
    variant: u32,
    /// With --fingerprint-check: the samples checked and the variants tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    checked: Option<crate::fingerprint_check::Checked>,
}

impl FingerprintReport {
    /// The line of `encrypt`'s text report on the fingerprint.
    pub fn text(&self) -> String {
        format!(
            "\n  fingerprint of {}: {} elements in {} tensors (strength {}{}), ledger {}{}",
            self.recipient,
            self.elements,
            self.tensors,
            self.alpha,
            match &self.checked {
                Some(c) => format!(
                    ", variant {}: no top-1 class changed on {} samples, {} variants tried",
                    self.variant, c.samples, c.tried
                ),
                None => String::new(),
            },
            self.ledger,
            if self.already_recorded { " (already recorded)" } else { "" }
        )
    }
}

/// Reads a fingerprint secret file.
pub fn read_fingerprint_secret(path: &std::path::Path) -> Result<onnx_protect_trace::FingerprintKey> {
    let bytes = crate::keys::read_capped(path, onnx_protect_trace::secret::MAX_SECRET_FILE_LEN)
        .with_context(|| format!("cannot read fingerprint secret {}", path.display()))?;
    Ok(onnx_protect_trace::FingerprintKey::parse(&bytes, &path.display().to_string())?)
}

/// What `encrypt --fingerprint` prepared: the marker, its report and, with
/// `--lock-outputs`, the recipient's lock seed.
pub type Fingerprinting =
    (std::sync::Arc<onnx_protect_trace::Marker>, FingerprintReport, Option<onnx_protect_lock::LockSeed>);

/// The marker of `encrypt --fingerprint`, with its ledger entry written.
pub fn prepare_fingerprint(
    a: &FingerprintArgs,
    lock: &LockArgs,
    input: &std::path::Path,
    name: &str,
) -> Result<Option<Fingerprinting>> {
    let (Some(id), Some(secret), Some(ledger)) = (&a.fingerprint, &a.fingerprint_secret, &a.ledger) else {
        return Ok(None);
    };
    let recipient = onnx_protect_trace::RecipientId::new(id)?;
    let key = read_fingerprint_secret(secret)?;
    let model = onnx_protect_format::Model::open(input)?;
    if let Some(m) = model.metadata.iter().find(|m| onnx_protect_core::metadata::is_manifest_key(&m.key)) {
        return Err(onnx_protect_core::error::CoreError::AlreadyProtected { key: m.key.clone() }.into());
    }
    // A model that cannot be locked is refused before anything is marked or recorded.
    let layer = match lock.lock_outputs {
        true => Some(
            onnx_protect_lock::find_output_layer(&model, lock.lock_node.as_deref())
                .map_err(onnx_protect_core::error::CoreError::from)
                .with_context(|| format!("encrypt {name}"))?,
        ),
        false => None,
    };
    let (marker, checked) = match &a.fingerprint_check {
        None => (
            onnx_protect_trace::Marker::new(&model, &key, &recipient, a.fingerprint_strength)
                .with_context(|| format!("fingerprint {name}"))?,
            None,
        ),
        Some(data) => {
            let (m, c) = crate::fingerprint_check::choose(&model, &key, &recipient, a.fingerprint_strength, data)
                .with_context(|| format!("fingerprint {name}"))?;
            (m, Some(c))
        }
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut entry = marker.ledger_entry(name, now);
    // A recipient's label lock is keyed by the fingerprint secret, so trace can recompute it.
    let seed = match layer {
        Some(layer) => {
            entry.lock = layer.classes as u64;
            Some(key.lock_seed(&recipient, marker.original())?)
        }
        None => None,
    };
    let added = onnx_protect_trace::ledger::append(ledger, &entry)?;
    let report = FingerprintReport {
        recipient: recipient.to_string(),
        key_id: key.key_id(),
        ledger: ledger.display().to_string(),
        already_recorded: added == onnx_protect_trace::Appended::AlreadyRecorded,
        alpha: marker.alpha(),
        tensors: marker.tensors(),
        elements: marker.elements(),
        variant: marker.variant(),
        checked,
    };
    Ok(Some((std::sync::Arc::new(marker), report, seed)))
}
