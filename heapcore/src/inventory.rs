//! Discovery: which heaps and other sources this machine has, what each gives, who may use it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::access::Access;
use crate::error::{Error, Result};
use crate::heap::{CMA_ALIAS, DEFAULT_CMA_NAMES, HeapKind, HeapName, HeapProperties};
use crate::sysinfo;

/// Where the kernel publishes what discovery reads; tests point it at a scratch directory.
#[derive(Debug, Clone)]
pub struct SysPaths {
    /// The heap devices, `/dev/dma_heap`.
    pub dma_heap_dir: PathBuf,
    /// `/dev/udmabuf`.
    pub udmabuf_dev: PathBuf,
    /// The udmabuf module's `size_limit_mb` parameter.
    pub udmabuf_size_limit: PathBuf,
    /// The CMA areas, `/sys/kernel/mm/cma` (each CMA heap is named after its area).
    pub cma_areas_dir: PathBuf,
    /// `/proc/meminfo`, for the CMA totals.
    pub meminfo: PathBuf,
    /// The dma_heap module's parameters (`mem_accounting`, Linux 7.0+).
    pub dma_heap_params: PathBuf,
}

impl Default for SysPaths {
    fn default() -> Self {
        Self {
            dma_heap_dir: "/dev/dma_heap".into(),
            udmabuf_dev: "/dev/udmabuf".into(),
            udmabuf_size_limit: "/sys/module/udmabuf/parameters/size_limit_mb".into(),
            cma_areas_dir: "/sys/kernel/mm/cma".into(),
            meminfo: sysinfo::MEMINFO.into(),
            dma_heap_params: "/sys/module/dma_heap/parameters".into(),
        }
    }
}

/// One heap device.
#[derive(Debug, Clone, Serialize)]
pub struct HeapInfo {
    /// The name in `/dev/dma_heap` (for an alias, the alias).
    pub name: HeapName,
    /// The device node.
    pub path: PathBuf,
    /// For a symlinked alias (e.g. Raspberry Pi's `vidbuf_cached`), the heap it points to.
    pub alias_of: Option<HeapName>,
    /// What kind of memory it gives (of the alias's target, for an alias).
    pub kind: HeapKind,
    /// Whether this is the default CMA area's heap, whichever name this kernel gives it.
    pub default_cma: bool,
    /// For a CMA heap, the CMA area (`/sys/kernel/mm/cma/<area>`) its memory comes from,
    /// where that is known: Linux 6.19+ shows one area under two names
    /// (`default_cma_region` and the area's own), and both lead here.
    pub cma_area: Option<String>,
    /// What is known of its memory.
    pub properties: HeapProperties,
    /// Whether this process may open it.
    pub access: Access,
}

/// `/dev/udmabuf`: turns sealed memfds into dma-bufs.
#[derive(Debug, Clone, Serialize)]
pub struct UdmabufInfo {
    /// The device node.
    pub path: PathBuf,
    /// Whether it exists and this process may open it.
    pub access: Access,
    /// The module's `size_limit_mb` in bytes: 64 MiB by default before Linux 6.17. `None` when
    /// unknown, or when the parameter is `INT_MAX`, newer kernels' default, which means no
    /// limit beyond memory (see `size_limit_mb`).
    pub size_limit: Option<u64>,
    /// The parameter as the kernel shows it, in MiB.
    pub size_limit_mb: Option<u64>,
}

/// `size_limit_mb`'s value for "no limit" (INT_MAX, the default since Linux 6.17).
const UDMABUF_NO_LIMIT_MB: u64 = i32::MAX as u64;

/// One CMA area (`/sys/kernel/mm/cma/<name>`), which one or more CMA heaps give out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CmaArea {
    /// The area's name (`reserved` for `cma=`, the reserved-memory node's name otherwise).
    pub name: String,
    /// Its size in bytes (`total_pages`, Linux 6.19+).
    pub total: Option<u64>,
    /// What is free in it now (`available_pages`, Linux 6.19+).
    pub available: Option<u64>,
}

/// CMA totals from `/proc/meminfo` (all areas together).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CmaUsage {
    /// `CmaTotal` in bytes.
    pub total: u64,
    /// `CmaFree` in bytes.
    pub free: u64,
}

