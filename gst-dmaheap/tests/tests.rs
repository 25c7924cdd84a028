//! gst-check tests of the allocator, the pool and `dmaheapupload`.
//!
//! They run on any machine: without DMA-BUF heaps the memory comes from the memfd fallback (fd
//! memory); where heaps exist it is dma-buf memory. The assertions hold for both, and say which
//! they saw. `real_heap_gst.rs` has the tests that need real heaps and devices.

mod common;

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::Duration;

use common::{init, run_pipeline, stat};
use gst::prelude::*;
use gst_video::prelude::*;
use gstdmaheap::{DmaHeapAllocator, DmaHeapBufferPool, heap_memory_info, is_heap_memory};

/// A harness around one `dmaheapupload` with `props` set, playing, with `caps` on its input.
fn harness(props: &[(&str, &str)], caps: &str) -> gst_check::Harness {
    init();
    let mut h = gst_check::Harness::new("dmaheapupload");
    let element = h.element().unwrap();
    for (name, value) in props {
        element.set_property_from_str(name, value);
    }
    h.play();
    h.set_src_caps_str(caps);
    h
}

fn allocation_query(h: &gst_check::Harness, caps: &str) -> gst::query::Allocation<gst::Query> {
    let caps = gst::Caps::from_str(caps).unwrap();
    let mut q = gst::query::Allocation::new(Some(&caps), true);
    assert!(
        h.srcpad().unwrap().peer_query(&mut q),
        "dmaheapupload did not answer the ALLOCATION query"
    );
    q
}

use std::str::FromStr;

fn memory_fd(mem: &gst::MemoryRef) -> i32 {
    mem.downcast_memory_ref::<gst_allocators::FdMemory>()
        .expect("heap memory is fd memory")
        .fd()
}

/// Heap memory must say what it is: dma-buf memory exactly when the heap buffer is a dma-buf.
fn assert_honest_heap_memory(mem: &gst::MemoryRef) {
    let info = heap_memory_info(mem).expect("heap memory");
    assert!(mem.is_memory_type::<gst_allocators::FdMemory>());
    assert_eq!(
        mem.is_memory_type::<gst_allocators::DmaBufMemory>(),
        info.is_dmabuf,
        "gst_is_dmabuf_memory() must match the buffer's origin {}",
        info.origin
    );
}

fn pool_config(
    pool: &DmaHeapBufferPool,
    caps: &str,
    min: u32,
    max: u32,
    options: &[&str],
    align: Option<gst_video::VideoAlignment>,
) {
    let caps = gst::Caps::from_str(caps).unwrap();
    let mut config = pool.config();
    config.set_params(Some(&caps), 0, min, max);
    for o in options {
        config.add_option(o);
    }
    if let Some(align) = align {
        config.set_video_alignment(&align);
    }
    // As decoders and GstBaseSrc do: an adjusted configuration is read back, validated
    // against what was asked for, and set again.
    if pool.set_config(config).is_err() {
        let adjusted = pool.config();
        adjusted
            .validate_params(Some(&caps), 0, min, max)
            .expect("the adjusted configuration is still valid");
        pool.set_config(adjusted)
            .expect("pool accepts its adjusted configuration");
    }
}

#[test]
fn plugin_registers_the_element_and_the_named_allocator() {
    init();
    assert!(gst::ElementFactory::find("dmaheapupload").is_some());
    let alloc = gst::Allocator::find(Some(gstdmaheap::ALLOCATOR_NAME))
        .expect("gst_allocator_find(\"dmaheap\")");
    let alloc = alloc
        .downcast::<DmaHeapAllocator>()
        .expect("the registered allocator is a GstDmaHeapAllocator");
    assert!(alloc.is::<gst_allocators::DmaBufAllocator>());
    assert!(
        !alloc
            .object_flags()
            .contains(gst::ObjectFlags::from_bits_retain(
                gst::ffi::GST_ALLOCATOR_FLAG_CUSTOM_ALLOC
            )),
        "the allocator must be usable through gst_allocator_alloc()"
    );
    // Any element can allocate from it with the generic API, prefix and padding included.
    let params = gst::AllocationParams::new(gst::MemoryFlags::empty(), 63, 128, 64);
    let mem = alloc
        .alloc(100_000, Some(&params))
        .expect("gst_allocator_alloc");
    assert_eq!(mem.size(), 100_000);
    assert_eq!(mem.offset(), 128);
    assert!(mem.maxsize() >= 100_000 + 128 + 64);
    assert_honest_heap_memory(&mem);
    let mut mem = mem;
    mem.get_mut().unwrap().map_writable().unwrap()[99_999] = 7;
    assert_eq!(mem.map_readable().unwrap()[99_999], 7);
}

