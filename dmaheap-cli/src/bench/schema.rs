//! The JSON both benchmark binaries print (`dmaheap bench --json`, `dmaheap-bench-peers`), what
//! `docs/bench/*.json` archives and what `dmaheap bench --report` turns into
//! docs/performance.md. Shared with `dmaheap-bench-peers`, which includes this file.

// Each of the two binaries uses a different part.
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[path = "measure.rs"]
pub(crate) mod measure;

#[path = "counters.rs"]
pub(crate) mod counters;

use counters::PerOp;
use measure::{Estimate, Goal, Stat, Summary};

/// Bumped when a field changes meaning.
pub(crate) const SCHEMA: &str = "dmaheap-bench/2";

/// One measured thing, every repetition of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Case {
    /// "pool-ops", "sizes", "scaling", "alloc", "gst-pools", ...
    pub group: String,
    /// What is measured ("heapcore realtime pool", "free list (Mutex<Vec>)", ...).
    pub method: String,
    /// The timed operation ("acquire", "release", "round trip", "alloc + touch", ...).
    pub op: String,
    /// Bytes per buffer.
    pub size: u64,
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
    /// More than one thread per CPU.
    #[serde(default)]
    pub oversubscribed: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Case {
    /// The key ratios use to find a case.
    pub(crate) fn key(&self) -> String {
        case_key(
            &self.group,
            &self.method,
            &self.op,
            self.size,
            self.threads,
            &self.layout,
        )
    }

    /// A statistic over the repetitions (`None` if a repetition lacks it, e.g. a p99 of too
    /// few samples).
    pub(crate) fn estimate(&self, stat: Stat) -> Option<Estimate> {
        let values: Option<Vec<f64>> = self.runs.iter().map(|s| s.get(stat)).collect();
        Estimate::of(&values?)
    }
}

pub(crate) fn case_key(
    group: &str,
    method: &str,
    op: &str,
    size: u64,
    threads: usize,
    layout: &str,
) -> String {
    format!("{group}|{method}|{op}|{size}|{threads}|{layout}")
}

