//! Memory pressure: Linux PSI triggers (`/proc/pressure/memory`, or a cgroup's
//! `memory.pressure`) with `poll`, and a timer on `MemAvailable` where PSI is missing.
//!
//! A trigger fires when tasks stalled on memory for more than a threshold within a window;
//! that raises the level at once. The level falls when no trigger fired for two windows and
//! the stall time accumulated over the last window (the file's `total`) is below a calm
//! fraction of it, so pools do not refill into a pressure spike, nor wait for the 10-second
//! average to decay.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use serde::Serialize;

use crate::sysinfo::MemInfo;

/// How short memory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum PressureLevel {
    /// No stalls worth acting on: pools keep what their caps allow.
    Normal = 0,
    /// Some tasks stall on memory: background pools give memory back.
    Elevated = 1,
    /// All non-idle tasks stall at times: normal pools give memory back too.
    Critical = 2,
}

impl PressureLevel {
    #[inline]
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Normal,
            1 => Self::Elevated,
            _ => Self::Critical,
        }
    }
}

impl std::str::FromStr for PressureLevel {
    type Err = String;

    /// `normal`, `elevated` or `critical` (as `DMAHEAP_PRESSURE` spells them).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "normal" => Ok(Self::Normal),
            "elevated" => Ok(Self::Elevated),
            "critical" => Ok(Self::Critical),
            other => Err(format!(
                "{other:?} is not a pressure level: use watch, normal, elevated or critical"
            )),
        }
    }
}

/// Thresholds: stall time per window that raises the level, and the averages below which it
/// falls again.
#[derive(Debug, Clone)]
pub struct PressureConfig {
    /// The PSI file (`/proc/pressure/memory` or a cgroup's `memory.pressure`).
    pub psi_path: PathBuf,
    /// Window of the triggers. Unprivileged processes need a multiple of 2 s.
    pub window: Duration,
    /// "some" stall per window that means Elevated.
    pub some_stall: Duration,
    /// "full" stall per window that means Critical.
    pub full_stall: Duration,
    /// Stall time per window, as a fraction of the window, under which the level may fall.
    pub calm_fraction: f64,
    /// The timer fallback: MemAvailable/MemTotal below this fraction means Elevated...
    pub elevated_available: f64,
    /// ... and below this one Critical.
    pub critical_available: f64,
}

impl Default for PressureConfig {
    /// Watches this process's memory cgroup (`memory.pressure`, cgroup v2) where it may make
    /// triggers there, else the host's `/proc/pressure/memory`.
    fn default() -> Self {
        let cgroup = &crate::sysinfo::memory_limits().psi;
        let host = Path::new(crate::sysinfo::HOST_MEMORY_PSI);
        let writable = rustix::fs::access(cgroup, rustix::fs::Access::WRITE_OK).is_ok();
        Self {
            psi_path: if writable {
                cgroup.clone()
            } else {
                host.into()
            },
            window: Duration::from_secs(2),
            some_stall: Duration::from_millis(100),
            full_stall: Duration::from_millis(100),
            calm_fraction: 0.01,
            elevated_available: 0.15,
            critical_available: 0.05,
        }
    }
}

/// How pressure is being watched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PressureWatch {
    /// PSI triggers with poll (the kernel wakes us).
    PsiTriggers(PathBuf),
    /// No PSI (or no triggers allowed): MemAvailable sampled by a timer.
    Timer {
        /// Why triggers could not be used (the file and the error).
        reason: String,
    },
}

/// The `some` line's `total=` (microseconds stalled since boot) from a PSI file.
fn read_some_total(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with("some"))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("total="))?
        .parse()
        .ok()
}

fn open_trigger(
    path: &Path,
    kind: &str,
    stall: Duration,
    window: Duration,
) -> rustix::io::Result<OwnedFd> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let spec = format!("{kind} {} {}\0", stall.as_micros(), window.as_micros());
    let mut file = std::fs::File::from(fd);
    file.write_all(spec.as_bytes())
        .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::INVAL))?;
    Ok(OwnedFd::from(file))
}

/// Watches memory pressure on a thread and reports each change of level.
pub struct PressureMonitor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    watch: PressureWatch,
}

