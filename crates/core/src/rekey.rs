//! Key rotation: re-encrypting a protected model under a new key in one pass.
//!
//! [`rekey`] keeps every key-independent part of the manifest (tensors, locators,
//! spans, modes, stream ids, chunk size, policy summary) and replaces only the
//! salt, the key check value and the KDF parameters. The procedure:
//!
//! 1. read and validate the manifest; check the old key's key check value;
//! 2. one parallel pass over the encrypted ranges: each chunk is hashed as it is
//!    (the old ciphertext, for the old MAC), then copied into a scratch buffer,
//!    decrypted with the old keystream and encrypted with the new one, and hashed
//!    again (the new ciphertext, for the new MAC). The scratch buffers are wiped;
//! 3. the old MAC and checksum are verified. Nothing has been written yet, so a
//!    wrong key or a modified model leaves no output at all;
//! 4. the output is streamed like an encryption: the encrypted ranges pass through
//!    "old keystream, then new keystream" in chunks, the manifest entry is replaced
//!    in place, external data files are written next to the output, and every file
//!    is staged and renamed into place only when all of them are complete.
//!
//! Plaintext exists only in memory, one chunk at a time.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use onnx_protect_crypto::{random_salt, Keystream, Leaf, LeafHash, SessionKeys};
use onnx_protect_format::write::{metadata_field, Content, Edit, Plan};
use onnx_protect_format::{FormatError, Model, Progress, TensorData};
use onnx_protect_proto::v1 as pb;
use onnx_protect_proto::Message;
use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::protect::{
    apply, b64, check_output, chunk_jobs, leaf_hash_to_pb, mac_and_checksum, read_protected, CoreError, KeySource,
    Protected, Result, Staged, Target, LEAF_HASH, MAC_INPUT_LABEL, METADATA_KEY,
};

/// Options of [`rekey`].
pub struct RekeyOptions<'a> {
    /// Overwrite the input (and its external data files).
    pub in_place: bool,
    pub progress: &'a dyn Progress,
}

/// What [`rekey`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RekeyReport {
    pub input: String,
    pub output: String,
    pub tensors: usize,
    /// Encrypted bytes re-encrypted under the new key.
    pub rekeyed_bytes: u64,
    /// Whether the new master key comes from a passphrase.
    pub passphrase: bool,
    /// External data files written next to the output.
    pub external_files: Vec<String>,
}

/// The old and the new keystream of one tensor.
struct Pair {
    old: Keystream,
    new: Keystream,
}

/// Decrypts `data` (logical offset `offset`) with the old keystream and encrypts it with the new one.
fn reapply(pair: &Pair, target: &Target, model: &Model, offset: u64, data: &mut [u8], parallel: bool) -> Result<()> {
    let dtype = model.tensors[target.tensor].data_type;
    apply(&pair.old, target.mode, dtype, offset, data, parallel)?;
    apply(&pair.new, target.mode, dtype, offset, data, parallel)
}

/// Chunk digests of the old ciphertext and of the new ciphertext, in one read pass.
/// The old leaves use the model's leaf hash; the new ones [`LEAF_HASH`], which the new manifest records.
fn digests(
    model: &Model,
    targets: &[Target],
    pairs: &[Pair],
    chunk: u64,
    old_hash: LeafHash,
) -> Result<Vec<([u8; 32], [u8; 32])>> {
    let mut decoded: HashMap<usize, Vec<u8>> = HashMap::new();
    for t in targets {
        if let TensorData::Varint { .. } = model.tensors[t.tensor].data {
            decoded.insert(t.tensor, model.tensor_bytes(t.tensor)?.into_owned());
        }
    }
    let jobs = chunk_jobs(targets, chunk);
    jobs.par_iter()
        .map(|job| -> Result<([u8; 32], [u8; 32])> {
            let target = &targets[job.target];
            let t = &model.tensors[target.tensor];
            let whole: std::borrow::Cow<[u8]> = match decoded.get(&target.tensor) {
                Some(v) => std::borrow::Cow::Borrowed(v.as_slice()),
                None => model.tensor_bytes(t.id)?,
            };
            let mut old_h = Leaf::new(old_hash, target.stream_id, job.index);
            let mut new_h = Leaf::new(LEAF_HASH, target.stream_id, job.index);
            let mut buf = Zeroizing::new(Vec::new());
            for &(a, b) in &job.parts {
                let src = whole
                    .get(a as usize..b as usize)
                    .ok_or_else(|| CoreError::BadManifest(format!("span of '{}' out of bounds", t.name)))?;
                old_h.update(src);
                buf.clear();
                buf.extend_from_slice(src);
                reapply(&pairs[job.target], target, model, a, &mut buf, false)?;
                new_h.update(buf.as_slice());
            }
            Ok((old_h.finalize(), new_h.finalize()))
        })
        .collect()
}

