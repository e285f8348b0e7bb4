//! Decrypting a protected model into memory, without plaintext touching the disk.
//!
//! One request, [`InMemory`] (as age's `Decryptor` is one), says what to decrypt (a model
//! file, or a model already open), with which key, up to which tier, with which trusted
//! signers and whether the external data files are filled on demand;
//! [`InMemory::load`] returns a [`DecryptedModel`] that derefs to the original model file's
//! bytes, ready for a runtime that loads models from memory (onnxruntime's
//! session-from-bytes, `CreateSessionFromArray` in C, or tract), and
//! [`InMemory::load_for_session`] that and the index of the decrypted bytes.
//!
//! # Cost
//!
//! Format 2 with no tier restored in the file (every byte authenticated): the model file
//! and each external data file are read once (`pread`, chunk by chunk: no map of the file
//! adds to the resident set) into a private anonymous map (transparent huge pages where
//! the system gives them; a model file of at most 4 MiB is copied from the map the parser
//! read it through into the heap), where every byte is hashed and the encrypted spans are then
//! decrypted in place, in one parallel pass over content chunks; the bytes are
//! handed out only after the content digest, the MACs and any required signature match
//! (otherwise the decrypted spans are wiped first). The manifest entry is the file's last
//! top-level field, so the original model is the prefix of the buffer. A decryption that
//! changes a length (varint-stored tensors, external data files given back their
//! original names) checks the digest first and rebuilds the model in an owned buffer
//! ([`Method::Copied`]).
//!
//! Format 1 (read-only), and format 2 with tiers restored in the file: the key check and
//! the MACs (and, for format 2, the digest of the content as stored and in canonical
//! form) are verified first; then a model read from a file is mapped privately
//! copy-on-write (`MAP_PRIVATE`), so that only the pages the encrypted spans touch are
//! copied. A decryption below the top tier ends with its manifest entry rewritten, in an
//! owned buffer. A key whose tiers are all in clear in the file gets the file as it is.
//!
//! This is the memory sink of the one decryption plan a protected model's reader makes;
//! the other sink writes files ([`crate::protect::decrypt`]).
//!
//! [`InMemory::on_demand`] (Linux) verifies the external data files in a pass that
//! only hashes them, then hands them over as memory filled chunk by chunk when first read
//! (each chunk read again and checked against its verified hash): what the onnxruntime
//! loaders use, so that weights the runtime copies into its own buffers do not stay.
//!
//! [`InMemory::tier`] stops at a chosen tier, as `decrypt --tier` does. The
//! external data buffers are returned by `location` in [`DecryptedModel::external`],
//! which is what onnxruntime needs to take external initializers from memory.
//!
//! # Secrets in memory
//!
//! Decrypted pages are private anonymous memory. On Linux they are excluded from
//! core dumps (`MADV_DONTDUMP`), and the decrypted spans are overwritten with
//! zeros when the value is dropped (an owned buffer is zeroed whole). Like any
//! process memory they can still reach swap; lock the pages (or disable swap)
//! where that matters.
//!
//! The file must not be modified in place while the model is being decrypted or
//! while the result is alive (the usual contract of memory-mapped loaders).
//! Files replaced by a rename are detected, and every decrypted range of the
//! private map is written from the mapped bytes that the MAC was checked over
//! (then decrypted in place), not read back from the private map.
//!
//! # Example
//!
//! ```
//! use onnx_protect_core::keys::KeySource;
//! use onnx_protect_core::memory::{InMemory, Method};
//! use onnx_protect_core::protect::{encrypt, EncryptOptions};
//! use onnx_protect_core::format2::recipients::EncryptTo;
//! use onnx_protect_crypto::MasterKey;
//! use onnx_protect_select::Policy;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let (plain, protected) = (dir.path().join("model.onnx"), dir.path().join("protected.onnx"));
//! # std::fs::write(&plain, onnx_protect_format::testutil::tiny_model())?;
//! let key = KeySource::key(MasterKey::from_bytes([7; 32]));
//! let policy = Policy::default();
//! encrypt(&plain, &protected, &EncryptTo::key(key.clone()), &EncryptOptions::new(&policy))?;
//!
//! let model = InMemory::file(&protected, &key).load()?;
//! assert_eq!(&model[..], &std::fs::read(&plain)?[..]); // byte-identical to the original
//! assert_eq!(model.method(), Method::Mapped); // patched in a private map, not copied
//! // Hand `&model[..]` to a runtime that loads models from memory.
//! # Ok(())
//! # }
//! ```

