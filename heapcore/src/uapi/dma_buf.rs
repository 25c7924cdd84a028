//! `include/uapi/linux/dma-heap.h`, `dma-buf.h` and `udmabuf.h`: allocating, syncing, naming
//! and fencing dma-bufs.

use std::ffi::CStr;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

#[cfg(test)]
use rustix::io::Errno;
use rustix::ioctl::{self, Ioctl, IoctlOutput, Opcode, opcode};

use super::retry_eintr;

/// `struct dma_heap_allocation_data`.
#[repr(C)]
#[derive(Debug, Default)]
struct DmaHeapAllocationData {
    len: u64,
    fd: u32,
    fd_flags: u32,
    heap_flags: u64,
}

/// `struct dma_buf_sync`.
#[repr(C)]
#[derive(Debug)]
struct DmaBufSync {
    flags: u64,
}

/// `struct dma_buf_export_sync_file` and `struct dma_buf_import_sync_file` (same layout).
#[repr(C)]
#[derive(Debug, Default)]
struct DmaBufSyncFile {
    flags: u32,
    fd: i32,
}

/// `struct udmabuf_create`.
#[repr(C)]
#[derive(Debug)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}

const DMA_HEAP_IOCTL_ALLOC: Opcode = opcode::read_write::<DmaHeapAllocationData>(b'H', 0);
const DMA_BUF_IOCTL_SYNC: Opcode = opcode::write::<DmaBufSync>(b'b', 0);
/// `DMA_BUF_SET_NAME_B`, i.e. `_IOW('b', 1, u64)`. The header's `DMA_BUF_SET_NAME` uses
/// `const char *`, so its size field is 4 or 8 bytes by architecture; the kernel accepts both
/// `_A` (u32) and `_B` (u64) spellings everywhere, so one encoding serves every target.
const DMA_BUF_SET_NAME: Opcode = opcode::write::<u64>(b'b', 1);
const UDMABUF_CREATE: Opcode = opcode::write::<UdmabufCreate>(b'u', 0x42);
const DMA_BUF_IOCTL_EXPORT_SYNC_FILE: Opcode = opcode::read_write::<DmaBufSyncFile>(b'b', 2);
const DMA_BUF_IOCTL_IMPORT_SYNC_FILE: Opcode = opcode::write::<DmaBufSyncFile>(b'b', 3);

const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;

bitflags::bitflags! {
    /// `DMA_BUF_SYNC_*`: the CPU accesses a `DMA_BUF_IOCTL_SYNC` bracket covers, and whether
    /// the call starts or ends it (`START` is 0, the absence of `END`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct DmaBufSyncFlags: u64 {
        // The header writes them (1 << 0), (2 << 0), (0 << 2), (1 << 2).
        const READ = 1;
        const WRITE = 2;
        const START = 0;
        const END = 4;
    }
}

/// The longest name `DMA_BUF_SET_NAME` accepts, without its NUL (`DMA_BUF_NAME_LEN` - 1).
pub(crate) const DMA_BUF_NAME_MAX: usize = 31;

/// Allocates `len` bytes (page-aligned by the caller) from an open heap device: the
/// `DMA_HEAP_IOCTL_ALLOC` ioctl alone, with no accounting, name, fallback or mapping.
///
/// Public for measuring what the kernel itself costs (`dmaheap bench`'s raw peer); everything
/// else allocates through [`Allocator`](crate::Allocator).
pub fn dma_heap_alloc(heap: impl AsFd, len: u64) -> rustix::io::Result<OwnedFd> {
    let heap = heap.as_fd();
    let mut data = DmaHeapAllocationData {
        len,
        fd: 0,
        // Only O_ACCMODE and O_CLOEXEC are accepted; both bits fit in u32.
        fd_flags: (rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC).bits(),
        heap_flags: 0,
    };
    retry_eintr(|| {
        // SAFETY: the opcode is _IOWR('H', 0, struct dma_heap_allocation_data) and `data` is
        // that struct, laid out as the UAPI header with #[repr(C)].
        let alloc = unsafe { ioctl::Updater::<DMA_HEAP_IOCTL_ALLOC, _>::new(&mut data) };
        // SAFETY: `alloc` pairs the opcode with its struct (above); the kernel reads and writes
        // only `data`, which outlives the call.
        unsafe { ioctl::ioctl(heap, alloc) }
    })?;
    // SAFETY: on success the kernel installed a new fd in `data.fd` that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(data.fd as i32) })
}

