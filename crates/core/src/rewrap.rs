//! Rotation by re-wrapping (docs/keys.md): adding and removing the recipients of a
//! format-2 model without touching a weight byte.
//!
//! The data keys stay; only the recipient stanzas change, and with them the MACs (which
//! cover the stanzas), the checksum and the signatures. [`rewrap`] needs the top-tier
//! key (every tier's MAC is recomputed). It authenticates what it keeps before it writes:
//! the checksum and every MAC over the stored header, stanzas and content digest. It does
//! not hash the content (its digest is authenticated, and every reader checks the content
//! against it), so with `in_place` on a model whose manifest entry is the last field, it
//! rewrites only the file's tail and its time does not grow with the model.
//!
//! A removed recipient's key no longer opens the model. Removal does not take away a data
//! key that recipient may already have extracted: for that, re-encrypt (`rekey`).

use std::path::Path;

use onnx_protect_crypto::MasterKey;
use onnx_protect_format::Progress;
use onnx_protect_keys::{SigningKey, Stanza};
use onnx_protect_proto::v2 as pb;
use onnx_protect_proto::Message;

use crate::error::{CoreError, Modified, Result, Unsigned, UnusableKey};
use crate::format2::envelope::{entry_bytes, stanza_to_pb};
use crate::format2::recipients::{describe, open, EncryptTo, Opened};
use crate::format2::seal::{check_seals, recorded_digest, seal};
use crate::format2::ProtectedV2;
use crate::keys::{tier_chain, KeySource};
use crate::pass::journal::Recovery;
use crate::protection::{open_protected, Protection};

/// Which stanzas to remove.
#[derive(Debug, Clone)]
pub enum Remove {
    /// Stanzas whose public label is this (a key fingerprint, an `age1…` recipient, a
    /// provider's label).
    Label(String),
    /// The stanzas of this key at every tier (its fingerprint, and the fingerprints of
    /// the tier keys derived from it).
    Key(MasterKey),
    /// Every stanza of this kind (`key`, `passphrase`, `x25519`, ...).
    Kind(String),
}

/// Options of [`rewrap`].
pub struct RewrapOptions<'a> {
    /// Recipients to add (their tiers as in `encrypt`).
    pub add: &'a EncryptTo,
    /// Stanzas to remove (applied before adding).
    pub remove: &'a [Remove],
    /// Publisher keys that sign the result.
    pub signing_keys: &'a [SigningKey],
    /// Drop the signatures of other signers (they cover the old stanzas and no longer
    /// verify); without it, a signed model is refused unless every signer re-signs.
    pub drop_signatures: bool,
    /// Rewrite the input's tail in place.
    pub in_place: bool,
    /// As [`EncryptOptions::outputs`](crate::protect::EncryptOptions::outputs).
    pub outputs: crate::pass::staged::OutputRules,
    pub progress: &'a dyn Progress,
}

/// What [`rewrap`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RewrapReport {
    pub input: String,
    pub output: String,
    pub removed: usize,
    pub added: usize,
    /// Recipient stanzas of the result (kind, label and tier).
    pub recipients: Vec<String>,
    /// Bytes written: the new tail in place, or the whole output.
    pub bytes_written: u64,
    /// What became of an earlier in-place rewrite of the model that a crash interrupted
    /// (finished or undone before this one started).
    pub recovered: Recovery,
}

/// Re-wraps the data keys of `input` for a new recipient list, writing `output`.
pub fn rewrap(input: &Path, output: &Path, key: &KeySource, opts: &RewrapOptions) -> Result<RewrapReport> {
    // An in-place rewrite of this model that a crash interrupted is finished (or undone)
    // first: the model is read as that rewrite left it.
    let recovered = if opts.in_place && same_file(input, output) {
        crate::pass::journal::recover(input)?
    } else {
        Recovery::Nothing
    };
    let model = open_protected(input, opts.progress)?;
    let p = Protection::of(&model)?.writable("re-wrapped")?;
    let tiers = p.sealed.header.tiers;
    let opened = open(&p.sealed, key)?;
    require_top_tier(&opened, tiers, "rewrap (every tier's MAC)")?;
    let digest = recorded_digest(&p.sealed)?;
    // What is kept is authenticated first: the header, the stanzas and the stored digest.
    check_seals(&p.sealed, &opened, &[])?;
    let (stanzas, removed, added) = new_stanzas(&p, &opened, opts)?;
    if stanzas.is_empty() {
        return Err(UnusableKey::RemoveAll.into());
    }
    let parsed: Vec<Stanza> = stanzas.iter().map(|(s, _)| s.clone()).collect();
    crate::format2::recipients::check_new(&parsed)?;
    let env = new_envelope(&p, &opened, &stanzas, &digest, opts)?;
    let recipients = parsed.iter().map(describe).collect();
    let bytes_written = if opts.in_place && same_file(input, output) {
        rewrite_tail(input, &p, entry_bytes(env))?
    } else {
        crate::pass::staged::check_output(&model, input, output, opts.in_place, &opts.outputs)?;
        p.rewrite_entry(&model, env, output, opts.in_place)?;
        std::fs::metadata(output).map(|m| m.len()).unwrap_or(0)
    };
    Ok(RewrapReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        removed,
        added,
        recipients,
        bytes_written,
        recovered,
    })
}

