//! TPM recipients and identities as key providers of `onnx-protect-keys`: a recipient wraps
//! without the device; an identity (a TPM key file and a TCTI) opens `tpm` stanzas through
//! the TPM.

use onnx_protect_keys::{KeysError, Provider, Stanza, Wrapped};
use zeroize::Zeroizing;

use crate::{TpmError, TpmKeyFile, TpmRecipient, KIND_TPM};

/// Wraps data keys for a TPM recipient (no device needed); opens nothing.
pub struct TpmRecipientProvider(pub TpmRecipient);

impl Provider for TpmRecipientProvider {
    fn kind(&self) -> &str {
        KIND_TPM
    }

    fn describe(&self) -> String {
        self.0.to_text()
    }

    fn wrap(&self, tier: u32, data_key: &[u8; 32]) -> Result<Wrapped, KeysError> {
        Ok(Wrapped { body: self.0.wrap(tier, data_key)?, label: self.0.to_text() })
    }

    fn unwrap(&self, _stanza: &Stanza) -> Result<Option<Zeroizing<[u8; 32]>>, KeysError> {
        Ok(None)
    }
}

/// A TPM key on this machine: opens the `tpm` stanzas wrapped for it, through the TPM.
pub struct TpmIdentity {
    key: TpmKeyFile,
    tcti: String,
}

impl TpmIdentity {
    /// The key named by `key`, reached through the TCTI configuration `tcti`.
    pub fn new(key: TpmKeyFile, tcti: &str) -> TpmIdentity {
        TpmIdentity { key, tcti: tcti.to_string() }
    }

    /// The key's public recipient.
    pub fn recipient(&self) -> &TpmRecipient {
        &self.key.recipient
    }

    /// Opens a `tpm` stanza body of `tier`: `Ok(None)` if it was wrapped for another key
    /// (its ECDH gives another key-encryption key) or changed.
    pub fn open(&self, tier: u32, body: &[u8]) -> Result<Option<Zeroizing<[u8; 32]>>, TpmError> {
        self.key.recipient.open(tier, body, |x, y| crate::ecdh(&self.tcti, &self.key, x, y))
    }
}

impl Provider for TpmIdentity {
    fn kind(&self) -> &str {
        KIND_TPM
    }

    fn describe(&self) -> String {
        self.key.recipient.to_text()
    }

    fn wrap(&self, tier: u32, data_key: &[u8; 32]) -> Result<Wrapped, KeysError> {
        TpmRecipientProvider(self.key.recipient.clone()).wrap(tier, data_key)
    }

    /// A stanza labelled with another recipient is skipped without using the TPM.
    fn unwrap(&self, stanza: &Stanza) -> Result<Option<Zeroizing<[u8; 32]>>, KeysError> {
        if stanza.kind != KIND_TPM || stanza.label != self.key.recipient.to_text() {
            return Ok(None);
        }
        Ok(self.open(stanza.tier, &stanza.body)?)
    }
}
