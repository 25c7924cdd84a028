//! `dmaheapupload`: offers a heap buffer pool upstream, passes heap buffers through, and
//! other exporters' dma-bufs when they meet what the devices and downstream need, and copies
//! into heap buffers only otherwise.

use gst::glib;
use gst::prelude::*;

mod copy;
mod devices;
mod foreign;
mod imp;
mod pools;
mod state;

glib::wrapper! {
    /// The `dmaheapupload` element.
    pub struct DmaHeapUpload(ObjectSubclass<imp::DmaHeapUpload>)
        @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

pub(crate) fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "dmaheapupload",
        gst::Rank::NONE,
        DmaHeapUpload::static_type(),
    )
}
