//! `dmaheap bench`: pools against direct allocation, measured side by side in one run on
//! whatever heap this machine has, with the ratios the targets are stated in.

mod burst;
mod hog;
mod latency;
mod timeline;

use std::sync::Arc;

use heapcore::format::{FrameLayout, VideoFormat};
use heapcore::size::ByteSize;
use heapcore::{Allocator, Constraints, Policy, QosClass, Source, Usage, solve};
use serde::Serialize;

pub(crate) use hog::{HogArgs, hog};
use latency::{Limits, Method};

use crate::stats::ns;
use crate::table::Table;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PressureMode {
    /// Inside the test VM only (a memory hog on a shared machine hurts everyone else).
    Auto,
    On,
    Off,
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Where to allocate (heap names, `udmabuf`, `memfd`, in order, separated by commas or
    /// spaces; `linux,cma` stays one name); default: the policy's order for the animation
    /// usage.
    #[arg(long, default_value = "")]
    heap: String,
    /// Print JSON (one object per case) instead of tables.
    #[arg(long)]
    json: bool,
    /// Acquires per thread for the pool and recycle cases (1 to 1,000,000).
    #[arg(long, default_value_t = 20_000, value_parser = count(1_000_000))]
    iterations: usize,
    /// Upper bound of direct allocations per thread and case (1 to 1,000,000).
    #[arg(long, default_value_t = 500, value_parser = count(1_000_000))]
    direct_iterations: usize,
    /// Seconds a direct-allocation case may run (more than 0, at most 3600; at least 20
    /// samples are taken).
    #[arg(long, default_value_t = 2.0, value_parser = seconds, allow_negative_numbers = true)]
    direct_seconds: f64,
    /// Frames of the animation burst (1 to 1,000,000).
    #[arg(long, default_value_t = 600, value_parser = count(1_000_000))]
    frames: usize,
    /// Frame rate of the animation burst (1 to 1000).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1000))]
    fps: u32,
    /// Run the memory-pressure cases (a bounded memory hog).
    #[arg(long, value_enum, default_value = "auto")]
    pressure: PressureMode,
    /// Which parts to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "latency,burst,timeline"
    )]
    cases: Vec<Part>,
}

/// A count from 1 to `max`: samples are kept per iteration, so the count sizes memory.
fn count(max: u64) -> impl clap::builder::TypedValueParser<Value = usize> {
    use clap::builder::TypedValueParser;
    clap::value_parser!(u64)
        .range(1..=max)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// A duration in seconds: a finite number above 0, at most an hour.
fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
        return Err(format!(
            "{s} is not a duration: give seconds above 0 and at most 3600"
        ));
    }
    Ok(v)
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Latency,
    Burst,
    Timeline,
}

#[derive(Serialize)]
struct Case {
    case: String,
    frame: String,
    size: u64,
    method: Method,
    threads: usize,
    pressure: bool,
    samples: usize,
    p50_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    max_ns: u64,
    hot_path_allocs: u64,
}

#[derive(Serialize)]
struct Ratio {
    name: String,
    value: f64,
    target: Option<String>,
    met: Option<bool>,
}

#[derive(Serialize)]
struct Report {
    source: String,
    kernel: String,
    in_vm: bool,
    cases: Vec<Case>,
    ratios: Vec<Ratio>,
    bursts: Vec<burst::BurstResult>,
    timeline: Option<timeline::Timeline>,
}

fn frames() -> [(String, FrameLayout); 2] {
    let frame = |w, h| {
        let l = FrameLayout::packed(VideoFormat::Nv12, w, h).expect("valid frame");
        (format!("{w}x{h} NV12"), l)
    };
    [frame(1920, 1080), frame(3840, 2160)]
}