/// A same-run ratio, repetition by repetition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Ratio {
    pub group: String,
    pub name: String,
    /// The statistic compared ("p99", "p50", "max of 20", "frames/s", ...).
    pub stat: String,
    /// Per repetition, in run order.
    pub per_rep: Vec<f64>,
    /// `None` when a side was zero or missing.
    pub estimate: Option<Estimate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Goal>,
    /// Whether the whole confidence interval meets the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Ratio {
    pub(crate) fn new(group: &str, name: String, stat: String, per_rep: Vec<f64>) -> Self {
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

    pub(crate) fn with_target(mut self, goal: Goal) -> Self {
        self.met = Some(self.estimate.as_ref().is_some_and(|e| goal.met(e)));
        self.target = Some(goal);
        self
    }

    pub(crate) fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// A target of issue 13, as the bench judged it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Target {
    pub name: String,
    /// The measured value (a ratio's estimate, a count per operation).
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_low: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_high: Option<f64>,
    pub target: String,
    /// `None`: could not be judged here (the reason says why).
    pub met: Option<bool>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl Target {
    pub(crate) fn of_ratio(name: &str, r: &Ratio) -> Self {
        Self {
            name: name.to_owned(),
            value: r.estimate.map(|e| e.value),
            ci_low: r.estimate.map(|e| e.ci_low),
            ci_high: r.estimate.map(|e| e.ci_high),
            target: r.target.map(|g| g.to_string()).unwrap_or_default(),
            met: r.met,
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
pub(crate) struct Throughput {
    pub group: String,
    pub name: String,
    /// The pipeline description or the command lines.
    pub description: String,
    pub frames: u64,
    /// Per repetition.
    pub fps: Vec<f64>,
    /// CPU time (user + system) per frame, per repetition, in nanoseconds: the whole process
    /// for pipelines, each side for PipeWire.
    pub cpu_ns_per_frame: Vec<f64>,
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
pub(crate) struct Paced {
    pub variant: String,
    pub fps: u32,
    pub size: u64,
    pub frames_per_rep: usize,
    /// Under memory pressure (see `pressure`).
    #[serde(default)]
    pub pressure: bool,
    pub acquire: Vec<Summary>,
    pub write: Vec<Summary>,
    pub release: Vec<Summary>,
    /// acquire + DMA_BUF_IOCTL_SYNC start and end + release: what the pool costs a frame.
    pub overhead: Vec<Summary>,
    pub overhead_pooled: Summary,
    /// Frames that ended after their deadline, per repetition.
    pub missed: Vec<u64>,
    /// Latest end against the schedule, per repetition (ns; 0 if never late).
    pub worst_lateness_ns: Vec<u64>,
    /// Bytes held at most (pool or free list), per repetition.
    pub bytes_held_max: Vec<u64>,
    /// Frames held at most by the consumer plus the one being written.
    pub peak_outstanding: usize,
    pub hot_path_allocs: Vec<u64>,
    pub refills: Vec<u64>,
}

/// PSI and /proc/vmstat over one timed case.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PressureEvidence {
    pub seconds: f64,
    /// `some` and `full` stall (µs) during the case, from the PSI file watched.
    pub psi_some_us: Option<u64>,
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
pub(crate) struct PressureRuns {
    /// What made the pressure.
    pub source: String,
    pub psi_path: String,
    pub watch: String,
    /// Run order, e.g. "calm, pressure, pressure, calm, ...".
    pub order: Vec<String>,
    /// (case key, evidence) per run.
    pub evidence: Vec<(String, PressureEvidence)>,
}

/// Time to first frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FirstFrame {
    pub what: String,
    pub size: u64,
    pub prewarm: usize,
    /// Per repetition, ns.
    pub ns: Vec<f64>,
    /// Bytes held right after the first frame.
    pub bytes_held: u64,
}

/// Memory held against memory needed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Overhead {
    pub scenario: String,
    pub size: u64,
    pub bytes_held_max: u64,
    pub bytes_needed: u64,
    pub factor: f64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// Where and how the run happened.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Environment {
    pub label: String,
    pub date: String,
    pub commit: String,
    pub kernel: String,
    pub os: String,
    pub cpu_model: String,
    pub cpus_online: usize,
    pub cpus_allowed: usize,
    pub threads_per_core: usize,
    /// "bare metal", "VM (hypervisor flag)", "qemu TCG (emulated CPU)".
    pub machine: String,
    pub in_test_vm: bool,
    pub clocksource: String,
    pub governor: String,
    pub memory_total: u64,
    pub swap_total: u64,
    pub psi: bool,
    pub heaps: Vec<String>,
    pub udmabuf: bool,
    /// The source that served the benchmark's buffers.
    pub buffers_from: String,
    pub gstreamer: String,
    pub pipewire: String,
    pub timer: Option<measure::TimerCost>,
    pub counting: String,
    pub pinning: String,
    pub reps: usize,
    pub scale: f64,
    pub command: String,
}

/// What `dmaheap-bench-peers` reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PeersReport {
    pub schema: String,
    pub gstreamer: String,
    pub pipewire: String,
    pub cases: Vec<Case>,
    pub ratios: Vec<Ratio>,
    pub targets: Vec<Target>,
    pub throughput: Vec<Throughput>,
    pub notes: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Report {
    pub schema: String,
    pub env: Environment,
    pub targets: Vec<Target>,
    pub ratios: Vec<Ratio>,
    pub cases: Vec<Case>,
    pub paced: Vec<Paced>,
    pub pressure: Option<PressureRuns>,
    pub first_frame: Vec<FirstFrame>,
    pub overhead: Vec<Overhead>,
    pub throughput: Vec<Throughput>,
    pub notes: Vec<String>,
}
