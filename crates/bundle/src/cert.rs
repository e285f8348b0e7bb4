//! X.509 certificate chains of model-signing's certificate flow (`model_signing sign
//! certificate`, `verify certificate`).
//!
//! A bundle signed with a certificate carries, instead of a public-key hint,
//! `verificationMaterial.x509CertificateChain.certificates`: the signing (leaf) certificate
//! first, then the certificates given to establish its chain (intermediates), each as
//! `{"rawBytes": base64(DER)}`. The verifier holds the trusted certificates (roots) and
//! checks, as model-signing 1.1.1 does (OpenSSL's path validation, then its own key-usage
//! check):
//!
//! * a path from the leaf to a self-signed trusted certificate through the bundle's other
//!   certificates and the trusted ones: each certificate's issuer name is the next one's
//!   subject and its signature verifies with the next one's key (ECDSA P-256 or P-384, with
//!   SHA-256, SHA-384 or SHA-512);
//! * every certificate of the path valid at the verification time, which is the leaf's
//!   `notBefore` (model-signing's choice: a bundle carries no trusted signing time, so a leaf
//!   that has expired since still verifies);
//! * every issuer a CA (basic constraints `cA` true), allowed to sign certificates (key usage
//!   `keyCertSign` when key usage is present), within its path length constraint;
//! * no certificate with a critical extension this module does not process, nor with name
//!   constraints (not enforced here, so refused);
//! * the leaf usable for signing: key usage `digitalSignature`, or extended key usage
//!   `codeSigning`;
//! * the leaf's key is ECDSA P-256 or P-384: the DSSE signature is then checked with it.
//!
//! Decoding is `x509-cert`'s (strict DER); signatures are RustCrypto's `p256`/`p384`.

use const_oid::db::rfc5280 as ext_oid;
use const_oid::db::rfc5912::{ECDSA_WITH_SHA_256, ECDSA_WITH_SHA_384, ECDSA_WITH_SHA_512};
use const_oid::ObjectIdentifier;
use sha2::Digest;
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use x509_cert::Certificate;

use crate::error::BundleError;
use crate::keys::PublicKey;

/// Longest path accepted, leaf and trusted certificate included.
pub const MAX_PATH: usize = 10;

/// Certificates read from PEM: a leaf, a chain, or the trusted roots.
#[derive(Debug, Clone)]
pub struct Certificates(Vec<Certificate>);

fn cert_error(path: &str, reason: impl Into<String>) -> BundleError {
    BundleError::Key { path: path.to_string(), reason: reason.into() }
}

impl Certificates {
    /// Every `CERTIFICATE` block of a PEM text (at least one; text between blocks, such as
    /// the comments of a CA bundle, is skipped). `name` is used in errors.
    pub fn from_pem(text: &[u8], name: &str) -> Result<Certificates, BundleError> {
        const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
        const END: &str = "-----END CERTIFICATE-----";
        let text = String::from_utf8_lossy(text);
        let mut certs = Vec::new();
        let mut rest = text.as_ref();
        while let Some(a) = rest.find(BEGIN) {
            let n = certs.len() + 1;
            let b = rest[a..].find(END).ok_or_else(|| cert_error(name, format!("certificate {n}: no {END} line")))?
                + a
                + END.len();
            let cert = Certificate::from_pem(&rest[a..b])
                .map_err(|e| cert_error(name, format!("certificate {n}: not a PEM X.509 certificate ({e})")))?;
            certs.push(cert);
            rest = &rest[b..];
        }
        if certs.is_empty() {
            return Err(cert_error(name, "no PEM certificate (-----BEGIN CERTIFICATE-----)"));
        }
        Ok(Certificates(certs))
    }

