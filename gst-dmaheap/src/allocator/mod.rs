//! `GstDmaHeapAllocator`: a `GstDmaBufAllocator` whose memory comes from DMA-BUF heaps.

use std::sync::Arc;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use crate::error::Error;
use crate::heapchoice::HeapChoice;

mod imp;

/// The name the allocator has in GStreamer's registry (`gst_allocator_find("dmaheap")`).
pub const ALLOCATOR_NAME: &str = "dmaheap";

glib::wrapper! {
    /// Allocates heap buffers and wraps them as dma-buf memory (`gst_is_dmabuf_memory()` is
    /// true); the memfd fallback, which is not a dma-buf, becomes fd memory.
    pub struct DmaHeapAllocator(ObjectSubclass<imp::DmaHeapAllocator>)
        @extends gst_allocators::DmaBufAllocator, gst_allocators::FdAllocator, gst::Allocator, gst::Object;
}

impl Default for DmaHeapAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl DmaHeapAllocator {
    /// An allocator for the `generic` usage of heapcore's policy (built in: system heap, CMA,
    /// udmabuf, memfd).
    pub fn new() -> Self {
        glib::Object::new()
    }

    /// An allocator for an ordered `heap` list (`"reserved,system"`); fails with the reason
    /// when no entry can be used here or a name is not a plain heap name.
    pub fn with_heaps(heaps: &str) -> Result<Self, Error> {
        let choice = HeapChoice::resolve(heaps, heapcore::Usage::GENERIC, 0)?;
        Ok(Self::with_choice(Arc::new(choice)))
    }

    /// An allocator for a usage: heapcore's policy picks the heaps; fails with the solver's
    /// explanation when none can serve here.
    pub fn with_usage(usage: &str) -> Result<Self, Error> {
        Ok(Self::with_choice(Arc::new(HeapChoice::resolve(
            "", usage, 0,
        )?)))
    }

    pub(crate) fn with_choice(choice: Arc<HeapChoice>) -> Self {
        let obj: Self = glib::Object::new();
        obj.imp().set_choice(choice);
        obj
    }

    /// The sources this allocator uses, resolved from its properties.
    pub fn choice(&self) -> Result<Arc<HeapChoice>, Error> {
        self.imp().choice()
    }

    /// Allocates `size` bytes (plus `params`' prefix and padding) and wraps them as GStreamer
    /// memory; `name` labels the buffer for `/proc/<pid>/fdinfo`.
    pub fn alloc_heap_memory(
        &self,
        size: usize,
        params: &gst::AllocationParams,
        name: &str,
    ) -> Result<gst::Memory, Error> {
        self.imp().alloc_heap_memory(size, params, name, None)
    }

    /// A heapcore pool for memories of `size` bytes with `params` from this allocator's
    /// sources (see [`HeapChoice::pool`]).
    pub(crate) fn heap_pool(
        &self,
        size: usize,
        params: &gst::AllocationParams,
        name: &str,
        qos: crate::DmaHeapQos,
        prewarm: u32,
    ) -> Result<heapcore::Pool, Error> {
        let total = imp::DmaHeapAllocator::total_size(size, params)?;
        self.choice()?.pool(total as u64, name, qos, prewarm)
    }

    /// Like [`DmaHeapAllocator::alloc_heap_memory`], the buffer taken from `pool`.
    pub(crate) fn alloc_pooled_memory(
        &self,
        size: usize,
        params: &gst::AllocationParams,
        name: &str,
        pool: &heapcore::Pool,
    ) -> Result<gst::Memory, Error> {
        self.imp().alloc_heap_memory(size, params, name, Some(pool))
    }
}

/// Registers the type and a default instance under [`ALLOCATOR_NAME`].
pub(crate) fn register(_plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    DmaHeapAllocator::static_type();
    gst::Allocator::register(ALLOCATOR_NAME, DmaHeapAllocator::new());
    Ok(())
}
