//! The PKCS#11 provider (docs/keys.md, "PKCS#11 tokens"; docs/format.md §8): a data key
//! encrypted with AES-256-GCM (`CKM_AES_GCM`) under a secret key that never leaves a
//! token, selected by an RFC 7512 `pkcs11:` URI.
//!
//! Stanza `pkcs11`: `body = IV ‖ C_Encrypt(CKM_AES_GCM{IV, AAD, 128-bit tag}, DK_tier)`,
//! with a 12-byte random IV and `AAD = "onnx-protect/v2/wrap/pkcs11" ‖ u32be(tier)`:
//! 12 + 32 + 16 = 60 bytes. `label` is the URI's path (token and object), never its
//! query (module path, PIN).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::error::KeysError;
use crate::stanza::{Provider, Stanza, Wrapped};

/// Stanza kind of a key held in a PKCS#11 token.
pub const KIND_PKCS11: &str = "pkcs11";
const GCM_IV_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;
pub(crate) const BODY_LEN: usize = GCM_IV_LEN + 32 + GCM_TAG_LEN;
const AAD_PREFIX: &[u8] = b"onnx-protect/v2/wrap/pkcs11";

/// Where the PIN comes from.
#[derive(Clone)]
enum Pin {
    None,
    Value(Zeroizing<String>),
    File(PathBuf),
    Env(String),
}

/// A parsed RFC 7512 `pkcs11:` URI naming one secret key in one token.
///
/// Path attributes understood: `token`, `manufacturer`, `model`, `serial`, `slot-id`
/// (which token), `object`, `id` (which key; at least one), `type` (`secret-key` if
/// given). Query attributes: `module-path` (required), `pin-value`, `pin-source` (a file
/// path, a `file:` URI, or `env:NAME`, an environment variable). Any other attribute is
/// refused.
#[derive(Clone)]
pub struct Pkcs11Uri {
    token: Option<String>,
    manufacturer: Option<String>,
    model: Option<String>,
    serial: Option<String>,
    slot_id: Option<u64>,
    object: Option<String>,
    id: Option<Vec<u8>>,
    module: PathBuf,
    pin: Pin,
}

impl std::fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pkcs11Uri({})", self.label())
    }
}

/// `uri` with the value of a `pin-value` attribute replaced, for messages.
fn redact(uri: &str) -> String {
    let Some((path, query)) = uri.split_once('?') else { return uri.to_string() };
    let q: Vec<String> = query
        .split('&')
        .map(|a| if a.starts_with("pin-value=") { "pin-value=(hidden)".to_string() } else { a.to_string() })
        .collect();
    format!("{path}?{}", q.join("&"))
}

