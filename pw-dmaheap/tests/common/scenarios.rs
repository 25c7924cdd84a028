//! What the host tests and the real-heap tests run: a producer with a consumer, stock
//! `gst-launch-1.0 pipewiresrc`, and a long run with reconnects and a resize.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, Instant};

use pw_dmaheap::heapcore::format::VideoFormat;
use pw_dmaheap::pattern;
use pw_dmaheap::{Event, Negotiated, Producer, ProducerConfig, Stats};

use super::consumer::{Accept, Consumer, Expect, HeldFrame, Seen};
use super::{Daemons, Session, open_fds, patience};

/// Daemons and a session connected to them. Field order is drop order: the session's
/// clients go before the daemons.
pub struct Rig {
    /// The consumer's own client connection.
    pub consumer_core: pw_dmaheap::pipewire::core::CoreRc,
    pub session: Session,
    pub daemons: Daemons,
}

impl Rig {
    pub fn start() -> Result<Self, String> {
        let daemons = Daemons::start()?;
        let session = Session::connect(&daemons.remote())?;
        let consumer_core = session.connect_core()?;
        Ok(Self {
            session,
            consumer_core,
            daemons,
        })
    }

    /// A producer that draws the test pattern, connected, and a timer that asks it for a
    /// frame every `interval`.
    pub fn producer(&self, config: ProducerConfig) -> Result<Rc<Producer>, String> {
        let producer =
            Rc::new(Producer::new(&self.session.core, config).map_err(|e| e.to_string())?);
        producer.set_renderer(|frame| frame.draw_test_pattern());
        producer.connect().map_err(|e| e.to_string())?;
        Ok(producer)
    }

    /// A consumer of the node named `target` that checks the test pattern, connected once
    /// that node is in the registry (see [`Session::wait_for_node`]).
    pub fn consumer(
        &self,
        target: &str,
        format: VideoFormat,
        accept: Accept,
    ) -> Result<Consumer<'_>, String> {
        self.consumer_expecting(target, format, accept, Expect::Pattern)
    }

    /// A consumer of the node named `target` whose frames hold `expect`.
    pub fn consumer_expecting(
        &self,
        target: &str,
        format: VideoFormat,
        accept: Accept,
        expect: Expect,
    ) -> Result<Consumer<'_>, String> {
        self.session.wait_for_node(target, patience(), || Ok(()))?;
        Consumer::connect(
            &self.consumer_core,
            self.session.mainloop.loop_(),
            target,
            format,
            accept,
            expect,
        )
    }
}

/// A producer configuration for tests: a unique node name, the given size and format.
pub fn config(name: &str, width: u32, height: u32, format: VideoFormat) -> ProducerConfig {
    ProducerConfig::new(width, height)
        .with_node_name(format!("dmaheap-test-{name}-{}", std::process::id()))
        .with_formats([format])
        .with_framerate(60, 1)
}

/// Runs `f` with a timer that triggers a frame of `producer` every `interval`.
pub fn with_frames<T>(
    rig: &Rig,
    producer: &Rc<Producer>,
    interval: Duration,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    let p = Rc::clone(producer);
    let timer = rig.session.mainloop.loop_().add_timer(move |_| {
        if let Err(e) = p.trigger_frame() {
            log::trace!("trigger: {e}");
        }
    });
    timer
        .update_timer(Some(interval), Some(interval))
        .into_sync_result()
        .map_err(|e| format!("arming the frame timer: {e}"))?;
    let result = f();
    drop(timer);
    result
}

fn first_error(seen: &Seen) -> Result<(), String> {
    match seen.errors.first() {
        Some(e) => Err(format!(
            "the consumer saw bad frames: {e} (all: {:?})",
            seen.errors
        )),
        None => Ok(()),
    }
}

