//! gst-check tests of `GstDmaHeapBufferPool`: layouts and metas against GStreamer's own video
//! pool, recycling, prewarm, QoS classes and GstBufferPool's configuration contract.

mod common;

use std::collections::BTreeSet;
use std::str::FromStr;

use common::*;
use gst::prelude::*;
use gst_video::prelude::*;
use gstdmaheap::{DmaHeapAllocator, DmaHeapBufferPool, is_heap_memory};

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

/// A configured pool of 320x240 RGBA frames with `qos`, `prewarm` and `min` buffers.
fn rgba_pool(qos: &str, prewarm: u32, min: u32) -> DmaHeapBufferPool {
    init();
    let pool = DmaHeapBufferPool::new();
    pool.set_property_from_str("qos", qos);
    pool.set_property("prewarm", prewarm);
    pool_config(
        &pool,
        "video/x-raw,format=RGBA,width=320,height=240",
        min,
        0,
        &[],
        None,
    );
    pool
}

#[test]
fn prewarm_fills_the_pool_before_the_first_frame() {
    let pool = rgba_pool("realtime", 6, 2);
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

/// GstBufferPool's queue is first in, first out: with more buffers than in flight it would
/// hand each frame the buffer idle longest, out of the CPU's caches. The last ones back come
/// first: a stream with one frame in flight writes into one buffer, the others stay ready.
#[test]
fn a_stream_with_one_frame_in_flight_reuses_the_buffer_it_returned_last() {
    let pool = rgba_pool("realtime", 4, 4);
    pool.set_active(true).unwrap();
    let fd_of = |b: &gst::Buffer| memory_fd(b.peek_memory(0));
    let mut fds = BTreeSet::new();
    for frame in 0..20u8 {
        let mut buf = pool.acquire_buffer(None).unwrap();
        buf.get_mut().unwrap().map_writable().unwrap()[0] = frame;
        fds.insert(fd_of(&buf));
    }
    assert_eq!(
        fds.len(),
        1,
        "one frame in flight, yet buffers {fds:?} were written"
    );
    // Two in flight: two buffers, whatever the order they come back in.
    let mut two = BTreeSet::new();
    for _ in 0..10 {
        let (a, b) = (
            pool.acquire_buffer(None).unwrap(),
            pool.acquire_buffer(None).unwrap(),
        );
        two.extend([fd_of(&a), fd_of(&b)]);
        drop(b);
        drop(a);
    }
    assert_eq!(two.len(), 2, "{two:?}");
    // The buffer kept for reuse obeys flushing like the rest of the pool.
    pool.set_flushing(true);
    assert_eq!(
        pool.acquire_buffer(None).unwrap_err(),
        gst::FlowError::Flushing
    );
    pool.set_flushing(false);
    drop(pool.acquire_buffer(None).unwrap());
    let stats = pool.stats();
    assert_eq!(stat(&stats, "pool-misses"), 0, "{stats}");
    assert_eq!(stat(&stats, "heap-buffers"), 4, "{stats}");
    pool.set_active(false).unwrap();
    assert_eq!(
        stat(&pool.stats(), "heap-buffers"),
        0,
        "stop frees the kept buffer too"
    );
}

/// With every buffer out, acquire waits in GstBufferPool's queue, where a buffer kept for
/// reuse would never reach it: each release must wake it. Two threads hand a pool's only
/// buffer back and forth; a lost wake-up stops the exchange.
#[test]
fn a_release_wakes_an_acquire_waiting_on_a_full_pool() {
    init();
    let pool = DmaHeapBufferPool::new();
    pool_config(
        &pool,
        "video/x-raw,format=RGBA,width=64,height=64",
        1,
        1,
        &[],
        None,
    );
    pool.set_active(true).unwrap();
    let (to_releaser, releaser) = std::sync::mpsc::channel::<gst::Buffer>();
    let (done, finished) = std::sync::mpsc::channel();
    let acquirer = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            for _ in 0..20_000 {
                // Blocks until the releaser has dropped the previous buffer.
                let buf = pool.acquire_buffer(None).unwrap();
                to_releaser.send(buf).unwrap();
            }
            done.send(()).unwrap();
        })
    };
    let drops = std::thread::spawn(move || releaser.into_iter().for_each(drop));
    finished
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("an acquire waiting on a full pool was never woken");
    acquirer.join().unwrap();
    drops.join().unwrap();
    assert_eq!(stat(&pool.stats(), "pool-misses"), 0);
    pool.set_active(false).unwrap();
}

#[test]
fn realtime_pools_grow_from_heapcore_spares_under_the_process_budget() {
    let pool = rgba_pool("realtime", 2, 2);
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
    let pool = rgba_pool("background", 0, 1);
    pool.set_active(true).unwrap();
    let held: Vec<gst::Buffer> = (0..5).map(|_| pool.acquire_buffer(None).unwrap()).collect();
    let fds: BTreeSet<i32> = held.iter().map(|b| memory_fd(b.peek_memory(0))).collect();
    assert_eq!(fds.len(), 5);
    let files: Vec<(i32, (u64, u64))> = fds
        .iter()
        .map(|&fd| (fd, fd_file(fd).expect("a pool buffer's fd is open")))
        .collect();
    let fd_is_open = |fd: i32| {
        let file = files.iter().find(|(f, _)| *f == fd).map(|(_, file)| *file);
        file.is_some() && fd_file(fd) == file
    };
    drop(held);
    // The memory itself is given back: 4 of the 5 fds are closed (the kernel frees a
    // buffer with its last fd), not parked in a pool behind the GStreamer pool.
    let open: Vec<i32> = fds.iter().copied().filter(|&fd| fd_is_open(fd)).collect();
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
/// What fd `fd` refers to, if it is open on a dma-buf or memfd: its device and inode. Tests run
/// in parallel in one process, so a closed fd's number may already name another test's file:
/// only the same file counts as still open.
fn fd_file(fd: i32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let link = format!("/proc/self/fd/{fd}");
    let target = std::fs::read_link(&link).ok()?;
    let target = target.to_string_lossy();
    if !(target.starts_with("/dmabuf:") || target.starts_with("/memfd:")) {
        return None;
    }
    let meta = std::fs::metadata(&link).ok()?;
    Some((meta.dev(), meta.ino()))
}
