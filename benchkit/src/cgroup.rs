//! Memory cgroups made for one run: the benchmark's refault hog reclaims inside one (so the
//! kernel's own reclaim, which PSI counts, runs whatever the machine's page cache holds), and
//! the real-kernel tests limit a child with one. Both hierarchies: v2 (`memory.max`,
//! `memory.high`) and v1 (`memory.limit_in_bytes`), which hosts without the unified memory
//! controller still have.

use std::path::{Path, PathBuf};

const CAP_SYS_RESOURCE: u32 = 24;

/// Which memory cgroup interface is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupFlavour {
    /// The unified hierarchy at /sys/fs/cgroup: `memory.max`, `memory.swap.max`. It has no
    /// switch for the OOM killer, so the member must set its own `oom_score_adj` to -1000.
    V2,
    /// The v1 memory hierarchy at /sys/fs/cgroup/memory: `memory.limit_in_bytes`,
    /// `memory.memsw.limit_in_bytes`, and `memory.oom_control` to turn the OOM killer off.
    V1,
}

impl CgroupFlavour {
    const V2_ROOT: &'static str = "/sys/fs/cgroup";
    const V1_ROOT: &'static str = "/sys/fs/cgroup/memory";

    /// The flavour a root process can create memory cgroups with, if any (swap not
    /// considered).
    pub fn available() -> Option<Self> {
        if !rustix::process::geteuid().is_root() {
            return None;
        }
        let v2_memory =
            std::fs::read_to_string(Path::new(Self::V2_ROOT).join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"));
        if v2_memory {
            return Some(Self::V2);
        }
        Path::new(Self::V1_ROOT)
            .join("memory.limit_in_bytes")
            .exists()
            .then_some(Self::V1)
    }

    /// The flavour a root process can create *limited* memory cgroups with, swap kept out
    /// and the OOM killer kept off the member ([`MemoryCgroup::create`]), if any.
    pub fn usable() -> Option<Self> {
        match Self::available()? {
            // Swap must not take what the limit refuses, and a v2 member needs
            // CAP_SYS_RESOURCE to lower its oom_score_adj.
            Self::V2
                if has_capability(CAP_SYS_RESOURCE) && (!swap_is_on() || swap_controller_v2()) =>
            {
                Some(Self::V2)
            }
            _ => {
                let v1 = Path::new(Self::V1_ROOT);
                (v1.join("memory.oom_control").exists()
                    && (!swap_is_on() || v1.join("memory.memsw.limit_in_bytes").exists()))
                .then_some(Self::V1)
            }
        }
    }

    fn root(self) -> &'static Path {
        Path::new(match self {
            Self::V2 => Self::V2_ROOT,
            Self::V1 => Self::V1_ROOT,
        })
    }
}

/// Whether this process has a capability (`CapEff` of /proc/self/status, a hex mask).
fn has_capability(bit: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let mask = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & (1 << bit) != 0)
}

/// Whether any swap device is active (`/proc/swaps` has more than its header).
fn swap_is_on() -> bool {
    std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1)
}

/// Whether v2 cgroups get `memory.swap.max`: swap accounting is on unless the kernel was booted
/// with `swapaccount=0` (since 6.1 it is not a build option). [`MemoryCgroup::create`] checks.
fn swap_controller_v2() -> bool {
    !std::fs::read_to_string("/proc/cmdline").is_ok_and(|c| c.contains("swapaccount=0"))
}

/// A memory cgroup made for one run, removed on drop. Its member (a child process) joins it
/// by writing its pid to [`MemoryCgroup::procs`].
#[derive(Debug)]
pub struct MemoryCgroup {
    /// The cgroup interface it was made with.
    pub flavour: CgroupFlavour,
    /// Its directory in cgroupfs.
    pub path: PathBuf,
}

impl MemoryCgroup {
    /// Creates `<root>/<name>` limited to `limit` bytes of memory and no swap. On v1 the OOM
    /// killer is turned off for it, so that an allocation over the limit fails instead.
    pub fn create(name: &str, limit: u64) -> Result<Self, String> {
        let flavour = CgroupFlavour::usable().ok_or("no usable memory cgroup")?;
        let cgroup = Self::make(flavour, name)?;
        match flavour {
            CgroupFlavour::V2 => {
                cgroup.write("memory.max", &limit.to_string())?;
                if cgroup.path.join("memory.swap.max").exists() {
                    cgroup.write("memory.swap.max", "0")?;
                } else if swap_is_on() {
                    return Err(format!(
                        "{} has no memory.swap.max: swap would take what the limit refuses",
                        cgroup.path.display()
                    ));
                }
            }
            CgroupFlavour::V1 => {
                // memsw (memory + swap) may not be below the memory limit: memory first.
                cgroup.write("memory.limit_in_bytes", &limit.to_string())?;
                if cgroup.path.join("memory.memsw.limit_in_bytes").exists() {
                    cgroup.write("memory.memsw.limit_in_bytes", &limit.to_string())?;
                }
                cgroup.write("memory.oom_control", "1")?;
            }
        }
        Ok(cgroup)
    }

    /// Creates `<root>/<name>` whose members the kernel reclaims from above `limit` bytes
    /// (v2 `memory.high`, which also throttles them; v1 `memory.limit_in_bytes`): memory
    /// pressure that PSI counts, made by a member alone while the rest of the machine keeps
    /// its memory. The OOM killer stays on: a member whose memory cannot be reclaimed (no
    /// swap) is killed, not hung.
    pub fn reclaiming(name: &str, limit: u64) -> Result<Self, String> {
        let flavour = CgroupFlavour::available().ok_or(
            "no memory cgroup to create (needs root and a memory controller: cgroup v2's or \
             v1's /sys/fs/cgroup/memory)",
        )?;
        let cgroup = Self::make(flavour, name)?;
        match flavour {
            CgroupFlavour::V2 => cgroup.write("memory.high", &limit.to_string())?,
            CgroupFlavour::V1 => cgroup.write("memory.limit_in_bytes", &limit.to_string())?,
        }
        Ok(cgroup)
    }

    /// Makes `<root>/<name>` (on v2 with the memory controller enabled for the root's
    /// children).
    fn make(flavour: CgroupFlavour, name: &str) -> Result<Self, String> {
        if flavour == CgroupFlavour::V2 {
            let control = flavour.root().join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control)
                .map_err(|e| format!("reading {}: {e}", control.display()))?;
            if !enabled.split_whitespace().any(|w| w == "memory") {
                std::fs::write(&control, "+memory")
                    .map_err(|e| format!("enabling memory in {}: {e}", control.display()))?;
            }
        }
        let path = flavour.root().join(name);
        std::fs::create_dir(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(Self { flavour, path })
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        let target = self.path.join(file);
        std::fs::write(&target, value)
            .map_err(|e| format!("writing {value:?} to {}: {e}", target.display()))
    }

    /// The file a process writes its pid to, to join.
    pub fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The member has exited; its last charges may take a moment to leave.
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Err(e) if e.raw_os_error() == Some(16) => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                Err(e) => {
                    eprintln!("cannot remove {}: {e}", self.path.display());
                    return;
                }
                Ok(()) => return,
            }
        }
    }
}
