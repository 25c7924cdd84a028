//! Memory pressure for the benchmark, made by a child process (`dmaheap bench-hog`):
//!
//! - `swap`: takes more memory than there is RAM (with swap: a tenth more than RAM; without,
//!   all but `--leave` MiB of what is available) and keeps rewriting it, so the kernel must
//!   reclaim and swap for every allocation while it runs. For the test VM (zram swap), never
//!   for a shared machine: it takes everyone's memory. Bounded: it always leaves `--leave` MiB
//!   available and marks itself the OOM killer's first choice.
//! - `refault`: reads a file of its own in a loop from a memory cgroup held below the file's
//!   size, so the kernel reclaims the cgroup's page cache for every stretch it reads: real
//!   reclaim, which PSI counts as memory stalls, without taking memory from anyone (it holds
//!   at most the cgroup's limit). For machines without swap or shared with others. Where no
//!   cgroup can be made (not root), it pushes its pages out itself (`MADV_PAGEOUT`) and
//!   faults them back in; PSI then counts a stall only for a refault the kernel judges
//!   recent, which depends on how much page cache the machine keeps, so the bench may see
//!   none (and then judges no pressure target).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use dmaheap_benchkit::cgroup::MemoryCgroup;
use dmaheap_benchkit::hogfile;
use heapcore::sysinfo::MemInfo;

const CHUNK: usize = 16 << 20;

/// The refault hog's cgroup limit: a quarter of its file, so that every stretch it reads
/// makes the kernel reclaim another.
const REFAULT_CGROUP_LIMIT: u64 = 64 << 20;

/// What makes the pressure.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum HogKind {
    /// `swap` inside the test VM when it has swap, else `refault`.
    Auto,
    Swap,
    Refault,
}

impl HogKind {
    pub(super) fn resolve(self, in_test_vm: bool, swap_total: u64) -> HogKind {
        match self {
            Self::Auto if in_test_vm && swap_total > 0 => Self::Swap,
            Self::Auto => Self::Refault,
            k => k,
        }
    }

