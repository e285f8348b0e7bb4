//! Crash points: places where a test build (feature `test-hooks`, never enabled in a
//! build users run) kills the process with `SIGKILL` when the environment variable
//! `ONNX_PROTECT_CRASH_AT` names them, so that tests can check what a killed process
//! leaves and that the next run recovers from it. Without the feature they are nothing.

/// Kills the process here if `ONNX_PROTECT_CRASH_AT` is `name` (test builds only).
#[cfg(feature = "test-hooks")]
pub(crate) fn point(name: &str) {
    if std::env::var("ONNX_PROTECT_CRASH_AT").is_ok_and(|v| v == name) {
        onnx_protect_fsio::process::kill_this_process();
    }
}

/// Nothing (the feature `test-hooks` is off).
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) fn point(_name: &str) {}