    /// Certificates in DER, as a bundle holds them.
    pub fn from_der_list(ders: &[Vec<u8>], field: &str) -> Result<Certificates, BundleError> {
        let certs = ders
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Certificate::from_der(d).map_err(|e| {
                    BundleError::invalid(&format!("{field}[{i}].rawBytes"), &format!("not an X.509 certificate ({e})"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Certificates(certs))
    }

    /// The certificates appended to `self`.
    pub fn extend(&mut self, more: Certificates) {
        self.0.extend(more.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each certificate in DER.
    pub fn to_der_list(&self) -> Result<Vec<Vec<u8>>, BundleError> {
        self.0
            .iter()
            .map(|c| c.to_der().map_err(|e| cert_error("certificate", format!("cannot encode ({e})"))))
            .collect()
    }

    /// The first certificate's ECDSA key (the leaf's, for a signing chain).
    pub fn leaf_key(&self, name: &str) -> Result<PublicKey, BundleError> {
        let leaf = self.0.first().ok_or_else(|| cert_error(name, "no certificate"))?;
        spki_key(leaf).map_err(|why| cert_error(name, why))
    }

    /// The first certificate's subject (RFC 4514 form).
    pub fn leaf_subject(&self) -> String {
        self.0.first().map(|c| c.tbs_certificate.subject.to_string()).unwrap_or_default()
    }
}

fn untrusted(reason: String) -> BundleError {
    BundleError::Untrusted(reason)
}

fn subject(c: &Certificate) -> String {
    let s = c.tbs_certificate.subject.to_string();
    if s.is_empty() {
        "(empty subject)".into()
    } else {
        format!("'{s}'")
    }
}

/// The certificate's key, when it is ECDSA P-256 or P-384.
fn spki_key(c: &Certificate) -> Result<PublicKey, String> {
    let der = c.tbs_certificate.subject_public_key_info.to_der().map_err(|e| format!("its public key ({e})"))?;
    PublicKey::from_spki_der(&der).ok_or_else(|| format!("the key of {} is not ECDSA P-256 or P-384", subject(c)))
}

/// Whether `child`'s signature verifies with `issuer`'s key.
fn signed_by(child: &Certificate, issuer: &Certificate) -> Result<bool, String> {
    let alg = &child.signature_algorithm;
    if alg != &child.tbs_certificate.signature {
        return Err(format!("{}: its two signature algorithm fields differ", subject(child)));
    }
    let tbs = child.tbs_certificate.to_der().map_err(|e| format!("{}: {e}", subject(child)))?;
    let prehash = match alg.oid {
        ECDSA_WITH_SHA_256 => sha2::Sha256::digest(&tbs).to_vec(),
        ECDSA_WITH_SHA_384 => sha2::Sha384::digest(&tbs).to_vec(),
        ECDSA_WITH_SHA_512 => sha2::Sha512::digest(&tbs).to_vec(),
        other => {
            return Err(format!(
                "{}: signature algorithm {other} (this verifier reads ECDSA with SHA-2)",
                subject(child)
            ))
        }
    };
    let Some(sig) = child.signature.as_bytes() else {
        return Ok(false);
    };
    let key = spki_key(issuer)?;
    Ok(key.verify_prehash_der(&prehash, sig))
}

/// Extensions this module processes; a certificate with another critical one is refused.
const PROCESSED: [ObjectIdentifier; 6] = [
    ext_oid::ID_CE_BASIC_CONSTRAINTS,
    ext_oid::ID_CE_KEY_USAGE,
    ext_oid::ID_CE_EXT_KEY_USAGE,
    ext_oid::ID_CE_SUBJECT_ALT_NAME,
    ext_oid::ID_CE_SUBJECT_KEY_IDENTIFIER,
    ext_oid::ID_CE_AUTHORITY_KEY_IDENTIFIER,
];

/// Validity at `at` (seconds since the epoch) and the extensions every certificate of a path
/// must satisfy.
fn check_common(c: &Certificate, at: u64) -> Result<(), String> {
    let v = &c.tbs_certificate.validity;
    let (from, to) = (v.not_before.to_unix_duration().as_secs(), v.not_after.to_unix_duration().as_secs());
    if at < from || at > to {
        return Err(format!(
            "{} is not valid at the leaf's notBefore ({}): valid from {} to {}",
            subject(c),
            c_time(at),
            v.not_before,
            v.not_after
        ));
    }
    for e in c.tbs_certificate.extensions.as_deref().unwrap_or(&[]) {
        if e.extn_id == ext_oid::ID_CE_NAME_CONSTRAINTS {
            return Err(format!("{} has name constraints, which this verifier does not enforce", subject(c)));
        }
        if e.critical && !PROCESSED.contains(&e.extn_id) {
            return Err(format!(
                "{} has a critical extension {} this verifier does not process",
                subject(c),
                e.extn_id
            ));
        }
    }
    Ok(())
}

fn c_time(secs: u64) -> String {
    x509_cert::der::DateTime::from_unix_duration(std::time::Duration::from_secs(secs))
        .map(|d| d.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

fn extension<'a, T: Decode<'a> + const_oid::AssociatedOid>(c: &'a Certificate) -> Result<Option<T>, String> {
    c.tbs_certificate
        .get::<T>()
        .map(|o| o.map(|(_, v)| v))
        .map_err(|e| format!("{}: extension {} malformed or repeated ({e})", subject(c), T::OID))
}

/// The checks of an issuer `below` certificates above the leaf's issuer (0: the leaf's own).
fn check_issuer(c: &Certificate, at: u64, below: usize) -> Result<(), String> {
    check_common(c, at)?;
    match extension::<BasicConstraints>(c)? {
        Some(bc) if bc.ca => {
            if let Some(n) = bc.path_len_constraint {
                if below > usize::from(n) {
                    return Err(format!(
                        "{} allows {n} intermediate certificate(s) below it, the path has {below}",
                        subject(c)
                    ));
                }
            }
        }
        _ => return Err(format!("{} issued a certificate but is not a CA (basic constraints)", subject(c))),
    }
    if let Some(ku) = extension::<KeyUsage>(c)? {
        if !ku.key_cert_sign() {
            return Err(format!("{} issued a certificate but its key usage lacks keyCertSign", subject(c)));
        }
    }
    Ok(())
}

/// model-signing's rule: key usage `digitalSignature`, or extended key usage `codeSigning`.
fn check_leaf_usage(c: &Certificate) -> Result<(), String> {
    if extension::<KeyUsage>(c)?.is_some_and(|ku| ku.digital_signature()) {
        return Ok(());
    }
    if extension::<ExtendedKeyUsage>(c)?.is_some_and(|eku| eku.0.contains(&ext_oid::ID_KP_CODE_SIGNING)) {
        return Ok(());
    }
    Err(format!(
        "the signing certificate {} is not for signing (neither key usage digitalSignature nor extended key usage codeSigning)",
        subject(c)
    ))
}

/// The issuer of `child` among `candidates` (same name, signature verifies).
fn find_issuer<'a>(child: &Certificate, candidates: &'a [Certificate]) -> Result<Option<&'a Certificate>, String> {
    for c in candidates {
        if c.tbs_certificate.subject == child.tbs_certificate.issuer && signed_by(child, c)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// Validates the bundle's `chain` (leaf first) against the `trusted` certificates, as the
/// module documentation says; returns the leaf's key.
pub fn validate(chain: &Certificates, trusted: &Certificates) -> Result<PublicKey, BundleError> {
    let leaf = chain
        .0
        .first()
        .ok_or_else(|| BundleError::invalid("verificationMaterial.x509CertificateChain.certificates", "empty"))?;
    let at = leaf.tbs_certificate.validity.not_before.to_unix_duration().as_secs();
    check_common(leaf, at).map_err(untrusted)?;
    check_leaf_usage(leaf).map_err(untrusted)?;
    let key = spki_key(leaf).map_err(untrusted)?;
    let rest = &chain.0[1..];
    let mut current = leaf;
    for below in 0..MAX_PATH - 1 {
        let (next, is_trusted) = match find_issuer(current, &trusted.0).map_err(untrusted)? {
            Some(t) => (t, true),
            None => (
                find_issuer(current, rest).map_err(untrusted)?.ok_or_else(|| {
                    untrusted(format!(
                        "no trusted certificate and no certificate of the bundle issued {} (its issuer: '{}')",
                        subject(current),
                        current.tbs_certificate.issuer
                    ))
                })?,
                false,
            ),
        };
        // The path ends at a self-issued certificate, which must be a trusted one (as
        // OpenSSL without partial chains: a trusted intermediate still needs its root).
        let top = next.tbs_certificate.subject == next.tbs_certificate.issuer;
        if top && !is_trusted {
            return Err(untrusted(format!("the chain ends at {}, which is not a trusted certificate", subject(next))));
        }
        check_issuer(next, at, below).map_err(untrusted)?;
        if top {
            return Ok(key);
        }
        current = next;
    }
    Err(untrusted(format!("no trusted certificate within {MAX_PATH} certificates of the leaf")))
}
