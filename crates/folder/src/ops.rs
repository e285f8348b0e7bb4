//! The verbs over a folder: encrypt, decrypt, verify, rewrap (docs/format.md §16).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use onnx_protect_core::error::{CoreError, Unsigned};
use onnx_protect_core::format2::recipients::{EncryptTo, SharedKeys};
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::pass::journal::Recovery;
use onnx_protect_core::protect::{DecryptOptions, DecryptReport, EncryptOptions, EncryptReport, Member, VerifyReport};
use onnx_protect_core::protection::Protection;
use onnx_protect_core::rewrap::{RewrapOptions, RewrapReport};
use onnx_protect_format::{Model, Progress};
use onnx_protect_keys::SignerKey;
use onnx_protect_proto::v2 as pb;

use crate::binding::{file_hash, FOLDER_ID_LEN, MAX_MODELS};
use crate::error::{io, FolderError, Result};
use crate::folder::{data_files, hex, model_error, CopiedFile, Folder};
use crate::path::is_model_name;
use crate::stage::{check_output, Staging};
use crate::walk::{walk, Links};

/// A copied file as reports show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileEntry {
    pub path: String,
    pub length: u64,
    /// Its hash (docs/format.md §16) in lowercase hex.
    pub blake3: String,
}

impl From<&CopiedFile> for FileEntry {
    fn from(f: &CopiedFile) -> FileEntry {
        FileEntry { path: f.path.clone(), length: f.length, blake3: f.hash_hex() }
    }
}

/// One model's report in a folder's, with the model's path relative to the folder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelReport<R> {
    pub path: String,
    #[serde(flatten)]
    pub report: R,
}

/// What [`encrypt`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EncryptedFolder {
    pub input: String,
    pub output: String,
    pub folder_id: String,
    /// One report per model, sorted by path (`input` and `output` are the model files).
    pub models: Vec<ModelReport<EncryptReport>>,
    pub files: Vec<FileEntry>,
}

/// What [`decrypt`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecryptedFolder {
    pub input: String,
    pub output: String,
    pub folder_id: String,
    pub models: Vec<ModelReport<DecryptReport>>,
    pub files: Vec<FileEntry>,
}

/// What [`verify`] found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifiedFolder {
    pub input: String,
    pub folder_id: String,
    pub models: Vec<ModelReport<VerifyReport>>,
    pub files: Vec<FileEntry>,
}

/// What [`rewrap`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RewrappedFolder {
    pub input: String,
    pub folder_id: String,
    pub models: Vec<ModelReport<RewrapReport>>,
    /// The models whose earlier in-place rewrap, interrupted by a crash, was finished or
    /// undone first (relative path, what was done).
    pub recovered: Vec<(String, Recovery)>,
}

/// A model of a folder to encrypt.
struct Plain {
    rel: String,
    abs: PathBuf,
}

/// Protects every model of the folder `input` (the files named `*.onnx`, with their
/// external data) into the new folder `output`, under one data key wrapped once for `to`
/// and with `opts` (a label lock and `in_place` are refused), and copies every other
/// file unchanged; each model's header binds it to the others and to the copied files
/// (docs/format.md §16). `output` must not exist or be an empty directory, outside
/// `input`; it is built beside itself and renamed into place at the end, so on any
/// error nothing is left. A link or special file in `input`, or an external data file of
/// two models, is refused.
pub fn encrypt(input: &Path, output: &Path, to: &EncryptTo, opts: &EncryptOptions) -> Result<EncryptedFolder> {
    if opts.in_place {
        return Err(FolderError::Options("a folder is encrypted into a new folder, not in place"));
    }
    if opts.lock.is_some() {
        return Err(FolderError::Options(
            "the outputs of a folder's models cannot be locked (they share a data key, and the lock's seal would \
             reuse a nonce under it)",
        ));
    }
    let meta = std::fs::metadata(input).map_err(io(input))?;
    if !meta.is_dir() {
        return Err(FolderError::NotADirectory { path: input.to_path_buf() });
    }
    let root = input.canonicalize().map_err(io(input))?;
    let found = walk(&root, Links::Refuse)?;
    let plain: Vec<Plain> = found
        .iter()
        .filter(|f| is_model_name(&f.rel))
        .map(|f| Plain { rel: f.rel.clone(), abs: f.abs.clone() })
        .collect();
    if plain.is_empty() {
        return Err(FolderError::NoModel { path: input.to_path_buf() });
    }
    if plain.len() > MAX_MODELS {
        return Err(FolderError::TooLarge { what: format!("the folder holds more than {MAX_MODELS} models") });
    }
    let mut data_of: BTreeMap<String, String> = BTreeMap::new();
    for m in &plain {
        let model = Model::open(&m.abs).map_err(|e| FolderError::Format { path: m.rel.clone(), source: e })?;
        for d in data_files(&m.rel, &model)? {
            if let Some(prev) = data_of.insert(d.clone(), m.rel.clone()) {
                if prev != m.rel {
                    let reason = format!(
                        "an external data file of both {prev} and {}: a data file two models share cannot be \
                         protected in a folder",
                        m.rel
                    );
                    return Err(FolderError::DataFile { path: d, reason });
                }
            }
        }
    }
    let mut files = Vec::new();
    for f in found.iter().filter(|f| !is_model_name(&f.rel) && !data_of.contains_key(&f.rel)) {
        let (length, hash) = file_hash(&f.abs)?;
        files.push(CopiedFile { path: f.rel.clone(), abs: f.abs.clone(), length, hash });
    }
    check_output(&root, output)?;
    let staging = Staging::new(output)?;
    let keys = SharedKeys::new(to, opts.policy.tiers.max(1)).map_err(|e| model_error(&plain[0].rel, e))?;
    let mut folder_id = [0u8; FOLDER_ID_LEN];
    getrandom::getrandom(&mut folder_id).map_err(|e| FolderError::Io { path: root.clone(), source: e.into() })?;
    let binding = pb::FolderBinding {
        folder_id: folder_id.to_vec(),
        path: String::new(),
        models: plain.iter().map(|m| m.rel.clone()).collect(),
        files: files
            .iter()
            .map(|f| pb::FolderFile { path: f.path.clone(), length: f.length, hash: f.hash.to_vec() })
            .collect(),
    };
    let mut reports = Vec::with_capacity(plain.len());
    let mut next_stream = 0;
    for m in &plain {
        let folder = Some(pb::FolderBinding { path: m.rel.clone(), ..binding.clone() });
        let member = Member { keys: &keys, first_stream: next_stream, folder };
        let out = staging.place(&m.rel)?;
        let done = onnx_protect_core::protect::encrypt_member(&m.abs, &out, &member, opts)
            .map_err(|e| model_error(&m.rel, e))?;
        next_stream = done.next_stream;
        reports.push(ModelReport { path: m.rel.clone(), report: renamed(done.report, staging.dir(), output) });
    }
    copy_files(&files, &staging, opts.sync)?;
    staging.commit()?;
    Ok(EncryptedFolder {
        input: input.display().to_string(),
        output: output.display().to_string(),
        folder_id: hex(&folder_id),
        models: reports,
        files: files.iter().map(FileEntry::from).collect(),
    })
}

