//! Master key sources, the per-file key schedule, MAC and checksum behaviour.

#![allow(clippy::unwrap_used)] // tests may unwrap

use onnx_protect_crypto::{
    aes256_ctr_xor, random_salt, Checksum, CryptoError, KdfParams, MasterKey, SessionKeys, KEY_CHECK_LEN,
};

const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn test_key() -> MasterKey {
    MasterKey::from_bytes(core::array::from_fn(|i| i as u8))
}

fn stream_prefix(keys: &SessionKeys, id: u64) -> [u8; 64] {
    let mut buf = [0u8; 64];
    keys.keystream(id).apply(0, &mut buf).unwrap();
    buf
}

/// Cheap Argon2id parameters so the tests stay fast.
fn small_params(salt_byte: u8) -> KdfParams {
    KdfParams { salt: [salt_byte; 16], m_cost_kib: 64, t_cost: 1, p_cost: 1 }
}

#[test]
fn different_salts_give_different_keystreams_for_the_same_id() {
    let master = test_key();
    let a = SessionKeys::derive(&master, &[1; 32]);
    let b = SessionKeys::derive(&master, &[2; 32]);
    assert_ne!(stream_prefix(&a, 0), stream_prefix(&b, 0));
    assert_ne!(a.key_check(), b.key_check());
}

#[test]
fn different_stream_ids_give_different_keystreams() {
    let keys = SessionKeys::derive(&test_key(), &[1; 32]);
    let ids = [0, 1, 2, 255, 256, 1 << 32, u64::MAX];
    for (i, x) in ids.iter().enumerate() {
        for y in &ids[i + 1..] {
            assert_ne!(stream_prefix(&keys, *x), stream_prefix(&keys, *y), "ids {x} and {y}");
        }
    }
}

#[test]
fn same_inputs_derive_the_same_keys() {
    let a = SessionKeys::derive(&test_key(), &[9; 32]);
    let b = SessionKeys::derive(&test_key(), &[9; 32]);
    assert_eq!(a.key_check(), b.key_check());
    assert_eq!(stream_prefix(&a, 17), stream_prefix(&b, 17));
    let mut ma = a.mac();
    ma.update(b"x");
    let mut mb = b.mac();
    mb.update(b"x");
    assert_eq!(ma.finalize(), mb.finalize());
}

#[test]
fn key_check_differs_for_a_wrong_master_key() {
    let salt = [3; 32];
    let right = SessionKeys::derive(&test_key(), &salt);
    let wrong = SessionKeys::derive(&MasterKey::from_bytes([0xEE; 32]), &salt);
    assert_ne!(right.key_check(), wrong.key_check());
    assert!(right.key_check_matches(&right.key_check()));
    assert!(!wrong.key_check_matches(&right.key_check()));
}

#[test]
fn key_check_matches_rejects_wrong_lengths() {
    let keys = SessionKeys::derive(&test_key(), &[3; 32]);
    let check = keys.key_check();
    assert!(!keys.key_check_matches(&check[..KEY_CHECK_LEN - 1]));
    assert!(!keys.key_check_matches(&[check.as_slice(), &[0]].concat()));
    assert!(!keys.key_check_matches(&[]));
}

#[test]
fn mac_detects_changed_data_and_wrong_tags() {
    let keys = SessionKeys::derive(&test_key(), &[4; 32]);
    let mut mac = keys.mac();
    mac.update(b"header");
    mac.update(b"payload");
    let tag = mac.finalize();

    let mut same = keys.mac();
    same.update(b"headerpay");
    same.update(b"load");
    assert!(same.verify(&tag));

    let mut changed = keys.mac();
    changed.update(b"headerpayloaD");
    assert!(!changed.verify(&tag));

    let other_file = SessionKeys::derive(&test_key(), &[5; 32]);
    let mut other = other_file.mac();
    other.update(b"headerpayload");
    assert!(!other.verify(&tag));

    let mut short = keys.mac();
    short.update(b"headerpayload");
    assert!(!short.verify(&tag[..16]));
}

#[test]
fn checksum_is_sha256_and_incremental() {
    // FIPS 180-2 example: SHA-256("abc").
    let expected = hex::decode("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad").unwrap();
    let mut whole = Checksum::new();
    whole.update(b"abc");
    assert_eq!(whole.finalize().to_vec(), expected);
    let mut pieces = Checksum::default();
    pieces.update(b"a");
    pieces.update(b"");
    pieces.update(b"bc");
    assert_eq!(pieces.finalize().to_vec(), expected);
}