#[test]
fn allocation_query_is_answered_with_the_heap_pool_and_allocator() {
    let caps = "video/x-raw,format=NV12,width=320,height=240,framerate=30/1";
    let mut h = harness(&[], caps);
    // Downstream (the harness) supports crop meta and video meta: both must reach upstream
    // (video meta only because downstream reads it: see dmaheapupload.rs).
    h.add_propose_allocation_meta(gst_video::VideoCropMeta::meta_api(), None);
    h.add_propose_allocation_meta(gst_video::VideoMeta::meta_api(), None);
    // Renegotiate so the element sees what downstream proposes.
    h.set_src_caps_str("video/x-raw,format=NV12,width=320,height=240,framerate=25/1");
    let q = allocation_query(
        &h,
        "video/x-raw,format=NV12,width=320,height=240,framerate=25/1",
    );

    let (pool, size, _min, _max) = q.allocation_pools().next().expect("a pool is proposed");
    let pool = pool.expect("the pool is set");
    assert!(
        pool.is::<DmaHeapBufferPool>(),
        "proposed pool is a {}",
        pool.type_()
    );
    assert!(size as usize >= 320 * 240 * 3 / 2);
    let (alloc, _params) = q
        .allocation_params()
        .next()
        .expect("an allocator is proposed");
    assert!(alloc.expect("allocator set").is::<DmaHeapAllocator>());
    assert!(q.find_allocation_meta::<gst_video::VideoMeta>().is_some());
    assert!(
        q.find_allocation_meta::<gst_video::VideoCropMeta>()
            .is_some(),
        "downstream's metas are proposed upstream"
    );
    let config = pool.config();
    let (_, _, _, _) = config.params().unwrap();
    let (alloc, _) = config.allocator().unwrap();
    assert!(alloc.unwrap().is::<DmaHeapAllocator>());
}

#[test]
fn downstream_size_minimum_and_alignment_are_merged() {
    init();
    let caps_str = "video/x-raw,format=I420,width=640,height=480,framerate=30/1";
    let mut h = gst_check::Harness::new("dmaheapupload");
    h.element().unwrap().set_property("min-buffers", 1u32);
    // Play downstream: answer the element's ALLOCATION query with a bigger size, a minimum of
    // 5, 32-byte stride alignment and video meta support.
    let element = h.element().unwrap();
    let src = element.static_pad("src").unwrap();
    src.add_probe(
        gst::PadProbeType::QUERY_DOWNSTREAM | gst::PadProbeType::PULL,
        |_, info| {
            if let Some(gst::QueryViewMut::Allocation(q)) = info.query_mut().map(|q| q.view_mut()) {
                let caps = q.get_owned().0.unwrap();
                let down_pool = gst_video::VideoBufferPool::new();
                let mut config = down_pool.config();
                config.set_params(Some(&caps), 600_000, 5, 0);
                config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
                config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT);
                let mut align = gst_video::VideoAlignment::default();
                align.stride_align_mut().fill(31);
                config.set_video_alignment(&align);
                down_pool.set_config(config).unwrap();
                q.add_allocation_pool(Some(&down_pool), 600_000, 5, 0);
                q.add_allocation_meta::<gst_video::VideoMeta>(None);
                let params = gst::AllocationParams::new(gst::MemoryFlags::empty(), 15, 0, 0);
                q.add_allocation_param(None::<&gst::Allocator>, params);
            }
            gst::PadProbeReturn::Ok
        },
    );
    h.play();
    h.set_src_caps_str(caps_str);
    let q = allocation_query(&h, caps_str);
    let (pool, size, min, _) = q.allocation_pools().next().unwrap();
    assert_eq!(size, 600_000, "downstream's larger size wins");
    assert_eq!(
        min, 5,
        "downstream's larger minimum wins over min-buffers=1"
    );
    let (_, params) = q.allocation_params().next().unwrap();
    assert_eq!(
        params.align(),
        15,
        "downstream's allocation alignment is passed up"
    );

    // Upstream that writes with a video meta gets downstream's stride alignment.
    let pool = pool.unwrap().downcast::<DmaHeapBufferPool>().unwrap();
    let mut config = pool.config();
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
    pool.set_config(config).unwrap();
    pool.set_active(true).unwrap();
    let buf = pool.acquire_buffer(None).unwrap();
    let meta = buf.meta::<gst_video::VideoMeta>().expect("video meta");
    for stride in meta.stride() {
        assert_eq!(stride % 32, 0, "stride {stride} is not 32-byte aligned");
    }
    assert!(buf.size() >= 600_000);
    drop(buf);
    pool.set_active(false).unwrap();
}

