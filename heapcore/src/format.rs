//! Raw video formats and frame layouts: how many bytes a frame needs, per plane, with the
//! stride and plane alignment a device asks for. Names follow GStreamer's spelling.

use std::fmt;
use std::str::FromStr;

/// The most planes a supported format has.
pub const MAX_PLANES: usize = 3;

/// One plane: its width is `ceil(width / 2^x_shift)` samples of `sample_bytes` bytes and it has
/// `ceil(height / 2^y_shift)` rows. Packed 4:2:2 formats count a macropixel as one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plane {
    x_shift: u8,
    y_shift: u8,
    sample_bytes: u8,
}

const fn plane(x_shift: u8, y_shift: u8, sample_bytes: u8) -> Plane {
    Plane {
        x_shift,
        y_shift,
        sample_bytes,
    }
}

macro_rules! video_formats {
    ($($variant:ident => $name:literal, [$($plane:expr),+];)+) => {
        /// A raw video format.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        pub enum VideoFormat { $(#[doc = concat!("`", $name, "`")] $variant,)+ }

        impl VideoFormat {
            /// Every supported format.
            pub const ALL: &'static [VideoFormat] = &[$(VideoFormat::$variant,)+];

            /// The name GStreamer gives it.
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => $name,)+ }
            }

            fn planes(self) -> &'static [Plane] {
                match self { $(Self::$variant => { const P: &[Plane] = &[$($plane),+]; P })+ }
            }
        }
    };
}

video_formats! {
    Nv12 => "NV12", [plane(0, 0, 1), plane(1, 1, 2)];
    Nv21 => "NV21", [plane(0, 0, 1), plane(1, 1, 2)];
    Nv16 => "NV16", [plane(0, 0, 1), plane(1, 0, 2)];
    Nv24 => "NV24", [plane(0, 0, 1), plane(0, 0, 2)];
    P010 => "P010_10LE", [plane(0, 0, 2), plane(1, 1, 4)];
    I420 => "I420", [plane(0, 0, 1), plane(1, 1, 1), plane(1, 1, 1)];
    Yv12 => "YV12", [plane(0, 0, 1), plane(1, 1, 1), plane(1, 1, 1)];
    Y42b => "Y42B", [plane(0, 0, 1), plane(1, 0, 1), plane(1, 0, 1)];
    Y444 => "Y444", [plane(0, 0, 1), plane(0, 0, 1), plane(0, 0, 1)];
    Yuy2 => "YUY2", [plane(1, 0, 4)];
    Yvyu => "YVYU", [plane(1, 0, 4)];
    Uyvy => "UYVY", [plane(1, 0, 4)];
    Rgba => "RGBA", [plane(0, 0, 4)];
    Bgra => "BGRA", [plane(0, 0, 4)];
    Argb => "ARGB", [plane(0, 0, 4)];
    Abgr => "ABGR", [plane(0, 0, 4)];
    Rgbx => "RGBx", [plane(0, 0, 4)];
    Bgrx => "BGRx", [plane(0, 0, 4)];
    Xrgb => "xRGB", [plane(0, 0, 4)];
    Xbgr => "xBGR", [plane(0, 0, 4)];
    Rgb => "RGB", [plane(0, 0, 3)];
    Bgr => "BGR", [plane(0, 0, 3)];
    Rgb16 => "RGB16", [plane(0, 0, 2)];
    Gray8 => "GRAY8", [plane(0, 0, 1)];
    Gray16 => "GRAY16_LE", [plane(0, 0, 2)];
}

impl VideoFormat {
    /// How many planes a frame of this format has.
    pub fn plane_count(self) -> usize {
        self.planes().len()
    }
}

impl fmt::Display for VideoFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for VideoFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|f| f.name()).collect();
                format!("unknown video format {s:?}; known: {}", names.join(", "))
            })
    }
}

/// Where each plane of a frame lies in one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLayout {
    /// The format.
    pub format: VideoFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// How many of `strides` and `offsets` are used.
    pub n_planes: usize,
    /// Bytes per row, per plane.
    pub strides: [u32; MAX_PLANES],
    /// Where each plane starts, in bytes from the buffer start.
    pub offsets: [u64; MAX_PLANES],
    /// Bytes the whole frame needs.
    pub size: u64,
}

impl FrameLayout {
    /// The tightest layout: rows as long as their pixels, planes back to back.
    pub fn packed(format: VideoFormat, width: u32, height: u32) -> Result<Self, FrameLayoutError> {
        Self::aligned(format, width, height, 1, 1)
    }

