//! dmaheapupload's buffers on a display: kmssink on vkms imports them (its own log says so:
//! PRIME imports, no frame copy), from the system heap, from vivid's capture and from
//! vicodec's decoder, in-process and from gst-launch-1.0.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dmaheap_testkit::{Failed, ensure};
use gst::prelude::*;

use super::common::{self, LogCapture, run_pipeline, run_pipeline_with, stat};
use super::{dmabuf_fd, fdinfo};

/// kmssink's own log says whether it imported a buffer (PRIME, "setting KMS mem ... to DMABuf
/// mem") or reused an import ("found KMS mem"), and GST_PERFORMANCE says "frame copy" when it
/// copies into a dumb buffer instead.
pub(super) struct KmsProof {
    capture: LogCapture,
}

impl KmsProof {
    pub(super) fn start() -> Self {
        Self {
            capture: LogCapture::start(&[
                ("kmssink", gst::DebugLevel::Log),
                ("GST_PERFORMANCE", gst::DebugLevel::Info),
            ]),
        }
    }

    /// (first imports, reused imports, copies).
    fn counts(&self) -> (usize, usize, usize) {
        (
            self.capture.count("kmssink", "setting KMS mem"),
            self.capture.count("kmssink", "found KMS mem"),
            self.capture.count("GST_PERFORMANCE", "frame copy"),
        )
    }

    /// kmssink showed at least `min_shown` frames, every one an imported heap dma-buf, from
    /// pools whose statistics are `stats`.
    pub(super) fn check(
        &self,
        stats: &gst::StructureRef,
        min_shown: u64,
    ) -> Result<String, Failed> {
        let pool_buffers = stat(stats, "prewarmed") + stat(stats, "pool-misses");
        self.check_imports(pool_buffers, min_shown)
    }

    /// kmssink showed at least `min_shown` frames, every one an imported dma-buf, and
    /// imported at most `pool_buffers` of them (each pool buffer once).
    pub(super) fn check_imports(
        &self,
        pool_buffers: u64,
        min_shown: u64,
    ) -> Result<String, Failed> {
        let (imported, reused, copied) = self.counts();
        ensure!(
            copied == 0,
            "kmssink copied {copied} frames: {:?}",
            self.capture.sample("GST_PERFORMANCE", "frame copy", 3)
        );
        ensure!(imported > 0, "kmssink imported nothing");
        // Each pool buffer is imported once and its framebuffer reused after: the same
        // dma-bufs come back frame after frame.
        ensure!(
            imported as u64 <= pool_buffers,
            "{imported} imports for {pool_buffers} pool buffers"
        );
        // kmssink shows the preroll frame twice; late frames may be dropped when it syncs.
        let shown = (imported + reused) as u64;
        ensure!(
            shown >= min_shown,
            "kmssink showed {shown} frames, expected {min_shown}"
        );
        Ok(format!(
            "kmssink: {imported} PRIME imports of {pool_buffers} heap buffers, {reused} re-uses of \
             an import, {copied} copies; e.g. {:?}",
            self.capture.sample("kmssink", "setting KMS mem", 1)
        ))
    }
}

/// The exporter (fdinfo `exp_name`: the kernel's word) of every buffer reaching the sink
/// pad of the element named `element`.
#[derive(Clone, Default)]
pub(super) struct Exporters(Arc<Mutex<Vec<String>>>);

/// Calls `f` with every buffer arriving at the sink pad of the element named `element`.
pub(super) fn on_buffers(
    pipeline: &gst::Pipeline,
    element: &str,
    f: impl Fn(&gst::Pad, &gst::BufferRef) + Send + Sync + 'static,
) {
    let pad = pipeline
        .by_name(element)
        .and_then(|e| e.static_pad("sink"))
        .unwrap_or_else(|| panic!("no element {element} with a sink pad"));
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if let Some(buf) = info.buffer() {
            f(pad, buf);
        }
        gst::PadProbeReturn::Ok
    });
}

/// The exporter (fdinfo `exp_name`) of a buffer's first memory, or "not a dma-buf".
pub(super) fn exporter(buf: &gst::BufferRef) -> String {
    dmabuf_fd(buf.peek_memory(0))
        .and_then(fdinfo)
        .map_or_else(|_| "not a dma-buf".to_owned(), |(exp, _)| exp)
}

