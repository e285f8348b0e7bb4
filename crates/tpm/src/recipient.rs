//! TPM recipients and the `tpm` stanza body (docs/format.md §8): a data key wrapped to a
//! P-256 public key by anyone, without the device; opened by the TPM holding the private
//! key, whose ECDH (`TPM2_ECDH_ZGen`) is the only step that needs it.
//!
//! ```text
//! recipient  onnx-protect-tpm1…  Bech32 (BIP 173), part "onnx-protect-tpm", over the
//!            33-byte SEC1 compressed point P of the TPM key
//! wrap       e random scalar, E = e·G (33 bytes compressed), Z = x(e·P) (32 bytes)
//!            KEK  = HKDF-SHA256(salt = E ‖ P, IKM = Z,
//!                               info = "onnx-protect/v2/wrap/tpm" ‖ u32be(tier), L = 32)
//!            body = E ‖ ChaCha20-Poly1305(KEK, nonce = 12 zero bytes, aad = "", DK_tier)
//! open       Z = x(TPM2_ECDH_ZGen(key, E)), then KEK as above
//! ```

use bech32::{FromBase32, ToBase32, Variant};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{FieldBytes, PublicKey, SecretKey};
use zeroize::Zeroizing;

use crate::TpmError;

/// The stanza kind of a TPM recipient (the one name `onnx_protect_keys` checks stanzas by).
pub const KIND_TPM: &str = onnx_protect_keys::KIND_TPM;
/// Human-readable part of a TPM recipient string (`onnx-protect-tpm1…`).
pub const TPM_RECIPIENT_HRP: &str = "onnx-protect-tpm";
/// HKDF `info` prefix of a `tpm` stanza's key-encryption key (the tier follows, u32be).
pub const TPM_WRAP_LABEL: &[u8] = b"onnx-protect/v2/wrap/tpm";
/// Length of a compressed P-256 point.
pub const POINT_LEN: usize = 33;
/// Length of a `tpm` stanza body: the ephemeral point, the wrapped key and its tag.
pub const TPM_BODY_LEN: usize = POINT_LEN + 32 + 16;
// The length every reader checks without a key (docs/format.md §8) is this one.
const _: () = assert!(TPM_BODY_LEN == onnx_protect_keys::TPM_BODY_LEN);

/// The public half of a TPM-resident P-256 key: whoever has it can wrap data keys that only
/// that TPM opens.
#[derive(Clone, PartialEq, Eq)]
pub struct TpmRecipient {
    point: PublicKey,
}

impl std::fmt::Debug for TpmRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TpmRecipient({})", self.to_text())
    }
}

impl std::fmt::Display for TpmRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl TpmRecipient {
    /// Parses `onnx-protect-tpm1…` (either case, surrounding white space ignored).
    pub fn parse(text: &str) -> Result<TpmRecipient, TpmError> {
        let t = text.trim();
        let bad = |reason: String| TpmError::BadRecipient { text: t.to_string(), reason };
        let (hrp, data, variant) = bech32::decode(&t.to_ascii_lowercase()).map_err(|e| bad(e.to_string()))?;
        if hrp != TPM_RECIPIENT_HRP {
            return Err(bad(format!("it starts with '{hrp}1', expected '{TPM_RECIPIENT_HRP}1'")));
        }
        if variant != Variant::Bech32 {
            return Err(bad("Bech32m encoding, expected Bech32".into()));
        }
        let bytes = Vec::<u8>::from_base32(&data).map_err(|e| bad(e.to_string()))?;
        if bytes.len() != POINT_LEN {
            return Err(bad(format!("{} bytes, expected a {POINT_LEN}-byte compressed P-256 point", bytes.len())));
        }
        TpmRecipient::from_sec1(&bytes).map_err(|_| bad("not a point of the P-256 curve".into()))
    }

    /// A recipient from a SEC1 point (compressed or not); refuses anything not on the curve
    /// and the point at infinity.
    pub fn from_sec1(bytes: &[u8]) -> Result<TpmRecipient, TpmError> {
        PublicKey::from_sec1_bytes(bytes).map(|point| TpmRecipient { point }).map_err(|_| TpmError::BadPoint)
    }

    /// A recipient from the affine coordinates a TPM reports (each at most 32 bytes,
    /// big-endian; shorter ones are left-padded).
    pub fn from_coordinates(x: &[u8], y: &[u8]) -> Result<TpmRecipient, TpmError> {
        let mut sec1 = [0u8; 65];
        sec1[0] = 4;
        sec1[1..33].copy_from_slice(&pad32(x)?);
        sec1[33..].copy_from_slice(&pad32(y)?);
        TpmRecipient::from_sec1(&sec1)
    }

    /// The 33-byte compressed point.
    pub fn to_compressed(&self) -> [u8; POINT_LEN] {
        let mut out = [0u8; POINT_LEN];
        out.copy_from_slice(self.point.to_encoded_point(true).as_bytes());
        out
    }