fn pct_decode(value: &str) -> Option<Vec<u8>> {
    let b = value.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn pct_encode(bytes: &[u8], all: bool) -> String {
    bytes
        .iter()
        .map(|&c| {
            if !all && (c.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,=&".contains(&c)) {
                (c as char).to_string()
            } else {
                format!("%{c:02x}")
            }
        })
        .collect()
}

impl Pkcs11Uri {
    /// Parses a `pkcs11:` URI.
    pub fn parse(uri: &str) -> Result<Pkcs11Uri, KeysError> {
        let t = uri.trim();
        let bad = |reason: String| KeysError::BadPkcs11Uri { uri: redact(t), reason };
        let rest = t.strip_prefix("pkcs11:").ok_or_else(|| bad("does not start with pkcs11:".into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut u = Pkcs11Uri {
            token: None,
            manufacturer: None,
            model: None,
            serial: None,
            slot_id: None,
            object: None,
            id: None,
            module: PathBuf::new(),
            pin: Pin::None,
        };
        let text = |name: &str, v: &str| -> Result<String, KeysError> {
            let bytes = pct_decode(v).ok_or_else(|| bad(format!("{name}: bad percent-encoding")))?;
            String::from_utf8(bytes).map_err(|_| bad(format!("{name}: not UTF-8")))
        };
        let mut seen = Vec::new();
        for (sep, part) in [(';', path), ('&', query)] {
            for attr in part.split(sep).filter(|a| !a.is_empty()) {
                let (name, value) = attr.split_once('=').ok_or_else(|| bad(format!("'{attr}' is not name=value")))?;
                if seen.contains(&name) {
                    return Err(bad(format!("{name} is given twice")));
                }
                seen.push(name);
                match (sep, name) {
                    (';', "token") => u.token = Some(text(name, value)?),
                    (';', "manufacturer") => u.manufacturer = Some(text(name, value)?),
                    (';', "model") => u.model = Some(text(name, value)?),
                    (';', "serial") => u.serial = Some(text(name, value)?),
                    (';', "slot-id") => {
                        u.slot_id = Some(text(name, value)?.parse().map_err(|_| bad("slot-id is not a number".into()))?)
                    }
                    (';', "object") => u.object = Some(text(name, value)?),
                    (';', "id") => {
                        u.id = Some(pct_decode(value).ok_or_else(|| bad("id: bad percent-encoding".into()))?)
                    }
                    (';', "type") => {
                        if text(name, value)? != "secret-key" {
                            return Err(bad("type must be secret-key (an AES key)".into()));
                        }
                    }
                    ('&', "module-path") => u.module = PathBuf::from(text(name, value)?),
                    ('&', "pin-value") => u.pin = Pin::Value(Zeroizing::new(text(name, value)?)),
                    ('&', "pin-source") => {
                        let v = text(name, value)?;
                        u.pin = match v.strip_prefix("env:") {
                            Some(var) => Pin::Env(var.to_string()),
                            None => Pin::File(PathBuf::from(
                                v.strip_prefix("file://").or(v.strip_prefix("file:")).unwrap_or(&v),
                            )),
                        };
                    }
                    ('&', "module-name") => {
                        return Err(bad("module-name is not supported: give module-path=/path/to/module.so".into()))
                    }
                    _ => return Err(bad(format!("unknown attribute {name}"))),
                }
            }
        }
        if seen.contains(&"pin-value") && seen.contains(&"pin-source") {
            return Err(bad("give pin-value or pin-source, not both".into()));
        }
        if u.module.as_os_str().is_empty() {
            return Err(bad("no module-path=/path/to/pkcs11-module.so in its query".into()));
        }
        if u.object.is_none() && u.id.is_none() {
            return Err(bad("it names no key: give object=LABEL or id=%xx...".into()));
        }
        Ok(u)
    }

    /// The public part: `pkcs11:` with the token and key attributes, in a fixed order
    /// (what stanzas carry as their label).
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        let mut put = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{name}={v}"));
            }
        };
        put("token", self.token.as_deref().map(|v| pct_encode(v.as_bytes(), false)));
        put("manufacturer", self.manufacturer.as_deref().map(|v| pct_encode(v.as_bytes(), false)));
        put("model", self.model.as_deref().map(|v| pct_encode(v.as_bytes(), false)));
        put("serial", self.serial.as_deref().map(|v| pct_encode(v.as_bytes(), false)));
        put("slot-id", self.slot_id.map(|v| v.to_string()));
        put("object", self.object.as_deref().map(|v| pct_encode(v.as_bytes(), false)));
        put("id", self.id.as_deref().map(|v| pct_encode(v, true)));
        format!("pkcs11:{}", parts.join(";"))
    }

    fn err(&self, reason: impl Into<String>) -> KeysError {
        KeysError::Provider { provider: format!("PKCS#11 {}", self.label()), reason: reason.into() }
    }

    fn pin(&self) -> Result<Option<Zeroizing<String>>, KeysError> {
        match &self.pin {
            Pin::None => Ok(None),
            Pin::Value(v) => Ok(Some(v.clone())),
            Pin::Env(var) => std::env::var(var)
                .map(|v| Some(Zeroizing::new(v)))
                .map_err(|_| self.err(format!("pin-source env:{var}: the environment variable is not set"))),
            Pin::File(p) => {
                let text = Zeroizing::new(
                    std::fs::read_to_string(p)
                        .map_err(|e| self.err(format!("cannot read pin-source {}: {e}", p.display())))?,
                );
                let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
                Ok(Some(Zeroizing::new(line.to_string())))
            }
        }
    }
}

/// Loaded and initialised modules, kept for the life of the process: a module is
/// initialised once per process (`C_Initialize`), whichever keys use it.
fn module(path: &Path) -> Result<Pkcs11, CkError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut m = MODULES.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = m.get(path) {
        return Ok(p.clone());
    }
    let p = Pkcs11::new(path)?;
    match p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(e),
    }
    m.insert(path.to_path_buf(), p.clone());
    Ok(p)
}

/// A secret key in a PKCS#11 token: a [`Provider`] of `pkcs11` stanzas.
#[derive(Debug, Clone)]
pub struct Pkcs11Key {
    uri: Pkcs11Uri,
}

impl Pkcs11Key {
    /// The key `uri` names; the token is reached only when a key is wrapped or unwrapped.
    pub fn new(uri: Pkcs11Uri) -> Pkcs11Key {
        Pkcs11Key { uri }
    }

    /// Parses `uri` ([`Pkcs11Uri::parse`]).
    pub fn parse(uri: &str) -> Result<Pkcs11Key, KeysError> {
        Ok(Pkcs11Key::new(Pkcs11Uri::parse(uri)?))
    }

