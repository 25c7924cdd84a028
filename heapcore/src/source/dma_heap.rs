//! `/dev/dma_heap/<name>`: open once, allocate with `DMA_HEAP_IOCTL_ALLOC`.

use std::os::fd::OwnedFd;

use rustix::io::Errno;

use super::open_device;
use crate::dmabuf::{DmaBuf, Origin};
use crate::error::{Error, Result};
use crate::inventory::HeapInfo;
use crate::uapi;

/// An open heap device. Kept open by the allocator: opening costs a path walk per buffer.
#[derive(Debug)]
pub(crate) struct HeapDevice {
    fd: OwnedFd,
    origin: Origin,
}

impl HeapDevice {
    pub(crate) fn open(heap: &HeapInfo) -> Result<Self> {
        let fd = open_device(&heap.path, || Error::UnknownHeap {
            name: heap.name.to_string(),
            available: Vec::new(),
        })?;
        Ok(Self {
            fd,
            origin: Origin::Heap(heap.name.clone()),
        })
    }

    /// Allocates `len` bytes (already page-aligned).
    pub(crate) fn allocate(&self, len: u64) -> Result<DmaBuf> {
        let fd = uapi::dma_heap_alloc(&self.fd, len).map_err(|e| match e {
            Errno::NOMEM => Error::OutOfMemory {
                source_name: self.origin.to_string(),
                size: len,
            },
            e => Error::io(format!("{} refused {len} bytes", self.origin), e),
        })?;
        Ok(DmaBuf::from_parts(fd, len, self.origin.clone()))
    }
}
