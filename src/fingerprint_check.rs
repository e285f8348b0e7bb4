//! `encrypt --fingerprint-check DATA`: among the variants of a recipient's mark, the first
//! that changes no top-1 class of the original model on the publisher's inputs
//! (docs/tracing.md §2). Each variant is an independent pattern, so a sample close to a
//! decision boundary that one variant moves across is left alone by most others.

use std::path::Path;

use anyhow::Result;
use onnx_protect_format::Model;
use onnx_protect_trace::{FingerprintKey, Marker, RecipientId};

/// Variants tried before giving up.
#[cfg(feature = "tract")]
pub const MAX_VARIANTS: u32 = 64;

/// What the check did, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Checked {
    /// The inputs file.
    pub data: String,
    /// Samples run.
    pub samples: usize,
    /// Variants tried (the last one is the one used).
    pub tried: u32,
}

/// The first variant of `recipient`'s mark whose marked model gives every sample of `data`
/// the original's top-1 class.
#[cfg(feature = "tract")]
pub fn choose(
    model: &Model,
    key: &FingerprintKey,
    recipient: &RecipientId,
    alpha: f64,
    data: &Path,
) -> Result<(Marker, Checked)> {
    use anyhow::bail;
    use onnx_protect_runtime::assess::{Bench, InputSource};
    use onnx_protect_runtime::attack::TensorEdits;

    use crate::common::lift;

    let inputs = crate::common::arrays(data)?;
    let bench = Bench::new(model, &InputSource::Arrays(inputs), None, None).map_err(lift)?;
    let mut fewest = usize::MAX;
    for variant in 0..MAX_VARIANTS {
        let marker = Marker::with_variant(model, key, recipient, variant, alpha)?;
        let mut edits = TensorEdits::new(model).map_err(lift)?;
        for t in &model.tensors {
            let bytes = model.tensor_bytes(t.id)?;
            if let Some(marked) = marker.marked(t, &bytes) {
                edits.put(t, &marked, std::slice::from_ref(&(0..marked.len()))).map_err(lift)?;
            }
        }
        let marked = edits.finish().map_err(lift)?;
        let external = marked.external.iter().map(|(k, v)| (k.clone(), v.as_slice())).collect();
        let changed = bench.changed(&bench.run(&marked.model, &external).map_err(lift)?);
        if changed == 0 {
            let checked = Checked { data: data.display().to_string(), samples: bench.samples(), tried: variant + 1 };
            return Ok((marker, checked));
        }
        fewest = fewest.min(changed);
    }
    bail!(
        "every one of {MAX_VARIANTS} variants of the mark changes the top-1 class of at least {fewest} of the {} \
         samples of {}; lower --fingerprint-strength",
        bench.samples(),
        data.display()
    )
}

/// Without tract there is no runtime to check predictions with.
#[cfg(not(feature = "tract"))]
pub fn choose(_: &Model, _: &FingerprintKey, _: &RecipientId, _: f64, _: &Path) -> Result<(Marker, Checked)> {
    Err(crate::exit::UsageError(
        "--fingerprint-check runs the model: this build has no runtime (build with the tract feature)".into(),
    )
    .into())
}
