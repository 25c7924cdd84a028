//! The buffers released last, kept beside GstBufferPool's free queue and handed out first.
//!
//! GstBufferPool's free queue is first in, first out. A pool that holds more buffers than the
//! stream has in flight (`prewarm`, `min-buffers`, a downstream that asked for more) hands them
//! out in turn, so each frame is written into the buffer that has been idle longest, whose
//! lines have left the CPU's caches. The buffers that came back last are the ones most likely
//! still cached: acquire takes one of them first and asks GstBufferPool only when all are
//! out. The spare buffers stay allocated and mapped, ready for a burst, without costing every
//! frame. Both sides also skip GstBufferPool's queue and the lock of its wake-up.
//!
//! A thread waiting in GstBufferPool's acquire (every buffer out, `max-buffers` reached) would
//! not see a buffer kept here. So an acquire that goes on to GstBufferPool says so first and
//! looks here once more, and a release looks for such an acquire after it has kept a buffer.
//! Both orders are sequentially consistent, so at least one side sees the other: the acquire
//! takes the buffer, or the release hands what is kept to GstBufferPool's queue, which wakes
//! the waiter.

use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::SeqCst};

use gst::ffi;
use gst::glib::translate::*;

/// Buffers kept: as many as a stream with a queue or two usually has in flight.
const KEPT: usize = 4;

#[derive(Debug, Default)]
pub(super) struct HotBuffers {
    /// Each holds one reference to a buffer released lately, or null.
    slots: [AtomicPtr<ffi::GstBuffer>; KEPT],
    /// Acquires between looking here the second time and leaving GstBufferPool's acquire.
    going_to_queue: AtomicUsize,
}

/// An acquire on its way to GstBufferPool's queue (see [`HotBuffers::going_to_queue`]).
pub(super) struct GoingToQueue<'a>(&'a HotBuffers);

impl Drop for GoingToQueue<'_> {
    fn drop(&mut self) {
        self.0.going_to_queue.fetch_sub(1, SeqCst);
    }
}

/// Takes the reference a slot held.
///
/// # Safety
/// `raw` is null or a reference swapped out of a slot (and so the caller's alone).
#[inline(always)]
unsafe fn owned(raw: *mut ffi::GstBuffer) -> Option<gst::Buffer> {
    // SAFETY: the caller's promise.
    (!raw.is_null()).then(|| unsafe { from_glib_full(raw) })
}

impl HotBuffers {
    /// A buffer kept here, if any.
    #[inline(always)]
    pub(super) fn take(&self) -> Option<gst::Buffer> {
        let slot = self.slots.iter().find(|s| !s.load(SeqCst).is_null())?;
        // SAFETY: swapped out of a slot.
        unsafe { owned(slot.swap(ptr::null_mut(), SeqCst)) }
    }

    /// Keeps `buffer`. With every slot taken, the buffer it displaces goes back to
    /// GstBufferPool's queue; and all that is kept goes there when an acquire is on its way.
    #[inline(always)]
    pub(super) fn keep(&self, buffer: gst::Buffer, to_queue: impl Fn(gst::Buffer)) {
        let raw = buffer.into_glib_ptr();
        let free = self.slots.iter().find(|s| {
            s.compare_exchange(ptr::null_mut(), raw, SeqCst, SeqCst)
                .is_ok()
        });
        if free.is_none() {
            // SAFETY: swapped out of a slot.
            if let Some(older) = unsafe { owned(self.slots[KEPT - 1].swap(raw, SeqCst)) } {
                to_queue(older);
            }
        }
        if self.going_to_queue.load(SeqCst) > 0 {
            while let Some(buffer) = self.take() {
                to_queue(buffer);
            }
        }
    }

    /// Says that an acquire goes on to GstBufferPool's queue, until the guard is dropped.
    /// Look here once more after this ([`HotBuffers::take`]): a release may just have kept one.
    #[inline(never)]
    pub(super) fn going_to_queue(&self) -> GoingToQueue<'_> {
        self.going_to_queue.fetch_add(1, SeqCst);
        GoingToQueue(self)
    }
}

impl Drop for HotBuffers {
    fn drop(&mut self) {
        // The pool's stop gives them back to GstBufferPool's queue; this is for a pool
        // finalized without being stopped.
        while self.take().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer() -> gst::Buffer {
        gst::init().unwrap();
        gst::Buffer::with_size(16).unwrap()
    }

    #[test]
    fn four_buffers_are_kept_and_a_fifth_displaces_one_to_the_queue() {
        let hot = HotBuffers::default();
        let buffers: Vec<gst::Buffer> = (0..5).map(|_| buffer()).collect();
        let ptrs: Vec<_> = buffers.iter().map(|b| b.as_ptr()).collect();
        let queued = std::cell::RefCell::new(Vec::new());
        for b in buffers {
            hot.keep(b, |x| queued.borrow_mut().push(x.as_ptr()));
        }
        // The fifth took the last slot; the buffer there went to GstBufferPool's queue.
        assert_eq!(*queued.borrow(), vec![ptrs[3]]);
        let mut out: Vec<_> = std::iter::from_fn(|| hot.take())
            .map(|x| x.as_ptr())
            .collect();
        out.sort();
        let mut kept = vec![ptrs[0], ptrs[1], ptrs[2], ptrs[4]];
        kept.sort();
        assert_eq!(out, kept);
    }

    #[test]
    fn a_release_hands_its_buffer_to_the_queue_while_an_acquire_waits_there() {
        let hot = HotBuffers::default();
        let waiting = hot.going_to_queue();
        let queued = std::cell::Cell::new(0);
        hot.keep(buffer(), |_| queued.set(queued.get() + 1));
        assert_eq!(queued.get(), 1, "the waiter would never see a kept buffer");
        assert!(hot.take().is_none());
        // Whatever was kept before goes with it.
        drop(waiting);
        hot.keep(buffer(), |_| unreachable!());
        let waiting = hot.going_to_queue();
        hot.keep(buffer(), |_| queued.set(queued.get() + 1));
        assert_eq!(queued.get(), 3);
        assert!(hot.take().is_none());
        drop(waiting);
        hot.keep(buffer(), |_| unreachable!());
        assert!(hot.take().is_some());
    }

    #[test]
    fn a_kept_buffer_is_released_when_the_slot_goes() {
        let b = buffer();
        let extra = b.clone();
        {
            let hot = HotBuffers::default();
            hot.keep(b, |_| unreachable!());
            assert!(!extra.is_writable(), "the slot holds a reference");
        }
        assert!(extra.is_writable(), "dropping the slots released it");
    }
}
