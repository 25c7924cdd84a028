//! What the test consumer does about synchronisation, to show the producer never draws into a
//! buffer someone still uses.
//!
//! - Explicit sync (it asked for `SPA_META_SyncTimeline`): it waits for each frame's acquire
//!   point, promises the release point (clears `UNSCHEDULED_RELEASE`) and queues the buffer
//!   back at once. It signals most release points at once, but every [`LATE_EVERY`]th only
//!   `delay` frames later, after reading the frame again through its own duplicate of the fd:
//!   buffers come back in order, so only a release out of order makes the producer reach a
//!   buffer whose release point has not signalled while others are free. A buffer that comes
//!   back before its release point was signalled, or a frame that changed before, is an error.
//! - Implicit sync: it attaches a fence (a sw_sync one, as a display scanning the buffer out
//!   would) to the dma-buf of one frame and queues the buffer back. While the fence is
//!   unsignalled that buffer must not come back, and its frame must stay intact.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::Duration;

use pw_dmaheap::heapcore::{FenceAccess, SyncFile};
use pw_dmaheap::pipewire as pw;
use pw_dmaheap::{SyncDevice, Timeline};

use super::{BlockKey, HeldFrame, State};

/// `SPA_DATA_SyncObj`.
pub(super) const DATA_SYNC_OBJ: u32 = 5;
/// `SPA_META_SyncTimeline`.
pub(super) const META_SYNC_TIMELINE: u32 = 9;
/// `SPA_META_SYNC_TIMELINE_UNSCHEDULED_RELEASE`.
const UNSCHEDULED_RELEASE: u32 = 1;
/// With a release delay, every this many frames one release point is signalled late.
pub(super) const LATE_EVERY: u64 = 5;

/// `struct spa_meta_sync_timeline`.
#[repr(C)]
#[derive(Debug)]
pub(super) struct MetaSyncTimeline {
    flags: u32,
    padding: u32,
    acquire_point: u64,
    release_point: u64,
}

/// A frame whose release point waits to be signalled.
struct PendingRelease {
    buffer: BlockKey,
    release: Rc<Timeline>,
    point: u64,
    frame: HeldFrame,
    /// Signalled once this many frames were checked.
    due: u64,
    /// Signalled late, out of order.
    late: bool,
}

/// The consumer's side of explicit sync.
#[derive(Default)]
pub(super) struct ExplicitSync {
    /// Asked for; every [`LATE_EVERY`]th release point is signalled this many frames late.
    pub(super) delay: Option<usize>,
    /// Release points promised so far.
    promised: u64,
    device: Option<Rc<SyncDevice>>,
    /// Acquire and release timelines of each buffer (by its first block).
    timelines: HashMap<BlockKey, (Timeline, Rc<Timeline>)>,
    pending: Vec<PendingRelease>,
}

/// The fence the consumer put on one buffer, and what it held.
pub(super) struct Fenced {
    buffer: BlockKey,
    fence: SyncFile,
    frame: HeldFrame,
}

/// The consumer's fence test (implicit sync).
#[derive(Default)]
pub(super) struct Fencing {
    /// Attach this fence to the next frame's dma-buf.
    pub(super) next: Option<SyncFile>,
    pub(super) fenced: Option<Fenced>,
}

impl ExplicitSync {
    /// Explicit sync asked for (`delay`: how late the late release points are), or
    /// not.
    pub(super) fn new(delay: Option<usize>) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }

    /// Forgets the buffers' timelines (PipeWire removed the buffers); releases still pending
    /// are signalled, so that nobody waits on them.
    pub(super) fn clear(&mut self) {
        for p in self.pending.drain(..) {
            let _ = p.release.signal(p.point);
        }
        self.timelines.clear();
    }
}

