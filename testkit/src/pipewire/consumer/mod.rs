//! A Rust consumer that negotiates like a real one (dma-bufs with the LINEAR modifier when it
//! may, shared memory otherwise), imports every fd it gets through heapcore (mapping with
//! `DMA_BUF_IOCTL_SYNC` for dma-bufs) and checks each frame against the test pattern.
//!
//! It holds a frame as a real consumer does: by keeping its `pw_buffer` dequeued (not queued
//! back), so the producer cannot draw into it, and by keeping duplicates of its fds.

mod pods;
mod receive;
mod sync;
mod trail;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::ptr::NonNull;
use std::rc::Rc;

use pw_dmaheap::ImportedData;
use pw_dmaheap::heapcore::SyncFile;
use pw_dmaheap::heapcore::format::{FrameLayout, VideoFormat};
use pw_dmaheap::pattern::{self, Plane};
use pw_dmaheap::pipewire as pw;
use pw_dmaheap::{DataTypes, VideoParams};

use pods::{buffers_param, enum_format, header_meta, pods, sync_meta, synced_buffers_param};
use pw::spa::sys;
use sync::{ExplicitSync, Fencing, MetaSyncTimeline};
use trail::{Event, Trail};

/// Which memory the consumer says it can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Like OBS or a compositor: dma-bufs with modifiers first, shared memory as fallback.
    DmaBufOrMemFd,
    /// A consumer without dma-buf support: no modifier, `dataType = MemFd`.
    MemFdOnly,
}

/// What else the consumer does when it connects.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Ask for explicit sync (`SPA_META_SyncTimeline`). Release points are signalled at once,
    /// but with a delay above 0 every fifth only after that many later frames arrived.
    pub explicit_sync: Option<usize>,
    /// Name these devices (`dev_t`s) in `pipewire.device-ids` (PipeWire 1.6's
    /// `SPA_PARAM_Capability`).
    pub device_ids: Vec<u64>,
}

/// What the frames hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// pw-dmaheap's numbered test pattern ([`pw_dmaheap::pattern`]).
    Pattern,
    /// A single-plane, 4-byte-per-pixel format whose every pixel starts with these 3 bytes
    /// (`videotestsrc pattern=solid-color` in BGRx: blue, green, red).
    Solid([u8; 3]),
}

/// What the consumer saw.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Frames received.
    pub frames: u64,
    /// Frames whose content was checked against the pattern.
    pub checked: u64,
    /// The first ten things that were wrong.
    pub errors: Vec<String>,
    /// The first frame number checked.
    pub first_seq: Option<u64>,
    /// The last frame number checked.
    pub last_seq: Option<u64>,
    /// The `spa_data` types received (`DmaBuf`, `MemFd`, `MemPtr`).
    pub data_types: BTreeSet<String>,
    /// `exp_name` of every dma-buf received (the heap, `udmabuf`).
    pub exporters: BTreeSet<String>,
    /// Buffer names from fdinfo.
    pub names: BTreeSet<String>,
    /// Every format fixed, in order.
    pub formats: Vec<VideoParams>,
    /// `spa_data` blocks per buffer.
    pub blocks: BTreeSet<usize>,
    /// `/proc/self/fdinfo` of the first fd received, as the kernel shows it.
    pub fdinfo_sample: Option<String>,
    /// Inode numbers of every buffer received (each memfd and dma-buf has its own).
    pub inodes: BTreeSet<u64>,
    /// The regions (`mapoffset`, `maxsize`) of every block received.
    pub regions: BTreeSet<(u32, u32)>,
    /// The stream was destroyed or failed (WirePlumber destroys a `dont-reconnect` stream
    /// whose target it cannot find).
    pub gone: Option<String>,
    /// Times the consumer got a link whose buffers have no memory and linked again (see
    /// [`Consumer::connect_with`]); such frames are neither counted as frames nor as errors.
    pub relinked: u32,
    /// The `spa_data` types (and fds) of the buffers that made it link again.
    pub unusable: BTreeSet<(u32, i64)>,
    /// Buffers that carried no frame (every chunk empty), skipped.
    pub empty: u64,
    /// Where the first of them came: the frame before it and the consumer's last events.
    pub first_empty: Option<String>,
    /// `SPA_DATA_SyncObj` blocks per buffer (2 with explicit sync, else 0).
    pub syncobj_blocks: BTreeSet<usize>,
    /// Frames whose acquire point was seen signalled.
    pub acquired: u64,
    /// Release points this consumer signalled.
    pub released: u64,
    /// Of those, the ones signalled late, out of order (see [`Extras::explicit_sync`]).
    pub released_late: u64,
    /// The frame the fenced buffer held.
    pub fenced_seq: Option<u64>,
    /// The fenced buffer came back, after its fence signalled.
    pub fenced_buffer_back_after_signal: bool,
}