#[test]
fn video_meta_strides_and_offsets_for_nv12_i420_rgba_and_odd_sizes() {
    init();
    // (format, width, height, strides, offsets, size), written out from GStreamer's layout
    // rules: rows padded to 4 bytes, chroma heights rounded up, planes one after another.
    type Case = (
        &'static str,
        u32,
        u32,
        &'static [i32],
        &'static [usize],
        usize,
    );
    let cases: &[Case] = &[
        (
            "NV12",
            1920,
            1080,
            &[1920, 1920],
            &[0, 2_073_600],
            3_110_400,
        ),
        (
            "NV12",
            1921,
            1081,
            &[1924, 1924],
            &[0, 2_081_768],
            3_122_652,
        ),
        (
            "I420",
            1920,
            1080,
            &[1920, 960, 960],
            &[0, 2_073_600, 2_592_000],
            3_110_400,
        ),
        (
            "I420",
            1921,
            1081,
            &[1924, 964, 964],
            &[0, 2_081_768, 2_603_292],
            3_124_816,
        ),
        ("RGBA", 1920, 1080, &[7680], &[0], 8_294_400),
        ("RGBA", 1921, 1081, &[7684], &[0], 8_306_404),
    ];
    for &(format, w, h, strides, offsets, size) in cases {
        let caps = format!("video/x-raw,format={format},width={w},height={h}");
        let pool = DmaHeapBufferPool::new();
        pool_config(
            &pool,
            &caps,
            1,
            0,
            &[gst_video::BUFFER_POOL_OPTION_VIDEO_META],
            None,
        );
        pool.set_active(true).unwrap();
        let buf = pool.acquire_buffer(None).unwrap();
        let meta = buf.meta::<gst_video::VideoMeta>().expect("video meta");
        assert_eq!(meta.stride(), strides, "{format} {w}x{h} strides");
        assert_eq!(meta.offset(), offsets, "{format} {w}x{h} offsets");
        assert_eq!((meta.width(), meta.height()), (w, h));
        assert_eq!(buf.size(), size, "{format} {w}x{h} size");
        assert_honest_heap_memory(buf.peek_memory(0));
        // The last byte of the last plane is writable through a mapped frame.
        let info = gst_video::VideoInfo::from_caps(&gst::Caps::from_str(&caps).unwrap()).unwrap();
        let mut frame = gst_video::VideoFrame::from_buffer_writable(buf, &info).unwrap();
        let last = frame.n_planes() - 1;
        let data = frame.plane_data_mut(last).unwrap();
        let n = data.len();
        data[n - 1] = 0xab;
        drop(frame);
        pool.set_active(false).unwrap();
    }
}

/// The layout GStreamer's own video pool gives for the same configuration: the buffer, its
/// meta's strides, offsets and alignment.
type StockLayout = (gst::Buffer, Vec<i32>, Vec<usize>, gst_video::VideoAlignment);

fn stock_layout(
    caps: &gst::Caps,
    options: &[&str],
    align: Option<&gst_video::VideoAlignment>,
) -> Option<StockLayout> {
    let info = gst_video::VideoInfo::from_caps(caps).ok()?;
    let pool = gst_video::VideoBufferPool::new();
    let mut config = pool.config();
    config.set_params(Some(caps), info.size() as u32, 1, 0);
    for o in options {
        config.add_option(o);
    }
    if let Some(align) = align {
        config.set_video_alignment(align);
    }
    pool.set_config(config).ok()?;
    pool.set_active(true).ok()?;
    let buf = pool.acquire_buffer(None).ok()?;
    let meta = buf.meta::<gst_video::VideoMeta>()?;
    let (strides, offsets) = (meta.stride().to_vec(), meta.offset().to_vec());
    let alignment = meta.alignment();
    Some((buf, strides, offsets, alignment))
}

