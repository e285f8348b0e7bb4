//! The seal of a format-2 entry (docs/format.md §10): the MAC of every tier and the
//! signatures over the encoded header, the encoded recipients and the content digest,
//! made by [`seal`] for every writer (encrypt, rekey, rewrap, sign) and checked by
//! [`check_seals`] for every reader; the entry, its checksum filled in, is written last.

use std::collections::HashSet;
use std::path::Path;

use onnx_protect_crypto::{content_digest, signed_message, tier_mac, tier_mac_matches, FileLeaves, TierKeys};
use onnx_protect_keys::{SignerKey, SigningKey, Stanza};
use onnx_protect_proto::v2 as pb;
use onnx_protect_proto::Message;

use super::envelope::{entry_bytes, stanza_to_pb, Sealed};
use super::recipients::Opened;
use crate::error::{BadManifest, CoreError, Modified, Result, Unsigned};
use crate::pass::content::{digest_of, Pass};
use crate::pass::{Hash, Out};

/// The encoded `Recipients` message of `stanzas`.
pub(crate) fn encode_recipients(stanzas: &[Stanza]) -> Vec<u8> {
    pb::Recipients { stanzas: stanzas.iter().map(stanza_to_pb).collect() }.encode_to_vec()
}

/// The envelope of the encoded `header` and `recipients` sealed over the content
/// `digest`: the MAC of every tier of `keys` (tier 1 first) and a signature of each of
/// `signers`; nothing restored. Its checksum is filled in when it is written ([`entry_bytes`]).
pub(crate) fn seal(
    header: Vec<u8>,
    recipients: Vec<u8>,
    digest: &[u8; 32],
    keys: &[TierKeys],
    signers: &[SigningKey],
) -> pb::Envelope {
    let macs = keys
        .iter()
        .enumerate()
        .map(|(i, k)| tier_mac(k, i as u32 + 1, &header, &recipients, digest).to_vec())
        .collect();
    let signatures = sign_all(signers, &header, &recipients, digest);
    pb::Envelope { header, recipients, content_digest: digest.to_vec(), macs, signatures, ..Default::default() }
}

/// A signature of each of `keys` over the message the MACs cover.
fn sign_all(keys: &[SigningKey], h: &[u8], r: &[u8], digest: &[u8; 32]) -> Vec<pb::Signature> {
    let msg = signed_message(h, r, digest);
    keys.iter()
        .map(|k| pb::Signature { public_key: k.public().to_bytes().to_vec(), signature: k.sign(&msg).to_vec() })
        .collect()
}

/// The envelope of `sealed` with the signatures of `keys` added (replacing earlier ones
/// of the same keys).
pub(crate) fn with_signatures(sealed: &Sealed, keys: &[SigningKey]) -> Result<pb::Envelope> {
    let mut env = sealed.envelope.clone();
    let digest = recorded_digest(sealed)?;
    let new = sign_all(keys, &env.header, &env.recipients, &digest);
    env.signatures.retain(|s| !new.iter().any(|n| n.public_key == s.public_key));
    env.signatures.extend(new);
    Ok(env)
}