fn dma_buf_sync(buf: impl AsFd, flags: DmaBufSyncFlags) -> rustix::io::Result<()> {
    let buf = buf.as_fd();
    let flags = flags.bits();
    retry_eintr(|| {
        // SAFETY: the opcode is _IOW('b', 0, struct dma_buf_sync) and the input is that struct.
        let sync = unsafe { ioctl::Setter::<DMA_BUF_IOCTL_SYNC, _>::new(DmaBufSync { flags }) };
        // SAFETY: `sync` pairs the opcode with its struct (above), which the kernel only reads.
        unsafe { ioctl::ioctl(buf, sync) }
    })
}

/// Begins CPU `access` (`READ`, or `READ | WRITE`): the kernel makes device writes visible to
/// the CPU (cache invalidation).
pub(crate) fn dma_buf_sync_start(
    buf: impl AsFd,
    access: DmaBufSyncFlags,
) -> rustix::io::Result<()> {
    dma_buf_sync(buf, DmaBufSyncFlags::START | access)
}

/// Ends CPU `access`: the kernel makes CPU writes visible to devices (cache flush).
pub(crate) fn dma_buf_sync_end(buf: impl AsFd, access: DmaBufSyncFlags) -> rustix::io::Result<()> {
    dma_buf_sync(buf, DmaBufSyncFlags::END | access)
}

/// Names a dma-buf; the name appears as `name:` in `/proc/<pid>/fdinfo/<fd>`.
pub(crate) fn dma_buf_set_name(buf: impl AsFd, name: &CStr) -> rustix::io::Result<()> {
    debug_assert!(name.to_bytes().len() <= DMA_BUF_NAME_MAX);
    let buf = buf.as_fd();
    retry_eintr(|| {
        // SAFETY: DMA_BUF_SET_NAME takes a pointer to a NUL-terminated string, which `name` is.
        let set_name = unsafe {
            ioctl::IntegerSetter::<DMA_BUF_SET_NAME>::new_pointer(name.as_ptr() as *mut _)
        };
        // SAFETY: the kernel only reads the string, copying it (strndup_user) before returning;
        // `name` outlives the call.
        unsafe { ioctl::ioctl(buf, set_name) }
    })
}

/// A sync_file that signals when the buffer's fences do: with `WRITE`, every fence (readers'
/// and writers': the buffer may be written when it signals); with `READ`, the writers' only.
/// Fails with `ENOTTY` on kernels before 6.0.
pub(crate) fn dma_buf_export_sync_file(
    buf: impl AsFd,
    access: DmaBufSyncFlags,
) -> rustix::io::Result<OwnedFd> {
    let buf = buf.as_fd();
    let mut data = DmaBufSyncFile {
        flags: access.bits() as u32,
        fd: -1,
    };
    retry_eintr(|| {
        // SAFETY: the opcode is _IOWR('b', 2, struct dma_buf_export_sync_file) and `data` is
        // that struct, laid out as the UAPI header with #[repr(C)].
        let export = unsafe { ioctl::Updater::<DMA_BUF_IOCTL_EXPORT_SYNC_FILE, _>::new(&mut data) };
        // SAFETY: `export` pairs the opcode with its struct; the kernel writes only `data`.
        unsafe { ioctl::ioctl(buf, export) }
    })?;
    // SAFETY: on success the kernel installed a new sync_file fd in `data.fd` that nothing else
    // owns.
    Ok(unsafe { OwnedFd::from_raw_fd(data.fd) })
}

