//! The devices a buffer passes through, and which heaps each can use.
//!
//! A display or camera without an IOMMU needs physically contiguous memory; a codec behind an
//! IOMMU does not. sysfs says whether a device sits behind an IOMMU (`iommu_group`), but not
//! whether its driver gathers scattered pages (dma-sg) or needs one contiguous block
//! (dma-contig): only an import says that. So [`DeviceReport::for_device`] hands the device a
//! small buffer from every dma-buf source this machine has (V4L2: REQBUFS/PREPARE_BUF with
//! `V4L2_MEMORY_DMABUF`; DRM: PRIME import and ADDFB2) and records which it took, cached per
//! device (driver, device number, kernel release, the heaps probed) so a probe runs once.
//! The solver rules out every source a device refused (`Constraints::devices`).

mod cache;
mod probe;

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use cache::cache_dir;

/// What kind of device node it is, by its sysfs subsystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subsystem {
    /// A V4L2 video node (`/dev/videoN`): capture, output or a memory-to-memory codec.
    Video4Linux,
    /// A DRM node (`/dev/dri/cardN` for displays, `/dev/dri/renderDN` for rendering).
    Drm,
    /// A media controller (`/dev/mediaN`): the pipeline of a camera, not a buffer user itself.
    Media,
    /// Anything else.
    Other,
}

/// A device node and what sysfs says about the device behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The node (`/dev/video4`, `/dev/dri/card0`).
    pub node: PathBuf,
    /// The character device number (major, minor).
    pub devnum: (u32, u32),
    /// The subsystem the node belongs to.
    pub subsystem: Subsystem,
    /// The driver bound to the device (`vivid`, `vkms`, `vicodec`), where sysfs shows it.
    pub driver: Option<String>,
    /// Whether the device sits behind an IOMMU (it has an `iommu_group`): it can use
    /// scattered pages. `None`: sysfs did not say.
    pub iommu: Option<bool>,
    /// The DMA mask's width in bits, where sysfs shows it (`dma_mask_bits`, PCI devices).
    pub dma_mask_bits: Option<u32>,
}

impl Device {
    /// The device behind a node (`/dev/video0`, `/dev/dri/card0`, `/dev/dri/renderD128`,
    /// `/dev/media0`).
    pub fn open(node: &Path) -> Result<Self> {
        let meta = std::fs::metadata(node)
            .map_err(|e| Error::io(format!("looking at {}", node.display()), e))?;
        if !meta.file_type().is_char_device() {
            return Err(Error::InvalidDevice {
                device: node.display().to_string(),
                reason: "not a character device node".into(),
            });
        }
        let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
        Self::describe(node.to_owned(), split_devnum(rdev), Path::new("/sys"))
    }

    /// The device with character device number `devnum` (a `dev_t`, as PipeWire's
    /// `pipewire.device-ids` carry them), found through sysfs' `uevent`.
    pub fn from_devnum(devnum: u64) -> Result<Self> {
        Self::from_devnum_in(devnum, Path::new("/sys"), Path::new("/dev"))
    }

    fn from_devnum_in(devnum: u64, sys: &Path, dev: &Path) -> Result<Self> {
        let (major, minor) = split_devnum(devnum);
        let uevent = sys.join(format!("dev/char/{major}:{minor}/uevent"));
        let text = std::fs::read_to_string(&uevent).map_err(|_| Error::InvalidDevice {
            device: format!("{major}:{minor}"),
            reason: "no character device with that number".into(),
        })?;
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))
            .ok_or_else(|| Error::InvalidDevice {
                device: format!("{major}:{minor}"),
                reason: format!("{} names no node", uevent.display()),
            })?;
        Self::describe(dev.join(name), (major, minor), sys)
    }

    /// Reads what sysfs says about device `devnum`, known as `node`.
    fn describe(node: PathBuf, devnum: (u32, u32), sys: &Path) -> Result<Self> {
        let (major, minor) = devnum;
        let class_dev = sys.join(format!("dev/char/{major}:{minor}"));
        let link_name = |p: PathBuf| {
            std::fs::read_link(p)
                .ok()
                .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
        };
        let subsystem = match link_name(class_dev.join("subsystem")).as_deref() {
            Some("video4linux") => Subsystem::Video4Linux,
            Some("drm") => Subsystem::Drm,
            Some("media") => Subsystem::Media,
            _ => Subsystem::Other,
        };
        let device = class_dev.join("device");
        let iommu = if device.join("iommu_group").exists() {
            Some(true)
        } else if device.exists() {
            Some(false)
        } else {
            None
        };
        // Virtual devices (vkms, vgem) hang off a generic bus ("faux" on 7.x, none on 6.12):
        // their own name says more than the bus driver's.
        let driver = match link_name(device.join("driver")) {
            Some(name) if name != "faux_driver" => Some(name),
            _ => std::fs::canonicalize(&device)
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned())),
        };
        Ok(Self {
            node,
            devnum,
            subsystem,
            driver,
            iommu,
            dma_mask_bits: std::fs::read_to_string(device.join("dma_mask_bits"))
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        })
    }

    /// Every V4L2 video, DRM and media node this machine has, sorted.
    pub fn all() -> Vec<Self> {
        let mut nodes: Vec<PathBuf> = ["/dev", "/dev/dri"]
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                ["video", "media", "card", "renderD"]
                    .iter()
                    .any(|prefix| name.starts_with(prefix))
            })
            .collect();
        nodes.sort();
        nodes.iter().filter_map(|n| Self::open(n).ok()).collect()
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.node.display())?;
        if let Some(driver) = &self.driver {
            write!(f, " ({driver})")?;
        }
        Ok(())
    }
}