    /// `onnx-protect-tpm1…`.
    pub fn to_text(&self) -> String {
        bech32::encode(TPM_RECIPIENT_HRP, self.to_compressed().to_base32(), Variant::Bech32).unwrap_or_default()
    }

    /// Wraps the data key of `tier` for this recipient: a fresh ephemeral key per call, no
    /// device needed. Returns the stanza body ([`TPM_BODY_LEN`] bytes).
    pub fn wrap(&self, tier: u32, data_key: &[u8; 32]) -> Result<Vec<u8>, TpmError> {
        let ephemeral = random_secret()?;
        let e_point = PublicKey::from_secret_scalar(&ephemeral.to_nonzero_scalar());
        let e = compressed(&e_point);
        let shared = p256::ecdh::diffie_hellman(ephemeral.to_nonzero_scalar(), self.point.as_affine());
        let mut z = Zeroizing::new([0u8; 32]);
        z.copy_from_slice(shared.raw_secret_bytes());
        let kek = kek(&e, &self.to_compressed(), &z, tier);
        let sealed = ChaCha20Poly1305::new(Key::from_slice(kek.as_ref()))
            .encrypt(Nonce::from_slice(&[0u8; 12]), data_key.as_slice())
            .map_err(|_| TpmError::Crypto("ChaCha20-Poly1305 refused to seal".into()))?;
        let mut body = Vec::with_capacity(TPM_BODY_LEN);
        body.extend_from_slice(&e);
        body.extend_from_slice(&sealed);
        Ok(body)
    }

    /// Opens a `tpm` stanza body of `tier` wrapped for this recipient. `zgen` is the TPM's
    /// ECDH: given the ephemeral point's affine coordinates (32 bytes each), it returns the
    /// x coordinate of the shared point. `Ok(None)` if the body does not open under this
    /// key (another key, a changed body); an error if the body is malformed or `zgen` fails.
    pub fn open<F>(&self, tier: u32, body: &[u8], zgen: F) -> Result<Option<Zeroizing<[u8; 32]>>, TpmError>
    where
        F: FnOnce(&[u8; 32], &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, TpmError>,
    {
        let (e, sealed) = split_body(body)?;
        let e_point = PublicKey::from_sec1_bytes(e)
            .map_err(|_| TpmError::BadBody { reason: "its ephemeral key is not a point of the P-256 curve".into() })?;
        let uncompressed = e_point.to_encoded_point(false);
        let (Some(x), Some(y)) = (uncompressed.x(), uncompressed.y()) else {
            return Err(TpmError::BadBody { reason: "its ephemeral key is the point at infinity".into() });
        };
        let z = zgen(&to32(x), &to32(y))?;
        let kek = kek(e, &self.to_compressed(), &z, tier);
        let opened = ChaCha20Poly1305::new(Key::from_slice(kek.as_ref()))
            .decrypt(Nonce::from_slice(&[0u8; 12]), sealed)
            .ok()
            .map(Zeroizing::new);
        Ok(opened.and_then(|plain| {
            let bytes: [u8; 32] = plain.as_slice().try_into().ok()?;
            Some(Zeroizing::new(bytes))
        }))
    }
}

/// Splits a body into the ephemeral point and the sealed data key; refuses other lengths.
pub fn split_body(body: &[u8]) -> Result<(&[u8], &[u8]), TpmError> {
    if body.len() != TPM_BODY_LEN {
        return Err(TpmError::BadBody { reason: format!("{} bytes, expected {TPM_BODY_LEN}", body.len()) });
    }
    Ok(body.split_at(POINT_LEN))
}

fn kek(e: &[u8], p: &[u8], z: &[u8; 32], tier: u32) -> Zeroizing<[u8; 32]> {
    let mut salt = Vec::with_capacity(2 * POINT_LEN);
    salt.extend_from_slice(e);
    salt.extend_from_slice(p);
    let mut info = TPM_WRAP_LABEL.to_vec();
    info.extend_from_slice(&tier.to_be_bytes());
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit of 8160: expand cannot fail.
    let _ = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), z).expand(&info, out.as_mut());
    out
}

fn random_secret() -> Result<SecretKey, TpmError> {
    // A uniformly random 32-byte string is a valid scalar except with probability < 2^-32.
    for _ in 0..64 {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(bytes.as_mut()).map_err(|e| TpmError::Crypto(format!("random numbers: {e}")))?;
        if let Ok(k) = SecretKey::from_bytes(FieldBytes::from_slice(bytes.as_ref())) {
            return Ok(k);
        }
    }
    Err(TpmError::Crypto("the random number generator gave no valid P-256 scalar".into()))
}

fn compressed(p: &PublicKey) -> [u8; POINT_LEN] {
    let mut out = [0u8; POINT_LEN];
    out.copy_from_slice(p.to_encoded_point(true).as_bytes());
    out
}

