//! The recipients a data key is wrapped for ([`Recipient`]) and the key material that
//! opens their stanzas ([`Identity`]), for the kinds implemented here (`key`,
//! `passphrase`, `x25519`) and for key [`Provider`]s (docs/format.md §8).

use std::io::{Read, Write};
use std::str::FromStr;
use std::sync::Arc;

use onnx_protect_crypto::{random_stanza_salt, DataKey, KdfParams, MasterKey, WrapKind, KDF_SALT_LEN};
use zeroize::Zeroizing;

use crate::error::KeysError;
use crate::stanza::{Provider, Stanza};

/// Stanza kind of a 32-byte wrapping key (key file, environment variable, tier key).
pub const KIND_KEY: &str = "key";
/// Stanza kind of a passphrase (Argon2id).
pub const KIND_PASSPHRASE: &str = "passphrase";
/// Stanza kind of an age X25519 recipient.
pub const KIND_X25519: &str = "x25519";

/// The largest Argon2id memory cost (KiB) a reader accepts: twice what onnx-protect writes.
pub const MAX_KDF_M_COST_KIB: u32 = 131_072;
/// The largest Argon2id pass count a reader accepts: twice what onnx-protect writes.
pub const MAX_KDF_T_COST: u32 = 6;
/// The largest Argon2id lane count a reader accepts.
pub const MAX_KDF_P_COST: u32 = 4;

/// Refuses Argon2id parameters above the reader caps before any work is done.
pub fn check_kdf_limits(kdf: &KdfParams) -> Result<(), KeysError> {
    if kdf.m_cost_kib > MAX_KDF_M_COST_KIB || kdf.t_cost > MAX_KDF_T_COST || kdf.p_cost > MAX_KDF_P_COST {
        return Err(KeysError::KdfOverLimit {
            m_cost_kib: kdf.m_cost_kib,
            t_cost: kdf.t_cost,
            p_cost: kdf.p_cost,
            max_m: MAX_KDF_M_COST_KIB,
            max_t: MAX_KDF_T_COST,
            max_p: MAX_KDF_P_COST,
        });
    }
    Ok(())
}

/// The length of an Argon2id salt in a passphrase stanza.
pub const PASSPHRASE_SALT_LEN: usize = KDF_SALT_LEN;

/// Someone a data key is wrapped for.
#[derive(Clone)]
pub enum Recipient {
    /// A 32-byte key: a key file, an environment variable, or a tier key.
    Key(MasterKey),
    /// A passphrase and the Argon2id parameters to stretch it with.
    Passphrase {
        /// The passphrase's bytes.
        passphrase: Zeroizing<Vec<u8>>,
        /// Fresh parameters (a random salt) for this stanza.
        params: KdfParams,
    },
    /// An age X25519 recipient (`age1…`).
    X25519(age::x25519::Recipient),
    /// A key provider.
    Provider(Arc<dyn Provider>),
}

impl Recipient {
    /// Parses a public recipient string: today an age X25519 recipient `age1…`.
    pub fn parse_public(text: &str) -> Result<Recipient, KeysError> {
        let t = text.trim();
        age::x25519::Recipient::from_str(t)
            .map(Recipient::X25519)
            .map_err(|e| KeysError::BadRecipient { text: t.to_string(), reason: e.to_string() })
    }

    /// Parses a recipients file: one public recipient per line; blank lines and lines
    /// starting with `#` are ignored (the format of `age -R`).
    pub fn parse_file(text: &str) -> Result<Vec<Recipient>, KeysError> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(Recipient::parse_public)
            .collect()
    }

    /// A short description for reports (never secret).
    pub fn describe(&self) -> String {
        match self {
            Recipient::Key(k) => format!("key {}", hex(&k.fingerprint())),
            Recipient::Passphrase { .. } => "passphrase".to_string(),
            Recipient::X25519(r) => r.to_string(),
            Recipient::Provider(p) => format!("{} {}", p.kind(), p.describe()),
        }
    }

    /// Wraps `data_key`, the data key of `tier`, for this recipient.
    pub fn wrap(&self, tier: u32, data_key: &DataKey) -> Result<Stanza, KeysError> {
        match self {
            Recipient::Key(k) => {
                let salt = random_stanza_salt()?;
                Ok(Stanza {
                    kind: KIND_KEY.into(),
                    tier,
                    label: hex(&k.fingerprint()),
                    salt: salt.to_vec(),
                    kdf: None,
                    body: k.wrap_data_key(WrapKind::Key, &salt, tier, data_key),
                })
            }
            Recipient::Passphrase { passphrase, params } => {
                passphrase_stanza(&MasterKey::from_passphrase(passphrase, params)?, params, tier, data_key)
            }
            Recipient::X25519(r) => Ok(Stanza {
                kind: KIND_X25519.into(),
                tier,
                label: r.to_string(),
                salt: Vec::new(),
                kdf: None,
                body: age_wrap(r, data_key)?,
            }),
            Recipient::Provider(p) => {
                let w = p.wrap(tier, &data_key.to_bytes())?;
                Ok(Stanza {
                    kind: p.kind().to_string(),
                    tier,
                    label: w.label,
                    salt: Vec::new(),
                    kdf: None,
                    body: w.body,
                })
            }
        }
    }
}

