//! One session's creation time and peak memory, for bench/python_session.py's `ort`
//! variants: `plain` (the plain model through `ort`'s `commit_from_file`) or `protected`
//! (the protected model through `onnx_protect_ort::commit_from_file`), with onnxruntime's
//! default options, or `intra_op_num_threads` and prepacking off as asked.
//!
//!     session_cost plain|protected MODEL KEY_FILE THREADS PREPACK
//!
//! Prints one JSON line: `seconds` (session creation), `start_rss` and `peak_rss` (bytes,
//! `/proc/self/status` VmRSS before, VmHWM after).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use onnx_protect_ort::{commit_from_file, environment, key_file};
use ort::session::Session;

fn status(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [variant, model, key, threads, prepack] = args.as_slice() else {
        eprintln!("usage: session_cost plain|protected MODEL KEY_FILE THREADS PREPACK(0|1)");
        return ExitCode::from(2);
    };
    match run(variant, Path::new(model), Path::new(key), threads, prepack == "1") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    variant: &str,
    model: &Path,
    key: &Path,
    threads: &str,
    prepack: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let env = environment()?;
    let key = key_file(key)?;
    let mut builder = Session::builder(&env)?;
    let threads: usize = threads.parse()?;
    if threads > 0 {
        builder = builder.with_intra_threads(threads)?;
    }
    if !prepack {
        builder = builder.with_config_entry("session.disable_prepacking", "1")?;
    }
    let start_rss = status("VmRSS");
    let t = Instant::now();
    let kept: Box<dyn std::any::Any> = match variant {
        "plain" => Box::new(builder.commit_from_file(model)?),
        "protected" => Box::new(commit_from_file(builder, model, &key)?),
        other => return Err(format!("unknown variant {other}").into()),
    };
    let seconds = t.elapsed().as_secs_f64();
    println!("{{\"seconds\": {seconds}, \"start_rss\": {start_rss}, \"peak_rss\": {}}}", status("VmHWM"));
    drop(kept);
    Ok(())
}
