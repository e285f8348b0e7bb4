//! The shape of a region filled on demand (the same on every system).

/// How many blocks past the last block seen read the handler fills ahead (at most),
/// while no other fault waits (64 MiB of the 4 MiB blocks of a model of 64 MiB or more:
/// onnxruntime's prepacking of one 4096² float weight reads that much; 16 MiB of a smaller
/// model's 1 MiB blocks).
pub const AHEAD: usize = 16;

/// The shape of a region.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Bytes per block: a multiple of the page size.
    pub block: usize,
    /// Bytes of filled blocks that stay until [`super::OnDemand::settle`] (at least three blocks).
    pub budget: usize,
    /// Move pages into blocks where the kernel can (`UFFDIO_MOVE`); `false` copies them
    /// (`UFFDIO_COPY`), as older kernels must.
    pub move_pages: bool,
    /// Until [`super::OnDemand::settle`], while no fault waits and nothing is left to fill
    /// ahead of the reader, fill the blocks not filled yet in order, as long as they fit in
    /// the budget without dropping any (a reader that comes to them later finds them there;
    /// the handler's core is otherwise idle then).
    pub fill_idle: bool,
    /// Read ahead only of a reader that reads blocks in order: nothing is filled before the
    /// first fault, and a fault other than one in the first page of the block after the
    /// last one read fills its block alone (a reader of a few scattered tensors, such as
    /// onnxruntime building a session with prepacking off, gets no 64 MiB read-ahead per
    /// tensor).
    pub in_order_only: bool,
}
