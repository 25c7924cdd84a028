//! What `dmaheapupload` keeps: its settings, its state between start and stop, the heap pools
//! it made and what downstream said it needs. The element's code (`imp`, `pools`, `copy`)
//! reads and changes these; they depend on nothing of it.

use crate::allocator::DmaHeapAllocator;
use crate::bufferpool::DmaHeapBufferPool;
use crate::heapchoice::DmaHeapQos;
use crate::props::{
    DEFAULT_HEAP, DEFAULT_ON_EXHAUSTION, DEFAULT_PREWARM, DEFAULT_QOS, DEFAULT_USAGE, OnExhaustion,
};

pub(super) const DEFAULT_MIN_BUFFERS: u32 = 0;
pub(super) const DEFAULT_MAX_BUFFERS: u32 = 0;

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) heap: String,
    pub(super) devices: String,
    pub(super) usage: String,
    pub(super) qos: DmaHeapQos,
    pub(super) prewarm: u32,
    pub(super) min_buffers: u32,
    pub(super) max_buffers: u32,
    pub(super) on_exhaustion: OnExhaustion,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heap: DEFAULT_HEAP.into(),
            devices: String::new(),
            usage: DEFAULT_USAGE.into(),
            qos: DEFAULT_QOS,
            prewarm: DEFAULT_PREWARM,
            min_buffers: DEFAULT_MIN_BUFFERS,
            max_buffers: DEFAULT_MAX_BUFFERS,
            on_exhaustion: DEFAULT_ON_EXHAUSTION,
        }
    }
}

// One per element, replaced only on state changes: the size of `Started` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Default)]
pub(super) enum State {
    #[default]
    Stopped,
    Started {
        /// The allocator for the negotiated caps (dma-buf sources only for memory:DMABuf).
        allocator: DmaHeapAllocator,
        in_caps: Option<gst::Caps>,
        in_info: Option<gst_video::VideoInfo>,
        out_dmabuf: bool,
        downstream: Downstream,
        /// The pool offered upstream: upstream configures, activates and writes into it.
        offered: Option<PoolSlot>,
        /// The pool this element copies into, configured and activated here for the caps'
        /// layout (downstream's alignment only where it reads the video meta).
        copies: Option<PoolSlot>,
    },
}

/// What downstream said in its ALLOCATION answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Downstream {
    pub(super) size: u32,
    pub(super) min: u32,
    pub(super) params: gst::AllocationParams,
    pub(super) video_meta: bool,
    pub(super) alignment: Option<gst_video::VideoAlignment>,
}

/// A heap pool made for one set of caps.
#[derive(Debug, Clone)]
pub(super) struct PoolSlot {
    pub(super) pool: DmaHeapBufferPool,
    /// The allocator it was configured with (a new one when the heap choice changes).
    pub(super) allocator: DmaHeapAllocator,
    pub(super) caps: gst::Caps,
    pub(super) downstream: Downstream,
    pub(super) size: u32,
    pub(super) min: u32,
    pub(super) max: u32,
}

impl PoolSlot {
    pub(super) fn fits(
        &self,
        caps: &gst::Caps,
        allocator: &DmaHeapAllocator,
        down: &Downstream,
    ) -> bool {
        self.caps == *caps && self.allocator == *allocator && self.downstream == *down
    }
}
