//! Buffers that came back while a device still uses them, and the thread that waits for
//! their fences.
//!
//! A returned dma-buf whose fences have not all signalled (a display still scanning it out)
//! is kept aside instead of going onto the free list, so the next acquire cannot hand it out
//! and have the producer draw into a frame on screen. One thread per pool, started the first
//! time a buffer comes back busy, polls their sync_files and an eventfd that says "another
//! one"; a buffer whose fence signals goes to the free list as any returned buffer does.
//! Acquire never looks at fences: it takes only from the free list, with no system call.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Weak;
use std::sync::atomic::Ordering::Relaxed;

use rustix::event::{EventfdFlags, PollFd, PollFlags};

use super::Inner;
use crate::dmabuf::DmaBuf;
use crate::fence::SyncFile;

/// The busy buffers of a pool and how to wake its waiter.
#[derive(Default)]
pub(super) struct Busy {
    pub(super) buffers: Vec<(Box<DmaBuf>, SyncFile)>,
    /// Busy buffers the waiter holds while it polls their fences.
    polled: usize,
    /// The waiter's wake-up eventfd, once the waiter runs.
    wake: Option<OwnedFd>,
}

impl Busy {
    pub(super) fn len(&self) -> usize {
        self.buffers.len() + self.polled
    }

    /// Wakes the waiter (to see a new busy buffer, or the pool's shutdown).
    pub(super) fn wake_waiter(&self) {
        if let Some(wake) = &self.wake {
            let _ = rustix::io::write(wake, &1u64.to_ne_bytes());
        }
    }
}

impl Inner {
    /// Keeps `buf` aside until `fence` signals; starts the waiter on first use.
    pub(super) fn park_busy(self: &std::sync::Arc<Self>, buf: Box<DmaBuf>, fence: SyncFile) {
        let mut st = self.lock();
        if st.shutdown {
            self.unreserve(&mut st);
            drop(st);
            drop(buf);
            return;
        }
        self.counters.parked_busy.fetch_add(1, Relaxed);
        st.busy.buffers.push((buf, fence));
        if st.busy.wake.is_none() {
            match start_waiter(self) {
                Ok(wake) => st.busy.wake = Some(wake),
                Err(e) => {
                    // Without a waiter nothing would ever come back: keep the old behaviour.
                    log::warn!(
                        "pool {}: no fence waiter ({e}); reusing busy buffers",
                        self.config.name
                    );
                    let (buf, _) = st.busy.buffers.pop().expect("just pushed");
                    drop(st);
                    self.release_idle(buf);
                    return;
                }
            }
        }
        st.busy.wake_waiter();
    }
}

/// Starts the pool's fence waiter; returns the eventfd that wakes it.
fn start_waiter(inner: &std::sync::Arc<Inner>) -> std::io::Result<OwnedFd> {
    let wake = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
    let theirs = wake.try_clone()?;
    let pool = std::sync::Arc::downgrade(inner);
    crate::worker::spawn(format!("dmaheap-fences-{}", inner.config.name), move || {
        wait_loop(&pool, &theirs)
    })?;
    Ok(wake)
}

/// Waits for the busy buffers' fences and frees them onto the free list as they signal;
/// returns when the pool shuts down or goes away.
fn wait_loop(pool: &Weak<Inner>, wake: &OwnedFd) {
    // The poll timeout only bounds how late a pool that went away is noticed.
    let timeout = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 500_000_000,
    };
    loop {
        let Some(inner) = pool.upgrade() else { return };
        // The busy buffers are the waiter's while it polls; they stay counted in `total`.
        let mut busy = {
            let mut st = inner.lock();
            if st.shutdown {
                return;
            }
            let busy = std::mem::take(&mut st.busy.buffers);
            st.busy.polled = busy.len();
            busy
        };
        let signalled: Vec<usize> = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(busy.len() + 1);
            fds.push(PollFd::new(wake, PollFlags::IN));
            fds.extend(busy.iter().map(|(_, f)| PollFd::new(f, PollFlags::IN)));
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => log::warn!("pool {}: polling fences failed: {e}", inner.config.name),
            }
            if fds[0].revents().contains(PollFlags::IN) {
                let mut count = [0u8; 8];
                let _ = rustix::io::read(wake.as_fd(), &mut count);
            }
            fds[1..]
                .iter()
                .enumerate()
                .filter(|(_, fd)| fd.revents().intersects(PollFlags::IN | PollFlags::ERR))
                .map(|(i, _)| i)
                .collect()
        };
        let mut idle = Vec::with_capacity(signalled.len());
        for i in signalled.into_iter().rev() {
            idle.push(busy.swap_remove(i).0);
        }
        // Back under one lock: what signalled goes where any returned buffer goes, the rest
        // stays busy, so no buffer is ever counted twice or not at all.
        let mut freed = Vec::new();
        let mut st = inner.lock();
        st.busy.polled = 0;
        for buf in idle {
            inner.counters.fence_waits.fetch_add(1, Relaxed);
            freed.extend(inner.put_idle(&mut st, buf));
        }
        if st.shutdown {
            for _ in 0..busy.len() {
                inner.unreserve(&mut st);
            }
            freed.extend(busy.drain(..).map(|(buf, _)| buf));
        } else {
            st.busy.buffers.append(&mut busy);
        }
        inner.wake_waiter(st);
        drop(freed);
    }
}
