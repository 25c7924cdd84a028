//! Helpers shared by the gst-check tests (`tests.rs`) and the real-kernel tests
//! (`real_heap_gst.rs`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use gst::prelude::*;
use gst_video::prelude::*;
use gstdmaheap::{DmaHeapBufferPool, heap_memory_info};

/// `gst::init()` and the plugin, registered statically, once per process.
pub(crate) fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("GStreamer initialises");
        gstdmaheap::plugin_register_static().expect("the dmaheap plugin registers");
        // Memory stalls elsewhere on the host (a parallel build in CI) would make normal
        // pools give buffers back mid-run and these tests count pool hits. What pressure
        // does has tests of its own: heapcore's pool tests and the CLI's real PSI trigger.
        heapcore::PoolRegistry::process().pin_pressure(heapcore::PressureLevel::Normal);
    });
}

/// A directory holding this build's `libgstdmaheap.so` and nothing else, for tests that run
/// the real `gst-launch-1.0` / `gst-inspect-1.0`. `cargo test` builds the cdylib next to the
/// test binary (`target/<profile>/deps/`) but does not copy it up to `target/<profile>/`,
/// whose copy may be stale; and GStreamer would scan every other library in `deps/`. So the
/// fresh one is linked from a private directory. A link, not a copy: the debug plugin is some
/// 55 MB, every test process made its own copy and nothing removed it, so 19 runs in a row in
/// one VM boot filled its /tmp (`No space left on device`). GStreamer follows the link; its
/// registry sees the built file's size and mtime, so a rebuilt plugin is read afresh.
pub(crate) fn plugin_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(copy_plugin).clone()
}

