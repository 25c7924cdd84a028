//! Properties the allocator, the buffer pool and `dmaheapupload` share, declared once so a
//! knob has the same name, default and meaning wherever a user meets it.

use gst::glib;
use gst::glib::prelude::*;

use crate::heapchoice::DmaHeapQos;

/// What an acquire does when a `max-buffers` pool has no free buffer.
#[derive(Debug, Default, Eq, PartialEq, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstDmaHeapOnExhaustion")]
pub enum OnExhaustion {
    /// Wait until a buffer comes back (GstBufferPool's behaviour).
    #[default]
    #[enum_value(name = "Block until a buffer is released", nick = "block")]
    Block,
    /// Fail the acquire with an error that says the pool is exhausted.
    #[enum_value(name = "Fail with an error", nick = "error")]
    Error,
}

pub(crate) const DEFAULT_HEAP: &str = "";
pub(crate) const DEFAULT_USAGE: &str = heapcore::Usage::GENERIC;
pub(crate) const DEFAULT_QOS: DmaHeapQos = DmaHeapQos::Normal;
pub(crate) const DEFAULT_PREWARM: u32 = 0;
pub(crate) const DEFAULT_ON_EXHAUSTION: OnExhaustion = OnExhaustion::Block;

/// `heap`: an ordered list of sources, or empty to let the usage policy decide.
pub(crate) fn heap() -> glib::ParamSpecStringBuilder<'static> {
    glib::ParamSpecString::builder("heap")
        .nick("Heaps")
        .blurb(
            "Ordered list of sources, best first, separated by commas or spaces: heap names \
             (system, reserved, cma, linux,cma, ...), udmabuf, memfd. Empty: chosen by usage",
        )
        .default_value(Some(DEFAULT_HEAP))
}

/// `usage`: which policy entry orders the heaps when `heap` is empty. A string, not an enum:
/// a policy file may add usages of its own (`display`, ...).
pub(crate) fn usage() -> glib::ParamSpecStringBuilder<'static> {
    glib::ParamSpecString::builder("usage")
        .nick("Usage")
        .blurb(
            "What the buffers are for; picks the heap order from the usage policy when heap \
             is empty: generic, scanout, video-decode, video-encode, camera, animation, \
             screencast, render, or a usage a policy file adds",
        )
        .default_value(Some(DEFAULT_USAGE))
}

/// `qos`: how the pool keeps its buffers.
pub(crate) fn qos() -> glib::ParamSpecEnumBuilder<'static, DmaHeapQos> {
    glib::ParamSpecEnum::builder_with_default("qos", DEFAULT_QOS)
        .nick("QoS class")
        .blurb(
            "realtime: prewarmed, never trimmed, misses are warnings; normal: keep what was \
             allocated, trimmed only under critical memory pressure; background: free idle \
             buffers above the minimum",
        )
}

/// `prewarm`: buffers that exist before the first frame.
pub(crate) fn prewarm() -> glib::ParamSpecUIntBuilder<'static> {
    glib::ParamSpecUInt::builder("prewarm")
        .nick("Prewarm")
        .blurb("Buffers allocated when the pool is activated, before the first frame")
        .default_value(DEFAULT_PREWARM)
}

/// `on-exhaustion`: what an acquire does when every buffer is in use.
pub(crate) fn on_exhaustion() -> glib::ParamSpecEnumBuilder<'static, OnExhaustion> {
    glib::ParamSpecEnum::builder_with_default("on-exhaustion", DEFAULT_ON_EXHAUSTION)
        .nick("On exhaustion")
        .blurb("When max-buffers are all in use: block until one returns, or error")
}
