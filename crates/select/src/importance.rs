//! Data-free importance of subsequences: mean absolute value (L1 per element) or
//! root mean square (L2 per element) of the values in each subsequence.

use onnx_protect_format::DataType;

/// Which norm measures a subsequence's importance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    L1,
    L2,
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let man = f64::from(h & 0x3ff);
    match exp {
        0 => sign * man * 2f64.powi(-24),
        31 => {
            if man == 0.0 {
                sign * f64::INFINITY
            } else {
                f64::NAN
            }
        }
        e => sign * (1.0 + man / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Calls `f` with each value of element bytes (raw_data layout), read as f64; `None`
/// for types without a simple numeric reading (sub-byte, 8-bit floats, strings,
/// complex).
fn for_each_value(dtype: DataType, bytes: &[u8], mut f: impl FnMut(f64)) -> Option<()> {
    use DataType::*;
    match dtype {
        Float => bytes.chunks_exact(4).for_each(|c| f(f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))),
        Double => {
            bytes.chunks_exact(8).for_each(|c| f(f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])))
        }
        Float16 => bytes.chunks_exact(2).for_each(|c| f(f16_to_f64(u16::from_le_bytes([c[0], c[1]])))),
        Bfloat16 => bytes
            .chunks_exact(2)
            .for_each(|c| f(f64::from(f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)))),
        Int8 => bytes.iter().for_each(|&b| f(f64::from(b as i8))),
        Uint8 => bytes.iter().for_each(|&b| f(f64::from(b))),
        Int16 => bytes.chunks_exact(2).for_each(|c| f(f64::from(i16::from_le_bytes([c[0], c[1]])))),
        Uint16 => bytes.chunks_exact(2).for_each(|c| f(f64::from(u16::from_le_bytes([c[0], c[1]])))),
        Int32 => bytes.chunks_exact(4).for_each(|c| f(f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))),
        _ => return None,
    }
    Some(())
}

/// Decodes element bytes (raw_data layout) into f64 values; `None` for types
/// without a simple numeric reading (sub-byte, 8-bit floats, strings, complex).
#[cfg(test)]
fn decode_values(dtype: DataType, bytes: &[u8]) -> Option<Vec<f64>> {
    let mut v = Vec::with_capacity(bytes.len() / (dtype.bits() / 8).max(1) as usize);
    for_each_value(dtype, bytes, |x| v.push(x))?;
    Some(v)
}

/// The importance of one subsequence's element bytes (see [`scores`]).
fn score(dtype: DataType, bytes: &[u8], norm: Norm) -> Option<f64> {
    // Summed in element order, as a fold from zero: the same value whatever thread
    // computes it (selection must not depend on the machine).
    let (mut sum, mut n) = (0.0f64, 0usize);
    match norm {
        Norm::L1 => for_each_value(dtype, bytes, |x| {
            sum += if x.is_finite() { x.abs() } else { 0.0 };
            n += 1;
        })?,
        Norm::L2 => for_each_value(dtype, bytes, |x| {
            sum += if x.is_finite() { x * x } else { 0.0 };
            n += 1;
        })?,
    }
    if n == 0 {
        return Some(0.0);
    }
    let mean = sum / n as f64;
    Some(match norm {
        Norm::L1 => mean,
        Norm::L2 => mean.sqrt(),
    })
}

/// Importance score of each subsequence `bounds[i]..bounds[i+1]` (byte bounds):
/// mean |x| for L1, sqrt(mean x²) for L2. Non-finite values count as 0.
/// `None` when the type cannot be decoded. Subsequences are scored on all cores
/// (each one's sum stays in element order, so the scores do not depend on that).
pub fn scores(dtype: DataType, bytes: &[u8], bounds: &[u64], norm: Norm) -> Option<Vec<f64>> {
    use rayon::prelude::*;
    if (dtype.bits() / 8) == 0 {
        return None;
    }
    bounds
        .par_windows(2)
        .with_min_len(64)
        .map(|w| score(dtype, bytes.get(w[0] as usize..w[1] as usize)?, norm))
        .collect()
}

/// Indices of the `k` largest scores, ties broken by the lower index; returned ascending.
pub fn top_k(scores: &[f64], k: usize) -> Vec<u64> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut chosen: Vec<u64> = idx.into_iter().take(k).map(|i| i as u64).collect();
    chosen.sort_unstable();
    chosen
}

