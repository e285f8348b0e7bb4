//! Format 2 holds its promises against an attacker who edits the file: every byte is
//! authenticated (for every verb: decrypt, verify with and without a key, in-memory
//! loading), the edits an attacker would try are refused, and a tier key cannot forge
//! what a higher tier accepts.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};

use onnx_protect_core::error::{BadManifest, CoreError, ErrorKind, Modified, UnusableKey};
use onnx_protect_core::format2::envelope::{parse_entry, trailing_entry, Sealed, METADATA_KEY_V2};
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::memory::InMemory;
use onnx_protect_core::protect::{
    decrypt, decrypt_tier, decrypt_to_vec, encrypt, verify, DecryptOptions, EncryptOptions,
};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{Model, NoProgress, TensorData};
use onnx_protect_proto::v2 as pb;
use onnx_protect_proto::Message;
use onnx_protect_select::Policy;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models").join(name)
}

fn key(b: u8) -> KeySource {
    KeySource::key(MasterKey::from_bytes([b; 32]))
}

fn policy(overrides: &[(&str, &str)]) -> Policy {
    let mut p = Policy::default();
    for (k, v) in overrides {
        p.apply_override(k, v).unwrap();
    }
    p
}

/// Encrypts fixture `name` (with its side files) into `dir` and returns the protected path.
fn protect(dir: &Path, name: &str, p: &Policy, k: &KeySource) -> PathBuf {
    let out = dir.join("enc").join("model.onnx");
    encrypt(&fixture(name).join("model.onnx"), &out, &EncryptTo::key(k.clone()), &EncryptOptions::new(p)).unwrap();
    out
}

/// The bytes of the protected file at `path` and its sound version-2 entry.
fn entry_of(path: &Path) -> (Vec<u8>, Sealed) {
    let bytes = std::fs::read(path).unwrap();
    let (range, value) = trailing_entry(&bytes).unwrap();
    let sealed = parse_entry(value, range).unwrap();
    (bytes, sealed)
}

/// `content` followed by a version-2 entry holding `env`, its checksum computed again.
fn with_entry(mut content: Vec<u8>, env: &mut pb::Envelope) -> Vec<u8> {
    env.checksum.clear();
    env.checksum = onnx_protect_crypto::envelope_checksum(&env.encode_to_vec()).to_vec();
    let b64 = base64_encode(&env.encode_to_vec());
    content.extend_from_slice(&onnx_protect_format::write::metadata_field(METADATA_KEY_V2, &b64));
    content
}

/// What each reader makes of `path`: verify without and with `k`, decrypt to `out`, and
/// loading in memory.
fn every_verb(path: &Path, out: &Path, k: &KeySource) -> [(&'static str, Result<(), CoreError>); 4] {
    [
        ("verify", verify(path, None, &NoProgress).map(|_| ())),
        ("verify --key", verify(path, Some(k), &NoProgress).map(|_| ())),
        ("decrypt", decrypt(path, out, k, &DecryptOptions::default()).map(|_| ())),
        ("InMemory::load", InMemory::file(path, k).load().map(|_| ())),
    ]
}

/// Refusals that a changed byte may give: the file's content or manifest no longer match,
/// or it is not even a manifest any more.
fn refused(e: &CoreError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Modified | ErrorKind::BadManifest | ErrorKind::NotProtected | ErrorKind::UnsupportedVersion
    ) || matches!(e.kind(), ErrorKind::Model(_))
}

