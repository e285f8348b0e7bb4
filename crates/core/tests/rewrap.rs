//! Re-wrapping changes who can open a model, never its weights.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};

use onnx_protect_core::error::ErrorKind;
use onnx_protect_core::error::{CoreError, Unsigned, UnusableKey};
use onnx_protect_core::format2::envelope::trailing_entry;
use onnx_protect_core::format2::recipients::EncryptTo;
use onnx_protect_core::keys::KeySource;
use onnx_protect_core::protect::{decrypt_to_vec, encrypt, sign, verify_signed, EncryptOptions};
use onnx_protect_core::rewrap::{rewrap, Remove, RewrapOptions};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::{Model, NoProgress};
use onnx_protect_keys::{
    Identity, KeyCommand, Provider, Recipient, SigningKey, X25519Identity, DEFAULT_COMMAND_TIMEOUT,
};
use onnx_protect_select::Policy;

fn plain() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/cnn_torch/model.onnx")
}

fn key(b: u8) -> KeySource {
    KeySource::key(MasterKey::from_bytes([b; 32]))
}

fn protect(dir: &Path, to: &EncryptTo, policy: &Policy) -> PathBuf {
    let out = dir.join("model.onnx");
    encrypt(&plain(), &out, to, &EncryptOptions::new(policy)).unwrap();
    out
}

fn opts<'a>(add: &'a EncryptTo, remove: &'a [Remove]) -> RewrapOptions<'a> {
    RewrapOptions {
        add,
        remove,
        signing_keys: &[],
        drop_signatures: false,
        in_place: true,
        outputs: Default::default(),
        progress: &NoProgress,
    }
}

fn content(path: &Path) -> Vec<u8> {
    let b = std::fs::read(path).unwrap();
    let (r, _) = trailing_entry(&b).unwrap();
    b[..r.start as usize].to_vec()
}

fn opens(path: &Path, k: &KeySource) -> Result<Vec<u8>, ErrorKind> {
    decrypt_to_vec(&Model::open(path).unwrap(), k).map_err(|e| e.kind())
}

#[test]
fn in_place_rewrap_swaps_a_recipient_and_writes_only_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = protect(dir.path(), &EncryptTo::key(key(1)), &Policy::default());
    let before = content(&path);
    let add = EncryptTo::key(key(2));
    let remove = [Remove::Key(MasterKey::from_bytes([1; 32]))];
    let r = rewrap(&path, &path, &key(1), &opts(&add, &remove)).unwrap();
    assert_eq!((r.removed, r.added), (1, 1));
    assert_eq!(r.bytes_written, std::fs::read(&path).unwrap().len() as u64 - before.len() as u64);
    assert_eq!(content(&path), before, "no weight byte changed");
    assert_eq!(opens(&path, &key(2)).unwrap(), std::fs::read(plain()).unwrap());
    assert_eq!(opens(&path, &key(1)).unwrap_err(), ErrorKind::WrongKey, "the removed key no longer opens it");
    let journal = dir.path().join(".model.onnx.onnx-protect-tail");
    assert!(!journal.exists());
}

#[test]
fn an_x25519_recipient_added_by_rewrap_opens_the_model_and_a_copy_is_written_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let path = protect(dir.path(), &EncryptTo::key(key(1)), &Policy::default());
    let id = X25519Identity::generate();
    let add = EncryptTo { master: None, master_tiers: None, recipients: vec![(Recipient::X25519(id.to_public()), 0)] };
    let out = dir.path().join("copy").join("model.onnx");
    let mut o = opts(&add, &[]);
    o.in_place = false;
    rewrap(&path, &out, &key(1), &o).unwrap();
    assert_eq!(content(&out), content(&path));
    let ident = KeySource::new(Identity::X25519(vec![id]));
    assert_eq!(opens(&out, &ident).unwrap(), std::fs::read(plain()).unwrap());
    assert_eq!(opens(&out, &key(1)).unwrap(), std::fs::read(plain()).unwrap(), "the old recipient is kept");
}

#[test]
fn signatures_are_renewed_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = protect(dir.path(), &EncryptTo::key(key(1)), &Policy::default());
    let publisher = SigningKey::generate().unwrap();
    sign(&path, &path, std::slice::from_ref(&publisher), true, &Default::default(), &NoProgress).unwrap();
    let signer = [publisher.public()];
    verify_signed(&path, None, &signer, &NoProgress).unwrap();
    let add = EncryptTo::key(key(3));
    let e = rewrap(&path, &path, &key(1), &opts(&add, &[])).unwrap_err();
    assert!(matches!(e, CoreError::NotSigned(Unsigned::Stale { count: 1 })), "{e}");
    let mut o = opts(&add, &[]);
    let keys = [publisher];
    o.signing_keys = &keys;
    rewrap(&path, &path, &key(1), &o).unwrap();
    verify_signed(&path, None, &signer, &NoProgress).unwrap();
    let mut o = opts(&add, &[]);
    o.drop_signatures = true;
    rewrap(&path, &path, &key(1), &o).unwrap();
    let e = verify_signed(&path, None, &signer, &NoProgress).unwrap_err();
    assert!(
        matches!(&e, CoreError::NotSigned(Unsigned::Missing { signers }) if signers == &[signer[0].to_text()]),
        "{e}"
    );
}

