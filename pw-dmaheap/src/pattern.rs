//! An animated test pattern that consumers can verify byte for byte.
//!
//! Every visible byte of plane `p`, row `y`, byte column `x` of frame `seq` is
//! `3·x + 2·y + 85·p + 4·seq (mod 256)`: diagonal ramps that move each frame. The first 8
//! bytes of plane 0 hold `seq` (little-endian), so a consumer can read which frame it got
//! and check the rest against it. Rows shorter than 8 bytes carry the counter's low bytes.
//! Padding (stride beyond the visible bytes) is neither written nor checked.

use heapcore::format::{FrameLayout, VideoFormat};

/// Bytes of the frame counter at the start of plane 0.
pub const COUNTER_BYTES: usize = 8;

/// One plane to draw into.
pub struct PlaneMut<'a> {
    pub bytes: &'a mut [u8],
    pub stride: usize,
}

/// One plane to check.
#[derive(Clone, Copy)]
pub struct Plane<'a> {
    pub bytes: &'a [u8],
    pub stride: usize,
}

/// Visible bytes per row and rows, for each plane of a `width`×`height` `format` frame.
pub fn plane_extents(format: VideoFormat, width: u32, height: u32) -> Vec<(usize, usize)> {
    let Ok(packed) = FrameLayout::packed(format, width, height) else {
        return Vec::new();
    };
    (0..packed.n_planes)
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
        .collect()
}

fn row_base(seq: u64, plane: usize, y: usize) -> u8 {
    (y as u64)
        .wrapping_mul(2)
        .wrapping_add(plane as u64 * 85)
        .wrapping_add(seq.wrapping_mul(4)) as u8
}

fn ramp(len: usize) -> Vec<u8> {
    (0..len).map(|x| (x as u64 * 3) as u8).collect()
}

/// Draws frame `seq` into `planes` (one per plane of `format`).
pub fn draw(planes: &mut [PlaneMut<'_>], format: VideoFormat, width: u32, height: u32, seq: u64) {
    let extents = plane_extents(format, width, height);
    let widest = extents.iter().map(|e| e.0).max().unwrap_or(0);
    let ramp = ramp(widest);
    for (p, (plane, &(row_bytes, rows))) in planes.iter_mut().zip(&extents).enumerate() {
        for y in 0..rows {
            let start = y * plane.stride;
            let Some(row) = plane.bytes.get_mut(start..start + row_bytes) else {
                return;
            };
            let base = row_base(seq, p, y);
            for (dst, r) in row.iter_mut().zip(&ramp) {
                *dst = r.wrapping_add(base);
            }
        }
    }
    if let Some(first) = planes.first_mut() {
        let n = COUNTER_BYTES.min(extents.first().map_or(0, |e| e.0));
        if let Some(dst) = first.bytes.get_mut(..n) {
            dst.copy_from_slice(&seq.to_le_bytes()[..n]);
        }
    }
}

/// Checks `planes` against the pattern and returns the frame number they carry.
pub fn check(
    planes: &[Plane<'_>],
    format: VideoFormat,
    width: u32,
    height: u32,
) -> Result<u64, String> {
    let extents = plane_extents(format, width, height);
    if planes.len() != extents.len() {
        return Err(format!(
            "{} planes for {format}, which has {}",
            planes.len(),
            extents.len()
        ));
    }
    let counter_len = COUNTER_BYTES.min(extents[0].0);
    let mut counter = [0u8; 8];
    counter[..counter_len].copy_from_slice(
        planes[0]
            .bytes
            .get(..counter_len)
            .ok_or("plane 0 is shorter than the frame counter")?,
    );
    let seq = u64::from_le_bytes(counter);
    let widest = extents.iter().map(|e| e.0).max().unwrap_or(0);
    let ramp = ramp(widest);
    for (p, (plane, &(row_bytes, rows))) in planes.iter().zip(&extents).enumerate() {
        if plane.stride < row_bytes {
            return Err(format!(
                "plane {p}: stride {} is shorter than a row ({row_bytes} bytes)",
                plane.stride
            ));
        }
        for y in 0..rows {
            let start = y * plane.stride;
            let row = plane.bytes.get(start..start + row_bytes).ok_or_else(|| {
                format!(
                    "plane {p}: {} bytes cannot hold row {y} (stride {})",
                    plane.bytes.len(),
                    plane.stride
                )
            })?;
            let skip = if p == 0 && y == 0 { counter_len } else { 0 };
            let base = row_base(seq, p, y);
            if let Some(x) = (skip..row_bytes).find(|&x| row[x] != ramp[x].wrapping_add(base)) {
                return Err(format!(
                    "frame {seq}: plane {p} row {y} byte {x} is {:#04x}, expected {:#04x}",
                    row[x],
                    ramp[x].wrapping_add(base)
                ));
            }
        }
    }
    Ok(seq)
}

/// The planes of a frame laid out as `layout` in one buffer.
pub fn planes_in<'a>(bytes: &'a [u8], layout: &FrameLayout) -> Vec<Plane<'a>> {
    (0..layout.n_planes)
        .map(|p| Plane {
            bytes: bytes.get(layout.offsets[p] as usize..).unwrap_or(&[]),
            stride: layout.strides[p] as usize,
        })
        .collect()
}

