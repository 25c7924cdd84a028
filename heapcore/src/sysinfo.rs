//! Small readers of what the kernel says about this machine and process: `/proc/meminfo`,
//! the page size, the kernel release, and the memory cgroup this process runs in (its limit
//! and its PSI file). Each `/proc` file heapcore reads is parsed in one place: here, or, for a
//! file one module alone needs, in that module (`/proc/self/fdinfo` in `dmabuf`, a PSI file's
//! totals in `pressure`, `/proc/<pid>/stat` in `pool::publish`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde::Serialize;

use crate::bytes::ByteSize;

/// Where the kernel tells memory totals.
pub(crate) const MEMINFO: &str = "/proc/meminfo";

/// The host-wide PSI file for memory (a cgroup v2 has its own `memory.pressure`).
pub(crate) const HOST_MEMORY_PSI: &str = "/proc/pressure/memory";

/// `/proc/meminfo`, values in bytes.
#[derive(Debug, Clone, Default)]
pub struct MemInfo(HashMap<String, u64>);

impl MemInfo {
    /// Reads `/proc/meminfo`.
    pub fn read() -> Self {
        Self::read_from(Path::new(MEMINFO))
    }

    /// Reads a file in `/proc/meminfo`'s format; a missing file gives an empty table.
    pub fn read_from(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        Self(
            text.lines()
                .filter_map(|line| {
                    let (key, rest) = line.split_once(':')?;
                    let mut words = rest.split_whitespace();
                    let value: u64 = words.next()?.parse().ok()?;
                    let scale = if words.next() == Some("kB") { 1024 } else { 1 };
                    Some((key.to_owned(), value.saturating_mul(scale)))
                })
                .collect(),
        )
    }

    /// One field in bytes (`MemTotal`, `CmaFree`, ...).
    pub fn get(&self, key: &str) -> Option<u64> {
        self.0.get(key).copied()
    }
}

/// The page size, read once.
pub fn page_size() -> u64 {
    static PAGE: LazyLock<u64> = LazyLock::new(|| rustix::param::page_size() as u64);
    *PAGE
}

/// The running kernel's release (`uname -r`, as `/proc/sys/kernel/osrelease` says it).
pub fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// The memory this process may use, in bytes, read once: RAM, or its memory cgroup's limit
/// where that is lower. No single buffer can be larger.
pub fn usable_memory() -> u64 {
    memory_limits().usable()
}

/// This process's memory limits and PSI file, read once.
pub fn memory_limits() -> &'static MemoryLimits {
    static LIMITS: LazyLock<MemoryLimits> = LazyLock::new(MemoryLimits::read);
    &LIMITS
}

/// Where the memory cgroup files are; tests point these at a scratch tree.
#[derive(Debug, Clone)]
pub struct CgroupPaths {
    /// `/proc/self/cgroup`: `0::<path>` (v2) and `N:memory:<path>` (v1) lines.
    pub proc_self_cgroup: PathBuf,
    /// Where cgroupfs is mounted: the v2 hierarchy itself, or v1's per-controller directories.
    pub cgroup_root: PathBuf,
    /// `/proc/meminfo`, for `MemTotal`.
    pub meminfo: PathBuf,
    /// The host-wide PSI file, for v1 (which has no per-cgroup PSI) and no cgroup.
    pub host_psi: PathBuf,
}

impl Default for CgroupPaths {
    fn default() -> Self {
        Self {
            proc_self_cgroup: "/proc/self/cgroup".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            meminfo: MEMINFO.into(),
            host_psi: HOST_MEMORY_PSI.into(),
        }
    }
}

/// Which memory cgroup interface limits this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CgroupVersion {
    /// cgroup v1's `memory` hierarchy (`memory.limit_in_bytes`, no per-cgroup PSI).
    V1,
    /// The unified cgroup v2 hierarchy (`memory.max`, `memory.pressure`).
    V2,
}

