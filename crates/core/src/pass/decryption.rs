//! One decryption, two sinks. What a decryption does is decided once, before any byte is
//! written or returned: a [`Decryption`] (made by each format's reader after the key
//! opened it and the MACs it reaches matched) says which spans become what, what becomes
//! of the manifest entry, under which names the external data files go and which digest
//! the bytes read must still have. [`Decryption::write`] carries it out into files (one
//! pass into private staging, renamed into place: docs/format.md §12 steps 6–7);
//! `crate::memory` carries it out into memory.

use std::ops::Range;
use std::path::Path;

use onnx_protect_format::write::{Content, Edit};
use onnx_protect_format::{Model, Progress};
use onnx_protect_proto::v2 as pb;

use crate::error::{CoreError, Result, UnusableKey};
use crate::format2::seal::{write_entry, Expected};
use crate::pass::action::Action;
use crate::pass::content::{digest_of, relocations, Pass};
use crate::pass::staged::{check_output_as, durable, OutputRules, Outputs};
use crate::pass::Hash;
use crate::target::Target;

/// What becomes of a protected model's manifest entry.
pub(crate) enum NewEntry {
    /// Removed: a full decryption gives back the original model.
    Remove,
    /// Replaced by these bytes (a format-1 entry recording its restored tiers).
    Bytes(Vec<u8>),
    /// A partial format-2 decryption (docs/format.md §11): this envelope, whose
    /// `stored_digest` becomes the digest of the output's covered files, appended.
    Restored(pb::Envelope),
}

/// A decryption of `model`, decided and authorised; see the module documentation.
pub(crate) struct Decryption<'m> {
    pub model: &'m Model,
    pub format_version: u32,
    /// What is transformed: the manifest's targets (and, for a label lock undone, targets
    /// of their own), each with its action (same order).
    pub targets: Vec<Target>,
    pub actions: Vec<Action>,
    /// The manifest's targets decrypted, and their bytes (for the report).
    pub tensors: usize,
    pub decrypted_bytes: u64,
    /// Where the manifest entry is in the model file.
    pub entry: Range<u64>,
    pub new_entry: NewEntry,
    /// The names the external data files are written under (their locations when `None`).
    pub names: Option<Vec<String>>,
    /// What the covered files as stored must hash to (format 2 with nothing restored:
    /// checked while they are read, before anything is released); `None` when every check
    /// is done already.
    pub pending: Option<Expected>,
    /// The content-digest chunk size (docs/format.md §9).
    pub chunk: u64,
    /// The tier the result is decrypted to, and the model's number of tiers (equal for a
    /// full decryption).
    pub tier: u32,
    pub tiers: u32,
}

/// Where [`Decryption::write`] writes, and how.
pub(crate) struct FileSink<'a> {
    /// The protected model's path (an output may not be it, unless `in_place`).
    pub input: &'a Path,
    pub output: &'a Path,
    pub in_place: bool,
    pub sync: bool,
    pub rules: &'a OutputRules,
    pub progress: &'a dyn Progress,
}

impl<'m> Decryption<'m> {
    /// The manifest's targets whose action is not `Skip`: how many, and their bytes.
    pub(crate) fn count(targets: &[Target], actions: &[Action]) -> (usize, u64) {
        let done = targets.iter().zip(actions).filter(|(_, a)| !matches!(a, Action::Skip));
        done.fold((0, 0), |(n, b), (t, _)| (n + 1, b + t.bytes()))
    }

    /// Whether the covered content stops where the manifest entry starts: the entry is
    /// the model file's last field (always in format 2) and is removed or appended anew.
    /// Otherwise the whole file is read and the entry is edited in place.
    pub(crate) fn entry_cut(&self) -> bool {
        self.entry.end == self.model.bytes().len() as u64 && !matches!(self.new_entry, NewEntry::Bytes(_))
    }

    /// The model file's bytes a pass reads.
    pub(crate) fn content_len(&self) -> u64 {
        if self.entry_cut() {
            self.entry.start
        } else {
            self.model.bytes().len() as u64
        }
    }

    /// The model file's edits beyond the targets': the external data files' new names and,
    /// unless the entry is cut off, its removal or replacement.
    pub(crate) fn extra_edits(&self) -> Result<Vec<Edit>> {
        let mut edits = relocations(self.model, self.names.as_deref())?;
        if !self.entry_cut() {
            let content = match &self.new_entry {
                NewEntry::Remove => Vec::new(),
                NewEntry::Bytes(b) => b.clone(),
                NewEntry::Restored(_) => {
                    return Err(CoreError::Internal("a format-2 entry that is not the last field"))
                }
            };
            edits.push(Edit { range: self.entry.clone(), content: Content::Bytes(content), ancestors: Vec::new() });
        }
        Ok(edits)
    }

    /// The file sink: one pass writes every output into private staging, hashing what
    /// the pending digest and a restored entry need; the outputs are renamed into place
    /// only if the digest matches (docs/format.md §12 steps 6–7). A decryption that would
    /// write a format-1 file (a partial one) is refused: that format is read-only.
    pub(crate) fn write(self, sink: &FileSink<'_>) -> Result<()> {
        if self.format_version == 1 && !matches!(self.new_entry, NewEntry::Remove) {
            return Err(UnusableKey::Format1Partial.into());
        }
        let model = self.model;
        let names = self.names.as_deref();
        check_output_as(model, sink.input, sink.output, sink.in_place, sink.rules, names)?;
        let outputs = Outputs::stage_as(model, sink.output, names)?;
        let files = outputs.covered_files();
        let durable = durable(sink.in_place, sink.sync);
        let restored = matches!(self.new_entry, NewEntry::Restored(_));
        let hash = match (self.pending.is_some(), restored) {
            (true, false) => Hash::Input,
            (true, true) => Hash::Both,
            (false, false) => Hash::None,
            (false, true) => Hash::Output,
        };
        let pass = Pass {
            model,
            content_len: self.content_len(),
            targets: &self.targets,
            actions: &self.actions,
            extra: self.extra_edits()?,
            hash,
            chunk: self.chunk,
            durable,
            progress: sink.progress,
        };
        let leaves = pass.run(&files)?;
        if let Some(expected) = &self.pending {
            expected.check(&leaves.input)?;
        }
        if let NewEntry::Restored(mut env) = self.new_entry {
            env.stored_digest = digest_of(&leaves.output).to_vec();
            let end = leaves.output.first().map(|f| f.len).unwrap_or(0);
            write_entry(&files, sink.output, env, end)?;
        }
        drop(files);
        outputs.staged.commit(durable)
    }
}
