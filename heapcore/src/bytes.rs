//! Byte counts as people read and type them (`8.0 MiB`, `64k`, `1.5GiB`): nothing else, so
//! every module may print sizes without depending on the others.

use std::fmt;
use std::str::FromStr;

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn byte_sizes_print_in_binary_units() {
        assert_eq!(ByteSize(512).to_string(), "512 B");
        assert_eq!(ByteSize(8 << 20).to_string(), "8.0 MiB");
    }
}
