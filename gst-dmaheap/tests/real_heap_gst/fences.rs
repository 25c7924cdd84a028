//! The pool never hands out a buffer a device still uses: a released buffer whose dma-buf has
//! an unsignalled fence waits aside until it signals (GStreamer 1.28's GstVideoDmabufPool
//! behaviour, on every version), and a buffer kmssink is scanning out never comes back to be
//! drawn into.

use std::collections::BTreeMap;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use dmaheap_testkit::{Failed, Need, Suite, ensure};
use gst::prelude::*;
use heapcore::FenceAccess;
use heapcore::fence::SwSyncTimeline;

use super::common::{LogCapture, init, run_pipeline_with, stat};
use super::{active_pool, dmabuf_fd};

pub(super) fn add(suite: &mut Suite) {
    suite
        .test(
            "real_heap_gst_pool_holds_a_fenced_buffer_until_its_fence_signals",
            &[Need::SystemHeap, Need::SwSync],
            pool_holds_a_fenced_buffer,
        )
        .test(
            "real_heap_gst_pool_without_hold_busy_makes_a_cpu_writer_wait_for_the_fence",
            &[Need::SystemHeap, Need::SwSync],
            cpu_writer_waits_without_hold_busy,
        )
        .test(
            "real_heap_gst_no_buffer_is_drawn_into_while_kmssink_shows_it",
            &[Need::SystemHeap, Need::Kms],
            no_buffer_drawn_into_while_on_screen,
        );
}

/// A heapcore handle on the dma-buf behind `mem` (its own fd), to attach fences to it.
fn dmabuf_of(mem: &gst::MemoryRef) -> Result<heapcore::DmaBuf, Failed> {
    let raw = dmabuf_fd(mem)?;
    // SAFETY: `raw` is the fd of `mem`, a dma-buf memory that owns it and outlives this
    // borrow; it is only duplicated here.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    Ok(heapcore::DmaBuf::import(fd.try_clone_to_owned()?)?)
}

/// A sw_sync fence (standing in for a display reading the buffer) on one of three pool
/// buffers: released, it is not handed out again until the fence signals, while the two idle
/// ones are; the pool may not grow past its three, so a third acquire finds nothing.
fn pool_holds_a_fenced_buffer() -> Result<(), Failed> {
    init();
    let live = gstdmaheap::live_heap_buffers();
    let pool = active_pool(
        "system",
        "video/x-raw,format=NV12,width=320,height=240",
        3,
        3,
    )?;
    let bufs: Vec<gst::Buffer> = (0..3)
        .map(|_| pool.acquire_buffer(None))
        .collect::<Result<_, _>>()?;
    let fds: Vec<RawFd> = bufs
        .iter()
        .map(|b| dmabuf_fd(b.peek_memory(0)))
        .collect::<Result<_, _>>()?;
    let timeline = SwSyncTimeline::open()?;
    let fence = timeline.fence_at(1)?;
    let busy = dmabuf_of(bufs[0].peek_memory(0))?;
    busy.attach_fence(&fence, FenceAccess::Read)?;
    ensure!(
        busy.busy()?.is_some(),
        "the attached fence does not make the dma-buf busy"
    );
    // The busy one goes back first: a first-in first-out free queue would hand it out first.
    drop(bufs);
    let dontwait = gst::BufferPoolAcquireParams::with_flags(gst::BufferPoolAcquireFlags::DONTWAIT);
    let a = pool.acquire_buffer(Some(&dontwait))?;
    let b = pool.acquire_buffer(Some(&dontwait))?;
    let got = [dmabuf_fd(a.peek_memory(0))?, dmabuf_fd(b.peek_memory(0))?];
    ensure!(
        !got.contains(&fds[0]),
        "the buffer a device still reads (fd {}) was handed out: {got:?}",
        fds[0]
    );
    ensure!(
        got.contains(&fds[1]) && got.contains(&fds[2]),
        "the idle buffers {:?} were not handed out: {got:?}",
        &fds[1..]
    );
    match pool.acquire_buffer(Some(&dontwait)) {
        Err(gst::FlowError::Eos) => {}
        other => return Err(format!("a third buffer while one is busy: {other:?}").into()),
    }
    timeline.advance(1)?;
    // Blocks until the waiter puts the buffer back; the timeout only keeps a bug from hanging
    // the suite.
    let (tx, rx) = mpsc::channel();
    let blocked = pool.clone();
    std::thread::spawn(move || {
        let _ = tx.send(blocked.acquire_buffer(None));
    });
    let c = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(c) => c?,
        Err(_) => {
            pool.set_flushing(true);
            return Err("the buffer did not come back after its fence signalled".into());
        }
    };
    let fd = dmabuf_fd(c.peek_memory(0))?;
    ensure!(
        fd == fds[0],
        "after the fence signalled, fd {fd} came back, not {}",
        fds[0]
    );
    let stats = pool.stats();
    println!(
        "fenced buffer fd {} held back while fds {got:?} were handed out; a third acquire found \
         none; back after the timeline advanced\n{stats}",
        fds[0]
    );
    ensure!(stat(&stats, "held-busy") == 1, "{stats}");
    // A pool deactivated while it holds a busy buffer back stops at once and frees it too.
    let fence = timeline.fence_at(2)?;
    dmabuf_of(c.peek_memory(0))?.attach_fence(&fence, FenceAccess::Read)?;
    drop((a, b, c));
    ensure!(stat(&pool.stats(), "held-busy") == 2, "{}", pool.stats());
    pool.set_active(false)?;
    ensure!(
        gstdmaheap::live_heap_buffers() == live,
        "{} heap buffers left after the pool stopped, {live} before",
        gstdmaheap::live_heap_buffers()
    );
    Ok(())
}

