//! Raw video caps in the forms dma-buf memory is negotiated in, and the frame layout behind them.
//!
//! Heap buffers are LINEAR: plain rows, no tiling or compression. GStreamer negotiates that
//! two ways:
//! - `video/x-raw(memory:DMABuf), format=NV12` (GStreamer before 1.24, and elements that still
//!   take it), or plain `video/x-raw, format=NV12`;
//! - since 1.24, `video/x-raw(memory:DMABuf), format=DMA_DRM, drm-format=NV12`: a DRM fourcc
//!   with the modifier appended as `:0x…` unless it is LINEAR. LINEAR is the bare fourcc
//!   only: `gst_video_dma_drm_fourcc_to_string` leaves its suffix out, and
//!   `gst_video_dma_drm_fourcc_from_string` refuses `NV12:0x0000000000000000` as invalid.
//!   kmssink and the V4L2 codecs of 1.28 offer dma-buf memory only this way.
//!
//! [`video_info`] reads either form into the layout of a LINEAR frame; with the `v1_28`
//! feature [`to_dma_drm`] and [`from_dma_drm`] translate between them (only LINEAR entries
//! survive), which is how `dmaheapupload` offers DMA_DRM caps to elements that want them.

/// `format=DMA_DRM`: the format field of caps whose real format is in `drm-format`.
pub(crate) const DMA_DRM: &str = "DMA_DRM";

/// Whether `s` describes its format as a DRM fourcc (`format=DMA_DRM`).
pub(crate) fn is_dma_drm(s: &gst::StructureRef) -> bool {
    s.get::<&str>("format").is_ok_and(|f| f == DMA_DRM)
}

/// The layout of a LINEAR frame of fixed raw video caps, in either form. DMA_DRM caps with a
/// modifier other than LINEAR have no CPU layout: an error says so.
pub(crate) fn video_info(caps: &gst::CapsRef) -> Result<gst_video::VideoInfo, String> {
    #[cfg(feature = "v1_28")]
    if caps.structure(0).is_some_and(is_dma_drm) {
        let drm = gst_video::VideoInfoDmaDrm::from_caps(caps)
            .map_err(|_| format!("{caps} is not DMA_DRM video"))?;
        if drm.modifier() != LINEAR {
            return Err(format!(
                "{caps}: modifier {:#x} is not LINEAR, so the frame has no plain layout",
                drm.modifier()
            ));
        }
        return drm
            .to_video_info()
            .map_err(|_| format!("{caps}: no video format for this DRM fourcc"));
    }
    gst_video::VideoInfo::from_caps(caps).map_err(|_| format!("{caps} is not raw video"))
}

/// The frame size of `s` if it is fixed raw video (either form).
pub(crate) fn frame_size(s: &gst::StructureRef) -> Option<u64> {
    let caps = if is_dma_drm(s) {
        let features = gst::CapsFeatures::new([gst_allocators::CAPS_FEATURE_MEMORY_DMABUF]);
        gst::Caps::builder_full()
            .structure_with_features(s.to_owned(), features)
            .build()
    } else {
        gst::Caps::builder_full().structure(s.to_owned()).build()
    };
    if !caps.is_fixed() {
        return None;
    }
    video_info(&caps).ok().map(|info| info.size() as u64)
}

/// The caps on the other side of `dmaheapupload` for `caps` on the `direction` side (Sink:
/// what it can send downstream for this input; Src: what upstream may send for this
/// output). `dmabuf(frame size)` says whether a heap can give dma-bufs for frames of that
/// size (`None`: not fixed yet). Downstream is offered dma-buf memory first (DMA_DRM with the
/// v1_28 feature, then the older `memory:DMABuf, format=X`), then plain caps; upstream may
/// send any of them. DMA_DRM caps keep their LINEAR formats (heap buffers are LINEAR) and
/// are dropped when they have none.
pub(crate) fn transform(
    caps: &gst::CapsRef,
    direction: gst::PadDirection,
    mut dmabuf: impl FnMut(Option<u64>) -> bool,
) -> gst::Caps {
    let dmabuf_features = gst::CapsFeatures::new([gst_allocators::CAPS_FEATURE_MEMORY_DMABUF]);
    let mut out = gst::Caps::new_empty();
    for s in caps.iter() {
        let plain = if is_dma_drm(s) {
            match plain_form(s) {
                Some(plain) => plain,
                None => continue,
            }
        } else {
            s.to_owned()
        };
        let dmabuf = dmabuf(frame_size(&plain));
        let with_dmabuf = (plain.clone(), Some(dmabuf_features.clone()));
        let dma_drm = dma_drm_form(&plain).map(|d| (d, Some(dmabuf_features.clone())));
        let plain = (plain, None);
        let order: Vec<_> = match direction {
            gst::PadDirection::Sink if dmabuf => {
                dma_drm.into_iter().chain([with_dmabuf, plain]).collect()
            }
            gst::PadDirection::Sink => vec![plain],
            _ => [plain, with_dmabuf].into_iter().chain(dma_drm).collect(),
        };
        for (s, features) in order {
            out.merge_structure_full(s, features);
        }
    }
    out
}