/// Checks the old key's MAC and the stored checksum against the old ciphertext digests.
fn verify_old(p: &Protected, old: &SessionKeys, leaves: &[[u8; 32]]) -> Result<()> {
    let mut mac = old.mac();
    mac.update(MAC_INPUT_LABEL);
    mac.update(&(p.envelope.manifest.len() as u64).to_be_bytes());
    mac.update(&p.envelope.manifest);
    for l in leaves {
        mac.update(l);
    }
    if !mac.verify(&p.envelope.mac) {
        return Err(CoreError::Modified("the MAC over the manifest and the encrypted bytes does not match".into()));
    }
    let (_, checksum) = mac_and_checksum(None, &p.envelope.manifest, leaves);
    if checksum.as_slice() != p.envelope.checksum.as_slice() {
        return Err(CoreError::Modified("the stored checksum does not match".into()));
    }
    Ok(())
}

/// Edits of the model file: the encrypted ranges pass through both keystreams,
/// varint tensors are re-encoded, and the manifest entry is replaced.
fn edits(model: &Model, p: &Protected, pairs: &[Pair], new_entry: Vec<u8>) -> Result<Vec<Edit>> {
    let mut edits =
        vec![Edit { range: p.entry.range.clone(), content: Content::Bytes(new_entry), ancestors: Vec::new() }];
    for (ti, target) in p.targets.iter().enumerate() {
        let t = &model.tensors[target.tensor];
        match &t.data {
            TensorData::Raw { .. } | TensorData::Fixed { .. } => {
                for &(a, b) in &target.spans {
                    for (range, logical) in t.file_pieces(a, b) {
                        edits.push(Edit {
                            range,
                            content: Content::Transform { tag: ti, logical_start: logical },
                            ancestors: Vec::new(),
                        });
                    }
                }
            }
            TensorData::Varint { .. } => {
                let mut bytes = Zeroizing::new(model.tensor_bytes(t.id)?.into_owned());
                for &(a, b) in &target.spans {
                    let chunk = bytes
                        .get_mut(a as usize..b as usize)
                        .ok_or_else(|| CoreError::BadManifest(format!("span of '{}' out of bounds", t.name)))?;
                    reapply(&pairs[ti], target, model, a, chunk, false)?;
                }
                edits.extend(t.varint_edits(&bytes));
            }
            TensorData::External { .. } => {}
            _ => return Err(CoreError::BadManifest(format!("tensor '{}' has no encrypted data", t.name))),
        }
    }
    Ok(edits)
}

