//! SPA params in safe Rust: the EnumFormat objects a producer offers, the Buffers and Meta
//! params it answers a fixed format with, and the parser for fixed raw video formats.
//!
//! Pods are built as `libspa` [`Object`] values and serialized to bytes, so no pointer
//! juggling happens here.

use std::fmt;
use std::io::Cursor;

use heapcore::format::VideoFormat;
use pipewire::spa;
use spa::param::video::VideoFormat as SpaVideoFormat;
use spa::pod::deserialize::PodDeserializer;
use spa::pod::serialize::PodSerializer;
use spa::pod::{ChoiceValue, Object, Pod, Property, PropertyFlags, Value};
use spa::sys;
use spa::utils::{Choice, ChoiceEnum, ChoiceFlags, Fraction, Id, Rectangle};

use crate::data_types::DataTypes;
use crate::error::{Error, FormatError, Result};
use crate::raw::spa_abi;
use crate::video::Framerate;

/// `DRM_FORMAT_MOD_LINEAR`: rows one after the other, no tiling or compression. Heap buffers
/// are always linear.
pub const DRM_FORMAT_MOD_LINEAR: u64 = 0;

/// `DRM_FORMAT_MOD_INVALID`: "no explicit modifier" in modifier lists.
pub const DRM_FORMAT_MOD_INVALID: u64 = 0x00ff_ffff_ffff_ffff;

/// The SPA name of a heapcore video format.
pub fn spa_video_format(format: VideoFormat) -> SpaVideoFormat {
    match format {
        VideoFormat::Nv12 => SpaVideoFormat::NV12,
        VideoFormat::Nv21 => SpaVideoFormat::NV21,
        VideoFormat::Nv16 => SpaVideoFormat::NV16,
        VideoFormat::Nv24 => SpaVideoFormat::NV24,
        VideoFormat::P010 => SpaVideoFormat::P010_10LE,
        VideoFormat::I420 => SpaVideoFormat::I420,
        VideoFormat::Yv12 => SpaVideoFormat::YV12,
        VideoFormat::Y42b => SpaVideoFormat::Y42B,
        VideoFormat::Y444 => SpaVideoFormat::Y444,
        VideoFormat::Yuy2 => SpaVideoFormat::YUY2,
        VideoFormat::Yvyu => SpaVideoFormat::YVYU,
        VideoFormat::Uyvy => SpaVideoFormat::UYVY,
        VideoFormat::Rgba => SpaVideoFormat::RGBA,
        VideoFormat::Bgra => SpaVideoFormat::BGRA,
        VideoFormat::Argb => SpaVideoFormat::ARGB,
        VideoFormat::Abgr => SpaVideoFormat::ABGR,
        VideoFormat::Rgbx => SpaVideoFormat::RGBx,
        VideoFormat::Bgrx => SpaVideoFormat::BGRx,
        VideoFormat::Xrgb => SpaVideoFormat::xRGB,
        VideoFormat::Xbgr => SpaVideoFormat::xBGR,
        VideoFormat::Rgb => SpaVideoFormat::RGB,
        VideoFormat::Bgr => SpaVideoFormat::BGR,
        VideoFormat::Rgb16 => SpaVideoFormat::RGB16,
        VideoFormat::Gray8 => SpaVideoFormat::GRAY8,
        VideoFormat::Gray16 => SpaVideoFormat::GRAY16_LE,
    }
}

/// The heapcore format of an SPA video format id, if heapcore knows its layout.
pub fn video_format_from_spa(raw: u32) -> Option<VideoFormat> {
    VideoFormat::ALL
        .iter()
        .copied()
        .find(|f| spa_video_format(*f).as_raw() == raw)
}

/// A fixed raw video format, as PipeWire hands it to `param_changed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoParams {
    /// The video format.
    pub format: VideoFormat,
    /// The width in pixels.
    pub width: u32,
    /// The height in pixels.
    pub height: u32,
    /// `0/1` when the rate is variable or was not negotiated.
    pub framerate: Framerate,
    /// The DRM modifier, present exactly when the format was negotiated for dma-bufs with
    /// modifiers (PipeWire's `SPA_FORMAT_VIDEO_modifier`).
    pub modifier: Option<u64>,
}

