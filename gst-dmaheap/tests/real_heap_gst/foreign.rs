//! Dma-bufs from other exporters: vivid's own buffers (`v4l2src io-mode=dmabuf`) pass through
//! `dmaheapupload` untouched when they meet what the devices need, and are copied, the stats
//! saying why, when they do not. Each test checks what reaches the sink (the dma-buf itself
//! by inode, its exporter from fdinfo, the pixels), not only the counters.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dmaheap_testkit::{Failed, Need, Suite, ensure};
use gst::prelude::*;
use gst_video::prelude::*;

use super::common::{run_pipeline_with, stat};
use super::display::{exporter, on_buffers};
use super::dmabuf_fd;

/// vivid's vmalloc instance (scattered pages, exporter `videobuf2_vmalloc`).
const VMALLOC_VIVID: &str = "vivid-000-vid-cap";
/// vivid's dma-contig instance: it refuses scattered buffers (it needs contiguous memory).
const CONTIG_VIVID: &str = "vivid-001-vid-cap";
/// The output node of the dma-contig instance: another device that needs contiguous memory.
const CONTIG_VIVID_OUT: &str = "vivid-001-vid-out";

pub(super) fn add(suite: &mut Suite) {
    suite
        .test(
            "real_heap_gst_foreign_vivid_dmabufs_pass_through_uncopied",
            &[Need::SystemHeap, Need::V4l2(VMALLOC_VIVID)],
            vmalloc_dmabufs_pass_through,
        )
        .test(
            "real_heap_gst_foreign_vmalloc_dmabufs_are_copied_for_a_contiguous_device",
            &[
                Need::SystemHeap,
                Need::CmaHeap,
                Need::V4l2(VMALLOC_VIVID),
                Need::V4l2(CONTIG_VIVID),
            ],
            vmalloc_dmabufs_copied_for_contiguous_device,
        )
        .test(
            "real_heap_gst_foreign_dma_contig_dmabufs_pass_to_a_contiguous_device",
            &[
                Need::SystemHeap,
                Need::CmaHeap,
                Need::V4l2(CONTIG_VIVID),
                Need::V4l2(CONTIG_VIVID_OUT),
            ],
            dma_contig_dmabufs_pass_to_contiguous_device,
        );
}

/// One buffer as a pad saw it: its dma-buf (device and inode of the fd, exporter) and a
/// hash of the frame's pixels, row by row (strides may differ between a buffer and its copy).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    inode: Option<(u64, u64)>,
    exporter: String,
    pixels: u64,
}

#[derive(Clone, Default)]
struct Watch(Arc<Mutex<Vec<Seen>>>);

impl Watch {
    /// Records every buffer arriving at `element`'s sink pad, its pixels read with the caps
    /// of `caps_of` (dmaheapupload's input: downstream of it, GStreamer 1.28 negotiates
    /// DMA_DRM caps, which describe no planes).
    fn on(&self, pipeline: &gst::Pipeline, element: &str, caps_of: &gst::Pad) {
        let seen = self.clone();
        let caps_of = caps_of.clone();
        on_buffers(pipeline, element, move |_, buf| {
            let caps = caps_of.current_caps().expect("caps before buffers");
            let entry = Seen {
                inode: dmabuf_fd(buf.peek_memory(0)).ok().and_then(inode),
                exporter: exporter(buf),
                pixels: pixels(buf, &caps),
            };
            seen.0.lock().unwrap().push(entry);
        });
    }

