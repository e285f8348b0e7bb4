//! Memory filled on demand needs Linux's `userfaultfd`: on this system
//! [`available`] is false and [`OnDemand::new`] fails, and callers keep their
//! other path.

use std::convert::Infallible;
use std::io;

/// Fills block `index` of the region (see the Linux module).
pub type Filler = Box<dyn FnMut(usize, &mut Fill<'_>) -> Result<(), String> + Send>;

#[path = "ondemand/options.rs"]
mod options;
pub use options::{Options, AHEAD};

/// What a filler writes a block into (never made on this system).
pub struct Fill<'a> {
    never: Infallible,
    _buf: std::marker::PhantomData<&'a mut [u8]>,
}

impl Fill<'_> {
    /// The block's buffer.
    pub fn buf(&mut self) -> &mut [u8] {
        match self.never {}
    }

    /// Hands over the buffer's bytes up to `end`.
    pub fn install(&mut self, _end: usize) {
        match self.never {}
    }

    /// Serves readers waiting for a kept-back page.
    pub fn poll(&mut self) {
        match self.never {}
    }
}

/// Never made on this system.
pub struct OnDemand {
    never: Infallible,
}

/// Whether regions filled on demand can be made here: never on this system.
pub fn available() -> bool {
    false
}

impl OnDemand {
    /// Fails: this system has no `userfaultfd`.
    pub fn new(_len: usize, _opts: Options, _filler: Filler) -> io::Result<OnDemand> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "memory filled on demand needs Linux userfaultfd"))
    }

    /// The region's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self.never {}
    }

    /// Stops dropping filled blocks; the first failure of a fill.
    pub fn settle(&self) -> Result<(), String> {
        match self.never {}
    }

    /// Bytes of filled blocks now in the region.
    pub fn resident(&self) -> usize {
        match self.never {}
    }

    /// Whether installs move pages.
    pub fn moves_pages(&self) -> bool {
        match self.never {}
    }
}