impl fmt::Display for VideoParams {
    /// `320x240 BGRx @ 60/1 fps, modifier LINEAR` (or `, no modifier`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{} {} @ {} fps, ",
            self.width, self.height, self.format, self.framerate
        )?;
        match self.modifier {
            Some(DRM_FORMAT_MOD_LINEAR) => f.write_str("modifier LINEAR"),
            Some(m) => write!(f, "modifier {m:#x}"),
            None => f.write_str("no modifier"),
        }
    }
}

impl VideoParams {
    /// Parses a fixed `SPA_PARAM_Format` pod of media type video/raw.
    pub fn parse(pod: &Pod) -> Result<Self> {
        Self::parse_format(pod).map_err(Error::Format)
    }

    fn parse_format(pod: &Pod) -> std::result::Result<Self, FormatError> {
        let value = PodDeserializer::deserialize_any_from(pod.as_bytes())
            .map(|(_, v)| v)
            .map_err(|e| FormatError::NotAPod(format!("{e:?}")))?;
        let Value::Object(object) = value else {
            return Err(FormatError::NotAnObject);
        };
        if object.type_ != sys::SPA_TYPE_OBJECT_Format {
            return Err(FormatError::NotAFormat(object.type_));
        }
        let prop = |key: u32| {
            object
                .properties
                .iter()
                .find(|p| p.key == key)
                .map(|p| fixed(&p.value))
        };
        match (
            prop(sys::SPA_FORMAT_mediaType),
            prop(sys::SPA_FORMAT_mediaSubtype),
        ) {
            (Some(Value::Id(Id(t))), Some(Value::Id(Id(s))))
                if t == sys::SPA_MEDIA_TYPE_video && s == sys::SPA_MEDIA_SUBTYPE_raw => {}
            _ => return Err(FormatError::NotRawVideo),
        }
        let format = match prop(sys::SPA_FORMAT_VIDEO_format) {
            Some(Value::Id(Id(raw))) => {
                video_format_from_spa(raw).ok_or(FormatError::UnknownLayout(raw))?
            }
            _ => return Err(FormatError::NoFormat),
        };
        let (width, height) = match prop(sys::SPA_FORMAT_VIDEO_size) {
            Some(Value::Rectangle(r)) if r.width > 0 && r.height > 0 => (r.width, r.height),
            _ => return Err(FormatError::NoSize),
        };
        let framerate = match prop(sys::SPA_FORMAT_VIDEO_framerate) {
            Some(Value::Fraction(f)) => Framerate::new(f.num, f.denom),
            _ => Framerate::new(0, 1),
        };
        let modifier = match prop(sys::SPA_FORMAT_VIDEO_modifier) {
            None => None,
            Some(Value::Long(m)) => Some(m as u64),
            Some(other) => return Err(FormatError::ModifierNotLong(format!("{other:?}"))),
        };
        Ok(Self {
            format,
            width,
            height,
            framerate,
            modifier,
        })
    }
}

/// The modifiers a Format param leaves to the producer to fixate: present when its modifier
/// property carries `DONT_FIXATE` (PipeWire's dma-buf negotiation), with every modifier of the
/// choice (or the one value left after intersection).
pub(crate) fn modifiers_to_fixate(pod: &Pod) -> Option<Vec<u64>> {
    let (_, value) = PodDeserializer::deserialize_any_from(pod.as_bytes()).ok()?;
    let Value::Object(object) = value else {
        return None;
    };
    let prop = object
        .properties
        .iter()
        .find(|p| p.key == sys::SPA_FORMAT_VIDEO_modifier)?;
    if !prop.flags.contains(PropertyFlags::DONT_FIXATE) {
        return None;
    }
    let mut modifiers = match &prop.value {
        Value::Long(m) => vec![*m as u64],
        Value::Choice(ChoiceValue::Long(Choice(_, choice))) => match choice {
            ChoiceEnum::None(m) => vec![*m as u64],
            ChoiceEnum::Enum { alternatives, .. } => {
                alternatives.iter().map(|&m| m as u64).collect()
            }
            ChoiceEnum::Range { default, .. }
            | ChoiceEnum::Step { default, .. }
            | ChoiceEnum::Flags { default, .. } => vec![*default as u64],
        },
        _ => Vec::new(),
    };
    modifiers.sort_unstable();
    modifiers.dedup();
    Some(modifiers)
}

