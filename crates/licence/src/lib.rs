//! Signed licences of onnx-protect (docs/shipping.md#licences): a publisher states, with
//! its Ed25519 signer key (docs/format.md Appendix A), which models open for which
//! recipients or devices, with which access tiers, and when. A model encrypted with a
//! licence authority records that key; loaders then refuse to open it without a licence
//! that [`evaluate`]s to a [`Grant`].
//!
//! ```
//! use onnx_protect_keys::SigningKey;
//! use onnx_protect_licence::*;
//!
//! let publisher = SigningKey::generate()?;
//! let terms = Terms {
//!     authority: publisher.public(),
//!     licensee: Some("ACME Robotics".into()),
//!     models: vec![ModelRef::Id("detector-v3".into())],
//!     recipients: vec![RecipientRef::Any],
//!     tiers: 1,
//!     not_before: parse_utc("2025-01-01T00:00:00Z").unwrap(),
//!     not_after: parse_utc("2025-12-31T23:59:59Z").unwrap(),
//! };
//! let text = terms.issue(&publisher)?;
//! let licence = Licence::parse(text.as_bytes())?;
//! let model = ModelFacts { authority: publisher.public(), content_digest: [0; 32], model_id: Some("detector-v3".into()) };
//! let opener = Opener { kind: "key", label: "0123456789abcdef" };
//! let june = parse_utc("2025-06-01T00:00:00Z").unwrap();
//! assert_eq!(evaluate(&licence, &model, opener, june)?.tiers, 1);
//! let next_year = parse_utc("2026-06-01T00:00:00Z").unwrap();
//! assert!(matches!(evaluate(&licence, &model, opener, next_year), Err(LicenceError::Expired { .. })));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What a check in software stops, and what not, is in docs/shipping.md: it stops honest
//! customers and casual copies, not someone who holds the key and patches the loader.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod clock;
mod error;
mod eval;
mod text;
mod time;

pub use clock::{
    source_id, ClockFile, ClockState, TpmAnchor, TpmReading, CLOCK_STATE_ENV, CLOCK_STATE_TAG, MAX_TPM_ANCHORS,
    SET_BACK_TOLERANCE,
};
pub use error::LicenceError;
pub use eval::{evaluate, Grant, ModelFacts, Opener};
pub use text::{
    Licence, ModelRef, RecipientRef, Terms, LICENCE_SIGNATURE_LABEL, LICENCE_TAG, MAX_ENTRIES, MAX_LICENCE_LEN,
    MAX_TIERS, MAX_VALUE_LEN,
};
pub use time::{format_utc, parse_utc};
