//! The animation case: a burst of frames at a steady rate whose consumer (a compositor) holds
//! between one and four frames at a time. A realtime pool prewarmed for it must not allocate
//! on the hot path; a normal pool without prewarm shows what happens otherwise.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use heapcore::{Allocator, Pool, PoolConfig, QosClass, Source};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub(super) struct BurstResult {
    pub pool: String,
    pub frames: usize,
    pub fps: u32,
    pub pressure: bool,
    pub hot_path_allocs: u64,
    pub refills: u64,
    pub acquire_p50_ns: u64,
    pub acquire_p99_ns: u64,
    pub acquire_max_ns: u64,
}

/// Frames the consumer holds at frame `i`: it drifts between 1 and 4.
fn held_at(i: usize) -> usize {
    1 + (i / 37) % 4
}

pub(super) fn run(
    alloc: &Arc<Allocator>,
    sources: &[Source],
    size: u64,
    frames: usize,
    fps: u32,
    qos: QosClass,
    pressure: bool,
) -> Result<BurstResult, String> {
    let (name, prewarm) = match qos {
        QosClass::Realtime => ("animation (realtime, prewarm 4)", 4),
        _ => ("animation (normal, no prewarm)", 0),
    };
    let config = PoolConfig::new("bench-burst", sources.to_vec(), size)
        .qos(qos)
        .min_buffers(prewarm);
    let pool = Pool::new(Arc::clone(alloc), config).map_err(|e| e.to_string())?;
    let period = Duration::from_secs_f64(1.0 / f64::from(fps));
    let mut in_flight = VecDeque::new();
    let mut latencies = Vec::with_capacity(frames);
    let start = Instant::now();
    for i in 0..frames {
        let t = Instant::now();
        let mut buf = pool.try_acquire().map_err(|e| e.to_string())?;
        latencies.push(t.elapsed().as_nanos() as u64);
        // "Render": the first row of the frame.
        if let Ok(mut cpu) = buf.write() {
            let n = cpu.len().min(4096);
            cpu[..n].fill(i as u8);
        }
        in_flight.push_back(buf);
        while in_flight.len() > held_at(i) {
            in_flight.pop_front();
        }
        let next = start + period * (i as u32 + 1);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    drop(in_flight);
    latencies.sort_unstable();
    let q = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    let stats = pool.stats();
    Ok(BurstResult {
        pool: name.to_owned(),
        frames,
        fps,
        pressure,
        hot_path_allocs: stats.hot_path_allocs,
        refills: stats.refills,
        acquire_p50_ns: q(0.5),
        acquire_p99_ns: q(0.99),
        acquire_max_ns: *latencies.last().unwrap_or(&0),
    })
}
