//! HKDF-SHA256 key schedules rooted in a master key.
//!
//! Every key this project derives from a [`MasterKey`] goes through
//! [`KeySchedule`]: the per-file keys of docs/format.md §6 (salt = the file's
//! salt), the tier-down step of §11 (salt = `"onnx-protect/v1/tier-salt"`)
//! and the input-transform keys of docs/transforms.md (salt =
//! `"onnx-protect/v1/input-transform"`). Callers name the salt and the
//! `info` labels; they never see the master key's bytes.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{Keystream, MasterKey, KEY_LEN};

/// `PRK = HKDF-Extract-SHA256(salt, master key)`, from which keys are expanded
/// under `info` labels.
///
/// Invariants: the PRK is wiped on drop, and the type has no `Debug`, so it
/// cannot be printed by accident. Expanded keys are only handed out inside a
/// [`Keystream`] (or, within this crate, in wiped buffers).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KeySchedule {
    prk: [u8; 32],
}

impl KeySchedule {
    /// Runs HKDF-Extract with `salt` over the master key. Infallible: HKDF-SHA256
    /// accepts any salt and a 32-byte input key.
    pub fn new(master: &MasterKey, salt: &[u8]) -> KeySchedule {
        KeySchedule { prk: hkdf_extract(salt, master.as_bytes()) }
    }

    /// The AES-256-CTR keystream (zero initial counter block, docs/format.md §6)
    /// under the key `HKDF-Expand(PRK, info, 32)`, where `info` is the
    /// concatenation of the given parts.
    pub fn keystream(&self, info: &[&[u8]]) -> Keystream {
        let key = self.expand::<KEY_LEN>(info);
        Keystream::new(&key)
    }

    /// `HKDF-Expand(PRK, info, N)` in a buffer wiped on drop.
    pub(crate) fn expand<const N: usize>(&self, info: &[&[u8]]) -> Zeroizing<[u8; N]> {
        const { assert!(N <= 255 * 32, "HKDF-SHA256 output is limited to 8160 bytes") };
        let mut okm = Zeroizing::new([0u8; N]);
        hkdf_expand_into(&self.prk, info, okm.as_mut());
        okm
    }

    /// A schedule from a known PRK, for the derivation known-answer tests.
    #[cfg(test)]
    pub(crate) fn from_prk(prk: [u8; 32]) -> KeySchedule {
        KeySchedule { prk }
    }

    /// The PRK, for the derivation known-answer tests.
    #[cfg(test)]
    pub(crate) fn prk(&self) -> [u8; 32] {
        self.prk
    }
}

/// HKDF-Extract with SHA-256. Returns the 32-byte PRK.
pub(crate) fn hkdf_extract(salt: &[u8], ikm: &[u8]) -> [u8; 32] {
    let (prk, _) = Hkdf::<Sha256>::extract(Some(salt), ikm);
    let mut out = [0u8; 32];
    out.copy_from_slice(&prk);
    out
}

/// HKDF-Expand with SHA-256 into `okm`; `info` is the concatenation of the
/// given parts.
///
/// Precondition: `okm.len() <= 255 * 32` (the callers check it at compile
/// time). A 32-byte PRK is exactly the hash length `from_prk` requires, so
/// neither `expect` below depends on input.
fn hkdf_expand_into(prk: &[u8; 32], info: &[&[u8]], okm: &mut [u8]) {
    let hk = Hkdf::<Sha256>::from_prk(prk).expect("a 32-byte PRK is always accepted");
    hk.expand_multi_info(info, okm).expect("output length is at most 8160 bytes");
}

/// HKDF-Expand to a fixed `N`-byte array (the format-2 data-key schedule, and the
/// RFC 5869 known-answer test). The caller wipes the result when it is secret.
pub(crate) fn hkdf_expand<const N: usize>(prk: &[u8; 32], info: &[&[u8]]) -> [u8; N] {
    const { assert!(N <= 255 * 32, "HKDF-SHA256 output is limited to 8160 bytes") };
    let mut okm = [0u8; N];
    hkdf_expand_into(prk, info, &mut okm);
    okm
}
