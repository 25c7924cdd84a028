//! `dmaheap bench`: heapcore's pools against their peers, measured side by side in one run,
//! interleaved over repetitions, with every ratio given a confidence interval and every target
//! of issue 13 judged on it; `--report` turns archived runs into docs/performance.md.
//!
//! Parts: the pool's operations against the `Mutex<Vec>` floor (`pool-ops`, `sizes`), the
//! ways to make a buffer instead (`alloc`), frame-paced producers (`paced`), pools attached to
//! a pressure-watching registry under real pressure (`pressure`), memory held and time to
//! first frame (`memory`), and GStreamer and PipeWire through the companion binary
//! `dmaheap-bench-peers` (`peers`), whose JSON is merged.

mod alloc_peers;
mod env;
mod hog;
mod memory;
mod paced;
mod peers;
mod pressure;
mod primitives;
mod report;

use std::sync::Arc;

use heapcore::format::{FrameLayout, VideoFormat};
use heapcore::{Allocator, Constraints, Policy, Source, Usage, solve};

use dmaheap_benchkit::counters::{self, PerOp};
use dmaheap_benchkit::measure::{self, Goal, Stat, TimerCost, Verdict};
use dmaheap_benchkit::schema::{self, Case, Ratio, Report, Target, find_case};
pub(crate) use hog::{HogArgs, hog};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PressureMode {
    /// In the test VM a memory hog with swap; elsewhere a contained reclaim churn (see
    /// `--hog`).
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Part {
    PoolOps,
    Sizes,
    Alloc,
    Paced,
    Pressure,
    Memory,
    Peers,
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Where to allocate (heap names, `udmabuf`, `memfd`, in order, separated by commas or
    /// spaces; `linux,cma` stays one name); default: the policy's order for the animation
    /// usage.
    #[arg(long, default_value = "")]
    heap: String,
    /// Print the JSON report (what docs/bench archives) instead of tables.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Write docs/performance.md from archived JSON reports instead of measuring.
    #[arg(long, num_args = 1.., value_name = "JSON")]
    report: Vec<std::path::PathBuf>,
    /// With --report: replace the generated part of this file (keeping its other sections)
    /// instead of printing.
    #[arg(long, requires = "report")]
    write: Option<std::path::PathBuf>,
    /// Repetitions of every case, interleaved (at least 5 for a target to count).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
    reps: u64,
    /// Repetitions of the GStreamer pipelines (default: --reps): their frames/s moves with
    /// the machine's other load from one run to the next, so a ratio near its target takes
    /// more repetitions to decide than the pools do.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=400))]
    pipeline_reps: Option<u64>,
    /// Repetitions of the pressure cases, each side (default: --reps): a p99 under reclaim
    /// moves with the kernel's stalls, so its ratio too takes more of them to decide.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100))]
    pressure_reps: Option<u64>,
    /// Scales every fixed sample count (0.05 to 10); the counts used are in the report.
    #[arg(long, default_value_t = 1.0, value_parser = scale, allow_negative_numbers = true)]
    scale: f64,
    /// Which parts to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "pool-ops,sizes,alloc,paced,pressure,memory,peers"
    )]
    parts: Vec<Part>,
    /// Memory pressure cases.
    #[arg(long, value_enum, default_value = "auto")]
    pressure: PressureMode,
    /// What makes the pressure: `swap` (a hog beyond RAM, for machines with swap, such as the
    /// test VM's zram), `refault` (pages of a file pushed out and faulted back in a loop:
    /// real reclaim and PSI stalls, contained, for shared machines), `auto` (swap where there
    /// is swap inside the test VM, else refault).
    #[arg(long, value_enum, default_value = "auto")]
    hog: hog::HogKind,
    /// The companion binary for GStreamer and PipeWire (default: `dmaheap-bench-peers` next to
    /// this one, else on PATH; `none` skips it).
    #[arg(long)]
    peers: Option<String>,
    /// Thread counts for the scaling cases (each 1 to 256).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16", value_parser = count(256))]
    threads: Vec<usize>,
    /// A name for this run in the report (e.g. "host", "VM full").
    #[arg(long, default_value = "")]
    label: String,
    /// The commit measured (default: DMAHEAP_BENCH_COMMIT, else `git rev-parse`).
    #[arg(long)]
    commit: Option<String>,
}

