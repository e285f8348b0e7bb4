//! Deriving the transform parameters from the master key (format version 1).
//!
//! Everything here is specified exactly in `docs/transforms.md` so that another
//! implementation can reproduce it:
//!
//! ```text
//! PRK   = HKDF-Extract(salt = "onnx-protect/v1/input-transform", IKM = master key)   (SHA-256)
//! K_x   = HKDF-Expand(PRK, info = LABEL_x || params, 32)
//! S_x   = AES-256-CTR keystream under K_x, initial counter block = 16 zero bytes
//!         (128-bit big-endian counter), i.e. AES(K_x, 0), AES(K_x, 1), ...
//! ```
//!
//! with `params` = `u32be(M) || u32be(C)` for the per-block transforms and
//! `u32be(M) || u32be(n)` for block scrambling.

use onnx_protect_crypto::{KeySchedule, KeyedShuffle, Keystream, MasterKey, WordOrder};
use zeroize::Zeroizing;

use crate::error::{Result, TransformError};

/// HKDF-Extract salt of the input-transform key schedule.
pub const EXTRACT_SALT: &[u8] = b"onnx-protect/v1/input-transform";
/// HKDF-Expand label of the pixel shuffle within a block.
pub const SHUFFLE_LABEL: &[u8] = b"onnx-protect/v1/input-transform/shuffle";
/// HKDF-Expand label of the negative/positive flip mask.
pub const NEGPOS_LABEL: &[u8] = b"onnx-protect/v1/input-transform/negpos";
/// HKDF-Expand label of the FFX round-function tables.
pub const FFX_LABEL: &[u8] = b"onnx-protect/v1/input-transform/ffx";
/// HKDF-Expand label of the block scrambling permutation.
pub const SCRAMBLE_LABEL: &[u8] = b"onnx-protect/v1/input-transform/scramble-blocks";

/// Number of Feistel rounds of the 8-bit FFX cipher.
pub const FFX_ROUNDS: usize = 10;

/// Largest permutation this module generates (block values or blocks).
pub const MAX_PERMUTATION_LEN: usize = 1 << 24;

/// `S_t`: the keystream of one transform, under `K_t = HKDF-Expand(PRK, label || u32be(a) || u32be(b), 32)`.
fn stream(master: &MasterKey, label: &[u8], a: u32, b: u32) -> Keystream {
    KeySchedule::new(master, EXTRACT_SALT).keystream(&[label, &a.to_be_bytes(), &b.to_be_bytes()])
}

/// The first `n` bytes of `S_t`, in a buffer wiped on drop.
fn stream_bytes(master: &MasterKey, label: &[u8], a: u32, b: u32, n: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(vec![0u8; n]);
    stream(master, label, a, b).fill(0, &mut out)?;
    Ok(out)
}

/// Fisher–Yates (Durstenfeld) shuffle of the identity `0..n` driven by big-endian
/// words of `S_t` from its first byte (docs/transforms.md, "Key schedule (version 1)").
fn permutation(master: &MasterKey, label: &[u8], a: u32, b: u32, n: usize) -> Result<Zeroizing<Vec<u32>>> {
    if n == 0 || n > MAX_PERMUTATION_LEN {
        return Err(TransformError::Spec(format!("cannot build a permutation of {n} elements")));
    }
    Ok(KeyedShuffle::draw(&stream(master, label, a, b), 0, WordOrder::BigEndian, n)?.permutation())
}

fn as_u32(x: usize, what: &str) -> Result<u32> {
    u32::try_from(x).map_err(|_| TransformError::Spec(format!("{what} {x} is too large")))
}

fn block_len(block: usize, channels: usize) -> Result<usize> {
    if block == 0 || channels == 0 {
        return Err(TransformError::Spec("block size and channel count must be at least 1".into()));
    }
    block
        .checked_mul(block)
        .and_then(|v| v.checked_mul(channels))
        .filter(|&l| l <= MAX_PERMUTATION_LEN)
        .ok_or_else(|| TransformError::Spec(format!("a {block}×{block}×{channels} block is too large")))
}

/// The pixel-shuffle permutation `π` of the `L = M·M·C` values of a block:
/// the transformed block's value at position `p` is the plain block's value at `π[p]`.
pub fn shuffle_permutation(master: &MasterKey, block: usize, channels: usize) -> Result<Zeroizing<Vec<u32>>> {
    let l = block_len(block, channels)?;
    permutation(master, SHUFFLE_LABEL, as_u32(block, "block size")?, as_u32(channels, "channel count")?, l)
}

/// The neg/pos flip mask of a block: `mask[p]` is 1 when position `p` (after the
/// shuffle) is flipped. Bit `p mod 8` (least significant first) of keystream byte `p div 8`.
pub fn negpos_mask(master: &MasterKey, block: usize, channels: usize) -> Result<Zeroizing<Vec<u8>>> {
    let l = block_len(block, channels)?;
    let (a, b) = (as_u32(block, "block size")?, as_u32(channels, "channel count")?);
    let bytes = stream_bytes(master, NEGPOS_LABEL, a, b, l.div_ceil(8))?;
    Ok(Zeroizing::new((0..l).map(|p| (bytes[p / 8] >> (p % 8)) & 1).collect()))
}

