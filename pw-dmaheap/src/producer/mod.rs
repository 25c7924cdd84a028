//! The producer: a PipeWire video source stream whose buffers come from DMA-BUF heaps.
//!
//! Negotiation, step by step:
//!
//! 1. `connect` offers EnumFormat objects: with the LINEAR modifier (mandatory, so only
//!    consumers that handle dma-bufs with modifiers match it) when a dma-buf can be had on
//!    this machine, then the same without a modifier, for everybody else. The stream is a
//!    driver with `PW_STREAM_FLAG_ALLOC_BUFFERS`: it fills the buffers itself.
//! 2. When the format is fixed (`param_changed`), the constraints are derived (layout, size,
//!    contiguity, usage) and one buffer is allocated up front to prove the memory can be had.
//!    The Buffers param follows: one block per plane and `dataType = DmaBuf` when a modifier
//!    was negotiated; one block and `dataType = MemFd` otherwise (`MemFd | DmaBuf` with
//!    `dmabuf_without_modifier`). If a dma-buf cannot be allocated for a modifier format, the
//!    DmaBuf formats are withdrawn and PipeWire renegotiates to MemFd.
//! 3. `add_buffer` reads the types both sides accepted (PipeWire leaves the intersected mask
//!    in `spa_data.type`) and picks DmaBuf if it is in there, MemFd otherwise; the choice is
//!    logged with the mask it came from. Each buffer gets its own heap buffer, mapped once,
//!    from a heapcore pool for this format and data type.
//! 4. `remove_buffer` forgets the fds in the `spa_data` and frees the buffer: its fd reached
//!    consumers, so it never goes back to a pool. Renegotiation (a new size, a consumer with
//!    another format) runs `remove_buffer` for every buffer and then 2–3 again. A consumer's
//!    own fds and mappings keep the memory alive in the kernel until it lets go of them, so
//!    nothing is freed under a consumer.
//! 5. When the stream stops streaming (the consumer left or paused), its buffers are sealed:
//!    nothing is drawn into them again. PipeWire would keep them for the next link of the
//!    same format, so the node is suspended, which makes PipeWire remove them at once; the
//!    next consumer gets buffers no earlier one held.
//!
//! One concern per file: [`negotiate`] (what to announce and answer), [`buffers`] (buffers
//! added and removed), [`frame`] (drawing and queuing frames), [`session`] (a consumer
//! leaving), [`state`] (the state and how callbacks act on it) and [`report`] (what the user
//! is told); this file holds the public [`Producer`] and wires PipeWire's callbacks to them.

mod buffers;
mod frame;
mod negotiate;
mod peers;
mod report;
mod returns;
mod session;
mod state;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use heapcore::{Origin, PoolRegistry};
use pipewire as pw;
use pw::core::CoreRc;
use pw::stream::{Stream, StreamFlags, StreamListener, StreamRc, StreamState};

pub use frame::{Frame, frame_interval};
pub use peers::{CAPABILITY_DEVICE_ID_NEGOTIATION, CAPABILITY_DEVICE_IDS, encode_dev_t};
pub use report::{Event, Negotiated, PeerDevice, Stats};

use crate::config::ProducerConfig;
use crate::constraints::FrameConstraints;
use crate::error::{DmabufUnavailable, Error, Result};
use crate::frame_pools::FramePools;
use crate::params;
use crate::raw::{self, spa_abi};
use heapcore::syncobj::SyncDevice;
use state::{HeldBack, Inner, Outcome, apply, flush_events, with_inner};