#[test]
fn ctr_counter_carries_across_all_128_bits() {
    // Counter 0x0000..00_ffffffffffffffff: the next block must carry into
    // the upper 64 bits, i.e. equal the first block at 0x00..01_0000000000000000.
    let key = [0x11; 32];
    let mut low = [0u8; 16];
    low[8..].fill(0xFF);
    let mut carried = [0u8; 16];
    carried[7] = 1;
    let mut a = [0u8; 32];
    aes256_ctr_xor(&key, &low, 0, &mut a).unwrap();
    let mut b = [0u8; 16];
    aes256_ctr_xor(&key, &carried, 0, &mut b).unwrap();
    assert_eq!(a[16..], b);

    // And the all-ones counter wraps to zero.
    let mut c = [0u8; 32];
    aes256_ctr_xor(&key, &[0xFF; 16], 0, &mut c).unwrap();
    let mut d = [0u8; 16];
    aes256_ctr_xor(&key, &[0; 16], 0, &mut d).unwrap();
    assert_eq!(c[16..], d);
}

#[test]
fn aes256_ctr_xor_rejects_offset_overflow() {
    let mut buf = [0u8; 2];
    assert_eq!(
        aes256_ctr_xor(&[0; 32], &[0; 16], u64::MAX, &mut buf),
        Err(CryptoError::KeystreamRange { offset: u64::MAX, len: 2 })
    );
}

#[test]
fn parse_key_file_accepts_raw_hex_and_hex_with_newline() {
    let want = test_key().fingerprint();
    let raw: Vec<u8> = (0u8..32).collect();
    let upper = KEY_HEX.to_uppercase();
    let inputs: Vec<Vec<u8>> = vec![
        raw,
        KEY_HEX.as_bytes().to_vec(),
        format!("{KEY_HEX}\n").into_bytes(),
        format!("{KEY_HEX}\r\n").into_bytes(),
        format!("  \t{upper}\n\n").into_bytes(),
    ];
    for input in inputs {
        let key = MasterKey::parse_key_file(&input).unwrap();
        assert_eq!(key.fingerprint(), want, "input of {} bytes", input.len());
    }
}

#[test]
fn parse_key_file_rejects_everything_else_with_the_documented_error() {
    let length_msg = |n: usize| {
        format!(
            "not a key file: a key file holds an `onnx-protect-key-v1` line, 64 hex digits or 32 raw bytes; \
             found {n} bytes that are none of these"
        )
    };
    let bad_lengths: Vec<Vec<u8>> = vec![
        vec![],
        vec![7; 17],
        vec![7; 31],
        vec![7; 33],                                 // raw key plus newline
        KEY_HEX.as_bytes()[..63].to_vec(),           // one digit short
        format!("{KEY_HEX}0").into_bytes(),          // one digit long
        format!("{KEY_HEX} {KEY_HEX}").into_bytes(), // two keys
        format!("0x{KEY_HEX}").into_bytes(),         // prefixed
    ];
    for input in bad_lengths {
        let err = MasterKey::parse_key_file(&input).unwrap_err();
        assert_eq!(err, CryptoError::KeyFileLength { found: input.len() });
        assert_eq!(err.to_string(), length_msg(input.len()));
    }

    // 64 characters, one of which is not a hex digit: position reported,
    // content never echoed.
    let mut not_hex = format!(" {KEY_HEX}\n").into_bytes();
    not_hex[11] = b'g';
    let err = MasterKey::parse_key_file(&not_hex).unwrap_err();
    assert_eq!(err, CryptoError::KeyFileNotHex { position: 11 });
    let msg = err.to_string();
    assert!(msg.contains("must be 64 hex digits") && msg.contains("byte 11"), "{msg}");
    assert!(!msg.contains("0102030405"), "{msg}");
}

#[test]
fn from_env_reads_hex_and_reports_missing_or_invalid_values() {
    // Each case uses its own variable so parallel tests cannot interfere.
    let var = "ONNX_PROTECT_CRYPTO_TEST_KEY_OK";
    std::env::set_var(var, format!("{}\n", KEY_HEX.to_uppercase()));
    assert_eq!(MasterKey::from_env(var).unwrap().fingerprint(), test_key().fingerprint());

    let missing = "ONNX_PROTECT_CRYPTO_TEST_KEY_MISSING";
    std::env::remove_var(missing);
    let err = MasterKey::from_env(missing).unwrap_err();
    assert_eq!(err, CryptoError::EnvKeyMissing { var: missing.into() });
    assert!(err.to_string().contains("is not set"));

    let short = "ONNX_PROTECT_CRYPTO_TEST_KEY_SHORT";
    std::env::set_var(short, &KEY_HEX[..40]);
    let err = MasterKey::from_env(short).unwrap_err();
    assert_eq!(err, CryptoError::EnvKeyLength { var: short.into(), found: 40 });
    assert!(!err.to_string().contains(&KEY_HEX[..20]));

    let bad = "ONNX_PROTECT_CRYPTO_TEST_KEY_NOT_HEX";
    std::env::set_var(bad, format!("{}z", &KEY_HEX[..63]));
    let err = MasterKey::from_env(bad).unwrap_err();
    assert_eq!(err, CryptoError::EnvKeyNotHex { var: bad.into(), position: 63 });
}

