//! What the plugin does with GStreamer 1.24–1.28's API (the `v1_28` feature): DMA_DRM caps,
//! and `GstVideoDmabufPool` with the dmaheap allocator.

use std::time::Duration;

use dmaheap_testkit::{Failed, Need, Suite, ensure};
use gst::prelude::*;
use gstdmaheap::{DmaHeapAllocator, heap_memory_info};

use super::common::{init, run_pipeline, run_pipeline_with, stat};
use super::display::{Exporters, KmsProof, decoded_frames};
use super::{DECODER, ENCODER, dmabuf_fd, fdinfo};

pub(super) fn add(suite: &mut Suite) {
    suite
        .test(
            "real_heap_gst_dma_drm_or_older_caps_as_downstream_asks",
            &[Need::SystemHeap],
            dma_drm_or_older_caps_as_downstream_asks,
        )
        .test(
            "real_heap_gst_dma_drm_caps_from_the_vicodec_decoder_to_kmssink",
            &[Need::CmaHeap, Need::Kms, ENCODER, DECODER],
            dma_drm_from_the_decoder_to_kmssink,
        )
        .test(
            "real_heap_gst_video_dmabuf_pool_allocates_from_the_heap",
            &[Need::SystemHeap],
            video_dmabuf_pool_allocates_from_the_heap,
        );
}

/// `format` and `drm-format` of the first structure of `caps`, and whether it is dma-buf
/// memory.
fn describe(caps: &gst::CapsRef) -> (String, Option<String>, bool) {
    let s = caps.structure(0).expect("fixed caps");
    (
        s.get::<String>("format").unwrap_or_default(),
        s.get::<String>("drm-format").ok(),
        caps.features(0)
            .is_some_and(|f| f.contains(gst_allocators::CAPS_FEATURE_MEMORY_DMABUF)),
    )
}

/// Downstream that takes DMA_DRM gets it (LINEAR: the fourcc without a modifier suffix);
/// downstream that asks for the older `memory:DMABuf, format=NV12` or for plain caps gets
/// that. Heap buffers pass through in every case, and a second dmaheapupload takes DMA_DRM
/// input and passes its heap buffers on.
fn dma_drm_or_older_caps_as_downstream_asks() -> Result<(), Failed> {
    let src = "videotestsrc num-buffers=10 ! video/x-raw,format=NV12,width=640,height=480";
    for (downstream, want) in [
        ("fakesink", ("DMA_DRM", Some("NV12"), true)),
        (
            "video/x-raw(memory:DMABuf),format=DMA_DRM ! fakesink",
            ("DMA_DRM", Some("NV12"), true),
        ),
        (
            "video/x-raw(memory:DMABuf),format=NV12 ! fakesink",
            ("NV12", None, true),
        ),
        ("video/x-raw,format=NV12 ! fakesink", ("NV12", None, false)),
    ] {
        let run = run_pipeline(
            &format!("{src} ! dmaheapupload name=up heap=system ! {downstream}"),
            Duration::from_secs(60),
        )?;
        let caps = run.upload_src_caps.ok_or("no caps")?;
        let got = describe(&caps);
        let want = (want.0.to_owned(), want.1.map(str::to_owned), want.2);
        ensure!(got == want, "downstream {downstream:?}: negotiated {caps}");
        let stats = run.stats.ok_or("no stats")?;
        ensure!(
            stat(&stats, "passthrough") == 10 && stat(&stats, "copies") == 0,
            "{downstream:?}: {stats}"
        );
        println!("{downstream}: {caps}");
    }
    // DMA_DRM in: the second element's sink takes it and passes the first one's heap
    // buffers on.
    let run = run_pipeline(
        &format!(
            "{src} ! dmaheapupload name=first heap=system \
             ! video/x-raw(memory:DMABuf),format=DMA_DRM,drm-format=NV12 \
             ! dmaheapupload name=up heap=system ! fakesink"
        ),
        Duration::from_secs(60),
    )?;
    let up = run.stats_by_element.get("up").ok_or("no stats from up")?;
    ensure!(
        stat(up, "passthrough") == 10 && stat(up, "copies") == 0,
        "DMA_DRM input was not passed through: {up}"
    );
    Ok(())
}