use std::fs::File;
use std::path::Path;

use onnx_protect_format::Model;
use onnx_protect_keys::SignerKey;

use self::patch::{io_error, load, open};
use crate::error::{CoreError, Result};
use crate::keys::KeySource;
use crate::pass::decryption::{Decryption, NewEntry};
use crate::protection::{open_protected, Protection};
use crate::reader::Ask;

mod decrypted;
mod ondemand;
mod patch;
mod relocate;

pub use self::decrypted::{DecryptedBytes, DecryptedModel, Method, Skeleton};

/// Whether [`InMemory::on_demand`] can fill memory on demand here (a usable `userfaultfd`;
/// checked once per process).
pub fn on_demand_available() -> bool {
    onnx_protect_fsio::ondemand::available()
}

/// What a protected model is read from.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// A file, parsed here (an interrupted in-place rewrite of it finished first).
    File(&'a Path),
    /// A model already open, read from a file (`Model::open`) or parsed from memory
    /// (`Model::from_vec`).
    Model(&'a Model),
}

/// What a caller accepts of a model's protection ([`InMemory::accept`]).
pub type Accept = dyn Fn(&Protection) -> Result<()>;

/// A decryption into memory: what to decrypt, with which key, and how (the options), then
/// what to produce ([`InMemory::load`], [`InMemory::load_for_session`]).
///
/// Whatever the options, the key check value, the MACs, the content digest and any
/// required signature are verified before a decrypted byte is handed out: a wrong key
/// gives [`CoreError::WrongKey`] and modified bytes [`CoreError::Modified`], exactly as
/// with [`crate::protect::decrypt`].
#[derive(Clone, Copy)]
pub struct InMemory<'a> {
    input: Input<'a>,
    key: &'a KeySource,
    tier: Option<u32>,
    signers: &'a [SignerKey],
    on_demand: bool,
    model_on_demand: bool,
    read_once: bool,
    verify_on_read: bool,
    reads_few: bool,
    accept: Option<&'a Accept>,
}

