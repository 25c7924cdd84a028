//! The negotiator with real DMA-BUF heaps and a real PipeWire daemon set. On a machine
//! without heaps every test is reported ignored with its reason; `tests/vm/run` runs them in
//! a VM where `/dev/dma_heap/system` (and with the full kernel, the CMA heap) exists.

use std::time::Duration;

use dmaheap_testkit::pipewire::consumer::{Accept, Seen};
use dmaheap_testkit::pipewire::patience;
use dmaheap_testkit::pipewire::scenarios::{self, Rig};
use dmaheap_testkit::{Failed, Need, Suite, ensure};
use pw_dmaheap::heapcore::fence::SwSyncTimeline;
use pw_dmaheap::heapcore::format::VideoFormat;
use pw_dmaheap::heapcore::{Origin, Source};
use pw_dmaheap::{DRM_FORMAT_MOD_LINEAR, DataKind, Negotiated};

fn main() {
    let _ = env_logger::builder()
        .filter_level(log::LevelFilter::Info)
        .parse_default_env()
        .try_init();
    let mut suite = Suite::new();
    suite
        .test(
            "real_heap_pw_rust_consumer_gets_system_heap_dmabufs",
            &[Need::SystemHeap],
            rust_consumer_gets_system_heap_dmabufs,
        )
        .test(
            "real_heap_pw_memfd_only_consumer_gets_memfd",
            &[Need::SystemHeap],
            memfd_only_consumer_gets_memfd,
        )
        .test(
            "real_heap_pw_consumers_switch_between_dmabuf_and_memfd",
            &[Need::SystemHeap],
            consumers_switch_between_dmabuf_and_memfd,
        )
        .test(
            "real_heap_pw_pipewiresrc_receives_frames",
            &[Need::SystemHeap],
            pipewiresrc_receives_frames,
        )
        .test(
            "real_heap_pw_pipewiresrc_reads_one_block_dmabufs_at_odd_sizes",
            &[Need::SystemHeap],
            pipewiresrc_reads_one_block_dmabufs_at_odd_sizes,
        )
        .test(
            "real_heap_pw_contiguous_buffers_come_from_cma",
            &[Need::CmaHeap],
            contiguous_buffers_come_from_cma,
        )
        .test(
            "real_heap_pw_explicit_udmabuf",
            &[Need::Udmabuf],
            explicit_udmabuf,
        )
        .test(
            "real_heap_pw_dmabuf_that_cannot_be_allocated_is_withdrawn",
            &[Need::Udmabuf, Need::Root],
            dmabuf_that_cannot_be_allocated_is_withdrawn,
        )
        .test(
            "real_heap_pw_a_render_callback_may_disconnect_its_producer",
            &[Need::SystemHeap],
            disconnect_in_render,
        )
        .test(
            "real_heap_pw_a_consumer_that_left_never_sees_the_next_ones_frames",
            &[Need::SystemHeap],
            privacy,
        )
        .test(
            "real_heap_pw_10000_frames_with_reconnects_and_resize_leak_no_fd",
            &[Need::SystemHeap],
            soak,
        )
        .test(
            "real_heap_pw_forty_resizes_never_repeat_or_tear_a_frame",
            &[Need::SystemHeap],
            forty_resizes,
        )
        .test(
            "real_heap_pw_a_buffer_a_device_still_reads_waits_for_its_fence",
            &[Need::SystemHeap, Need::SwSync],
            fenced_buffer_waits,
        );
    #[cfg(feature = "v1_6")]
    pw_1_6::add(&mut suite);
    #[cfg(not(feature = "v1_6"))]
    println!(
        "real_heap_pw: built without pw-dmaheap/v1_6, so without the PipeWire 1.2-1.6 tests \
         (DMA_DRM pipewiresrc, explicit sync, consumer device ids): they run in the forky VM"
    );
    suite.run()
}

#[cfg(feature = "v1_6")]
#[path = "real_heap_pw/pw_1_6.rs"]
mod pw_1_6;

fn rig() -> Result<Rig, Failed> {
    Ok(Rig::start()?)
}

