//! An animated test pattern that consumers can verify byte for byte.
//!
//! Every visible byte of plane `p`, row `y`, byte column `x` of frame `seq` is
//! `3·x + 2·y + 85·p + 4·seq (mod 256)`: diagonal ramps that move each frame. The first 8
//! bytes of plane 0 hold `seq` (little-endian), so a consumer can read which frame it got
//! and check the rest against it. Rows shorter than 8 bytes carry the counter's low bytes.
//! Padding (stride beyond the visible bytes) is neither written nor checked.

use heapcore::FrameLayoutError;
use heapcore::format::{FrameLayout, MAX_PLANES, VideoFormat};

/// Why a frame cannot be drawn or does not carry the pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The frame has no layout (empty, or its size overflows).
    #[error(transparent)]
    Layout(#[from] FrameLayoutError),
    /// Another number of planes than the format has.
    #[error("{got} planes for {format}, which has {expected}")]
    PlaneCount {
        /// Planes given.
        got: usize,
        /// The format.
        format: VideoFormat,
        /// Planes it has.
        expected: usize,
    },
    /// A stride shorter than a row.
    #[error("plane {plane}: stride {stride} is shorter than a row ({row_bytes} bytes)")]
    ShortStride {
        /// The plane.
        plane: usize,
        /// Its stride.
        stride: usize,
        /// Visible bytes per row.
        row_bytes: usize,
    },
    /// A plane too short for its rows.
    #[error(
        "plane {plane}: {len} bytes cannot hold {rows} rows of {row_bytes} bytes (stride {stride})"
    )]
    ShortPlane {
        /// The plane.
        plane: usize,
        /// Its bytes.
        len: usize,
        /// Rows it must hold.
        rows: usize,
        /// Visible bytes per row.
        row_bytes: usize,
        /// Its stride.
        stride: usize,
    },
    /// A byte that differs from the pattern of the frame the counter names.
    #[error(
        "frame {seq}: plane {plane} row {row} byte {byte} is {found:#04x}, expected {expected:#04x}"
    )]
    Mismatch {
        /// The frame number the counter holds.
        seq: u64,
        /// Where.
        plane: usize,
        /// Where.
        row: usize,
        /// Where.
        byte: usize,
        /// The byte found.
        found: u8,
        /// The byte the pattern has there.
        expected: u8,
    },
    /// A layout with no planes or more than [`MAX_PLANES`].
    #[error("a layout with {0} planes")]
    LayoutPlanes(usize),
    /// A buffer shorter than the frame its layout describes.
    #[error("{len} bytes cannot hold a {size} byte {width}x{height} {format} frame")]
    ShortBuffer {
        /// Bytes given.
        len: usize,
        /// The frame's size.
        size: u64,
        /// The frame's width.
        width: u32,
        /// The frame's height.
        height: u32,
        /// The frame's format.
        format: VideoFormat,
    },
    /// A plane that starts before the previous one or after the frame.
    #[error("plane {plane} starts at {offset}, outside {end}..{size}")]
    PlaneOutside {
        /// The plane.
        plane: usize,
        /// Its offset.
        offset: u64,
        /// Where the previous plane starts.
        end: u64,
        /// The frame's size.
        size: u64,
    },
}

/// Bytes of the frame counter at the start of plane 0.
pub const COUNTER_BYTES: usize = 8;

/// One plane to draw into.
#[derive(Debug)]
pub struct PlaneMut<'a> {
    /// The plane's bytes, from its first row.
    pub bytes: &'a mut [u8],
    /// Bytes from one row to the next.
    pub stride: usize,
}

/// One plane to check.
#[derive(Debug, Clone, Copy)]
pub struct Plane<'a> {
    /// The plane's bytes, from its first row.
    pub bytes: &'a [u8],
    /// Bytes from one row to the next.
    pub stride: usize,
}

/// Visible bytes per row and rows, for each plane of a `width`×`height` `format` frame; an
/// error for an empty frame or one whose size overflows.
pub fn plane_extents(
    format: VideoFormat,
    width: u32,
    height: u32,
) -> Result<Vec<(usize, usize)>, PatternError> {
    let packed = FrameLayout::packed(format, width, height)?;
    let extents = (0..packed.n_planes)
        .map(|p| {
            let stride = packed.strides[p] as u64;
            let end = if p + 1 < packed.n_planes {
                packed.offsets[p + 1]
            } else {
                packed.size
            };
            let rows = (end - packed.offsets[p]) / stride.max(1);
            (stride as usize, rows as usize)
        })
        .collect();
    Ok(extents)
}

