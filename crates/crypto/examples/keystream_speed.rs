//! Measures keystream throughput on a 256 MiB buffer.
//!
//! Run with `cargo run --release -p onnx-protect-crypto --example keystream_speed`.
//! Prints the median of 5 runs, in GB/s (10^9 bytes per second), for
//! `apply` and `apply_masked` (fp32 sign+mantissa mask), serial and parallel.

use std::time::Instant;

use onnx_protect_crypto::{CryptoError, Keystream, MasterKey, SessionKeys};

const SIZE: usize = 256 * 1024 * 1024;
const RUNS: usize = 5;
const FP32_MASK: [u8; 4] = [0xFF, 0xFF, 0x7F, 0x80];

/// One measured operation on the whole buffer.
type Op<'a> = Box<dyn Fn(&mut [u8]) -> Result<(), CryptoError> + 'a>;

fn median_gbps(buf: &mut [u8], op: impl Fn(&mut [u8]) -> Result<(), CryptoError>) -> Result<f64, CryptoError> {
    let mut rates = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        op(std::hint::black_box(&mut *buf))?;
        let secs = start.elapsed().as_secs_f64();
        rates.push(buf.len() as f64 / secs / 1e9);
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[RUNS / 2])
}

fn main() -> Result<(), CryptoError> {
    let master = MasterKey::generate()?;
    let keys = SessionKeys::derive(&master, &onnx_protect_crypto::random_salt()?);
    let ks: Keystream = keys.keystream(0);
    let mut buf: Vec<u8> = (0..SIZE).map(|i| i as u8).collect();

    println!("buffer {} MiB, {} runs, median GB/s, {} rayon threads", SIZE >> 20, RUNS, rayon::current_num_threads());
    let rows: [(&str, Op<'_>); 4] = [
        ("apply (serial)", Box::new(|b| ks.apply(0, b))),
        ("apply_par", Box::new(|b| ks.apply_par(0, b))),
        ("apply_masked fp32 (serial)", Box::new(|b| ks.apply_masked(0, b, &FP32_MASK))),
        ("apply_masked_par fp32", Box::new(|b| ks.apply_masked_par(0, b, &FP32_MASK))),
    ];
    for (name, op) in &rows {
        let rate = median_gbps(&mut buf, op)?;
        println!("{name:<28} {rate:6.2} GB/s");
    }
    Ok(())
}
