//! What producers and consumers do with PipeWire 1.2-1.6's API (the `v1_6` feature, built in
//! the forky VM): dma-buf modifiers negotiated with pipewiresrc's DMA_DRM caps, explicit sync
//! with timeline syncobjs, and the consumers' device ids.

use std::rc::Rc;
use std::time::Duration;

use dmaheap_testkit::pipewire::consumer::{Accept, Consumer, Extras};
use dmaheap_testkit::pipewire::patience;
use dmaheap_testkit::pipewire::scenarios::{self, Rig, SrcCaps};
use dmaheap_testkit::{Failed, Need, Suite, ensure};
use pw_dmaheap::heapcore::Origin;
use pw_dmaheap::heapcore::format::VideoFormat;
use pw_dmaheap::{DRM_FORMAT_MOD_LINEAR, Producer, SyncDevice};

use super::rig;

pub(super) fn add(suite: &mut Suite) {
    suite
        .test(
            "real_heap_pw_pipewiresrc_asking_for_dmabufs_gets_them_without_opt_in",
            &[
                Need::SystemHeap,
                Need::PipeWire(1, 2),
                Need::GStreamer(1, 24),
            ],
            pipewiresrc_asking_for_dmabufs_gets_them,
        )
        .test(
            "real_heap_pw_a_consumer_asking_for_explicit_sync_gets_what_the_kernel_offers",
            &[Need::SystemHeap, Need::PipeWire(1, 2)],
            explicit_sync_as_the_kernel_offers,
        )
        .test(
            "real_heap_pw_explicit_sync_buffers_wait_for_their_release_point",
            &[Need::SystemHeap, Need::DrmSyncobj, Need::PipeWire(1, 2)],
            explicit_sync_waits_for_release,
        )
        .test(
            "real_heap_pw_the_consumers_devices_are_logged_and_explained",
            &[Need::SystemHeap, Need::Vgem, Need::PipeWire(1, 6)],
            consumer_devices_are_explained,
        )
        .test(
            "real_heap_pw_a_consumer_naming_a_dma_contig_device_gets_cma_buffers",
            &[
                Need::SystemHeap,
                Need::CmaHeap,
                Need::PipeWire(1, 6),
                CONTIG_VIVID,
            ],
            contig_device_gets_cma,
        );
}

/// The vivid instance the VM boots with its dma-contig allocator: it takes only physically
/// contiguous dma-bufs, as a camera or display without an IOMMU.
const CONTIG_VIVID: Need = Need::V4l2("vivid-001-vid-cap");

/// pipewiresrc followed by DMA_DRM caps (GStreamer 1.24) announces the LINEAR modifier: it
/// gets the heap's dma-bufs with no opt-in flag, negotiated the way PipeWire's dma-buf
/// document describes (the producer fixates the modifier); with plain caps it gets MemFd.
fn pipewiresrc_asking_for_dmabufs_gets_them() -> Result<(), Failed> {
    let rig = rig()?;
    for format in [VideoFormat::Bgrx, VideoFormat::Nv12] {
        let cfg = scenarios::config(&format!("drm-{format}"), 320, 240, format);
        let run = scenarios::pipewiresrc_with_caps(&rig, cfg, 30, SrcCaps::DmaDrm)?;
        println!("{}", run.command);
        println!("{format} DMA_DRM: producer: {}", run.negotiated);
        println!(
            "{format} DMA_DRM: pipewiresrc wrapped {:?} in {} buffers; {} frames checked in the \
             file ({:?}..{:?}); the producer found no free buffer {} times in {} frames",
            run.pool_memory,
            run.pool_buffers,
            run.sequences.len(),
            run.sequences.first(),
            run.sequences.last(),
            run.stats.starved,
            run.stats.frames
        );
        ensure!(
            run.pool_memory == ["DmaBuf"] && run.sequences.len() == 30,
            "{format}: pipewiresrc wrapped {:?}, {} frames",
            run.pool_memory,
            run.sequences.len()
        );
        ensure!(
            run.negotiated.params.modifier == Some(DRM_FORMAT_MOD_LINEAR)
                && run.negotiated.origin == Origin::Heap("system".parse()?),
            "{format}: negotiated {}",
            run.negotiated
        );
    }
    let cfg = scenarios::config("raw", 320, 240, VideoFormat::Bgrx);
    let run = scenarios::pipewiresrc_with_caps(&rig, cfg, 30, SrcCaps::Raw)?;
    println!("{}", run.command);
    println!("BGRx raw: producer: {}", run.negotiated);
    println!(
        "BGRx raw: pipewiresrc wrapped {:?} in {} buffers; {} frames checked in the file; the \
         producer found no free buffer {} times in {} frames",
        run.pool_memory,
        run.pool_buffers,
        run.sequences.len(),
        run.stats.starved,
        run.stats.frames
    );
    ensure!(
        run.pool_memory == ["MemFd"] && run.sequences.len() == 30,
        "raw caps: pipewiresrc wrapped {:?}",
        run.pool_memory
    );
    Ok(())
}

