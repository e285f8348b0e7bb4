//! Properties of keystream application through the public API.

#![allow(clippy::unwrap_used)] // tests may unwrap

use onnx_protect_crypto::{CryptoError, Keystream, MasterKey, SessionKeys, MAX_MASK_LEN};
use proptest::prelude::*;

fn keystream(key_seed: u8, id: u64) -> Keystream {
    let master = MasterKey::from_bytes([key_seed; 32]);
    SessionKeys::derive(&master, &[key_seed.wrapping_add(1); 32]).keystream(id)
}

/// Offsets anywhere in the u64 range that still leave room for `max_len` bytes.
fn offset_strategy(max_len: u64) -> impl Strategy<Value = u64> {
    prop_oneof![0u64..10_000, 0..=u64::MAX - max_len, Just(u64::MAX - max_len)]
}

/// Sorted cut points inside `0..=len`.
fn cuts(len: usize, raw: &[usize]) -> Vec<usize> {
    let mut c: Vec<usize> = raw.iter().map(|r| r % (len + 1)).collect();
    c.push(0);
    c.push(len);
    c.sort_unstable();
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn apply_twice_is_identity(
        seed in any::<u8>(),
        id in any::<u64>(),
        offset in offset_strategy(4096),
        data in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let ks = keystream(seed, id);
        let mut buf = data.clone();
        ks.apply(offset, &mut buf).unwrap();
        if data.len() >= 16 {
            prop_assert_ne!(&buf, &data);
        }
        ks.apply(offset, &mut buf).unwrap();
        prop_assert_eq!(buf, data);
    }

    #[test]
    fn applying_in_arbitrary_pieces_equals_applying_in_one_go(
        seed in any::<u8>(),
        offset in offset_strategy(4096),
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        raw_cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let ks = keystream(seed, 5);
        let mut whole = data.clone();
        ks.apply(offset, &mut whole).unwrap();

        let mut pieces = data.clone();
        for w in cuts(data.len(), &raw_cuts).windows(2) {
            ks.apply(offset + w[0] as u64, &mut pieces[w[0]..w[1]]).unwrap();
        }
        prop_assert_eq!(pieces, whole);
    }

    #[test]
    fn apply_masked_never_changes_bits_outside_mask_and_is_its_own_inverse(
        seed in any::<u8>(),
        offset in offset_strategy(4096),
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        mask in proptest::collection::vec(any::<u8>(), 1..=16),
    ) {
        let ks = keystream(seed, 11);
        let mut buf = data.clone();
        ks.apply_masked(offset, &mut buf, &mask).unwrap();
        let m = mask.len() as u64;
        for (i, (new, old)) in buf.iter().zip(&data).enumerate() {
            let bits = mask[((offset % m + i as u64 % m) % m) as usize];
            prop_assert_eq!((new ^ old) & !bits, 0, "byte {} changed outside mask", i);
        }
        ks.apply_masked(offset, &mut buf, &mask).unwrap();
        prop_assert_eq!(buf, data);
    }

    #[test]
    fn apply_masked_in_arbitrary_pieces_equals_one_go(
        offset in 0u64..100_000,
        data in proptest::collection::vec(any::<u8>(), 0..20_000),
        raw_cuts in proptest::collection::vec(any::<usize>(), 0..6),
        mask in proptest::collection::vec(any::<u8>(), 1..=8),
    ) {
        let ks = keystream(7, 2);
        let mut whole = data.clone();
        ks.apply_masked(offset, &mut whole, &mask).unwrap();
        let mut pieces = data.clone();
        for w in cuts(data.len(), &raw_cuts).windows(2) {
            ks.apply_masked(offset + w[0] as u64, &mut pieces[w[0]..w[1]], &mask).unwrap();
        }
        prop_assert_eq!(pieces, whole);
    }

    #[test]
    fn full_mask_equals_plain_apply(
        offset in offset_strategy(2048),
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        mask_len in 1usize..=MAX_MASK_LEN,
    ) {
        let ks = keystream(1, 1);
        let mut plain = data.clone();
        ks.apply(offset, &mut plain).unwrap();
        let mut masked = data;
        ks.apply_masked(offset, &mut masked, &vec![0xFF; mask_len]).unwrap();
        prop_assert_eq!(masked, plain);
    }
}

const MIB: usize = 1024 * 1024;

