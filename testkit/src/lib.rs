//! The test kit for tests that need real kernel parts (heaps, udmabuf, vkms, V4L2 devices).
//!
//! Such a test says what it needs. Where that is missing it is reported as *ignored* with the
//! reason, never as passed (forced to run with `--include-ignored`, it fails with "skipped:
//! needs …"); where the environment says the part must be there (`DMAHEAP_REQUIRE`, set by the
//! VM rig per kernel), it fails instead. Suites use
//! libtest-mimic, so they take cargo test's usual arguments (filters, `--list`).

use std::fmt;
use std::path::Path;

#[cfg(feature = "pipewire")]
pub mod pipewire;

pub use dmaheap_benchkit::cgroup::{CgroupFlavour, MemoryCgroup};
pub use libtest_mimic::Failed;
use libtest_mimic::{Arguments, Trial};

/// A part of the machine a test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `/dev/dma_heap/system`.
    SystemHeap,
    /// A CMA heap (`reserved`, `linux,cma`, `default_cma_region`, ...).
    CmaHeap,
    /// `/dev/udmabuf`.
    Udmabuf,
    /// Running as root (to create users, read PFNs, load memory).
    Root,
    /// A KMS device for kmssink (vkms).
    Kms,
    /// A V4L2 device whose name is given (`stateful-decoder`, `vivid-000-vid-cap`, ...).
    V4l2(&'static str),
    /// A memory cgroup this process may create and limit, with swap kept out of it and the
    /// OOM killer kept off its member (see [`MemoryCgroup`]).
    MemoryCgroup,
    /// A directory on a disk for the benchmark's refault hog (`DMAHEAP_HOG_DIR`, else
    /// /var/tmp): not tmpfs, whose pages only swap could reclaim.
    HogDisk,
    /// The sw_sync debug timeline (CONFIG_SW_SYNC, debugfs), to make fences by hand.
    SwSync,
    /// vgem, a DRM device with PRIME but no display (and no syncobjs: DRIVER_SYNCOBJ is not
    /// among its features, see [`Need::DrmSyncobj`]).
    Vgem,
    /// A DRM device with timeline syncobjs, for explicit sync: a GPU driver (amdgpu, i915,
    /// xe, nouveau, msm, panthor, powervr, virtio_gpu). vkms and vgem have none.
    DrmSyncobj,
    /// PipeWire at least this version (`major`, `minor`), as `pipewire --version` says.
    PipeWire(u32, u32),
    /// GStreamer at least this version, as `gst-launch-1.0 --version` says.
    GStreamer(u32, u32),
}

impl Need {
    /// The word `DMAHEAP_REQUIRE` uses for it.
    pub fn key(self) -> &'static str {
        match self {
            Self::SystemHeap => "system",
            Self::CmaHeap => "cma",
            Self::Udmabuf => "udmabuf",
            Self::Root => "root",
            Self::Kms => "kms",
            Self::V4l2(name) if name.starts_with("vivid") => "vivid",
            Self::V4l2(_) => "vicodec",
            Self::MemoryCgroup => "memcg",
            Self::HogDisk => "hog-disk",
            Self::SwSync => "sw_sync",
            Self::Vgem => "vgem",
            Self::DrmSyncobj => "drm-syncobj",
            Self::PipeWire(..) => "pipewire-version",
            Self::GStreamer(..) => "gstreamer-version",
        }
    }

    /// Whether this machine has it.
    pub fn is_met(self) -> bool {
        match self {
            Self::SystemHeap => Path::new("/dev/dma_heap/system").exists(),
            Self::CmaHeap => cma_heap().is_some(),
            Self::Udmabuf => Path::new("/dev/udmabuf").exists(),
            Self::Root => effective_uid() == 0,
            Self::Kms => drm_card("vkms").is_some(),
            Self::V4l2(name) => v4l2_device(name).is_some(),
            Self::MemoryCgroup => CgroupFlavour::usable().is_some(),
            Self::HogDisk => {
                let dir = hog_dir();
                dir.is_dir() && !dmaheap_benchkit::hogfile::on_tmpfs(&dir)
            }
            Self::SwSync => Path::new(SW_SYNC).exists(),
            Self::Vgem => drm_card("vgem").is_some(),
            Self::DrmSyncobj => has_syncobj_device(),
            Self::PipeWire(major, minor) => {
                version_of("pipewire", "libpipewire ").is_some_and(|v| v >= (major, minor))
            }
            Self::GStreamer(major, minor) => {
                version_of("gst-launch-1.0", "GStreamer ").is_some_and(|v| v >= (major, minor))
            }
        }
    }

    fn is_required(self) -> bool {
        std::env::var("DMAHEAP_REQUIRE")
            .unwrap_or_default()
            .split([',', ' '])
            .any(|k| k == self.key())
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SystemHeap => f.write_str("the system heap (/dev/dma_heap/system)"),
            Self::CmaHeap => f.write_str("a CMA heap (boot the full test kernel with cma=)"),
            Self::Udmabuf => f.write_str("/dev/udmabuf"),
            Self::Root => f.write_str("root"),
            Self::Kms => f.write_str("a KMS device (vkms)"),
            Self::V4l2(name) => write!(f, "the V4L2 device {name:?}"),
            Self::MemoryCgroup => f.write_str(
                "a memory cgroup to create as root (cgroup v2 with the memory controller, \
                 memory.swap.max or no swap, and CAP_SYS_RESOURCE; or cgroup v1's memory \
                 hierarchy with memsw or no swap)",
            ),
            Self::HogDisk => write!(
                f,
                "a directory on a disk for the refault hog's file ({}: set DMAHEAP_HOG_DIR to \
                 one that is not tmpfs)",
                hog_dir().display()
            ),
            Self::SwSync => write!(
                f,
                "the sw_sync timeline ({SW_SYNC}: CONFIG_SW_SYNC, debugfs)"
            ),
            Self::Vgem => f.write_str("a vgem DRM device (CONFIG_DRM_VGEM)"),
            Self::DrmSyncobj => write!(
                f,
                "a DRM device with timeline syncobjs (a GPU driver: {}; vkms and vgem have \
                 none)",
                SYNCOBJ_DRIVERS.join(", ")
            ),
            Self::PipeWire(major, minor) => write!(f, "PipeWire {major}.{minor} or newer"),
            Self::GStreamer(major, minor) => write!(f, "GStreamer {major}.{minor} or newer"),
        }
    }
}

