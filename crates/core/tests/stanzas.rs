//! Recipient stanzas are hostile input (docs/format.md §8): what a stanza of each kind may
//! hold is checked on every read, with or without a key, before any key work is done, and
//! the work a reader does per file is bounded.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};

use onnx_protect_core::error::{BadManifest, CoreError, ErrorKind};
use onnx_protect_core::format2::envelope::{parse_entry, trailing_entry, METADATA_KEY_V2};
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::protect::{decrypt, encrypt, verify, DecryptOptions, EncryptOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::NoProgress;
use onnx_protect_keys::{Identity, Recipient, X25519Identity};
use onnx_protect_proto::v2 as pb;
use onnx_protect_proto::Message;
use onnx_protect_select::Policy;

fn plain() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/cnn_torch/model.onnx")
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// `bytes` (a protected model) with its stanzas changed by `f` and the keyless checksum
/// recomputed, so that only the stanza rules can refuse it without a key.
fn with_stanzas(bytes: &[u8], f: impl FnOnce(&mut Vec<pb::Stanza>)) -> Vec<u8> {
    let (range, value) = trailing_entry(bytes).unwrap();
    let sealed = parse_entry(value, range.clone()).unwrap();
    let mut recipients = pb::Recipients::decode(sealed.envelope.recipients.as_slice()).unwrap();
    f(&mut recipients.stanzas);
    let mut env = sealed.envelope.clone();
    env.recipients = recipients.encode_to_vec();
    env.checksum.clear();
    env.checksum = onnx_protect_crypto::envelope_checksum(&env.encode_to_vec()).to_vec();
    let mut out = bytes[..range.start as usize].to_vec();
    out.extend_from_slice(&onnx_protect_format::write::metadata_field(METADATA_KEY_V2, &b64(&env.encode_to_vec())));
    out
}

/// A model encrypted to a key and to an X25519 recipient, and that identity.
fn protect_x25519(dir: &Path) -> (PathBuf, KeySource, KeySource) {
    let id = X25519Identity::generate();
    let to = EncryptTo {
        master: Some(KeySource::key(MasterKey::from_bytes([5; 32]))),
        master_tiers: None,
        recipients: vec![(Recipient::X25519(id.to_public()), 0)],
    };
    let out = dir.join("model.onnx");
    encrypt(&plain(), &out, &to, &EncryptOptions::new(&Policy::default())).unwrap();
    (out, KeySource::key(MasterKey::from_bytes([5; 32])), KeySource::new(Identity::X25519(vec![id])))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Every reader refuses `path` as modified, with or without a key, and writes nothing.
fn every_reader_refuses(path: &Path, keys: &[&KeySource], what: &str) {
    let e = verify(path, None, &NoProgress).expect_err(what);
    assert!(matches!(e.kind(), ErrorKind::BadManifest | ErrorKind::Modified), "{what}: keyless verify: {e}");
    for k in keys {
        let out = path.with_file_name("out.onnx");
        let e = decrypt(path, &out, k, &DecryptOptions::default()).expect_err(what);
        assert!(matches!(e.kind(), ErrorKind::BadManifest | ErrorKind::Modified), "{what}: decrypt: {e}");
        assert!(!out.exists());
    }
}

/// An age body is one X25519 stanza and age's grease stanza, at most 1024 bytes: a body
/// of many X25519 stanzas (whose opening cost grows with their square in the `age`
/// crate's unbuffered reader) or a huge one is modified, keyless too.
#[test]
fn an_age_body_of_many_stanzas_or_many_bytes_is_modified_before_any_key_work() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key, identity) = protect_x25519(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let many = with_stanzas(&bytes, |stanzas| {
        let s = stanzas.iter_mut().find(|s| s.kind == "x25519").unwrap();
        let text = s.body.clone();
        let header_end = text.windows(4).position(|w| w == b"\n---").unwrap() + 1;
        let first = text.windows(3).position(|w| w == b"-> ").unwrap();
        let stanza_end = first + text[first..].windows(2).position(|w| w == b"\n-").unwrap() + 1;
        let mut body = text[..stanza_end].to_vec();
        for _ in 0..2000 {
            body.extend_from_slice(&text[first..stanza_end]);
        }
        body.extend_from_slice(&text[header_end..]);
        s.body = body;
    });
    every_reader_refuses(&write(dir.path(), "many.onnx", &many), &[&key, &identity], "2001 X25519 stanzas");
    let huge = with_stanzas(&bytes, |stanzas| {
        let s = stanzas.iter_mut().find(|s| s.kind == "x25519").unwrap();
        s.body.resize(2 << 20, b'A');
    });
    every_reader_refuses(&write(dir.path(), "huge.onnx", &huge), &[&key, &identity], "a 2 MiB age body");
    // Written as onnx-protect writes them, with age's grease stanza, they open.
    let out = dir.path().join("restored.onnx");
    decrypt(&path, &out, &identity, &DecryptOptions::default()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(plain()).unwrap());
}

/// A stanza of `kind` for tier 1 with the right shape for its kind.
fn junk(kind: &str, i: usize) -> pb::Stanza {
    let mut s = pb::Stanza { kind: kind.into(), tier: 1, body: vec![i as u8; 48], ..Default::default() };
    match kind {
        "passphrase" => {
            s.salt = vec![1; 16];
            s.kdf = Some(pb::KdfParams {
                algorithm: "argon2id".into(),
                salt: vec![2; 16],
                m_cost_kib: 64,
                t_cost: 1,
                p_cost: 1,
            });
        }
        "pkcs11" => s.body = vec![i as u8; 60],
        "tpm" => (s.body, s.label) = (vec![i as u8; 81], "onnx-protect-tpm1victim".into()),
        _ => s.label = "victim-key".into(),
    }
    s
}

/// A file holds at most eight stanzas of each kind whose every try is costly
/// (`passphrase`: Argon2id; `pkcs11`, `command`, `age-plugin`, `tpm`: a token, a program,
/// a TPM's ECDH): more is modified, keyless too, before any of them is tried.
#[test]
fn at_most_eight_stanzas_of_each_costly_kind_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key, _) = protect_x25519(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    for kind in ["passphrase", "pkcs11", "command", "age-plugin", "tpm"] {
        let eight = with_stanzas(&bytes, |st| st.extend((0..8).map(|i| junk(kind, i))));
        let p = write(dir.path(), &format!("{kind}-8.onnx"), &eight);
        verify(&p, None, &NoProgress).unwrap_or_else(|e| panic!("eight {kind} stanzas: {e}"));
        let nine = with_stanzas(&bytes, |st| st.extend((0..9).map(|i| junk(kind, i))));
        every_reader_refuses(&write(dir.path(), &format!("{kind}-9.onnx"), &nine), &[&key], kind);
    }
}

