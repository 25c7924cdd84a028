//! Pools under critical memory pressure, in a process of their own: the level is pinned for
//! the whole process (the other test binaries pin it to normal).

mod common;

use std::time::Duration;

use common::{run_pipeline, stat};

#[test]
fn critical_pressure_trims_without_churning_a_stream() {
    common::init();
    heapcore::PoolRegistry::process().pin_pressure(heapcore::PressureLevel::Critical);
    let frames = |qos: &str| {
        let run = run_pipeline(
            &format!(
                "videotestsrc num-buffers=100 ! video/x-raw,format=NV12,width=640,height=480 \
                 ! dmaheapupload name=up qos={qos} ! fakesink"
            ),
            Duration::from_secs(60),
        )
        .unwrap();
        let stats = run.stats.expect("dmaheapupload posts its stats at EOS");
        println!("qos={qos}: {stats}");
        stats
    };
    // A normal pool keeps the buffer the stream takes next: no allocation per frame.
    let normal = frames("normal");
    assert!(stat(&normal, "pool-misses") <= 2, "{normal}");
    assert!(stat(&normal, "pool-hits") >= 98, "{normal}");
    // A background pool is lean by request: it frees what comes back above min-buffers.
    let background = frames("background");
    assert!(stat(&background, "trimmed") >= 90, "{background}");
}