    fn taken(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

fn inode(fd: RawFd) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// A hash of the visible pixels of every plane, row by row.
fn pixels(buf: &gst::BufferRef, caps: &gst::CapsRef) -> u64 {
    let info = gst_video::VideoInfo::from_caps(caps).expect("video caps");
    let frame =
        gst_video::VideoFrameRef::from_buffer_ref_readable(buf, &info).expect("a readable frame");
    assert!(frame.n_planes() > 0, "{caps} describe no planes");
    let mut h = DefaultHasher::new();
    for plane in 0..frame.n_planes() {
        let data = frame.plane_data(plane).expect("plane data");
        let stride = frame.plane_stride()[plane as usize] as usize;
        // The first component that lives in this plane.
        let comp = frame
            .format_info()
            .plane()
            .iter()
            .position(|&p| p == plane)
            .expect("a component in every plane") as u32;
        let rows = frame.comp_height(comp) as usize;
        let row_bytes = frame.comp_width(comp) as usize * frame.comp_pstride(comp) as usize;
        for row in 0..rows {
            h.write(&data[row * stride..row * stride + row_bytes]);
        }
    }
    h.finish()
}

/// Runs `v4l2src device=<camera> io-mode=dmabuf ! dmaheapupload <props> ! fakesink`, watching
/// what enters and what leaves dmaheapupload.
fn run(
    camera: &str,
    props: &str,
    frames: u64,
) -> Result<(gst::Structure, Vec<Seen>, Vec<Seen>), Failed> {
    let (into, out) = (Watch::default(), Watch::default());
    let run = run_pipeline_with(
        &format!(
            "v4l2src device={camera} io-mode=dmabuf num-buffers={frames} \
             ! video/x-raw,format=YUY2,width=640,height=480 \
             ! dmaheapupload name=up {props} ! fakesink name=sink"
        ),
        Duration::from_secs(180),
        |p| {
            let caps_of = p.by_name("up").and_then(|e| e.static_pad("sink")).unwrap();
            into.on(p, "up", &caps_of);
            out.on(p, "sink", &caps_of);
        },
    )?;
    let stats = run.stats.ok_or("no stats message")?;
    let (into, out) = (into.taken(), out.taken());
    ensure!(
        into.len() as u64 == frames && out.len() as u64 == frames,
        "{} buffers in, {} out of {frames}: {stats}",
        into.len(),
        out.len()
    );
    for (i, (a, b)) in into.iter().zip(&out).enumerate() {
        ensure!(
            a.pixels == b.pixels,
            "frame {i}: the pixels downstream differ from vivid's ({a:?} -> {b:?})"
        );
    }
    Ok((stats, into, out))
}

/// vivid's vmalloc buffers, no device needing more: every buffer reaches the sink as the very
/// dma-buf vivid exported (same inode, exporter `videobuf2_vmalloc`), no copy.
fn vmalloc_dmabufs_pass_through() -> Result<(), Failed> {
    let camera = dmaheap_testkit::v4l2_device(VMALLOC_VIVID).expect("need checked");
    let frames = 30;
    let (stats, into, out) = run(&camera, "", frames)?;
    for (i, (a, b)) in into.iter().zip(&out).enumerate() {
        ensure!(
            a.exporter == "videobuf2_vmalloc" && b == a && b.inode.is_some(),
            "frame {i}: vivid gave {a:?}, the sink got {b:?}: {stats}"
        );
    }
    ensure!(
        stat(&stats, "foreign-passthrough") == frames
            && stat(&stats, "copies") == 0
            && stat(&stats, "passthrough") == 0,
        "{stats}"
    );
    println!(
        "{camera} io-mode=dmabuf -> dmaheapupload -> fakesink: {frames} of {frames} buffers \
         reached the sink as vivid's own dma-bufs ({}), pixels equal\n{stats}",
        out[0].exporter
    );
    Ok(())
}

/// The same buffers when `devices` names the dma-contig vivid, which refuses scattered pages:
/// every frame is copied into a CMA buffer (the sink gets a dma-buf of the CMA heap, the same
/// pixels), and the stats say why.
fn vmalloc_dmabufs_copied_for_contiguous_device() -> Result<(), Failed> {
    let camera = dmaheap_testkit::v4l2_device(VMALLOC_VIVID).expect("need checked");
    let contig = dmaheap_testkit::v4l2_device(CONTIG_VIVID).expect("need checked");
    let cma = dmaheap_testkit::cma_heap().expect("need checked");
    let frames = 30;
    let (stats, into, out) = run(&camera, &format!("devices={contig}"), frames)?;
    for (i, (a, b)) in into.iter().zip(&out).enumerate() {
        ensure!(
            a.exporter == "videobuf2_vmalloc" && b.exporter == cma && a.inode != b.inode,
            "frame {i}: vivid gave {a:?}, the sink got {b:?} (want a copy in {cma}): {stats}"
        );
    }
    let reason = stats.get::<String>("last-copy-reason")?;
    ensure!(
        stat(&stats, "copies") == frames
            && stat(&stats, "foreign-passthrough") == 0
            && reason.contains("needs physically contiguous memory")
            && reason.contains("videobuf2_vmalloc")
            && reason.contains(&contig),
        "{stats}"
    );
    println!(
        "{camera} io-mode=dmabuf -> dmaheapupload devices={contig} -> fakesink: {frames} \
         copies into {cma}, pixels equal\nlast-copy-reason: {reason}\n{stats}"
    );
    Ok(())
}

/// The dma-contig vivid's own buffers (contiguous: its device has no IOMMU) meet another
/// device that needs contiguous memory (the same instance's output node): they pass through.
fn dma_contig_dmabufs_pass_to_contiguous_device() -> Result<(), Failed> {
    let camera = dmaheap_testkit::v4l2_device(CONTIG_VIVID).expect("need checked");
    let output = dmaheap_testkit::v4l2_device(CONTIG_VIVID_OUT).expect("need checked");
    // The output node needs contiguous memory: it would not take vivid's vmalloc buffers.
    let registry = heapcore::PoolRegistry::process();
    let inventory = registry.allocator().inventory();
    let report = heapcore::device::DeviceReport::for_node(output.as_ref(), registry.allocator())?;
    let scattered = heapcore::ExporterMemory::recognise("videobuf2_vmalloc", inventory, None);
    ensure!(
        scattered.suits(&report, inventory).is_err(),
        "{output} would take scattered pages, so this proves nothing: {report}"
    );
    let frames = 30;
    let (stats, into, out) = run(&camera, &format!("devices={output}"), frames)?;
    for (i, (a, b)) in into.iter().zip(&out).enumerate() {
        ensure!(
            a.exporter == "videobuf2_dma_contig" && b == a && b.inode.is_some(),
            "frame {i}: vivid gave {a:?}, the sink got {b:?}: {stats}"
        );
    }
    ensure!(
        stat(&stats, "foreign-passthrough") == frames && stat(&stats, "copies") == 0,
        "{stats}"
    );
    println!(
        "{camera} io-mode=dmabuf -> dmaheapupload devices={output} -> fakesink: {frames} of \
         {frames} buffers passed as vivid's own dma-contig dma-bufs\n{stats}"
    );
    Ok(())
}