/// An encryption report whose paths name the staging directory, with the output's name.
fn renamed(mut r: EncryptReport, staging: &Path, output: &Path) -> EncryptReport {
    let (from, to) = (staging.display().to_string(), output.display().to_string());
    let fix = |s: &mut String| {
        if let Some(rest) = s.strip_prefix(&from) {
            *s = format!("{to}{rest}");
        }
    };
    fix(&mut r.output);
    r.external_files.iter_mut().for_each(fix);
    r
}

/// Copies `files` into the staging directory, checking each copy's length and hash
/// against those recorded (a file that changed meanwhile is refused).
fn copy_files(files: &[CopiedFile], staging: &Staging, sync: bool) -> Result<()> {
    for f in files {
        let dest = staging.place(&f.path)?;
        std::fs::copy(&f.abs, &dest).map_err(io(&f.abs))?;
        let (length, hash) = file_hash(&dest)?;
        if length != f.length || hash != f.hash {
            let what = "it changed while it was being copied".to_string();
            return Err(FolderError::FileChanged { path: f.path.clone(), what });
        }
        if sync {
            std::fs::File::open(&dest).and_then(|d| d.sync_all()).map_err(io(&dest))?;
        }
    }
    Ok(())
}

/// Decrypts every model of the protected folder `input` into the new folder `output`
/// (up to tier `tier`, as [`onnx_protect_core::protect::decrypt_tier`] does for a model)
/// after [`Folder::open`]'s checks, and copies the other files, each checked against its
/// recorded hash. Every model is verified (content digest, MACs, `opts.signers`) before
/// the output appears; a full decryption gives back the original folder byte for byte.
/// `output` is as for [`encrypt`]; on any error nothing is left. A file that is not part
/// of the protected folder is refused, as [`verify`] refuses it.
pub fn decrypt(
    input: &Path,
    output: &Path,
    key: &KeySource,
    tier: Option<u32>,
    opts: &DecryptOptions,
) -> Result<DecryptedFolder> {
    if opts.in_place {
        return Err(FolderError::Options("a folder is decrypted into a new folder, not in place"));
    }
    let folder = Folder::open(input)?;
    check_output(folder.root(), output)?;
    let staging = Staging::new(output)?;
    let mut reports = Vec::with_capacity(folder.models().len());
    for m in folder.models() {
        let out = staging.place(&m.path)?;
        let mut r = onnx_protect_core::protect::decrypt_tier(&m.abs, &out, key, tier, opts)
            .map_err(|e| model_error(&m.path, e))?;
        r.output = output.join(&m.path).display().to_string();
        reports.push(ModelReport { path: m.path.clone(), report: r });
    }
    copy_files(folder.files(), &staging, opts.sync)?;
    staging.commit()?;
    Ok(DecryptedFolder {
        input: input.display().to_string(),
        output: output.display().to_string(),
        folder_id: folder.id_hex(),
        models: reports,
        files: folder.files().iter().map(FileEntry::from).collect(),
    })
}