impl Exporters {
    pub(super) fn watch(&self, pipeline: &gst::Pipeline, element: &str) {
        let seen = self.clone();
        on_buffers(pipeline, element, move |_, buf| {
            seen.0.lock().unwrap().push(exporter(buf));
        });
    }

    /// How many buffers came, and the exporters other than `heap`.
    pub(super) fn other_than(&self, heap: &str) -> (usize, Vec<String>) {
        let seen = self.0.lock().unwrap();
        let others = seen.iter().filter(|e| *e != heap).cloned().collect();
        (seen.len(), others)
    }
}

/// The frames a V4L2 decoder (elements named `decoder*`) passed on, checked against the
/// `frames` sent: GStreamer 1.22's v4l2 decoder sends EOS before vicodec has drained ("N
/// frames left undrained after CMD_STOP, eos sent too early: bug in decoder"), also without
/// dmaheap, dropping the frames still in the decoder and saying so in a QoS message for each.
/// Every frame must be accounted for: passed on by `stats`' element, or dropped by the
/// decoder, none lost in between.
pub(super) fn decoded_frames(
    dropped: &std::collections::BTreeMap<String, u64>,
    decoder: &str,
    stats: &gst::StructureRef,
    frames: u64,
) -> Result<u64, Failed> {
    let through = stat(stats, "passthrough");
    let dropped: u64 = dropped
        .iter()
        .filter(|(who, _)| who.starts_with(decoder))
        .map(|(_, n)| n)
        .sum();
    ensure!(
        through + dropped == frames && through > 0,
        "{through} of {frames} frames decoded, {dropped} dropped by the decoder: {stats}"
    );
    Ok(through)
}

pub(super) fn kmssink_imports_system_heap_buffers() -> Result<(), Failed> {
    let proof = KmsProof::start();
    let run = run_pipeline(
        "videotestsrc num-buffers=30 ! video/x-raw,width=640,height=480 \
         ! dmaheapupload name=up heap=system ! kmssink driver-name=vkms",
        Duration::from_secs(180),
    )?;
    let stats = run.stats.ok_or("no stats message")?;
    ensure!(stat(&stats, "passthrough") == 30, "{stats}");
    ensure!(stat(&stats, "copies") == 0, "{stats}");
    let said = proof.check(&stats, 1)?;
    println!("{stats}\n{said}");
    Ok(())
}

pub(super) fn vivid_capture_to_kmssink() -> Result<(), Failed> {
    let device = dmaheap_testkit::v4l2_device("vivid-000-vid-cap").expect("need checked");
    let proof = KmsProof::start();
    let run = run_pipeline(
        &format!(
            "v4l2src device={device} io-mode=dmabuf-import num-buffers=30 \
             ! video/x-raw,width=640,height=480 \
             ! dmaheapupload name=up ! kmssink driver-name=vkms"
        ),
        Duration::from_secs(180),
    )?;
    let stats = run.stats.ok_or("no stats message")?;
    ensure!(
        stat(&stats, "copies") == 0,
        "v4l2src did not capture into the heap pool: {stats}"
    );
    ensure!(stat(&stats, "passthrough") == 30, "{stats}");
    let origins = stats.get::<String>("heap-origins")?;
    ensure!(origins.contains("heap "), "not heap memory: {stats}");
    let said = proof.check(&stats, 1)?;
    println!(
        "{} -> {}\n{stats}\n{said}",
        device,
        run.upload_src_caps
            .map(|c| c.to_string())
            .unwrap_or_default()
    );
    Ok(())
}

