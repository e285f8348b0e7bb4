//! onnx-protect-keys' age plugin recipients and identities against `age-plugin-onnxtest`
//! (this crate's binary, found through `PATH` as age finds plugins): a round trip, a plugin
//! that refuses, one that dies, one that asks for a PIN, one that is missing, and scripts
//! that write more than the protocol's lines and commands can hold.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Once};

use bech32::{ToBase32, Variant};
use onnx_protect_keys::{NoPrompt, PluginIdentity, PluginPrompt, PluginRecipient, Provider, Stanza};
use zeroize::Zeroizing;

const PLUGIN: &str = env!("CARGO_BIN_EXE_age-plugin-onnxtest");

/// Plugins that break the protocol, as shell scripts: `floodline` writes a line of 256 MiB,
/// `floodbody` a command whose body never ends (64-column lines, forever).
#[cfg(unix)]
const SCRIPTS: [(&str, &str); 2] = [
    ("floodline", "head -c 268435456 /dev/zero | tr '\\0' A\n"),
    ("floodbody", "printf -- '-> msg\\n'\nyes AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"),
];

/// The directory of [`SCRIPTS`].
fn scripts_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("age-plugin-scripts")
}

/// Puts the plugin's directory and [`scripts_dir`] first on `PATH`, once for every test of
/// this binary.
fn plugin_on_path() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let dir = Path::new(PLUGIN).parent().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(scripts_dir()).unwrap();
            for (name, body) in SCRIPTS {
                let p = scripts_dir().join(format!("age-plugin-{name}"));
                std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir.to_path_buf(), scripts_dir()];
        paths.extend(std::env::split_paths(&old));
        std::env::set_var("PATH", std::env::join_paths(paths).unwrap());
    });
}

