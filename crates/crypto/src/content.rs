//! The integrity values of format version 2 (docs/format.md §9, §10): the content digest
//! over every byte of the covered files, the per-tier MACs, the signed message and the
//! keyless checksum.
//!
//! ```text
//! leaf(i, j) = BLAKE3("onnx-protect/v2/chunk" || u32be(i) || u64be(j) || chunk j of file i)
//! D          = BLAKE3("onnx-protect/v2/content" || u32be(files)
//!                     || for each file: u64be(len) || its leaves)
//! T          = u64be(len H) || H || u64be(len R) || R || D
//! MAC_t      = HMAC-SHA256(K_mac,t, "onnx-protect/v2/mac" || u32be(t) || T)
//! signed     = "onnx-protect/v2/signature" || T
//! checksum   = SHA-256("onnx-protect/v2/checksum" || envelope bytes before the checksum field)
//! ```

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::TierKeys;

/// Label in front of every content leaf.
pub const CONTENT_CHUNK_LABEL: &[u8] = b"onnx-protect/v2/chunk";
/// Label in front of the content digest.
pub const CONTENT_LABEL: &[u8] = b"onnx-protect/v2/content";
/// Label in front of a MAC input.
pub const V2_MAC_INPUT_LABEL: &[u8] = b"onnx-protect/v2/mac";
/// Label in front of a signed message.
pub const SIGNATURE_LABEL: &[u8] = b"onnx-protect/v2/signature";
/// Label in front of the checksum input.
pub const V2_CHECKSUM_LABEL: &[u8] = b"onnx-protect/v2/checksum";

/// An incremental content leaf: feed the chunk's bytes in order.
#[derive(Clone)]
pub struct ContentLeaf(blake3::Hasher);

impl ContentLeaf {
    /// Starts leaf `index` of covered file `file`.
    pub fn new(file: u32, index: u64) -> ContentLeaf {
        let mut h = blake3::Hasher::new();
        h.update(CONTENT_CHUNK_LABEL);
        h.update(&file.to_be_bytes());
        h.update(&index.to_be_bytes());
        ContentLeaf(h)
    }

    /// Appends bytes of the chunk.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The 32-byte leaf.
    pub fn finalize(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }

    /// Leaf `index` of file `file` for a chunk of exactly `chunk` bytes (a power of two, 2 KiB
    /// or more: `None` otherwise), hashed in two parts that may run on two threads: this
    /// leaf takes the chunk's bytes before [`leaf_split`]`(chunk)`, the [`LeafTail`] the
    /// rest, each in order; [`ContentLeaf::join`] gives the leaf one `ContentLeaf` fed the
    /// whole chunk gives. BLAKE3 hashes a tree of 1 KiB chunks (`blake3::hazmat`): the
    /// leaf's input (the 33-byte prefix, then the chunk) is two subtrees of `chunk / 2`
    /// bytes and the last 33 bytes, so the parts are those subtrees, merged.
    pub fn split(file: u32, index: u64, chunk: usize) -> Option<(ContentLeaf, LeafTail)> {
        if !chunk.is_power_of_two() || chunk < 2 * 1024 {
            return None;
        }
        let half = (chunk / 2) as u64;
        let mut mid = blake3::Hasher::new();
        mid.set_input_offset(half);
        let mut end = blake3::Hasher::new();
        end.set_input_offset(2 * half);
        Some((ContentLeaf::new(file, index), LeafTail { mid, end, half, seen: 0 }))
    }

    /// The leaf of a split chunk ([`ContentLeaf::split`]); `None` if either part was not fed
    /// exactly its bytes.
    pub fn join(self, tail: LeafTail) -> Option<[u8; 32]> {
        if self.0.count() != tail.half || tail.seen != tail.half + LEAF_PREFIX as u64 {
            return None;
        }
        let left = merge_subtrees_non_root(&self.0.finalize_non_root(), &tail.mid.finalize_non_root(), Mode::Hash);
        Some(*merge_subtrees_root(&left, &tail.end.finalize_non_root(), Mode::Hash).as_bytes())
    }
}

