//! The distribution-preserving mode: a keyed permutation of the elements inside
//! each span (docs/format.md §5). The encrypted values are the tensor's own values,
//! so every statistic of a span's value multiset is unchanged.
//!
//! The permutation of the span starting at element-byte offset `a` is a
//! Fisher–Yates shuffle driven by 32-bit little-endian words read from the
//! tensor's keystream starting at byte offset `a · 2^24` (so the randomness of
//! different spans never overlaps for tensors under 1 TiB). To draw `j` uniform in
//! `[0, i]`: read `r`; with `m = i + 1` and `limit = 2^32 − (2^32 mod m)`, accept
//! `j = r mod m` if `r < limit`, else read again. For `i = n−1` down to `1`: swap
//! elements `i` and `j`.

use onnx_protect_crypto::Keystream;

use crate::protect::{CoreError, Result};

/// Offset multiplier of the randomness of a span (see the module docs).
pub const SPAN_STREAM_SHIFT: u32 = 24;

struct Words<'a> {
    ks: &'a Keystream,
    next: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl Words<'_> {
    fn word(&mut self) -> Result<u32> {
        if self.pos + 4 > self.buf.len() {
            self.buf.iter_mut().for_each(|b| *b = 0);
            self.ks.apply(self.next, &mut self.buf)?;
            self.next = self
                .next
                .checked_add(self.buf.len() as u64)
                .ok_or_else(|| CoreError::BadManifest("permutation stream offset overflows".into()))?;
            self.pos = 0;
        }
        let w = u32::from_le_bytes([
            self.buf[self.pos],
            self.buf[self.pos + 1],
            self.buf[self.pos + 2],
            self.buf[self.pos + 3],
        ]);
        self.pos += 4;
        Ok(w)
    }

    fn below(&mut self, m: u32) -> Result<u32> {
        let limit = (1u64 << 32) - ((1u64 << 32) % u64::from(m));
        loop {
            let r = self.word()?;
            if u64::from(r) < limit {
                return Ok(r % m);
            }
        }
    }
}

/// The swap targets `j_i` for `i = n−1 … 1` of the span starting at `span_start`.
fn swaps(ks: &Keystream, span_start: u64, n: usize) -> Result<Vec<u32>> {
    if n > u32::MAX as usize {
        return Err(CoreError::BadManifest("a distribution-preserving span has too many elements".into()));
    }
    let start = span_start
        .checked_mul(1u64 << SPAN_STREAM_SHIFT)
        .ok_or_else(|| CoreError::BadManifest("span offset too large for the distribution-preserving mode".into()))?;
    let mut words = Words { ks, next: start, buf: vec![0u8; (4 * n + 64).min(1 << 20)], pos: usize::MAX / 2 };
    let mut out = Vec::with_capacity(n.saturating_sub(1));
    for i in (1..n).rev() {
        out.push(words.below(i as u32 + 1)?);
    }
    Ok(out)
}

/// Permutes (`inverse = false`) or un-permutes the elements of `span`, the element
/// bytes of one span starting at element-byte offset `span_start`.
pub fn permute_span(ks: &Keystream, span_start: u64, span: &mut [u8], elem: usize, inverse: bool) -> Result<()> {
    if elem == 0 || span.len() % elem != 0 {
        return Err(CoreError::BadManifest("span is not a whole number of elements".into()));
    }
    let n = span.len() / elem;
    let js = swaps(ks, span_start, n)?;
    let mut swap = |i: usize, j: usize| {
        if i != j {
            for b in 0..elem {
                span.swap(i * elem + b, j * elem + b);
            }
        }
    };
    if inverse {
        for (k, &j) in js.iter().enumerate().rev() {
            swap(n - 1 - k, j as usize);
        }
    } else {
        for (k, &j) in js.iter().enumerate() {
            swap(n - 1 - k, j as usize);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protect_crypto::{MasterKey, SessionKeys};

    #[test]
    fn permutation_round_trips_and_keeps_the_multiset() {
        let keys = SessionKeys::derive(&MasterKey::from_bytes([1; 32]), &[2; 32]);
        let ks = keys.keystream(3);
        let original: Vec<u8> = (0..400u32).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let mut data = original.clone();
        permute_span(&ks, 64, &mut data, 4, false).unwrap();
        assert_ne!(data, original);
        let mut a: Vec<&[u8]> = data.chunks(4).collect();
        let mut b: Vec<&[u8]> = original.chunks(4).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        permute_span(&ks, 64, &mut data, 4, true).unwrap();
        assert_eq!(data, original);
    }

    #[test]
    fn different_spans_get_different_permutations() {
        let keys = SessionKeys::derive(&MasterKey::from_bytes([1; 32]), &[2; 32]);
        let ks = keys.keystream(0);
        let original: Vec<u8> = (0..64u8).collect();
        let (mut x, mut y) = (original.clone(), original.clone());
        permute_span(&ks, 0, &mut x, 1, false).unwrap();
        permute_span(&ks, 64, &mut y, 1, false).unwrap();
        assert_ne!(x, y);
    }
}