/// (recipient, identity file text) of a new onnxtest device in `mode`.
fn keygen(mode: &str) -> (String, String) {
    let out = Command::new(PLUGIN).args(["--keygen", mode]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let recipient = text.lines().next().unwrap().strip_prefix("# recipient: ").unwrap().to_string();
    (recipient, text)
}

fn no_prompt() -> Arc<dyn PluginPrompt> {
    Arc::new(NoPrompt)
}

fn wrap(recipient: &str, tier: u32, key: [u8; 32]) -> Stanza {
    let w = PluginRecipient::parse(recipient, no_prompt()).unwrap().wrap(tier, &key).unwrap();
    Stanza { kind: "age-plugin".into(), tier, label: w.label, salt: Vec::new(), kdf: None, body: w.body }
}

fn identity(text: &str, prompt: Arc<dyn PluginPrompt>) -> PluginIdentity {
    let mut ids = PluginIdentity::parse_file(text, prompt).unwrap();
    assert_eq!(ids.len(), 1);
    ids.remove(0)
}

#[test]
fn a_plugin_recipient_wraps_and_its_identity_opens() {
    plugin_on_path();
    let (r, id_text) = keygen("ok");
    assert!(r.starts_with("age1onnxtest1"), "{r}");
    let s = wrap(&r, 1, [0x42; 32]);
    assert_eq!(s.label, r);
    assert!(s.body.starts_with(b"age-encryption.org/v1\n-> onnxtest "), "{:?}", String::from_utf8_lossy(&s.body));
    let id = identity(&id_text, no_prompt());
    assert_eq!(id.plugin(), "onnxtest");
    assert_eq!(*id.unwrap(&s).unwrap().unwrap(), [0x42; 32]);
    // Another device of the same plugin does not open it.
    let (_, other) = keygen("ok");
    assert!(identity(&other, no_prompt()).unwrap(&s).unwrap().is_none());
    // No changed byte opens it to the key.
    for i in 0..s.body.len() {
        let mut b = s.clone();
        b.body[i] ^= 0x01;
        if let Ok(Some(k)) = id.unwrap(&b) {
            panic!("byte {i} changed and it opened to {:?}", &k[..4]);
        }
    }
}

#[test]
fn a_stanza_of_another_plugin_is_skipped_without_running_it() {
    plugin_on_path();
    let (r, id_text) = keygen("ok");
    let mut s = wrap(&r, 1, [1; 32]);
    // Relabelled for another plugin: skipped (a missing plugin would otherwise be an error).
    s.label = bech32::encode("age1missing", [0u8; 33].to_base32(), Variant::Bech32).unwrap();
    assert!(identity(&id_text, no_prompt()).unwrap(&s).unwrap().is_none());
    s.kind = "x25519".into();
    assert!(identity(&id_text, no_prompt()).unwrap(&s).unwrap().is_none());
}

#[test]
fn a_plugin_that_refuses_or_dies_is_an_error_naming_it() {
    plugin_on_path();
    let (r, _) = keygen("refuse");
    let e = PluginRecipient::parse(&r, no_prompt()).unwrap().wrap(1, &[0; 32]).unwrap_err().to_string();
    assert!(e.contains("age-plugin-onnxtest") && e.contains("refuses to wrap"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let (r, _) = keygen("die");
    let e = PluginRecipient::parse(&r, no_prompt()).unwrap().wrap(1, &[0; 32]).unwrap_err().to_string();
    assert!(e.contains("age-plugin-onnxtest"), "{e}");

    // Identities: a stanza wrapped for a refusing (dying) device's key pair.
    let (ok_r, _) = keygen("ok");
    let s = wrap(&ok_r, 1, [2; 32]);
    let (_, refusing) = keygen("refuse");
    let e = identity(&refusing, no_prompt()).unwrap(&s).unwrap_err().to_string();
    assert!(e.contains("PIN blocked"), "{e}");
    let (_, dying) = keygen("die");
    let e = identity(&dying, no_prompt()).unwrap(&s).unwrap_err().to_string();
    assert!(e.contains("age-plugin-onnxtest"), "{e}");
}

struct Pin(&'static str);

impl PluginPrompt for Pin {
    fn secret(&self, description: &str) -> Option<Zeroizing<String>> {
        assert!(description.contains("PIN"), "{description}");
        Some(Zeroizing::new(self.0.to_string()))
    }
}

#[test]
fn a_plugin_asking_for_a_pin_gets_it_through_the_prompt() {
    plugin_on_path();
    let (r, id_text) = keygen("pin");
    let s = wrap(&r, 2, [3; 32]);
    let e = identity(&id_text, no_prompt()).unwrap(&s).unwrap_err().to_string();
    assert!(e.contains("no PIN"), "{e}");
    let e = identity(&id_text, Arc::new(Pin("0000"))).unwrap(&s).unwrap_err().to_string();
    assert!(e.contains("wrong or no PIN"), "{e}");
    assert_eq!(*identity(&id_text, Arc::new(Pin("1234"))).unwrap(&s).unwrap().unwrap(), [3; 32]);
}

#[test]
fn a_missing_plugin_is_an_error_naming_the_program() {
    plugin_on_path();
    let r = bech32::encode("age1missing", [0u8; 33].to_base32(), Variant::Bech32).unwrap();
    let e = PluginRecipient::parse(&r, no_prompt()).unwrap().wrap(1, &[0; 32]).unwrap_err().to_string();
    assert!(e.contains("age-plugin-missing"), "{e}");
    let (ok_r, _) = keygen("ok");
    let mut s = wrap(&ok_r, 1, [4; 32]);
    s.label = r;
    let id = bech32::encode("age-plugin-missing-", [7u8; 4].to_base32(), Variant::Bech32).unwrap().to_uppercase();
    let e = identity(&id, no_prompt()).unwrap(&s).unwrap_err().to_string();
    assert!(e.contains("age-plugin-missing"), "{e}");
}

#[test]
fn bad_strings_are_refused_with_the_line() {
    assert!(
        PluginRecipient::parse("age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq", no_prompt()).is_err()
    );
    let e = PluginIdentity::parse_file("# c\nAGE-SECRET-KEY-1XYZ\n", no_prompt()).err().unwrap().to_string();
    assert!(e.contains("line 2") && !e.contains("XYZ"), "{e}");
    assert!(PluginIdentity::parse_file("# nothing\n", no_prompt()).is_err());
}

/// The recipient string of plugin `name` (its data does not matter to a script).
fn recipient_of(name: &str) -> String {
    bech32::encode(&format!("age1{name}"), [0u8; 33].to_base32(), Variant::Bech32).unwrap()
}

#[cfg(unix)]
#[test]
fn a_plugin_writing_a_huge_line_or_command_is_refused_with_its_name() {
    plugin_on_path();
    for (name, want) in
        [("floodline", "a line longer than 65536 bytes"), ("floodbody", "a command of more than 1048576 bytes")]
    {
        let start = std::time::Instant::now();
        let e = PluginRecipient::parse(&recipient_of(name), no_prompt()).unwrap().wrap(1, &[0; 32]).unwrap_err();
        let e = e.to_string();
        assert!(e.contains(&format!("age-plugin-{name}")) && e.contains(want) && e.contains("refused"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        // Refused as soon as the limit is passed, not after reading what it writes.
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "{name}: {:?}", start.elapsed());
        // As an identity too: the same limits.
        let (ok_r, _) = keygen("ok");
        let mut s = wrap(&ok_r, 1, [5; 32]);
        s.label = recipient_of(name);
        let id = bech32::encode(&format!("age-plugin-{name}-"), [7u8; 4].to_base32(), Variant::Bech32)
            .unwrap()
            .to_uppercase();
        let e = identity(&id, no_prompt()).unwrap(&s).unwrap_err().to_string();
        assert!(e.contains(&format!("age-plugin-{name}")) && e.contains(want), "{e}");
    }
    assert_eq!(onnx_protect_keys::MAX_PLUGIN_LINE, 65536);
    assert_eq!(onnx_protect_keys::MAX_PLUGIN_COMMAND, 1 << 20);
}
