//! dmaheapupload in real pipelines: what a sink that reads no video meta receives.

mod common;

use std::time::Duration;

use std::str::FromStr;

use common::{init, run_pipeline, stat};
use gst::prelude::*;
use gst_video::prelude::*;

/// The bytes a pipeline wrote through `filesink`, from a fresh file.
fn written(pipeline_with_sink: impl Fn(&str) -> String, tag: &str) -> Vec<u8> {
    let path =
        std::env::temp_dir().join(format!("dmaheap-upload-{}-{tag}.raw", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let description = pipeline_with_sink(&format!("filesink location={}", path.display()));
    let run = run_pipeline(&description, Duration::from_secs(120)).unwrap();
    if let Some(stats) = run.stats {
        println!("{tag}: {stats}");
    }
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    bytes
}

/// The first (frame, plane, row) whose pixels differ between two files of frames in `info`'s
/// layout. The padding at the end of rows is left out: nobody defines what it holds.
fn first_different_row(
    info: &gst_video::VideoInfo,
    a: &[u8],
    b: &[u8],
) -> Option<(usize, usize, u32)> {
    for (frame, (fa, fb)) in a.chunks(info.size()).zip(b.chunks(info.size())).enumerate() {
        for plane in 0..info.n_planes() as usize {
            let (offset, stride) = (info.offset()[plane], info.stride()[plane] as usize);
            // I420: one component per plane, one byte per pixel.
            let (row_bytes, rows) = (info.comp_width(plane as u8), info.comp_height(plane as u8));
            for row in 0..rows {
                let at = offset + row as usize * stride;
                let range = at..at + row_bytes as usize;
                if fa[range.clone()] != fb[range] {
                    return Some((frame, plane, row));
                }
            }
        }
    }
    None
}

/// A decoder that pads its frames (avdec_h264 decodes into 16-row macroblocks and aligns
/// strides) followed by a sink that ignores video meta: dmaheapupload must hand that sink
/// exactly what the decoder alone would, at sizes that are and are not multiples of 16.
///
/// The stream is encoded once to a file first: decoding straight from a live x264enc, the
/// decoder's output differs from run to run on GStreamer 1.22 whenever its downstream is
/// asynchronous (`x264enc ! avdec_h264 ! queue ! filesink`, without dmaheapupload), which
/// would make any comparison flaky.
#[test]
fn a_padding_decoder_through_dmaheapupload_writes_the_same_bytes_as_without_it() {
    init();
    for element in ["x264enc", "avdec_h264"] {
        assert!(
            gst::ElementFactory::find(element).is_some(),
            "needs {element} (gstreamer1.0-plugins-ugly, gstreamer1.0-libav: scripts/setup)"
        );
    }
    for (width, height) in [(1920u32, 1080u32), (1280, 720), (642, 362)] {
        let stream = std::env::temp_dir().join(format!(
            "dmaheap-upload-{}-{width}x{height}.h264",
            std::process::id()
        ));
        run_pipeline(
            &format!(
                "videotestsrc num-buffers=5 pattern=smpte ! \
                 video/x-raw,format=I420,width={width},height={height} ! \
                 x264enc speed-preset=ultrafast ! video/x-h264,stream-format=byte-stream ! \
                 filesink location={}",
                stream.display()
            ),
            Duration::from_secs(120),
        )
        .unwrap();
        let pipeline = |middle: &'static str| {
            let stream = stream.display().to_string();
            move |sink: &str| {
                format!("filesrc location={stream} ! h264parse ! avdec_h264 ! {middle}{sink}")
            }
        };
        let plain = written(pipeline(""), &format!("plain-{width}x{height}"));
        let through = written(
            pipeline("dmaheapupload name=up ! "),
            &format!("up-{width}x{height}"),
        );
        std::fs::remove_file(&stream).unwrap();
        // GStreamer's default layout, which a sink without video meta reads.
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, width, height)
            .build()
            .unwrap();
        assert_eq!(
            plain.len(),
            5 * info.size(),
            "{width}x{height} without dmaheapupload"
        );
        assert_eq!(
            through.len(),
            plain.len(),
            "{width}x{height}: dmaheapupload changed the frame size"
        );
        if let Some((frame, plane, row)) = first_different_row(&info, &plain, &through) {
            panic!("{width}x{height}: frame {frame}, plane {plane}, row {row} differs");
        }
    }
}