/// A PipeWire video source node whose buffers come from DMA-BUF heaps.
///
/// Lives on the thread of its PipeWire loop. Frames are drawn by the render callback when
/// [`Producer::trigger_frame`] is called (from a timer, or when the screen changed).
///
/// A buffer whose fd reached a consumer is never drawn into for another one: when the
/// stream stops streaming (the consumer left or paused), its buffers are sealed, the node is
/// suspended so that PipeWire removes them, and removed buffers are freed, not pooled.
pub struct Producer {
    // Field order is drop order: the listener goes before the stream is destroyed, and the
    // buffers (in `inner`) only after PipeWire has let go of them.
    listener: RefCell<Option<StreamListener<()>>>,
    stream: StreamRc,
    inner: Rc<RefCell<Inner>>,
    /// The buffer a process callback holds dequeued while the render callback runs.
    dequeues: Rc<raw::Dequeues>,
    /// Our port's io area, where a cycle leaves the buffer it hands back (see `returns`).
    port_io: Rc<raw::PortIo>,
    triggers: Rc<Triggers>,
}

/// Triggering frames around a disconnect.
///
/// PipeWire 1.6 runs a stream that is not real-time on the main loop (`node.loop.class` =
/// main), so `pw_stream_trigger_process` calls the process callback (and with it the render
/// callback) synchronously, and then goes on using the stream's node: a render callback that
/// disconnects the producer there would have the node destroyed under that code. Such a
/// disconnect is deferred until `trigger_process` has returned. (PipeWire 0.3.65 calls process
/// later, from its own loop iteration, where disconnecting at once is fine.) A disconnected
/// stream has no node to trigger at all, so triggers wait for `connect`.
#[derive(Debug, Default)]
struct Triggers {
    connected: Cell<bool>,
    /// `trigger_process` is running.
    in_trigger: Cell<bool>,
    /// A render callback asked to disconnect inside `trigger_process`.
    disconnect_deferred: Cell<bool>,
}

impl Producer {
    /// Creates the stream (not yet connected); its buffers come from pools of the process's
    /// [`PoolRegistry`] (its global budget, memory-pressure watch and statistics).
    pub fn new(core: &CoreRc, config: ProducerConfig) -> Result<Self> {
        Self::with_registry(core, config, PoolRegistry::process())
    }

    /// Creates the stream with buffers from pools of `registry` (and its allocator).
    pub fn with_registry(
        core: &CoreRc,
        config: ProducerConfig,
        registry: PoolRegistry,
    ) -> Result<Self> {
        config.validate(registry.allocator().inventory())?;
        let pools = FramePools::new(registry, &config);
        let dmabuf = pools.probe_dmabuf();
        match &dmabuf {
            Ok(origin) => log::info!(
                "{}: offering DmaBuf (LINEAR) from {origin} for usage {}, and {}",
                config.node_name,
                config.usage,
                if config.memfd_fallback {
                    "MemFd as the fallback"
                } else {
                    "no MemFd fallback"
                }
            ),
            Err(why) => log::info!(
                "{}: not offering DmaBuf ({why}); {}",
                config.node_name,
                if config.memfd_fallback {
                    "MemFd only"
                } else {
                    "nothing else is allowed"
                }
            ),
        }
        let sync_device = SyncDevice::find();
        match &sync_device {
            Some(device) => log::info!(
                "{}: explicit sync offered with dma-bufs (timeline syncobjs on {})",
                config.node_name,
                device.path().display()
            ),
            None => log::info!(
                "{}: implicit sync only: no DRM device here has timeline syncobjs",
                config.node_name
            ),
        }
        let description = config
            .description
            .clone()
            .unwrap_or_else(|| config.node_name.clone());
        // node.reliable (PipeWire 1.6; older versions ignore it): PipeWire hands this stream
        // back only buffers the consumer has consumed, and no new one while the last frame is
        // unconsumed; without it a driver's buffer comes back the moment its cycle ends,
        // before an asynchronous consumer has read it, so a frame could be drawn over while
        // on its way (PipeWire issue #4885).
        let props = pw::properties::properties! {
            *pw::keys::MEDIA_CLASS => "Video/Source",
            *pw::keys::MEDIA_ROLE => "Screen",
            *pw::keys::NODE_NAME => config.node_name.as_str(),
            *pw::keys::NODE_DESCRIPTION => description.as_str(),
            "node.reliable" => "true",
        };
        let stream = StreamRc::new(core.clone(), &config.node_name, props)
            .map_err(Error::pipewire("creating the PipeWire stream"))?;
        let inner = Inner {
            width: config.width,
            height: config.height,
            config,
            pools,
            dmabuf,
            fixated: None,
            sync_device,
            exclusive: false,
            peer_devices: Vec::new(),
            peer_ports: None,
            resizing: false,
            held_back: None,
            returns: Default::default(),
            tee_swaps: raw::library_version().is_some_and(|v| v >= (1, 5, 81)),
            active: None,
            slots: HashMap::new(),
            spare: None,
            stats: Stats::default(),
            generation: 0,
            render: None,
            on_event: None,
            events: Vec::new(),
        };
        inner.enum_formats()?;
        let producer = Self {
            listener: RefCell::new(None),
            stream,
            inner: Rc::new(RefCell::new(inner)),
            dequeues: Rc::default(),
            port_io: Rc::default(),
            triggers: Rc::default(),
        };
        let listener = producer.listen(core.clone())?;
        *producer.listener.borrow_mut() = Some(listener);
        Ok(producer)
    }

