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

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use heapcore::format::{FrameLayout, VideoFormat};
use heapcore::{Origin, PoolRegistry, PooledBuf};
use pipewire as pw;
use pw::core::CoreRc;
use pw::spa::pod::Pod;
use pw::stream::{Stream, StreamFlags, StreamListener, StreamRc, StreamState};
use rustix::io::Errno;

use crate::alloc::{FrameConstraints, HeapChoice};
use crate::config::{DataKind, Framerate, ProducerConfig};
use crate::error::{Error, Result};
use crate::params::{
    self, BuffersOffer, DRM_FORMAT_MOD_LINEAR, FormatOffer, PodBytes, VideoParams,
};
use crate::pattern::{self, PlaneMut};
use crate::raw::{self, BufferKey, ChunkFill, DataFill, StreamBuffer};

/// What was negotiated with the current consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub params: VideoParams,
    pub layout: FrameLayout,
    pub data_kind: DataKind,
    /// Where the buffers came from (the heap, udmabuf, memfd).
    pub origin: Origin,
    pub buffers: usize,
    /// `spa_data` blocks per buffer: one per plane for dma-bufs with a modifier, else one.
    pub blocks: u32,
    /// Bytes of each buffer (whole pages).
    pub buffer_size: u64,
}

impl fmt::Display for Negotiated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.params;
        write!(
            f,
            "{}x{} {} @ {} fps: {} buffers of {} bytes ({}",
            p.width,
            p.height,
            p.format,
            p.framerate,
            self.buffers,
            self.buffer_size,
            self.data_kind
        )?;
        match p.modifier {
            Some(DRM_FORMAT_MOD_LINEAR) => f.write_str(", modifier LINEAR")?,
            Some(m) => write!(f, ", modifier {m:#x}")?,
            None => {}
        }
        write!(
            f,
            ", {} block(s), stride {}) from {}",
            self.blocks, self.layout.strides[0], self.origin
        )
    }
}

/// Counters for logs and leak checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames queued to PipeWire.
    pub frames: u64,
    /// Process calls that found no free buffer (the consumer still held them all).
    pub starved: u64,
    /// Buffers taken for the stream (including the one taken when a format is fixed) and
    /// let go again (freed if their fd went to PipeWire, back to their pool if it never did).
    pub allocated: u64,
    pub freed: u64,
    /// How many of the buffers taken came back from the pool instead of being allocated:
    /// only buffers no consumer ever saw (the probe of a format fixed earlier) are pooled.
    pub recycled: u64,
    /// Buffers attached to the stream right now.
    pub live: usize,
    /// Formats fixed so far (1 + renegotiations).
    pub negotiations: u64,
}

/// Something a UI or log may want to show.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The stream changed state (`Paused`, `Streaming`, ...).
    State(String),
    /// A format was fixed with a consumer; buffers follow.
    FormatFixed(VideoParams),
    /// The buffers are in place and the first frame was produced into them.
    BuffersReady(Negotiated),
    /// Negotiation or allocation failed; the stream is in error.
    Error(String),
}

/// One frame to draw, handed to the render callback.
pub struct Frame<'a> {
    bytes: &'a mut [u8],
    layout: &'a FrameLayout,
    sequence: u64,
    kind: DataKind,
    origin: &'a Origin,
}

impl Frame<'_> {
    /// The frame number (0, 1, ...), also written into the `SPA_META_Header` seq.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    pub fn format(&self) -> VideoFormat {
        self.layout.format
    }

    pub fn width(&self) -> u32 {
        self.layout.width
    }

    pub fn height(&self) -> u32 {
        self.layout.height
    }

    /// Strides and plane offsets inside [`Frame::data`].
    pub fn layout(&self) -> &FrameLayout {
        self.layout
    }

    /// Whether the consumer gets a dma-buf or a memfd.
    pub fn data_kind(&self) -> DataKind {
        self.kind
    }

    /// Where this buffer's memory came from.
    pub fn origin(&self) -> &Origin {
        self.origin
    }

    /// The frame's bytes (all planes, laid out as [`Frame::layout`]). CPU access is
    /// bracketed with `DMA_BUF_IOCTL_SYNC` around the render callback.
    pub fn data(&mut self) -> &mut [u8] {
        self.bytes
    }

    /// The planes, each with its stride.
    pub fn planes(&mut self) -> Vec<PlaneMut<'_>> {
        // The producer sizes `bytes` to its own layout, so this cannot fail; if it ever did,
        // the callback gets no planes rather than a panic in a PipeWire callback.
        pattern::planes_in_mut(self.bytes, self.layout).unwrap_or_else(|e| {
            log::error!("frame {}: {e}", self.sequence);
            Vec::new()
        })
    }

    /// Draws the crate's animated, verifiable test pattern (see [`crate::pattern`]).
    pub fn draw_test_pattern(&mut self) {
        let (format, width, height, seq) =
            (self.format(), self.width(), self.height(), self.sequence);
        if let Err(e) = pattern::draw(&mut self.planes(), format, width, height, seq) {
            log::error!("frame {seq}: drawing the test pattern: {e}");
        }
    }
}