/// The producer's buffers came from `origin`, and the consumer's fds name `exporter` as the
/// dma-buf exporter in fdinfo (so they are the heap's own dma-bufs, not copies).
fn served_from(
    negotiated: &Negotiated,
    seen: &Seen,
    origin: Origin,
    exporter: &str,
) -> Result<(), Failed> {
    ensure!(
        negotiated.origin == origin,
        "buffers from {}, expected {origin}",
        negotiated.origin
    );
    ensure!(
        seen.exporters.iter().eq([exporter]),
        "exporters {:?}, expected {exporter}",
        seen.exporters
    );
    Ok(())
}

fn rust_consumer_gets_system_heap_dmabufs() -> Result<(), Failed> {
    let rig = rig()?;
    for format in [VideoFormat::Bgrx, VideoFormat::Nv12] {
        let cfg = scenarios::config("rust", 320, 240, format);
        let (negotiated, seen) = scenarios::rust_consumer(&rig, cfg, Accept::DmaBufOrMemFd, 30)?;
        println!("{format}: producer: {negotiated}");
        println!(
            "{format}: consumer: {} frames checked, types {:?}, blocks {:?}, exporters {:?}, names {:?}",
            seen.checked, seen.data_types, seen.blocks, seen.exporters, seen.names
        );
        if let Some(info) = &seen.fdinfo_sample {
            println!("{format}: fdinfo of a received fd:\n{}", info.trim_end());
        }
        ensure!(
            negotiated.data_kind == DataKind::DmaBuf,
            "negotiated {}",
            negotiated.data_kind
        );
        served_from(
            &negotiated,
            &seen,
            Origin::Heap("system".parse()?),
            "system",
        )?;
        ensure!(
            seen.data_types.iter().eq(["DmaBuf"]),
            "the consumer got {:?}",
            seen.data_types
        );
        ensure!(
            seen.names.iter().all(|n| n.starts_with("pw-screencast#")),
            "names {:?}",
            seen.names
        );
        // It did not ask for explicit sync: no syncobj blocks, implicit sync.
        ensure!(
            seen.syncobj_blocks.iter().eq([&0]) && !negotiated.explicit_sync,
            "syncobj blocks {:?}, {negotiated}",
            seen.syncobj_blocks
        );
        ensure!(
            seen.formats.last().and_then(|f| f.modifier) == Some(DRM_FORMAT_MOD_LINEAR),
            "format {:?}",
            seen.formats.last()
        );
        let planes = format.plane_count();
        ensure!(
            seen.blocks.iter().eq([&planes]),
            "{:?} blocks for {planes} planes",
            seen.blocks
        );
    }
    Ok(())
}

fn memfd_only_consumer_gets_memfd() -> Result<(), Failed> {
    let rig = rig()?;
    let cfg = scenarios::config("memfd", 320, 240, VideoFormat::Bgrx);
    let (negotiated, seen) = scenarios::rust_consumer(&rig, cfg, Accept::MemFdOnly, 30)?;
    println!("producer: {negotiated}");
    println!(
        "consumer: {} frames checked, types {:?}",
        seen.checked, seen.data_types
    );
    ensure!(
        negotiated.data_kind == DataKind::MemFd && negotiated.origin == Origin::Memfd,
        "negotiated {negotiated}"
    );
    ensure!(
        seen.data_types.iter().eq(["MemFd"]) && seen.exporters.is_empty(),
        "the consumer got {:?} from {:?}",
        seen.data_types,
        seen.exporters
    );
    Ok(())
}

fn consumers_switch_between_dmabuf_and_memfd() -> Result<(), Failed> {
    let rig = rig()?;
    let cfg = scenarios::config("switch", 160, 120, VideoFormat::Bgrx);
    let name = cfg.node_name.clone();
    let producer = rig.producer(cfg)?;
    let mut kinds = Vec::new();
    for accept in [
        Accept::DmaBufOrMemFd,
        Accept::MemFdOnly,
        Accept::DmaBufOrMemFd,
    ] {
        let consumer = rig.consumer(&name, VideoFormat::Bgrx, accept)?;
        scenarios::with_frames(&rig, &producer, std::time::Duration::from_millis(5), || {
            rig.session.run_until("20 checked frames", patience(), || {
                let seen = consumer.seen();
                if let Some(e) = seen.errors.first() {
                    return Err(e.clone());
                }
                Ok(seen.checked >= 20)
            })
        })?;
        let seen = consumer.seen();
        let negotiated = producer.negotiated().ok_or("no negotiation")?;
        println!(
            "{accept:?}: {negotiated}; the consumer got {:?}",
            seen.data_types
        );
        kinds.push(
            seen.data_types
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(","),
        );
        drop(consumer);
        rig.session.run_for(std::time::Duration::from_millis(200));
    }
    ensure!(
        kinds == ["DmaBuf", "MemFd", "DmaBuf"],
        "consumers in turn got {kinds:?}"
    );
    Ok(())
}