    fn listen(&self, core: CoreRc) -> Result<StreamListener<()>> {
        let on_state = Rc::clone(&self.inner);
        let on_param = Rc::clone(&self.inner);
        let on_add = Rc::clone(&self.inner);
        let on_remove = Rc::clone(&self.inner);
        let on_process = Rc::clone(&self.inner);
        let produce_dequeues = Rc::clone(&self.dequeues);
        let remove_dequeues = Rc::clone(&self.dequeues);
        let port_io = Rc::clone(&self.port_io);
        let param_core = core.clone();
        self.stream
            .add_local_listener_with_user_data(())
            .state_changed(move |stream, _, old, new| {
                let ended =
                    matches!(old, StreamState::Streaming) && !matches!(new, StreamState::Streaming);
                let started = matches!(new, StreamState::Streaming);
                let outcome = with_inner(&on_state, |inner| {
                    let name = inner.config.node_name.clone();
                    log::debug!("{name}: stream {old:?} -> {new:?}");
                    let paused = matches!(new, StreamState::Paused);
                    let outcome = if ended && paused && inner.peer_ports.is_some() {
                        // PipeWire 1.6 says when a consumer's link goes away (its peer
                        // capabilities): while a link stays, a pause is that consumer
                        // pausing, and its buffers are its own again when it resumes (see
                        // `peers`). Once none is left, the buffers are sealed.
                        let linked = inner.peer_ports.as_ref().is_some_and(|p| !p.is_empty());
                        if linked {
                            Outcome::Done
                        } else {
                            session::seal(inner, true)
                        }
                    } else if ended {
                        // Unconnected or in error, the node is going away with its buffers.
                        // A pause during a resize is PipeWire renegotiating (0.3.65 pauses
                        // the link): the buffers are sealed, as the consumer may have left
                        // meanwhile, but the node is not suspended. Suspended then, 0.3.65
                        // fails the new buffers' allocation ("invalid memory type", the node
                        // in error); the renegotiation replaces them anyway, and a link that
                        // resumes on sealed buffers renegotiates (`renegotiate_if_sealed`).
                        // Only the first pause is excused: a consumer that leaves during it
                        // leaves its buffers sealed until WirePlumber suspends the idle node.
                        let renegotiating = paused && std::mem::take(&mut inner.resizing);
                        session::seal(inner, paused && !renegotiating)
                    } else if started {
                        session::renegotiate_if_sealed(inner)
                    } else {
                        Outcome::Done
                    };
                    let event = match new {
                        StreamState::Error(msg) => {
                            log::error!("{name}: stream error: {msg}");
                            Event::Error(msg)
                        }
                        other => Event::State(format!("{other:?}")),
                    };
                    inner.events.push(event);
                    (outcome, name)
                });
                match outcome {
                    Some((Outcome::Suspend, name)) => {
                        session::suspend_node(&core, stream.node_id(), &name)
                    }
                    other => apply(stream, &on_state, other.map(|(o, _)| o)),
                }
                flush_events(&on_state);
            })
            .param_changed(move |stream, _, id, param| {
                if id == pw::spa::param::ParamType::Format.as_raw() {
                    let outcome = with_inner(&on_param, |inner| negotiate::on_format(inner, param));
                    apply(stream, &on_param, outcome);
                } else if id == spa_abi::PARAM_PEER_CAPABILITY {
                    let gone = with_inner(&on_param, |inner| {
                        let gone = peers::on_peer_capability(inner, param);
                        (gone, inner.config.node_name.clone())
                    });
                    // The stream paused before the link went away: suspend now (a stream
                    // still streaming is disconnecting, or pauses next and suspends then).
                    if let Some((true, name)) = gone {
                        if matches!(stream.state(), StreamState::Paused) {
                            session::suspend_node(&param_core, stream.node_id(), &name);
                        }
                    }
                }
                flush_events(&on_param);
            })
            .io_changed(move |_, _, id, area, size| port_io.changed(id, area, size))
            .add_buffer(raw::buffer_callback(move |stream, buffer| {
                let outcome = with_inner(&on_add, |inner| buffers::on_add_buffer(inner, buffer));
                apply(stream, &on_add, outcome);
                flush_events(&on_add);
            }))
            .remove_buffer(raw::remove_buffer_callback(
                remove_dequeues,
                move |_, buffer| {
                    // The fds leave the spa_data before they are closed, whatever happens.
                    buffer.clear();
                    with_inner(&on_remove, |inner| buffers::on_remove_buffer(inner, buffer));
                },
            ))
            .process(move |stream, _| {
                frame::on_produce(stream, &on_process, &produce_dequeues);
                flush_events(&on_process);
            })
            .register()
            .map_err(Error::pipewire("listening to the PipeWire stream"))
    }