#[test]
fn every_raw_format_gets_the_video_meta_gstreamer_would_give() {
    init();
    let mut checked = 0;
    let mut unmappable = Vec::new();
    let mut no_layout = Vec::new();
    for format in gst_video::VideoFormat::iter_raw() {
        for (w, h) in [(1921u32, 1081u32), (64, 64), (2, 2)] {
            let Ok(base) = gst_video::VideoInfo::builder(format, w, h).build() else {
                no_layout.push(format!("{format} {w}x{h}"));
                continue;
            };
            let caps = base.to_caps().unwrap();
            for aligned in [false, true] {
                let what = format!("{format} {w}x{h} aligned={aligned}");
                let mut options = vec![gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str()];
                let mut align = gst_video::VideoAlignment::default();
                if aligned {
                    align.set_padding_top(2);
                    align.set_padding_left(8);
                    align.set_padding_bottom(6);
                    align.set_padding_right(24);
                    // A different mask per plane: both pools apply their union to every plane.
                    align.stride_align_mut().copy_from_slice(&[63, 15, 31, 7]);
                    options.push(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT);
                }
                let align = aligned.then_some(align);
                // GStreamer's own video pool is the reference.
                let Some((stock, strides, offsets, stock_alignment)) =
                    stock_layout(&caps, &options, align.as_ref())
                else {
                    no_layout.push(what);
                    continue;
                };
                let pool = DmaHeapBufferPool::new();
                pool_config(&pool, caps.to_string().as_str(), 1, 0, &options, align);
                pool.set_active(true)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let buf = pool.acquire_buffer(None).unwrap();
                let meta = buf.meta::<gst_video::VideoMeta>().expect("video meta");
                assert_eq!(meta.format(), format, "{what}");
                assert_eq!((meta.width(), meta.height()), (w, h), "{what}");
                assert_eq!(meta.n_planes(), base.n_planes(), "{what}");
                assert_eq!(meta.stride(), strides.as_slice(), "{what} strides");
                assert_eq!(meta.offset(), offsets.as_slice(), "{what} offsets");
                // The meta carries the padding the pool applied (GstVideoBufferPool 1.22
                // leaves it at zero, newer ones set it): plane heights include it.
                let alignment = meta.alignment();
                let fields = |a: &gst_video::VideoAlignment| {
                    (
                        a.padding_top(),
                        a.padding_bottom(),
                        a.padding_left(),
                        a.padding_right(),
                        *a.stride_align(),
                    )
                };
                if let Some(mut applied) = align {
                    let mask = applied.stride_align().iter().fold(0, |m, s| m | s);
                    applied.stride_align_mut().fill(mask);
                    let mut info = base.clone();
                    info.align(&mut applied).unwrap();
                    assert_eq!(
                        fields(&alignment),
                        fields(&applied),
                        "{what} meta alignment"
                    );
                    let tiled = gst_video::VideoFormatInfo::from_format(format)
                        .flags()
                        .contains(gst_video::VideoFormatFlags::TILED);
                    if let (false, Ok(heights)) = (tiled, meta.plane_height()) {
                        assert!(
                            heights[0] >= h + applied.padding_top() + applied.padding_bottom(),
                            "{what} plane heights {heights:?} lack the padding"
                        );
                    }
                } else {
                    assert_eq!(fields(&alignment), fields(&Default::default()), "{what}");
                }
                if stock_alignment.padding_bottom() != 0 {
                    assert_eq!(fields(&alignment), fields(&stock_alignment), "{what}");
                }
                let mut expected = base.clone();
                if let Some(mut a) = align {
                    expected.align(&mut a).unwrap();
                }
                assert!(buf.size() >= expected.size(), "{what} size");
                let flags = gst_video::VideoFormatInfo::from_format(format).flags();
                if aligned
                    && !flags.intersects(
                        gst_video::VideoFormatFlags::TILED | gst_video::VideoFormatFlags::PALETTE,
                    )
                {
                    for s in meta.stride() {
                        assert_eq!(s % 64, 0, "{what}: stride {s}");
                    }
                }
                if gst_video::VideoFrameRef::from_buffer_ref_readable(buf.as_ref(), &base).is_err()
                {
                    // Some tiled layouts with padding cannot be mapped: not from this pool,
                    // and not from GStreamer's own either.
                    assert!(
                        gst_video::VideoFrameRef::from_buffer_ref_readable(stock.as_ref(), &base)
                            .is_err(),
                        "{what}: GstVideoBufferPool's frame maps, ours does not"
                    );
                    unmappable.push(what);
                }
                drop(buf);
                pool.set_active(false).unwrap();
                checked += 1;
            }
        }
    }
    println!(
        "{checked} format/size/alignment combinations match GstVideoBufferPool; \
         GStreamer cannot map {unmappable:?}; no layout for {no_layout:?}"
    );
    assert!(checked > 500, "only {checked} checked");
    assert!(
        unmappable.iter().all(|w| w.contains("aligned=true")),
        "unaligned frames must map: {unmappable:?}"
    );
}

#[test]
fn pool_buffers_are_heap_memory_and_recycle_the_same_fds() {
    init();
    let pool = DmaHeapBufferPool::new();
    pool_config(
        &pool,
        "video/x-raw,format=NV12,width=640,height=480",
        3,
        3,
        &[],
        None,
    );
    pool.set_active(true).unwrap();
    let fds = |bufs: &[gst::Buffer]| -> BTreeSet<i32> {
        bufs.iter().map(|b| memory_fd(b.peek_memory(0))).collect()
    };
    let first: Vec<gst::Buffer> = (0..3).map(|_| pool.acquire_buffer(None).unwrap()).collect();
    for b in &first {
        assert_eq!(b.n_memory(), 1);
        assert_honest_heap_memory(b.peek_memory(0));
        assert!(is_heap_memory(b.peek_memory(0)));
    }
    let fds1 = fds(&first);
    assert_eq!(fds1.len(), 3);
    drop(first);
    for _ in 0..10 {
        let again: Vec<gst::Buffer> = (0..3).map(|_| pool.acquire_buffer(None).unwrap()).collect();
        assert_eq!(fds(&again), fds1, "the pool hands out the same fds again");
    }
    let stats = pool.stats();
    assert_eq!(stat(&stats, "prewarmed"), 3, "{stats}");
    assert_eq!(stat(&stats, "pool-misses"), 0, "{stats}");
    assert_eq!(stat(&stats, "pool-hits"), 33, "{stats}");
    assert_eq!(stat(&stats, "heap-buffers"), 3, "{stats}");
    pool.set_active(false).unwrap();
    assert_eq!(stat(&pool.stats(), "heap-buffers"), 0);
}

