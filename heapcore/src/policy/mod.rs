//! The usage policy: which heaps, in which order, serve each usage ("scanout: cma, system"),
//! with the pool class and prewarm count its buffers get. The built-in defaults are here;
//! `file` layers the system's and the user's policy files on top.

mod file;

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;

use serde::Serialize;

pub use file::{PolicyEnv, PolicyError, policy_files};

use crate::error::Error;
use crate::pool::QosClass;

/// What a buffer is for. Well-known usages have constants; a policy file may add its own
/// (lower-case letters, digits and `-`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Usage(String);

impl Usage {
    /// Anything without a more specific usage; what unknown usages fall back to.
    pub const GENERIC: &'static str = "generic";
    /// Buffers a display controller scans out.
    pub const SCANOUT: &'static str = "scanout";
    /// A video decoder's output.
    pub const VIDEO_DECODE: &'static str = "video-decode";
    /// A video encoder's input.
    pub const VIDEO_ENCODE: &'static str = "video-encode";
    /// A camera's capture buffers.
    pub const CAMERA: &'static str = "camera";
    /// Frames the CPU renders at a steady rate (user-interface animation).
    pub const ANIMATION: &'static str = "animation";
    /// Screen capture for sharing.
    pub const SCREENCAST: &'static str = "screencast";
    /// Buffers the CPU or GPU renders into.
    pub const RENDER: &'static str = "render";

    /// Validates a usage name.
    pub fn new(name: &str) -> Result<Self, Error> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(Error::InvalidUsage {
                name: name.to_owned(),
            })
        }
    }

    /// The generic usage.
    pub fn generic() -> Self {
        Self(Self::GENERIC.to_owned())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Usage {
    fn default() -> Self {
        Self::generic()
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Usage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::new(s).map_err(|e| e.to_string())
    }
}

/// Where a policy entry came from, for `explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum EntryOrigin {
    /// The built-in defaults ([`Policy::builtin`]).
    BuiltIn,
    /// No policy: a list the user gave (`heap=`, `--heap`), judged as it is.
    Explicit,
    /// A policy file.
    File {
        /// The file.
        path: PathBuf,
        /// The line its `[usage.NAME]` table starts on.
        line: usize,
    },
}

impl fmt::Display for EntryOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BuiltIn => f.write_str("built-in defaults"),
            Self::Explicit => f.write_str("an explicit heap list"),
            Self::File { path, line } => write!(f, "{}:{line}", path.display()),
        }
    }
}

/// What the policy says of one device driver's buffers (`[device.<driver>]`): it takes these
/// sources, and only these, whatever its probe found (for a device a probe cannot ask, or
/// judges wrong).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DevicePolicy {
    /// The sources (heap names, `cma`, `udmabuf`) the driver's devices take.
    pub heaps: Vec<String>,
    /// Where it was said.
    pub origin: EntryOrigin,
}

/// What the policy says for one usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsagePolicy {
    /// Heap names (or `udmabuf`, `memfd`) in the order they are tried.
    pub heaps: Vec<String>,
    /// Buffers must be physically contiguous.
    pub contiguous: bool,
    /// The pool class buffers of this usage get.
    pub qos: QosClass,
    /// Buffers a realtime pool keeps ready.
    pub prewarm: usize,
    /// Where this entry came from.
    pub origin: EntryOrigin,
}

/// The usage → heaps table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    usages: BTreeMap<Usage, UsagePolicy>,
    /// Device drivers whose sources the policy states, overriding their probes.
    devices: BTreeMap<String, DevicePolicy>,
    /// The files applied on top of the defaults, in order.
    files: Vec<PathBuf>,
}