    /// The callback that draws each frame. Without one, buffers go out with whatever they
    /// held (zeroes from the heap at first). It may use the producer, also resize or
    /// disconnect it: a buffer PipeWire removes while the callback runs is neither written
    /// nor queued afterwards, and is freed.
    pub fn set_renderer(&self, render: impl FnMut(&mut Frame<'_>) + 'static) {
        self.inner.borrow_mut().render = Some(Box::new(render));
    }

    /// The callback that hears about state changes and negotiation results.
    pub fn set_event_handler(&self, handler: impl FnMut(&Event) + 'static) {
        self.inner.borrow_mut().on_event = Some(Box::new(handler));
    }

    /// Connects the stream as a driving video source that allocates its own buffers.
    pub fn connect(&self) -> Result<()> {
        let pods = self.inner.borrow().enum_formats()?;
        let mut refs = params::pod_refs(&pods);
        self.stream
            .connect(
                pw::spa::utils::Direction::Output,
                None,
                StreamFlags::DRIVER | StreamFlags::ALLOC_BUFFERS,
                &mut refs,
            )
            .map_err(Error::pipewire("connecting the PipeWire stream"))?;
        self.triggers.connected.set(true);
        Ok(())
    }

    /// Disconnects from the graph; every buffer is removed (and freed) on the way. Called from
    /// the render callback of a frame [`Producer::trigger_frame`] asked for, it takes effect
    /// when `trigger_frame` returns (see `Triggers`); no frame is drawn in between.
    pub fn disconnect(&self) -> Result<()> {
        self.triggers.connected.set(false);
        if self.triggers.in_trigger.get() {
            self.triggers.disconnect_deferred.set(true);
            return Ok(());
        }
        self.stream
            .disconnect()
            .map_err(Error::pipewire("disconnecting the PipeWire stream"))
    }

    /// Asks for a frame now: when the stream drives the graph the render callback runs at
    /// once, otherwise at the driver's next cycle. Without a linked consumer this does
    /// nothing, nor while the stream is not connected.
    pub fn trigger_frame(&self) -> Result<()> {
        let unconnected = matches!(
            self.stream.state(),
            StreamState::Unconnected | StreamState::Error(_)
        );
        if unconnected || !self.triggers.connected.get() || self.triggers.in_trigger.get() {
            return Ok(());
        }
        self.announce_a_waiting_resize();
        self.triggers.in_trigger.set(true);
        let triggered = self.stream.trigger_process();
        self.triggers.in_trigger.set(false);
        if triggered.is_ok() && self.stream.is_driving() {
            self.check_what_the_cycle_hands_back();
        }
        if self.triggers.disconnect_deferred.replace(false) {
            self.disconnect()?;
        }
        triggered.map_err(Error::pipewire("triggering a frame"))
    }

    /// Announces the new size of a resize once a cycle without a frame has run since (see
    /// `HeldBack`); counts that cycle otherwise.
    fn announce_a_waiting_resize(&self) {
        let outcome = with_inner(&self.inner, |inner| {
            let held = inner.held_back.as_mut()?;
            held.cycles += 1;
            if held.cycles < 2 {
                return None;
            }
            Some(Outcome::Announce {
                what: "announcing the new size",
                pods: held.unannounced.take()?,
            })
        });
        apply(&self.stream, &self.inner, outcome.flatten());
    }

    /// The cycle `trigger_frame` ran is over but for its end, which puts the buffer the tee
    /// handed back in the stream's free queue: a stale id is emptied from the port's io area
    /// before that (see `returns`). Only where the tee swaps (PipeWire 1.5.81 and later).
    fn check_what_the_cycle_hands_back(&self) {
        let Some(io) = self.port_io.state() else {
            return;
        };
        let Ok(mut inner) = self.inner.try_borrow_mut() else {
            return;
        };
        if !inner.tee_swaps {
            return;
        }
        match inner.returns.after_cycle(io) {
            returns::Verdict::Stale(id) => {
                self.port_io.forget_buffer();
                inner.stats.stale_returns += 1;
                log::debug!(
                    "{}: the cycle handed back buffer id {id}, which was not sent since the \
                     buffers changed (a stale id in a link's io area): not freed",
                    inner.config.node_name
                );
            }
            returns::Verdict::Returned(_) | returns::Verdict::Nothing => {}
        }
    }

    /// Changes the frame size. While a consumer is linked this renegotiates: every buffer of
    /// the old size is removed and freed, and buffers of the new size are allocated. No
    /// frame goes out from this call until the new format is set. While this producer drives
    /// the graph, the new size is announced by the second [`Producer::trigger_frame`] call
    /// from here, after a cycle without a frame, in which consumers read the last one. The
    /// current size is a no-op.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let driving = self.stream.is_driving();
        let pods = {
            let mut inner = self.inner.borrow_mut();
            for format in &inner.config.formats {
                FrameConstraints::for_frame(*format, width, height, inner.config.frame_rules())?;
            }
            if (inner.width, inner.height) == (width, height) {
                return Ok(()); // nothing to renegotiate
            }
            inner.width = width;
            inner.height = height;
            inner.resizing = true;
            // A new size may fit where the old one did not (or the other way round), and the
            // modifier is fixated again for it.
            inner.dmabuf = inner.pools.probe_dmabuf();
            inner.fixated = None;
            log::info!("{}: resizing to {width}x{height}", inner.config.node_name);
            let pods = inner.enum_formats()?;
            if inner.active.is_some() {
                let held = HeldBack {
                    since: Instant::now(),
                    unannounced: None,
                    cycles: 0,
                };
                if driving {
                    let unannounced = Some(pods);
                    inner.held_back = Some(HeldBack {
                        unannounced,
                        ..held
                    });
                    return Ok(()); // announced by `trigger_frame`
                }
                inner.held_back = Some(held);
            }
            pods
        };
        let mut refs = params::pod_refs(&pods);
        self.stream
            .update_params(&mut refs)
            .map_err(Error::pipewire("announcing the new size"))
    }

