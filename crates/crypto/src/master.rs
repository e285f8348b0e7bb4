//! The master key and the passphrase KDF parameters.

use core::fmt;

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{fill_random, CryptoError, KeySchedule, KEY_LEN};

/// HKDF salt of the tier-down step.
pub const TIER_SALT: &[u8] = b"onnx-protect/v1/tier-salt";
/// HKDF info of the tier-down step.
pub const TIER_DOWN_LABEL: &[u8] = b"onnx-protect/v1/tier-down";

/// Domain-separation label hashed in front of the key for [`MasterKey::fingerprint`].
pub const FINGERPRINT_LABEL: &[u8] = b"onnx-protect/v1/fingerprint";

/// Length of the Argon2id salt stored in [`KdfParams`].
pub const KDF_SALT_LEN: usize = 16;

/// The 256-bit master key from which all per-file keys are derived.
///
/// Invariants: the bytes are wiped when the value is dropped, and neither
/// `Debug` nor any error ever shows them. The only ways to see the key are
/// [`MasterKey::to_hex`] and [`crate::KeyFile::encode`] (for writing a key
/// file) and the one-way [`MasterKey::fingerprint`].
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    bytes: [u8; KEY_LEN],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// Draws a fresh key from the operating system's random number generator.
    pub fn generate() -> Result<MasterKey, CryptoError> {
        let mut key = MasterKey { bytes: [0u8; KEY_LEN] };
        fill_random(&mut key.bytes)?;
        Ok(key)
    }

    /// Wraps existing key bytes. The caller's copy is not wiped (it was passed
    /// by value, so the caller should zeroize its own source if it has one).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> MasterKey {
        MasterKey { bytes }
    }

    /// Parses the contents of a key file in any of its forms and returns the
    /// key, whatever kind of key the file says it is. See [`crate::KeyFile::parse`]
    /// for the forms and errors, and [`crate::KeyFile::into_master`] to refuse
    /// tier keys.
    pub fn parse_key_file(contents: &[u8]) -> Result<MasterKey, CryptoError> {
        crate::KeyFile::parse(contents).map(crate::KeyFile::into_key)
    }

    /// Reads the key from environment variable `var`: 64 hex digits (either
    /// case, surrounding whitespace ignored) or the text of a key file,
    /// whatever kind of key it records. See [`crate::KeyFile::from_env`].
    pub fn from_env(var: &str) -> Result<MasterKey, CryptoError> {
        crate::KeyFile::from_env(var).map(crate::KeyFile::into_key)
    }

    /// Derives a key from a passphrase with Argon2id (version 0x13), using
    /// `params` (validated first) and a 32-byte output.
    ///
    /// Deterministic: the same passphrase and params always give the same key.
    pub fn from_passphrase(passphrase: &[u8], params: &KdfParams) -> Result<MasterKey, CryptoError> {
        params.validate()?;
        if passphrase.is_empty() {
            return Err(CryptoError::EmptyPassphrase);
        }
        let argon_params = argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(KEY_LEN))
            .map_err(|e| CryptoError::Kdf { reason: e.to_string() })?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon_params);
        let mut key = MasterKey { bytes: [0u8; KEY_LEN] };
        argon
            .hash_password_into(passphrase, &params.salt, &mut key.bytes)
            .map_err(|e| CryptoError::Kdf { reason: e.to_string() })?;
        Ok(key)
    }

    /// The key as 64 lowercase hex digits, in a buffer wiped on drop.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.bytes))
    }

    /// A non-secret 8-byte identifier for telling keys apart in logs:
    /// the first 8 bytes of SHA-256(`"onnx-protect/v1/fingerprint"` || key).
    ///
    /// It reveals nothing useful about the key but is also far too short to
    /// serve as a key check; use [`crate::SessionKeys::key_check`] for that.
    pub fn fingerprint(&self) -> [u8; 8] {
        let digest = Sha256::new().chain_update(FINGERPRINT_LABEL).chain_update(self.bytes).finalize();
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest[..8]);
        out
    }

    /// The key of the access tier below this one (docs/format.md §11):
    /// `HKDF-SHA256(salt = "onnx-protect/v1/tier-salt", IKM = this key,
    /// info = "onnx-protect/v1/tier-down", 32 bytes)`. The step is one way: the
    /// key of a tier yields every lower tier's key, never a higher one.
    pub fn tier_down(&self) -> MasterKey {
        let out = KeySchedule::new(self, TIER_SALT).expand::<KEY_LEN>(&[TIER_DOWN_LABEL]);
        MasterKey { bytes: *out }
    }

    /// The raw key bytes, for the key derivation in this crate only.
    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

