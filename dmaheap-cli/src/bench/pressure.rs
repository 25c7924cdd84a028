//! Realtime pools under real memory pressure, attached to a registry that watches it
//! (`PoolRegistry::watch_pressure`, as products use them) next to a normal and a background
//! pool with cached buffers for it to trim. Calm and pressure runs alternate (calm, pressure,
//! pressure, calm, ...), and every run records what the pressure was: the PSI stall and the
//! /proc/vmstat changes over it, the highest level the registry told its pools, the buffers
//! they trimmed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use heapcore::pressure::{PressureConfig, PressureWatch};
use heapcore::{Policy, Pool, PoolConfig, PoolRegistry, PressureLevel, QosClass};

use super::hog::{Hog, HogKind};
use super::paced::{PacedCase, PoolFrames, produce};
use super::primitives::{FreeList, HeapPool};
use super::{Ctx, hd_nv12};
use dmaheap_benchkit::measure::{Goal, Recycler, Stat, Summary, TimerCost, on_pinned_threads};
use dmaheap_benchkit::schema::{Case, PressureEvidence, PressureRuns, Ratio, Report, Target};

fn psi_totals(path: &std::path::Path) -> (Option<u64>, Option<u64>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let total = |kind: &str| {
        text.lines()
            .find(|l| l.starts_with(kind))?
            .split_whitespace()
            .find_map(|w| w.strip_prefix("total="))?
            .parse()
            .ok()
    };
    (total("some"), total("full"))
}

/// The counters a run records. A file refault is a PSI stall only when the kernel restores the
/// page to its workingset (`workingset_restore_file`): a refault loop longer than what the
/// kernel still calls recent refaults without stalling.
const VMSTAT_KEYS: [&str; 16] = [
    "pgscan_kswapd",
    "pgscan_direct",
    "pgsteal_kswapd",
    "pgsteal_direct",
    "allocstall_normal",
    "allocstall_movable",
    "pswpin",
    "pswpout",
    "workingset_refault_anon",
    "workingset_refault_file",
    "workingset_activate_file",
    "workingset_restore_file",
    "pgmajfault",
    "pgpgin",
    "pgpgout",
    "compact_stall",
];

fn vmstat() -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(k, _)| VMSTAT_KEYS.contains(k))
        .filter_map(|(k, v)| Some((k.to_owned(), v.trim().parse().ok()?)))
        .collect()
}

/// Watches one case: PSI, vmstat, the registry's level and its pools' trims.
struct Watch<'a> {
    registry: &'a PoolRegistry,
    psi: &'a std::path::Path,
    start: Instant,
    psi0: (Option<u64>, Option<u64>),
    vm0: BTreeMap<String, u64>,
    trims0: u64,
    max_level: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

fn trims(registry: &PoolRegistry) -> u64 {
    registry.stats().pools.iter().map(|p| p.trims).sum()
}

