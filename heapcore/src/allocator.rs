//! The allocator: opens heap devices once and allocates from one source or from an ordered
//! list of them, falling back when one cannot serve.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::dmabuf::{DmaBuf, Origin, validate_buffer_name};
use crate::error::{Error, Result};
use crate::heap::{HeapKind, HeapName};
use crate::inventory::Inventory;
use crate::size::{ByteSize, page_aligned};
use crate::source::{HeapDevice, Source, UdmabufDevice, sealed_memfd};

/// Allocates buffers from this machine's heaps and other sources. Cheap to share (`Arc`); every
/// method takes `&self`.
#[derive(Debug)]
pub struct Allocator {
    inventory: Inventory,
    heaps: Mutex<HashMap<HeapName, Arc<HeapDevice>>>,
    udmabuf: Mutex<Option<Arc<UdmabufDevice>>>,
}

impl Default for Allocator {
    fn default() -> Self {
        Self::new()
    }
}

impl Allocator {
    /// Discovers this machine's heaps.
    pub fn new() -> Self {
        Self::with_inventory(Inventory::discover())
    }

    /// Uses an inventory read elsewhere.
    pub fn with_inventory(inventory: Inventory) -> Self {
        Self {
            inventory,
            heaps: Mutex::default(),
            udmabuf: Mutex::default(),
        }
    }

    /// What discovery found.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The generic order for callers with no policy: the system heap, the default CMA heap,
    /// udmabuf, and the memfd fallback, keeping those this machine has.
    pub fn default_sources(&self) -> Vec<Source> {
        let inv = &self.inventory;
        let system = inv.heaps.iter().find(|h| h.kind == HeapKind::System);
        // The default CMA heap under the name that stands for its area.
        let cma = inv
            .find(crate::heap::CMA_ALIAS)
            .ok()
            .filter(|h| h.kind == HeapKind::Cma);
        let mut sources: Vec<Source> = system
            .into_iter()
            .chain(cma)
            .map(|h| Source::Heap(h.name.clone()))
            .collect();
        if inv.has_udmabuf() {
            sources.push(Source::Udmabuf);
        }
        sources.push(Source::Memfd);
        sources
    }

    /// Allocates at least `size` bytes (rounded up to whole pages) from `source` and names the
    /// buffer `name` (empty: unnamed). The buffer is not yet mapped.
    pub fn allocate(&self, source: &Source, size: u64, name: &str) -> Result<DmaBuf> {
        let len = page_aligned(size)?;
        if !name.is_empty() {
            validate_buffer_name(name)?;
        }
        let start = Instant::now();
        let mut buf = match source {
            Source::Heap(heap) => self.heap_device(heap)?.allocate(len)?,
            Source::Udmabuf => self.udmabuf_device()?.allocate(len, name)?,
            Source::Memfd => DmaBuf::from_parts(sealed_memfd(name, len)?, len, Origin::Memfd),
        };
        if !name.is_empty() {
            match buf.origin() {
                Origin::Memfd => buf.set_recorded_name(name),
                _ => buf.set_name(name)?,
            }
        }
        log::trace!(
            "allocated {} from {source} in {:?}",
            ByteSize(len),
            start.elapsed()
        );
        Ok(buf)
    }

    /// Walks `sources` in order and returns the first buffer one of them gives. A source that
    /// is out of memory, too small, absent or forbidden is skipped (and said in the debug log);
    /// a request no source could serve (size 0, bad name) stops the walk at once.
    pub fn allocate_first(&self, sources: &[Source], size: u64, name: &str) -> Result<DmaBuf> {
        self.allocate_first_with(sources, size, name, |_| Ok(()))
    }

    /// Like [`Allocator::allocate_first`], but a buffer must also pass `prepare` (a pool maps
    /// and faults it in): a source whose buffer fails it is skipped like one that could not
    /// allocate.
    pub(crate) fn allocate_first_with(
        &self,
        sources: &[Source],
        size: u64,
        name: &str,
        prepare: impl Fn(&DmaBuf) -> Result<()>,
    ) -> Result<DmaBuf> {
        let mut attempts: Vec<(String, Error)> = Vec::new();
        for source in sources {
            match self
                .allocate(source, size, name)
                .and_then(|buf| prepare(&buf).map(|()| buf))
            {
                Ok(buf) => {
                    if !attempts.is_empty() {
                        log::debug!(
                            "{} served {} after: {}",
                            source,
                            ByteSize(size),
                            attempts
                                .iter()
                                .map(|(who, e)| format!("{who}: {e}"))
                                .collect::<Vec<_>>()
                                .join("; ")
                        );
                    }
                    return Ok(buf);
                }
                Err(e) if !e.is_fallback_worthy() => return Err(e),
                Err(e) => {
                    log::debug!(
                        "{source} cannot serve {}: {e}; trying the next",
                        ByteSize(size)
                    );
                    attempts.push((source.to_string(), e));
                }
            }
        }
        if attempts.len() == 1 {
            // One candidate: its own error says it best.
            return Err(attempts.pop().expect("one attempt").1);
        }
        Err(Error::AllSourcesFailed { size, attempts })
    }

