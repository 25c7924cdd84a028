//! A screen-share producer: streams an animated test pattern as a PipeWire video source whose
//! buffers come from DMA-BUF heaps (dma-bufs for consumers that take them, sealed memfds for
//! the others), and says what was negotiated.
//!
//! ```sh
//! dmaheap-screencast --node-name my-screen --size 1920x1080 --format BGRx --rate 30
//! gst-launch-1.0 pipewiresrc target-object=my-screen ! video/x-raw,format=BGRx ! videoconvert ! autovideosink
//! ```

use std::cell::Cell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use heapcore::format::VideoFormat;
use pipewire as pw;
use pw_dmaheap::{Event, Producer, ProducerConfig, frame_interval};

/// Streams an animated test pattern as a PipeWire video source, from DMA-BUF heaps.
#[derive(Debug, Parser)]
#[command(name = "dmaheap-screencast", version)]
struct Args {
    /// node.name of the source (consumers target it: pipewiresrc target-object=NAME).
    #[arg(long, default_value = "dmaheap-screencast")]
    node_name: String,
    /// Frame size, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x720", value_parser = parse_size)]
    size: (u32, u32),
    /// Video formats offered, preferred first (comma-separated GStreamer names).
    #[arg(long, default_value = "BGRx", value_delimiter = ',')]
    format: Vec<VideoFormat>,
    /// Highest frame rate offered: N or N/D.
    #[arg(long, default_value = "30", value_parser = parse_rate)]
    rate: (u32, u32),
    /// Explicit dma-buf sources in order (heap names, cma, udmabuf); default: this
    /// machine's order.
    #[arg(long)]
    heap: Option<String>,
    /// The usage heaps are chosen for.
    #[arg(long, default_value = pw_dmaheap::DEFAULT_USAGE)]
    usage: String,
    /// Physically contiguous buffers only (CMA).
    #[arg(long)]
    contiguous: bool,
    /// Buffers asked for.
    #[arg(long, default_value_t = 4)]
    buffers: u32,
    /// Row stride alignment in bytes (a power of two).
    #[arg(long, default_value_t = 4)]
    stride_align: u32,
    /// Refuse consumers that cannot take dma-bufs (no MemFd fallback).
    #[arg(long)]
    no_memfd: bool,
    /// Give dma-bufs also to consumers that negotiate no modifier but accept DmaBuf
    /// (pipewiresrc 0.3.65); see the crate docs for the caveat.
    #[arg(long)]
    dmabuf_without_modifier: bool,
    /// Stop after this many frames (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    frames: u64,
    /// Resize to WIDTHxHEIGHT after --resize-after frames (shows renegotiation).
    #[arg(long, value_parser = parse_size)]
    resize_to: Option<(u32, u32)>,
    /// Frames before --resize-to applies.
    #[arg(long, default_value_t = 100)]
    resize_after: u64,
    /// Print how the heaps are chosen (the policy's candidates, each in or out and why), at
    /// start and again once a consumer is linked (with the devices it names, and whether
    /// explicit sync is offered).
    #[arg(long)]
    explain: bool,
    /// PipeWire socket: a name in XDG_RUNTIME_DIR or an absolute path (default: the
    /// session's).
    #[arg(long)]
    remote: Option<String>,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not a size like 1920x1080");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    Ok((
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    ))
}

fn parse_rate(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not a frame rate like 30 or 30000/1001");
    let (n, d) = s.split_once('/').unwrap_or((s, "1"));
    let rate = (
        n.trim().parse().map_err(|_| bad())?,
        d.trim().parse().map_err(|_| bad())?,
    );
    if rate.0 == 0 || rate.1 == 0 {
        return Err(bad());
    }
    Ok(rate)
}

