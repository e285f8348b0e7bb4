//! A model's data keys and their recipients (docs/format.md §7, §8): wrapping a new
//! model's data keys for everyone it is encrypted to, and opening a model's stanzas with
//! the key material a caller gives.

use onnx_protect_crypto::{DataKey, KdfParams, MasterKey, TierKeys};
use onnx_protect_keys::{passphrase_stanza, Identity, Recipient, Stanza};
use onnx_protect_proto::v2 as pb;
use onnx_protect_proto::Message;

use super::envelope::{stanza_to_pb, Sealed, MAX_RECIPIENTS_LEN, MAX_STANZAS};
use crate::error::{BadManifest, CoreError, Modified, Result, UnusableKey};
use crate::keys::{tier_chain, KeySource};

/// Everyone a new model is encrypted to.
#[derive(Clone, Default)]
pub struct EncryptTo {
    /// A key or passphrase. With access tiers it is the top tier's, and every lower
    /// tier's stanza is wrapped under the key derived from it (docs/format.md App. A).
    pub master: Option<KeySource>,
    /// The number of access tiers `master`'s key file records (`master tiers=N`,
    /// docs/format.md Appendix A), if it records one: then a model of another number of
    /// tiers, above one, is refused ([`check_recorded_tiers`]).
    pub master_tiers: Option<u32>,
    /// Public-key and provider recipients, each for a tier (0: the top tier).
    pub recipients: Vec<(Recipient, u32)>,
}

impl EncryptTo {
    /// Encrypts to one key or passphrase.
    pub fn key(source: KeySource) -> EncryptTo {
        EncryptTo { master: Some(source), master_tiers: None, recipients: Vec::new() }
    }
}

/// Data keys drawn once and wrapped once for everyone in `to`, for several models (the
/// models of a folder, docs/format.md §16): each model encrypted with them
/// ([`crate::protect::encrypt_member`]) carries the same stanzas and opens with the same
/// key material. A passphrase is stretched once for all of them.
pub struct SharedKeys {
    pub(crate) data_keys: Vec<DataKey>,
    pub(crate) stanzas: Vec<Stanza>,
}

impl SharedKeys {
    /// Fresh data keys for `tiers` access tiers (1: none), wrapped for `to`.
    pub fn new(to: &EncryptTo, tiers: u32) -> Result<SharedKeys> {
        let data_keys = DataKey::generate()?.chain_down(tiers.max(1));
        let stanzas = wrap_all(to, &data_keys)?;
        check_new(&stanzas)?;
        Ok(SharedKeys { data_keys, stanzas })
    }

    /// The number of access tiers.
    pub fn tiers(&self) -> u32 {
        self.data_keys.len() as u32
    }
}

/// Refuses a master key that records `recorded` access tiers (`master tiers=N`) as the
/// key of a model of `tiers > 1` tiers, unless they agree (docs/format.md Appendix A): its
/// key would become another tier's key. An untiered model takes any master key.
pub fn check_recorded_tiers(recorded: u32, tiers: u32) -> Result<()> {
    if recorded == tiers || tiers == 1 {
        return Ok(());
    }
    Err(UnusableKey::RecordedTiers { recorded, tiers }.into())
}

/// The stanzas of a new model with data keys `data_keys` (tier 1 first).
pub(crate) fn wrap_all(to: &EncryptTo, data_keys: &[DataKey]) -> Result<Vec<Stanza>> {
    let tiers = data_keys.len() as u32;
    if to.master.is_none() && to.recipients.is_empty() {
        return Err(UnusableKey::NoRecipient.into());
    }
    if let (Some(recorded), Some(_)) = (to.master_tiers, &to.master) {
        check_recorded_tiers(recorded, tiers)?;
    }
    let dk = |t: u32| &data_keys[t as usize - 1];
    let mut stanzas = Vec::new();
    match to.master.as_ref().map(|m| (m.identity(), m.licence())) {
        None => {}
        Some((Identity::Key(k), None)) => {
            for (i, w) in tier_chain(k, tiers).into_iter().enumerate() {
                let t = i as u32 + 1;
                stanzas.push(Recipient::Key(w).wrap(t, dk(t))?);
            }
        }
        Some((Identity::Passphrase(p), None)) => {
            let params = KdfParams::new_random()?;
            let stretched = MasterKey::from_passphrase(p, &params)?;
            let chain = tier_chain(&stretched, tiers);
            for (i, w) in chain.into_iter().enumerate().take(tiers as usize - 1) {
                let t = i as u32 + 1;
                stanzas.push(Recipient::Key(w).wrap(t, dk(t))?);
            }
            stanzas.push(passphrase_stanza(&stretched, &params, tiers, dk(tiers))?);
        }
        // A key provider both wraps and opens: the top tier's data key is wrapped for it
        // (the lower tiers' keys derive from it).
        Some((Identity::Provider(p), None)) => {
            stanzas.push(Recipient::Provider(p.clone()).wrap(tiers, dk(tiers))?);
        }
        // X25519 identities, or a key with a licence.
        Some(_) => return Err(UnusableKey::IdentityToEncrypt.into()),
    }
    for (r, tier) in &to.recipients {
        let t = if *tier == 0 { tiers } else { *tier };
        if t > tiers {
            return Err(UnusableKey::RecipientTier { recipient: r.describe(), tier: t, tiers }.into());
        }
        stanzas.push(r.wrap(t, dk(t))?);
    }
    Ok(stanzas)
}

