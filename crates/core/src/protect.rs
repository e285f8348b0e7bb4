//! Encrypting, decrypting and verifying model files (docs/format.md).
//!
//! New files are written in format 2; format-1 files are still verified and decrypted
//! (read-only). Each verb is a short pipeline over a model file:
//!
//! * [`encrypt`]: open the model, refuse a protected one, check and stage the outputs,
//!   select what to encrypt (no key), draw a data key and wrap it for every recipient,
//!   then one pass encrypts the chosen ranges and hashes every byte it writes; the
//!   manifest entry, sealed over that digest, is appended last (`encrypt`).
//! * [`decrypt`], [`decrypt_tier`]: read the protection once ([`Protection`]), open a
//!   recipient stanza with the key, then one pass hashes every byte it reads while it
//!   writes the decrypted output into private staging; the output appears only if the
//!   digest, the MACs (and the signatures asked for) match. A full decryption gives back
//!   the original file byte for byte.
//! * [`verify`], [`verify_signed`]: the content digest without a key; with a key, the
//!   MACs too; the signatures of trusted signers when asked.
//! * [`sign`]: adds a publisher signature to a protected model.

use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{Model, NoProgress, Progress};
use onnx_protect_keys::{SignerKey, SigningKey};
#[cfg(test)]
use onnx_protect_select::Policy;

use crate::encrypt;
pub use crate::encrypt::{EncryptOptions, Member};
use crate::error::{CoreError, OutputRefused, Result, UnusableKey};
use crate::format1::warning_for;
use crate::format2::recipients::EncryptTo;
use crate::format2::seal::{recorded_digest, with_signatures};
use crate::format2::signer_texts;
use crate::keys::KeySource;
use crate::metadata::is_manifest_key;
use crate::pass::decryption::FileSink;
use crate::pass::staged::{check_output, check_output_as, protected_names, OutputRules};
use crate::protection::{open_protected, Protection, ProtectionView};
use crate::reader::Ask;
use crate::summary::{summaries, ProtectionInfo, TensorSummary};
use crate::target::Target;

/// What `encrypt` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EncryptReport {
    pub input: String,
    pub output: String,
    pub weight_bytes: u64,
    pub encrypted_bytes: u64,
    pub tensors: Vec<TensorSummary>,
    pub skipped: Vec<(String, String)>,
    /// Every weight with no encrypted byte, in model order. Their bytes are part of
    /// `weight_bytes`, the denominator of the encrypted share.
    pub clear: Vec<ClearTensor>,
    pub external_files: Vec<String>,
    /// Recipient stanzas written (one per recipient and tier).
    pub recipients: usize,
    /// Signatures written.
    pub signatures: usize,
    /// The label lock, if the outputs were locked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<crate::lock::LockReport>,
    /// Warnings about the protection itself (a policy that leaves weights clear on a model
    /// family where that was measured not to hold against re-learning).
    pub warnings: Vec<String>,
}

/// A weight `encrypt` left wholly clear.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClearTensor {
    pub name: String,
    /// Its element bytes.
    pub bytes: u64,
    /// The operator type of its first use.
    pub op_type: String,
    /// Its role ([`onnx_protect_format::TensorRole`]), as policies name it.
    pub role: &'static str,
}

/// What `decrypt` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecryptReport {
    pub input: String,
    pub output: String,
    pub tensors: usize,
    pub decrypted_bytes: u64,
    /// The manifest's format version.
    pub format_version: u32,
    /// [`FORMAT_1_WARNING`](crate::format1::FORMAT_1_WARNING) for a format-1 file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<&'static str>,
}

/// What `verify` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub input: String,
    /// `"checksum"` without a key, `"mac"` with one.
    pub check: &'static str,
    /// The manifest's format version.
    pub format_version: u32,
    pub tensors: usize,
    /// Bytes still encrypted in the file.
    pub encrypted_bytes: u64,
    /// Bytes of the tiers already decrypted in this file (`decrypt --tier`), in clear.
    pub restored_bytes: u64,
    /// Trusted signers whose signatures were verified.
    pub signers: Vec<String>,
    /// [`FORMAT_1_WARNING`](crate::format1::FORMAT_1_WARNING) for a format-1 file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<&'static str>,
}