impl<'a> Watch<'a> {
    fn start(registry: &'a PoolRegistry, psi: &'a std::path::Path) -> Self {
        let max_level = Arc::new(AtomicU8::new(registry.pressure() as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (registry, max_level, stop) = (registry.clone(), max_level.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    max_level.fetch_max(registry.pressure() as u8, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Self {
            registry,
            psi,
            start: Instant::now(),
            psi0: psi_totals(psi),
            vm0: vmstat(),
            trims0: trims(registry),
            max_level,
            stop,
            sampler: Some(sampler),
        }
    }

    fn finish(mut self) -> PressureEvidence {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
        let (some, full) = psi_totals(self.psi);
        let vm1 = vmstat();
        let level = match self.max_level.load(Ordering::Relaxed) {
            0 => PressureLevel::Normal,
            1 => PressureLevel::Elevated,
            _ => PressureLevel::Critical,
        };
        PressureEvidence {
            seconds: self.start.elapsed().as_secs_f64(),
            psi_some_us: some.zip(self.psi0.0).map(|(b, a)| b.saturating_sub(a)),
            psi_full_us: full.zip(self.psi0.1).map(|(b, a)| b.saturating_sub(a)),
            vmstat: vm1
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(*self.vm0.get(k).unwrap_or(&0))))
                .filter(|(_, d)| *d > 0)
                .collect(),
            level_max: format!("{level:?}").to_lowercase(),
            trims: trims(self.registry).saturating_sub(self.trims0),
        }
    }
}

/// Round trips in bursts of 500 with a 5 ms pause between them, so that a case spans enough
/// wall time to sit inside the pressure (a tight loop would be over in milliseconds); the
/// pool and the free list (the control: what pressure does to any code on this CPU) take
/// turns, burst by burst.
fn bursts<A: Recycler, B: Recycler>(
    a: &A,
    b: &B,
    n: usize,
    timer: &TimerCost,
    barrier: &Barrier,
) -> (Vec<u64>, Vec<u64>) {
    for _ in 0..dmaheap_benchkit::measure::WARMUP_OPS {
        a.release(std::hint::black_box(a.acquire()));
        b.release(std::hint::black_box(b.acquire()));
    }
    let (mut out_a, mut out_b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    barrier.wait();
    let mut turn = 0usize;
    while out_a.len() < n || out_b.len() < n {
        // Every thread bursts on the same method at once: left to drift apart over the 5 ms
        // sleeps, the contention a burst met depended on where the other threads' bursts fell.
        let burst = |out: &mut Vec<u64>, r: &dyn Fn()| {
            barrier.wait();
            for _ in 0..500.min(n - out.len()) {
                let t0 = Instant::now();
                r();
                out.push(timer.net(t0.elapsed()));
            }
        };
        let do_a = || a.release(std::hint::black_box(a.acquire()));
        let do_b = || b.release(std::hint::black_box(b.acquire()));
        if turn % 2 == 0 {
            burst(&mut out_a, &do_a);
            burst(&mut out_b, &do_b);
        } else {
            burst(&mut out_b, &do_b);
            burst(&mut out_a, &do_a);
        }
        turn += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    (out_a, out_b)
}

/// Fills the ballast pools so that pressure has something to trim.
fn refill_ballast(pools: &[Pool]) {
    for p in pools {
        let held: Vec<_> = (0..6).filter_map(|_| p.try_acquire().ok()).collect();
        drop(held);
    }
}

/// "calm, pressure, pressure, calm, calm, pressure, ...": `reps` of each, each side as often
/// first as second.
fn run_order(reps: usize) -> Vec<bool> {
    (0..2 * reps).map(|i| matches!(i % 4, 1 | 2)).collect()
}

pub(super) fn run(ctx: &Ctx, kind: HogKind, report: &mut Report) -> Result<(), String> {
    let size = hd_nv12().size;
    let registry = PoolRegistry::new(Arc::clone(&ctx.alloc), Policy::builtin(), None);
    let config = PressureConfig::default();
    let psi_path = config.psi_path.clone();
    let watch = match registry.watch_pressure(config) {
        Ok(PressureWatch::PsiTriggers(p)) => format!("PSI triggers on {}", p.display()),
        Ok(PressureWatch::Timer { reason }) => format!("MemAvailable timer ({reason})"),
        Err(e) => format!("not watched: {e}"),
    };
    let ballast = [QosClass::Normal, QosClass::Background]
        .into_iter()
        .map(|qos| {
            registry
                .private_pool(
                    PoolConfig::new(format!("ballast-{qos}"), ctx.sources.clone(), size).qos(qos),
                )
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let n = ctx.count(20_000, 1_000);
    let frames = ctx.count(300, 100);
    let mut runs = PressureRuns {
        source: kind.describe().to_owned(),
        psi_path: psi_path.display().to_string(),
        watch,
        ..PressureRuns::default()
    };
    // Round trips at 1 and 4 threads, calm and under pressure; the pool and its control.
    let thread_counts = [1usize, 4];
    const METHODS: [&str; 2] = [
        "heapcore realtime pool (registry watching pressure)",
        "free list (Mutex<Vec>), the control",
    ];
    let mut cases: BTreeMap<(usize, bool, usize), (Case, Vec<u64>)> = BTreeMap::new();
    for &t in &thread_counts {
        for p in [false, true] {
            for (m, method) in METHODS.iter().enumerate() {
                let case = Case {
                    group: "pressure".into(),
                    method: (*method).into(),
                    op: if p {
                        "round trip, pressure"
                    } else {
                        "round trip, calm"
                    }
                    .into(),
                    size,
                    threads: t,
                    layout: "shared pool".into(),
                    runs: Vec::new(),
                    pooled: Summary::default(),
                    kernel: None,
                    ops_per_sec: Vec::new(),
                    ops_per_sample: Vec::new(),
                    oversubscribed: t > dmaheap_benchkit::measure::allowed_cpus().len(),
                    note: String::new(),
                };
                cases.insert((t, p, m), (case, Vec::new()));
            }
        }
    }
    let mut paced = [
        PacedCase::new(
            "realtime pool (registry, prewarm 4), calm",
            60,
            size,
            frames,
            false,
        ),
        PacedCase::new(
            "realtime pool (registry, prewarm 4), pressure",
            60,
            size,
            frames,
            true,
        ),
    ];
    let mut hog: Option<Hog> = None;
    for (i, under) in run_order(ctx.pressure_reps).into_iter().enumerate() {
        if under && hog.is_none() {
            ctx.say(format!("memory pressure: starting the {kind:?} hog"));
            let h = Hog::start(kind).map_err(|e| e.to_string())?;
            ctx.say(format!(
                "  the hog holds {} MiB (took {:.1} s)",
                h.held >> 20,
                h.took.as_secs_f64()
            ));
            runs.source.clone_from(&h.how);
            hog = Some(h);
            // Give the watcher time to see it (PSI windows are 2 s).
            let deadline = Instant::now() + Duration::from_secs(10);
            while registry.pressure() == PressureLevel::Normal && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        } else if !under && hog.is_some() {
            hog = None;
            // Calm again: wait for the registry to say so (or 20 s).
            let deadline = Instant::now() + Duration::from_secs(20);
            while registry.pressure() != PressureLevel::Normal && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let label = if under { "pressure" } else { "calm" };
        runs.order.push(label.into());
        ctx.say(format!("pressure run {}: {label}", i + 1));
        for &t in &thread_counts {
            let pool = registry
                .private_pool(
                    PoolConfig::new("bench-pressure", ctx.sources.clone(), size)
                        .qos(QosClass::Realtime)
                        .min_buffers(t + 1),
                )
                .map_err(|e| e.to_string())?;
            let r = Arc::new((
                HeapPool(pool),
                FreeList::new(&ctx.alloc, &ctx.sources, size, t + 1)?,
            ));
            let timer = ctx.timer;
            let w = Watch::start(&registry, &psi_path);
            // Cached buffers for the registry to trim (outside the timed loops).
            refill_ballast(&ballast);
            let (mut pool_samples, mut floor_samples) = (Vec::new(), Vec::new());
            for (a, b) in
                on_pinned_threads(t, move |_, barrier| bursts(&r.0, &r.1, n, &timer, barrier))
            {
                pool_samples.extend(a);
                floor_samples.extend(b);
            }
            let evidence = w.finish();
            for (m, samples) in [pool_samples, floor_samples].into_iter().enumerate() {
                let (case, pooled) = cases.get_mut(&(t, under, m)).expect("made above");
                if m == 0 {
                    runs.evidence.push((case.key(), evidence.clone()));
                }
                case.runs.push(Summary::of(samples.clone()));
                pooled.extend(samples);
            }
        }
        let pool = registry
            .private_pool(
                PoolConfig::new("bench-pressure-paced", ctx.sources.clone(), size)
                    .qos(QosClass::Realtime)
                    .min_buffers(4),
            )
            .map_err(|e| e.to_string())?;
        let w = Watch::start(&registry, &psi_path);
        refill_ballast(&ballast);
        let run = produce(ctx, &PoolFrames(pool), frames, 60, 0x5EED + i as u64)?;
        runs.evidence.push((
            format!("paced|{}", paced[usize::from(under)].entry.variant),
            w.finish(),
        ));
        paced[usize::from(under)].add(run);
    }
    drop(hog);
    let mut finished = Vec::new();
    for ((t, _, _), (mut case, pooled)) in cases {
        case.pooled = Summary::of(pooled);
        finished.push((t, case));
    }
    for &t in &thread_counts {
        for (m, method) in METHODS.iter().enumerate() {
            let get = |p: bool| {
                finished
                    .iter()
                    .find(|(tt, c)| {
                        *tt == t
                            && c.method == *method
                            && c.op.ends_with(if p { "pressure" } else { "calm" })
                    })
                    .map(|(_, c)| c)
            };
            let (Some(calm), Some(press)) = (get(false), get(true)) else {
                continue;
            };
            let what = if m == 0 {
                "realtime pool"
            } else {
                "free list (control)"
            };
            let mut r = super::ratio_of(
                "pressure",
                format!("{t} thread(s): {what} round trip under pressure / calm"),
                press,
                calm,
                Stat::P99,
                Stat::Max,
            );
            let pick =
                |s: Stat, c: &Case| c.pooled.get(s).map_or("-".into(), |v| format!("{v:.0} ns"));
            let note = format!(
                "pooled over runs: p99.9 {} calm, {} pressure; max {} calm, {} pressure",
                pick(Stat::P999, calm),
                pick(Stat::P999, press),
                pick(Stat::Max, calm),
                pick(Stat::Max, press)
            );
            r = r.with_note(note);
            if m == 0 {
                r = r.with_target(Goal::AtMost(1.5));
                report.targets.push(Target::of_ratio(
                    &format!("{PRESSURE_TARGET}, {t} thread(s), pools attached"),
                    &r,
                ));
            }
            report.ratios.push(r);
            for stat in [Stat::P999, Stat::Max] {
                report.ratios.push(super::ratio_of(
                    "pressure",
                    format!("{t} thread(s): {what} round trip under pressure / calm"),
                    press,
                    calm,
                    stat,
                    stat,
                ));
            }
        }
    }
    let [calm, press] = paced.map(PacedCase::finish);
    report.ratios.push(Ratio::new(
        "pressure",
        "60 fps: realtime pool frame overhead under pressure / calm".into(),
        "p50".into(),
        press
            .overhead
            .iter()
            .zip(&calm.overhead)
            .map(|(p, c)| p.p50_ns as f64 / c.p50_ns.max(1) as f64)
            .collect(),
    ));
    report.paced.extend([calm, press]);
    report.cases.extend(finished.into_iter().map(|(_, c)| c));
    // A pressure run counts only if the pressure was there: say how many were.
    let (stalled, total) = stalled_runs(&runs);
    report.notes.push(format!(
        "pressure runs with PSI stall during the timed case: {stalled} of {total}"
    ));
    report.pressure = Some(runs);
    judge_only_under_pressure(report);
    Ok(())
}

/// The names of the targets judged from the pressure runs begin so.
const PRESSURE_TARGET: &str = "realtime pool p99 under pressure / calm";

/// Of the timed cases run under pressure, how many PSI saw a memory stall in, and how many
/// there were.
fn stalled_runs(runs: &PressureRuns) -> (usize, usize) {
    let under: Vec<&PressureEvidence> = runs
        .evidence
        .iter()
        .filter(|(key, _)| key.contains(", pressure"))
        .map(|(_, e)| e)
        .collect();
    let stalled = under
        .iter()
        .filter(|e| e.psi_some_us.unwrap_or(0) > 0)
        .count();
    (stalled, under.len())
}

/// A pressure target is judged only if every run meant to be under pressure was: one in
/// which PSI saw no memory stall measured a calm machine twice, and a ratio of two calm runs
/// says nothing about pressure. Then the targets are left unjudged, with the count. Applied
/// when measuring and again to every archive `--report` reads.
pub(super) fn judge_only_under_pressure(report: &mut Report) {
    let Some(runs) = &report.pressure else {
        return;
    };
    let (stalled, total) = stalled_runs(runs);
    if total > 0 && stalled == total {
        return;
    }
    let why = format!(
        "not judged: PSI saw a memory stall in {stalled} of the {total} runs under pressure \
         (the pressure: {}), so they did not measure a machine under pressure",
        runs.source
    );
    for t in report
        .targets
        .iter_mut()
        .filter(|t| t.name.starts_with(PRESSURE_TARGET))
    {
        t.met = None;
        t.verdict = None;
        t.reason = why.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmaheap_benchkit::measure::Verdict;

    /// A report whose pressure runs saw these PSI stalls (µs), each run a calm one first.
    fn report(stalls: &[u64]) -> Report {
        let mut runs = PressureRuns {
            source: "a hog".into(),
            ..PressureRuns::default()
        };
        for &stall in stalls {
            for (label, psi) in [("calm", 0), ("pressure", stall)] {
                runs.order.push(label.into());
                let evidence = PressureEvidence {
                    psi_some_us: Some(psi),
                    ..PressureEvidence::default()
                };
                runs.evidence.push((
                    format!("pressure|pool|round trip, {label}|3110400|1|shared pool"),
                    evidence.clone(),
                ));
                runs.evidence
                    .push((format!("paced|realtime pool, {label}"), evidence));
            }
        }
        Report {
            pressure: Some(runs),
            targets: vec![Target {
                name: format!("{PRESSURE_TARGET}, 1 thread(s), pools attached"),
                value: Some(1.0),
                ci_low: Some(0.9),
                ci_high: Some(1.1),
                target: "<= 1.5".into(),
                met: Some(true),
                verdict: Some(Verdict::Met),
                reason: String::new(),
            }],
            ..Report::default()
        }
    }

    #[test]
    fn a_pressure_target_is_judged_only_when_every_pressure_run_stalled() {
        let mut under = report(&[1500, 900]);
        judge_only_under_pressure(&mut under);
        assert_eq!(under.targets[0].met, Some(true));

        let mut calm_twice = report(&[1500, 0]);
        judge_only_under_pressure(&mut calm_twice);
        let t = &calm_twice.targets[0];
        assert_eq!((t.met, t.verdict), (None, None), "{t:?}");
        assert!(
            t.reason.contains("in 2 of the 4 runs under pressure"),
            "{}",
            t.reason
        );
    }
}
