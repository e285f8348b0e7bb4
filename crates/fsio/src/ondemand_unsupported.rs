//! Memory filled on demand needs Linux's `userfaultfd`: on this system
//! [`available`] is false and [`OnDemand::new`] fails, and callers keep their
//! other path.

use std::convert::Infallible;
use std::io;

/// Fills block `index` of the region (see the Linux module).
pub type Filler = Box<dyn FnMut(usize, &mut [u8]) -> Result<(), String> + Send>;

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
    pub fn new(_len: usize, _block: usize, _budget: usize, _filler: Filler) -> io::Result<OnDemand> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "memory filled on demand needs Linux userfaultfd"))
    }

    /// The region's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self.never {}
    }

    /// Stops dropping filled blocks.
    pub fn settle(&self) {
        match self.never {}
    }

    /// Bytes of filled blocks now in the region.
    pub fn resident(&self) -> usize {
        match self.never {}
    }
}