/// vicodec's decoder writes into dmaheapupload's CMA pool, and the dmaheapupload → kmssink
/// link is DMA_DRM (vkms on 7.x scans out YU12): zero copies from decoder to display.
fn dma_drm_from_the_decoder_to_kmssink() -> Result<(), Failed> {
    let heap = dmaheap_testkit::cma_heap().expect("need checked");
    let frames = 30;
    let proof = KmsProof::start();
    let at_sink = Exporters::default();
    let decoder_caps = std::sync::Arc::new(std::sync::Mutex::new(None));
    let run = run_pipeline_with(
        &format!(
            "videotestsrc num-buffers={frames} ! video/x-raw,width=1280,height=720,format=I420 \
             ! v4l2fwhtenc ! v4l2fwhtdec name=dec capture-io-mode=dmabuf-import \
             ! dmaheapupload name=up heap=cma ! kmssink name=kms driver-name=vkms sync=false"
        ),
        Duration::from_secs(300),
        |p| {
            at_sink.watch(p, "kms");
            let seen = std::sync::Arc::clone(&decoder_caps);
            let pad = p.by_name("dec").and_then(|d| d.static_pad("src")).unwrap();
            pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
                if let Some(gst::EventView::Caps(c)) = info.event().map(|e| e.view()) {
                    *seen.lock().unwrap() = Some(c.caps_owned());
                }
                gst::PadProbeReturn::Ok
            });
        },
    )?;
    let caps = run
        .upload_src_caps
        .ok_or("no caps on dmaheapupload's src")?;
    let (format, drm_format, dmabuf) = describe(&caps);
    ensure!(
        dmabuf && format == "DMA_DRM" && drm_format.as_deref() == Some("YU12"),
        "dmaheapupload → kmssink is not DMA_DRM YU12 (LINEAR): {caps}"
    );
    let stats = run.stats.ok_or("no stats")?;
    ensure!(
        stat(&stats, "copies") == 0,
        "the decoder did not write into dmaheapupload's pool: {stats}"
    );
    let through = decoded_frames(&run.dropped, "dec", &stats, frames)?;
    let (reached, others) = at_sink.other_than(&heap);
    ensure!(
        reached as u64 == through && others.is_empty(),
        "{reached} buffers reached kmssink for {through} frames; not {heap} dma-bufs: {others:?}"
    );
    let said = proof.check(&stats, through)?;
    let decoder_caps = decoder_caps.lock().unwrap().clone();
    println!(
        "v4l2fwhtdec → dmaheapupload: {}\ndmaheapupload → kmssink: {caps}\n{stats}\n{reached} \
         buffers at kmssink, all {heap} dma-bufs\n{said}",
        decoder_caps.map(|c| c.to_string()).unwrap_or_default()
    );
    Ok(())
}

/// GStreamer 1.28's GstVideoDmabufPool keeps a GstDmaBufAllocator that can allocate on its
/// own (no CUSTOM_ALLOC flag) instead of putting its udmabuf allocator in: configured with
/// the dmaheap allocator it gives heap dma-bufs, 256-byte aligned as it wants.
fn video_dmabuf_pool_allocates_from_the_heap() -> Result<(), Failed> {
    init();
    let pool = gst_video::VideoDmabufPool::new().ok_or("no GstVideoDmabufPool here")?;
    let alloc = DmaHeapAllocator::with_heaps("system")?;
    let caps: gst::Caps = "video/x-raw,format=NV12,width=1920,height=1080".parse()?;
    let mut config = pool.config();
    config.set_params(Some(&caps), 0, 2, 4);
    config.set_allocator(Some(&alloc), None);
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT);
    // It raises the alignment (and says so by refusing once); the adjusted configuration is
    // taken as decoders do.
    if pool.set_config(config).is_err() {
        let adjusted = pool.config();
        adjusted.validate_params(Some(&caps), 0, 2, 4)?;
        pool.set_config(adjusted)?;
    }
    let config = pool.config();
    let (kept, params) = config.allocator().ok_or("no allocator in the config")?;
    let kept = kept.ok_or("no allocator in the config")?;
    ensure!(
        kept.is::<DmaHeapAllocator>(),
        "GstVideoDmabufPool replaced the dmaheap allocator with {}",
        kept.type_().name()
    );
    ensure!(
        params.align() >= 255,
        "alignment {} < 256",
        params.align() + 1
    );
    pool.set_active(true)?;
    let mut fds = Vec::new();
    let bufs: Vec<gst::Buffer> = (0..4)
        .map(|_| pool.acquire_buffer(None))
        .collect::<Result<_, _>>()?;
    for buf in &bufs {
        let mem = buf.peek_memory(0);
        let fd = dmabuf_fd(mem)?;
        let (exporter, _) = fdinfo(fd)?;
        ensure!(
            exporter == "system",
            "exported by {exporter}, not the system heap"
        );
        let info = heap_memory_info(mem).ok_or("not dmaheap memory")?;
        ensure!(info.is_dmabuf, "{info:?}");
        let meta = buf.meta::<gst_video::VideoMeta>().ok_or("no video meta")?;
        ensure!(
            meta.stride().iter().all(|s| s % 256 == 0),
            "strides {:?} not 256-byte aligned",
            meta.stride()
        );
        fds.push(fd);
    }
    println!(
        "GstVideoDmabufPool with the dmaheap allocator: 4 buffers, dma-bufs exported by the \
         system heap (fds {fds:?}), strides {:?}",
        bufs[0]
            .meta::<gst_video::VideoMeta>()
            .map(|m| m.stride().to_vec())
    );
    drop(bufs);
    pool.set_active(false)?;
    Ok(())
}
