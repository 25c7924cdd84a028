//! Dma-bufs from other exporters in `dmaheapupload`: a camera's or decoder's own buffers
//! (`v4l2src io-mode=dmabuf`, a V4L2 decoder), another process's. One goes downstream as it
//! is when it meets what the buffers' consumers need, and is copied otherwise, the reason
//! kept in the stats (`last-copy-reason`):
//!
//! - its fd names its exporter (fdinfo `exp_name`), and heapcore's [`ExporterMemory`] says
//!   what that memory is (a heap, udmabuf, videobuf2's vmalloc, dma-sg or dma-contig
//!   allocator);
//! - every device the buffers pass through (the `devices` property or the neighbours) can
//!   import it: a device that needs physically contiguous memory gets only memory known to
//!   be contiguous (a CMA heap's, videobuf2 dma-contig memory of a device without an IOMMU);
//!   an exporter whose memory is not known is copied for such a device. The V4L2 device that
//!   exported the buffer is not asked about its own memory;
//! - an explicit `heap=` list is a demand for memory from those sources: other exporters'
//!   buffers are copied into them; a choice made of contiguous heaps only (the usage's policy
//!   asks for contiguous memory) wants contiguous memory from other exporters too;
//! - memory the CPU may not map (a protected heap's) passes only to memory:DMABuf;
//! - the layout check (strides and offsets downstream reads) is the caller's, as for heap
//!   buffers.
//!
//! A verdict is kept per dma-buf (device and inode of its fd) until the caps or the element
//! change, so a recycled buffer costs one `fstat`, not a read of its fdinfo.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::Mutex;

use heapcore::{ExporterMemory, FdInfo, Inventory, Source};

use super::devices::Devices;
use crate::heapchoice::HeapChoice;
use crate::memory;

/// Verdicts cap: a source that makes a new dma-buf per frame would otherwise grow the map.
const MAX_VERDICTS: usize = 256;

/// A foreign dma-buf's verdict: its exporter and memory in words when it may pass, why not
/// otherwise.
type Verdict = Result<String, String>;

/// The verdicts on the dma-bufs seen since the caps were set, by (device, inode) of the fd.
#[derive(Debug, Default)]
pub(super) struct Verdicts(Mutex<HashMap<(u64, u64), Verdict>>);

/// What a buffer is, as far as passing it on goes.
pub(super) enum Foreign {
    /// Not (only) other exporters' dma-bufs: heap memory, system memory, a mix.
    No,
    /// Every memory is a dma-buf of another exporter that may go downstream; the exporters.
    Passes(String),
    /// A dma-buf of another exporter that may not; why.
    Copy(String),
}

impl Verdicts {
    pub(super) fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Judges `buf` if every memory of it is a dma-buf this process's heap code did not make.
    pub(super) fn judge(
        &self,
        buf: &gst::BufferRef,
        choice: &HeapChoice,
        out_dmabuf: bool,
        devices: &Devices,
    ) -> Foreign {
        let mut fds = Vec::with_capacity(buf.n_memory());
        for mem in buf.iter_memories() {
            if memory::heap_memory_info(mem).is_some() {
                return Foreign::No;
            }
            let Some(dmabuf) = mem.downcast_memory_ref::<gst_allocators::DmaBufMemory>() else {
                return Foreign::No;
            };
            fds.push(dmabuf.fd());
        }
        if fds.is_empty() {
            return Foreign::No;
        }
        let mut exporters: Vec<String> = Vec::new();
        for fd in fds {
            // SAFETY: the fd belongs to a memory of `buf`, which the caller holds for the
            // duration of this call.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            match self.verdict(fd, choice, out_dmabuf, devices) {
                Ok(exporter) => {
                    if !exporters.contains(&exporter) {
                        exporters.push(exporter);
                    }
                }
                Err(why) => return Foreign::Copy(why),
            }
        }
        Foreign::Passes(exporters.join(", "))
    }

    /// The verdict on one dma-buf: kept from before, or judged now.
    fn verdict(
        &self,
        fd: BorrowedFd<'_>,
        choice: &HeapChoice,
        out_dmabuf: bool,
        devices: &Devices,
    ) -> Verdict {
        let key = match rustix::fs::fstat(fd) {
            Ok(st) => (st.st_dev, st.st_ino),
            Err(e) => return Err(format!("its fd cannot be looked at ({e})")),
        };
        let mut verdicts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = verdicts.get(&key) {
            return v.clone();
        }
        let verdict = judge(fd, choice, out_dmabuf, devices);
        if verdicts.len() >= MAX_VERDICTS {
            verdicts.clear();
        }
        verdicts.insert(key, verdict.clone());
        verdict
    }
}

/// Judges one dma-buf from its fdinfo against the choice, downstream and the devices.
fn judge(fd: BorrowedFd<'_>, choice: &HeapChoice, out_dmabuf: bool, devices: &Devices) -> Verdict {
    let info = FdInfo::read(fd).map_err(|e| format!("its fdinfo cannot be read ({e})"))?;
    let exporter = info
        .exp_name()
        .ok_or("its fdinfo names no exporter: not a dma-buf")?;
    let registry = crate::heapchoice::registry();
    let inventory = registry.allocator().inventory();
    let mem = ExporterMemory::recognise(exporter, inventory, devices.upstream_v4l2.as_ref());
    if mem.protected && !out_dmabuf {
        return Err(format!(
            "{mem} is memory the CPU may not map, and downstream takes system memory"
        ));
    }
    let exported_by_upstream = exporter.starts_with("videobuf2_");
    for report in &devices.reports {
        let is_exporter = exported_by_upstream
            && devices
                .upstream_v4l2
                .as_ref()
                .is_some_and(|d| d.devnum == report.device.devnum);
        if !is_exporter {
            mem.suits(report, inventory)?;
        }
    }
    if choice.is_explicit() {
        if !choice
            .sources()
            .iter()
            .any(|s| is_source(s, exporter, inventory))
        {
            return Err(format!(
                "heap={choice} was asked for, and the buffer was exported by {mem}"
            ));
        }
    } else if choice
        .sources()
        .iter()
        .all(|s| source_contiguous(s, inventory) == Some(true))
        && mem.contiguous != Some(true)
    {
        return Err(format!(
            "the heap choice ({}) gives contiguous memory only, and {mem} is {}",
            choice.describe(),
            if mem.contiguous == Some(false) {
                "not"
            } else {
                "not known to be"
            }
        ));
    }
    Ok(mem.to_string())
}

/// Whether `source` is the exporter named `exporter` (a heap under any of its names).
fn is_source(source: &Source, exporter: &str, inventory: &Inventory) -> bool {
    match source {
        Source::Heap(name) => match (inventory.find(name.as_str()), inventory.find(exporter)) {
            (Ok(a), Ok(b)) => a.path == b.path,
            _ => name.as_str() == exporter,
        },
        Source::Udmabuf => exporter == "udmabuf",
        Source::Memfd => false,
    }
}

/// Whether a source's memory is physically contiguous, where known.
fn source_contiguous(source: &Source, inventory: &Inventory) -> Option<bool> {
    match source {
        Source::Heap(name) => inventory
            .find(name.as_str())
            .ok()
            .and_then(|h| h.properties.contiguous),
        Source::Udmabuf | Source::Memfd => Some(false),
    }
}
