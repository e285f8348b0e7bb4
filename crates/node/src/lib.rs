//! The native engine of the JavaScript package (`js/`) in Node: a protected model file is
//! verified and decrypted by the Rust core (`memory::InMemory`: the file mapped,
//! hashed and decrypted on every core) on a libuv worker thread, and its bytes are handed
//! to JavaScript as `Buffer`s over the decrypted memory, without a copy. The package loads
//! it when it is there (docs/js.md, "The native engine") and falls back to its WebCrypto
//! engine otherwise.
//!
//! For a session (`createSessionFromFile`), the external data files can instead be memory
//! filled on demand (`InMemory::on_demand`): each chunk is read, checked and decrypted
//! when onnxruntime first reads it, and the [`Region`] handed back beside the buffers
//! settles them (every chunk verified) once the session is built. When tensors of 16 MiB or
//! more hold most of the model file's weights, those weights are filled on demand as well:
//! the session gets a graph without weight bytes and every large tensor as external data in
//! buffers (`onnx_protect_session::files`, as the C library and `ort` hand them over), which
//! onnxruntime-node copies once, where a whole decrypted model would be parsed beside the
//! decrypted bytes.
//!
//! Failures reject with an `Error` whose message is `KIND` + U+001F + the message; the
//! package turns `KIND` into its typed exception ([`js_kind`]).

use std::path::PathBuf;
use std::sync::Arc;

use napi::bindgen_prelude::{AsyncTask, Buffer, BufferSlice};
use napi::{Env, Error, Status, Task};
use napi_derive::napi;
use onnx_protect_core::error::{with_causes_at, CoreError, ErrorKind};
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::memory::{DecryptedBytes, DecryptedModel as Loaded, InMemory, Method};
use onnx_protect_core::protection::Protection;
use onnx_protect_format::{Model, TensorData};
use onnx_protect_keys::SignerKey;
use onnx_protect_session::{lay_out, FileBuffer};
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
    on_demand: bool,
}

/// One buffer handed to JavaScript: decrypted bytes, the graph built for a session, or a
/// session's file ([`onnx_protect_session::lay_out`]).
enum Held {
    File(FileBuffer),
    Graph(Zeroizing<Vec<u8>>),
}

impl Held {
    fn whole(bytes: DecryptedBytes) -> Held {
        let len = bytes.len();
        Held::File(FileBuffer::Decrypted(bytes, len))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Held::File(b) => b.bytes(),
            Held::Graph(g) => g,
        }
    }

    fn filled_on_demand(&self) -> Option<&DecryptedBytes> {
        match self {
            Held::File(FileBuffer::Decrypted(d, _)) if d.method() == Method::OnDemand => Some(d),
            _ => None,
        }
    }
}

/// What [`Decrypt`] computed, before it is handed to JavaScript.
pub struct Decrypted {
    model: Held,
    external: Vec<(String, Held)>,
    tier: u32,
    tiers: u32,
    tensors: u32,
    decrypted_bytes: f64,
    graph: bool,
}

/// A decrypted model as JavaScript sees it (`Decrypted` of js/src/reader/opened.ts, the external
/// files as two lists), and the region its external data is filled in when it was asked
/// for on demand and made so.
#[napi(object, object_from_js = false)]
pub struct DecryptedModel {
    pub model: Buffer,
    pub external_names: Vec<String>,
    pub external_data: Vec<Buffer>,
    pub tier: u32,
    pub tiers: u32,
    pub tensors: u32,
    pub decrypted_bytes: f64,
    pub region: Option<Region>,
    /// `model` is a graph built for a session (its large tensors in `external_data`, a label
    /// lock checked), not the model file's bytes.
    pub graph: bool,
}

/// Memory filled on demand: one region holds every external file (and, for a session, the
/// model file's large weights), so one of its buffers answers for all (the region stays
/// until it and every buffer are collected).
#[napi]
pub struct Region {
    path: PathBuf,
    any: Arc<Held>,
}

impl Region {
    fn bytes(&self) -> &DecryptedBytes {
        match self.any.filled_on_demand() {
            Some(d) => d,
            None => unreachable!("a region is made only over memory filled on demand"),
        }
    }
}

