//! Errors of this crate.

/// What went wrong with a TPM recipient, a TPM key file, a stanza or the TPM itself.
///
/// Messages never contain secret material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// A recipient string could not be parsed.
    #[error("not a TPM recipient: '{text}' ({reason})")]
    BadRecipient {
        /// The string as given (recipients are public).
        text: String,
        /// Why it was refused.
        reason: String,
    },
    /// Bytes that are not a P-256 point where one is needed.
    #[error("not a point of the P-256 curve")]
    BadPoint,
    /// A TPM key file could not be parsed (`line` 0: the file as a whole).
    #[error("TPM key file line {line}: {reason}")]
    BadKeyFile {
        /// 1-based line number, 0 for the whole file.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A persistent handle outside `0x81000000..=0x81FFFFFF`.
    #[error("handle 0x{0:08x} is outside the persistent range 0x81000000..=0x81ffffff")]
    BadHandle(u32),
    /// A `tpm` stanza body is malformed.
    #[error("tpm stanza body: {reason}")]
    BadBody {
        /// What is wrong.
        reason: String,
    },
    /// A primitive or the random number generator failed.
    #[error("{0}")]
    Crypto(String),
    /// This build has no TPM support (the crate's `tss` feature, the binary's `tpm`).
    #[error("this onnx-protect was built without TPM support (build it with the cargo feature 'tpm' and the system's TSS 2.0 libraries, Debian libtss2-dev)")]
    NotBuilt,
    /// The TPM could not be reached through the TCTI.
    #[error("cannot reach the TPM through '{tcti}': {reason}")]
    Unreachable {
        /// The TCTI configuration used.
        tcti: String,
        /// What the TSS reported.
        reason: String,
    },
    /// The key named by the key file is not in this TPM: its blob does not load under this
    /// TPM's storage root key, or the persistent handle is empty or holds another key.
    #[error("the TPM key {recipient} is not in this TPM: {reason}")]
    NotThisTpm {
        /// The key's recipient string.
        recipient: String,
        /// What the TPM answered.
        reason: String,
    },
    /// A persistent handle holds an object that cannot open models: not an ECC P-256
    /// decryption key usable with an empty authorization value inside this TPM only.
    #[error("the object at persistent handle 0x{handle:08x} cannot be used as an onnx-protect key: {reason}")]
    Unsuitable {
        /// The handle.
        handle: u32,
        /// What disqualifies it.
        reason: String,
    },
    /// A TPM command failed.
    #[error("TPM {op} failed: {reason}")]
    Device {
        /// The operation (`TPM2_CreatePrimary`, …).
        op: &'static str,
        /// What the TPM or the TSS reported.
        reason: String,
    },
}

impl From<TpmError> for onnx_protect_keys::KeysError {
    fn from(e: TpmError) -> Self {
        onnx_protect_keys::KeysError::Provider { provider: crate::KIND_TPM.to_string(), reason: e.to_string() }
    }
}