impl<'a> InMemory<'a> {
    /// The protected model at `path`, opened with `key`: a full decryption (the key's own
    /// tier), no signer required, every file decrypted before it is handed out.
    pub fn file(path: &'a Path, key: &'a KeySource) -> InMemory<'a> {
        InMemory::of(Input::File(path), key)
    }

    /// A protected model already open, read from a file (`Model::open`) or parsed from
    /// memory (`Model::from_vec`), opened with `key`. A model read from a file is copied
    /// from the very file it was parsed from.
    pub fn model(model: &'a Model, key: &'a KeySource) -> InMemory<'a> {
        InMemory::of(Input::Model(model), key)
    }

    /// `input` with `key` and every option at its default.
    fn of(input: Input<'a>, key: &'a KeySource) -> InMemory<'a> {
        InMemory {
            input,
            key,
            tier: None,
            signers: &[],
            on_demand: false,
            model_on_demand: false,
            read_once: false,
            verify_on_read: false,
            reads_few: false,
            accept: None,
        }
    }

    /// For tiered models, decrypts up to tier `tier` (`None`: the key's own tier), as
    /// `decrypt --tier` does to a file: below the top tier the model bytes are a valid model
    /// whose higher tiers stay encrypted, with the manifest recording the restored tiers. A
    /// key whose tiers are all in clear in the file already (and no tier asked for) gets the
    /// file as it is.
    pub fn tier(self, tier: Option<u32>) -> InMemory<'a> {
        InMemory { tier, ..self }
    }

    /// Requires a valid signature of one of `signers` (format 2; a format-1 model is
    /// refused when signers are given). None given: no signature is required.
    pub fn signers(self, signers: &'a [SignerKey]) -> InMemory<'a> {
        InMemory { signers, ..self }
    }

    /// With `on_demand`, where this system has `userfaultfd` and the decryption is a full
    /// one that changes no length (format 2, nothing restored in the file, no external
    /// file renamed), the external data files become memory filled on demand (see the
    /// `ondemand` module): each reports [`Method::OnDemand`]; call
    /// [`DecryptedBytes::settle`] on them once the runtime has built what it keeps, and
    /// throw that away if it fails. Otherwise (and without `on_demand`, the default) every
    /// file is decrypted before it is handed out.
    ///
    /// A system call handed a pointer into a chunk not yet read fails with `EFAULT`; a
    /// process forked while the result lives first fills it completely.
    pub fn on_demand(self, on_demand: bool) -> InMemory<'a> {
        InMemory { on_demand, ..self }
    }

    /// With `model_on_demand` (and [`InMemory::on_demand`]), the model file's initializers of
    /// at least 64 KiB stored in it (`raw_data`) are filled on demand too, when the model
    /// file is at least 16 MiB and was read from a file: the model's bytes are then memory
    /// filled on demand ([`Method::OnDemand`]), settled with the external files, and
    /// [`DecryptedModel::take_skeleton`] gives the rest of the file, read and verified up
    /// front, to build a graph from without reading those tensors. For a loader that hands
    /// them to the runtime as external data from memory (`onnx_protect_session::files`);
    /// the bytes cannot be moved ([`DecryptedBytes::move_within`]).
    pub fn model_on_demand(self, model_on_demand: bool) -> InMemory<'a> {
        InMemory { model_on_demand, ..self }
    }

    /// With `read_once`, memory filled on demand is for a reader that copies what it reads,
    /// each byte once and in order (onnxruntime copying external data given in memory, as
    /// onnxruntime-node does): while the session is built, the region holds a few blocks
    /// beyond the one read instead of the largest tensor's worth. A reader that reads a
    /// tensor again after others then has it filled again.
    pub fn read_once(self, read_once: bool) -> InMemory<'a> {
        InMemory { read_once, ..self }
    }

    /// With `verify_on_read`, memory filled on demand verifies a chunk of an external data
    /// file only when it is first read, as every fill does: [`DecryptedBytes::settle`] then
    /// refuses the load only for a chunk filled before it (read, or filled ahead; those
    /// never filled are not hashed).
    /// For a runtime that reads few weights while it builds a session (onnxruntime with
    /// prepacking off), whose session then takes less of the time verifying
    /// (docs/performance.md). A chunk that does not match its hash and is first read after
    /// `settle` ends the process (one line on standard error, then `abort`), as
    /// a chunk changed on disk after the load does without this option: a changed file is
    /// found when its bytes are needed, not when the load returns. No effect on a model
    /// whose header lists no chunk hashes (verified whole first) or on the model file's own
    /// tensors (hashed whole for the content digest before anything is handed over).
    pub fn verify_on_read(self, verify_on_read: bool) -> InMemory<'a> {
        InMemory { verify_on_read, ..self }
    }

    /// With `reads_few`, memory filled on demand is for a runtime that reads few weights
    /// while it builds a session, each once to make its own copy (onnxruntime with
    /// prepacking off: NCHWc filters, a folded cast; it keeps views of the others and reads
    /// them in its first run): nothing is filled before it is read or while the handler is
    /// idle, a read-ahead starts only where a reader crosses into the next block at its
    /// first page, and a few blocks stay filled before `settle`, as with `read_once`.
    pub fn reads_few(self, reads_few: bool) -> InMemory<'a> {
        InMemory { reads_few, ..self }
    }

    /// Decrypts only a model whose protection `accept` accepts: it is called once the
    /// manifest is read, before any key is tried (a loader that reads one format version
    /// refuses the others there).
    pub fn accept(self, accept: &'a Accept) -> InMemory<'a> {
        InMemory { accept: Some(accept), ..self }
    }

    /// How the runtime reads memory filled on demand.
    fn reader(&self) -> ondemand::Reader {
        ondemand::Reader { once: self.read_once, verify_on_read: self.verify_on_read, few: self.reads_few }
    }

    /// Verifies and decrypts the model into memory (see the module documentation for how
    /// each format is copied).
    pub fn load(self) -> Result<DecryptedModel> {
        match self.input {
            Input::File(path) => {
                let (file, model) = open_checked(path)?;
                Ok(self.decrypt(&model, Some(file), false)?.0)
            }
            Input::Model(model) => Ok(self.decrypt(model, source_file(model)?, false)?.0),
        }
    }

    /// What a runtime session is built from: the model decrypted as by [`InMemory::load`],
    /// and the index of the decrypted bytes ([`DecryptedModel::index`]), made from the one
    /// parse of a model file (a model given open is indexed anew from the decrypted
    /// bytes). Below the top tier a model whose outputs are label-locked is refused
    /// ([`CoreError::NotTopKey`]): a session would give its scores in locked order.
    pub fn load_for_session(self) -> Result<(DecryptedModel, Model)> {
        match self.input {
            Input::File(path) => {
                let (file, model) = open_checked(path)?;
                let decrypted = self.decrypt(&model, Some(file), true).and_then(for_session)?;
                let index = decrypted.index(model)?;
                Ok((decrypted, index))
            }
            Input::Model(model) => {
                let decrypted = self.decrypt(model, source_file(model)?, true).and_then(for_session)?;
                let index = decrypted.index_anew()?;
                Ok((decrypted, index))
            }
        }
    }

    /// The decryption of `model` (read from `file`, when given), after `accept`; and whether
    /// the model's outputs are label-locked. For a `session`, a decryption below the top tier
    /// hands the runtime no manifest (one recording the restored tiers is for a file), so it
    /// takes the on-demand path as a full one does.
    fn decrypt(&self, model: &Model, file: Option<File>, session: bool) -> Result<(DecryptedModel, bool)> {
        let protection = Protection::of(model)?;
        if let Some(accept) = self.accept {
            accept(&protection)?;
        }
        let label_locked = matches!(&protection, Protection::V2(p) if p.sealed.header.label_lock.is_some());
        let mut d: Decryption<'_> =
            protection.into_decryption(model, Ask { key: self.key, tier: self.tier, signers: self.signers })?;
        if session && matches!(d.new_entry, NewEntry::Restored(_)) {
            d.new_entry = NewEntry::Remove;
        }
        let decrypted = match ondemand::on_demand_if(self.on_demand, self.reader(), self.model_on_demand, d)? {
            Ok(done) => done,
            Err(d) => load(d, file)?,
        };
        Ok((decrypted, label_locked))
    }
}