    /// What was negotiated, once buffers exist.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.inner.borrow().negotiated()
    }

    /// Whether DmaBuf is offered, and from which source the probe allocation came; the
    /// error says why not.
    pub fn dmabuf_offer(&self) -> std::result::Result<Origin, DmabufUnavailable> {
        self.inner.borrow().dmabuf.clone()
    }

    /// How the dma-buf heaps are chosen for frames of the current size and the first
    /// format: the policy's candidates for the usage, each in or out with its reason; the
    /// devices the linked consumers named (PipeWire 1.6's `pipewire.device-ids`); and whether
    /// explicit sync can be offered.
    pub fn explain_heap_choice(&self) -> String {
        let inner = self.inner.borrow();
        let size = FrameConstraints::for_frame(
            inner.config.formats[0],
            inner.width,
            inner.height,
            inner.config.frame_rules(),
        )
        .map_or(0, |c| c.size);
        let mut text = inner.pools.explain(size);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        if inner.peer_devices.is_empty() {
            text += "consumer devices: none named (PipeWire 1.6 consumers name theirs in \
                     pipewire.device-ids)\n";
        } else {
            text += "consumer devices (pipewire.device-ids):\n";
            for device in &inner.peer_devices {
                text += &format!("  {device}\n");
            }
        }
        text += &match &inner.sync_device {
            Some(device) => format!(
                "explicit sync: offered (timeline syncobjs on {})\n",
                device.path().display()
            ),
            None => "explicit sync: not offered (no DRM device here has timeline syncobjs); \
                     implicit sync, buffers with a device's fence on them wait\n"
                .to_owned(),
        };
        text
    }

    /// The devices the linked consumers named (PipeWire 1.6's `SPA_PARAM_PeerCapability`,
    /// `pipewire.device-ids`).
    pub fn peer_devices(&self) -> Vec<PeerDevice> {
        self.inner.borrow().peer_devices.clone()
    }

    /// Counters of frames and buffers so far.
    pub fn stats(&self) -> Stats {
        let inner = self.inner.borrow();
        Stats {
            live: inner.slots.len(),
            allocated: inner.pools.handed_out().0,
            recycled: inner.pools.handed_out().1,
            ..inner.stats
        }
    }

    /// The PipeWire node id (`SPA_ID_INVALID` before the stream is connected).
    pub fn node_id(&self) -> u32 {
        self.stream.node_id()
    }

    /// The stream's state.
    pub fn state(&self) -> StreamState {
        self.stream.state()
    }

    /// The PipeWire stream (for properties, or `Stream::time`).
    pub fn stream(&self) -> &Stream {
        &self.stream
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Let PipeWire remove (and us free) every buffer while the listener still hears it.
        self.triggers.connected.set(false);
        if let Err(e) = self.stream.disconnect() {
            log::debug!("disconnecting on drop: {e}");
        }
        let listener = self.listener.borrow_mut().take();
        if !self.dequeues.any() {
            // Nothing of ours runs under us: let queued calls reach the stream while it lives.
            raw::settle_queued_calls(&self.stream);
        }
        if self.dequeues.any() {
            // Dropped from inside its own render callback: the process callback that called
            // it, and PipeWire's code around that, still use the listener's closures and the
            // stream. Leak both (disconnected, with every buffer freed) rather than free them
            // under the running callback.
            log::error!(
                "a Producer was dropped inside its own render callback; its (disconnected) \
                 stream is leaked"
            );
            std::mem::forget(listener);
            std::mem::forget(self.stream.clone());
        }
    }
}