/// RAM, the memory cgroup's limit, and the PSI file that tells this process's pressure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryLimits {
    /// `MemTotal` (`u64::MAX` if unreadable).
    pub mem_total: u64,
    /// The memory cgroup this process is in, if the memory controller is mounted.
    pub cgroup: Option<(CgroupVersion, PathBuf)>,
    /// The smallest limit on the way from that cgroup to the root (`memory.max`, or v1's
    /// `memory.limit_in_bytes`), and the file that sets it.
    pub cgroup_limit: Option<(u64, PathBuf)>,
    /// The PSI file to watch: the cgroup's `memory.pressure` on v2, else the host's.
    pub psi: PathBuf,
}

/// v1's `memory.limit_in_bytes` when there is no limit: `PAGE_COUNTER_MAX` pages, near 2^63.
const V1_UNLIMITED: u64 = 1 << 62;

impl MemoryLimits {
    /// This process's.
    pub fn read() -> Self {
        Self::read_from(&CgroupPaths::default())
    }

    /// From the files `paths` names.
    pub fn read_from(paths: &CgroupPaths) -> Self {
        let mem_total = MemInfo::read_from(&paths.meminfo)
            .get("MemTotal")
            .unwrap_or(u64::MAX);
        let lines = std::fs::read_to_string(&paths.proc_self_cgroup).unwrap_or_default();
        let v2_mounted = paths.cgroup_root.join("cgroup.controllers").exists();
        let v1_root = paths.cgroup_root.join("memory");
        let cgroup = lines.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let relative = path.trim_start_matches('/');
            if id == "0" && controllers.is_empty() && v2_mounted {
                Some((
                    CgroupVersion::V2,
                    paths.cgroup_root.clone(),
                    relative.to_owned(),
                ))
            } else if controllers.split(',').any(|c| c == "memory") && v1_root.exists() {
                Some((CgroupVersion::V1, v1_root.clone(), relative.to_owned()))
            } else {
                None
            }
        });
        let Some((version, root, relative)) = cgroup else {
            return Self {
                mem_total,
                cgroup: None,
                cgroup_limit: None,
                psi: paths.host_psi.clone(),
            };
        };
        let dir = root.join(&relative);
        let limit_file = match version {
            CgroupVersion::V2 => "memory.max",
            CgroupVersion::V1 => "memory.limit_in_bytes",
        };
        // Every ancestor's limit applies; the smallest wins. The root itself has no limit file
        // on a host, but a container's cgroup namespace root does.
        let mut cgroup_limit: Option<(u64, PathBuf)> = None;
        let mut at = Some(dir.as_path());
        while let Some(d) = at.filter(|d| d.starts_with(&root)) {
            let file = d.join(limit_file);
            let limit = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .filter(|&l| l < V1_UNLIMITED);
            if let Some(l) = limit.filter(|&l| cgroup_limit.as_ref().is_none_or(|c| l < c.0)) {
                cgroup_limit = Some((l, file));
            }
            at = d.parent();
        }
        let cgroup_psi = dir.join("memory.pressure");
        let psi = if version == CgroupVersion::V2 && cgroup_psi.exists() {
            cgroup_psi
        } else {
            paths.host_psi.clone()
        };
        Self {
            mem_total,
            cgroup: Some((version, dir)),
            cgroup_limit,
            psi,
        }
    }

    /// The memory this process may use: RAM, or the cgroup's limit where lower.
    pub fn usable(&self) -> u64 {
        self.cgroup_limit
            .as_ref()
            .map_or(self.mem_total, |(limit, _)| (*limit).min(self.mem_total))
    }

    /// Where [`MemoryLimits::usable`] comes from, for messages and statistics.
    pub fn usable_source(&self) -> String {
        match &self.cgroup_limit {
            Some((limit, file)) if *limit < self.mem_total => {
                format!("{} in {}", ByteSize(*limit), file.display())
            }
            _ => format!("MemTotal {}", ByteSize(self.mem_total)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch tree standing in for /proc and /sys/fs/cgroup, removed on drop.
    struct FakeCgroups {
        root: PathBuf,
        paths: CgroupPaths,
    }

    impl FakeCgroups {
        fn new(tag: &str, proc_self_cgroup: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("dmaheap-cgroup-{tag}-{}", std::process::id()));
            let paths = CgroupPaths {
                proc_self_cgroup: root.join("proc-self-cgroup"),
                cgroup_root: root.join("cgroup"),
                meminfo: root.join("meminfo"),
                host_psi: root.join("proc-pressure-memory"),
            };
            std::fs::create_dir_all(&paths.cgroup_root).unwrap();
            std::fs::write(&paths.proc_self_cgroup, proc_self_cgroup).unwrap();
            std::fs::write(&paths.meminfo, "MemTotal: 8388608 kB\n").unwrap();
            Self { root, paths }
        }

        fn write(&self, file: &str, text: &str) -> PathBuf {
            let path = self.paths.cgroup_root.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for FakeCgroups {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn cgroup_v2_limits_walk_up_and_the_smallest_wins() {
        let f = FakeCgroups::new("v2", "0::/system.slice/app.service\n");
        f.write("cgroup.controllers", "cpu memory pids\n");
        f.write("system.slice/app.service/memory.max", "max\n");
        let slice = f.write("system.slice/memory.max", &format!("{}\n", 2 * GIB));
        let psi = f.write("system.slice/app.service/memory.pressure", "some total=0\n");
        let limits = MemoryLimits::read_from(&f.paths);
        assert_eq!(
            limits.cgroup,
            Some((
                CgroupVersion::V2,
                f.paths.cgroup_root.join("system.slice/app.service")
            ))
        );
        assert_eq!(limits.cgroup_limit, Some((2 * GIB, slice.clone())));
        assert_eq!(limits.psi, psi);
        assert_eq!(limits.usable(), 2 * GIB);
        assert!(limits.usable_source().contains("system.slice/memory.max"));
        // A limit above RAM changes nothing; a container's namespace root may have one too.
        f.write("memory.max", &format!("{}\n", GIB));
        let limits = MemoryLimits::read_from(&f.paths);
        assert_eq!(limits.usable(), GIB);
    }

    #[test]
    fn cgroup_v1_limits_come_from_the_memory_hierarchy_and_psi_stays_host_wide() {
        let f = FakeCgroups::new("v1", "5:cpu,cpuacct:/\n4:memory:/docker/abc\n0::/\n");
        f.write("memory/docker/abc/memory.limit_in_bytes", "536870912\n");
        f.write(
            "memory/docker/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        f.write("memory/memory.limit_in_bytes", "9223372036854771712\n");
        let limits = MemoryLimits::read_from(&f.paths);
        assert_eq!(limits.cgroup.as_ref().unwrap().0, CgroupVersion::V1);
        assert_eq!(limits.usable(), 512 << 20);
        assert_eq!(limits.psi, f.paths.host_psi);
        // No limit anywhere: RAM.
        f.write(
            "memory/docker/abc/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        let limits = MemoryLimits::read_from(&f.paths);
        assert_eq!((&limits.cgroup_limit, limits.usable()), (&None, 8 * GIB));
        assert_eq!(limits.usable_source(), "MemTotal 8.0 GiB");
    }

    #[test]
    fn no_memory_cgroup_means_ram_and_host_psi() {
        let f = FakeCgroups::new("none", "0::/\n");
        let limits = MemoryLimits::read_from(&f.paths);
        assert_eq!(limits.cgroup, None);
        assert_eq!((limits.usable(), &limits.psi), (8 * GIB, &f.paths.host_psi));
    }

    #[test]
    fn meminfo_is_in_bytes() {
        let info = MemInfo::read();
        assert!(info.get("MemTotal").unwrap() > 1 << 20);
        assert!(usable_memory() > 1 << 20);
        assert!(page_size().is_power_of_two());
    }
}
