//! Upstream's way and dmaheap's side by side (GStreamer 1.28): frames written into
//! `GstVideoDmabufPool` + `GstUdmabufAllocator` buffers versus `dmaheapupload`'s pool, in the
//! same pipelines and the same run, and the pools alone.
//!
//! A benchmark, not a test: ignored unless asked for (`real_heap_gst --ignored bench`), it
//! prints tables (medians of interleaved repetitions, ratios against a baseline measured in
//! the same run) for docs/performance.md. Debian's GStreamer 1.28 does not ship upstream's
//! `udmabufupload`, so `benchdmabufupload` below stands in for it, doing what that element
//! and waylandsink do: offer a GstVideoDmabufPool upstream, pass its dma-bufs through, copy
//! anything else into a buffer of such a pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dmaheap_testkit::{Failed, Need, Suite, ensure};
use gst::prelude::*;
use gst_video::prelude::*;
use gstdmaheap::{DmaHeapAllocator, DmaHeapBufferPool};

use super::common::init;

pub(super) fn add(suite: &mut Suite) {
    suite.bench(
        "real_heap_gst_bench_upstream_dmabuf_pool_versus_dmaheapupload",
        &[Need::SystemHeap, Need::Udmabuf],
        bench,
    );
}

const WIDTH: u32 = 1920;
const HEIGHT: u32 = 1080;
const FRAMES: u32 = 200;
const ROUNDS: usize = 7;

/// Frames copied by every `benchdmabufupload` since the last reset.
static UPSTREAM_COPIES: AtomicU64 = AtomicU64::new(0);

mod upstream {
    use super::*;

    gst::glib::wrapper! {
        pub(crate) struct UpstreamUpload(ObjectSubclass<imp::UpstreamUpload>)
            @extends gst_base::BaseTransform, gst::Element, gst::Object;
    }

    pub(super) fn register() {
        gst::Element::register(
            None,
            "benchdmabufupload",
            gst::Rank::NONE,
            UpstreamUpload::static_type(),
        )
        .expect("registers");
    }

    mod imp {
        use std::sync::{LazyLock, Mutex};

        use gst::glib;
        use gst::subclass::prelude::*;
        use gst_base::subclass::prelude::*;

        use super::super::UPSTREAM_COPIES;
        use super::*;

        #[derive(Default)]
        pub(crate) struct UpstreamUpload {
            /// Empty: GstUdmabufAllocator; else the dmaheap allocator for this heap list.
            heap: Mutex<String>,
            info: Mutex<Option<gst_video::VideoInfo>>,
            copies_into: Mutex<Option<gst::BufferPool>>,
        }

        impl UpstreamUpload {
            /// A GstVideoDmabufPool for `caps`, configured as upstream's elements do.
            fn pool(&self, caps: &gst::Caps) -> Result<(gst::BufferPool, u32), gst::LoggableError> {
                let cat = *gst::CAT_RUST;
                let info = gst_video::VideoInfo::from_caps(caps)
                    .map_err(|_| gst::loggable_error!(cat, "not raw video"))?;
                let pool = gst_video::VideoDmabufPool::new()
                    .ok_or_else(|| gst::loggable_error!(cat, "no GstVideoDmabufPool"))?;
                let heap = self.heap.lock().unwrap().clone();
                let allocator: gst::Allocator = if heap.is_empty() {
                    gst_allocators::UdmabufAllocator::get()
                        .ok_or_else(|| gst::loggable_error!(cat, "no udmabuf allocator"))?
                } else {
                    DmaHeapAllocator::with_heaps(&heap)
                        .map_err(|e| gst::loggable_error!(cat, "{e}"))?
                        .upcast()
                };
                let size = info.size() as u32;
                let mut config = pool.config();
                config.set_params(Some(caps), size, 2, 0);
                config.set_allocator(Some(&allocator), None);
                config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
                config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT);
                if pool.set_config(config).is_err() {
                    let adjusted = pool.config();
                    pool.set_config(adjusted)
                        .map_err(|_| gst::loggable_error!(cat, "config refused"))?;
                }
                Ok((pool.upcast(), size))
            }
        }