/// How the CMA heap aligns a buffer: `DMA_HEAP_IOCTL_ALLOC` takes no alignment, and the heap
/// asks `cma_alloc` for `min(get_order(size), CONFIG_CMA_ALIGNMENT)` pages of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CmaAlignment {
    /// `CONFIG_CMA_ALIGNMENT`, an order of pages.
    pub order: u32,
    /// The kernel configuration it was read from; `None`: the Kconfig default, assumed.
    pub from: Option<PathBuf>,
}

impl CmaAlignment {
    /// The Kconfig default of `CONFIG_CMA_ALIGNMENT`.
    pub const DEFAULT_ORDER: u32 = 8;

    /// Where this kernel's configuration may be: `/proc/config.gz` (CONFIG_IKCONFIG_PROC), then
    /// `/boot/config-<release>`.
    pub fn kernel_configs() -> Vec<PathBuf> {
        vec![
            "/proc/config.gz".into(),
            PathBuf::from(format!("/boot/config-{}", sysinfo::kernel_release())),
        ]
    }

    /// Reads `CONFIG_CMA_ALIGNMENT` from the first of `configs` (plain or gzip) that has it;
    /// assumes the default when none does.
    pub fn read_from(configs: &[PathBuf]) -> Self {
        configs
            .iter()
            .find_map(|path| {
                let order = read_kernel_config(path)?
                    .lines()
                    .find_map(|l| l.strip_prefix("CONFIG_CMA_ALIGNMENT="))?
                    .trim()
                    .parse()
                    .ok()?;
                Some(Self {
                    order,
                    from: Some(path.clone()),
                })
            })
            .unwrap_or(Self {
                order: Self::DEFAULT_ORDER,
                from: None,
            })
    }

    /// The largest physical alignment the CMA heap gives a buffer of `size` bytes.
    pub fn max_alignment(&self, size: u64, page: u64) -> u64 {
        let pages = size.div_ceil(page).max(1);
        // get_order(): the power of two of pages that holds the buffer.
        let order = pages.next_power_of_two().trailing_zeros();
        page << order.min(self.order).min(62 - page.trailing_zeros())
    }
}

/// A kernel configuration file, gzip-compressed (`/proc/config.gz`) or not.
fn read_kernel_config(path: &Path) -> Option<String> {
    use std::io::Read;
    let bytes = std::fs::read(path).ok()?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return String::from_utf8(bytes).ok();
    }
    let mut text = String::new();
    // A kernel configuration is a few hundred KiB; anything far larger is not one.
    flate2::read::GzDecoder::new(bytes.as_slice())
        .take(16 << 20)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Everything discovery found.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    /// The heap devices, sorted by name.
    pub heaps: Vec<HeapInfo>,
    /// `/dev/udmabuf`, present or not.
    pub udmabuf: UdmabufInfo,
    /// The CMA totals, where the kernel has CMA memory.
    pub cma: Option<CmaUsage>,
    /// The CMA areas, each with its own size where the kernel says (CONFIG_CMA_SYSFS).
    pub cma_areas: Vec<CmaArea>,
    /// Whether heap allocations are charged to the caller's memory cgroup
    /// (`dma_heap.mem_accounting`, Linux 7.0+; `None` before).
    pub mem_accounting: Option<bool>,
    /// How the CMA heap aligns buffers.
    pub cma_alignment: CmaAlignment,
    #[serde(skip)]
    paths: SysPaths,
}

impl Inventory {
    /// Looks at this machine.
    pub fn discover() -> Self {
        Self::discover_with(SysPaths::default())
    }