/// The plain form of DMA_DRM caps (their LINEAR formats), where GStreamer has DMA_DRM.
fn plain_form(s: &gst::StructureRef) -> Option<gst::Structure> {
    #[cfg(feature = "v1_28")]
    return from_dma_drm(s);
    #[cfg(not(feature = "v1_28"))]
    {
        let _ = s;
        None
    }
}

/// The DMA_DRM form of plain caps, where GStreamer has DMA_DRM.
fn dma_drm_form(s: &gst::StructureRef) -> Option<gst::Structure> {
    #[cfg(feature = "v1_28")]
    return to_dma_drm(s);
    #[cfg(not(feature = "v1_28"))]
    {
        let _ = s;
        None
    }
}

/// DRM's LINEAR modifier.
#[cfg(feature = "v1_28")]
pub(crate) const LINEAR: u64 = 0;

/// The strings of a field holding one string or a list of them; `None` when the field is
/// missing (any value) and an empty list when it holds something else.
#[cfg(feature = "v1_28")]
fn strings(s: &gst::StructureRef, field: &str) -> Option<Vec<String>> {
    let value = s.value(field).ok()?;
    if let Ok(one) = value.get::<String>() {
        return Some(vec![one]);
    }
    Some(value.get::<gst::List>().map_or_else(
        |_| Vec::new(),
        |list| list.iter().filter_map(|v| v.get::<String>().ok()).collect(),
    ))
}

/// Sets `field` to one string, or to a list of several.
#[cfg(feature = "v1_28")]
fn set_strings(s: &mut gst::StructureRef, field: &str, mut values: Vec<String>) {
    if values.len() == 1 {
        s.set(field, values.remove(0));
    } else {
        s.set(field, gst::List::new(values));
    }
}

/// The DMA_DRM form of plain raw video `s`: `format=NV12` becomes `format=DMA_DRM,
/// drm-format=NV12` (LINEAR), format by format; `None` when no format has a DRM fourcc.
#[cfg(feature = "v1_28")]
pub(crate) fn to_dma_drm(s: &gst::StructureRef) -> Option<gst::Structure> {
    let mut out = s.to_owned();
    out.set("format", DMA_DRM);
    if let Some(formats) = strings(s, "format") {
        let drm: Vec<String> = formats
            .iter()
            .filter_map(|f| f.parse::<gst_video::VideoFormat>().ok())
            .filter_map(|f| gst_video::dma_drm_fourcc_from_format(f).ok())
            .map(|fourcc| gst_video::dma_drm_fourcc_to_string(fourcc, LINEAR).to_string())
            .collect();
        if drm.is_empty() {
            return None;
        }
        set_strings(&mut out, "drm-format", drm);
    }
    Some(out)
}

/// The plain form of DMA_DRM raw video `s`: its LINEAR `drm-format` entries as `format`s;
/// `None` when it has none (every entry tiled or compressed, or without a GStreamer format).
#[cfg(feature = "v1_28")]
pub(crate) fn from_dma_drm(s: &gst::StructureRef) -> Option<gst::Structure> {
    let mut out = s.to_owned();
    out.remove_field("drm-format");
    match strings(s, "drm-format") {
        None => out.remove_field("format"),
        Some(drm) => {
            let formats: Vec<String> = drm
                .iter()
                .filter_map(|d| gst_video::dma_drm_fourcc_from_str(d).ok())
                .filter(|&(_, modifier)| modifier == LINEAR)
                .filter_map(|(fourcc, _)| gst_video::dma_drm_fourcc_to_format(fourcc).ok())
                .map(|f| f.to_str().to_string())
                .collect();
            if formats.is_empty() {
                return None;
            }
            set_strings(&mut out, "format", formats);
        }
    }
    Some(out)
}

#[cfg(test)]
mod transform_tests {
    use super::*;

    /// (format, has memory:DMABuf) of each structure.
    fn forms(caps: &gst::CapsRef) -> Vec<(String, bool)> {
        caps.iter_with_features()
            .map(|(s, f)| {
                (
                    s.get::<String>("format").unwrap_or_default(),
                    f.contains(gst_allocators::CAPS_FEATURE_MEMORY_DMABUF),
                )
            })
            .collect()
    }

    #[test]
    fn downstream_gets_dmabuf_first_and_only_where_a_heap_can_serve_the_size() {
        gst::init().unwrap();
        let caps: gst::Caps = "video/x-raw, format=NV12, width=64, height=48"
            .parse()
            .unwrap();
        let mut sizes = Vec::new();
        let out = transform(&caps, gst::PadDirection::Sink, |size| {
            sizes.push(size);
            true
        });
        assert_eq!(sizes, [Some(64 * 48 * 3 / 2)], "asked about the frame size");
        let mut want = vec![("NV12".to_owned(), true), ("NV12".to_owned(), false)];
        if cfg!(feature = "v1_28") {
            want.insert(0, ("DMA_DRM".to_owned(), true));
        }
        assert_eq!(forms(&out), want, "{out}");
        let out = transform(&caps, gst::PadDirection::Sink, |_| false);
        assert_eq!(forms(&out), [("NV12".to_owned(), false)], "{out}");
        // Upstream may send any form; plain first.
        let out = transform(&caps, gst::PadDirection::Src, |_| true);
        let mut want = vec![("NV12".to_owned(), false), ("NV12".to_owned(), true)];
        if cfg!(feature = "v1_28") {
            want.push(("DMA_DRM".to_owned(), true));
        }
        assert_eq!(forms(&out), want, "{out}");
        let unfixed: gst::Caps = "video/x-raw, format=NV12".parse().unwrap();
        let mut sizes = Vec::new();
        transform(&unfixed, gst::PadDirection::Sink, |size| {
            sizes.push(size);
            true
        });
        assert_eq!(sizes, [None]);
    }