/// A count from 1 to `max`.
fn count(max: u64) -> impl clap::builder::TypedValueParser<Value = usize> {
    use clap::builder::TypedValueParser;
    clap::value_parser!(u64)
        .range(1..=max)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

fn scale(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.05..=10.0).contains(&v) {
        return Err(format!("--scale {v} is outside 0.05 to 10"));
    }
    Ok(v)
}

/// The buffer sizes of the size sweep: powers of two and the frames people use.
pub(crate) const SIZES: [(u64, &str); 10] = [
    (64 << 10, "64 KiB"),
    (256 << 10, "256 KiB"),
    (1 << 20, "1 MiB"),
    (3_110_400, "1080p NV12"),
    (4 << 20, "4 MiB"),
    (8_294_400, "1080p RGBA"),
    (12_441_600, "4K NV12"),
    (16 << 20, "16 MiB"),
    (33_177_600, "4K RGBA"),
    (64 << 20, "64 MiB"),
];

pub(crate) fn size_label(size: u64) -> String {
    SIZES
        .iter()
        .find(|(s, _)| *s == size)
        .map(|(_, l)| (*l).to_owned())
        .unwrap_or_else(|| heapcore::size::ByteSize(size).to_string())
}

/// The frame every fixed-size case uses.
pub(crate) fn hd_nv12() -> FrameLayout {
    FrameLayout::packed(VideoFormat::Nv12, 1920, 1080).expect("valid frame")
}

/// What every part gets.
pub(crate) struct Ctx {
    pub alloc: Arc<Allocator>,
    pub sources: Vec<Source>,
    pub reps: usize,
    pub pipeline_reps: usize,
    pub pressure_reps: usize,
    pub scale: f64,
    pub timer: TimerCost,
    pub say: bool,
}

impl Ctx {
    /// A fixed sample count, scaled (never below `floor`).
    pub(crate) fn count(&self, base: usize, floor: usize) -> usize {
        ((base as f64 * self.scale).round() as usize).max(floor)
    }

    pub(crate) fn say(&self, s: impl AsRef<str>) {
        if self.say {
            eprintln!("{}", s.as_ref());
        }
    }
}