/// A property's value with a choice resolved to its default (what `spa_pod_get_values`
/// gives C code): a fixed format may still wrap values in `SPA_CHOICE_None` choices.
fn fixed(value: &Value) -> Value {
    match value {
        Value::Choice(choice) => match choice {
            ChoiceValue::Id(Choice(_, c)) => Value::Id(*default_of(c)),
            ChoiceValue::Int(Choice(_, c)) => Value::Int(*default_of(c)),
            ChoiceValue::Long(Choice(_, c)) => Value::Long(*default_of(c)),
            ChoiceValue::Rectangle(Choice(_, c)) => Value::Rectangle(*default_of(c)),
            ChoiceValue::Fraction(Choice(_, c)) => Value::Fraction(*default_of(c)),
            other => Value::Choice(other.clone()),
        },
        other => other.clone(),
    }
}

fn default_of<T: spa::pod::CanonicalFixedSizedPod>(choice: &ChoiceEnum<T>) -> &T {
    match choice {
        ChoiceEnum::None(v) => v,
        ChoiceEnum::Range { default, .. }
        | ChoiceEnum::Step { default, .. }
        | ChoiceEnum::Enum { default, .. }
        | ChoiceEnum::Flags { default, .. } => default,
    }
}

/// The modifier property of an EnumFormat object (PipeWire's dma-buf negotiation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ModifierOffer {
    /// No modifier: shared memory.
    None,
    /// The modifiers this producer can allocate, `MANDATORY | DONT_FIXATE`: PipeWire leaves
    /// the choice to the producer, which test-allocates and fixates one.
    ToFixate(Vec<u64>),
    /// The modifier the producer fixated, `MANDATORY` only: a consumer that matches it gets a
    /// format with it fixed.
    Fixed(u64),
}

/// What the producer offers in one EnumFormat object.
#[derive(Debug, Clone)]
pub(crate) struct FormatOffer {
    pub formats: Vec<VideoFormat>,
    pub width: u32,
    pub height: u32,
    pub max_framerate: Framerate,
    /// Whether (and how) dma-bufs with modifiers are offered; `MANDATORY`, so consumers
    /// without modifier support do not match this object and fall through to the next.
    pub modifier: ModifierOffer,
}

/// The properties every raw video format object starts with: media type video, subtype raw,
/// and the video format (one `Id`, or a choice of them).
fn raw_video(format: Value) -> Vec<Property> {
    let id = |v: u32| Value::Id(Id(v));
    vec![
        Property::new(sys::SPA_FORMAT_mediaType, id(sys::SPA_MEDIA_TYPE_video)),
        Property::new(sys::SPA_FORMAT_mediaSubtype, id(sys::SPA_MEDIA_SUBTYPE_raw)),
        Property::new(sys::SPA_FORMAT_VIDEO_format, format),
    ]
}

impl FormatOffer {
    pub(crate) fn object(&self) -> Object {
        let id = |v: u32| Value::Id(Id(v));
        let format = match self.formats.as_slice() {
            [only] => id(spa_video_format(*only).as_raw()),
            formats => Value::Choice(ChoiceValue::Id(Choice(
                ChoiceFlags::empty(),
                ChoiceEnum::Enum {
                    default: Id(spa_video_format(formats[0]).as_raw()),
                    alternatives: formats
                        .iter()
                        .map(|f| Id(spa_video_format(*f).as_raw()))
                        .collect(),
                },
            ))),
        };
        let mut properties = raw_video(format);
        match &self.modifier {
            ModifierOffer::None => {}
            ModifierOffer::ToFixate(modifiers) => properties.push(Property {
                key: sys::SPA_FORMAT_VIDEO_modifier,
                flags: PropertyFlags::MANDATORY | PropertyFlags::DONT_FIXATE,
                value: Value::Choice(ChoiceValue::Long(Choice(
                    ChoiceFlags::empty(),
                    ChoiceEnum::Enum {
                        default: modifiers.first().copied().unwrap_or(DRM_FORMAT_MOD_LINEAR) as i64,
                        alternatives: modifiers.iter().map(|&m| m as i64).collect(),
                    },
                ))),
            }),
            ModifierOffer::Fixed(modifier) => properties.push(Property {
                key: sys::SPA_FORMAT_VIDEO_modifier,
                flags: PropertyFlags::MANDATORY,
                value: Value::Long(*modifier as i64),
            }),
        }
        properties.push(Property::new(
            sys::SPA_FORMAT_VIDEO_size,
            Value::Rectangle(Rectangle {
                width: self.width,
                height: self.height,
            }),
        ));
        let max = Fraction {
            num: self.max_framerate.num,
            denom: self.max_framerate.denom,
        };
        properties.push(Property::new(
            sys::SPA_FORMAT_VIDEO_framerate,
            Value::Choice(ChoiceValue::Fraction(Choice(
                ChoiceFlags::empty(),
                ChoiceEnum::Range {
                    default: max,
                    min: Fraction { num: 0, denom: 1 },
                    max,
                },
            ))),
        ));
        Object {
            type_: sys::SPA_TYPE_OBJECT_Format,
            id: sys::SPA_PARAM_EnumFormat,
            properties,
        }
    }
}

