//! The kernel's `userfaultfd` ABI (`include/uapi/linux/userfaultfd.h`), for the
//! architectures whose `ioctl` numbers use the generic encoding.

pub const UFFD_API: u64 = 0xAA;
pub const UFFD_USER_MODE_ONLY: libc::c_int = 1;
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// Bits of `uffdio_register.ioctls`: `_UFFDIO_WAKE`, `_UFFDIO_COPY`, `_UFFDIO_MOVE`.
pub const IOCTL_WAKE: u64 = 1 << 2;
pub const IOCTL_COPY: u64 = 1 << 3;
pub const IOCTL_MOVE: u64 = 1 << 5;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}
const READ: u64 = 2;
const READ_WRITE: u64 = 3;
pub const UFFDIO_API: u64 = ioc(READ_WRITE, 0x3F, size_of::<Api>());
pub const UFFDIO_REGISTER: u64 = ioc(READ_WRITE, 0x00, size_of::<Register>());
pub const UFFDIO_UNREGISTER: u64 = ioc(READ, 0x01, size_of::<Range>());
pub const UFFDIO_WAKE: u64 = ioc(READ, 0x02, size_of::<Range>());
pub const UFFDIO_COPY: u64 = ioc(READ_WRITE, 0x03, size_of::<Transfer>());
pub const UFFDIO_MOVE: u64 = ioc(READ_WRITE, 0x05, size_of::<Transfer>());

#[repr(C)]
pub struct Api {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}
#[repr(C)]
pub struct Range {
    pub start: u64,
    pub len: u64,
}
#[repr(C)]
pub struct Register {
    pub range: Range,
    pub mode: u64,
    pub ioctls: u64,
}
/// `struct uffdio_copy` and `struct uffdio_move`, which share this layout: the
/// destination, the source, the length, the mode, and what was done (or `-errno`).
#[repr(C)]
pub struct Transfer {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    pub done: i64,
}
/// `struct uffd_msg` with the page-fault member of its union.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Msg {
    pub event: u8,
    pub reserved1: u8,
    pub reserved2: u16,
    pub reserved3: u32,
    pub flags: u64,
    pub address: u64,
    pub ptid: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<Msg>() == 32);
