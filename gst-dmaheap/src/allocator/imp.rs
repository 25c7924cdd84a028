use std::os::fd::AsRawFd;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use gst::glib;
use gst::glib::translate::IntoGlibPtr;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_allocators::prelude::*;
use gst_allocators::subclass::prelude::*;

use crate::error::Error;
use crate::heapchoice::HeapChoice;
use crate::memory;
use crate::props::{self, DEFAULT_HEAP, DEFAULT_USAGE};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "dmaheapallocator",
        gst::DebugColorFlags::empty(),
        Some("DMA-BUF heap allocator"),
    )
});

#[derive(Debug, Clone)]
struct Settings {
    heap: String,
    usage: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heap: DEFAULT_HEAP.into(),
            usage: DEFAULT_USAGE.into(),
        }
    }
}

#[derive(Default)]
pub struct DmaHeapAllocator {
    settings: Mutex<Settings>,
    /// Resolved from the settings on first use; cleared when they change.
    choice: Mutex<Option<Arc<HeapChoice>>>,
    /// Wraps the memfd fallback: fd memory, because a memfd is not a dma-buf.
    memfd: OnceLock<gst_allocators::FdAllocator>,
}

impl DmaHeapAllocator {
    pub(super) fn set_choice(&self, choice: Arc<HeapChoice>) {
        {
            let mut settings = self.settings.lock().unwrap();
            settings.heap = if choice.is_explicit() {
                choice.to_string()
            } else {
                String::new()
            };
            settings.usage = choice.usage().to_string();
        }
        *self.choice.lock().unwrap() = Some(choice);
    }

    pub(super) fn choice(&self) -> Result<Arc<HeapChoice>, Error> {
        let mut slot = self.choice.lock().unwrap();
        if let Some(choice) = slot.as_ref() {
            return Ok(Arc::clone(choice));
        }
        let settings = self.settings.lock().unwrap().clone();
        let choice = Arc::new(HeapChoice::resolve(&settings.heap, &settings.usage, 0)?);
        for skipped in choice.skipped() {
            if choice.is_explicit() {
                gst::warning!(CAT, imp = self, "skipping {skipped}");
            } else {
                gst::debug!(CAT, imp = self, "the policy's {skipped}");
            }
        }
        gst::debug!(CAT, imp = self, "allocating from {}", choice.describe());
        *slot = Some(Arc::clone(&choice));
        Ok(choice)
    }

    fn memfd_allocator(&self) -> &gst_allocators::FdAllocator {
        self.memfd.get_or_init(gst_allocators::FdAllocator::new)
    }

    /// Where the data of a memory starts: after the prefix, rounded up to the alignment
    /// `params` asks for (buffers start on a page, so an offset aligned to it is an aligned
    /// address, as GStreamer's system memory gives).
    pub(super) fn data_offset(params: &gst::AllocationParams) -> Option<usize> {
        params.prefix().checked_next_multiple_of(params.align() + 1)
    }

    /// Bytes a memory of `size` needs with the prefix, alignment and padding of `params`.
    pub(super) fn total_size(size: usize, params: &gst::AllocationParams) -> Result<usize, Error> {
        Self::data_offset(params)
            .and_then(|offset| offset.checked_add(size))
            .and_then(|s| s.checked_add(params.padding()))
            .ok_or_else(|| {
                heapcore::Error::InvalidSize {
                    size: size as u64,
                    reason: "size, prefix and padding overflow".into(),
                }
                .into()
            })
    }