/// The producer's answer to a fixed format: how many buffers, how they are laid out, and
/// which memory types it can give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BuffersOffer {
    /// Preferred count; the consumer may choose any count from 2 to `max_buffers`.
    pub buffers: u32,
    pub max_buffers: u32,
    /// `spa_data` blocks per buffer (one per plane for modifier dma-bufs, else one).
    pub blocks: u32,
    /// Bytes of one block.
    pub size: u32,
    /// Stride of the first plane.
    pub stride: u32,
    /// The memory types the producer can give.
    pub data_types: DataTypes,
    /// Metadata this layout requires (`SPA_PARAM_BUFFERS_metaType`, `MANDATORY`): a layout
    /// for explicit sync exists only where both sides negotiated `SPA_META_SyncTimeline`.
    pub required_meta: Option<u32>,
}

impl BuffersOffer {
    pub(crate) fn object(&self) -> Object {
        let int = |v: u32| Value::Int(i32::try_from(v).unwrap_or(i32::MAX));
        let mut object = Object {
            type_: sys::SPA_TYPE_OBJECT_ParamBuffers,
            id: sys::SPA_PARAM_Buffers,
            properties: vec![
                Property::new(
                    sys::SPA_PARAM_BUFFERS_buffers,
                    Value::Choice(ChoiceValue::Int(Choice(
                        ChoiceFlags::empty(),
                        ChoiceEnum::Range {
                            default: self.buffers as i32,
                            min: 2,
                            max: self.max_buffers as i32,
                        },
                    ))),
                ),
                Property::new(sys::SPA_PARAM_BUFFERS_blocks, int(self.blocks)),
                Property::new(sys::SPA_PARAM_BUFFERS_size, int(self.size)),
                Property::new(sys::SPA_PARAM_BUFFERS_stride, int(self.stride)),
                Property::new(sys::SPA_PARAM_BUFFERS_align, int(16)),
                // A flags choice, so that PipeWire intersects it with the consumer's mask
                // (two plain ints would have to be equal).
                Property::new(
                    sys::SPA_PARAM_BUFFERS_dataType,
                    Value::Choice(ChoiceValue::Int(Choice(
                        ChoiceFlags::empty(),
                        ChoiceEnum::Flags {
                            default: self.data_types.bits() as i32,
                            flags: vec![],
                        },
                    ))),
                ),
            ],
        };
        if let Some(meta) = self.required_meta {
            object.properties.push(Property {
                key: spa_abi::PARAM_BUFFERS_META_TYPE,
                flags: PropertyFlags::MANDATORY,
                value: Value::Int(1 << meta),
            });
        }
        object
    }
}

/// `SPA_PARAM_Meta` for `SPA_META_SyncTimeline` (explicit sync), with the RELEASE feature
/// (the consumer says whether it will signal release points) dropped if the other side
/// lacks it.
pub(crate) fn sync_timeline_meta() -> Object {
    let mut object = meta(spa_abi::META_SYNC_TIMELINE, SYNC_TIMELINE_META_SIZE);
    object.properties.push(Property {
        key: spa_abi::PARAM_META_FEATURES,
        flags: PropertyFlags::from_bits_retain(spa_abi::POD_PROP_FLAG_DROP),
        value: Value::Int(spa_abi::META_FEATURE_SYNC_TIMELINE_RELEASE as i32),
    });
    object
}

/// The `SPA_PARAM_Meta` a consumer passes among its connect params to ask for explicit sync
/// (`SPA_META_SyncTimeline` with the RELEASE feature).
pub fn sync_timeline_meta_param() -> Result<Vec<u8>> {
    PodBytes::new("Meta", sync_timeline_meta()).map(|p| p.0)
}

