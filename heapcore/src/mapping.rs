//! A CPU mapping of a whole buffer, and all the pointer work on it: `mmap`/`munmap`, faulting
//! pages in, and the byte slices that `DmaBuf`'s guards hand out. The only module besides
//! `uapi` and `worker` that may use `unsafe`; everything it offers is safe.

use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use rustix::io::Errno;
use rustix::mm::{Advice, MapFlags, ProtFlags};

/// A shared mapping of the whole buffer, unmapped on drop.
///
/// Who may read or write the bytes through this process follows Rust's borrows of the mapping:
/// [`Mapping::bytes`] needs `&self`, [`Mapping::bytes_mut`] needs `&mut self`, so no two
/// slices of it alias mutably. (Devices and other processes reach the memory outside Rust;
/// `DMA_BUF_IOCTL_SYNC` brackets order their access with ours.)
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory, not tied to the thread that made it; who may read
// or write it is governed by the borrows of the `Mapping` (`&` for reads, `&mut` for writes).
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out reads.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` shared, writable where the fd allows it, else read-only: a
    /// read-only fd (one a consumer received: `EACCES`) or a write-sealed memfd (`EPERM`) can
    /// still be mapped for reading. `len` must not be 0.
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize) -> rustix::io::Result<Self> {
        let map = |prot| {
            // SAFETY: a fresh MAP_SHARED mapping at an address the kernel picks aliases no Rust
            // object; it lives until `Drop` unmaps it.
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }
        };
        let (ptr, writable) = match map(ProtFlags::READ | ProtFlags::WRITE) {
            Ok(ptr) => (ptr, true),
            Err(Errno::ACCESS | Errno::PERM) => (map(ProtFlags::READ)?, false),
            Err(e) => return Err(e),
        };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Errno::FAULT)?;
        Ok(Self { ptr, len, writable })
    }

    /// The mapped bytes, for reading.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` covers `len` readable bytes that stay mapped as long as `self`, which
        // the slice borrows; writes through this process need `&mut self`, so none overlap.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapped bytes, for reading and writing; `None` if the mapping is read-only.
    pub(crate) fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        // SAFETY: `ptr` covers `len` writable bytes that stay mapped as long as `self`, which
        // the slice borrows exclusively, so no other slice of them exists in this process.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }

    /// Faults every page in (`MADV_POPULATE_WRITE`, or `_READ` for a read-only mapping),
    /// retrying after signals. Kernels before 5.14 do not know `MADV_POPULATE_*`, and
    /// PFN-mapped heaps (CMA) refuse it: on `EINVAL` a read of each page faults it in just the
    /// same. Only then: after any other error (`ENOMEM`, `EFAULT`, `EHWPOISON`, returned) the
    /// same faults would kill the process or hang it.
    pub(crate) fn populate(&self) -> rustix::io::Result<()> {
        let advice = if self.writable {
            Advice::LinuxPopulateWrite
        } else {
            Advice::LinuxPopulateRead
        };
        let populated = loop {
            // SAFETY: the range is exactly this live mapping; populating changes no contents.
            match unsafe { rustix::mm::madvise(self.ptr.as_ptr().cast(), self.len, advice) } {
                // A signal interrupted it; the pages done so far stay, the rest follow.
                Err(Errno::INTR) => continue,
                other => break other,
            }
        };
        match populated {
            Err(Errno::INVAL) => {
                let bytes = self.bytes();
                for offset in (0..self.len).step_by(crate::sysinfo::page_size() as usize) {
                    // SAFETY: a read of a byte of the mapping; volatile, so that it is not
                    // optimised away and the page fault happens.
                    unsafe { std::ptr::read_volatile(&bytes[offset]) };
                }
                Ok(())
            }
            other => other,
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and nothing borrows the mapping
        // any more: every slice of it borrows `self`.
        if let Err(e) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) } {
            log::error!("munmap of a {} byte buffer failed: {e}", self.len);
        }
    }
}

/// A memfd named `dmaheap-import-test` holding `data`, with `seals` added (none: unsealed),
/// for the tests here and in `dmabuf`.
#[cfg(test)]
pub(crate) fn test_memfd(data: &[u8], seals: rustix::fs::SealFlags) -> std::os::fd::OwnedFd {
    use rustix::fs::MemfdFlags;
    let fd = rustix::fs::memfd_create(
        c"dmaheap-import-test",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::io::write(&fd, data).unwrap();
    rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    fd
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::fs::SealFlags;

    use super::*;

    #[test]
    fn writable_mappings_write_through_to_the_fd() {
        let fd = test_memfd(&[0; 8192], SealFlags::empty());
        let mut mapping = Mapping::new(fd.as_fd(), 8192).unwrap();
        mapping.populate().unwrap();
        mapping.bytes_mut().unwrap()[4096..4099].copy_from_slice(b"abc");
        let mut back = [0; 3];
        rustix::io::pread(&fd, &mut back, 4096).unwrap();
        assert_eq!(&back, b"abc");
        assert_eq!(mapping.bytes().len(), 8192);
    }

    #[test]
    fn write_sealed_fds_map_read_only_and_give_no_mutable_bytes() {
        let fd = test_memfd(
            b"sealed",
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
        );
        let mut mapping = Mapping::new(fd.as_fd(), 6).unwrap();
        mapping.populate().unwrap();
        assert_eq!(mapping.bytes(), b"sealed");
        assert!(mapping.bytes_mut().is_none());
    }
}