/// Where the benchmark's refault hog keeps its file, as `dmaheap bench` picks it.
pub use dmaheap_benchkit::hogfile::dir as hog_dir;

/// The name of the default CMA heap in `/dev/dma_heap`, by the names kernels give it. Where
/// one area shows under two names (Linux 6.19+: `default_cma_region` and the area's own,
/// `/sys/kernel/mm/cma/<area>`), the area's own, as heapcore picks it (buffers from either
/// name say so in fdinfo's `exp_name`).
pub fn cma_heap() -> Option<String> {
    let exists = |n: &str| Path::new("/dev/dma_heap").join(n).exists();
    let area_named = std::fs::read_dir("/sys/kernel/mm/cma")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|area| exists(area));
    area_named.or_else(|| {
        [
            "default_cma_region",
            "reserved",
            "linux,cma",
            "default-pool",
        ]
        .into_iter()
        .find(|n| exists(n))
        .map(str::to_owned)
    })
}

/// The DRM drivers with `DRIVER_SYNCOBJ_TIMELINE` (Linux 7.3's `drivers/gpu/drm`).
const SYNCOBJ_DRIVERS: [&str; 8] = [
    "amdgpu",
    "i915",
    "xe",
    "nouveau",
    "msm",
    "panthor",
    "powervr",
    "virtio_gpu",
];

/// Whether a DRM device bound to one of [`SYNCOBJ_DRIVERS`] is here. virtio-gpu's DRM device
/// hangs off its PCI device (driver `virtio-pci`); its `virtioN` child names `virtio_gpu`.
fn has_syncobj_device() -> bool {
    let virtio_gpu = || {
        let Ok(cards) = std::fs::read_dir("/sys/class/drm") else {
            return false;
        };
        cards.filter_map(Result::ok).any(|card| {
            let Ok(children) = std::fs::read_dir(card.path().join("device")) else {
                return false;
            };
            children.filter_map(Result::ok).any(|child| {
                let is_virtio = child.file_name().to_string_lossy().starts_with("virtio");
                let driver = std::fs::read_link(child.path().join("driver")).ok();
                is_virtio && driver.is_some_and(|d| d.ends_with("virtio_gpu"))
            })
        })
    };
    SYNCOBJ_DRIVERS.iter().any(|d| drm_card(d).is_some()) || virtio_gpu()
}

/// The `major.minor` version `program --version` prints after `marker` (`pipewire`:
/// "Linked with libpipewire 1.6.9"; `gst-launch-1.0`: "GStreamer 1.28.8").
pub fn version_of(program: &str, marker: &str) -> Option<(u32, u32)> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The last match: pipewire prints the version it was compiled with, then the one linked.
    let version = text
        .rsplit(marker)
        .next()
        .filter(|_| text.contains(marker))?;
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The `/dev/videoN` node of the V4L2 device called `name`.
pub fn v4l2_device(name: &str) -> Option<String> {
    let entries = std::fs::read_dir("/sys/class/video4linux").ok()?;
    entries.filter_map(Result::ok).find_map(|e| {
        let dev_name = std::fs::read_to_string(e.path().join("name")).ok()?;
        let node = e.file_name().into_string().ok()?;
        (dev_name.trim() == name && node.starts_with("video")).then(|| format!("/dev/{node}"))
    })
}