#[test]
fn every_changed_byte_of_a_small_protected_model_is_refused_by_every_verb() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(7);
    let protected = protect(dir.path(), "cnn_torch", &Policy::default(), &k);
    let bytes = std::fs::read(&protected).unwrap();
    let probe = dir.path().join("probe.onnx");
    let out = dir.path().join("out").join("model.onnx");
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x20;
        std::fs::write(&probe, &b).unwrap();
        let mem = Model::from_vec(b.clone(), None).map_err(CoreError::from).and_then(|m| decrypt_to_vec(&m, &k));
        let mem = match mem {
            Ok(_) => panic!("byte {i}: in-memory decryption accepted a changed file"),
            Err(e) => e,
        };
        assert!(refused(&mem), "byte {i}: in memory: {mem}");
        for (what, r) in every_verb(&probe, &out, &k) {
            let e = r.err().unwrap_or_else(|| panic!("byte {i}: {what} accepted a changed file"));
            // A changed byte is never reported as a wrong key: the key still opens its stanza,
            // or the manifest no longer parses.
            assert!(
                refused(&e) || e.kind() == ErrorKind::WrongKey && is_stanza_byte(&bytes, i),
                "byte {i}: {what}: {e}"
            );
            assert!(!out.exists(), "byte {i}: {what} left an output");
        }
    }
}

/// Whether byte `i` of a protected file lies in its manifest entry (a changed stanza can
/// no longer be opened by the right key: "wrong key" is then a fair answer too).
fn is_stanza_byte(bytes: &[u8], i: usize) -> bool {
    trailing_entry(bytes).is_some_and(|(r, _)| i as u64 >= r.start)
}

#[test]
fn external_data_files_are_covered_byte_by_byte() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(3);
    let protected = protect(dir.path(), "external_data", &Policy::default(), &k);
    let enc = protected.parent().unwrap().to_path_buf();
    let out = dir.path().join("out").join("model.onnx");
    decrypt(&protected, &out, &k, &DecryptOptions::default()).unwrap();
    std::fs::remove_dir_all(out.parent().unwrap()).unwrap();
    for side in ["weights.bin", "extra.bin"] {
        let path = enc.join(side);
        let original = std::fs::read(&path).unwrap();
        let step = if original.len() > 16 << 10 { 4096 } else { 1 };
        for i in (0..original.len()).step_by(step) {
            let mut b = original.clone();
            b[i] ^= 1;
            std::fs::write(&path, &b).unwrap();
            let e = decrypt(&protected, &out, &k, &DecryptOptions::default()).err();
            assert!(e.as_ref().is_some_and(refused), "{side} byte {i}: {e:?}");
            assert!(!out.exists(), "{side} byte {i}: an output appeared");
            assert!(verify(&protected, None, &NoProgress).is_err(), "{side} byte {i}: keyless verify");
            assert!(InMemory::file(&protected, &k).load().is_err(), "{side} byte {i}: in memory");
        }
        std::fs::write(&path, &original).unwrap();
        let mut longer = original.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(verify(&protected, None, &NoProgress).is_err(), "{side}: a byte appended");
        std::fs::write(&path, &original).unwrap();
    }
}

/// Each external data file's length is recorded in the header and compared before the
/// file is read: a file grown to 1 TiB (sparse) is refused at once by every reader, with
/// or without a key, and its length is named.
#[test]
fn an_external_file_of_another_length_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(3);
    let protected = protect(dir.path(), "external_data", &Policy::default(), &k);
    let side = protected.with_file_name("weights.bin");
    let len = std::fs::metadata(&side).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&side).unwrap().set_len(1 << 40).unwrap();
    let out = dir.path().join("out").join("model.onnx");
    for (what, r) in every_verb(&protected, &out, &k) {
        let e = r.expect_err(what);
        let named = matches!(&e, CoreError::Modified(Modified::ExternalSize { location, actual, expected })
            if location == "weights.bin" && *actual == 1u64 << 40 && *expected == len);
        assert!(named, "{what}: {e}");
    }
    assert!(!out.exists());
}

/// The byte offset in the file of element `index` (f32) of tensor `name`.
fn element_offset(model: &Model, name: &str, index: usize) -> usize {
    let t = model.tensors.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no tensor {name}"));
    match &t.data {
        TensorData::Raw { range } => range.start as usize + 4 * index,
        other => panic!("{name} is stored as {other:?}"),
    }
}