        impl UpstreamUpload {
            /// The pool to copy into, made and activated at the first copy.
            fn copy_pool(
                &self,
                info: &gst_video::VideoInfo,
            ) -> Result<gst::BufferPool, gst::FlowError> {
                let mut slot = self.copies_into.lock().unwrap();
                if let Some(pool) = slot.as_ref() {
                    return Ok(pool.clone());
                }
                let caps = info.to_caps().map_err(|_| gst::FlowError::NotNegotiated)?;
                let (pool, _) = self.pool(&caps).map_err(|_| gst::FlowError::Error)?;
                pool.set_active(true).map_err(|_| gst::FlowError::Error)?;
                *slot = Some(pool.clone());
                Ok(pool)
            }
        }

        #[glib::object_subclass]
        impl ObjectSubclass for UpstreamUpload {
            const NAME: &'static str = "BenchDmabufUpload";
            type Type = super::UpstreamUpload;
            type ParentType = gst_base::BaseTransform;
        }

        impl ObjectImpl for UpstreamUpload {
            fn properties() -> &'static [glib::ParamSpec] {
                static PROPS: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
                    vec![
                        glib::ParamSpecString::builder("heap")
                            .blurb("empty: GstUdmabufAllocator; else dmaheap's allocator")
                            .build(),
                    ]
                });
                PROPS.as_ref()
            }

            fn set_property(&self, _id: usize, value: &glib::Value, _pspec: &glib::ParamSpec) {
                *self.heap.lock().unwrap() = value
                    .get::<Option<String>>()
                    .ok()
                    .flatten()
                    .unwrap_or_default();
            }

            fn property(&self, _id: usize, _pspec: &glib::ParamSpec) -> glib::Value {
                self.heap.lock().unwrap().to_value()
            }
        }

        impl GstObjectImpl for UpstreamUpload {}

        impl ElementImpl for UpstreamUpload {
            fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
                static META: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
                    gst::subclass::ElementMetadata::new(
                        "GstVideoDmabufPool upload (bench)",
                        "Filter/Video",
                        "Offers GstVideoDmabufPool upstream, copies what is not a dma-buf",
                        "dmaheap developers",
                    )
                });
                Some(&*META)
            }

            fn pad_templates() -> &'static [gst::PadTemplate] {
                static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
                    let caps = gst_video::VideoCapsBuilder::new().build();
                    [gst::PadDirection::Sink, gst::PadDirection::Src]
                        .into_iter()
                        .map(|dir| {
                            let name = if dir == gst::PadDirection::Sink {
                                "sink"
                            } else {
                                "src"
                            };
                            gst::PadTemplate::new(name, dir, gst::PadPresence::Always, &caps)
                                .unwrap()
                        })
                        .collect()
                });
                TEMPLATES.as_ref()
            }
        }

        impl BaseTransformImpl for UpstreamUpload {
            const MODE: gst_base::subclass::BaseTransformMode =
                gst_base::subclass::BaseTransformMode::NeverInPlace;
            const PASSTHROUGH_ON_SAME_CAPS: bool = false;
            const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

            fn set_caps(
                &self,
                incaps: &gst::Caps,
                _outcaps: &gst::Caps,
            ) -> Result<(), gst::LoggableError> {
                *self.info.lock().unwrap() = gst_video::VideoInfo::from_caps(incaps).ok();
                Ok(())
            }

            fn stop(&self) -> Result<(), gst::ErrorMessage> {
                if let Some(pool) = self.copies_into.lock().unwrap().take() {
                    let _ = pool.set_active(false);
                }
                Ok(())
            }

            fn propose_allocation(
                &self,
                _decide_query: Option<&gst::query::Allocation>,
                query: &mut gst::query::Allocation,
            ) -> Result<(), gst::LoggableError> {
                let caps = query
                    .get_owned()
                    .0
                    .ok_or_else(|| gst::loggable_error!(gst::CAT_RUST, "no caps"))?;
                let (pool, size) = self.pool(&caps)?;
                query.add_allocation_pool(Some(&pool), size, 2, 0);
                query.add_allocation_meta::<gst_video::VideoMeta>(None);
                Ok(())
            }

            fn decide_allocation(
                &self,
                query: &mut gst::query::Allocation,
            ) -> Result<(), gst::LoggableError> {
                // Buffers to copy into come from a pool of this element's own, made at the
                // first copy (as dmaheapupload does).
                while query.allocation_pools().len() > 0 {
                    query.remove_nth_allocation_pool(0);
                }
                if let Some(old) = self.copies_into.lock().unwrap().take() {
                    let _ = old.set_active(false);
                }
                Ok(())
            }

            fn generate_output(
                &self,
            ) -> Result<gst_base::subclass::base_transform::GenerateOutputSuccess, gst::FlowError>
            {
                use gst_base::subclass::base_transform::GenerateOutputSuccess;
                let Some(inbuf) = self.take_queued_buffer() else {
                    return Ok(GenerateOutputSuccess::NoOutput);
                };
                if inbuf.n_memory() > 0
                    && inbuf
                        .iter_memories()
                        .all(|m| m.is_memory_type::<gst_allocators::DmaBufMemory>())
                {
                    return Ok(GenerateOutputSuccess::Buffer(inbuf));
                }
                let info = self
                    .info
                    .lock()
                    .unwrap()
                    .clone()
                    .ok_or(gst::FlowError::NotNegotiated)?;
                let pool = self.copy_pool(&info)?;
                let out = pool.acquire_buffer(None)?;
                let src = gst_video::VideoFrame::from_buffer_readable(inbuf.clone(), &info)
                    .map_err(|_| gst::FlowError::Error)?;
                let mut dst = gst_video::VideoFrame::from_buffer_writable(out, &info)
                    .map_err(|_| gst::FlowError::Error)?;
                src.copy(&mut dst).map_err(|_| gst::FlowError::Error)?;
                let mut out = dst.into_buffer();
                let _ = self.parent_copy_metadata(inbuf.as_ref(), out.make_mut());
                UPSTREAM_COPIES.fetch_add(1, Ordering::Relaxed);
                Ok(GenerateOutputSuccess::Buffer(out))
            }
        }
    }
}

