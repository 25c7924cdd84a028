//! Kernel entries of the calling thread, counted: system calls with the `raw_syscalls:sys_enter`
//! tracepoint and page faults with the software event, both through `perf_event_open` on this
//! thread only (root or `CAP_PERFMON`, and tracefs mounted: the tracepoint's id lives there).
//! Where perf events cannot be had, page faults come from `getrusage(RUSAGE_THREAD)` and system
//! calls are not counted (`None`), never guessed; [`syscalls_uncounted`] says why. Shared with `dmaheap-bench-peers`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

/// `struct perf_event_attr` as of `PERF_ATTR_SIZE_VER0` (64 bytes), which every kernel takes.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    /// The bit field: disabled, inherit, pinned, exclusive, exclude_user, exclude_kernel, ...
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_COUNT_SW_PAGE_FAULTS: u64 = 2;
const PERF_COUNT_SW_CONTEXT_SWITCHES: u64 = 3;
const PERF_COUNT_SW_DUMMY: u64 = 9;
const DISABLED: u64 = 1;
const EXCLUDE_KERNEL: u64 = 1 << 5;
const EXCLUDE_HV: u64 = 1 << 6;
/// `PERF_FLAG_FD_CLOEXEC`.
const FD_CLOEXEC: libc::c_ulong = 1 << 3;

