//! From a fixed video format to what its buffers must satisfy: the frame's layout (one block
//! per plane with the configured alignment, or one block in GStreamer's default layout), its
//! size, contiguity and usage.

use heapcore::FrameLayoutError;
use heapcore::format::{FrameLayout, MAX_PLANES, VideoFormat};

use crate::error::{ConfigError, Error, FrameError, Result};
use crate::video::MAX_DIMENSION;

/// What a producer's configuration asks of every frame's buffers, whatever the format
/// (`ProducerConfig::frame_rules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRules<'a> {
    /// Row alignment in bytes (a power of two).
    pub stride_align: u32,
    /// Physically contiguous memory only.
    pub contiguous: bool,
    /// The usage the buffers serve (`screencast`).
    pub usage: &'a str,
}

/// What a buffer for one negotiated format must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameConstraints {
    /// Strides and plane offsets of the frame inside the buffer.
    pub layout: FrameLayout,
    /// Bytes a buffer must hold (the frame; allocation rounds up to pages).
    pub size: u64,
    /// Physically contiguous memory only.
    pub contiguous: bool,
    /// The usage the buffers serve (`screencast`).
    pub usage: String,
}

impl FrameConstraints {
    /// The constraints of a `width`×`height` `format` frame under `rules`' alignment,
    /// contiguity and usage, sent as one block per plane (each with its chunk offset and
    /// stride: dma-bufs with a modifier).
    pub fn for_frame(
        format: VideoFormat,
        width: u32,
        height: u32,
        rules: FrameRules<'_>,
    ) -> Result<Self> {
        check_size(width, height)?;
        let layout = FrameLayout::aligned(format, width, height, rules.stride_align, 1)
            .map_err(|e| Error::frame(format, width, height)(e.into()))?;
        Self::with_layout(layout, rules)
    }

    /// The constraints of a frame sent as one block with one stride (MemFd, or dma-bufs
    /// without a modifier). A consumer of such a frame (pipewiresrc) learns only the first
    /// plane's stride and takes every other plane where GStreamer's default `GstVideoInfo`
    /// puts it, so multi-plane formats get exactly that layout (rows aligned to 4 bytes,
    /// 4:2:0 chroma after `GST_ROUND_UP_2(height)` luma rows), and `rules.stride_align` must
    /// be 4 for them. Single-plane formats keep `rules`' alignment: the chunk carries
    /// their stride.
    pub fn for_single_block(
        format: VideoFormat,
        width: u32,
        height: u32,
        rules: FrameRules<'_>,
    ) -> Result<Self> {
        if format.plane_count() == 1 {
            return Self::for_frame(format, width, height, rules);
        }
        check_size(width, height)?;
        let error = Error::frame(format, width, height);
        if rules.stride_align != 4 {
            return Err(error(FrameError::OneBlockStrideAlign(rules.stride_align)));
        }
        let layout = gstreamer_layout(format, width, height).map_err(|e| error(e.into()))?;
        Self::with_layout(layout, rules)
    }

    fn with_layout(layout: FrameLayout, rules: FrameRules<'_>) -> Result<Self> {
        // SPA_PARAM_Buffers carries sizes and strides as 32-bit signed ints.
        if layout.size > i32::MAX as u64 {
            return Err(Error::frame(layout.format, layout.width, layout.height)(
                FrameError::TooLarge(layout.size),
            ));
        }
        Ok(Self {
            size: layout.size,
            layout,
            contiguous: rules.contiguous,
            usage: rules.usage.to_owned(),
        })
    }
}

/// Refuses sizes no consumer could take.
pub(crate) fn check_size(width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 || width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(ConfigError::Size { width, height }.into());
    }
    Ok(())
}