/// CPU time this process has used.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Dma-bufs this process holds now: (count, bytes), from `/proc/self/fdinfo`.
fn dmabufs_held() -> (usize, u64) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return (0, 0);
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut bytes = 0;
    for entry in dir.filter_map(Result::ok) {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
        };
        if field("exp_name:").is_none() {
            continue;
        }
        // Two fds of one dma-buf (a dup) count once: the inode says which buffer it is.
        let ino = field("ino:").unwrap_or_else(|| entry.file_name().to_string_lossy().into());
        if seen.insert(ino) {
            bytes += field("size:")
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    (seen.len(), bytes)
}

/// One measured run.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    fps: f64,
    cpu_ms_per_frame: f64,
    copies: u64,
    dmabufs: usize,
    held: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `description` to EOS; measured from PLAYING to EOS, memory counted at EOS.
fn run(description: &str) -> Result<Sample, Failed> {
    let pipeline = gst::parse::launch(description)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline")?;
    UPSTREAM_COPIES.store(0, Ordering::Relaxed);
    let bus = pipeline.bus().ok_or("no bus")?;
    let (t0, c0) = (Instant::now(), cpu_time());
    pipeline.set_state(gst::State::Playing)?;
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(600),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .ok_or("no EOS in 600 s")?;
    let (wall, cpu) = (t0.elapsed(), cpu_time() - c0);
    if let gst::MessageView::Error(e) = msg.view() {
        let _ = pipeline.set_state(gst::State::Null);
        return Err(format!("{description}: {} ({:?})", e.error(), e.debug()).into());
    }
    let (dmabufs, held) = dmabufs_held();
    let copies = match pipeline.by_name("up") {
        Some(up) if up.has_property("stats") => {
            let stats = up.property::<gst::Structure>("stats");
            stats.get::<u64>("copies")?
        }
        _ => UPSTREAM_COPIES.load(Ordering::Relaxed),
    };
    pipeline.set_state(gst::State::Null)?;
    Ok(Sample {
        fps: f64::from(FRAMES) / wall.as_secs_f64(),
        cpu_ms_per_frame: cpu.as_secs_f64() * 1e3 / f64::from(FRAMES),
        copies,
        dmabufs,
        held,
    })
}

