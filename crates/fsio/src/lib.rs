//! File maps and positional file I/O behind safe functions.
//!
//! This crate holds every `unsafe` block and every raw system call that the model
//! reader (`onnx-protect-format`) and the one-pass writer and in-memory decryption
//! (`onnx-protect-core`) need, so that both of those crates can
//! `#![forbid(unsafe_code)]`. Each function states the contract under which it is
//! sound and what it does on systems without the call (non-Linux systems get the
//! portable fallback: no preallocation, no kernel copy, no early writeback).
//!
//! * [`map`](mod@map): a shared read-only map of a file ([`ReadMap`]) whose pages can be
//!   released from the resident set, and a private copy-on-write map ([`PrivateMap`]).
//! * [`file`](mod@file): positional reads and writes, preallocation (`fallocate`), copies inside
//!   the kernel (`copy_file_range`), early writeback (`sync_file_range`), a checked
//!   `close`, and the identity of an open file.
//! * [`stage`](mod@stage): private staging files that become outputs only when complete
//!   (unnamed `O_TMPFILE` files on Linux, locked named files elsewhere), published
//!   with or without replacing the destination, private directories for outputs that
//!   go to standard output, and the removal of the named staging files and private
//!   directories of dead processes.
//! * [`ondemand`](mod@ondemand) (Linux; elsewhere [`ondemand::available`] is false): memory whose blocks a handler thread fills the first time they
//!   are read (`userfaultfd`), for decrypted weights that are verified and decrypted as
//!   they are used.
//! * [`tty`](mod@tty): a secret line read at the terminal with echo off before the prompt.
//! * [`process`](mod@process): ending a child's whole process group (a key command
//!   that timed out, with whatever it started).
//! * [`wipe`]: zeroing memory that held secrets, at `memset` speed, in a way the compiler
//!   keeps.
//!
//! ```
//! use onnx_protect_fsio::{file, ReadMap};
//! # fn main() -> std::io::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("data.bin");
//! std::fs::write(&path, b"hello, map")?;
//! let f = std::fs::File::open(&path)?;
//! let map = ReadMap::new(&f)?;
//! assert_eq!(&map[..5], b"hello");
//! let mut buf = [0u8; 3];
//! file::read_exact_at(&f, &mut buf, 7)?;
//! assert_eq!(&buf, b"map");
//! # Ok(())
//! # }
//! ```

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod file;
pub mod map;
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64")))]
pub mod ondemand;
#[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64"))))]
#[path = "ondemand_unsupported.rs"]
pub mod ondemand;
pub mod process;
pub mod stage;
pub mod tty;

/// Overwrites `buf` with zeros before it is freed (memory that held plaintext), at the
/// speed of `memset`, where byte-by-byte volatile writes take several times as long. The
/// slice escapes to an opaque use afterwards, so the stores are not removed as dead.
pub fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(&*buf);
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

pub use file::FileId;
pub use map::{PrivateMap, ReadMap};
pub use stage::{PrivateDir, Staging};