    pub(super) fn describe(self) -> &'static str {
        match self {
            Self::Swap | Self::Auto => {
                "a child takes 110% of RAM (zram swap) and keeps rewriting it: the kernel reclaims \
                 and swaps continuously"
            }
            Self::Refault => {
                "a child reads a 256 MiB file of its own in a loop from a memory cgroup held to \
                 64 MiB: the kernel reclaims the cgroup's page cache all the time, stalls that \
                 PSI counts, contained (no swap here, and the machine is shared)"
            }
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct HogArgs {
    /// MiB of MemAvailable to leave when there is no swap.
    #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    leave: u64,
    /// What to do.
    #[arg(long, value_enum, default_value = "swap")]
    kind: HogKind,
    /// The file `refault` churns (made, and removed at the end).
    #[arg(long)]
    file: Option<PathBuf>,
    /// The `cgroup.procs` of a memory cgroup to join once the file is written (its pages
    /// then load and are reclaimed there; the file's first writing is not charged to it).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Its size in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..=4096))]
    file_mib: u64,
    /// MiB the swap hog takes and keeps rewriting, instead of what RAM and swap suggest: for
    /// a hog in a memory cgroup whose `memory.high` is below it, which then reclaims (and is
    /// throttled) all the time while the rest of the machine keeps its memory.
    #[arg(long, value_parser = clap::value_parser!(u64).range(16..=1 << 20))]
    mib: Option<u64>,
}

/// How much the swap hog takes: with swap, a tenth more than RAM (the kernel must swap some
/// out); without, all but `leave` of what is available.
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

/// Runs in the child: makes the pressure, says "ready", goes on until stdin closes.
pub(crate) fn hog(args: HogArgs) -> Result<(), Box<dyn std::error::Error>> {
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
    match args.kind {
        HogKind::Refault => {
            let path = args
                .file
                .ok_or("the refault hog needs --file (a path on a disk, not tmpfs)")?;
            refault(&path, args.file_mib << 20, args.cgroup.as_deref(), &stopped)?;
        }
        HogKind::Swap | HogKind::Auto => {
            let target = args
                .mib
                .map_or_else(|| target_bytes(args.leave << 20), |mib| mib << 20);
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
            let mut i = 0;
            while !stopped() {
                if !chunks.is_empty() {
                    let n = i % chunks.len();
                    fill(&mut chunks[n], &mut seed);
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    let _ = watcher.join();
    Ok(())
}

/// The refault churn: a file of `len` bytes, mapped; each 16 MiB stretch is read twice (so
/// its pages are on the active list, the working set). In `cgroup` (whose limit is below the
/// file's size) reading on makes the kernel reclaim older stretches; without one, each stretch
/// is pushed out with `MADV_PAGEOUT` and read again, which faults it back in from the disk.
fn refault(
    path: &std::path::Path,
    len: u64,
    cgroup: Option<&std::path::Path>,
    stopped: &dyn Fn() -> bool,
) -> Result<(), Box<dyn std::error::Error>> {
    use rustix::fs::{Mode, OFlags};
    use rustix::mm::{Advice, MapFlags, ProtFlags};
    if hogfile::on_tmpfs(path.parent().unwrap_or(std::path::Path::new("/"))) {
        return Err(format!(
            "{} is on tmpfs: the refault hog needs a disk",
            path.display()
        )
        .into());
    }
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let _ = std::fs::remove_file(path);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut chunk = vec![0u8; CHUNK];
    let mut written = 0u64;
    let file = std::fs::File::from(fd);
    {
        let mut w = std::io::BufWriter::new(&file);
        while written < len {
            fill(&mut chunk, &mut seed);
            w.write_all(&chunk)?;
            written += CHUNK as u64;
        }
        w.flush()?;
    }
    file.sync_all()?;
    drop(chunk);
    // Only now: the writing above (and its 16 MiB buffer) is charged where the parent is.
    if let Some(procs) = cgroup {
        std::fs::write(procs, std::process::id().to_string())
            .map_err(|e| format!("joining the cgroup {}: {e}", procs.display()))?;
        // What the writing left in the page cache stays charged outside: drop it, so every
        // page read from now on is the cgroup's.
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
    }
    let len = written as usize;
    // SAFETY: a new shared read-only mapping of our own file, unmapped below; nothing else
    // maps it and the file is not truncated while mapped (it is unlinked and ours alone).
    let base = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ,
            MapFlags::SHARED,
            &file,
            0,
        )
    }?;
    println!("ready {len}");
    std::io::stdout().flush()?;
    let page = heapcore::sysinfo::page_size() as usize;
    let mut sink = 0u8;
    let mut at = 0usize;
    while !stopped() {
        let stretch = CHUNK.min(len - at);
        // `at + stretch <= len`: inside the mapping.
        let start = base.cast::<u8>().wrapping_add(at);
        for _ in 0..2 {
            for off in (0..stretch).step_by(page) {
                let byte = start.wrapping_add(off);
                // SAFETY: `off < stretch`: a readable byte of the mapping.
                sink ^= unsafe { byte.read_volatile() };
            }
        }
        if cgroup.is_none() {
            // SAFETY: the range is inside our mapping; MADV_PAGEOUT only drops clean pages,
            // which the next access reads back from the file.
            let _ = unsafe { rustix::mm::madvise(start.cast(), stretch, Advice::LinuxPageOut) };
        }
        at = (at + stretch) % len;
        // At most 16 MiB per 25 ms (640 MB/s) read back: steady reclaim, not a flood of I/O
        // on a shared disk.
        std::thread::sleep(Duration::from_millis(25));
    }
    std::hint::black_box(sink);
    // SAFETY: the mapping made above, no longer used.
    unsafe { rustix::mm::munmap(base, len) }?;
    Ok(())
}

/// The parent's handle on a running hog; dropping it ends the pressure.
pub(super) struct Hog {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    pub(super) held: u64,
    pub(super) took: Duration,
    /// How it makes the pressure, for the report.
    pub(super) how: String,
    /// The refault hog's cgroup: removed (on drop, after the child has ended) with it.
    _cgroup: Option<MemoryCgroup>,
}

impl Hog {
    pub(super) fn start(kind: HogKind) -> Result<Self, Box<dyn std::error::Error>> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        let mut cgroup = None;
        let mut how = kind.describe().to_owned();
        match kind {
            HogKind::Refault => {
                let file = hogfile::dir().join(format!("dmaheap-bench-hog-{}", std::process::id()));
                cmd.args(["bench-hog", "--kind", "refault", "--file"])
                    .arg(file);
                match MemoryCgroup::reclaiming(
                    &format!("dmaheap-bench-hog-{}", std::process::id()),
                    REFAULT_CGROUP_LIMIT,
                ) {
                    Ok(c) => {
                        cmd.arg("--cgroup").arg(c.procs());
                        cgroup = Some(c);
                    }
                    Err(e) => {
                        how = format!(
                            "a child pushes the pages of a 256 MiB file of its own out \
                             (MADV_PAGEOUT) and faults them back in, in a loop (no memory \
                             cgroup: {e}); PSI counts a stall only for refaults the kernel \
                             judges recent"
                        );
                    }
                }
            }
            _ => {
                cmd.args(["bench-hog", "--kind", "swap", "--leave", "96"]);
            }
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        // On the last CPU, away from the first, where one-thread cases run: the pressure is
        // on memory, not on the measured thread's CPU (with one CPU, it shares it).
        let cpus = dmaheap_benchkit::measure::allowed_cpus();
        if let (Some(&last), true) = (cpus.last(), cpus.len() > 1) {
            let mut set = rustix::thread::CpuSet::new();
            set.set(last);
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::thread::sched_setaffinity(Some(pid), &set);
        }
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no hog stdout")?);
        let mut line = String::new();
        let start = Instant::now();
        stdout.read_line(&mut line)?;
        let held: u64 = line
            .strip_prefix("ready ")
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| format!("the memory hog did not start: {line:?}"))?;
        Ok(Self {
            child,
            _stdout: stdout,
            held,
            took: start.elapsed(),
            how,
            _cgroup: cgroup,
        })
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
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
