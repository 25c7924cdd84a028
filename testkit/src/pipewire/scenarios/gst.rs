//! Stock GStreamer elements on the other side: `gst-launch-1.0 pipewiresrc … ! filesink`
//! receiving the producer's frames (checked from the file), and `videotestsrc ! pipewiresink`
//! as a producer whose buffers PipeWire allocates, read by the Rust consumer.

use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use pw_dmaheap::heapcore::format::VideoFormat;
use pw_dmaheap::pattern;
use pw_dmaheap::{Event, Negotiated, Producer, ProducerConfig, Stats};

use super::super::consumer::{Accept, Expect, Seen};
use super::super::{ChildGuard, gstreamer_layout, patience};
use super::{Rig, first_error, with_frames};

/// What `gst-launch-1.0 pipewiresrc … ! filesink` received.
pub struct GstRun {
    /// What the producer negotiated.
    pub negotiated: Negotiated,
    /// Frame numbers read back from the written file, all checked against the pattern.
    pub sequences: Vec<u64>,
    /// `"DmaBuf"`/`"MemFd"` as pipewiresrc's pool logged the memory it wrapped (PipeWire
    /// 0.3.65: "memory type MemFd"; 1.2 and later: "wrap data (MemFd 2)").
    pub pool_memory: Vec<String>,
    /// How many buffers pipewiresrc's pool wrapped ("wrap buffer" in its log).
    pub pool_buffers: usize,
    /// The producer's counters when gst-launch had finished.
    pub stats: Stats,
    /// The command line run.
    pub command: String,
    /// Runs started again because PipeWire gave pipewiresrc buffers without memory (see
    /// [`pipewire_gave_buffers_without_memory`]).
    pub relaunched: u32,
}

/// How often the daemon has logged PipeWire 0.3.65's "invalid memory type": a link got a
/// producer's buffers before the producer filled them in (see `Consumer::connect_with`), so its
/// consumer has no memory for any buffer of that link.
fn pipewire_gave_buffers_without_memory(rig: &Rig) -> usize {
    rig.daemons
        .log("pipewire")
        .matches("do_port_use_buffers()] invalid memory type")
        .count()
}

/// The caps after pipewiresrc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrcCaps {
    /// `video/x-raw,format=…`: system memory.
    Raw,
    /// `video/x-raw(memory:DMABuf),format=DMA_DRM,drm-format=…` (GStreamer 1.24): dma-bufs
    /// with the LINEAR modifier.
    DmaDrm,
}

/// The DRM fourcc GStreamer gives a format in DMA_DRM caps (`gst_video_dma_drm_fourcc_from_format`).
fn drm_fourcc(format: VideoFormat) -> Result<&'static str, String> {
    match format {
        VideoFormat::Bgrx => Ok("XR24"),
        VideoFormat::Bgra => Ok("AR24"),
        VideoFormat::Nv12 => Ok("NV12"),
        VideoFormat::I420 => Ok("YU12"),
        other => Err(format!("no DRM fourcc known here for {other}")),
    }
}

/// Stock pipewiresrc receives `buffers` frames and writes them to a file; each is checked.
/// If PipeWire gave it buffers without memory (which it cannot recover from, and which
/// the daemon logs), it runs once more and the result says so.
pub fn pipewiresrc(rig: &Rig, config: ProducerConfig, buffers: u32) -> Result<GstRun, String> {
    pipewiresrc_with_caps(rig, config, buffers, SrcCaps::Raw)
}

/// [`pipewiresrc`] with the caps after it.
pub fn pipewiresrc_with_caps(
    rig: &Rig,
    config: ProducerConfig,
    buffers: u32,
    caps: SrcCaps,
) -> Result<GstRun, String> {
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
    let caps = match caps {
        SrcCaps::Raw => format!("video/x-raw,format={format},width={w},height={h}"),
        SrcCaps::DmaDrm => format!(
            "video/x-raw(memory:DMABuf),format=DMA_DRM,drm-format={},width={w},height={h}",
            drm_fourcc(format)?
        ),
    };
    let args = vec![
        "pipewiresrc".to_string(),
        format!("target-object={name}"),
        format!("num-buffers={buffers}"),
        "!".into(),
        caps,
        "!".into(),
        "filesink".into(),
        format!("location={}", out.display()),
    ];
    let command = format!("gst-launch-1.0 {}", args.join(" "));
    let mut relaunched = 0;
    let (sequences, pool_memory, pool_buffers) = loop {
        let bugs = pipewire_gave_buffers_without_memory(rig);
        let attempt = launch(rig, &producer, &args, &command)
            .and_then(|log| check_file(&out, format, w, h, buffers).map(|seqs| (seqs, log)));
        match attempt {
            Ok((sequences, log)) => {
                let mut pool_memory: Vec<String> = log.lines().filter_map(wrapped_memory).collect();
                pool_memory.dedup();
                let pool_buffers = log.matches("wrap buffer").count();
                break (sequences, pool_memory, pool_buffers);
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
        pool_buffers,
        stats: producer.stats(),
        command,
        relaunched,
    })
}

/// The memory type a pipewirepool log line says it wrapped, in either version's words.
fn wrapped_memory(line: &str) -> Option<String> {
    if let Some(kind) = line.split("memory type ").nth(1) {
        return Some(kind.trim().to_owned());
    }
    let kind = line.split("wrap data (").nth(1)?;
    Some(kind.split_whitespace().next()?.to_owned())
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
    let layout = gstreamer_layout(format, w, h)?;
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
            .map_err(|e| {
                let counters: Vec<u64> = bytes
                    .chunks(size)
                    .map(|f| u64::from_le_bytes(f[..8].try_into().unwrap_or_default()))
                    .collect();
                format!("frame {i} in the file: {e} (the counters of every frame: {counters:?})")
            })?;
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
    let mut child = ChildGuard(Some(child));
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

/// What the Rust consumer saw of a stock producer whose buffers PipeWire allocates.
#[derive(Debug)]
pub struct PipeWireMemFd {
    /// The command line run.
    pub command: String,
    /// What the consumer saw.
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
    let mut child = ChildGuard(Some(child));
    let gst_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let crashed = || gst_log().contains("Caught SIGSEGV");
    let alive = |child: &mut ChildGuard| match child.child().try_wait() {
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