impl Seen {
    fn error(&mut self, e: String) {
        if self.errors.len() < 10 {
            self.errors.push(e);
        }
    }
}

/// A frame kept beyond its PipeWire life: duplicates of its buffer's fds, and the frame it
/// held. It outlives the consumer that received it ([`Consumer::take_held`]).
pub struct HeldFrame {
    planes: Vec<(ImportedData, usize, usize, usize)>, // region, offset, len, stride
    params: VideoParams,
    seq: u64,
}

impl HeldFrame {
    /// The frame number it held.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Checks the memory still carries the frame it held.
    pub fn check(&self) -> Result<(u64, VideoParams), String> {
        let seq = self.read()?;
        if seq != self.seq {
            return Err(format!("held frame {} now reads as frame {seq}", self.seq));
        }
        Ok((seq, self.params))
    }

    /// The frame number the memory carries now (checked against the pattern).
    pub fn read(&self) -> Result<u64, String> {
        let guards = self
            .planes
            .iter()
            .map(|(buf, _, _, _)| buf.read().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let planes: Vec<Plane<'_>> = guards
            .iter()
            .zip(&self.planes)
            .map(|(g, (_, offset, len, stride))| Plane {
                bytes: g.get(*offset..*offset + *len).unwrap_or(&[]),
                stride: *stride,
            })
            .collect();
        let p = self.params;
        pattern::check(&planes, p.format, p.width, p.height)
            .map_err(|e| format!("held frame {}: {e}", self.seq))
    }
}

/// A received block: its fd number and region (`mapoffset`, `maxsize`).
type BlockKey = (i64, u32, u32);

/// Where a frame lies in one block: the block, and the offset (from the region's start), size
/// and stride of its chunk.
type Block = (BlockKey, usize, usize, usize);

/// Where a checked frame was: its blocks, the single-block layout, and what it was.
struct Received {
    blocks: Vec<Block>,
    layout: Option<FrameLayout>,
    params: VideoParams,
    seq: u64,
}

struct State {
    seen: Seen,
    /// The link's buffers came without memory: connect again (from the loop, not from a
    /// stream callback).
    relink: bool,
    /// Disconnecting to connect again: not `gone`.
    relinking: bool,
    /// The last checked frame of each buffer (by its first block) since the buffers were
    /// added.
    last_frames: HashMap<BlockKey, Received>,
    format: Option<VideoParams>,
    /// Imported blocks by their fd number and region (buffers may share an fd at different
    /// `mapoffset`s), dropped when PipeWire removes the buffers.
    imported: HashMap<BlockKey, ImportedData>,
    hold_next: bool,
    /// Which buffer the last checked frame came from, and when: a frame that repeats or goes
    /// back says whether it is the same buffer handed over twice or a second one.
    last_from: Option<LastFrom>,
    expect: Expect,
    held: Option<HeldFrame>,
    /// The held frame's `pw_buffer`, still dequeued: the producer cannot reuse it until it is
    /// released, or until PipeWire removes it (renegotiation, disconnect).
    held_buffer: Option<NonNull<pw::sys::pw_buffer>>,
    explicit: ExplicitSync,
    fencing: Fencing,
    trail: Trail,
}

/// Where and when the last checked frame came, kept as numbers (formatted only for an error).
#[derive(Debug, Clone, Copy)]
struct LastFrom {
    block: BlockKey,
    format: usize,
    params: VideoParams,
    received: u64,
    empty: u64,
}

impl std::fmt::Display for LastFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (fd, offset, size) = self.block;
        write!(
            f,
            "in fd {fd} region {offset}+{size}, format {} of {}, as received frame {} (after {} \
             empty buffers)",
            self.format, self.params, self.received, self.empty
        )
    }
}

