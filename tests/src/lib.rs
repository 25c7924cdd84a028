//! The test kit for tests that need real kernel parts (heaps, udmabuf, vkms, V4L2 devices).
//!
//! Such a test says what it needs. Where that is missing it is reported as *ignored* with the
//! reason, never as passed (forced to run with `--include-ignored`, it fails with "skipped:
//! needs …"); where the environment says the part must be there (`DMAHEAP_REQUIRE`, set by the
//! VM rig per kernel), it fails instead. Suites use
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
}
