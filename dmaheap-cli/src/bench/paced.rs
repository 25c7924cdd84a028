//! Frame-paced producers: a frame every 1/60 or 1/120 s, each acquired, written whole between
//! `DMA_BUF_IOCTL_SYNC` start and end, and handed to a consumer that holds one to four frames
//! (a random walk with jumps, so that prewarm alone is not enough and the refill must keep
//! up). Acquire, sync, write and release are timed apart; a frame that ends after its
//! deadline is a miss. Variants: a realtime pool attached to a pressure-watching registry, the
//! free-list floor, and a direct allocation per frame.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use heapcore::{CpuWrite, DmaBuf, Policy, PoolConfig, PoolRegistry, PooledBuf, QosClass};

use super::primitives::FreeList;
use super::{Ctx, hd_nv12};
use dmaheap_benchkit::measure::{Rng, Summary};
use dmaheap_benchkit::schema::{Overhead, Paced, Ratio, Report};

/// A buffer a frame is written into.
pub(super) trait FrameBuf {
    fn write(&mut self) -> heapcore::Result<CpuWrite<'_>>;
}

impl FrameBuf for PooledBuf {
    fn write(&mut self) -> heapcore::Result<CpuWrite<'_>> {
        PooledBuf::write(self)
    }
}

impl FrameBuf for DmaBuf {
    fn write(&mut self) -> heapcore::Result<CpuWrite<'_>> {
        DmaBuf::write(self)
    }
}

/// Where frames come from.
pub(super) trait Frames {
    type Buf: FrameBuf;
    fn acquire(&self) -> Result<Self::Buf, String>;
    fn release(&self, buf: Self::Buf);
    fn bytes_held(&self) -> u64;
    /// (hot-path allocations, refills) so far.
    fn allocs(&self) -> (u64, u64) {
        (0, 0)
    }
}

pub(super) struct PoolFrames(pub heapcore::Pool);

impl Frames for PoolFrames {
    type Buf = PooledBuf;
    fn acquire(&self) -> Result<PooledBuf, String> {
        self.0.try_acquire().map_err(|e| e.to_string())
    }
    fn release(&self, buf: PooledBuf) {
        drop(buf);
    }
    fn bytes_held(&self) -> u64 {
        self.0.stats().bytes_held
    }
    fn allocs(&self) -> (u64, u64) {
        let s = self.0.stats();
        (s.hot_path_allocs, s.refills)
    }
}

impl Frames for FreeList {
    type Buf = DmaBuf;
    fn acquire(&self) -> Result<DmaBuf, String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .ok_or_else(|| "the free list ran dry".to_owned())
    }
    fn release(&self, buf: DmaBuf) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(buf);
    }
    fn bytes_held(&self) -> u64 {
        self.bytes()
    }
}

/// A new buffer for every frame, freed when the consumer lets it go.
pub(super) struct DirectFrames {
    alloc: Arc<heapcore::Allocator>,
    sources: Vec<heapcore::Source>,
    size: u64,
    /// Bytes alive (allocated, not yet freed).
    alive: Mutex<u64>,
    made: Mutex<u64>,
}

