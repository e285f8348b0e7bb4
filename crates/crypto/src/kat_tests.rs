//! Known-answer tests against the data files in `tests/vectors/`.
//!
//! These live inside the crate (not in `tests/`) because they check internal
//! wiring — HKDF extract/expand, the MAC key, tensor keys — that the public
//! API deliberately does not expose.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;

use crate::session::{hkdf_expand, hkdf_extract, tensor_key};
use crate::{aes256_ctr_xor, Mac, MasterKey, SessionKeys};

type Record = BTreeMap<String, String>;

/// Parses a vector file: `#` comments, blank-line-separated records of
/// `name = value` lines.
fn load(file: &str) -> Vec<Record> {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut records = Vec::new();
    let mut current = Record::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        if line.is_empty() {
            if !current.is_empty() {
                records.push(std::mem::take(&mut current));
            }
            continue;
        }
        let (name, value) = line.split_once('=').unwrap();
        let old = current.insert(name.trim().to_owned(), value.trim().to_owned());
        assert!(old.is_none(), "duplicate field {name} in {file}");
    }
    if !current.is_empty() {
        records.push(current);
    }
    assert!(!records.is_empty(), "{file} holds no records");
    records
}

fn bytes(record: &Record, name: &str) -> Vec<u8> {
    hex::decode(&record[name]).unwrap()
}

fn array<const N: usize>(record: &Record, name: &str) -> [u8; N] {
    bytes(record, name).try_into().unwrap()
}

#[test]
fn nist_sp800_38a_ctr_aes256_encrypt_and_decrypt_vectors_match() {
    let records = load("nist-sp800-38a-ctr-aes256.txt");
    assert_eq!(records.len(), 2);
    for r in &records {
        let mut data = bytes(r, "input");
        aes256_ctr_xor(&array(r, "key"), &array(r, "counter"), 0, &mut data).unwrap();
        assert_eq!(data, bytes(r, "output"), "{}", r["case"]);
    }
}

#[test]
fn nist_ctr_aes256_at_unaligned_offsets_matches_vector() {
    for r in &load("nist-sp800-38a-ctr-aes256.txt") {
        let input = bytes(r, "input");
        let output = bytes(r, "output");
        // Start in the middle of block 2 and run to the end, and a short
        // range that crosses from block 2 into block 3.
        for (start, end) in [(24, 64), (20, 50), (31, 33), (63, 64)] {
            let mut data = input[start..end].to_vec();
            aes256_ctr_xor(&array(r, "key"), &array(r, "counter"), start as u64, &mut data).unwrap();
            assert_eq!(data, output[start..end], "{} [{start}, {end})", r["case"]);
        }
    }
}

#[test]
fn rfc5869_case1_proves_hkdf_sha256_wiring() {
    let records = load("rfc5869-hkdf-sha256.txt");
    let r = &records[0];
    let prk = hkdf_extract(&bytes(r, "salt"), &bytes(r, "ikm"));
    assert_eq!(prk.to_vec(), bytes(r, "prk"));
    let okm: [u8; 42] = hkdf_expand(&prk, &[&bytes(r, "info")]);
    assert_eq!(okm.to_vec(), bytes(r, "okm"));
    // The info may be passed in parts (as tensor keys do: label, then id).
    let info = bytes(r, "info");
    let (a, b) = info.split_at(3);
    let split: [u8; 42] = hkdf_expand(&prk, &[a, b]);
    assert_eq!(split, okm);
}

#[test]
fn rfc4231_cases_2_and_6_prove_hmac_sha256_wiring() {
    let records = load("rfc4231-hmac-sha256.txt");
    assert_eq!(records.len(), 2);
    for r in &records {
        let key = bytes(r, "key");
        let data = bytes(r, "data");
        let expected = bytes(r, "mac");

        let mut mac = Mac::with_key(&key);
        mac.update(&data);
        assert_eq!(mac.finalize().to_vec(), expected, "{}", r["case"]);

        // Incremental updates in pieces give the same tag.
        let mut mac = Mac::with_key(&key);
        for piece in data.chunks(5) {
            mac.update(piece);
        }
        assert!(mac.clone().verify(&expected), "{}", r["case"]);

        let mut wrong = expected.clone();
        wrong[31] ^= 1;
        assert!(!mac.clone().verify(&wrong));
        assert!(!mac.verify(&expected[..31]));
    }
}

