//! Pipelines: frames per second from the first frame at the sink to EOS (steady state),
//! CPU time per frame from PLAYING to EOS (the whole process: the pipeline is all it runs,
//! start-up included), and the time from PLAYING to the first frame at the sink. The cases run in turns,
//! forwards then backwards, repetition by repetition.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gst::prelude::*;

use crate::Ctx;
use dmaheap_benchkit::measure::Goal;
use dmaheap_benchkit::schema::{PeersReport, Ratio, Target, Throughput};

/// Process CPU time (user + system) in nanoseconds, and page faults (minor + major).
pub(crate) fn cpu_ns() -> (f64, f64) {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid rusage for the kernel to fill.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return (0.0, 0.0);
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 * 1e9 + tv.tv_usec as f64 * 1e3;
    (
        t(u.ru_utime) + t(u.ru_stime),
        (u.ru_minflt + u.ru_majflt) as f64,
    )
}

/// How a sink is told to offer a pool upstream (an ALLOCATION query answered by a probe).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Offer {
    None,
    /// GStreamer 1.28's GstVideoDmabufPool with GstUdmabufAllocator.
    UpstreamDmabufUdmabuf,
    /// A stock GstVideoBufferPool of system memory starting on page boundaries, as heap
    /// buffers do: what the placement of the frames alone costs the producer.
    PageAlignedSystem,
    /// The same stock pool on the dmaheap allocator: what writing into heap memory costs the
    /// producer (for a dma-buf, DMA_BUF_IOCTL_SYNC around every map), whoever offers it.
    StockPoolHeapMemory,
}

struct Spec {
    name: &'static str,
    launch: String,
    /// The frames its source makes.
    frames: u64,
    offer: Offer,
    /// The case its frames/s and CPU are compared with (the first case if none).
    reference: Option<&'static str>,
    /// Why it cannot run here, if it cannot.
    skip: Option<String>,
}

/// One run: (frames/s, CPU ns per frame, page faults per frame, first frame ns, what was
/// checked).
fn run_once(spec: &Spec, frames: u64) -> Result<(f64, f64, f64, f64, String), String> {
    let pipeline = gst::parse::launch(&spec.launch)
        .map_err(|e| format!("{}: {e}", spec.launch))?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline".to_owned())?;
    let sink = pipeline.by_name("sink").ok_or("no element named sink")?;
    let pad = sink.static_pad("sink").ok_or("the sink has no sink pad")?;
    let first: Arc<Mutex<Option<(Instant, String)>>> = Arc::new(Mutex::new(None));
    {
        let first = Arc::clone(&first);
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let mut f = first.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                let kind = info
                    .buffer()
                    .filter(|b| b.n_memory() > 0)
                    .map(|b| b.peek_memory(0))
                    .map_or("no memory", |m| {
                        if m.downcast_memory_ref::<gst_allocators::DmaBufMemory>()
                            .is_some()
                        {
                            "dma-buf memory"
                        } else if m
                            .downcast_memory_ref::<gst_allocators::FdMemory>()
                            .is_some()
                        {
                            "fd memory"
                        } else {
                            "system memory"
                        }
                    });
                *f = Some((Instant::now(), kind.to_owned()));
            }
            gst::PadProbeReturn::Ok
        });
    }
    let offered = Arc::new(Mutex::new(0u32));
    if spec.offer != Offer::None {
        let offered = Arc::clone(&offered);
        let spec_offer = spec.offer;
        pad.add_probe(gst::PadProbeType::QUERY_DOWNSTREAM, move |_, info| {
            let Some(gst::PadProbeData::Query(q)) = &mut info.data else {
                return gst::PadProbeReturn::Ok;
            };
            let gst::QueryViewMut::Allocation(a) = q.view_mut() else {
                return gst::PadProbeReturn::Ok;
            };
            let offer = match spec_offer {
                Offer::PageAlignedSystem => page_aligned_pool(a, None),
                Offer::StockPoolHeapMemory => gst::Allocator::find(Some("dmaheap"))
                    .ok_or_else(|| "no dmaheap allocator".to_owned())
                    .and_then(|heap| page_aligned_pool(a, Some(&heap))),
                _ => upstream_pool(a),
            };
            match offer {
                Ok(()) => {
                    *offered.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    gst::PadProbeReturn::Handled
                }
                Err(_) => gst::PadProbeReturn::Ok,
            }
        });
    }
    let bus = pipeline.bus().ok_or("no bus")?;
    let cpu0 = cpu_ns();
    let t0 = Instant::now();
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|e| format!("PLAYING: {e}"))?;
    let timeout = if std::env::var_os("DMAHEAP_VM").is_some() {
        gst::ClockTime::from_seconds(600)
    } else {
        gst::ClockTime::from_seconds(120)
    };
    let msg = bus.timed_pop_filtered(timeout, &[gst::MessageType::Eos, gst::MessageType::Error]);
    let t1 = Instant::now();
    let cpu1 = cpu_ns();
    let outcome = match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => Ok(()),
        Some(gst::MessageView::Error(e)) => Err(format!(
            "{}: {}",
            e.src()
                .map(|s| s.path_string().to_string())
                .unwrap_or_default(),
            e.error()
        )),
        _ => Err("no EOS in time".to_owned()),
    };
    let mut checked = Vec::new();
    if let Some(up) = pipeline.by_name("up") {
        let s = up.property::<gst::Structure>("stats");
        let get = |f: &str| s.get::<u64>(f).unwrap_or(0);
        checked.push(format!(
            "dmaheapupload passthrough={} foreign-passthrough={} copies={}",
            get("passthrough"),
            get("foreign-passthrough"),
            get("copies")
        ));
    }
    let _ = pipeline.set_state(gst::State::Null);
    outcome?;
    let (first_at, kind) = first
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or("no buffer reached the sink")?;
    checked.insert(0, format!("sink got {kind}"));
    let offers = *offered.lock().unwrap_or_else(|p| p.into_inner());
    if spec.offer != Offer::None {
        checked.push(format!("pool offered {offers} time(s)"));
    }
    // Steady state: from the first frame at the sink to EOS (the start-up is the first-frame
    // time, reported on its own).
    let secs = (t1 - first_at).as_secs_f64();
    Ok((
        (frames - 1) as f64 / secs,
        (cpu1.0 - cpu0.0) / frames as f64,
        (cpu1.1 - cpu0.1) / frames as f64,
        (first_at - t0).as_nanos() as f64,
        checked.join(", "),
    ))
}