impl Frames for DirectFrames {
    type Buf = DmaBuf;
    fn acquire(&self) -> Result<DmaBuf, String> {
        let buf = self
            .alloc
            .allocate_first(&self.sources, self.size, "bench-direct")
            .map_err(|e| e.to_string())?;
        buf.prefault().map_err(|e| e.to_string())?;
        *self.alive.lock().unwrap_or_else(|p| p.into_inner()) += buf.len();
        *self.made.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Ok(buf)
    }
    fn release(&self, buf: DmaBuf) {
        *self.alive.lock().unwrap_or_else(|p| p.into_inner()) -= buf.len();
        drop(buf);
    }
    fn bytes_held(&self) -> u64 {
        *self.alive.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn allocs(&self) -> (u64, u64) {
        (*self.made.lock().unwrap_or_else(|p| p.into_inner()), 0)
    }
}

/// How many frames the consumer holds, frame by frame: 1 to 4, changing every 20 frames,
/// and one time in four jumping straight from 1 to 4.
pub(super) fn holding(frames: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut held = 1;
    (0..frames)
        .map(|i| {
            if i % 20 == 0 && i > 0 {
                held = if held == 1 && rng.below(4) == 0 {
                    4
                } else {
                    1 + rng.below(4) as usize
                };
            }
            held
        })
        .collect()
}

/// One paced run's samples.
pub(super) struct PacedRun {
    pub acquire: Vec<u64>,
    pub sync: Vec<u64>,
    pub write: Vec<u64>,
    pub release: Vec<u64>,
    pub overhead: Vec<u64>,
    pub missed: u64,
    pub worst_lateness_ns: u64,
    pub bytes_held_max: u64,
    pub hot_path_allocs: u64,
    pub refills: u64,
}

/// Produces `frames` frames at `fps` from `src`.
pub(super) fn produce<F: Frames>(
    ctx: &Ctx,
    src: &F,
    frames: usize,
    fps: u32,
    seed: u64,
) -> Result<PacedRun, String> {
    let period = Duration::from_secs_f64(1.0 / f64::from(fps));
    let held = holding(frames, seed);
    let timer = &ctx.timer;
    let mut out = PacedRun {
        acquire: Vec::with_capacity(frames),
        sync: Vec::with_capacity(frames),
        write: Vec::with_capacity(frames),
        release: Vec::with_capacity(frames),
        overhead: Vec::with_capacity(frames),
        missed: 0,
        worst_lateness_ns: 0,
        bytes_held_max: src.bytes_held(),
        hot_path_allocs: 0,
        refills: 0,
    };
    let (allocs0, refills0) = src.allocs();
    let mut in_flight: VecDeque<F::Buf> = VecDeque::new();
    let start = Instant::now() + period;
    for (i, &hold) in held.iter().enumerate() {
        let due = start + period * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let t0 = Instant::now();
        let mut buf = src.acquire()?;
        let t1 = Instant::now();
        let (sync_ns, write_ns) = {
            let s0 = Instant::now();
            let mut cpu = buf.write().map_err(|e| e.to_string())?;
            let s1 = Instant::now();
            cpu.fill(i as u8);
            let s2 = Instant::now();
            cpu.finish().map_err(|e| e.to_string())?;
            let s3 = Instant::now();
            (timer.net(s1 - s0) + timer.net(s3 - s2), timer.net(s2 - s1))
        };
        in_flight.push_back(buf);
        let r0 = Instant::now();
        while in_flight.len() > hold {
            if let Some(b) = in_flight.pop_front() {
                src.release(b);
            }
        }
        let end = Instant::now();
        let acquire = timer.net(t1 - t0);
        let release = timer.net(end - r0);
        out.acquire.push(acquire);
        out.sync.push(sync_ns);
        out.write.push(write_ns);
        out.release.push(release);
        out.overhead.push(acquire + sync_ns + release);
        if let Some(late) = end.checked_duration_since(due + period) {
            out.missed += 1;
            out.worst_lateness_ns = out
                .worst_lateness_ns
                .max(dmaheap_benchkit::measure::nanos(late));
        }
        if i % 10 == 0 {
            out.bytes_held_max = out.bytes_held_max.max(src.bytes_held());
        }
    }
    out.bytes_held_max = out.bytes_held_max.max(src.bytes_held());
    drop(in_flight);
    let (allocs, refills) = src.allocs();
    out.hot_path_allocs = allocs - allocs0;
    out.refills = refills - refills0;
    Ok(out)
}

/// Gathers runs of one variant into its report entry.
pub(super) struct PacedCase {
    pub entry: Paced,
    overhead: Vec<u64>,
}

impl PacedCase {
    pub(super) fn new(variant: &str, fps: u32, size: u64, frames: usize, pressure: bool) -> Self {
        Self {
            entry: Paced {
                variant: variant.to_owned(),
                fps,
                size,
                frames_per_rep: frames,
                pressure,
                acquire: Vec::new(),
                write: Vec::new(),
                release: Vec::new(),
                overhead: Vec::new(),
                overhead_pooled: Summary::default(),
                missed: Vec::new(),
                worst_lateness_ns: Vec::new(),
                bytes_held_max: Vec::new(),
                peak_outstanding: 5,
                hot_path_allocs: Vec::new(),
                refills: Vec::new(),
            },
            overhead: Vec::new(),
        }
    }

    pub(super) fn add(&mut self, run: PacedRun) {
        let e = &mut self.entry;
        e.acquire.push(Summary::of(run.acquire));
        e.write.push(Summary::of(run.write));
        e.release.push(Summary::of(run.release));
        e.overhead.push(Summary::of(run.overhead.clone()));
        self.overhead.extend(run.overhead);
        e.missed.push(run.missed);
        e.worst_lateness_ns.push(run.worst_lateness_ns);
        e.bytes_held_max.push(run.bytes_held_max);
        e.hot_path_allocs.push(run.hot_path_allocs);
        e.refills.push(run.refills);
    }

