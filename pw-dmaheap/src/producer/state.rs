//! The producer's state behind its `RefCell`, and how callbacks act on it: each callback runs
//! a function on the state that returns an [`Outcome`], which is applied to PipeWire only once
//! the state is no longer borrowed (PipeWire may call back into the producer synchronously).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use heapcore::format::VideoFormat;
use heapcore::{Origin, PooledBuf};
use pipewire::stream::Stream;
use rustix::io::Errno;

use super::report::{Event, Negotiated, PeerDevice, Stats};
use super::returns::Returns;
use crate::config::ProducerConfig;
use crate::constraints::FrameConstraints;
use crate::data_types::{DataKind, DataTypes};
use crate::error::{DmabufUnavailable, NegotiationError};
use crate::frame_pools::FramePools;
use crate::params::{self, PodBytes, VideoParams};
use crate::raw::{self, BufferKey};
use heapcore::syncobj::{SyncDevice, Timeline};

use super::Frame;

pub(super) type Renderer = Box<dyn FnMut(&mut Frame<'_>)>;
pub(super) type EventHandler = Box<dyn FnMut(&Event)>;

/// The current format and the buffers made for it.
pub(super) struct Active {
    pub(super) params: VideoParams,
    pub(super) constraints: FrameConstraints,
    pub(super) blocks: u32,
    pub(super) offered_types: DataTypes,
    /// A layout with `SPA_META_SyncTimeline` was offered.
    pub(super) explicit_sync_offered: bool,
    /// Whether the buffers got the sync timeline (decided by the first `add_buffer`).
    pub(super) explicit_sync: Option<bool>,
    /// Decided by the first `add_buffer` of this format.
    pub(super) kind: Option<DataKind>,
    pub(super) origin: Option<Origin>,
    pub(super) ready_reported: bool,
    /// The stream stopped streaming (its consumer left or paused) since these buffers were
    /// made: their fds reached that consumer, so nothing is drawn into them any more. The
    /// node is suspended, and PipeWire removes them; the next link gets new ones.
    pub(super) sealed: bool,
}

/// Frames held back by a resize, from the moment it was asked for until PipeWire sets the
/// new format (see `frame::on_produce`).
pub(super) struct HeldBack {
    pub(super) since: Instant,
    /// The new formats while this producer drives the graph, not announced before a cycle
    /// without a frame has run: consumers read the last frame by then, so no link's io area
    /// holds it unread when the buffers change (PipeWire would hand the consumer that id of
    /// the new set, a buffer never sent).
    pub(super) unannounced: Option<Vec<PodBytes>>,
    /// `trigger_frame` calls since.
    pub(super) cycles: u32,
}

/// A buffer attached to the stream.
pub(super) struct Slot {
    pub(super) buf: PooledBuf,
    pub(super) kind: DataKind,
    /// Its acquire and release timelines, with explicit sync.
    pub(super) sync: Option<SlotSync>,
}

/// The two timeline syncobjs of a buffer with explicit sync, and the last point used on both.
pub(super) struct SlotSync {
    pub(super) acquire: Timeline,
    pub(super) release: Timeline,
    pub(super) point: u64,
}

pub(super) struct Inner {
    pub(super) config: ProducerConfig,
    pub(super) pools: FramePools,
    /// Whether dma-bufs can be had (and so are offered); the error says why not.
    pub(super) dmabuf: std::result::Result<Origin, DmabufUnavailable>,
    /// The format whose modifier this producer fixated, announced first until the next
    /// resize or withdrawal.
    pub(super) fixated: Option<VideoFormat>,
    /// A DRM device with timeline syncobjs, for explicit sync; none, implicit sync only.
    pub(super) sync_device: Option<Rc<SyncDevice>>,
    /// `node.exclusive` is set (explicit sync).
    pub(super) exclusive: bool,
    /// The ports linked to ours, as PipeWire 1.6's `SPA_PARAM_PeerCapability` lists them;
    /// `None` until one arrives (older PipeWire never sends it).
    pub(super) peer_ports: Option<Vec<u32>>,
    /// The devices the linked consumers named (`SPA_PARAM_PeerCapability`), if any.
    pub(super) peer_devices: Vec<PeerDevice>,
    pub(super) width: u32,
    pub(super) height: u32,
    /// A resize announced a new size and its buffers are not streaming yet. PipeWire 0.3.65
    /// pauses the stream while it renegotiates; that pause is not a consumer leaving.
    pub(super) resizing: bool,
    /// A resize holds frames back until PipeWire sets the next format.
    pub(super) held_back: Option<HeldBack>,
    /// Where the buffers of the current set are, to tell a buffer handed back from a stale id.
    pub(super) returns: Returns,
    /// PipeWire's reliable tee swaps buffers (1.5.81 and later), so `returns` applies.
    pub(super) tee_swaps: bool,
    pub(super) active: Option<Active>,
    pub(super) slots: HashMap<BufferKey, Slot>,
    /// The buffer allocated when the format was fixed, given to the first `add_buffer`.
    pub(super) spare: Option<PooledBuf>,
    pub(super) stats: Stats,
    /// Bumped whenever a format is fixed or cleared.
    pub(super) generation: u64,
    pub(super) render: Option<Renderer>,
    pub(super) on_event: Option<EventHandler>,
    pub(super) events: Vec<Event>,
}

impl Inner {
    pub(super) fn negotiated(&self) -> Option<Negotiated> {
        let active = self.active.as_ref()?;
        let first = self.slots.values().next()?;
        Some(Negotiated {
            params: active.params,
            layout: active.constraints.layout,
            data_kind: active.kind?,
            origin: active
                .origin
                .clone()
                .unwrap_or_else(|| first.buf.origin().clone()),
            buffers: self.slots.len(),
            blocks: active.blocks,
            buffer_size: first.buf.len(),
            explicit_sync: active.explicit_sync == Some(true),
        })
    }

    /// Frees a buffer whose fd went to PipeWire (and so to consumers) for good: it never
    /// returns to a pool, so no later consumer or session gets it.
    pub(super) fn retire(&mut self, buf: PooledBuf) {
        self.stats.freed += 1;
        drop(buf.detach());
    }

    /// Lets go of a buffer that never left this process (the probe taken when a format is
    /// fixed): it goes back to its pool.
    pub(super) fn release_unshared(&mut self, buf: PooledBuf) {
        self.stats.freed += 1;
        drop(buf);
    }

    pub(super) fn drop_spare(&mut self) {
        if let Some(spare) = self.spare.take() {
            self.release_unshared(spare);
        }
    }
}

/// What a callback asks of PipeWire once the state is no longer borrowed: PipeWire may call
/// back into the producer synchronously (`pw_stream_set_error` emits `state_changed`).
pub(super) enum Outcome {
    Done,
    /// Suspend our node, so that PipeWire removes its buffers.
    Suspend,
    /// Update the node's properties (`node.exclusive` with explicit sync).
    Properties(&'static [(&'static str, &'static str)]),
    /// Announce these params (`pw_stream_update_params`).
    Announce {
        what: &'static str,
        pods: Vec<PodBytes>,
    },
    /// Put the stream in error.
    Fail {
        errno: i32,
        error: NegotiationError,
    },
}

/// The errno values `pw_stream_set_error` is given.
pub(super) const EINVAL: i32 = Errno::INVAL.raw_os_error();
pub(super) const ENOMEM: i32 = Errno::NOMEM.raw_os_error();

pub(super) fn fail(errno: i32, error: impl Into<NegotiationError>) -> Outcome {
    Outcome::Fail {
        errno,
        error: error.into(),
    }
}

/// Runs `f` on the state, or logs and does nothing if it is borrowed already (a callback
/// re-entered from PipeWire): a panic here would abort, as it cannot unwind into C.
pub(super) fn with_inner<T>(
    inner: &Rc<RefCell<Inner>>,
    f: impl FnOnce(&mut Inner) -> T,
) -> Option<T> {
    match inner.try_borrow_mut() {
        Ok(mut guard) => Some(f(&mut guard)),
        Err(_) => {
            log::error!("a PipeWire callback re-entered the producer; ignored");
            None
        }
    }
}

/// Does what a callback's outcome asks, with the state no longer borrowed.
pub(super) fn apply(stream: &Stream, inner: &Rc<RefCell<Inner>>, outcome: Option<Outcome>) {
    match outcome {
        None | Some(Outcome::Done | Outcome::Suspend) => {}
        Some(Outcome::Properties(items)) => raw::update_properties(stream, items),
        Some(Outcome::Announce { what, pods }) => {
            let mut refs = params::pod_refs(&pods);
            if let Err(e) = stream.update_params(&mut refs) {
                let error = crate::error::Error::pipewire(what)(e);
                apply(stream, inner, Some(fail(EINVAL, error)));
            }
        }
        Some(Outcome::Fail { errno, error }) => {
            let message = error.to_string();
            with_inner(inner, |inner| {
                log::error!("{}: {message}", inner.config.node_name);
                inner.events.push(Event::Error(message.clone()));
            });
            raw::set_error(stream, errno, &message);
        }
    }
}

/// Hands queued events to the handler, without holding the state borrowed while it runs.
pub(super) fn flush_events(inner: &Rc<RefCell<Inner>>) {
    loop {
        let (events, mut handler) = {
            let mut guard = inner.borrow_mut();
            if guard.events.is_empty() || guard.on_event.is_none() {
                guard.events.clear();
                return;
            }
            (std::mem::take(&mut guard.events), guard.on_event.take())
        };
        if let Some(h) = handler.as_mut() {
            for e in &events {
                h(e);
            }
        }
        let mut guard = inner.borrow_mut();
        if guard.on_event.is_none() {
            guard.on_event = handler;
        }
    }
}