/// An upstream that writes strides of its own into the offered pool (it configured the pool
/// with video meta and alignment, as decoders do) while downstream takes no video meta: the
/// frame is copied into the caps' default layout, not passed through.
#[test]
fn padded_pool_buffers_are_copied_for_a_downstream_without_video_meta() {
    let caps_str = "video/x-raw,format=I420,width=320,height=240,framerate=30/1";
    init();
    let mut h = gst_check::Harness::new("dmaheapupload");
    h.play();
    h.set_src_caps_str(caps_str);
    let caps = gst::Caps::from_str(caps_str).unwrap();
    let mut query = gst::query::Allocation::new(Some(&caps), true);
    assert!(h.srcpad().unwrap().peer_query(&mut query));
    assert!(
        query
            .find_allocation_meta::<gst_video::VideoMeta>()
            .is_none(),
        "video meta offered upstream although the harness's sink takes none"
    );
    let pool = query.allocation_pools().next().unwrap().0.unwrap();
    // Configured anyway, as an upstream that ignores the answer would.
    let mut config = pool.config();
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
    config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT);
    let mut align = gst_video::VideoAlignment::new(0, 16, 0, 32, &[63, 63, 63, 0]);
    let info = gst_video::VideoInfo::from_caps(&caps).unwrap();
    let mut padded = info.clone();
    padded.align(&mut align).unwrap();
    config.set_video_alignment(&align);
    pool.set_config(config).unwrap();
    pool.set_active(true).unwrap();
    let mut input = pool.acquire_buffer(None).unwrap();
    let meta = input
        .meta::<gst_video::VideoMeta>()
        .expect("a padded buffer");
    assert_ne!(
        meta.offset()[1],
        info.offset()[1],
        "the pool padded the frame"
    );
    {
        let mut frame =
            gst_video::VideoFrameRef::from_buffer_ref_writable(input.make_mut(), &info).unwrap();
        for plane in 0..3 {
            let stride = frame.plane_stride()[plane as usize] as usize;
            let rows = frame.comp_height(plane) as usize;
            let data = frame.plane_data_mut(plane).unwrap();
            for row in 0..rows {
                data[row * stride..row * stride + 8].fill((plane * 50 + row as u32 % 50) as u8);
            }
        }
    }
    h.push(input).unwrap();
    let out = h.pull().unwrap();
    let stats: gst::Structure = h.element().unwrap().property("stats");
    assert_eq!(stat(&stats, "copies"), 1, "{stats}");
    assert_eq!(stat(&stats, "passthrough"), 0, "{stats}");
    // Read as a sink without video meta does: the caps' default layout.
    let map = out.map_readable().unwrap();
    for plane in 0..3usize {
        let (offset, stride) = (info.offset()[plane], info.stride()[plane] as usize);
        for row in 0..info.comp_height(plane as u8) as usize {
            let want = (plane * 50 + row % 50) as u8;
            let at = offset + row * stride;
            assert_eq!(&map[at..at + 8], &[want; 8], "plane {plane} row {row}");
        }
    }
    drop(map);
    pool.set_active(false).unwrap();
}

/// A pool that cannot be filled posts an error; a synchronous bus handler that answers it by
/// asking the element about caps (as applications that renegotiate on errors do) must not
/// deadlock: no lock is held while pools are made, activated or errors posted.
///
/// Runs itself again in a child process whose pools share a 1 MiB budget
/// (`DMAHEAP_BUDGET` is read once per process), so activating a pool fails at once.
#[test]
fn a_bus_handler_may_call_back_into_the_element_when_a_pool_fails() {
    const CHILD: &str = "DMAHEAP_TEST_SMALL_BUDGET_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return bus_handler_calls_back(); // in the child
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_bus_handler_may_call_back_into_the_element_when_a_pool_fails",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env("DMAHEAP_BUDGET", "1MiB")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("deadlock: the child did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

fn bus_handler_calls_back() {
    init();
    let mut h = gst_check::Harness::new("dmaheapupload");
    let element = h.element().unwrap();
    element.set_property("min-buffers", 8u32);
    let bus = gst::Bus::new();
    element.set_bus(Some(&bus));
    let answered = std::sync::Arc::new(std::sync::Mutex::new(None));
    bus.set_sync_handler({
        let element = element.clone();
        let answered = answered.clone();
        move |_, msg| {
            if let gst::MessageView::Error(e) = msg.view() {
                let caps = element.static_pad("src").unwrap().query_caps(None);
                *answered.lock().unwrap() = Some((e.error().to_string(), caps));
            }
            gst::BusSyncReply::Drop
        }
    });
    h.play();
    // 300 KiB frames, 8 of them to start with: over the 1 MiB budget.
    h.set_src_caps_str("video/x-raw,format=RGBA,width=320,height=240,framerate=30/1");
    let pushed = h.push(gst::Buffer::with_size(320 * 240 * 4).unwrap());
    assert_eq!(pushed, Err(gst::FlowError::Error));
    let (error, caps) = answered
        .lock()
        .unwrap()
        .take()
        .expect("an error was posted");
    println!("posted: {error}; the handler got caps {caps}");
    assert!(!caps.is_empty());
}