/// A `SPA_PARAM_Meta` object for metadata `type_` of `size` bytes.
fn meta(type_: u32, size: i32) -> Object {
    Object {
        type_: sys::SPA_TYPE_OBJECT_ParamMeta,
        id: sys::SPA_PARAM_Meta,
        properties: vec![
            Property::new(sys::SPA_PARAM_META_type, Value::Id(Id(type_))),
            Property::new(sys::SPA_PARAM_META_size, Value::Int(size)),
        ],
    }
}

/// A `SPA_PARAM_Capability` param (PipeWire 1.6) with these dict items, as a consumer (or a
/// producer) passes among its connect params to tell its peers, e.g.
/// [`CAPABILITY_DEVICE_IDS`](crate::CAPABILITY_DEVICE_IDS) with the devices it uses (see
/// [`encode_dev_t`](crate::encode_dev_t)). PipeWire before 1.6 ignores it.
pub fn capability_param(items: &[(&str, &str)]) -> Result<Vec<u8>> {
    PodBytes::new("Capability", capability_object(items)).map(|p| p.0)
}

/// The `SPA_PARAM_Capability` dict object with these items.
pub(crate) fn capability_object(items: &[(&str, &str)]) -> Object {
    let mut fields = vec![Value::Int(i32::try_from(items.len()).unwrap_or(i32::MAX))];
    for (key, value) in items {
        fields.push(Value::String((*key).to_owned()));
        fields.push(Value::String((*value).to_owned()));
    }
    Object {
        type_: spa_abi::TYPE_OBJECT_PARAM_DICT,
        id: spa_abi::PARAM_CAPABILITY,
        properties: vec![Property {
            key: spa_abi::PARAM_DICT_INFO,
            flags: PropertyFlags::HINT_DICT,
            value: Value::Struct(fields),
        }],
    }
}

/// `sizeof(struct spa_meta_sync_timeline)`.
pub(crate) const SYNC_TIMELINE_META_SIZE: i32 = 24;

/// `SPA_PARAM_Meta` for `SPA_META_Header` (sequence number and timestamps per frame).
pub(crate) fn header_meta() -> Object {
    meta(
        sys::SPA_META_Header,
        std::mem::size_of::<sys::spa_meta_header>() as i32,
    )
}

/// A serialized param pod.
#[derive(Debug, Clone)]
pub(crate) struct PodBytes(Vec<u8>);

impl PodBytes {
    pub(crate) fn new(what: &'static str, object: Object) -> Result<Self> {
        PodSerializer::serialize(Cursor::new(Vec::new()), &Value::Object(object))
            .map(|(cursor, _)| Self(cursor.into_inner()))
            .map_err(|source| Error::Pod { what, source })
    }

    pub(crate) fn pod(&self) -> &Pod {
        Pod::from_bytes(&self.0).expect("a serialized pod holds its whole size")
    }
}

