//! The environment record every report carries: what machine, kernel, clock and stack the
//! numbers come from.

use std::path::Path;
use std::process::Command;

use heapcore::Allocator;
use heapcore::sysinfo::MemInfo;

use dmaheap_benchkit::schema::Environment;

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The clocksource every timed reading goes through now.
pub(super) fn clocksource() -> String {
    read("/sys/devices/system/clocksource/clocksource0/current_clocksource")
}

fn cpuinfo_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// "qemu TCG (emulated CPU)", "VM (hypervisor flag)" or "bare metal".
fn machine(cpuinfo: &str) -> String {
    let model = cpuinfo_field(cpuinfo, "model name").unwrap_or_default();
    if model.contains("TCG") {
        return "qemu TCG (emulated CPU)".into();
    }
    let flags = cpuinfo_field(cpuinfo, "flags").unwrap_or_default();
    if flags.split_whitespace().any(|f| f == "hypervisor") {
        let vendor = read("/sys/class/dmi/id/sys_vendor");
        return if vendor.is_empty() {
            "VM (hypervisor flag)".into()
        } else {
            format!("VM (hypervisor flag, {vendor})")
        };
    }
    "bare metal".into()
}

fn os_name() -> String {
    let text = read("/etc/os-release");
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_default()
}

/// A tool's `--version` line, if it runs.
fn version_of(program: &str, args: &[&str], pick: impl Fn(&str) -> Option<String>) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().find_map(&pick))
        .unwrap_or_default()
}

fn commit(given: Option<&str>) -> String {
    if let Some(c) = given.filter(|c| !c.is_empty()) {
        return c.to_owned();
    }
    if let Ok(c) = std::env::var("DMAHEAP_BENCH_COMMIT") {
        return c;
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if !s.is_empty() => format!("{c}-dirty"),
            _ => c,
        },
        None => "unknown".into(),
    }
}

pub(super) fn record(alloc: &Allocator, label: &str, commit_given: Option<&str>) -> Environment {
    let cpuinfo = read("/proc/cpuinfo");
    let online = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let siblings: usize = cpuinfo_field(&cpuinfo, "siblings")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let cores: usize = cpuinfo_field(&cpuinfo, "cpu cores")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mem = MemInfo::read();
    let inv = alloc.inventory();
    Environment {
        label: label.to_owned(),
        date: chrono_free_date(),
        commit: commit(commit_given),
        kernel: heapcore::sysinfo::kernel_release(),
        os: os_name(),
        cpu_model: cpuinfo_field(&cpuinfo, "model name").unwrap_or_default(),
        cpus_online: online,
        cpus_allowed: dmaheap_benchkit::measure::allowed_cpus().len(),
        threads_per_core: (siblings / cores.max(1)).max(1),
        machine: machine(&cpuinfo),
        in_test_vm: std::env::var_os("DMAHEAP_VM").is_some(),
        clocksource: clocksource(),
        governor: {
            let g = read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor");
            if g.is_empty() {
                "none (no cpufreq)".into()
            } else {
                g
            }
        },
        memory_total: mem.get("MemTotal").unwrap_or(0),
        swap_total: mem.get("SwapTotal").unwrap_or(0),
        psi: Path::new("/proc/pressure/memory").exists(),
        heaps: inv.heaps.iter().map(|h| h.name.to_string()).collect(),
        udmabuf: inv.has_udmabuf(),
        buffers_from: String::new(),
        gstreamer: version_of("gst-inspect-1.0", &["--version"], |l| {
            l.strip_prefix("GStreamer ").map(str::to_owned)
        }),
        pipewire: version_of("pipewire", &["--version"], |l| {
            l.split("libpipewire ").nth(1).map(|v| v.trim().to_owned())
        }),
        ..Environment::default()
    }
}

/// Today's date (UTC) from the system clock, as YYYY-MM-DD.
fn chrono_free_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_are_told_apart_by_cpuinfo() {
        assert_eq!(
            machine("model name\t: QEMU TCG CPU version 2.5+\nflags\t: fpu hypervisor\n"),
            "qemu TCG (emulated CPU)"
        );
        assert_eq!(
            machine("model name\t: AMD EPYC\nflags\t: fpu sse\n"),
            "bare metal"
        );
    }
}