    /// The URI's public part.
    pub fn label(&self) -> String {
        self.uri.label()
    }

    fn ck(&self, what: &str) -> impl Fn(CkError) -> KeysError + '_ {
        let what = what.to_string();
        move |e| self.uri.err(format!("{what}: {e}"))
    }

    /// The one slot whose token matches the URI.
    fn slot(&self, p: &Pkcs11) -> Result<Slot, KeysError> {
        let u = &self.uri;
        let mut found = Vec::new();
        for slot in p.get_slots_with_token().map_err(self.ck("listing the slots"))? {
            if u.slot_id.is_some_and(|id| id != slot.id()) {
                continue;
            }
            let info = p.get_token_info(slot).map_err(self.ck("reading a token's information"))?;
            let same = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have.trim_end());
            if same(&u.token, info.label())
                && same(&u.manufacturer, info.manufacturer_id())
                && same(&u.model, info.model())
                && same(&u.serial, info.serial_number())
            {
                found.push(slot);
            }
        }
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(u.err("no token in this module matches the URI")),
            many => {
                Err(u.err(format!("{} tokens match the URI; name one with token=, serial= or slot-id=", many.len())))
            }
        }
    }

    /// A session logged in as the user (if the token needs a login).
    fn session(&self, rw: bool) -> Result<Session, KeysError> {
        let p = module(&self.uri.module).map_err(|e| {
            self.uri.err(format!("cannot load and initialise the module {}: {e}", self.uri.module.display()))
        })?;
        let slot = self.slot(&p)?;
        let session =
            if rw { p.open_rw_session(slot) } else { p.open_ro_session(slot) }.map_err(self.ck("opening a session"))?;
        let info = p.get_token_info(slot).map_err(self.ck("reading the token's information"))?;
        if info.login_required() {
            let pin = self
                .uri
                .pin()?
                .ok_or_else(|| self.uri.err("the token needs a PIN: add pin-source=FILE or pin-source=env:VAR"))?;
            let pin = AuthPin::from(pin.as_str());
            match session.login(UserType::User, Some(&pin)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => return Err(self.uri.err("the PIN is incorrect")),
                Err(e) => return Err(self.ck("logging in")(e)),
            }
        }
        Ok(session)
    }

    fn template(&self) -> Vec<Attribute> {
        let mut t = vec![Attribute::Class(ObjectClass::SECRET_KEY)];
        if let Some(o) = &self.uri.object {
            t.push(Attribute::Label(o.as_bytes().to_vec()));
        }
        if let Some(id) = &self.uri.id {
            t.push(Attribute::Id(id.clone()));
        }
        t
    }

    fn find(&self, session: &Session) -> Result<ObjectHandle, KeysError> {
        let found = session.find_objects(&self.template()).map_err(self.ck("searching for the key"))?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(self.uri.err("the token holds no secret key with this object/id")),
            many => Err(self.uri.err(format!("{} secret keys match; give both object= and id=", many.len()))),
        }
    }

    /// Creates the key the URI names: AES-256, on the token, sensitive and not
    /// extractable, for encryption and decryption. Refuses if a key matches already.
    pub fn generate(&self) -> Result<(), KeysError> {
        let session = self.session(true)?;
        if !session.find_objects(&self.template()).map_err(self.ck("searching for the key"))?.is_empty() {
            return Err(self.uri.err("the token already holds a secret key with this object/id"));
        }
        let mut t = self.template();
        t.extend([
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32u64.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ]);
        t.retain(|a| !matches!(a, Attribute::Class(_)));
        session.generate_key(&Mechanism::AesKeyGen, &t).map_err(self.ck("generating the key"))?;
        Ok(())
    }
}

fn aad(tier: u32) -> Vec<u8> {
    let mut a = AAD_PREFIX.to_vec();
    a.extend_from_slice(&tier.to_be_bytes());
    a
}

impl Provider for Pkcs11Key {
    fn kind(&self) -> &str {
        KIND_PKCS11
    }

    fn describe(&self) -> String {
        self.label()
    }

    fn wrap(&self, tier: u32, data_key: &[u8; 32]) -> Result<Wrapped, KeysError> {
        let session = self.session(false)?;
        let key = self.find(&session)?;
        let mut iv = [0u8; GCM_IV_LEN];
        getrandom::getrandom(&mut iv).map_err(|e| self.uri.err(format!("no random IV: {e}")))?;
        let aad = aad(tier);
        let ct = {
            let params = GcmParams::new(&mut iv, &aad, ((GCM_TAG_LEN * 8) as u64).into())
                .map_err(self.ck("AES-GCM parameters"))?;
            session.encrypt(&Mechanism::AesGcm(params), key, data_key).map_err(self.ck("C_Encrypt (CKM_AES_GCM)"))?
        };
        // `iv` now holds the IV used: a token that generates GCM IVs itself writes its own
        // into the parameters.
        if ct.len() != 32 + GCM_TAG_LEN {
            return Err(self.uri.err(format!("the token returned {} bytes of AES-GCM output, not 48", ct.len())));
        }
        let mut body = iv.to_vec();
        body.extend_from_slice(&ct);
        Ok(Wrapped { body, label: self.label() })
    }

