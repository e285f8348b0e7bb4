//! The keyed class permutation of a lock, and reading locked outputs in true order.
//!
//! A lock is keyed by a 32-byte *seed*. The permutation `p` of `C` classes is the first
//! derangement (no class in its own place) among the keyed Fisher–Yates shuffles
//! ([`onnx_protect_crypto::KeyedShuffle`], big-endian words from offset 0) of the
//! AES-256-CTR keystreams
//!
//! ```text
//! PRK   = HKDF-Extract-SHA256(salt = "onnx-protect/v2/label-lock", IKM = seed)
//! K_a   = HKDF-Expand(PRK, "onnx-protect/v2/label-lock/permutation" || u32be(C) || u32be(a), 32)
//! p_a   = shuffle of [0, 1, ..., C-1] drawn from AES-256-CTR(K_a)      for a = 0, 1, 2, ...
//! ```
//!
//! Locked class (output position) `q` holds true class `p[q]`: the locked layer's row `q`
//! is the original's row `p[q]`. A derangement makes every answer of a locked model read
//! without the key a wrong class (about 37% of shuffles are derangements; the draw stops
//! at the first one).

use core::fmt;

use onnx_protect_crypto::{KeySchedule, KeyedShuffle, MasterKey, WordOrder};
use zeroize::Zeroizing;

use crate::error::{LockError, Result};

/// HKDF-Extract salt of the permutation's key schedule.
pub const LOCK_SALT: &[u8] = b"onnx-protect/v2/label-lock";
/// HKDF-Expand `info` prefix of each draw's keystream key.
pub const PERMUTATION_LABEL: &[u8] = b"onnx-protect/v2/label-lock/permutation";
/// Length of a lock seed in bytes.
pub const SEED_LEN: usize = 32;
/// Most draws tried for a derangement (each succeeds with probability about 1/e, so all
/// of them fail with probability below 10^-50).
pub const MAX_DRAWS: u32 = 256;

/// The secret a lock is keyed by. Wiped on drop; no `Debug` shows it.
#[derive(Clone)]
pub struct LockSeed(Zeroizing<[u8; SEED_LEN]>);

impl fmt::Debug for LockSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockSeed([redacted])")
    }
}

impl LockSeed {
    /// A fresh seed from the operating system's random number generator.
    pub fn generate() -> Result<LockSeed> {
        let mut bytes = Zeroizing::new([0u8; SEED_LEN]);
        getrandom::getrandom(bytes.as_mut())
            .map_err(|e| LockError::Crypto(onnx_protect_crypto::CryptoError::Rng { reason: e.to_string() }))?;
        Ok(LockSeed(bytes))
    }

    /// A seed from its bytes (an opened manifest, a recipient's derived seed).
    pub fn from_bytes(bytes: [u8; SEED_LEN]) -> LockSeed {
        LockSeed(Zeroizing::new(bytes))
    }

    /// The seed's bytes, for sealing it.
    pub fn as_bytes(&self) -> &[u8; SEED_LEN] {
        &self.0
    }
}

/// A permutation of `C` classes: locked position `q` holds true class `p[q]`.
///
/// Invariants: a bijection of `0..C`; both directions are wiped on drop; no `Debug`
/// shows them.
pub struct ClassPermutation {
    p: Zeroizing<Vec<u32>>,
    inverse: Zeroizing<Vec<u32>>,
}

impl fmt::Debug for ClassPermutation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClassPermutation({} classes, [redacted])", self.p.len())
    }
}