/// Where debugfs shows the sw_sync timeline (as heapcore's `fence::SW_SYNC_PATH`; the kit
/// does not depend on heapcore).
pub const SW_SYNC: &str = "/sys/kernel/debug/sync/sw_sync";

/// The `/dev/dri/cardN` node of the DRM device `driver` (`vkms`, `vgem`): by its driver, or,
/// for virtual devices on a generic bus (faux on 7.x, none on 6.12), by the device's name.
pub fn drm_card(driver: &str) -> Option<String> {
    let entries = std::fs::read_dir("/sys/class/drm").ok()?;
    let mut cards: Vec<(String, std::path::PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .filter(|(node, _)| node.starts_with("card") && !node.contains('-'))
        .collect();
    cards.sort();
    cards.into_iter().find_map(|(node, path)| {
        let device = path.join("device");
        let bound = std::fs::read_link(device.join("driver")).ok();
        let bound = bound.as_ref().and_then(|b| b.file_name()?.to_str());
        let own = std::fs::canonicalize(&device).ok();
        let own = own.as_ref().and_then(|d| d.file_name()?.to_str());
        (bound == Some(driver) || own == Some(driver)).then(|| format!("/dev/dri/{node}"))
    })
}

/// A field of `/proc/self/status`, split in words (avoids a libc dependency here).
fn status_field(name: &str) -> Option<Vec<String>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    Some(line.split_whitespace().skip(1).map(str::to_owned).collect())
}

fn effective_uid() -> u32 {
    // "Uid: real effective saved fs".
    status_field("Uid:")
        .and_then(|w| w.get(1)?.parse().ok())
        .unwrap_or(u32::MAX)
}

/// Counts this process's open fds (for leak checks).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// This process's fds and what each refers to (`/proc/self/fd`), to say which ones a leak
/// check found.
pub fn fd_targets() -> std::collections::BTreeMap<i32, String> {
    // Not the directory this reads through, whose fd number changes from one call to the next.
    let listing = format!("/proc/{}/fd", std::process::id());
    std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?.display().to_string();
            (target != listing).then_some((fd, target))
        })
        .collect()
}

/// The fds open now that were not in `before` (from [`fd_targets`]), described: what a leak
/// check reports. An fd that `before` had and that closed since is no leak (something of the
/// set-up that finished closing late), so comparing fd counts is not the check.
pub fn fds_opened_since(before: &std::collections::BTreeMap<i32, String>) -> Vec<String> {
    fd_targets()
        .into_iter()
        .filter(|(fd, target)| before.get(fd) != Some(target))
        .map(|(fd, target)| format!("{fd} -> {target}"))
        .collect()
}

/// The fds of `before` that are no longer open (or now refer to something else), described.
pub fn fds_closed_since(before: &std::collections::BTreeMap<i32, String>) -> Vec<String> {
    let now = fd_targets();
    before
        .iter()
        .filter(|&(fd, target)| now.get(fd) != Some(target))
        .map(|(fd, target)| format!("{fd} -> {target}"))
        .collect()
}

/// What the kernel says of one of this process's fds (`/proc/self/fdinfo/<fd>`: for a dma-buf
/// `exp_name`, `name`, `size`, `ino`).
pub fn fdinfo(fd: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()
}

/// A suite of real-kernel tests.
#[derive(Default)]
pub struct Suite {
    /// Put before every test name, with a `_` (e.g. `real_heap_cli`), so a suite's tests can be
    /// picked out by filter without each name repeating it.
    prefix: String,
    trials: Vec<Trial>,
}

