//! One session's creation time and peak memory, for bench/python_session.py's `ort`
//! variants: `plain` (the plain model through `ort`'s `commit_from_file`), `protected`
//! (the protected model through `onnx_protect_ort::commit_from_file_as`, with
//! `Load::reads_few` when prepacking is off) or `protected, verified on read` (the same with
//! `Load::verify_on_read`), with onnxruntime's
//! default options, or `intra_op_num_threads` and prepacking off as asked.
//!
//!     session_cost plain|protected|"protected, verified on read" MODEL KEY_FILE THREADS PREPACK
//!
//! Prints one JSON line: `seconds` (session creation), `cpu_seconds` (the CPU time all the
//! process's threads ran during it, from `/proc/self/task/*/schedstat`), `start_rss` and
//! `peak_rss` (bytes, `/proc/self/status` VmRSS before, VmHWM after).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use onnx_protect_ort::{commit_from_file_as, environment, key_file, Load};
use ort::session::Session;

fn status(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The CPU time the process's threads have run so far, in seconds (the first field of each
/// thread's `schedstat`, nanoseconds); 0 where that is not readable.
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [variant, model, key, threads, prepack] = args.as_slice() else {
        eprintln!(
            "usage: session_cost plain|protected|\"protected, verified on read\" MODEL KEY_FILE THREADS PREPACK(0|1)"
        );
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
    let cpu = cpu_seconds();
    let t = Instant::now();
    let kept: Box<dyn std::any::Any> = match variant {
        "plain" => Box::new(builder.commit_from_file(model)?),
        "protected" | "protected, verified on read" => {
            let verify_on_read = variant != "protected";
            let load = Load { verify_on_read, reads_few: !prepack, ..Load::default() };
            Box::new(commit_from_file_as(builder, model, &key, &load)?)
        }
        other => return Err(format!("unknown variant {other}").into()),
    };
    let seconds = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    println!(
        "{{\"seconds\": {seconds}, \"cpu_seconds\": {cpu}, \"start_rss\": {start_rss}, \"peak_rss\": {}}}",
        status("VmHWM")
    );
    drop(kept);
    Ok(())
}