/// The blocks and the header's frame number of a dequeued buffer.
///
/// # Safety
/// `raw` must be a buffer dequeued from a stream, not queued back or removed while the
/// result is used.
unsafe fn buffer_parts<'a>(
    raw: NonNull<pw::sys::pw_buffer>,
) -> (
    &'a mut [pw::spa::buffer::Data],
    Option<u64>,
    Option<NonNull<MetaSyncTimeline>>,
) {
    // SAFETY: (caller) the pw_buffer is valid while it is dequeued.
    let spa = unsafe { raw.as_ref().buffer };
    if spa.is_null() {
        return (&mut [], None, None);
    }
    // SAFETY: a non-null spa_buffer of a dequeued buffer is valid while it is dequeued.
    let buffer = unsafe { &*spa };
    let (datas, n_datas) = (buffer.datas, buffer.n_datas);
    let datas: &mut [pw::spa::buffer::Data] = if datas.is_null() || n_datas == 0 {
        &mut []
    } else {
        // SAFETY: `datas` holds `n_datas` spa_data the dequeued buffer owns, and `Data` is a
        // `repr(transparent)` wrapper of spa_data (what pipewire-rs's `datas_mut` does).
        unsafe { std::slice::from_raw_parts_mut(datas.cast(), n_datas as usize) }
    };
    let size = std::mem::size_of::<sys::spa_meta_header>();
    // SAFETY: the lookup only reads the metas array of a valid spa_buffer.
    let meta = unsafe { sys::spa_buffer_find_meta_data(spa, sys::SPA_META_Header, size) };
    // SAFETY: a non-null result points to at least `size` bytes of the buffer's meta memory,
    // suitably aligned for spa_meta_header.
    let seq = unsafe { meta.cast::<sys::spa_meta_header>().as_ref() }.map(|h| h.seq);
    let size = std::mem::size_of::<MetaSyncTimeline>();
    // SAFETY: as above.
    let sync = unsafe { sys::spa_buffer_find_meta_data(spa, sync::META_SYNC_TIMELINE, size) };
    (datas, seq, NonNull::new(sync.cast()))
}

/// A consumer stream linked (by WirePlumber) to the node named `target`. Field order is drop
/// order: the timer (which holds the stream) goes first.
pub struct Consumer<'l> {
    _relink: pw::loop_::TimerSource<'l>,
    _listener: pw::stream::StreamListener<()>,
    stream: pw::stream::StreamRc,
    state: Rc<RefCell<State>>,
}

/// The consumer's connect flags.
fn consumer_flags() -> pw::stream::StreamFlags {
    // Never let WirePlumber fall back to another source (the VM has vivid).
    pw::stream::StreamFlags::AUTOCONNECT | pw::stream::StreamFlags::DONT_RECONNECT
}