impl Default for Policy {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Policy {
    /// The built-in defaults. CMA first where devices may lack an IOMMU (display, codecs,
    /// cameras), the cached system heap first where the CPU writes (animation, screen
    /// capture, rendering); udmabuf and memfd last everywhere.
    pub fn builtin() -> Self {
        let entry = |heaps: &[&str], contiguous, qos, prewarm| UsagePolicy {
            heaps: heaps.iter().map(|h| h.to_string()).collect(),
            contiguous,
            qos,
            prewarm,
            origin: EntryOrigin::BuiltIn,
        };
        let device_first = ["cma", "system", "udmabuf", "memfd"];
        let cpu_first = ["system", "cma", "udmabuf", "memfd"];
        let usages = [
            (
                Usage::GENERIC,
                entry(&cpu_first, false, QosClass::Normal, 0),
            ),
            (
                Usage::SCANOUT,
                entry(&device_first, false, QosClass::Normal, 0),
            ),
            (
                Usage::VIDEO_DECODE,
                entry(&device_first, false, QosClass::Normal, 0),
            ),
            (
                Usage::VIDEO_ENCODE,
                entry(&device_first, false, QosClass::Normal, 0),
            ),
            (
                Usage::CAMERA,
                entry(&device_first, false, QosClass::Normal, 0),
            ),
            (
                Usage::ANIMATION,
                entry(&cpu_first, false, QosClass::Realtime, 4),
            ),
            (
                Usage::SCREENCAST,
                entry(
                    &["system", "udmabuf", "memfd", "cma"],
                    false,
                    QosClass::Normal,
                    0,
                ),
            ),
            (Usage::RENDER, entry(&cpu_first, false, QosClass::Normal, 0)),
        ];
        Self {
            usages: usages
                .into_iter()
                .map(|(name, policy)| (Usage(name.to_owned()), policy))
                .collect(),
            devices: BTreeMap::new(),
            files: Vec::new(),
        }
    }

    /// The entry for `usage`; an unknown usage gets `generic` (the bool says so).
    pub fn entry(&self, usage: &Usage) -> (&UsagePolicy, bool) {
        match self.usages.get(usage) {
            Some(entry) => (entry, false),
            None => {
                log_once(format!(
                    "usage {usage:?} is not in the policy; using generic"
                ));
                let generic = self
                    .usages
                    .get(&Usage::generic())
                    .expect("the generic usage is always present");
                (generic, true)
            }
        }
    }

    /// Every usage the policy knows.
    pub fn usages(&self) -> impl Iterator<Item = (&Usage, &UsagePolicy)> {
        self.usages.iter()
    }

    /// What the policy says of devices driven by `driver`, if anything.
    pub fn device(&self, driver: &str) -> Option<&DevicePolicy> {
        self.devices.get(driver)
    }

    /// The files applied on top of the defaults.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

/// Logs a message the first time it is seen in this process (absent heaps, unknown usages:
/// worth saying once, not per buffer).
pub(crate) fn log_once(message: String) {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if seen
        .get_or_insert_with(HashSet::new)
        .insert(message.clone())
    {
        log::info!("{message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_cover_the_well_known_usages() {
        let p = Policy::builtin();
        for u in [
            "generic",
            "scanout",
            "video-decode",
            "camera",
            "animation",
            "screencast",
        ] {
            let (entry, fell_back) = p.entry(&u.parse().unwrap());
            assert!(!fell_back, "{u}");
            assert_eq!(
                entry.heaps.last().map(String::as_str),
                Some(if u == "screencast" { "cma" } else { "memfd" })
            );
        }
        assert_eq!(p.entry(&"scanout".parse().unwrap()).0.heaps[0], "cma");
        assert_eq!(
            p.entry(&"animation".parse().unwrap()).0.qos,
            QosClass::Realtime
        );
    }

    #[test]
    fn unknown_usages_fall_back_to_generic() {
        let p = Policy::builtin();
        let (entry, fell_back) = p.entry(&"hologram".parse().unwrap());
        assert!(fell_back);
        assert_eq!(entry, p.entry(&Usage::generic()).0);
    }

    #[test]
    fn usage_names_are_checked() {
        assert!(Usage::new("video-decode").is_ok());
        for bad in ["", "Video", "a b", "x/y", &"a".repeat(65)] {
            assert!(Usage::new(bad).is_err(), "{bad:?}");
        }
    }
}
