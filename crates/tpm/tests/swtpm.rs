//! The TPM recipient against software TPMs (`swtpm`): each test starts its own instances
//! on local TCP ports, each with its own state directory (its own seeds), and stops them.
//! Needs the feature `tss` and the `swtpm` program; without `swtpm` the tests say so and
//! pass, unless `ONNX_PROTECT_REQUIRE_SWTPM=1` (set by scripts/test.sh once it installed
//! swtpm) makes its absence a failure.

#![cfg(feature = "tss")]
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use onnx_protect_keys::{Provider, Stanza};
use onnx_protect_tpm::{
    create_key, persist_key, persistent_key, read_clock, Tpm, TpmError, TpmIdentity, TpmKeyFile, TpmKeyLocation,
    TpmRecipient, TpmRecipientProvider,
};

/// A running swtpm; killed (by its own pid) when dropped.
struct SwTpm {
    child: Child,
    tcti: String,
}

impl Drop for SwTpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn swtpm_available() -> bool {
    let found = Command::new("swtpm").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        assert!(
            std::env::var("ONNX_PROTECT_REQUIRE_SWTPM").as_deref() != Ok("1"),
            "swtpm is required (ONNX_PROTECT_REQUIRE_SWTPM=1) but not found"
        );
        eprintln!("swtpm not found (Debian package swtpm): TPM tests skipped");
    }
    found
}

