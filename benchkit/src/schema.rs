//! The JSON both benchmark binaries print (`dmaheap bench --json`, `dmaheap-bench-peers`), what
//! `docs/bench/*.json` archives and what `dmaheap bench --report` turns into
//! docs/performance.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::counters::PerOp;
use crate::measure::{Estimate, Goal, Stat, Summary, Verdict};

/// Bumped when a field changes meaning.
pub const SCHEMA: &str = "dmaheap-bench/2";

/// One measured thing, every repetition of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Case {
    /// "pool-ops", "sizes", "scaling", "alloc", "gst-pools", ...
    pub group: String,
    /// What is measured ("heapcore realtime pool", "free list (Mutex<Vec>)", ...).
    pub method: String,
    /// The timed operation ("acquire", "release", "round trip", "alloc + touch", ...).
    pub op: String,
    /// Bytes per buffer.
    pub size: u64,
    /// Threads running the operation at once.
    pub threads: usize,
    /// "shared pool", "pool per thread", or "" where it does not apply.
    #[serde(default)]
    pub layout: String,
    /// One summary per repetition, in run order.
    pub runs: Vec<Summary>,
    /// All repetitions' samples together.
    pub pooled: Summary,
    /// Kernel entries per operation, where counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PerOp>,
    /// Aggregate operations per second (all threads), per repetition, where measured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops_per_sec: Vec<f64>,
    /// Operations each sample timed in a row, per repetition, where they were timed several
    /// at a time (operations short against the clock: see `TimerCost::ops_per_sample`); the
    /// summaries are then per operation, of samples that each average this many.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops_per_sample: Vec<usize>,
    /// More than one thread per CPU.
    #[serde(default)]
    pub oversubscribed: bool,
    /// A remark on the case; left out when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Case {
    /// The key ratios use to find a case.
    pub fn key(&self) -> String {
        let Self {
            group,
            method,
            op,
            size,
            threads,
            layout,
            ..
        } = self;
        format!("{group}|{method}|{op}|{size}|{threads}|{layout}")
    }

    /// A statistic over the repetitions (`None` if a repetition lacks it, e.g. a p99 of too
    /// few samples).
    pub fn estimate(&self, stat: Stat) -> Option<Estimate> {
        let values: Option<Vec<f64>> = self.runs.iter().map(|s| s.get(stat)).collect();
        Estimate::of(&values?)
    }
}

/// The case of `cases` with these identifying fields, if the run measured it.
pub fn find_case<'a>(
    cases: &'a [Case],
    group: &str,
    method: &str,
    op: &str,
    size: u64,
    threads: usize,
    layout: &str,
) -> Option<&'a Case> {
    cases.iter().find(|c| {
        (c.group.as_str(), c.method.as_str(), c.op.as_str()) == (group, method, op)
            && (c.size, c.threads, c.layout.as_str()) == (size, threads, layout)
    })
}

/// A same-run ratio, repetition by repetition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    /// The group it belongs to, as a case's ("pool-ops", "paced", "pipelines", ...).
    pub group: String,
    /// What is divided by what ("dmaheap-screencast / stock producer: consumer CPU per frame").
    pub name: String,
    /// The statistic compared ("p99", "p50", "max of 20", "frames/s", ...).
    pub stat: String,
    /// Per repetition, in run order.
    #[serde(deserialize_with = "ratios_or_nan")]
    pub per_rep: Vec<f64>,
    /// `None` when a side was zero or missing.
    pub estimate: Option<Estimate>,
    /// The goal the estimate is judged against, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Goal>,
    /// Whether the whole confidence interval meets the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
    /// A caveat, or why there is no estimate; left out when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// Per-repetition ratios as JSON holds them: one over a side that was 0 (a time at or under