/// Acquires, writes every byte of and releases `FRAMES` buffers from `pool`.
fn cycle_pool(pool: &gst::BufferPool, info: &gst_video::VideoInfo) -> Result<Sample, Failed> {
    pool.set_active(true)?;
    let (t0, c0) = (Instant::now(), cpu_time());
    for i in 0..FRAMES {
        let buf = pool.acquire_buffer(None)?;
        let mut frame = gst_video::VideoFrame::from_buffer_writable(buf, info)
            .map_err(|_| "cannot map a pool buffer")?;
        for plane in 0..frame.n_planes() {
            frame.plane_data_mut(plane)?.fill(i as u8);
        }
    }
    let (wall, cpu) = (t0.elapsed(), cpu_time() - c0);
    let (dmabufs, held) = dmabufs_held();
    pool.set_active(false)?;
    Ok(Sample {
        fps: f64::from(FRAMES) / wall.as_secs_f64(),
        cpu_ms_per_frame: cpu.as_secs_f64() * 1e3 / f64::from(FRAMES),
        copies: 0,
        dmabufs,
        held,
    })
}

/// A configured, inactive pool of one of the kinds compared.
fn make_pool(kind: &str, caps: &gst::Caps) -> Result<gst::BufferPool, Failed> {
    let (pool, allocator): (gst::BufferPool, Option<gst::Allocator>) = match kind {
        "GstVideoBufferPool, system memory" => (gst_video::VideoBufferPool::new().upcast(), None),
        "GstVideoDmabufPool + GstUdmabufAllocator" => (
            gst_video::VideoDmabufPool::new()
                .ok_or("no GstVideoDmabufPool")?
                .upcast(),
            Some(gst_allocators::UdmabufAllocator::get().ok_or("no udmabuf allocator")?),
        ),
        "GstVideoDmabufPool + dmaheap allocator (system)" => (
            gst_video::VideoDmabufPool::new()
                .ok_or("no GstVideoDmabufPool")?
                .upcast(),
            Some(DmaHeapAllocator::with_heaps("system")?.upcast()),
        ),
        "GstVideoDmabufPool + dmaheap allocator (udmabuf)" => (
            gst_video::VideoDmabufPool::new()
                .ok_or("no GstVideoDmabufPool")?
                .upcast(),
            Some(DmaHeapAllocator::with_heaps("udmabuf")?.upcast()),
        ),
        "GstDmaHeapBufferPool heap=system" => (
            DmaHeapBufferPool::new().upcast(),
            Some(DmaHeapAllocator::with_heaps("system")?.upcast()),
        ),
        "GstDmaHeapBufferPool heap=udmabuf" => (
            DmaHeapBufferPool::new().upcast(),
            Some(DmaHeapAllocator::with_heaps("udmabuf")?.upcast()),
        ),
        other => return Err(format!("no pool kind {other}").into()),
    };
    let mut config = pool.config();
    config.set_params(Some(caps), 0, 2, 0);
    if let Some(allocator) = &allocator {
        config.set_allocator(Some(allocator), None);
    }
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT);
    if pool.set_config(config).is_err() {
        let adjusted = pool.config();
        pool.set_config(adjusted)?;
    }
    Ok(pool)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1 << 20))
}

/// Prints one table: medians over the rounds, fps as a ratio to the first row's.
fn table(title: &str, rows: &[(&str, Vec<Sample>)]) {
    println!("\n{title}\n");
    println!(
        "| | frames/s (min–max) | × first row | CPU ms/frame | copies/run | dma-bufs held | \
         MiB held |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let base = median(rows[0].1.iter().map(|s| s.fps).collect());
    for (name, samples) in rows {
        let all: Vec<f64> = samples.iter().map(|s| s.fps).collect();
        let (lo, hi) = all
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &f| (lo.min(f), hi.max(f)));
        let fps = median(all);
        let cpu = median(samples.iter().map(|s| s.cpu_ms_per_frame).collect());
        let last = samples.last().copied().unwrap_or_default();
        println!(
            "| {name} | {fps:.0} ({lo:.0}–{hi:.0}) | {:.2} | {cpu:.2} | {} | {} | {} |",
            fps / base,
            last.copies,
            last.dmabufs,
            mib(last.held)
        );
    }
}

