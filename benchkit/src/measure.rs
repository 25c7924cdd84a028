//! How every timed case is measured, shared by `dmaheap bench` and its GStreamer/PipeWire
//! companion (`dmaheap-bench-peers`): the timer's own cost, threads
//! pinned to CPUs behind a start barrier, per-operation samples summarised only as far as
//! their count allows, and ratios with a confidence interval over repetitions.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Samples a p99 needs: below this the summary gives the maximum, labelled so.
pub const P99_MIN_SAMPLES: usize = 1_000;
/// Samples a p99.9 needs.
pub const P999_MIN_SAMPLES: usize = 10_000;

/// Operations run, untimed, before a timed loop (caches, branch predictors, lazy mappings).
pub const WARMUP_OPS: usize = 1_000;

/// `d` in whole nanoseconds, saturating at `u64::MAX`.
pub fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// What reading the clock costs: an empty timed region (two `Instant::now()` back to back).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TimerCost {
    /// Empty timed regions measured.
    pub samples: usize,
    /// Median cost of an empty timed region, in nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile cost of an empty timed region, in nanoseconds.
    pub p99_ns: u64,
    /// Subtracted from every per-operation sample (its median).
    pub subtracted_ns: u64,
    /// The smallest non-zero empty region seen: the clock's step, or more if a read costs
    /// more than a step (some hypervisors' clocks move in steps of 10 ns).
    #[serde(default)]
    pub step_ns: u64,
}

/// Clock reads (or steps, if longer) a timed sample should last: a sample of fewer is mostly
/// rounding. Operations shorter than that are timed several at a time.
pub const SAMPLE_SPAN_READS: u64 = 20;

/// The most operations one sample stands for.
pub const MAX_OPS_PER_SAMPLE: usize = 64;

impl TimerCost {
    /// Measures the cost over 100,000 empty timed regions, after [`WARMUP_OPS`] untimed reads.
    pub fn calibrate() -> Self {
        const N: usize = 100_000;
        let mut samples = Vec::with_capacity(N);
        for _ in 0..WARMUP_OPS {
            std::hint::black_box(Instant::now());
        }
        for _ in 0..N {
            let t0 = Instant::now();
            let t1 = Instant::now();
            samples.push(nanos(t1 - t0));
        }
        samples.sort_unstable();
        let p50 = quantile(&samples, 0.5);
        Self {
            samples: N,
            p50_ns: p50,
            p99_ns: quantile(&samples, 0.99),
            subtracted_ns: p50,
            step_ns: samples.iter().copied().find(|&s| s > 0).unwrap_or(1),
        }
    }

    /// How many operations of `per_op` each one sample should time, so that it lasts
    /// [`SAMPLE_SPAN_READS`] clock reads or steps: 1 for operations that long, up to
    /// [`MAX_OPS_PER_SAMPLE`]. On a clock that moves in 10 ns steps a 25 ns round trip reads
    /// as 20 or 30 ns, and a p99 of such samples says which step it fell on, not how long it
    /// took.
    pub fn ops_per_sample(&self, per_op: Duration) -> usize {
        let span = SAMPLE_SPAN_READS * self.p50_ns.max(self.step_ns).max(1);
        let per_op = nanos(per_op).max(1);
        (span.div_ceil(per_op) as usize).clamp(1, MAX_OPS_PER_SAMPLE)
    }

    /// A sample of `ops` operations between two clock reads, without the clock's median
    /// cost: nanoseconds per operation, rounded.
    pub fn net_per_op(&self, raw: Duration, ops: usize) -> u64 {
        let ops = ops.max(1) as u64;
        (self.net(raw) + ops / 2) / ops
    }

    /// A sample taken between two clock reads, without the clock's median cost.
    pub fn net(&self, raw: Duration) -> u64 {
        nanos(raw).saturating_sub(self.subtracted_ns)
    }
}