pub(crate) fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if !args.report.is_empty() {
        let generated = report::markdown(&args.report)?;
        match &args.write {
            Some(path) => {
                let existing = std::fs::read_to_string(path).unwrap_or_default();
                std::fs::write(path, report::splice(&existing, &generated))
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
            }
            None => print!("{generated}"),
        }
        return Ok(());
    }
    // First, while this is the only thread: the one kernel text patch counting makes (see
    // hold_scheduler_hooks) happens now, not in the middle of a case; dmaheap-bench-peers
    // runs while this process holds the hooks on.
    dmaheap_benchkit::counters::hold_scheduler_hooks();
    let alloc = Arc::new(Allocator::new());
    let listed = Source::parse_list(&args.heap, alloc.inventory())?;
    let sources: Vec<Source> = if listed.is_empty() {
        let (policy, _) = Policy::load();
        solve(
            &policy,
            &Constraints::new(1 << 20).usage(Usage::new(Usage::ANIMATION)?),
            alloc.inventory(),
        )
        .sources()
    } else {
        listed
    };
    // Which source really serves (the first that can), for the report.
    let served = alloc
        .allocate_first(&sources, 1 << 20, "bench-probe")?
        .origin()
        .to_string();
    let mut env = env::record(&alloc, &args.label, args.commit.as_deref());
    env.buffers_from = served.clone();
    let timer = TimerCost::calibrate();
    env.timer = Some(timer);
    env.counting = counters::method();
    env.reps = args.reps as usize;
    env.scale = args.scale;
    env.command = std::env::args().collect::<Vec<_>>().join(" ");
    let cpus = measure::allowed_cpus();
    env.pinning = format!(
        "thread i pinned to allowed CPU i mod {} (sched_setaffinity); a barrier starts the \
         timed loops together (and every pressure burst); the methods of a case take turns by \
         a clock all its threads share; round trips shorter than {} clock reads (or steps) are \
         timed several to a sample; {} warm-up operations discarded",
        cpus.len(),
        measure::SAMPLE_SPAN_READS,
        measure::WARMUP_OPS
    );
    let ctx = Ctx {
        alloc,
        sources,
        reps: args.reps as usize,
        pipeline_reps: args.pipeline_reps.unwrap_or(args.reps) as usize,
        pressure_reps: args.pressure_reps.unwrap_or(args.reps) as usize,
        scale: args.scale,
        timer,
        say: true,
    };
    ctx.say(format!(
        "dmaheap bench: buffers from {served}, kernel {}, {} ({}), clock {} (a reading costs \
         {} ns at p50), {} repetitions",
        env.kernel, env.cpu_model, env.machine, env.clocksource, timer.p50_ns, ctx.reps
    ));

    let mut report = Report {
        schema: schema::SCHEMA.to_owned(),
        ..Report::default()
    };
    let parts = &args.parts;
    if parts.contains(&Part::PoolOps) || parts.contains(&Part::Sizes) {
        run_primitives(&ctx, parts, &args.threads, &mut report)?;
    }
    if parts.contains(&Part::Alloc) {
        alloc_peers::run(&ctx, &mut report)?;
    }
    if parts.contains(&Part::Paced) {
        paced::run(&ctx, &mut report)?;
    }
    let pressure_on = match args.pressure {
        PressureMode::On => true,
        PressureMode::Off => false,
        PressureMode::Auto => true,
    };
    if parts.contains(&Part::Pressure) && pressure_on {
        let kind = args.hog.resolve(env.in_test_vm, env.swap_total);
        pressure::run(&ctx, kind, &mut report)?;
    }
    if parts.contains(&Part::Memory) {
        memory::run(&ctx, &mut report)?;
    }
    if parts.contains(&Part::Peers) && args.peers.as_deref() != Some("none") {
        match peers::run(&ctx, args.peers.as_deref(), &served) {
            Ok(p) => {
                if !p.gstreamer.is_empty() {
                    env.gstreamer = p.gstreamer.clone();
                }
                if !p.pipewire.is_empty() {
                    env.pipewire = p.pipewire.clone();
                }
                report.cases.extend(p.cases);
                report.ratios.extend(p.ratios);
                report.targets.extend(p.targets);
                report.throughput.extend(p.throughput);
                report.notes.extend(p.notes);
            }
            Err(e) => report
                .notes
                .push(format!("GStreamer and PipeWire peers not run: {e}")),
        }
    }
    report.env = env;
    report.targets.sort_by_key(|t| target_order(&t.name));
    // The kernel may change the clocksource mid-run (its watchdog marking the TSC unstable):
    // every later reading then costs more than the timer cost subtracted, so the run's
    // timings do not compare. Keep what was measured, say so, and fail.
    let clock_now = env::clocksource();
    let clock_changed = (clock_now != report.env.clocksource).then(|| {
        let msg = format!(
            "the kernel changed the clocksource from {} to {clock_now} during the run: readings \
             after the change cost more than the {} ns subtracted, so this run's timings do \
             not compare (in a VM, boot with tsc=reliable; tests/vm/run does)",
            report.env.clocksource, timer.p50_ns
        );
        report.env.mark_clocksource_changed(&clock_now);
        report.notes.insert(0, msg.clone());
        msg
    });

    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.out {
        std::fs::write(path, &json).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report::single(&report));
    }
    match clock_changed {
        Some(msg) => Err(msg.into()),
        None => Ok(()),
    }
}

/// Targets in the order issue 13 lists them.
fn target_order(name: &str) -> usize {
    const ORDER: [&str; 5] = [
        "heapcore pool round trip",
        "GstDmaHeapBufferPool",
        "dmaheapupload passthrough",
        "hot-path acquire",
        "realtime pool p99 under",
    ];
    ORDER
        .iter()
        .position(|p| name.starts_with(p))
        .unwrap_or(ORDER.len())
}

