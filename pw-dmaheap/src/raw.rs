//! The only `unsafe` code of this crate: reading and filling the `pw_buffer`/`spa_buffer`/
//! `spa_data` structures PipeWire hands to stream callbacks, dequeuing and queuing raw
//! buffers, and borrowing the fd of a received `spa_data`.
//!
//! Everything else sees safe types: [`StreamBuffer`] exists only for the duration of an
//! `add_buffer`/`remove_buffer` callback, [`Dequeued`] only between dequeue and queue (and it
//! queues itself when dropped, unless PipeWire removed it meanwhile: see [`Dequeues`]).

use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::rc::Rc;

use heapcore::DmaBuf;
use pipewire::loop_::IsLoopRc;
use pipewire::spa::buffer::Data;
use pipewire::spa::sys as spa_sys;
use pipewire::stream::Stream;
use pipewire::sys as pw_sys;

use crate::config::DataKind;
use crate::error::{Error, Result};
use crate::import::ImportedData;

/// `SPA_DATA_FLAG_MAPPABLE` (spa/buffer/buffer.h since PipeWire 1.1.81; 0.3.65's headers
/// lack it): the fd can be mapped with plain mmap. Newer PipeWire maps dma-bufs for
/// `PW_STREAM_FLAG_MAP_BUFFERS` consumers only with this flag; older versions ignore it.
pub(crate) const DATA_FLAG_MAPPABLE: u32 = 1 << 3;

/// Identifies a `pw_buffer` while it belongs to the stream (between `add_buffer` and
/// `remove_buffer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct BufferKey(usize);

/// What to put in one `spa_data`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DataFill {
    pub kind: DataKind,
    pub fd: RawFd,
    pub mapoffset: u32,
    pub maxsize: u32,
}

/// Where the valid bytes of one `spa_data` lie in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkFill {
    pub offset: u32,
    pub size: u32,
    pub stride: i32,
}

/// A buffer of our own stream during an `add_buffer` or `remove_buffer` callback.
pub(crate) struct StreamBuffer<'a> {
    raw: &'a mut pw_sys::pw_buffer,
}

impl StreamBuffer<'_> {
    pub(crate) fn key(&self) -> BufferKey {
        BufferKey(std::ptr::from_ref::<pw_sys::pw_buffer>(self.raw) as usize)
    }

    fn datas(&mut self) -> &mut [spa_sys::spa_data] {
        let buffer = self.raw.buffer;
        if buffer.is_null() {
            return &mut [];
        }
        // SAFETY: `buffer` is the non-null spa_buffer of a pw_buffer the stream handed to this
        // callback; pw_stream keeps it alive (and touches it on no other thread) until
        // remove_buffer returns.
        let b = unsafe { &mut *buffer };
        if b.datas.is_null() || b.n_datas == 0 {
            return &mut [];
        }
        // SAFETY: the same buffer's `datas` array, non-null, holds `n_datas` elements, which
        // live as long as the buffer.
        unsafe { std::slice::from_raw_parts_mut(b.datas, b.n_datas as usize) }
    }

    /// How many `spa_data` blocks the buffer has (the negotiated `blocks`).
    pub(crate) fn n_datas(&mut self) -> usize {
        self.datas().len()
    }

    /// In `add_buffer` of a `PW_STREAM_FLAG_ALLOC_BUFFERS` stream, PipeWire leaves in each
    /// `spa_data.type` the mask of memory types both sides accept (`1 << SPA_DATA_*`; the
    /// intersection of our and the consumer's `SPA_PARAM_BUFFERS_dataType`).
    pub(crate) fn allowed_types(&mut self) -> u32 {
        self.datas().first().map_or(0, |d| d.type_)
    }

    /// Fills every `spa_data` (type, flags, fd, mapoffset, maxsize; no CPU pointer).
    pub(crate) fn fill(&mut self, fills: &[DataFill]) -> Result<()> {
        let datas = self.datas();
        if datas.len() != fills.len() {
            return Err(Error::Negotiation(format!(
                "the buffer has {} data blocks where {} were negotiated",
                datas.len(),
                fills.len()
            )));
        }
        for (d, fill) in datas.iter_mut().zip(fills) {
            d.type_ = fill.kind.spa_type();
            d.flags = spa_sys::SPA_DATA_FLAG_READABLE | DATA_FLAG_MAPPABLE;
            d.fd = i64::from(fill.fd);
            d.mapoffset = fill.mapoffset;
            d.maxsize = fill.maxsize;
            d.data = std::ptr::null_mut();
        }
        Ok(())
    }

    /// Forgets the fds before their buffer is closed, so no stale fd number stays behind.
    pub(crate) fn clear(&mut self) {
        for d in self.datas() {
            d.type_ = spa_sys::SPA_DATA_Invalid;
            d.fd = -1;
            d.maxsize = 0;
            d.data = std::ptr::null_mut();
        }
    }
}

