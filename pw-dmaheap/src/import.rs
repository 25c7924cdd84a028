//! A consumer's side: a received `spa_data` block as a heapcore buffer plus the region of it
//! that belongs to the block.
//!
//! A producer may pack several buffers into one fd: PipeWire's own MemFd allocation puts every
//! buffer of a stream into one memfd, each at its own `spa_data.mapoffset`, `maxsize` bytes
//! long. Chunk offsets count from the start of that region, not from the start of the fd.

use std::ops::{Deref, Range};

use heapcore::{CpuRead, DmaBuf};

use crate::error::{Error, NegotiationError, Result};

/// A received `spa_data` block: a duplicate of its fd (mapped whole, with
/// `DMA_BUF_IOCTL_SYNC` around CPU reads for dma-bufs) and the region of the fd it covers.
/// It can be kept beyond the PipeWire buffer's life.
#[derive(Debug)]
pub struct ImportedData {
    buf: DmaBuf,
    mapoffset: u32,
    maxsize: u32,
}

impl ImportedData {
    /// `buf` with the region `mapoffset..mapoffset + maxsize`, which must lie inside it.
    pub fn new(buf: DmaBuf, mapoffset: u32, maxsize: u32) -> Result<Self> {
        let end = u64::from(mapoffset) + u64::from(maxsize);
        if end > buf.len() {
            return Err(NegotiationError::Region {
                start: mapoffset,
                end,
                len: buf.len(),
            }
            .into());
        }
        Ok(Self {
            buf,
            mapoffset,
            maxsize,
        })
    }

    /// The whole buffer the fd refers to (its size, `fdinfo`, origin).
    pub fn dmabuf(&self) -> &DmaBuf {
        &self.buf
    }

    /// Gives up the region for the whole buffer.
    pub fn into_dmabuf(self) -> DmaBuf {
        self.buf
    }

    /// Where the block's region starts in the fd (`spa_data.mapoffset`).
    pub fn mapoffset(&self) -> u32 {
        self.mapoffset
    }

    /// How long the block's region is (`spa_data.maxsize`).
    pub fn maxsize(&self) -> u32 {
        self.maxsize
    }

    /// Another handle to the same region, with a duplicate of the fd (to keep a frame after
    /// the PipeWire buffer is gone).
    pub fn try_clone(&self) -> Result<Self> {
        let borrowed = std::os::fd::AsFd::as_fd(&self.buf);
        let fd = borrowed
            .try_clone_to_owned()
            .map_err(|source| Error::Duplicate {
                what: "imported",
                fd: std::os::fd::AsRawFd::as_raw_fd(&borrowed),
                source,
            })?;
        Self::new(DmaBuf::import(fd)?, self.mapoffset, self.maxsize)
    }

    /// Begins CPU reads of the region; the guard derefs to its `maxsize` bytes (chunk offsets
    /// count from its start) and ends the access when dropped.
    pub fn read(&self) -> Result<RegionRead<'_>> {
        let start = self.mapoffset as usize;
        Ok(RegionRead {
            guard: self.buf.read()?,
            range: start..start + self.maxsize as usize,
        })
    }
}

/// CPU read access to an imported block's region; ends the `DMA_BUF_IOCTL_SYNC` bracket on
/// drop.
pub struct RegionRead<'a> {
    guard: CpuRead<'a>,
    range: Range<usize>,
}

impl Deref for RegionRead<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // `ImportedData::new` checked the region lies inside the buffer, and the mapping
        // covers the whole buffer.
        &self.guard[self.range.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memfd sealed against resizing, as PipeWire's are.
    fn memfd(bytes: &[u8]) -> DmaBuf {
        use rustix::fs::{MemfdFlags, SealFlags};
        let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
        let fd = rustix::fs::memfd_create("import-test", flags).unwrap();
        rustix::io::write(&fd, bytes).unwrap();
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        DmaBuf::import(fd).unwrap()
    }

    #[test]
    fn the_region_is_what_reads_see() {
        let bytes: Vec<u8> = (0..=255).collect();
        let data = ImportedData::new(memfd(&bytes), 16, 8).unwrap();
        assert_eq!(&*data.read().unwrap(), &bytes[16..24]);
        let copy = data.try_clone().unwrap();
        drop(data);
        assert_eq!(&*copy.read().unwrap(), &bytes[16..24]);
        assert_eq!((copy.mapoffset(), copy.maxsize()), (16, 8));
    }

    #[test]
    fn a_region_outside_the_fd_is_refused() {
        let err = ImportedData::new(memfd(&[0; 100]), 96, 8).unwrap_err();
        assert!(
            err.to_string()
                .contains("96..104 lies outside its 100-byte fd"),
            "{err}"
        );
        assert!(ImportedData::new(memfd(&[0; 100]), u32::MAX, u32::MAX).is_err());
    }
}