/// Adds the fence of a sync_file to the buffer, as a writer's (`WRITE`) or a reader's
/// (`READ`): until it signals, an export for writing does not signal either.
pub(crate) fn dma_buf_import_sync_file(
    buf: impl AsFd,
    access: DmaBufSyncFlags,
    fence: impl AsFd,
) -> rustix::io::Result<()> {
    use std::os::fd::AsRawFd;
    let buf = buf.as_fd();
    let data = DmaBufSyncFile {
        flags: access.bits() as u32,
        fd: fence.as_fd().as_raw_fd(),
    };
    retry_eintr(|| {
        // SAFETY: the opcode is _IOW('b', 3, struct dma_buf_import_sync_file) and the input is
        // that struct.
        let import = unsafe {
            ioctl::Setter::<DMA_BUF_IOCTL_IMPORT_SYNC_FILE, _>::new(DmaBufSyncFile { ..data })
        };
        // SAFETY: `import` pairs the opcode with its struct, which the kernel only reads; the
        // fence fd it names stays open for the call.
        unsafe { ioctl::ioctl(buf, import) }
    })
}

/// `UDMABUF_CREATE` returns the new dma-buf fd as the ioctl's result, which none of rustix's
/// ready-made patterns hand back; this small pattern does.
struct UdmabufCreateIoctl(UdmabufCreate);

// SAFETY: the opcode matches the struct, the ioctl only reads the struct, and the output is
// the non-negative fd the kernel returned.
unsafe impl Ioctl for UdmabufCreateIoctl {
    type Output = OwnedFd;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        UDMABUF_CREATE
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        std::ptr::addr_of_mut!(self.0).cast()
    }

    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<OwnedFd> {
        // SAFETY: a successful UDMABUF_CREATE returns a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(out) })
    }
}

/// Wraps `size` bytes of a sealed memfd, starting at `offset`, as a dma-buf.
pub(crate) fn udmabuf_create(
    device: impl AsFd,
    memfd: impl AsFd,
    offset: u64,
    size: u64,
) -> rustix::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let device = device.as_fd();
    let memfd = memfd.as_fd();
    retry_eintr(|| {
        let request = UdmabufCreate {
            memfd: memfd.as_raw_fd() as u32,
            flags: UDMABUF_FLAGS_CLOEXEC,
            offset,
            size,
        };
        // SAFETY: UdmabufCreateIoctl pairs UDMABUF_CREATE with its struct (see the impl).
        unsafe { ioctl::ioctl(device, UdmabufCreateIoctl(request)) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The literals are asm-generic's encoding (_IOC_WRITE = 1, 14 size bits); powerpc, mips and
    // sparc encode differently, and rustix computes their opcodes from their own headers.
    opcode_test!(any, opcodes_match_the_uapi_headers, {
        assert_eq!(DMA_HEAP_IOCTL_ALLOC, 0xC018_4800);
        assert_eq!(DMA_BUF_IOCTL_SYNC, 0x4008_6200);
        assert_eq!(DMA_BUF_SET_NAME, 0x4008_6201);
        assert_eq!(UDMABUF_CREATE, 0x4018_7542);
        assert_eq!(DMA_BUF_IOCTL_EXPORT_SYNC_FILE, 0xC008_6202);
        assert_eq!(DMA_BUF_IOCTL_IMPORT_SYNC_FILE, 0x4008_6203);
    });

    #[test]
    fn sync_flags_match_the_uapi_header() {
        use DmaBufSyncFlags as F;
        assert_eq!((F::READ.bits(), F::WRITE.bits()), (1, 2));
        assert_eq!((F::START.bits(), F::END.bits()), (0, 4));
        assert_eq!((F::END | F::READ | F::WRITE).bits(), 7);
    }

    #[test]
    fn sync_on_a_non_dmabuf_fails_cleanly() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let err = dma_buf_sync_start(&file, DmaBufSyncFlags::READ).unwrap_err();
        assert_eq!(err, Errno::NOTTY);
    }
}