/// The order `n` cases run in on repetition `rep`: forwards, then backwards, so no case always
/// runs first or last (and so on a warmer or colder machine than the others).
pub fn interleaved(rep: usize, n: usize) -> Vec<usize> {
    if rep % 2 == 0 {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

/// The nearest-rank `q` quantile of sorted samples.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * q).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// One run of one case: its samples, summarised only as far as their number allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Samples in the run.
    pub n: usize,
    /// Median, in nanoseconds.
    pub p50_ns: u64,
    /// Only with at least [`P99_MIN_SAMPLES`] samples.
    pub p99_ns: Option<u64>,
    /// Only with at least [`P999_MIN_SAMPLES`] samples.
    pub p999_ns: Option<u64>,
    /// Largest sample, in nanoseconds.
    pub max_ns: u64,
    /// Arithmetic mean, in nanoseconds.
    pub mean_ns: f64,
}

impl Summary {
    /// Summarises samples in nanoseconds, in any order.
    pub fn of(mut samples: Vec<u64>) -> Self {
        samples.sort_unstable();
        Self::of_sorted(&samples)
    }

    /// Summarises samples in nanoseconds, sorted ascending.
    pub fn of_sorted(sorted: &[u64]) -> Self {
        let n = sorted.len();
        Self {
            n,
            p50_ns: quantile(sorted, 0.5),
            p99_ns: (n >= P99_MIN_SAMPLES).then(|| quantile(sorted, 0.99)),
            p999_ns: (n >= P999_MIN_SAMPLES).then(|| quantile(sorted, 0.999)),
            max_ns: sorted.last().copied().unwrap_or(0),
            mean_ns: if n == 0 {
                0.0
            } else {
                sorted.iter().map(|&v| v as f64).sum::<f64>() / n as f64
            },
        }
    }

    /// The tail statistic this run supports: p99, or the maximum when it has too few samples.
    pub fn tail(&self) -> (u64, Tail) {
        match self.p99_ns {
            Some(p) => (p, Tail::P99),
            None => (self.max_ns, Tail::MaxOf(self.n)),
        }
    }

    /// The statistic `stat` in nanoseconds; `None` if the run has too few samples for it.
    pub fn get(&self, stat: Stat) -> Option<f64> {
        match stat {
            Stat::P50 => Some(self.p50_ns as f64),
            Stat::P99 => self.p99_ns.map(|v| v as f64),
            Stat::P999 => self.p999_ns.map(|v| v as f64),
            Stat::Max => Some(self.max_ns as f64),
            Stat::Mean => Some(self.mean_ns),
        }
    }
}

/// What a tail figure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The 99th percentile.
    P99,
    /// The maximum of this many samples (too few for a p99).
    MaxOf(usize),
}

impl std::fmt::Display for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::P99 => f.write_str("p99"),
            Self::MaxOf(n) => write!(f, "max of {n}"),
        }
    }
}

/// A statistic of a [`Summary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stat {
    /// The median.
    P50,
    /// The 99th percentile.
    P99,
    /// The 99.9th percentile.
    P999,
    /// The largest sample.
    Max,
    /// The arithmetic mean.
    Mean,
}

impl Stat {
    /// The statistic's name in the report ("p50", "p99.9", ...).
    pub fn label(self) -> &'static str {
        match self {
            Self::P50 => "p50",
            Self::P99 => "p99",
            Self::P999 => "p99.9",
            Self::Max => "max",
            Self::Mean => "mean",
        }
    }
}

/// A value over repetitions: the geometric mean and a 95% confidence interval (Student's t on
/// the logarithms, which suits ratios and times, both positive and skewed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The geometric mean of the repetitions' values.
    pub value: f64,
    /// Lower end of the 95% confidence interval (0 with one repetition).
    pub ci_low: f64,
    /// Upper end of the 95% confidence interval (infinite with one repetition).
    pub ci_high: f64,
    /// Repetitions it comes from.
    pub reps: usize,
}

impl Estimate {
    /// `None` when a value is not positive and finite (a ratio with a zero side).
    pub fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() || values.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return None;
        }
        let logs: Vec<f64> = values.iter().map(|v| v.ln()).collect();
        let n = logs.len() as f64;
        let mean = logs.iter().sum::<f64>() / n;
        let half = if logs.len() < 2 {
            f64::INFINITY
        } else {
            let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0);
            t_975(logs.len() - 1) * (var / n).sqrt()
        };
        Some(Self {
            value: mean.exp(),
            ci_low: (mean - half).exp(),
            ci_high: (mean + half).exp(),
            reps: values.len(),
        })
    }
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom.
fn t_975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => T[df - 1],
        _ => 1.96,
    }
}

/// How a target is judged: the whole confidence interval must be on the right side.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Goal {
    /// Met when the confidence interval's upper end is at most this.
    AtMost(f64),
    /// Met when the confidence interval's lower end is at least this.
    AtLeast(f64),
}

impl Goal {
    /// Whether the whole 95% confidence interval of `e` is on the right side of the goal.
    pub fn met(self, e: &Estimate) -> bool {
        match self {
            Self::AtMost(t) => e.ci_high <= t,
            Self::AtLeast(t) => e.ci_low >= t,
        }
    }
}

