//! The GStreamer and PipeWire peers live in a companion binary, `dmaheap-bench-peers`
//! (examples/), so that this command depends on neither: it is run when found next to this
//! binary or on PATH, with the same repetitions and scale, and its JSON is merged.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Ctx;
use dmaheap_benchkit::schema::PeersReport;

const NAME: &str = "dmaheap-bench-peers";

fn locate(given: Option<&str>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(PathBuf::from(p));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(NAME)))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(NAME))
                .find(|p| p.is_file())
        })
    })
}

pub(super) fn run(ctx: &Ctx, given: Option<&str>, served: &str) -> Result<PeersReport, String> {
    let exe = locate(given).ok_or_else(|| {
        format!(
            "{NAME} is neither next to this binary nor on PATH (cargo build --release -p \
             dmaheap-examples --bin {NAME})"
        )
    })?;
    ctx.say(format!(
        "GStreamer and PipeWire peers: {} (buffers here come from {served})",
        exe.display()
    ));
    let mut cmd = Command::new(&exe);
    cmd.args([
        "--reps",
        &ctx.reps.to_string(),
        "--pipeline-reps",
        &ctx.pipeline_reps.to_string(),
        "--scale",
        &ctx.scale.to_string(),
    ]);
    // The plugin built with the peers (the same build as this benchmark), first.
    let dir = exe.parent().unwrap_or(Path::new("."));
    if dir.join("libgstdmaheap.so").is_file() {
        let mut path = std::ffi::OsString::from(dir);
        if let Some(old) = std::env::var_os("GST_PLUGIN_PATH") {
            path.push(":");
            path.push(old);
        }
        cmd.env("GST_PLUGIN_PATH", path);
    }
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", exe.display()))?;
    if !output.status.success() {
        return Err(format!("{} failed ({})", exe.display(), output.status));
    }
    let report: PeersReport = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("reading the JSON of {}: {e}", exe.display()))?;
    if report.schema != dmaheap_benchkit::schema::SCHEMA {
        return Err(format!(
            "{} speaks {}, this binary {}: build both from one checkout",
            exe.display(),
            report.schema,
            dmaheap_benchkit::schema::SCHEMA
        ));
    }
    Ok(report)
}
