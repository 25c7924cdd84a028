//! NULL ↔ PLAYING 1,000 times with flushing seeks: no fd, heap buffer or memory leak.
//!
//! Alone in its own test binary so that nothing else allocates while it counts the process's
//! fds, live heap buffers and resident memory.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{init, open_fds, rss};
use gst::prelude::*;

#[test]
fn a_thousand_state_changes_and_flushes_leak_no_fd_or_memory() {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc ! video/x-raw,format=I420,width=160,height=120 \
         ! dmaheapupload min-buffers=2 ! fakesink name=sink signal-handoffs=true sync=false",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let frames = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&frames);
    pipeline
        .by_name("sink")
        .unwrap()
        .connect("handoff", false, move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            None
        });
    let wait_frames = |n: u64| {
        let start = Instant::now();
        while frames.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no frames flowing"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    let cycle = |i: u32| {
        let before = frames.load(Ordering::SeqCst);
        pipeline.set_state(gst::State::Playing).unwrap();
        wait_frames(before + 2);
        if i % 2 == 0 {
            let before = frames.load(Ordering::SeqCst);
            assert!(
                pipeline
                    .seek_simple(gst::SeekFlags::FLUSH, gst::ClockTime::ZERO)
                    .is_ok()
            );
            wait_frames(before + 2);
        }
        pipeline.set_state(gst::State::Null).unwrap();
    };
    // Warm-up: heap devices opened once, registry, GLib's caches.
    for i in 0..20 {
        cycle(i);
    }
    let (fds0, live0, rss0) = (open_fds(), gstdmaheap::live_heap_buffers(), rss());
    let start = Instant::now();
    for i in 0..1000 {
        cycle(i);
    }
    let (fds1, live1, rss1) = (open_fds(), gstdmaheap::live_heap_buffers(), rss());
    println!(
        "1000 NULL->PLAYING->NULL cycles (500 with a flushing seek) in {:?}: fds {fds0} -> \
         {fds1}, live heap buffers {live0} -> {live1}, RSS {} -> {} KiB, {} frames",
        start.elapsed(),
        rss0 / 1024,
        rss1 / 1024,
        frames.load(Ordering::SeqCst)
    );
    assert_eq!(fds1, fds0, "fd leak");
    assert_eq!(live0, 0, "every heap buffer is freed in NULL");
    assert_eq!(live1, 0, "heap buffer leak");
    // One leaked 160x120 I420 buffer per cycle would be 28 MiB.
    assert!(
        rss1 < rss0 + 8 * 1024 * 1024,
        "RSS grew by {} KiB",
        (rss1 - rss0) / 1024
    );
}