/// Options of [`decrypt`].
pub struct DecryptOptions<'a> {
    pub in_place: bool,
    /// As [`EncryptOptions::sync`].
    pub sync: bool,
    /// As [`EncryptOptions::outputs`].
    pub outputs: OutputRules,
    /// Trusted publishers: when given, a model without a valid signature of one of them
    /// is refused.
    pub signers: &'a [SignerKey],
    pub progress: &'a dyn Progress,
}

impl Default for DecryptOptions<'_> {
    fn default() -> Self {
        DecryptOptions {
            in_place: false,
            sync: false,
            outputs: OutputRules::default(),
            signers: &[],
            progress: &NoProgress,
        }
    }
}

/// Encrypts `input` into `output` (atomically; external side files next to it) for the
/// recipients in `to`.
pub fn encrypt(input: &Path, output: &Path, to: &EncryptTo, opts: &EncryptOptions) -> Result<EncryptReport> {
    Ok(encrypt_as(input, output, to, None, opts)?.0)
}

/// What [`encrypt_member`] did.
#[derive(Debug, Clone)]
pub struct MemberReport {
    pub report: EncryptReport,
    /// The stream id after the last one the model's header uses: the
    /// [`Member::first_stream`] of the next model under the same keys.
    pub next_stream: u64,
}

/// Encrypts `input` into `output` as [`encrypt`] does, with the data keys and stanzas of
/// `member.keys` instead of fresh ones, its stream ids from `member.first_stream` and its
/// header's folder binding `member.folder` (docs/format.md §16). A label lock is refused
/// (its seal would reuse a nonce under the shared key).
pub fn encrypt_member(input: &Path, output: &Path, member: &Member, opts: &EncryptOptions) -> Result<MemberReport> {
    let (report, next_stream) = encrypt_as(input, output, &EncryptTo::default(), Some(member), opts)?;
    Ok(MemberReport { report, next_stream })
}

/// [`encrypt`], or [`encrypt_member`] with `member`; with the next stream id.
fn encrypt_as(
    input: &Path,
    output: &Path,
    to: &EncryptTo,
    member: Option<&Member>,
    opts: &EncryptOptions,
) -> Result<(EncryptReport, u64)> {
    let model = Model::open_with_progress(input, opts.progress)?;
    if let Some(m) = model.metadata.iter().find(|m| is_manifest_key(&m.key)) {
        return Err(CoreError::AlreadyProtected { key: m.key.clone() });
    }
    let names = protected_names(&model, output, opts.in_place)?;
    check_output_as(&model, input, output, opts.in_place, &opts.outputs, names.as_deref())?;
    if let Some(id) = opts.licence.as_ref().and_then(|l| l.model_id.as_deref()) {
        crate::licence::check_model_id(id)?;
    }
    let done = encrypt::encrypt(&model, output, to, opts, names.as_deref(), member)?;
    let encrypted_bytes = done.selection.bytes();
    let warnings = onnx_protect_select::risk::relearning_warning(
        &model,
        &onnx_protect_format::discover(&model),
        done.weight_bytes.saturating_sub(encrypted_bytes),
        done.weight_bytes,
    )
    .into_iter()
    .chain(onnx_protect_select::risk::attribute_parameters_warning(&model))
    .collect();
    let report = EncryptReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        weight_bytes: done.weight_bytes,
        encrypted_bytes,
        tensors: summaries(&model, &done.header.tensors, &done.targets),
        skipped: skipped_of(&model, &done.selection),
        clear: clear_of(&model, &done.selection),
        external_files: done.external,
        recipients: done.stanzas,
        signatures: opts.signing_keys.len(),
        lock: done.lock,
        warnings,
    };
    Ok((report, done.next_stream))
}

