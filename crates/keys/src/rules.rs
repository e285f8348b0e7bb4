//! What docs/format.md §8 requires of a stanza list without a key, at §12 step 1, before
//! any key work: every stanza within the size caps whatever its kind; each stanza of a
//! kind the format defines as its kind requires ([`Stanza::check`]; a stanza of another
//! kind is skipped whole otherwise); at most [`MAX_COSTLY_STANZAS`] stanzas of each kind
//! whose every try is costly ([`costly_kind`]). A stanza that breaks a rule is
//! [`KeysError::BadStanza`] ("modified").

use onnx_protect_crypto::{STANZA_SALT_LEN, WRAPPED_LEN};

use crate::command::{check_label, KIND_COMMAND, MAX_WRAPPED_LEN};
use crate::error::KeysError;
use crate::pkcs11::{BODY_LEN as PKCS11_BODY_LEN, KIND_PKCS11};
use crate::plugin::{KIND_AGE_PLUGIN, MAX_PLUGIN_BODY};
use crate::recipient::{check_kdf_limits, KIND_KEY, KIND_PASSPHRASE, KIND_X25519};
use crate::stanza::Stanza;

/// Stanza kind of a P-256 key held in a TPM 2.0 (the `onnx-protect-tpm` crate wraps and opens it).
pub const KIND_TPM: &str = "tpm";
/// The body of a `tpm` stanza: a 33-byte ephemeral point, the 32-byte wrapped key and a
/// 16-byte tag.
pub const TPM_BODY_LEN: usize = 81;

/// The longest `kind` of any stanza.
pub const MAX_KIND_LEN: usize = 64;
/// The longest `label` of any stanza.
pub const MAX_STANZA_LABEL_LEN: usize = 4096;
/// The longest `body` of any stanza (the most a defined kind allows: `command`, `age-plugin`).
pub const MAX_STANZA_BODY_LEN: usize = 16 * 1024;

/// The largest body of an `x25519` stanza (an age file of one X25519 stanza, age's grease
/// stanza and a 32-byte payload is under 500 bytes).
pub const MAX_X25519_BODY: usize = 1024;

/// The most stanzas a file may hold of each kind whose every try is costly
/// ([`costly_kind`]).
pub const MAX_COSTLY_STANZAS: usize = 8;

/// The stanza kinds docs/format.md §8 defines, whose rules a reader checks without a key.
const DEFINED_KINDS: [&str; 7] =
    [KIND_KEY, KIND_PASSPHRASE, KIND_X25519, KIND_PKCS11, KIND_COMMAND, KIND_TPM, KIND_AGE_PLUGIN];

/// The kinds whose every try costs seconds or runs something outside this process:
/// Argon2id (`passphrase`), a token (`pkcs11`), a program (`command`, `age-plugin`), a
/// TPM's ECDH (`tpm`).
const COSTLY_KINDS: [&str; 5] = [KIND_PASSPHRASE, KIND_PKCS11, KIND_COMMAND, KIND_TPM, KIND_AGE_PLUGIN];

/// Whether `kind` is one of the stanza kinds docs/format.md §8 defines (`key`,
/// `passphrase`, `x25519`, `pkcs11`, `command`, `tpm`, `age-plugin`); a reader skips any
/// other kind whole.
pub fn is_known_kind(kind: &str) -> bool {
    DEFINED_KINDS.contains(&kind)
}

/// Whether trying a stanza of `kind` is costly (see `COSTLY_KINDS`): a file holds at most
/// [`MAX_COSTLY_STANZAS`] of each such kind (docs/format.md §8).
pub fn costly_kind(kind: &str) -> bool {
    COSTLY_KINDS.contains(&kind)
}

/// Checks a stanza list as docs/format.md §8 requires without a key: each stanza
/// ([`Stanza::check`]), and at most [`MAX_COSTLY_STANZAS`] of each costly kind.
pub fn check_stanzas(stanzas: &[Stanza]) -> Result<(), KeysError> {
    for (i, s) in stanzas.iter().enumerate() {
        s.check(i)?;
    }
    for kind in COSTLY_KINDS {
        let count = stanzas.iter().filter(|s| s.kind == kind).count();
        if count > MAX_COSTLY_STANZAS {
            return Err(KeysError::TooManyStanzas { kind: kind.to_string(), count, max: MAX_COSTLY_STANZAS });
        }
    }
    Ok(())
}