/// Refuses a stanza list a reader would refuse (docs/format.md §3, §8), before it is
/// written: 1 to [`MAX_STANZAS`] stanzas, each as its kind requires, at most eight of
/// each costly kind, [`MAX_RECIPIENTS_LEN`] bytes at most in all.
pub(crate) fn check_new(stanzas: &[Stanza]) -> Result<()> {
    if stanzas.is_empty() || stanzas.len() > MAX_STANZAS {
        return Err(UnusableKey::StanzaCount { count: stanzas.len(), max: MAX_STANZAS }.into());
    }
    onnx_protect_keys::check_stanzas(stanzas).map_err(UnusableKey::NewStanzas)?;
    let len = pb::Recipients { stanzas: stanzas.iter().map(stanza_to_pb).collect() }.encoded_len();
    if len > MAX_RECIPIENTS_LEN {
        return Err(UnusableKey::RecipientsTooLong { len, max: MAX_RECIPIENTS_LEN }.into());
    }
    Ok(())
}

/// A stanza as reports show it: its kind, public label (if any) and tier.
pub(crate) fn describe(s: &Stanza) -> String {
    if s.label.is_empty() {
        format!("{} (tier {})", s.kind, s.tier)
    } else {
        format!("{} {} (tier {})", s.kind, s.label, s.tier)
    }
}

/// The tiers a caller's key material opens: its own tier, and the keys of every tier
/// at and below it (index `t − 1`).
pub(crate) struct Opened {
    pub tier: u32,
    /// Whether a licence granted fewer tiers than the key reaches.
    pub by_licence: bool,
    pub keys: Vec<TierKeys>,
    /// The data keys of tiers `1 ..= tier` (for wrapping them again).
    pub data_keys: Vec<DataKey>,
    /// The index of the stanza that opened the model.
    pub opener: usize,
}

impl Opened {
    /// The keys of tier `t` (1-based), if the key reaches it.
    pub(crate) fn tier(&self, t: u32) -> Option<&TierKeys> {
        self.keys.get((t as usize).checked_sub(1)?)
    }
}

/// Opens the stanza of the highest tier `key` can open; checks the key check value of
/// that tier and every tier below (docs/format.md §7, §8). No stanza opens: "wrong key",
/// or the first error of a key provider that failed (a token or command that could not
/// answer is not a wrong key).
pub(crate) fn open(sealed: &Sealed, key: &KeySource) -> Result<Opened> {
    let identity = key.identity();
    let mut best: Option<(u32, DataKey)> = None;
    let mut opener = 0;
    let mut provider_error = None;
    for (i, s) in sealed.stanzas.iter().enumerate() {
        if best.as_ref().is_some_and(|(t, _)| *t >= s.tier) {
            continue;
        }
        match identity.unwrap(i, s) {
            Ok(Some(dk)) => {
                if let Identity::Provider(p) = &identity {
                    // A provider's answer is checked here, so that a wrong answer is its
                    // fault and not a "modified" model.
                    let kcv = sealed.header.key_checks.get(s.tier as usize - 1);
                    if !kcv.is_some_and(|c| dk.tier_keys().key_check_matches(c)) {
                        return Err(UnusableKey::ProviderAnswer { provider: p.describe(), index: i }.into());
                    }
                }
                best = Some((s.tier, dk));
                opener = i;
            }
            Ok(None) => {}
            // A provider that failed (not "not mine") is not asked again: junk stanzas
            // cannot make it run once each (docs/format.md §8).
            Err(e @ onnx_protect_keys::KeysError::Provider { .. }) => {
                provider_error = Some(e);
                break;
            }
            // A stanza of the key's kind that is not as its kind requires: modified.
            Err(
                e
                @ (onnx_protect_keys::KeysError::BadStanza { .. } | onnx_protect_keys::KeysError::KdfOverLimit { .. }),
            ) => return Err(BadManifest::Stanza { cause: e }.into()),
            Err(e) => return Err(e.into()),
        }
    }
    let (tier, dk) = match (best, provider_error) {
        (Some(b), _) => b,
        (None, Some(e)) => return Err(e.into()),
        (None, None) => return Err(CoreError::WrongKey),
    };
    let mut data_keys = dk.chain_down(tier);
    let keys: Vec<TierKeys> = data_keys.iter().map(DataKey::tier_keys).collect();
    for (i, k) in keys.iter().enumerate() {
        if !k.key_check_matches(&sealed.header.key_checks[i]) {
            return Err(Modified::KeyCheck { tier: i as u32 + 1 }.into());
        }
    }
    // A model with a licence authority opens only as far as a valid licence grants.
    let by = &sealed.stanzas[opener];
    let digest = &sealed.envelope.content_digest;
    let granted = crate::licence::granted_tier(&sealed.header, digest, key.licence(), (&by.kind, &by.label), tier)?;
    let mut keys = keys;
    keys.truncate(granted as usize);
    data_keys.truncate(granted as usize);
    Ok(Opened { tier: granted, by_licence: granted < tier, keys, data_keys, opener })
}