fn skipped_of(model: &Model, selection: &onnx_protect_select::Selection) -> Vec<(String, String)> {
    selection.skipped.iter().map(|s| (model.tensors[s.tensor].name.clone(), s.reason.clone())).collect()
}

fn clear_of(model: &Model, selection: &onnx_protect_select::Selection) -> Vec<ClearTensor> {
    selection
        .clear
        .iter()
        .map(|c| ClearTensor {
            name: model.tensors[c.tensor].name.clone(),
            bytes: c.nbytes,
            op_type: c.op_type.clone(),
            role: c.tensor_role.name(),
        })
        .collect()
}

/// What [`encrypt`] would do to `input` under `opts.policy` (and `opts.allow_empty`),
/// computed without a key and without writing anything (`encrypt --dry-run`): the
/// report of an encryption with public positions, no recipient and no output (secret
/// positions are chosen with the key, so their rows are not known before).
pub fn encrypt_plan(input: &Path, opts: &EncryptOptions) -> Result<EncryptReport> {
    let model = Model::open_with_progress(input, opts.progress)?;
    if let Some(m) = model.metadata.iter().find(|m| is_manifest_key(&m.key)) {
        return Err(CoreError::AlreadyProtected { key: m.key.clone() });
    }
    let (weight_bytes, selection, header, targets) = encrypt::plan(&model, opts.policy, opts.allow_empty)?;
    let clear_bytes = weight_bytes.saturating_sub(selection.bytes());
    let weights = onnx_protect_format::discover(&model);
    let warnings = onnx_protect_select::risk::relearning_warning(&model, &weights, clear_bytes, weight_bytes)
        .into_iter()
        .chain(onnx_protect_select::risk::attribute_parameters_warning(&model))
        .collect();
    Ok(EncryptReport {
        input: input.display().to_string(),
        output: String::new(),
        weight_bytes,
        encrypted_bytes: selection.bytes(),
        tensors: summaries(&model, &header.tensors, &targets),
        skipped: skipped_of(&model, &selection),
        clear: clear_of(&model, &selection),
        external_files: Vec::new(),
        recipients: 0,
        signatures: 0,
        warnings,
        lock: None,
    })
}

/// Verifies and decrypts `input` into `output`, restoring the original bytes.
pub fn decrypt(input: &Path, output: &Path, key: &KeySource, opts: &DecryptOptions) -> Result<DecryptReport> {
    decrypt_tier(input, output, key, None, opts)
}

/// Like [`decrypt`], for tiered models up to tier `tier` (default: the key's own
/// tier). Decrypting below the top tier writes a valid model whose higher tiers
/// stay encrypted, with the manifest recording which tiers are restored (format 2
/// only: format-1 files are decrypted whole).
pub fn decrypt_tier(
    input: &Path,
    output: &Path,
    key: &KeySource,
    tier: Option<u32>,
    opts: &DecryptOptions,
) -> Result<DecryptReport> {
    let model = open_protected(input, opts.progress)?;
    let protection = Protection::of(&model)?;
    // The outputs are checked before the key opens the model, when their names do not
    // depend on the tier the key reaches (and again once the decryption is planned).
    if let Some(names) = protection.reader().names_without_key(tier) {
        check_output_as(&model, input, output, opts.in_place, &opts.outputs, names)?;
    }
    let d = protection.into_decryption(&model, Ask { key, tier, signers: opts.signers })?;
    let (tensors, decrypted_bytes, format_version) = (d.tensors, d.decrypted_bytes, d.format_version);
    let sink = FileSink {
        input,
        output,
        in_place: opts.in_place,
        sync: opts.sync,
        rules: &opts.outputs,
        progress: opts.progress,
    };
    d.write(&sink)?;
    Ok(DecryptReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        tensors,
        decrypted_bytes,
        format_version,
        warning: warning_for(format_version),
    })
}

/// Decrypts a protected model into memory: the returned bytes are the original
/// model file (for a tiered model with a lower-tier key: the model with the key's
/// tiers restored). Models with external data need [`crate::memory`].
pub fn decrypt_to_vec(model: &Model, key: &KeySource) -> Result<Vec<u8>> {
    decrypt_tier_to_vec(model, key, None)
}