fn assert_every_verb_refuses(path: &Path, k: &KeySource, what: &str) {
    let out = path.with_file_name("restored.onnx");
    let e = decrypt(path, &out, k, &DecryptOptions::default()).expect_err(what);
    assert_eq!(e.kind(), ErrorKind::Modified, "{what}: {e}");
    assert!(!out.exists());
    assert_eq!(verify(path, Some(k), &NoProgress).expect_err(what).kind(), ErrorKind::Modified, "{what}");
    assert_eq!(verify(path, None, &NoProgress).expect_err(what).kind(), ErrorKind::Modified, "{what}");
    assert_eq!(InMemory::file(path, k).load().expect_err(what).kind(), ErrorKind::Modified, "{what}");
}

#[test]
fn the_four_edits_of_an_attacker_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(5);
    let protected = protect(dir.path(), "cnn_torch", &policy(&[("coefficient", "*=0.5")]), &k);
    let model = Model::open(&protected).unwrap();
    let p = onnx_protect_core::protect::protection_info(&model).unwrap().unwrap();
    let enc = p.tensors.iter().find(|t| t.nbytes > t.encrypted_bytes && t.data_type == "FLOAT").unwrap();
    // A clear element of an encrypted weight: the first byte outside its spans.
    let clear = (0..enc.nbytes).step_by(4).find(|o| !enc.spans.iter().any(|(a, b)| a <= o && o < b)).unwrap();
    let base = element_offset(&model, &enc.name, 0);
    let bn_var = model
        .tensors
        .iter()
        .find(|t| t.name.contains("running_var") || t.name.ends_with("var"))
        .map(|t| t.name.clone());
    let bytes = std::fs::read(&protected).unwrap();
    drop(model);
    let edit = |name: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        f(&mut b);
        let path = dir.path().join(format!("{name}.onnx"));
        std::fs::write(&path, &b).unwrap();
        assert_every_verb_refuses(&path, &k, name);
    };
    edit("clear weight set to 3.0", &|b| {
        let at = base + clear as usize;
        b[at..at + 4].copy_from_slice(&3.0f32.to_le_bytes());
    });
    if let Some(var) = &bn_var {
        let m = Model::from_vec(bytes.clone(), None).unwrap();
        let at = element_offset(&m, var, 0);
        edit("BatchNormalization variance set to 1e-6", &|b| b[at..at + 4].copy_from_slice(&1e-6f32.to_le_bytes()));
    }
    let relu = bytes.windows(4).position(|w| w == b"Relu").expect("the model has a Relu");
    edit("Relu changed to Tanh", &|b| b[relu..relu + 4].copy_from_slice(b"Tanh"));
    edit("a metadata entry appended", &|b| b.extend_from_slice(&onnx_protect_format::write::metadata_field("a", "b")));
    assert!(bn_var.is_some(), "cnn_torch has a BatchNormalization variance");
}