#[napi]
impl Region {
    /// Verifies every chunk not read so far and stops dropping chunks read; an error (kind
    /// "modified", or the file that could not be read) when a chunk did not match its hash:
    /// it was read as zeros, and the session built from the buffers must be thrown away.
    #[napi]
    pub fn settle(&self) -> napi::Result<()> {
        self.bytes().settle().map_err(|e| core_failure(e, &self.path))
    }

    /// After a successful `settle`, drops every chunk filled so far (a reader that copied
    /// what it needs, as onnxruntime-node does with external data given in memory); a chunk
    /// read again is filled and verified again.
    #[napi]
    pub fn trim(&self) {
        self.bytes().trim();
    }
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
        let at = |e: CoreError| core_failure(e, &self.path);
        let opening = InMemory::file(&self.path, &self.key)
            .tier(self.tier)
            .signers(&self.signers)
            .accept(&accept)
            .on_demand(self.on_demand)
            // onnxruntime-node (to 1.30) copies external data given in memory, once.
            .read_once(true);
        if self.on_demand {
            // A session: the graph and its buffers (a label-locked model below its top tier
            // is refused here, as its scores would come in locked order). A graph without
            // weight bytes spares onnxruntime-node a parse holding a copy of every tensor
            // beside the decrypted ones (ViT-B/16: 1.22× onnxruntime-node's peak RSS
            // against 1.53× for the decrypted model parsed, docs/performance.md).
            let large = onnx_protect_core::memory::on_demand_available() && weights_mostly_large(&self.path);
            let (m, index) = opening.model_on_demand(large).load_for_session().map_err(at)?;
            return session_files(m, &index).map_err(at);
        }
        let m = opening.load().map_err(at)?;
        let (tier, tiers, tensors, decrypted_bytes) =
            (m.tier(), m.tiers(), m.tensors() as u32, m.decrypted_bytes() as f64);
        let (model, external) = m.into_parts();
        let external = external.into_iter().map(|(n, b)| (n, Held::whole(b))).collect();
        Ok(Decrypted { model: Held::whole(model), external, tier, tiers, tensors, decrypted_bytes, graph: false })
    }

    fn resolve(&mut self, env: Env, out: Decrypted) -> napi::Result<DecryptedModel> {
        let Decrypted { model, external, tier, tiers, tensors, decrypted_bytes, graph } = out;
        let model = buffer_over(&env, Arc::new(model))?;
        let mut external_names = Vec::with_capacity(external.len());
        let mut external_data = Vec::with_capacity(external.len());
        let mut region = None;
        for (name, bytes) in external {
            let bytes = Arc::new(bytes);
            if region.is_none() && bytes.filled_on_demand().is_some() {
                region = Some(Region { path: self.path.clone(), any: Arc::clone(&bytes) });
            }
            external_names.push(name);
            external_data.push(buffer_over(&env, bytes)?);
        }
        Ok(DecryptedModel {
            model,
            external_names,
            external_data,
            tier,
            tiers,
            tensors,
            decrypted_bytes,
            region,
            graph,
        })
    }
}

/// A `Buffer` over the decrypted bytes, which it shares: they are wiped and freed when the
/// buffer (and any [`Region`] holding them) is collected. Where Node forbids buffers over
/// outside memory (Electron), the bytes are copied and the decrypted memory wiped at once.
fn buffer_over(env: &Env, held: Arc<Held>) -> napi::Result<Buffer> {
    let bytes = held.bytes();
    if bytes.is_empty() {
        return BufferSlice::copy_from(env, [])?.into_buffer(env);
    }
    // The backing is an owned buffer, a private writable map or a writable region filled
    // on demand: JavaScript may write it.
    let ptr = bytes.as_ptr().cast_mut();
    let len = bytes.len();
    let bytes = held;
    // SAFETY: `ptr` is valid for `len` bytes for as long as `bytes` lives; `bytes` is the
    // finalize hint, dropped (and the memory, once no other holder is left, wiped and
    // freed) only when the buffer is collected or, if no external buffer can be made,
    // after the copy.
    let slice = unsafe { BufferSlice::from_external(env, ptr, len, bytes, |_, b| drop(b)) }?;
    slice.into_buffer(env)
}

