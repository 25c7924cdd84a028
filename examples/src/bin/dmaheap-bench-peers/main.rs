//! `dmaheap-bench-peers`: the GStreamer and PipeWire part of `dmaheap bench`, which runs it
//! when it finds it next to itself or on PATH and merges its JSON (the `dmaheap` command
//! depends on neither). On its own it prints the same JSON:
//!
//! ```sh
//! dmaheap-bench-peers --reps 5 > peers.json
//! ```
//!
//! - GStreamer's buffer pools, timed as `dmaheap bench` times heapcore's (the same code:
//!   `dmaheap-cli/src/bench/measure.rs`): stock `GstBufferPool` and `GstVideoBufferPool` with
//!   system memory, `GstDmaHeapBufferPool`, and on GStreamer 1.28 `GstVideoDmabufPool` with
//!   `GstUdmabufAllocator` and with the dmaheap allocator.
//! - Pipelines: frames per second and CPU time per frame of `videotestsrc ! fakesink` and the
//!   same with `dmaheapupload` passing through, copying, negotiating DMA_DRM caps; a foreign
//!   dma-buf source (vivid, where there is one); upstream's dma-buf pool offered by the sink.
//! - PipeWire: `dmaheap-screencast` and a stock producer (`videotestsrc ! pipewiresink`) into
//!   `pipewiresrc`, against a private daemon set, CPU time per frame on each side.

use std::process::ExitCode;

use clap::Parser;

mod pipelines;
mod pipewire;
mod pools;

use dmaheap_benchkit::measure::TimerCost;
use dmaheap_benchkit::schema::{self, PeersReport};

/// The GStreamer and PipeWire peers of `dmaheap bench` (JSON on stdout).
#[derive(Debug, Parser)]
#[command(name = "dmaheap-bench-peers", version)]
struct Args {
    /// Repetitions of every case, interleaved.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Repetitions of the pipelines (default: --reps). A pipeline run is short and its
    /// frames/s moves with the machine's other load, so deciding a ratio near its target
    /// takes more of them than the pools do.
    #[arg(long)]
    pipeline_reps: Option<usize>,
    /// Scales every fixed sample count.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Which parts to run (gst-pools, pipelines, pipewire).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gst-pools,pipelines,pipewire"
    )]
    parts: Vec<String>,
}

/// What every part gets.
pub(crate) struct Ctx {
    pub reps: usize,
    pub pipeline_reps: usize,
    pub scale: f64,
    pub timer: TimerCost,
}

impl Ctx {
    pub(crate) fn count(&self, base: usize, floor: usize) -> usize {
        ((base as f64 * self.scale).round() as usize).max(floor)
    }

    pub(crate) fn say(&self, s: impl AsRef<str>) {
        eprintln!("{}", s.as_ref());
    }
}

/// Loads the dmaheap plugin, so its pool type is registered: the one GStreamer's registry
/// knows (`dmaheap bench` points GST_PLUGIN_PATH at the directory of its own build), else the
/// one next to this binary.
fn load_plugin() -> String {
    if let Ok(plugin) = gst::Plugin::load_by_name("dmaheap") {
        return format!(
            "dmaheap plugin {}",
            plugin
                .filename()
                .map_or("(static)".into(), |f| f.display().to_string())
        );
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.join("libgstdmaheap.so")))
        .filter(|p| p.is_file());
    match beside.map(|p| (gst::Plugin::load_file(&p), p)) {
        Some((Ok(_), p)) => format!("dmaheap plugin {}", p.display()),
        Some((Err(e), p)) => format!("loading {} failed: {e}", p.display()),
        None => "no dmaheap plugin found (build gst-dmaheap, or set GST_PLUGIN_PATH)".into(),
    }
}

fn pipewire_version() -> String {
    std::process::Command::new("pipewire")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.split("libpipewire ").nth(1).map(|v| v.trim().to_owned()))
        })
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Before GStreamer starts threads: counting's one patch of the scheduler happens now
    // (see hold_scheduler_hooks), as in dmaheap bench, which runs this.
    dmaheap_benchkit::counters::hold_scheduler_hooks();
    if let Err(e) = gst::init() {
        eprintln!("dmaheap-bench-peers: GStreamer: {e}");
        return ExitCode::FAILURE;
    }
    let plugin = load_plugin();
    let ctx = Ctx {
        reps: args.reps.max(1),
        pipeline_reps: args.pipeline_reps.unwrap_or(args.reps).max(1),
        scale: args.scale,
        timer: TimerCost::calibrate(),
    };
    ctx.say(format!(
        "dmaheap-bench-peers: {}, {plugin}",
        gst::version_string()
    ));
    let mut report = PeersReport {
        schema: schema::SCHEMA.to_owned(),
        gstreamer: {
            let (a, b, c, _) = gst::version();
            format!("{a}.{b}.{c}")
        },
        pipewire: pipewire_version(),
        ..PeersReport::default()
    };
    report.notes.push(format!("peers: {plugin}"));
    let want = |p: &str| args.parts.iter().any(|x| x == p);
    if want("gst-pools") {
        if let Err(e) = pools::run(&ctx, &mut report) {
            report
                .notes
                .push(format!("GStreamer pools not measured: {e}"));
        }
    }
    if want("pipelines") {
        if let Err(e) = pipelines::run(&ctx, &mut report) {
            report.notes.push(format!("pipelines not measured: {e}"));
        }
    }
    if want("pipewire") {
        if let Err(e) = pipewire::run(&ctx, &mut report) {
            report.notes.push(format!("PipeWire not measured: {e}"));
        }
    }
    match serde_json::to_string_pretty(&report) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dmaheap-bench-peers: {e}");
            ExitCode::FAILURE
        }
    }
}
