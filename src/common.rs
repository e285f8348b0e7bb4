//! What several commands share that is not an argument group: the runtime's errors and
//! arrays (`run`, `assess`, `policy search`, `encrypt --fingerprint-check`), the text of a
//! model's input transform (`encrypt-patch-embedding`, `inspect`) and the PEM keys of
//! bundles (`bundle`, `batch sign`, `check`).

use std::path::Path;

use anyhow::{Context, Result};
use onnx_protect_bundle::{PrivateKey, PublicKey};
use onnx_protect_format::Model;
use onnx_protect_transform::patch::TransformRecord;
use onnx_protect_transform::METADATA_KEY;

/// Keeps the library's error types visible to the exit-code mapping.
#[cfg(feature = "tract")]
pub fn lift(e: impl Into<onnx_protect_runtime::RuntimeError>) -> anyhow::Error {
    use onnx_protect_runtime::RuntimeError;
    match e.into() {
        RuntimeError::Core(c) => anyhow::Error::new(c),
        RuntimeError::Format(f) => anyhow::Error::new(f),
        other => anyhow::Error::new(other),
    }
}

/// Arrays of a .npz (by name) or one .npy (under the empty name).
#[cfg(feature = "tract")]
pub fn arrays(path: &Path) -> Result<std::collections::BTreeMap<String, onnx_protect_runtime::npy::NpyArray>> {
    use onnx_protect_runtime::npy::{read_npz, NpyArray};
    if path.extension().is_some_and(|e| e == "npz") {
        let all = read_npz(path).map_err(lift)?;
        if all.is_empty() {
            anyhow::bail!("{} holds no arrays", path.display());
        }
        Ok(all.into_iter().collect())
    } else {
        Ok([(String::new(), NpyArray::read(path).map_err(lift)?)].into())
    }
}

/// The lines that describe a recorded transform.
pub fn record_lines(r: &TransformRecord) -> String {
    let mut t = String::new();
    if let Some(p) = &r.position_embedding {
        t += &format!("  position embedding {p} ({} blocks)\n", r.blocks.unwrap_or(0));
    }
    t += &format!(
        "  transforms {} on {}×{} blocks of input '{}' ({} channels, {})\n",
        r.transforms.join(", "),
        r.block,
        r.block,
        r.input,
        r.channels,
        r.layout
    );
    if let Some([lo, hi]) = r.range {
        t += &format!("  value range [{lo}, {hi}]\n");
    }
    t += &format!("  key fingerprint {}\n", r.key_fingerprint);
    t
}

/// For `inspect`: a section describing the model's input transform, if it has one.
pub fn inspect_section(model: &Model) -> Result<()> {
    let Some(mut r) = TransformRecord::from_model(model)? else { return Ok(()) };
    // The record is the model's text: printed as itself, never as terminal controls.
    let p = |t: &mut String| *t = onnx_protect_core::inspect::printable(t).into_owned();
    r.transforms
        .iter_mut()
        .chain([&mut r.layout, &mut r.input, &mut r.key_fingerprint, &mut r.patch_embedding])
        .for_each(p);
    r.position_embedding.iter_mut().for_each(p);
    let mut t = format!("\ninput transform ({METADATA_KEY}): inputs must be key-transformed\n");
    t += &format!("  patch embedding {}\n", r.patch_embedding);
    t += &record_lines(&r);
    t += &format!("  prepare inputs with: {}", r.command_hint());
    crate::output::emit(&t)
}

/// The text of a PEM file.
fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// An ECDSA private key in PEM.
pub fn read_private(path: &Path) -> Result<PrivateKey> {
    Ok(PrivateKey::from_pem(&read_text(path)?, &path.display().to_string())?)
}

/// An ECDSA public key in PEM.
pub fn read_public(path: &Path) -> Result<PublicKey> {
    Ok(PublicKey::from_pem(&read_text(path)?, &path.display().to_string())?)
}
