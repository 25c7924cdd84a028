//! What a producer tells its user: what was negotiated ([`Negotiated`]), counters
//! ([`Stats`]), events ([`Event`]) and the devices its consumers named ([`PeerDevice`]).

use std::fmt;

use heapcore::Origin;
use heapcore::device::Device;
use heapcore::format::FrameLayout;

use crate::data_types::DataKind;
use crate::params::VideoParams;

/// What was negotiated with the current consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The fixed format.
    pub params: VideoParams,
    /// Where each plane lies in a buffer.
    pub layout: FrameLayout,
    /// The memory type the consumer gets.
    pub data_kind: DataKind,
    /// Where the buffers came from (the heap, udmabuf, memfd).
    pub origin: Origin,
    /// How many buffers the stream has.
    pub buffers: usize,
    /// `spa_data` blocks per buffer: one per plane for dma-bufs with a modifier, else one.
    pub blocks: u32,
    /// Bytes of each buffer (whole pages).
    pub buffer_size: u64,
    /// The buffers carry `SPA_META_SyncTimeline` and two syncobjs: explicit sync.
    pub explicit_sync: bool,
}

impl fmt::Display for Negotiated {
    /// `320x240 BGRx @ 60/1 fps, modifier LINEAR: 4 buffers of 307200 bytes (DmaBuf, 1
    /// block(s), stride 1280) from heap system`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} buffers of {} bytes ({}, {} block(s), stride {}{}) from {}",
            self.params,
            self.buffers,
            self.buffer_size,
            self.data_kind,
            self.blocks,
            self.layout.strides[0],
            if self.explicit_sync {
                ", explicit sync"
            } else {
                ""
            },
            self.origin
        )
    }
}

/// Counters for logs and leak checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames queued to PipeWire.
    pub frames: u64,
    /// Process calls that found no free buffer (the consumer still held them all).
    pub starved: u64,
    /// Buffers taken for the stream (including the one taken when a format is fixed).
    pub allocated: u64,
    /// Buffers let go again (freed if their fd went to PipeWire, back to their pool if it
    /// never did).
    pub freed: u64,
    /// How many of the buffers taken came back from the pool instead of being allocated:
    /// only buffers no consumer ever saw (the probe of a format fixed earlier) are pooled.
    pub recycled: u64,
    /// Buffers attached to the stream right now.
    pub live: usize,
    /// Formats fixed so far (1 + renegotiations).
    pub negotiations: u64,
    /// Times PipeWire handed out a buffer this producer held already (a guard: PipeWire 1.6's
    /// stream no longer refuses a second free-queue entry); each was left alone rather than
    /// drawn into while a consumer reads it or sent twice.
    pub duplicates: u64,
    /// Buffer ids a cycle handed back that named no buffer sent since the buffers changed
    /// (stale ids in a link's io area, PipeWire 1.5.81 and later); kept out of the free
    /// queue.
    pub stale_returns: u64,
}

/// Something a UI or log may want to show.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The stream changed state (`Paused`, `Streaming`, ...).
    State(String),
    /// A format was fixed with a consumer; buffers follow.
    FormatFixed(VideoParams),
    /// The buffers are in place and the first frame was produced into them.
    BuffersReady(Negotiated),
    /// Negotiation or allocation failed; the stream is in error.
    Error(String),
    /// The linked consumers named the devices they use (PipeWire 1.6's
    /// `SPA_PARAM_PeerCapability`, `pipewire.device-ids`); empty when they stopped naming any.
    PeerDevices(Vec<PeerDevice>),
}

/// A device a consumer named, as this machine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDevice {
    /// The `dev_t` the consumer sent.
    pub devnum: u64,
    /// The device behind it, as sysfs describes it (heapcore's device model), if this
    /// machine has it.
    pub device: Option<Device>,
}

impl PeerDevice {
    /// The device `devnum`, looked up in sysfs.
    pub fn from_devnum(devnum: u64) -> Self {
        Self {
            devnum,
            device: Device::from_devnum(devnum).ok(),
        }
    }
}

impl fmt::Display for PeerDevice {
    /// `226:128 /dev/dri/renderD128 (vgem)`, or `226:7 (not on this machine)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            rustix::fs::major(self.devnum),
            rustix::fs::minor(self.devnum)
        )?;
        match &self.device {
            Some(device) => write!(f, " {device}"),
            None => f.write_str(" (not on this machine)"),
        }
    }
}