type Renderer = Box<dyn FnMut(&mut Frame<'_>)>;
type EventHandler = Box<dyn FnMut(&Event)>;

/// The current format and the buffers made for it.
struct Active {
    params: VideoParams,
    constraints: FrameConstraints,
    blocks: u32,
    offered_types: u32,
    /// Decided by the first `add_buffer` of this format.
    kind: Option<DataKind>,
    origin: Option<Origin>,
    ready_reported: bool,
    /// The stream stopped streaming (its consumer left or paused) since these buffers were
    /// made: their fds reached that consumer, so nothing is drawn into them any more. The
    /// node is suspended, and PipeWire removes them; the next link gets new ones.
    sealed: bool,
}

struct Slot {
    buf: PooledBuf,
    kind: DataKind,
}

struct Inner {
    config: ProducerConfig,
    choice: HeapChoice,
    /// Whether dma-bufs can be had (and so are offered); the error says why not.
    dmabuf: std::result::Result<Origin, String>,
    width: u32,
    height: u32,
    active: Option<Active>,
    slots: HashMap<BufferKey, Slot>,
    /// The buffer allocated when the format was fixed, given to the first `add_buffer`.
    spare: Option<PooledBuf>,
    stats: Stats,
    /// Bumped whenever a format is fixed or cleared.
    generation: u64,
    render: Option<Renderer>,
    on_event: Option<EventHandler>,
    events: Vec<Event>,
}

impl Inner {
    fn enum_formats(&self) -> Result<Vec<PodBytes>> {
        let offer = |linear_modifier| FormatOffer {
            formats: &self.config.formats,
            width: self.width,
            height: self.height,
            max_framerate: self.config.framerate,
            linear_modifier,
        };
        let dmabuf = self.dmabuf.is_ok();
        let mut pods = Vec::new();
        if dmabuf {
            pods.push(PodBytes::new("EnumFormat", offer(true).object())?);
        }
        if self.config.memfd_fallback || (dmabuf && self.config.dmabuf_without_modifier) {
            pods.push(PodBytes::new("EnumFormat", offer(false).object())?);
        }
        if pods.is_empty() {
            return Err(Error::Config(format!(
                "nothing to offer: no dma-buf can be allocated here ({}) and memfd_fallback is off",
                self.dmabuf.as_ref().err().map_or("", String::as_str)
            )));
        }
        Ok(pods)
    }

    fn negotiated(&self) -> Option<Negotiated> {
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
        })
    }

    /// Frees a buffer whose fd went to PipeWire (and so to consumers) for good: it never
    /// returns to a pool, so no later consumer or session gets it.
    fn retire(&mut self, buf: PooledBuf) {
        self.stats.freed += 1;
        drop(buf.detach());
    }

    /// Lets go of a buffer that never left this process (the probe taken when a format is
    /// fixed): it goes back to its pool.
    fn release_unshared(&mut self, buf: PooledBuf) {
        self.stats.freed += 1;
        drop(buf);
    }

    fn drop_spare(&mut self) {
        if let Some(spare) = self.spare.take() {
            self.release_unshared(spare);
        }
    }
}