impl Stanza {
    /// Checks what docs/format.md §8 requires of a stanza without a key: the size caps
    /// of every stanza, and the rules of its kind if the format defines it (stanzas of
    /// other kinds are not examined further): `index` is its place in the list, for the
    /// message.
    pub fn check(&self, index: usize) -> Result<(), KeysError> {
        let bad = |reason: String| KeysError::BadStanza { index, kind: self.kind.clone(), reason };
        let cap = |what: &str, len: usize, max: usize| {
            if len > max {
                Err(bad(format!("its {what} has {len} bytes ({max} at most)")))
            } else {
                Ok(())
            }
        };
        cap("kind", self.kind.len(), MAX_KIND_LEN)?;
        cap("label", self.label.len(), MAX_STANZA_LABEL_LEN)?;
        cap("body", self.body.len(), MAX_STANZA_BODY_LEN)?;
        let salt = |want: usize| {
            if self.salt.len() == want {
                Ok(())
            } else {
                Err(bad(format!("its salt has {} bytes, not {want}", self.salt.len())))
            }
        };
        let body = |min: usize, max: usize| {
            if (min..=max).contains(&self.body.len()) {
                Ok(())
            } else if min == max {
                Err(bad(format!("its body has {} bytes, not {min}", self.body.len())))
            } else {
                Err(bad(format!("its body has {} bytes ({min} to {max} allowed)", self.body.len())))
            }
        };
        // A `kdf` on a kind other than `passphrase` is refused where the stanza is decoded.
        match self.kind.as_str() {
            KIND_KEY => {
                salt(STANZA_SALT_LEN)?;
                body(WRAPPED_LEN, WRAPPED_LEN)?;
            }
            KIND_PASSPHRASE => {
                salt(STANZA_SALT_LEN)?;
                body(WRAPPED_LEN, WRAPPED_LEN)?;
                if !self.label.is_empty() {
                    return Err(bad("its label is not empty".into()));
                }
                let kdf = self.kdf.as_ref().ok_or_else(|| bad("it has no Argon2id parameters".into()))?;
                check_kdf_limits(kdf)?;
                kdf.validate().map_err(|e| bad(e.to_string()))?;
            }
            KIND_X25519 => {
                salt(0)?;
                check_age_body(&self.body).map_err(bad)?;
            }
            KIND_PKCS11 => {
                salt(0)?;
                body(PKCS11_BODY_LEN, PKCS11_BODY_LEN)?;
            }
            KIND_COMMAND => {
                salt(0)?;
                body(1, MAX_WRAPPED_LEN)?;
                check_label(&self.label).map_err(bad)?;
            }
            KIND_TPM => {
                salt(0)?;
                body(TPM_BODY_LEN, TPM_BODY_LEN)?;
            }
            KIND_AGE_PLUGIN => {
                salt(0)?;
                body(0, MAX_PLUGIN_BODY)?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The age file of an `x25519` stanza (docs/format.md §8): at most [`MAX_X25519_BODY`]
/// bytes, and among its header lines (those after the first, up to the first that starts
/// with `---`) exactly one that starts with `-> X25519 ` and at most one other that starts
/// with `-> ` (age's grease stanza). Base64 stanza bodies never start with `-`, so these
/// lines are exactly the stanzas.
fn check_age_body(body: &[u8]) -> Result<(), String> {
    if body.len() > MAX_X25519_BODY {
        return Err(format!("its age file has {} bytes ({MAX_X25519_BODY} at most)", body.len()));
    }
    let (mut x25519, mut other) = (0usize, 0usize);
    for line in body.split(|&b| b == b'\n').skip(1) {
        if line.starts_with(b"---") {
            break;
        }
        if line.starts_with(b"-> X25519 ") {
            x25519 += 1;
        } else if line.starts_with(b"-> ") {
            other += 1;
        }
    }
    if x25519 != 1 || other > 1 {
        return Err(format!(
            "its age header has {x25519} X25519 stanzas and {other} others (one X25519 stanza and at most one \
             other, age's grease, allowed)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stanza(kind: &str, body: usize) -> Stanza {
        Stanza { kind: kind.into(), tier: 1, label: String::new(), salt: Vec::new(), kdf: None, body: vec![0; body] }
    }

    #[test]
    fn every_kind_the_format_defines_is_known_and_checked_without_a_key() {
        for kind in DEFINED_KINDS {
            assert!(is_known_kind(kind), "{kind}");
        }
        assert!(!is_known_kind("future"));
        let bad = |s: Stanza| matches!(s.check(3), Err(KeysError::BadStanza { index: 3, .. }));
        assert!(stanza(KIND_TPM, TPM_BODY_LEN).check(0).is_ok());
        assert!(bad(stanza(KIND_TPM, TPM_BODY_LEN - 1)) && bad(stanza(KIND_TPM, TPM_BODY_LEN + 1)));
        assert!(bad(Stanza { salt: vec![0; 16], ..stanza(KIND_TPM, TPM_BODY_LEN) }));
        assert!(stanza(KIND_AGE_PLUGIN, MAX_PLUGIN_BODY).check(0).is_ok());
        assert!(bad(stanza(KIND_AGE_PLUGIN, MAX_PLUGIN_BODY + 1)));
        assert!(bad(Stanza { salt: vec![0; 16], ..stanza(KIND_AGE_PLUGIN, 10) }));
    }

    #[test]
    fn every_stanza_is_within_the_caps_whatever_its_kind() {
        let bad = |s: Stanza| matches!(s.check(0), Err(KeysError::BadStanza { .. }));
        assert!(stanza("future", MAX_STANZA_BODY_LEN).check(0).is_ok());
        assert!(bad(stanza("future", MAX_STANZA_BODY_LEN + 1)));
        assert!(bad(stanza(&"f".repeat(MAX_KIND_LEN + 1), 1)));
        assert!(bad(Stanza { label: "l".repeat(MAX_STANZA_LABEL_LEN + 1), ..stanza("future", 1) }));
    }

    #[test]
    fn at_most_eight_stanzas_of_each_costly_kind() {
        for kind in COSTLY_KINDS {
            assert!(costly_kind(kind));
            let body = if kind == KIND_TPM { TPM_BODY_LEN } else { 1 };
            let mut list: Vec<Stanza> = (0..MAX_COSTLY_STANZAS).map(|_| stanza(kind, body)).collect();
            // Only the count matters here: shape errors of the kind are checked first.
            let count = |list: &[Stanza]| match check_stanzas(list) {
                Err(KeysError::TooManyStanzas { count, .. }) => Some(count),
                _ => None,
            };
            assert_eq!(count(&list), None, "{kind}");
            list.push(stanza(kind, body));
            if kind != KIND_PASSPHRASE && kind != KIND_PKCS11 {
                assert_eq!(count(&list), Some(MAX_COSTLY_STANZAS + 1), "{kind}");
            }
        }
        assert!(!costly_kind(KIND_KEY) && !costly_kind(KIND_X25519) && !costly_kind("future"));
    }
}