/// Decodes exactly 64 hex digits into a key. On failure returns the index
/// (within `hex_digits`) of the first non-hex character; never its value.
///
/// Precondition: `hex_digits.len() == 2 * KEY_LEN`.
pub(crate) fn decode_hex_key(hex_digits: &[u8]) -> Result<MasterKey, usize> {
    if let Some(bad) = hex_digits.iter().position(|c| !c.is_ascii_hexdigit()) {
        return Err(bad);
    }
    let mut key = MasterKey { bytes: [0u8; KEY_LEN] };
    // Every character was checked above and the length is 2 * KEY_LEN, so the
    // decoder cannot fail; map its error anyway rather than panicking.
    hex::decode_to_slice(hex_digits, &mut key.bytes).map_err(|_| 0usize)?;
    Ok(key)
}

/// Argon2id parameters for [`MasterKey::from_passphrase`].
///
/// These are stored (unencrypted) alongside protected files, so values read
/// back must pass [`KdfParams::validate`] before use; `from_passphrase` does
/// this itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Argon2 salt; fresh random bytes per passphrase-protected file.
    pub salt: [u8; KDF_SALT_LEN],
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Number of passes.
    pub t_cost: u32,
    /// Degree of parallelism (lanes).
    pub p_cost: u32,
}

impl KdfParams {
    /// Default memory cost: 64 MiB.
    pub const DEFAULT_M_COST_KIB: u32 = 65_536;
    /// Default number of passes.
    pub const DEFAULT_T_COST: u32 = 3;
    /// Default parallelism.
    pub const DEFAULT_P_COST: u32 = 1;

    /// Smallest accepted memory cost (KiB); Argon2 also requires at least 8 KiB per lane.
    pub const MIN_M_COST_KIB: u32 = 8;
    /// Largest accepted memory cost (KiB): 128 MiB, twice the default (docs/format.md §8:
    /// a file cannot make a reader spend much more than an encryption did).
    pub const MAX_M_COST_KIB: u32 = 131_072;
    /// Smallest accepted pass count.
    pub const MIN_T_COST: u32 = 1;
    /// Largest accepted pass count: twice the default.
    pub const MAX_T_COST: u32 = 6;
    /// Smallest accepted parallelism.
    pub const MIN_P_COST: u32 = 1;
    /// Largest accepted parallelism.
    pub const MAX_P_COST: u32 = 4;

    /// Default costs with a fresh random salt.
    pub fn new_random() -> Result<KdfParams, CryptoError> {
        let mut salt = [0u8; KDF_SALT_LEN];
        fill_random(&mut salt)?;
        Ok(KdfParams {
            salt,
            m_cost_kib: Self::DEFAULT_M_COST_KIB,
            t_cost: Self::DEFAULT_T_COST,
            p_cost: Self::DEFAULT_P_COST,
        })
    }

    /// Rejects hostile or nonsensical values (e.g. read from a tampered file)
    /// before they can make Argon2 allocate or loop excessively.
    ///
    /// Accepted: `t_cost` in 1..=6, `p_cost` in 1..=4, and `m_cost_kib` in
    /// `8 * p_cost ..= 131_072` (Argon2 needs at least 8 KiB per lane): at most twice
    /// the memory and passes of the defaults, so a hostile file costs a reader at most
    /// a few seconds and 128 MiB per attempt, and is refused before any of it.
    /// The error names the first offending field.
    pub fn validate(&self) -> Result<(), CryptoError> {
        check_range("t_cost", self.t_cost, Self::MIN_T_COST, Self::MAX_T_COST)?;
        check_range("p_cost", self.p_cost, Self::MIN_P_COST, Self::MAX_P_COST)?;
        // p_cost <= 4 here, so this cannot overflow.
        let min_m = Self::MIN_M_COST_KIB.max(8 * self.p_cost);
        check_range("m_cost_kib", self.m_cost_kib, min_m, Self::MAX_M_COST_KIB)
    }
}

fn check_range(field: &'static str, value: u32, min: u32, max: u32) -> Result<(), CryptoError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(CryptoError::KdfParam { field, value, min, max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(m_cost_kib: u32, t_cost: u32, p_cost: u32) -> KdfParams {
        KdfParams { salt: [7; KDF_SALT_LEN], m_cost_kib, t_cost, p_cost }
    }

    #[test]
    fn argon2_parameters_over_the_caps_are_refused_before_any_work() {
        // 1 GiB and 64 passes: minutes of work per attempt if it ran.
        let e = MasterKey::from_passphrase(b"passphrase", &params(1_048_576, 64, 1)).err();
        assert!(matches!(e, Some(CryptoError::KdfParam { field: "t_cost", value: 64, max: 6, .. })), "{e:?}");
        let e = params(131_073, 3, 1).validate().unwrap_err();
        assert!(matches!(e, CryptoError::KdfParam { field: "m_cost_kib", max: 131_072, .. }), "{e:?}");
        let e = params(65_536, 3, 5).validate().unwrap_err();
        assert!(matches!(e, CryptoError::KdfParam { field: "p_cost", max: 4, .. }), "{e:?}");
        assert!(params(8, 1, 2).validate().is_err(), "m < 8p");
        // The caps themselves and the defaults pass.
        params(131_072, 6, 4).validate().unwrap();
        KdfParams::new_random().unwrap().validate().unwrap();
    }
}