    fn heap_device(&self, requested: &HeapName) -> Result<Arc<HeapDevice>> {
        let mut heaps = self.heaps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(device) = heaps.get(requested) {
            return Ok(Arc::clone(device));
        }
        let info = self.inventory.find(requested.as_str())?;
        let device = Arc::new(HeapDevice::open(info)?);
        heaps.insert(requested.clone(), Arc::clone(&device));
        Ok(device)
    }

    fn udmabuf_device(&self) -> Result<Arc<UdmabufDevice>> {
        let mut slot = self.udmabuf.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(device) = slot.as_ref() {
            return Ok(Arc::clone(device));
        }
        let device = Arc::new(UdmabufDevice::open(&self.inventory.udmabuf)?);
        *slot = Some(Arc::clone(&device));
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_buffers_are_sealed_named_and_writable() {
        let alloc = Allocator::new();
        let mut buf = alloc.allocate(&Source::Memfd, 10_000, "unit-test").unwrap();
        assert_eq!(buf.len() % crate::sysinfo::page_size(), 0);
        assert!(buf.len() >= 10_000);
        assert!(!buf.is_dmabuf());
        assert_eq!(buf.name(), Some("unit-test"));
        let seals = rustix::fs::fcntl_get_seals(&buf).unwrap();
        assert!(seals.contains(rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW));
        assert!(!seals.contains(rustix::fs::SealFlags::WRITE));
        buf.write().unwrap()[..4].copy_from_slice(b"abcd");
        assert_eq!(&buf.read().unwrap()[..4], b"abcd");
        let link = std::fs::read_link(format!("/proc/self/fd/{}", buf.as_raw_fd())).unwrap();
        assert!(
            link.to_string_lossy().contains("dmaheap:unit-test"),
            "{link:?}"
        );
    }

    #[test]
    fn the_fallback_walk_skips_what_cannot_serve() {
        let alloc = Allocator::new();
        let sources = [Source::heap("no-such-heap").unwrap(), Source::Memfd];
        let buf = alloc.allocate_first(&sources, 4096, "").unwrap();
        assert_eq!(buf.origin(), &Origin::Memfd);
    }

    #[test]
    fn bad_requests_stop_the_walk() {
        let alloc = Allocator::new();
        let err = alloc.allocate_first(&[Source::Memfd], 0, "").unwrap_err();
        assert!(matches!(err, Error::InvalidSize { .. }), "{err}");
        let err = alloc
            .allocate_first(&[Source::Memfd], 4096, &"n".repeat(40))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidBufferName { .. }), "{err}");
    }

    #[test]
    fn exhausted_walks_say_why_each_source_failed() {
        let alloc = Allocator::new();
        let sources = [
            Source::heap("nope1").unwrap(),
            Source::heap("nope2").unwrap(),
        ];
        let err = alloc
            .allocate_first(&sources, 4096, "")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("heap nope1: no DMA-BUF heap named \"nope1\""),
            "{err}"
        );
        assert!(err.contains("heap nope2"), "{err}");
    }

    #[test]
    fn a_buffer_that_cannot_be_prepared_falls_back_to_the_next_source() {
        let alloc = Allocator::new();
        let calls = std::cell::Cell::new(0);
        let buf = alloc
            .allocate_first_with(&[Source::Memfd, Source::Memfd], 4096, "prep", |_| {
                calls.set(calls.get() + 1);
                if calls.get() == 1 {
                    Err(Error::Unsupported("the CPU may not map it".into()))
                } else {
                    Ok(())
                }
            })
            .unwrap();
        assert_eq!((calls.get(), buf.origin()), (2, &Origin::Memfd));
    }

    #[test]
    fn the_default_order_ends_with_memfd() {
        assert_eq!(
            Allocator::new().default_sources().last(),
            Some(&Source::Memfd)
        );
    }

    use std::os::fd::AsRawFd;
}
