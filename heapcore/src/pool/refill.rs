//! The background refill of a realtime pool, on a thread of its own.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Inner;
use crate::error::{Error, Result};

/// Starts the refill thread of `inner`'s pool; it ends when the pool shuts down or goes.
pub(super) fn start(inner: &Arc<Inner>) -> Result<()> {
    let weak = Arc::downgrade(inner);
    crate::worker::spawn(format!("dmaheap-refill-{}", inner.config.name), move || {
        refill_loop(weak)
    })
    .map(drop)
    .map_err(|e| Error::io("starting a pool's refill thread", e))
}

/// The background refill of a realtime pool: tops the free list up to `min_buffers` at low
/// CPU priority, pausing while memory pressure is critical.
fn refill_loop(pool: Weak<Inner>) {
    // Nice 19: refilling must never compete with the threads it exists to serve.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        log::debug!("refill thread keeps its priority: {e}");
    }
    let mut streak = FailureStreak::default();
    loop {
        let Some(inner) = pool.upgrade() else { return };
        let serial = {
            let mut st = inner.lock();
            while !st.shutdown && !inner.wants_refill(&st) {
                st.update(|st| st.refill_idle = true);
                st = inner
                    .refill
                    .wait_timeout(st, Duration::from_millis(500))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            st.update(|st| st.refill_idle = false);
            if st.shutdown {
                return;
            }
            match inner.reserve(&mut st) {
                Ok(serial) => serial,
                Err(_) => continue,
            }
        };
        match inner.grow(serial) {
            Ok(buf) => {
                if let Some(failures) = streak.succeeded() {
                    log::info!(
                        "pool {} refills again after {failures} failed attempt(s)",
                        inner.config.name
                    );
                }
                inner.counters.refills.fetch_add(1, Relaxed);
                let mut st = inner.lock();
                if st.shutdown {
                    inner.unreserve(&mut st);
                    return;
                }
                st.free.push(buf);
                inner.wake_waiter(st);
            }
            Err(e) => {
                let (level, pause) = streak.failed();
                log::log!(
                    level,
                    "pool {} could not refill: {e} (retrying in {pause:?}{})",
                    inner.config.name,
                    if level == log::Level::Warn {
                        "; further failures are logged at debug level"
                    } else {
                        ""
                    }
                );
                drop(inner);
                std::thread::sleep(pause);
            }
        }
    }
}

/// Consecutive refill failures: the first is a warning, the rest debug messages, with a pause
/// that doubles up to a few seconds so that a pool that cannot grow neither floods the log
/// nor spins.
#[derive(Debug, Default)]
struct FailureStreak {
    failures: u32,
}

impl FailureStreak {
    const FIRST_PAUSE: Duration = Duration::from_millis(200);
    const MAX_PAUSE: Duration = Duration::from_secs(5);

    /// Records a failure: how loudly to say it, and how long to wait before the next try.
    fn failed(&mut self) -> (log::Level, Duration) {
        self.failures = self.failures.saturating_add(1);
        let level = if self.failures == 1 {
            log::Level::Warn
        } else {
            log::Level::Debug
        };
        let doublings = (self.failures - 1).min(16);
        let pause = (Self::FIRST_PAUSE * (1 << doublings)).min(Self::MAX_PAUSE);
        (level, pause)
    }

    /// Records a success: the number of failures it ends, if it ends a streak.
    fn succeeded(&mut self) -> Option<u32> {
        Some(std::mem::take(&mut self.failures)).filter(|&n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refill_failures_warn_once_per_streak_and_back_off() {
        let mut streak = FailureStreak::default();
        assert_eq!(streak.succeeded(), None, "no streak to end");
        let failures: Vec<(log::Level, Duration)> = (0..8).map(|_| streak.failed()).collect();
        let levels: Vec<log::Level> = failures.iter().map(|f| f.0).collect();
        assert_eq!(levels[0], log::Level::Warn);
        assert!(
            levels[1..].iter().all(|&l| l == log::Level::Debug),
            "{levels:?}"
        );
        let pauses: Vec<u64> = failures.iter().map(|f| f.1.as_millis() as u64).collect();
        assert_eq!(pauses, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(streak.succeeded(), Some(8));
        // A new streak warns again, from the short pause.
        assert_eq!(
            streak.failed(),
            (log::Level::Warn, Duration::from_millis(200))
        );
    }
}
