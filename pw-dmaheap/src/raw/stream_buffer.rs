//! A buffer of our own stream during `add_buffer` and `remove_buffer`: its data blocks (the
//! memory types PipeWire allowed, the fds the producer fills in) and its metadata.

use std::rc::Rc;

use pipewire::spa::sys as spa_sys;
use pipewire::stream::Stream;
use pipewire::sys as pw_sys;

use super::{BufferKey, DataFill, Dequeues};
use crate::data_types::DataTypes;
use crate::error::{NegotiationError, Result};

/// A buffer of our own stream during an `add_buffer` or `remove_buffer` callback.
pub(crate) struct StreamBuffer<'a> {
    raw: &'a mut pw_sys::pw_buffer,
}

impl StreamBuffer<'_> {
    pub(crate) fn key(&self) -> BufferKey {
        BufferKey(std::ptr::from_ref::<pw_sys::pw_buffer>(self.raw) as usize)
    }

    fn datas(&mut self) -> &mut [spa_sys::spa_data] {
        // SAFETY: `buffer` is null or the spa_buffer of a pw_buffer the stream handed to this
        // callback; pw_stream keeps it alive (and touches it on no other thread) until
        // remove_buffer returns.
        let Some(b) = (unsafe { self.raw.buffer.as_mut() }) else {
            return &mut [];
        };
        if b.datas.is_null() || b.n_datas == 0 {
            return &mut [];
        }
        // SAFETY: the `datas` array of that spa_buffer holds `n_datas` elements, borrowed
        // as long as the buffer.
        unsafe { std::slice::from_raw_parts_mut(b.datas, b.n_datas as usize) }
    }

    /// How many `spa_data` blocks the buffer has (the negotiated `blocks`).
    pub(crate) fn n_datas(&mut self) -> usize {
        self.datas().len()
    }

    /// In `add_buffer` of a `PW_STREAM_FLAG_ALLOC_BUFFERS` stream, PipeWire leaves in each
    /// `spa_data.type` the mask of memory types both sides accept (`1 << SPA_DATA_*`; the
    /// intersection of our and the consumer's `SPA_PARAM_BUFFERS_dataType`).
    pub(crate) fn allowed_types(&mut self) -> DataTypes {
        DataTypes::from_bits_retain(self.datas().first().map_or(0, |d| d.type_))
    }

    /// Fills every `spa_data` (type, flags, fd, mapoffset, maxsize; no CPU pointer).
    pub(crate) fn fill(&mut self, fills: &[DataFill]) -> Result<()> {
        let datas = self.datas();
        if datas.len() != fills.len() {
            return Err(NegotiationError::Blocks {
                got: datas.len(),
                asked: u32::try_from(fills.len()).unwrap_or(u32::MAX),
            }
            .into());
        }
        for (d, fill) in datas.iter_mut().zip(fills) {
            d.type_ = fill.data_type;
            d.flags = fill.flags;
            d.fd = i64::from(fill.fd);
            d.mapoffset = fill.mapoffset;
            d.maxsize = fill.maxsize;
            d.data = std::ptr::null_mut();
        }
        Ok(())
    }

    /// Whether the buffer carries metadata of `meta_type` (or, for a
    /// `SPA_META_TYPE_FEATURES` value, those features).
    pub(crate) fn has_meta(&self, meta_type: u32) -> bool {
        // SAFETY: `buffer` is null or the spa_buffer of a pw_buffer the stream handed to this
        // callback, alive until remove_buffer returns.
        let Some(b) = (unsafe { self.raw.buffer.as_ref() }) else {
            return false;
        };
        if b.metas.is_null() || b.n_metas == 0 {
            return false;
        }
        // SAFETY: the `metas` array of that spa_buffer holds `n_metas` elements.
        let metas = unsafe { std::slice::from_raw_parts(b.metas, b.n_metas as usize) };
        metas.iter().any(|m| m.type_ == meta_type)
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
    buffer_callback(move |stream, buffer| {
        dequeues.removing(buffer.key());
        handler(stream, buffer);
    })
}