/// Answers the ALLOCATION query with a stock GstVideoBufferPool whose memory starts on a page
/// boundary (`GstAllocationParams` align 4095).
/// A stock GstVideoBufferPool of page-aligned frames from `allocator` (system memory if none).
fn page_aligned_pool(
    a: &mut gst::query::Allocation,
    allocator: Option<&gst::Allocator>,
) -> Result<(), String> {
    let (caps, _) = a.get();
    let caps = caps.ok_or("no caps")?.to_owned();
    let info = gst_video::VideoInfo::from_caps(&caps).map_err(|e| e.to_string())?;
    let size = u32::try_from(info.size()).map_err(|e| e.to_string())?;
    let pool: gst::BufferPool = gst_video::VideoBufferPool::new().upcast();
    let params = gst::AllocationParams::new(gst::MemoryFlags::empty(), 4095, 0, 0);
    let mut config = pool.config();
    config.set_params(Some(&caps), size, 2, 0);
    config.set_allocator(allocator, Some(&params));
    pool.set_config(config).map_err(|e| e.to_string())?;
    a.add_allocation_pool(Some(&pool), size, 2, 0);
    a.add_allocation_param(allocator, params);
    Ok(())
}

#[cfg(feature = "v1_28")]
fn upstream_pool(a: &mut gst::query::Allocation) -> Result<(), String> {
    use gst_video::prelude::*;
    let (caps, need) = a.get();
    let caps = caps.ok_or("no caps")?.to_owned();
    let info = gst_video::VideoInfo::from_caps(&caps).map_err(|e| e.to_string())?;
    let pool: gst::BufferPool = gst_video::VideoDmabufPool::new()
        .ok_or("no GstVideoDmabufPool here")?
        .upcast();
    let allocator = gst_allocators::UdmabufAllocator::get().ok_or("no udmabuf allocator")?;
    let mut config = pool.config();
    config.set_params(Some(&caps), info.size() as u32, 4, 0);
    config.set_allocator(Some(&allocator), None);
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_ref());
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT.as_ref());
    config.set_video_alignment(&gst_video::VideoAlignment::default());
    if pool.set_config(config).is_err() {
        // The pool raised the alignment: take what it made of the configuration.
        let adjusted = pool.config();
        pool.set_config(adjusted).map_err(|e| e.to_string())?;
    }
    let _ = need;
    a.add_allocation_pool(Some(&pool), info.size() as u32, 4, 0);
    a.add_allocation_meta::<gst_video::VideoMeta>(None);
    Ok(())
}