impl ClassPermutation {
    /// The permutation of `classes` classes keyed by `seed` (module docs).
    pub fn derive(seed: &LockSeed, classes: usize) -> Result<ClassPermutation> {
        let c = u32::try_from(classes)
            .ok()
            .filter(|&c| c >= 2)
            .ok_or_else(|| LockError::Mismatch(format!("a permutation of {classes} classes")))?;
        let schedule = KeySchedule::new(&MasterKey::from_bytes(*seed.as_bytes()), LOCK_SALT);
        for a in 0..MAX_DRAWS {
            let keystream = schedule.keystream(&[PERMUTATION_LABEL, &c.to_be_bytes(), &a.to_be_bytes()]);
            let p = KeyedShuffle::draw(&keystream, 0, WordOrder::BigEndian, classes)?.permutation();
            if p.iter().enumerate().all(|(q, &v)| v as usize != q) {
                return ClassPermutation::from_vec(p.to_vec());
            }
        }
        Err(LockError::Mismatch(format!("no derangement among {MAX_DRAWS} draws")))
    }

    /// A permutation from its table `p` (locked position → true class); an error unless it
    /// is a bijection of `0..p.len()`.
    pub fn from_vec(p: Vec<u32>) -> Result<ClassPermutation> {
        let p = Zeroizing::new(p);
        let mut inverse = Zeroizing::new(vec![u32::MAX; p.len()]);
        for (q, &v) in p.iter().enumerate() {
            match inverse.get_mut(v as usize) {
                Some(slot) if *slot == u32::MAX => *slot = q as u32,
                _ => return Err(LockError::Mismatch("the class table is not a permutation".into())),
            }
        }
        Ok(ClassPermutation { p, inverse })
    }

    /// The number of classes `C`.
    pub fn classes(&self) -> usize {
        self.p.len()
    }

    /// `p`: the true class at each locked position.
    pub fn locked_to_true(&self) -> &[u32] {
        &self.p
    }

    /// `p⁻¹`: the locked position of each true class.
    pub fn true_to_locked(&self) -> &[u32] {
        &self.inverse
    }

    /// Puts locked scores in true order, in place: `data` is a row-major array whose last
    /// dimension is a multiple of `C` with the class innermost ([`crate::OutputKind::Scores`]),
    /// so every consecutive block of `C` values is one row of classes. An error if
    /// `data.len()` is not a multiple of `C`.
    pub fn unlock_scores<T: Copy>(&self, data: &mut [T]) -> Result<()> {
        self.apply_blocks(data, true)
    }

    /// The inverse of [`ClassPermutation::unlock_scores`]: true order to locked order.
    pub fn lock_scores<T: Copy>(&self, data: &mut [T]) -> Result<()> {
        self.apply_blocks(data, false)
    }

    fn apply_blocks<T: Copy>(&self, data: &mut [T], unlock: bool) -> Result<()> {
        let c = self.p.len();
        if c == 0 || data.len() % c != 0 {
            return Err(LockError::Mismatch(format!("{} values are not rows of {c} classes", data.len())));
        }
        let mut row: Vec<T> = Vec::with_capacity(c);
        for block in data.chunks_exact_mut(c) {
            row.clear();
            row.extend_from_slice(block);
            for (q, &t) in self.p.iter().enumerate() {
                if unlock {
                    block[t as usize] = row[q];
                } else {
                    block[q] = row[t as usize];
                }
            }
        }
        Ok(())
    }

    /// The true index for a locked index `i` into a last dimension of classes
    /// ([`crate::OutputKind::Indices`]): `i − (i mod C) + p[i mod C]`; `None` for a
    /// negative index.
    pub fn unlock_index(&self, i: i64) -> Option<i64> {
        let c = self.p.len() as i64;
        if i < 0 || c == 0 {
            return None;
        }
        let r = i % c;
        Some(i - r + i64::from(self.p[r as usize]))
    }

    /// The locked index for a true index (the inverse of [`ClassPermutation::unlock_index`]).
    pub fn lock_index(&self, i: i64) -> Option<i64> {
        let c = self.p.len() as i64;
        if i < 0 || c == 0 {
            return None;
        }
        let r = i % c;
        Some(i - r + i64::from(self.inverse[r as usize]))
    }