/// Writes every external data file of the model next to `output`, re-encrypting the spans it holds.
fn stage_external(
    model: &Model,
    output: &Path,
    targets: &[Target],
    pairs: &[Pair],
    staged: &mut Staged,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let out_dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    // Per external file: (file range, target index, logical offset).
    let mut patches: BTreeMap<usize, Vec<(std::ops::Range<u64>, usize, u64)>> = BTreeMap::new();
    for (ti, target) in targets.iter().enumerate() {
        let t = &model.tensors[target.tensor];
        if let TensorData::External { file, .. } = &t.data {
            for &(a, b) in &target.spans {
                for (range, logical) in t.file_pieces(a, b) {
                    patches.entry(*file).or_default().push((range, ti, logical));
                }
            }
        }
    }
    let mut written = Vec::new();
    for (fi, f) in model.external_files.iter().enumerate() {
        let dest = out_dir.join(&f.location);
        let src = f.bytes()?;
        let idx = staged.create(&dest)?;
        let mut list = patches.remove(&fi).unwrap_or_default();
        list.sort_by_key(|p| p.0.start);
        progress.start("external", src.len() as u64);
        let mut w = BufWriter::with_capacity(1 << 20, staged.file(idx));
        let io = |e| CoreError::Write { path: dest.clone(), source: e };
        let mut pos = 0u64;
        let mut buf = Zeroizing::new(Vec::new());
        for (range, ti, logical) in &list {
            let piece = |r: std::ops::Range<u64>| {
                src.get(r.start as usize..r.end as usize)
                    .ok_or_else(|| CoreError::Modified(format!("external data file {} is too short", f.location)))
            };
            if range.start < pos {
                return Err(CoreError::BadManifest(format!("overlapping spans in {}", f.location)));
            }
            w.write_all(piece(pos..range.start)?).map_err(io)?;
            let mut at = range.start;
            while at < range.end {
                let n = (range.end - at).min(8 << 20);
                buf.clear();
                buf.extend_from_slice(piece(at..at + n)?);
                reapply(&pairs[*ti], &targets[*ti], model, logical + (at - range.start), &mut buf, true)?;
                w.write_all(&buf).map_err(io)?;
                at += n;
            }
            pos = range.end;
            progress.set(pos);
        }
        w.write_all(piece_from(src, pos)).map_err(io)?;
        w.flush().map_err(io)?;
        progress.finish();
        written.push(dest.display().to_string());
    }
    Ok(written)
}

fn piece_from(src: &[u8], pos: u64) -> &[u8] {
    src.get(pos as usize..).unwrap_or(&[])
}

/// Refuses a manifest or envelope that sets fields this module does not know how to
/// carry over to a new key (for example access tiers with their own key checks and
/// MACs), rather than writing a model whose new envelope would lack them.
#[allow(clippy::needless_update)] // `..Default::default()` stands for fields added after this was written.
fn refuse_unknown_fields(p: &Protected) -> Result<()> {
    let m = &p.manifest;
    let known = pb::Manifest {
        format_version: m.format_version,
        salt: m.salt.clone(),
        key_check: m.key_check.clone(),
        kdf: m.kdf.clone(),
        tensors: m.tensors.clone(),
        tool: m.tool.clone(),
        policy_summary: m.policy_summary.clone(),
        chunk_size: m.chunk_size,
        leaf_hash: m.leaf_hash,
        ..Default::default()
    };
    let e = &p.envelope;
    let known_envelope = pb::Envelope {
        manifest: e.manifest.clone(),
        mac: e.mac.clone(),
        checksum: e.checksum.clone(),
        ..Default::default()
    };
    if known != *m || known_envelope != *e {
        return Err(CoreError::UnsupportedVersion {
            key: format!("{METADATA_KEY} with manifest fields that rekey cannot carry over (such as access tiers)"),
        });
    }
    Ok(())
}