fn bench() -> Result<(), Failed> {
    init();
    upstream::register();
    let src = format!(
        "videotestsrc num-buffers={FRAMES} pattern=solid-color \
         ! video/x-raw,format=NV12,width={WIDTH},height={HEIGHT},framerate=30/1"
    );
    let sink = "fakesink sync=false";
    let copy = "identity drop-allocation=true";
    let pipelines: Vec<(&str, String)> = vec![
        (
            "videotestsrc ! fakesink (baseline)",
            format!("{src} ! {sink}"),
        ),
        (
            "GstVideoDmabufPool + GstUdmabufAllocator, offered upstream",
            format!("{src} ! benchdmabufupload ! {sink}"),
        ),
        (
            "dmaheapupload heap=udmabuf, pool offered upstream",
            format!("{src} ! dmaheapupload name=up heap=udmabuf ! {sink}"),
        ),
        (
            "dmaheapupload heap=system, pool offered upstream",
            format!("{src} ! dmaheapupload name=up heap=system ! {sink}"),
        ),
        (
            "GstVideoDmabufPool + dmaheap allocator (system), offered upstream",
            format!("{src} ! benchdmabufupload heap=system ! {sink}"),
        ),
        (
            "GstVideoDmabufPool + dmaheap allocator (udmabuf), offered upstream",
            format!("{src} ! benchdmabufupload heap=udmabuf ! {sink}"),
        ),
        (
            "copy into GstVideoDmabufPool + GstUdmabufAllocator",
            format!("{src} ! {copy} ! benchdmabufupload ! {sink}"),
        ),
        (
            "copy into dmaheapupload's pool, heap=udmabuf",
            format!("{src} ! {copy} ! dmaheapupload name=up heap=udmabuf ! {sink}"),
        ),
        (
            "copy into dmaheapupload's pool, heap=system",
            format!("{src} ! {copy} ! dmaheapupload name=up heap=system ! {sink}"),
        ),
    ];
    let caps: gst::Caps =
        format!("video/x-raw,format=NV12,width={WIDTH},height={HEIGHT}").parse()?;
    let info = gst_video::VideoInfo::from_caps(&caps)?;
    let pools = [
        "GstVideoBufferPool, system memory",
        "GstVideoDmabufPool + GstUdmabufAllocator",
        "GstVideoDmabufPool + dmaheap allocator (system)",
        "GstVideoDmabufPool + dmaheap allocator (udmabuf)",
        "GstDmaHeapBufferPool heap=system",
        "GstDmaHeapBufferPool heap=udmabuf",
    ];
    // Warm-up: GStreamer's registry, the heaps' first allocations.
    run(&pipelines[2].1)?;
    let mut piped: Vec<Vec<Sample>> = vec![Vec::new(); pipelines.len()];
    let mut pooled: Vec<Vec<Sample>> = vec![Vec::new(); pools.len()];
    // Interleaved: every round runs every case once, so drift hits all alike.
    for _ in 0..ROUNDS {
        for (i, (_, description)) in pipelines.iter().enumerate() {
            piped[i].push(run(description)?);
        }
        for (i, kind) in pools.iter().enumerate() {
            let pool = make_pool(kind, &caps)?;
            pooled[i].push(cycle_pool(&pool, &info)?);
        }
    }
    // What the runs must show for the table to mean what it says.
    let copies = |i: usize| piped[i].last().map_or(0, |s| s.copies);
    ensure!(
        (1..6).all(|i| copies(i) == 0) && (6..9).all(|i| copies(i) == u64::from(FRAMES)),
        "copies per run: {:?}",
        (0..9).map(copies).collect::<Vec<_>>()
    );
    let fd_free = |i: usize| piped[i].last().map_or(0, |s| s.dmabufs);
    ensure!(fd_free(0) == 0, "the baseline held dma-bufs");
    println!(
        "\n{FRAMES} frames of {WIDTH}x{HEIGHT} NV12 per run, videotestsrc pattern=solid-color, \
         fakesink sync=false; medians of {ROUNDS} interleaved rounds; dma-bufs and MiB held: \
         /proc/self/fdinfo at EOS (pipelines) or after the last frame (pools)."
    );
    let rows: Vec<(&str, Vec<Sample>)> = pipelines.iter().map(|(n, _)| *n).zip(piped).collect();
    table("Pipelines", &rows);
    let rows: Vec<(&str, Vec<Sample>)> = pools.iter().copied().zip(pooled).collect();
    table(
        "Pools alone: acquire, write every byte (mapped, DMA_BUF_IOCTL_SYNC brackets for \
         dma-bufs), release",
        &rows,
    );
    Ok(())
}