/// Like [`decrypt_to_vec`], up to tier `tier` (default: the key's own tier).
pub fn decrypt_tier_to_vec(model: &Model, key: &KeySource, tier: Option<u32>) -> Result<Vec<u8>> {
    if !model.external_files.is_empty() {
        return Err(OutputRefused::ExternalData.into());
    }
    Ok(crate::memory::InMemory::model(model, key).tier(tier).load()?.bytes().to_vec())
}

/// The top-tier key that `key` stands for in `model` (for a passphrase: its Argon2id
/// output under the model's parameters), after every check the key allows; and the
/// model's number of tiers. Lower tier keys derive from it as from a key file's.
pub fn top_master_key(model: &Model, key: &KeySource) -> Result<(MasterKey, u32)> {
    Protection::of(model)?.top_key(model, key)
}

/// The access tier of `key` for a protected model, after every check the key allows:
/// the number of tiers for the top key (1 for an untiered format-2 model, 0 for an
/// untiered format-1 model).
pub fn key_tier(model: &Model, key: &KeySource) -> Result<u32> {
    Protection::of(model)?.key_tier(model, key)
}

/// Verifies a protected model: with a key, every MAC the key allows; without, the
/// keyless digest (format 2) or checksums (format 1).
pub fn verify(input: &Path, key: Option<&KeySource>, progress: &dyn Progress) -> Result<VerifyReport> {
    verify_signed(input, key, &[], progress)
}

/// [`verify`], also requiring a valid signature of one of `signers` (when any are given).
pub fn verify_signed(
    input: &Path,
    key: Option<&KeySource>,
    signers: &[SignerKey],
    progress: &dyn Progress,
) -> Result<VerifyReport> {
    let model = open_protected(input, progress)?;
    let protection = Protection::of(&model)?;
    let targets = protection.verify(&model, key, signers)?;
    let warning = protection.warning();
    let view = protection.view();
    let in_clear = |t: &&Target| t.tier > 0 && t.tier <= view.restored_tiers;
    Ok(VerifyReport {
        input: input.display().to_string(),
        check: if key.is_some() { "mac" } else { "checksum" },
        format_version: view.format_version,
        tensors: view.targets.len(),
        encrypted_bytes: targets.iter().filter(|t| !in_clear(t)).map(Target::bytes).sum(),
        restored_bytes: targets.iter().filter(in_clear).map(Target::bytes).sum(),
        signers: signers.iter().map(SignerKey::to_text).collect(),
        warning,
    })
}

/// Reads the protection manifest, if any, for display.
pub fn protection_info(model: &Model) -> Result<Option<ProtectionInfo>> {
    Protection::read(model)?.map(|p| p.info(model)).transpose()
}

/// The [`ProtectionView`] of a protected model (its manifest validated against the model).
pub fn protection_view(model: &Model) -> Result<ProtectionView> {
    Ok(Protection::of(model)?.view())
}

/// The content digest and licence requirement of the protected (format 2) model at
/// `path`: what a publisher's licence names (`model: digest:…`, `model: id:…`).
pub fn licence_facts(path: &Path) -> Result<([u8; 32], Option<crate::licence::LicenceRequirement>)> {
    let model = open_protected(path, &NoProgress)?;
    let p = Protection::of(&model)?.writable("licensed")?;
    Ok((recorded_digest(&p.sealed)?, crate::licence::requirement(&p.sealed.header)?))
}

/// What `sign` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SignReport {
    pub input: String,
    pub output: String,
    /// Every signer of the output model.
    pub signers: Vec<String>,
}