/// A key command that fails (an error, not "not mine") is not run again for the next
/// stanza of its kind: junk stanzas under a victim's label cost one run, not one each.
#[cfg(unix)]
#[test]
fn a_failing_key_command_is_run_once_whatever_the_number_of_command_stanzas() {
    use onnx_protect_keys::{KeyCommand, DEFAULT_COMMAND_TIMEOUT};
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = protect_x25519(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let runs = dir.path().join("runs");
    let script = dir.path().join("kms.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho run >> '{}'\ncat >/dev/null\necho 'AccessDenied' >&2\nexit 1\n", runs.display()),
    )
    .unwrap();
    let cmd = KeyCommand::parse(&format!("sh '{}'", script.display()), DEFAULT_COMMAND_TIMEOUT).unwrap();
    let id = KeySource::new(Identity::Provider(std::sync::Arc::new(cmd)));
    let three = with_stanzas(&bytes, |st| st.extend((0..3).map(|i| junk("command", i))));
    let p = write(dir.path(), "three.onnx", &three);
    let e = decrypt(&p, &dir.path().join("out.onnx"), &id, &DecryptOptions::default()).unwrap_err();
    assert!(e.to_string().contains("AccessDenied"), "{e}");
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1, "the command ran more than once");
}

/// Stanzas that break their kind's rules are "modified" for every reader, keyless too
/// (docs/format.md §8): a passphrase stanza with Argon2id's `m < 8p`, a command label with
/// a line break of any kind (VT, NEL, U+2028) or over 512 bytes.
#[test]
fn stanzas_breaking_their_kinds_rules_are_modified_keyless() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key, _) = protect_x25519(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let pass = KeySource::passphrase(zeroize::Zeroizing::new(b"a passphrase".to_vec()));
    let mut cases: Vec<(String, pb::Stanza, Vec<&KeySource>)> = Vec::new();
    let mut small_m = junk("passphrase", 0);
    if let Some(k) = small_m.kdf.as_mut() {
        (k.m_cost_kib, k.p_cost) = (16, 4);
    }
    cases.push(("m < 8p".into(), small_m, vec![&key, &pass]));
    for label in ["a\u{0b}b".to_string(), "a\u{85}b".into(), "a\u{2028}b".into(), "x".repeat(513)] {
        let mut s = junk("command", 0);
        s.label = label.clone();
        cases.push((format!("command label {:?}", &label[..label.len().min(8)]), s, vec![&key]));
    }
    for (what, stanza, keys) in cases {
        let changed = with_stanzas(&bytes, |st| st.push(stanza));
        every_reader_refuses(&write(dir.path(), "changed.onnx", &changed), &keys, &what);
    }
}

