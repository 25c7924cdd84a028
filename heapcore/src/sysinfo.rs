//! Small readers of what the kernel says about memory: `/proc/meminfo` and the page size.

use std::collections::HashMap;
use std::path::Path;
use std::sync::LazyLock;

/// `/proc/meminfo`, values in bytes.
#[derive(Debug, Clone, Default)]
pub struct MemInfo(HashMap<String, u64>);

impl MemInfo {
    /// Reads `/proc/meminfo`.
    pub fn read() -> Self {
        Self::read_from(Path::new("/proc/meminfo"))
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

/// This machine's RAM in bytes, read once; no single buffer can be larger.
pub fn total_memory() -> u64 {
    static TOTAL: LazyLock<u64> =
        LazyLock::new(|| MemInfo::read().get("MemTotal").unwrap_or(u64::MAX));
    *TOTAL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_in_bytes() {
        let info = MemInfo::read();
        assert!(info.get("MemTotal").unwrap() > 1 << 20);
        assert!(total_memory() > 1 << 20);
        assert!(page_size().is_power_of_two());
    }
}
