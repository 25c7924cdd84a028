//! What the host tests and the real-heap tests run: a producer with a consumer, stock
//! `gst-launch-1.0 pipewiresrc`, and a long run with reconnects and a resize.

use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, Instant};

use pw_dmaheap::heapcore::format::{FrameLayout, VideoFormat};
use pw_dmaheap::pattern;
use pw_dmaheap::{Negotiated, Producer, ProducerConfig, Stats};

use super::consumer::{Accept, Consumer, Seen};
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

    /// A consumer of the node named `target`, connected once that node is in the registry
    /// (see [`Session::wait_for_node`]).
    pub fn consumer(
        &self,
        target: &str,
        format: VideoFormat,
        accept: Accept,
    ) -> Result<Consumer<'_>, String> {
        self.session.wait_for_node(target, patience(), || Ok(()))?;
        Consumer::connect(
            &self.consumer_core,
            self.session.mainloop.loop_(),
            target,
            format,
            accept,
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
    let negotiated = producer
        .negotiated()
        .ok_or("the producer reports no negotiation")?;
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
    // GStreamer's layout of a buffer without video metadata: rows padded to 4 bytes.
    let layout = FrameLayout::aligned(format, w, h, 4, 1).map_err(|e| e.to_string())?;
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
    pub held_frame_after_resize: u64,
    pub elapsed: Duration,
}

/// `frames` checked frames in four phases: a consumer disconnects and a new one connects,
/// the producer resizes while the consumer holds a frame of the old size, and another
/// reconnect. Afterwards every buffer is freed and the fd count is back where it started.
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
    let mut held_frame_after_resize = 0;
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
            match phase {
                0 | 2 => {
                    total += c.seen().checked;
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
                _ => total += c.seen().checked,
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
        held_frame_after_resize,
        elapsed: start.elapsed(),
    })
}
