//! Errors of this crate.

use onnx_protect_crypto::CryptoError;

/// What went wrong with a key, a recipient, an identity or a signature.
///
/// Messages never contain secret material: a bad secret key line is named by its
/// number, never shown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    /// A primitive or the random number generator failed, or a passphrase's
    /// parameters are invalid.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A recipient string could not be parsed.
    #[error("not a recipient: '{text}' ({reason})")]
    BadRecipient {
        /// The string as given (recipients are public).
        text: String,
        /// Why it was refused.
        reason: String,
    },
    /// A line of an identity file could not be parsed.
    #[error("identity file line {line}: {reason}")]
    BadIdentity {
        /// 1-based line number.
        line: usize,
        /// Why it was refused.
        reason: String,
    },
    /// A signing or signer key could not be parsed.
    #[error("{0}")]
    BadSigningKey(String),
    /// A passphrase stanza asks for Argon2id work above the documented cap.
    #[error(
        "the passphrase parameters in this model (m = {m_cost_kib} KiB, t = {t_cost}, p = {p_cost}) exceed the \
         limits onnx-protect accepts (m ≤ {max_m} KiB, t ≤ {max_t}, p ≤ {max_p}); refusing before running Argon2id"
    )]
    KdfOverLimit {
        /// Memory cost asked for.
        m_cost_kib: u32,
        /// Passes asked for.
        t_cost: u32,
        /// Lanes asked for.
        p_cost: u32,
        /// The caps.
        max_m: u32,
        /// The caps.
        max_t: u32,
        /// The caps.
        max_p: u32,
    },
    /// A stanza is malformed (a wrong salt length, missing parameters).
    #[error("recipient stanza {index} ({kind}) is malformed: {reason}")]
    BadStanza {
        /// Position in the recipient list.
        index: usize,
        /// The stanza's kind.
        kind: String,
        /// What is wrong.
        reason: String,
    },
    /// A stanza list holds more stanzas of a costly kind than a file may.
    #[error("{count} recipient stanzas of kind '{kind}' ({max} at most: each try costs seconds)")]
    TooManyStanzas {
        /// The kind.
        kind: String,
        /// How many there are.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// A key command line cannot be used.
    #[error("key command '{command}': {reason}")]
    BadCommand {
        /// The command line as given.
        command: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A PKCS#11 URI cannot be used.
    #[error("PKCS#11 URI '{uri}': {reason}")]
    BadPkcs11Uri {
        /// The URI, its PIN value removed.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key provider (PKCS#11 token, external command) failed.
    #[error("key provider {provider}: {reason}")]
    Provider {
        /// The provider (its kind and label).
        provider: String,
        /// What it reported.
        reason: String,
    },
}