impl PressureMonitor {
    /// Starts watching; `on_change` runs on the monitor thread for every new level.
    pub fn start(
        config: PressureConfig,
        on_change: impl Fn(PressureLevel) + Send + 'static,
    ) -> std::io::Result<Self> {
        let triggers = open_trigger(&config.psi_path, "some", config.some_stall, config.window)
            .and_then(|some| {
                let full =
                    open_trigger(&config.psi_path, "full", config.full_stall, config.window)?;
                Ok((some, full))
            });
        let watch = match &triggers {
            Ok(_) => PressureWatch::PsiTriggers(config.psi_path.clone()),
            Err(e) => {
                let reason = format!("no PSI trigger on {}: {e}", config.psi_path.display());
                log::info!("{reason}: watching MemAvailable every second instead");
                PressureWatch::Timer { reason }
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = crate::worker::spawn("dmaheap-pressure".into(), move || match triggers {
            Ok((some, full)) => watch_psi(&config, some, full, &thread_stop, &on_change),
            Err(_) => watch_timer(&config, &thread_stop, &on_change),
        })?;
        Ok(Self {
            stop,
            thread: Some(thread),
            watch,
        })
    }

    /// How the monitor watches.
    pub fn watch(&self) -> &PressureWatch {
        &self.watch
    }
}

impl Drop for PressureMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // `on_change` may drop the monitor's last owner, on the monitor thread itself: a
            // thread cannot join itself (EDEADLK, which std turns into a panic). It sees
            // `stop` and ends once the callback returns.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// The poll period, which bounds how late the monitor notices calm (and `stop`).
const TICK: Duration = Duration::from_millis(250);

fn watch_psi(
    config: &PressureConfig,
    some: OwnedFd,
    full: OwnedFd,
    stop: &AtomicBool,
    on_change: &dyn Fn(PressureLevel),
) {
    let mut level = PressureLevel::Normal;
    let mut last_some = Instant::now() - config.window * 4;
    let mut last_full = last_some;
    // (when, stall total) samples covering the last window.
    let mut history: std::collections::VecDeque<(Instant, u64)> = std::collections::VecDeque::new();
    let timeout = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: TICK.as_nanos() as _,
    };
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            PollFd::new(&some, PollFlags::PRI),
            PollFd::new(&full, PollFlags::PRI),
        ];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                log::warn!("polling PSI triggers failed ({e}): switching to the timer");
                return watch_timer(config, stop, on_change);
            }
        }
        let fired = |fd: &PollFd<'_>| fd.revents().contains(PollFlags::PRI);
        if fds.iter().any(|fd| fd.revents().contains(PollFlags::ERR)) {
            log::warn!("a PSI trigger went away (cgroup removed?): switching to the timer");
            return watch_timer(config, stop, on_change);
        }
        let now = Instant::now();
        if fired(&fds[0]) {
            last_some = now;
        }
        if fired(&fds[1]) {
            last_full = now;
        }
        if let Some(total) = read_some_total(&config.psi_path) {
            history.push_back((now, total));
            while history.len() > 2 && now.duration_since(history[1].0) >= config.window {
                history.pop_front();
            }
        }
        let calm = || match (history.front(), history.back()) {
            (Some(&(t0, s0)), Some(&(t1, s1))) if t1 > t0 => {
                let stalled = Duration::from_micros(s1.saturating_sub(s0));
                stalled.as_secs_f64() < config.calm_fraction * t1.duration_since(t0).as_secs_f64()
            }
            _ => true,
        };
        let quiet = |since: Instant| now.duration_since(since) > config.window * 2;
        let next = if !quiet(last_full) {
            PressureLevel::Critical
        } else if !quiet(last_some) {
            PressureLevel::Elevated
        } else if level > PressureLevel::Normal && !calm() {
            level.min(PressureLevel::Elevated)
        } else {
            PressureLevel::Normal
        };
        if next != level {
            log::debug!("memory pressure {level:?} -> {next:?}");
            level = next;
            on_change(level);
        }
    }
}