/// A `passphrase` stanza from the passphrase's Argon2id output `stretched` (computed
/// once by a caller that also derives tier keys from it) and the parameters it used.
pub fn passphrase_stanza(
    stretched: &MasterKey,
    params: &KdfParams,
    tier: u32,
    data_key: &DataKey,
) -> Result<Stanza, KeysError> {
    let salt = random_stanza_salt()?;
    Ok(Stanza {
        kind: KIND_PASSPHRASE.into(),
        tier,
        label: String::new(),
        salt: salt.to_vec(),
        kdf: Some(*params),
        body: stretched.wrap_data_key(WrapKind::Passphrase, &salt, tier, data_key),
    })
}

/// Key material that may open stanzas.
#[derive(Clone)]
pub enum Identity {
    /// A 32-byte key (key file, environment variable, tier key): opens `key` stanzas.
    Key(MasterKey),
    /// A passphrase: opens `passphrase` stanzas.
    Passphrase(Zeroizing<Vec<u8>>),
    /// age X25519 identities (`AGE-SECRET-KEY-1…`): open `x25519` stanzas.
    X25519(Vec<age::x25519::Identity>),
    /// A key provider: opens stanzas of its kind.
    Provider(Arc<dyn Provider>),
}

impl Identity {
    /// Parses an identity file: `AGE-SECRET-KEY-1…` lines (as `age-keygen` writes them);
    /// blank lines and `#` comments are ignored. Errors name the line, never its text.
    pub fn parse_x25519_file(text: &str) -> Result<Identity, KeysError> {
        let mut ids = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let id = age::x25519::Identity::from_str(l)
                .map_err(|e| KeysError::BadIdentity { line: i + 1, reason: e.to_string() })?;
            ids.push(id);
        }
        if ids.is_empty() {
            return Err(KeysError::BadIdentity { line: 0, reason: "no AGE-SECRET-KEY-1 identity in the file".into() });
        }
        Ok(Identity::X25519(ids))
    }

    /// The stanza kind this identity opens.
    pub fn kind(&self) -> &str {
        match self {
            Identity::Key(_) => KIND_KEY,
            Identity::Passphrase(_) => KIND_PASSPHRASE,
            Identity::X25519(_) => KIND_X25519,
            Identity::Provider(p) => p.kind(),
        }
    }

    /// Opens `stanza` (at `index` in the list, for messages): `Ok(None)` if it is of
    /// another kind or for another key; an error if it is malformed or asks for more
    /// passphrase work than [`MAX_KDF_M_COST_KIB`], [`MAX_KDF_T_COST`], [`MAX_KDF_P_COST`].
    pub fn unwrap(&self, index: usize, stanza: &Stanza) -> Result<Option<DataKey>, KeysError> {
        if stanza.kind != self.kind() {
            return Ok(None);
        }
        let bad = |reason: &str| KeysError::BadStanza { index, kind: stanza.kind.clone(), reason: reason.into() };
        match self {
            Identity::Key(k) => {
                if stanza.salt.len() != onnx_protect_crypto::STANZA_SALT_LEN {
                    return Err(bad("its salt is not 16 bytes"));
                }
                Ok(k.unwrap_data_key(WrapKind::Key, &stanza.salt, stanza.tier, &stanza.body))
            }
            Identity::Passphrase(p) => {
                let kdf = stanza.kdf.as_ref().ok_or_else(|| bad("it has no Argon2id parameters"))?;
                if stanza.salt.len() != onnx_protect_crypto::STANZA_SALT_LEN {
                    return Err(bad("its salt is not 16 bytes"));
                }
                check_kdf_limits(kdf)?;
                kdf.validate()?;
                let w = MasterKey::from_passphrase(p, kdf)?;
                Ok(w.unwrap_data_key(WrapKind::Passphrase, &stanza.salt, stanza.tier, &stanza.body))
            }
            Identity::X25519(ids) => age_unwrap(ids, &stanza.body).map_err(|r| bad(&r)),
            Identity::Provider(p) => Ok(p.unwrap(stanza)?.map(|b| DataKey::from_bytes(*b))),
        }
    }
}

/// A new age X25519 identity: the text of its identity file (as `age-keygen` writes it:
/// comments with the public recipient, then the `AGE-SECRET-KEY-1…` line) and its public
/// recipient (`age1…`).
pub fn new_x25519_identity_file() -> (Zeroizing<String>, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let text = Zeroizing::new(format!(
        "# onnx-protect X25519 identity (age format); keep it secret\n# public key: {public}\n{}\n",
        id.to_string().expose_secret()
    ));
    (text, public)
}

