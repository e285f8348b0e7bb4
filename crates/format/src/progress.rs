//! Progress reporting from libraries to whoever draws it.
//!
//! Libraries never print: long operations call a [`Progress`] the caller passes
//! in; the binary implements it with a progress bar, tests ignore it.

/// Receives progress of a long operation. All methods have empty defaults.
pub trait Progress: Sync {
    /// A phase named `what` starts; `total` is its size in bytes (0 when unknown).
    fn start(&self, _what: &str, _total: u64) {}
    /// `done` bytes of the current phase are finished (monotone within a phase).
    fn set(&self, _done: u64) {}
    /// The current phase is over.
    fn finish(&self) {}
}

/// A [`Progress`] that ignores everything.
pub struct NoProgress;

impl Progress for NoProgress {}