/// An age body that opens for the identity but holds no 32-byte data key is "modified",
/// not a wrong key (docs/format.md §8).
#[test]
fn an_age_payload_other_than_32_bytes_is_modified() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let id = X25519Identity::generate();
    let to = EncryptTo {
        master: Some(KeySource::key(MasterKey::from_bytes([5; 32]))),
        master_tiers: None,
        recipients: vec![(Recipient::X25519(id.to_public()), 0)],
    };
    let path = dir.path().join("model.onnx");
    encrypt(&plain(), &path, &to, &EncryptOptions::new(&Policy::default())).unwrap();
    let identity = KeySource::new(Identity::X25519(vec![id.clone()]));
    let bytes = std::fs::read(&path).unwrap();
    for len in [31usize, 33] {
        let recipient = id.to_public();
        let enc = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient)).unwrap();
        let mut body = Vec::new();
        let mut w = enc.wrap_output(&mut body).unwrap();
        w.write_all(&vec![7u8; len]).unwrap();
        w.finish().unwrap();
        let changed = with_stanzas(&bytes, |st| st.iter_mut().find(|s| s.kind == "x25519").unwrap().body = body);
        let p = write(dir.path(), "changed.onnx", &changed);
        let e = decrypt(&p, &dir.path().join("out.onnx"), &identity, &DecryptOptions::default()).unwrap_err();
        assert!(matches!(e, CoreError::BadManifest(BadManifest::Stanza { .. })), "{len} bytes: {e}");
    }
}

/// Every stanza of a kind the format defines is checked for the shape of its kind without
/// a key (docs/format.md §8), and a stanza of an unknown kind is skipped whole: whatever
/// its salt, `kdf` or body, it is neither checked nor changed by a rewrap.
#[test]
fn known_kinds_have_their_shape_and_unknown_kinds_are_skipped_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key, _) = protect_x25519(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let kdf = |algorithm: &str| {
        Some(pb::KdfParams { algorithm: algorithm.into(), salt: vec![2; 16], m_cost_kib: 64, t_cost: 1, p_cost: 1 })
    };
    let base = |kind: &str| junk(kind, 0);
    let with = |kind: &str, f: &dyn Fn(&mut pb::Stanza)| {
        let mut s = base(kind);
        f(&mut s);
        s
    };
    let bad = [
        ("key salt of 15 bytes", with("key", &|s| s.salt = vec![1; 15])),
        ("key with kdf", with("key", &|s| (s.salt, s.kdf) = (vec![1; 16], kdf("argon2id")))),
        ("key body of 47 bytes", with("key", &|s| (s.salt, s.body) = (vec![1; 16], vec![0; 47]))),
        ("passphrase with a label", with("passphrase", &|s| s.label = "x".into())),
        ("passphrase body of 49 bytes", with("passphrase", &|s| s.body = vec![0; 49])),
        ("passphrase kdf salt of 8 bytes", with("passphrase", &|s| s.kdf.as_mut().unwrap().salt = vec![0; 8])),
        ("pkcs11 body of 48 bytes", with("pkcs11", &|s| s.body = vec![0; 48])),
        ("pkcs11 with a salt", with("pkcs11", &|s| s.salt = vec![0; 16])),
        ("command body empty", with("command", &|s| s.body = Vec::new())),
        ("command body of 16385 bytes", with("command", &|s| s.body = vec![0; 16385])),
        ("command with kdf", with("command", &|s| s.kdf = kdf("argon2id"))),
        ("x25519 with a salt", with("x25519", &|s| s.salt = vec![0; 16])),
        ("tpm body of 80 bytes", with("tpm", &|s| s.body = vec![0; 80])),
        ("tpm body of 82 bytes", with("tpm", &|s| s.body = vec![0; 82])),
        ("tpm with a salt", with("tpm", &|s| s.salt = vec![0; 16])),
        ("tpm with kdf", with("tpm", &|s| s.kdf = kdf("argon2id"))),
        ("age-plugin body of 16385 bytes", with("age-plugin", &|s| s.body = vec![0; 16385])),
        ("age-plugin with a salt", with("age-plugin", &|s| s.salt = vec![0; 16])),
        ("age-plugin with kdf", with("age-plugin", &|s| s.kdf = kdf("argon2id"))),
    ];
    for (what, stanza) in bad {
        let changed = with_stanzas(&bytes, |st| st.push(stanza));
        every_reader_refuses(&write(dir.path(), "changed.onnx", &changed), &[&key], what);
    }
    // An unknown kind with a KDF of its own: skipped by every reader, kept byte for byte.
    let future = pb::Stanza {
        kind: "future".into(),
        tier: 1,
        salt: vec![9; 3],
        kdf: kdf("scrypt"),
        body: vec![1, 2, 3],
        label: "\u{0b}".into(),
    };
    let changed = with_stanzas(&bytes, |st| st.push(future.clone()));
    let p = write(dir.path(), "future.onnx", &changed);
    verify(&p, None, &NoProgress).unwrap();
    // A key holder re-MACs the file with it; a rewrap then keeps it byte for byte.
    let sealed_with_mac = remac(&changed, 5);
    let p = write(dir.path(), "future-mac.onnx", &sealed_with_mac);
    verify(&p, Some(&key), &NoProgress).unwrap();
    use onnx_protect_core::rewrap::{rewrap, Remove, RewrapOptions};
    let remove = [Remove::Kind("x25519".into())];
    let opts = RewrapOptions {
        add: &EncryptTo::default(),
        remove: &remove,
        signing_keys: &[],
        drop_signatures: false,
        in_place: false,
        outputs: Default::default(),
        progress: &NoProgress,
    };
    let out = dir.path().join("rewrapped").join("model.onnx");
    rewrap(&p, &out, &key, &opts).unwrap();
    let after = std::fs::read(&out).unwrap();
    let (range, value) = trailing_entry(&after).unwrap();
    let env = parse_entry(value, range).unwrap().envelope;
    let kept = pb::Recipients::decode(env.recipients.as_slice()).unwrap();
    assert!(kept.stanzas.contains(&future), "{:?}", kept.stanzas);
    assert!(kept.stanzas.iter().all(|s| s.kind != "x25519"));
}

