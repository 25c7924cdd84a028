//! The link between a GStreamer memory and the heap buffer behind it.
//!
//! The memory wraps the buffer's fd with `GST_FD_MEMORY_FLAG_DONT_CLOSE`; the [`HeapBuffer`]
//! that owns the fd is attached to the memory as qdata and dropped when GStreamer finalizes the
//! memory. So the fd's life is heapcore's business (closed on drop, or returned to the heapcore
//! `Pool` it came from), and any element can ask whether a memory came from a heap
//! ([`is_heap_memory`]) and from which one ([`heap_memory_info`]).

use std::os::fd::AsRawFd;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use gst::glib;
use gst::glib::translate::IntoGlib;

use crate::heapchoice::HeapBuffer;

static QUARK: LazyLock<glib::Quark> = LazyLock::new(|| glib::Quark::from_str("GstDmaHeapBuffer"));

/// Heap buffers currently owned by GStreamer memories in this process.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// How many heap buffers GStreamer memories own right now in this process (for leak checks:
/// it returns to its previous value once every pool and buffer is gone).
pub fn live_heap_buffers() -> usize {
    LIVE.load(Ordering::SeqCst)
}

/// Makes `mem` the owner of `buf`: `buf` is dropped when the memory is finalized.
pub(crate) fn attach(mem: gst::Memory, buf: HeapBuffer) -> gst::Memory {
    debug_assert_eq!(
        mem.downcast_memory_ref::<gst_allocators::FdMemory>()
            .map(|m| m.fd()),
        Some(buf.as_raw_fd())
    );
    LIVE.fetch_add(1, Ordering::SeqCst);
    let raw = Box::into_raw(Box::new(buf));
    // SAFETY: `mem` is a valid GstMemory (a GstMiniObject) that we own. The quark is private to
    // this module and set once per memory, so GLib hands `raw` back to `drop_heap_buffer`
    // exactly once, when the memory is finalized.
    unsafe {
        gst::ffi::gst_mini_object_set_qdata(
            mem.as_mut_ptr().cast::<gst::ffi::GstMiniObject>(),
            QUARK.into_glib(),
            raw.cast(),
            Some(drop_heap_buffer),
        );
    }
    mem
}

unsafe extern "C" fn drop_heap_buffer(data: glib::ffi::gpointer) {
    // SAFETY: `data` is the pointer `attach` got from `Box::into_raw`; GLib calls this notify
    // once, so the box is reclaimed once.
    drop(unsafe { Box::from_raw(data.cast::<HeapBuffer>()) });
    LIVE.fetch_sub(1, Ordering::SeqCst);
}

/// The heap buffer behind `mem` (or behind the memory it was shared from).
pub(crate) fn heap_buffer(mem: &gst::MemoryRef) -> Option<&HeapBuffer> {
    // Shared sub-memories point at the memory that owns the fd.
    let root = mem.parent().unwrap_or(mem);
    // SAFETY: `root` is a valid mini object for the lifetime of `mem` (a sub-memory holds a
    // reference to its parent); reading qdata takes the object's lock.
    let data = unsafe {
        gst::ffi::gst_mini_object_get_qdata(
            root.as_mut_ptr().cast::<gst::ffi::GstMiniObject>(),
            QUARK.into_glib(),
        )
    };
    if data.is_null() {
        return None;
    }
    // SAFETY: only `attach` sets this quark, always to a `HeapBuffer`, which lives until the
    // memory is finalized; the memory outlives the returned borrow of `mem`.
    Some(unsafe { &*data.cast::<HeapBuffer>() })
}

/// Whether `mem` is memory this plugin allocated from a heap (or its memfd fallback).
pub fn is_heap_memory(mem: &gst::MemoryRef) -> bool {
    heap_buffer(mem).is_some()
}

/// What a heap memory is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapMemoryInfo {
    /// `heap system`, `heap reserved`, `udmabuf` or `memfd`.
    pub origin: String,
    /// The whole buffer's size in bytes (whole pages).
    pub len: u64,
    /// Whether devices can import it (`gst_is_dmabuf_memory()` is true exactly then).
    pub is_dmabuf: bool,
    /// Whether it is physically contiguous (a CMA heap).
    pub contiguous: bool,
}

/// Describes the heap buffer behind `mem`, if it is heap memory.
pub fn heap_memory_info(mem: &gst::MemoryRef) -> Option<HeapMemoryInfo> {
    heap_buffer(mem).map(|b| HeapMemoryInfo {
        origin: b.origin().to_string(),
        len: b.len(),
        is_dmabuf: b.is_dmabuf(),
        contiguous: b.is_contiguous(),
    })
}