/// Wraps an `add_buffer` handler for pipewire-rs's listener builder.
pub(crate) fn buffer_callback<F>(
    mut handler: F,
) -> impl FnMut(&Stream, &mut (), *mut pw_sys::pw_buffer) + 'static
where
    F: FnMut(&Stream, &mut StreamBuffer<'_>) + 'static,
{
    move |stream, _, ptr| {
        // SAFETY: pw_stream passes a pw_buffer it owns and keeps valid for the whole callback;
        // this is the only reference made to it while the callback runs.
        if let Some(raw) = unsafe { ptr.as_mut() } {
            handler(stream, &mut StreamBuffer { raw });
        }
    }
}

/// Wraps a `remove_buffer` handler for pipewire-rs's listener builder. A buffer that is
/// dequeued right now (by the process callback, whose render callback made PipeWire remove
/// it) is marked removed in `dequeues` before `handler` runs.
pub(crate) fn remove_buffer_callback<F>(
    dequeues: Rc<Dequeues>,
    mut handler: F,
) -> impl FnMut(&Stream, &mut (), *mut pw_sys::pw_buffer) + 'static
where
    F: FnMut(&Stream, &mut StreamBuffer<'_>) + 'static,
{
    move |stream, _, ptr| {
        // SAFETY: pw_stream passes a pw_buffer it owns and keeps valid for the whole callback;
        // this is the only reference made to it while the callback runs.
        if let Some(raw) = unsafe { ptr.as_mut() } {
            let mut buffer = StreamBuffer { raw };
            dequeues.removing(buffer.key());
            handler(stream, &mut buffer);
        }
    }
}

/// The buffers held dequeued right now, so that PipeWire removing one meanwhile is noticed.
///
/// The process callback dequeues a buffer and then runs the render callback, which may call
/// `Producer::disconnect` or `Stream::disconnect` (or anything else that makes PipeWire
/// remove the stream's buffers synchronously). A removed buffer's `spa_buffer`, chunks and
/// metas are freed or unmapped, and the `pw_buffer` no longer belongs to the stream: a
/// [`Dequeued`] that was removed never touches it and is never queued.
#[derive(Debug, Default)]
pub(crate) struct Dequeues {
    held: RefCell<Vec<(BufferKey, Rc<Cell<bool>>)>>,
}

impl Dequeues {
    /// PipeWire is removing the buffer `key`.
    fn removing(&self, key: BufferKey) {
        for (held, removed) in self.held.borrow().iter() {
            if *held == key {
                removed.set(true);
            }
        }
    }

    /// Whether a buffer is dequeued now (a render callback may be running).
    pub(crate) fn any(&self) -> bool {
        !self.held.borrow().is_empty()
    }
}

/// A buffer dequeued from our output stream; queued back when dropped, unless PipeWire
/// removed it meanwhile.
pub(crate) struct Dequeued<'s> {
    stream: &'s Stream,
    raw: NonNull<pw_sys::pw_buffer>,
    removed: Rc<Cell<bool>>,
    dequeues: Rc<Dequeues>,
    _not_send: PhantomData<*mut ()>,
}

/// Takes the next free buffer of an output stream, if the consumer has returned one, and
/// registers it in `dequeues` until it is dropped.
pub(crate) fn dequeue<'s>(stream: &'s Stream, dequeues: &Rc<Dequeues>) -> Option<Dequeued<'s>> {
    // SAFETY: the stream pointer is valid for the borrow; pw_stream_dequeue_buffer returns a
    // buffer the stream owns (or NULL) and hands it to us until we queue it.
    let raw = NonNull::new(unsafe { stream.dequeue_raw_buffer() })?;
    let removed = Rc::new(Cell::new(false));
    let key = BufferKey(raw.as_ptr() as usize);
    dequeues.held.borrow_mut().push((key, Rc::clone(&removed)));
    Some(Dequeued {
        stream,
        raw,
        removed,
        dequeues: Rc::clone(dequeues),
        _not_send: PhantomData,
    })
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

    fn spa_buffer(&mut self) -> Option<&mut spa_sys::spa_buffer> {
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
        // SAFETY: the buffer came from this stream's dequeue, PipeWire did not remove it (see
        // `Dequeues`), and it is queued exactly once.
        unsafe { self.stream.queue_raw_buffer(self.raw.as_ptr()) };
    }
}