#[test]
fn a_tier_key_cannot_forge_what_a_higher_tier_accepts() {
    use onnx_protect_crypto::{content_digest, leaves_of, tier_mac};
    use onnx_protect_keys::Identity;

    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::from_bytes([9; 32]);
    let mut p = policy(&[("mode", "*=fp"), ("coefficient", "*=0.6")]);
    p.set_tiers(3).unwrap();
    let protected = protect(dir.path(), "cnn_torch", &p, &KeySource::key(master.clone()));
    let k2 = master.tier_down();
    let k1 = k2.tier_down();
    let (bytes, sealed) = entry_of(&protected);
    // The tier-1 holder opens their stanza: they know DK_1 and so K_mac,1.
    let dk1 = sealed
        .stanzas
        .iter()
        .enumerate()
        .find_map(|(i, s)| Identity::Key(k1.clone()).unwrap(i, s).unwrap())
        .expect("the tier-1 key opens a stanza");
    // They negate every tier-1 weight (fp keeps the sign bit's XOR: flipping it in the
    // ciphertext negates the plaintext) and re-seal tier 1.
    let model = Model::open(&protected).unwrap();
    let mut forged = bytes[..sealed.entry.start as usize].to_vec();
    let mut flipped = 0;
    for e in &sealed.header.tensors {
        if e.tier != 1 || e.data_type != 1 {
            continue;
        }
        let t = model.tensors.iter().find(|t| t.locator.to_string() == e.locator).unwrap();
        let TensorData::Raw { range: r } = &t.data else { continue };
        for span in e.spans.chunks(2) {
            for o in (span[0]..span[1]).step_by(4) {
                forged[(r.start + o + 3) as usize] ^= 0x80;
                flipped += 1;
            }
        }
    }
    assert!(flipped > 0);
    let digest = content_digest(&[leaves_of(0, &forged, sealed.header.chunk_size)]);
    let mut env = sealed.envelope.clone();
    env.content_digest = digest.to_vec();
    env.macs[0] = tier_mac(&dk1.tier_keys(), 1, &env.header, &env.recipients, &digest).to_vec();
    let forged = with_entry(forged, &mut env);
    let path = dir.path().join("forged.onnx");
    std::fs::write(&path, &forged).unwrap();
    let _: pb::Envelope = env;
    // The tier-1 key accepts its own forgery (a symmetric MAC, docs/threat-model.md)...
    verify(&path, Some(&KeySource::key(k1.clone())), &NoProgress).expect("tier 1 accepts what it sealed");
    // ...but the keys of tiers 2 and 3 refuse it, and decrypt nothing.
    for (name, k) in [("tier 2", k2), ("top", master)] {
        let k = KeySource::key(k);
        assert_eq!(verify(&path, Some(&k), &NoProgress).unwrap_err().kind(), ErrorKind::Modified, "{name}");
        let out = dir.path().join("out.onnx");
        let e = decrypt_tier(&path, &out, &k, None, &DecryptOptions::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Modified, "{name}: {e}");
        assert!(!out.exists());
    }
}

/// A protected model changed so that it no longer parses is "modified" for every reader,
/// the CI gate included: one whose first byte changed, and one whose manifest text is no
/// longer valid UTF-8 (the entry is still recognisable at the end of the file, and a
/// manifest entry not encoded as docs/format.md §1 says is "modified").
#[test]
fn a_protected_model_that_no_longer_parses_is_modified_for_every_reader() {
    use onnx_protect_core::check::{check_model, reasons, CheckOptions};
    let dir = tempfile::tempdir().unwrap();
    let k = key(2);
    let protected = protect(dir.path(), "cnn_torch", &Policy::default(), &k);
    let bytes = std::fs::read(&protected).unwrap();
    let value_start = bytes.len() - trailing_entry(&bytes).unwrap().1.len();
    for (what, at, bit) in [("the first byte", 0, 1u8), ("a byte of the manifest's text", value_start + 1, 0x80)] {
        let mut b = bytes.clone();
        b[at] ^= bit;
        let path = dir.path().join(format!("changed-{at}.onnx"));
        std::fs::write(&path, &b).unwrap();
        assert!(Model::open(&path).is_err(), "{what}: the changed model still parses");
        assert_every_verb_refuses(&path, &k, what);
        let opts = CheckOptions {
            policy: None,
            require_encrypted: true,
            strict_spans: false,
            allow_format_1: false,
            allow_unprotected: false,
            key: None,
            signers: &[],
            progress: &NoProgress,
        };
        let c = check_model(&path, &opts);
        assert!(!c.passed && c.protected, "{what}: {c:?}");
        assert_eq!(c.failures[0].reason, reasons::MODIFIED, "{what}: {:?}", c.failures);
    }
}

fn field(number: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut put = |mut v: u64| loop {
        if v < 0x80 {
            out.push(v as u8);
            break;
        }
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    };
    put(u64::from(number << 3 | 2));
    put(value.len() as u64);
    out.extend_from_slice(value);
    out
}

/// A model whose graphs nest `depth` levels (an `If` node's `then_branch` in each).
fn deep_model(depth: usize) -> Vec<u8> {
    let mut graph = Vec::new();
    for _ in 0..depth {
        let attr = [field(1, b"then_branch"), vec![0xa0, 0x01, 5], field(6, &graph)].concat();
        let node = [field(4, b"If"), field(5, &attr)].concat();
        graph = field(1, &node);
    }
    [vec![0x08, 8], field(7, &graph)].concat()
}

