//! The plugin against real kernel parts: DMA-BUF heaps, udmabuf, vkms (kmssink), vivid
//! (v4l2src), vicodec (v4l2fwhtenc/v4l2fwhtdec) and sw_sync. On a machine without them every
//! test is reported ignored with its reason; `tests/vm/run --kernel full` (and `--kernel next
//! --userspace forky` for GStreamer 1.28) runs them where they exist.
//!
//! This file holds the allocator, pool and negotiation tests and the helpers the parts share;
//! the parts: `display` (kmssink), `fences`, `devices` (heaps from the devices), `foreign`
//! (other exporters' dma-bufs passed through or copied), and with the
//! `v1_28` feature `gst_1_28` (DMA_DRM caps, GstVideoDmabufPool) and `bench`.

mod common;
// This suite's parts, in tests/real_heap_gst/ (cargo would take a tests/*.rs for a test of
// its own).
#[cfg(feature = "v1_28")]
#[path = "real_heap_gst/bench.rs"]
mod bench;
#[path = "real_heap_gst/devices.rs"]
mod devices;
#[path = "real_heap_gst/display.rs"]
mod display;
#[path = "real_heap_gst/fences.rs"]
mod fences;
#[path = "real_heap_gst/foreign.rs"]
mod foreign;
#[cfg(feature = "v1_28")]
#[path = "real_heap_gst/gst_1_28.rs"]
mod gst_1_28;

use std::collections::BTreeSet;
use std::os::fd::RawFd;
use std::time::Duration;

use common::{init, open_fds, run_pipeline, stat};
use dmaheap_testkit::{Failed, Need, Suite, ensure};
use gst::prelude::*;
use gstdmaheap::{DmaHeapAllocator, DmaHeapBufferPool, heap_memory_info};

const VIVID: Need = Need::V4l2("vivid-000-vid-cap");
const DECODER: Need = Need::V4l2("stateful-decoder");
const ENCODER: Need = Need::V4l2("stateful-encoder");

fn main() {
    let mut suite = Suite::new();
    suite
        .test(
            "real_heap_gst_allocator_memory_is_dmabuf_from_the_system_heap",
            &[Need::SystemHeap],
            allocator_memory_is_dmabuf,
        )
        .test(
            "real_heap_gst_registered_allocator_gives_dmabuf_memory",
            &[Need::SystemHeap],
            registered_allocator_gives_dmabuf,
        )
        .test(
            "real_heap_gst_pool_recycles_the_same_dmabuf_fds",
            &[Need::SystemHeap],
            pool_recycles_dmabuf_fds,
        )
        .test(
            "real_heap_gst_cma_buffers_are_contiguous_dmabufs",
            &[Need::CmaHeap],
            cma_buffers_are_contiguous,
        )
        .test(
            "real_heap_gst_udmabuf_memory_is_dmabuf",
            &[Need::Udmabuf],
            udmabuf_memory_is_dmabuf,
        )
        .test(
            "real_heap_gst_dmabuf_caps_and_zero_copies_into_fakesink",
            &[Need::SystemHeap],
            dmabuf_caps_and_zero_copies,
        )
        .test(
            "real_heap_gst_kmssink_imports_system_heap_buffers",
            &[Need::SystemHeap, Need::Kms],
            display::kmssink_imports_system_heap_buffers,
        )
        .test(
            "real_heap_gst_vivid_capture_into_heap_buffers_to_kmssink",
            &[Need::SystemHeap, Need::Kms, VIVID],
            display::vivid_capture_to_kmssink,
        )
        .test(
            "real_heap_gst_vicodec_decoder_writes_into_cma_for_kmssink",
            &[Need::CmaHeap, Need::Kms, ENCODER, DECODER],
            display::vicodec_decoder_into_cma,
        )
        .test(
            "real_heap_gst_launch_command_line_kmssink",
            &[Need::SystemHeap, Need::Kms],
            display::gst_launch_kmssink,
        )
        .test(
            "real_heap_gst_passthrough_honours_the_heap_list",
            &[Need::SystemHeap, Need::CmaHeap],
            passthrough_honours_the_heap_list,
        )
        .test(
            "real_heap_gst_dmabuf_caps_only_for_frames_a_source_can_hold",
            &[Need::Udmabuf, Need::Root],
            dmabuf_caps_only_for_frames_a_source_can_hold,
        )
        .test(
            "real_heap_gst_state_cycles_leak_no_dmabuf",
            &[Need::SystemHeap],
            state_cycles_leak_nothing,
        );
    fences::add(&mut suite);
    devices::add(&mut suite);
    foreign::add(&mut suite);
    #[cfg(feature = "v1_28")]
    gst_1_28::add(&mut suite);
    #[cfg(feature = "v1_28")]
    bench::add(&mut suite);
    suite.run()
}

