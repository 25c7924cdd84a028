//! Buffers that came back while a device still uses them, held aside until their fences signal.
//!
//! A released buffer whose dma-buf still carries an unsignalled fence (a display scanning it
//! out, a GPU reading it: `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` says so) must not reach the free
//! queue, or the next acquire hands it to a producer that draws into a frame still in use.
//! GStreamer 1.28's GstVideoDmabufPool does this for its own buffers; this is the same for
//! every GStreamer version. The buffer is parked here instead; one waiter thread per pool,
//! started the first time a buffer comes back busy, polls the parked buffers' sync_files and
//! an eventfd that says "another one", and puts each buffer whose fence signalled in the free
//! queue (GstBufferPool's own release).
//!
//! Acquire never looks here: GstBufferPool's free queue holds idle buffers only, so acquiring
//! costs no system call more than before. The waiter releases a buffer while holding the
//! lock, and [`BusyBuffers::close`] (the pool's stop) releases what is left under the same
//! lock, so every parked buffer reaches the free queue exactly once and the pool can stop.
//!
//! It knows nothing of the pool but a [`Pool`]: the object to hand buffers back to, how, and
//! the debug category to log under.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use heapcore::SyncFile;
use rustix::event::{EventfdFlags, PollFd, PollFlags};

use gst::glib;
use gst::prelude::*;

/// One parked buffer and the fence it waits for.
struct Parked {
    id: u64,
    buffer: gst::Buffer,
    fence: Arc<SyncFile>,
}

#[derive(Default)]
struct State {
    parked: Vec<Parked>,
    next_id: u64,
    /// Bumped by every close: a waiter of an older generation stops.
    generation: u64,
    /// The running waiter: its wake-up eventfd and thread.
    waiter: Option<(OwnedFd, JoinHandle<()>)>,
}

/// The buffers a pool holds back because a device still uses them.
pub(super) struct BusyBuffers<P: IsA<gst::Object> + Send + Sync> {
    state: Arc<Mutex<State>>,
    _pool: std::marker::PhantomData<fn(&P)>,
}

impl<P: IsA<gst::Object> + Send + Sync> Default for BusyBuffers<P> {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            _pool: std::marker::PhantomData,
        }
    }
}

/// Where a buffer whose fence signalled goes: `release(pool, buffer)` puts it in the pool's
/// free queue.
pub(super) struct Pool<P: IsA<gst::Object> + Send + Sync> {
    pub(super) pool: glib::WeakRef<P>,
    pub(super) release: fn(&P, gst::Buffer),
    pub(super) cat: gst::DebugCategory,
}

