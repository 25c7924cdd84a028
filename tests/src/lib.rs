//! The test kit for tests that need real kernel parts (heaps, udmabuf, vkms, V4L2 devices).
//!
//! Such a test says what it needs. Where that is missing it is reported as *ignored* with the
//! reason, never as passed; where the environment says the part must be there
//! (`DMAHEAP_REQUIRE`, set by the VM rig per kernel), it fails instead. Suites use
//! libtest-mimic, so they take cargo test's usual arguments (filters, `--list`).

use std::fmt;
use std::path::Path;

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
        }
    }

    /// Whether this machine has it.
    pub fn is_met(self) -> bool {
        match self {
            Self::SystemHeap => Path::new("/dev/dma_heap/system").exists(),
            Self::CmaHeap => cma_heap().is_some(),
            Self::Udmabuf => Path::new("/dev/udmabuf").exists(),
            Self::Root => effective_uid() == 0,
            Self::Kms => Path::new("/dev/dri/card0").exists(),
            Self::V4l2(name) => v4l2_device(name).is_some(),
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
        }
    }
}

/// The name of the first CMA heap in `/dev/dma_heap`, by the names kernels give it.
pub fn cma_heap() -> Option<String> {
    [
        "default_cma_region",
        "reserved",
        "linux,cma",
        "default-pool",
    ]
    .into_iter()
    .find(|n| Path::new("/dev/dma_heap").join(n).exists())
    .map(str::to_owned)
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

fn effective_uid() -> u32 {
    // /proc/self/status "Uid: real effective saved fs"; avoids a libc dependency here.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// Counts this process's open fds (for leak checks).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// A suite of real-kernel tests.
#[derive(Default)]
pub struct Suite {
    trials: Vec<Trial>,
}

impl Suite {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a test that runs only where every need is met.
    pub fn test(
        &mut self,
        name: &str,
        needs: &[Need],
        body: impl FnOnce() -> Result<(), Failed> + Send + 'static,
    ) -> &mut Self {
        let missing: Vec<Need> = needs.iter().copied().filter(|n| !n.is_met()).collect();
        let required: Vec<Need> = missing
            .iter()
            .copied()
            .filter(|n| n.is_required())
            .collect();
        let trial = if !required.is_empty() {
            let what = join(&required);
            Trial::test(name, move || {
                Err(format!("this machine must have {what} (DMAHEAP_REQUIRE) but does not").into())
            })
        } else if !missing.is_empty() {
            eprintln!("skipping {name}: needs {}", join(&missing));
            Trial::test(name, body).with_ignored_flag(true)
        } else {
            Trial::test(name, body)
        };
        self.trials.push(trial);
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
