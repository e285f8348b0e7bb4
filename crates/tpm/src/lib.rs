//! Device-bound recipients of onnx-protect (docs/keys.md, docs/format.md §8): a model's data
//! key wrapped to a P-256 key that lives in one machine's TPM 2.0.
//!
//! * Anyone holding the public [`TpmRecipient`] (`onnx-protect-tpm1…`) wraps a data key for
//!   it, without the device ([`TpmRecipient::wrap`]);
//! * only the TPM holding the private key opens it: ECDH runs inside the TPM
//!   (`TPM2_ECDH_ZGen`), the private key never leaves it, and what is stored on disk is a
//!   [`TpmKeyFile`]: the key's TPM-wrapped blob or its persistent handle.
//!
//! Talking to a TPM needs the feature `tss` (the system's TSS 2.0 libraries, Debian
//! `libtss2-dev`); without it, [`create_key`], [`persist_key`], [`persistent_key`],
//! [`read_clock`] and opening a stanza return [`TpmError::NotBuilt`], while parsing and
//! wrapping work.
//!
//! ```
//! use onnx_protect_tpm::TpmRecipient;
//!
//! // The recipient string a customer's machine printed at activation (`keygen --tpm`);
//! // this one is the curve's generator point, whose private key is 1: an example only.
//! let r = TpmRecipient::parse("onnx-protect-tpm1qd43050juykyy3lchnnw2caygre8wqmasyk7kvaq7jsnj3wcnrpfvm7cs3u")?;
//! let body = r.wrap(1, &[0x42; 32])?; // no TPM needed
//! assert_eq!(body.len(), onnx_protect_tpm::TPM_BODY_LEN);
//! # Ok::<(), onnx_protect_tpm::TpmError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "tss")]
mod device;
mod error;
mod keyfile;
mod provider;
mod recipient;

#[cfg(feature = "tss")]
pub use device::Tpm;
pub use error::TpmError;
pub use keyfile::{
    check_persistent, TpmKeyFile, TpmKeyLocation, MAX_KEY_FILE_LEN, PERSISTENT_FIRST, PERSISTENT_LAST, TPM_KEY_TAG,
};
pub use provider::{TpmIdentity, TpmRecipientProvider};
pub use recipient::{split_body, TpmRecipient, KIND_TPM, POINT_LEN, TPM_BODY_LEN, TPM_RECIPIENT_HRP, TPM_WRAP_LABEL};

use zeroize::Zeroizing;

/// The TCTI used when none is configured: the kernel's resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";
/// The environment variable naming the TCTI (e.g. `swtpm:host=127.0.0.1,port=2321`).
pub const TCTI_ENV: &str = "ONNX_PROTECT_TPM_TCTI";

/// The TCTI configuration: [`TCTI_ENV`] if set and not empty, else [`DEFAULT_TCTI`].
pub fn tcti_from_env() -> String {
    std::env::var(TCTI_ENV).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| DEFAULT_TCTI.to_string())
}

/// Whether this build can talk to a TPM (the feature `tss`).
pub const fn tpm_support_built() -> bool {
    cfg!(feature = "tss")
}

/// A reading of the TPM's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TpmClock {
    /// Milliseconds the TPM has been powered since it was last cleared.
    pub clock_ms: u64,
    /// False after a power loss that may have lost the last few seconds of the clock.
    pub safe: bool,
}

/// Creates a TPM key through `tcti` and returns its key file (a TPM-wrapped blob).
pub fn create_key(tcti: &str) -> Result<TpmKeyFile, TpmError> {
    #[cfg(feature = "tss")]
    return Tpm::open(tcti)?.create_key();
    #[cfg(not(feature = "tss"))]
    {
        let _ = tcti;
        Err(TpmError::NotBuilt)
    }
}

/// Makes `key` persistent at `handle` (`0x81000000..=0x81FFFFFF`) and returns the key file
/// naming it there.
pub fn persist_key(tcti: &str, key: &TpmKeyFile, handle: u32) -> Result<TpmKeyFile, TpmError> {
    check_persistent(handle)?;
    #[cfg(feature = "tss")]
    return Tpm::open(tcti)?.persist(key, handle);
    #[cfg(not(feature = "tss"))]
    {
        let _ = (tcti, key);
        Err(TpmError::NotBuilt)
    }
}

/// The key file for the persistent `handle` (`0x81000000..=0x81FFFFFF`): the key the
/// handle already holds, named and not created, if it can open models (ECC P-256,
/// `fixedTPM`, an unrestricted ECDH decryption key usable with an empty authorization
/// value; otherwise [`TpmError::Unsuitable`]), or, for an empty handle, a new key made
/// persistent there. The flag says whether the key was created.
pub fn persistent_key(tcti: &str, handle: u32) -> Result<(TpmKeyFile, bool), TpmError> {
    check_persistent(handle)?;
    #[cfg(feature = "tss")]
    {
        let mut tpm = Tpm::open(tcti)?;
        if let Some(key) = tpm.persistent(handle)? {
            return Ok((key, false));
        }
        let key = tpm.create_key()?;
        Ok((tpm.persist(&key, handle)?, true))
    }
    #[cfg(not(feature = "tss"))]
    {
        let _ = tcti;
        Err(TpmError::NotBuilt)
    }
}

/// Reads the TPM's clock through `tcti`.
pub fn read_clock(tcti: &str) -> Result<TpmClock, TpmError> {
    #[cfg(feature = "tss")]
    return Tpm::open(tcti)?.clock();
    #[cfg(not(feature = "tss"))]
    {
        let _ = tcti;
        Err(TpmError::NotBuilt)
    }
}

fn ecdh(tcti: &str, key: &TpmKeyFile, x: &[u8; 32], y: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, TpmError> {
    #[cfg(feature = "tss")]
    return Tpm::open(tcti)?.ecdh(key, x, y);
    #[cfg(not(feature = "tss"))]
    {
        let _ = (tcti, key, x, y);
        Err(TpmError::NotBuilt)
    }
}
