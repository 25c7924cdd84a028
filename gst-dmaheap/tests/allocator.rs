//! gst-check tests of `GstDmaHeapAllocator` and the plugin's registration.
//!
//! They run on any machine: without DMA-BUF heaps the memory comes from the memfd fallback
//! (fd memory); where heaps exist it is dma-buf memory. `real_heap_gst.rs` has the tests that
//! need real heaps and devices.

mod common;

use common::*;
use gst::prelude::*;
use gstdmaheap::DmaHeapAllocator;

#[test]
fn plugin_registers_the_element_and_the_named_allocator() {
    init();
    assert!(gst::ElementFactory::find("dmaheapupload").is_some());
    let alloc = gst::Allocator::find(Some(gstdmaheap::ALLOCATOR_NAME))
        .expect("gst_allocator_find(\"dmaheap\")");
    let alloc = alloc
        .downcast::<DmaHeapAllocator>()
        .expect("the registered allocator is a GstDmaHeapAllocator");
    assert!(alloc.is::<gst_allocators::DmaBufAllocator>());
    assert!(
        !alloc
            .object_flags()
            .contains(gst::ObjectFlags::from_bits_retain(
                gst::ffi::GST_ALLOCATOR_FLAG_CUSTOM_ALLOC
            )),
        "the allocator must be usable through gst_allocator_alloc()"
    );
    // Any element can allocate from it with the generic API, prefix and padding included.
    let params = gst::AllocationParams::new(gst::MemoryFlags::empty(), 63, 128, 64);
    let mem = alloc
        .alloc(100_000, Some(&params))
        .expect("gst_allocator_alloc");
    assert_eq!(mem.size(), 100_000);
    assert_eq!(mem.offset(), 128);
    assert!(mem.maxsize() >= 100_000 + 128 + 64);
    assert_honest_heap_memory(&mem);
    let mut mem = mem;
    mem.get_mut().unwrap().map_writable().unwrap()[99_999] = 7;
    assert_eq!(mem.map_readable().unwrap()[99_999], 7);
}

/// The data starts after the prefix at the alignment asked for, as GStreamer's system memory
/// does.
#[test]
fn allocator_honours_prefix_alignment_and_zeroing() {
    init();
    let allocator = DmaHeapAllocator::new();
    let params = gst::AllocationParams::new(
        gst::MemoryFlags::ZERO_PREFIXED | gst::MemoryFlags::ZERO_PADDED,
        63,
        10,
        20,
    );
    let mem = allocator.alloc(1000, Some(&params)).unwrap();
    assert_eq!(mem.size(), 1000);
    assert_eq!(
        mem.offset(),
        64,
        "the prefix of 10 rounded up to the 64-byte alignment"
    );
    assert!(mem.maxsize() >= 64 + 1000 + 20);
    let map = mem.map_readable().unwrap();
    assert_eq!(map.as_ptr() as usize % 64, 0, "data at {:p}", map.as_ptr());
}
