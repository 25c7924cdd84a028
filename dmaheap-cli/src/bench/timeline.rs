//! Pool memory over time against the global budget while pressure comes and goes: three pools
//! (realtime, normal, background) under a workload, sampled every 250 ms.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use heapcore::pressure::PressureConfig;
use heapcore::{Allocator, Policy, PoolConfig, PoolRegistry, PressureLevel, QosClass, Source};
use serde::Serialize;

use super::hog::Hog;

#[derive(Debug, Clone, Serialize)]
pub(super) struct Sample {
    pub t_ms: u64,
    pub pressure: String,
    pub realtime_bytes: u64,
    /// Free buffers of the realtime pool (its refill target is 4).
    pub realtime_free: usize,
    pub normal_bytes: u64,
    pub background_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Timeline {
    /// "real (PSI triggers)", "real (MemAvailable timer)" or "simulated".
    pub pressure_mode: String,
    pub budget: u64,
    pub max_total: u64,
    pub samples: Vec<Sample>,
}

/// `real`: a memory hog from 2.5 s until 3 s after pressure was seen, with the registry
/// watching PSI. Otherwise the registry is told the levels (Elevated at 2.5 s, Critical at
/// 4 s, Normal at 5.5 s).
pub(super) fn run(
    alloc: &Arc<Allocator>,
    sources: &[Source],
    size: u64,
    real: bool,
) -> Result<Timeline, String> {
    let budget = 24 * size.next_multiple_of(heapcore::sysinfo::page_size());
    let registry = PoolRegistry::new(Arc::clone(alloc), Policy::builtin(), Some(budget));
    let _ = registry.publish_stats(Duration::from_millis(500));
    let mode = if real {
        match registry
            .watch_pressure(PressureConfig::default())
            .map_err(|e| e.to_string())?
        {
            heapcore::pressure::PressureWatch::PsiTriggers(_) => "real (PSI triggers)",
            heapcore::pressure::PressureWatch::Timer { .. } => "real (MemAvailable timer)",
        }
    } else {
        "simulated"
    };
    let pool = |name: &str, qos, min| {
        registry
            .pool_with(
                PoolConfig::new(name, sources.to_vec(), size)
                    .qos(qos)
                    .min_buffers(min),
            )
            .map_err(|e| e.to_string())
    };
    let pools = [
        pool("tl-realtime", QosClass::Realtime, 4)?,
        pool("tl-normal", QosClass::Normal, 2)?,
        pool("tl-background", QosClass::Background, 0)?,
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    // Demand over time, in buffers held: the normal and background workloads peak early and
    // then need little (their pools keep the rest cached: what pressure should take back);
    // the realtime one bursts while pressure is high (its refill must wait for calm).
    // When the realtime burst starts (ms since start): 4.5 s when simulated, 1 s after pressure
    // was seen when real, so that it always falls while pressure is high.
    let burst_at = Arc::new(std::sync::atomic::AtomicU64::new(if real {
        u64::MAX
    } else {
        4500
    }));
    let demand = move |pool: usize, t: f64, burst_at: u64| -> usize {
        let burst = burst_at as f64 / 1e3;
        match pool {
            0 if (burst..burst + 0.5).contains(&t) => 7,
            0 => 2,
            _ if t < 1.5 => 8,
            1 => 2,
            _ => 1,
        }
    };
    let workers: Vec<_> = pools
        .iter()
        .cloned()
        .enumerate()
        .map(|(k, p)| {
            let stop = Arc::clone(&stop);
            let burst_at = Arc::clone(&burst_at);
            std::thread::spawn(move || {
                let mut held = std::collections::VecDeque::new();
                while !stop.load(Ordering::Relaxed) {
                    let want = demand(
                        k,
                        start.elapsed().as_secs_f64(),
                        burst_at.load(Ordering::Relaxed),
                    );
                    if held.len() < want {
                        if let Ok(b) = p.acquire_timeout(Duration::from_millis(50)) {
                            held.push_back(b);
                        }
                    } else {
                        // Cycle the oldest frame, as a stream does, and drop to the demand.
                        held.pop_front();
                        while held.len() > want {
                            held.pop_front();
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    // Real mode: the hog starts at 2.5 s on its own thread (filling memory takes a while under
    // emulation) and is stopped 3 s after pressure was seen (or after 40 s); sampling goes on
    // until pressure has been calm for 2 s. Simulated mode: fixed times.
    let (hog_tx, hog_rx) = std::sync::mpsc::channel::<()>();
    let mut hog_rx = Some(hog_rx);
    let mut hog_thread: Option<std::thread::JoinHandle<Result<(), String>>> = None;
    let mut samples = Vec::new();
    let mut max_total = 0;
    let mut pressure_seen: Option<Duration> = None;
    let mut hog_stopped: Option<Duration> = None;
    let mut calm_since: Option<Duration> = None;
    let period = Duration::from_millis(250);
    for step in 0u32.. {
        let t = period * step;
        if let Some(wait) = (start + t).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let ms = t.as_millis() as u64;
        if real {
            if let Some(stop) = hog_rx.take_if(|_| ms == 2500) {
                // The hog runs until told to stop (or the channel closes).
                hog_thread = Some(std::thread::spawn(move || {
                    let hog = Hog::start(96).map_err(|e| e.to_string())?;
                    let _ = stop.recv();
                    drop(hog);
                    Ok(())
                }));
            }
        } else {
            match ms {
                2500 => registry.set_pressure(PressureLevel::Elevated),
                4000 => registry.set_pressure(PressureLevel::Critical),
                5500 => registry.set_pressure(PressureLevel::Normal),
                _ => {}
            }
        }
        let stats = registry.stats();
        let held = |name: &str| {
            stats
                .pools
                .iter()
                .find(|p| p.name == name)
                .map_or(0, |p| p.bytes_held)
        };
        let s = Sample {
            t_ms: ms,
            pressure: stats.pressure.clone(),
            realtime_bytes: held("tl-realtime"),
            realtime_free: stats
                .pools
                .iter()
                .find(|p| p.name == "tl-realtime")
                .map_or(0, |p| p.buffers_free),
            normal_bytes: held("tl-normal"),
            background_bytes: held("tl-background"),
            total_bytes: stats.global_used,
        };
        max_total = max_total.max(s.total_bytes);
        samples.push(s);
        let raised = registry.pressure() != PressureLevel::Normal;
        if raised && pressure_seen.is_none() {
            pressure_seen = Some(t);
            if real {
                burst_at.store(ms + 1000, Ordering::Relaxed);
            }
        }
        if real
            && hog_stopped.is_none()
            && ms > 2500
            && (pressure_seen.is_some_and(|p| t >= p + Duration::from_secs(3))
                || t >= Duration::from_secs(40))
        {
            let _ = hog_tx.send(());
            hog_stopped = Some(t);
        }
        calm_since = if raised { None } else { calm_since.or(Some(t)) };
        let done = if real {
            hog_stopped.is_some() && calm_since.is_some_and(|c| t >= c + Duration::from_secs(2))
                || t >= Duration::from_secs(90)
        } else {
            t >= Duration::from_secs(8)
        };
        if done {
            break;
        }
    }
    let _ = hog_tx.send(());
    if let Some(h) = hog_thread {
        h.join()
            .map_err(|_| "the hog thread panicked".to_owned())??;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    Ok(Timeline {
        pressure_mode: mode.to_owned(),
        budget,
        max_total,
        samples,
    })
}