pub(crate) fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
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
    let in_vm = std::env::var_os("DMAHEAP_VM").is_some();
    let pressure = match args.pressure {
        PressureMode::On => true,
        PressureMode::Off => false,
        PressureMode::Auto => in_vm,
    };
    let kernel = heapcore::sysinfo::kernel_release();
    let say = |s: String| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    say(format!(
        "dmaheap bench: buffers from {served}, kernel {kernel}{}",
        if in_vm {
            " (test VM, emulated CPU)"
        } else {
            ""
        }
    ));
    let limits = Limits {
        recycle_iterations: args.iterations,
        direct_iterations: args.direct_iterations,
        direct_seconds: args.direct_seconds,
    };

    let mut cases = Vec::new();
    let phases: &[bool] = if pressure { &[false, true] } else { &[false] };
    let latency_phases: &[bool] = if args.cases.contains(&Part::Latency) {
        phases
    } else {
        &[]
    };
    for &under_pressure in latency_phases {
        let _hog = if under_pressure {
            say("under memory pressure: starting a bounded memory hog".into());
            Some(hog::Hog::start(96)?)
        } else {
            None
        };
        for (frame, layout) in frames() {
            for threads in [1, 4] {
                for method in Method::ALL {
                    say(format!(
                        "  {frame}, {threads} thread(s), {}{}",
                        method.label(),
                        if under_pressure { ", pressure" } else { "" }
                    ));
                    let m =
                        latency::measure(method, &alloc, &sources, layout.size, threads, limits)?;
                    cases.push(Case {
                        case: format!(
                            "{frame} / {} / {threads} thread(s){}",
                            method.label(),
                            if under_pressure { " / pressure" } else { "" }
                        ),
                        frame: frame.clone(),
                        size: layout.size,
                        method,
                        threads,
                        pressure: under_pressure,
                        samples: m.samples.len(),
                        p50_ns: m.quantile(0.5),
                        p99_ns: m.quantile(0.99),
                        p999_ns: m.quantile(0.999),
                        max_ns: *m.samples.last().unwrap_or(&0),
                        hot_path_allocs: m.hot_path_allocs,
                    });
                }
            }
        }
    }

    let (_, hd) = &frames()[0];
    let mut bursts = Vec::new();
    let burst_phases: &[bool] = if args.cases.contains(&Part::Burst) {
        phases
    } else {
        &[]
    };
    for &under_pressure in burst_phases {
        let _hog = under_pressure.then(|| hog::Hog::start(96)).transpose()?;
        for qos in [QosClass::Realtime, QosClass::Normal] {
            say(format!(
                "  animation burst: {} frames at {} fps, {qos} pool{}",
                args.frames,
                args.fps,
                if under_pressure { ", pressure" } else { "" }
            ));
            bursts.push(burst::run(
                &alloc,
                &sources,
                hd.size,
                args.frames,
                args.fps,
                qos,
                under_pressure,
            )?);
        }
    }
    let timeline = if args.cases.contains(&Part::Timeline) {
        say("  pool memory over time while pressure comes and goes".into());
        Some(timeline::run(&alloc, &sources, hd.size, pressure)?)
    } else {
        None
    };

    let ratios = ratios(&cases);
    let report = Report {
        source: served,
        kernel,
        in_vm,
        cases,
        ratios,
        bursts,
        timeline,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn find<'a>(
    cases: &'a [Case],
    frame: &str,
    method: Method,
    threads: usize,
    pressure: bool,
) -> Option<&'a Case> {
    cases.iter().find(|c| {
        c.frame == frame && c.method == method && c.threads == threads && c.pressure == pressure
    })
}

fn ratios(cases: &[Case]) -> Vec<Ratio> {
    let mut out = Vec::new();
    let mut push = |name: String, value: f64, target: Option<(&str, bool)>| {
        out.push(Ratio {
            name,
            value,
            target: target.map(|t| t.0.to_owned()),
            met: target.map(|t| t.1),
        })
    };
    let div = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    for (frame, _) in frames() {
        let is_4k = frame.starts_with("3840");
        for threads in [1, 4] {
            let (Some(pool), Some(direct), Some(ready), Some(recycle)) = (
                find(cases, &frame, Method::RealtimePool, threads, false),
                find(cases, &frame, Method::DirectAlloc, threads, false),
                find(cases, &frame, Method::DirectAllocReady, threads, false),
                find(cases, &frame, Method::FreeListRecycle, threads, false),
            ) else {
                continue;
            };
            // The target compares like with like: a pool hands out a buffer that is allocated,
            // mapped and backed by pages, so the direct path must make one too (a memfd's
            // ftruncate alone allocates nothing).
            let speedup = div(ready.p99_ns, pool.p99_ns);
            let target = (is_4k && threads == 1).then_some((">= 200", speedup >= 200.0));
            push(
                format!(
                    "{frame}, {threads} thread(s): direct ready buffer p99 / realtime pool p99"
                ),
                speedup,
                target,
            );
            push(
                format!(
                    "{frame}, {threads} thread(s): direct allocation (ioctl only) p99 / realtime pool p99"
                ),
                div(direct.p99_ns, pool.p99_ns),
                None,
            );
            push(
                format!(
                    "{frame}, {threads} thread(s): direct allocation (ioctl only) p50 / realtime pool p50"
                ),
                div(direct.p50_ns, pool.p50_ns),
                None,
            );
            push(
                format!("{frame}, {threads} thread(s): realtime pool p99 / free-list recycle p99"),
                div(pool.p99_ns, recycle.p99_ns),
                None,
            );
            if threads == 1 {
                let met = pool.p99_ns <= 2_000;
                push(
                    format!("{frame}, 1 thread: realtime pool p99 in µs"),
                    pool.p99_ns as f64 / 1e3,
                    Some(("<= 2", met)),
                );
            }
            if let (Some(pp), Some(dp)) = (
                find(cases, &frame, Method::RealtimePool, threads, true),
                find(cases, &frame, Method::DirectAlloc, threads, true),
            ) {
                let pool_ratio = div(pp.p99_ns, pool.p99_ns);
                push(
                    format!(
                        "{frame}, {threads} thread(s): realtime pool p99 under pressure / without"
                    ),
                    pool_ratio,
                    Some(("<= 1.5", pool_ratio <= 1.5)),
                );
                push(
                    format!(
                        "{frame}, {threads} thread(s): direct allocation p99 under pressure / without"
                    ),
                    div(dp.p99_ns, direct.p99_ns),
                    None,
                );
            }
        }
    }
    out
}