/// Adds the signatures of `keys` to the format-2 model `input` (replacing an earlier
/// signature of the same key), after checking that its content matches its manifest;
/// writes `output` (which may be `input` with `in_place`) under `outputs`' rules.
pub fn sign(
    input: &Path,
    output: &Path,
    keys: &[SigningKey],
    in_place: bool,
    outputs: &OutputRules,
    progress: &dyn Progress,
) -> Result<SignReport> {
    let model = open_protected(input, progress)?;
    let p = Protection::of(&model)?.writable("signed")?;
    check_output(&model, input, output, in_place, outputs)?;
    p.verify_opened(&model, None, &[])?;
    if p.sealed.envelope.restored_tiers > 0 {
        return Err(UnusableKey::PartialSign.into());
    }
    let env = with_signatures(&p.sealed, keys)?;
    let signers = signer_texts(&env, "").into_iter().filter(|s| !s.is_empty()).collect();
    p.rewrite_entry(&model, env, output, in_place)?;
    Ok(SignReport { input: input.display().to_string(), output: output.display().to_string(), signers })
}

/// Used by tests and `NoProgress` callers.
pub fn no_progress() -> &'static dyn Progress {
    &NoProgress
}

/// Test helper: writes the format crate's tiny model to `dir/plain.onnx` and encrypts it
/// to `dir/protected.onnx` with a key of `key_byte`s. Returns both paths and the key.
#[cfg(test)]
pub(crate) fn encrypt_tiny(dir: &Path, key_byte: u8, policy: &Policy) -> (PathBuf, PathBuf, KeySource) {
    let plain = dir.join("plain.onnx");
    std::fs::write(&plain, onnx_protect_format::testutil::tiny_model()).unwrap();
    let out = dir.join("protected.onnx");
    let key = KeySource::key(MasterKey::from_bytes([key_byte; 32]));
    encrypt(&plain, &out, &EncryptTo::key(key.clone()), &EncryptOptions::new(policy)).unwrap();
    (plain, out, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{BadManifest, Modified};
    use crate::format1::manifest::{entry_field, read_protected};
    use onnx_protect_crypto::LeafHash;
    use onnx_protect_proto::v1 as pb;
    use onnx_protect_proto::Message;
    use onnx_protect_select::PolicyError;

    fn vector(name: &str) -> (PathBuf, KeySource) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/vectors").join(name);
        let key = onnx_protect_crypto::MasterKey::parse_key_file(&std::fs::read(dir.join("key.hex")).unwrap()).unwrap();
        (dir.join("protected.onnx"), KeySource::key(key))
    }

    /// A format-1 vector with its manifest's `leaf_hash` replaced (the MAC is not recomputed).
    fn with_leaf_hash(path: &Path, value: i32) -> Model {
        let model = Model::open(path).unwrap();
        let p = read_protected(&model).unwrap();
        let mut manifest = p.manifest.clone();
        manifest.leaf_hash = value;
        let envelope = pb::Envelope { manifest: manifest.encode_to_vec(), ..p.envelope.clone() };
        let entry = entry_field(&envelope);
        let bytes = model.bytes();
        let r = p.entry.range.clone();
        let out = [&bytes[..r.start as usize], &entry[..], &bytes[r.end as usize..]].concat();
        Model::from_vec(out, None).unwrap()
    }

    #[test]
    fn format_1_leaf_hash_choice_is_authenticated() {
        let (path, key) = vector("cnn_torch_ctr");
        let model = Model::open(&path).unwrap();
        let p = read_protected(&model).unwrap();
        assert!(decrypt_to_vec(&model, &key).is_ok());
        let other = match p.leaf_hash {
            LeafHash::Sha256 => onnx_protect_proto::v1::LeafHash::Blake3 as i32,
            LeafHash::Blake3 => onnx_protect_proto::v1::LeafHash::Sha256 as i32,
        };
        let e = decrypt_to_vec(&with_leaf_hash(&path, other), &key).unwrap_err();
        assert!(matches!(e, CoreError::Modified(Modified::Format1Mac)), "{e}");
        let Err(err) = read_protected(&with_leaf_hash(&path, 7)) else { panic!("leaf_hash 7 was accepted") };
        assert!(matches!(&err, CoreError::BadManifest(BadManifest::LeafHash { value: 7 })), "{err}");
    }

    /// Two models encrypted as members of one group (a folder, docs/format.md §16) share
    /// the data key and the stanzas, use disjoint stream ids, record their folder binding,
    /// and each decrypts alone; a member's outputs cannot be locked.
    #[test]
    fn members_share_the_keys_and_not_a_stream() {
        use crate::format2::recipients::SharedKeys;
        use onnx_protect_proto::v2 as pb2;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.onnx");
        std::fs::write(&plain, onnx_protect_format::testutil::tiny_model()).unwrap();
        let key = KeySource::key(MasterKey::from_bytes([5; 32]));
        let keys = SharedKeys::new(&EncryptTo::key(key.clone()), 1).unwrap();
        let policy = Policy::default();
        let opts = EncryptOptions::new(&policy);
        let binding = |path: &str| pb2::FolderBinding {
            folder_id: vec![7; 16],
            path: path.into(),
            models: vec!["a.onnx".into(), "b.onnx".into()],
            files: Vec::new(),
        };
        let member = |first_stream, path| Member { keys: &keys, first_stream, folder: Some(binding(path)) };
        let a = encrypt_member(&plain, &dir.path().join("a.onnx"), &member(0, "a.onnx"), &opts).unwrap();
        let b = encrypt_member(&plain, &dir.path().join("b.onnx"), &member(a.next_stream, "b.onnx"), &opts).unwrap();
        assert!(a.next_stream > 0);
        assert_eq!(b.next_stream, 2 * a.next_stream);
        let sealed = |name: &str| {
            let model = Model::open(dir.path().join(name)).unwrap();
            assert_eq!(decrypt_to_vec(&model, &key).unwrap(), std::fs::read(&plain).unwrap());
            match Protection::of(&model).unwrap() {
                Protection::V2(p) => p.sealed,
                Protection::V1(_) => panic!("format 1"),
            }
        };
        let (sa, sb) = (sealed("a.onnx"), sealed("b.onnx"));
        assert_eq!(sa.header.folder.as_deref(), Some(&binding("a.onnx")));
        assert_eq!(sb.header.folder.as_deref(), Some(&binding("b.onnx")));
        assert_eq!(sa.header.key_checks, sb.header.key_checks);
        assert_eq!(sa.raw_stanzas, sb.raw_stanzas);
        let streams =
            |s: &crate::format2::envelope::Sealed| s.header.tensors.iter().map(|e| e.stream_id).collect::<Vec<_>>();
        assert!(streams(&sa).iter().all(|s| !streams(&sb).contains(s)), "{:?} {:?}", streams(&sa), streams(&sb));
        // The lock's seed would be sealed twice under one nonce and key.
        let lock = crate::lock::LockOutputs { node: None, seed: None, only: false };
        let locked = EncryptOptions { lock: Some(&lock), ..EncryptOptions::new(&policy) };
        let e = encrypt_member(&plain, &dir.path().join("c.onnx"), &member(b.next_stream, "c.onnx"), &locked);
        assert!(matches!(e, Err(CoreError::Policy(PolicyError::LockSharedKey))), "{:?}", e.map(|r| r.next_stream));
        assert!(!dir.path().join("c.onnx").exists());
    }

    #[test]
    fn new_files_are_format_2_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, out, key) = encrypt_tiny(dir.path(), 9, &Policy::default());
        let model = Model::open(&out).unwrap();
        assert_eq!(Protection::of(&model).unwrap().format_version(), 2);
        assert_eq!(decrypt_to_vec(&model, &key).unwrap(), std::fs::read(&plain).unwrap());
        assert_eq!(key_tier(&model, &key).unwrap(), 1);
        let back = dir.path().join("back.onnx");
        decrypt(&out, &back, &key, &DecryptOptions::default()).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&plain).unwrap());
        let wrong = KeySource::key(onnx_protect_crypto::MasterKey::from_bytes([1; 32]));
        assert!(matches!(decrypt_to_vec(&model, &wrong), Err(CoreError::WrongKey)));
        verify(&out, None, &NoProgress).unwrap();
        verify(&out, Some(&key), &NoProgress).unwrap();
    }
}
