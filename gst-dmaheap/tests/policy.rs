//! The `usage` property goes through heapcore's policy: a policy file decides the heaps.
//!
//! Alone in its own test binary because the policy is read once per process, and this one must
//! be read from the file written here (`DMAHEAP_POLICY`).

mod common;

use std::time::Duration;

use common::run_pipeline;

#[test]
fn a_policy_file_decides_where_a_usage_allocates() {
    let dir = std::env::temp_dir().join(format!("dmaheap-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.toml");
    std::fs::write(
        &file,
        "[usage.scanout]\nheaps = [\"memfd\"]\n\n[usage.camera]\nheaps = [\"no-such-heap\"]\n",
    )
    .unwrap();
    // Set before anything in this process reads the policy.
    set_env_before_gstreamer("DMAHEAP_POLICY", &file);

    // scanout: the built-in policy says CMA, system, udmabuf, memfd; the file says memfd.
    let run = run_pipeline(
        "videotestsrc num-buffers=5 ! video/x-raw,width=64,height=64 \
         ! dmaheapupload name=up usage=scanout ! fakesink",
        Duration::from_secs(30),
    )
    .unwrap();
    let stats = run.stats.unwrap();
    let origins = stats.get::<String>("heap-origins").unwrap();
    assert!(origins.starts_with("memfd"), "{stats}");

    // camera: nothing the file names exists here, and the element says why.
    let err = run_pipeline(
        "videotestsrc num-buffers=5 ! dmaheapupload name=up usage=camera ! fakesink",
        Duration::from_secs(30),
    )
    .unwrap_err();
    assert!(err.contains("no-such-heap"), "{err}");
    assert!(err.contains("not on this machine"), "{err}");
    println!("usage=camera with a policy naming a missing heap: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sets an environment variable before GStreamer (and its threads) start in this process.
fn set_env_before_gstreamer(key: &str, value: &std::path::Path) {
    // SAFETY: this binary's only test calls this before GStreamer or heapcore start a thread;
    // the harness's main thread only waits for the test, so nothing reads the environment
    // concurrently.
    unsafe { std::env::set_var(key, value) };
}