/// `/proc/self/fdinfo/<fd>`: the dma-buf's exporter and name.
fn fdinfo(fd: RawFd) -> Result<(String, String), Failed> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    };
    Ok((field("exp_name:"), field("name:")))
}

fn dmabuf_fd(mem: &gst::MemoryRef) -> Result<RawFd, Failed> {
    let dmabuf = mem
        .downcast_memory_ref::<gst_allocators::DmaBufMemory>()
        .ok_or("gst_is_dmabuf_memory() is false")?;
    Ok(dmabuf.fd())
}

fn allocator_memory_is_dmabuf() -> Result<(), Failed> {
    init();
    let alloc = DmaHeapAllocator::with_heaps("system")?;
    let mem = alloc.alloc_heap_memory(1 << 20, &gst::AllocationParams::default(), "rh-gst")?;
    let fd = dmabuf_fd(&mem)?;
    let (exporter, name) = fdinfo(fd)?;
    ensure!(exporter == "system", "exported by {exporter:?}");
    ensure!(name == "rh-gst", "named {name:?}");
    let info = heap_memory_info(&mem).ok_or("not heap memory")?;
    ensure!(info.is_dmabuf && !info.contiguous, "{info:?}");
    // CPU access goes through the dma-buf allocator (DMA_BUF_IOCTL_SYNC on map/unmap).
    let mut mem = mem;
    mem.get_mut().unwrap().map_writable()?.fill(0x5a);
    ensure!(
        mem.map_readable()?.iter().all(|&b| b == 0x5a),
        "writes do not read back"
    );
    println!("1 MiB from the system heap: dma-buf memory, fd {fd}, exp_name {exporter}");
    Ok(())
}

fn registered_allocator_gives_dmabuf() -> Result<(), Failed> {
    init();
    let alloc = gst::Allocator::find(Some(gstdmaheap::ALLOCATOR_NAME))
        .ok_or("gst_allocator_find(\"dmaheap\") found nothing")?;
    let mem = alloc.alloc(4 << 20, None)?;
    let fd = dmabuf_fd(&mem)?;
    let (exporter, _) = fdinfo(fd)?;
    ensure!(
        exporter == "system",
        "the default order starts with the system heap, got {exporter}"
    );
    println!("gst_allocator_find(\"dmaheap\") -> dma-buf memory exported by {exporter}");
    Ok(())
}

fn active_pool(heaps: &str, caps: &str, min: u32, max: u32) -> Result<DmaHeapBufferPool, Failed> {
    let pool = DmaHeapBufferPool::new();
    let alloc = DmaHeapAllocator::with_heaps(heaps)?;
    let mut config = pool.config();
    config.set_params(Some(&caps.parse::<gst::Caps>()?), 0, min, max);
    config.set_allocator(Some(&alloc), None);
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
    pool.set_config(config)?;
    pool.set_active(true)?;
    Ok(pool)
}

fn pool_recycles_dmabuf_fds() -> Result<(), Failed> {
    init();
    let pool = active_pool(
        "system",
        "video/x-raw,format=NV12,width=1920,height=1080",
        4,
        4,
    )?;
    let mut seen: Option<BTreeSet<RawFd>> = None;
    for round in 0..20 {
        let bufs: Vec<gst::Buffer> = (0..4)
            .map(|_| pool.acquire_buffer(None))
            .collect::<Result<_, _>>()?;
        let mut fds = BTreeSet::new();
        for b in &bufs {
            let fd = dmabuf_fd(b.peek_memory(0))?;
            let (exporter, name) = fdinfo(fd)?;
            ensure!(exporter == "system", "exporter {exporter}");
            ensure!(name.starts_with("gst:"), "name {name:?}");
            fds.insert(fd);
        }
        match &seen {
            None => seen = Some(fds),
            Some(first) => ensure!(*first == fds, "round {round}: fds {fds:?} != {first:?}"),
        }
    }
    let stats = pool.stats();
    ensure!(stat(&stats, "pool-misses") == 0, "{stats}");
    ensure!(stat(&stats, "prewarmed") == 4, "{stats}");
    println!("80 acquires from 4 system-heap dma-bufs, same fds every round: {stats}");
    pool.set_active(false)?;
    Ok(())
}

