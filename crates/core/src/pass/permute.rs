//! The distribution-preserving mode: a keyed permutation of the elements inside
//! each span (docs/format.md §5). The encrypted values are the tensor's own values,
//! so every statistic of a span's value multiset is unchanged.
//!
//! The permutation of the span starting at element-byte offset `a` is the keyed
//! shuffle of `onnx_protect_crypto::KeyedShuffle`, reading 32-bit little-endian
//! words from the tensor's keystream starting at byte offset `a · 2^24` (so the
//! randomness of different spans never overlaps for tensors under 1 TiB).
//! Encryption applies its swaps (`i = n−1` down to 1), decryption the same swaps
//! in reverse order.

use onnx_protect_crypto::{CryptoError, KeyedShuffle, Keystream, WordOrder};

use crate::error::{BadManifest, CoreError, PermutationProblem, Result};

fn bad(problem: PermutationProblem) -> CoreError {
    BadManifest::Permutation(problem).into()
}

/// Offset multiplier of the randomness of a span (see the module docs).
pub const SPAN_STREAM_SHIFT: u32 = 24;

/// Permutes (`inverse = false`) or un-permutes the elements of `span`, the element
/// bytes of one span starting at element-byte offset `span_start`.
pub fn permute_span(ks: &Keystream, span_start: u64, span: &mut [u8], elem: usize, inverse: bool) -> Result<()> {
    if elem == 0 || span.len() % elem != 0 {
        return Err(bad(PermutationProblem::PartElement));
    }
    let n = span.len() / elem;
    let start = span_start.checked_mul(1u64 << SPAN_STREAM_SHIFT).ok_or_else(|| bad(PermutationProblem::Offset))?;
    let shuffle = KeyedShuffle::draw(ks, start, WordOrder::LittleEndian, n).map_err(|e| match e {
        CryptoError::ShuffleTooLong { .. } => bad(PermutationProblem::TooLong),
        _ => bad(PermutationProblem::StreamOffset),
    })?;
    let mut swap = |(i, j): (usize, usize)| {
        if i != j {
            for b in 0..elem {
                span.swap(i * elem + b, j * elem + b);
            }
        }
    };
    if inverse {
        shuffle.swaps().rev().for_each(&mut swap);
    } else {
        shuffle.swaps().for_each(&mut swap);
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

    /// Values from an independent Python implementation of docs/format.md §5
    /// (HKDF and AES-CTR from the standard library and `cryptography`), for
    /// master key 01×32, salt 02×32, stream 3.
    #[test]
    fn permutations_match_the_independent_implementation_of_the_spec() {
        let keys = SessionKeys::derive(&MasterKey::from_bytes([1; 32]), &[2; 32]);
        let ks = keys.keystream(3);
        for (start, want) in [
            (64u64, vec![0u8, 8, 2, 3, 7, 6, 4, 5, 9, 1]),
            (
                0,
                vec![
                    10, 22, 36, 14, 27, 9, 20, 16, 17, 18, 6, 19, 12, 26, 5, 3, 23, 0, 28, 29, 15, 13, 7, 35, 34, 2,
                    21, 1, 11, 32, 8, 31, 25, 30, 24, 33, 4,
                ],
            ),
        ] {
            let n = want.len() as u8;
            let mut data: Vec<u8> = (0..n).collect();
            permute_span(&ks, start, &mut data, 1, false).unwrap();
            assert_eq!(data, want, "span at {start}");
        }
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