    /// A memory of `size` bytes (plus `params`' prefix and padding): from `pool` when given (a
    /// heapcore pool of buffers of exactly that total size), else allocated directly.
    pub(super) fn alloc_heap_memory(
        &self,
        size: usize,
        params: &gst::AllocationParams,
        name: &str,
        pool: Option<&heapcore::Pool>,
    ) -> Result<gst::Memory, Error> {
        let choice = self.choice()?;
        let offset = Self::data_offset(params).unwrap_or(0);
        let total = Self::total_size(size, params)?;
        debug_assert!(pool.is_none_or(|p| p.config().buffer_size == total as u64));
        if params.align() as u64 >= heapcore::sysinfo::page_size() {
            // The mapping starts on a page boundary; larger alignments cannot be promised.
            gst::warning!(
                CAT,
                imp = self,
                "alignment {} exceeds a page: buffers are page-aligned only",
                params.align() + 1
            );
        }
        let mut buf = match pool {
            Some(pool) => HeapChoice::acquire(pool)?,
            None => choice.allocate(total as u64, name)?,
        };
        // Fresh heap memory is zeroed by the kernel; a spare a pool recycles is not.
        let flags = params.flags();
        if flags.contains(gst::MemoryFlags::ZERO_PREFIXED) && offset > 0 {
            buf.zero(0..offset)?;
        }
        if flags.contains(gst::MemoryFlags::ZERO_PADDED) && params.padding() > 0 {
            buf.zero(offset + size..total)?;
        }
        let origin = buf.origin().to_string();
        let is_dmabuf = buf.is_dmabuf();
        let maxsize = usize::try_from(buf.len()).map_err(|_| Error::Wrap {
            origin: origin.clone(),
            size: buf.len(),
        })?;
        let fd = buf.as_raw_fd();
        // The heap buffer owns the fd and is attached to the memory below; GStreamer must not
        // close it, and keeps its own mapping for the memory's whole life.
        let flags =
            gst_allocators::FdMemoryFlags::KEEP_MAPPED | gst_allocators::FdMemoryFlags::DONT_CLOSE;
        let wrapped = if is_dmabuf {
            // SAFETY: `fd` is an open dma-buf of `maxsize` bytes owned by `buf`, which
            // `memory::attach` ties to the memory, so it stays open while the memory exists;
            // DONT_CLOSE keeps GStreamer from closing it.
            unsafe { self.obj().alloc_dmabuf_with_flags(fd, maxsize, flags) }
        } else {
            gst::debug!(
                CAT,
                imp = self,
                "no dma-buf source could serve {total} bytes: wrapping a memfd as fd memory \
                 (not dma-buf memory, so devices will not try to import it)"
            );
            // SAFETY: as above, for a sealed memfd of `maxsize` bytes.
            unsafe { self.memfd_allocator().alloc_fd(fd, maxsize, flags) }
        };
        let mem = wrapped.map_err(|_| Error::Wrap {
            origin: origin.clone(),
            size: buf.len(),
        })?;
        let mut mem = memory::attach(mem, buf);
        mem.get_mut()
            .expect("a fresh memory has one owner")
            .resize(offset..offset + size);
        gst::log!(
            CAT,
            imp = self,
            "{total} bytes from {origin} as {} memory ({maxsize} bytes mapped)",
            if is_dmabuf { "dma-buf" } else { "fd" }
        );
        Ok(mem)
    }
}

#[glib::object_subclass]
impl ObjectSubclass for DmaHeapAllocator {
    const NAME: &'static str = "GstDmaHeapAllocator";
    type Type = super::DmaHeapAllocator;
    type ParentType = gst_allocators::DmaBufAllocator;
}

impl ObjectImpl for DmaHeapAllocator {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> =
            LazyLock::new(|| vec![props::heap().build(), props::usage().build()]);
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        {
            let mut settings = self.settings.lock().unwrap();
            match pspec.name() {
                "heap" => {
                    settings.heap = value
                        .get::<Option<String>>()
                        .expect("type checked upstream")
                        .unwrap_or_default();
                }
                "usage" => {
                    settings.usage = value
                        .get::<Option<String>>()
                        .expect("type checked upstream")
                        .unwrap_or_else(|| DEFAULT_USAGE.into());
                }
                _ => unimplemented!(),
            }
        }
        // Re-resolve now so a bad value is reported where it was set.
        *self.choice.lock().unwrap() = None;
        if let Err(e) = self.choice() {
            gst::error!(CAT, imp = self, "{e}");
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "heap" => settings.heap.to_value(),
            "usage" => settings.usage.to_value(),
            _ => unimplemented!(),
        }
    }

    fn constructed(&self) {
        self.parent_constructed();
        // GstFdAllocator marks itself custom-alloc-only; this one allocates on its own, so any
        // element may call gst_allocator_alloc() on it.
        self.obj()
            .unset_object_flags(gst::ObjectFlags::from_bits_retain(
                gst::ffi::GST_ALLOCATOR_FLAG_CUSTOM_ALLOC,
            ));
    }
}

impl GstObjectImpl for DmaHeapAllocator {}

// SAFETY: `alloc` returns either NULL or a memory created by this allocator (or, for the memfd
// fallback, by its fd allocator) with full ownership transferred to the caller; `free` is the
// parent's.
unsafe impl AllocatorImpl for DmaHeapAllocator {
    unsafe fn alloc(
        &self,
        size: usize,
        params: &gst::AllocationParams,
    ) -> *mut gst::ffi::GstMemory {
        match self.alloc_heap_memory(size, params, "gst:allocator", None) {
            Ok(mem) => mem.into_glib_ptr(),
            Err(e) => {
                gst::error!(CAT, imp = self, "allocating {size} bytes failed: {e}");
                std::ptr::null_mut()
            }
        }
    }
}

impl FdAllocatorImpl for DmaHeapAllocator {}
impl DmaBufAllocatorImpl for DmaHeapAllocator {}