#[test]
fn rewrap_needs_the_top_tier_key_and_refuses_a_changed_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let mut policy = Policy::default();
    policy.apply_override("mode", "*=fp").unwrap();
    policy.set_tiers(2).unwrap();
    let path = protect(dir.path(), &EncryptTo::key(key(4)), &policy);
    let low = KeySource::key(MasterKey::from_bytes([4; 32]).tier_down());
    let add = EncryptTo::key(key(5));
    let e = rewrap(&path, &path, &low, &opts(&add, &[])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Key);
    assert!(matches!(e, CoreError::NotTopKey { key_tier: 1, tiers: 2, .. }), "{e}");
    let bytes = std::fs::read(&path).unwrap();
    let (r, _) = trailing_entry(&bytes).unwrap();
    // Change a byte of the stanzas' region (inside the base64 value), then re-wrap: refused.
    let mut changed = bytes.clone();
    let i = r.start as usize + (r.end - r.start) as usize / 2;
    changed[i] = if changed[i] == b'A' { b'B' } else { b'A' };
    std::fs::write(&path, &changed).unwrap();
    let e = rewrap(&path, &path, &key(4), &opts(&add, &[])).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Modified | ErrorKind::BadManifest | ErrorKind::WrongKey), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), changed, "nothing written");
}

fn toy_kms(name: &str) -> std::sync::Arc<dyn Provider> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/key-commands/toy-kms.sh");
    std::sync::Arc::new(KeyCommand::parse(&format!("'{}' {name}", script.display()), DEFAULT_COMMAND_TIMEOUT).unwrap())
}

fn provider(p: std::sync::Arc<dyn Provider>) -> KeySource {
    KeySource::new(Identity::Provider(p))
}

/// A model protected for key 1 and the toy key command `kms-a`.
fn protect_for_kms_a(dir: &Path) -> PathBuf {
    let recipients = vec![(Recipient::Provider(toy_kms("kms-a")), 0)];
    protect(dir, &EncryptTo { master: Some(key(1)), master_tiers: None, recipients }, &Policy::default())
}

#[test]
fn key_commands_are_added_removed_and_rotated_by_rewrap() {
    let dir = tempfile::tempdir().unwrap();
    let path = protect_for_kms_a(dir.path());
    let before = content(&path);
    let clear = std::fs::read(plain()).unwrap();
    assert_eq!(opens(&path, &provider(toy_kms("kms-a"))).unwrap(), clear);
    // Rotation, opened by the old provider key itself: kms-a out, kms-b in.
    let add =
        EncryptTo { master: None, master_tiers: None, recipients: vec![(Recipient::Provider(toy_kms("kms-b")), 0)] };
    let remove = [Remove::Label("toy-kms:kms-a".into())];
    let r = rewrap(&path, &path, &provider(toy_kms("kms-a")), &opts(&add, &remove)).unwrap();
    assert_eq!((r.removed, r.added), (1, 1));
    assert!(r.recipients.iter().any(|d| d.starts_with("command toy-kms:kms-b")), "{:?}", r.recipients);
    assert_eq!(content(&path), before, "no weight byte changed");
    assert_eq!(opens(&path, &provider(toy_kms("kms-b"))).unwrap(), clear);
    assert_eq!(opens(&path, &key(1)).unwrap(), clear, "the recipients not removed still open it");
    assert_eq!(
        opens(&path, &provider(toy_kms("kms-a"))).unwrap_err(),
        ErrorKind::WrongKey,
        "the removed provider key no longer opens it"
    );
    // A provider as the only key of a new model, with access tiers: it holds the top tier.
    let mut policy = Policy::default();
    policy.set_tiers(2).unwrap();
    let tiered = dir.path().join("tiered.onnx");
    encrypt(&plain(), &tiered, &EncryptTo::key(provider(toy_kms("kms-c"))), &EncryptOptions::new(&policy)).unwrap();
    assert_eq!(opens(&tiered, &provider(toy_kms("kms-c"))).unwrap(), clear);
}

#[test]
fn a_failing_key_command_is_its_own_error_and_a_lying_one_is_not_a_modified_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = protect_for_kms_a(dir.path());
    let script = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\ncat >/dev/null\n{body}\n")).unwrap();
        // Run through `sh`, so the file just written is not executed itself (ETXTBSY).
        let c: std::sync::Arc<dyn Provider> =
            std::sync::Arc::new(KeyCommand::parse(&format!("sh '{}'", p.display()), DEFAULT_COMMAND_TIMEOUT).unwrap());
        provider(c)
    };
    let failing = script("failing.sh", "echo 'kms: ThrottlingException' >&2; exit 1");
    let e = decrypt_to_vec(&Model::open(&path).unwrap(), &failing).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Key, "{e}");
    assert!(e.to_string().contains("exited with status 1: kms: ThrottlingException"), "{e}");
    let lying = script("lying.sh", "echo data-key=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let e = decrypt_to_vec(&Model::open(&path).unwrap(), &lying).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Key, "{e}");
    assert!(matches!(e, CoreError::Key(UnusableKey::ProviderAnswer { .. })), "{e}");
}