/// Under a sound version-2 entry, a model the parser refuses (graphs nested 100 deep, the
/// content digest computed for it) is "modified", not an invalid model (docs/format.md §4).
#[test]
fn a_model_too_deep_under_a_sound_entry_is_modified() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(4);
    let (_, sealed) = entry_of(&protect(dir.path(), "cnn_torch", &Policy::default(), &k));
    let content = deep_model(100);
    let mut env = sealed.envelope.clone();
    let leaves = onnx_protect_crypto::leaves_of(0, &content, sealed.header.chunk_size);
    env.content_digest = onnx_protect_crypto::content_digest(&[leaves]).to_vec();
    let changed = with_entry(content, &mut env);
    let path = dir.path().join("deep.onnx");
    std::fs::write(&path, &changed).unwrap();
    assert!(Model::open(&path).is_err());
    let out = dir.path().join("out.onnx");
    for (what, r) in every_verb(&path, &out, &k) {
        let e = r.expect_err(what);
        assert_eq!(e.kind(), ErrorKind::Modified, "{what}: {e}");
    }
}

/// A locator is written exactly as docs/format.md §4 gives it: one with a leading zero
/// (`7.0/05.0`), a sign or an empty number names no tensor, even where its value would.
#[test]
fn a_locator_not_written_exactly_is_modified() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(4);
    let (bytes, sealed) = entry_of(&protect(dir.path(), "cnn_torch", &Policy::default(), &k));
    let original = sealed.header.tensors[0].locator.clone();
    let (head, last) = original.rsplit_once('.').unwrap();
    for changed_locator in [format!("{head}.0{last}"), format!("{head}.+{last}"), format!("0{original}")] {
        let mut header: pb::Header = sealed.header.clone();
        header.tensors[0].locator = changed_locator.clone();
        let mut env = sealed.envelope.clone();
        env.header = header.encode_to_vec();
        let changed = with_entry(bytes[..sealed.entry.start as usize].to_vec(), &mut env);
        let path = dir.path().join("changed.onnx");
        std::fs::write(&path, &changed).unwrap();
        let e = verify(&path, None, &NoProgress).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Modified | ErrorKind::BadManifest), "{changed_locator}: {e}");
    }
}

/// Two signatures with one public key are "modified" without a key and without asking for
/// signers (docs/format.md §10), even when one of them verifies.
#[test]
fn two_signatures_of_one_key_are_modified_keyless() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(4);
    let signer = onnx_protect_keys::SigningKey::generate().unwrap();
    let out = dir.path().join("enc").join("model.onnx");
    let p = Policy::default();
    let mut opts = EncryptOptions::new(&p);
    let signers = [signer];
    opts.signing_keys = &signers;
    encrypt(&fixture("cnn_torch").join("model.onnx"), &out, &EncryptTo::key(k.clone()), &opts).unwrap();
    let (bytes, sealed) = entry_of(&out);
    let mut env = sealed.envelope;
    let mut twin = env.signatures[0].clone();
    twin.signature[0] ^= 1;
    env.signatures.push(twin);
    let changed = with_entry(bytes[..sealed.entry.start as usize].to_vec(), &mut env);
    std::fs::write(&out, &changed).unwrap();
    let e = verify(&out, None, &NoProgress).unwrap_err();
    assert!(matches!(e, CoreError::BadManifest(BadManifest::Signature)), "{e}");
}

/// Inside an `onnx-protect/v2` entry, a header whose `format_version` is not 2 breaks a
/// header rule (docs/format.md §3): "modified", also when the checksum was recomputed,
/// never "unsupported version" (which names a manifest key this build does not read).
#[test]
fn a_version_2_header_of_another_format_version_is_modified() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(4);
    let (bytes, sealed) = entry_of(&protect(dir.path(), "cnn_torch", &Policy::default(), &k));
    let mut header = sealed.header.clone();
    header.format_version = 3;
    let mut env: pb::Envelope = sealed.envelope.clone();
    env.header = header.encode_to_vec();
    let changed = with_entry(bytes[..sealed.entry.start as usize].to_vec(), &mut env);
    let path = dir.path().join("v3.onnx");
    std::fs::write(&path, &changed).unwrap();
    let out = dir.path().join("out.onnx");
    for (what, r) in every_verb(&path, &out, &k) {
        let e = r.expect_err(what);
        assert!(matches!(e.kind(), ErrorKind::Modified | ErrorKind::BadManifest), "{what}: {e}");
    }
    assert!(!out.exists());
}