/// The fence of the first memory of `buffer` that a device still uses, if any: `None` for
/// idle buffers, memory that is not heap dma-buf memory (memfd), and kernels without
/// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE`. A buffer whose fences cannot be read counts as idle (as
/// in GstVideoDmabufPool), with the reason logged by the caller.
///
/// Each memory's fd is polled first (one system call, no fd made, no qdata lookup); only a
/// memory the poll does not call idle is asked for its fence (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE`,
/// a sync_file to wait on).
pub(super) fn busy_fence(buffer: &gst::BufferRef) -> Result<Option<SyncFile>, heapcore::Error> {
    for mem in buffer.iter_memories() {
        if let Some(fd) = mem.downcast_memory_ref::<gst_allocators::FdMemory>() {
            // SAFETY: the fd belongs to a memory of `buffer`, borrowed for this call.
            let fd = unsafe { BorrowedFd::borrow_raw(fd.fd()) };
            if heapcore::fence::idle_now(fd) {
                continue;
            }
        }
        if let Some(heap) = crate::memory::heap_buffer(mem)
            && let Some(fence) = heap.busy()?
        {
            return Ok(Some(fence));
        }
    }
    Ok(None)
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl<P: IsA<gst::Object> + Send + Sync> BusyBuffers<P> {
    /// How many buffers are held back now.
    pub(super) fn len(&self) -> usize {
        lock(&self.state).parked.len()
    }

    /// Holds `buffer` until `fence` signals, then hands it to `pool`. Starts the waiter on
    /// first use (`pool` is used then); if it cannot start, the buffer comes back with the
    /// error (for the caller to release at once, the old behaviour).
    pub(super) fn park(
        &self,
        buffer: gst::Buffer,
        fence: SyncFile,
        pool: impl FnOnce() -> Pool<P>,
    ) -> Result<(), (std::io::Error, gst::Buffer)> {
        let mut st = lock(&self.state);
        if st.waiter.is_none() {
            match start_waiter(&self.state, st.generation, pool()) {
                Ok(waiter) => st.waiter = Some(waiter),
                Err(e) => return Err((e, buffer)),
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        st.parked.push(Parked {
            id,
            buffer,
            fence: Arc::new(fence),
        });
        if let Some((wake, _)) = &st.waiter {
            wake_up(wake);
        }
        Ok(())
    }

    /// Hands every parked buffer to `release` now, fences or not (the pool is stopping and
    /// frees them: closing our fds does not disturb a device that imported them), and stops
    /// the waiter. Returns how many there were.
    pub(super) fn close(&self, release: impl Fn(gst::Buffer)) -> usize {
        let (waiter, n) = {
            let mut st = lock(&self.state);
            st.generation += 1;
            let parked = std::mem::take(&mut st.parked);
            let n = parked.len();
            for p in parked {
                release(p.buffer);
            }
            if let Some((wake, _)) = &st.waiter {
                wake_up(wake);
            }
            (st.waiter.take(), n)
        };
        // The waiter may be the thread stopping the pool (it held the pool's last
        // reference): a thread cannot join itself; it sees the new generation and ends.
        if let Some((_, thread)) = waiter
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
        n
    }
}

impl<P: IsA<gst::Object> + Send + Sync> Drop for BusyBuffers<P> {
    /// The pool went away without stopping: its parked buffers are freed, the waiter ends.
    fn drop(&mut self) {
        let parked = {
            let mut st = lock(&self.state);
            st.generation += 1;
            if let Some((wake, _)) = &st.waiter {
                wake_up(wake);
            }
            std::mem::take(&mut st.parked)
        };
        drop(parked);
    }
}

fn wake_up(wake: &OwnedFd) {
    let _ = rustix::io::write(wake, &1u64.to_ne_bytes());
}

fn start_waiter<P: IsA<gst::Object> + Send + Sync>(
    state: &Arc<Mutex<State>>,
    generation: u64,
    pool: Pool<P>,
) -> std::io::Result<(OwnedFd, JoinHandle<()>)> {
    let wake = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
    let theirs = wake.try_clone()?;
    let state = Arc::clone(state);
    let thread = std::thread::Builder::new()
        .name("dmaheap-gst-fences".into())
        .spawn(move || wait_loop(&state, generation, &theirs, &pool))?;
    Ok((wake, thread))
}

/// The ids of the parked buffers whose fence signalled, after waiting for one to (or for
/// the wake-up eventfd).
fn wait_for_fences(
    wake: &OwnedFd,
    fences: &[(u64, Arc<SyncFile>)],
    cat: gst::DebugCategory,
) -> Vec<u64> {
    let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(fences.len() + 1);
    fds.push(PollFd::new(wake, PollFlags::IN));
    fds.extend(fences.iter().map(|(_, f)| PollFd::new(&**f, PollFlags::IN)));
    match rustix::event::poll(&mut fds, None) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        Err(e) => {
            gst::warning!(cat, "polling fences failed: {e}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    if fds[0].revents().contains(PollFlags::IN) {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(wake.as_fd(), &mut count);
    }
    fds[1..]
        .iter()
        .zip(fences)
        .filter(|(fd, _)| fd.revents().intersects(PollFlags::IN | PollFlags::ERR))
        .map(|(_, (id, _))| *id)
        .collect()
}

/// Polls the parked buffers' fences and puts each buffer whose fence signalled (and that no
/// new fence has made busy again) in the pool's free queue; returns when the pool closes or
/// goes away.
fn wait_loop<P: IsA<gst::Object> + Send + Sync>(
    state: &Mutex<State>,
    generation: u64,
    wake: &OwnedFd,
    to: &Pool<P>,
) {
    loop {
        let fences: Vec<(u64, Arc<SyncFile>)> = {
            let st = lock(state);
            if st.generation != generation {
                return;
            }
            st.parked
                .iter()
                .map(|p| (p.id, Arc::clone(&p.fence)))
                .collect()
        };
        let signalled = wait_for_fences(wake, &fences, to.cat);
        if signalled.is_empty() {
            continue;
        }
        // Held until the lock is let go: the pool cannot be finalized (and stop, which takes
        // the lock) on this thread while it is held.
        let Some(pool) = to.pool.upgrade() else {
            return;
        };
        let mut st = lock(state);
        if st.generation != generation {
            return;
        }
        for id in signalled {
            let Some(at) = st.parked.iter().position(|p| p.id == id) else {
                continue;
            };
            let p = st.parked.swap_remove(at);
            // A device may have started on it again since it came back: wait for that too.
            match busy_fence(&p.buffer) {
                Ok(Some(fence)) => st.parked.push(Parked {
                    fence: Arc::new(fence),
                    ..p
                }),
                Ok(None) => (to.release)(&pool, p.buffer),
                Err(e) => {
                    gst::warning!(to.cat, obj = pool, "{e}: reusing the buffer");
                    (to.release)(&pool, p.buffer);
                }
            }
        }
        drop(st);
        drop(pool);
    }
}