/// Puts the stream in the error state with `message` (shown by pw-cli, pw-top, consumers).
pub(crate) fn set_error(stream: &Stream, errno: i32, message: &str) {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: the stream is valid for the borrow; the format is a literal "%s" whose one
    // argument is a NUL-terminated string alive for the call.
    unsafe {
        pw_sys::pw_stream_set_error(
            stream.as_raw_ptr(),
            -errno.abs(),
            c"%s".as_ptr(),
            message.as_ptr(),
        );
    }
}

/// Imports the fd of a received `spa_data` (a consumer's `SPA_DATA_DmaBuf` or
/// `SPA_DATA_MemFd` block) as a heapcore buffer that owns a duplicate of the fd, with the
/// block's region of it (`mapoffset`, `maxsize`: PipeWire's own MemFd allocation packs every
/// buffer into one memfd). It can be read (with `DMA_BUF_IOCTL_SYNC` around CPU reads for
/// dma-bufs), asked for its `fdinfo` (exporter heap and buffer name) and kept beyond the
/// PipeWire buffer's life.
pub fn import_data(data: &Data) -> Result<ImportedData> {
    let raw = data.as_raw();
    if raw.type_ != spa_sys::SPA_DATA_DmaBuf && raw.type_ != spa_sys::SPA_DATA_MemFd {
        return Err(Error::Negotiation(format!(
            "spa_data type {} carries no fd to import",
            raw.type_
        )));
    }
    let fd = RawFd::try_from(raw.fd)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| Error::Negotiation(format!("spa_data has no valid fd ({})", raw.fd)))?;
    // SAFETY: a `Data` can only be borrowed from a buffer its stream handed out (pipewire-rs
    // has no way to build one), and the stream keeps the fds of its buffers open while they
    // are; the borrow ends before this function returns, after the fd was duplicated.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned().map_err(|e| Error::Io {
        context: format!("duplicating received fd {}", borrowed.as_raw_fd()),
        source: e,
    })?;
    ImportedData::new(DmaBuf::import(owned)?, raw.mapoffset, raw.maxsize)
}