#[test]
fn to_hex_round_trips_through_parse_key_file() {
    let key = MasterKey::generate().unwrap();
    let hex = key.to_hex();
    assert_eq!(hex.len(), 64);
    assert!(hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    let back = MasterKey::parse_key_file(hex.as_bytes()).unwrap();
    assert_eq!(back.fingerprint(), key.fingerprint());
    assert_eq!(test_key().to_hex().as_str(), KEY_HEX);
}

#[test]
fn generated_keys_and_salts_differ() {
    let a = MasterKey::generate().unwrap();
    let b = MasterKey::generate().unwrap();
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert_ne!(random_salt().unwrap(), random_salt().unwrap());
    assert_ne!(KdfParams::new_random().unwrap().salt, KdfParams::new_random().unwrap().salt);
}

#[test]
fn debug_output_never_shows_key_material() {
    let key = test_key();
    let keys = SessionKeys::derive(&key, &[0; 32]);
    let shown = format!("{key:?} {keys:?} {:?} {:?}", keys.keystream(0), keys.mac());
    assert!(shown.contains("[redacted]"));
    assert!(!shown.contains("0102"), "{shown}");
    assert!(!shown.contains("1, 2, 3"), "{shown}");
}

#[test]
fn kdf_defaults_are_valid() {
    let p = KdfParams::new_random().unwrap();
    assert_eq!((p.m_cost_kib, p.t_cost, p.p_cost), (65_536, 3, 1));
    p.validate().unwrap();
    let mut edge = small_params(0);
    for (m, t, pc) in [(8, 1, 1), (131_072, 6, 4), (32, 6, 4)] {
        edge.m_cost_kib = m;
        edge.t_cost = t;
        edge.p_cost = pc;
        edge.validate().unwrap();
    }
}

#[test]
fn kdf_params_validate_rejects_each_hostile_field() {
    let cases = [
        ("m_cost_kib", KdfParams { m_cost_kib: 0, ..small_params(0) }),
        ("m_cost_kib", KdfParams { m_cost_kib: 7, ..small_params(0) }),
        ("m_cost_kib", KdfParams { m_cost_kib: 131_073, ..small_params(0) }),
        ("m_cost_kib", KdfParams { m_cost_kib: 1_048_576, ..small_params(0) }),
        ("m_cost_kib", KdfParams { m_cost_kib: u32::MAX, ..small_params(0) }),
        // Argon2 needs 8 KiB per lane.
        ("m_cost_kib", KdfParams { m_cost_kib: 31, p_cost: 4, ..small_params(0) }),
        ("t_cost", KdfParams { t_cost: 0, ..small_params(0) }),
        ("t_cost", KdfParams { t_cost: 7, ..small_params(0) }),
        ("t_cost", KdfParams { t_cost: 64, ..small_params(0) }),
        ("t_cost", KdfParams { t_cost: u32::MAX, ..small_params(0) }),
        ("p_cost", KdfParams { p_cost: 0, ..small_params(0) }),
        ("p_cost", KdfParams { p_cost: 5, ..small_params(0) }),
        ("p_cost", KdfParams { p_cost: u32::MAX, ..small_params(0) }),
    ];
    for (field, params) in cases {
        let err = params.validate().unwrap_err();
        match &err {
            CryptoError::KdfParam { field: f, .. } => assert_eq!(*f, field, "{params:?}"),
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains(field), "{err}");
        // from_passphrase validates before running Argon2.
        assert_eq!(MasterKey::from_passphrase(b"pw", &params).unwrap_err(), err);
    }
}

#[test]
fn from_passphrase_is_deterministic_for_fixed_params() {
    let params = small_params(1);
    let a = MasterKey::from_passphrase(b"correct horse", &params).unwrap();
    let b = MasterKey::from_passphrase(b"correct horse", &params).unwrap();
    assert_eq!(a.to_hex(), b.to_hex());

    let other_pass = MasterKey::from_passphrase(b"correct horsf", &params).unwrap();
    assert_ne!(a.fingerprint(), other_pass.fingerprint());
    let other_salt = MasterKey::from_passphrase(b"correct horse", &small_params(2)).unwrap();
    assert_ne!(a.fingerprint(), other_salt.fingerprint());
    let other_cost = MasterKey::from_passphrase(b"correct horse", &KdfParams { t_cost: 2, ..params }).unwrap();
    assert_ne!(a.fingerprint(), other_cost.fingerprint());
}

#[test]
fn from_passphrase_rejects_an_empty_passphrase() {
    assert_eq!(MasterKey::from_passphrase(b"", &small_params(1)).unwrap_err(), CryptoError::EmptyPassphrase);
}