/// Suspends our own node, so that PipeWire removes its buffers now.
///
/// PipeWire keeps an output port's format and buffers when its link goes away, and hands them
/// to the next link of the same format (`impl-link.c`: "we don't clear output buffers when
/// the link goes away. They will get cleared when the node goes to suspend"); WirePlumber
/// suspends a node only after it was idle for 5 s. Suspending the node as soon as a session
/// ends makes PipeWire remove the buffers at once, so the next consumer gets new ones.
///
/// The registry and the node proxy exist only for this: they are destroyed right after the
/// command (which the daemon handles first, as it reads the connection in order). Kept, they
/// would have the daemon send this connection every global and node change, and PipeWire
/// 0.3.65 can then take one of WirePlumber's results for the end of a consumer's buffer
/// allocation (the consumer gets buffers without memory; the daemon logs "invalid memory
/// type"): its link waits for a ping numbered by the messages sent on this connection.
fn suspend_node(core: &CoreRc, node_id: u32, name: &str) {
    if node_id == pw::constants::ID_ANY {
        return;
    }
    let global = pw::registry::GlobalObject::<&pw::spa::utils::dict::DictRef> {
        id: node_id,
        permissions: pw::permissions::PermissionFlags::empty(),
        type_: pw::types::ObjectType::Node,
        version: 0,
        props: None,
    };
    let bound = core
        .get_registry_rc()
        .and_then(|registry| registry.bind::<pw::node::Node, _>(&global));
    match bound {
        Ok(node) => {
            log::debug!("{name}: suspending node {node_id} so PipeWire removes its buffers");
            node.send_command(&pw::spa::node::command::NodeCommand::new(
                pw::spa::node::command::NodeCommandId::SUSPEND,
            ));
        }
        Err(e) => log::warn!(
            "{name}: cannot bind node {node_id} to suspend it ({e}); PipeWire removes its \
             buffers when WirePlumber suspends it"
        ),
    }
}

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
        let choice = HeapChoice::new(registry, &config);
        let dmabuf = choice.probe_dmabuf();
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
        let description = config
            .description
            .clone()
            .unwrap_or_else(|| config.node_name.clone());
        let props = pw::properties::properties! {
            *pw::keys::MEDIA_CLASS => "Video/Source",
            *pw::keys::MEDIA_ROLE => "Screen",
            *pw::keys::NODE_NAME => config.node_name.as_str(),
            *pw::keys::NODE_DESCRIPTION => description.as_str(),
        };
        let stream = StreamRc::new(core.clone(), &config.node_name, props)
            .map_err(Error::pipewire("creating the PipeWire stream"))?;
        let inner = Inner {
            width: config.width,
            height: config.height,
            config,
            choice,
            dmabuf,
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
        self.stream
            .add_local_listener_with_user_data(())
            .state_changed(move |stream, _, old, new| {
                let ended =
                    matches!(old, StreamState::Streaming) && !matches!(new, StreamState::Streaming);
                let started = matches!(new, StreamState::Streaming);
                let outcome = with_inner(&on_state, |inner| {
                    let name = inner.config.node_name.clone();
                    log::debug!("{name}: stream {old:?} -> {new:?}");
                    let outcome = if ended {
                        // Unconnected or in error, the node is going away with its buffers.
                        seal(inner, matches!(new, StreamState::Paused))
                    } else if started {
                        renegotiate_if_sealed(inner)
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
                    Some((Outcome::Suspend, name)) => suspend_node(&core, stream.node_id(), &name),
                    other => apply(stream, &on_state, other.map(|(o, _)| o)),
                }
                flush_events(&on_state);
            })
            .param_changed(move |stream, _, id, param| {
                if id == pw::spa::param::ParamType::Format.as_raw() {
                    let outcome = with_inner(&on_param, |inner| on_format(inner, param));
                    apply(stream, &on_param, outcome);
                    flush_events(&on_param);
                }
            })
            .add_buffer(raw::buffer_callback(move |stream, buffer| {
                let outcome = with_inner(&on_add, |inner| on_add_buffer(inner, buffer));
                apply(stream, &on_add, outcome);
                flush_events(&on_add);
            }))
            .remove_buffer(raw::remove_buffer_callback(
                remove_dequeues,
                move |_, buffer| {
                    // The fds leave the spa_data before they are closed, whatever happens.
                    buffer.clear();
                    with_inner(&on_remove, |inner| on_remove_buffer(inner, buffer));
                },
            ))
            .process(move |stream, _| {
                on_produce(stream, &on_process, &produce_dequeues);
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
            .map_err(Error::pipewire("connecting the PipeWire stream"))
    }

    /// Disconnects from the graph; every buffer is removed (and freed) on the way.
    pub fn disconnect(&self) -> Result<()> {
        self.stream
            .disconnect()
            .map_err(Error::pipewire("disconnecting the PipeWire stream"))
    }

    /// Asks for a frame now: when the stream drives the graph the render callback runs at
    /// once, otherwise at the driver's next cycle. Without a linked consumer this does
    /// nothing.
    pub fn trigger_frame(&self) -> Result<()> {
        self.stream
            .trigger_process()
            .map_err(Error::pipewire("triggering a frame"))
    }

    /// Changes the frame size. While a consumer is linked this renegotiates: every buffer of
    /// the old size is removed and freed, and buffers of the new size are allocated.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let pods = {
            let mut inner = self.inner.borrow_mut();
            for format in &inner.config.formats {
                FrameConstraints::for_frame(*format, width, height, &inner.config)?;
            }
            inner.width = width;
            inner.height = height;
            // A new size may fit where the old one did not (or the other way round).
            inner.dmabuf = inner.choice.probe_dmabuf();
            log::info!("{}: resizing to {width}x{height}", inner.config.node_name);
            inner.enum_formats()?
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
    pub fn dmabuf_offer(&self) -> std::result::Result<Origin, String> {
        self.inner.borrow().dmabuf.clone()
    }

    /// How the dma-buf heaps are chosen for frames of the current size and the first
    /// format: the policy's candidates for the usage, each in or out with its reason.
    pub fn explain_heap_choice(&self) -> String {
        let inner = self.inner.borrow();
        let size = FrameConstraints::for_frame(
            inner.config.formats[0],
            inner.width,
            inner.height,
            &inner.config,
        )
        .map_or(0, |c| c.size);
        inner.choice.explain(size)
    }

    pub fn stats(&self) -> Stats {
        let inner = self.inner.borrow();
        Stats {
            live: inner.slots.len(),
            allocated: inner.choice.handed_out().0,
            recycled: inner.choice.handed_out().1,
            ..inner.stats
        }
    }

    /// The PipeWire node id (`SPA_ID_INVALID` before the stream is connected).
    pub fn node_id(&self) -> u32 {
        self.stream.node_id()
    }

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

/// Hands queued events to the handler, without holding the state borrowed while it runs.
fn flush_events(inner: &Rc<RefCell<Inner>>) {
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

/// What a callback asks of PipeWire once the state is no longer borrowed: PipeWire may call
/// back into the producer synchronously (`pw_stream_set_error` emits `state_changed`).
enum Outcome {
    Done,
    /// Suspend our node, so that PipeWire removes its buffers.
    Suspend,
    Announce {
        what: &'static str,
        pods: Vec<PodBytes>,
    },
    Fail {
        errno: i32,
        message: String,
    },
}

fn fail(errno: i32, message: impl Into<String>) -> Outcome {
    Outcome::Fail {
        errno,
        message: message.into(),
    }
}

/// Runs `f` on the state, or logs and does nothing if it is borrowed already (a callback
/// re-entered from PipeWire): a panic here would abort, as it cannot unwind into C.
fn with_inner<T>(inner: &Rc<RefCell<Inner>>, f: impl FnOnce(&mut Inner) -> T) -> Option<T> {
    match inner.try_borrow_mut() {
        Ok(mut guard) => Some(f(&mut guard)),
        Err(_) => {
            log::error!("a PipeWire callback re-entered the producer; ignored");
            None
        }
    }
}

fn apply(stream: &Stream, inner: &Rc<RefCell<Inner>>, outcome: Option<Outcome>) {
    match outcome {
        None | Some(Outcome::Done | Outcome::Suspend) => {}
        Some(Outcome::Announce { what, pods }) => {
            let mut refs = params::pod_refs(&pods);
            if let Err(e) = stream.update_params(&mut refs) {
                apply(stream, inner, Some(fail(EINVAL, format!("{what}: {e}"))));
            }
        }
        Some(Outcome::Fail { errno, message }) => {
            with_inner(inner, |inner| {
                log::error!("{}: {message}", inner.config.node_name);
                inner.events.push(Event::Error(message.clone()));
            });
            raw::set_error(stream, errno, &message);
        }
    }
}

/// The errno values `pw_stream_set_error` is given.
const EINVAL: i32 = Errno::INVAL.raw_os_error();
const ENOMEM: i32 = Errno::NOMEM.raw_os_error();

/// The stream stopped streaming: its consumer left or paused, so the buffers it had are
/// sealed (never drawn into again) and, if `suspend`, the node is to be suspended so PipeWire
/// removes them.
fn seal(inner: &mut Inner, suspend: bool) -> Outcome {
    let Some(active) = inner.active.as_mut().filter(|a| !a.sealed) else {
        return Outcome::Done;
    };
    active.sealed = true;
    if !suspend || inner.slots.is_empty() {
        return Outcome::Done;
    }
    log::info!(
        "{}: the consumer left or paused; its {} buffers are sealed until PipeWire removes them",
        inner.config.node_name,
        inner.slots.len()
    );
    Outcome::Suspend
}

/// The stream streams again while its buffers are sealed: a link came up with the buffers
/// of the session that ended before the suspend took effect. Announcing the formats again
/// (as a resize does) makes PipeWire renegotiate that link, with new buffers.
fn renegotiate_if_sealed(inner: &mut Inner) -> Outcome {
    if !inner.active.as_ref().is_some_and(|a| a.sealed) {
        return Outcome::Done;
    }
    log::info!(
        "{}: a consumer linked to sealed buffers; renegotiating for new ones",
        inner.config.node_name
    );
    match inner.enum_formats() {
        Ok(pods) => Outcome::Announce {
            what: "renegotiating sealed buffers",
            pods,
        },
        Err(e) => fail(EINVAL, e.to_string()),
    }
}

fn on_format(inner: &mut Inner, param: Option<&Pod>) -> Outcome {
    // pw_stream removes every buffer before it reports a new (or no) format.
    if !inner.slots.is_empty() {
        log::warn!(
            "{}: {} buffers outlived their format; freeing them",
            inner.config.node_name,
            inner.slots.len()
        );
        let stale: Vec<Slot> = inner.slots.drain().map(|(_, slot)| slot).collect();
        for slot in stale {
            inner.retire(slot.buf);
        }
    }
    inner.drop_spare();
    inner.generation += 1;
    inner.active = None;
    let Some(param) = param else {
        log::debug!("{}: format cleared", inner.config.node_name);
        return Outcome::Done;
    };
    let fixed = match VideoParams::parse(param) {
        Ok(p) => p,
        Err(e) => return fail(EINVAL, e.to_string()),
    };
    if !inner.config.formats.contains(&fixed.format) {
        let msg = format!("the consumer fixed {}, which was not offered", fixed.format);
        return fail(EINVAL, msg);
    }
    if (fixed.width, fixed.height) != (inner.width, inner.height) {
        log::warn!(
            "{}: format fixed at {}x{} while {}x{} is offered",
            inner.config.node_name,
            fixed.width,
            fixed.height,
            inner.width,
            inner.height
        );
    }
    // With a modifier: one block per plane, each with its offset and stride. Without: one
    // block, laid out as GStreamer's consumers assume.
    let constraints = if fixed.modifier.is_some() {
        FrameConstraints::for_frame(fixed.format, fixed.width, fixed.height, &inner.config)
    } else {
        FrameConstraints::for_single_block(fixed.format, fixed.width, fixed.height, &inner.config)
    };
    let constraints = match constraints {
        Ok(c) => c,
        Err(e) => return fail(EINVAL, e.to_string()),
    };
    inner.stats.negotiations += 1;
    let node = inner.config.node_name.clone();
    let (blocks, offered_types) = if let Some(modifier) = fixed.modifier {
        if modifier != DRM_FORMAT_MOD_LINEAR {
            let msg = format!("modifier {modifier:#x} was fixed; only LINEAR was offered");
            return fail(EINVAL, msg);
        }
        match inner.choice.allocate(DataKind::DmaBuf, &constraints) {
            Ok(buf) => {
                inner.spare = Some(buf);
                (constraints.layout.n_planes as u32, DataKind::DmaBuf.mask())
            }
            Err(e) => {
                // PipeWire's dma-buf rule: never offer what cannot be had. Withdraw the
                // DmaBuf formats and let PipeWire renegotiate.
                log::warn!(
                    "{node}: no dma-buf for {}x{} {} ({e}); withdrawing the DmaBuf formats",
                    fixed.width,
                    fixed.height,
                    fixed.format
                );
                inner.dmabuf = Err(e.to_string());
                inner.active = None;
                return match inner.enum_formats() {
                    Ok(pods) => Outcome::Announce {
                        what: "withdrawing the DmaBuf formats",
                        pods,
                    },
                    Err(e) => fail(ENOMEM, e.to_string()),
                };
            }
        }
    } else {
        let mut types = 0;
        if inner.config.memfd_fallback {
            types |= DataKind::MemFd.mask();
        }
        if inner.dmabuf.is_ok() && inner.config.dmabuf_without_modifier {
            match inner.choice.allocate(DataKind::DmaBuf, &constraints) {
                Ok(buf) => {
                    inner.spare = Some(buf);
                    types |= DataKind::DmaBuf.mask();
                }
                Err(e) => log::warn!(
                    "{node}: no dma-buf for {}x{} {} ({e}); offering MemFd only",
                    fixed.width,
                    fixed.height,
                    fixed.format
                ),
            }
        }
        if types == 0 {
            let msg = "the consumer negotiated no modifier and MemFd is not allowed".to_string();
            return fail(EINVAL, msg);
        }
        (1, types)
    };
    let layout = &constraints.layout;
    let offer = BuffersOffer {
        buffers: inner.config.buffers,
        max_buffers: crate::config::MAX_BUFFERS.max(inner.config.buffers),
        blocks,
        // Each block covers the whole buffer; chunks say where each plane is.
        size: constraints.size as u32,
        stride: layout.strides[0],
        data_types: offered_types,
    };
    log::info!(
        "{node}: format fixed: {}x{} {} @ {}{}; offering {} buffers, {blocks} block(s), \
         stride {}, data types {}",
        fixed.width,
        fixed.height,
        fixed.format,
        fixed.framerate,
        if fixed.modifier.is_some() {
            ", modifier LINEAR"
        } else {
            ", no modifier"
        },
        offer.buffers,
        layout.strides[0],
        describe_types(offered_types)
    );
    let pods = [
        PodBytes::new("Buffers", offer.object()),
        PodBytes::new("Meta", params::header_meta()),
    ]
    .into_iter()
    .collect::<Result<Vec<_>>>();
    let pods = match pods {
        Ok(p) => p,
        Err(e) => return fail(EINVAL, e.to_string()),
    };
    inner.active = Some(Active {
        params: fixed,
        constraints,
        blocks,
        offered_types,
        kind: None,
        origin: None,
        ready_reported: false,
        sealed: false,
    });
    inner.events.push(Event::FormatFixed(fixed));
    Outcome::Announce {
        what: "announcing buffers",
        pods,
    }
}

fn describe_types(mask: u32) -> String {
    let names: Vec<String> = [DataKind::DmaBuf, DataKind::MemFd]
        .into_iter()
        .filter(|k| mask & k.mask() != 0)
        .map(|k| k.to_string())
        .collect();
    if names.is_empty() {
        format!("none ({mask:#x})")
    } else {
        format!("{} ({mask:#x})", names.join("|"))
    }
}

/// Picks the memory type for this format's buffers from what both sides accepted.
fn decide_kind(active: &Active, allowed: u32) -> std::result::Result<(DataKind, String), String> {
    let usable = allowed & active.offered_types;
    let accepted = describe_types(allowed);
    if active.params.modifier.is_some() {
        return if usable & DataKind::DmaBuf.mask() != 0 {
            Ok((
                DataKind::DmaBuf,
                format!("a LINEAR modifier was negotiated and the buffer types allow {accepted}"),
            ))
        } else {
            Err(format!(
                "a modifier was negotiated but the consumer's buffer types are {accepted}"
            ))
        };
    }
    if usable & DataKind::DmaBuf.mask() != 0 {
        Ok((
            DataKind::DmaBuf,
            format!(
                "no modifier, but the consumer's buffer types are {accepted}: linear, \
                 mmap-able dma-bufs (PipeWire's V4L2 rule)"
            ),
        ))
    } else if usable & DataKind::MemFd.mask() != 0 {
        Ok((
            DataKind::MemFd,
            format!("the negotiated buffer types are {accepted}"),
        ))
    } else {
        Err(format!(
            "the consumer accepts {accepted}; this producer offered {}",
            describe_types(active.offered_types)
        ))
    }
}

fn on_add_buffer(inner: &mut Inner, buffer: &mut StreamBuffer<'_>) -> Outcome {
    let node = inner.config.node_name.clone();
    let Some(active) = inner.active.as_mut() else {
        return fail(EINVAL, "a buffer was added before a format");
    };
    let allowed = buffer.allowed_types();
    let kind = match active.kind {
        Some(kind) => kind,
        None => match decide_kind(active, allowed) {
            Ok((kind, why)) => {
                log::info!(
                    "{node}: {kind} buffers for {}x{} {}: {why}",
                    active.params.width,
                    active.params.height,
                    active.params.format
                );
                active.kind = Some(kind);
                kind
            }
            Err(msg) => return fail(EINVAL, msg),
        },
    };
    let constraints = active.constraints.clone();
    let blocks = active.blocks;
    let n_datas = buffer.n_datas();
    if n_datas != blocks as usize {
        let msg = format!("buffers have {n_datas} data blocks, {blocks} were asked for");
        return fail(EINVAL, msg);
    }
    let allocated = match inner.spare.take() {
        Some(buf) if kind == DataKind::DmaBuf => Ok(buf),
        spare => {
            if let Some(unused) = spare {
                inner.release_unshared(unused);
            }
            inner.choice.allocate(kind, &constraints)
        }
    };
    let (buf, this_kind) = match allocated {
        Ok(buf) => (buf, kind),
        Err(e) if kind == DataKind::DmaBuf && active_allows_memfd(inner, allowed) => {
            log::warn!("{node}: no dma-buf for another buffer ({e}); this one is MemFd");
            match inner.choice.allocate(DataKind::MemFd, &constraints) {
                Ok(buf) => (buf, DataKind::MemFd),
                Err(e) => return fail(ENOMEM, format!("allocating a buffer: {e}")),
            }
        }
        Err(e) => return fail(ENOMEM, format!("allocating a buffer: {e}")),
    };
    let fill = DataFill {
        kind: this_kind,
        fd: std::os::fd::AsRawFd::as_raw_fd(&*buf),
        mapoffset: 0,
        maxsize: u32::try_from(buf.len()).unwrap_or(u32::MAX),
    };
    if let Err(e) = buffer.fill(&vec![fill; blocks as usize]) {
        inner.release_unshared(buf);
        return fail(EINVAL, e.to_string());
    }
    if let Some(active) = inner.active.as_mut() {
        active.origin.get_or_insert_with(|| buf.origin().clone());
    }
    log::debug!(
        "{node}: buffer {:?}: {} bytes {this_kind} from {} (fd {})",
        buffer.key(),
        buf.len(),
        buf.origin(),
        fill.fd
    );
    inner.slots.insert(
        buffer.key(),
        Slot {
            buf,
            kind: this_kind,
        },
    );
    Outcome::Done
}

fn active_allows_memfd(inner: &Inner, allowed: u32) -> bool {
    inner.active.as_ref().is_some_and(|a| {
        a.params.modifier.is_none() && allowed & a.offered_types & DataKind::MemFd.mask() != 0
    })
}

fn on_remove_buffer(inner: &mut Inner, buffer: &mut StreamBuffer<'_>) {
    if let Some(slot) = inner.slots.remove(&buffer.key()) {
        log::debug!(
            "{}: freeing buffer {:?} ({} from {})",
            inner.config.node_name,
            buffer.key(),
            slot.kind,
            slot.buf.origin()
        );
        inner.retire(slot.buf);
    }
}

fn monotonic_ns() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec)
}

fn on_produce(stream: &Stream, inner_rc: &Rc<RefCell<Inner>>, dequeues: &Rc<raw::Dequeues>) {
    let sealed = with_inner(inner_rc, |inner| {
        let sealed = inner.active.as_ref().is_some_and(|a| a.sealed);
        if sealed {
            inner.stats.starved += 1;
        }
        sealed
    });
    if sealed != Some(false) {
        return; // sealed buffers are never drawn into (or the state is busy: re-entered)
    }
    let Some(mut dequeued) = raw::dequeue(stream, dequeues) else {
        with_inner(inner_rc, |inner| inner.stats.starved += 1);
        return;
    };
    let key = dequeued.key();
    // Take what the render callback needs out of the state, so that the callback may use
    // the producer (stats, resize, even disconnect) without a borrow conflict. The slot
    // leaves the map meanwhile, so its memory stays ours whatever the callback does.
    let (mut slot, layout, origin, sequence, mut render, generation) = {
        let Ok(mut inner) = inner_rc.try_borrow_mut() else {
            log::error!("process re-entered the producer; frame skipped");
            return;
        };
        let Some(layout) = inner.active.as_ref().map(|a| a.constraints.layout) else {
            return;
        };
        let Some(slot) = inner.slots.remove(&key) else {
            log::warn!("{}: dequeued an unknown buffer", inner.config.node_name);
            return;
        };
        let origin = slot.buf.origin().clone();
        let generation = inner.generation;
        (
            slot,
            layout,
            origin,
            inner.stats.frames,
            inner.render.take(),
            generation,
        )
    };
    let drawn = match slot.buf.write() {
        Ok(mut cpu) => {
            let len = (layout.size as usize).min(cpu.len());
            let mut frame = Frame {
                bytes: &mut cpu[..len],
                layout: &layout,
                sequence,
                kind: slot.kind,
                origin: &origin,
            };
            if let Some(render) = render.as_mut() {
                render(&mut frame);
            }
            cpu.finish()
        }
        Err(e) => Err(e),
    };
    // Nothing else can hold the state now: the callback took no borrow across the render.
    let mut inner = inner_rc.borrow_mut();
    if inner.render.is_none() {
        inner.render = render;
    }
    if dequeued.removed() {
        // The callback made PipeWire remove every buffer (it disconnected the stream): this
        // pw_buffer is gone, so it is neither written nor queued (dropping `dequeued` does
        // nothing), and its memory, which consumers had, is freed.
        log::debug!(
            "{}: buffer {key:?} was removed while frame {sequence} was drawn",
            inner.config.node_name
        );
        inner.retire(slot.buf);
        return;
    }
    if inner.generation != generation {
        // The format changed while the callback ran, yet PipeWire kept this buffer (it
        // removes every buffer before a new format, so this should not happen): it stays
        // attached, and goes back untouched.
        inner.slots.insert(key, slot);
        return;
    }
    if let Err(e) = drawn {
        log::warn!("{}: frame {sequence}: {e}", inner.config.node_name);
    }
    let chunks: Vec<ChunkFill> = if inner.active.as_ref().is_some_and(|a| a.blocks == 1) {
        vec![ChunkFill {
            offset: 0,
            size: layout.size as u32,
            stride: layout.strides[0] as i32,
        }]
    } else {
        (0..layout.n_planes)
            .map(|p| {
                let end = if p + 1 < layout.n_planes {
                    layout.offsets[p + 1]
                } else {
                    layout.size
                };
                ChunkFill {
                    offset: layout.offsets[p] as u32,
                    size: (end - layout.offsets[p]) as u32,
                    stride: layout.strides[p] as i32,
                }
            })
            .collect()
    };
    dequeued.set_chunks(&chunks);
    dequeued.set_header(sequence, monotonic_ns());
    inner.slots.insert(key, slot);
    inner.stats.frames += 1;
    let report = inner
        .active
        .as_mut()
        .is_some_and(|a| !std::mem::replace(&mut a.ready_reported, true));
    if report {
        if let Some(negotiated) = inner.negotiated() {
            log::info!("{}: streaming {negotiated}", inner.config.node_name);
            inner.events.push(Event::BuffersReady(negotiated));
        }
    }
    drop(inner);
    drop(dequeued); // queues the buffer
}

/// The frame interval for a negotiated rate, falling back to the configured maximum when
/// the rate is variable (`0/1`).
pub fn frame_interval(negotiated: Option<&Negotiated>, max: Framerate) -> std::time::Duration {
    negotiated
        .and_then(|n| n.params.framerate.interval())
        .or_else(|| max.interval())
        .unwrap_or(std::time::Duration::from_millis(33))
}