/// Two adjacent free ports (server, control), found by binding port 0.
fn free_port_pair() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let p = l.local_addr().expect("local address").port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// Starts swtpm on a TPM 2.0 state in `state` (created empty on first start: fresh seeds).
fn start(state: &Path) -> SwTpm {
    std::fs::create_dir_all(state).expect("create the state directory");
    for _ in 0..10 {
        let port = free_port_pair();
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start swtpm");
        let mut tpm = SwTpm { child, tcti: format!("swtpm:host=127.0.0.1,port={port}") };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = tpm.child.try_wait() {
                break; // lost the port to someone else: try another
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return tpm;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = tpm.child.kill();
    }
    panic!("swtpm did not start");
}

fn stanza(tier: u32, label: String, body: Vec<u8>) -> Stanza {
    Stanza { kind: "tpm".into(), tier, label, salt: Vec::new(), kdf: None, body }
}

#[test]
fn a_key_wrapped_without_the_device_opens_only_through_its_tpm() {
    if !swtpm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"));
    let key = create_key(&a.tcti).unwrap();
    assert!(matches!(key.location, TpmKeyLocation::Blob { .. }));
    // The key file round-trips; the recipient string is all the publisher gets.
    let key = TpmKeyFile::parse(key.to_text().as_bytes()).unwrap();
    let public = TpmRecipient::parse(&key.recipient.to_text()).unwrap();
    let wrapped = TpmRecipientProvider(public).wrap(2, &[0x5a; 32]).unwrap();
    let s = stanza(2, wrapped.label.clone(), wrapped.body.clone());
    let id = TpmIdentity::new(key.clone(), &a.tcti);
    assert_eq!(*id.unwrap(&s).unwrap().unwrap(), [0x5a; 32]);
    // The tier is bound into the key-encryption key.
    assert!(id.unwrap(&stanza(1, wrapped.label.clone(), wrapped.body.clone())).unwrap().is_none());
    // A changed body does not open (the TPM computes another shared point, or none).
    let mut changed = wrapped.body.clone();
    changed[50] ^= 1;
    assert!(id.unwrap(&stanza(2, wrapped.label.clone(), changed)).unwrap().is_none());
    // A second key of the same TPM opens nothing wrapped for the first, even when the
    // stanza's label is rewritten to name it.
    let other = create_key(&a.tcti).unwrap();
    let other_id = TpmIdentity::new(other.clone(), &a.tcti);
    assert!(other_id.unwrap(&s).unwrap().is_none(), "label of another key: skipped");
    let relabelled = stanza(2, other.recipient.to_text(), wrapped.body);
    assert!(other_id.unwrap(&relabelled).unwrap().is_none(), "ECDH with another key gives another KEK");
}

#[test]
fn a_key_of_one_tpm_state_is_refused_by_another() {
    if !swtpm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"));
    let b = start(&dir.path().join("b"));
    let key = create_key(&a.tcti).unwrap();
    let body = key.recipient.wrap(1, &[1; 32]).unwrap();
    // The same key file, the other TPM: its blob does not load under b's storage root key.
    let e = TpmIdentity::new(key.clone(), &b.tcti).open(1, &body).unwrap_err();
    assert!(matches!(e, TpmError::NotThisTpm { .. }), "{e}");
    assert!(e.to_string().contains("is not in this TPM"), "{e}");
    // A persistent key: b has nothing at that handle.
    let persistent = persist_key(&a.tcti, &key, 0x8100_0100).unwrap();
    assert_eq!(persistent.location, TpmKeyLocation::Persistent(0x8100_0100));
    assert_eq!(*TpmIdentity::new(persistent.clone(), &a.tcti).open(1, &body).unwrap().unwrap(), [1; 32]);
    let e = TpmIdentity::new(persistent.clone(), &b.tcti).open(1, &body).unwrap_err();
    assert!(matches!(e, TpmError::NotThisTpm { .. }), "{e}");
    // b's own key at that handle is another key: refused, not used.
    let b_key = create_key(&b.tcti).unwrap();
    persist_key(&b.tcti, &b_key, 0x8100_0100).unwrap();
    let e = TpmIdentity::new(persistent, &b.tcti).open(1, &body).unwrap_err();
    assert!(e.to_string().contains("holds another key"), "{e}");
}

#[test]
fn the_key_survives_a_restart_of_its_tpm_and_the_clock_does_not_go_back() {
    if !swtpm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("a");
    let a = start(&state);
    let key = create_key(&a.tcti).unwrap();
    let body = key.recipient.wrap(1, &[3; 32]).unwrap();
    let c1 = read_clock(&a.tcti).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let c2 = read_clock(&a.tcti).unwrap();
    assert!(c2.clock_ms >= c1.clock_ms, "{c1:?} {c2:?}");
    assert!(c2.safe);
    // An orderly shutdown, as before a power-off: the clock carries on from where it was.
    Tpm::open(&a.tcti).unwrap().shutdown().unwrap();
    drop(a);
    let a = start(&state);
    assert_eq!(*TpmIdentity::new(key.clone(), &a.tcti).open(1, &body).unwrap().unwrap(), [3; 32]);
    let c3 = read_clock(&a.tcti).unwrap();
    assert!(c3.clock_ms >= c2.clock_ms && c3.safe, "{c2:?} {c3:?}");
    // A power loss (the process killed): the clock may lose what it had not saved to NV,
    // and then says so (safe = false).
    std::thread::sleep(Duration::from_millis(50));
    let c4 = read_clock(&a.tcti).unwrap();
    drop(a);
    let a = start(&state);
    let c5 = read_clock(&a.tcti).unwrap();
    assert!(c5.clock_ms >= c4.clock_ms || !c5.safe, "{c4:?} {c5:?}");
    assert_eq!(*TpmIdentity::new(key, &a.tcti).open(1, &body).unwrap().unwrap(), [3; 32]);
}

#[test]
fn a_changed_blob_or_an_absent_tpm_is_a_clear_error() {
    if !swtpm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"));
    let key = create_key(&a.tcti).unwrap();
    let body = key.recipient.wrap(1, &[4; 32]).unwrap();
    let TpmKeyLocation::Blob { public, private } = key.location.clone() else { panic!("a blob") };
    let mut bad_private = private.clone();
    let n = bad_private.len();
    bad_private[n - 1] ^= 1;
    let changed = TpmKeyFile {
        recipient: key.recipient.clone(),
        location: TpmKeyLocation::Blob { public: public.clone(), private: bad_private },
    };
    let e = TpmIdentity::new(changed, &a.tcti).open(1, &body).unwrap_err();
    assert!(matches!(e, TpmError::NotThisTpm { .. }), "{e}");
    // A public area of another key than the recipient says.
    let other = create_key(&a.tcti).unwrap();
    let mixed = TpmKeyFile { recipient: other.recipient, location: key.location.clone() };
    let e = TpmIdentity::new(mixed, &a.tcti).open(1, &body).unwrap_err();
    assert!(e.to_string().contains("another key than its recipient"), "{e}");
    // Nothing listening.
    let port = free_port_pair();
    let e = TpmIdentity::new(key, &format!("swtpm:host=127.0.0.1,port={port}")).open(1, &body).unwrap_err();
    assert!(matches!(e, TpmError::Unreachable { .. }), "{e}");
}

/// Persists, at `handle`, a primary key of the owner hierarchy made from `public` (with the
/// authorization value `auth`): objects onnx-protect did not make.
fn persist_primary(tcti: &str, public: tss_esapi::structures::Public, auth: Option<&[u8]>, handle: u32) {
    use tss_esapi::handles::PersistentTpmHandle;
    use tss_esapi::interface_types::dynamic_handles::Persistent;
    use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
    let mut ctx = tss_esapi::Context::new(tcti.parse().unwrap()).unwrap();
    let auth = auth.map(|a| tss_esapi::structures::Auth::try_from(a.to_vec()).unwrap());
    let key = ctx
        .execute_with_nullauth_session(|c| c.create_primary(Hierarchy::Owner, public, auth, None, None, None))
        .unwrap()
        .key_handle;
    let persistent = Persistent::Persistent(PersistentTpmHandle::new(handle).unwrap());
    ctx.execute_with_nullauth_session(|c| c.evict_control(Provision::Owner, key.into(), persistent)).unwrap();
    ctx.flush_context(key.into()).unwrap();
}

/// An ECC template on `curve`: for ECDH (`decrypt`, unrestricted), or with `restricted`
/// a storage key, or with `signing` an ECDSA key.
fn ecc_template(
    curve: tss_esapi::interface_types::ecc::EccCurve,
    restricted: bool,
    signing: bool,
) -> tss_esapi::structures::Public {
    use tss_esapi::attributes::ObjectAttributesBuilder;
    use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
    use tss_esapi::structures::{
        EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme, PublicBuilder, PublicEccParametersBuilder,
        SymmetricDefinitionObject,
    };
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(restricted)
        .with_decrypt(!signing)
        .with_sign_encrypt(signing)
        .build()
        .unwrap();
    let parameters = if restricted {
        PublicEccParametersBuilder::new_restricted_decryption_key(SymmetricDefinitionObject::AES_128_CFB, curve)
    } else if signing {
        PublicEccParametersBuilder::new_unrestricted_signing_key(
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
            curve,
        )
    } else {
        PublicEccParametersBuilder::new()
            .with_ecc_scheme(EccScheme::EcDh(HashScheme::new(HashingAlgorithm::Sha256)))
            .with_curve(curve)
            .with_is_signing_key(false)
            .with_is_decryption_key(true)
            .with_restricted(false)
            .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
    };
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters.build().unwrap())
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .unwrap()
}

