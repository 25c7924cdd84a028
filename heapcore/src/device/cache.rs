//! Device probes cached per device, so a probe runs once per device and kernel.
//!
//! One JSON file per device under `${XDG_CACHE_HOME:-~/.cache}/dmaheap/devices`, named after
//! the driver and device number. An entry is stale, and the device probed again, when the
//! driver, the kernel release or the set of sources to ask differs from when it was written.

use std::path::PathBuf;

use super::{Device, DeviceReport};
use crate::source::Source;

/// Where device probes are cached (`None`: neither XDG_CACHE_HOME nor HOME is set).
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("dmaheap/devices"))
}

fn file(device: &Device) -> Option<PathBuf> {
    Some(file_in(&cache_dir()?, device))
}

fn file_in(dir: &std::path::Path, device: &Device) -> PathBuf {
    let driver = device.driver.as_deref().unwrap_or("unknown");
    let driver: String = driver
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let (major, minor) = device.devnum;
    dir.join(format!("{driver}-{major}-{minor}.json"))
}

/// The cached report for `device`, if one exists and is current.
pub(super) fn load(device: &Device, sources: &[(String, Source)]) -> Option<DeviceReport> {
    load_from(&file(device)?, device, sources)
}

fn load_from(
    path: &std::path::Path,
    device: &Device,
    sources: &[(String, Source)],
) -> Option<DeviceReport> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut report: DeviceReport = serde_json::from_str(&text).ok()?;
    let same_sources = report.sources.len() == sources.len()
        && sources
            .iter()
            .all(|(name, _)| report.sources.contains_key(name));
    let current = report.device.driver == device.driver
        && report.device.devnum == device.devnum
        && report.kernel == crate::sysinfo::kernel_release()
        && same_sources;
    if !current {
        log::debug!("{} is stale: probing {device} again", path.display());
        return None;
    }
    report.device = device.clone();
    report.cached = true;
    Some(report)
}

/// Writes `report` to the cache (a temporary file renamed into place).
pub(super) fn store(report: &DeviceReport) -> std::io::Result<()> {
    match file(&report.device) {
        Some(path) => store_at(&path, report),
        None => Ok(()),
    }
}

fn store_at(path: &std::path::Path, report: &DeviceReport) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("json.{}", std::process::id()));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{Acceptance, Subsystem};

    #[test]
    fn a_probe_is_reused_until_the_kernel_driver_or_sources_change() {
        let dir = std::env::temp_dir().join(format!("dmaheap-devcache-{}", std::process::id()));
        let device = Device {
            node: "/dev/video4".into(),
            devnum: (81, 4),
            subsystem: Subsystem::Video4Linux,
            driver: Some("vivid".into()),
            iommu: Some(false),
            dma_mask_bits: None,
        };
        let sources = vec![("system".to_owned(), Source::heap("system").unwrap())];
        let report = DeviceReport {
            device: device.clone(),
            kernel: crate::sysinfo::kernel_release(),
            sources: [("system".to_owned(), Acceptance::Accepted)].into(),
            cached: false,
        };
        let path = file_in(&dir, &device);
        store_at(&path, &report).unwrap();
        let again = load_from(&path, &device, &sources).expect("a current entry");
        assert!(again.cached);
        assert_eq!(again.sources, report.sources);
        // Another kernel, another driver, another set of sources: probe again.
        let other_kernel = DeviceReport {
            kernel: "0.0.0".into(),
            ..report.clone()
        };
        store_at(&path, &other_kernel).unwrap();
        assert!(load_from(&path, &device, &sources).is_none());
        store_at(&path, &report).unwrap();
        let rebound = Device {
            driver: Some("uvcvideo".into()),
            ..device.clone()
        };
        assert!(load_from(&path, &rebound, &sources).is_none());
        let more = vec![
            sources[0].clone(),
            ("reserved".to_owned(), Source::heap("reserved").unwrap()),
        ];
        assert!(load_from(&path, &device, &more).is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
