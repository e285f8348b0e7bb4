//! One module per command (per group for `bundle`, `licence`, `policy`, and
//! `transform-input` with `encrypt-patch-embedding`): its clap arguments and its `run`.
//! A command imports no other command; what several share lives outside `cmd/`.

#[cfg(feature = "tract")]
pub mod assess;
pub mod batch;
pub mod bundle;
pub mod check;
pub mod decrypt;
pub mod derive_tier_key;
pub mod encrypt;
pub mod inspect;
pub mod keygen;
pub mod licence;
pub mod policy;
pub mod rekey;
pub mod rewrap;
#[cfg(feature = "tract")]
pub mod run;
pub mod sign;
pub mod trace;
pub mod transform;
pub mod verify;
