//! GStreamer plugin `dmaheap` (work in progress: see issue 4).
