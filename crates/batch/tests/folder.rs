#![allow(clippy::unwrap_used)] // tests may unwrap
//! A model folder as an item of a batch list (docs/batch.md): encrypted, decrypted and
//! verified whole, resumed, set aside and replaced; the operations that do not take a
//! folder refuse it.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Mutex;

use onnx_protect_batch::{run, FileResult, Inputs, Observer, Operation, Options, Summary};
use onnx_protect_core::keys::KeySource;
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::testutil::{external_float_tensor, matmul_chain, tiny_model};
use onnx_protect_select::Policy;

/// An item's relative path, status and error name.
type Line = (String, &'static str, Option<String>);

/// The status of each item, by relative path.
#[derive(Default)]
struct Seen(Mutex<Vec<Line>>);

impl Observer for Seen {
    fn start(&self, _files: usize) {}
    fn done(&self, r: &FileResult<'_>) {
        let e = r.error.map(|e| e.name().to_string());
        self.0.lock().unwrap().push((r.item.rel.clone(), r.status.as_str(), e));
    }
}

fn batch(op: Operation<'_>, base: &Path, out: &Path, force: bool) -> (Summary, Vec<Line>) {
    let opts = Options {
        operation: op,
        inputs: Inputs::List { file: base.join("list.txt"), base: Some(base.to_path_buf()) },
        out_dir: Some(out.to_path_buf()),
        jobs: NonZeroUsize::MIN,
        shard: None,
        force,
        make_dirs: true,
        sync: false,
    };
    let seen = Seen::default();
    let summary = run(&opts, &seen).unwrap();
    let mut v = seen.0.into_inner().unwrap();
    v.sort();
    (summary, v)
}

fn make(base: &Path) {
    let f = base.join("models/llm");
    std::fs::create_dir_all(&f).unwrap();
    let w = external_float_tensor("W0", &[4, 4], "model.onnx.data", 0, 64);
    std::fs::write(f.join("model.onnx"), matmul_chain(&[w])).unwrap();
    let data: Vec<u8> = (0..16).flat_map(|i| (i as f32 - 7.5).to_le_bytes()).collect();
    std::fs::write(f.join("model.onnx.data"), data).unwrap();
    std::fs::write(f.join("tokenizer.json"), b"{}").unwrap();
    std::fs::write(base.join("single.onnx"), tiny_model()).unwrap();
    std::fs::write(base.join("list.txt"), "models/llm\nsingle.onnx\n").unwrap();
}

#[test]
fn a_folder_item_is_encrypted_decrypted_and_resumed_whole() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("in");
    make(&base);
    let key = KeySource::key(MasterKey::from_bytes([4; 32]));
    let policy = Policy::default();
    let enc = d.path().join("enc");
    let (s, v) = batch(Operation::Encrypt { key: &key, policy: &policy }, &base, &enc, false);
    assert_eq!((s.ok, s.failed.len()), (2, 0), "{v:?}");
    let folder = onnx_protect_folder::Folder::open(&enc.join("models/llm")).unwrap();
    assert_eq!(folder.models().len(), 1);
    assert_eq!(folder.files().len(), 1);
    // A second run skips both.
    let (s, _) = batch(Operation::Encrypt { key: &key, policy: &policy }, &base, &enc, false);
    assert_eq!(s.skipped, 2);
    // Forced, the folder's earlier output is replaced.
    let (s, v) = batch(Operation::Encrypt { key: &key, policy: &policy }, &base, &enc, true);
    assert_eq!(s.ok, 2, "{v:?}");
    let again = onnx_protect_folder::Folder::open(&enc.join("models/llm")).unwrap();
    assert_ne!(again.id(), folder.id());
    let leftovers: Vec<_> = std::fs::read_dir(enc.join("models")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    // Decrypted, the folder is the original.
    std::fs::write(enc.join("list.txt"), "models/llm\n").unwrap();
    let dec = d.path().join("dec");
    let (s, v) = batch(Operation::Decrypt { key: &key }, &enc, &dec, false);
    assert_eq!(s.ok, 1, "{v:?}");
    for f in ["model.onnx", "model.onnx.data", "tokenizer.json"] {
        let rel = Path::new("models/llm").join(f);
        assert_eq!(std::fs::read(dec.join(&rel)).unwrap(), std::fs::read(base.join(&rel)).unwrap(), "{f}");
    }
    // A changed file fails the folder with the folder's reason; rekey does not take a folder.
    std::fs::write(enc.join("models/llm/tokenizer.json"), b"{ }").unwrap();
    let (s, v) = batch(Operation::Verify { key: Some(&key) }, &enc, &d.path().join("v"), false);
    assert_eq!(s.failed.len(), 1, "{v:?}");
    assert_eq!(v[0].2.as_deref(), Some("modified"));
    let new = KeySource::key(MasterKey::from_bytes([5; 32]));
    let (s, v) = batch(
        Operation::Rekey { key: &key, new_key: &new, recipient_of: &onnx_protect_core::rekey::public_recipient },
        &enc,
        &d.path().join("r"),
        false,
    );
    assert_eq!(s.failed.len(), 1, "{v:?}");
    assert_eq!(v[0].2.as_deref(), Some("folder_operation"));
}
