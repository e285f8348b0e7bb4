//! Recipient fingerprints in ONNX weights, and tracing a leaked copy back to its
//! recipient (docs/tracing.md).
//!
//! The publisher keeps a *fingerprint secret* and a *ledger*. Each recipient's copy of a
//! model gets a keyed spread-spectrum mark: every element of every planned weight tensor
//! ([`plan()`]) moves by `±α·σ` (σ: the tensor's standard deviation), the signs being a
//! pseudo-random ±1 pattern derived from the secret, the recipient ID and the tensor's
//! key ([`FingerprintKey::pattern`]). The ledger records who got a copy of which
//! original, never the secret. Given a suspect copy, the original and the ledger,
//! [`Tracer`] correlates the suspect's weight changes with every recipient's pattern and
//! names the recipient whose normalised score passes a threshold chosen for a bound on
//! false matches.
//!
//! ```no_run
//! use onnx_protect_format::Model;
//! use onnx_protect_trace::{FingerprintKey, Ledger, Marker, RecipientId, Tracer, DEFAULT_ALPHA};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (key, _secret_text) = FingerprintKey::generate()?;
//! let original = Model::open("model.onnx")?;
//! let marker = Marker::new(&original, &key, &RecipientId::new("alice")?, DEFAULT_ALPHA)?;
//! // `marker.rewrite` is the plaintext rewrite of an encryption
//! // (`EncryptOptions::rewrite` in onnx-protect-core); record the copy:
//! onnx_protect_trace::ledger::append("ledger.txt".as_ref(), &marker.ledger_entry("model.onnx", 0))?;
//!
//! let ledger = Ledger::read("ledger.txt".as_ref())?;
//! let suspect = Model::open("leaked.onnx")?;
//! let report = Tracer::for_ledger(&original, &key, &ledger)?.trace(&suspect, 1e-6)?;
//! println!("{:?}", report.matches.first().map(|m| &m.recipient));
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod detect;
pub mod error;
pub mod ledger;
pub mod mark;
pub mod order;
pub mod plan;
pub mod secret;

pub use detect::{bound, threshold, How, Matched, Score, TensorScore, TraceReport, Tracer, DEFAULT_FALSE_POSITIVE};
pub use error::{Result, TraceError};
pub use ledger::{Appended, Entry, Ledger, Mark};
pub use mark::{Marker, DEFAULT_ALPHA, MAX_ALPHA, MIN_ELEMENTS};
pub use order::{OrderReport, OrderScore};
pub use plan::{plan, weights_digest, Planned};
pub use secret::{FingerprintKey, RecipientId};