/// A decryption below the top tier stays a protected model (docs/format.md §11): in
/// memory it is the same file `decrypt --tier` writes, its rewritten entry included, so
/// the top key can finish it; a key whose tiers are all restored already gets the file
/// as it is.
#[test]
fn a_partial_decryption_in_memory_is_the_file_decrypt_tier_writes() {
    use onnx_protect_core::memory::InMemory;
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::from_bytes([6; 32]);
    let mut p = policy(&[("mode", "*=fp"), ("coefficient", "*=0.6")]);
    p.set_tiers(3).unwrap();
    let protected = protect(dir.path(), "external_data", &p, &KeySource::key(master.clone()));
    let k1 = KeySource::key(master.tier_down().tier_down());
    let out = dir.path().join("t1").join("model.onnx");
    decrypt_tier(&protected, &out, &k1, None, &DecryptOptions::default()).unwrap();
    let mem = InMemory::model(&Model::open(&protected).unwrap(), &k1).load().unwrap();
    assert!(mem[..] == std::fs::read(&out).unwrap()[..], "the model file");
    assert_eq!(mem.external().len(), 2);
    for (loc, b) in mem.external() {
        assert!(b[..] == std::fs::read(out.with_file_name(loc)).unwrap()[..], "{loc}");
    }
    let mem = InMemory::file(&protected, &k1).load().unwrap();
    assert!(mem[..] == std::fs::read(&out).unwrap()[..], "the model file, from the path");
    // The partial file is still protected, and the top key restores the original from it.
    verify(&out, None, &NoProgress).unwrap();
    let top = KeySource::key(master);
    let full = InMemory::file(&out, &top).load().unwrap();
    assert!(full[..] == std::fs::read(fixture("external_data").join("model.onnx")).unwrap()[..]);
    // Nothing left for the tier-1 key: the file as it is.
    let same = InMemory::file(&out, &k1).load().unwrap();
    assert_eq!(same.decrypted_bytes(), 0);
    assert!(same[..] == std::fs::read(&out).unwrap()[..]);
}

fn base64_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[test]
fn secret_positions_are_sealed_and_decrypt_like_public_ones() {
    use onnx_protect_core::protect::protection_view;
    let dir = tempfile::tempdir().unwrap();
    let plain = fixture("cnn_torch").join("model.onnx");
    let k = key(8);
    let p = policy(&[("mode", "*=fp"), ("coefficient", "*=0.5"), ("subsequences", "*=first-dim")]);
    let out = dir.path().join("secret.onnx");
    let opts = EncryptOptions { secret_positions: true, ..EncryptOptions::new(&p) };
    encrypt(&plain, &out, &EncryptTo::key(k.clone()), &opts).unwrap();
    let model = Model::open(&out).unwrap();
    let view = protection_view(&model).unwrap();
    assert!(view.secret_positions);
    assert!(view.targets.iter().all(|t| t.spans.is_empty()), "no span is public");
    assert_eq!(decrypt_to_vec(&model, &k).unwrap(), std::fs::read(&plain).unwrap());
    verify(&out, None, &NoProgress).unwrap();
    verify(&out, Some(&k), &NoProgress).unwrap();
    // Two encryptions choose different rows (the choice is keyed by each file's data key).
    let out2 = dir.path().join("secret2.onnx");
    encrypt(&plain, &out2, &EncryptTo::key(k.clone()), &opts).unwrap();
    let a = std::fs::read(&out).unwrap();
    let b = std::fs::read(&out2).unwrap();
    let (ra, _) = trailing_entry(&a).unwrap();
    let (rb, _) = trailing_entry(&b).unwrap();
    let changed = |x: &[u8]| -> Vec<usize> {
        let orig = std::fs::read(&plain).unwrap();
        (0..orig.len()).filter(|&i| x[i] != orig[i]).collect()
    };
    assert_ne!(changed(&a[..ra.start as usize]), changed(&b[..rb.start as usize]), "the same rows were chosen twice");
    // ctr is refused: its values would give the rows away.
    let ctr = policy(&[("mode", "*=ctr")]);
    let e = encrypt(
        &plain,
        &dir.path().join("x.onnx"),
        &EncryptTo::key(k.clone()),
        &EncryptOptions { secret_positions: true, ..EncryptOptions::new(&ctr) },
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Policy);
}