fn copy_plugin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("target/<profile>/deps");
    let built = [
        deps.join("libgstdmaheap.so"),
        deps.join("../libgstdmaheap.so"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .expect("cargo builds libgstdmaheap.so with the tests");
    let dir = std::env::temp_dir().join(format!("dmaheap-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a private plugin directory");
    let link = dir.join("libgstdmaheap.so");
    let _ = std::fs::remove_file(&link);
    let built = built.canonicalize().expect("the built plugin's path");
    std::os::unix::fs::symlink(&built, &link).expect("link the plugin");
    dir
}

/// Runs a GStreamer tool (`gst-launch-1.0`, `gst-inspect-1.0`) in a child process that loads
/// this build of the plugin from [`plugin_dir`], with `GST_DEBUG` unset unless `env` sets it.
/// A process of its own also reads the machine afresh (heaps, udmabuf's limit). Its registry
/// is this process's where one was given (`GST_REGISTRY`: the test VMs keep one across boots,
/// and GStreamer reads the copied plugin afresh, its mtime being new), else a private one.
pub(crate) fn gst_tool(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::io::Result<std::process::Output> {
    let dir = plugin_dir();
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .env("GST_PLUGIN_PATH", &dir)
        .env(
            "GST_REGISTRY",
            std::env::var_os("GST_REGISTRY").unwrap_or_else(|| dir.join("registry.bin").into()),
        )
        .env("GST_DEBUG_NO_COLOR", "1")
        .env_remove("GST_DEBUG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
}

/// What a pipeline run ended with.
#[derive(Debug)]
pub(crate) struct Run {
    /// The `dmaheapupload-stats` element message posted at EOS by the element named `up` (or
    /// by the only dmaheapupload).
    pub stats: Option<gst::Structure>,
    /// Every `dmaheapupload-stats` message, by element name.
    pub stats_by_element: std::collections::BTreeMap<String, gst::Structure>,
    /// Caps on the src pad of the element named `up`, if there is one.
    pub upload_src_caps: Option<gst::Caps>,
    /// Frames each element said it dropped, from its QoS messages (a video decoder posts
    /// one for every frame it drops).
    pub dropped: std::collections::BTreeMap<String, u64>,
    pub elapsed: Duration,
}

/// Runs `description` to EOS (or fails with the first error), at most `timeout`.
pub(crate) fn run_pipeline(description: &str, timeout: Duration) -> Result<Run, String> {
    run_pipeline_with(description, timeout, |_| {})
}

/// [`run_pipeline`], with `setup` called on the pipeline before it starts (to add probes).
pub(crate) fn run_pipeline_with(
    description: &str,
    timeout: Duration,
    setup: impl FnOnce(&gst::Pipeline),
) -> Result<Run, String> {
    init();
    let pipeline = gst::parse::launch(description)
        .map_err(|e| format!("{description}: {e}"))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_owned())?;
    setup(&pipeline);
    let bus = pipeline.bus().expect("pipeline bus");
    let start = Instant::now();
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("{description}: cannot start: {e}; {}", drain_errors(&bus)))?;
    let mut stats_by_element = std::collections::BTreeMap::new();
    let mut dropped = std::collections::BTreeMap::new();
    let mut caps = None;
    let result = loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            break Err(format!("{description}: no EOS within {timeout:?}"));
        }
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(left.as_millis() as u64))
        else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break Ok(()),
            gst::MessageView::Error(e) => {
                break Err(format!(
                    "{description}: error from {}: {} ({:?})",
                    e.src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default(),
                    e.error(),
                    e.debug()
                ));
            }
            gst::MessageView::Qos(q) => {
                let (_processed, frames_dropped) = q.stats();
                if let gst::GenericFormattedValue::Buffers(Some(n)) = frames_dropped {
                    let who = q.src().map(|o| o.name().to_string()).unwrap_or_default();
                    let entry = dropped.entry(who).or_insert(0);
                    *entry = (*entry).max(*n);
                }
            }
            gst::MessageView::Element(e) => {
                if let Some(s) = e.structure()
                    && s.name() == "dmaheapupload-stats"
                {
                    let who = e.src().map(|o| o.name().to_string()).unwrap_or_default();
                    stats_by_element.insert(who, s.to_owned());
                }
            }
            _ => {}
        }
        if caps.is_none()
            && let Some(up) = pipeline.by_name("up")
        {
            caps = up.static_pad("src").and_then(|p| p.current_caps());
        }
    };
    if caps.is_none()
        && let Some(up) = pipeline.by_name("up")
    {
        caps = up.static_pad("src").and_then(|p| p.current_caps());
    }
    let elapsed = start.elapsed();
    pipeline
        .set_state(gst::State::Null)
        .map_err(|e| format!("{description}: cannot stop: {e}"))?;
    let stats = stats_by_element
        .get("up")
        .or_else(|| stats_by_element.values().next())
        .cloned();
    result.map(|()| Run {
        stats,
        stats_by_element,
        upload_src_caps: caps,
        dropped,
        elapsed,
    })
}

fn drain_errors(bus: &gst::Bus) -> String {
    let mut out = Vec::new();
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(e) = msg.view() {
            out.push(format!("{} ({:?})", e.error(), e.debug()));
        }
    }
    out.join("; ")
}

/// A `u64` field of a stats structure.
pub(crate) fn stat(s: &gst::StructureRef, field: &str) -> u64 {
    s.get::<u64>(field)
        .unwrap_or_else(|e| panic!("stats field {field}: {e} in {s}"))
}

/// This process's open fds.
pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// This process's resident memory in bytes.
pub(crate) fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Collects GStreamer log lines of some categories (to see what another element did).
pub(crate) struct LogCapture {
    lines: Arc<Mutex<Vec<(String, gst::DebugLevel, String)>>>,
    function: Option<gst::log::DebugLogFunction>,
}