/// A leaf's input before the chunk's bytes: the label, `u32be(file)`, `u64be(index)`.
const LEAF_PREFIX: usize = CONTENT_CHUNK_LABEL.len() + 4 + 8;

/// Where the bytes of a split chunk of `chunk` bytes pass from the [`ContentLeaf`] to the
/// [`LeafTail`] ([`ContentLeaf::split`]).
pub fn leaf_split(chunk: usize) -> usize {
    (chunk / 2).saturating_sub(LEAF_PREFIX)
}

/// The second part of a split leaf ([`ContentLeaf::split`]): the chunk's bytes from
/// [`leaf_split`] on, in order.
pub struct LeafTail {
    /// The second half subtree of the leaf's input.
    mid: blake3::Hasher,
    /// The input's last 33 bytes (as many as its prefix), past both subtrees.
    end: blake3::Hasher,
    /// Bytes in each half subtree.
    half: u64,
    /// Bytes taken so far.
    seen: u64,
}

impl LeafTail {
    /// Appends bytes of the chunk.
    pub fn update(&mut self, data: &[u8]) {
        let in_mid = (self.half.saturating_sub(self.seen) as usize).min(data.len());
        self.mid.update(&data[..in_mid]);
        self.end.update(&data[in_mid..]);
        self.seen += data.len() as u64;
    }
}

/// One covered file's length and leaves, in chunk order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLeaves {
    /// The file's length in bytes.
    pub len: u64,
    /// Its leaves, chunk 0 first.
    pub leaves: Vec<[u8; 32]>,
}

/// The number of chunks of `chunk` bytes in a file of `len` bytes (0 for an empty file).
pub fn chunk_count(len: u64, chunk: u64) -> u64 {
    len.div_ceil(chunk.max(1))
}

/// The content digest `D` from every covered file's leaves (file 0 first).
pub fn content_digest(files: &[FileLeaves]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(CONTENT_LABEL);
    h.update(&(files.len() as u32).to_be_bytes());
    for f in files {
        h.update(&f.len.to_be_bytes());
        for l in &f.leaves {
            h.update(l);
        }
    }
    *h.finalize().as_bytes()
}

/// The leaves of covered file `file` held in memory, computed on the rayon pool.
pub fn leaves_of(file: u32, bytes: &[u8], chunk: u64) -> FileLeaves {
    let chunk = chunk.max(1) as usize;
    let leaves = bytes
        .par_chunks(chunk)
        .enumerate()
        .map(|(j, c)| {
            let mut l = ContentLeaf::new(file, j as u64);
            l.update(c);
            l.finalize()
        })
        .collect();
    FileLeaves { len: bytes.len() as u64, leaves }
}

/// `T = u64be(len H) || H || u64be(len R) || R || D`, the authenticated message.
fn transcript(header: &[u8], recipients: &[u8], digest: &[u8; 32]) -> Vec<u8> {
    let mut t = Vec::with_capacity(header.len() + recipients.len() + 48);
    t.extend_from_slice(&(header.len() as u64).to_be_bytes());
    t.extend_from_slice(header);
    t.extend_from_slice(&(recipients.len() as u64).to_be_bytes());
    t.extend_from_slice(recipients);
    t.extend_from_slice(digest);
    t
}

/// `MAC_t` for tier `tier` with that tier's keys.
pub fn tier_mac(keys: &TierKeys, tier: u32, header: &[u8], recipients: &[u8], digest: &[u8; 32]) -> [u8; 32] {
    let mut mac = keys.mac();
    mac.update(V2_MAC_INPUT_LABEL);
    mac.update(&tier.to_be_bytes());
    mac.update(&transcript(header, recipients, digest));
    mac.finalize()
}