fn pipewiresrc_receives_frames() -> Result<(), Failed> {
    let rig = rig()?;
    // pipewiresrc 0.3.65 announces no modifiers: by default it gets MemFd.
    let cfg = scenarios::config("gst", 320, 240, VideoFormat::Bgrx);
    let run = scenarios::pipewiresrc(&rig, cfg, 30)?;
    println!("{}", run.command);
    println!("default: producer: {}", run.negotiated);
    println!(
        "default: pipewiresrc wrapped {:?}; {} frames checked in the file",
        run.pool_memory,
        run.sequences.len()
    );
    ensure!(
        run.pool_memory == ["MemFd"] && run.sequences.len() == 30,
        "pipewiresrc wrapped {:?}",
        run.pool_memory
    );
    // With PipeWire's V4L2 rule (linear, mmap-able dma-bufs without a modifier) it takes
    // the heap buffers themselves.
    let cfg = scenarios::config("gst-dmabuf", 320, 240, VideoFormat::Bgrx)
        .with_dmabuf_without_modifier(true);
    let run = scenarios::pipewiresrc(&rig, cfg, 30)?;
    println!("dmabuf_without_modifier: producer: {}", run.negotiated);
    println!(
        "dmabuf_without_modifier: pipewiresrc wrapped {:?}; {} frames checked in the file",
        run.pool_memory,
        run.sequences.len()
    );
    ensure!(
        run.pool_memory == ["DmaBuf"] && run.negotiated.origin == Origin::Heap("system".parse()?),
        "pipewiresrc wrapped {:?} from {}",
        run.pool_memory,
        run.negotiated.origin
    );
    Ok(())
}

/// Dma-bufs without a modifier are one block: planes after the first must be where
/// pipewiresrc assumes them (GStreamer's default layout), also at odd sizes.
fn pipewiresrc_reads_one_block_dmabufs_at_odd_sizes() -> Result<(), Failed> {
    let rig = rig()?;
    for format in [VideoFormat::Nv12, VideoFormat::I420] {
        let cfg = scenarios::config(&format!("odd-{format}"), 321, 241, format)
            .with_dmabuf_without_modifier(true);
        let run = scenarios::pipewiresrc(&rig, cfg, 10)?;
        println!(
            "{format} 321x241: pipewiresrc wrapped {:?}; {} frames checked; producer: {}",
            run.pool_memory,
            run.sequences.len(),
            run.negotiated
        );
        ensure!(
            run.pool_memory == ["DmaBuf"] && run.sequences.len() == 10,
            "{format}: pipewiresrc wrapped {:?}, {} frames",
            run.pool_memory,
            run.sequences.len()
        );
    }
    Ok(())
}

fn contiguous_buffers_come_from_cma() -> Result<(), Failed> {
    let rig = rig()?;
    let heap = dmaheap_testkit::cma_heap().ok_or("no CMA heap")?;
    let cfg = scenarios::config("cma", 640, 480, VideoFormat::Nv12).with_contiguous(true);
    let (negotiated, seen) = scenarios::rust_consumer(&rig, cfg, Accept::DmaBufOrMemFd, 20)?;
    println!("producer: {negotiated}");
    println!(
        "consumer: types {:?}, exporters {:?}",
        seen.data_types, seen.exporters
    );
    served_from(&negotiated, &seen, Origin::Heap(heap.parse()?), &heap)
}

fn explicit_udmabuf() -> Result<(), Failed> {
    let rig = rig()?;
    let cfg =
        scenarios::config("udmabuf", 320, 240, VideoFormat::Bgrx).with_heaps(vec![Source::Udmabuf]);
    let (negotiated, seen) = scenarios::rust_consumer(&rig, cfg, Accept::DmaBufOrMemFd, 20)?;
    println!("producer: {negotiated}");
    println!(
        "consumer: types {:?}, exporters {:?}",
        seen.data_types, seen.exporters
    );
    served_from(&negotiated, &seen, Origin::Udmabuf, "udmabuf")
}

/// Sets udmabuf's size limit for the test's duration (root, in the VM).
struct UdmabufLimit(String);

