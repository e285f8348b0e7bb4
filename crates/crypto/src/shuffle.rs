//! Keyed Fisher–Yates (Durstenfeld) shuffles driven by a keystream.
//!
//! One draw rule serves every keyed permutation of the project: the
//! distribution-preserving mode (docs/format.md §5: little-endian words from
//! the tensor's keystream at the span's offset) and the input transforms'
//! pixel and block permutations (docs/transforms.md: big-endian words from
//! offset 0 of the transform's keystream).
//!
//! ```text
//! for i = n-1 down to 1:
//!     m = i + 1;  limit = 2^32 - (2^32 mod m)
//!     repeat: r = next 4 keystream bytes as a u32 (in the given byte order)
//!     until r < limit                      # rejection sampling: no modulo bias
//!     j_i = r mod m;  swap items i and j_i
//! ```
//!
//! Keystream bytes are consumed in order, with no gaps. Undoing the shuffle
//! applies the same swaps in reverse order (`i = 1` up to `n-1`).

use zeroize::{Zeroize, Zeroizing};

use crate::{CryptoError, Keystream};

/// Largest number of items a keyed shuffle permutes (indices are `u32`).
pub const MAX_SHUFFLE_LEN: u64 = u32::MAX as u64;

/// Keystream bytes generated per call while drawing.
const WORD_BUF: usize = 4096;

/// Byte order of the 32-bit words a shuffle reads from its keystream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordOrder {
    /// Least significant byte first (docs/format.md §5).
    LittleEndian,
    /// Most significant byte first (docs/transforms.md).
    BigEndian,
}

/// The swap targets of one keyed shuffle of `n` items.
///
/// Invariants: `targets[k]` is `j_i` for `i = n-1-k`, so `targets[k] <= n-1-k`;
/// the targets are wiped on drop, and the type has no `Debug` (they are derived
/// from a key).
pub struct KeyedShuffle {
    n: usize,
    targets: Zeroizing<Vec<u32>>,
}

impl KeyedShuffle {
    /// Draws the shuffle of `n` items from `keystream`, starting at keystream
    /// byte `offset`, reading words in `order`.
    ///
    /// Errors: [`CryptoError::ShuffleTooLong`] if `n` exceeds
    /// [`MAX_SHUFFLE_LEN`]; [`CryptoError::KeystreamRange`] if the words needed
    /// run past the last `u64` keystream offset.
    pub fn draw(keystream: &Keystream, offset: u64, order: WordOrder, n: usize) -> Result<KeyedShuffle, CryptoError> {
        if u64::try_from(n).map_or(true, |len| len > MAX_SHUFFLE_LEN) {
            return Err(CryptoError::ShuffleTooLong { len: n, max: MAX_SHUFFLE_LEN });
        }
        let mut words = Words { keystream, next: offset, buf: [0u8; WORD_BUF], pos: WORD_BUF, order };
        let mut targets = Zeroizing::new(Vec::with_capacity(n.saturating_sub(1)));
        for i in (1..n).rev() {
            let j = words.below(i as u64 + 1)?;
            targets.push(j);
        }
        Ok(KeyedShuffle { n, targets })
    }

    /// The number of items this shuffle permutes.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the shuffle permutes no items.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The swaps `(i, j_i)` in the order the shuffle applies them (`i = n-1`
    /// down to 1); `.rev()` gives the order that undoes it. Pairs with
    /// `i == j_i` are included (swapping an item with itself).
    pub fn swaps(&self) -> impl DoubleEndedIterator<Item = (usize, usize)> + ExactSizeIterator + '_ {
        self.targets.iter().enumerate().map(move |(k, &j)| (self.n - 1 - k, j as usize))
    }

    /// The permutation `p` with `p = shuffle([0, 1, ..., n-1])`: after the
    /// shuffle, position `q` holds the item that was at position `p[q]`.
    pub fn permutation(&self) -> Zeroizing<Vec<u32>> {
        // n <= u32::MAX, so every index fits in a u32.
        let mut p: Zeroizing<Vec<u32>> = Zeroizing::new((0..self.n).map(|i| i as u32).collect());
        for (i, j) in self.swaps() {
            p.swap(i, j);
        }
        p
    }
}

/// Sequential 32-bit words of a keystream from a starting offset.
struct Words<'a> {
    keystream: &'a Keystream,
    /// Keystream offset of the byte after `buf`.
    next: u64,
    buf: [u8; WORD_BUF],
    pos: usize,
    order: WordOrder,
}