    fn unwrap(&self, stanza: &Stanza) -> Result<Option<Zeroizing<[u8; 32]>>, KeysError> {
        if stanza.body.len() != BODY_LEN {
            return Err(KeysError::BadStanza {
                index: 0,
                kind: KIND_PKCS11.into(),
                reason: format!("its body has {} bytes, not {BODY_LEN}", stanza.body.len()),
            });
        }
        let session = self.session(false)?;
        let key = self.find(&session)?;
        let (iv, ct) = stanza.body.split_at(GCM_IV_LEN);
        let mut iv = iv.to_vec();
        let aad = aad(stanza.tier);
        let params =
            GcmParams::new(&mut iv, &aad, ((GCM_TAG_LEN * 8) as u64).into()).map_err(self.ck("AES-GCM parameters"))?;
        match session.decrypt(&Mechanism::AesGcm(params), key, ct) {
            Ok(plain) => {
                let plain = Zeroizing::new(plain);
                let dk: [u8; 32] = plain
                    .as_slice()
                    .try_into()
                    .map_err(|_| self.uri.err(format!("the token returned {} bytes, not 32", plain.len())))?;
                Ok(Some(Zeroizing::new(dk)))
            }
            // Another key's stanza (or a changed one): the tag does not verify. SoftHSM2
            // answers CKR_GENERAL_ERROR for that; the session, login and key were fine.
            Err(CkError::Pkcs11(
                RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange | RvError::GeneralError,
                _,
            )) => Ok(None),
            Err(e) => Err(self.ck("C_Decrypt (CKM_AES_GCM)")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_and_labels_hide_the_query() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=My%20Token;object=model-kek;id=%01%02;type=secret-key?module-path=/usr/lib/x.so&pin-value=1234",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("My Token"));
        assert_eq!(u.id.as_deref(), Some(&[1u8, 2][..]));
        assert_eq!(u.module, PathBuf::from("/usr/lib/x.so"));
        assert_eq!(u.label(), "pkcs11:token=My%20Token;object=model-kek;id=%01%02");
        assert_eq!(Pkcs11Uri::parse(&u.label().replace("pkcs11:", "pkcs11:slot-id=3;")).err().unwrap().to_string(),
            "PKCS#11 URI 'pkcs11:slot-id=3;token=My%20Token;object=model-kek;id=%01%02': no module-path=/path/to/pkcs11-module.so in its query");
        let u = Pkcs11Uri::parse("pkcs11:object=k?module-path=/m.so&pin-source=env:HSM_PIN").unwrap();
        assert!(matches!(&u.pin, Pin::Env(v) if v == "HSM_PIN"));
        let u = Pkcs11Uri::parse("pkcs11:object=k?module-path=/m.so&pin-source=file:///run/pin").unwrap();
        assert!(matches!(&u.pin, Pin::File(p) if p == Path::new("/run/pin")));
    }

    #[test]
    fn bad_uris_are_refused_without_showing_the_pin() {
        let cases = [
            ("object=k?module-path=/m.so", "does not start with pkcs11:"),
            ("pkcs11:token=t?module-path=/m.so", "names no key"),
            ("pkcs11:object=k", "no module-path"),
            ("pkcs11:object=k;object=j?module-path=/m.so", "object is given twice"),
            ("pkcs11:object=k;colour=red?module-path=/m.so", "unknown attribute colour"),
            ("pkcs11:object=k;type=private?module-path=/m.so", "type must be secret-key"),
            ("pkcs11:object=%zz?module-path=/m.so", "bad percent-encoding"),
            ("pkcs11:object=k?module-name=softhsm2", "module-name is not supported"),
            ("pkcs11:object=k;slot-id=x?module-path=/m.so", "slot-id is not a number"),
            ("pkcs11:object=k?module-path=/m.so&pin-value=SECRET99&pin-source=/f", "not both"),
        ];
        for (uri, want) in cases {
            let e = Pkcs11Uri::parse(uri).err().unwrap().to_string();
            assert!(e.contains(want), "{uri}: {e}");
            assert!(!e.contains("SECRET99"), "{e}");
        }
    }
}
