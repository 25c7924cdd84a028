//! GStreamer's buffer pools timed as heapcore's are: acquire, release and the round trip, the
//! pools taking turns in one thread, and the kernel entries of each acquire and release.

use gst::glib;
use gst::prelude::*;
use gst_video::prelude::*;

use crate::Ctx;
use dmaheap_benchkit::counters::Tally;
use dmaheap_benchkit::measure::{
    Goal, Hist, OpSamples, Recycler, Stat, Summary, on_pinned_threads,
};
use dmaheap_benchkit::schema::{Case, PeersReport, Ratio, Target};
use dmaheap_benchkit::turns::{Timed, Turns, time_in_turns};

/// A configured, active GStreamer pool.
pub(crate) struct GstPool(pub gst::BufferPool);

impl Recycler for GstPool {
    type Buf = gst::Buffer;
    fn acquire(&self) -> gst::Buffer {
        self.0
            .acquire_buffer(None)
            .unwrap_or_else(|e| panic!("{}: acquire_buffer: {e:?}", self.0.name()))
    }
    fn release(&self, buf: gst::Buffer) {
        drop(buf);
    }
}

impl Drop for GstPool {
    fn drop(&mut self) {
        let _ = self.0.set_active(false);
    }
}

/// The frame every pool serves: 1080p NV12.
pub(crate) fn caps() -> (gst::Caps, u32) {
    let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Nv12, 1920, 1080)
        .build()
        .expect("valid video info");
    (info.to_caps().expect("caps"), info.size() as u32)
}

/// Sets `pool` up for 1080p NV12 frames with at least `min` buffers, then activates it.
pub(crate) fn activate(
    pool: &gst::BufferPool,
    min: u32,
    allocator: Option<&gst::Allocator>,
    video_meta: bool,
) -> Result<(), String> {
    let (caps, size) = caps();
    let mut config = pool.config();
    config.set_params(Some(&caps), size, min, 0);
    if let Some(a) = allocator {
        config.set_allocator(Some(a), None);
    }
    if video_meta {
        config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_ref());
        // GstVideoDmabufPool (1.28) also insists on an alignment it may raise.
        config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT.as_ref());
        config.set_video_alignment(&gst_video::VideoAlignment::default());
    }
    if pool.set_config(config).is_err() {
        // Adjusted (GstBufferPool's contract): validate what the pool made of it and set that.
        let adjusted = pool.config();
        pool.set_config(adjusted)
            .map_err(|e| format!("{}: configuration refused: {e}", pool.name()))?;
    }
    pool.set_active(true)
        .map_err(|e| format!("{}: activation failed: {e}", pool.name()))
}

/// The dmaheap plugin's pool (made by type name: the plugin is loaded, not linked).
/// `hold_busy`: whether release checks the dma-buf's fences (the default; off for pools whose
/// writers map the buffers, as dmaheapupload's copy pool).
pub(crate) fn dmaheap_pool(
    qos: &str,
    prewarm: u32,
    hold_busy: bool,
) -> Result<gst::BufferPool, String> {
    let ty = glib::Type::from_name("GstDmaHeapBufferPool")
        .ok_or("GstDmaHeapBufferPool is not registered: no dmaheap plugin")?;
    let obj = glib::Object::with_type(ty);
    // A plugin from another build (GST_PLUGIN_PATH, an older install) may lack a property:
    // say so rather than let set_property panic.
    if let Some(p) = ["qos", "prewarm", "hold-busy"]
        .into_iter()
        .find(|p| obj.find_property(p).is_none())
    {
        return Err(format!(
            "the GstDmaHeapBufferPool loaded has no `{p}` property: its dmaheap plugin is \
             older than this benchmark (build both from one tree: cargo build --release \
             --workspace)"
        ));
    }
    obj.set_property_from_str("qos", qos);
    obj.set_property("prewarm", prewarm);
    obj.set_property("hold-busy", hold_busy);
    obj.downcast::<gst::BufferPool>()
        .map_err(|_| "GstDmaHeapBufferPool is not a GstBufferPool".to_owned())
}

const STOCK: &str = "GstBufferPool (stock, system memory)";

/// Upstream's pool that also checks fences on release, on the same allocator.
const FENCE_AWARE_PEER: &str = "GstVideoDmabufPool + dmaheap allocator (1.28)";

/// The GstDmaHeapBufferPool rows: qos, prewarm, hold-busy.
const DMAHEAP_ROWS: [(&str, u32, bool); 4] = [
    ("normal", 0, true),
    ("realtime", 2, true),
    ("normal", 0, false),
    ("realtime", 2, false),
];

/// A GstDmaHeapBufferPool row's name. `hold-busy=false` is how a pool whose writers map the
/// buffers runs (the map waits for fences): like the stock pool, its release asks no fence.
fn dmaheap_name(qos: &str, prewarm: u32, hold_busy: bool) -> String {
    let prewarm = if prewarm > 0 {
        format!(", prewarm {prewarm}")
    } else {
        String::new()
    };
    let release = if hold_busy {
        ""
    } else {
        ", hold-busy=false: CPU writers"
    };
    format!("GstDmaHeapBufferPool (qos {qos}{prewarm}{release})")
}