/// the timer's own cost, once that is subtracted) is infinite, which JSON writes as null. It
/// is read back as not-a-number, which has no estimate either, as when the report was made.
fn ratios_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let values: Vec<Option<f64>> = Vec::deserialize(d)?;
    Ok(values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

impl Ratio {
    /// A ratio from its per-repetition values, with their estimate and no target.
    pub fn new(group: &str, name: String, stat: String, per_rep: Vec<f64>) -> Self {
        Self {
            group: group.to_owned(),
            name,
            stat,
            estimate: Estimate::of(&per_rep),
            per_rep,
            target: None,
            met: None,
            note: String::new(),
        }
    }

    /// Sets the goal and judges the estimate against it (not met without an estimate).
    pub fn with_target(mut self, goal: Goal) -> Self {
        self.met = Some(self.estimate.as_ref().is_some_and(|e| goal.met(e)));
        self.target = Some(goal);
        self
    }

    /// Met, missed or undecided, where the ratio has a target and an estimate.
    pub fn verdict(&self) -> Option<Verdict> {
        Some(self.target?.verdict(self.estimate.as_ref()?))
    }

    /// Sets the note.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// A target of issue 13, as the bench judged it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// The target in words ("realtime pool p99 under pressure / calm, 4 thread(s), ...").
    pub name: String,
    /// The measured value (a ratio's estimate, a count per operation).
    pub value: Option<f64>,
    /// Lower end of the value's 95% confidence interval, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_low: Option<f64>,
    /// Upper end of the value's 95% confidence interval, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_high: Option<f64>,
    /// The goal, as text ("<= 1.2", "= 0").
    pub target: String,
    /// `None`: could not be judged here (the reason says why).
    pub met: Option<bool>,
    /// Met, missed, or undecided (the interval spans the goal); left out where not judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// How it was judged, or why it could not be; left out when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Target {
    /// The target that ratio `r` stands for, named `name`, judged as the ratio was.
    pub fn of_ratio(name: &str, r: &Ratio) -> Self {
        Self {
            name: name.to_owned(),
            value: r.estimate.map(|e| e.value),
            ci_low: r.estimate.map(|e| e.ci_low),
            ci_high: r.estimate.map(|e| e.ci_high),
            target: r.target.map(|g| g.to_string()).unwrap_or_default(),
            met: r.met,
            verdict: r.verdict(),
            reason: if r.estimate.is_none() {
                format!("no value: {}", r.note)
            } else {
                r.note.clone()
            },
        }
    }
}

/// One pipeline (or PipeWire link) run several times.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Throughput {
    /// "pipelines" or "pipewire".
    pub group: String,
    /// The case's name.
    pub name: String,
    /// The pipeline description or the command lines.
    pub description: String,
    /// Frames each repetition runs for.
    pub frames: u64,
    /// Per repetition.
    pub fps: Vec<f64>,
    /// CPU time (user + system) per frame, per repetition, in nanoseconds: the whole process
    /// for pipelines, each side for PipeWire.
    pub cpu_ns_per_frame: Vec<f64>,
    /// The PipeWire consumer's CPU time per frame, per repetition, in ns (the producer's: above).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumer_cpu_ns_per_frame: Vec<f64>,
    /// Page faults (minor + major) of the process per frame, per repetition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults_per_frame: Vec<f64>,
    /// Time from start to the first frame at the sink, per repetition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first_frame_ns: Vec<f64>,
    /// What shows the case did what it says (counters of the element, caps, exporter).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub verified: String,
    /// Why it did not run, if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// A frame-paced run: one producer at a fixed rate writing whole frames.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Paced {
    /// The frame source ("realtime pool (registry, prewarm 4)", "direct allocation per frame").
    pub variant: String,
    /// Frames per second the producer is paced at.
    pub fps: u32,
    /// Bytes per frame buffer.
    pub size: u64,
    /// Frames produced per repetition.
    pub frames_per_rep: usize,
    /// Under memory pressure (see `pressure`).
    #[serde(default)]
    pub pressure: bool,
    /// Acquire time per frame (ns), one summary per repetition.
    pub acquire: Vec<Summary>,
    /// Time writing the whole frame with the CPU, sync excluded (ns), one summary per repetition.
    pub write: Vec<Summary>,
    /// Time releasing the frames the consumer let go, per frame (ns), one summary per repetition.
    pub release: Vec<Summary>,
    /// acquire + DMA_BUF_IOCTL_SYNC start and end + release: what the pool costs a frame.
    pub overhead: Vec<Summary>,
    /// The frame overhead of all repetitions' frames together (ns).
    pub overhead_pooled: Summary,
    /// Frames that ended after their deadline, per repetition.
    pub missed: Vec<u64>,
    /// Latest end against the schedule, per repetition (ns; 0 if never late).
    pub worst_lateness_ns: Vec<u64>,
    /// Bytes held at most (pool or free list), per repetition.
    pub bytes_held_max: Vec<u64>,
    /// Frames held at most by the consumer plus the one being written.
    pub peak_outstanding: usize,
    /// Buffers allocated inside an acquire, per repetition (one a frame for direct allocation).
    pub hot_path_allocs: Vec<u64>,
    /// Buffers allocated by the pool's background refill, per repetition.
    pub refills: Vec<u64>,
}