/// `bytes` with its (single-tier) MAC recomputed with the data key the key stanza of
/// key `[b; 32]` wraps: what a key holder can do.
fn remac(bytes: &[u8], b: u8) -> Vec<u8> {
    let (range, value) = trailing_entry(bytes).unwrap();
    let sealed = parse_entry(value, range.clone()).unwrap();
    let id = Identity::Key(MasterKey::from_bytes([b; 32]));
    let dk = sealed.stanzas.iter().enumerate().find_map(|(i, s)| id.unwrap(i, s).ok().flatten()).unwrap();
    let mut env = sealed.envelope.clone();
    let digest: [u8; 32] = env.content_digest.as_slice().try_into().unwrap();
    env.macs[0] = onnx_protect_crypto::tier_mac(&dk.tier_keys(), 1, &env.header, &env.recipients, &digest).to_vec();
    env.checksum.clear();
    env.checksum = onnx_protect_crypto::envelope_checksum(&env.encode_to_vec()).to_vec();
    let mut out = bytes[..range.start as usize].to_vec();
    out.extend_from_slice(&onnx_protect_format::write::metadata_field(METADATA_KEY_V2, &b64(&env.encode_to_vec())));
    out
}

/// Whatever its kind, a stanza's kind, label and body have caps, and so has the whole
/// recipient list (docs/format.md §8): a stanza of an unknown kind is skipped, but not
/// read at any size; past a cap the file is modified, keyless too, before any key work.
#[test]
fn every_stanza_and_the_recipient_list_are_within_their_caps() {
    use onnx_protect_core::format2::envelope::MAX_RECIPIENTS_LEN;
    use onnx_protect_keys::{MAX_KIND_LEN, MAX_STANZA_BODY_LEN, MAX_STANZA_LABEL_LEN};
    let dir = tempfile::tempdir().unwrap();
    let (path, key, _) = protect_x25519(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let future = |kind: String, label: String, body: usize| pb::Stanza {
        kind,
        tier: 1,
        label,
        body: vec![7; body],
        ..Default::default()
    };
    let at_caps = future("f".repeat(MAX_KIND_LEN), "l".repeat(MAX_STANZA_LABEL_LEN), MAX_STANZA_BODY_LEN);
    let p = write(dir.path(), "at-caps.onnx", &with_stanzas(&bytes, |st| st.push(at_caps)));
    verify(&p, None, &NoProgress).unwrap();
    let over = [
        ("a kind over the cap", future("f".repeat(MAX_KIND_LEN + 1), String::new(), 1)),
        ("a label over the cap", future("future".into(), "l".repeat(MAX_STANZA_LABEL_LEN + 1), 1)),
        ("a body over the cap", future("future".into(), String::new(), MAX_STANZA_BODY_LEN + 1)),
        ("a 48 MiB body", future("future".into(), String::new(), 48 << 20)),
    ];
    for (what, stanza) in over {
        let changed = with_stanzas(&bytes, |st| st.push(stanza));
        every_reader_refuses(&write(dir.path(), "over.onnx", &changed), &[&key], what);
    }
    // Each stanza within the caps, the list over its own.
    let n = MAX_RECIPIENTS_LEN / MAX_STANZA_BODY_LEN + 1;
    let many = with_stanzas(&bytes, |st| {
        st.extend((0..n).map(|_| future("future".into(), String::new(), MAX_STANZA_BODY_LEN)))
    });
    every_reader_refuses(&write(dir.path(), "many.onnx", &many), &[&key], "a recipient list over 1 MiB");
}