/// vicodec's stateful decoder writes straight into CMA heap buffers (capture-io-mode=
/// dmabuf-import takes them from dmaheapupload's pool) and kmssink imports CMA heap buffers.
///
/// What the kernels and GStreamer versions allow, and why the pipeline looks as it does:
/// - v4l2fwhtenc sets the capture format before the output format, and vicodec recomputes the
///   compressed sizeimage from the output format, so any size but vicodec's default 1280x720
///   fails with "buffer size ... is smaller then negotiated size": 1280x720 it is.
/// - The stateful decoder must output the stream's chroma subsampling (4:2:0 in, 4:2:0 out);
///   anything else raises a source-change event that GStreamer 1.22's v4l2videodec never
///   answers, and the pipeline hangs.
/// - vkms in 6.12 scans out RGB only, so videoconvert turns the decoded I420 into BGRx and
///   writes it into a second dmaheapupload's CMA pool, whose buffers kmssink imports. vkms in
///   7.x scans out I420 too: videoconvert then passes the decoder's buffers through, and so
///   does the second dmaheapupload (they are CMA memory already). Either way kmssink must get
///   CMA dma-bufs and import them.
/// - kmssink sync=false: under qemu TCG every frame is late, and the decoder would drop them
///   on QoS.
pub(super) fn vicodec_decoder_into_cma() -> Result<(), Failed> {
    let heap = dmaheap_testkit::cma_heap().expect("need checked");
    let frames = 30;
    let proof = KmsProof::start();
    let at_sink = Exporters::default();
    let run = run_pipeline_with(
        &format!(
            "videotestsrc num-buffers={frames} ! video/x-raw,width=1280,height=720,format=I420 \
             ! v4l2fwhtenc ! v4l2fwhtdec capture-io-mode=dmabuf-import \
             ! video/x-raw,format=I420 ! dmaheapupload name=up heap={heap} \
             ! videoconvert ! dmaheapupload name=disp heap={heap} \
             ! kmssink name=kms driver-name=vkms sync=false"
        ),
        Duration::from_secs(300),
        |p| at_sink.watch(p, "kms"),
    )?;
    let decoded = run
        .stats
        .ok_or("no stats from the decoder's dmaheapupload")?;
    let shown = run
        .stats_by_element
        .get("disp")
        .ok_or("no stats from the display's dmaheapupload")?;
    ensure!(
        stat(&decoded, "copies") == 0,
        "the decoder did not write into dmaheapupload's pool: {decoded}"
    );
    ensure!(
        stat(shown, "copies") == 0,
        "videoconvert did not write into the display side's pool: {shown}"
    );
    ensure!(
        decoded
            .get::<String>("heap-origins")?
            .contains(&format!("heap {heap}")),
        "the decoder's pool held no {heap} memory: {decoded}"
    );
    let through = decoded_frames(&run.dropped, "v4l2fwhtdec", &decoded, frames)?;
    ensure!(
        stat(shown, "passthrough") == through,
        "the display side passed {} of the {through} decoded frames on: {shown}",
        stat(shown, "passthrough")
    );
    let (reached, others) = at_sink.other_than(&heap);
    ensure!(
        reached as u64 == through && others.is_empty(),
        "{reached} buffers reached kmssink for {through} frames; not {heap} dma-bufs: {others:?}"
    );
    // kmssink imports buffers of whichever pool fed it: the display side's (6.12: videoconvert
    // wrote into it) or the decoder's (7.x: passed through).
    let pool_buffers = [&decoded, shown]
        .iter()
        .map(|s| stat(s, "prewarmed") + stat(s, "pool-misses"))
        .sum();
    let said = proof.check_imports(pool_buffers, through)?;
    println!(
        "v4l2fwhtdec -> {}\ndecoder side: {decoded}\ndisplay side: {shown}\n{reached} buffers \
         at kmssink, all {heap} dma-bufs\n{said}",
        run.upload_src_caps
            .map(|c| c.to_string())
            .unwrap_or_default()
    );
    Ok(())
}

pub(super) fn gst_launch_kmssink() -> Result<(), Failed> {
    let out = common::gst_tool(
        "gst-launch-1.0",
        &[
            "-m",
            "videotestsrc",
            "num-buffers=30",
            "!",
            "dmaheapupload",
            "heap=system",
            "!",
            "kmssink",
            "driver-name=vkms",
        ],
        &[("GST_DEBUG", "kmssink:6,GST_PERFORMANCE:4")],
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "gst-launch-1.0 failed:\n{stdout}\n{stderr}"
    );
    let stats = stdout
        .lines()
        .find(|l| l.contains("dmaheapupload-stats"))
        .ok_or("no stats message")?;
    ensure!(stats.contains("passthrough=(guint64)30"), "{stats}");
    ensure!(stats.contains("copies=(guint64)0"), "{stats}");
    let imports = stderr.matches("setting KMS mem").count();
    let reuses = stderr.matches("found KMS mem").count();
    let copies = stderr.matches("frame copy").count();
    ensure!(
        imports > 0 && copies == 0,
        "{imports} imports, {copies} copies"
    );
    println!(
        "gst-launch-1.0 -m videotestsrc num-buffers=30 ! dmaheapupload heap=system ! kmssink \
         driver-name=vkms\n{stats}\nkmssink log: {imports} imports, {reuses} reuses, {copies} \
         frame copies"
    );
    Ok(())
}
