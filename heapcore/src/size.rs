//! Buffer sizes: validation, page rounding and the human forms users type (`8MiB`,
//! `3840x2160:NV12`).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::format::{FrameLayout, VideoFormat};
use crate::sysinfo;

pub use crate::bytes::ByteSize;

/// Rounds `size` up to whole pages and checks that some source could ever give it: not zero,
/// no overflow, not more than this machine's RAM or this process's memory cgroup limit (a
/// sparse memfd would accept it and the process would die touching it).
pub fn page_aligned(size: u64) -> Result<u64> {
    if size == 0 {
        return Err(Error::InvalidSize {
            size,
            reason: "a buffer needs at least one byte".into(),
        });
    }
    let page = sysinfo::page_size();
    let aligned = size
        .checked_next_multiple_of(page)
        .ok_or_else(|| Error::InvalidSize {
            size,
            reason: "it overflows when rounded up to the page size".into(),
        })?;
    if aligned > sysinfo::usable_memory() {
        return Err(Error::InvalidSize {
            size,
            reason: format!(
                "it is larger than the memory this process may use ({})",
                sysinfo::memory_limits().usable_source()
            ),
        });
    }
    if usize::try_from(aligned).is_err() {
        return Err(Error::InvalidSize {
            size,
            reason: "it does not fit this machine's address space".into(),
        });
    }
    Ok(aligned)
}

/// What a user asks for: a byte count, or a video frame whose size follows from its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    /// A number of bytes.
    Bytes(u64),
    /// One frame of this layout (packed).
    Frame(FrameLayout),
}

impl SizeSpec {
    /// The number of bytes needed.
    pub fn bytes(&self) -> u64 {
        match self {
            Self::Bytes(b) => *b,
            Self::Frame(layout) => layout.size,
        }
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(b) => write!(f, "{}", ByteSize(*b)),
            Self::Frame(l) => write!(
                f,
                "{}x{} {} ({})",
                l.width,
                l.height,
                l.format,
                ByteSize(l.size)
            ),
        }
    }
}

impl FromStr for SizeSpec {
    type Err = String;

    /// `8MiB`, `12441600`, or `WIDTHxHEIGHT:FORMAT` such as `3840x2160:NV12`.
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((dims, format)) = s.split_once(':') else {
            let ByteSize(bytes) = s.parse()?;
            if bytes == 0 {
                return Err(format!("{s:?}: a buffer needs at least one byte"));
            }
            return Ok(Self::Bytes(bytes));
        };
        let (w, h) = dims
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("{s:?}: expected WIDTHxHEIGHT:FORMAT"))?;
        let width: u32 = w.parse().map_err(|_| format!("{s:?}: bad width {w:?}"))?;
        let height: u32 = h.parse().map_err(|_| format!("{s:?}: bad height {h:?}"))?;
        let format: VideoFormat = format.parse()?;
        FrameLayout::packed(format, width, height)
            .map(Self::Frame)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_rounded_to_pages() {
        let page = sysinfo::page_size();
        assert_eq!(page_aligned(1).unwrap(), page);
        assert_eq!(page_aligned(page).unwrap(), page);
        assert_eq!(page_aligned(page + 1).unwrap(), 2 * page);
    }

    #[test]
    fn impossible_sizes_are_refused_with_a_reason() {
        for size in [0, u64::MAX, u64::MAX - 1, 1 << 62] {
            let err = page_aligned(size).unwrap_err();
            assert!(matches!(err, Error::InvalidSize { .. }), "{size}: {err}");
        }
        assert!(
            page_aligned(u64::MAX)
                .unwrap_err()
                .to_string()
                .contains("overflows")
        );
        assert!(
            page_aligned(1 << 62)
                .unwrap_err()
                .to_string()
                .contains("memory")
        );
    }

    #[test]
    fn frame_sizes_parse() {
        let spec: SizeSpec = "3840x2160:NV12".parse().unwrap();
        assert_eq!(spec.bytes(), 3840 * 2160 * 3 / 2);
        assert!("3840x2160:WHAT".parse::<SizeSpec>().is_err());
        assert!("0x2160:NV12".parse::<SizeSpec>().is_err());
        assert!("3840:NV12".parse::<SizeSpec>().is_err());
        assert!(
            "0".parse::<SizeSpec>()
                .unwrap_err()
                .contains("at least one byte")
        );
    }
}
