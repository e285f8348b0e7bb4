//! The seals of a format-1 model (docs/format.md Appendix B.4, B.6): the ciphertext of
//! every target is cut into chunk jobs, each hashed into a leaf; the MAC and the keyless
//! checksum run over the manifest and the leaves, once for the file or once per access
//! tier. This module computes and compares seals; it writes nothing.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use onnx_protect_crypto::{Checksum, Keystream, Leaf, LeafHash, SessionKeys};
use onnx_protect_format::model::ExternalFile;
use onnx_protect_format::{Model, Tensor, TensorData};
use rayon::prelude::*;

use super::manifest::{ProtectedV1, CHECKSUM_LABEL, MAC_INPUT_LABEL};
use crate::error::{BadManifest, Modified, Result};
use crate::pass::action::apply;
use crate::target::Target;

/// One unit of hashing work: a chunk of a tensor's concatenated span bytes.
pub(crate) struct ChunkJob {
    pub(crate) target: usize,
    pub(crate) index: u64,
    /// Logical sub-ranges making up this chunk.
    pub(crate) parts: Vec<(u64, u64)>,
}

/// The chunk jobs of `targets`, in order: each target's span bytes, concatenated, cut
/// into chunks of `chunk` bytes (the last one shorter), numbered from 0 per target.
pub(crate) fn chunk_jobs(targets: &[Target], chunk: u64) -> Vec<ChunkJob> {
    let mut jobs = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        let mut current = ChunkJob { target: ti, index: 0, parts: Vec::new() };
        let mut fill = 0u64;
        for &(a, b) in &t.spans {
            let mut pos = a;
            while pos < b {
                let take = (b - pos).min(chunk - fill);
                current.parts.push((pos, pos + take));
                fill += take;
                pos += take;
                if fill == chunk {
                    let next = ChunkJob { target: ti, index: current.index + 1, parts: Vec::new() };
                    jobs.push(std::mem::replace(&mut current, next));
                    fill = 0;
                }
            }
        }
        if !current.parts.is_empty() {
            jobs.push(current);
        }
    }
    jobs
}

/// Releases (see [`ExternalFile::release`]) the file pages of an external tensor's
/// chunk job when the job is done, so hashing a file of any size keeps only the chunks
/// in flight resident.
pub(crate) struct ReleaseOnDrop<'a> {
    file: Option<&'a ExternalFile>,
    range: Range<u64>,
}

impl<'a> ReleaseOnDrop<'a> {
    pub(crate) fn for_job(model: &'a Model, t: &Tensor, job: &ChunkJob) -> ReleaseOnDrop<'a> {
        match &t.data {
            TensorData::External { file, range } => {
                // The hull of the parts, widened by the kernel's fault-around window
                // (pages next to a faulting address are mapped with it: 64 KiB by default).
                const AROUND: u64 = 64 << 10;
                let lo = job.parts.first().map_or(0, |p| p.0);
                let hi = job.parts.last().map_or(0, |p| p.1);
                ReleaseOnDrop {
                    file: model.external_files.get(*file),
                    range: (range.start + lo).saturating_sub(AROUND)..range.start + hi + AROUND,
                }
            }
            _ => ReleaseOnDrop { file: None, range: 0..0 },
        }
    }
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.file {
            f.release(self.range.clone());
        }
    }
}