impl Suite {
    /// A suite whose tests are named exactly as given to [`Suite::test`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A suite whose tests are named `<prefix>_<name>`.
    pub fn named(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            trials: Vec::new(),
        }
    }

    /// Adds a test that runs only where every need is met.
    ///
    /// Where a need is missing the test is marked ignored and the reason printed; its body is
    /// replaced by one that fails with "skipped: needs …", so `--include-ignored` (or
    /// `--ignored`) reports exactly that and never counts it as passed.
    pub fn test(
        &mut self,
        name: &str,
        needs: &[Need],
        body: impl FnOnce() -> Result<(), Failed> + Send + 'static,
    ) -> &mut Self {
        let name = if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}_{name}", self.prefix)
        };
        let missing: Vec<Need> = needs.iter().copied().filter(|n| !n.is_met()).collect();
        let required: Vec<Need> = missing
            .iter()
            .copied()
            .filter(|n| n.is_required())
            .collect();
        let gate = Gate::new(&missing, &required);
        if let Gate::Skip(why) = &gate {
            eprintln!("{name}: {why}");
        }
        self.trials.push(gate.trial(name, body));
        self
    }

    /// Adds a benchmark: like [`Suite::test`], but always marked ignored, so it runs only when
    /// asked for (`--ignored` or `--include-ignored`, with a filter) and never slows the
    /// suite down. Where a need is missing, running it fails with "skipped: needs …".
    pub fn bench(
        &mut self,
        name: &str,
        needs: &[Need],
        body: impl FnOnce() -> Result<(), Failed> + Send + 'static,
    ) -> &mut Self {
        self.test(name, needs, body);
        if let Some(trial) = self.trials.pop() {
            self.trials.push(trial.with_ignored_flag(true));
        }
        self
    }

    /// Runs the suite with the command line's arguments and exits.
    pub fn run(self) -> ! {
        let mut args = Arguments::from_args();
        // Real-kernel tests measure fds and memory of the whole process: one at a time.
        args.test_threads = Some(1);
        libtest_mimic::run(&args, self.trials).exit()
    }
}

/// What becomes of a test given what this machine lacks.
#[derive(Debug, PartialEq, Eq)]
enum Gate {
    Run,
    /// Ignored; if run anyway it fails with this message.
    Skip(String),
    /// The environment says the machine must have it: fail with this message.
    Fail(String),
}

impl Gate {
    fn new(missing: &[Need], required: &[Need]) -> Self {
        if !required.is_empty() {
            Self::Fail(format!(
                "this machine must have {} (DMAHEAP_REQUIRE) but does not",
                join(required)
            ))
        } else if !missing.is_empty() {
            Self::Skip(format!("skipped: needs {}", join(missing)))
        } else {
            Self::Run
        }
    }

    fn trial(
        self,
        name: String,
        body: impl FnOnce() -> Result<(), Failed> + Send + 'static,
    ) -> Trial {
        let (ignored, body) = self.body(body);
        Trial::test(name, body).with_ignored_flag(ignored)
    }

    /// Whether the trial is marked ignored, and what runs when it runs.
    fn body(
        self,
        body: impl FnOnce() -> Result<(), Failed> + Send + 'static,
    ) -> (bool, Box<dyn FnOnce() -> Result<(), Failed> + Send>) {
        match self {
            Self::Run => (false, Box::new(body)),
            Self::Fail(message) => (false, Box::new(move || Err(message.into()))),
            Self::Skip(message) => (true, Box::new(move || Err(message.into()))),
        }
    }
}

fn join(needs: &[Need]) -> String {
    needs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fails the test with a message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A need no machine has.
    const NEVER: Need = Need::V4l2("no-such-device-for-the-kit-test");

    #[test]
    fn a_test_with_a_missing_need_is_ignored_and_fails_if_forced_to_run() {
        // A body that would pass: run anyway (`--include-ignored`), the test must still fail.
        let (ignored, run) = Gate::new(&[NEVER], &[]).body(|| Ok(()));
        assert!(ignored);
        let err = run().unwrap_err();
        assert_eq!(
            err.message(),
            Some("skipped: needs the V4L2 device \"no-such-device-for-the-kit-test\"")
        );
    }

    #[test]
    fn a_required_need_fails_and_a_met_one_runs() {
        let (ignored, run) = Gate::new(&[NEVER], &[NEVER]).body(|| Ok(()));
        assert!(!ignored);
        let err = run().unwrap_err();
        assert!(
            err.message().unwrap().contains("DMAHEAP_REQUIRE"),
            "{err:?}"
        );
        let (ignored, run) = Gate::new(&[], &[]).body(|| Ok(()));
        assert!(!ignored && run().is_ok());
    }

    #[test]
    fn named_suites_prefix_their_tests_and_mark_missing_needs_ignored() {
        let mut suite = Suite::named("real_heap_kit");
        suite
            .test("a", &[], || Ok(()))
            .test("b", &[NEVER], || Ok(()));
        let seen: Vec<(&str, bool)> = suite
            .trials
            .iter()
            .map(|t| (t.name(), t.has_ignored_flag()))
            .collect();
        assert_eq!(
            seen,
            [("real_heap_kit_a", false), ("real_heap_kit_b", true)]
        );
        let mut plain = Suite::new();
        plain.test("real_heap_x", &[], || Ok(()));
        assert_eq!(plain.trials[0].name(), "real_heap_x");
    }

    #[test]
    fn benchmarks_are_ignored_unless_asked_for() {
        let mut suite = Suite::new();
        suite
            .bench("bench_met", &[], || Ok(()))
            .bench("bench_unmet", &[NEVER], || Ok(()));
        assert!(suite.trials.iter().all(Trial::has_ignored_flag));
    }
}
