//! The native engine of the JavaScript package (`js/`) in Node: a protected model file is
//! verified and decrypted by the Rust core (`memory::InMemory`: the file mapped,
//! hashed and decrypted on every core) on a libuv worker thread, and its bytes are handed
//! to JavaScript as `Buffer`s over the decrypted memory, without a copy. The package loads
//! it when it is there (docs/js.md, "The native engine") and falls back to its WebCrypto
//! engine otherwise.
//!
//! Failures reject with an `Error` whose message is `KIND` + U+001F + the message; the
//! package turns `KIND` into its typed exception ([`js_kind`]).

use std::path::PathBuf;

use napi::bindgen_prelude::{AsyncTask, Buffer, BufferSlice};
use napi::{Env, Error, Status, Task};
use napi_derive::napi;
use onnx_protect_core::error::{with_causes_at, CoreError, ErrorKind};
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::memory::{DecryptedBytes, InMemory};
use onnx_protect_core::protection::Protection;
use onnx_protect_keys::SignerKey;
use zeroize::Zeroizing;

/// Separates the kind from the message in a rejection's message.
const SEP: char = '\u{1f}';

/// The JavaScript package's error kind (`OnnxProtectError.kind`) of a core error kind.
pub fn js_kind(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Io => "io",
        ErrorKind::Model(_) => "invalid_model",
        // Header rules broken: "modified" (docs/format.md §3), as the JavaScript engine says.
        ErrorKind::BadManifest => "modified",
        ErrorKind::Key => "key",
        ErrorKind::NotProtected => "not_protected",
        ErrorKind::UnsupportedVersion => "unsupported_version",
        ErrorKind::WrongKey => "wrong_key",
        ErrorKind::Modified => "modified",
        ErrorKind::NotSigned => "not_signed",
        ErrorKind::AlreadyDecrypted => "already_decrypted",
        ErrorKind::Licence(l) => l.as_str(),
        _ => "internal",
    }
}

fn failure(kind: &str, message: impl std::fmt::Display) -> Error {
    Error::new(Status::GenericFailure, format!("{kind}{SEP}{message}"))
}

/// A core error about the model at `path` as a rejection: its kind, and its message with
/// its sources' messages, naming the file once.
fn core_failure(e: CoreError, path: &std::path::Path) -> Error {
    // The JavaScript engine's error for a tier beyond the key's is a usage error.
    let kind = if matches!(e, CoreError::TierOutOfReach { .. }) { "usage" } else { js_kind(e.kind()) };
    failure(kind, with_causes_at(&e, Some(path)))
}

/// The key material of a call: exactly one of `key` (32 raw bytes, 64 hex digits or a key
/// file's text), `passphrase` or `identity` (age identity file text).
fn key_source(key: Option<Buffer>, passphrase: Option<Buffer>, identity: Option<String>) -> napi::Result<KeySource> {
    match (key, passphrase, identity) {
        (Some(k), None, None) => {
            let (source, _) = KeySource::from_key_file(&k).map_err(|e| failure("key", format!("key: {e}")))?;
            Ok(source)
        }
        (None, Some(p), None) => Ok(KeySource::passphrase(Zeroizing::new(p.to_vec()))),
        (None, None, Some(text)) => {
            let tcti = onnx_protect_tpm::tcti_from_env();
            let id = onnx_protect_core::keys::parse_identity_file(
                &text,
                &tcti,
                std::sync::Arc::new(onnx_protect_keys::NoPrompt),
            )
            .map_err(|e| failure("key", format!("identity: {e}")))?;
            Ok(KeySource::new(id))
        }
        _ => Err(failure("usage", "give exactly one of key, passphrase and identity")),
    }
}

/// A decryption on a libuv worker thread.
pub struct Decrypt {
    path: PathBuf,
    key: KeySource,
    tier: Option<u32>,
    signers: Vec<SignerKey>,
}

/// What [`Decrypt`] computed, before it is handed to JavaScript.
pub struct Decrypted {
    model: DecryptedBytes,
    external: Vec<(String, DecryptedBytes)>,
    tier: u32,
    tiers: u32,
    tensors: u32,
    decrypted_bytes: f64,
}