    pub(super) fn finish(mut self) -> Paced {
        self.entry.overhead_pooled = Summary::of(std::mem::take(&mut self.overhead));
        self.entry
    }
}

const VARIANTS: [&str; 3] = [
    "realtime pool (registry, prewarm 4)",
    "free list (5 buffers, the floor)",
    "direct allocation per frame",
];

pub(super) fn run(ctx: &Ctx, report: &mut Report) -> Result<(), String> {
    let size = hd_nv12().size;
    let registry = PoolRegistry::new(Arc::clone(&ctx.alloc), Policy::builtin(), None);
    let _ = registry.watch_pressure(heapcore::pressure::PressureConfig::default());
    let mut cases = Vec::new();
    for fps in [60u32, 120] {
        let frames = ctx.count(fps as usize * 5, 100);
        for v in VARIANTS {
            cases.push(PacedCase::new(v, fps, size, frames, false));
        }
    }
    for rep in 0..ctx.reps {
        ctx.say(format!(
            "frame-paced producers, repetition {}/{}",
            rep + 1,
            ctx.reps
        ));
        let order: Vec<usize> = if rep % 2 == 0 {
            (0..cases.len()).collect()
        } else {
            (0..cases.len()).rev().collect()
        };
        for i in order {
            let (variant, fps, frames) = {
                let e = &cases[i].entry;
                (e.variant.clone(), e.fps, e.frames_per_rep)
            };
            let seed = 0x5EED + rep as u64;
            let run = match VARIANTS.iter().position(|v| *v == variant) {
                Some(0) => {
                    let pool = registry
                        .private_pool(
                            PoolConfig::new("bench-paced", ctx.sources.clone(), size)
                                .qos(QosClass::Realtime)
                                .min_buffers(4),
                        )
                        .map_err(|e| e.to_string())?;
                    produce(ctx, &PoolFrames(pool), frames, fps, seed)?
                }
                Some(1) => {
                    let list = FreeList::new(&ctx.alloc, &ctx.sources, size, 5)?;
                    produce(ctx, &list, frames, fps, seed)?
                }
                _ => {
                    let direct = DirectFrames {
                        alloc: Arc::clone(&ctx.alloc),
                        sources: ctx.sources.clone(),
                        size,
                        alive: Mutex::new(0),
                        made: Mutex::new(0),
                    };
                    produce(ctx, &direct, frames, fps, seed)?
                }
            };
            cases[i].add(run);
        }
    }
    let paced: Vec<Paced> = cases.into_iter().map(PacedCase::finish).collect();
    let len = size.next_multiple_of(heapcore::sysinfo::page_size());
    for p in &paced {
        let held = p.bytes_held_max.iter().copied().max().unwrap_or(0);
        let needed = p.peak_outstanding as u64 * len;
        report.overhead.push(Overhead {
            scenario: format!("{} at {} fps", p.variant, p.fps),
            size,
            bytes_held_max: held,
            bytes_needed: needed,
            factor: held as f64 / needed as f64,
            note: "held at most / (frames held by the consumer at most + the one being written) \
                   × buffer size"
                .into(),
        });
    }
    for fps in [60u32, 120] {
        let get = |v: &str| paced.iter().find(|p| p.fps == fps && p.variant == v);
        let (Some(rt), Some(floor), Some(direct)) =
            (get(VARIANTS[0]), get(VARIANTS[1]), get(VARIANTS[2]))
        else {
            continue;
        };
        let per = |a: &Paced, b: &Paced| -> Vec<f64> {
            a.overhead
                .iter()
                .zip(&b.overhead)
                .map(|(x, y)| x.p50_ns as f64 / y.p50_ns.max(1) as f64)
                .collect()
        };
        report.ratios.push(Ratio::new(
            "paced",
            format!("{fps} fps: realtime pool frame overhead / free list frame overhead"),
            "p50".into(),
            per(rt, floor),
        ));
        report.ratios.push(Ratio::new(
            "paced",
            format!("{fps} fps: direct allocation frame overhead / realtime pool frame overhead"),
            "p50".into(),
            per(direct, rt),
        ));
    }
    report.paced.extend(paced);
    Ok(())
}
