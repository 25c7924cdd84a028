//! Acquire latency of the four ways to get a ready buffer, measured the same way: a realtime
//! pool, a plain free-list recycle (what GStreamer's buffer pool does), a direct allocation,
//! and a direct allocation made ready (mapped and faulted in, as pool buffers are).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use heapcore::{Allocator, DmaBuf, Pool, PoolConfig, QosClass, Source};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Method {
    RealtimePool,
    FreeListRecycle,
    DirectAlloc,
    DirectAllocReady,
}

impl Method {
    pub(super) const ALL: [Method; 4] = [
        Self::RealtimePool,
        Self::FreeListRecycle,
        Self::DirectAlloc,
        Self::DirectAllocReady,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::RealtimePool => "realtime pool",
            Self::FreeListRecycle => "free-list recycle (GstBufferPool-style)",
            Self::DirectAlloc => "direct allocation",
            Self::DirectAllocReady => "direct allocation + map + fault-in",
        }
    }
}

/// How long each measurement may run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub recycle_iterations: usize,
    pub direct_iterations: usize,
    pub direct_seconds: f64,
}

pub(super) struct Measurement {
    /// Nanoseconds, sorted.
    pub samples: Vec<u64>,
    pub hot_path_allocs: u64,
}

impl Measurement {
    /// The `q` quantile (exact, from all samples).
    pub(super) fn quantile(&self, q: f64) -> u64 {
        if self.samples.is_empty() {
            return 0;
        }
        let rank = ((self.samples.len() as f64) * q).ceil().max(1.0) as usize;
        self.samples[rank.min(self.samples.len()) - 1]
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// Runs `body` on `threads` threads at once and gathers their samples.
fn on_threads(
    threads: usize,
    body: impl Fn() -> Result<Vec<u64>, String> + Send + Sync + 'static,
) -> Result<Vec<u64>, String> {
    let body = Arc::new(body);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let body = Arc::clone(&body);
            std::thread::spawn(move || body())
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| "a benchmark thread panicked".to_owned())??,
        );
    }
    all.sort_unstable();
    Ok(all)
}

pub(super) fn measure(
    method: Method,
    alloc: &Arc<Allocator>,
    sources: &[Source],
    size: u64,
    threads: usize,
    limits: Limits,
) -> Result<Measurement, String> {
    let sources = sources.to_vec();
    let depth = threads * 2;
    match method {
        Method::RealtimePool => {
            let config = PoolConfig::new("bench-realtime", sources, size)
                .qos(QosClass::Realtime)
                .min_buffers(depth);
            let pool = Pool::new(Arc::clone(alloc), config).map_err(|e| e.to_string())?;
            let n = limits.recycle_iterations;
            let worker = pool.clone();
            let samples = on_threads(threads, move || {
                let mut samples = Vec::with_capacity(n);
                for _ in 0..n {
                    let start = Instant::now();
                    let buf = worker.try_acquire().map_err(|e| e.to_string())?;
                    samples.push(nanos(start.elapsed()));
                    std::hint::black_box(&buf);
                }
                Ok(samples)
            })?;
            Ok(Measurement {
                samples,
                hot_path_allocs: pool.stats().hot_path_allocs,
            })
        }
        Method::FreeListRecycle => {
            let mut free = Vec::with_capacity(depth);
            for _ in 0..depth {
                let buf = alloc
                    .allocate_first(&sources, size, "bench-recycle")
                    .map_err(|e| e.to_string())?;
                buf.prefault().map_err(|e| e.to_string())?;
                free.push(buf);
            }
            let free: Arc<Mutex<Vec<DmaBuf>>> = Arc::new(Mutex::new(free));
            let n = limits.recycle_iterations;
            let samples = on_threads(threads, move || {
                let mut samples = Vec::with_capacity(n);
                for _ in 0..n {
                    let start = Instant::now();
                    let buf = free.lock().unwrap().pop().ok_or("the free list ran dry")?;
                    samples.push(nanos(start.elapsed()));
                    std::hint::black_box(&buf);
                    free.lock().unwrap().push(buf);
                }
                Ok(samples)
            })?;
            Ok(Measurement {
                samples,
                hot_path_allocs: 0,
            })
        }
        Method::DirectAlloc | Method::DirectAllocReady => {
            let alloc = Arc::clone(alloc);
            let ready = method == Method::DirectAllocReady;
            let samples = on_threads(threads, move || {
                let mut samples = Vec::new();
                let deadline = Instant::now() + Duration::from_secs_f64(limits.direct_seconds);
                while samples.len() < limits.direct_iterations
                    && (samples.len() < 20 || Instant::now() < deadline)
                {
                    let start = Instant::now();
                    let buf = alloc
                        .allocate_first(&sources, size, "bench-direct")
                        .map_err(|e| e.to_string())?;
                    if ready {
                        buf.prefault().map_err(|e| e.to_string())?;
                    }
                    samples.push(nanos(start.elapsed()));
                    drop(buf);
                }
                Ok(samples)
            })?;
            let n = samples.len() as u64;
            Ok(Measurement {
                samples,
                hot_path_allocs: n,
            })
        }
    }
}