const UDMABUF_LIMIT: &str = "/sys/module/udmabuf/parameters/size_limit_mb";

impl UdmabufLimit {
    fn set(mb: u32) -> Result<Self, Failed> {
        let old = std::fs::read_to_string(UDMABUF_LIMIT)?;
        std::fs::write(UDMABUF_LIMIT, mb.to_string())?;
        Ok(Self(old.trim().to_owned()))
    }
}

impl Drop for UdmabufLimit {
    fn drop(&mut self) {
        let _ = std::fs::write(UDMABUF_LIMIT, &self.0);
    }
}

fn dmabuf_that_cannot_be_allocated_is_withdrawn() -> Result<(), Failed> {
    // udmabuf serves a page (the probe) but not a 1.2 MB frame: DmaBuf is offered, the
    // format is fixed with the modifier, the allocation fails, and the producer withdraws its
    // DmaBuf formats so that PipeWire renegotiates to MemFd.
    let _limit = UdmabufLimit::set(1)?;
    let rig = rig()?;
    let cfg = scenarios::config("withdraw", 640, 480, VideoFormat::Bgrx)
        .with_heaps(vec![Source::Udmabuf]);
    let (negotiated, seen) = scenarios::rust_consumer(&rig, cfg, Accept::DmaBufOrMemFd, 10)?;
    println!("producer: {negotiated}");
    println!(
        "consumer: formats {:?}, types {:?}",
        seen.formats
            .iter()
            .map(|f| (f.width, f.height, f.modifier))
            .collect::<Vec<_>>(),
        seen.data_types
    );
    ensure!(
        negotiated.data_kind == DataKind::MemFd && seen.data_types.iter().eq(["MemFd"]),
        "negotiated {negotiated}, the consumer got {:?}",
        seen.data_types
    );
    ensure!(
        seen.formats.last().is_some_and(|f| f.modifier.is_none()),
        "formats {:?}",
        seen.formats
    );
    Ok(())
}

fn disconnect_in_render() -> Result<(), Failed> {
    let rig = rig()?;
    let cfg = scenarios::config("render-disconnect", 160, 120, VideoFormat::Nv12);
    let run = scenarios::disconnect_in_render(&rig, cfg, Accept::DmaBufOrMemFd)?;
    println!("{run:#?}");
    ensure!(
        run.resized.data_kind == DataKind::DmaBuf,
        "negotiated {}",
        run.resized
    );
    ensure!(
        run.fds_leaked.is_empty() && run.second_checked >= 60,
        "fds opened and never closed: {:?} ({} fds before, {} after); {} frames checked \
         after connecting again",
        run.fds_leaked,
        run.fds_before,
        run.fds_after,
        run.second_checked
    );
    Ok(())
}

fn privacy() -> Result<(), Failed> {
    let rig = rig()?;
    let cfg = scenarios::config("privacy", 160, 120, VideoFormat::Bgrx);
    let run = scenarios::privacy(&rig, cfg, Accept::DmaBufOrMemFd, 200)?;
    println!("{run:#?}");
    ensure!(
        run.first.data_kind == DataKind::DmaBuf && run.second.data_kind == DataKind::DmaBuf,
        "negotiated {} then {}",
        run.first,
        run.second
    );
    ensure!(
        run.first_inodes.is_disjoint(&run.second_inodes) && !run.second_inodes.is_empty(),
        "inodes {:?} then {:?}",
        run.first_inodes,
        run.second_inodes
    );
    Ok(())
}

fn soak() -> Result<(), Failed> {
    let rig = rig()?;
    let cfg = scenarios::config("soak", 64, 48, VideoFormat::Bgrx);
    let soak = scenarios::soak(&rig, cfg, Accept::DmaBufOrMemFd, 10_000)?;
    println!("{soak:#?}");
    ensure!(
        soak.frames_checked >= 10_000,
        "{} frames",
        soak.frames_checked
    );
    ensure!(
        soak.negotiated.iter().all(|n| n.contains("DmaBuf")),
        "negotiated {:?}",
        soak.negotiated
    );
    ensure!(
        soak.fds_leaked.is_empty(),
        "fds opened and never closed: {:?} ({} fds before, {} after)",
        soak.fds_leaked,
        soak.fds_before,
        soak.fds_after
    );
    Ok(())
}