/// GStreamer's default layout of a `width`×`height` `format` frame: what `GstVideoInfo`
/// computes (`fill_planes` in gst-libs/gst/video/video-info.c, progressive frames).
pub(crate) fn gstreamer_layout(
    format: VideoFormat,
    width: u32,
    height: u32,
) -> std::result::Result<FrameLayout, FrameLayoutError> {
    use VideoFormat as F;
    if width == 0 || height == 0 {
        return Err(FrameLayoutError::Empty { width, height });
    }
    let (w, h) = (u64::from(width), u64::from(height));
    let up = |x: u64, n: u64| x.div_ceil(n) * n;
    // 4:2:0 with one chroma plane (NV12, P010): chroma after GST_ROUND_UP_2(height) rows.
    let semi_planar_420 = |stride: u64| {
        let luma = stride * up(h, 2);
        (
            vec![stride, stride],
            vec![0, luma],
            luma + stride * (up(h, 2) / 2),
        )
    };
    let single = |stride: u64| (vec![stride], vec![0], stride * h);
    let (strides, offsets, size) = match format {
        F::Nv12 | F::Nv21 => semi_planar_420(up(w, 4)),
        F::P010 => semi_planar_420(up(2 * w, 4)),
        F::Nv16 => {
            let s = up(w, 4);
            (vec![s, s], vec![0, s * h], 2 * s * h)
        }
        F::Nv24 => {
            let (s0, s1) = (up(w, 4), up(2 * w, 4));
            (vec![s0, s1], vec![0, s0 * h], (s0 + s1) * h)
        }
        F::I420 | F::Yv12 => {
            let (s0, s1, chroma_rows) = (up(w, 4), up(up(w, 2) / 2, 4), up(h, 2) / 2);
            let o1 = s0 * up(h, 2);
            let o2 = o1 + s1 * chroma_rows;
            (vec![s0, s1, s1], vec![0, o1, o2], o2 + s1 * chroma_rows)
        }
        F::Y42b => {
            let (s0, s1) = (up(w, 4), up(w, 8) / 2);
            let o1 = s0 * h;
            let o2 = o1 + s1 * h;
            (vec![s0, s1, s1], vec![0, o1, o2], o2 + s1 * h)
        }
        F::Y444 => {
            let s = up(w, 4);
            (vec![s, s, s], vec![0, s * h, 2 * s * h], 3 * s * h)
        }
        F::Yuy2 | F::Yvyu | F::Uyvy | F::Rgb16 | F::Gray16 => single(up(2 * w, 4)),
        F::Rgba | F::Bgra | F::Argb | F::Abgr | F::Rgbx | F::Bgrx | F::Xrgb | F::Xbgr => {
            single(4 * w)
        }
        F::Rgb | F::Bgr => single(up(3 * w, 4)),
        F::Gray8 => single(up(w, 4)),
    };
    let mut layout = FrameLayout {
        format,
        width,
        height,
        n_planes: strides.len(),
        strides: [0; MAX_PLANES],
        offsets: [0; MAX_PLANES],
        size,
    };
    let overflow = || FrameLayoutError::Overflow {
        format,
        width,
        height,
    };
    for (p, (stride, offset)) in strides.into_iter().zip(offsets).enumerate() {
        layout.strides[p] = u32::try_from(stride).map_err(|_| overflow())?;
        layout.offsets[p] = offset;
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProducerConfig;

    #[test]
    fn constraints_follow_the_layout() {
        let cfg = ProducerConfig::new(1921, 1080).with_stride_align(64);
        let c =
            FrameConstraints::for_frame(VideoFormat::Nv12, 1921, 1080, cfg.frame_rules()).unwrap();
        assert_eq!(c.layout.strides[0], 1984);
        assert_eq!(c.size, c.layout.size);
        assert_eq!(c.usage, "screencast");
        let err =
            FrameConstraints::for_frame(VideoFormat::Rgba, 0, 1, cfg.frame_rules()).unwrap_err();
        assert!(err.to_string().contains("1 to 16384"), "{err}");
    }

    #[test]
    fn single_block_frames_have_gstreamers_layout() {
        gst::init().unwrap();
        for &format in VideoFormat::ALL {
            let gst_format = gst_video::VideoFormat::from_string(format.name());
            for (w, h) in [
                (1, 1),
                (2, 2),
                (321, 241),
                (322, 242),
                (1921, 1081),
                (64, 48),
            ] {
                let info = gst_video::VideoInfo::builder(gst_format, w, h)
                    .build()
                    .unwrap();
                let ours = gstreamer_layout(format, w, h).unwrap();
                let n = ours.n_planes;
                let strides: Vec<i32> = ours.strides[..n].iter().map(|&s| s as i32).collect();
                let offsets: Vec<usize> = ours.offsets[..n].iter().map(|&o| o as usize).collect();
                let what = format!("{format} {w}x{h}");
                assert_eq!(n, info.n_planes() as usize, "{what}");
                assert_eq!(strides, info.stride(), "{what}: strides");
                assert_eq!(offsets, info.offset(), "{what}: offsets");
                assert_eq!(ours.size as usize, info.size(), "{what}: size");
            }
        }
        assert_eq!(
            gstreamer_layout(VideoFormat::Nv12, 0, 2),
            Err(FrameLayoutError::Empty {
                width: 0,
                height: 2
            })
        );
    }

    #[test]
    fn one_block_multi_plane_frames_need_4_byte_rows() {
        let cfg = ProducerConfig::new(321, 241).with_stride_align(64);
        let c = FrameConstraints::for_single_block(VideoFormat::Bgrx, 321, 241, cfg.frame_rules())
            .unwrap();
        assert_eq!(c.layout.strides[0], 1344);
        let err =
            FrameConstraints::for_single_block(VideoFormat::Nv12, 321, 241, cfg.frame_rules())
                .unwrap_err()
                .to_string();
        assert!(err.contains("stride alignment 64 cannot"), "{err}");
        let cfg = ProducerConfig::new(321, 241);
        let c = FrameConstraints::for_single_block(VideoFormat::Nv12, 321, 241, cfg.frame_rules())
            .unwrap();
        assert_eq!(c.layout.offsets[1], 324 * 242);
    }
}