    /// The number of positions where this permutation and `other` agree (both of `C`
    /// classes; 0 if they differ in size).
    pub fn agreements(&self, other: &ClassPermutation) -> usize {
        if self.p.len() != other.p.len() {
            return 0;
        }
        self.p.iter().zip(other.p.iter()).filter(|(a, b)| a == b).count()
    }
}

impl PartialEq for ClassPermutation {
    fn eq(&self, other: &ClassPermutation) -> bool {
        self.p.len() == other.p.len() && self.agreements(other) == self.p.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(b: u8) -> LockSeed {
        LockSeed::from_bytes([b; SEED_LEN])
    }

    #[test]
    fn derived_permutations_are_derangements_keyed_by_seed_and_size() {
        for c in [2usize, 3, 10, 1000] {
            let p = ClassPermutation::derive(&seed(1), c).unwrap();
            assert_eq!(p.classes(), c);
            assert!(p.locked_to_true().iter().enumerate().all(|(q, &t)| t as usize != q), "{c}");
            let mut sorted = p.locked_to_true().to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..c as u32).collect::<Vec<_>>());
            assert!(p == ClassPermutation::derive(&seed(1), c).unwrap(), "deterministic");
        }
        assert!(ClassPermutation::derive(&seed(1), 100).unwrap() != ClassPermutation::derive(&seed(2), 100).unwrap());
        assert!(ClassPermutation::derive(&seed(1), 1).is_err());
    }

    #[test]
    fn draws_follow_the_documented_schedule() {
        // The first draw's keystream, built from the documented labels by hand.
        let c = 50u32;
        let schedule = KeySchedule::new(&MasterKey::from_bytes([7; 32]), b"onnx-protect/v2/label-lock");
        let mut expected = None;
        for a in 0u32..MAX_DRAWS {
            let ks =
                schedule.keystream(&[b"onnx-protect/v2/label-lock/permutation", &c.to_be_bytes(), &a.to_be_bytes()]);
            let p = KeyedShuffle::draw(&ks, 0, WordOrder::BigEndian, c as usize).unwrap().permutation();
            if p.iter().enumerate().all(|(q, &t)| t as usize != q) {
                expected = Some(p.to_vec());
                break;
            }
        }
        assert_eq!(ClassPermutation::derive(&seed(7), 50).unwrap().locked_to_true(), expected.unwrap().as_slice());
    }

    #[test]
    fn scores_and_indices_round_trip() {
        let p = ClassPermutation::derive(&seed(3), 5).unwrap();
        let truth: Vec<f32> = (0..15).map(|i| i as f32).collect();
        let mut v = truth.clone();
        p.lock_scores(&mut v).unwrap();
        assert_ne!(v, truth);
        // Locked position q of each row holds true class p[q].
        for (q, &t) in p.locked_to_true().iter().enumerate() {
            assert_eq!(v[5 + q], truth[5 + t as usize]);
        }
        p.unlock_scores(&mut v).unwrap();
        assert_eq!(v, truth);
        for i in 0..20 {
            assert_eq!(p.lock_index(p.unlock_index(i).unwrap()), Some(i));
            assert_eq!(p.unlock_index(i).unwrap() / 5, i / 5);
        }
        assert_eq!(p.unlock_index(-1), None);
        assert!(p.unlock_scores(&mut [0f32; 7]).is_err());
    }

    #[test]
    fn tables_that_are_not_permutations_are_refused() {
        assert!(ClassPermutation::from_vec(vec![0, 0, 1]).is_err());
        assert!(ClassPermutation::from_vec(vec![0, 3, 1]).is_err());
        let p = ClassPermutation::from_vec(vec![2, 0, 1]).unwrap();
        assert_eq!(p.true_to_locked(), &[1, 2, 0]);
        let q = ClassPermutation::from_vec(vec![2, 1, 0]).unwrap();
        assert_eq!(p.agreements(&q), 1);
    }
}