fn cma_buffers_are_contiguous() -> Result<(), Failed> {
    init();
    let heap = dmaheap_testkit::cma_heap().expect("need checked");
    let pool = active_pool(&heap, "video/x-raw,format=BGRx,width=1280,height=720", 2, 0)?;
    let buf = pool.acquire_buffer(None)?;
    let mem = buf.peek_memory(0);
    let (exporter, _) = fdinfo(dmabuf_fd(mem)?)?;
    ensure!(exporter == heap, "exported by {exporter}, not {heap}");
    let info = heap_memory_info(mem).ok_or("not heap memory")?;
    ensure!(info.contiguous, "{info:?}");
    // `cma` finds the same heap whatever this kernel calls it.
    let alloc = DmaHeapAllocator::with_heaps("cma")?;
    let mem = alloc.alloc_heap_memory(65536, &gst::AllocationParams::default(), "")?;
    let (exporter, _) = fdinfo(dmabuf_fd(&mem)?)?;
    ensure!(exporter == heap, "heap=cma exported by {exporter}");
    println!("heap={heap} and heap=cma: contiguous dma-buf memory exported by {heap}");
    drop(buf);
    pool.set_active(false)?;
    Ok(())
}

fn udmabuf_memory_is_dmabuf() -> Result<(), Failed> {
    init();
    let pool = active_pool(
        "udmabuf",
        "video/x-raw,format=I420,width=640,height=480",
        1,
        0,
    )?;
    let buf = pool.acquire_buffer(None)?;
    let (exporter, _) = fdinfo(dmabuf_fd(buf.peek_memory(0))?)?;
    ensure!(exporter == "udmabuf", "exported by {exporter}");
    println!("heap=udmabuf: dma-buf memory exported by udmabuf");
    drop(buf);
    pool.set_active(false)?;
    Ok(())
}

fn dmabuf_caps_and_zero_copies() -> Result<(), Failed> {
    let run = run_pipeline(
        "videotestsrc num-buffers=60 ! video/x-raw,format=NV12,width=1280,height=720 \
         ! dmaheapupload name=up heap=system ! fakesink",
        Duration::from_secs(120),
    )?;
    let caps = run.upload_src_caps.ok_or("no caps")?;
    let features = caps.features(0).ok_or("no features")?;
    ensure!(
        features.contains(gst_allocators::CAPS_FEATURE_MEMORY_DMABUF),
        "downstream was not offered memory:DMABuf: {caps}"
    );
    let stats = run.stats.ok_or("no stats message")?;
    ensure!(stat(&stats, "passthrough") == 60, "{stats}");
    ensure!(stat(&stats, "copies") == 0, "{stats}");
    let origins = stats.get::<String>("heap-origins")?;
    ensure!(origins.contains("heap system"), "{stats}");
    println!("{caps}\n{stats}");
    Ok(())
}

/// Heap memory from another dmaheapupload (system heap) reaching one told `heap=cma` is
/// copied into CMA memory, not passed through: a display without an IOMMU needs that.
fn passthrough_honours_the_heap_list() -> Result<(), Failed> {
    let cma = dmaheap_testkit::cma_heap().ok_or("no CMA heap")?;
    let run = run_pipeline(
        "videotestsrc num-buffers=30 ! video/x-raw,format=NV12,width=640,height=480 \
         ! dmaheapupload name=sys heap=system ! dmaheapupload name=up heap=cma ! fakesink",
        Duration::from_secs(120),
    )?;
    let sys = run.stats_by_element.get("sys").ok_or("no stats from sys")?;
    let up = run.stats_by_element.get("up").ok_or("no stats from up")?;
    println!("sys: {sys}\nup: {up}");
    ensure!(
        stat(sys, "passthrough") == 30,
        "videotestsrc wrote into sys's pool: {sys}"
    );
    ensure!(
        stat(up, "passthrough") == 0,
        "system-heap memory passed heap=cma: {up}"
    );
    ensure!(stat(up, "copies") == 30, "{up}");
    let origins = up.get::<String>("heap-origins")?;
    ensure!(origins.contains(&format!("heap {cma}")), "{up}");
    Ok(())
}

/// udmabuf's `size_limit_mb`, lowered for the time of a test where the kernel sets no limit
/// (Linux 6.17+: INT_MAX) and restored after.
struct UdmabufLimit {
    restore: Option<String>,
}

impl UdmabufLimit {
    const PARAM: &str = "/sys/module/udmabuf/parameters/size_limit_mb";

    /// Makes the limit at most `mb` MiB (as root); the limit in force, in bytes.
    fn at_most(mb: u64) -> Result<(Self, u64), Failed> {
        let old =
            std::fs::read_to_string(Self::PARAM).map_err(|e| format!("{}: {e}", Self::PARAM))?;
        let current: u64 = old.trim().parse().map_err(|e| format!("{old:?}: {e}"))?;
        if current <= mb {
            return Ok((Self { restore: None }, current << 20));
        }
        std::fs::write(Self::PARAM, mb.to_string())
            .map_err(|e| format!("lowering {} to {mb}: {e}", Self::PARAM))?;
        println!("udmabuf size_limit_mb {current} -> {mb} for this test");
        Ok((Self { restore: Some(old) }, mb << 20))
    }
}