fn to32(field: &FieldBytes) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(field.as_slice());
    out
}

/// Left-pads a big-endian coordinate to 32 bytes; refuses longer ones.
pub(crate) fn pad32(v: &[u8]) -> Result<[u8; 32], TpmError> {
    let v = match v.iter().position(|&b| b != 0) {
        Some(first) => &v[first..],
        None => &[][..],
    };
    if v.len() > 32 {
        return Err(TpmError::BadPoint);
    }
    let mut out = [0u8; 32];
    out[32 - v.len()..].copy_from_slice(v);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A software stand-in for the TPM's ECDH, to test the construction without a device.
    fn soft_zgen(
        secret: &SecretKey,
    ) -> impl FnOnce(&[u8; 32], &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, TpmError> + '_ {
        move |x, y| {
            let e = TpmRecipient::from_coordinates(x, y)?;
            let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), e.point.as_affine());
            Ok(Zeroizing::new(to32(shared.raw_secret_bytes())))
        }
    }

    fn pair() -> (SecretKey, TpmRecipient) {
        let sk = random_secret().unwrap();
        let r = TpmRecipient { point: sk.public_key() };
        (sk, r)
    }

    #[test]
    fn wrap_opens_with_the_matching_ecdh_only_and_for_its_tier_only() {
        let (sk, r) = pair();
        let body = r.wrap(2, &[7; 32]).unwrap();
        assert_eq!(body.len(), TPM_BODY_LEN);
        assert_eq!(*r.open(2, &body, soft_zgen(&sk)).unwrap().unwrap(), [7; 32]);
        assert!(r.open(1, &body, soft_zgen(&sk)).unwrap().is_none(), "the tier is bound");
        let (other, _) = pair();
        assert!(r.open(2, &body, soft_zgen(&other)).unwrap().is_none(), "another key");
        // Two wraps of one key differ (fresh ephemeral key).
        assert_ne!(body, r.wrap(2, &[7; 32]).unwrap());
    }

    #[test]
    fn every_changed_byte_of_the_body_is_refused() {
        let (sk, r) = pair();
        let body = r.wrap(1, &[9; 32]).unwrap();
        for i in 0..body.len() {
            let mut b = body.clone();
            b[i] ^= 0x01;
            // A changed point is either off the curve (an error) or another point (no open).
            match r.open(1, &b, soft_zgen(&sk)) {
                Ok(None) | Err(TpmError::BadBody { .. }) => {}
                Ok(Some(_)) => panic!("byte {i} changed and the body still opened"),
                Err(e) => panic!("byte {i}: unexpected {e}"),
            }
        }
        assert!(matches!(r.open(1, &body[..80], soft_zgen(&sk)), Err(TpmError::BadBody { .. })));
    }

    #[test]
    fn recipient_text_round_trips_and_bad_strings_say_why() {
        let (_, r) = pair();
        let text = r.to_text();
        assert!(text.starts_with("onnx-protect-tpm1"), "{text}");
        assert_eq!(TpmRecipient::parse(&text).unwrap(), r);
        assert_eq!(TpmRecipient::parse(&format!("  {}\n", text.to_ascii_uppercase())).unwrap(), r);
        let mut typo = text.clone().into_bytes();
        let n = typo.len();
        typo[n - 2] = if typo[n - 2] == b'q' { b'p' } else { b'q' };
        assert!(TpmRecipient::parse(std::str::from_utf8(&typo).unwrap()).is_err());
        let age = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        let e = TpmRecipient::parse(age).unwrap_err().to_string();
        assert!(e.contains("expected 'onnx-protect-tpm1'"), "{e}");
        // 33 bytes that are not a point: x = p (the field prime) is out of range.
        let mut not_point = [0xffu8; 33];
        not_point[0] = 2;
        let s = bech32::encode(TPM_RECIPIENT_HRP, not_point.to_base32(), Variant::Bech32).unwrap();
        assert!(TpmRecipient::parse(&s).unwrap_err().to_string().contains("not a point"), "{s}");
        let short = bech32::encode(TPM_RECIPIENT_HRP, [2u8; 32].to_base32(), Variant::Bech32).unwrap();
        assert!(TpmRecipient::parse(&short).unwrap_err().to_string().contains("32 bytes"));
    }

    #[test]
    fn coordinates_are_padded_and_bounded() {
        assert_eq!(pad32(&[0, 0, 1]).unwrap()[31], 1);
        assert!(pad32(&[1; 33]).is_err());
        let (_, r) = pair();
        let u = r.point.to_encoded_point(false);
        let x = u.x().unwrap().to_vec();
        let y = u.y().unwrap().to_vec();
        assert_eq!(TpmRecipient::from_coordinates(&x, &y).unwrap(), r);
        let mut bad_y = y.clone();
        bad_y[31] ^= 1;
        assert!(TpmRecipient::from_coordinates(&x, &bad_y).is_err());
    }
}
