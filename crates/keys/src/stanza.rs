//! A recipient stanza (docs/format.md §8): a data key wrapped for one recipient, as
//! stored in a model, and the [`Provider`]s (key services outside this process) that
//! wrap and open stanzas of their own kinds.

use onnx_protect_crypto::KdfParams;
use zeroize::Zeroizing;

use crate::error::KeysError;

/// One wrapped data key, as stored in a model (the `Stanza` message without protobuf).
#[derive(Clone, PartialEq, Eq)]
pub struct Stanza {
    /// `key`, `passphrase`, `x25519`, or a provider's kind.
    pub kind: String,
    /// The tier whose data key the body wraps (1-based).
    pub tier: u32,
    /// Public identification of the recipient.
    pub label: String,
    /// Kind-specific salt (16 bytes for `key` and `passphrase`).
    pub salt: Vec<u8>,
    /// Argon2id parameters (`passphrase` only).
    pub kdf: Option<KdfParams>,
    /// The wrapped data key.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Stanza {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stanza({} tier {} '{}', {} bytes)", self.kind, self.tier, self.label, self.body.len())
    }
}

/// A data key wrapped by a [`Provider`].
#[derive(Debug, Clone)]
pub struct Wrapped {
    /// The stanza body.
    pub body: Vec<u8>,
    /// The public label of the stanza (a token URI without secrets, a KMS key name).
    pub label: String,
}

/// A key service outside this process that wraps and unwraps data keys: a PKCS#11
/// token, an external command (docs/keys.md).
pub trait Provider: Send + Sync {
    /// The stanza kind this provider writes and opens.
    fn kind(&self) -> &str;
    /// A short public description for reports and errors (never secret).
    fn describe(&self) -> String;
    /// Wraps the 32 bytes of the data key of `tier`.
    fn wrap(&self, tier: u32, data_key: &[u8; 32]) -> Result<Wrapped, KeysError>;
    /// Opens a stanza of this provider's kind: `Ok(None)` if it is not one of this
    /// provider's (another key, another label); an error if the provider failed.
    fn unwrap(&self, stanza: &Stanza) -> Result<Option<Zeroizing<[u8; 32]>>, KeysError>;
}