fn age_wrap(r: &age::x25519::Recipient, data_key: &DataKey) -> Result<Vec<u8>, KeysError> {
    let age_err = |e: &dyn std::fmt::Display| KeysError::Provider { provider: "age".into(), reason: e.to_string() };
    let enc = age::Encryptor::with_recipients(std::iter::once(r as &dyn age::Recipient)).map_err(|e| age_err(&e))?;
    let mut out = Vec::with_capacity(256);
    let mut w = enc.wrap_output(&mut out).map_err(|e| age_err(&e))?;
    w.write_all(data_key.to_bytes().as_ref()).map_err(|e| age_err(&e))?;
    w.finish().map_err(|e| age_err(&e))?;
    Ok(out)
}

/// Opens an age body with any of `ids`: `Ok(None)` if none matches or the body is not a
/// well-formed age file for them; an error (the reason) if it opens but its payload is not
/// exactly 32 bytes, which only a modified stanza holds (docs/format.md §8).
fn age_unwrap(ids: &[age::x25519::Identity], body: &[u8]) -> Result<Option<DataKey>, String> {
    // A buffered reader: the age crate reads an unbuffered header byte by byte and
    // parses it again after each read.
    let Ok(dec) = age::Decryptor::new_buffered(body) else { return Ok(None) };
    if dec.is_scrypt() {
        return Ok(None);
    }
    let Ok(mut reader) = dec.decrypt(ids.iter().map(|i| i as &dyn age::Identity)) else { return Ok(None) };
    let mut plain = Zeroizing::new(Vec::with_capacity(33));
    if reader.by_ref().take(33).read_to_end(&mut plain).is_err() {
        return Ok(None);
    }
    let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| {
        format!(
            "its age payload is {} bytes, not 32",
            if plain.len() > 32 { "more than 32".into() } else { plain.len().to_string() }
        )
    })?;
    Ok(Some(DataKey::from_bytes(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dk() -> DataKey {
        DataKey::from_bytes([0x42; 32])
    }

    #[test]
    fn key_stanza_opens_with_its_key_only() {
        let k = MasterKey::from_bytes([1; 32]);
        let s = Recipient::Key(k.clone()).wrap(2, &dk()).unwrap();
        assert_eq!(s.kind, "key");
        assert_eq!(s.label, hex(&k.fingerprint()));
        assert_eq!(*Identity::Key(k).unwrap(0, &s).unwrap().unwrap().to_bytes(), [0x42; 32]);
        assert!(Identity::Key(MasterKey::from_bytes([2; 32])).unwrap(0, &s).unwrap().is_none());
        assert!(Identity::Passphrase(Zeroizing::new(b"x".to_vec())).unwrap(0, &s).unwrap().is_none());
    }

    #[test]
    fn x25519_stanza_is_an_age_file_for_its_identity() {
        let id = age::x25519::Identity::generate();
        let r = Recipient::parse_public(&id.to_public().to_string()).unwrap();
        let s = r.wrap(1, &dk()).unwrap();
        assert!(s.body.starts_with(b"age-encryption.org/v1\n-> X25519 "));
        assert!(s.label.starts_with("age1"));
        let opened = Identity::X25519(vec![id.clone()]).unwrap(0, &s).unwrap().unwrap();
        assert_eq!(*opened.to_bytes(), [0x42; 32]);
        let other = Identity::X25519(vec![age::x25519::Identity::generate()]);
        assert!(other.unwrap(0, &s).unwrap().is_none());
        let mut broken = s.clone();
        let last = broken.body.len() - 1;
        broken.body[last] ^= 1;
        assert!(Identity::X25519(vec![id]).unwrap(0, &broken).unwrap().is_none());
    }

    #[test]
    fn over_limit_passphrase_parameters_are_refused_before_argon2() {
        let params = KdfParams { salt: [0; 16], m_cost_kib: 1 << 20, t_cost: 64, p_cost: 1 };
        let s = Stanza {
            kind: "passphrase".into(),
            tier: 1,
            label: String::new(),
            salt: vec![0; 16],
            kdf: Some(params),
            body: vec![0; 48],
        };
        let t = std::time::Instant::now();
        let e = Identity::Passphrase(Zeroizing::new(b"pw".to_vec())).unwrap(0, &s).unwrap_err();
        assert!(matches!(e, KeysError::KdfOverLimit { .. }), "{e}");
        // Refused without running Argon2id: far below a single pass at 1 GiB.
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn recipients_file_skips_comments_and_names_bad_lines() {
        let a = age::x25519::Identity::generate().to_public().to_string();
        let text = format!("# team\n\n{a}\n  {a}  \n");
        assert_eq!(Recipient::parse_file(&text).unwrap().len(), 2);
        let e = Recipient::parse_file("age1notarecipient\n").err().unwrap();
        assert!(e.to_string().contains("age1notarecipient"), "{e}");
    }

    #[test]
    fn identity_file_errors_name_the_line_not_the_secret() {
        let id = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let good = id.to_string().expose_secret().to_string();
        let text = format!("# created\n{good}\nAGE-SECRET-KEY-1BROKEN\n");
        let e = Identity::parse_x25519_file(&text).err().unwrap().to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(!e.contains("BROKEN"), "{e}");
        assert!(Identity::parse_x25519_file("# nothing\n").is_err());
        assert!(Identity::parse_x25519_file(&good).is_ok());
    }
}