/// The data starts after the prefix at the alignment asked for, as GStreamer's system memory
/// does.
#[test]
fn allocator_honours_prefix_alignment_and_zeroing() {
    init();
    let allocator = DmaHeapAllocator::new();
    let params = gst::AllocationParams::new(
        gst::MemoryFlags::ZERO_PREFIXED | gst::MemoryFlags::ZERO_PADDED,
        63,
        10,
        20,
    );
    let mem = allocator.alloc(1000, Some(&params)).unwrap();
    assert_eq!(mem.size(), 1000);
    assert_eq!(
        mem.offset(),
        64,
        "the prefix of 10 rounded up to the 64-byte alignment"
    );
    assert!(mem.maxsize() >= 64 + 1000 + 20);
    let map = mem.map_readable().unwrap();
    assert_eq!(map.as_ptr() as usize % 64, 0, "data at {:p}", map.as_ptr());
}

/// GstBufferPool's contract: a configuration the pool had to change is refused (FALSE) and
/// the changed one is left to read back, validate and set again; nothing changes silently.
#[test]
fn set_config_says_what_it_changed() {
    init();
    let caps = gst::Caps::from_str("video/x-raw,format=RGBA,width=320,height=240").unwrap();
    let pool = DmaHeapBufferPool::new();
    pool.set_property("prewarm", 6u32);
    let mut config = pool.config();
    config.set_params(Some(&caps), 0, 2, 0);
    assert!(
        pool.set_config(config).is_err(),
        "min-buffers raised to prewarm, yet TRUE"
    );
    let adjusted = pool.config();
    assert_eq!(adjusted.params().map(|p| p.2), Some(6));
    adjusted.validate_params(Some(&caps), 0, 2, 0).unwrap();
    pool.set_config(adjusted).unwrap();

    // Another allocator is not taken: the pool keeps its heap allocator, and says so.
    let config = pool.config();
    let sysmem = gst::Allocator::find(None).unwrap();
    config.set_allocator(Some(&sysmem), None);
    assert!(pool.set_config(config).is_err());
    let (allocator, _) = pool.config().allocator().unwrap();
    assert!(allocator.unwrap().is::<DmaHeapAllocator>());
    pool.set_config(pool.config()).unwrap();
    pool.set_active(true).unwrap();
    let buf = pool.acquire_buffer(None).unwrap();
    assert!(is_heap_memory(buf.peek_memory(0)));
    drop(buf);
    pool.set_active(false).unwrap();
}

#[test]
fn prewarm_fills_the_pool_before_the_first_frame() {
    init();
    let pool = DmaHeapBufferPool::new();
    pool.set_property("prewarm", 6u32);
    pool.set_property_from_str("qos", "realtime");
    pool_config(
        &pool,
        "video/x-raw,format=RGBA,width=320,height=240",
        2,
        0,
        &[],
        None,
    );
    pool.set_active(true).unwrap();
    let stats = pool.stats();
    assert_eq!(stat(&stats, "prewarmed"), 6, "{stats}");
    assert_eq!(stat(&stats, "heap-buffers"), 6, "{stats}");
    let held: Vec<gst::Buffer> = (0..6).map(|_| pool.acquire_buffer(None).unwrap()).collect();
    let stats = pool.stats();
    assert_eq!(
        stat(&stats, "pool-misses"),
        0,
        "6 acquires, 0 allocations: {stats}"
    );
    drop(held);
    pool.set_active(false).unwrap();
}