fn run_primitives(
    ctx: &Ctx,
    parts: &[Part],
    thread_counts: &[usize],
    report: &mut Report,
) -> Result<(), String> {
    use primitives::{Cases, Method, Spec};
    let hd = hd_nv12().size;
    let cpus = measure::allowed_cpus().len();
    let mut specs = Vec::new();
    if parts.contains(&Part::PoolOps) {
        for &threads in thread_counts {
            for per_thread in [false, true] {
                if per_thread && threads == 1 {
                    continue;
                }
                let mut methods = vec![Method::RealtimePool, Method::FreeList];
                if !per_thread && (threads == 1 || threads == 4) {
                    methods.push(Method::NormalPool);
                }
                specs.push(Spec {
                    group: "pool-ops",
                    size: hd,
                    threads,
                    per_thread,
                    methods,
                });
            }
        }
    }
    if parts.contains(&Part::Sizes) {
        for (size, _) in SIZES {
            specs.push(Spec {
                group: "sizes",
                size,
                threads: 1,
                per_thread: false,
                methods: vec![Method::RealtimePool, Method::FreeList],
            });
        }
    }
    let mut cases: Vec<Vec<Cases>> = specs
        .iter()
        .map(|s| {
            s.methods
                .iter()
                .map(|&m| Cases::new(s, m, s.threads > cpus))
                .collect()
        })
        .collect();
    for rep in 0..ctx.reps {
        ctx.say(format!(
            "pool operations, repetition {}/{}: {} cases",
            rep + 1,
            ctx.reps,
            specs.len()
        ));
        let order = measure::interleaved(rep, specs.len());
        for i in order {
            // Fewer operations per thread as threads grow: the same work per case.
            let n = ctx.count(200_000 / specs[i].threads.min(4), 1_000);
            let runs =
                primitives::run(&specs[i], &ctx.alloc, &ctx.sources, n, ctx.timer, rep == 0)?;
            for (c, run) in cases[i].iter_mut().zip(runs) {
                c.add(run);
            }
        }
    }
    for c in cases.into_iter().flatten() {
        report.cases.extend(c.finish());
    }
    primitive_ratios(report, thread_counts);
    Ok(())
}

/// Per-repetition ratio of a statistic of two cases (the p99 where both have one in every
/// repetition, else the statistic asked for as fallback).
pub(crate) fn ratio_of(
    group: &str,
    name: String,
    a: &Case,
    b: &Case,
    stat: Stat,
    fallback: Stat,
) -> Ratio {
    let pick = |s: Stat| -> Option<Vec<f64>> {
        a.runs
            .iter()
            .zip(&b.runs)
            .map(|(x, y)| Some(x.get(s)? / y.get(s)?))
            .collect()
    };
    let (label, values) = match pick(stat) {
        Some(v) => (stat.label().to_owned(), v),
        None => {
            let n = a.runs.iter().chain(&b.runs).map(|s| s.n).min().unwrap_or(0);
            (
                format!(
                    "{} (n = {n}: too few samples for {})",
                    fallback.label(),
                    stat.label()
                ),
                pick(fallback).unwrap_or_default(),
            )
        }
    };
    Ratio::new(group, name, label, values)
}

/// The one-thread, shared-pool round trip of `method` at `size` (the "sizes" group), which the
/// allocation and size ratios divide by.
pub(crate) fn size_round_trip<'a>(cases: &'a [Case], method: &str, size: u64) -> Option<&'a Case> {
    find_case(cases, "sizes", method, "round trip", size, 1, "shared pool")
}