impl<'l> Consumer<'l> {
    /// Connects to `target` (WirePlumber links it).
    ///
    /// PipeWire 0.3.65 sometimes hands an input port the buffers a producer allocates
    /// (`PW_STREAM_FLAG_ALLOC_BUFFERS`) before the producer has filled them in: the link
    /// waits for the producer's sync with a sequence number that a result of WirePlumber's
    /// concurrent param enumeration on the same node can carry, and takes that result as the
    /// sync (the daemon logs "invalid memory type" for every buffer). The sync waits for a
    /// ping numbered by the messages sent on the producer's connection, and WirePlumber's
    /// requests carry numbers of its own; the two coincide now and then, often when the
    /// producer's connection also receives registry events. Every buffer of that
    /// link then has no memory (type `SPA_ID_INVALID`, fd -1), and answering the Buffers param
    /// again does not reallocate an active link. The consumer then disconnects and connects
    /// again, from a timer on `lp` (never from inside a stream callback), and counts it in
    /// [`Seen::relinked`].
    /// With [`Extras`] it also asks for explicit sync or names its devices.
    pub fn connect_with(
        core: &pw::core::CoreRc,
        lp: &'l pw::loop_::Loop,
        target: &str,
        format: VideoFormat,
        accept: Accept,
        expect: Expect,
        extras: Extras,
    ) -> Result<Self, String> {
        let props = pw::properties::properties! {
            *pw::keys::MEDIA_TYPE => "Video",
            *pw::keys::MEDIA_CATEGORY => "Capture",
            *pw::keys::MEDIA_ROLE => "Screen",
            *pw::keys::NODE_NAME => "dmaheap-test-consumer",
            *pw::keys::TARGET_OBJECT => target,
        };
        let stream = pw::stream::StreamRc::new(core.clone(), "dmaheap-test-consumer", props)
            .map_err(|e| format!("consumer stream: {e}"))?;
        let state = Rc::new(RefCell::new(State {
            seen: Seen::default(),
            relink: false,
            relinking: false,
            last_frames: HashMap::new(),
            format: None,
            imported: HashMap::new(),
            hold_next: false,
            last_from: None,
            expect,
            held: None,
            held_buffer: None,
            explicit: ExplicitSync::new(extras.explicit_sync),
            fencing: Fencing::default(),
            trail: Trail::default(),
        }));
        let explicit_sync = extras.explicit_sync.is_some();
        let on_state = Rc::clone(&state);
        let on_param = Rc::clone(&state);
        let on_remove = Rc::clone(&state);
        let on_process = Rc::clone(&state);
        let listener = stream
            .add_local_listener_with_user_data(())
            .state_changed(move |_, _, old, new| {
                let mut st = on_state.borrow_mut();
                st.trail.push(Event::State(match new {
                    pw::stream::StreamState::Error(_) => "error",
                    pw::stream::StreamState::Unconnected => "unconnected",
                    pw::stream::StreamState::Connecting => "connecting",
                    pw::stream::StreamState::Paused => "paused",
                    pw::stream::StreamState::Streaming => "streaming",
                }));
                let gone = match new {
                    pw::stream::StreamState::Error(_) => true,
                    pw::stream::StreamState::Unconnected => !st.relinking,
                    _ => false,
                };
                if gone {
                    st.seen.gone = Some(format!("{old:?} -> {new:?}"));
                }
            })
            .param_changed(move |stream, _, id, param| {
                if id != pw::spa::param::ParamType::Format.as_raw() {
                    return;
                }
                let mut st = on_param.borrow_mut();
                st.imported.clear();
                st.last_frames.clear();
                let Some(param) = param else {
                    st.trail.push(Event::Format(None));
                    st.format = None;
                    return;
                };
                let params = match VideoParams::parse(param) {
                    Ok(p) => p,
                    Err(e) => {
                        st.seen.error(format!("format: {e}"));
                        return;
                    }
                };
                st.format = Some(params);
                st.trail
                    .push(Event::Format(Some((params.width, params.height))));
                st.seen.formats.push(params);
                let types = match (params.modifier, accept) {
                    (Some(_), _) => DataTypes::DMA_BUF,
                    (None, Accept::DmaBufOrMemFd) => DataTypes::DMA_BUF | DataTypes::MEM_FD,
                    (None, Accept::MemFdOnly) => DataTypes::MEM_FD,
                };
                drop(st);
                let answer = if explicit_sync {
                    vec![
                        synced_buffers_param(types),
                        buffers_param(types),
                        header_meta(),
                        sync_meta(),
                    ]
                } else {
                    vec![buffers_param(types), header_meta()]
                };
                if let Err(e) = stream.update_params(&mut pods(&answer)) {
                    on_param
                        .borrow_mut()
                        .seen
                        .error(format!("update_params: {e}"));
                }
            })
            .remove_buffer(move |_, _, buffer| {
                let mut st = on_remove.borrow_mut();
                st.trail.push(Event::Removed {
                    buffer: buffer as usize,
                });
                st.imported.clear();
                st.last_frames.clear();
                st.explicit.clear();
                // A held buffer PipeWire removes is gone: never queue it back.
                if st.held_buffer.is_some_and(|b| b.as_ptr() == buffer) {
                    st.held_buffer = None;
                }
            })
            .process(move |stream, _| {
                // SAFETY: returns a buffer of this stream (or null) that is ours until queued.
                let Some(raw) = NonNull::new(unsafe { stream.dequeue_raw_buffer() }) else {
                    return;
                };
                let mut st = on_process.borrow_mut();
                // SAFETY: `raw` was dequeued above and is queued (or kept) only after the
                // parts are used.
                let (datas, header_seq, sync_meta) = unsafe { buffer_parts(raw) };
                let (memory, syncobjs) = sync::split_syncobjs(datas);
                let buffer = memory.first().map(|d| {
                    let d = d.as_raw();
                    (d.fd, d.mapoffset, d.maxsize)
                });
                st.trail.push(Event::Dequeued {
                    buffer: raw.as_ptr() as usize,
                    fd: buffer.map_or(-1, |b| b.0),
                    chunk: memory.first().map_or(0, |d| d.chunk().size()),
                    header: header_seq,
                    drawn: None,
                });
                let points = buffer.and_then(|b| {
                    st.fence_check(b);
                    st.sync_before(b, &syncobjs, sync_meta)
                });
                let hold = st.receive(memory, header_seq);
                if let Some(b) = buffer {
                    st.sync_after(b, points, sync_meta);
                    st.fence_attach(b);
                }
                if hold {
                    let released = st.held_buffer.replace(raw);
                    if let Some(old) = released {
                        // SAFETY: a buffer this stream dequeued and never queued since.
                        unsafe { stream.queue_raw_buffer(old.as_ptr()) };
                    }
                } else {
                    st.trail.push(Event::Queued {
                        buffer: raw.as_ptr() as usize,
                    });
                    // SAFETY: dequeued above, queued exactly once.
                    unsafe { stream.queue_raw_buffer(raw.as_ptr()) };
                }
            })
            .register()
            .map_err(|e| format!("consumer listener: {e}"))?;
        let mut params = match accept {
            Accept::DmaBufOrMemFd => vec![enum_format(format, true), enum_format(format, false)],
            Accept::MemFdOnly => vec![enum_format(format, false)],
        };
        if !extras.device_ids.is_empty() {
            let ids = extras
                .device_ids
                .iter()
                .map(|d| format!("\"{}\"", pw_dmaheap::encode_dev_t(*d)))
                .collect::<Vec<_>>()
                .join(",");
            let capability = pw_dmaheap::params::capability_param(&[
                (pw_dmaheap::CAPABILITY_DEVICE_ID_NEGOTIATION, "1"),
                (
                    pw_dmaheap::CAPABILITY_DEVICE_IDS,
                    &format!("{{\"available-devices\": [{ids}]}}"),
                ),
            ])
            .map_err(|e| e.to_string())?;
            params.push(capability);
        }
        stream
            .connect(
                pw::spa::utils::Direction::Input,
                None,
                consumer_flags(),
                &mut pods(&params),
            )
            .map_err(|e| format!("consumer connect: {e}"))?;
        let relink = lp.add_timer({
            let stream = stream.clone();
            let state = Rc::clone(&state);
            move |_| {
                if !std::mem::take(&mut state.borrow_mut().relink) {
                    return;
                }
                state.borrow_mut().relinking = true;
                let result = stream.disconnect().and_then(|()| {
                    stream.connect(
                        pw::spa::utils::Direction::Input,
                        None,
                        consumer_flags(),
                        &mut pods(&params),
                    )
                });
                let mut st = state.borrow_mut();
                st.relinking = false;
                if let Err(e) = result {
                    st.seen.error(format!("connecting again: {e}"));
                }
            }
        });
        let tick = std::time::Duration::from_millis(10);
        relink
            .update_timer(Some(tick), Some(tick))
            .into_sync_result()
            .map_err(|e| format!("arming the relink timer: {e}"))?;
        Ok(Self {
            _relink: relink,
            _listener: listener,
            stream,
            state,
        })
    }