/// A consumer that asks for `SPA_META_SyncTimeline` gets explicit sync (two syncobj blocks,
/// acquire points signalled) where the kernel has timeline syncobjs, implicit sync otherwise.
/// Whether it has them the consumer asks its own DRM device.
fn explicit_sync_as_the_kernel_offers() -> Result<(), Failed> {
    let rig = rig()?;
    let kernel_has_syncobjs = SyncDevice::find();
    let cfg = scenarios::config("ask-sync", 320, 240, VideoFormat::Bgrx);
    let extras = Extras {
        explicit_sync: Some(0),
        ..Extras::default()
    };
    let (negotiated, seen) =
        scenarios::rust_consumer_with(&rig, cfg, Accept::DmaBufOrMemFd, extras, 30)?;
    println!("producer: {negotiated}");
    println!(
        "consumer: {} frames checked, types {:?}, syncobj blocks per buffer {:?}, acquire \
         points seen signalled {}, release points signalled {}; DRM device with timeline \
         syncobjs here: {:?}",
        seen.checked,
        seen.data_types,
        seen.syncobj_blocks,
        seen.acquired,
        seen.released,
        kernel_has_syncobjs.as_ref().map(|d| d.path().to_owned())
    );
    ensure!(
        seen.data_types.iter().eq(["DmaBuf"]),
        "types {:?}",
        seen.data_types
    );
    if kernel_has_syncobjs.is_some() {
        ensure!(
            negotiated.explicit_sync
                && seen.syncobj_blocks.iter().eq([&2])
                && seen.acquired >= seen.checked,
            "explicit sync expected: {negotiated}, syncobj blocks {:?}, {} acquired",
            seen.syncobj_blocks,
            seen.acquired
        );
    } else {
        ensure!(
            !negotiated.explicit_sync && seen.syncobj_blocks.iter().eq([&0]),
            "implicit sync expected: {negotiated}, syncobj blocks {:?}",
            seen.syncobj_blocks
        );
    }
    Ok(())
}

/// A consumer with explicit sync queues every buffer back at once and signals most release
/// points at once, but every fifth only eight frames later, after reading the frame again: the
/// producer comes round to that buffer (four buffers) before its release point signalled and
/// must leave it alone while the others stream (the consumer checks both).
fn explicit_sync_waits_for_release() -> Result<(), Failed> {
    let rig = rig()?;
    let cfg = scenarios::config("late-release", 320, 240, VideoFormat::Bgrx).with_buffers(4);
    let extras = Extras {
        explicit_sync: Some(8),
        ..Extras::default()
    };
    let (negotiated, seen) =
        scenarios::rust_consumer_with(&rig, cfg, Accept::DmaBufOrMemFd, extras, 120)?;
    println!("producer: {negotiated}");
    println!(
        "consumer: {} frames checked, syncobj blocks {:?}, {} acquire points seen signalled, \
         {} release points signalled, {} of them 8 frames late",
        seen.checked, seen.syncobj_blocks, seen.acquired, seen.released, seen.released_late
    );
    ensure!(
        negotiated.explicit_sync && seen.syncobj_blocks.iter().eq([&2]),
        "{negotiated}; syncobj blocks {:?}",
        seen.syncobj_blocks
    );
    ensure!(
        seen.released >= 100 && seen.released_late >= 15 && seen.errors.is_empty(),
        "{} released, {} late, errors {:?}",
        seen.released,
        seen.released_late,
        seen.errors
    );
    Ok(())
}