#[test]
fn realtime_pools_grow_from_heapcore_spares_under_the_process_budget() {
    init();
    let pool = DmaHeapBufferPool::new();
    pool.set_property("prewarm", 2u32);
    pool.set_property_from_str("qos", "realtime");
    pool_config(
        &pool,
        "video/x-raw,format=RGBA,width=320,height=240",
        2,
        0,
        &[],
        None,
    );
    pool.set_active(true).unwrap();
    let registry = heapcore::PoolRegistry::process();
    let heap_pool = |registry: &heapcore::PoolRegistry| {
        let name = format!("gst:{}", pool.name());
        registry.stats().pools.into_iter().find(|p| p.name == name)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // The heapcore pool behind it keeps 2 spares ready beyond the 2 the GStreamer pool holds.
    while heap_pool(&registry).is_none_or(|p| p.buffers_free < 2) {
        assert!(
            std::time::Instant::now() < deadline,
            "no spares: {:?}",
            heap_pool(&registry)
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let held: Vec<gst::Buffer> = (0..4).map(|_| pool.acquire_buffer(None).unwrap()).collect();
    let stats = heap_pool(&registry).expect("the pool is listed by the process registry");
    assert_eq!(stats.qos, "realtime");
    assert_eq!(
        stats.hot_path_allocs, 0,
        "growing took the spares: {stats:?}"
    );
    assert_eq!(stats.buffers_out, 4, "{stats:?}");
    let (used, cap) = registry
        .global_budget()
        .expect("the process registry has a budget");
    assert!(used >= 4 * stats.buffer_size && used <= cap);
    drop(held);
    pool.set_active(false).unwrap();
    assert!(
        heap_pool(&registry).is_none(),
        "a stopped pool leaves the registry"
    );
}

#[test]
fn background_pools_free_idle_buffers_above_min() {
    init();
    let pool = DmaHeapBufferPool::new();
    pool.set_property_from_str("qos", "background");
    pool_config(
        &pool,
        "video/x-raw,format=RGBA,width=320,height=240",
        1,
        0,
        &[],
        None,
    );
    pool.set_active(true).unwrap();
    let held: Vec<gst::Buffer> = (0..5).map(|_| pool.acquire_buffer(None).unwrap()).collect();
    let fds: BTreeSet<i32> = held.iter().map(|b| memory_fd(b.peek_memory(0))).collect();
    assert_eq!(fds.len(), 5);
    assert!(fds.iter().all(|fd| fd_is_open(*fd)));
    drop(held);
    // The memory itself is given back: 4 of the 5 fds are closed (the kernel frees a
    // buffer with its last fd), not parked in a pool behind the GStreamer pool.
    let open: Vec<i32> = fds.iter().copied().filter(|fd| fd_is_open(*fd)).collect();
    assert_eq!(open.len(), 1, "fds still open: {open:?} of {fds:?}");
    let stats = pool.stats();
    assert_eq!(
        stat(&stats, "heap-buffers"),
        1,
        "trimmed to min-buffers: {stats}"
    );
    assert_eq!(stat(&stats, "trimmed"), 4, "{stats}");
    pool.set_active(false).unwrap();
    assert!(!fd_is_open(open[0]), "deactivating frees the last one");
}

/// Whether `fd` is open in this process and refers to buffer memory (a dma-buf or memfd), so
/// a number reused for something else does not count.
fn fd_is_open(fd: i32) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok_and(|target| {
        let target = target.to_string_lossy();
        target.starts_with("/dmabuf:") || target.starts_with("/memfd:")
    })
}

#[test]
fn caps_renegotiation_mid_stream_gives_a_new_pool() {
    let a = "video/x-raw,format=NV12,width=320,height=240,framerate=30/1";
    let b = "video/x-raw,format=RGBA,width=640,height=360,framerate=30/1";
    let mut h = harness(&[], a);
    let pool_a = allocation_query(&h, a)
        .allocation_pools()
        .next()
        .unwrap()
        .0
        .unwrap();
    pool_a.set_active(true).unwrap();
    let buf = pool_a.acquire_buffer(None).unwrap();
    h.push(buf).unwrap();
    let out = h.pull().unwrap();
    assert!(is_heap_memory(out.peek_memory(0)));
    drop(out);

    h.set_src_caps_str(b);
    let q = allocation_query(&h, b);
    let (pool_b, size_b, _, _) = q.allocation_pools().next().unwrap();
    let pool_b = pool_b.unwrap();
    assert_ne!(pool_a, pool_b, "new caps, new pool");
    assert_eq!(size_b as usize, 640 * 360 * 4);
    let (caps_b, ..) = pool_b.config().params().unwrap();
    assert_eq!(caps_b.unwrap(), gst::Caps::from_str(b).unwrap());
    pool_b.set_active(true).unwrap();
    let buf = pool_b.acquire_buffer(None).unwrap();
    h.push(buf).unwrap();
    let out = h.pull().unwrap();
    assert_eq!(out.size(), 640 * 360 * 4);
    let stats: gst::Structure = h.element().unwrap().property("stats");
    assert_eq!(stat(&stats, "passthrough"), 2, "{stats}");
    assert_eq!(stat(&stats, "copies"), 0, "{stats}");
    assert_eq!(stat(&stats, "pools"), 2, "{stats}");
    pool_a.set_active(false).unwrap();
}

#[test]
fn buffers_upstream_made_elsewhere_are_copied_into_heap_buffers() {
    let caps = "video/x-raw,format=I420,width=64,height=48,framerate=30/1";
    let mut h = harness(&[], caps);
    let info = gst_video::VideoInfo::from_caps(&gst::Caps::from_str(caps).unwrap()).unwrap();
    let pattern: Vec<u8> = (0..info.size()).map(|i| (i * 7 % 251) as u8).collect();
    let mut input = gst::Buffer::from_mut_slice(pattern.clone());
    {
        let b = input.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_mseconds(40));
        b.set_duration(gst::ClockTime::from_mseconds(33));
        b.set_flags(gst::BufferFlags::DISCONT);
        gst_video::VideoCropMeta::add(b, (2, 2, 60, 44));
    }
    h.push(input).unwrap();
    let out = h.pull().unwrap();
    assert!(
        is_heap_memory(out.peek_memory(0)),
        "copied into heap memory"
    );
    assert_eq!(out.pts(), Some(gst::ClockTime::from_mseconds(40)));
    assert_eq!(out.duration(), Some(gst::ClockTime::from_mseconds(33)));
    assert!(out.flags().contains(gst::BufferFlags::DISCONT));
    assert!(
        out.meta::<gst_video::VideoCropMeta>().is_some(),
        "crop meta kept"
    );
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(out.as_ref(), &info).unwrap();
    let mut offset = 0;
    for plane in 0..frame.n_planes() {
        let (pw, ph) = (
            frame.comp_width(plane) as usize,
            frame.comp_height(plane) as usize,
        );
        let stride = frame.plane_stride()[plane as usize] as usize;
        let data = frame.plane_data(plane).unwrap();
        let in_stride = info.stride()[plane as usize] as usize;
        for row in 0..ph {
            assert_eq!(
                &data[row * stride..row * stride + pw],
                &pattern[offset + row * in_stride..offset + row * in_stride + pw],
                "plane {plane} row {row}"
            );
        }
        offset = info.offset().get(plane as usize + 1).copied().unwrap_or(0);
    }
    drop(frame);
    let stats: gst::Structure = h.element().unwrap().property("stats");
    assert_eq!(stat(&stats, "copies"), 1, "{stats}");
    assert_eq!(stat(&stats, "passthrough"), 0, "{stats}");
}

#[test]
fn a_full_max_buffers_pool_blocks_until_a_buffer_returns() {
    let caps = "video/x-raw,format=RGBA,width=64,height=64,framerate=30/1";
    let mut h = harness(&[("max-buffers", "2")], caps);
    let size = 64 * 64 * 4;
    // Upstream ignores the pool: each push is copied into one of the two heap buffers, which
    // the harness holds until pulled.
    h.push(gst::Buffer::with_size(size).unwrap()).unwrap();
    h.push(gst::Buffer::with_size(size).unwrap()).unwrap();
    assert_eq!(h.buffers_in_queue(), 2);
    let element = h.element().unwrap();
    let sinkpad = element.static_pad("sink").unwrap();
    let (tx, rx) = mpsc::channel();
    let pusher = std::thread::spawn(move || {
        let r = sinkpad.chain(gst::Buffer::with_size(size).unwrap());
        tx.send(r).unwrap();
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "the third copy must wait for a free buffer"
    );
    drop(h.pull().unwrap()); // one buffer back into the pool
    let r = rx.recv_timeout(Duration::from_secs(5)).expect("unblocked");
    assert_eq!(r, Ok(gst::FlowSuccess::Ok));
    pusher.join().unwrap();
}

#[test]
fn a_full_max_buffers_pool_errors_when_configured_to() {
    let caps = "video/x-raw,format=RGBA,width=64,height=64,framerate=30/1";
    let mut h = harness(&[("max-buffers", "2"), ("on-exhaustion", "error")], caps);
    let size = 64 * 64 * 4;
    let element = h.element().unwrap();
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    h.push(gst::Buffer::with_size(size).unwrap()).unwrap();
    h.push(gst::Buffer::with_size(size).unwrap()).unwrap();
    let r = h.push(gst::Buffer::with_size(size).unwrap());
    assert_eq!(r, Err(gst::FlowError::Error));
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(1), &[gst::MessageType::Error])
        .expect("an error message on the bus");
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    let text = err.error().to_string();
    assert!(
        text.contains("exhausted") && text.contains("max-buffers"),
        "unclear error: {text}"
    );
}

#[test]
fn a_flush_unblocks_a_copy_waiting_for_a_full_pool() {
    let caps = "video/x-raw,format=RGBA,width=64,height=64,framerate=30/1";
    let mut h = harness(&[("max-buffers", "1")], caps);
    let size = 64 * 64 * 4;
    h.push(gst::Buffer::with_size(size).unwrap()).unwrap(); // held by the harness
    let sinkpad = h.element().unwrap().static_pad("sink").unwrap();
    let (tx, rx) = mpsc::channel();
    let pusher = std::thread::spawn(move || {
        tx.send(sinkpad.chain(gst::Buffer::with_size(size).unwrap()))
            .unwrap();
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the copy waits for the only buffer"
    );
    assert!(h.push_event(gst::event::FlushStart::new()));
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the flush unblocks it");
    assert_eq!(r, Err(gst::FlowError::Flushing));
    pusher.join().unwrap();
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    // Streaming resumes once the held buffer is back.
    drop(h.pull().unwrap());
    let segment = gst::FormattedSegment::<gst::ClockTime>::new();
    assert!(h.push_event(gst::event::Segment::new(&segment)));
    h.push(gst::Buffer::with_size(size).unwrap()).unwrap();
    assert!(is_heap_memory(h.pull().unwrap().peek_memory(0)));
}

fn start_error(launch: &str) -> String {
    init();
    let pipeline = gst::parse::launch(launch).unwrap();
    let bus = pipeline.bus().unwrap();
    let r = pipeline.set_state(gst::State::Paused);
    assert!(r.is_err(), "{launch} must not start");
    let msg = bus
        .timed_pop_filtered(gst::ClockTime::from_seconds(2), &[gst::MessageType::Error])
        .expect("an error message");
    pipeline.set_state(gst::State::Null).unwrap();
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    assert_eq!(
        err.src().map(|s| s.name().to_string()).as_deref(),
        Some("up"),
        "the element itself reports the error"
    );
    err.error().to_string()
}

#[test]
fn bad_heap_names_give_a_clear_element_error() {
    for (heap, expect) in [
        ("../../dev/mem", "is not a valid heap name"),
        ("/dev/mem", "not paths"),
        ("no-such-heap", "no DMA-BUF heap named \"no-such-heap\""),
        (
            "nope1,nope2",
            "names nothing this machine can allocate from",
        ),
    ] {
        let text = start_error(&format!(
            "videotestsrc ! dmaheapupload name=up heap=\"{heap}\" ! fakesink"
        ));
        assert!(text.contains(expect), "heap={heap:?}: {text}");
    }
    // The allocator refuses the same names for applications.
    let err = DmaHeapAllocator::with_heaps("../x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a valid heap name"), "{err}");
}

#[test]
fn host_pipeline_nv12_1080p_300_frames_zero_copies() {
    let run = run_pipeline(
        "videotestsrc num-buffers=300 ! video/x-raw,format=NV12,width=1920,height=1080 \
         ! dmaheapupload name=up ! fakesink",
        Duration::from_secs(120),
    )
    .unwrap();
    let stats = run.stats.expect("dmaheapupload posts its stats at EOS");
    println!("{stats} in {:?}", run.elapsed);
    assert_eq!(stat(&stats, "copies"), 0, "{stats}");
    assert_eq!(stat(&stats, "passthrough"), 300, "{stats}");
    assert!(stat(&stats, "pool-hits") >= 290, "{stats}");
}

#[test]
fn dmabuf_caps_are_offered_only_when_a_dmabuf_source_exists() {
    let run = run_pipeline(
        "videotestsrc num-buffers=2 ! video/x-raw,width=64,height=64 \
         ! dmaheapupload name=up heap=memfd ! fakesink",
        Duration::from_secs(20),
    )
    .unwrap();
    let caps = run.upload_src_caps.expect("negotiated");
    let features = caps.features(0).unwrap();
    assert!(
        !features.contains(gst_allocators::CAPS_FEATURE_MEMORY_DMABUF),
        "memfd cannot back memory:DMABuf caps: {caps}"
    );
    // Asking for dma-buf memory from a memfd-only element fails at link time.
    let err = gst::parse::launch(
        "videotestsrc ! dmaheapupload heap=memfd ! video/x-raw(memory:DMABuf) ! fakesink",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("memory:DMABuf"), "{err}");
}

#[test]
fn gst_launch_and_gst_inspect_see_a_clean_plugin() {
    let dir = common::plugin_dir();
    let registry = dir.join("registry.bin");
    let tool = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .env("GST_PLUGIN_PATH", &dir)
            .env("GST_REGISTRY", &registry)
            .env_remove("GST_DEBUG")
            .output()
            .expect("gst tools are installed")
    };
    let inspect = tool(&["gst-inspect-1.0", "dmaheap"]);
    let stdout = String::from_utf8_lossy(&inspect.stdout);
    let stderr = String::from_utf8_lossy(&inspect.stderr);
    assert!(inspect.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("dmaheapupload"), "{stdout}");
    assert!(
        stderr.trim().is_empty(),
        "gst-inspect-1.0 complained: {stderr}"
    );

    let launch = tool(&[
        "gst-launch-1.0",
        "-m",
        "videotestsrc",
        "num-buffers=300",
        "!",
        "video/x-raw,format=NV12,width=1920,height=1080",
        "!",
        "dmaheapupload",
        "!",
        "fakesink",
    ]);
    let stdout = String::from_utf8_lossy(&launch.stdout);
    assert!(launch.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("dmaheapupload-stats"))
        .unwrap_or_else(|| panic!("no stats message in:\n{stdout}"));
    println!("{line}");
    assert!(line.contains("passthrough=(guint64)300"), "{line}");
    assert!(line.contains("copies=(guint64)0"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}
