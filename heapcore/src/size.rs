//! Buffer sizes: validation, page rounding and the human forms users type (`8MiB`,
//! `3840x2160:NV12`).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::format::{FrameLayout, VideoFormat};
use crate::sysinfo;

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

/// A byte count that prints and parses with binary units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

impl FromStr for ByteSize {
    type Err = String;

    /// Parses `4096`, `64k`, `8MiB`, `1.5GiB`, `12MB` (decimal), case-insensitively.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            other => return Err(format!("unknown size unit {other:?} in {s:?}")),
        };
        let bytes = if number.contains('.') {
            let value: f64 = number.parse().map_err(|_| format!("{s:?} is not a size"))?;
            let bytes = value * scale as f64;
            if !bytes.is_finite() || bytes >= u64::MAX as f64 {
                return Err(format!("{s:?} overflows 64 bits"));
            }
            bytes.ceil() as u64
        } else {
            let value: u64 = number.parse().map_err(|e: std::num::ParseIntError| {
                if *e.kind() == std::num::IntErrorKind::PosOverflow {
                    format!("{s:?} overflows 64 bits")
                } else {
                    format!("{s:?} is not a size")
                }
            })?;
            value
                .checked_mul(scale)
                .ok_or_else(|| format!("{s:?} overflows 64 bits"))?
        };
        Ok(Self(bytes))
    }
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
    fn human_sizes_parse() {
        let p = |s: &str| s.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(p("4096"), Ok(4096));
        assert_eq!(p("8MiB"), Ok(8 << 20));
        assert_eq!(p("8m"), Ok(8 << 20));
        assert_eq!(p("1.5GiB"), Ok(3 << 29));
        assert_eq!(p("12MB"), Ok(12_000_000));
        assert!(p("8 parsecs").is_err());
        assert!(p("99999999999999999999").is_err());
        assert!(p("16777216TiB").is_err());
        assert!(p("").is_err());
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

    #[test]
    fn byte_sizes_print_in_binary_units() {
        assert_eq!(ByteSize(512).to_string(), "512 B");
        assert_eq!(ByteSize(8 << 20).to_string(), "8.0 MiB");
    }
}
