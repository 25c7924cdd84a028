//! An application that links the plugin statically keeps the process's `log` logger: it can
//! install its own after registering the plugin (a binary of its own: the logger is global).

use std::sync::atomic::{AtomicUsize, Ordering};

static RECORDS: AtomicUsize = AtomicUsize::new(0);

struct Counting;

impl log::Log for Counting {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, _: &log::Record<'_>) {
        RECORDS.fetch_add(1, Ordering::SeqCst);
    }
    fn flush(&self) {}
}

#[test]
fn a_statically_registered_plugin_leaves_the_logger_to_the_application() {
    gst::init().unwrap();
    gstdmaheap::plugin_register_static().unwrap();
    // Used as an application would, so heapcore has had every chance to log.
    let allocator = gstdmaheap::DmaHeapAllocator::new();
    drop(gst::prelude::AllocatorExt::alloc(&allocator, 4096, None).unwrap());
    assert_eq!(
        log::max_level(),
        log::LevelFilter::Off,
        "the plugin changed the process's log level"
    );
    log::set_logger(&Counting).expect("the plugin took the process's logger");
    log::set_max_level(log::LevelFilter::Trace);
    log::info!("the application's own record");
    assert_eq!(RECORDS.load(Ordering::SeqCst), 1);
}
