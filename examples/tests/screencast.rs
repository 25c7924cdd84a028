//! `dmaheap-screencast` against a private PipeWire daemon set, with the test kit's Rust
//! consumer checking every frame it sends.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use dmaheap_testkit::pipewire::consumer::{Accept, Seen};
use dmaheap_testkit::pipewire::scenarios::Rig;
use dmaheap_testkit::pipewire::{ChildGuard, patience};
use pw_dmaheap::heapcore::format::VideoFormat;

const BIN: &str = env!("CARGO_BIN_EXE_dmaheap-screencast");

static SERIAL: Mutex<()> = Mutex::new(());

fn screencast(rig: &Rig, args: &[&str]) -> Command {
    let mut cmd = rig.daemons.command(BIN);
    cmd.arg("--remote")
        .arg(rig.daemons.remote())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Why a run failed: `what`, what the consumer saw (WirePlumber destroys a `dont-reconnect`
/// consumer whose target it cannot find: `gone`), and the example's output (it is killed
/// first if it still runs).
fn failure(what: &str, seen: Option<&Seen>, child: &mut ChildGuard) -> String {
    let mut out = what.to_owned();
    if let Some(seen) = seen {
        out += &format!(
            "\nconsumer: gone {:?}, {} frames, {} checked, errors {:?}",
            seen.gone, seen.frames, seen.checked, seen.errors
        );
    }
    if let Some(mut c) = child.0.take() {
        if let Ok(None) = c.try_wait() {
            let _ = c.kill();
        }
        if let Ok(o) = c.wait_with_output() {
            out += &format!(
                "\nthe example ({}) said:\n{}\nand on stderr:\n{}",
                o.status,
                String::from_utf8_lossy(&o.stdout).trim_end(),
                String::from_utf8_lossy(&o.stderr).trim_end()
            );
        }
    }
    out
}

#[test]
fn the_example_streams_checked_frames_to_a_consumer() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let rig = Rig::start().unwrap();
    let name = format!("example-screen-{}", std::process::id());
    let args = [
        "--node-name",
        &name,
        "--size",
        "320x240",
        "--format",
        "NV12,BGRx",
        "--rate",
        "60",
        "--frames",
        "90",
    ];
    // Killed by its pid if the test fails before it exits.
    let mut child = ChildGuard(Some(screencast(&rig, &args).spawn().unwrap()));
    // The consumer names the example's node as its target, and WirePlumber destroys it if
    // that node does not exist yet: wait for the node first.
    let waited = rig
        .session
        .wait_for_node(&name, patience(), || match child.child().try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("the example exited ({status})")),
            Err(e) => Err(e.to_string()),
        });
    if let Err(e) = waited {
        panic!("{}", failure(&e, None, &mut child));
    }
    let consumer = rig
        .consumer(&name, VideoFormat::Nv12, Accept::DmaBufOrMemFd)
        .unwrap();
    let mut output = None;
    let stopped = rig
        .session
        .run_until("the example to stop after 90 frames", patience(), || {
            if child
                .child()
                .try_wait()
                .map_err(|e| e.to_string())?
                .is_some()
            {
                output = Some(child.take().wait_with_output().map_err(|e| e.to_string())?);
                return Ok(true);
            }
            Ok(false)
        });
    if let Err(e) = stopped {
        panic!("{}", failure(&e, Some(&consumer.seen()), &mut child));
    }
    let output = output.expect("finished");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    rig.session.run_for(Duration::from_millis(100));
    let seen = consumer.seen();
    println!(
        "consumer: {} frames checked, types {:?}, exporters {:?}, formats {:?}",
        seen.checked, seen.data_types, seen.exporters, seen.formats
    );
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    assert!(seen.checked >= 30, "{} frames checked", seen.checked);
    let kind = seen.data_types.iter().next().cloned().unwrap_or_default();
    assert!(
        stdout.contains(&format!("negotiated {kind} buffers from")),
        "the example did not say it negotiated {kind}"
    );
}

#[test]
fn bad_arguments_get_clear_errors() {
    // Refused before any PipeWire connection; the runtime dir points nowhere regardless.
    let nowhere = std::env::temp_dir().join("dmaheap-screencast-test-no-pipewire");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--size", "0x480"],
            "size 0x480: width and height must be 1 to 16384",
        ),
        (&["--size", "big"], "is not a size like 1920x1080"),
        (
            &["--format", "MJPG"],
            "unknown video format \"MJPG\"; known: NV12",
        ),
        (&["--heap", "../../dev/mem"], "is not a valid heap name"),
        (
            &["--heap", "no-such-heap"],
            "no DMA-BUF heap named \"no-such-heap\"",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("PIPEWIRE_REMOTE")
            .env("XDG_RUNTIME_DIR", &nowhere)
            .env("PIPEWIRE_RUNTIME_DIR", &nowhere)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("dmaheap-screencast {}: {}", args.join(" "), stderr.trim());
        assert!(!out.status.success());
        assert!(stderr.contains(want), "{stderr:?} lacks {want:?}");
    }
}