    /// A layout whose strides are multiples of `stride_align` and whose planes start at
    /// multiples of `plane_align` (both powers of two), as devices ask.
    pub fn aligned(
        format: VideoFormat,
        width: u32,
        height: u32,
        stride_align: u32,
        plane_align: u64,
    ) -> Result<Self, FrameLayoutError> {
        if width == 0 || height == 0 {
            return Err(FrameLayoutError::Empty { width, height });
        }
        if !stride_align.is_power_of_two() || !plane_align.is_power_of_two() {
            return Err(FrameLayoutError::AlignmentNotPowerOfTwo {
                stride_align,
                plane_align,
            });
        }
        let overflow = || FrameLayoutError::Overflow {
            format,
            width,
            height,
        };
        let mut layout = Self {
            format,
            width,
            height,
            n_planes: format.plane_count(),
            strides: [0; MAX_PLANES],
            offsets: [0; MAX_PLANES],
            size: 0,
        };
        let mut offset = 0u64;
        for (i, p) in format.planes().iter().enumerate() {
            let samples = u64::from(width).div_ceil(1 << p.x_shift);
            let stride = (samples * u64::from(p.sample_bytes))
                .checked_next_multiple_of(u64::from(stride_align))
                .and_then(|s| u32::try_from(s).ok())
                .ok_or_else(overflow)?;
            let rows = u64::from(height).div_ceil(1 << p.y_shift);
            offset = offset
                .checked_next_multiple_of(plane_align)
                .ok_or_else(overflow)?;
            layout.strides[i] = stride;
            layout.offsets[i] = offset;
            offset = (u64::from(stride) * rows)
                .checked_add(offset)
                .ok_or_else(overflow)?;
        }
        layout.size = offset;
        Ok(layout)
    }
}

/// Why a video frame has no layout ([`FrameLayout::packed`](crate::format::FrameLayout::packed),
/// [`FrameLayout::aligned`](crate::format::FrameLayout::aligned)). Apart from [`Error`]
/// because laying out a frame is pure arithmetic that never touches the system.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameLayoutError {
    /// A width or a height of 0.
    #[error("a {width}x{height} frame is empty")]
    Empty {
        /// The width asked for.
        width: u32,
        /// The height asked for.
        height: u32,
    },
    /// A stride or plane alignment that is not a power of two.
    #[error("alignments must be powers of two")]
    AlignmentNotPowerOfTwo {
        /// The stride alignment asked for.
        stride_align: u32,
        /// The plane alignment asked for.
        plane_align: u64,
    },
    /// A stride that does not fit 32 bits, or a frame size that does not fit 64.
    #[error("a {width}x{height} {format} frame overflows")]
    Overflow {
        /// The format.
        format: VideoFormat,
        /// The width asked for.
        width: u32,
        /// The height asked for.
        height: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nv12_4k_is_twelve_megabytes() {
        let l = FrameLayout::packed(VideoFormat::Nv12, 3840, 2160).unwrap();
        assert_eq!(l.size, 12_441_600);
        assert_eq!(l.strides[..2], [3840, 3840]);
        assert_eq!(l.offsets[1], 3840 * 2160);
    }

    #[test]
    fn odd_sizes_round_chroma_up() {
        let l = FrameLayout::packed(VideoFormat::I420, 1921, 1081).unwrap();
        assert_eq!(l.strides[..3], [1921, 961, 961]);
        assert_eq!(l.size, 1921 * 1081 + 2 * 961 * 541);
        let l = FrameLayout::packed(VideoFormat::Yuy2, 3, 1).unwrap();
        assert_eq!(l.strides[0], 8);
    }

    #[test]
    fn alignment_pads_strides_and_planes() {
        let l = FrameLayout::aligned(VideoFormat::Nv12, 1921, 1080, 64, 4096).unwrap();
        assert_eq!(l.strides[0], 1984);
        assert_eq!(l.offsets[1] % 4096, 0);
        assert!(FrameLayout::aligned(VideoFormat::Nv12, 16, 16, 3, 1).is_err());
    }

    #[test]
    fn formats_parse_by_gstreamer_name() {
        assert_eq!("nv12".parse::<VideoFormat>(), Ok(VideoFormat::Nv12));
        assert_eq!("BGRx".parse::<VideoFormat>(), Ok(VideoFormat::Bgrx));
        assert!("MJPG".parse::<VideoFormat>().unwrap_err().contains("NV12"));
    }

    #[test]
    fn empty_or_overflowing_frames_are_refused() {
        assert!(FrameLayout::packed(VideoFormat::Rgba, 0, 10).is_err());
        assert!(FrameLayout::packed(VideoFormat::Rgba, u32::MAX, 2).is_err());
        assert!(FrameLayout::packed(VideoFormat::Gray8, u32::MAX, u32::MAX).is_ok());
        assert!(FrameLayout::aligned(VideoFormat::Rgba, u32::MAX, 1, 1 << 31, 1).is_err());
    }
}
