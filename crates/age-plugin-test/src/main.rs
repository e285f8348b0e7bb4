//! `age-plugin-onnxtest`: an age plugin (the age plugin protocol, through the `age-plugin`
//! crate) standing in for a hardware token in onnx-protect's tests. Its "device" is an age
//! X25519 key carried in the recipient and identity strings, with a mode byte that makes
//! it behave as tokens do when they fail:
//!
//! | mode | recipient (wrap) | identity (unwrap) |
//! |---|---|---|
//! | `ok` | wraps | unwraps |
//! | `refuse` | reports an error for the recipient | reports "PIN blocked" for the identity |
//! | `die` | exits 3 in the middle of the protocol | exits 3 in the middle of the protocol |
//! | `pin` | wraps | asks for a PIN (`request-secret`); unwraps only with `1234` |
//!
//! `age-plugin-onnxtest --keygen MODE` prints an identity file (`# recipient: age1onnxtest1…`
//! and `AGE-PLUGIN-ONNXTEST-1…`). Recipient data: the mode byte and the 32-byte X25519
//! public key; identity data: the mode byte and the 32-byte X25519 secret. Not a security
//! device: the secret is in the identity string. Its stanzas are X25519 stanzas tagged
//! `onnxtest`.

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::io;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age::{Identity as _, Recipient as _};
use age_core::format::{FileKey, Stanza};
use age_plugin::identity::{self, IdentityPluginV1};
use age_plugin::recipient::{self, RecipientPluginV1};
use age_plugin::{run_state_machine, Callbacks, PluginHandler};
use bech32::{FromBase32, ToBase32, Variant};

const TAG: &str = "onnxtest";
const MODES: [&str; 4] = ["ok", "refuse", "die", "pin"];
const PIN: &str = "1234";

fn mode_name(m: u8) -> &'static str {
    MODES.get(usize::from(m)).copied().unwrap_or("?")
}

/// Parses data bytes: a known mode and 32 key bytes.
fn split(bytes: &[u8]) -> Option<(u8, [u8; 32])> {
    let (&mode, key) = bytes.split_first()?;
    (usize::from(mode) < MODES.len()).then_some(())?;
    Some((mode, key.try_into().ok()?))
}

fn x25519_identity(secret: &[u8; 32]) -> Option<age::x25519::Identity> {
    let text = bech32::encode("age-secret-key-", secret.to_base32(), Variant::Bech32).ok()?;
    age::x25519::Identity::from_str(&text.to_uppercase()).ok()
}

fn x25519_recipient(public: &[u8; 32]) -> Option<age::x25519::Recipient> {
    let text = bech32::encode("age", public.to_base32(), Variant::Bech32).ok()?;
    age::x25519::Recipient::from_str(&text).ok()
}

#[derive(Default)]
struct Recipients(Vec<(u8, age::x25519::Recipient)>);

impl RecipientPluginV1 for Recipients {
    fn add_recipient(&mut self, index: usize, _plugin: &str, bytes: &[u8]) -> Result<(), recipient::Error> {
        let bad = || recipient::Error::Recipient { index, message: "not an onnxtest recipient".into() };
        let (mode, key) = split(bytes).ok_or_else(bad)?;
        self.0.push((mode, x25519_recipient(&key).ok_or_else(bad)?));
        Ok(())
    }

    fn add_identity(&mut self, index: usize, _plugin: &str, _bytes: &[u8]) -> Result<(), recipient::Error> {
        Err(recipient::Error::Identity { index, message: "onnxtest wraps to recipients only".into() })
    }

    fn labels(&mut self) -> HashSet<String> {
        HashSet::new()
    }

    fn wrap_file_keys(
        &mut self,
        file_keys: Vec<FileKey>,
        _callbacks: impl Callbacks<recipient::Error>,
    ) -> io::Result<Result<Vec<Vec<Stanza>>, Vec<recipient::Error>>> {
        let mut out = Vec::new();
        for fk in &file_keys {
            let mut stanzas = Vec::new();
            for (index, (mode, r)) in self.0.iter().enumerate() {
                match mode_name(*mode) {
                    "refuse" => {
                        let message = "the onnxtest device refuses to wrap".to_string();
                        return Ok(Err(vec![recipient::Error::Recipient { index, message }]));
                    }
                    "die" => std::process::exit(3),
                    _ => {}
                }
                let (wrapped, _) = r.wrap_file_key(fk).map_err(|e| io::Error::other(format!("X25519 wrap: {e}")))?;
                stanzas.extend(wrapped.into_iter().map(|s| Stanza { tag: TAG.into(), ..s }));
            }
            out.push(stanzas);
        }
        Ok(Ok(out))
    }
}