impl Drop for Words<'_> {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl Words<'_> {
    fn word(&mut self) -> Result<u32, CryptoError> {
        if self.pos + 4 > WORD_BUF {
            self.keystream.fill(self.next, &mut self.buf)?;
            // `fill` succeeded, so next + WORD_BUF is an addressable offset.
            self.next = self
                .next
                .checked_add(WORD_BUF as u64)
                .ok_or(CryptoError::KeystreamRange { offset: self.next, len: WORD_BUF })?;
            self.pos = 0;
        }
        let mut w = [0u8; 4];
        w.copy_from_slice(&self.buf[self.pos..self.pos + 4]);
        self.pos += 4;
        Ok(match self.order {
            WordOrder::LittleEndian => u32::from_le_bytes(w),
            WordOrder::BigEndian => u32::from_be_bytes(w),
        })
    }

    /// A uniform draw in `[0, m)` for `1 <= m <= 2^32` by the rejection rule of the module docs.
    fn below(&mut self, m: u64) -> Result<u32, CryptoError> {
        let limit = (1u64 << 32) - ((1u64 << 32) % m);
        loop {
            let r = u64::from(self.word()?);
            if r < limit {
                // r mod m < m <= 2^32, so it fits in a u32.
                return Ok((r % m) as u32);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::KEY_LEN;

    fn ks(seed: u8) -> Keystream {
        Keystream::new(&[seed; KEY_LEN])
    }

    /// The draw rule written out directly over one buffer of keystream bytes.
    fn reference(keystream: &Keystream, offset: u64, order: WordOrder, n: usize) -> Vec<u32> {
        let mut bytes = vec![0u8; 64 * n + 64];
        keystream.apply(offset, &mut bytes).unwrap();
        let mut words = bytes.chunks_exact(4).map(|c| {
            let w = [c[0], c[1], c[2], c[3]];
            u64::from(if order == WordOrder::LittleEndian { u32::from_le_bytes(w) } else { u32::from_be_bytes(w) })
        });
        let mut a: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            let m = i as u64 + 1;
            let limit = (1u64 << 32) - (1u64 << 32) % m;
            let r = words.by_ref().find(|&r| r < limit).unwrap();
            a.swap(i, (r % m) as usize);
        }
        a
    }

    #[test]
    fn draws_follow_the_documented_rule_in_both_byte_orders() {
        // 3000 items need more than one WORD_BUF of keystream.
        for (n, offset) in [(0usize, 0u64), (1, 5), (2, 0), (7, 1 << 24), (3000, 17)] {
            for order in [WordOrder::LittleEndian, WordOrder::BigEndian] {
                let s = KeyedShuffle::draw(&ks(4), offset, order, n).unwrap();
                assert_eq!(s.len(), n);
                assert_eq!(*s.permutation(), reference(&ks(4), offset, order, n), "n {n} offset {offset} {order:?}");
            }
        }
    }

    #[test]
    fn swaps_in_reverse_undo_the_shuffle() {
        let s = KeyedShuffle::draw(&ks(1), 64, WordOrder::LittleEndian, 500).unwrap();
        let original: Vec<u16> = (0..500).collect();
        let mut items = original.clone();
        for (i, j) in s.swaps() {
            items.swap(i, j);
        }
        assert_ne!(items, original);
        let p = s.permutation();
        assert!(items.iter().zip(p.iter()).all(|(&v, &q)| u32::from(v) == q));
        for (i, j) in s.swaps().rev() {
            items.swap(i, j);
        }
        assert_eq!(items, original);
    }

    #[test]
    fn words_past_the_last_keystream_offset_are_an_error() {
        let e = KeyedShuffle::draw(&ks(1), u64::MAX - 8, WordOrder::BigEndian, 10).err().unwrap();
        assert!(matches!(e, CryptoError::KeystreamRange { .. }), "{e:?}");
    }

    #[test]
    fn shuffles_of_more_than_2_pow_32_items_are_refused_before_drawing() {
        if let Ok(n) = usize::try_from(MAX_SHUFFLE_LEN + 1) {
            let e = KeyedShuffle::draw(&ks(1), 0, WordOrder::LittleEndian, n).err().unwrap();
            assert_eq!(e, CryptoError::ShuffleTooLong { len: n, max: MAX_SHUFFLE_LEN });
        }
    }
}
