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

/// Decodes element bytes (raw_data layout) into f64 values; `None` for types
/// without a simple numeric reading (sub-byte, 8-bit floats, strings, complex).
pub fn decode_values(dtype: DataType, bytes: &[u8]) -> Option<Vec<f64>> {
    use DataType::*;
    let v: Vec<f64> = match dtype {
        Float => bytes.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
        Double => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        Float16 => bytes.chunks_exact(2).map(|c| f16_to_f64(u16::from_le_bytes([c[0], c[1]]))).collect(),
        Bfloat16 => bytes
            .chunks_exact(2)
            .map(|c| f64::from(f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)))
            .collect(),
        Int8 => bytes.iter().map(|&b| f64::from(b as i8)).collect(),
        Uint8 => bytes.iter().map(|&b| f64::from(b)).collect(),
        Int16 => bytes.chunks_exact(2).map(|c| f64::from(i16::from_le_bytes([c[0], c[1]]))).collect(),
        Uint16 => bytes.chunks_exact(2).map(|c| f64::from(u16::from_le_bytes([c[0], c[1]]))).collect(),
        Int32 => bytes.chunks_exact(4).map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
        _ => return None,
    };
    Some(v)
}

/// Importance score of each subsequence `bounds[i]..bounds[i+1]` (byte bounds):
/// mean |x| for L1, sqrt(mean x²) for L2. Non-finite values count as 0.
/// `None` when the type cannot be decoded.
pub fn scores(dtype: DataType, bytes: &[u8], bounds: &[u64], norm: Norm) -> Option<Vec<f64>> {
    let elem = (dtype.bits() / 8) as usize;
    if elem == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bounds.len().saturating_sub(1));
    for w in bounds.windows(2) {
        let chunk = bytes.get(w[0] as usize..w[1] as usize)?;
        let vals = decode_values(dtype, chunk)?;
        if vals.is_empty() {
            out.push(0.0);
            continue;
        }
        let n = vals.len() as f64;
        let s = match norm {
            Norm::L1 => vals.iter().map(|x| if x.is_finite() { x.abs() } else { 0.0 }).sum::<f64>() / n,
            Norm::L2 => (vals.iter().map(|x| if x.is_finite() { x * x } else { 0.0 }).sum::<f64>() / n).sqrt(),
        };
        out.push(s);
    }
    Some(out)
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
    fn l1_and_l2_scores() {
        let bytes: Vec<u8> = [1.0f32, -1.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let s = scores(DataType::Float, &bytes, &[0, 8, 16], Norm::L1).unwrap();
        assert_eq!(s, vec![1.0, 3.5]);
        let s = scores(DataType::Float, &bytes, &[0, 8, 16], Norm::L2).unwrap();
        assert!((s[1] - (12.5f64).sqrt()).abs() < 1e-12);
    }
}