fn config(args: &Args, inventory: &heapcore::Inventory) -> Result<ProducerConfig, String> {
    let mut config = ProducerConfig::new(args.size.0, args.size.1)
        .with_node_name(&args.node_name)
        .with_description(format!("dmaheap test pattern ({})", args.node_name))
        .with_formats(args.format.clone())
        .with_framerate(args.rate.0, args.rate.1)
        .with_usage(&args.usage)
        .with_contiguous(args.contiguous)
        .with_buffers(args.buffers)
        .with_stride_align(args.stride_align)
        .with_memfd_fallback(!args.no_memfd)
        .with_dmabuf_without_modifier(args.dmabuf_without_modifier);
    if let Some(list) = &args.heap {
        config = config
            .with_heaps(ProducerConfig::parse_heaps(list, inventory).map_err(|e| e.to_string())?);
    }
    Ok(config)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dmaheap-screencast: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    // The process's pool registry: its global budget, memory-pressure watch and, with
    // DMAHEAP_STATS set, statistics for `dmaheap stats`.
    let registry = heapcore::PoolRegistry::process();
    // Bad sizes, formats and heap names are refused before PipeWire is involved.
    let config = config(args, registry.allocator().inventory())?;
    config
        .validate(registry.allocator().inventory())
        .map_err(|e| e.to_string())?;
    let max_rate = config.framerate;
    pw::init();
    let mainloop =
        pw::main_loop::MainLoopRc::new(None).map_err(|e| format!("PipeWire main loop: {e}"))?;
    // Keep the loop entered on this thread also before `run` and after it returns (while the
    // stream is set up and torn down), so PipeWire never runs our callbacks on its data thread.
    let _entered = pw_dmaheap::EnteredLoop::new(&mainloop);
    // Ctrl-C and SIGTERM stop the stream cleanly. The loop blocks them and reads them from a
    // signalfd; threads inherit the mask, so this comes before the context starts PipeWire's
    // data thread (a thread that did not block them would be killed by them instead).
    let quit = |mainloop: pw::main_loop::MainLoopRc| move || mainloop.quit();
    let _int = mainloop
        .loop_()
        .add_signal_local(pw::loop_::Signal::INT, quit(mainloop.clone()));
    let _term = mainloop
        .loop_()
        .add_signal_local(pw::loop_::Signal::TERM, quit(mainloop.clone()));
    let context = pw::context::ContextRc::new(&mainloop, None)
        .map_err(|e| format!("PipeWire context: {e}"))?;
    let props = args.remote.as_deref().map(|remote| {
        pw::properties::properties! { *pw::keys::REMOTE_NAME => remote }
    });
    let core = context.connect_rc(props).map_err(|e| {
        format!("cannot connect to PipeWire ({e}): is it running for this user (XDG_RUNTIME_DIR), or pass --remote")
    })?;
    let failure = Rc::new(Cell::new(None::<String>));
    let _core_listener = core
        .add_listener_local()
        .error({
            let mainloop = mainloop.clone();
            let failure = Rc::clone(&failure);
            move |id, _seq, res, message| {
                if id == pw::core::PW_ID_CORE {
                    failure.set(Some(format!("PipeWire: {message} ({res})")));
                    mainloop.quit();
                }
            }
        })
        .register();

    let producer =
        Rc::new(Producer::with_registry(&core, config, registry).map_err(|e| e.to_string())?);
    match producer.dmabuf_offer() {
        Ok(origin) => println!(
            "offering DmaBuf (LINEAR modifier) from {origin}; MemFd for consumers without dma-buf support"
        ),
        Err(why) => println!("offering MemFd only: no dma-buf here ({why})"),
    }
    if args.explain {
        print!("{}", producer.explain_heap_choice());
    }
    producer.set_renderer(|frame| frame.draw_test_pattern());
    producer.set_event_handler({
        let mainloop = mainloop.clone();
        let failure = Rc::clone(&failure);
        let name = args.node_name.clone();
        let explain = args.explain;
        let weak = Rc::downgrade(&producer);
        move |event| match event {
            Event::State(state) => println!("{name}: {state}"),
            Event::FormatFixed(p) => println!("{name}: format fixed: {p}"),
            Event::BuffersReady(n) => {
                println!(
                    "{name}: negotiated {} buffers from {}: {n}",
                    n.data_kind, n.origin
                );
                // Now the consumer is known (PipeWire 1.6 consumers name their devices).
                if let Some(producer) = weak.upgrade().filter(|_| explain) {
                    print!("{}", producer.explain_heap_choice());
                }
            }
            Event::PeerDevices(devices) if devices.is_empty() => {
                println!("{name}: the consumers name no devices")
            }
            Event::PeerDevices(devices) => println!(
                "{name}: the consumer names its devices (pipewire.device-ids): {}",
                devices
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Event::Error(e) => {
                failure.set(Some(e.clone()));
                mainloop.quit();
            }
            other => println!("{name}: {other:?}"),
        }
    });
    producer.connect().map_err(|e| e.to_string())?;
    println!(
        "streaming node {:?}: {}x{} {} up to {}/{} fps (Ctrl-C stops)",
        args.node_name,
        args.size.0,
        args.size.1,
        args.format
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.rate.0,
        args.rate.1
    );

    // Frames at the negotiated rate: the timer ticks at the highest rate offered and skips
    // ticks when the consumer chose a lower one.
    let tick = max_rate.interval().unwrap_or(Duration::from_millis(33));
    let next_due = Cell::new(Instant::now());
    let resized = Cell::new(false);
    let timer = mainloop.loop_().add_timer({
        let producer = Rc::clone(&producer);
        let mainloop = mainloop.clone();
        let (limit, resize_to, resize_after) = (args.frames, args.resize_to, args.resize_after);
        move |_| {
            let now = Instant::now();
            if now < next_due.get() {
                return;
            }
            let interval = frame_interval(producer.negotiated().as_ref(), max_rate);
            next_due.set(next_due.get().max(now - interval) + interval);
            if let Err(e) = producer.trigger_frame() {
                log::debug!("no frame: {e}");
            }
            let frames = producer.stats().frames;
            if let Some((w, h)) = resize_to {
                if frames >= resize_after && !resized.replace(true) {
                    println!("resizing to {w}x{h} after {frames} frames");
                    if let Err(e) = producer.resize(w, h) {
                        eprintln!("dmaheap-screencast: {e}");
                    }
                }
            }
            if limit > 0 && frames >= limit {
                mainloop.quit();
            }
        }
    });
    timer
        .update_timer(Some(tick), Some(tick))
        .into_sync_result()
        .map_err(|e| format!("arming the frame timer: {e}"))?;

    mainloop.run();

    let stats = producer.stats();
    println!(
        "{} frames sent ({} times no free buffer), {} buffers taken ({} never-shared ones reused from the pool), {} let go, {} format(s) negotiated",
        stats.frames,
        stats.starved,
        stats.allocated,
        stats.recycled,
        stats.freed,
        stats.negotiations
    );
    drop(timer);
    match failure.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
