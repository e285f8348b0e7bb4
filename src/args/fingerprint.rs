//! `encrypt --fingerprint` and `encrypt --lock-outputs`: a recipient's marked copy and
//! outputs readable only with a key (docs/tracing.md, docs/protection.md).

use std::path::PathBuf;

use crate::stdio;

/// `encrypt --fingerprint ID`: a recipient's copy (docs/tracing.md).
#[derive(clap::Args)]
pub struct FingerprintArgs {
    /// Embed recipient ID's fingerprint in the weights, so a leaked decrypted copy can be traced
    /// to ID (docs/tracing.md). Needs --fingerprint-secret and --ledger.
    #[arg(long, value_name = "ID", requires_all = ["fingerprint_secret", "ledger"])]
    pub fingerprint: Option<String>,
    /// The publisher's fingerprint secret (keygen --fingerprint-secret).
    #[arg(long, value_name = "FILE", requires = "fingerprint", value_parser = stdio::file_path)]
    pub fingerprint_secret: Option<PathBuf>,
    /// The ledger that records who got which copy (created if missing; appended atomically).
    #[arg(long, value_name = "LEDGER", requires = "fingerprint", value_parser = stdio::file_path)]
    pub ledger: Option<PathBuf>,
    /// Fingerprint strength A: each marked weight moves by +A or -A times its tensor's standard deviation.
    #[arg(long, value_name = "ALPHA", requires = "fingerprint", default_value_t = onnx_protect_trace::DEFAULT_ALPHA)]
    pub fingerprint_strength: f64,
    /// Inputs (.npy, or .npz by input name) on which the marked copy must predict exactly the
    /// original's top-1 classes: the first of up to 64 variants of the mark that changes none
    /// is used (needs the tract feature).
    #[arg(long, value_name = "DATA", requires = "fingerprint", value_parser = stdio::file_path)]
    pub fingerprint_check: Option<PathBuf>,
}

/// `encrypt --lock-outputs`: outputs readable only with a key (docs/protection.md).
#[derive(clap::Args)]
pub struct LockArgs {
    /// Lock the class order of the output layer (a classifier's final Gemm or MatMul, with an
    /// optional Add, then Softmax/LogSoftmax/ArgMax/TopK): its rows and bias are stored in a keyed
    /// order, so the model run without the key reports wrong classes; run, the Python session,
    /// the C library and decrypt undo it with the key. With --fingerprint, each recipient's copy
    /// gets its own order, which trace reads.
    #[arg(long)]
    pub lock_outputs: bool,
    /// With --lock-outputs: the name of the output layer's Gemm or MatMul, for a model with several.
    #[arg(long, value_name = "NODE", requires = "lock_outputs")]
    pub lock_node: Option<String>,
    /// With --lock-outputs: encrypt no weight (the labels alone are locked; the model then runs
    /// anywhere without a loader, and only its answers need the key).
    #[arg(long, requires = "lock_outputs")]
    pub clear_weights: bool,
}

impl LockArgs {
    /// The lock asked for, keyed by `seed` (a recipient's) or a fresh one.
    pub fn request(&self, seed: Option<onnx_protect_lock::LockSeed>) -> Option<onnx_protect_core::lock::LockOutputs> {
        self.lock_outputs.then(|| onnx_protect_core::lock::LockOutputs {
            node: self.lock_node.clone(),
            seed,
            only: self.clear_weights,
        })
    }
}