impl Drop for UdmabufLimit {
    fn drop(&mut self) {
        if let Some(old) = self.restore.take()
            && let Err(e) = std::fs::write(Self::PARAM, old.trim())
        {
            eprintln!("cannot restore {}: {e}", Self::PARAM);
        }
    }
}

/// The caps `gst-launch-1.0 -v` says the element named `up` put on its src pad, and the
/// stats line it posted.
fn launched_caps_and_stats(pipeline: &str) -> Result<(String, String), Failed> {
    let mut args = vec!["-v", "-m"];
    args.extend(pipeline.split_whitespace());
    let out = common::gst_tool("gst-launch-1.0", &args, &[])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "gst-launch-1.0 {pipeline} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let caps = stdout
        .lines()
        .find_map(|l| {
            l.split_once(":up.GstPad:src: caps = ")
                .map(|(_, c)| c.to_owned())
        })
        .ok_or_else(|| format!("no caps for up's src pad in:\n{stdout}"))?;
    let stats = stdout
        .lines()
        .find(|l| l.contains("dmaheapupload-stats"))
        .ok_or_else(|| format!("no stats message in:\n{stdout}"))?
        .to_owned();
    Ok((caps, stats))
}

/// 8K RGBA frames (132 MB) are over udmabuf's limit: with udmabuf as the only dma-buf
/// source, memory:DMABuf is not offered for them (negotiation would succeed and the first
/// allocation fail), so plain caps are negotiated and memfd serves.
///
/// The limit is 64 MiB by default before Linux 6.17 and none since; where there is none the
/// test sets 64 MiB (as root) and runs the pipeline in a new process, which reads it afresh.
fn dmabuf_caps_only_for_frames_a_source_can_hold() -> Result<(), Failed> {
    let (_limit, bytes) = UdmabufLimit::at_most(64)?;
    let frame = 7680 * 4320 * 4;
    ensure!(
        frame > bytes,
        "an 8K RGBA frame fits the {bytes} byte limit"
    );
    let (caps, stats) = launched_caps_and_stats(
        "videotestsrc num-buffers=3 ! video/x-raw,format=RGBA,width=7680,height=4320 \
         ! dmaheapupload name=up heap=udmabuf,memfd ! fakesink",
    )?;
    println!("{caps}\n{stats}");
    ensure!(
        !caps.contains("memory:DMABuf"),
        "memory:DMABuf negotiated for {frame} byte frames over udmabuf's {bytes} byte limit: \
         {caps}"
    );
    ensure!(
        stats.contains("heap-origins=(string)\"memfd:"),
        "the frames were not memfd memory: {stats}"
    );
    // The same list at 1080p: udmabuf serves and memory:DMABuf is offered.
    let (caps, stats) = launched_caps_and_stats(
        "videotestsrc num-buffers=3 ! video/x-raw,format=RGBA,width=1920,height=1080 \
         ! dmaheapupload name=up heap=udmabuf,memfd ! fakesink",
    )?;
    println!("{caps}\n{stats}");
    ensure!(
        caps.contains("memory:DMABuf"),
        "1080p frames fit udmabuf, but {caps}"
    );
    ensure!(
        stats.contains("heap-origins=(string)\"udmabuf:"),
        "the frames were not udmabuf memory: {stats}"
    );
    Ok(())
}

fn state_cycles_leak_nothing() -> Result<(), Failed> {
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc ! video/x-raw,format=NV12,width=320,height=240 \
         ! dmaheapupload heap=system ! fakesink name=sink sync=false",
    )?
    .downcast::<gst::Pipeline>()
    .map_err(|_| "not a pipeline")?;
    let cycle = |i: u32| -> Result<(), Failed> {
        pipeline.set_state(gst::State::Playing)?;
        let (r, _, _) = pipeline.state(gst::ClockTime::from_seconds(20));
        r?;
        if i % 2 == 0 {
            pipeline.seek_simple(gst::SeekFlags::FLUSH, gst::ClockTime::ZERO)?;
        }
        pipeline.set_state(gst::State::Null)?;
        Ok(())
    };
    for i in 0..5 {
        cycle(i)?;
    }
    let (fds0, live0) = (open_fds(), gstdmaheap::live_heap_buffers());
    for i in 0..300 {
        cycle(i)?;
    }
    let (fds1, live1) = (open_fds(), gstdmaheap::live_heap_buffers());
    ensure!(fds1 == fds0, "fds {fds0} -> {fds1}");
    ensure!(
        live0 == 0 && live1 == 0,
        "live heap buffers {live0} -> {live1}"
    );
    println!("300 NULL<->PLAYING cycles on system-heap dma-bufs: fds {fds0} -> {fds1}, 0 live");
    Ok(())
}
