//! The only `unsafe` code of this crate: reading and filling
//! the `pw_buffer`/`spa_buffer`/`spa_data` structures PipeWire hands to stream callbacks,
//! dequeuing, parking and queuing raw buffers, their metadata, and borrowing the fd of a
//! received `spa_data`; reading and clearing our port's io area; and letting the calls
//! PipeWire queued for a stream run before it goes.
//!
//! Everything else sees safe types: [`StreamBuffer`] exists only for the duration of an
//! `add_buffer`/`remove_buffer` callback, [`Dequeued`] only between dequeue and queue (it
//! queues itself when dropped, unless PipeWire removed it meanwhile, or is parked: see
//! [`Dequeues`]).

mod dequeue;
mod meta;
mod port_io;
mod queued_calls;
mod stream_buffer;

use std::ffi::CString;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use heapcore::DmaBuf;
use pipewire::loop_::IsLoopRc;
use pipewire::spa::buffer::Data;
use pipewire::spa::sys as spa_sys;
use pipewire::stream::Stream;
use pipewire::sys as pw_sys;

pub(crate) use dequeue::{DequeueFailed, Dequeued, Dequeues, try_dequeue};
pub(crate) use meta::{SyncPoints, spa_abi};
pub(crate) use port_io::{PortIo, PortIoState, library_version};
pub(crate) use queued_calls::settle_queued_calls;
pub(crate) use stream_buffer::{StreamBuffer, buffer_callback, remove_buffer_callback};

use crate::error::{Error, NegotiationError, Result};
use crate::import::ImportedData;

/// `SPA_DATA_FLAG_MAPPABLE` (spa/buffer/buffer.h since PipeWire 1.1.81; 0.3.65's headers
/// lack it): the fd can be mapped with plain mmap. Newer PipeWire maps dma-bufs for
/// `PW_STREAM_FLAG_MAP_BUFFERS` consumers only with this flag; older versions ignore it.
pub(crate) const DATA_FLAG_MAPPABLE: u32 = 1 << 3;

/// Identifies a `pw_buffer` while it belongs to the stream (between `add_buffer` and
/// `remove_buffer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct BufferKey(usize);

#[cfg(test)]
impl BufferKey {
    /// A key for tests of the bookkeeping; it names no buffer.
    pub(crate) fn from_raw(address: usize) -> Self {
        Self(address)
    }
}

/// What to put in one `spa_data`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DataFill {
    /// The `enum spa_data_type` value.
    pub data_type: u32,
    /// `SPA_DATA_FLAG_*`.
    pub flags: u32,
    pub fd: RawFd,
    pub mapoffset: u32,
    pub maxsize: u32,
}

impl DataFill {
    /// A memory block (DmaBuf or MemFd) the consumer may read and map.
    pub(crate) fn memory(kind: crate::data_types::DataKind, fd: RawFd, maxsize: u32) -> Self {
        Self {
            data_type: kind.spa_type(),
            flags: spa_sys::SPA_DATA_FLAG_READABLE | DATA_FLAG_MAPPABLE,
            fd,
            mapoffset: 0,
            maxsize,
        }
    }

    /// A DRM syncobj (`SPA_DATA_SyncObj`), read and signalled by both sides.
    pub(crate) fn syncobj(fd: RawFd) -> Self {
        Self {
            data_type: spa_abi::DATA_SYNC_OBJ,
            flags: spa_sys::SPA_DATA_FLAG_READABLE | spa_sys::SPA_DATA_FLAG_WRITABLE,
            fd,
            mapoffset: 0,
            maxsize: 0,
        }
    }
}

/// Where the valid bytes of one `spa_data` lie in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkFill {
    pub offset: u32,
    pub size: u32,
    pub stride: i32,
}

/// Updates properties of the stream's node (`node.exclusive`, ...).
pub(crate) fn update_properties(stream: &Stream, items: &[(&str, &str)]) {
    let owned: Vec<(CString, CString)> = items
        .iter()
        .filter_map(|(k, v)| Some((CString::new(*k).ok()?, CString::new(*v).ok()?)))
        .collect();
    let raw_items: Vec<spa_sys::spa_dict_item> = owned
        .iter()
        .map(|(k, v)| spa_sys::spa_dict_item {
            key: k.as_ptr(),
            value: v.as_ptr(),
        })
        .collect();
    let dict = spa_sys::spa_dict {
        flags: 0,
        n_items: u32::try_from(raw_items.len()).unwrap_or(0),
        items: raw_items.as_ptr(),
    };
    // SAFETY: the stream is valid for the borrow; the dict and the strings it points to live
    // until the call returns, and PipeWire copies what it keeps.
    let res = unsafe { pw_sys::pw_stream_update_properties(stream.as_raw_ptr(), &dict) };
    if res < 0 {
        log::warn!("updating the stream's properties {items:?}: error {res}");
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
        return Err(NegotiationError::NoFd(raw.type_).into());
    }
    let fd = RawFd::try_from(raw.fd)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or(NegotiationError::InvalidFd(raw.fd))?;
    // SAFETY: a `Data` can only be borrowed from a buffer its stream handed out (pipewire-rs
    // has no way to build one), and the stream keeps the fds of its buffers open while they
    // are; the borrow ends before this function returns, after the fd was duplicated.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed
        .try_clone_to_owned()
        .map_err(|source| Error::Duplicate {
            what: "received",
            fd: borrowed.as_raw_fd(),
            source,
        })?;
    ImportedData::new(DmaBuf::import(owned)?, raw.mapoffset, raw.maxsize)
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
