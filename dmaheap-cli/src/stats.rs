//! `dmaheap stats`: pool statistics that running processes publish.

use heapcore::pool::{RegistryStats, open_private_dir, process_start_time, stats_dir};
use heapcore::size::ByteSize;
use rustix::fs::AtFlags;

use crate::table::Table;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Only this process.
    #[arg(long)]
    pid: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Statistics every live process published. Files whose process is gone, or whose pid now
/// belongs to another process (its start time differs), are removed and not shown. A
/// directory another user could have prepared is refused.
pub(crate) fn published() -> Result<Vec<RegistryStats>, Box<dyn std::error::Error>> {
    let dir = stats_dir();
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let dir_fd = open_private_dir(&dir, false)?;
    let mut all = Vec::new();
    for entry in std::fs::read_dir(&dir)?.filter_map(Result::ok) {
        let name = entry.file_name();
        if !name.to_string_lossy().ends_with(".json") {
            continue;
        }
        let Some(stats) = std::fs::read(entry.path())
            .ok()
            .and_then(|bytes| serde_json::from_slice::<RegistryStats>(&bytes).ok())
        else {
            continue;
        };
        let live = stats
            .start_time
            .is_some_and(|t| process_start_time(stats.pid) == Some(t));
        if live {
            all.push(stats);
        } else if let Err(e) = rustix::fs::unlinkat(&dir_fd, name.as_os_str(), AtFlags::empty()) {
            log::debug!("cannot remove the stale {}: {e}", entry.path().display());
        }
    }
    all.sort_by_key(|s| s.pid);
    Ok(all)
}

pub(crate) fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let all: Vec<RegistryStats> = published()?
        .into_iter()
        .filter(|s| args.pid.is_none_or(|p| p == s.pid))
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        println!(
            "No process publishes pool statistics in {} (set DMAHEAP_STATS=1 for programs \
             using dmaheap pools; 'dmaheap bench' publishes while it runs).",
            stats_dir().display()
        );
        return Ok(());
    }
    for s in &all {
        print_registry(s);
    }
    Ok(())
}

pub(crate) fn print_registry(s: &RegistryStats) {
    let budget = s.global_budget.map_or("no global budget".to_owned(), |b| {
        let from = if s.budget_source.is_empty() {
            String::new()
        } else {
            format!(" ({})", s.budget_source)
        };
        format!(
            "global budget {} of {}{from}",
            ByteSize(s.global_used),
            ByteSize(b)
        )
    });
    println!(
        "pid {} ({}): memory pressure {} ({}), {budget}",
        s.pid, s.program, s.pressure, s.pressure_source
    );
    let mut t = Table::new(&[
        "POOL",
        "QOS",
        "SOURCE",
        "BUFFER",
        "FREE",
        "OUT",
        "HELD",
        "HITS",
        "MISSES",
        "HOT-ALLOCS",
        "REFILLS",
        "TRIMS",
        "DENIED",
        "P50",
        "P99",
        "P99.9",
    ]);
    for p in &s.pools {
        let l = &p.acquire_latency;
        t.row(vec![
            p.name.clone(),
            p.qos.clone(),
            p.source.clone(),
            ByteSize(p.buffer_size).to_string(),
            p.buffers_free.to_string(),
            p.buffers_out.to_string(),
            ByteSize(p.bytes_held).to_string(),
            p.hits.to_string(),
            p.misses.to_string(),
            p.hot_path_allocs.to_string(),
            p.refills.to_string(),
            p.trims.to_string(),
            p.budget_denials.to_string(),
            ns(l.p50_ns),
            ns(l.p99_ns),
            ns(l.p999_ns),
        ]);
    }
    t.print();
    println!();
}

pub(crate) fn ns(v: u64) -> String {
    match v {
        0..1_000 => format!("{v} ns"),
        1_000..1_000_000 => format!("{:.1} µs", v as f64 / 1e3),
        _ => format!("{:.2} ms", v as f64 / 1e6),
    }
}