/// Where the bytes hashed for a target's leaves come from.
pub(crate) enum LeafSrc<'a> {
    /// The element bytes as stored in the file (ciphertext).
    File,
    /// The stored bytes are plaintext: XOR this keystream before hashing.
    Xor(&'a Keystream),
    /// The whole ciphertext element bytes of the tensor, computed beforehand.
    Bytes(&'a [u8]),
}

/// Parts shorter than this are gathered before they are hashed.
const GATHER: usize = 64 << 10;

/// Feeds a leaf hash through a buffer: small parts (single rows of a few KiB) are
/// gathered first, since the hash is several times faster on long inputs (BLAKE3
/// hashes 1 KiB blocks side by side in SIMD lanes). Call [`Gather::flush`] before
/// finalizing the leaf. The buffer is allocated on first use and kept for reuse.
#[derive(Default)]
pub(crate) struct Gather {
    buf: Vec<u8>,
}

impl Gather {
    /// Hashes `part` (now, or once enough is gathered).
    pub(crate) fn feed(&mut self, h: &mut Leaf, part: &[u8]) {
        if part.len() >= GATHER {
            self.flush(h);
            h.update(part);
        } else {
            self.feed_with(h, part, |_| Ok(())).unwrap_or(());
        }
    }

    /// Hashes `part` as `f` changes it, leaving `part` as it is.
    pub(crate) fn feed_with(
        &mut self,
        h: &mut Leaf,
        part: &[u8],
        f: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        if self.buf.len() + part.len() > GATHER {
            self.flush(h);
        }
        let at = self.buf.len();
        self.buf.extend_from_slice(part);
        f(&mut self.buf[at..])?;
        if self.buf.len() >= GATHER {
            self.flush(h);
        }
        Ok(())
    }

    /// Hashes what is gathered.
    pub(crate) fn flush(&mut self, h: &mut Leaf) {
        if !self.buf.is_empty() {
            h.update(&self.buf);
            self.buf.clear();
        }
    }
}

/// Chunk digests of the ciphertext, in chunk-job order (B.4). The
/// bytes of target `i` come from `sources[i]` (the file where `sources` is shorter).
pub(crate) fn leaf_digests(
    model: &Model,
    targets: &[Target],
    chunk: u64,
    hash: LeafHash,
    sources: &[LeafSrc],
) -> Result<Vec<[u8; 32]>> {
    // Varint tensors read from the file are decoded once, up front.
    let mut decoded: HashMap<usize, Vec<u8>> = HashMap::new();
    for (i, t) in targets.iter().enumerate() {
        if let (TensorData::Varint { .. }, Some(LeafSrc::File | LeafSrc::Xor(_))) =
            (&model.tensors[t.tensor].data, sources.get(i))
        {
            decoded.insert(t.tensor, model.tensor_bytes(t.tensor)?.into_owned());
        }
    }
    let jobs = chunk_jobs(targets, chunk);
    jobs.par_iter()
        .map(|job| -> Result<[u8; 32]> {
            let target = &targets[job.target];
            let t = &model.tensors[target.tensor];
            let src = sources.get(job.target).unwrap_or(&LeafSrc::File);
            let whole: Cow<[u8]> = match (src, decoded.get(&target.tensor)) {
                (LeafSrc::Bytes(b), _) => Cow::Borrowed(b),
                (_, Some(v)) => Cow::Borrowed(v.as_slice()),
                _ => model.tensor_bytes(t.id)?,
            };
            let mut h = Leaf::new(hash, target.stream_id, job.index);
            let _release = ReleaseOnDrop::for_job(model, t, job);
            let mut g = Gather::default();
            for &(a, b) in &job.parts {
                let part = whole
                    .get(a as usize..b as usize)
                    .ok_or_else(|| BadManifest::SpanOutOfBounds { tensor: t.name.clone() })?;
                match src {
                    LeafSrc::Xor(ks) => {
                        g.feed_with(&mut h, part, |p| apply(ks, target.mode, t.data_type, a, p, false))?
                    }
                    _ => g.feed(&mut h, part),
                }
            }
            g.flush(&mut h);
            Ok(h.finalize())
        })
        .collect()
}

/// The MAC (when `keys` is given) and the keyless checksum of an untiered file over
/// the manifest and the leaves (B.4).
pub(crate) fn mac_and_checksum(
    keys: Option<&SessionKeys>,
    manifest: &[u8],
    leaves: &[[u8; 32]],
) -> (Option<[u8; 32]>, [u8; 32]) {
    mac_and_checksum_of(keys, manifest, None, leaves)
}

/// The MAC (when `keys` is given) and the keyless checksum of one tier (B.6): like
/// [`mac_and_checksum`], with `u32be(tier)` after the manifest
/// and only that tier's leaves.
pub(crate) fn tier_seal(
    keys: Option<&SessionKeys>,
    manifest: &[u8],
    tier: u32,
    leaves: &[[u8; 32]],
) -> (Option<[u8; 32]>, [u8; 32]) {
    mac_and_checksum_of(keys, manifest, Some(tier), leaves)
}

/// The MAC (when `keys` is given) and the keyless checksum over the manifest, then
/// `u32be(tier)` for a tier's seal (B.6), then the leaves (B.4).
fn mac_and_checksum_of(
    keys: Option<&SessionKeys>,
    manifest: &[u8],
    tier: Option<u32>,
    leaves: &[[u8; 32]],
) -> (Option<[u8; 32]>, [u8; 32]) {
    let mut c = Checksum::new();
    c.update(CHECKSUM_LABEL);
    let mut m = keys.map(|k| {
        let mut m = k.mac();
        m.update(MAC_INPUT_LABEL);
        m
    });
    let mut both = |data: &[u8]| {
        c.update(data);
        if let Some(m) = m.as_mut() {
            m.update(data);
        }
    };
    both(&(manifest.len() as u64).to_be_bytes());
    both(manifest);
    if let Some(t) = tier {
        both(&t.to_be_bytes());
    }
    for l in leaves {
        both(l);
    }
    (m.map(|m| m.finalize()), c.finalize())
}

/// The leaves of each tier (index `tier − 1`), from leaves in chunk-job order.
fn leaves_by_tier(targets: &[Target], chunk: u64, leaves: &[[u8; 32]], tiers: u32) -> Vec<Vec<[u8; 32]>> {
    let mut out = vec![Vec::new(); tiers as usize];
    for (job, leaf) in chunk_jobs(targets, chunk).iter().zip(leaves) {
        let t = targets[job.target].tier.max(1) as usize;
        if let Some(v) = out.get_mut(t - 1) {
            v.push(*leaf);
        }
    }
    out
}

/// Checks the MAC and the keyless checksum of an untiered model, given the leaves of
/// its ciphertext (B.4).
pub(crate) fn check_untiered(keys: &SessionKeys, p: &ProtectedV1, leaves: &[[u8; 32]]) -> Result<()> {
    let (mac, checksum) = mac_and_checksum(Some(keys), &p.envelope.manifest, leaves);
    if !mac.is_some_and(|m| bool::from(ct_eq(&m, &p.envelope.mac))) {
        return Err(Modified::Format1Mac.into());
    }
    if checksum.as_slice() != p.envelope.checksum.as_slice() {
        return Err(Modified::Format1Checksum { keyless: false }.into());
    }
    Ok(())
}

/// Checks every tier's MAC that the key of `key_tier` can check (with `sessions`, the
/// keys of tiers `1..=key_tier`) and every checksum, given the leaves of all targets
/// in chunk-job order (for tiers restored in the file, the leaves of their plaintext
/// encrypted again). A restored tier above the key holds plaintext this key cannot
/// encrypt, so it is not checked (B.6). `key_tier` 0 checks the
/// checksums of the tiers still encrypted, without a key.
pub(crate) fn check_tiers(p: &ProtectedV1, key_tier: u32, sessions: &[SessionKeys], leaves: &[[u8; 32]]) -> Result<()> {
    let tiers = p.manifest.tiers;
    let restored = p.envelope.restored_tiers;
    let by_tier = leaves_by_tier(&p.targets, p.manifest.chunk_size, leaves, tiers);
    for t in 1..=tiers {
        let i = t as usize - 1;
        let keys = (t <= key_tier).then(|| &sessions[i]);
        if keys.is_none() && t <= restored {
            continue; // plaintext of a tier above this key: nothing this key can check
        }
        let (mac, sum) = tier_seal(keys, &p.envelope.manifest, t, &by_tier[i]);
        if let Some(mac) = mac {
            if !bool::from(ct_eq(&mac, &p.envelope.tier_macs[i])) {
                return Err(Modified::Mac { tier: t }.into());
            }
        }
        if sum.as_slice() != p.envelope.tier_checksums[i].as_slice() {
            return Err(Modified::TierChecksum { tier: t }.into());
        }
    }
    Ok(())
}

/// Checks the keyless checksums of a model (of the tiers still encrypted, when
/// tiered), given the leaves of the stored bytes of all targets in chunk-job order.
pub(crate) fn check_checksums(p: &ProtectedV1, leaves: &[[u8; 32]]) -> Result<()> {
    if p.manifest.tiers > 1 {
        return check_tiers(p, 0, &[], leaves);
    }
    let (_, checksum) = mac_and_checksum(None, &p.envelope.manifest, leaves);
    if checksum.as_slice() != p.envelope.checksum.as_slice() {
        return Err(Modified::Format1Checksum { keyless: true }.into());
    }
    Ok(())
}

/// Constant-time equality of two tags (unequal lengths are unequal).
fn ct_eq(a: &[u8], b: &[u8]) -> subtle::Choice {
    use subtle::ConstantTimeEq;
    if a.len() != b.len() {
        return subtle::Choice::from(0);
    }
    a.ct_eq(b)
}