    /// Looks at the files `paths` names.
    pub fn discover_with(paths: SysPaths) -> Self {
        let mut cma_areas = read_dir_names(&paths.cma_areas_dir);
        cma_areas.sort();
        let mut heaps: Vec<HeapInfo> = read_dir_names(&paths.dma_heap_dir)
            .into_iter()
            .filter_map(|name| heap_info(&paths.dma_heap_dir, &name, &cma_areas))
            .collect();
        heaps.sort_by(|a, b| a.name.cmp(&b.name));
        let size_limit_mb = std::fs::read_to_string(&paths.udmabuf_size_limit)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let udmabuf = UdmabufInfo {
            access: Access::check(&paths.udmabuf_dev),
            size_limit: size_limit_mb
                .filter(|&mb| mb < UDMABUF_NO_LIMIT_MB)
                .map(|mb| mb << 20),
            size_limit_mb,
            path: paths.udmabuf_dev.clone(),
        };
        let page = sysinfo::page_size();
        let pages = |area: &str, file: &str| {
            std::fs::read_to_string(paths.cma_areas_dir.join(area).join(file))
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
                .map(|n| n * page)
        };
        let areas = cma_areas
            .iter()
            .map(|name| CmaArea {
                name: name.clone(),
                total: pages(name, "total_pages"),
                available: pages(name, "available_pages"),
            })
            .collect();
        let mem_accounting = std::fs::read_to_string(paths.dma_heap_params.join("mem_accounting"))
            .ok()
            .map(|v| matches!(v.trim(), "Y" | "y" | "1"));
        let meminfo = sysinfo::MemInfo::read_from(&paths.meminfo);
        let cma = match (meminfo.get("CmaTotal"), meminfo.get("CmaFree")) {
            (Some(total), Some(free)) if total > 0 => Some(CmaUsage { total, free }),
            _ => None,
        };
        Self {
            heaps,
            udmabuf,
            cma,
            cma_areas: areas,
            mem_accounting,
            cma_alignment: CmaAlignment::read_from(&CmaAlignment::kernel_configs()),
            paths,
        }
    }

    /// The paths this inventory was read from.
    pub fn paths(&self) -> &SysPaths {
        &self.paths
    }

    /// Whether `/dev/udmabuf` exists.
    pub fn has_udmabuf(&self) -> bool {
        !matches!(self.udmabuf.access, Access::Missing)
    }

    /// Finds a heap by name. Besides exact names this understands `cma` and every name the
    /// default CMA heap has had (`linux,cma`, `reserved`, ...), so a name written for one
    /// kernel keeps working on another.
    ///
    /// Where one CMA area has several names (`default_cma_region` and `reserved` on Linux
    /// 6.19+), every one of them finds the same heap, the one named after the area: a region
    /// is one source, for pools, budgets and fallback alike.
    pub fn find(&self, requested: &str) -> Result<&HeapInfo> {
        let name = HeapName::new(requested)?;
        if let Some(heap) = self.heaps.iter().find(|h| h.name == name) {
            return Ok(self.region_heap(heap));
        }
        if requested == CMA_ALIAS || DEFAULT_CMA_NAMES.contains(&requested) {
            let default = self.heaps.iter().find(|h| h.default_cma);
            let any_cma = || {
                self.heaps
                    .iter()
                    .find(|h| h.kind == HeapKind::Cma && requested == CMA_ALIAS)
            };
            if let Some(heap) = default.or_else(any_cma) {
                return Ok(self.region_heap(heap));
            }
        }
        Err(Error::UnknownHeap {
            name: requested.to_owned(),
            available: self.heaps.iter().map(|h| h.name.to_string()).collect(),
        })
    }
}

impl Inventory {
    /// The heap that stands for `heap`'s memory: for a CMA heap whose area also has a heap
    /// of its own name, that one; otherwise `heap` itself.
    fn region_heap<'a>(&'a self, heap: &'a HeapInfo) -> &'a HeapInfo {
        heap.cma_area
            .as_deref()
            .and_then(|area| self.heaps.iter().find(|h| h.name.as_str() == area))
            .unwrap_or(heap)
    }

    /// The other names of `heap`'s memory: heaps over the same CMA area, and symlinked
    /// aliases of it or of what it aliases.
    pub fn aliases_of(&self, heap: &HeapInfo) -> Vec<&HeapName> {
        let target = heap.alias_of.as_ref().unwrap_or(&heap.name);
        self.heaps
            .iter()
            .filter(|h| h.name != heap.name)
            .filter(|h| {
                (heap.cma_area.is_some() && h.cma_area == heap.cma_area)
                    || h.alias_of.as_ref().unwrap_or(&h.name) == target
            })
            .map(|h| &h.name)
            .collect()
    }