/// Streams to a Rust consumer until it has checked `frames` frames.
pub fn rust_consumer(
    rig: &Rig,
    config: ProducerConfig,
    accept: Accept,
    frames: u64,
) -> Result<(Negotiated, Seen), String> {
    let name = config.node_name.clone();
    let format = config.formats[0];
    let producer = rig.producer(config)?;
    let consumer = rig.consumer(&name, format, accept)?;
    with_frames(rig, &producer, Duration::from_millis(4), || {
        rig.session
            .run_until(&format!("{frames} checked frames"), patience(), || {
                let seen = consumer.seen();
                first_error(&seen)?;
                Ok(seen.checked >= frames)
            })
    })?;
    let negotiated = producer
        .negotiated()
        .ok_or("the producer reports no negotiation")?;
    Ok((negotiated, consumer.seen()))
}

/// What `gst-launch-1.0 pipewiresrc … ! filesink` received.
pub struct GstRun {
    pub negotiated: Negotiated,
    /// Frame numbers read back from the written file, all checked against the pattern.
    pub sequences: Vec<u64>,
    /// `"DmaBuf"`/`"MemFd"` as pipewiresrc's pool logged the memory it wrapped.
    pub pool_memory: Vec<String>,
    pub command: String,
    /// Runs started again because PipeWire gave pipewiresrc buffers without memory (see
    /// [`pipewire_gave_buffers_without_memory`]).
    pub relaunched: u32,
}

/// How often the daemon has logged PipeWire 0.3.65's "invalid memory type": a link got a
/// producer's buffers before the producer filled them in (see `Consumer::connect`), so its
/// consumer has no memory for any buffer of that link.
fn pipewire_gave_buffers_without_memory(rig: &Rig) -> usize {
    rig.daemons
        .log("pipewire")
        .matches("do_port_use_buffers()] invalid memory type")
        .count()
}

