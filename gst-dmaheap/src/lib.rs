#![doc = include_str!("../README.md")]

use gst::glib;
use gst::prelude::*;

mod allocator;
mod bufferpool;
mod caps;
mod counter;
mod error;
mod heapchoice;
mod memory;
mod props;
mod stats;
mod upload;

pub use allocator::{ALLOCATOR_NAME, DmaHeapAllocator};
pub use bufferpool::DmaHeapBufferPool;
pub use error::Error;
pub use heapchoice::{DmaHeapQos, HeapChoice};
pub use memory::{HeapMemoryInfo, heap_memory_info, is_heap_memory, live_heap_buffers};
pub use props::OnExhaustion;
pub use upload::DmaHeapUpload;

/// Forwards heapcore's `log` records (which source was skipped and why) to the
/// `dmaheapcore` debug category, when the plugin was loaded from its shared library: that
/// copy of the `log` crate belongs to the plugin alone. A plugin registered statically
/// (`plugin_register_static`) shares the application's `log` crate and leaves its logger,
/// and its maximum level, to the application.
fn forward_heapcore_log(plugin: &gst::Plugin) {
    if plugin.filename().is_none() {
        return;
    }
    static LOGGER: std::sync::LazyLock<gst::log::DebugCategoryLogger> =
        std::sync::LazyLock::new(|| {
            gst::log::DebugCategoryLogger::new(gst::DebugCategory::new(
                "dmaheapcore",
                gst::DebugColorFlags::empty(),
                Some("heapcore: heap discovery, allocation and fallback"),
            ))
        });
    if log::set_logger(&*LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    forward_heapcore_log(plugin);
    DmaHeapQos::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    OnExhaustion::static_type().mark_as_plugin_api(gst::PluginAPIFlags::empty());
    allocator::register(plugin)?;
    bufferpool::register(plugin)?;
    upload::register(plugin)?;
    Ok(())
}

#[cfg(test)]
mod test_support {
    /// GStreamer and this plugin (registered statically), once per test process.
    pub(crate) fn init() {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| {
            gst::init().expect("GStreamer initialises");
            crate::plugin_register_static().expect("the plugin registers");
        });
    }
}

/// GStreamer's entry points: the shared library's plugin descriptor and
/// `plugin_register_static` for programs that link the plugin in. The macro that makes them
/// documents none of its items, hence the `allow`.
#[allow(missing_docs, unreachable_pub)]
mod entry {
    use super::plugin_init;

    gst::plugin_define!(
        dmaheap,
        env!("CARGO_PKG_DESCRIPTION"),
        plugin_init,
        concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
        // The crate is MIT OR Apache-2.0; GStreamer's license list knows "MIT/X11".
        "MIT/X11",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_NAME"),
        // No public home yet: GStreamer's own words for an origin nobody gave.
        "Unknown package origin",
        env!("BUILD_REL_DATE")
    );
}

pub use entry::plugin_register_static;