/// PSI and /proc/vmstat over one timed case.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PressureEvidence {
    /// Wall time of the case, in seconds.
    pub seconds: f64,
    /// `some` stall (µs) during the case, from the PSI file watched.
    pub psi_some_us: Option<u64>,
    /// `full` stall (µs) during the case, from the PSI file watched.
    pub psi_full_us: Option<u64>,
    /// Counter changes: pgscan_*, pgsteal_*, allocstall_*, pswpin, pswpout,
    /// workingset_refault_*, pgmajfault.
    pub vmstat: BTreeMap<String, u64>,
    /// The highest level the registry told its pools during the case.
    pub level_max: String,
    /// Buffers the registry's pools trimmed during the case (its ballast, a normal and a
    /// background pool with six cached buffers each, is refilled at the start of every case).
    pub trims: u64,
}

/// Pressure runs: calm and under pressure, interleaved, with the evidence per run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PressureRuns {
    /// What made the pressure.
    pub source: String,
    /// The PSI file read for the evidence and given to the registry's watch.
    pub psi_path: String,
    /// How the registry watched pressure ("PSI triggers on ...", "MemAvailable timer (...)", ...).
    pub watch: String,
    /// Run order, e.g. "calm, pressure, pressure, calm, ...".
    pub order: Vec<String>,
    /// (case key, evidence) per run.
    pub evidence: Vec<(String, PressureEvidence)>,
}

/// Time to first frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirstFrame {
    /// The frame source ("realtime pool, prewarm 4", "direct allocation").
    pub what: String,
    /// Bytes per buffer.
    pub size: u64,
    /// Buffers prewarmed before the first frame (0 for direct allocation).
    pub prewarm: usize,
    /// Per repetition, ns.
    pub ns: Vec<f64>,
    /// Bytes held right after the first frame.
    pub bytes_held: u64,
}

/// Memory held against memory needed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overhead {
    /// The paced variant and its rate ("free list (5 buffers, the floor) at 60 fps").
    pub scenario: String,
    /// Bytes per buffer (as requested, before page rounding).
    pub size: u64,
    /// Bytes held at most, over all repetitions.
    pub bytes_held_max: u64,
    /// Bytes the frames in flight need at most: peak outstanding frames × page-rounded size.
    pub bytes_needed: u64,
    /// `bytes_held_max` / `bytes_needed`.
    pub factor: f64,
    /// How the factor is computed; left out when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// Where and how the run happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Environment {
    /// The run's name (`--label`).
    pub label: String,
    /// The day of the run (UTC), YYYY-MM-DD.
    pub date: String,
    /// The commit measured (`--commit`, `DMAHEAP_BENCH_COMMIT` or git, "-dirty" if modified).
    pub commit: String,
    /// The kernel release.
    pub kernel: String,
    /// `PRETTY_NAME` of /etc/os-release.
    pub os: String,
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// Processors listed in /proc/cpuinfo.
    pub cpus_online: usize,
    /// CPUs this process may run on (its affinity mask).
    pub cpus_allowed: usize,
    /// Hardware threads per core (`siblings` / `cpu cores`).
    pub threads_per_core: usize,
    /// "bare metal", "VM (hypervisor flag)", "qemu TCG (emulated CPU)".
    pub machine: String,
    /// Whether it ran in the project's test VM (`DMAHEAP_VM` set).
    pub in_test_vm: bool,
    /// The kernel's current clock source.
    pub clocksource: String,
    /// CPU 0's cpufreq governor, or "none (no cpufreq)".
    pub governor: String,
    /// `MemTotal`, in bytes.
    pub memory_total: u64,
    /// `SwapTotal`, in bytes.
    pub swap_total: u64,
    /// Whether /proc/pressure/memory exists.
    pub psi: bool,
    /// The DMA-BUF heaps found in /dev/dma_heap.
    pub heaps: Vec<String>,
    /// Whether /dev/udmabuf exists.
    pub udmabuf: bool,
    /// The source that served the benchmark's buffers.
    pub buffers_from: String,
    /// The GStreamer version (`gst-inspect-1.0 --version`), empty if not found.
    pub gstreamer: String,
    /// The PipeWire library version (`pipewire --version`), empty if not found.
    pub pipewire: String,
    /// What reading the clock cost, as calibrated for the run.
    pub timer: Option<crate::measure::TimerCost>,
    /// How kernel entries were counted ([`crate::counters::method`]).
    pub counting: String,
    /// How the threads were pinned, started and warmed up.
    pub pinning: String,
    /// Repetitions of every case.
    pub reps: usize,
    /// The factor on every sample count (`--scale`).
    pub scale: f64,
    /// The command line of the run.
    pub command: String,
}