/// Weighted sampling without replacement, with probability ∝ score, from a public
/// seed (Efraimidis–Spirakis): each subsequence `i` draws `u_i ∈ (0, 1)` from
/// SHA-256(`"onnx-protect/v1/select"` ‖ u64be(seed) ‖ locator ‖ u64be(i)) (first 8
/// bytes, big-endian, top 53 bits: `u = (v >> 11 + 0.5) / 2^53`) and gets the key
/// `ln(u) / w_i` with `w_i = max(score_i, 1e-12)`; the `k` largest keys are chosen.
pub fn weighted_sample(scores: &[f64], k: usize, seed: u64, locator: &str) -> Vec<u64> {
    use sha2::{Digest, Sha256};
    let keys: Vec<f64> = scores
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let mut h = Sha256::new();
            h.update(b"onnx-protect/v1/select");
            h.update(seed.to_be_bytes());
            h.update(locator.as_bytes());
            h.update((i as u64).to_be_bytes());
            let d = h.finalize();
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[..8]);
            let v = u64::from_be_bytes(b) >> 11;
            let u = (v as f64 + 0.5) / (1u64 << 53) as f64;
            let w = if s.is_finite() { s.max(1e-12) } else { 1e-12 };
            u.ln() / w
        })
        .collect();
    top_k(&keys, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats_decode() {
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
    }

    #[test]
    fn top_k_prefers_large_and_low_index() {
        assert_eq!(top_k(&[1.0, 5.0, 3.0, 5.0], 2), vec![1, 3]);
        assert_eq!(top_k(&[2.0, 2.0, 2.0], 2), vec![0, 1]);
    }

    #[test]
    fn weighted_sampling_is_deterministic_and_favours_weight() {
        let s: Vec<f64> = (0..100).map(|i| if i < 10 { 100.0 } else { 0.01 }).collect();
        let a = weighted_sample(&s, 10, 7, "7.0/5.1");
        assert_eq!(a, weighted_sample(&s, 10, 7, "7.0/5.1"));
        assert!(a.iter().filter(|&&i| i < 10).count() >= 8, "{a:?}");
        assert_ne!(a, weighted_sample(&s, 10, 8, "7.0/5.1").into_iter().rev().collect::<Vec<_>>());
    }

    #[test]
    fn scores_equal_the_plain_formula_bit_for_bit() {
        // The formula as first written: decode, then sum with Iterator::sum, per subsequence.
        let naive = |dtype, bytes: &[u8], bounds: &[u64], norm| -> Vec<f64> {
            bounds
                .windows(2)
                .map(|w| {
                    let vals = decode_values(dtype, &bytes[w[0] as usize..w[1] as usize]).unwrap();
                    if vals.is_empty() {
                        return 0.0;
                    }
                    let n = vals.len() as f64;
                    match norm {
                        Norm::L1 => vals.iter().map(|x| if x.is_finite() { x.abs() } else { 0.0 }).sum::<f64>() / n,
                        Norm::L2 => {
                            (vals.iter().map(|x| if x.is_finite() { x * x } else { 0.0 }).sum::<f64>() / n).sqrt()
                        }
                    }
                })
                .collect()
        };
        // Bytes of every kind (NaN and infinite patterns included), 1000 subsequences of
        // uneven length, some empty.
        let bytes: Vec<u8> = (0..64_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for dtype in [
            DataType::Float,
            DataType::Double,
            DataType::Float16,
            DataType::Bfloat16,
            DataType::Int8,
            DataType::Uint8,
            DataType::Int16,
            DataType::Uint16,
            DataType::Int32,
        ] {
            let elem = dtype.bits() / 8;
            let mut bounds = vec![0u64];
            for i in 0..1000u64 {
                let next = (bounds[i as usize] + (i % 9) * elem).min(bytes.len() as u64 / elem * elem);
                bounds.push(next);
            }
            for norm in [Norm::L1, Norm::L2] {
                let got = scores(dtype, &bytes, &bounds, norm).unwrap();
                let want = naive(dtype, &bytes, &bounds, norm);
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{dtype:?} {norm:?}");
            }
        }
    }

    #[test]
    fn l1_and_l2_scores() {
        let bytes: Vec<u8> = [1.0f32, -1.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let s = scores(DataType::Float, &bytes, &[0, 8, 16], Norm::L1).unwrap();
        assert_eq!(s, vec![1.0, 3.5]);
        let s = scores(DataType::Float, &bytes, &[0, 8, 16], Norm::L2).unwrap();
        assert!((s[1] - (12.5f64).sqrt()).abs() < 1e-12);
    }
}