/// Verifies and decrypts the protected model at `path` (and its external data files) into
/// memory: `key` (32 raw bytes, 64 hex digits or a key file's text), `passphrase` or
/// `identity` (the text of an age identity file); `tier` 0 for the key's own; `signers`
/// the trusted publishers (`onnx-protect-signer1…`), none to accept an unsigned model;
/// `on_demand` for a session: the external data filled on demand where the system allows
/// it ([`DecryptedModel::region`] then set, to be settled once the session is built).
#[napi]
pub fn decrypt_file(
    path: String,
    key: Option<Buffer>,
    passphrase: Option<Buffer>,
    identity: Option<String>,
    tier: u32,
    signers: Vec<String>,
    on_demand: Option<bool>,
) -> napi::Result<AsyncTask<Decrypt>> {
    let key = key_source(key, passphrase, identity)?;
    let signers = signers
        .iter()
        .map(|s| SignerKey::parse(s).map_err(|e| failure("key", format!("signer {s}: {e}"))))
        .collect::<napi::Result<Vec<_>>>()?;
    let tier = (tier != 0).then_some(tier);
    Ok(AsyncTask::new(Decrypt { path: PathBuf::from(path), key, tier, signers, on_demand: on_demand.unwrap_or(false) }))
}

/// Whether external data can be filled on demand here (`decryptFile` with `on_demand`).
#[napi]
pub fn on_demand_available() -> bool {
    onnx_protect_core::memory::on_demand_available()
}

/// The version of the Rust core this engine was built from.
#[napi]
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// A tensor at least this long is large for [`weights_mostly_large`] (four region blocks).
const LARGE: u64 = 16 << 20;

/// Large tensors holding fewer bytes than this do not repay this path's fixed cost in Node (40–75 ms
/// of a session): a MobileNetV2 with one 20 MiB weight opened at 1.43× onnxruntime-node's
/// time filled on demand, 0.98× decrypted whole and parsed; with one 49 MiB weight 1.11× and 0.90×, at
/// 1.09× and 1.28× its peak RSS (docs/performance.md).
const LARGE_MIN_TOTAL: u64 = 48 << 20;

/// Whether tensors of at least [`LARGE`] bytes hold most of the bytes of the model file's
/// tensors of 64 KiB or more, and [`LARGE_MIN_TOTAL`] at least (`false` for a file that
/// cannot be read: the load then says why). Only then, and where memory can be filled on
/// demand, are the model file's weights filled on demand for a session (else the file is
/// decrypted whole and its tensors handed over from that buffer, which stays until the
/// session is built): onnxruntime-node (1.30) copies tensors given in memory in an order of its own,
/// not the file's, and a block dropped after one tensor is filled again for the next tensor
/// in it, which costs more time than it saves memory when most tensors span a block or two
/// (docs/performance.md).
fn weights_mostly_large(path: &std::path::Path) -> bool {
    let Ok(model) = Model::open(path) else { return false };
    let (mut all, mut large) = (0u64, 0u64);
    for t in &model.tensors {
        if let TensorData::Raw { range } = &t.data {
            let n = range.end - range.start;
            if n >= 64 << 10 {
                all += n;
                if n >= LARGE {
                    large += n;
                }
            }
        }
    }
    large > all / 2 && large >= LARGE_MIN_TOTAL
}

/// The graph and the buffers of a session from `m` (indexed by `index`): every large tensor
/// external data in buffers named anew in the process (`onnx_protect_session::lay_out`).
fn session_files(m: Loaded, index: &Model) -> Result<Decrypted, CoreError> {
    let mut m = m;
    let skeleton = m.take_skeleton();
    let (tier, tiers, tensors, decrypted_bytes) = (m.tier(), m.tiers(), m.tensors() as u32, m.decrypted_bytes() as f64);
    let (model, external) = m.into_parts();
    let (graph, files) = lay_out(index, model, skeleton, external, "onnx-protect-node")?.into_buffers()?;
    let external = files.into_iter().map(|(name, b)| (name, Held::File(b))).collect();
    let model = Held::Graph(Zeroizing::new(graph));
    Ok(Decrypted { model, external, tier, tiers, tensors, decrypted_bytes, graph: true })
}
