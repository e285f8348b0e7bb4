//! The TPM itself, through the system's TSS 2.0 (`tss-esapi` over `libtss2-esys`): key
//! creation, ECDH inside the TPM and its clock. Feature `tss` only.
//!
//! Every key lives under the **storage root key** (SRK) of the owner hierarchy, created
//! on each use from the TCG template (ECC NIST P-256, restricted decryption, AES-128-CFB,
//! SHA-256 name, `fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | noDA |
//! restricted | decrypt`, empty unique): the same owner seed always gives the same SRK, so
//! nothing about it is stored, and a blob made under one TPM's SRK loads under no other's.
//! Keys are ECC NIST P-256, `fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth |
//! decrypt` (not restricted, not signing), scheme ECDH (SHA-256), no symmetric part, an
//! empty auth value: whoever can talk to that TPM with the key file can use the key, no
//! one can use it anywhere else. Transient objects are flushed after each operation.

use std::str::FromStr;

use p256::elliptic_curve::sec1::ToEncodedPoint;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::structures::{
    CapabilityData, Data, EccParameter, EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme, PcrSelectionList,
    Private, Public, PublicBuilder, PublicEccParametersBuilder, SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPM2_HANDLE;
use tss_esapi::{Context, TctiNameConf};
use zeroize::Zeroizing;

use crate::keyfile::{check_persistent, TpmKeyFile, TpmKeyLocation};
use crate::{recipient::pad32, TpmClock, TpmError, TpmRecipient};

/// An open connection to a TPM.
pub struct Tpm {
    ctx: Context,
}

fn dev(op: &'static str) -> impl Fn(tss_esapi::Error) -> TpmError {
    move |e| TpmError::Device { op, reason: e.to_string() }
}

impl Tpm {
    /// Connects through a TCTI configuration string as the TSS reads it
    /// (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, `tabrmd`, …).
    pub fn open(tcti: &str) -> Result<Tpm, TpmError> {
        let unreachable = |reason: String| TpmError::Unreachable { tcti: tcti.to_string(), reason };
        let conf = TctiNameConf::from_str(tcti).map_err(|e| unreachable(e.to_string()))?;
        let ctx = Context::new(conf).map_err(|e| unreachable(e.to_string()))?;
        Ok(Tpm { ctx })
    }

    /// Creates a new key under the SRK and returns its key file (TPM-wrapped blob).
    pub fn create_key(&mut self) -> Result<TpmKeyFile, TpmError> {
        let srk = self.srk()?;
        let made =
            self.ctx.execute_with_nullauth_session(|ctx| ctx.create(srk, key_template()?, None, None, None, None));
        self.flush(srk.into());
        let made = made.map_err(dev("TPM2_Create"))?;
        let recipient = recipient_of(&made.out_public)?;
        let public = made.out_public.marshall().map_err(dev("marshalling the public area"))?;
        Ok(TpmKeyFile {
            recipient,
            location: TpmKeyLocation::Blob { public, private: made.out_private.value().to_vec() },
        })
    }

    /// Makes the key of `key` persistent at `handle` (owner hierarchy, empty owner auth)
    /// and returns the key file naming it there.
    pub fn persist(&mut self, key: &TpmKeyFile, handle: u32) -> Result<TpmKeyFile, TpmError> {
        check_persistent(handle)?;
        let persistent = PersistentTpmHandle::new(handle).map_err(dev("a persistent handle"))?;
        let loaded = self.load(key)?;
        let done = self.ctx.execute_with_nullauth_session(|ctx| {
            ctx.evict_control(Provision::Owner, loaded.handle.into(), Persistent::Persistent(persistent))
        });
        self.release(loaded);
        let mut made = done.map_err(dev("TPM2_EvictControl"))?;
        let _ = self.ctx.tr_close(&mut made);
        Ok(TpmKeyFile { recipient: key.recipient.clone(), location: TpmKeyLocation::Persistent(handle) })
    }

    /// The key file of the key at the persistent `handle`, if the handle holds one:
    /// `Ok(None)` when it is empty, [`TpmError::Unsuitable`] when it holds something this
    /// crate cannot open models with. A usable key is an ECC NIST P-256 key that never
    /// leaves this TPM (`fixedTPM`), for decryption and not restricted (so `TPM2_ECDH_ZGen`
    /// accepts it), with a null or ECDH scheme and usable with an empty authorization
    /// value; the last is proved by running ECDH with the curve's generator point, whose
    /// result must be the key's own public point.
    pub fn persistent(&mut self, handle: u32) -> Result<Option<TpmKeyFile>, TpmError> {
        check_persistent(handle)?;
        let (data, _) =
            self.ctx.get_capability(CapabilityType::Handles, handle, 1).map_err(dev("TPM2_GetCapability (handles)"))?;
        let held = match data {
            CapabilityData::Handles(list) => list.into_inner().into_iter().any(|h| TPM2_HANDLE::from(h) == handle),
            _ => false,
        };
        if !held {
            return Ok(None);
        }
        let tpm_handle =
            PersistentTpmHandle::new(handle).map(TpmHandle::Persistent).map_err(dev("a persistent handle"))?;
        let object = self.ctx.tr_from_tpm_public(tpm_handle).map_err(dev("reading a persistent handle"))?;
        let loaded = Loaded { handle: KeyHandle::from(object), transient: false };
        let checked = self.check_usable(&loaded, handle);
        self.release(loaded);
        let recipient = checked?;
        Ok(Some(TpmKeyFile { recipient, location: TpmKeyLocation::Persistent(handle) }))
    }

    /// The recipient of a loaded key that passes the checks of [`Tpm::persistent`].
    fn check_usable(&mut self, loaded: &Loaded, handle: u32) -> Result<TpmRecipient, TpmError> {
        let unsuitable = |reason: &str| TpmError::Unsuitable { handle, reason: reason.to_string() };
        let (public, _, _) = self.ctx.read_public(loaded.handle).map_err(dev("TPM2_ReadPublic"))?;
        let recipient = recipient_of(&public).map_err(|e| match e {
            TpmError::Device { reason, .. } => TpmError::Unsuitable { handle, reason },
            e => e,
        })?;
        let a = public.object_attributes();
        if !a.fixed_tpm() {
            return Err(unsuitable("it is not fixedTPM (it may exist outside this TPM)"));
        }
        if !a.decrypt() || a.restricted() {
            return Err(unsuitable("it is not an unrestricted decryption key (ECDH needs one)"));
        }
        if !a.user_with_auth() {
            return Err(unsuitable("it is used through a policy, not an authorization value"));
        }
        if let Public::Ecc { parameters, .. } = &public {
            if !matches!(parameters.ecc_scheme(), EccScheme::EcDh(_) | EccScheme::Null) {
                return Err(unsuitable("its scheme is not ECDH"));
            }
        }
        let g = p256::AffinePoint::GENERATOR.to_encoded_point(false);
        let (Some(gx), Some(gy)) = (g.x(), g.y()) else {
            return Err(TpmError::Crypto("the generator point has no coordinates".into()));
        };
        let point = ecc_point(gx, gy)?;
        let z = self.ctx.execute_with_nullauth_session(|ctx| ctx.ecdh_z_gen(loaded.handle, point)).map_err(|e| {
            TpmError::Unsuitable {
                handle,
                reason: format!("TPM2_ECDH_ZGen with an empty authorization value failed ({e})"),
            }
        })?;
        // ECDH of the private key d with G is d·G, the key's own public point.
        if pad32(z.x().value())?[..] != recipient.to_compressed()[1..] {
            return Err(unsuitable("its ECDH result is not its public key's"));
        }
        Ok(recipient)
    }

    /// ECDH inside the TPM (`TPM2_ECDH_ZGen`) of `key` with the point (`x`, `y`): the
    /// shared point's x coordinate. The key's public area is checked against the file's
    /// recipient first.
    pub fn ecdh(&mut self, key: &TpmKeyFile, x: &[u8; 32], y: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, TpmError> {
        let loaded = self.load(key)?;
        let point = ecc_point(x, y);
        let z = point.and_then(|p| {
            self.ctx
                .execute_with_nullauth_session(|ctx| ctx.ecdh_z_gen(loaded.handle, p))
                .map_err(dev("TPM2_ECDH_ZGen"))
        });
        self.release(loaded);
        let z = z?;
        let out = Zeroizing::new(pad32(z.x().value())?);
        Ok(out)
    }

    /// The TPM's clock: milliseconds the TPM has been powered since it was last cleared,
    /// never going back except by `TPM2_Clear` or by at most the interval between its
    /// saves to NV after a power loss (`safe` false). Read from a quote signed by a
    /// transient key of the null hierarchy (`tss-esapi` 7 has no `TPM2_ReadClock`); the
    /// clock field of a quote is not obfuscated.
    pub fn clock(&mut self) -> Result<TpmClock, TpmError> {
        let signer = self
            .ctx
            .execute_with_nullauth_session(|ctx| {
                ctx.create_primary(Hierarchy::Null, signing_template()?, None, None, None, None)
            })
            .map_err(dev("TPM2_CreatePrimary (null hierarchy)"))?
            .key_handle;
        let quoted = PcrSelectionList::builder().build().and_then(|pcrs| {
            self.ctx
                .execute_with_nullauth_session(|ctx| ctx.quote(signer, Data::default(), SignatureScheme::Null, pcrs))
        });
        self.flush(signer.into());
        let (attest, _) = quoted.map_err(dev("TPM2_Quote"))?;
        let info = attest.clock_info();
        Ok(TpmClock { clock_ms: info.clock(), safe: info.safe() })
    }

    /// An orderly shutdown (`TPM2_Shutdown(CLEAR)`): the TPM saves its clock and state to
    /// NV, as an operating system does before power-off.
    pub fn shutdown(&mut self) -> Result<(), TpmError> {
        self.ctx.shutdown(tss_esapi::constants::StartupType::Clear).map_err(dev("TPM2_Shutdown"))
    }

    fn srk(&mut self) -> Result<KeyHandle, TpmError> {
        let made = self
            .ctx
            .execute_with_nullauth_session(|ctx| {
                ctx.create_primary(Hierarchy::Owner, srk_template()?, None, None, None, None)
            })
            .map_err(dev("TPM2_CreatePrimary (storage root key)"))?;
        Ok(made.key_handle)
    }

    fn load(&mut self, key: &TpmKeyFile) -> Result<Loaded, TpmError> {
        let not_here = |reason: String| TpmError::NotThisTpm { recipient: key.recipient.to_text(), reason };
        match &key.location {
            TpmKeyLocation::Blob { public, private } => {
                let public = Public::unmarshall(public).map_err(|e| not_here(format!("its public area: {e}")))?;
                if recipient_of(&public)? != key.recipient {
                    return Err(not_here("its public area is another key than its recipient".into()));
                }
                let private = Private::try_from(private.clone()).map_err(|e| not_here(e.to_string()))?;
                let srk = self.srk()?;
                let loaded = self.ctx.execute_with_nullauth_session(|ctx| ctx.load(srk, private, public));
                self.flush(srk.into());
                let handle = loaded.map_err(|e| not_here(format!("TPM2_Load refused its blob ({e})")))?;
                Ok(Loaded { handle, transient: true })
            }
            TpmKeyLocation::Persistent(h) => {
                let tpm_handle =
                    PersistentTpmHandle::new(*h).map(TpmHandle::Persistent).map_err(dev("a persistent handle"))?;
                let object = self
                    .ctx
                    .tr_from_tpm_public(tpm_handle)
                    .map_err(|e| not_here(format!("nothing at 0x{h:08x} ({e})")))?;
                let loaded = Loaded { handle: KeyHandle::from(object), transient: false };
                let public = self.ctx.read_public(loaded.handle).map_err(dev("TPM2_ReadPublic"));
                match public.and_then(|(p, _, _)| recipient_of(&p)) {
                    Ok(r) if r == key.recipient => Ok(loaded),
                    Ok(r) => {
                        self.release(loaded);
                        Err(not_here(format!("0x{h:08x} holds another key ({r})")))
                    }
                    Err(e) => {
                        self.release(loaded);
                        Err(e)
                    }
                }
            }
        }
    }

    fn release(&mut self, loaded: Loaded) {
        if loaded.transient {
            self.flush(loaded.handle.into());
        } else {
            let mut h: ObjectHandle = loaded.handle.into();
            let _ = self.ctx.tr_close(&mut h);
        }
    }

    /// Flushes a transient object; a failure only leaves a slot the resource manager frees
    /// when this connection closes.
    fn flush(&mut self, handle: ObjectHandle) {
        let _ = self.ctx.flush_context(handle);
    }
}

struct Loaded {
    handle: KeyHandle,
    transient: bool,
}

/// The point (`x`, `y`) as the TSS takes it.
fn ecc_point(x: &[u8], y: &[u8]) -> Result<EccPoint, TpmError> {
    EccParameter::try_from(x.to_vec())
        .and_then(|px| Ok(EccPoint::new(px, EccParameter::try_from(y.to_vec())?)))
        .map_err(dev("an ECC point"))
}

/// The recipient of a TPM public area; refuses anything but an ECC NIST P-256 key.
fn recipient_of(public: &Public) -> Result<TpmRecipient, TpmError> {
    match public {
        Public::Ecc { parameters, unique, .. } if parameters.ecc_curve() == EccCurve::NistP256 => {
            TpmRecipient::from_coordinates(unique.x().value(), unique.y().value())
        }
        _ => Err(TpmError::Device { op: "reading a public area", reason: "not an ECC NIST P-256 key".into() }),
    }
}

fn srk_template() -> tss_esapi::Result<Public> {
    ecc_template(
        |a| a.with_no_da(true).with_restricted(true).with_decrypt(true),
        PublicEccParametersBuilder::new_restricted_decryption_key(
            SymmetricDefinitionObject::AES_128_CFB,
            EccCurve::NistP256,
        ),
    )
}

fn key_template() -> tss_esapi::Result<Public> {
    ecc_template(
        |a| a.with_decrypt(true),
        PublicEccParametersBuilder::new()
            .with_ecc_scheme(EccScheme::EcDh(HashScheme::new(HashingAlgorithm::Sha256)))
            .with_curve(EccCurve::NistP256)
            .with_is_signing_key(false)
            .with_is_decryption_key(true)
            .with_restricted(false)
            .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null),
    )
}

fn signing_template() -> tss_esapi::Result<Public> {
    ecc_template(
        |a| a.with_sign_encrypt(true),
        PublicEccParametersBuilder::new_unrestricted_signing_key(
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
            EccCurve::NistP256,
        ),
    )
}

/// The public template of an ECC key with a SHA-256 name and an empty unique, the ECC
/// `parameters`, and the attributes `fixedTPM | fixedParent | sensitiveDataOrigin |
/// userWithAuth` plus those `attributes` sets.
fn ecc_template(
    attributes: impl FnOnce(ObjectAttributesBuilder) -> ObjectAttributesBuilder,
    parameters: PublicEccParametersBuilder,
) -> tss_esapi::Result<Public> {
    let common = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true);
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes(common).build()?)
        .with_ecc_parameters(parameters.build()?)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}