/// Re-encrypts the protected model `input` under `new` into `output`.
///
/// The old key must pass the key check and the MAC before anything is written;
/// a wrong key gives [`CoreError::WrongKey`], a modified model [`CoreError::Modified`]
/// (or [`CoreError::BadManifest`]), and in either case no output file appears.
#[allow(clippy::needless_update)] // `..Default::default()` stands for fields added after this was written.
pub fn rekey(
    input: &Path,
    output: &Path,
    old: &KeySource,
    new: &KeySource,
    opts: &RekeyOptions,
) -> Result<RekeyReport> {
    let model = Model::open_with_progress(input, opts.progress)?;
    let p = read_protected(&model)?;
    refuse_unknown_fields(&p)?;
    check_output(&model, input, output, opts.in_place)?;
    let old_master = old.master_for_decrypt(p.manifest.kdf.as_ref())?;
    let old_salt: [u8; 32] =
        p.manifest.salt.as_slice().try_into().map_err(|_| CoreError::BadManifest("salt".into()))?;
    let old_keys = SessionKeys::derive(&old_master, &old_salt);
    if !old_keys.key_check_matches(&p.manifest.key_check) {
        return Err(CoreError::WrongKey);
    }
    let (new_master, kdf) = new.master_for_encrypt()?;
    let mut salt = random_salt()?;
    while salt == old_salt {
        salt = random_salt()?;
    }
    let new_keys = SessionKeys::derive(&new_master, &salt);
    let pairs: Vec<Pair> = p
        .targets
        .iter()
        .map(|t| Pair { old: old_keys.keystream(t.stream_id), new: new_keys.keystream(t.stream_id) })
        .collect();

    opts.progress.start("verify", 0);
    let leaves = digests(&model, &p.targets, &pairs, p.manifest.chunk_size, p.leaf_hash)?;
    opts.progress.finish();
    let (old_leaves, new_leaves): (Vec<[u8; 32]>, Vec<[u8; 32]>) = leaves.into_iter().unzip();
    verify_old(&p, &old_keys, &old_leaves)?;

    let mut manifest = p.manifest.clone();
    manifest.salt = salt.to_vec();
    manifest.key_check = new_keys.key_check().to_vec();
    manifest.kdf = kdf.as_ref().map(|k| pb::KdfParams {
        algorithm: "argon2id".into(),
        salt: k.salt.to_vec(),
        m_cost_kib: k.m_cost_kib,
        t_cost: k.t_cost,
        p_cost: k.p_cost,
        ..Default::default()
    });
    manifest.tool = format!("onnx-protect {}", env!("CARGO_PKG_VERSION"));
    manifest.leaf_hash = leaf_hash_to_pb(LEAF_HASH);
    let manifest_bytes = manifest.encode_to_vec();
    let (mac, checksum) = mac_and_checksum(Some(&new_keys), &manifest_bytes, &new_leaves);
    let envelope = pb::Envelope {
        manifest: manifest_bytes,
        mac: mac.map(|m| m.to_vec()).unwrap_or_default(),
        checksum: checksum.to_vec(),
        ..Default::default()
    };
    let value = b64().encode(envelope.encode_to_vec());
    let edits = edits(&model, &p, &pairs, metadata_field(METADATA_KEY, &value))?;
    let plan = Plan::new(model.bytes().len() as u64, edits, Vec::new())?;

    let mut staged = Staged::new();
    let external = stage_external(&model, output, &p.targets, &pairs, &mut staged, opts.progress)?;
    let idx = staged.create(output)?;
    opts.progress.start("write", plan.output_len());
    let mut w = BufWriter::with_capacity(1 << 20, staged.file(idx));
    let mut err: Option<CoreError> = None;
    plan.write(model.bytes(), &mut w, &mut |tag, logical, chunk| {
        let r = match (pairs.get(tag), p.targets.get(tag)) {
            (Some(pair), Some(target)) => reapply(pair, target, &model, logical, chunk, true),
            _ => Err(CoreError::BadManifest(format!("no keystream for edit {tag}"))),
        };
        r.map_err(|e| {
            err = Some(e);
            FormatError::Invalid("keystream failed".into())
        })
    })
    .map_err(|e| err.take().unwrap_or(CoreError::Format(e)))?;
    w.flush().map_err(|e| CoreError::Write { path: output.to_path_buf(), source: e })?;
    drop(w);
    opts.progress.finish();
    staged.commit()?;
    Ok(RekeyReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        tensors: p.targets.len(),
        rekeyed_bytes: p.targets.iter().flat_map(|t| &t.spans).map(|(a, b)| b - a).sum(),
        passphrase: kdf.is_some(),
        external_files: external,
    })
}

/// The path of each external data file `rekey`, `encrypt` or `decrypt` writes for `model` next to `output`.
pub fn external_outputs(model: &Model, output: &Path) -> Vec<PathBuf> {
    let out_dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    model.external_files.iter().map(|f| out_dir.join(&f.location)).collect()
}
