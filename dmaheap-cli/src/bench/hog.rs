//! Memory pressure for the benchmark: a child process (`dmaheap bench-hog`) that takes memory
//! until little is left and then keeps churning part of it, so that the kernel must reclaim
//! for every allocation while it runs. Bounded: it always leaves `--leave` MiB available and
//! marks itself the OOM killer's first choice.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use heapcore::sysinfo::MemInfo;

const CHUNK: usize = 16 << 20;

#[derive(clap::Args)]
pub(crate) struct HogArgs {
    /// MiB of MemAvailable to leave when there is no swap.
    #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    leave: u64,
}

/// How much the hog takes: with swap, a tenth more than RAM (the kernel must swap some out);
/// without, all but `leave` of what is available.
fn target_bytes(leave: u64) -> u64 {
    let info = MemInfo::read();
    let total = info.get("MemTotal").unwrap_or(0);
    let available = info.get("MemAvailable").unwrap_or(0);
    let swap_free = info.get("SwapFree").unwrap_or(0);
    if swap_free > total / 4 {
        (total + total / 10).min(available + swap_free / 2)
    } else {
        available.saturating_sub(leave)
    }
}

/// Fills a chunk so it compresses well in zram: random words in the first 256 bytes
/// of each page (all-zero pages would cost zram nothing, and so cost reclaim nothing).
fn fill(chunk: &mut [u8], seed: &mut u64) {
    for page in chunk.chunks_mut(4096) {
        for word in page[..256].chunks_mut(8) {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            word.copy_from_slice(&seed.to_le_bytes());
        }
    }
}

/// Runs in the child: takes memory, says "ready", churns until stdin closes.
pub(crate) fn hog(args: HogArgs) -> Result<(), Box<dyn std::error::Error>> {
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    let target = target_bytes(args.leave << 20);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    while ((chunks.len() + 1) * CHUNK) as u64 <= target {
        let mut c = vec![0u8; CHUNK];
        fill(&mut c, &mut seed);
        chunks.push(c);
    }
    println!("ready {}", chunks.len() * CHUNK);
    std::io::stdout().flush()?;
    // Churn: rewrite a chunk at a time, so reclaim (and swap) never rests.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let mut i = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if !chunks.is_empty() {
            let n = i % chunks.len();
            fill(&mut chunks[n], &mut seed);
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = watcher.join();
    Ok(())
}

/// The parent's handle on a running hog; dropping it ends the pressure.
pub(super) struct Hog {
    child: Child,
    _stdout: BufReader<ChildStdout>,
}

impl Hog {
    pub(super) fn start(leave_mib: u64) -> Result<Self, Box<dyn std::error::Error>> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args(["bench-hog", "--leave", &leave_mib.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no hog stdout")?);
        let mut line = String::new();
        let start = Instant::now();
        stdout.read_line(&mut line)?;
        let held: u64 = line
            .strip_prefix("ready ")
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| format!("the memory hog did not start: {line:?}"))?;
        eprintln!(
            "  memory hog holds {} MiB (took {:.1} s)",
            held >> 20,
            start.elapsed().as_secs_f64()
        );
        Ok(Self {
            child,
            _stdout: stdout,
        })
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
