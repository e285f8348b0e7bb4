//! Times in-memory decryption of a protected model (used by `bench/memory/run.sh`).
//!
//! ```sh
//! cargo run --release -p onnx-protect-core --example decrypt_in_memory -- MODEL KEY_FILE [REPEATS]
//! ```
//!
//! Prints one line per run: seconds to decrypt into memory (open, index, hash every
//! byte, decrypt the spans, check the digest and the MACs), the method, and the bytes decrypted.

use std::path::PathBuf;
use std::time::Instant;

use onnx_protect_core::keys::KeySource;
use onnx_protect_core::memory::InMemory;
use onnx_protect_crypto::MasterKey;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, key, rest @ ..] = args.as_slice() else {
        return Err("usage: decrypt_in_memory MODEL KEY_FILE [REPEATS]".into());
    };
    let repeats: usize = rest.first().map(|r| r.parse()).transpose()?.unwrap_or(5);
    let key = KeySource::key(MasterKey::parse_key_file(&std::fs::read(key)?)?);
    let model = PathBuf::from(model);
    for _ in 0..repeats {
        let t = Instant::now();
        let d = InMemory::file(&model, &key).load()?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "decrypt_in_memory {secs:.6} s method={:?} model_bytes={} decrypted_bytes={} external_files={}",
            d.method(),
            d.len(),
            d.decrypted_bytes(),
            d.external().len()
        );
        let t = Instant::now();
        drop(d);
        println!("drop (wipe plaintext) {:.4} s", t.elapsed().as_secs_f64());
    }
    Ok(())
}
