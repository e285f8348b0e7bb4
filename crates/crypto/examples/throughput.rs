//! Single-core throughput of the primitives the encrypt pass is made of, side
//! by side in one run: memcpy, AES-256-CTR (in place and source to
//! destination), BLAKE3 and SHA-256 leaves. Prints medians of several rounds.
//!
//! `cargo run --release -p onnx-protect-crypto --example throughput [MiB] [rounds]`

use std::time::Instant;

use onnx_protect_crypto::{random_salt, Leaf, LeafHash, MasterKey, SessionKeys};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(7);
    let len = mib << 20;
    let src: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let mut dst = vec![0u8; len];
    let keys = SessionKeys::derive(&MasterKey::generate()?, &random_salt()?);
    let ks = keys.keystream(1);

    let mut results: Vec<(&str, f64)> = Vec::new();
    let mut time = |name: &'static str, f: &mut dyn FnMut()| {
        f(); // warm up (page faults, caches)
        let t: Vec<f64> = (0..rounds)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64()
            })
            .collect();
        results.push((name, median(t)));
    };
    time("memcpy", &mut || dst.copy_from_slice(&src));
    time("aes-ctr in place", &mut || ks.apply(0, &mut dst).expect("64-bit offsets"));
    time("aes-ctr src->dst", &mut || ks.apply_b2b(0, &src, &mut dst).expect("64-bit offsets"));
    time("blake3 leaf (4 KiB leaves)", &mut || {
        for (i, c) in src.chunks(4096).enumerate() {
            let mut l = Leaf::new(LeafHash::Blake3, 1, i as u64);
            l.update(c);
            std::hint::black_box(l.finalize());
        }
    });
    time("blake3 leaf (1 MiB leaves)", &mut || {
        for (i, c) in src.chunks(1 << 20).enumerate() {
            let mut l = Leaf::new(LeafHash::Blake3, 1, i as u64);
            l.update(c);
            std::hint::black_box(l.finalize());
        }
    });
    time("blake3 leaf (1 MiB leaves fed 4 KiB at a time)", &mut || {
        for (i, c) in src.chunks(1 << 20).enumerate() {
            let mut l = Leaf::new(LeafHash::Blake3, 1, i as u64);
            for piece in c.chunks(4096) {
                l.update(piece);
            }
            std::hint::black_box(l.finalize());
        }
    });
    time("sha256 leaf (4 KiB leaves)", &mut || {
        for (i, c) in src.chunks(4096).enumerate() {
            let mut l = Leaf::new(LeafHash::Sha256, 1, i as u64);
            l.update(c);
            std::hint::black_box(l.finalize());
        }
    });
    println!("{mib} MiB, median of {rounds}, one core");
    for (name, secs) in results {
        println!("{name:<48} {:>8.2} ms  {:>6.2} GB/s", secs * 1e3, len as f64 / secs / 1e9);
    }
    Ok(())
}