/// glibc's `gnu_dev_major`/`gnu_dev_minor`: a 64-bit `dev_t` as (major, minor).
pub(crate) fn split_devnum(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// Whether a device took a buffer from one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "detail", rename_all = "kebab-case")]
pub enum Acceptance {
    /// It imported the buffer.
    Accepted,
    /// It refused the buffer; what it said (the ioctl and errno).
    Refused(String),
    /// Nothing could be asked (no dma-buf import on this node, no format to size a buffer).
    Unknown(String),
}

/// Which sources a device takes, by source name (`system`, `reserved`, `udmabuf`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// The device.
    pub device: Device,
    /// The kernel the probe ran on.
    pub kernel: String,
    /// Each dma-buf source probed, by name, and what the device said.
    pub sources: BTreeMap<String, Acceptance>,
    /// Read from the cache rather than probed now.
    #[serde(skip)]
    pub cached: bool,
}

impl DeviceReport {
    /// The report for `node`: from the cache when it is current, otherwise probed now (and
    /// cached). A probe allocates one small buffer per dma-buf source.
    pub fn for_node(node: &Path, alloc: &crate::Allocator) -> Result<Self> {
        Self::for_device(&Device::open(node)?, alloc)
    }

    /// The report for `device`: cached when current, otherwise probed now and cached.
    pub fn for_device(device: &Device, alloc: &crate::Allocator) -> Result<Self> {
        let sources = probe::candidates(alloc);
        if let Some(report) = cache::load(device, &sources) {
            return Ok(report);
        }
        let report = probe::probe(device, alloc, &sources);
        if let Err(e) = cache::store(&report) {
            log::debug!("device probe of {device} not cached: {e}");
        }
        Ok(report)
    }

    /// Probes `device` now, whatever the cache holds (and caches the result).
    pub fn probe_now(device: &Device, alloc: &crate::Allocator) -> Self {
        let report = probe::probe(device, alloc, &probe::candidates(alloc));
        if let Err(e) = cache::store(&report) {
            log::debug!("device probe of {device} not cached: {e}");
        }
        report
    }

    /// What the device said of the source named `name`, if it was asked.
    pub fn acceptance(&self, name: &str) -> Option<&Acceptance> {
        self.sources.get(name)
    }
}

impl fmt::Display for DeviceReport {
    /// The `dmaheap probe` text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.device;
        let iommu = match d.iommu {
            Some(true) => "behind an IOMMU",
            Some(false) => "no IOMMU",
            None => "IOMMU unknown",
        };
        write!(
            f,
            "{d}: {:?} {}:{}, {iommu}",
            d.subsystem, d.devnum.0, d.devnum.1
        )?;
        if let Some(bits) = d.dma_mask_bits {
            write!(f, ", {bits}-bit DMA mask")?;
        }
        writeln!(
            f,
            " ({} on {})",
            if self.cached { "cached" } else { "probed now" },
            self.kernel
        )?;
        for (source, acceptance) in &self.sources {
            match acceptance {
                Acceptance::Accepted => writeln!(f, "  {source}: accepted")?,
                Acceptance::Refused(why) => writeln!(f, "  {source}: refused ({why})")?,
                Acceptance::Unknown(why) => writeln!(f, "  {source}: not asked ({why})")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_split_as_glibc_does() {
        assert_eq!(split_devnum(0xe200), (226, 0));
        assert_eq!(split_devnum((226 << 8) | 128), (226, 128));
        // A major and minor beyond the old 8/8 bits (glibc's gnu_dev_makedev).
        let (major, minor) = (0x1234u64, 0x45678u64);
        let dev = ((major & 0xfff) << 8)
            | ((major & !0xfff) << 32)
            | (minor & 0xff)
            | ((minor & !0xff) << 12);
        assert_eq!(split_devnum(dev), (0x1234, 0x45678));
    }

    #[test]
    fn a_devnum_is_found_through_sysfs_uevent() {
        let root = std::env::temp_dir().join(format!("dmaheap-dev-{}", std::process::id()));
        let class = root.join("sys/dev/char/81:4");
        std::fs::create_dir_all(class.join("device")).unwrap();
        std::fs::write(class.join("uevent"), "MAJOR=81\nMINOR=4\nDEVNAME=video4\n").unwrap();
        std::os::unix::fs::symlink("../../class/video4linux", class.join("subsystem")).unwrap();
        std::os::unix::fs::symlink(
            "../../../bus/platform/drivers/vivid",
            class.join("device/driver"),
        )
        .unwrap();
        let dev =
            Device::from_devnum_in((81 << 8) | 4, &root.join("sys"), Path::new("/dev")).unwrap();
        assert_eq!(dev.node, Path::new("/dev/video4"));
        assert_eq!(dev.subsystem, Subsystem::Video4Linux);
        assert_eq!(dev.driver.as_deref(), Some("vivid"));
        assert_eq!(dev.iommu, Some(false), "a device without iommu_group");
        assert!(Device::from_devnum_in(1, &root.join("sys"), Path::new("/dev")).is_err());
        std::fs::remove_dir_all(root).unwrap();
    }
}