/// `decrypted`, unless its outputs are label-locked (`label_locked`) and it is below the
/// top tier: they stay locked there (format.md §15), and a session would give the scores in
/// locked order, so it is refused rather than served.
fn for_session((decrypted, label_locked): (DecryptedModel, bool)) -> Result<DecryptedModel> {
    if label_locked && decrypted.tier() < decrypted.tiers() {
        return Err(CoreError::NotTopKey {
            key_tier: decrypted.tier(),
            tiers: decrypted.tiers(),
            operation: "running a model whose outputs are label-locked (below the top tier they come in locked order)",
            by_licence: false,
        });
    }
    Ok(decrypted)
}

/// An open handle of the file `model` was parsed from, if it was read from one.
fn source_file(model: &Model) -> Result<Option<File>> {
    let path = model.path.as_deref().unwrap_or(Path::new("<model>"));
    model.source_file().map(File::try_clone).transpose().map_err(|e| io_error(path, e))
}

/// The protected model at `path`, parsed, and an open handle of the very file it was
/// parsed from (the one the parser mapped).
fn open_checked(path: &Path) -> Result<(File, Model)> {
    let model = open_protected(path, &onnx_protect_format::NoProgress)?;
    let file = match model.source_file() {
        Some(f) => f.try_clone().map_err(|e| io_error(path, e))?,
        None => open(path)?,
    };
    Ok((file, model))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use onnx_protect_crypto::MasterKey;
    use onnx_protect_select::Policy;

    use super::*;

    fn protect(dir: &Path, mode: &str) -> (PathBuf, PathBuf, KeySource) {
        let mut policy = Policy::default();
        policy.apply_override("mode", &format!("*={mode}")).unwrap();
        crate::protect::encrypt_tiny(dir, 3, &policy)
    }

    #[test]
    fn mapped_result_is_the_original_and_the_file_is_untouched() {
        for mode in ["ctr", "fp"] {
            let dir = tempfile::tempdir().unwrap();
            let (plain, protected, key) = protect(dir.path(), mode);
            let before = std::fs::read(&protected).unwrap();
            let m = InMemory::file(&protected, &key).load().unwrap();
            assert_eq!(m.method(), Method::Mapped, "{mode}");
            assert_eq!(&m[..], &std::fs::read(&plain).unwrap()[..]);
            assert!(m.decrypted_bytes() > 0 && m.tensors() > 0);
            drop(m);
            assert_eq!(std::fs::read(&protected).unwrap(), before, "the file must never be written");
        }
    }

    #[test]
    fn a_model_parsed_from_memory_takes_the_one_pass_copy_too() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, protected, key) = protect(dir.path(), "ctr");
        let model = Model::from_vec(std::fs::read(&protected).unwrap(), None).unwrap();
        let m = InMemory::model(&model, &key).load().unwrap();
        assert_eq!(m.method(), Method::Mapped);
        assert_eq!(&m[..], &std::fs::read(&plain).unwrap()[..]);
    }

    #[test]
    fn wrong_key_and_unprotected_models_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, protected, _) = protect(dir.path(), "fp");
        let wrong = KeySource::key(MasterKey::from_bytes([4; 32]));
        assert!(matches!(InMemory::file(&protected, &wrong).load(), Err(CoreError::WrongKey)));
        assert!(matches!(InMemory::file(&plain, &wrong).load(), Err(CoreError::NotProtected)));
    }

    #[test]
    fn a_flipped_ciphertext_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, protected, key) = protect(dir.path(), "ctr");
        let model = Model::open(&protected).unwrap();
        let p = crate::format2::ProtectedV2::read(&model).unwrap();
        let t = &model.tensors[p.targets[0].tensor];
        let (range, _) = t.file_pieces(p.targets[0].spans[0].0, p.targets[0].spans[0].1)[0].clone();
        drop(model);
        let mut bytes = std::fs::read(&protected).unwrap();
        bytes[range.start as usize] ^= 1;
        std::fs::write(&protected, bytes).unwrap();
        let e = InMemory::file(&protected, &key).load().unwrap_err();
        assert!(matches!(e, CoreError::Modified(crate::error::Modified::Content)), "{e}");
    }

    /// The index of a session is that of the original model, whether the model is given as
    /// a file (the one parse reused) or open (indexed anew from the decrypted bytes).
    #[test]
    fn a_session_gets_the_index_of_the_decrypted_model_from_a_file_or_a_model_given_open() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, protected, key) = protect(dir.path(), "ctr");
        let original = Model::open(&plain).unwrap();
        let layout = |m: &Model| m.tensors.iter().map(|t| format!("{} {:?}", t.name, t.data)).collect::<Vec<_>>();
        let (d, index) = InMemory::file(&protected, &key).load_for_session().unwrap();
        assert_eq!(&d[..], &std::fs::read(&plain).unwrap()[..]);
        assert_eq!(layout(&index), layout(&original));
        let open = Model::from_vec(std::fs::read(&protected).unwrap(), None).unwrap();
        let (d, index) = InMemory::model(&open, &key).load_for_session().unwrap();
        assert_eq!(&d[..], &std::fs::read(&plain).unwrap()[..]);
        assert_eq!(layout(&index), layout(&original));
        assert_eq!(index.bytes(), &d[..], "indexed anew: over the decrypted bytes");
    }

    /// `accept` sees the protection before any key is tried: what it refuses is refused
    /// even with a wrong key, and what it accepts goes on to the key.
    #[test]
    fn accept_is_asked_before_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (_, protected, key) = protect(dir.path(), "fp");
        let wrong = KeySource::key(MasterKey::from_bytes([4; 32]));
        let refuse = |p: &Protection| -> Result<()> {
            assert_eq!(p.format_version(), 2);
            Err(CoreError::ReadOnlyFormat { version: 2, operation: "refused by the caller" })
        };
        let e = InMemory::file(&protected, &wrong).accept(&refuse).load().unwrap_err();
        assert!(matches!(e, CoreError::ReadOnlyFormat { version: 2, .. }), "{e}");
        let pass = |_: &Protection| -> Result<()> { Ok(()) };
        assert!(matches!(InMemory::file(&protected, &wrong).accept(&pass).load(), Err(CoreError::WrongKey)));
        assert!(InMemory::file(&protected, &key).accept(&pass).load().is_ok());
    }
}