/// A producer streaming BGRx to a consumer that names `devnum` in `pipewire.device-ids`,
/// once the consumer checked 10 frames and the producer heard of the device.
fn stream_to_a_consumer_naming<'r>(
    rig: &'r Rig,
    name: &str,
    devnum: u64,
) -> Result<(Rc<Producer>, Consumer<'r>), Failed> {
    let cfg = scenarios::config(name, 320, 240, VideoFormat::Bgrx);
    let node = cfg.node_name.clone();
    let producer = rig.producer(cfg)?;
    let extras = Extras {
        device_ids: vec![devnum],
        ..Extras::default()
    };
    let consumer = rig.consumer_with(&node, VideoFormat::Bgrx, Accept::DmaBufOrMemFd, extras)?;
    scenarios::with_frames(rig, &producer, Duration::from_millis(5), || {
        rig.session.run_until("10 checked frames", patience(), || {
            let seen = consumer.seen();
            if let Some(e) = seen.errors.first() {
                return Err(e.clone());
            }
            Ok(seen.checked >= 10 && !producer.peer_devices().is_empty())
        })
    })?;
    Ok((producer, consumer))
}

/// A PipeWire 1.6 consumer names its DRM device in `pipewire.device-ids`: the producer
/// resolves it to this machine's node and driver and explains it with its heap choice.
fn consumer_devices_are_explained() -> Result<(), Failed> {
    let rig = rig()?;
    let card = dmaheap_testkit::drm_card("vgem").ok_or("no vgem card")?;
    let devnum = rustix::fs::stat(card.as_str())?.st_rdev;
    let (producer, _consumer) = stream_to_a_consumer_naming(&rig, "devices", devnum)?;
    let devices = producer.peer_devices();
    let explained = producer.explain_heap_choice();
    println!("the consumer named {card} ({devnum:#x}); the producer says:\n{explained}");
    ensure!(
        devices.len() == 1
            && devices[0].devnum == devnum
            && devices[0].device.as_ref().map(|d| d.node.as_path())
                == Some(std::path::Path::new(&card))
            && devices[0].device.as_ref().and_then(|d| d.driver.as_deref()) == Some("vgem"),
        "devices {devices:?}"
    );
    ensure!(
        explained.contains("consumer devices (pipewire.device-ids)") && explained.contains(&card),
        "{explained}"
    );
    Ok(())
}

/// issue 12 on PipeWire: a consumer that names a device needing contiguous memory (its
/// `pipewire.device-ids`) gets buffers from the CMA heap, with no heap list and no
/// `contiguous` in the producer's configuration: heapcore's probe of that device (it refuses
/// system-heap buffers) rules the system heap out. The consumer's fds name the CMA heap as
/// their exporter.
fn contig_device_gets_cma() -> Result<(), Failed> {
    let rig = rig()?;
    let heap = dmaheap_testkit::cma_heap().ok_or("no CMA heap")?;
    let vivid = dmaheap_testkit::v4l2_device("vivid-001-vid-cap").ok_or("no dma-contig vivid")?;
    let devnum = rustix::fs::stat(vivid.as_str())?.st_rdev;
    let (producer, consumer) = stream_to_a_consumer_naming(&rig, "contig-device", devnum)?;
    let negotiated = producer
        .negotiated()
        .ok_or("the producer reports no negotiation")?;
    let seen = consumer.seen();
    let explained = producer.explain_heap_choice();
    println!("the consumer named {vivid} ({devnum:#x}); the producer says:\n{explained}");
    println!("producer: {negotiated}");
    println!(
        "consumer: types {:?}, exporters {:?}",
        seen.data_types, seen.exporters
    );
    ensure!(
        negotiated.origin == Origin::Heap(heap.parse()?),
        "buffers from {}, expected the CMA heap {heap}",
        negotiated.origin
    );
    ensure!(
        seen.exporters.iter().eq([&heap]),
        "exporters {:?}, expected {heap}",
        seen.exporters
    );
    ensure!(explained.contains(&vivid), "{explained}");
    Ok(())
}