/// Refuses a key that opens a model of `tiers` below its top tier: `operation` needs them all.
pub(crate) fn require_top_tier(opened: &Opened, tiers: u32, operation: &'static str) -> Result<()> {
    if opened.tier < tiers {
        return Err(CoreError::NotTopKey { key_tier: opened.tier, tiers, operation, by_licence: opened.by_licence });
    }
    Ok(())
}

/// Whether a stanza is one `remove` names (a key's at every tier of a model of `tiers`).
pub(crate) fn removal_matcher(remove: &[Remove], tiers: u32) -> impl Fn(&Stanza) -> bool + '_ {
    let mut labels: Vec<String> = Vec::new();
    for r in remove {
        if let Remove::Key(k) = r {
            labels.extend(tier_chain(k, tiers).iter().map(|t| hex(&t.fingerprint())));
        }
    }
    move |s: &Stanza| {
        remove.iter().any(|r| match r {
            Remove::Label(l) => &s.label == l,
            Remove::Kind(k) => &s.kind == k,
            Remove::Key(_) => s.kind == onnx_protect_keys::KIND_KEY && labels.contains(&s.label),
        })
    }
}

/// Each stanza with its encoding as stored.
type StanzaPairs = Vec<(Stanza, pb::Stanza)>;

/// The kept stanzas (those no `remove` matches, each with its encoding as stored: a stanza
/// of a kind this build does not know is kept byte for byte) and the new ones; with the
/// counts.
fn new_stanzas(p: &ProtectedV2, opened: &Opened, opts: &RewrapOptions) -> Result<(StanzaPairs, usize, usize)> {
    let matches = removal_matcher(opts.remove, p.sealed.header.tiers);
    let before = p.sealed.stanzas.len();
    let mut stanzas: Vec<(Stanza, pb::Stanza)> = p
        .sealed
        .stanzas
        .iter()
        .zip(&p.sealed.raw_stanzas)
        .filter(|(s, _)| !matches(s))
        .map(|(s, raw)| (s.clone(), raw.clone()))
        .collect();
    let removed = before - stanzas.len();
    if removed == 0 && !opts.remove.is_empty() {
        return Err(UnusableKey::NothingToRemove.into());
    }
    let data_keys: Vec<onnx_protect_crypto::DataKey> = opened.data_keys.clone();
    let add = if opts.add.master.is_none() && opts.add.recipients.is_empty() {
        Vec::new()
    } else {
        crate::format2::recipients::wrap_all(opts.add, &data_keys)?
    };
    let added = add.len();
    stanzas.extend(add.into_iter().map(|s| {
        let raw = stanza_to_pb(&s);
        (s, raw)
    }));
    Ok((stanzas, removed, added))
}

/// The envelope with the new stanzas: MACs renewed for every tier, signatures renewed or
/// dropped as asked, no restored tiers kept otherwise.
fn new_envelope(
    p: &ProtectedV2,
    opened: &Opened,
    stanzas: &[(Stanza, pb::Stanza)],
    digest: &[u8; 32],
    opts: &RewrapOptions,
) -> Result<pb::Envelope> {
    let old = &p.sealed.envelope;
    let renewed: Vec<Vec<u8>> = opts.signing_keys.iter().map(|k| k.public().to_bytes().to_vec()).collect();
    let stale = old.signatures.iter().filter(|s| !renewed.contains(&s.public_key)).count();
    if stale > 0 && !opts.drop_signatures {
        return Err(CoreError::NotSigned(Unsigned::Stale { count: stale }));
    }
    let recipients = pb::Recipients { stanzas: stanzas.iter().map(|(_, raw)| raw.clone()).collect() }.encode_to_vec();
    let mut env = seal(old.header.clone(), recipients, digest, &opened.keys, opts.signing_keys);
    env.restored_tiers = old.restored_tiers;
    env.stored_digest = old.stored_digest.clone();
    Ok(env)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Replaces the manifest entry at the end of `path` (read as `p`) by `entry`, through the
/// journal of [`crate::pass::journal`]. Returns the bytes written to the model.
fn rewrite_tail(path: &Path, p: &ProtectedV2, entry: Vec<u8>) -> Result<u64> {
    let err = |e| CoreError::Write { path: path.to_path_buf(), source: e };
    let start = p.sealed.entry.start;
    // Only the tail is read: the time does not grow with the model.
    let f = std::fs::File::open(path).map_err(err)?;
    let len = f.metadata().map_err(err)?.len();
    let tail_len = len.checked_sub(start).and_then(|n| usize::try_from(n).ok()).ok_or(Modified::FileChanged)?;
    let mut old_tail = vec![0u8; tail_len];
    onnx_protect_fsio::file::read_exact_at(&f, &mut old_tail, start).map_err(err)?;
    crate::pass::journal::rewrite_tail(path, start, &old_tail, &entry)?;
    Ok(entry.len() as u64)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