/// With `hold-busy=false` (dmaheapupload's copy pool) a fenced buffer goes straight back to
/// the free queue, and what keeps the next writer out is the kernel: mapping it for writing
/// (GstDmaBufAllocator's `DMA_BUF_IOCTL_SYNC`) does not return until the fence signals.
fn cpu_writer_waits_without_hold_busy() -> Result<(), Failed> {
    init();
    let pool = active_pool(
        "system",
        "video/x-raw,format=NV12,width=320,height=240",
        1,
        1,
    )?;
    pool.set_property("hold-busy", false);
    let buf = pool.acquire_buffer(None)?;
    let fd = dmabuf_fd(buf.peek_memory(0))?;
    let timeline = SwSyncTimeline::open()?;
    let fence = timeline.fence_at(1)?;
    dmabuf_of(buf.peek_memory(0))?.attach_fence(&fence, FenceAccess::Read)?;
    drop(buf);
    let dontwait = gst::BufferPoolAcquireParams::with_flags(gst::BufferPoolAcquireFlags::DONTWAIT);
    let again = pool.acquire_buffer(Some(&dontwait))?;
    ensure!(
        dmabuf_fd(again.peek_memory(0))? == fd,
        "the pool's one buffer was not handed out again"
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut again = again;
        let mapped = again
            .make_mut()
            .map_writable()
            .map(|mut m| m.as_mut_slice().fill(0x5a))
            .is_ok();
        let _ = tx.send((mapped, Instant::now()));
    });
    // A device (the sw_sync fence) still reads the buffer: the writer must not get in. Its
    // map returning is timed against the signal, so a writer slow to start proves nothing.
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    timeline.advance(1)?;
    let (mapped, returned) = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| "the writer was still waiting 60 s after the fence signalled")?;
    ensure!(mapped, "mapping the buffer for writing failed");
    ensure!(
        returned >= signalled,
        "a CPU writer mapped a buffer a device still read: its map returned {:?} before the \
         fence signalled",
        signalled - returned
    );
    let stats = pool.stats();
    ensure!(stat(&stats, "held-busy") == 0, "{stats}");
    println!(
        "hold-busy=false: fenced buffer fd {fd} handed out at once; its writer's map waited \
         until the fence signalled (held-busy 0)"
    );
    pool.set_active(false)?;
    Ok(())
}

/// The framebuffers the display scans out now, from the DRM core's own account of its state
/// (debugfs `dri/vkms/state`: each plane's `fb=`).
fn framebuffers_on_screen(state: &std::path::Path) -> Vec<u32> {
    let text = std::fs::read_to_string(state).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("fb="))
        .filter_map(|n| n.parse().ok())
        .filter(|&fb| fb != 0)
        .collect()
}