#[derive(Default)]
struct Identities(Vec<(u8, age::x25519::Identity)>);

impl Identities {
    /// Unwraps one file's stanzas: `None` if none is ours.
    fn unwrap_one(
        &self,
        stanzas: &[Stanza],
        callbacks: &mut impl Callbacks<identity::Error>,
    ) -> io::Result<Option<Result<FileKey, Vec<identity::Error>>>> {
        let ours: Vec<Stanza> = stanzas
            .iter()
            .filter(|s| s.tag == TAG)
            .map(|s| Stanza { tag: "X25519".into(), args: s.args.clone(), body: s.body.clone() })
            .collect();
        if ours.is_empty() {
            return Ok(None);
        }
        for (index, (mode, id)) in self.0.iter().enumerate() {
            match mode_name(*mode) {
                "refuse" => {
                    let message = "the onnxtest device refuses: PIN blocked".to_string();
                    return Ok(Some(Err(vec![identity::Error::Identity { index, message }])));
                }
                "die" => std::process::exit(3),
                "pin" => {
                    let pin = callbacks.request_secret("PIN of the onnxtest device")?;
                    if !matches!(&pin, Ok(p) if p.expose_secret() == PIN) {
                        let message = "wrong or no PIN for the onnxtest device".to_string();
                        return Ok(Some(Err(vec![identity::Error::Identity { index, message }])));
                    }
                }
                _ => {}
            }
            if let Some(Ok(fk)) = id.unwrap_stanzas(&ours) {
                return Ok(Some(Ok(fk)));
            }
        }
        Ok(None)
    }
}

impl IdentityPluginV1 for Identities {
    fn add_identity(&mut self, index: usize, _plugin: &str, bytes: &[u8]) -> Result<(), identity::Error> {
        let bad = || identity::Error::Identity { index, message: "not an onnxtest identity".into() };
        let (mode, key) = split(bytes).ok_or_else(bad)?;
        self.0.push((mode, x25519_identity(&key).ok_or_else(bad)?));
        Ok(())
    }

    fn unwrap_file_keys(
        &mut self,
        files: Vec<Vec<Stanza>>,
        mut callbacks: impl Callbacks<identity::Error>,
    ) -> io::Result<HashMap<usize, Result<FileKey, Vec<identity::Error>>>> {
        let mut out = HashMap::new();
        for (i, stanzas) in files.iter().enumerate() {
            if let Some(r) = self.unwrap_one(stanzas, &mut callbacks)? {
                out.insert(i, r);
            }
        }
        Ok(out)
    }
}

struct Handler;

impl PluginHandler for Handler {
    type RecipientV1 = Recipients;
    type IdentityV1 = Identities;

    fn recipient_v1(self) -> io::Result<Recipients> {
        Ok(Recipients::default())
    }

    fn identity_v1(self) -> io::Result<Identities> {
        Ok(Identities::default())
    }
}

/// Prints a new identity file for `mode`.
fn keygen(mode: &str) -> io::Result<()> {
    let m = MODES.iter().position(|x| *x == mode).ok_or_else(|| io::Error::other(format!("unknown mode '{mode}'")))?;
    let id = age::x25519::Identity::generate();
    let secret_text = id.to_string();
    let (_, data, _) = bech32::decode(&secret_text.expose_secret().to_lowercase()).map_err(io::Error::other)?;
    let secret = Vec::<u8>::from_base32(&data).map_err(io::Error::other)?;
    let (_, data, _) = bech32::decode(&id.to_public().to_string()).map_err(io::Error::other)?;
    let public = Vec::<u8>::from_base32(&data).map_err(io::Error::other)?;
    let with_mode = |key: &[u8]| [&[m as u8][..], key].concat();
    let r =
        bech32::encode("age1onnxtest", with_mode(&public).to_base32(), Variant::Bech32).map_err(io::Error::other)?;
    let i = bech32::encode("age-plugin-onnxtest-", with_mode(&secret).to_base32(), Variant::Bech32)
        .map_err(io::Error::other)?;
    println!("# recipient: {r}\n{}", i.to_uppercase());
    Ok(())
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some(a) if a.starts_with("--age-plugin=") => run_state_machine(&a["--age-plugin=".len()..], Handler),
        Some("--keygen") => keygen(args.get(1).map_or("ok", String::as_str)),
        _ => Err(io::Error::other("usage: age-plugin-onnxtest --keygen [ok|refuse|die|pin]")),
    }
}