/// The block-scrambling permutation `σ` of the `n` blocks of an image (row-major
/// block order): the transformed image's block `b` is the plain image's block `σ[b]`.
pub fn block_permutation(master: &MasterKey, block: usize, blocks: usize) -> Result<Zeroizing<Vec<u32>>> {
    permutation(master, SCRAMBLE_LABEL, as_u32(block, "block size")?, as_u32(blocks, "block count")?, blocks)
}

/// The inverse of a permutation: `inv[perm[i]] = i`.
pub fn invert(perm: &[u32]) -> Zeroizing<Vec<u32>> {
    let mut inv = Zeroizing::new(vec![0u32; perm.len()]);
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as u32;
    }
    inv
}

/// FFX-style format-preserving encryption of 8-bit values, one cipher per block position.
///
/// Construction (an "FFX-A2"-like balanced Feistel network over two 4-bit halves,
/// XOR combining): the round-function table `T` is the first `L·10·16` bytes of the
/// keystream under `K_ffx`, and `F(p, r, v) = T[(p·10 + r)·16 + v] & 0x0F` for position
/// `p`, round `r` (0..10) and 4-bit input `v`. Encrypting byte `x` at position `p`:
///
/// ```text
/// (A, B) = (x >> 4, x & 0x0F)
/// for r in 0..10: (A, B) = (B, A XOR F(p, r, B))
/// y = (A << 4) | B
/// ```
///
/// Each round is invertible whatever `F` is, so every position's map is a bijection
/// of `0..=255`. The full 256-entry tables (and their inverses) are precomputed.
pub struct Ffx {
    enc: Zeroizing<Vec<u8>>,
    dec: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Ffx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ffx({} positions, [redacted])", self.enc.len() / 256)
    }
}

impl Ffx {
    /// Derives the FFX tables for `M×M×C` blocks.
    pub fn derive(master: &MasterKey, block: usize, channels: usize) -> Result<Ffx> {
        let l = block_len(block, channels)?;
        let (a, b) = (as_u32(block, "block size")?, as_u32(channels, "channel count")?);
        let round = stream_bytes(master, FFX_LABEL, a, b, l * FFX_ROUNDS * 16)?;
        Ok(Ffx::from_round_table(&round, l))
    }

    fn from_round_table(round: &[u8], positions: usize) -> Ffx {
        let mut enc = Zeroizing::new(vec![0u8; positions * 256]);
        let mut dec = Zeroizing::new(vec![0u8; positions * 256]);
        for p in 0..positions {
            let t = &round[p * FFX_ROUNDS * 16..(p + 1) * FFX_ROUNDS * 16];
            for x in 0..=255u8 {
                let (mut a, mut b) = (x >> 4, x & 0x0F);
                for r in 0..FFX_ROUNDS {
                    let f = t[r * 16 + b as usize] & 0x0F;
                    (a, b) = (b, a ^ f);
                }
                let y = (a << 4) | b;
                enc[p * 256 + x as usize] = y;
                dec[p * 256 + y as usize] = x;
            }
        }
        Ffx { enc, dec }
    }

    /// Number of block positions.
    pub fn positions(&self) -> usize {
        self.enc.len() / 256
    }

    /// Encrypts byte `x` at block position `p` (`p < positions()`).
    pub fn encrypt(&self, p: usize, x: u8) -> u8 {
        self.enc[p * 256 + x as usize]
    }

    /// Decrypts byte `y` at block position `p` (`p < positions()`).
    pub fn decrypt(&self, p: usize, y: u8) -> u8 {
        self.dec[p * 256 + y as usize]
    }

    /// Decrypts by running the Feistel rounds backwards (used by tests to check
    /// that the tables are the documented construction).
    #[cfg(test)]
    fn decrypt_rounds(round: &[u8], p: usize, y: u8) -> u8 {
        let t = &round[p * FFX_ROUNDS * 16..(p + 1) * FFX_ROUNDS * 16];
        let (mut a, mut b) = (y >> 4, y & 0x0F);
        for r in (0..FFX_ROUNDS).rev() {
            let f = t[r * 16 + a as usize] & 0x0F;
            (a, b) = (b ^ f, a);
        }
        (a << 4) | b
    }
}