/// GstMemory (as kmssink prints it) of each framebuffer kmssink made from a dma-buf:
/// "setting KMS mem 0x… to DMABuf mem 0x… with fb id = N".
fn framebuffer_memories(log: &LogCapture) -> BTreeMap<u32, String> {
    log.sample("kmssink", "to DMABuf mem", usize::MAX)
        .iter()
        .filter_map(|line| {
            let (_, rest) = line.split_once("to DMABuf mem ")?;
            let (mem, rest) = rest.split_once(" with fb id = ")?;
            Some((rest.trim().parse().ok()?, mem.to_owned()))
        })
        .collect()
}

/// A memory drawn into, and the framebuffers on screen at that moment.
type Drawn = (String, Vec<u32>);

/// Whenever videotestsrc has drawn into a buffer from dmaheapupload's pool, the display is
/// not showing that buffer: asked of the DRM core (debugfs), not of the pool. kmssink keeps
/// the buffer on screen referenced, so it cannot come back while shown; a fence a display
/// attached would hold it back too (`held-busy` says how many were: KMS on vkms attaches
/// none to a scanned-out buffer).
fn no_buffer_drawn_into_while_on_screen() -> Result<(), Failed> {
    // debugfs names the directory after the device (and after the minor too).
    let state = std::path::PathBuf::from("/sys/kernel/debug/dri/vkms/state");
    ensure!(
        state.exists(),
        "{} is missing: debugfs must be mounted",
        state.display()
    );
    let log = LogCapture::start(&[("kmssink", gst::DebugLevel::Log)]);
    let drawn: Arc<Mutex<Vec<Drawn>>> = Arc::default();
    let frames = 60;
    let run = run_pipeline_with(
        &format!(
            "videotestsrc num-buffers={frames} ! video/x-raw,width=640,height=480 \
             ! dmaheapupload name=up heap=system max-buffers=3 \
             ! kmssink name=kms driver-name=vkms"
        ),
        Duration::from_secs(180),
        |p| {
            let drawn = Arc::clone(&drawn);
            let state = state.clone();
            let pad = p.by_name("up").and_then(|e| e.static_pad("sink")).unwrap();
            pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(buf) = info.buffer() {
                    let mem = format!("{:p}", buf.peek_memory(0).as_ptr());
                    let shown = framebuffers_on_screen(&state);
                    drawn.lock().unwrap().push((mem, shown));
                }
                gst::PadProbeReturn::Ok
            });
        },
    )?;
    let stats = run.stats.ok_or("no stats")?;
    ensure!(
        stat(&stats, "passthrough") == frames && stat(&stats, "copies") == 0,
        "videotestsrc did not draw into the pool: {stats}"
    );
    let fb_mem = framebuffer_memories(&log);
    ensure!(!fb_mem.is_empty(), "kmssink imported no dma-buf");
    let drawn = drawn.lock().unwrap();
    let mut checked = 0;
    for (i, (mem, shown)) in drawn.iter().enumerate() {
        let on_screen: Vec<&String> = shown.iter().filter_map(|fb| fb_mem.get(fb)).collect();
        ensure!(
            !on_screen.contains(&mem),
            "frame {i}: drawn into memory {mem} while the display showed it (framebuffers \
             {shown:?})"
        );
        checked += usize::from(!on_screen.is_empty());
    }
    let distinct: std::collections::BTreeSet<&String> = drawn.iter().map(|(m, _)| m).collect();
    // Not vacuous: most frames were drawn while one of the pool's buffers was on screen, and
    // the pool cycled its buffers.
    ensure!(
        checked * 2 >= drawn.len() && distinct.len() >= 2,
        "only {checked} of {} frames drawn while a pool buffer was on screen, {} buffers",
        drawn.len(),
        distinct.len()
    );
    println!(
        "{} frames: {checked} drawn while another pool buffer was on screen, never into the \
         one shown; {} pool buffers, {} framebuffers imported; held-busy {}\n{stats}",
        drawn.len(),
        distinct.len(),
        fb_mem.len(),
        stat(&stats, "held-busy")
    );
    Ok(())
}