fn primitive_ratios(report: &mut Report, thread_counts: &[usize]) {
    use primitives::Method;
    let hd = hd_nv12().size;
    let rt = Method::RealtimePool.label();
    let normal = Method::NormalPool.label();
    let floor = Method::FreeList.label();
    let mut ratios = Vec::new();
    let mut targets = Vec::new();
    for &threads in thread_counts {
        for layout in ["shared pool", "pool per thread"] {
            if threads == 1 && layout == "pool per thread" {
                continue;
            }
            for op in ["acquire", "release", "round trip"] {
                let (Some(a), Some(b)) = (
                    find_case(&report.cases, "pool-ops", rt, op, hd, threads, layout),
                    find_case(&report.cases, "pool-ops", floor, op, hd, threads, layout),
                ) else {
                    continue;
                };
                let mut r = ratio_of(
                    "pool-ops",
                    format!("{threads} thread(s), {layout}: realtime pool {op} / free list {op}"),
                    a,
                    b,
                    Stat::P99,
                    Stat::Max,
                );
                if op == "round trip" && (threads == 1 || threads == 4) {
                    r = r.with_target(Goal::AtMost(1.5));
                    targets.push(Target::of_ratio(
                        &format!(
                            "heapcore pool round trip p99 / free-list floor, {threads} thread(s), {layout}"
                        ),
                        &r,
                    ));
                }
                ratios.push(r);
                let p50 = ratio_of(
                    "pool-ops",
                    format!("{threads} thread(s), {layout}: realtime pool {op} / free list {op}"),
                    a,
                    b,
                    Stat::P50,
                    Stat::P50,
                );
                ratios.push(p50);
            }
            if layout == "shared pool" {
                if let (Some(a), Some(b)) = (
                    find_case(
                        &report.cases,
                        "pool-ops",
                        rt,
                        "round trip",
                        hd,
                        threads,
                        layout,
                    ),
                    find_case(
                        &report.cases,
                        "pool-ops",
                        normal,
                        "round trip",
                        hd,
                        threads,
                        layout,
                    ),
                ) {
                    ratios.push(ratio_of(
                        "pool-ops",
                        format!(
                            "{threads} thread(s): realtime pool round trip / normal pool (same prewarm)"
                        ),
                        a,
                        b,
                        Stat::P99,
                        Stat::Max,
                    ));
                }
            }
        }
        // Scaling efficiency: aggregate round trips per second against N times one thread's.
    }
    for (size, label) in SIZES {
        if let (Some(a), Some(b)) = (
            size_round_trip(&report.cases, rt, size),
            size_round_trip(&report.cases, floor, size),
        ) {
            ratios.push(ratio_of(
                "sizes",
                format!("{label}: realtime pool round trip / free list round trip"),
                a,
                b,
                Stat::P99,
                Stat::Max,
            ));
        }
    }
    // Kernel entries on the hot path: one thread, no contention, nothing missing.
    for method in [rt, normal, floor] {
        let Some(c) = find_case(
            &report.cases,
            "pool-ops",
            method,
            "acquire",
            hd,
            1,
            "shared pool",
        ) else {
            continue;
        };
        let Some(k) = c.kernel else { continue };
        let name = format!("hot-path acquire: system calls and page faults per acquire, {method}");
        let t = kernel_target(&name, &k);
        if method != floor {
            targets.push(t);
        } else {
            report.notes.push(format!(
                "{name}: {} system calls, {} page faults per acquire (the floor, for comparison)",
                k.syscalls
                    .map_or("not counted".into(), |s| format!("{s:.4}")),
                k.page_faults
            ));
        }
    }
    report.ratios.extend(ratios);
    report.targets.extend(targets);
}

/// "0 system calls and 0 page faults per acquire", judged on counted entries.
pub(crate) fn kernel_target(name: &str, k: &PerOp) -> Target {
    let (met, reason) = match k.syscalls {
        None => (
            None,
            format!(
                "system calls could not be counted here: {}",
                counters::syscalls_uncounted()
                    .unwrap_or_else(|| "perf_event_open failed on the measuring thread".into())
            ),
        ),
        Some(s) => (
            Some(s == 0.0 && k.page_faults == 0.0),
            format!(
                "{s} system calls and {} page faults per acquire over {} acquires",
                k.page_faults, k.ops
            ),
        ),
    };
    Target {
        name: name.to_owned(),
        value: k.syscalls.map(|s| s + k.page_faults),
        ci_low: None,
        ci_high: None,
        target: "= 0".into(),
        met,
        verdict: met.map(|m| if m { Verdict::Met } else { Verdict::Missed }),
        reason,
    }
}
