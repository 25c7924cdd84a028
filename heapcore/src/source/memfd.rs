//! Sealed memfds: the memory behind udmabuf, and the last-resort buffer on machines without
//! DMA-BUF support.

use std::ffi::CString;
use std::os::fd::OwnedFd;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};

/// A memfd of `len` bytes named `dmaheap:<name>`, sealed so it can never shrink or grow (a
/// consumer that maps it can never fault on a truncated page). `F_SEAL_WRITE` is never set:
/// udmabuf refuses write-sealed memfds and every producer must write its buffers.
pub(crate) fn sealed_memfd(name: &str, len: u64) -> Result<OwnedFd> {
    let label = CString::new(format!("dmaheap:{name}")).unwrap_or_else(|_| c"dmaheap".into());
    let fd = rustix::fs::memfd_create(&label, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(|e| Error::io("memfd_create", e))?;
    rustix::fs::ftruncate(&fd, len).map_err(|e| match e {
        Errno::FBIG | Errno::NOSPC | Errno::NOMEM => Error::OutOfMemory {
            source_name: "memfd".into(),
            size: len,
        },
        e => Error::io(format!("sizing a memfd to {len} bytes"), e),
    })?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .map_err(|e| Error::io("sealing a memfd", e))?;
    Ok(fd)
}