#[test]
fn a_plaintext_rewrite_is_what_decryption_restores() {
    let dir = tempfile::tempdir().unwrap();
    let plain = fixture("cnn_torch").join("model.onnx");
    let k = key(6);
    // Negate every float of every weight tensor: encrypted rows and clear rows alike.
    let negate = |t: &onnx_protect_format::Tensor, b: &[u8]| -> Option<Vec<u8>> {
        (t.data_type == onnx_protect_format::DataType::Float).then(|| {
            b.chunks_exact(4).flat_map(|c| (-f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()).collect()
        })
    };
    let p = policy(&[("coefficient", "*=0.5")]);
    let out = dir.path().join("rewritten.onnx");
    let opts = EncryptOptions { rewrite: Some(&negate), ..EncryptOptions::new(&p) };
    encrypt(&plain, &out, &EncryptTo::key(k.clone()), &opts).unwrap();
    let restored = Model::from_vec(decrypt_to_vec(&Model::open(&out).unwrap(), &k).unwrap(), None).unwrap();
    let original = Model::open(&plain).unwrap();
    let weights = onnx_protect_format::discover(&original);
    assert!(!weights.is_empty());
    for w in weights {
        let t = &original.tensors[w.tensor];
        let before = original.tensor_bytes(t.id).unwrap();
        let after = restored.tensor_bytes(t.id).unwrap();
        assert_eq!(after.as_ref(), negate(t, &before).unwrap().as_slice(), "{}", t.name);
    }
    verify(&out, Some(&k), &NoProgress).unwrap();
}

#[test]
fn secret_positions_are_keyed_for_weights_chosen_by_role_layer_or_name() {
    use onnx_protect_core::protect::{decrypt, DecryptOptions};
    let dir = tempfile::tempdir().unwrap();
    let plain = fixture("cnn_torch").join("model.onnx");
    let k = key(9);
    // No operator rule: every weight is chosen by its role, its layer or its name.
    let text = "version = 1\ninherit_builtin = false\n\n[roles.weight]\ncoefficient = 0.25\nmode = \"fp\"\n\
                selection = \"l1\"\n\n[layers.last]\ncoefficient = 0.25\nmode = \"fp\"\n";
    let p = Policy::from_toml(text).unwrap();
    let public = dir.path().join("public.onnx");
    encrypt(&plain, &public, &EncryptTo::key(k.clone()), &EncryptOptions::new(&p)).unwrap();
    let opts = EncryptOptions { secret_positions: true, ..EncryptOptions::new(&p) };
    let orig = Model::open(&plain).unwrap();
    // The elements the stored file changes, by tensor (fp changes every chosen element).
    let changed = |path: &std::path::Path| -> Vec<(String, Vec<usize>)> {
        let m = Model::open(path).unwrap();
        let mut out = Vec::new();
        for t in &orig.tensors {
            let (a, b) = (orig.tensor_bytes(t.id).unwrap(), m.tensor_bytes(t.id).unwrap());
            let idx: Vec<usize> =
                a.chunks(4).zip(b.chunks(4)).enumerate().filter(|(_, (x, y))| x != y).map(|(i, _)| i).collect();
            if !idx.is_empty() {
                out.push((t.name.clone(), idx));
            }
        }
        out
    };
    let public_changed = changed(&public);
    assert!(!public_changed.is_empty());
    // Tensors encrypted whole (a bias is one subsequence) have nothing to choose.
    let partial: std::collections::BTreeSet<String> = public_changed
        .iter()
        .filter(|(n, idx)| orig.tensors.iter().any(|t| &t.name == n && (idx.len() as u64) < t.numel))
        .map(|(n, _)| n.clone())
        .collect();
    assert!(partial.len() >= 3, "{partial:?}");
    // Over encryptions with fresh data keys, every such tensor gets rows other than the
    // public choice's (a tensor choosing 1 of 2 candidates keeps them with probability 1/2
    // each time, so up to 32 encryptions are made, stopping once every tensor differed).
    let mut differs: std::collections::BTreeSet<String> = Default::default();
    for i in 0..32 {
        if differs == partial {
            break;
        }
        let out = dir.path().join(format!("secret{i}.onnx"));
        encrypt(&plain, &out, &EncryptTo::key(k.clone()), &opts).unwrap();
        let back = dir.path().join(format!("back{i}.onnx"));
        decrypt(&out, &back, &k, &DecryptOptions::default()).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&plain).unwrap());
        let got = changed(&out);
        assert_eq!(
            got.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            public_changed.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "the same tensors"
        );
        for ((name, a), (_, b)) in got.iter().zip(&public_changed) {
            if a != b {
                differs.insert(name.clone());
            }
        }
    }
    assert_eq!(differs, partial, "some tensors kept the public positions");
}

