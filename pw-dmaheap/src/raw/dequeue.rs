//! Buffers dequeued from our output stream: queued back when dropped, parked while they may
//! not be drawn into yet, never taken twice, and never touched again once PipeWire removed
//! them.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::rc::Rc;

use pipewire::spa::sys as spa_sys;
use pipewire::stream::Stream;
use pipewire::sys as pw_sys;

use super::{BufferKey, ChunkFill};

/// The buffers held dequeued right now, so that PipeWire removing one meanwhile is noticed.
///
/// The process callback dequeues a buffer and then runs the render callback, which may call
/// `Producer::disconnect` or `Stream::disconnect` (or anything else that makes PipeWire
/// remove the stream's buffers synchronously). A removed buffer's `spa_buffer`, chunks and
/// metas are freed or unmapped, and the `pw_buffer` no longer belongs to the stream: a
/// [`Dequeued`] that was removed never touches it and is never queued.
///
/// A buffer the producer took from PipeWire but does not draw into now (its consumer has not
/// signalled its release point, a device still holds a fence on it, or it goes back undrawn)
/// is *parked*: kept out of PipeWire's queues, neither queued back nor written, until the
/// producer takes it again ([`Dequeues::unpark`]) or PipeWire removes it. Because every
/// buffer the producer holds is listed here or in `held`, a buffer PipeWire hands out a
/// second time is recognised ([`DequeueFailed::Duplicate`]).
#[derive(Debug, Default)]
pub(crate) struct Dequeues {
    held: RefCell<Vec<(BufferKey, Rc<Cell<bool>>)>>,
    parked: RefCell<Vec<NonNull<pw_sys::pw_buffer>>>,
}

impl Dequeues {
    /// PipeWire is removing the buffer `key`.
    pub(super) fn removing(&self, key: BufferKey) {
        for (held, removed) in self.held.borrow().iter() {
            if *held == key {
                removed.set(true);
            }
        }
        self.parked
            .borrow_mut()
            .retain(|raw| BufferKey(raw.as_ptr() as usize) != key);
    }

    /// The buffers parked now, oldest first.
    pub(crate) fn parked(&self) -> Vec<BufferKey> {
        self.parked
            .borrow()
            .iter()
            .map(|raw| BufferKey(raw.as_ptr() as usize))
            .collect()
    }

    /// Takes the parked buffer `key` back, to draw into it or look at it again.
    pub(crate) fn unpark<'s>(
        self: &Rc<Self>,
        stream: &'s Stream,
        key: BufferKey,
    ) -> Option<Dequeued<'s>> {
        let raw = {
            let mut parked = self.parked.borrow_mut();
            let i = parked
                .iter()
                .position(|raw| BufferKey(raw.as_ptr() as usize) == key)?;
            parked.remove(i)
        };
        Some(self.hold(stream, raw))
    }

    fn hold<'s>(
        self: &Rc<Self>,
        stream: &'s Stream,
        raw: NonNull<pw_sys::pw_buffer>,
    ) -> Dequeued<'s> {
        let removed = Rc::new(Cell::new(false));
        let key = BufferKey(raw.as_ptr() as usize);
        self.held.borrow_mut().push((key, Rc::clone(&removed)));
        Dequeued {
            stream,
            raw,
            removed,
            parked: false,
            dequeues: Rc::clone(self),
            _not_send: PhantomData,
        }
    }

    /// Whether a buffer is dequeued now (a render callback may be running).
    pub(crate) fn any(&self) -> bool {
        !self.held.borrow().is_empty()
    }

    /// Whether the buffer `key` is dequeued or parked now.
    fn holds(&self, key: BufferKey) -> bool {
        self.held.borrow().iter().any(|(held, _)| *held == key)
            || self
                .parked
                .borrow()
                .iter()
                .any(|raw| BufferKey(raw.as_ptr() as usize) == key)
    }
}

/// A buffer dequeued from our output stream; queued back when dropped, unless PipeWire
/// removed it meanwhile.
pub(crate) struct Dequeued<'s> {
    stream: &'s Stream,
    raw: NonNull<pw_sys::pw_buffer>,
    removed: Rc<Cell<bool>>,
    /// Parked rather than queued when dropped.
    parked: bool,
    dequeues: Rc<Dequeues>,
    _not_send: PhantomData<*mut ()>,
}

/// Why no buffer could be dequeued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DequeueFailed {
    /// None is free: the consumer holds them all, or (a reliable stream) the last frame has
    /// not been consumed yet.
    Empty,
    /// The next one is still busy at the consumer (`SPA_META_Busy`): PipeWire moved it to the
    /// end of its queue, so another try may find a free one.
    Busy,
    /// PipeWire handed out a buffer this producer holds already (dequeued or parked): its
    /// free queue named it twice. PipeWire 1.6 puts back whatever id a link's io area names
    /// when a cycle starts, with no check that the buffer is not free already, and the io
    /// area can still name a buffer of the old set right after a renegotiation (its stream
    /// resets the io only when it says `HAVE_DATA`): so its stream.c reads. Taken again, that
    /// second entry would have the buffer drawn into while the consumer reads it, or sent
    /// twice. It is left alone: not wrapped, never queued, so the entry is gone. (Not seen in
    /// the tests so far: a guard, not the cure of pw-dmaheap's known issue.)
    Duplicate,
}

