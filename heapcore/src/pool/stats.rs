//! Pool statistics: counters and an acquire-latency histogram, all lock-free so that
//! recording never slows the acquire path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    pub(crate) fn record(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
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

/// Acquire latency percentiles (upper bounds of ~12% wide buckets).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Acquires measured.
    pub count: u64,
    /// Median, in nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile, in nanoseconds.
    pub p99_ns: u64,
    /// 99.9th percentile, in nanoseconds.
    pub p999_ns: u64,
    /// The slowest, in nanoseconds (exact).
    pub max_ns: u64,
}

/// The live counters of one pool.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
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
}
