//! TPM key files (docs/keys.md): how a machine names its TPM key. The file holds no secret
//! a copy could use elsewhere: either the key's TPM-wrapped blob (its private part
//! encrypted by the TPM's storage root key, which never leaves that TPM) or the persistent
//! handle the key lives at inside the TPM.
//!
//! ```text
//! # comments
//! onnx-protect-tpm-key-v1 RECIPIENT blob PUBLIC PRIVATE
//! onnx-protect-tpm-key-v1 RECIPIENT persistent 0x81xxxxxx
//! ```
//!
//! `RECIPIENT` is the key's `onnx-protect-tpm1…` string; `PUBLIC` the standard Base64
//! (padded) of the marshalled `TPMT_PUBLIC`, `PRIVATE` of the `TPM2B_PRIVATE` buffer's
//! contents, as `TPM2_Create` returned them; the handle is 8 hex digits in
//! `0x81000000..=0x81FFFFFF`.

use base64::{engine::general_purpose::STANDARD, Engine};
use zeroize::Zeroizing;

use crate::{TpmError, TpmRecipient};

/// First field of a TPM key file's key line.
pub const TPM_KEY_TAG: &str = "onnx-protect-tpm-key-v1";
/// The largest TPM key file read.
pub const MAX_KEY_FILE_LEN: usize = 16 * 1024;
/// The largest marshalled public area or private blob accepted.
pub const MAX_BLOB_LEN: usize = 2048;
/// The first persistent handle of the TPM's owner range.
pub const PERSISTENT_FIRST: u32 = 0x8100_0000;
/// The last persistent handle.
pub const PERSISTENT_LAST: u32 = 0x81FF_FFFF;

/// Where a TPM key is.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum TpmKeyLocation {
    /// Loaded for each use under the storage root key from its TPM-wrapped blob.
    Blob {
        /// The marshalled `TPMT_PUBLIC`.
        public: Vec<u8>,
        /// The contents of the `TPM2B_PRIVATE`: the private part encrypted by the TPM.
        private: Vec<u8>,
    },
    /// Made persistent inside the TPM at this handle.
    Persistent(u32),
}

/// A TPM key as named by a key file: its public recipient and where the key is.
#[derive(Clone, PartialEq, Eq)]
pub struct TpmKeyFile {
    /// The key's public recipient.
    pub recipient: TpmRecipient,
    /// Where the TPM keeps the key.
    pub location: TpmKeyLocation,
}

impl std::fmt::Debug for TpmKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            TpmKeyLocation::Blob { .. } => write!(f, "TpmKeyFile({}, blob)", self.recipient),
            TpmKeyLocation::Persistent(h) => write!(f, "TpmKeyFile({}, persistent 0x{h:08x})", self.recipient),
        }
    }
}

impl TpmKeyFile {
    /// Parses a key file's text. Errors name the line and what is wrong.
    pub fn parse(text: &[u8]) -> Result<TpmKeyFile, TpmError> {
        if text.len() > MAX_KEY_FILE_LEN {
            return Err(bad(0, format!("{} bytes ({MAX_KEY_FILE_LEN} at most)", text.len())));
        }
        let text = std::str::from_utf8(text).map_err(|_| bad(0, "not UTF-8 text".into()))?;
        let mut found = None;
        for (i, raw) in text.split('\n').enumerate() {
            let line = raw.strip_suffix('\r').unwrap_or(raw).trim_matches([' ', '\t']);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if found.is_some() {
                return Err(bad(i + 1, "a second key line (a TPM key file names one key)".into()));
            }
            found = Some(parse_line(i + 1, line)?);
        }
        found.ok_or_else(|| bad(0, format!("no '{TPM_KEY_TAG}' line")))
    }

    /// The file's text: two comment lines and the key line.
    pub fn to_text(&self) -> Zeroizing<String> {
        let where_ = match &self.location {
            TpmKeyLocation::Blob { public, private } => {
                format!("blob {} {}", STANDARD.encode(public), STANDARD.encode(private))
            }
            TpmKeyLocation::Persistent(h) => format!("persistent 0x{h:08x}"),
        };
        Zeroizing::new(format!(
            "# onnx-protect TPM key: opens models only through the TPM that created it\n# recipient: {r}\n\
             {TPM_KEY_TAG} {r} {where_}\n",
            r = self.recipient
        ))
    }
}

fn bad(line: usize, reason: String) -> TpmError {
    TpmError::BadKeyFile { line, reason }
}

fn parse_line(n: usize, line: &str) -> Result<TpmKeyFile, TpmError> {
    let f: Vec<&str> = line.split([' ', '\t']).filter(|s| !s.is_empty()).collect();
    match f.first() {
        Some(&TPM_KEY_TAG) => {}
        Some(t) if t.starts_with("onnx-protect-tpm-key-") => {
            return Err(bad(n, format!("unknown version '{t}' (this onnx-protect reads {TPM_KEY_TAG})")))
        }
        _ => return Err(bad(n, format!("not a TPM key line (expected '{TPM_KEY_TAG} …')"))),
    }
    let recipient =
        TpmRecipient::parse(f.get(1).copied().unwrap_or_default()).map_err(|e| bad(n, format!("field 2: {e}")))?;
    let location = match (f.get(2).copied(), f.len()) {
        (Some("blob"), 5) => {
            TpmKeyLocation::Blob { public: blob(n, "public", f[3])?, private: blob(n, "private", f[4])? }
        }
        (Some("persistent"), 4) => TpmKeyLocation::Persistent(handle(n, f[3])?),
        (Some("blob"), k) => return Err(bad(n, format!("'blob' takes 2 fields (public, private), found {}", k - 3))),
        (Some("persistent"), k) => {
            return Err(bad(n, format!("'persistent' takes 1 field (a handle), found {}", k - 3)))
        }
        (Some(other), _) => return Err(bad(n, format!("field 3 is '{other}', expected 'blob' or 'persistent'"))),
        (None, _) => return Err(bad(n, "field 3 is missing ('blob' or 'persistent')".into())),
    };
    Ok(TpmKeyFile { recipient, location })
}