/// A master key's recorded number of tiers (`master tiers=N`) binds wherever it wraps the
/// data keys of a tiered model (docs/format.md Appendix A): encrypting with it, re-keying
/// to it or adding it as a recipient with another number of tiers is refused, and nothing
/// is written; an untiered model takes any master key.
#[test]
fn a_master_key_recording_another_number_of_tiers_wraps_no_tiered_model() {
    use onnx_protect_core::rekey::{rekey, RekeyOptions};
    use onnx_protect_core::rewrap::{rewrap, RewrapOptions};
    let dir = tempfile::tempdir().unwrap();
    let plain = fixture("cnn_torch").join("model.onnx");
    let mut tiered = policy(&[("mode", "*=fp")]);
    tiered.set_tiers(3).unwrap();
    let to =
        |b: u8, tiers: Option<u32>| EncryptTo { master: Some(key(b)), master_tiers: tiers, recipients: Vec::new() };
    let out = |name: &str| dir.path().join(name).join("model.onnx");
    for recorded in [1, 2, 4] {
        let target = out(&format!("recorded-{recorded}"));
        let e = encrypt(&plain, &target, &to(8, Some(recorded)), &EncryptOptions::new(&tiered)).unwrap_err();
        let refused =
            matches!(e, CoreError::Key(UnusableKey::RecordedTiers { recorded: r, tiers: 3 }) if r == recorded);
        assert!(refused, "{recorded}: {e}");
        assert!(!target.exists(), "{recorded}");
    }
    encrypt(&plain, &out("three"), &to(8, Some(3)), &EncryptOptions::new(&tiered)).unwrap();
    encrypt(&plain, &out("untiered"), &to(8, Some(2)), &EncryptOptions::new(&policy(&[]))).unwrap();
    let opts = RekeyOptions::new(&NoProgress);
    let e = rekey(&out("three"), &out("rekeyed"), &key(8), &to(9, Some(2)), &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Key, "{e}");
    assert!(!out("rekeyed").exists());
    let add = to(9, Some(1));
    let ropts = RewrapOptions {
        add: &add,
        remove: &[],
        signing_keys: &[],
        drop_signatures: false,
        in_place: false,
        outputs: Default::default(),
        progress: &NoProgress,
    };
    let e = rewrap(&out("three"), &out("rewrapped"), &key(8), &ropts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Key, "{e}");
    assert!(!out("rewrapped").exists());
    let add = to(9, Some(3));
    rewrap(&out("three"), &out("rewrapped"), &key(8), &RewrapOptions { add: &add, ..ropts }).unwrap();
}