/// Forty renegotiations while frames stream from the system heap, every frame checked: no
/// frame repeats, goes back or is torn, and the consumer is never handed a buffer the
/// producer did not send. With PipeWire 1.6 each renegotiation leaves a stale id in the link's
/// io area, which the producer keeps out of its free queue (`stale_returns`); and now and then
/// (2 runs in 14) a frame sent as the resize began is still unread when the buffers
/// change, so the consumer is handed one buffer never sent, empty (pw-dmaheap's README, known
/// issues). Up to [`never_sent_allowed`] of those pass there; before the hold-back it was
/// 11 to 15 a run.
/// Never-sent buffers a forty-resizes run may hand the consumer: none with PipeWire 0.3.65.
fn never_sent_allowed() -> u64 {
    if cfg!(feature = "v1_6") { 2 } else { 0 }
}

fn forty_resizes() -> Result<(), Failed> {
    let rig = rig()?;
    let cfg = scenarios::config("resizes", 96, 64, VideoFormat::Bgrx);
    let run = scenarios::resizes(&rig, cfg, Accept::DmaBufOrMemFd, 40, 20)?;
    println!("{run:#?}");
    ensure!(
        run.stats.negotiations > u64::from(run.resizes),
        "{} negotiations for {} resizes",
        run.stats.negotiations,
        run.resizes
    );
    ensure!(
        run.empty <= never_sent_allowed(),
        "{} buffers the producer never sent reached the consumer; the first {}",
        run.empty,
        run.first_empty.as_deref().unwrap_or("?")
    );
    ensure!(
        run.stats.duplicates == 0,
        "PipeWire handed out {} buffers the producer held",
        run.stats.duplicates
    );
    Ok(())
}

/// Implicit sync: the consumer attaches a sw_sync fence to one frame's dma-buf, as a display
/// scanning it out would, and queues the buffer back. Until the fence signals that buffer
/// must not come back (the consumer fails the run if it does) and its frame stays intact,
/// while the other buffers keep streaming; after the timeline advances, it is used again.
fn fenced_buffer_waits() -> Result<(), Failed> {
    let rig = rig()?;
    let cfg = scenarios::config("fence", 320, 240, VideoFormat::Bgrx).with_buffers(4);
    let name = cfg.node_name.clone();
    let producer = rig.producer(cfg)?;
    let consumer = rig.consumer(&name, VideoFormat::Bgrx, Accept::DmaBufOrMemFd)?;
    let timeline = SwSyncTimeline::open()?;
    let fail_on_error = |what: &str| -> Result<bool, String> {
        let seen = consumer.seen();
        match seen.errors.first() {
            Some(e) => Err(format!("{what}: {e}")),
            None => Ok(false),
        }
    };
    scenarios::with_frames(&rig, &producer, Duration::from_millis(5), || {
        rig.session.run_until("10 checked frames", patience(), || {
            fail_on_error("before the fence")?;
            Ok(consumer.seen().checked >= 10)
        })?;
        consumer.fence_next_frame(timeline.fence_at(1).map_err(|e| e.to_string())?);
        rig.session.run_until("a fenced frame", patience(), || {
            fail_on_error("fencing")?;
            Ok(consumer.seen().fenced_seq.is_some())
        })?;
        let fenced_at = consumer.seen().checked;
        // Three rounds of every other buffer while the fence holds.
        rig.session
            .run_until("30 frames while fenced", patience(), || {
                fail_on_error("while fenced")?;
                Ok(consumer.seen().checked >= fenced_at + 30)
            })?;
        let intact = consumer.check_fenced()?;
        println!(
            "fenced frame {:?}; {} frames later it still reads frame {intact}",
            consumer.seen().fenced_seq,
            consumer.seen().checked - fenced_at
        );
        timeline.advance(1).map_err(|e| e.to_string())?;
        rig.session
            .run_until("the fenced buffer back", patience(), || {
                fail_on_error("after the fence signalled")?;
                Ok(consumer.seen().fenced_buffer_back_after_signal)
            })
            .map(|()| intact)
    })
    .and_then(|intact| {
        let seen = consumer.seen();
        println!(
            "after the fence signalled the buffer came back; {} frames checked, stats {:?}",
            seen.checked,
            producer.stats()
        );
        if Some(intact) == seen.fenced_seq {
            Ok(())
        } else {
            Err(format!(
                "the fenced buffer read frame {intact}, not {:?}",
                seen.fenced_seq
            ))
        }
    })?;
    Ok(())
}