/// The extents of a `width`×`height` `format` frame, once `planes` (bytes and stride of each)
/// are known to hold every visible row of it.
fn fitting_extents(
    planes: impl ExactSizeIterator<Item = (usize, usize)>,
    format: VideoFormat,
    width: u32,
    height: u32,
) -> Result<Vec<(usize, usize)>, PatternError> {
    let extents = plane_extents(format, width, height)?;
    if planes.len() != extents.len() {
        return Err(PatternError::PlaneCount {
            got: planes.len(),
            format,
            expected: extents.len(),
        });
    }
    for (plane, ((len, stride), &(row_bytes, rows))) in planes.zip(&extents).enumerate() {
        if stride < row_bytes {
            return Err(PatternError::ShortStride {
                plane,
                stride,
                row_bytes,
            });
        }
        let needed = rows
            .saturating_sub(1)
            .checked_mul(stride)
            .and_then(|n| n.checked_add(row_bytes));
        if needed.is_none_or(|n| len < n) {
            return Err(PatternError::ShortPlane {
                plane,
                len,
                rows,
                row_bytes,
                stride,
            });
        }
    }
    Ok(extents)
}

fn row_base(seq: u64, plane: usize, y: usize) -> u8 {
    (y as u64)
        .wrapping_mul(2)
        .wrapping_add(plane as u64 * 85)
        .wrapping_add(seq.wrapping_mul(4)) as u8
}

/// `3·i mod 256` for `i` in `0..512`. A row whose byte 0 is `b` is `3·x + b`, and as 3 is
/// invertible mod 256 (3·171 = 513 ≡ 1) that is this ramp from `i = 171·b` on; it repeats
/// every 256 bytes (3·256 ≡ 0). So every row is drawn with copies and checked with
/// comparisons of 256-byte slices of one static table (memcpy, memcmp): a per-byte loop in an
/// unoptimised test build was most of each frame's time under the VM's emulated CPU.
static RAMP: [u8; 512] = {
    let mut table = [0u8; 512];
    let mut i = 0;
    while i < table.len() {
        table[i] = (i * 3) as u8;
        i += 1;
    }
    table
};

/// 256 bytes of the row whose byte 0 is `base`, from byte `x` on (and again every 256).
fn period(base: u8, x: usize) -> &'static [u8] {
    let from = (base as usize * 171 + x) % 256;
    &RAMP[from..from + 256]
}