/// Lets every call PipeWire queued for this stream run (`process`, `drained` and
/// `trigger_done` on the main loop, a frame request on the data loop), so that none is
/// left to run on the stream after it is destroyed.
///
/// PipeWire queues those calls with the stream's address and does not take them back when
/// the stream is destroyed. A paused stream's frame request runs on the data thread, which
/// then queues `trigger_done` for the main loop: PipeWire 0.3.65 ran it on freed memory at
/// the loop's next iteration. Call this after `pw_stream_disconnect` and right before the
/// stream is destroyed, from the thread that entered the main loop (a `Producer` is not
/// `Send`). First a blocking no-op on the data loop waits until the data thread has run
/// what was queued before it; then a no-op invoke on the main loop, from its own thread,
/// runs what is queued there (from another thread it would only queue a no-op).
pub(crate) fn settle_queued_calls(stream: &Stream) {
    // SAFETY: the stream is valid for the borrow; this only reads its core pointer, which
    // only pw_stream_destroy clears.
    let core = unsafe { pw_sys::pw_stream_get_core(stream.as_raw_ptr()) };
    if core.is_null() {
        return;
    }
    // SAFETY: a stream's core outlives it (pw_core_disconnect destroys its streams first).
    let context = unsafe { pw_sys::pw_core_get_context(core) };
    // SAFETY: a core's context outlives the core; the getter only reads a field.
    let data_loop = unsafe { pw_sys::pw_context_get_data_loop(context) };
    if !data_loop.is_null() {
        // SAFETY: the context's data loop lives as long as the context.
        let data_loop = unsafe { pw_sys::pw_data_loop_get_loop(data_loop) };
        invoke_nothing(data_loop, true);
    }
    // SAFETY: as above; the main loop lives as long as the context.
    let main_loop = unsafe { pw_sys::pw_context_get_main_loop(context) };
    invoke_nothing(main_loop, false);
}

/// `pw_loop_invoke(lp, NULL, …)`: runs nothing itself, but a loop runs what was queued
/// before it first (on the loop's thread; `block` waits for that from another thread).
fn invoke_nothing(lp: *mut pw_sys::pw_loop, block: bool) {
    if lp.is_null() {
        return;
    }
    // SAFETY: `lp` is a live pw_loop (see the callers); `loop_` is the spa_loop interface
    // it was created with.
    let spa_loop = unsafe { (*lp).loop_ };
    // SAFETY: spa_loop's `invoke` accepts a null function, with no data and no user data.
    let res: i32 = unsafe {
        pipewire::spa::spa_interface_call_method!(
            spa_loop,
            spa_sys::spa_loop_methods,
            invoke,
            None,
            0,
            std::ptr::null(),
            0,
            block,
            std::ptr::null_mut()
        )
    };
    if res < 0 {
        log::warn!("running the calls queued on a PipeWire loop failed: {res}");
    }
}

/// Keeps a PipeWire loop entered on this thread while it lives.
///
/// PipeWire hands stream callbacks (`process` above all) to the main loop with
/// `pw_loop_invoke`, and SPA runs an invoked function *on the calling thread* when no thread
/// has entered the loop. `MainLoop::run` keeps the loop entered; a program that drives the
/// loop with `Loop::iterate` (which enters and leaves around each iteration) must hold one of
/// these for as long as streams exist, or callbacks run on PipeWire's data thread.
pub struct EnteredLoop<L: IsLoopRc> {
    lp: L,
    _not_send: PhantomData<*mut ()>,
}

impl<L: IsLoopRc> EnteredLoop<L> {
    /// Enters `lp` on this thread (nesting with `run`/`iterate` is fine).
    pub fn new(lp: &L) -> Self {
        // SAFETY: entering only records this thread as the loop's owner (with a nesting
        // count); SPA refuses (and logs) an enter from a second thread. The guard is not Send,
        // so the matching leave happens on this thread.
        unsafe { lp.as_ref().enter() };
        Self {
            lp: lp.clone(),
            _not_send: PhantomData,
        }
    }
}

impl<L: IsLoopRc> Drop for EnteredLoop<L> {
    fn drop(&mut self) {
        // SAFETY: pairs with the enter in `new`, on the same thread (the guard is not Send).
        unsafe { self.lp.as_ref().leave() };
    }
}
