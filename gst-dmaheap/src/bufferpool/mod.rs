//! `GstDmaHeapBufferPool`: a video buffer pool whose buffers are heap memory.

use std::sync::Arc;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use crate::stats::Stats;

mod fences;
mod hot;
mod imp;
mod vfuncs;

glib::wrapper! {
    /// A video buffer pool on [`crate::DmaHeapAllocator`]: honours `GstVideoAlignment`, adds
    /// `GstVideoMeta`, keeps buffers mapped, and applies a QoS class and a prewarm count.
    pub struct DmaHeapBufferPool(ObjectSubclass<imp::DmaHeapBufferPool>)
        @extends gst::BufferPool, gst::Object;
}

impl Default for DmaHeapBufferPool {
    fn default() -> Self {
        Self::new()
    }
}

impl DmaHeapBufferPool {
    /// A pool with the default allocator (set another one in the config).
    pub fn new() -> Self {
        glib::Object::new()
    }

    /// The pool's statistics (also the `stats` property).
    pub fn stats(&self) -> gst::Structure {
        self.property("stats")
    }

    /// Errors the pool meets (exhaustion, failed allocations) are posted on `element`'s bus.
    pub(crate) fn set_owner(&self, element: &impl IsA<gst::Element>) {
        self.imp().set_owner(element.upcast_ref());
    }

    /// Counts into `stats` (shared with the element that made the pool).
    pub(crate) fn set_stats(&self, stats: Arc<Stats>) {
        self.imp().set_stats(stats);
    }
}

pub(crate) fn register(_plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    DmaHeapBufferPool::static_type();
    Ok(())
}