fn watch_timer(config: &PressureConfig, stop: &AtomicBool, on_change: &dyn Fn(PressureLevel)) {
    let mut level = PressureLevel::Normal;
    let mut last_check = Instant::now() - Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        if last_check.elapsed() < Duration::from_secs(1) {
            continue;
        }
        last_check = Instant::now();
        let info = MemInfo::read();
        let (Some(available), Some(total)) = (info.get("MemAvailable"), info.get("MemTotal"))
        else {
            continue;
        };
        let fraction = available as f64 / total.max(1) as f64;
        let next = if fraction < config.critical_available {
            PressureLevel::Critical
        } else if fraction < config.elevated_available {
            PressureLevel::Elevated
        } else {
            PressureLevel::Normal
        };
        if next != level {
            log::debug!(
                "memory pressure {level:?} -> {next:?} ({:.0}% available)",
                fraction * 100.0
            );
            level = next;
            on_change(level);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_totals_parse() {
        let dir = std::env::temp_dir().join(format!("dmaheap-psi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("memory");
        std::fs::write(
            &file,
            "some avg10=12.50 avg60=1.00 avg300=0.10 total=100\nfull avg10=3.25 avg60=0.00 avg300=0.00 total=5\n",
        )
        .unwrap();
        assert_eq!(read_some_total(&file), Some(100));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_psi_file_means_the_timer_and_says_why() {
        let config = PressureConfig {
            psi_path: "/nonexistent/memory.pressure".into(),
            ..PressureConfig::default()
        };
        let monitor = PressureMonitor::start(config, |_| {}).unwrap();
        let PressureWatch::Timer { reason } = monitor.watch() else {
            panic!("{:?}", monitor.watch());
        };
        let enoent = rustix::io::Errno::NOENT.to_string();
        assert!(
            reason.contains("/nonexistent/memory.pressure") && reason.contains(&enoent),
            "{reason}"
        );
    }

    /// Asks the kernel directly whether a trigger can be made on `path`, as the monitor does.
    fn kernel_allows_a_trigger(path: &Path) -> Result<(), rustix::io::Errno> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::io::write(&fd, b"some 100000 2000000\0").map(|_| ())
    }

    #[test]
    fn this_machine_has_psi_triggers_or_says_why_not() {
        let config = PressureConfig::default();
        let path = config.psi_path.clone();
        let monitor = PressureMonitor::start(config, |_| {}).unwrap();
        match (kernel_allows_a_trigger(&path), monitor.watch()) {
            (Ok(()), PressureWatch::PsiTriggers(p)) => assert_eq!(p, &path),
            (Ok(()), watch) => {
                panic!(
                    "{} takes triggers, but the monitor uses {watch:?}",
                    path.display()
                )
            }
            (Err(e), PressureWatch::Timer { reason }) => assert!(
                reason.contains(&path.display().to_string()) && reason.contains(&e.to_string()),
                "the kernel said {e} for {}; the monitor said {reason:?}",
                path.display()
            ),
            (Err(e), watch) => panic!("{}: {e}, yet the monitor says {watch:?}", path.display()),
        }
    }

    #[test]
    fn a_callback_that_drops_the_last_monitor_handle_does_not_panic() {
        use std::sync::Mutex;
        use std::sync::mpsc;
        // The timer fallback with a threshold every machine is under: the first sample (after
        // a tick) is a change to Elevated.
        let config = PressureConfig {
            psi_path: "/nonexistent/memory.pressure".into(),
            elevated_available: 1.01,
            critical_available: 0.0,
            ..PressureConfig::default()
        };
        let slot: Arc<Mutex<Option<PressureMonitor>>> = Arc::default();
        let (after_drop, reached) = mpsc::channel();
        let mut guard = slot.lock().unwrap();
        let in_callback = Arc::clone(&slot);
        *guard = Some(
            PressureMonitor::start(config, move |_| {
                let last = in_callback.lock().unwrap().take();
                drop(last);
                let _ = after_drop.send(std::thread::current().id());
            })
            .unwrap(),
        );
        drop(guard);
        // If the drop panicked, the thread unwound and dropped the sender: recv fails.
        let thread = reached
            .recv()
            .expect("the monitor thread panicked dropping its own monitor");
        assert_ne!(thread, std::thread::current().id());
        assert!(slot.lock().unwrap().is_none());
    }
}