/// Verifies the protected folder `input`: [`Folder::open`]'s checks, then every model as
/// [`onnx_protect_core::protect::verify_signed`] verifies one (its content digest; with
/// `key`, its MACs; the signatures of `signers`).
pub fn verify(
    input: &Path,
    key: Option<&KeySource>,
    signers: &[SignerKey],
    progress: &dyn Progress,
) -> Result<VerifiedFolder> {
    let folder = Folder::open(input)?;
    let mut reports = Vec::with_capacity(folder.models().len());
    for m in folder.models() {
        let r = onnx_protect_core::protect::verify_signed(&m.abs, key, signers, progress)
            .map_err(|e| model_error(&m.path, e))?;
        reports.push(ModelReport { path: m.path.clone(), report: r });
    }
    Ok(VerifiedFolder {
        input: input.display().to_string(),
        folder_id: folder.id_hex(),
        models: reports,
        files: folder.files().iter().map(FileEntry::from).collect(),
    })
}

/// Finishes (or undoes) the in-place rewrite of every model of the folder `input` (every
/// file named `*.onnx`) that a crash interrupted, as
/// [`onnx_protect_core::pass::journal::recover`] does for one model; returns the models it
/// acted on (relative path, what was done). [`Folder::open`] does the same silently.
pub fn recover(input: &Path) -> Result<Vec<(String, Recovery)>> {
    let meta = std::fs::metadata(input).map_err(io(input))?;
    if !meta.is_dir() {
        return Err(FolderError::NotADirectory { path: input.to_path_buf() });
    }
    let root = input.canonicalize().map_err(io(input))?;
    let mut recovered = Vec::new();
    for f in walk(&root, Links::FollowToFiles)?.iter().filter(|f| is_model_name(&f.rel)) {
        match onnx_protect_core::pass::journal::recover(&f.abs).map_err(|e| model_error(&f.rel, e))? {
            Recovery::Nothing => {}
            r => recovered.push((f.rel.clone(), r)),
        }
    }
    Ok(recovered)
}

/// Rewraps every model of the protected folder `input` in place, the same way (`opts`,
/// whose `in_place` must be set), so that every model keeps the same recipients. Before
/// any model is rewritten: [`Folder::open`]'s checks, and for every model that `key` opens
/// it at its top tier and that no signature would go stale (a signer not among
/// `opts.signing_keys`, without `opts.drop_signatures`). Each model's tail is rewritten as
/// [`onnx_protect_core::rewrap::rewrap`] rewrites it, safe against a crash (the next access
/// finishes or undoes it). Should a model still fail after others were rewritten (a write
/// that fails), the error names them ([`FolderError::PartlyRewrapped`]).
pub fn rewrap(input: &Path, key: &KeySource, opts: &RewrapOptions) -> Result<RewrappedFolder> {
    if !opts.in_place {
        return Err(FolderError::Options("a folder is rewrapped in place"));
    }
    // An earlier rewrap of a model that a crash interrupted is finished (or undone) first,
    // and said.
    let recovered = recover(input)?;
    let folder = Folder::open(input)?;
    for m in folder.models() {
        let model = onnx_protect_core::protection::open_protected(&m.abs, opts.progress)
            .map_err(|e| model_error(&m.path, e))?;
        let key_tier = onnx_protect_core::protect::key_tier(&model, key).map_err(|e| model_error(&m.path, e))?;
        if key_tier < folder.tiers() {
            let operation = "rewrap (every tier's MAC)";
            let source = CoreError::NotTopKey { key_tier, tiers: folder.tiers(), operation, by_licence: false };
            return Err(model_error(&m.path, source));
        }
        if let Protection::V2(p) = Protection::of(&model).map_err(|e| model_error(&m.path, e))? {
            let renewed: Vec<[u8; 32]> = opts.signing_keys.iter().map(|k| k.public().to_bytes()).collect();
            let signatures = &p.sealed.envelope.signatures;
            let count = signatures.iter().filter(|s| !renewed.iter().any(|r| r[..] == s.public_key[..])).count();
            if count > 0 && !opts.drop_signatures {
                return Err(model_error(&m.path, CoreError::NotSigned(Unsigned::Stale { count })));
            }
        }
    }
    let mut reports = Vec::with_capacity(folder.models().len());
    let mut done: Vec<String> = Vec::new();
    for m in folder.models() {
        match onnx_protect_core::rewrap::rewrap(&m.abs, &m.abs, key, opts) {
            Ok(r) => {
                reports.push(ModelReport { path: m.path.clone(), report: r });
                done.push(m.path.clone());
            }
            Err(source) if done.is_empty() => return Err(model_error(&m.path, source)),
            Err(source) => {
                return Err(FolderError::PartlyRewrapped { path: m.path.as_str().into(), done: done.into(), source })
            }
        }
    }
    Ok(RewrappedFolder { input: input.display().to_string(), folder_id: folder.id_hex(), models: reports, recovered })
}