/// A decrypted model as JavaScript sees it (`Decrypted` of js/src/reader/opened.ts, the external
/// files as two lists).
#[napi(object)]
pub struct DecryptedModel {
    pub model: Buffer,
    pub external_names: Vec<String>,
    pub external_data: Vec<Buffer>,
    pub tier: u32,
    pub tiers: u32,
    pub tensors: u32,
    pub decrypted_bytes: f64,
}

impl Task for Decrypt {
    type Output = Decrypted;
    type JsValue = DecryptedModel;

    fn compute(&mut self) -> napi::Result<Decrypted> {
        // The JavaScript package reads format 2 only; a format-1 model is refused before a
        // key is tried, as its own reader does.
        let accept = |p: &Protection| match p {
            Protection::V2(_) => Ok(()),
            Protection::V1(_) => {
                Err(CoreError::UnsupportedVersion { key: "onnx-protect/v1".into(), format_version: Some(1) })
            }
        };
        let m = InMemory::file(&self.path, &self.key)
            .tier(self.tier)
            .signers(&self.signers)
            .accept(&accept)
            .load()
            .map_err(|e| core_failure(e, &self.path))?;
        let (tier, tiers, tensors, decrypted_bytes) =
            (m.tier(), m.tiers(), m.tensors() as u32, m.decrypted_bytes() as f64);
        let (model, external) = m.into_parts();
        Ok(Decrypted { model, external: external.into_iter().collect(), tier, tiers, tensors, decrypted_bytes })
    }

    fn resolve(&mut self, env: Env, out: Decrypted) -> napi::Result<DecryptedModel> {
        let Decrypted { model, external, tier, tiers, tensors, decrypted_bytes } = out;
        let model = buffer_over(&env, model)?;
        let mut external_names = Vec::with_capacity(external.len());
        let mut external_data = Vec::with_capacity(external.len());
        for (name, bytes) in external {
            external_names.push(name);
            external_data.push(buffer_over(&env, bytes)?);
        }
        Ok(DecryptedModel { model, external_names, external_data, tier, tiers, tensors, decrypted_bytes })
    }
}

/// A `Buffer` over the decrypted bytes, which it owns: they are wiped and freed when the
/// buffer is collected. Where Node forbids buffers over outside memory (Electron), the
/// bytes are copied and the decrypted memory wiped at once.
fn buffer_over(env: &Env, bytes: DecryptedBytes) -> napi::Result<Buffer> {
    if bytes.is_empty() {
        return BufferSlice::copy_from(env, [])?.into_buffer(env);
    }
    // The backing is an owned buffer or a private writable map: JavaScript may write it.
    let ptr = bytes.as_ptr().cast_mut();
    let len = bytes.len();
    // SAFETY: `ptr` is valid for `len` bytes for as long as `bytes` lives; `bytes` is the
    // finalize hint, dropped (wiped and freed) only when the buffer is collected or, if
    // no external buffer can be made, after the copy.
    let slice = unsafe { BufferSlice::from_external(env, ptr, len, bytes, |_, b| drop(b)) }?;
    slice.into_buffer(env)
}

/// Verifies and decrypts the protected model at `path` (and its external data files) into
/// memory: `key` (32 raw bytes, 64 hex digits or a key file's text), `passphrase` or
/// `identity` (the text of an age identity file); `tier` 0 for the key's own; `signers`
/// the trusted publishers (`onnx-protect-signer1…`), none to accept an unsigned model.
#[napi]
pub fn decrypt_file(
    path: String,
    key: Option<Buffer>,
    passphrase: Option<Buffer>,
    identity: Option<String>,
    tier: u32,
    signers: Vec<String>,
) -> napi::Result<AsyncTask<Decrypt>> {
    let key = key_source(key, passphrase, identity)?;
    let signers = signers
        .iter()
        .map(|s| SignerKey::parse(s).map_err(|e| failure("key", format!("signer {s}: {e}"))))
        .collect::<napi::Result<Vec<_>>>()?;
    let tier = (tier != 0).then_some(tier);
    Ok(AsyncTask::new(Decrypt { path: PathBuf::from(path), key, tier, signers }))
}

/// The version of the Rust core this engine was built from.
#[napi]
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
