//! Locks (or unlocks) a model's output layer with a seed given in hex, writing the new
//! model file and, next to it, its external data files.
//!
//! ```sh
//! cargo run -p onnx-protect-lock --example lock_file -- [--unlock] IN.onnx OUT.onnx SEED_HEX
//! ```
//!
//! A demonstration of the library; `onnx-protect encrypt --lock-outputs` seals the seed in
//! the model's manifest instead of leaving it to the caller.

use std::path::Path;

use onnx_protect_format::Model;
use onnx_protect_lock::{find_output_layer, rewrite_model, ClassPermutation, Direction, LockSeed, SEED_LEN};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let dir = if args.first().is_some_and(|a| a == "--unlock") {
        args.remove(0);
        Direction::Unlock
    } else {
        Direction::Lock
    };
    let [input, output, seed] = args.as_slice() else {
        return Err("usage: lock_file [--unlock] IN.onnx OUT.onnx SEED_HEX".into());
    };
    let mut bytes = [0u8; SEED_LEN];
    if seed.len() != 2 * SEED_LEN {
        return Err("the seed is 64 hex digits".into());
    }
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&seed[2 * i..2 * i + 2], 16)?;
    }
    let model = Model::open(input)?;
    let layer = find_output_layer(&model, None)?;
    let perm = ClassPermutation::derive(&LockSeed::from_bytes(bytes), layer.classes)?;
    let (file, external) = rewrite_model(&model, &layer, &perm, dir)?;
    let out_dir = Path::new(output).parent().unwrap_or(Path::new("."));
    for (i, f) in model.external_files.iter().enumerate() {
        let mut data = std::fs::read(&f.path)?;
        for w in external.iter().filter(|w| w.file == i) {
            data[w.range.start as usize..w.range.end as usize].copy_from_slice(&w.bytes);
        }
        std::fs::write(out_dir.join(&f.location), data)?;
    }
    std::fs::write(output, file)?;
    Ok(())
}