/// Runs `pass` (which hashes what it writes) into `files`, the staged outputs of
/// `output`, then writes after the model the entry of `header` (its `external_leaves` set
/// to those of the external files written) and `stanzas` sealed over the digest of what
/// was written, with the MACs of `keys` and the signatures of `signers`: how every
/// writing of a new protection ends (docs/format.md §3, §9, §10).
pub(crate) fn write_sealed(
    pass: Pass<'_>,
    files: &[Option<Out<'_>>],
    output: &Path,
    header: &mut pb::Header,
    stanzas: &[Stanza],
    keys: &[TierKeys],
    signers: &[SigningKey],
) -> Result<()> {
    if pass.hash != Hash::Output {
        return Err(CoreError::Internal("a sealed pass that does not hash what it writes"));
    }
    let leaves = pass.run(files)?;
    header.external_leaves = leaves.output.iter().skip(1).flat_map(|f| f.leaves.iter().flatten().copied()).collect();
    let envelope = seal(header.encode_to_vec(), encode_recipients(stanzas), &digest_of(&leaves.output), keys, signers);
    write_entry(files, output, envelope, leaves.output.first().map(|f| f.len).unwrap_or(0))
}

/// Writes the manifest entry of `envelope` at `at` in the model's output (the first of
/// `files`, the outputs of a pass to `output`).
pub(crate) fn write_entry(files: &[Option<Out<'_>>], output: &Path, envelope: pb::Envelope, at: u64) -> Result<()> {
    let model_out = files.first().copied().flatten().map(|o| o.file).ok_or(CoreError::Internal("no model output"))?;
    onnx_protect_fsio::file::write_all_at(model_out, &entry_bytes(envelope), at)
        .map_err(|e| CoreError::Write { path: output.to_path_buf(), source: e })
}

/// Checks every MAC of the tiers `opened` reaches and the signatures of `signers` (when
/// any are given) over the header, the recipients and the recorded content digest
/// (docs/format.md §10). They need no content byte, so they are checked before the content
/// is read: what the header says of it (the external files' lengths) is then authentic.
pub(crate) fn check_seals(sealed: &Sealed, opened: &Opened, signers: &[SignerKey]) -> Result<()> {
    let env = &sealed.envelope;
    let recorded = recorded_digest(sealed)?;
    for (i, k) in opened.keys.iter().enumerate() {
        let t = i as u32 + 1;
        let mac = env.macs.get(i).ok_or(CoreError::Internal("a tier without a MAC"))?;
        if !tier_mac_matches(k, t, &env.header, &env.recipients, &recorded, mac) {
            return Err(Modified::Mac { tier: t }.into());
        }
    }
    check_signatures(sealed, &recorded, signers)
}

/// The content digest the envelope records (32 bytes: checked when it was parsed).
pub(crate) fn recorded_digest(sealed: &Sealed) -> Result<[u8; 32]> {
    sealed.envelope.content_digest.as_slice().try_into().map_err(|_| BadManifest::DigestLength.into())
}

/// What the covered files in canonical form must hash to (docs/format.md §3, §9, §11):
/// the content digest the envelope records and, when the header lists them, the leaves of
/// the external data files.
#[derive(Debug, Clone)]
pub(crate) struct Expected {
    pub digest: [u8; 32],
    /// The header's `external_leaves`, file 1's chunks first (empty: not listed).
    pub external: Vec<[u8; 32]>,
}

impl Expected {
    /// What the content of the model `sealed` is the entry of must hash to.
    pub(crate) fn of(sealed: &Sealed) -> Result<Expected> {
        let external = sealed.header.external_leaves.chunks_exact(32).map(|c| c.try_into().unwrap_or([0; 32]));
        Ok(Expected { digest: recorded_digest(sealed)?, external: external.collect() })
    }

    /// Checks the leaves of the covered files (file 0 first): their digest, and the
    /// external files' leaves when the header lists them.
    pub(crate) fn check(&self, leaves: &[FileLeaves]) -> Result<()> {
        if content_digest(leaves) != self.digest {
            return Err(Modified::Content.into());
        }
        if !self.external.is_empty() && !leaves.iter().skip(1).flat_map(|f| &f.leaves).eq(self.external.iter()) {
            return Err(Modified::ExternalLeaves.into());
        }
        Ok(())
    }

    /// Checks the model file's leaves and the external files' leaves listed in the header:
    /// their digest (`None` when the header lists none). The external leaves are then
    /// those of the external files if each chunk hashes to its own.
    pub(crate) fn check_listed(&self, model_file: &FileLeaves, sizes: &[u64], chunk: u64) -> Option<Result<()>> {
        if self.external.is_empty() {
            return None;
        }
        let mut files = vec![model_file.clone()];
        let mut rest = &self.external[..];
        for &len in sizes {
            let n = usize::try_from(onnx_protect_crypto::chunk_count(len, chunk)).unwrap_or(usize::MAX);
            let Some((these, more)) = rest.split_at_checked(n) else {
                return Some(Err(Modified::ExternalLeaves.into()));
            };
            files.push(FileLeaves { len, leaves: these.to_vec() });
            rest = more;
        }
        if !rest.is_empty() {
            return Some(Err(Modified::ExternalLeaves.into()));
        }
        Some(if content_digest(&files) == self.digest { Ok(()) } else { Err(Modified::Content.into()) })
    }
}

/// Checks the signatures of `signers` over the canonical `digest`: at least one trusted
/// signer signed, and every signature of a trusted signer verifies.
pub(crate) fn check_signatures(sealed: &Sealed, digest: &[u8; 32], signers: &[SignerKey]) -> Result<()> {
    if signers.is_empty() {
        return Ok(());
    }
    let env = &sealed.envelope;
    let msg = signed_message(&env.header, &env.recipients, digest);
    let trusted: HashSet<[u8; 32]> = signers.iter().map(SignerKey::to_bytes).collect();
    let mut found = false;
    for s in &env.signatures {
        let Ok(pk) = <[u8; 32]>::try_from(s.public_key.as_slice()) else { continue };
        if !trusted.contains(&pk) {
            continue;
        }
        let key = SignerKey::from_bytes(&pk).map_err(|_| Modified::SignerKey)?;
        if !key.verify(&msg, &s.signature) {
            return Err(Modified::Signature { signer: key.to_text() }.into());
        }
        found = true;
    }
    if !found {
        let signers = signers.iter().map(SignerKey::to_text).collect();
        return Err(CoreError::NotSigned(Unsigned::Missing { signers }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(len: u64, tags: &[u8]) -> FileLeaves {
        FileLeaves { len, leaves: tags.iter().map(|&t| [t; 32]).collect() }
    }

    #[test]
    fn listed_chunk_hashes_must_be_those_of_the_content_and_give_its_digest() {
        let files = [leaves(10, &[1]), leaves(70_000, &[2, 3]), leaves(5, &[4])];
        let digest = content_digest(&files);
        let listed = Expected { digest, external: vec![[2; 32], [3; 32], [4; 32]] };
        assert!(listed.check(&files).is_ok());
        assert_eq!(listed.check_listed(&files[0], &[70_000, 5], 65_536).map(|r| r.is_ok()), Some(true));
        // Not listed: the digest alone.
        let none = Expected { digest, external: Vec::new() };
        assert!(none.check(&files).is_ok());
        assert!(none.check_listed(&files[0], &[70_000, 5], 65_536).is_none());
        // A listed hash that is not the content's, with the right digest: modified, by both
        // ways of checking.
        let wrong = Expected { digest, external: vec![[2; 32], [9; 32], [4; 32]] };
        assert!(matches!(wrong.check(&files), Err(CoreError::Modified(Modified::ExternalLeaves))));
        assert!(matches!(
            wrong.check_listed(&files[0], &[70_000, 5], 65_536),
            Some(Err(CoreError::Modified(Modified::Content)))
        ));
        // Too few or too many for the sizes.
        for n in [2, 4] {
            let e = Expected { digest, external: vec![[2; 32]; n] };
            assert!(
                matches!(
                    e.check_listed(&files[0], &[70_000, 5], 65_536),
                    Some(Err(CoreError::Modified(Modified::ExternalLeaves)))
                ),
                "{n}"
            );
        }
        // Another digest.
        let other = Expected { digest: [0; 32], external: listed.external.clone() };
        assert!(matches!(other.check(&files), Err(CoreError::Modified(Modified::Content))));
    }
}