proptest! {
    // Multi-MiB buffers: few cases, chosen around the 1 MiB split points.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn parallel_equals_serial_across_chunk_boundaries(
        size in prop_oneof![
            Just(MIB - 1), Just(MIB), Just(MIB + 1), Just(2 * MIB + 17),
            Just(3 * MIB - 5), (MIB..4 * MIB),
        ],
        offset in prop_oneof![Just(0u64), Just(1), Just(MIB as u64 - 3), 0u64..10_000_000],
        mask in prop_oneof![
            Just(vec![0xFF, 0xFF, 0x7F, 0x80]), Just(vec![0xFF, 0x83]), Just(vec![0x7F, 0x80]),
            Just(vec![0xFF]), proptest::collection::vec(any::<u8>(), 1..=12),
        ],
    ) {
        let ks = keystream(42, 3);
        let data: Vec<u8> = (0..size).map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8).collect();

        let mut serial = data.clone();
        ks.apply(offset, &mut serial).unwrap();
        let mut parallel = data.clone();
        ks.apply_par(offset, &mut parallel).unwrap();
        prop_assert!(parallel == serial, "apply_par differs from apply");

        let mut serial = data.clone();
        ks.apply_masked(offset, &mut serial, &mask).unwrap();
        let mut parallel = data;
        ks.apply_masked_par(offset, &mut parallel, &mask).unwrap();
        prop_assert!(parallel == serial, "apply_masked_par differs from apply_masked");
    }
}

#[test]
fn keystream_end_exactly_at_u64_max_is_accepted() {
    let ks = keystream(0, 0);
    let mut buf = [0u8; 10];
    ks.apply(u64::MAX - 10, &mut buf).unwrap();
    ks.apply_par(u64::MAX - 10, &mut buf).unwrap();
    assert_eq!(buf, [0u8; 10]);
}

#[test]
fn offset_overflow_is_an_error_and_leaves_data_untouched() {
    let ks = keystream(0, 0);
    let mut buf = [7u8; 11];
    let expected = CryptoError::KeystreamRange { offset: u64::MAX - 10, len: 11 };
    assert_eq!(ks.apply(u64::MAX - 10, &mut buf), Err(expected.clone()));
    assert_eq!(ks.apply_par(u64::MAX - 10, &mut buf), Err(expected.clone()));
    assert_eq!(ks.apply_masked(u64::MAX - 10, &mut buf, &[0xFF]), Err(expected.clone()));
    assert_eq!(ks.apply_masked_par(u64::MAX - 10, &mut buf, &[0xFF]), Err(expected));
    assert_eq!(buf, [7u8; 11]);
}

#[test]
fn empty_or_overlong_mask_is_rejected() {
    let ks = keystream(0, 0);
    let mut buf = [1u8; 4];
    for len in [0, MAX_MASK_LEN + 1] {
        let mask = vec![0xFF; len];
        let err = CryptoError::InvalidMask { len, max: MAX_MASK_LEN };
        assert_eq!(ks.apply_masked(0, &mut buf, &mask), Err(err.clone()));
        assert_eq!(ks.apply_masked_par(0, &mut buf, &mask), Err(err));
    }
    assert_eq!(buf, [1u8; 4]);
    let msg = CryptoError::InvalidMask { len: 0, max: MAX_MASK_LEN }.to_string();
    assert_eq!(msg, "element mask must be 1 to 256 bytes long; found 0 bytes");
}

#[test]
fn empty_data_is_accepted_at_any_offset() {
    let ks = keystream(0, 0);
    ks.apply(u64::MAX, &mut []).unwrap();
    ks.apply_masked(u64::MAX, &mut [], &[0x80]).unwrap();
    ks.apply_par(u64::MAX, &mut []).unwrap();
    ks.apply_masked_par(u64::MAX, &mut [], &[0x80]).unwrap();
}

#[test]
fn fp32_mask_keeps_exponents_and_restores_values_exactly() {
    let ks = keystream(5, 9);
    let values: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.37).collect();
    let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mask = [0xFF, 0xFF, 0x7F, 0x80];
    ks.apply_masked(0, &mut bytes, &mask).unwrap();
    let scrambled: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    for (s, v) in scrambled.iter().zip(&values) {
        let exponent = |x: f32| (x.to_bits() >> 23) & 0xFF;
        assert_eq!(exponent(*s), exponent(*v));
    }
    assert_ne!(scrambled, values);
    ks.apply_masked(0, &mut bytes, &mask).unwrap();
    let restored: Vec<u32> = bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let original: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
    assert_eq!(restored, original);
}
