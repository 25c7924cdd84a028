//! Time to first frame and what it costs in memory: a realtime pool made with 0, 2, 4 or 8
//! buffers prewarmed (made, first buffer acquired and written whole), against allocating that
//! one buffer directly. Prewarm is paid up front, before the first frame.

use std::sync::Arc;
use std::time::Instant;

use heapcore::{Pool, PoolConfig, QosClass};

use super::{Ctx, hd_nv12};
use dmaheap_benchkit::schema::{FirstFrame, Report};

fn first_frame(ctx: &Ctx, size: u64, prewarm: Option<usize>) -> Result<(f64, u64), String> {
    let err = |e: heapcore::Error| e.to_string();
    let t0 = Instant::now();
    let held = match prewarm {
        Some(k) => {
            let pool = Pool::new(
                Arc::clone(&ctx.alloc),
                PoolConfig::new("bench-first", ctx.sources.clone(), size)
                    .qos(QosClass::Realtime)
                    .min_buffers(k),
            )
            .map_err(err)?;
            let mut buf = pool.try_acquire().map_err(err)?;
            let mut cpu = buf.write().map_err(err)?;
            cpu.fill(0x80);
            cpu.finish().map_err(err)?;
            let ns = t0.elapsed().as_nanos() as f64;
            let held = pool.stats().bytes_held;
            drop(buf);
            return Ok((ns, held));
        }
        None => {
            let mut buf = ctx
                .alloc
                .allocate_first(&ctx.sources, size, "bench-first")
                .map_err(err)?;
            buf.prefault().map_err(err)?;
            let mut cpu = buf.write().map_err(err)?;
            cpu.fill(0x80);
            cpu.finish().map_err(err)?;
            buf.len()
        }
    };
    Ok((t0.elapsed().as_nanos() as f64, held))
}

pub(super) fn run(ctx: &Ctx, report: &mut Report) -> Result<(), String> {
    let sizes = [hd_nv12().size, 12_441_600];
    let mut specs: Vec<(u64, Option<usize>)> = Vec::new();
    for size in sizes {
        specs.push((size, None));
        for k in [0, 2, 4, 8] {
            specs.push((size, Some(k)));
        }
    }
    let mut results: Vec<FirstFrame> = specs
        .iter()
        .map(|&(size, k)| FirstFrame {
            what: match k {
                Some(k) => format!("realtime pool, prewarm {k}"),
                None => "direct allocation".into(),
            },
            size,
            prewarm: k.unwrap_or(0),
            ns: Vec::new(),
            bytes_held: 0,
        })
        .collect();
    for rep in 0..ctx.reps {
        ctx.say(format!(
            "time to first frame, repetition {}/{}",
            rep + 1,
            ctx.reps
        ));
        let order: Vec<usize> = if rep % 2 == 0 {
            (0..specs.len()).collect()
        } else {
            (0..specs.len()).rev().collect()
        };
        for i in order {
            let (size, k) = specs[i];
            let (ns, held) = first_frame(ctx, size, k)?;
            results[i].ns.push(ns);
            results[i].bytes_held = results[i].bytes_held.max(held);
        }
    }
    report.first_frame.extend(results);
    Ok(())
}