    /// The CMA area a heap's memory comes from, with its size where known.
    pub fn cma_area_of(&self, heap: &HeapInfo) -> Option<&CmaArea> {
        let area = heap.cma_area.as_deref()?;
        self.cma_areas.iter().find(|a| a.name == area)
    }
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect()
}

fn heap_info(dir: &Path, name: &str, cma_areas: &[String]) -> Option<HeapInfo> {
    let Ok(heap_name) = HeapName::new(name) else {
        log::warn!("ignoring {}/{name:?}: not a plain heap name", dir.display());
        return None;
    };
    let path = dir.join(name);
    // A vendor alias is a symlink to another heap node; its kind is that of the target.
    let alias_of = match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = std::fs::canonicalize(&path).ok()?;
            target
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| HeapName::new(n).ok())
        }
        Ok(_) => None,
        Err(_) => return None,
    };
    let kernel_name = alias_of.as_ref().map_or(name, HeapName::as_str);
    let kind = HeapKind::recognise(kernel_name, cma_areas);
    let default_cma = kind == HeapKind::Cma && DEFAULT_CMA_NAMES.contains(&kernel_name);
    // A heap named after an area gives that area; the default CMA heap gives the default
    // area, which is the only one when only one exists (several: unknown from sysfs).
    let cma_area = match kind {
        HeapKind::Cma if cma_areas.iter().any(|a| a == kernel_name) => Some(kernel_name.into()),
        HeapKind::Cma if default_cma && cma_areas.len() == 1 => Some(cma_areas[0].clone()),
        _ => None,
    };
    Some(HeapInfo {
        default_cma,
        cma_area,
        properties: kind.properties(),
        access: Access::check(&path),
        name: heap_name,
        path,
        alias_of,
        kind,
    })
}

/// A fake `/dev` and `/sys` in a scratch directory, for tests: regular files stand in for device
/// nodes. Removed on drop.
#[cfg(test)]
pub(crate) struct FakeMachine {
    pub(crate) root: PathBuf,
    pub(crate) paths: SysPaths,
    /// The kernel configuration the inventory reads (none: the default is assumed).
    pub(crate) kernel_config: Option<PathBuf>,
}

#[cfg(test)]
impl FakeMachine {
    /// A machine with these heap nodes and CMA areas, and nothing else.
    pub(crate) fn new(heaps: &[&str], cma_areas: &[&str]) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("dmaheap-fake-{}-{n}", std::process::id()));
        let paths = SysPaths {
            dma_heap_dir: root.join("dma_heap"),
            udmabuf_dev: root.join("udmabuf"),
            udmabuf_size_limit: root.join("size_limit_mb"),
            cma_areas_dir: root.join("cma"),
            meminfo: root.join("meminfo"),
            dma_heap_params: root.join("dma_heap_params"),
        };
        std::fs::create_dir_all(&paths.dma_heap_dir).unwrap();
        std::fs::create_dir_all(&paths.cma_areas_dir).unwrap();
        for heap in heaps {
            std::fs::write(paths.dma_heap_dir.join(heap), b"").unwrap();
        }
        for area in cma_areas {
            std::fs::create_dir_all(paths.cma_areas_dir.join(area)).unwrap();
        }
        Self {
            root,
            paths,
            kernel_config: None,
        }
    }

    /// Writes a kernel configuration, gzip-compressed as /proc/config.gz is or plain.
    pub(crate) fn with_kernel_config(mut self, text: &str, gzip: bool) -> Self {
        use std::io::Write;
        let path = self.root.join(if gzip { "config.gz" } else { "config" });
        let bytes = if gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(text.as_bytes()).unwrap();
            gz.finish().unwrap()
        } else {
            text.as_bytes().to_vec()
        };
        std::fs::write(&path, bytes).unwrap();
        self.kernel_config = Some(path);
        self
    }

    /// Adds `/dev/udmabuf` with a `size_limit_mb` of `limit_mb`.
    pub(crate) fn with_udmabuf(self, limit_mb: u64) -> Self {
        std::fs::write(&self.paths.udmabuf_dev, b"").unwrap();
        std::fs::write(&self.paths.udmabuf_size_limit, format!("{limit_mb}\n")).unwrap();
        self
    }

    /// Gives a CMA area the sizes Linux 6.19+ shows in sysfs, in pages.
    pub(crate) fn with_cma_area_pages(self, area: &str, total: u64, available: u64) -> Self {
        let dir = self.paths.cma_areas_dir.join(area);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("total_pages"), format!("{total}\n")).unwrap();
        std::fs::write(dir.join("available_pages"), format!("{available}\n")).unwrap();
        self
    }

    /// Writes the dma_heap module's `mem_accounting` parameter.
    pub(crate) fn with_mem_accounting(self, on: bool) -> Self {
        std::fs::create_dir_all(&self.paths.dma_heap_params).unwrap();
        let value = if on { "Y\n" } else { "N\n" };
        std::fs::write(self.paths.dma_heap_params.join("mem_accounting"), value).unwrap();
        self
    }

    /// Writes `/proc/meminfo`.
    pub(crate) fn with_meminfo(self, text: &str) -> Self {
        std::fs::write(&self.paths.meminfo, text).unwrap();
        self
    }

    /// What discovery finds on this machine.
    pub(crate) fn inventory(&self) -> Inventory {
        let mut inventory = Inventory::discover_with(self.paths.clone());
        inventory.cma_alignment = CmaAlignment::read_from(self.kernel_config.as_slice());
        inventory
    }
}