/// Draws frame `seq` into `planes` (one per plane of `format`). Nothing is written unless
/// every plane can hold its rows.
pub fn draw(
    planes: &mut [PlaneMut<'_>],
    format: VideoFormat,
    width: u32,
    height: u32,
    seq: u64,
) -> Result<(), PatternError> {
    let sizes = planes.iter().map(|p| (p.bytes.len(), p.stride));
    let extents = fitting_extents(sizes, format, width, height)?;
    for (p, (plane, &(row_bytes, rows))) in planes.iter_mut().zip(&extents).enumerate() {
        for y in 0..rows {
            let start = y * plane.stride;
            let period = period(row_base(seq, p, y), 0);
            for chunk in plane.bytes[start..start + row_bytes].chunks_mut(period.len()) {
                chunk.copy_from_slice(&period[..chunk.len()]);
            }
        }
    }
    let n = COUNTER_BYTES.min(extents[0].0);
    planes[0].bytes[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
    Ok(())
}

/// Checks `planes` against the pattern and returns the frame number they carry.
pub fn check(
    planes: &[Plane<'_>],
    format: VideoFormat,
    width: u32,
    height: u32,
) -> Result<u64, PatternError> {
    let sizes = planes.iter().map(|p| (p.bytes.len(), p.stride));
    let extents = fitting_extents(sizes, format, width, height)?;
    // Every format has a plane 0, and fitting_extents made sure it holds its first row.
    let counter_len = COUNTER_BYTES.min(extents[0].0);
    let mut counter = [0u8; 8];
    counter[..counter_len].copy_from_slice(&planes[0].bytes[..counter_len]);
    let seq = u64::from_le_bytes(counter);
    for (p, (plane, &(row_bytes, rows))) in planes.iter().zip(&extents).enumerate() {
        for y in 0..rows {
            let start = y * plane.stride;
            let skip = if p == 0 && y == 0 { counter_len } else { 0 };
            let period = period(row_base(seq, p, y), skip);
            let row = &plane.bytes[start + skip..start + row_bytes];
            for (i, chunk) in row.chunks(period.len()).enumerate() {
                let expected = &period[..chunk.len()];
                if chunk != expected {
                    // Only now, byte by byte: where.
                    let x = chunk
                        .iter()
                        .zip(expected)
                        .take_while(|(a, b)| a == b)
                        .count();
                    return Err(PatternError::Mismatch {
                        seq,
                        plane: p,
                        row: y,
                        byte: skip + i * period.len() + x,
                        found: chunk[x],
                        expected: expected[x],
                    });
                }
            }
        }
    }
    Ok(seq)
}

/// Checks that `layout` describes 1 to `MAX_PLANES` planes in order, inside `len` bytes.
fn check_layout(len: usize, layout: &FrameLayout) -> Result<(), PatternError> {
    let n = layout.n_planes;
    if n == 0 || n > MAX_PLANES {
        return Err(PatternError::LayoutPlanes(n));
    }
    if (len as u64) < layout.size {
        return Err(PatternError::ShortBuffer {
            len,
            size: layout.size,
            width: layout.width,
            height: layout.height,
            format: layout.format,
        });
    }
    let mut end = 0;
    for p in 0..n {
        let offset = layout.offsets[p];
        if offset < end || offset > layout.size {
            return Err(PatternError::PlaneOutside {
                plane: p,
                offset,
                end,
                size: layout.size,
            });
        }
        end = offset;
    }
    Ok(())
}

/// The planes of a frame laid out as `layout` in one buffer; an error if `bytes` is shorter
/// than the frame or the layout is not one (planes out of order or outside the frame).
pub fn planes_in<'a>(
    bytes: &'a [u8],
    layout: &FrameLayout,
) -> Result<Vec<Plane<'a>>, PatternError> {
    check_layout(bytes.len(), layout)?;
    let planes = (0..layout.n_planes)
        .map(|p| {
            let end = if p + 1 < layout.n_planes {
                layout.offsets[p + 1]
            } else {
                layout.size
            };
            Plane {
                bytes: &bytes[layout.offsets[p] as usize..end as usize],
                stride: layout.strides[p] as usize,
            }
        })
        .collect();
    Ok(planes)
}

/// Mutable planes of a frame laid out as `layout` in one buffer; errors as [`planes_in`].
pub fn planes_in_mut<'a>(
    bytes: &'a mut [u8],
    layout: &FrameLayout,
) -> Result<Vec<PlaneMut<'a>>, PatternError> {
    check_layout(bytes.len(), layout)?;
    let mut planes = Vec::with_capacity(layout.n_planes);
    let (mut rest, _) = bytes.split_at_mut(layout.size as usize);
    // Planes are in order (check_layout): split the last one off first.
    for p in (0..layout.n_planes).rev() {
        let (before, plane) = rest.split_at_mut(layout.offsets[p] as usize);
        planes.push(PlaneMut {
            bytes: plane,
            stride: layout.strides[p] as usize,
        });
        rest = before;
    }
    planes.reverse();
    Ok(planes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(format: VideoFormat, w: u32, h: u32, align: u32, seq: u64) {
        let layout = FrameLayout::aligned(format, w, h, align, 1).unwrap();
        let mut buf = vec![0xEEu8; layout.size as usize];
        draw(
            &mut planes_in_mut(&mut buf, &layout).unwrap(),
            format,
            w,
            h,
            seq,
        )
        .unwrap();
        assert_eq!(
            check(&planes_in(&buf, &layout).unwrap(), format, w, h),
            Ok(seq),
            "{format}"
        );
    }

    #[test]
    fn every_format_draws_and_checks() {
        for f in VideoFormat::ALL {
            round_trip(*f, 64, 48, 4, 7);
            round_trip(*f, 33, 17, 64, u64::MAX - 3);
        }
    }

    /// A packed `width`×`height` `format` frame with `counter` drawn into it.
    fn drawn(format: VideoFormat, width: u32, height: u32, counter: u64) -> (FrameLayout, Vec<u8>) {
        let layout = FrameLayout::packed(format, width, height).unwrap();
        let mut buf = vec![0u8; layout.size as usize];
        let mut planes = planes_in_mut(&mut buf, &layout).unwrap();
        draw(&mut planes, format, width, height, counter).unwrap();
        (layout, buf)
    }

    /// Every visible byte is the documented `3·x + 2·y + 85·p + 4·seq (mod 256)`, computed
    /// here byte by byte, not by the row table `draw` copies from.
    #[test]
    fn every_byte_is_the_documented_formula() {
        let seq = 0x1234_5678_9abc_def5;
        // Rows of 600 bytes: longer than the table's 256-byte period.
        let (layout, buf) = drawn(VideoFormat::Nv12, 600, 6, seq);
        for p in 0..layout.n_planes {
            let rows = if p == 0 { 6 } else { 3 };
            for y in 0..rows {
                for x in 0..600 {
                    if p == 0 && y == 0 && x < COUNTER_BYTES {
                        continue;
                    }
                    let at = layout.offsets[p] as usize + y * layout.strides[p] as usize + x;
                    let formula = (3 * x as u64 + 2 * y as u64 + 85 * p as u64)
                        .wrapping_add(seq.wrapping_mul(4)) as u8;
                    assert_eq!(buf[at], formula, "plane {p} row {y} byte {x}");
                }
            }
        }
        assert_eq!(buf[..COUNTER_BYTES], seq.to_le_bytes());
    }

    #[test]
    fn a_changed_byte_is_found_and_located() {
        let (layout, mut buf) = drawn(VideoFormat::Nv12, 32, 16, 9);
        buf[layout.offsets[1] as usize + 32 + 5] ^= 1;
        let err = check(
            &planes_in(&buf, &layout).unwrap(),
            VideoFormat::Nv12,
            32,
            16,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("frame 9: plane 1 row 1 byte 5"),
            "{err}"
        );
    }

    #[test]
    fn a_changed_byte_past_the_first_256_of_a_row_is_located() {
        let (layout, mut buf) = drawn(VideoFormat::Gray8, 600, 3, 4);
        buf[2 * layout.strides[0] as usize + 300] ^= 0x80;
        let err = check(
            &planes_in(&buf, &layout).unwrap(),
            VideoFormat::Gray8,
            600,
            3,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("frame 4: plane 0 row 2 byte 300"),
            "{err}"
        );
    }

    #[test]
    fn frames_differ_from_one_to_the_next() {
        let (_, a) = drawn(VideoFormat::Bgrx, 16, 4, 1);
        let (_, b) = drawn(VideoFormat::Bgrx, 16, 4, 2);
        assert_ne!(a[8..], b[8..]);
    }

    #[test]
    fn short_rows_carry_the_low_counter_bytes() {
        let (layout, buf) = drawn(VideoFormat::Gray8, 3, 5, 0x0102_0304_0506);
        assert_eq!(
            check(&planes_in(&buf, &layout).unwrap(), VideoFormat::Gray8, 3, 5),
            Ok(0x04_0506)
        );
    }

    #[test]
    fn empty_or_short_input_is_an_error_not_a_panic() {
        let f = VideoFormat::Nv12;
        for (w, h) in [(0, 16), (16, 0), (0, 0)] {
            assert!(plane_extents(f, w, h).is_err());
            assert!(check(&[], f, w, h).is_err(), "{w}x{h}");
            assert!(draw(&mut [], f, w, h, 1).is_err(), "{w}x{h}");
        }
        let err = check(&[], f, 16, 16).unwrap_err();
        assert_eq!(err.to_string(), "0 planes for NV12, which has 2");
        assert!(draw(&mut [], f, 16, 16, 1).is_err());

        let layout = FrameLayout::packed(f, 16, 16).unwrap();
        let mut buf = vec![0u8; layout.size as usize];
        // A frame one byte short: refused by planes_in, and by check and draw given planes
        // cut short by hand; nothing is written.
        let err = planes_in(&buf[1..], &layout).unwrap_err();
        assert!(err.to_string().contains("cannot hold"), "{err}");
        assert!(planes_in_mut(&mut buf[1..], &layout).is_err());
        let short = [
            Plane {
                bytes: &buf[..256],
                stride: 16,
            },
            Plane {
                bytes: &buf[256..383],
                stride: 16,
            },
        ];
        let err = check(&short, f, 16, 16).unwrap_err();
        assert!(
            err.to_string()
                .contains("plane 1: 127 bytes cannot hold 8 rows"),
            "{err}"
        );
        let narrow = [Plane {
            bytes: &buf,
            stride: 15,
        }];
        let err = check(&narrow, VideoFormat::Gray8, 16, 4).unwrap_err();
        assert!(
            err.to_string().contains("stride 15 is shorter than a row"),
            "{err}"
        );
        let (y, uv) = buf.split_at_mut(256);
        let mut cut = [
            PlaneMut {
                bytes: y,
                stride: 16,
            },
            PlaneMut {
                bytes: &mut uv[..100],
                stride: 16,
            },
        ];
        assert!(draw(&mut cut, f, 16, 16, 1).is_err());
        assert!(buf.iter().all(|&b| b == 0), "a refused draw wrote");

        // Layouts that are not layouts.
        let mut bad = layout;
        bad.n_planes = 0;
        assert!(planes_in(&buf, &bad).is_err());
        bad.n_planes = MAX_PLANES + 1;
        assert!(planes_in(&buf, &bad).is_err());
        assert!(planes_in_mut(&mut buf, &bad).is_err());
        let mut swapped = layout;
        swapped.offsets = [0, 300, 200];
        swapped.n_planes = 3;
        assert!(planes_in_mut(&mut buf, &swapped).is_err());
        let mut outside = layout;
        outside.offsets[1] = layout.size + 1;
        assert!(planes_in(&buf, &outside).is_err());
    }
}