#[test]
fn a_persistent_handle_names_a_usable_key_and_refuses_any_other_object() {
    use tss_esapi::interface_types::ecc::EccCurve;
    const P256: EccCurve = EccCurve::NistP256;
    if !swtpm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"));
    // An empty handle: a new key, made persistent there.
    let (made, created) = persistent_key(&a.tcti, 0x8100_0200).unwrap();
    assert!(created);
    assert_eq!(made.location, TpmKeyLocation::Persistent(0x8100_0200));
    // The same handle again: that key, named and not created.
    let (named, created) = persistent_key(&a.tcti, 0x8100_0200).unwrap();
    assert!(!created);
    assert_eq!(named, made);
    let body = named.recipient.wrap(1, &[7; 32]).unwrap();
    assert_eq!(*TpmIdentity::new(named, &a.tcti).open(1, &body).unwrap().unwrap(), [7; 32]);
    // A usable key onnx-protect did not make (a primary key persisted by someone else).
    persist_primary(&a.tcti, ecc_template(P256, false, false), None, 0x8100_0201);
    let (other, created) = persistent_key(&a.tcti, 0x8100_0201).unwrap();
    assert!(!created);
    assert_ne!(other.recipient, made.recipient);
    let body = other.recipient.wrap(1, &[8; 32]).unwrap();
    assert_eq!(*TpmIdentity::new(other, &a.tcti).open(1, &body).unwrap().unwrap(), [8; 32]);
    // Objects that cannot open models: refused, never replaced.
    let cases: [(u32, tss_esapi::structures::Public, Option<&[u8]>, &str); 4] = [
        (0x8100_0202, ecc_template(P256, true, false), None, "not an unrestricted decryption key"),
        (0x8100_0203, ecc_template(P256, false, true), None, "not an unrestricted decryption key"),
        (0x8100_0204, ecc_template(P256, false, false), Some(b"secret"), "empty authorization value"),
        (0x8100_0205, ecc_template(EccCurve::NistP384, false, false), None, "not an ECC NIST P-256 key"),
    ];
    for (handle, template, auth, want) in cases {
        persist_primary(&a.tcti, template, auth, handle);
        let before = Tpm::open(&a.tcti).unwrap().persistent(handle);
        let e = persistent_key(&a.tcti, handle).unwrap_err();
        assert!(matches!(e, TpmError::Unsuitable { handle: h, .. } if h == handle), "{e}");
        assert!(e.to_string().contains(want), "0x{handle:08x}: {e}");
        assert!(matches!(before, Err(TpmError::Unsuitable { .. })), "0x{handle:08x}");
    }
    // A handle outside the persistent range.
    assert!(matches!(persistent_key(&a.tcti, 0x8000_0000), Err(TpmError::BadHandle(_))));
}