/// Mutable planes of a frame laid out as `layout` in one buffer.
pub fn planes_in_mut<'a>(bytes: &'a mut [u8], layout: &FrameLayout) -> Vec<PlaneMut<'a>> {
    let mut planes = Vec::with_capacity(layout.n_planes);
    let mut rest = bytes;
    let mut pos = 0usize;
    for p in 0..layout.n_planes {
        // FrameLayout puts planes one after the other, in order.
        let start = (layout.offsets[p] as usize).max(pos);
        let (_, tail) = rest.split_at_mut((start - pos).min(rest.len()));
        let len = if p + 1 < layout.n_planes {
            layout.offsets[p + 1] as usize - start
        } else {
            tail.len()
        };
        let (plane, after) = tail.split_at_mut(len.min(tail.len()));
        pos = start + plane.len();
        planes.push(PlaneMut {
            bytes: plane,
            stride: layout.strides[p] as usize,
        });
        rest = after;
    }
    planes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(format: VideoFormat, w: u32, h: u32, align: u32, seq: u64) {
        let layout = FrameLayout::aligned(format, w, h, align, 1).unwrap();
        let mut buf = vec![0xEEu8; layout.size as usize];
        draw(&mut planes_in_mut(&mut buf, &layout), format, w, h, seq);
        assert_eq!(
            check(&planes_in(&buf, &layout), format, w, h),
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

    #[test]
    fn a_changed_byte_is_found_and_located() {
        let layout = FrameLayout::packed(VideoFormat::Nv12, 32, 16).unwrap();
        let mut buf = vec![0u8; layout.size as usize];
        draw(
            &mut planes_in_mut(&mut buf, &layout),
            VideoFormat::Nv12,
            32,
            16,
            9,
        );
        buf[layout.offsets[1] as usize + 32 + 5] ^= 1;
        let err = check(&planes_in(&buf, &layout), VideoFormat::Nv12, 32, 16).unwrap_err();
        assert!(err.contains("frame 9: plane 1 row 1 byte 5"), "{err}");
    }

    #[test]
    fn frames_differ_from_one_to_the_next() {
        let layout = FrameLayout::packed(VideoFormat::Bgrx, 16, 4).unwrap();
        let mut a = vec![0u8; layout.size as usize];
        let mut b = a.clone();
        draw(
            &mut planes_in_mut(&mut a, &layout),
            VideoFormat::Bgrx,
            16,
            4,
            1,
        );
        draw(
            &mut planes_in_mut(&mut b, &layout),
            VideoFormat::Bgrx,
            16,
            4,
            2,
        );
        assert_ne!(a[8..], b[8..]);
    }

    #[test]
    fn short_rows_carry_the_low_counter_bytes() {
        let layout = FrameLayout::packed(VideoFormat::Gray8, 3, 5).unwrap();
        let mut buf = vec![0u8; layout.size as usize];
        draw(
            &mut planes_in_mut(&mut buf, &layout),
            VideoFormat::Gray8,
            3,
            5,
            0x0102_0304_0506,
        );
        assert_eq!(
            check(&planes_in(&buf, &layout), VideoFormat::Gray8, 3, 5),
            Ok(0x04_0506)
        );
    }
}