    #[cfg(feature = "v1_28")]
    #[test]
    fn dma_drm_caps_keep_their_linear_formats_and_tiled_ones_are_dropped() {
        gst::init().unwrap();
        let down: gst::Caps = "video/x-raw(memory:DMABuf), format=DMA_DRM, \
                               drm-format=(string){ NV12:0x0100000000000002, XR24 }; \
                               video/x-raw(memory:DMABuf), format=DMA_DRM, \
                               drm-format=NV12:0x0100000000000002"
            .parse()
            .unwrap();
        let up = transform(&down, gst::PadDirection::Src, |_| true);
        assert_eq!(
            forms(&up),
            [
                ("BGRx".to_owned(), false),
                ("BGRx".to_owned(), true),
                ("DMA_DRM".to_owned(), true)
            ],
            "{up}"
        );
    }
}

#[cfg(all(test, feature = "v1_28"))]
mod tests {
    use super::*;

    fn structure(s: &str) -> gst::Structure {
        gst::init().unwrap();
        s.parse().unwrap()
    }

    #[test]
    fn plain_formats_become_linear_drm_fourccs_and_back() {
        let plain = structure("video/x-raw, format=(string){ NV12, BGRx, I420 }, width=(int)64");
        let drm = to_dma_drm(&plain).unwrap();
        assert_eq!(drm.get::<&str>("format").unwrap(), "DMA_DRM");
        assert_eq!(
            strings(&drm, "drm-format").unwrap(),
            ["NV12", "XR24", "YU12"],
            "{drm}"
        );
        assert_eq!(drm.get::<i32>("width").unwrap(), 64);
        let back = from_dma_drm(&drm).unwrap();
        assert_eq!(strings(&back, "format").unwrap(), ["NV12", "BGRx", "I420"]);
        assert!(!back.has_field("drm-format"));
    }

    #[test]
    fn only_linear_entries_survive_as_gstreamer_spells_them() {
        // An explicit LINEAR suffix is not GStreamer's spelling: it refuses it, and so do we.
        let drm = structure(
            "video/x-raw, format=(string)DMA_DRM, \
             drm-format=(string){ AR24:0x0100000000000001, NV12:0x0000000000000000, XR24, NV12 }",
        );
        let plain = from_dma_drm(&drm).unwrap();
        assert_eq!(strings(&plain, "format").unwrap(), ["BGRx", "NV12"]);
        let tiled = structure("video/x-raw, format=DMA_DRM, drm-format=NV12:0x0100000000000002");
        assert!(from_dma_drm(&tiled).is_none());
    }

    #[test]
    fn a_missing_format_stays_missing_and_single_values_stay_single() {
        let any = structure("video/x-raw, format=DMA_DRM, width=(int)[ 1, 100 ]");
        let plain = from_dma_drm(&any).unwrap();
        assert!(
            !plain.has_field("format") && plain.has_field("width"),
            "{plain}"
        );
        let one = to_dma_drm(&structure("video/x-raw, format=NV12")).unwrap();
        assert_eq!(one.get::<&str>("drm-format").unwrap(), "NV12");
        assert!(to_dma_drm(&structure("video/x-raw, format=v210")).is_none());
    }

    #[test]
    fn linear_dma_drm_caps_have_the_plain_layout_and_tiled_ones_none() {
        gst::init().unwrap();
        let plain: gst::Caps = "video/x-raw, format=NV12, width=64, height=48"
            .parse()
            .unwrap();
        let drm: gst::Caps =
            "video/x-raw(memory:DMABuf), format=DMA_DRM, drm-format=NV12, width=64, height=48"
                .parse()
                .unwrap();
        let a = video_info(&plain).unwrap();
        let b = video_info(&drm).unwrap();
        assert_eq!(
            (a.format(), a.size(), a.stride()),
            (b.format(), b.size(), b.stride())
        );
        assert_eq!(frame_size(drm.structure(0).unwrap()), Some(64 * 48 * 3 / 2));
        let tiled: gst::Caps = "video/x-raw(memory:DMABuf), format=DMA_DRM, \
                                drm-format=NV12:0x0100000000000002, width=64, height=48"
            .parse()
            .unwrap();
        let err = video_info(&tiled).unwrap_err();
        assert!(err.contains("not LINEAR"), "{err}");
    }
}