/// What a target's confidence interval says about its goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The whole interval is on the goal's side.
    Met,
    /// The whole interval is on the wrong side.
    Missed,
    /// The interval spans the goal: these repetitions cannot tell.
    Undecided {
        /// Whether the estimate itself is on the goal's side.
        leans_met: bool,
        /// About how many repetitions would decide, at the noise measured and with the
        /// estimate where it is (`None`: more than [`Verdict::MAX_REPS`]).
        reps_to_decide: Option<usize>,
    },
}

impl Verdict {
    /// The most repetitions a verdict suggests running.
    pub const MAX_REPS: usize = 1000;
}

impl Goal {
    /// Met, missed or undecided: the last when the interval spans the goal.
    pub fn verdict(self, e: &Estimate) -> Verdict {
        let (goal, beyond, leans_met) = match self {
            Self::AtMost(t) => (t, e.ci_low > t, e.value <= t),
            Self::AtLeast(t) => (t, e.ci_high < t, e.value >= t),
        };
        if self.met(e) {
            return Verdict::Met;
        }
        if beyond {
            return Verdict::Missed;
        }
        // The interval is t(n-1)·s/√n wide on either side of the mean logarithm: find the n
        // whose half-width is less than the distance to the goal, with s as measured.
        let gap = (goal.ln() - e.value.ln()).abs();
        let half = (e.ci_high / e.value).ln();
        let reps_to_decide = if e.reps < 2 || !half.is_finite() || gap == 0.0 {
            None
        } else {
            let sd = half * (e.reps as f64).sqrt() / t_975(e.reps - 1);
            (2..=Verdict::MAX_REPS).find(|&n| t_975(n - 1) * sd / (n as f64).sqrt() < gap)
        };
        Verdict::Undecided {
            leans_met,
            reps_to_decide,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Met => write!(f, "yes"),
            Self::Missed => write!(f, "no"),
            Self::Undecided {
                leans_met,
                reps_to_decide,
            } => {
                let lean = if *leans_met { "met" } else { "missed" };
                match reps_to_decide {
                    Some(n) => write!(
                        f,
                        "undecided, leaning {lean} (~{n} repetitions would decide at this noise)"
                    ),
                    None => write!(
                        f,
                        "undecided, leaning {lean} (too close to the goal: over {} repetitions \
                         would be needed)",
                        Self::MAX_REPS
                    ),
                }
            }
        }
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AtMost(t) => write!(f, "<= {t}"),
            Self::AtLeast(t) => write!(f, ">= {t}"),
        }
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&c| set.is_set(c))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Pins the calling thread to one CPU; whether it worked.
pub fn pin_to(cpu: usize) -> bool {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).is_ok()
}

/// Runs `body(index, barrier)` on `threads` threads, thread `i` pinned to the `i`-th allowed
/// CPU (round robin). Each thread waits on the barrier right before its timed section, so all
/// start together; the results come back in thread order.
pub fn on_pinned_threads<T: Send + 'static>(
    threads: usize,
    body: impl Fn(usize, &Barrier) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let cpus = allowed_cpus();
    let body = Arc::new(body);
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let body = Arc::clone(&body);
            let barrier = Arc::clone(&barrier);
            let cpu = cpus[i % cpus.len().max(1)];
            std::thread::Builder::new()
                .name(format!("bench-{i}"))
                .spawn(move || {
                    pin_to(cpu);
                    body(i, &barrier)
                })
                .expect("spawning a benchmark thread")
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("a benchmark thread panicked"))
        .collect()
}

/// A histogram of nanoseconds fine enough to stand for the samples: exact below 1,024 ns,
/// 64 sub-buckets per power of two above (within 1.6%), with the exact maximum and sum. It
/// keeps millions of samples in a few dozen KiB, so counts can be large without the
/// memory (and cache) of a sample vector.
#[derive(Debug, Clone)]
pub struct Hist {
    counts: Vec<u64>,
    n: u64,
    max: u64,
    sum: u128,
}

const LINEAR: u64 = 1_024;
const SUB_BITS: u32 = 6;

impl Default for Hist {
    fn default() -> Self {
        Self {
            counts: vec![0; Self::bucket(u64::MAX) + 1],
            n: 0,
            max: 0,
            sum: 0,
        }
    }
}