    /// What the consumer saw so far.
    pub fn seen(&self) -> Seen {
        self.state.borrow().seen.clone()
    }

    /// Holds the next good frame as a consumer still reading it would: its `pw_buffer` stays
    /// dequeued (the producer cannot draw into it) until [`Consumer::release_held_buffer`]
    /// or until PipeWire removes it, and duplicates of its fds stay open until dropped.
    pub fn hold_next_frame(&self) {
        self.state.borrow_mut().hold_next = true;
    }

    /// Whether a held frame exists.
    pub fn holds_a_frame(&self) -> bool {
        self.state.borrow().held.is_some()
    }

    /// Whether the held frame's `pw_buffer` is still dequeued (PipeWire did not remove it).
    pub fn holds_its_buffer(&self) -> bool {
        self.state.borrow().held_buffer.is_some()
    }

    /// Queues the held frame's `pw_buffer` back (the duplicates stay).
    pub fn release_held_buffer(&self) {
        if let Some(raw) = self.state.borrow_mut().held_buffer.take() {
            // SAFETY: a buffer this stream dequeued and never queued since; PipeWire did not
            // remove it (remove_buffer clears `held_buffer`).
            unsafe { self.stream.queue_raw_buffer(raw.as_ptr()) };
        }
    }

    /// Checks the held frame's memory still carries the frame it held.
    pub fn check_held(&self) -> Result<(u64, VideoParams), String> {
        let st = self.state.borrow();
        st.held.as_ref().ok_or("no frame is held")?.check()
    }

