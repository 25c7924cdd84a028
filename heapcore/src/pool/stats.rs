//! Pool statistics: counters and an acquire-latency histogram, recorded so that the acquire
//! path pays next to nothing for them. The hit count lives under the pool's lock, which an
//! acquire holds anyway. The clock is read only for the acquires worth timing: every one that
//! waited for the lock, missed, or waited for a buffer (each recorded as itself), and one in
//! [`LATENCY_SAMPLE_EVERY`] of the others (uncontended hits, whose cost is the pop itself), recorded
//! with that weight, so the histogram still describes all acquires.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two: about 12% resolution.
const SUB_BITS: u32 = 3;
const SUBS: usize = 1 << SUB_BITS;
const BUCKETS: usize = 64 * SUBS;

/// A log-linear histogram of nanoseconds.
pub(crate) struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < SUBS as u64 {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros();
    let sub = (ns >> (exp - SUB_BITS)) as usize & (SUBS - 1);
    ((exp - SUB_BITS + 1) as usize) * SUBS + sub
}

/// The largest value that falls in bucket `i`.
fn bucket_upper(i: usize) -> u64 {
    if i < SUBS {
        return i as u64;
    }
    let exp = (i / SUBS) as u32 + SUB_BITS - 1;
    let sub = (i % SUBS) as u64;
    let base = (1u64 << exp) | (sub << (exp - SUB_BITS));
    base + (1u64 << (exp - SUB_BITS)) - 1
}

impl LatencyHistogram {
    #[cfg(test)]
    pub(crate) fn record(&self, ns: u64) {
        self.record_weighted(ns, 1);
    }

    /// Records `ns` as standing for `weight` acquires.
    pub(crate) fn record_weighted(&self, ns: u64, weight: u64) {
        self.buckets[bucket_of(ns)].fetch_add(weight, Relaxed);
        self.max.fetch_max(ns, Relaxed);
    }

    pub(crate) fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        let max = self.max.load(Relaxed);
        let quantile = |q: f64| -> u64 {
            if count == 0 {
                return 0;
            }
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, &c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bucket_upper(i).min(max);
                }
            }
            max
        };
        LatencySummary {
            count,
            p50_ns: quantile(0.50),
            p99_ns: quantile(0.99),
            p999_ns: quantile(0.999),
            max_ns: max,
        }
    }
}

/// One uncontended hit in this many is timed (per thread).
pub const LATENCY_SAMPLE_EVERY: u64 = 256;

/// The timing of one acquire: whether and since when it is timed, and how many acquires its
/// sample stands for.
pub(crate) struct Timing {
    start: Option<Instant>,
    weight: u64,
}

impl Timing {
    /// Whether the thread's `n`th acquire is one of the sampled.
    #[inline]
    pub(crate) fn sampled(n: u64) -> bool {
        n % LATENCY_SAMPLE_EVERY == 0
    }

    /// Starts the clock for one acquire in [`LATENCY_SAMPLE_EVERY`]: the thread's `n`th.
    #[inline]
    pub(crate) fn begin(n: u64) -> Self {
        if Self::sampled(n) {
            Self {
                start: Some(Instant::now()),
                weight: LATENCY_SAMPLE_EVERY,
            }
        } else {
            Self {
                start: None,
                weight: 1,
            }
        }
    }

    /// This acquire is a slow one (it waits for the lock, misses or waits for a buffer):
    /// timed in any case, standing for itself.
    pub(crate) fn slow(&mut self) {
        self.start.get_or_insert_with(Instant::now);
        self.weight = 1;
    }

    /// How long the acquire has taken by `now` (it is timed once it waits).
    pub(crate) fn waited(&self, now: Instant) -> std::time::Duration {
        self.start
            .map_or_else(Default::default, |s| now.saturating_duration_since(s))
    }

    /// Records the acquire if it was timed.
    #[inline]
    pub(crate) fn record(&self, into: &LatencyHistogram) {
        if let Some(start) = self.start {
            let ns = start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
            into.record_weighted(ns, self.weight);
        }
    }
}

/// Acquire latency percentiles (upper bounds of ~12% wide buckets).
///
/// Every acquire that waited for the pool's lock, missed or waited for a buffer is in it as
/// itself; uncontended hits are sampled, one in [`LATENCY_SAMPLE_EVERY`] per thread, each sample
/// standing for that many. So `count` is the number of acquires (estimated) and the
/// percentiles describe all of them; `max_ns` is the slowest acquire that was timed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Acquires it describes (sampled hits counted by their weight).
    pub count: u64,
    /// Median, in nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile, in nanoseconds.
    pub p99_ns: u64,
    /// 99.9th percentile, in nanoseconds.
    pub p999_ns: u64,
    /// The slowest timed acquire, in nanoseconds (exact).
    pub max_ns: u64,
}