impl Hist {
    fn bucket(v: u64) -> usize {
        if v < LINEAR {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros(); // >= 10
        let sub = (v >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        LINEAR as usize + ((exp - 10) as usize) * (1 << SUB_BITS) + sub as usize
    }

    /// The largest value of bucket `i`.
    fn upper(i: usize) -> u64 {
        if (i as u64) < LINEAR {
            return i as u64;
        }
        let k = i - LINEAR as usize;
        let exp = (k >> SUB_BITS) as u32 + 10;
        let sub = (k & ((1 << SUB_BITS) - 1)) as u64;
        let width = 1u64 << (exp - SUB_BITS);
        ((1u64 << exp) | (sub << (exp - SUB_BITS))).saturating_add(width - 1)
    }

    #[inline]
    /// Adds one sample, in nanoseconds.
    pub fn record(&mut self, v: u64) {
        self.counts[Self::bucket(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    /// Adds another histogram's samples (another thread's, another run's).
    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.n += other.n;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((self.n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }

    /// The samples' summary: quantiles as their bucket's upper end, maximum and mean exact.
    pub fn summary(&self) -> Summary {
        let n = self.n as usize;
        Summary {
            n,
            p50_ns: self.quantile(0.5),
            p99_ns: (n >= P99_MIN_SAMPLES).then(|| self.quantile(0.99)),
            p999_ns: (n >= P999_MIN_SAMPLES).then(|| self.quantile(0.999)),
            max_ns: self.max,
            mean_ns: if n == 0 {
                0.0
            } else {
                self.sum as f64 / n as f64
            },
        }
    }
}

/// Something that lends buffers: the pools under test and their peers.
pub trait Recycler: Send + Sync {
    /// The buffer lent.
    type Buf;
    /// Takes a buffer.
    fn acquire(&self) -> Self::Buf;
    /// Gives a buffer back.
    fn release(&self, buf: Self::Buf);
}

/// Per-operation samples of one thread.
#[derive(Debug, Default)]
pub struct OpSamples {
    /// Acquire times, in nanoseconds without the timer's cost.
    pub acquire: Hist,
    /// Release times, in nanoseconds without the timer's cost.
    pub release: Hist,
    /// Round-trip (acquire and release together) times, in nanoseconds per round trip without
    /// the timer's cost.
    pub round_trip: Hist,
    /// Round trips each `round_trip` sample timed together (see
    /// [`TimerCost::ops_per_sample`]); 0 where none were timed.
    pub round_trips_per_sample: usize,
    /// When the untimed round-trip loop (for throughput) started and ended.
    pub batch: Option<(Instant, Instant)>,
    /// Round trips in the untimed loop (for throughput).
    pub batch_ops: usize,
}

impl OpSamples {
    /// Merges threads' samples; the throughput is all threads' round trips over the time
    /// from the first start to the last end.
    pub fn merge(all: Vec<OpSamples>) -> (OpSamples, f64) {
        let mut out = OpSamples::default();
        let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
        for s in all {
            out.acquire.merge(&s.acquire);
            out.release.merge(&s.release);
            out.round_trip.merge(&s.round_trip);
            out.round_trips_per_sample = out.round_trips_per_sample.max(s.round_trips_per_sample);
            out.batch_ops += s.batch_ops;
            if let Some((a, b)) = s.batch {
                first = Some(first.map_or(a, |f| f.min(a)));
                last = Some(last.map_or(b, |l| l.max(b)));
            }
        }
        let secs = first.zip(last).map_or(0.0, |(a, b)| (b - a).as_secs_f64());
        let ops_per_sec = out.batch_ops as f64 / secs.max(1e-9);
        (out, ops_per_sec)
    }
}

/// A small deterministic generator (xorshift64*), so runs are repeatable.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (0 is taken as 1).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the host's clock (10 ns steps, two reads 30 ns apart) a 25 ns round trip is timed
    /// 24 to a sample (600 ns, 20 reads); one of a microsecond alone; on a clock that moves
    /// by 4 ms nothing short is resolved, and the most a sample takes is the cap.
    #[test]
    fn short_operations_are_timed_several_to_a_sample_of_twenty_reads_or_steps() {
        let host = TimerCost {
            samples: 1,
            p50_ns: 30,
            p99_ns: 31,
            subtracted_ns: 30,
            step_ns: 30,
        };
        assert_eq!(host.ops_per_sample(Duration::from_nanos(25)), 24);
        assert_eq!(host.ops_per_sample(Duration::from_nanos(599)), 2);
        assert_eq!(host.ops_per_sample(Duration::from_nanos(600)), 1);
        assert_eq!(host.ops_per_sample(Duration::from_micros(1)), 1);
        assert_eq!(host.ops_per_sample(Duration::ZERO), MAX_OPS_PER_SAMPLE);
        let jiffies = TimerCost {
            p50_ns: 0,
            step_ns: 4_000_000,
            ..host
        };
        assert_eq!(
            jiffies.ops_per_sample(Duration::from_micros(5)),
            MAX_OPS_PER_SAMPLE
        );
        // 24 round trips in 630 ns, the two reads' 30 taken off once: 25 ns each.
        assert_eq!(host.net_per_op(Duration::from_nanos(630), 24), 25);
        assert_eq!(host.net_per_op(Duration::from_nanos(643), 24), 26);
        assert_eq!(host.net_per_op(Duration::from_nanos(20), 24), 0);
    }

    #[test]
    fn summaries_give_only_what_their_count_supports() {
        let s = Summary::of((1..=999).collect());
        assert_eq!((s.p99_ns, s.p999_ns, s.max_ns), (None, None, 999));
        assert_eq!(s.tail(), (999, Tail::MaxOf(999)));
        let s = Summary::of((1..=1000).collect());
        assert_eq!((s.p99_ns, s.p999_ns), (Some(990), None));
        assert_eq!(s.tail(), (990, Tail::P99));
        let s = Summary::of((1..=10_000).collect());
        assert_eq!(s.p999_ns, Some(9990));
    }

    #[test]
    fn histograms_are_exact_below_a_microsecond_and_close_above() {
        let mut h = Hist::default();
        for v in 1..=1000u64 {
            h.record(v);
        }
        assert_eq!(h.summary(), Summary::of((1..=1000).collect()));
        let mut h = Hist::default();
        let values: Vec<u64> = (0..20_000u64).map(|i| 1_000 + i * 997).collect();
        for &v in &values {
            h.record(v);
        }
        let exact = Summary::of(values);
        let got = h.summary();
        assert_eq!((got.n, got.max_ns), (exact.n, exact.max_ns));
        for (a, b) in [
            (got.p50_ns, exact.p50_ns),
            (got.p99_ns.unwrap(), exact.p99_ns.unwrap()),
        ] {
            assert!(a >= b && (a - b) as f64 <= b as f64 * 0.016, "{a} vs {b}");
        }
        for v in [0, 1, 1023, 1024, 1025, 4096, 123_456_789, u64::MAX / 3] {
            let i = Hist::bucket(v);
            assert!(Hist::upper(i) >= v, "{v}");
            if i > 0 {
                assert!(Hist::upper(i - 1) < v, "{v}");
            }
        }
    }

    #[test]
    fn estimates_cover_their_values_and_judge_by_the_whole_interval() {
        let e = Estimate::of(&[1.0, 1.1, 0.9, 1.05, 0.95]).unwrap();
        assert!(e.ci_low < 1.0 && 1.0 < e.ci_high, "{e:?}");
        assert!((e.value - 0.998).abs() < 0.01, "{e:?}");
        assert!(Goal::AtMost(1.2).met(&e));
        assert!(
            !Goal::AtMost(1.05).met(&e),
            "the interval reaches above 1.05"
        );
        assert!(Goal::AtLeast(0.8).met(&e));
        assert!(Estimate::of(&[1.0, 0.0]).is_none());
        let one = Estimate::of(&[2.0]).unwrap();
        assert!(
            !Goal::AtMost(100.0).met(&one),
            "one repetition proves nothing"
        );
        assert_eq!(
            Goal::AtMost(100.0).verdict(&one),
            Verdict::Undecided {
                leans_met: true,
                reps_to_decide: None
            }
        );
    }

    #[test]
    fn verdicts_tell_a_miss_from_an_interval_that_spans_the_goal() {
        let e = Estimate::of(&[1.0, 1.1, 0.9, 1.05, 0.95]).unwrap();
        assert_eq!(Goal::AtMost(1.2).verdict(&e), Verdict::Met);
        assert_eq!(Goal::AtMost(0.8).verdict(&e), Verdict::Missed);
        assert_eq!(Goal::AtLeast(1.2).verdict(&e), Verdict::Missed);
        let Verdict::Undecided {
            leans_met: true,
            reps_to_decide: Some(n),
        } = Goal::AtMost(1.05).verdict(&e)
        else {
            panic!("an interval spanning 1.05, its estimate under it, is undecided, leaning met");
        };
        assert!(matches!(
            Goal::AtLeast(1.0).verdict(&e),
            Verdict::Undecided {
                leans_met: false,
                ..
            }
        ));
        // The same spread over n repetitions gives an interval that stays under the goal, and
        // over n - 1 one that does not.
        let logs = [1.0f64, 1.1, 0.9, 1.05, 0.95].map(f64::ln);
        let mean = logs.iter().sum::<f64>() / 5.0;
        let sd = (logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / 4.0).sqrt();
        let half = |n: usize| t_975(n - 1) * sd / (n as f64).sqrt();
        assert!(half(n) < (1.05f64 / e.value).ln(), "n = {n}");
        assert!(half(n - 1) >= (1.05f64 / e.value).ln(), "n = {n}");
    }
}
