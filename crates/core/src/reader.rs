//! What the reader of each format does with a protected model's entry, read and matched to
//! the model: the verbs [`Protection`](crate::protection::Protection) dispatches to
//! (`format2` for format 2, [`format1`](crate::format1) for format 1), one trait so that
//! both formats answer the same questions.

use onnx_protect_crypto::MasterKey;
use onnx_protect_format::Model;
use onnx_protect_keys::SignerKey;

use crate::error::Result;
use crate::keys::KeySource;
use crate::pass::decryption::Decryption;
use crate::summary::ProtectionInfo;
use crate::target::Target;

/// The verbs of one format's reader.
pub(crate) trait Reader {
    /// Verifies the model: with a key, every MAC the key allows; without, the keyless
    /// digest (format 2) or checksums (format 1); and the signatures of `signers`, when
    /// any are given. Returns the targets checked (secret positions unsealed as far as
    /// the key reaches).
    fn verify(&self, model: &Model, key: Option<&KeySource>, signers: &[SignerKey]) -> Result<Vec<Target>>;

    /// The access tier of `key`, after every check the key allows.
    fn key_tier(&self, model: &Model, key: &KeySource) -> Result<u32>;

    /// The top-tier key that `key` stands for (for a passphrase: its Argon2id output),
    /// after every check it allows, and the number of tiers; refused below the top tier.
    fn top_key(&self, model: &Model, key: &KeySource) -> Result<(MasterKey, u32)>;

    /// What `inspect` shows of the protection.
    fn info(&self, model: &Model) -> Result<ProtectionInfo>;

    /// The names of the external data files a decryption up to `tier` writes, when they
    /// are known before the key opens the model (`None` otherwise; `Some(None)`: their
    /// locations as they are).
    fn names_without_key(&self, tier: Option<u32>) -> Option<Option<&[String]>>;

    /// The decryption of `model` asked for by `ask`, after every check that needs no
    /// output: a key whose tiers are all in clear in the file already, with no tier asked
    /// for, gets the file as it is.
    fn decryption<'m>(&self, model: &'m Model, ask: Ask<'_>) -> Result<Decryption<'m>>;
}

/// What a decryption is asked for: the key that opens the model, the tier to restore up to
/// (default: the key's own) and the publishers whose signatures must be on the model.
#[derive(Clone, Copy)]
pub(crate) struct Ask<'a> {
    pub key: &'a KeySource,
    pub tier: Option<u32>,
    pub signers: &'a [SignerKey],
}
