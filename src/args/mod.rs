//! Argument groups that several commands flatten into their own (clap `#[derive(Args)]`).

pub mod change;
pub mod entry;
pub mod fingerprint;
pub mod key;
pub mod output;
pub mod policy;
pub mod tier_levels;