fn blob(n: usize, what: &str, b64: &str) -> Result<Vec<u8>, TpmError> {
    let v = STANDARD.decode(b64).map_err(|e| bad(n, format!("the {what} blob is not Base64 ({e})")))?;
    if v.is_empty() || v.len() > MAX_BLOB_LEN {
        return Err(bad(n, format!("the {what} blob has {} bytes (1 to {MAX_BLOB_LEN})", v.len())));
    }
    Ok(v)
}

fn handle(n: usize, text: &str) -> Result<u32, TpmError> {
    let digits = text
        .strip_prefix("0x")
        .filter(|d| d.len() == 8 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| bad(n, format!("handle '{text}' is not 0x and 8 hex digits")))?;
    let h = u32::from_str_radix(digits, 16).map_err(|e| bad(n, e.to_string()))?;
    check_persistent(h).map_err(|e| bad(n, e.to_string()))?;
    Ok(h)
}

/// Refuses a handle outside the persistent range `0x81000000..=0x81FFFFFF`.
pub fn check_persistent(h: u32) -> Result<(), TpmError> {
    if (PERSISTENT_FIRST..=PERSISTENT_LAST).contains(&h) {
        Ok(())
    } else {
        Err(TpmError::BadHandle(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipient() -> TpmRecipient {
        // The generator point of P-256, compressed: a valid public key for parsing tests.
        let g = hex_to_bytes("036b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296");
        TpmRecipient::from_sec1(&g).unwrap()
    }

    fn hex_to_bytes(h: &str) -> Vec<u8> {
        (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn both_forms_round_trip() {
        for location in [
            TpmKeyLocation::Blob { public: vec![1, 2, 3], private: vec![4; 100] },
            TpmKeyLocation::Persistent(0x8100_0101),
        ] {
            let k = TpmKeyFile { recipient: recipient(), location };
            let text = k.to_text();
            assert_eq!(TpmKeyFile::parse(text.as_bytes()).unwrap(), k);
            let crlf = text.replace('\n', "\r\n");
            assert_eq!(TpmKeyFile::parse(crlf.as_bytes()).unwrap(), k);
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let r = recipient().to_text();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no 'onnx-protect-tpm-key-v1' line"),
            ("# only a comment\n".into(), "no 'onnx-protect-tpm-key-v1' line"),
            (format!("onnx-protect-tpm-key-v2 {r} persistent 0x81000000"), "unknown version"),
            ("onnx-protect-key-v1 master tiers=1 00".into(), "not a TPM key line"),
            ("onnx-protect-tpm-key-v1 age1xyz persistent 0x81000000".into(), "field 2"),
            (format!("onnx-protect-tpm-key-v1 {r}"), "field 3 is missing"),
            (format!("onnx-protect-tpm-key-v1 {r} sealed x"), "field 3 is 'sealed'"),
            (format!("onnx-protect-tpm-key-v1 {r} blob AAAA"), "'blob' takes 2 fields"),
            (format!("onnx-protect-tpm-key-v1 {r} blob AAAA !!!!"), "private blob is not Base64"),
            (format!("onnx-protect-tpm-key-v1 {r} blob '' AAAA"), "public blob is not Base64"),
            (format!("onnx-protect-tpm-key-v1 {r} persistent 0x81000000 x"), "'persistent' takes 1 field"),
            (format!("onnx-protect-tpm-key-v1 {r} persistent 81000000"), "not 0x and 8 hex digits"),
            (format!("onnx-protect-tpm-key-v1 {r} persistent 0x8100000g"), "not 0x and 8 hex digits"),
            (format!("onnx-protect-tpm-key-v1 {r} persistent 0x80000000"), "persistent range"),
            (format!("onnx-protect-tpm-key-v1 {r} persistent 0x81000000\nonnx-protect-tpm-key-v1 {r} persistent 0x81000001"), "line 2: a second key line"),
        ];
        for (text, want) in cases {
            let e = TpmKeyFile::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let big = format!("onnx-protect-tpm-key-v1 {r} blob {} AAAA", STANDARD.encode(vec![0u8; MAX_BLOB_LEN + 1]));
        assert!(TpmKeyFile::parse(big.as_bytes()).unwrap_err().to_string().contains("1 to 2048"));
        assert!(TpmKeyFile::parse(&[0xff, 0xfe]).unwrap_err().to_string().contains("UTF-8"));
        assert!(TpmKeyFile::parse(&vec![b'#'; MAX_KEY_FILE_LEN + 1]).is_err());
    }
}
