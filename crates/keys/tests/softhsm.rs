//! The PKCS#11 provider against SoftHSM2 (Debian package `softhsm2`): a token made in a
//! temporary directory, a key generated in it, data keys wrapped and unwrapped.
//! Skips, saying so, only where the SoftHSM2 module or `softhsm2-util` is absent.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};
use std::process::Command;

use onnx_protect_keys::{Pkcs11Key, Provider, Stanza, KIND_PKCS11};

const MODULE_PATHS: &[&str] = &["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"];

fn softhsm() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ONNX_PROTECT_SOFTHSM_MODULE") {
        return Some(PathBuf::from(p));
    }
    let module = MODULE_PATHS.iter().map(PathBuf::from).find(|p| p.exists());
    let util = Command::new("softhsm2-util").arg("--version").output().is_ok_and(|o| o.status.success());
    match module {
        Some(m) if util => Some(m),
        _ => {
            println!(
                "SKIPPED: SoftHSM2 is not installed (apt-get install softhsm2); the PKCS#11 provider is untested here"
            );
            None
        }
    }
}

/// Initialises a token labelled `label` with user PIN `pin` under `dir`, and points
/// this process at it (SoftHSM2 reads SOFTHSM2_CONF when the module is initialised).
fn init_token(dir: &Path, label: &str, pin: &str) {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
    )
    .unwrap();
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", "5678"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "softhsm2-util: {}", String::from_utf8_lossy(&out.stderr));
}

fn stanza(tier: u32, w: onnx_protect_keys::Wrapped) -> Stanza {
    Stanza { kind: KIND_PKCS11.into(), tier, label: w.label, salt: Vec::new(), kdf: None, body: w.body }
}

/// One test: the module is initialised once per process, with the configuration of
/// that moment.
#[test]
fn softhsm_token_wraps_and_unwraps_data_keys() {
    let Some(module) = softhsm() else { return };
    let dir = tempfile::tempdir().unwrap();
    init_token(dir.path(), "onnx-test", "1234");
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, "1234\n").unwrap();
    let m = module.display();
    let uri = format!("pkcs11:token=onnx-test;object=kek-1;id=%01?module-path={m}&pin-source={}", pin_file.display());
    let key = Pkcs11Key::parse(&uri).unwrap();
    key.generate().unwrap();
    let e = key.generate().unwrap_err().to_string();
    assert!(e.contains("already holds a secret key"), "{e}");

    let dk = [0x5a; 32];
    let w = key.wrap(2, &dk).unwrap();
    assert_eq!(w.label, "pkcs11:token=onnx-test;object=kek-1;id=%01");
    assert_eq!(w.body.len(), 60);
    assert!(!w.body.windows(32).any(|win| win == dk), "the data key is not in the clear");
    let s = stanza(2, w);
    assert_eq!(*key.unwrap(&s).unwrap().unwrap(), dk);

    // The tier is bound: the same body under another tier does not open.
    let mut other_tier = s.clone();
    other_tier.tier = 1;
    assert!(key.unwrap(&other_tier).unwrap().is_none());
    // A changed body does not open.
    let mut changed = s.clone();
    changed.body[20] ^= 1;
    assert!(key.unwrap(&changed).unwrap().is_none());
    // A body of the wrong length is malformed.
    let mut short = s.clone();
    short.body.pop();
    assert!(key.unwrap(&short).unwrap_err().to_string().contains("not 60"));

    // Another key of the same token, selected by id alone, with the PIN from a variable.
    std::env::set_var("ONNX_TEST_HSM_PIN", "1234");
    let other =
        Pkcs11Key::parse(&format!("pkcs11:token=onnx-test;id=%02?module-path={m}&pin-source=env:ONNX_TEST_HSM_PIN"))
            .unwrap();
    other.generate().unwrap();
    assert!(other.unwrap(&s).unwrap().is_none(), "another key does not open the stanza");
    assert_eq!(*other.unwrap(&stanza(1, other.wrap(1, &dk).unwrap())).unwrap().unwrap(), dk);

    // Errors name what is wrong, and never the PIN.
    let wrong_pin =
        Pkcs11Key::parse(&format!("pkcs11:token=onnx-test;object=kek-1?module-path={m}&pin-value=9999")).unwrap();
    let e = wrong_pin.wrap(1, &dk).unwrap_err().to_string();
    assert!(e.contains("the PIN is incorrect") && !e.contains("9999"), "{e}");
    let no_pin = Pkcs11Key::parse(&format!("pkcs11:token=onnx-test;object=kek-1?module-path={m}")).unwrap();
    assert!(no_pin.wrap(1, &dk).unwrap_err().to_string().contains("needs a PIN"));
    let no_token = Pkcs11Key::parse(&format!("pkcs11:token=nope;object=kek-1?module-path={m}&pin-value=1234")).unwrap();
    assert!(no_token.wrap(1, &dk).unwrap_err().to_string().contains("no token in this module matches"));
    let no_key =
        Pkcs11Key::parse(&format!("pkcs11:token=onnx-test;object=absent?module-path={m}&pin-value=1234")).unwrap();
    assert!(no_key.wrap(1, &dk).unwrap_err().to_string().contains("holds no secret key"));
    let no_module = Pkcs11Key::parse("pkcs11:object=k?module-path=/nonexistent/module.so&pin-value=1").unwrap();
    assert!(no_module.wrap(1, &dk).unwrap_err().to_string().contains("cannot load and initialise the module"));
}