#[cfg(not(feature = "v1_28"))]
fn upstream_pool(_: &mut gst::query::Allocation) -> Result<(), String> {
    Err("GstVideoDmabufPool needs GStreamer 1.28 (the v1_28 feature)".into())
}

/// vivid's first capture device (vmalloc buffers, which it exports as dma-bufs).
fn vivid() -> Option<String> {
    let dir = std::fs::read_dir("/sys/class/video4linux").ok()?;
    let mut found: Vec<(String, String)> = dir
        .flatten()
        .filter_map(|e| {
            let name = std::fs::read_to_string(e.path().join("name")).ok()?;
            Some((
                name.trim().to_owned(),
                e.file_name().to_string_lossy().into_owned(),
            ))
        })
        .filter(|(n, dev)| n == "vivid-000-vid-cap" && dev.starts_with("video"))
        .collect();
    found.sort();
    found.pop().map(|(_, dev)| format!("/dev/{dev}"))
}

fn has(factory: &str) -> bool {
    gst::ElementFactory::find(factory).is_some()
}

const STOCK_POOL_HEAP_MEMORY: &str =
    "videotestsrc ! fakesink, the sink offering a stock pool of dmaheap memory (control)";
const PASSTHROUGH: &str = "with dmaheapupload, passing through";
const PATTERN_BASELINE: &str = "videotestsrc (its default pattern) ! fakesink";
const PATTERN_PASSTHROUGH: &str = "videotestsrc (its default pattern) ! dmaheapupload ! fakesink";
const PATTERN_STOCK_POOL_HEAP_MEMORY: &str = "videotestsrc (its default pattern) ! fakesink, the sink offering a stock pool of dmaheap memory (control)";
const VIVID: &str = "vivid dma-bufs: v4l2src io-mode=dmabuf ! fakesink";