/// Stock pipewiresrc receives `buffers` frames and writes them to a file; each is checked.
/// If PipeWire gave it buffers without memory (which it cannot recover from, and which
/// the daemon logs), it runs once more and the result says so.
pub fn pipewiresrc(rig: &Rig, config: ProducerConfig, buffers: u32) -> Result<GstRun, String> {
    let (w, h, format) = (config.width, config.height, config.formats[0]);
    let name = config.node_name.clone();
    let producer = rig.producer(config)?;
    // What was negotiated, as the producer said it: once gst-launch has left, the producer
    // has freed those buffers.
    let ready = Rc::new(std::cell::RefCell::new(None));
    producer.set_event_handler({
        let ready = Rc::clone(&ready);
        move |event| {
            if let Event::BuffersReady(n) = event {
                *ready.borrow_mut() = Some(n.clone());
            }
        }
    });
    rig.session.wait_for_node(&name, patience(), || Ok(()))?;
    let out = rig.daemons.dir().join("frames.raw");
    let args = vec![
        "pipewiresrc".to_string(),
        format!("target-object={name}"),
        format!("num-buffers={buffers}"),
        "!".into(),
        format!("video/x-raw,format={format},width={w},height={h}"),
        "!".into(),
        "filesink".into(),
        format!("location={}", out.display()),
    ];
    let command = format!("gst-launch-1.0 {}", args.join(" "));
    let mut relaunched = 0;
    let (sequences, pool_memory) = loop {
        let bugs = pipewire_gave_buffers_without_memory(rig);
        let attempt = launch(rig, &producer, &args, &command)
            .and_then(|log| check_file(&out, format, w, h, buffers).map(|seqs| (seqs, log)));
        match attempt {
            Ok((sequences, log)) => {
                let mut pool_memory: Vec<String> = log
                    .lines()
                    .filter_map(|l| l.split("memory type ").nth(1))
                    .map(|t| t.trim().to_owned())
                    .collect();
                pool_memory.dedup();
                break (sequences, pool_memory);
            }
            Err(e) if relaunched == 0 && pipewire_gave_buffers_without_memory(rig) > bugs => {
                eprintln!(
                    "PipeWire gave pipewiresrc buffers without memory (\"invalid memory type\" \
                     in its log); running once more. The failed run: {e}"
                );
                relaunched += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let negotiated = ready
        .borrow_mut()
        .take()
        .ok_or("the producer reported no negotiation")?;
    Ok(GstRun {
        negotiated,
        sequences,
        pool_memory,
        command,
        relaunched,
    })
}

/// Checks every frame filesink wrote to `out`; returns their frame numbers.
fn check_file(
    out: &std::path::Path,
    format: VideoFormat,
    w: u32,
    h: u32,
    buffers: u32,
) -> Result<Vec<u64>, String> {
    // filesink writes each buffer's memory: the producer's one block, which must have the
    // layout pipewiresrc assumed, GStreamer's default (from its own VideoInfo).
    let layout = super::gstreamer_layout(format, w, h)?;
    let bytes = std::fs::read(out).map_err(|e| format!("reading {}: {e}", out.display()))?;
    let size = layout.size as usize;
    if bytes.len() != size * buffers as usize {
        return Err(format!(
            "{} bytes written, expected {buffers} frames of {size}",
            bytes.len()
        ));
    }
    let mut sequences = Vec::new();
    for (i, frame) in bytes.chunks(size).enumerate() {
        let seq = pattern::planes_in(frame, &layout)
            .and_then(|planes| pattern::check(&planes, format, w, h))
            .map_err(|e| format!("frame {i} in the file: {e}"))?;
        if sequences.last().is_some_and(|&last| seq <= last) {
            return Err(format!("frame {i} carries {seq} after {sequences:?}"));
        }
        sequences.push(seq);
    }
    Ok(sequences)
}

/// Runs gst-launch-1.0 with `args` while `producer` draws frames; returns its log.
fn launch(
    rig: &Rig,
    producer: &Rc<Producer>,
    args: &[String],
    command: &str,
) -> Result<String, String> {
    let log = rig.daemons.dir().join("gst.log");
    let child = rig
        .daemons
        .command("gst-launch-1.0")
        .args(args)
        .env("GST_DEBUG", "pipewirepool:6")
        .env("GST_DEBUG_NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("starting gst-launch-1.0: {e}"))?;
    let mut child = super::ChildGuard(Some(child));
    let waited = with_frames(rig, producer, Duration::from_millis(10), || {
        let mut status = None;
        let r = rig
            .session
            .run_until("gst-launch-1.0 to finish", patience(), || {
                status = child.child().try_wait().map_err(|e| e.to_string())?;
                Ok(status.is_some())
            });
        r.map(|()| status)
    });
    let gst_log = std::fs::read_to_string(&log).unwrap_or_default();
    let status = match waited {
        Ok(Some(status)) => status,
        Ok(None) | Err(_) => {
            drop(child); // killed by its pid
            return Err(format!(
                "{command} did not finish: {}\n{}",
                waited.err().unwrap_or_default(),
                tail(&gst_log)
            ));
        }
    };
    if !status.success() {
        return Err(format!("{command} failed ({status}):\n{}", tail(&gst_log)));
    }
    Ok(gst_log)
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// What a consumer that left kept, and what the next one got.
#[derive(Debug)]
pub struct Privacy {
    /// The frame the first consumer held, still read back intact at the end.
    pub held_seq: u64,
    /// What the first consumer's other buffers read at the end: frames drawn for it (its
    /// own later frames too), none drawn for the second.
    pub kept_seqs: Vec<u64>,
    /// The first frame the second consumer got.
    pub second_first_seq: u64,
    pub first: Negotiated,
    pub second: Negotiated,
    pub first_inodes: BTreeSet<u64>,
    pub second_inodes: BTreeSet<u64>,
    pub second_checked: u64,
    /// Links the consumers had to make again (PipeWire's allocation race).
    pub relinked: u32,
}

/// Holds a frame of `consumer` (its `pw_buffer` stays dequeued), lets it check `more`
/// frames after that, and takes the frame's duplicates out.
fn hold_a_frame(rig: &Rig, consumer: &Consumer, more: u64) -> Result<HeldFrame, String> {
    consumer.hold_next_frame();
    rig.session
        .run_until("a held frame", patience(), || Ok(consumer.holds_a_frame()))?;
    let target = consumer.seen().checked + more;
    rig.session.run_until(
        &format!("{more} frames after the held one"),
        patience(),
        || {
            let seen = consumer.seen();
            first_error(&seen)?;
            Ok(seen.checked >= target)
        },
    )?;
    let held = consumer.take_held().ok_or("the held frame is gone")?;
    held.check()?;
    Ok(held)
}

/// Consumer A streams, holds a frame (its buffer dequeued, its fds duplicated), keeps
/// duplicates of all its buffers and leaves; consumer B links with the same format and checks
/// `frames` frames. A's held frame must still read as it did, A's other buffers must carry no
/// frame drawn for B, and B must get none of A's buffers (by inode): a buffer whose fds
/// reached one consumer is never drawn into for the next.
pub fn privacy(
    rig: &Rig,
    config: ProducerConfig,
    accept: Accept,
    frames: u64,
) -> Result<Privacy, String> {
    let name = config.node_name.clone();
    let format = config.formats[0];
    let producer = rig.producer(config)?;
    with_frames(rig, &producer, Duration::from_millis(2), || {
        let a = rig.consumer(&name, format, accept)?;
        rig.session.run_until("10 frames for A", patience(), || {
            let seen = a.seen();
            first_error(&seen)?;
            Ok(seen.checked >= 10)
        })?;
        let held = hold_a_frame(rig, &a, 10)?;
        let first = producer.negotiated().ok_or("no negotiation with A")?;
        let first_inodes = a.seen().inodes;
        let a_relinked = a.seen().relinked;
        // A keeps (duplicates of) every buffer it had, as a consumer may, and leaves.
        let kept = a.keep_buffers();
        drop(a);
        let b = rig.consumer(&name, format, accept)?;
        rig.session
            .run_until(&format!("{frames} frames for B"), patience(), || {
                let seen = b.seen();
                first_error(&seen)?;
                Ok(seen.checked >= frames)
            })?;
        let second = producer.negotiated().ok_or("no negotiation with B")?;
        let seen = b.seen();
        if (first.params, first.data_kind) != (second.params, second.data_kind) {
            return Err(format!("B did not get A's format: A {first}, B {second}"));
        }
        let (held_seq, _) = held
            .check()
            .map_err(|e| format!("after B streamed {} frames: {e}", seen.checked))?;
        // The buffers A did not hold went back to the producer before A left, so they may
        // carry later frames of A's session; never one of B's.
        let second_first_seq = seen.first_seq.ok_or("B checked no frame")?;
        let kept_seqs = kept
            .iter()
            .map(HeldFrame::read)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("A's kept buffers after B streamed: {e}"))?;
        if let Some(seq) = kept_seqs.iter().find(|&&s| s >= second_first_seq) {
            return Err(format!(
                "A's kept buffers read frame {seq}, drawn for B (whose first was \
                 {second_first_seq}): {kept_seqs:?}"
            ));
        }
        let shared: Vec<_> = first_inodes.intersection(&seen.inodes).collect();
        if !shared.is_empty() {
            return Err(format!(
                "B got buffers A had (inodes {shared:?}; A {first_inodes:?}, B {:?})",
                seen.inodes
            ));
        }
        Ok(Privacy {
            held_seq,
            kept_seqs,
            second_first_seq,
            first,
            second,
            first_inodes,
            second_inodes: seen.inodes,
            second_checked: seen.checked,
            relinked: a_relinked + seen.relinked,
        })
    })
}

/// What happened when the render callback resized, then disconnected, its own producer.
#[derive(Debug)]
pub struct DisconnectInRender {
    /// What was negotiated after the resize.
    pub resized: Negotiated,
    /// The frame whose render callback disconnected the producer.
    pub disconnected_in_frame: u64,
    pub first_checked: u64,
    pub fds_before: usize,
    pub fds_after: usize,
    /// Frames the consumer after the reconnect checked.
    pub second_checked: u64,
    pub stats: Stats,
}

/// A consumer checks frames; the render callback resizes the producer it draws for (the
/// renegotiation follows later) and, once frames of the new size arrive, disconnects it
/// (PipeWire removes every buffer, the one being drawn too, while the callback runs). The
/// producer must end unconnected without errors, with every fd its buffers had closed, and
/// connect again to stream checked frames to a new consumer.
pub fn disconnect_in_render(
    rig: &Rig,
    config: ProducerConfig,
    accept: Accept,
) -> Result<DisconnectInRender, String> {
    let name = config.node_name.clone();
    let format = config.formats[0];
    let (w2, h2) = (config.width + 16, config.height + 8);
    // Warm up the session and the process's pool registry (see `soak`).
    let _ = pw_dmaheap::heapcore::PoolRegistry::process();
    rig.session.run_for(Duration::from_millis(100));
    let producer = Rc::new(Producer::new(&rig.session.core, config).map_err(|e| e.to_string())?);
    let errors = Rc::new(std::cell::RefCell::new(Vec::new()));
    producer.set_event_handler({
        let errors = Rc::clone(&errors);
        move |event| {
            if let Event::Error(e) = event {
                errors.borrow_mut().push(e.clone());
            }
        }
    });
    // What the next render callback does to its producer: 1 resize, 2 disconnect.
    let armed = Rc::new(std::cell::Cell::new(0));
    let done = Rc::new(std::cell::Cell::new(None));
    producer.set_renderer({
        let (armed, done) = (Rc::clone(&armed), Rc::clone(&done));
        let weak = Rc::downgrade(&producer);
        move |frame| {
            frame.draw_test_pattern();
            let action = armed.replace(0);
            if let Some(p) = weak.upgrade().filter(|_| action != 0) {
                let result = if action == 1 {
                    p.resize(w2, h2)
                } else {
                    p.disconnect()
                };
                done.set(Some((frame.sequence(), result.map_err(|e| e.to_string()))));
            }
        }
    });
    let no_errors = |what: &str| -> Result<(), String> {
        match errors.borrow().first() {
            Some(e) => Err(format!("{what}: the producer reported an error: {e}")),
            None => Ok(()),
        }
    };
    with_frames(rig, &producer, Duration::from_millis(2), || {
        let fds_before = open_fds();
        producer.connect().map_err(|e| e.to_string())?;
        let first = rig.consumer(&name, format, accept)?;
        rig.session.run_until("20 checked frames", patience(), || {
            let seen = first.seen();
            first_error(&seen)?;
            Ok(seen.checked >= 20)
        })?;
        let act = |action, what: &str| -> Result<u64, String> {
            armed.set(action);
            rig.session.run_until(
                &format!("a render callback that {what}"),
                patience(),
                || Ok(done.take().map(|d| done.set(Some(d))).is_some()),
            )?;
            let (frame, result) = done.take().expect("set above");
            result.map_err(|e| format!("{what} from the render callback: {e}"))?;
            Ok(frame)
        };
        act(1, "resizes")?;
        rig.session
            .run_until("frames of the new size", patience(), || {
                let seen = first.seen();
                first_error(&seen)?;
                let resized = seen
                    .formats
                    .last()
                    .is_some_and(|f| (f.width, f.height) == (w2, h2));
                Ok(resized && producer.negotiated().is_some() && seen.checked >= 30)
            })?;
        let resized = producer
            .negotiated()
            .ok_or("no negotiation after the resize")?;
        if (resized.params.width, resized.params.height) != (w2, h2) {
            return Err(format!("negotiated {resized} after resizing to {w2}x{h2}"));
        }
        let disconnected_in_frame = act(2, "disconnects")?;
        rig.session
            .run_until("the producer to be unconnected", patience(), || {
                Ok(matches!(
                    producer.state(),
                    pw_dmaheap::pipewire::stream::StreamState::Unconnected
                ))
            })?;
        no_errors("after the disconnect")?;
        let seen = first.seen();
        first_error(&seen)?;
        drop(first);
        // Every fd of the producer's buffers (and the consumer's copies) is closed.
        rig.session
            .run_until("the fd count to come back", patience(), || {
                Ok(open_fds() == fds_before)
            })?;
        let fds_after = open_fds();
        let stats = producer.stats();
        if stats.live != 0 || stats.allocated != stats.freed {
            return Err(format!("buffers left after the disconnect: {stats:?}"));
        }
        producer.connect().map_err(|e| e.to_string())?;
        let second = rig.consumer(&name, format, accept)?;
        rig.session.run_until(
            "60 checked frames after connecting again",
            patience(),
            || {
                let seen = second.seen();
                first_error(&seen)?;
                Ok(seen.checked >= 60)
            },
        )?;
        no_errors("after connecting again")?;
        Ok(DisconnectInRender {
            resized,
            disconnected_in_frame,
            first_checked: seen.checked,
            fds_before,
            fds_after,
            second_checked: second.seen().checked,
            stats: producer.stats(),
        })
    })
}

/// What the Rust consumer saw of a stock producer whose buffers PipeWire allocates.
#[derive(Debug)]
pub struct PipeWireMemFd {
    pub command: String,
    pub seen: Seen,
    /// Runs started again because gst-launch crashed (see [`pipewiresink`]).
    pub relaunched: u32,
}

/// `gst-launch-1.0 videotestsrc pattern=solid-color ! pipewiresink mode=provide`: a
/// producer that lets PipeWire allocate its buffers. The Rust consumer reads each block
/// (PipeWire 0.3.65 hands these to clients as MemPtr blocks of its shared memfd) and checks
/// that every pixel of `frames` frames has the colour.
///
/// gst-launch itself crashes now and then (about 2 runs in 100 here): videotestsrc faults in
/// `gst_video_frame_copy` while writing into a buffer of pipewiresink 0.3.65's pool. That
/// crash, which gst-launch reports as "Caught SIGSEGV", starts the run once more (once), and
/// the result says so.
pub fn pipewiresink(rig: &Rig, color: [u8; 3], frames: u64) -> Result<PipeWireMemFd, String> {
    let mut relaunched = 0;
    loop {
        let name = format!(
            "dmaheap-test-pipewiresink-{}-{relaunched}",
            std::process::id()
        );
        match pipewiresink_once(rig, &name, color, frames) {
            Ok((command, seen)) => {
                return Ok(PipeWireMemFd {
                    command,
                    seen,
                    relaunched,
                });
            }
            Err((e, crashed)) if crashed && relaunched == 0 => {
                eprintln!("gst-launch crashed (a pipewiresink 0.3.65 bug); once more: {e}");
                relaunched += 1;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// One run of [`pipewiresink`]; the error says whether gst-launch crashed.
fn pipewiresink_once(
    rig: &Rig,
    name: &str,
    color: [u8; 3],
    frames: u64,
) -> Result<(String, Seen), (String, bool)> {
    let [b, g, r] = color;
    let args = vec![
        "videotestsrc".to_string(),
        "is-live=true".into(),
        "pattern=solid-color".into(),
        format!("foreground-color=0xff{r:02x}{g:02x}{b:02x}"),
        "!".into(),
        "video/x-raw,format=BGRx,width=64,height=48,framerate=60/1".into(),
        "!".into(),
        "pipewiresink".into(),
        "mode=provide".into(),
        format!("stream-properties=props,node.name={name}"),
    ];
    let command = format!("gst-launch-1.0 {}", args.join(" "));
    let log = rig.daemons.dir().join("pipewiresink.log");
    let fail = |e: String| (e, false);
    let child = rig
        .daemons
        .command("gst-launch-1.0")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map_err(|e| fail(e.to_string()))?)
        .spawn()
        .map_err(|e| fail(format!("starting gst-launch-1.0: {e}")))?;
    let mut child = super::ChildGuard(Some(child));
    let gst_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let crashed = || gst_log().contains("Caught SIGSEGV");
    let alive = |child: &mut super::ChildGuard| match child.child().try_wait() {
        Ok(None) if crashed() => Err(format!("{command} crashed:\n{}", tail(&gst_log()))),
        Ok(None) => Ok(()),
        Ok(Some(status)) => Err(format!(
            "{command} exited ({status}):\n{}",
            tail(&gst_log())
        )),
        Err(e) => Err(e.to_string()),
    };
    rig.session
        .wait_for_node(name, patience(), || alive(&mut child))
        .map_err(|e| (e, crashed()))?;
    let consumer = rig
        .consumer_expecting(
            name,
            VideoFormat::Bgrx,
            Accept::MemFdOnly,
            Expect::Solid(color),
        )
        .map_err(fail)?;
    rig.session
        .run_until(&format!("{frames} checked frames"), patience(), || {
            alive(&mut child)?;
            let seen = consumer.seen();
            first_error(&seen)?;
            Ok(seen.checked >= frames)
        })
        .map_err(|e| {
            let seen = consumer.seen();
            let e = format!(
                "{e}; the consumer saw {} formats, {} frames, relinked {} for {:?}, gone {:?}, \
                 errors {:?}; gst-launch said:\n{}",
                seen.formats.len(),
                seen.frames,
                seen.relinked,
                seen.unusable,
                seen.gone,
                seen.errors,
                tail(&gst_log())
            );
            (e, crashed())
        })?;
    Ok((command, consumer.seen()))
}

/// What the long run saw.
#[derive(Debug)]
pub struct Soak {
    pub frames_checked: u64,
    pub consumers: u32,
    pub fds_before: usize,
    pub fds_per_phase: Vec<usize>,
    pub fds_after: usize,
    pub stats: Stats,
    pub negotiated: Vec<String>,
    pub held_frame_after_reconnect: u64,
    pub held_frame_after_resize: u64,
    /// Links the consumers had to make again (PipeWire's allocation race).
    pub relinked: u32,
    pub elapsed: Duration,
}

/// `frames` checked frames in four phases: a consumer holds a frame (its buffer dequeued, its
/// fds duplicated) and disconnects, and a new one connects with the same format; the
/// producer resizes while the consumer holds a frame of the old size; another reconnect.
/// Both held frames still read as they did, no consumer gets a buffer an earlier one had,
/// and afterwards every buffer is freed and the fd count is back where it started.
pub fn soak(
    rig: &Rig,
    config: ProducerConfig,
    accept: Accept,
    frames: u64,
) -> Result<Soak, String> {
    let start = Instant::now();
    let name = config.node_name.clone();
    let format = config.formats[0];
    let (w2, h2) = (config.width + 32, config.height + 16);
    let per_phase = frames.div_ceil(4);
    // Warm up the session (first connections open sockets, timers, eventfds), and the
    // process's pool registry, which a producer makes on first use and which keeps its
    // pressure watch (fds on /proc/pressure/memory) for the life of the process.
    let _ = pw_dmaheap::heapcore::PoolRegistry::process();
    rig.session.run_for(Duration::from_millis(100));
    let fds_before = open_fds();
    let mut fds_per_phase = Vec::new();
    let mut negotiated = Vec::new();
    let mut total = 0;
    let mut consumers = 1;
    let mut held_frame_after_reconnect = 0;
    let mut held_frame_after_resize = 0;
    let mut held_over_reconnect: Option<HeldFrame> = None;
    let mut earlier_inodes = BTreeSet::new();
    let mut relinked = 0;
    let producer = rig.producer(config)?;
    let stats = with_frames(rig, &producer, Duration::from_millis(1), || {
        let mut consumer = Some(rig.consumer(&name, format, accept)?);
        for phase in 0..4 {
            let c = consumer.as_ref().expect("a consumer");
            let target = c.seen().checked + per_phase.min(frames.saturating_sub(total));
            rig.session.run_until(
                &format!("phase {phase}: {target} frames"),
                patience() * 4,
                || {
                    let seen = c.seen();
                    first_error(&seen)?;
                    Ok(seen.checked >= target)
                },
            )?;
            if let Some(n) = producer.negotiated() {
                let line = n.to_string();
                if negotiated.last() != Some(&line) {
                    negotiated.push(line);
                }
            }
            fds_per_phase.push(open_fds());
            let seen = c.seen();
            let shared: Vec<_> = earlier_inodes.intersection(&seen.inodes).collect();
            if !shared.is_empty() {
                return Err(format!(
                    "phase {phase}: the consumer got buffers an earlier one had: inodes {shared:?}"
                ));
            }
            if let Some(held) = held_over_reconnect.take() {
                // A consumer of the same format streamed a whole phase since.
                let (seq, _) = held
                    .check()
                    .map_err(|e| format!("after a same-format reconnect: {e}"))?;
                held_frame_after_reconnect = seq;
            }
            match phase {
                0 | 2 => {
                    if phase == 0 {
                        // Leave while holding a frame, as a consumer that still shows it.
                        held_over_reconnect = Some(hold_a_frame(rig, c, 2)?);
                    }
                    total += c.seen().checked;
                    relinked += c.seen().relinked;
                    earlier_inodes.extend(c.seen().inodes);
                    drop(consumer.take());
                    rig.session.run_for(Duration::from_millis(200));
                    consumer = Some(rig.consumer(&name, format, accept)?);
                    consumers += 1;
                }
                1 => {
                    // Hold a frame (its buffer stays dequeued, so the producer cannot draw
                    // into it) across the renegotiation a resize causes.
                    c.hold_next_frame();
                    rig.session
                        .run_until("a held frame", patience(), || Ok(c.holds_a_frame()))?;
                    producer.resize(w2, h2).map_err(|e| e.to_string())?;
                    rig.session
                        .run_until("frames of the new size", patience(), || {
                            let seen = c.seen();
                            first_error(&seen)?;
                            Ok(seen
                                .formats
                                .last()
                                .is_some_and(|f| (f.width, f.height) == (w2, h2))
                                && seen.last_seq.is_some())
                        })?;
                    // The producer freed its buffers of the old size (PipeWire removed the
                    // held one from the consumer too); the duplicate still reads the frame.
                    if c.holds_its_buffer() {
                        return Err("the held buffer survived the renegotiation".into());
                    }
                    let (seq, p) = c.check_held()?;
                    if (p.width, p.height) == (w2, h2) {
                        return Err("the held frame is not of the old size".into());
                    }
                    held_frame_after_resize = seq;
                }
                _ => {
                    total += c.seen().checked;
                    relinked += c.seen().relinked;
                }
            }
        }
        drop(consumer);
        rig.session.run_for(Duration::from_millis(200));
        producer.disconnect().map_err(|e| e.to_string())?;
        rig.session.run_for(Duration::from_millis(200));
        Ok(producer.stats())
    })?;
    drop(producer);
    rig.session.run_for(Duration::from_millis(300));
    let fds_after = open_fds();
    if stats.live != 0 || stats.allocated != stats.freed {
        return Err(format!("buffers left after disconnecting: {stats:?}"));
    }
    Ok(Soak {
        frames_checked: total,
        consumers,
        fds_before,
        fds_per_phase,
        fds_after,
        stats,
        negotiated,
        held_frame_after_reconnect,
        held_frame_after_resize,
        relinked,
        elapsed: start.elapsed(),
    })
}