/// The live counters of one pool (its hits are counted under its lock, in `State`).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) misses: AtomicU64,
    pub(crate) hot_path_allocs: AtomicU64,
    pub(crate) refills: AtomicU64,
    pub(crate) trims: AtomicU64,
    pub(crate) budget_denials: AtomicU64,
    pub(crate) alloc_failures: AtomicU64,
    /// Buffers that came back while a device still used them.
    pub(crate) parked_busy: AtomicU64,
    /// Busy buffers whose fence signalled, so they went to the free list.
    pub(crate) fence_waits: AtomicU64,
    pub(crate) latency: LatencyHistogram,
}

/// A snapshot of one pool's statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStats {
    /// The pool's name ([`PoolConfig::name`](super::PoolConfig::name)).
    pub name: String,
    /// Its QoS class (`realtime`, `normal`, `background`).
    pub qos: String,
    /// Where buffers come from (the first source that served).
    pub source: String,
    /// Bytes per buffer (page-aligned).
    pub buffer_size: u64,
    /// Acquires served from the free list.
    pub hits: u64,
    /// Acquires that found the free list empty.
    pub misses: u64,
    /// Allocations made inside an acquire (what prewarm and refill exist to avoid).
    pub hot_path_allocs: u64,
    /// Allocations made by the background refill.
    pub refills: u64,
    /// Buffers freed by trimming (memory pressure or explicit).
    pub trims: u64,
    /// Requests refused because a budget would have been exceeded.
    pub budget_denials: u64,
    /// Allocations that failed on every source.
    pub alloc_failures: u64,
    /// Buffers ready to hand out.
    pub buffers_free: usize,
    /// Buffers back from their user but still used by a device (an unsignalled fence).
    #[serde(default)]
    pub buffers_busy: usize,
    /// Buffers that came back busy so far.
    #[serde(default)]
    pub returned_busy: u64,
    /// Buffers handed out and not back yet.
    pub buffers_out: usize,
    /// Buffers being allocated right now (a refill, a prewarm or a miss), not yet free or out.
    #[serde(default)]
    pub buffers_allocating: usize,
    /// Bytes of all its buffers: free, out and being allocated.
    pub bytes_held: u64,
    /// Its own byte budget, if it has one.
    pub budget: Option<u64>,
    /// How long acquires took.
    pub acquire_latency: LatencySummary,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_in_order() {
        let mut last = 0;
        for ns in [
            0,
            1,
            7,
            8,
            9,
            15,
            16,
            100,
            1000,
            123_456,
            10_000_000_000,
            u64::MAX / 2,
        ] {
            let b = bucket_of(ns);
            assert!(b >= last, "{ns}");
            assert!(
                bucket_upper(b) >= ns,
                "{ns}: bucket {b} ends at {}",
                bucket_upper(b)
            );
            if b > 0 {
                assert!(bucket_upper(b - 1) < ns, "{ns}");
            }
            last = b;
        }
    }

    #[test]
    fn percentiles_are_within_a_bucket() {
        let h = LatencyHistogram::default();
        for ns in 1..=1000u64 {
            h.record(ns * 100);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((50_000..=57_000).contains(&s.p50_ns), "{s:?}");
        assert!((99_000..=100_000).contains(&s.p99_ns), "{s:?}");
        assert_eq!(s.max_ns, 100_000);
    }

    #[test]
    fn weighted_samples_stand_for_what_they_sample() {
        let h = LatencyHistogram::default();
        // 99 sampled fast hits standing for many each, and 64 slow acquires as themselves.
        for _ in 0..99 {
            h.record_weighted(100, LATENCY_SAMPLE_EVERY);
        }
        for _ in 0..64 {
            h.record_weighted(1_000_000, 1);
        }
        let s = h.summary();
        assert_eq!(s.count, 99 * LATENCY_SAMPLE_EVERY + 64);
        assert!(
            s.p50_ns < 110 && s.p99_ns < 110,
            "within 100's bucket: {s:?}"
        );
        assert!(s.p999_ns >= 900_000, "the slow 1% shows at p99.9: {s:?}");
        assert_eq!(s.max_ns, 1_000_000);
    }

    #[test]
    fn one_acquire_in_sample_every_is_timed_and_slow_ones_always() {
        let begun: Vec<bool> = (5..5 + LATENCY_SAMPLE_EVERY * 3)
            .map(|n| Timing::begin(n).start.is_some())
            .collect();
        assert_eq!(begun.iter().filter(|&&t| t).count(), 3);
        let mut t = Timing::begin(1);
        t.slow();
        assert!(t.start.is_some() && t.weight == 1);
    }
}