    /// Duplicates of every buffer this consumer has now, each with the last frame it carried:
    /// what a consumer that leaves can keep reading.
    pub fn keep_buffers(&self) -> Vec<HeldFrame> {
        let st = self.state.borrow();
        let mut kept: Vec<HeldFrame> = st.last_frames.values().map(|r| st.duplicate(r)).collect();
        kept.sort_by_key(HeldFrame::seq);
        kept
    }

    /// Takes the held frame's duplicates out (to check them after this consumer is gone);
    /// its `pw_buffer` stays held until released or removed.
    pub fn take_held(&self) -> Option<HeldFrame> {
        self.state.borrow_mut().held.take()
    }

    /// Attaches `fence` (as a reader's, like a display scanning out) to the dma-buf of the
    /// next frame, which then goes back to the producer as usual: it must not come back
    /// before the fence signals.
    pub fn fence_next_frame(&self, fence: SyncFile) {
        self.state.borrow_mut().fencing.next = Some(fence);
    }

    /// The frame the fenced buffer held, read again now through this consumer's duplicate.
    pub fn check_fenced(&self) -> Result<u64, String> {
        self.state.borrow().check_fenced()
    }

    /// The consumer's node id.
    pub fn node_id(&self) -> u32 {
        self.stream.node_id()
    }
}