fn perf_open(type_: u32, config: u64, flags: u64) -> Option<OwnedFd> {
    let attr = PerfEventAttr {
        type_,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config,
        flags,
        ..PerfEventAttr::default()
    };
    // pid 0, cpu -1: this thread, on whatever CPU it runs; no group; close on exec.
    // SAFETY: `attr` is a valid perf_event_attr of the size it declares, alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            0,
            -1,
            -1,
            FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Keeps perf's scheduler hooks switched on for the rest of the process: disabled events on
/// the thread, opened once and never closed (call it early, while the process has one thread;
/// [`ThreadCounters::open`] calls it too). `__schedule` has two of them, each a static key
/// (kernel text patched through an int3): one that the first task event switches on, and one
/// that the first context-switch event does (the counters' own). The kernel switches each
/// off again when its last event closes, so every case that counts would patch the scheduler
/// twice, at moments no one chose. Under qemu TCG another vCPU can run the code while it is
/// patched: the test VM died of an int3 Oops in `__schedule` as the GStreamer pools began
/// counting, first at the task-event key and, with that one held, twice in a row at the
/// context-switch one (`__schedule+0x356`, `perf_swevent_enabled[PERF_COUNT_SW_CONTEXT_SWITCHES]`
/// in the 6.12 test kernel's jump table). Held disabled, they cost a check per context switch
/// and nothing else; the system-call tracepoint and the page-fault event are not held, which
/// would put every system call and page fault of every case on the slow path.
pub fn hold_scheduler_hooks() {
    static HELD: std::sync::OnceLock<[Option<OwnedFd>; 2]> = std::sync::OnceLock::new();
    HELD.get_or_init(|| {
        [
            perf_open(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_DUMMY, DISABLED),
            perf_open(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CONTEXT_SWITCHES, DISABLED),
        ]
    });
}

fn perf_read(fd: &OwnedFd) -> u64 {
    let mut value = [0u8; 8];
    match rustix::io::read(fd, &mut value) {
        Ok(8) => u64::from_ne_bytes(value),
        _ => 0,
    }
}

/// Where tracefs is mounted (the first) or was before kernel 4.1 (through debugfs).
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The `raw_syscalls:sys_enter` tracepoint's id, or why it cannot be had.
fn syscall_tracepoint_id() -> Result<u64, String> {
    let mut refused = None;
    for dir in TRACEFS {
        match std::fs::read_to_string(format!("{dir}/events/raw_syscalls/sys_enter/id")) {
            Ok(id) => {
                return id
                    .trim()
                    .parse()
                    .map_err(|e| format!("{dir}: the tracepoint id {id:?} is not a number: {e}"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                refused = Some(format!("{dir} is readable by root only"));
            }
            Err(_) => {}
        }
    }
    Err(refused.unwrap_or_else(|| {
        format!(
            "tracefs is not mounted (as root: mount -t tracefs tracefs {})",
            TRACEFS[0]
        )
    }))
}

/// Why system calls cannot be counted on this machine, or `None` when they can.
pub fn syscalls_uncounted() -> Option<String> {
    let id = match syscall_tracepoint_id() {
        Ok(id) => id,
        Err(why) => return Some(why),
    };
    match perf_open(PERF_TYPE_TRACEPOINT, id, 0) {
        Some(_) => None,
        None => Some(format!(
            "perf_event_open refused the raw_syscalls:sys_enter tracepoint: {} (needs root or \
             CAP_PERFMON)",
            std::io::Error::last_os_error()
        )),
    }
}

/// `getrusage(RUSAGE_THREAD)`: (minor faults, major faults, voluntary and involuntary
/// context switches).
fn thread_rusage() -> (u64, u64, u64) {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage for the kernel to fill.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    if rc != 0 {
        return (0, 0, 0);
    }
    (
        usage.ru_minflt as u64,
        usage.ru_majflt as u64,
        (usage.ru_nvcsw + usage.ru_nivcsw) as u64,
    )
}

/// How the counts were taken, for the report.
pub fn method() -> String {
    let probe = ThreadCounters::open();
    format!(
        "system calls: {}; page faults: {}",
        // Only an uncounted probe asks why (which opens the event once more).
        match probe.syscalls {
            Some(_) => "perf_event_open tracepoint raw_syscalls:sys_enter on the thread".into(),
            None => format!(
                "not counted ({})",
                syscalls_uncounted()
                    .unwrap_or_else(|| "perf_event_open failed on this thread".into())
            ),
        },
        if probe.faults.is_some() {
            "perf_event_open software event page-faults on the thread"
        } else {
            "getrusage(RUSAGE_THREAD) ru_minflt + ru_majflt"
        }
    )
}

/// Counters on the calling thread.
pub struct ThreadCounters {
    syscalls: Option<OwnedFd>,
    faults: Option<OwnedFd>,
    switches: Option<OwnedFd>,
    /// Syscalls an empty reading costs (the read itself): subtracted.
    reading_cost: u64,
}

/// A reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    syscalls: Option<u64>,
    faults: u64,
    switches: u64,
}

/// Kernel entries per operation over a counted stretch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PerOp {
    /// Operations counted.
    pub ops: u64,
    /// `None`: system calls could not be counted here.
    pub syscalls: Option<f64>,
    /// Page faults (minor + major) per operation.
    pub page_faults: f64,
    /// Context switches (voluntary + involuntary) per operation.
    pub context_switches: f64,
}

impl ThreadCounters {
    /// Opens the counters on the calling thread and measures the system calls a reading costs.
    pub fn open() -> Self {
        hold_scheduler_hooks();
        let syscalls = syscall_tracepoint_id()
            .ok()
            .and_then(|id| perf_open(PERF_TYPE_TRACEPOINT, id, 0));
        let faults = perf_open(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS, 0).or_else(|| {
            perf_open(
                PERF_TYPE_SOFTWARE,
                PERF_COUNT_SW_PAGE_FAULTS,
                EXCLUDE_KERNEL | EXCLUDE_HV,
            )
        });
        let switches = perf_open(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_CONTEXT_SWITCHES, 0);
        let mut c = Self {
            syscalls,
            faults,
            switches,
            reading_cost: 0,
        };
        // What reading costs, measured: the smallest delta of back-to-back readings.
        let cost = (0..16)
            .map(|_| {
                let a = c.read();
                let b = c.read();
                b.syscalls.unwrap_or(0) - a.syscalls.unwrap_or(0)
            })
            .min()
            .unwrap_or(0);
        c.reading_cost = cost;
        c
    }

    /// The thread's running counts now; only a [`delta`](Self::delta) of two means anything.
    pub fn read(&self) -> Reading {
        let (minflt, majflt, switches) = if self.faults.is_none() || self.switches.is_none() {
            thread_rusage()
        } else {
            (0, 0, 0)
        };
        Reading {
            syscalls: self.syscalls.as_ref().map(perf_read),
            faults: self.faults.as_ref().map_or(minflt + majflt, perf_read),
            switches: self.switches.as_ref().map_or(switches, perf_read),
        }
    }

    /// Entries between `before` and `after` (two readings with `ops` operations between them),
    /// without what the readings themselves cost.
    pub fn delta(&self, before: Reading, after: Reading) -> Reading {
        Reading {
            syscalls: before
                .syscalls
                .zip(after.syscalls)
                .map(|(b, a)| a.saturating_sub(b).saturating_sub(self.reading_cost)),
            faults: after.faults.saturating_sub(before.faults),
            switches: after.switches.saturating_sub(before.switches),
        }
    }

    /// How many of the three counts (system calls, faults, switches) come from perf event fds.
    pub fn fd_count(&self) -> usize {
        [&self.syscalls, &self.faults, &self.switches]
            .iter()
            .filter(|f| f.as_ref().is_some_and(|f| f.as_raw_fd() >= 0))
            .count()
    }
}

/// Sums readings and turns them into per-operation figures.
#[derive(Debug, Default)]
pub struct Tally {
    ops: u64,
    syscalls: Option<u64>,
    faults: u64,
    switches: u64,
    counted_syscalls: bool,
}

impl Tally {
    /// Adds `ops` operations and their entries `d`; system calls count only if every `d` had them.
    pub fn add(&mut self, ops: u64, d: Reading) {
        if self.ops == 0 {
            self.counted_syscalls = d.syscalls.is_some();
        }
        self.ops += ops;
        self.syscalls = match d.syscalls {
            Some(n) if self.counted_syscalls => Some(self.syscalls.unwrap_or(0) + n),
            _ => None,
        };
        self.faults += d.faults;
        self.switches += d.switches;
    }

    /// Adds another tally (another thread's, another run's).
    pub fn merge(&mut self, other: Tally) {
        if other.ops == 0 {
            return;
        }
        if self.ops == 0 {
            *self = other;
            return;
        }
        self.ops += other.ops;
        self.syscalls = self.syscalls.zip(other.syscalls).map(|(a, b)| a + b);
        self.faults += other.faults;
        self.switches += other.switches;
    }

    /// Operations tallied.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// The sums divided by the operations (by 1 if there were none).
    pub fn per_op(&self) -> PerOp {
        let per = |v: u64| v as f64 / self.ops.max(1) as f64;
        PerOp {
            ops: self.ops,
            syscalls: self.syscalls.map(per),
            page_faults: per(self.faults),
            context_switches: per(self.switches),
        }
    }
}
