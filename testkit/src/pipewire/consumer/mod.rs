//! A Rust consumer that negotiates like a real one (dma-bufs with the LINEAR modifier when it
//! may, shared memory otherwise), imports every fd it gets through heapcore (mapping with
//! `DMA_BUF_IOCTL_SYNC` for dma-bufs) and checks each frame against the test pattern.
//!
//! It holds a frame as a real consumer does: by keeping its `pw_buffer` dequeued (not queued
//! back), so the producer cannot draw into it, and by keeping duplicates of its fds.

mod pods;
mod receive;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::ptr::NonNull;
use std::rc::Rc;

use pw_dmaheap::ImportedData;
use pw_dmaheap::heapcore::format::{FrameLayout, VideoFormat};
use pw_dmaheap::pattern::{self, Plane};
use pw_dmaheap::pipewire as pw;
use pw_dmaheap::{DataTypes, VideoParams};

use pods::{buffers_param, enum_format, header_meta, pods};
use pw::spa::sys;

/// Which memory the consumer says it can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Like OBS or a compositor: dma-bufs with modifiers first, shared memory as fallback.
    DmaBufOrMemFd,
    /// A consumer without dma-buf support: no modifier, `dataType = MemFd`.
    MemFdOnly,
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
    /// [`Consumer::connect`]); such frames are neither counted as frames nor as errors.
    pub relinked: u32,
    /// The `spa_data` types (and fds) of the buffers that made it link again.
    pub unusable: BTreeSet<(u32, i64)>,
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
    expect: Expect,
    held: Option<HeldFrame>,
    /// The held frame's `pw_buffer`, still dequeued: the producer cannot reuse it until it is
    /// released, or until PipeWire removes it (renegotiation, disconnect).
    held_buffer: Option<NonNull<pw::sys::pw_buffer>>,
}

/// The blocks and the header's frame number of a dequeued buffer.
///
/// # Safety
/// `raw` must be a buffer dequeued from a stream, not queued back or removed while the
/// result is used.
unsafe fn buffer_parts<'a>(
    raw: NonNull<pw::sys::pw_buffer>,
) -> (&'a mut [pw::spa::buffer::Data], Option<u64>) {
    // SAFETY: (caller) the pw_buffer is valid while it is dequeued.
    let spa = unsafe { raw.as_ref().buffer };
    if spa.is_null() {
        return (&mut [], None);
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
    (datas, seq)
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
    pub fn connect(
        core: &pw::core::CoreRc,
        lp: &'l pw::loop_::Loop,
        target: &str,
        format: VideoFormat,
        accept: Accept,
        expect: Expect,
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
            expect,
            held: None,
            held_buffer: None,
        }));
        let on_state = Rc::clone(&state);
        let on_param = Rc::clone(&state);
        let on_remove = Rc::clone(&state);
        let on_process = Rc::clone(&state);
        let listener = stream
            .add_local_listener_with_user_data(())
            .state_changed(move |_, _, old, new| {
                let mut st = on_state.borrow_mut();
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
                st.seen.formats.push(params);
                let types = match (params.modifier, accept) {
                    (Some(_), _) => DataTypes::DMA_BUF,
                    (None, Accept::DmaBufOrMemFd) => DataTypes::DMA_BUF | DataTypes::MEM_FD,
                    (None, Accept::MemFdOnly) => DataTypes::MEM_FD,
                };
                drop(st);
                let answer = [buffers_param(types), header_meta()];
                if let Err(e) = stream.update_params(&mut pods(&answer)) {
                    on_param
                        .borrow_mut()
                        .seen
                        .error(format!("update_params: {e}"));
                }
            })
            .remove_buffer(move |_, _, buffer| {
                let mut st = on_remove.borrow_mut();
                st.imported.clear();
                st.last_frames.clear();
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
                let (datas, header_seq) = unsafe { buffer_parts(raw) };
                if st.receive(datas, header_seq) {
                    let released = st.held_buffer.replace(raw);
                    if let Some(old) = released {
                        // SAFETY: a buffer this stream dequeued and never queued since.
                        unsafe { stream.queue_raw_buffer(old.as_ptr()) };
                    }
                } else {
                    // SAFETY: dequeued above, queued exactly once.
                    unsafe { stream.queue_raw_buffer(raw.as_ptr()) };
                }
            })
            .register()
            .map_err(|e| format!("consumer listener: {e}"))?;
        let params = match accept {
            Accept::DmaBufOrMemFd => vec![enum_format(format, true), enum_format(format, false)],
            Accept::MemFdOnly => vec![enum_format(format, false)],
        };
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

    /// The consumer's node id.
    pub fn node_id(&self) -> u32 {
        self.stream.node_id()
    }
}