/// How a clocksource that changed during the run is written into [`Environment::clocksource`].
const CLOCK_CHANGED: &str = "changed to";

impl Environment {
    /// Records that the clocksource was `now` at the end of the run, not what it was at the
    /// start: every reading after the change cost more than the timer cost subtracted.
    pub fn mark_clocksource_changed(&mut self, now: &str) {
        self.clocksource = format!(
            "{} ({CLOCK_CHANGED} {now} during the run)",
            self.clocksource
        );
    }

    /// Whether the clocksource changed during the run (its timings do not compare).
    pub fn clocksource_changed(&self) -> bool {
        self.clocksource.contains(CLOCK_CHANGED)
    }
}

/// What `dmaheap-bench-peers` reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeersReport {
    /// [`SCHEMA`] as the binary that wrote it knew it.
    pub schema: String,
    /// The version of the GStreamer library it ran with.
    pub gstreamer: String,
    /// The PipeWire library version (`pipewire --version`), empty if not found.
    pub pipewire: String,
    /// The GStreamer buffer-pool cases.
    pub cases: Vec<Case>,
    /// Same-run ratios of the cases and the throughput runs.
    pub ratios: Vec<Ratio>,
    /// The targets judged.
    pub targets: Vec<Target>,
    /// The pipelines and PipeWire runs.
    pub throughput: Vec<Throughput>,
    /// The peers measured (the plugin found), and the parts not measured and why.
    pub notes: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA`] as the binary that wrote it knew it.
    pub schema: String,
    /// Where and how it ran.
    pub env: Environment,
    /// The targets judged.
    pub targets: Vec<Target>,
    /// Same-run ratios.
    pub ratios: Vec<Ratio>,
    /// Every timed case.
    pub cases: Vec<Case>,
    /// The frame-paced runs.
    pub paced: Vec<Paced>,
    /// The runs under memory pressure, if they ran.
    pub pressure: Option<PressureRuns>,
    /// The time-to-first-frame runs.
    pub first_frame: Vec<FirstFrame>,
    /// Memory held against memory needed, per paced variant.
    pub overhead: Vec<Overhead>,
    /// The pipelines and PipeWire runs (from `dmaheap-bench-peers`).
    pub throughput: Vec<Throughput>,
    /// Remarks on the run: parts not run and why, figures given only for comparison.
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clocksource_change_is_recorded_and_recognised() {
        let mut env = Environment {
            clocksource: "tsc".into(),
            ..Environment::default()
        };
        assert!(!env.clocksource_changed());
        env.mark_clocksource_changed("hpet");
        assert!(env.clocksource_changed(), "{}", env.clocksource);
        assert!(env.clocksource.starts_with("tsc") && env.clocksource.contains("hpet"));
    }

    #[test]
    fn a_ratio_over_a_zero_side_is_read_back() {
        let ratio = Ratio::new("g", "a / b".into(), "p50".into(), vec![1.0, f64::INFINITY]);
        assert!(ratio.estimate.is_none());
        let json = serde_json::to_string(&ratio).unwrap();
        assert!(json.contains("[1.0,null]"), "{json}");
        let back: Ratio = serde_json::from_str(&json).unwrap();
        assert_eq!(back.per_rep[0], 1.0);
        assert!(back.per_rep[1].is_nan());
        assert!(back.estimate.is_none());
    }
}