impl LogCapture {
    /// Captures `categories` at `level` and below.
    pub(crate) fn start(categories: &[(&str, gst::DebugLevel)]) -> Self {
        init();
        if std::env::var_os("GST_DEBUG").is_none() {
            // Keep the captured categories off stderr unless the user asked for logs.
            gst::log::remove_default_log_function();
        }
        for (cat, level) in categories {
            gst::log::set_threshold_for_name(cat, *level);
        }
        let wanted: Vec<String> = categories.iter().map(|(c, _)| (*c).to_owned()).collect();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let function =
            gst::log::add_log_function(move |cat, level, _file, _func, _line, obj, msg| {
                if wanted.iter().any(|w| w == cat.name()) {
                    let who = obj.map(|o| o.to_string()).unwrap_or_default();
                    let text = msg.get().map(|m| m.to_string()).unwrap_or_default();
                    sink.lock().unwrap().push((
                        cat.name().to_owned(),
                        level,
                        format!("{who}: {text}"),
                    ));
                }
            });
        Self {
            lines,
            function: Some(function),
        }
    }

    /// Lines of `category` that contain `needle`.
    pub(crate) fn count(&self, category: &str, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _, m)| c == category && m.contains(needle))
            .count()
    }

    /// The first lines of `category` containing `needle`, for messages.
    pub(crate) fn sample(&self, category: &str, needle: &str, n: usize) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _, m)| c == category && m.contains(needle))
            .take(n)
            .map(|(_, _, m)| m.clone())
            .collect()
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        if let Some(f) = self.function.take() {
            gst::log::remove_log_function(f);
        }
    }
}

// gst-check helpers shared by the per-object test files.

/// A harness around one `dmaheapupload` with `props` set, playing, with `caps` on its input.
pub(crate) fn harness(props: &[(&str, &str)], caps: &str) -> gst_check::Harness {
    init();
    let mut h = gst_check::Harness::new("dmaheapupload");
    let element = h.element().unwrap();
    for (name, value) in props {
        element.set_property_from_str(name, value);
    }
    h.play();
    h.set_src_caps_str(caps);
    h
}

pub(crate) fn allocation_query(
    h: &gst_check::Harness,
    caps: &str,
) -> gst::query::Allocation<gst::Query> {
    let caps = gst::Caps::from_str(caps).unwrap();
    let mut q = gst::query::Allocation::new(Some(&caps), true);
    assert!(
        h.srcpad().unwrap().peer_query(&mut q),
        "dmaheapupload did not answer the ALLOCATION query"
    );
    q
}

pub(crate) fn memory_fd(mem: &gst::MemoryRef) -> i32 {
    mem.downcast_memory_ref::<gst_allocators::FdMemory>()
        .expect("heap memory is fd memory")
        .fd()
}

/// Heap memory must say what it is: dma-buf memory exactly when the heap buffer is a dma-buf.
pub(crate) fn assert_honest_heap_memory(mem: &gst::MemoryRef) {
    let info = heap_memory_info(mem).expect("heap memory");
    assert!(mem.is_memory_type::<gst_allocators::FdMemory>());
    assert_eq!(
        mem.is_memory_type::<gst_allocators::DmaBufMemory>(),
        info.is_dmabuf,
        "gst_is_dmabuf_memory() must match the buffer's origin {}",
        info.origin
    );
}

pub(crate) fn pool_config(
    pool: &DmaHeapBufferPool,
    caps: &str,
    min: u32,
    max: u32,
    options: &[&str],
    align: Option<gst_video::VideoAlignment>,
) {
    let caps = gst::Caps::from_str(caps).unwrap();
    let mut config = pool.config();
    config.set_params(Some(&caps), 0, min, max);
    for o in options {
        config.add_option(o);
    }
    if let Some(align) = align {
        config.set_video_alignment(&align);
    }
    // As decoders and GstBaseSrc do: an adjusted configuration is read back, validated
    // against what was asked for, and set again.
    if pool.set_config(config).is_err() {
        let adjusted = pool.config();
        adjusted
            .validate_params(Some(&caps), 0, min, max)
            .expect("the adjusted configuration is still valid");
        pool.set_config(adjusted)
            .expect("pool accepts its adjusted configuration");
    }
}