/// Whether `stored` is `MAC_t` (constant-time comparison).
pub fn tier_mac_matches(
    keys: &TierKeys,
    tier: u32,
    header: &[u8],
    recipients: &[u8],
    digest: &[u8; 32],
    stored: &[u8],
) -> bool {
    let mut mac = keys.mac();
    mac.update(V2_MAC_INPUT_LABEL);
    mac.update(&tier.to_be_bytes());
    mac.update(&transcript(header, recipients, digest));
    mac.verify(stored)
}

/// The message a publisher signs.
pub fn signed_message(header: &[u8], recipients: &[u8], digest: &[u8; 32]) -> Vec<u8> {
    let mut m = SIGNATURE_LABEL.to_vec();
    m.extend_from_slice(&transcript(header, recipients, digest));
    m
}

/// The keyless checksum over the envelope bytes before its checksum field.
pub fn envelope_checksum(envelope_prefix: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(V2_CHECKSUM_LABEL);
    h.update(envelope_prefix);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_leaf_hashed_in_two_parts_is_the_leaf_hashed_whole() {
        for len in [4 << 20, 1 << 20, 2048] {
            let chunk: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
            let split = super::leaf_split(len);
            for (file, index, piece) in [(0u32, 0u64, 1 << 20), (3, 7, 4096), (u32::MAX, u64::MAX, 333_333), (1, 2, 7)]
            {
                let mut whole = super::ContentLeaf::new(file, index);
                whole.update(&chunk);
                let (mut first, mut tail) = super::ContentLeaf::split(file, index, len).unwrap();
                let (a, b) = chunk.split_at(split);
                a.chunks(piece).for_each(|p| first.update(p));
                b.chunks(piece).for_each(|p| tail.update(p));
                assert_eq!(
                    first.join(tail),
                    Some(whole.finalize()),
                    "{len} bytes, file {file}, index {index}, pieces of {piece}"
                );
            }
            // A part fed one byte too few or too many gives no leaf.
            let (mut first, mut tail) = super::ContentLeaf::split(1, 1, len).unwrap();
            first.update(&chunk[..split - 1]);
            tail.update(&chunk[split - 1..]);
            assert_eq!(first.join(tail), None);
            let (mut first, mut tail) = super::ContentLeaf::split(1, 1, len).unwrap();
            first.update(&chunk[..split]);
            tail.update(&chunk[split..len - 1]);
            assert_eq!(first.join(tail), None);
        }
        // Only a power of two of 2 KiB or more splits.
        for len in [0, 1024, 3 << 20, (4 << 20) + 1] {
            assert!(super::ContentLeaf::split(0, 0, len).is_none(), "{len}");
        }
    }

    use super::*;

    #[test]
    fn incremental_leaves_equal_one_shot_leaves() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let f = leaves_of(3, &data, 65_536);
        assert_eq!(f.leaves.len(), 4);
        let mut l = ContentLeaf::new(3, 1);
        l.update(&data[65_536..100_000]);
        l.update(&data[100_000..131_072]);
        assert_eq!(l.finalize(), f.leaves[1]);
        assert_eq!(chunk_count(0, 65_536), 0);
        assert_eq!(chunk_count(65_537, 65_536), 2);
        assert_eq!(leaves_of(0, &[], 65_536).leaves.len(), 0);
    }

    #[test]
    fn the_digest_binds_lengths_order_and_positions() {
        let a = leaves_of(0, b"abc", 65_536);
        let b = leaves_of(1, b"", 65_536);
        let d = content_digest(&[a.clone(), b.clone()]);
        assert_ne!(d, content_digest(std::slice::from_ref(&a)));
        assert_ne!(d, content_digest(&[b.clone(), a.clone()]));
        assert_ne!(leaves_of(0, b"abc", 65_536), leaves_of(1, b"abc", 65_536));
        let mut longer = a.clone();
        longer.len += 1;
        assert_ne!(d, content_digest(&[longer, b]));
    }
}