/// The first `n` bytes of the keystream of one transform, for known-answer tests
/// and cross-implementation checks. `label` is one of the `*_LABEL` constants.
pub fn keystream_prefix(master: &MasterKey, label: &[u8], a: u32, b: u32, n: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; n];
    stream(master, label, a, b).fill(0, &mut out)?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use onnx_protect_crypto::aes256_ctr_xor;

    fn key(b: u8) -> MasterKey {
        MasterKey::from_bytes([b; 32])
    }

    fn is_permutation(p: &[u32]) -> bool {
        let mut seen = vec![false; p.len()];
        p.iter().all(|&x| (x as usize) < p.len() && !std::mem::replace(&mut seen[x as usize], true))
    }

    #[test]
    fn permutations_are_deterministic_and_key_dependent() {
        let a = shuffle_permutation(&key(1), 2, 3).unwrap();
        let b = shuffle_permutation(&key(1), 2, 3).unwrap();
        let c = shuffle_permutation(&key(2), 4, 3).unwrap();
        let d = shuffle_permutation(&key(2), 4, 3).unwrap();
        assert_eq!(*a, *b);
        assert_eq!(*c, *d);
        assert!(is_permutation(&a) && a.len() == 12);
        assert!(is_permutation(&c) && c.len() == 48);
        let e = shuffle_permutation(&key(3), 4, 3).unwrap();
        assert_ne!(*c, *e);
        let s = block_permutation(&key(1), 2, 16).unwrap();
        assert!(is_permutation(&s) && s.len() == 16);
        let inv = invert(&s);
        for i in 0..16 {
            assert_eq!(inv[s[i] as usize] as usize, i);
        }
    }

    #[test]
    fn fisher_yates_is_roughly_uniform() {
        // Position of element 0 over many keys: each of the 4 places about 1/4 of the time.
        let mut counts = [0usize; 4];
        for k in 0..400u32 {
            let mut kb = [0u8; 32];
            kb[..4].copy_from_slice(&k.to_be_bytes());
            let p = shuffle_permutation(&MasterKey::from_bytes(kb), 1, 4).unwrap();
            counts[p.iter().position(|&x| x == 0).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| (60..=140).contains(&c)), "{counts:?}");
    }

    #[test]
    fn negpos_mask_is_bits_of_the_keystream() {
        let m = negpos_mask(&key(5), 2, 3).unwrap();
        let ks = keystream_prefix(&key(5), NEGPOS_LABEL, 2, 3, 2).unwrap();
        for p in 0..12 {
            assert_eq!(m[p], (ks[p / 8] >> (p % 8)) & 1);
        }
        assert!(m.contains(&1) && m.contains(&0));
    }

    #[test]
    fn ffx_is_a_bijection_per_position_and_matches_the_rounds() {
        let f = Ffx::derive(&key(7), 2, 1).unwrap();
        let round = keystream_prefix(&key(7), FFX_LABEL, 2, 1, 4 * FFX_ROUNDS * 16).unwrap();
        assert_eq!(f.positions(), 4);
        for p in 0..4 {
            let mut seen = [false; 256];
            let mut fixed = 0;
            for x in 0..=255u8 {
                let y = f.encrypt(p, x);
                assert!(!seen[y as usize]);
                seen[y as usize] = true;
                assert_eq!(f.decrypt(p, y), x);
                assert_eq!(Ffx::decrypt_rounds(&round, p, y), x);
                fixed += usize::from(x == y);
            }
            assert!(fixed < 16, "position {p}: {fixed} fixed points");
        }
        // Different positions use different ciphers.
        assert!((0..=255u8).any(|x| f.encrypt(0, x) != f.encrypt(1, x)));
    }

    /// Known-answer values from fixtures/transform/reference.py (an independent
    /// implementation of docs/transforms.md) for the key 00112233…eeff (twice).
    #[test]
    fn known_answers() {
        let k = MasterKey::parse_key_file(b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff").unwrap();
        // K_shuffle for M = 2, C = 1: S_shuffle is AES-256-CTR under it from a zero counter block.
        let sub: [u8; 32] = hex::decode("5e0748e443dc6105757a9466bf898a7178ed5bde148f70ee4236a52e1b308e84")
            .unwrap()
            .try_into()
            .unwrap();
        let mut direct = vec![0u8; 100];
        aes256_ctr_xor(&sub, &[0u8; 16], 0, &mut direct).unwrap();
        assert_eq!(keystream_prefix(&k, SHUFFLE_LABEL, 2, 1, 100).unwrap(), direct);
        assert_eq!(*shuffle_permutation(&k, 2, 1).unwrap(), vec![2, 0, 3, 1]);
        assert_eq!(*shuffle_permutation(&k, 2, 3).unwrap(), vec![8, 7, 5, 9, 10, 0, 6, 4, 11, 2, 1, 3]);
        assert_eq!(*negpos_mask(&k, 2, 3).unwrap(), vec![0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(*block_permutation(&k, 2, 16).unwrap(), vec![1, 15, 0, 3, 5, 9, 8, 7, 11, 14, 10, 13, 6, 12, 4, 2]);
        let f = Ffx::derive(&k, 2, 3).unwrap();
        let p0: Vec<u8> = (0..16).map(|x| f.encrypt(0, x)).collect();
        assert_eq!(p0, vec![178, 128, 30, 140, 32, 59, 198, 184, 148, 209, 93, 40, 195, 73, 150, 222]);
        let p11: Vec<u8> = (0..16).map(|x| f.encrypt(11, x)).collect();
        assert_eq!(p11, vec![7, 96, 110, 228, 33, 16, 49, 184, 165, 152, 8, 138, 118, 108, 135, 120]);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(shuffle_permutation(&key(1), 0, 3).is_err());
        assert!(shuffle_permutation(&key(1), 5000, 3000).is_err());
        assert!(block_permutation(&key(1), 2, 0).is_err());
    }
}