#[cfg(test)]
impl Drop for FakeMachine {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_heaps_and_recognises_their_kinds() {
        let m = FakeMachine::new(&["system", "reserved", "mystery"], &["reserved"])
            .with_udmabuf(64)
            .with_meminfo("MemTotal: 100 kB\nCmaTotal: 131072 kB\nCmaFree: 1024 kB\n");
        let inv = m.inventory();
        let names: Vec<_> = inv.heaps.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["mystery", "reserved", "system"]);
        assert_eq!(inv.find("system").unwrap().kind, HeapKind::System);
        assert_eq!(inv.find("reserved").unwrap().kind, HeapKind::Cma);
        assert_eq!(inv.find("mystery").unwrap().kind, HeapKind::Unknown);
        assert_eq!(inv.udmabuf.size_limit, Some(64 << 20));
        assert!(inv.has_udmabuf());
        let cma = inv.cma.unwrap();
        assert_eq!((cma.total, cma.free), (128 << 20, 1 << 20));
    }

    #[test]
    fn any_default_cma_name_finds_the_default_cma_heap() {
        let m = FakeMachine::new(&["system", "reserved"], &[]);
        let inv = m.inventory();
        for name in ["cma", "linux,cma", "default_cma_region", "default-pool"] {
            assert_eq!(inv.find(name).unwrap().name.as_str(), "reserved", "{name}");
        }
    }

    #[test]
    fn cma_alias_finds_a_region_heap_when_no_default_exists() {
        let m = FakeMachine::new(
            &["system", "framebuffer@80000000"],
            &["framebuffer@80000000"],
        );
        let inv = m.inventory();
        assert_eq!(
            inv.find("cma").unwrap().name.as_str(),
            "framebuffer@80000000"
        );
        assert!(matches!(
            inv.find("linux,cma"),
            Err(Error::UnknownHeap { .. })
        ));
    }

    #[test]
    fn symlinked_aliases_take_their_targets_kind() {
        let m = FakeMachine::new(&["system"], &[]);
        std::os::unix::fs::symlink("system", m.paths.dma_heap_dir.join("vidbuf_cached")).unwrap();
        let inv = m.inventory();
        let alias = inv.find("vidbuf_cached").unwrap();
        assert_eq!(alias.alias_of.as_ref().unwrap().as_str(), "system");
        assert_eq!(alias.kind, HeapKind::System);
    }

    #[test]
    fn unknown_heaps_list_what_exists_and_bad_names_are_refused() {
        let m = FakeMachine::new(&["system"], &[]);
        let inv = m.inventory();
        let err = inv.find("nope").unwrap_err().to_string();
        assert!(err.contains("heaps here: system"), "{err}");
        assert!(matches!(
            inv.find("../system"),
            Err(Error::InvalidHeapName { .. })
        ));
    }

    #[test]
    fn cma_alignment_comes_from_the_kernel_config_or_is_assumed() {
        let page = 4096;
        for gzip in [true, false] {
            let m = FakeMachine::new(&[], &[])
                .with_kernel_config("CONFIG_CMA=y\nCONFIG_CMA_ALIGNMENT=4\n", gzip);
            let a = m.inventory().cma_alignment;
            assert_eq!((a.order, &a.from), (4, &m.kernel_config));
            assert_eq!(a.max_alignment(4 << 20, page), 64 << 10);
        }
        let m = FakeMachine::new(&[], &[]).with_kernel_config("# CONFIG_CMA is not set\n", true);
        let assumed = m.inventory().cma_alignment;
        assert_eq!(
            (assumed.order, &assumed.from),
            (CmaAlignment::DEFAULT_ORDER, &None)
        );
        // get_order(): 64 KiB is 16 pages, order 4; 4 MiB is order 10, capped at 8.
        assert_eq!(assumed.max_alignment(64 << 10, page), 64 << 10);
        assert_eq!(assumed.max_alignment((64 << 10) + 1, page), 128 << 10);
        assert_eq!(assumed.max_alignment(4 << 20, page), 1 << 20);
        assert_eq!(assumed.max_alignment(1, page), page);
    }

    #[test]
    fn a_machine_without_heaps_says_which_kernel_options_are_missing() {
        let mut m = FakeMachine::new(&[], &[]);
        m.paths.dma_heap_dir = m.root.join("absent");
        let inv = m.inventory();
        let err = inv.find("system").unwrap_err().to_string();
        assert!(err.contains("CONFIG_DMABUF_HEAPS"), "{err}");
        assert!(!inv.has_udmabuf());
    }

    /// Linux 6.19+: one CMA area under its own name and as `default_cma_region`; udmabuf
    /// without a size limit; allocations not charged to memory cgroups.
    #[test]
    fn one_cma_area_under_two_names_is_one_region() {
        let m = FakeMachine::new(&["default_cma_region", "reserved", "system"], &["reserved"])
            .with_cma_area_pages("reserved", 32768, 30000)
            .with_udmabuf(i32::MAX as u64)
            .with_mem_accounting(false);
        let inv = m.inventory();
        for name in ["cma", "default_cma_region", "reserved", "linux,cma"] {
            assert_eq!(inv.find(name).unwrap().name.as_str(), "reserved", "{name}");
        }
        let default = inv
            .heaps
            .iter()
            .find(|h| h.name.as_str() == "default_cma_region");
        let default = default.unwrap();
        assert_eq!(default.cma_area.as_deref(), Some("reserved"));
        let aliases: Vec<&str> = inv.aliases_of(default).iter().map(|h| h.as_str()).collect();
        assert_eq!(aliases, ["reserved"]);
        let page = sysinfo::page_size();
        let area = inv.cma_area_of(default).unwrap();
        assert_eq!(
            (area.total, area.available),
            (Some(32768 * page), Some(30000 * page))
        );
        assert_eq!(inv.udmabuf.size_limit, None, "INT_MAX MiB means no limit");
        assert_eq!(inv.udmabuf.size_limit_mb, Some(i32::MAX as u64));
        assert_eq!(inv.mem_accounting, Some(false));
        // The solver counts the region once.
        let list = crate::Source::parse_list("default_cma_region reserved", &inv).unwrap();
        let c = crate::solve_explicit(&list, &crate::Constraints::new(1 << 20), &inv);
        assert_eq!(c.sources().len(), 1, "{c}");
    }

    #[test]
    fn before_linux_7_nothing_new_is_claimed() {
        let m = FakeMachine::new(&["reserved", "system"], &["reserved"]).with_udmabuf(64);
        let inv = m.inventory();
        assert_eq!(inv.udmabuf.size_limit, Some(64 << 20));
        assert_eq!(inv.mem_accounting, None);
        assert_eq!(inv.cma_areas[0].total, None);
        let reserved = inv.find("reserved").unwrap();
        assert!(inv.aliases_of(reserved).is_empty());
    }
}