/// A GstBufferPool subclass written in Rust that overrides nothing: what gstreamer-rs's
/// virtual-method trampolines alone cost, the floor for any pool written as
/// GstDmaHeapBufferPool is.
mod bare {
    use gst::glib;
    use gst::subclass::prelude::*;

    #[derive(Default)]
    pub(crate) struct Imp;

    #[glib::object_subclass]
    impl ObjectSubclass for Imp {
        const NAME: &'static str = "DmaheapBenchBarePool";
        type Type = BarePool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for Imp {}
    impl GstObjectImpl for Imp {}
    impl BufferPoolImpl for Imp {}

    glib::wrapper! {
        pub(crate) struct BarePool(ObjectSubclass<Imp>) @extends gst::BufferPool, gst::Object;
    }
}

/// The pools, each with how to make it; `None` where this GStreamer cannot.
fn makers() -> Vec<(String, Result<gst::BufferPool, String>)> {
    let mut out = vec![
        (STOCK.to_owned(), {
            let p = gst::BufferPool::new();
            activate(&p, 2, None, false).map(|()| p)
        }),
        (
            "Rust subclass of GstBufferPool, no overrides (system memory)".to_owned(),
            {
                let p: gst::BufferPool = glib::Object::new::<bare::BarePool>().upcast();
                activate(&p, 2, None, false).map(|()| p)
            },
        ),
        (
            "GstVideoBufferPool (stock, system memory, video meta)".to_owned(),
            {
                let p: gst::BufferPool = gst_video::VideoBufferPool::new().upcast();
                activate(&p, 2, None, true).map(|()| p)
            },
        ),
        (
            // The control that tells pool code from memory: stock code, dmaheap memory.
            "GstBufferPool (stock) + dmaheap allocator".to_owned(),
            {
                let p = gst::BufferPool::new();
                gst::Allocator::find(Some("dmaheap"))
                    .ok_or_else(|| "no dmaheap allocator: no dmaheap plugin".to_owned())
                    .and_then(|a| activate(&p, 2, Some(&a), false))
                    .map(|()| p)
            },
        ),
    ];
    for (qos, prewarm, hold_busy) in DMAHEAP_ROWS {
        out.push((
            dmaheap_name(qos, prewarm, hold_busy),
            dmaheap_pool(qos, prewarm, hold_busy)
                .and_then(|p| activate(&p, 2, None, false).map(|()| p)),
        ));
    }
    out.extend(v1_28_makers());
    out
}

#[cfg(feature = "v1_28")]
fn v1_28_makers() -> Vec<(String, Result<gst::BufferPool, String>)> {
    let dmabuf_pool = |allocator: Option<gst::Allocator>, what: &str| {
        let pool = gst_video::VideoDmabufPool::new()
            .ok_or("gst_video_dmabuf_pool_new() gave nothing: no dma-buf support here")?;
        let pool: gst::BufferPool = pool.upcast();
        let allocator = allocator.ok_or(format!("no {what}"))?;
        activate(&pool, 2, Some(&allocator), true).map(|()| pool)
    };
    vec![
        (
            "GstVideoDmabufPool + GstUdmabufAllocator (1.28)".to_owned(),
            dmabuf_pool(gst_allocators::UdmabufAllocator::get(), "udmabuf allocator"),
        ),
        (
            FENCE_AWARE_PEER.to_owned(),
            dmabuf_pool(gst::Allocator::find(Some("dmaheap")), "dmaheap allocator"),
        ),
    ]
}

#[cfg(not(feature = "v1_28"))]
fn v1_28_makers() -> Vec<(String, Result<gst::BufferPool, String>)> {
    Vec::new()
}

pub(crate) fn run(ctx: &Ctx, report: &mut PeersReport) -> Result<(), String> {
    // Never fewer than 50,000 operations (25,000 round trips) a repetition, whatever the
    // scale: under qemu TCG a hypervisor hiccup lands in one p99 of 5,000 round trips and
    // moves every pool's alike; with 25,000 they are rare (1 repetition in 36 so far).
    let n = ctx.count(100_000, 50_000);
    let (_, size) = caps();
    let names: Vec<String> = makers().into_iter().map(|(n, _)| n).collect();
    let mut runs: Vec<[Vec<Summary>; 3]> = vec![Default::default(); names.len()];
    let mut pooled: Vec<[Hist; 3]> = vec![Default::default(); names.len()];
    let mut kernel: Vec<(Tally, Tally)> = names.iter().map(|_| Default::default()).collect();
    // Round trips per round-trip sample, per repetition (see TimerCost::ops_per_sample).
    let mut per_sample: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    let mut missing: Vec<Option<String>> = vec![None; names.len()];
    for rep in 0..ctx.reps {
        ctx.say(format!(
            "GStreamer pools, repetition {}/{}: {n} operations each",
            rep + 1,
            ctx.reps
        ));
        let mut pools: Vec<(usize, GstPool)> = Vec::new();
        for (i, (name, made)) in makers().into_iter().enumerate() {
            match made {
                Ok(p) => pools.push((i, GstPool(p))),
                Err(e) => missing[i] = Some(format!("{name}: {e}")),
            }
        }
        if rep % 2 == 1 {
            pools.reverse();
        }
        let pools = std::sync::Arc::new(pools);
        let timer = ctx.timer;
        let shared = std::sync::Arc::clone(&pools);
        let mut samples: Vec<OpSamples> = on_pinned_threads(1, move |_, barrier| {
            let row: Vec<&dyn Timed> = shared.iter().map(|(_, p)| p as &dyn Timed).collect();
            time_in_turns(&row, n, &timer, barrier, &Turns::new(1))
        })
        .pop()
        .unwrap_or_default();
        if rep == 0 {
            let shared = std::sync::Arc::clone(&pools);
            let counted = on_pinned_threads(1, move |_, _| {
                shared
                    .iter()
                    .map(|(_, p)| p.count(2_000))
                    .collect::<Vec<_>>()
            })
            .pop()
            .unwrap_or_default();
            for ((i, _), c) in pools.iter().zip(counted) {
                kernel[*i] = c;
            }
        }
        for ((i, _), s) in pools.iter().zip(samples.iter_mut()) {
            let s = std::mem::take(s);
            per_sample[*i].push(s.round_trips_per_sample);
            for (k, h) in [s.acquire, s.release, s.round_trip].into_iter().enumerate() {
                runs[*i][k].push(h.summary());
                pooled[*i][k].merge(&h);
            }
        }
    }
    for (i, name) in names.iter().enumerate() {
        if runs[i][0].len() != ctx.reps {
            continue;
        }
        for (k, op) in ["acquire", "release", "round trip"].into_iter().enumerate() {
            let (acq, rel) = &kernel[i];
            report.cases.push(Case {
                group: "gst-pools".into(),
                method: name.clone(),
                op: op.into(),
                size: u64::from(size),
                threads: 1,
                layout: String::new(),
                runs: std::mem::take(&mut runs[i][k]),
                pooled: pooled[i][k].summary(),
                kernel: match k {
                    0 if acq.ops() > 0 => Some(acq.per_op()),
                    1 if rel.ops() > 0 => Some(rel.per_op()),
                    _ => None,
                },
                ops_per_sec: Vec::new(),
                ops_per_sample: if k == 2 {
                    per_sample[i].clone()
                } else {
                    Vec::new()
                },
                oversubscribed: false,
                note: String::new(),
            });
        }
    }
    report.notes.extend(missing.into_iter().flatten());
    let find = |method: &str, op: &str| {
        report
            .cases
            .iter()
            .find(|c| c.group == "gst-pools" && c.method == method && c.op == op)
            .cloned()
    };
    let p99_ratio = |name: &str, peer: &str, peer_label: &str, op: &str| {
        let (a, b) = (find(name, op)?, find(peer, op)?);
        let per: Option<Vec<f64>> = a
            .runs
            .iter()
            .zip(&b.runs)
            .map(|(x, y)| Some(x.get(Stat::P99)? / y.get(Stat::P99)?))
            .collect();
        Some(Ratio::new(
            "gst-pools",
            format!("{name} {op} / {peer_label} {op}"),
            "p99".into(),
            per.unwrap_or_default(),
        ))
    };
    let mut ratios = Vec::new();
    let mut targets = Vec::new();
    // Some(hold-busy) for a GstDmaHeapBufferPool row.
    let dmaheap_row = |name: &str| {
        DMAHEAP_ROWS
            .iter()
            .find(|&&(q, p, h)| dmaheap_name(q, p, h) == name)
            .map(|&(_, _, h)| h)
    };
    for name in names.iter().filter(|n| *n != STOCK) {
        let row = dmaheap_row(name);
        let hold_busy = row == Some(true);
        for op in ["acquire", "release", "round trip"] {
            let Some(mut r) = p99_ratio(name, STOCK, "stock GstBufferPool", op) else {
                continue;
            };
            // The target compares like with like: a release that asks no fence, as the stock
            // pool's. A pool that does ask (one system call) is set beside the pool upstream
            // made for the same job, GstVideoDmabufPool, below.
            if op == "round trip" && row == Some(false) {
                r = r.with_target(Goal::AtMost(1.2));
                targets.push(Target::of_ratio(
                    &format!("{name} acquire+release p99 / stock GstBufferPool"),
                    &r,
                ));
            }
            ratios.push(r);
            if hold_busy
                && let Some(r) = p99_ratio(
                    name,
                    FENCE_AWARE_PEER,
                    "GstVideoDmabufPool (fence-aware, 1.28)",
                    op,
                )
            {
                ratios.push(r);
            }
        }
    }
    report.ratios.extend(ratios);
    report.targets.extend(targets);
    Ok(())
}
