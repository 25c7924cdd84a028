//! PipeWire: `dmaheap-screencast` against a stock producer (`videotestsrc ! pipewiresink`),
//! each streaming into `pipewiresrc ! fakesink`, against a private daemon set (dbus-daemon,
//! pipewire, wireplumber in a directory of their own: the test kit's, which pw-dmaheap's tests
//! run; the user's PipeWire is never touched). Steady state: from the consumer's first frame report
//! (fpsdisplaysink) to its end, frames per second at the consumer and CPU time per frame on
//! each side (/proc/<pid>/task/*/schedstat, and wait4 for the consumer's end).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use dmaheap_testkit::pipewire::{ChildGuard, Daemons, patience};

use crate::Ctx;
use dmaheap_benchkit::schema::{PeersReport, Ratio, Throughput};

/// Whether the daemons' registry lists a node named `name` (as `pw-cli ls Node` prints it).
fn has_node(d: &Daemons, name: &str) -> Result<bool, String> {
    let out = d
        .command("pw-cli")
        .args(["ls", "Node"])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("pw-cli: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains(&format!("node.name = \"{name}\"")))
}

/// CPU time of every thread of `pid` so far, in nanoseconds (/proc/<pid>/task/*/schedstat).
fn task_cpu_ns(pid: i32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum()
}

/// `wait4` without waiting: `None` while the child runs, else whether it exited with 0 and
/// its CPU time (user + system, ns).
fn reap(child: &Child) -> Result<Option<(bool, f64)>, String> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: asks about our own child; `status` and `usage` are valid for the kernel to fill.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, libc::WNOHANG, &mut usage) };
    match pid {
        p if p < 0 => Err(std::io::Error::last_os_error().to_string()),
        0 => Ok(None),
        _ => {
            let t = |tv: libc::timeval| tv.tv_sec as f64 * 1e9 + tv.tv_usec as f64 * 1e3;
            Ok(Some((
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                t(usage.ru_utime) + t(usage.ru_stime),
            )))
        }
    }
}

struct Producer {
    name: &'static str,
    node: &'static str,
    program: String,
    args: Vec<String>,
}

fn screencast_binary() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("dmaheap-screencast")))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("dmaheap-screencast"))
                .find(|p| p.is_file())
        })
    })
}