fn print_report(r: &Report) {
    println!(
        "Buffers from {} on kernel {}{}",
        r.source,
        r.kernel,
        if r.in_vm {
            " (test VM: the CPU is emulated, so absolute times are slow; ratios still compare like with like)"
        } else {
            ""
        }
    );
    println!();
    let mut t = Table::new(&[
        "CASE",
        "SAMPLES",
        "P50",
        "P99",
        "P99.9",
        "MAX",
        "HOT-PATH ALLOCS",
    ]);
    for c in &r.cases {
        t.row(vec![
            c.case.clone(),
            c.samples.to_string(),
            ns(c.p50_ns),
            ns(c.p99_ns),
            ns(c.p999_ns),
            ns(c.max_ns),
            c.hot_path_allocs.to_string(),
        ]);
    }
    t.print();
    println!();
    let mut t = Table::new(&["RATIO (same run)", "VALUE", "TARGET", "MET"]);
    for ratio in &r.ratios {
        t.row(vec![
            ratio.name.clone(),
            format!("{:.2}", ratio.value),
            ratio.target.clone().unwrap_or_default(),
            ratio.met.map_or(
                String::new(),
                |m| if m { "yes".into() } else { "NO".into() },
            ),
        ]);
    }
    t.print();
    println!();
    let mut t = Table::new(&[
        "ANIMATION BURST",
        "FRAMES",
        "FPS",
        "PRESSURE",
        "HOT-PATH ALLOCS",
        "REFILLS",
        "ACQUIRE P50",
        "P99",
        "MAX",
    ]);
    for b in &r.bursts {
        t.row(vec![
            b.pool.clone(),
            b.frames.to_string(),
            b.fps.to_string(),
            if b.pressure { "yes" } else { "no" }.into(),
            b.hot_path_allocs.to_string(),
            b.refills.to_string(),
            ns(b.acquire_p50_ns),
            ns(b.acquire_p99_ns),
            ns(b.acquire_max_ns),
        ]);
    }
    t.print();
    println!();
    let Some(tl) = &r.timeline else { return };
    println!(
        "Pool memory over time, pressure {}, global budget {} (highest total {}: {})",
        tl.pressure_mode,
        ByteSize(tl.budget),
        ByteSize(tl.max_total),
        if tl.max_total <= tl.budget {
            "within budget"
        } else {
            "OVER BUDGET"
        }
    );
    println!("(every 250 ms; rows shown when something changed, and every 2 s)");
    let mut t = Table::new(&[
        "T",
        "PRESSURE",
        "REALTIME",
        "(FREE)",
        "NORMAL",
        "BACKGROUND",
        "TOTAL",
    ]);
    let key = |s: &timeline::Sample| {
        (
            s.pressure.clone(),
            s.realtime_bytes,
            s.realtime_free,
            s.normal_bytes,
            s.background_bytes,
        )
    };
    let mut last = None;
    for s in &tl.samples {
        if last.as_ref() == Some(&key(s)) && s.t_ms % 2000 != 0 {
            continue;
        }
        last = Some(key(s));
        t.row(vec![
            format!("{:.2} s", s.t_ms as f64 / 1e3),
            s.pressure.clone(),
            ByteSize(s.realtime_bytes).to_string(),
            s.realtime_free.to_string(),
            ByteSize(s.normal_bytes).to_string(),
            ByteSize(s.background_bytes).to_string(),
            ByteSize(s.total_bytes).to_string(),
        ]);
    }
    t.print();
}