pub(crate) fn run(ctx: &Ctx, report: &mut PeersReport) -> Result<(), String> {
    let reps = ctx.pipeline_reps;
    let frames = ctx.count(3_000, 100) as u64;
    let caps = "video/x-raw,format=NV12,width=1280,height=720,framerate=30/1";
    let src = format!("videotestsrc num-buffers={frames} pattern=solid-color ! {caps}");
    // A drawn frame costs some 30 times a solid one (33 ms under TCG): fewer of them give as
    // steady a rate, and keep a VM run within the rig's time limit.
    let pattern_frames = ctx.count(1_000, 30) as u64;
    let pattern_src = format!("videotestsrc num-buffers={pattern_frames} ! {caps}");
    let no_up = (!has("dmaheapupload")).then(|| "no dmaheapupload element".to_owned());
    let no_alloc = gst::Allocator::find(Some("dmaheap"))
        .is_none()
        .then(|| "no dmaheap allocator (no dmaheap plugin)".to_owned());
    let v1_28 = gst::version() >= (1, 28, 0, 0);
    let mut specs = vec![
        Spec {
            name: "videotestsrc ! fakesink (baseline)",
            frames,
            launch: format!("{src} ! fakesink name=sink sync=false"),
            offer: Offer::None,
            reference: None,
            skip: None,
        },
        Spec {
            name: "videotestsrc ! fakesink, the sink offering page-aligned system memory (control)",
            frames,
            launch: format!("{src} ! fakesink name=sink sync=false"),
            offer: Offer::PageAlignedSystem,
            reference: None,
            skip: None,
        },
        Spec {
            name: STOCK_POOL_HEAP_MEMORY,
            frames,
            launch: format!("{src} ! fakesink name=sink sync=false"),
            offer: Offer::StockPoolHeapMemory,
            reference: None,
            skip: no_alloc.clone(),
        },
        Spec {
            name: "with identity (any one element more)",
            frames,
            launch: format!("{src} ! identity ! fakesink name=sink sync=false"),
            offer: Offer::None,
            reference: None,
            skip: None,
        },
        Spec {
            name: PASSTHROUGH,
            frames,
            launch: format!("{src} ! dmaheapupload name=up ! fakesink name=sink sync=false"),
            offer: Offer::None,
            reference: None,
            skip: no_up.clone(),
        },
        // The pipeline as written: videotestsrc drawing its default pattern, work of
        // the kind a real source does per frame. The solid colour above draws almost nothing,
        // so per-buffer costs stand out: the worst case, reported beside.
        Spec {
            name: PATTERN_BASELINE,
            frames: pattern_frames,
            launch: format!("{pattern_src} ! fakesink name=sink sync=false"),
            offer: Offer::None,
            reference: None,
            skip: None,
        },
        // Drawing into the heap's memory with no dmaheapupload: separates what the memory
        // costs the drawing (its mapping, the sync bracketing) from what the element costs.
        Spec {
            name: PATTERN_STOCK_POOL_HEAP_MEMORY,
            frames: pattern_frames,
            launch: format!("{pattern_src} ! fakesink name=sink sync=false"),
            offer: Offer::StockPoolHeapMemory,
            reference: Some(PATTERN_BASELINE),
            skip: no_alloc.clone(),
        },
        Spec {
            name: PATTERN_PASSTHROUGH,
            frames: pattern_frames,
            launch: format!(
                "{pattern_src} ! dmaheapupload name=up ! fakesink name=sink sync=false"
            ),
            offer: Offer::None,
            reference: Some(PATTERN_BASELINE),
            skip: no_up.clone(),
        },
        Spec {
            name: "with dmaheapupload qos=realtime prewarm=4, passing through",
            frames,
            launch: format!(
                "{src} ! dmaheapupload name=up qos=realtime prewarm=4 ! fakesink name=sink sync=false"
            ),
            offer: Offer::None,
            reference: None,
            skip: no_up.clone(),
        },
        Spec {
            name: "with dmaheapupload, forced copy (upstream ignores its pool)",
            frames,
            launch: format!(
                "{src} ! identity drop-allocation=true ! dmaheapupload name=up ! fakesink name=sink sync=false"
            ),
            offer: Offer::None,
            reference: None,
            skip: no_up.clone(),
        },
        Spec {
            name: "with dmaheapupload to DMA_DRM caps (1.28)",
            frames,
            launch: format!(
                "{src} ! dmaheapupload name=up ! video/x-raw(memory:DMABuf),format=DMA_DRM,drm-format=NV12 ! fakesink name=sink sync=false"
            ),
            offer: Offer::None,
            reference: None,
            skip: no_up
                .clone()
                .or_else(|| (!v1_28).then(|| "DMA_DRM caps need GStreamer 1.28".into())),
        },
        Spec {
            name: "upstream GstVideoDmabufPool + GstUdmabufAllocator offered by the sink (1.28)",
            frames,
            launch: format!("{src} ! fakesink name=sink sync=false"),
            offer: Offer::UpstreamDmabufUdmabuf,
            reference: None,
            skip: if !cfg!(feature = "v1_28") || !v1_28 {
                Some("GstVideoDmabufPool needs GStreamer 1.28 (and the v1_28 feature)".into())
            } else if !std::path::Path::new("/dev/udmabuf").exists() {
                Some("no /dev/udmabuf".into())
            } else {
                None
            },
        },
    ];
    let vivid_frames = ctx.count(120, 30) as u64;
    let vivid_src = vivid().map(|dev| {
        format!(
            "v4l2src device={dev} io-mode=dmabuf num-buffers={vivid_frames} ! video/x-raw,format=NV12,width=1280,height=720"
        )
    });
    let no_vivid = vivid_src
        .is_none()
        .then(|| "no vivid capture device (vivid-000-vid-cap)".to_owned());
    let vsrc = vivid_src.unwrap_or_default();
    specs.push(Spec {
        name: VIVID,
        frames: vivid_frames,
        launch: format!("{vsrc} ! fakesink name=sink sync=false"),
        offer: Offer::None,
        reference: None,
        skip: no_vivid.clone(),
    });
    specs.push(Spec {
        name: "vivid dma-bufs through dmaheapupload (a foreign exporter's)",
        frames: vivid_frames,
        launch: format!("{vsrc} ! dmaheapupload name=up ! fakesink name=sink sync=false"),
        offer: Offer::None,
        reference: Some(VIVID),
        skip: no_vivid.or(no_up),
    });
    let mut results: Vec<Throughput> = specs
        .iter()
        .map(|s| Throughput {
            group: "pipelines".into(),
            name: s.name.into(),
            description: s.launch.clone(),
            frames: s.frames,
            skipped: s.skip.clone(),
            ..Throughput::default()
        })
        .collect();
    for rep in 0..reps {
        ctx.say(format!(
            "pipelines, repetition {}/{}: {} cases",
            rep + 1,
            reps,
            specs.len()
        ));
        let order = dmaheap_benchkit::measure::interleaved(rep, specs.len());
        for i in order {
            if results[i].skipped.is_some() {
                continue;
            }
            match run_once(&specs[i], results[i].frames) {
                Ok((fps, cpu, faults, first, checked)) => {
                    let r = &mut results[i];
                    r.fps.push(fps);
                    r.cpu_ns_per_frame.push(cpu);
                    r.faults_per_frame.push(faults);
                    r.first_frame_ns.push(first);
                    if r.verified.is_empty() || !r.verified.contains(&checked) {
                        r.verified = if r.verified.is_empty() {
                            checked
                        } else {
                            format!("{}; {checked}", r.verified)
                        };
                    }
                }
                Err(e) => {
                    results[i].skipped = Some(format!("failed: {e}"));
                    results[i].fps.clear();
                    results[i].cpu_ns_per_frame.clear();
                    results[i].first_frame_ns.clear();
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let base = &results[0];
    let mut ratios = Vec::new();
    for r in results.iter().skip(1) {
        let over = |other: &Throughput| -> Vec<f64> {
            r.fps.iter().zip(&other.fps).map(|(a, b)| a / b).collect()
        };
        if r.fps.len() != reps {
            continue;
        }
        let spec = specs.iter().find(|s| s.name == r.name);
        let (reference, label) = match spec.and_then(|s| s.reference) {
            Some(name) => match results.iter().find(|x| x.name == name) {
                Some(v) if v.fps.len() == reps => (v, name),
                _ => continue,
            },
            // A baseline of its own kind: a ratio over the solid-colour baseline says nothing.
            None if r.name == PATTERN_BASELINE || r.name == VIVID => continue,
            None if base.fps.len() == reps => (base, "baseline"),
            None => continue,
        };
        let mut ratio = Ratio::new(
            "pipelines",
            format!("{}: frames/s / {label}", r.name),
            "frames/s".into(),
            over(reference),
        );
        if r.name == PATTERN_PASSTHROUGH {
            ratio = ratio.with_target(Goal::AtLeast(0.95));
            let mut target = Target::of_ratio(
                "dmaheapupload passthrough pipeline frames/s / baseline without it",
                &ratio,
            );
            // Against a source that draws a real pattern, a copy per frame costs only some
            // percent: the target also needs the element's own count of what it passed.
            let passed = format!("passthrough={} ", r.frames);
            if !r
                .verified
                .split("; ")
                .all(|run| run.contains(&passed) && run.contains("copies=0"))
            {
                target.met = Some(false);
                target.verdict = None;
                target.reason = format!(
                    "dmaheapupload did not pass every frame through: {}",
                    r.verified
                );
            }
            report.targets.push(target);
        }
        ratios.push(ratio);
        // The same memory with no dmaheapupload: what the element itself costs.
        let same_memory = match r.name.as_str() {
            PASSTHROUGH => Some(STOCK_POOL_HEAP_MEMORY),
            PATTERN_PASSTHROUGH => Some(PATTERN_STOCK_POOL_HEAP_MEMORY),
            _ => None,
        };
        if let Some(control) = same_memory
            && let Some(heap) = results
                .iter()
                .find(|x| x.name == control && x.fps.len() == reps)
        {
            ratios.push(Ratio::new(
                "pipelines",
                format!("{}: frames/s / {control}", r.name),
                "frames/s".into(),
                over(heap),
            ));
        }
        let cpu: Vec<f64> = r
            .cpu_ns_per_frame
            .iter()
            .zip(&reference.cpu_ns_per_frame)
            .map(|(a, b)| a / b)
            .collect();
        ratios.push(Ratio::new(
            "pipelines",
            format!("{}: CPU per frame / {label}", r.name),
            "CPU ns/frame".into(),
            cpu,
        ));
    }
    report.ratios.extend(ratios);
    report.throughput.extend(results);
    Ok(())
}