/// Takes the next free buffer of an output stream and registers it in `dequeues` until it is
/// dropped.
pub(crate) fn try_dequeue<'s>(
    stream: &'s Stream,
    dequeues: &Rc<Dequeues>,
) -> Result<Dequeued<'s>, DequeueFailed> {
    // SAFETY: the stream pointer is valid for the borrow; pw_stream_dequeue_buffer returns a
    // buffer the stream owns (or NULL, with errno set) and hands it to us until we queue it.
    let raw = unsafe { stream.dequeue_raw_buffer() };
    match NonNull::new(raw) {
        Some(raw) if dequeues.holds(BufferKey(raw.as_ptr() as usize)) => {
            Err(DequeueFailed::Duplicate)
        }
        Some(raw) => Ok(dequeues.hold(stream, raw)),
        None if std::io::Error::last_os_error().raw_os_error() == Some(libc_ebusy()) => {
            Err(DequeueFailed::Busy)
        }
        None => Err(DequeueFailed::Empty),
    }
}

fn libc_ebusy() -> i32 {
    rustix::io::Errno::BUSY.raw_os_error()
}

impl Dequeued<'_> {
    pub(crate) fn key(&self) -> BufferKey {
        BufferKey(self.raw.as_ptr() as usize)
    }

    /// Whether PipeWire removed the buffer while it was dequeued (it is then neither written
    /// nor queued).
    pub(crate) fn removed(&self) -> bool {
        self.removed.get()
    }

    /// Keeps the buffer out of PipeWire's queue, untouched, until [`Dequeues::unpark`].
    pub(crate) fn park(mut self) {
        self.parked = true;
    }

    pub(super) fn spa_buffer(&mut self) -> Option<&mut spa_sys::spa_buffer> {
        if self.removed() {
            return None;
        }
        // SAFETY: the pw_buffer is ours between dequeue and queue and was not removed (the
        // stream's remove_buffer marks it, see `Dequeues`), so it is valid.
        let pw_buffer = unsafe { self.raw.as_ref() };
        // SAFETY: the spa_buffer pointer of a pw_buffer that belongs to the stream is either
        // null or valid, and nothing else uses it while the buffer is dequeued.
        unsafe { pw_buffer.buffer.as_mut() }
    }

    /// Says where the frame lies in each block.
    pub(crate) fn set_chunks(&mut self, chunks: &[ChunkFill]) {
        let Some(b) = self.spa_buffer() else { return };
        if b.datas.is_null() {
            return;
        }
        // SAFETY: `datas` holds `n_datas` elements owned by the dequeued buffer.
        let datas = unsafe { std::slice::from_raw_parts_mut(b.datas, b.n_datas as usize) };
        for (d, c) in datas.iter_mut().zip(chunks) {
            // SAFETY: PipeWire gives every spa_data of a negotiated buffer a chunk in shared
            // memory that the producer writes while it holds the buffer.
            if let Some(chunk) = unsafe { d.chunk.as_mut() } {
                chunk.offset = c.offset;
                chunk.size = c.size;
                chunk.stride = c.stride;
                chunk.flags = spa_sys::SPA_CHUNK_FLAG_NONE as i32;
            }
        }
    }

    /// Fills `SPA_META_Header` when the buffer carries it.
    pub(crate) fn set_header(&mut self, seq: u64, pts_ns: i64) {
        let Some(b) = self.spa_buffer() else { return };
        let size = std::mem::size_of::<spa_sys::spa_meta_header>();
        // SAFETY: `b` is a valid spa_buffer; the lookup only reads its metas array.
        let meta = unsafe { spa_sys::spa_buffer_find_meta_data(b, spa_sys::SPA_META_Header, size) };
        // SAFETY: a non-null result points to at least `size` bytes of this buffer's meta
        // memory, suitably aligned for spa_meta_header, which we own until queue.
        if let Some(h) = unsafe { meta.cast::<spa_sys::spa_meta_header>().as_mut() } {
            h.flags = 0;
            h.offset = 0;
            h.pts = pts_ns;
            h.dts_offset = 0;
            h.seq = seq;
        }
    }
}

impl Drop for Dequeued<'_> {
    fn drop(&mut self) {
        self.dequeues
            .held
            .borrow_mut()
            .retain(|(_, removed)| !Rc::ptr_eq(removed, &self.removed));
        if self.removed() {
            return; // gone from the stream: queuing it would use freed memory
        }
        if self.parked {
            self.dequeues.parked.borrow_mut().push(self.raw);
            return;
        }
        // SAFETY: the buffer came from this stream's dequeue, PipeWire did not remove it (see
        // `Dequeues`), and it is queued exactly once.
        unsafe { self.stream.queue_raw_buffer(self.raw.as_ptr()) };
    }
}