/// The number of frames fpsdisplaysink says it rendered, from one of gst-launch's `-v` lines.
fn rendered(line: &str) -> Option<u64> {
    line.split("rendered: ")
        .nth(1)?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// One run of one producer, measured in steady state: from the consumer's first frame
/// report (fpsdisplaysink, every 250 ms) to its end. Gives (frames/s at the consumer, producer
/// CPU ns/frame, consumer CPU ns/frame).
fn run_once(d: &Daemons, p: &Producer, frames: u64) -> Result<(f64, f64, f64), String> {
    let log = std::fs::File::create(d.dir().join(format!("{}.log", p.node)))
        .map_err(|e| e.to_string())?;
    let mut producer = ChildGuard(Some(
        d.command(&p.program)
            .args(&p.args)
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", p.program))?,
    ));
    let producer_pid = producer.child().id() as i32;
    let deadline = Instant::now() + patience();
    while !has_node(d, p.node)? {
        if let Ok(Some(status)) = producer.child().try_wait() {
            let text = std::fs::read_to_string(d.dir().join(format!("{}.log", p.node)))
                .unwrap_or_default();
            return Err(format!("{} exited ({status}): {}", p.name, text.trim()));
        }
        if Instant::now() > deadline {
            return Err(format!("{}: node {} never appeared", p.name, p.node));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut consumer = d
        .command("gst-launch-1.0")
        .args([
            "-v",
            "pipewiresrc",
            &format!("target-object={}", p.node),
            &format!("num-buffers={frames}"),
            "!",
            "video/x-raw,format=NV12",
            "!",
            "fpsdisplaysink",
            "video-sink=fakesink",
            "text-overlay=false",
            "sync=false",
            "fps-update-interval=250",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.dir().join("consumer.log")).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("starting gst-launch-1.0: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    if let Some(out) = consumer.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(n) = rendered(&line) {
                    if tx.send(n).is_err() {
                        return;
                    }
                }
            }
        });
    }
    let consumer_deadline =
        Instant::now() + patience() + Duration::from_secs_f64(frames as f64 / 5.0);
    // (time, frames rendered, consumer CPU, producer CPU) at the first report.
    let mut first: Option<(Instant, u64, f64, f64)> = None;
    let (ok, consumer_cpu) = loop {
        if first.is_none() {
            if let Ok(n) = rx.try_recv() {
                first = Some((
                    Instant::now(),
                    n,
                    task_cpu_ns(consumer.id() as i32),
                    task_cpu_ns(producer_pid),
                ));
            }
        }
        if let Some(done) = reap(&consumer)? {
            break done;
        }
        if Instant::now() > consumer_deadline {
            let _ = consumer.kill();
            let _ = consumer.wait();
            return Err(format!(
                "{}: the consumer did not get {frames} frames in time",
                p.name
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let end = Instant::now();
    let producer_end = task_cpu_ns(producer_pid);
    if !ok {
        let log = std::fs::read_to_string(d.dir().join("consumer.log")).unwrap_or_default();
        return Err(format!("{}: the consumer failed: {}", p.name, log.trim()));
    }
    let (t0, n0, c0, p0) = first.ok_or_else(|| {
        format!(
            "{}: the consumer ended before its first frame report ({frames} frames)",
            p.name
        )
    })?;
    let measured = frames.saturating_sub(n0).max(1) as f64;
    Ok((
        measured / (end - t0).as_secs_f64(),
        (producer_end - p0) / measured,
        (consumer_cpu - c0) / measured,
    ))
}

pub(crate) fn run(ctx: &Ctx, report: &mut PeersReport) -> Result<(), String> {
    for tool in [
        "pipewire",
        "wireplumber",
        "dbus-daemon",
        "pw-cli",
        "gst-launch-1.0",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Err(format!("{tool} is not installed"));
        }
    }
    if gst::ElementFactory::find("pipewiresrc").is_none() {
        return Err("no pipewiresrc (gstreamer1.0-pipewire)".into());
    }
    if gst::ElementFactory::find("fpsdisplaysink").is_none() {
        return Err("no fpsdisplaysink (gstreamer1.0-plugins-bad)".into());
    }
    let screencast = screencast_binary()
        .ok_or("dmaheap-screencast is neither next to this binary nor on PATH")?;
    let frames = ctx.count(600, 120) as u64;
    let size = "1280x720";
    let producers = [
        Producer {
            name: "dmaheap-screencast (heap buffers) → pipewiresrc",
            node: "bench-screencast",
            program: screencast.display().to_string(),
            args: [
                "--node-name",
                "bench-screencast",
                "--size",
                size,
                "--format",
                "NV12",
                "--rate",
                "60",
                "--dmabuf-without-modifier",
            ]
            .map(String::from)
            .to_vec(),
        },
        Producer {
            name: "videotestsrc ! pipewiresink (stock) → pipewiresrc",
            node: "bench-stock",
            program: "gst-launch-1.0".into(),
            args: vec![
                "-q".into(),
                "videotestsrc".into(),
                "is-live=true".into(),
                "pattern=smpte".into(),
                "!".into(),
                "video/x-raw,format=NV12,width=1280,height=720,framerate=60/1".into(),
                "!".into(),
                "pipewiresink".into(),
                "mode=provide".into(),
                "stream-properties=props,node.name=bench-stock,media.class=Video/Source".into(),
            ],
        },
    ];
    ctx.say("PipeWire: starting a private daemon set");
    let daemons = Daemons::start()?;
    let mut results: Vec<Throughput> = producers
        .iter()
        .map(|p| Throughput {
            group: "pipewire".into(),
            name: p.name.into(),
            description: format!(
                "{} {} + gst-launch-1.0 pipewiresrc target-object={} num-buffers={frames} ! video/x-raw,format=NV12 ! fpsdisplaysink video-sink=fakesink",
                Path::new(&p.program).file_name().map_or(String::new(), |f| f.to_string_lossy().into_owned()),
                p.args.join(" "),
                p.node
            ),
            frames,
            verified: "steady state, from the consumer's first fpsdisplaysink report to its end: frames/s at the consumer, CPU/frame of the producer's and the consumer's threads (schedstat, wait4)".into(),
            ..Throughput::default()
        })
        .collect();
    for rep in 0..ctx.reps {
        ctx.say(format!("PipeWire, repetition {}/{}", rep + 1, ctx.reps));
        let order: Vec<usize> = if rep % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            if results[i].skipped.is_some() {
                continue;
            }
            match run_once(&daemons, &producers[i], frames) {
                Ok((fps, producer, consumer)) => {
                    results[i].fps.push(fps);
                    results[i].cpu_ns_per_frame.push(producer);
                    results[i].consumer_cpu_ns_per_frame.push(consumer);
                }
                Err(e) => results[i].skipped = Some(e),
            }
        }
    }
    if results.iter().all(|r| r.skipped.is_none()) {
        let per = |f: fn(&Throughput) -> &Vec<f64>| -> Vec<f64> {
            f(&results[0])
                .iter()
                .zip(f(&results[1]))
                .map(|(a, b)| a / b)
                .collect()
        };
        report.ratios.push(Ratio::new(
            "pipewire",
            "dmaheap-screencast / stock producer: producer CPU per frame".into(),
            "CPU ns/frame".into(),
            per(|r| &r.cpu_ns_per_frame),
        ));
        report.ratios.push(Ratio::new(
            "pipewire",
            "dmaheap-screencast / stock producer: consumer CPU per frame".into(),
            "CPU ns/frame".into(),
            per(|r| &r.consumer_cpu_ns_per_frame),
        ));
    }
    report.throughput.extend(results);
    Ok(())
}