#[test]
fn derivation_v1_vectors_are_unchanged() {
    let records = load("derivation-v1.txt");
    let r = &records[0];
    assert_eq!(r["case"], "derivation-v1");
    let master = MasterKey::from_bytes(array(r, "master"));
    let salt: [u8; 32] = array(r, "salt");
    let keys = SessionKeys::derive(&master, &salt);

    let prk = hkdf_extract(&salt, &array::<32>(r, "master"));
    assert_eq!(prk, array(r, "prk"));
    assert_eq!(tensor_key(&prk, 0), array(r, "tensor-key-0"));
    assert_eq!(tensor_key(&prk, 1), array(r, "tensor-key-1"));
    assert_eq!(keys.mac_key(), array(r, "mac-key"));
    assert_eq!(keys.key_check(), array(r, "key-check"));
    assert_eq!(master.fingerprint(), array(r, "fingerprint"));

    let mut stream = [0u8; 32];
    keys.keystream(0).apply(0, &mut stream).unwrap();
    assert_eq!(stream, array(r, "keystream-0"));

    // The keystream is plain AES-256-CTR from a zero counter block.
    let mut direct = [0u8; 32];
    aes256_ctr_xor(&array(r, "tensor-key-0"), &[0u8; 16], 0, &mut direct).unwrap();
    assert_eq!(direct, stream);
}

#[test]
fn passphrase_v1_vector_is_unchanged() {
    let records = load("derivation-v1.txt");
    let r = &records[1];
    assert_eq!(r["case"], "passphrase-v1");
    let number = |name: &str| u32::from_be_bytes(array(r, name));
    let params = crate::KdfParams {
        salt: array(r, "kdf-salt"),
        m_cost_kib: number("m-cost-kib"),
        t_cost: number("t-cost"),
        p_cost: number("p-cost"),
    };
    let key = MasterKey::from_passphrase(&bytes(r, "passphrase"), &params).unwrap();
    assert_eq!(key.as_bytes(), &array::<32>(r, "master"));
}

#[test]
fn derivation_v2_vectors_are_unchanged() {
    let records = load("derivation-v2.txt");
    let r = &records[0];
    assert_eq!(r["case"], "data-key-v2");
    let dk = crate::DataKey::from_bytes(array(r, "data-key"));
    let prk = hkdf_extract(crate::V2_PRK_SALT, &array::<32>(r, "data-key"));
    assert_eq!(prk, array(r, "prk"));
    let tensor = |s: u64| hkdf_expand::<32>(&prk, &[crate::V2_TENSOR_LABEL, &s.to_be_bytes()]);
    assert_eq!(tensor(0), array(r, "tensor-key-0"));
    assert_eq!(tensor(1), array(r, "tensor-key-1"));
    let keys = dk.tier_keys();
    assert_eq!(keys.mac_key(), array(r, "mac-key"));
    assert_eq!(keys.key_check(), array(r, "key-check"));
    let mut stream = [0u8; 32];
    keys.keystream(0).apply(0, &mut stream).unwrap();
    assert_eq!(stream, array(r, "keystream-0"));
    assert_eq!(*dk.tier_down().to_bytes(), array(r, "tier-down"));
    assert_eq!(dk.tier_down().tier_keys().key_check(), array(r, "tier-down-key-check"));
}

#[test]
fn key_stanza_v2_vector_is_unchanged() {
    let records = load("derivation-v2.txt");
    let r = &records[1];
    assert_eq!(r["case"], "key-stanza-v2");
    let w = MasterKey::from_bytes(array(r, "wrapping-key"));
    let salt: [u8; 16] = array(r, "stanza-salt");
    let tier = u32::from_be_bytes(array(r, "tier"));
    let dk = crate::DataKey::from_bytes(array(r, "data-key"));
    let body = w.wrap_data_key(crate::WrapKind::Key, &salt, tier, &dk);
    assert_eq!(body, bytes(r, "body"));
    let back = w.unwrap_data_key(crate::WrapKind::Key, &salt, tier, &body).unwrap();
    assert_eq!(*back.to_bytes(), array(r, "data-key"));
    assert_eq!(w.fingerprint(), array(r, "label"));
}