impl State {
    /// Before a frame is checked: for a buffer with explicit sync (the last two blocks are
    /// syncobjs and the meta is there), its previous release point must have been signalled
    /// and this frame's acquire point must signal. Returns the points (acquire, release).
    pub(super) fn sync_before(
        &mut self,
        buffer: BlockKey,
        syncobjs: &[BorrowedFd<'_>],
        meta: Option<NonNull<MetaSyncTimeline>>,
    ) -> Option<(u64, u64)> {
        self.seen.syncobj_blocks.insert(syncobjs.len());
        let (Some(meta), [acquire_fd, release_fd]) = (meta, syncobjs) else {
            return None;
        };
        // SAFETY: the meta lives in the dequeued buffer's meta memory, valid while the
        // buffer is dequeued, which it is while this callback runs.
        let meta = unsafe { meta.as_ref() };
        let points = (meta.acquire_point, meta.release_point);
        if let Some(p) = self.explicit.pending.iter().find(|p| p.buffer == buffer) {
            self.seen.error(format!(
                "the producer reused a buffer before its release point {} was signalled",
                p.point
            ));
        }
        if !self.explicit.timelines.contains_key(&buffer) {
            let device = match &self.explicit.device {
                Some(d) => Rc::clone(d),
                None => match SyncDevice::find() {
                    Some(d) => {
                        self.explicit.device = Some(Rc::clone(&d));
                        d
                    }
                    None => {
                        self.seen
                            .error("syncobjs arrived, but no DRM device here has them".into());
                        return None;
                    }
                },
            };
            let imported = device
                .import(*acquire_fd)
                .and_then(|a| Ok((a, Rc::new(device.import(*release_fd)?))));
            match imported {
                Ok(timelines) => {
                    self.explicit.timelines.insert(buffer, timelines);
                }
                Err(e) => {
                    self.seen.error(format!("importing the syncobjs: {e}"));
                    return None;
                }
            }
        }
        let (acquire, _) = &self.explicit.timelines[&buffer];
        match acquire.wait(points.0, Duration::from_secs(1)) {
            Ok(true) => self.seen.acquired += 1,
            Ok(false) => self.seen.error(format!(
                "acquire point {} did not signal within a second",
                points.0
            )),
            Err(e) => self.seen.error(format!("waiting on an acquire point: {e}")),
        }
        Some(points)
    }

    /// After a frame was checked: with explicit sync, promise the release point (the meta
    /// flag), keep the frame to read again, and signal the release points that are `delay`
    /// frames old, each after checking its frame is still intact.
    pub(super) fn sync_after(
        &mut self,
        buffer: BlockKey,
        points: Option<(u64, u64)>,
        meta: Option<NonNull<MetaSyncTimeline>>,
    ) {
        let (Some((_, release_point)), Some(mut meta), Some(delay)) =
            (points, meta, self.explicit.delay)
        else {
            return;
        };
        let Some(received) = self.last_frames.get(&buffer) else {
            return;
        };
        let frame = self.duplicate(received);
        let Some(release) = self
            .explicit
            .timelines
            .get(&buffer)
            .map(|t| Rc::clone(&t.1))
        else {
            return;
        };
        // SAFETY: as in `sync_before`; the consumer owns the dequeued buffer's meta until it
        // queues it, which happens after this returns.
        unsafe { meta.as_mut() }.flags &= !UNSCHEDULED_RELEASE;
        let late = delay > 0 && self.explicit.promised % LATE_EVERY == LATE_EVERY - 1;
        self.explicit.promised += 1;
        let now = self.seen.checked;
        self.explicit.pending.push(PendingRelease {
            buffer,
            release,
            point: release_point,
            frame,
            due: now + if late { delay as u64 } else { 0 },
            late,
        });
        let (due, later) = std::mem::take(&mut self.explicit.pending)
            .into_iter()
            .partition::<Vec<_>, _>(|p| p.due <= now);
        self.explicit.pending = later;
        for p in due {
            if let Err(e) = p.frame.check() {
                self.seen
                    .error(format!("before its release point was signalled: {e}"));
            }
            match p.release.signal(p.point) {
                Ok(()) => {
                    self.seen.released += 1;
                    self.seen.released_late += u64::from(p.late);
                }
                Err(e) => self.seen.error(format!("signalling a release point: {e}")),
            }
        }
    }

    /// With implicit sync: a fenced buffer must not come back while its fence is
    /// unsignalled; one to fence next gets the fence.
    pub(super) fn fence_check(&mut self, buffer: BlockKey) {
        if let Some(fenced) = self.fencing.fenced.as_ref().filter(|f| f.buffer == buffer) {
            match fenced.fence.is_signalled() {
                Ok(false) => self.seen.error(format!(
                    "the producer drew into a buffer whose fence has not signalled (it held \
                     frame {})",
                    fenced.frame.seq()
                )),
                Ok(true) => {
                    self.seen.fenced_buffer_back_after_signal = true;
                    self.fencing.fenced = None;
                }
                Err(e) => self.seen.error(format!("polling the fence: {e}")),
            }
        }
    }

    /// After a frame was checked: attaches the fence asked for to its dma-buf.
    pub(super) fn fence_attach(&mut self, buffer: BlockKey) {
        let Some(fence) = self.fencing.next.take() else {
            return;
        };
        let (Some(imported), Some(received)) =
            (self.imported.get(&buffer), self.last_frames.get(&buffer))
        else {
            self.fencing.next = Some(fence);
            return;
        };
        if let Err(e) = imported.dmabuf().attach_fence(&fence, FenceAccess::Read) {
            self.seen.error(format!("attaching a fence: {e}"));
            return;
        }
        let frame = self.duplicate(received);
        self.seen.fenced_seq = Some(frame.seq());
        self.fencing.fenced = Some(Fenced {
            buffer,
            fence,
            frame,
        });
    }

    /// The fenced frame, read again now.
    pub(super) fn check_fenced(&self) -> Result<u64, String> {
        let fenced = self.fencing.fenced.as_ref().ok_or("no buffer is fenced")?;
        fenced.frame.check().map(|(seq, _)| seq)
    }
}

/// Splits a buffer's blocks into memory and the trailing syncobj fds.
pub(super) fn split_syncobjs(
    datas: &mut [pw::spa::buffer::Data],
) -> (&mut [pw::spa::buffer::Data], Vec<BorrowedFd<'_>>) {
    let n_sync = datas
        .iter()
        .rev()
        .take_while(|d| d.as_raw().type_ == DATA_SYNC_OBJ)
        .count();
    let (memory, sync) = datas.split_at_mut(datas.len() - n_sync);
    let fds = sync
        .iter()
        .filter_map(|d| {
            let fd = i32::try_from(d.as_raw().fd).ok().filter(|fd| *fd >= 0)?;
            // SAFETY: a syncobj block's fd is open while its buffer belongs to the stream,
            // which outlives the borrow of `datas`.
            Some(unsafe { BorrowedFd::borrow_raw(fd) })
        })
        .collect();
    (memory, fds)
}