/// Borrows serialized params as the pod list `connect`/`update_params` take.
pub(crate) fn pod_refs(params: &[PodBytes]) -> Vec<&Pod> {
    params.iter().map(PodBytes::pod).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(object: Object) -> Result<VideoParams> {
        let bytes = PodBytes::new("test", object).unwrap();
        VideoParams::parse(bytes.pod())
    }

    fn fixed_format(modifier: Option<Value>) -> Object {
        let mut properties = raw_video(Value::Id(Id(SpaVideoFormat::NV12.as_raw())));
        properties.extend([
            Property::new(
                sys::SPA_FORMAT_VIDEO_size,
                Value::Rectangle(Rectangle {
                    width: 640,
                    height: 480,
                }),
            ),
            Property::new(
                sys::SPA_FORMAT_VIDEO_framerate,
                Value::Fraction(Fraction { num: 25, denom: 1 }),
            ),
        ]);
        if let Some(m) = modifier {
            properties.push(Property {
                key: sys::SPA_FORMAT_VIDEO_modifier,
                flags: PropertyFlags::MANDATORY,
                value: m,
            });
        }
        Object {
            type_: sys::SPA_TYPE_OBJECT_Format,
            id: sys::SPA_PARAM_Format,
            properties,
        }
    }

    #[test]
    fn every_heapcore_format_round_trips_through_spa() {
        for f in VideoFormat::ALL {
            assert_eq!(
                video_format_from_spa(spa_video_format(*f).as_raw()),
                Some(*f),
                "{f}"
            );
        }
        assert_eq!(video_format_from_spa(SpaVideoFormat::v210.as_raw()), None);
    }

    #[test]
    fn fixed_formats_parse_with_and_without_modifier() {
        let p = parse(fixed_format(None)).unwrap();
        assert_eq!(
            (p.format, p.width, p.height, p.modifier),
            (VideoFormat::Nv12, 640, 480, None)
        );
        assert_eq!(p.framerate, Framerate::new(25, 1));
        let p = parse(fixed_format(Some(Value::Long(0)))).unwrap();
        assert_eq!(p.modifier, Some(DRM_FORMAT_MOD_LINEAR));
        // A modifier left in a (fixated) choice, as PipeWire leaves DONT_FIXATE properties.
        let choice = Value::Choice(ChoiceValue::Long(Choice(
            ChoiceFlags::empty(),
            ChoiceEnum::Enum {
                default: 0,
                alternatives: vec![0],
            },
        )));
        assert_eq!(parse(fixed_format(Some(choice))).unwrap().modifier, Some(0));
    }

    #[test]
    fn video_params_print_as_one_line() {
        let mut p = parse(fixed_format(None)).unwrap();
        assert_eq!(p.to_string(), "640x480 NV12 @ 25/1 fps, no modifier");
        p.modifier = Some(DRM_FORMAT_MOD_LINEAR);
        assert_eq!(p.to_string(), "640x480 NV12 @ 25/1 fps, modifier LINEAR");
        p.modifier = Some(0x0100_0000_0000_0001);
        assert!(p.to_string().ends_with("modifier 0x100000000000001"), "{p}");
    }

    #[test]
    fn formats_without_known_layout_are_refused() {
        let mut obj = fixed_format(None);
        obj.properties[2].value = Value::Id(Id(SpaVideoFormat::v210.as_raw()));
        let err = parse(obj).unwrap_err().to_string();
        assert_eq!(
            err,
            "unsupported format from PipeWire: video format VideoFormat::v210 has no known layout"
        );
        let mut obj = fixed_format(None);
        obj.properties[0].value = Value::Id(Id(sys::SPA_MEDIA_TYPE_audio));
        assert!(parse(obj).unwrap_err().to_string().contains("raw video"));
    }

    #[test]
    fn offers_serialize_and_parse_back() {
        let offer = FormatOffer {
            formats: vec![VideoFormat::Bgrx, VideoFormat::Nv12],
            width: 320,
            height: 240,
            max_framerate: Framerate::new(60, 1),
            modifier: ModifierOffer::ToFixate(vec![DRM_FORMAT_MOD_LINEAR]),
        };
        // An offer is not fixed, but its defaults parse as the preferred format.
        let bytes = PodBytes::new("EnumFormat", offer.object()).unwrap();
        let p = VideoParams::parse(bytes.pod()).unwrap();
        assert_eq!(p.format, VideoFormat::Bgrx);
        assert_eq!(p.framerate, Framerate::new(60, 1));
        assert_eq!(p.modifier, Some(0));
        // The list is left to fixate; a fixed offer and no modifier leave nothing.
        assert_eq!(modifiers_to_fixate(bytes.pod()), Some(vec![0]));
        for modifier in [ModifierOffer::Fixed(0), ModifierOffer::None] {
            let fixed = FormatOffer {
                modifier,
                ..offer.clone()
            };
            let bytes = PodBytes::new("EnumFormat", fixed.object()).unwrap();
            assert_eq!(modifiers_to_fixate(bytes.pod()), None);
        }
        let buffers = BuffersOffer {
            buffers: 4,
            max_buffers: 16,
            blocks: 2,
            size: 4096,
            stride: 64,
            data_types: DataTypes::DMA_BUF,
            required_meta: None,
        };
        let bytes = PodBytes::new("Buffers", buffers.object()).unwrap();
        let (_, value) = PodDeserializer::deserialize_any_from(bytes.pod().as_bytes()).unwrap();
        let Value::Object(obj) = value else {
            panic!("not an object")
        };
        assert_eq!(obj.id, sys::SPA_PARAM_Buffers);
        assert_eq!(obj.properties.len(), 6);
        PodBytes::new("Meta", header_meta()).unwrap();
    }
}
