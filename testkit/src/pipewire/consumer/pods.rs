//! The params the test consumer announces: EnumFormat (with the LINEAR modifier as a list
//! to fixate, or without), Buffers (the memory types it takes) and Meta (the header).

use std::io::Cursor;

use pw_dmaheap::heapcore::format::VideoFormat;
use pw_dmaheap::pipewire as pw;
use pw_dmaheap::{DataTypes, spa_video_format};

use pw::spa;
use spa::pod::serialize::PodSerializer;
use spa::pod::{ChoiceValue, Object, Pod, Property, PropertyFlags, Value};
use spa::sys;
use spa::utils::{Choice, ChoiceEnum, ChoiceFlags, Fraction, Id, Rectangle};

pub(super) fn bytes(object: Object) -> Vec<u8> {
    PodSerializer::serialize(Cursor::new(Vec::new()), &Value::Object(object))
        .expect("pod")
        .0
        .into_inner()
}

pub(super) fn enum_format(format: VideoFormat, modifier: bool) -> Vec<u8> {
    let mut properties = vec![
        Property::new(
            sys::SPA_FORMAT_mediaType,
            Value::Id(Id(sys::SPA_MEDIA_TYPE_video)),
        ),
        Property::new(
            sys::SPA_FORMAT_mediaSubtype,
            Value::Id(Id(sys::SPA_MEDIA_SUBTYPE_raw)),
        ),
        Property::new(
            sys::SPA_FORMAT_VIDEO_format,
            Value::Id(Id(spa_video_format(format).as_raw())),
        ),
    ];
    if modifier {
        // As OBS and compositors announce it: a list, to be fixated by the producer.
        properties.push(Property {
            key: sys::SPA_FORMAT_VIDEO_modifier,
            flags: PropertyFlags::MANDATORY | PropertyFlags::DONT_FIXATE,
            value: Value::Choice(ChoiceValue::Long(Choice(
                ChoiceFlags::empty(),
                ChoiceEnum::Enum {
                    default: pw_dmaheap::DRM_FORMAT_MOD_LINEAR as i64,
                    alternatives: vec![pw_dmaheap::DRM_FORMAT_MOD_LINEAR as i64],
                },
            ))),
        });
    }
    properties.push(Property::new(
        sys::SPA_FORMAT_VIDEO_size,
        Value::Choice(ChoiceValue::Rectangle(Choice(
            ChoiceFlags::empty(),
            ChoiceEnum::Range {
                default: Rectangle {
                    width: 640,
                    height: 480,
                },
                min: Rectangle {
                    width: 1,
                    height: 1,
                },
                max: Rectangle {
                    width: 16384,
                    height: 16384,
                },
            },
        ))),
    ));
    properties.push(Property::new(
        sys::SPA_FORMAT_VIDEO_framerate,
        Value::Choice(ChoiceValue::Fraction(Choice(
            ChoiceFlags::empty(),
            ChoiceEnum::Range {
                default: Fraction { num: 30, denom: 1 },
                min: Fraction { num: 0, denom: 1 },
                max: Fraction {
                    num: 1000,
                    denom: 1,
                },
            },
        ))),
    ));
    bytes(Object {
        type_: sys::SPA_TYPE_OBJECT_Format,
        id: sys::SPA_PARAM_EnumFormat,
        properties,
    })
}

fn range(default: i32, min: i32, max: i32) -> Value {
    Value::Choice(ChoiceValue::Int(Choice(
        ChoiceFlags::empty(),
        ChoiceEnum::Range { default, min, max },
    )))
}

pub(super) fn buffers_param(types: DataTypes) -> Vec<u8> {
    bytes(buffers_object(types))
}

fn buffers_object(types: DataTypes) -> Object {
    Object {
        type_: sys::SPA_TYPE_OBJECT_ParamBuffers,
        id: sys::SPA_PARAM_Buffers,
        properties: vec![
            Property::new(sys::SPA_PARAM_BUFFERS_buffers, range(8, 2, 16)),
            Property::new(sys::SPA_PARAM_BUFFERS_blocks, range(1, 1, 4)),
            Property::new(sys::SPA_PARAM_BUFFERS_size, range(0, 0, i32::MAX)),
            Property::new(sys::SPA_PARAM_BUFFERS_stride, range(0, 0, i32::MAX)),
            Property::new(
                sys::SPA_PARAM_BUFFERS_dataType,
                Value::Choice(ChoiceValue::Int(Choice(
                    ChoiceFlags::empty(),
                    ChoiceEnum::Flags {
                        default: types.bits() as i32,
                        flags: vec![],
                    },
                ))),
            ),
        ],
    }
}

/// The Buffers layout for explicit sync: two more blocks (the syncobjs), and only where both
/// sides negotiated `SPA_META_SyncTimeline` (`metaType`, mandatory).
pub(super) fn synced_buffers_param(types: DataTypes) -> Vec<u8> {
    let mut object = buffers_object(types);
    for p in &mut object.properties {
        if p.key == sys::SPA_PARAM_BUFFERS_blocks {
            p.value = range(3, 3, 6);
        }
    }
    object.properties.push(Property {
        key: 7, // SPA_PARAM_BUFFERS_metaType
        flags: PropertyFlags::MANDATORY,
        value: Value::Int(1 << super::sync::META_SYNC_TIMELINE),
    });
    bytes(object)
}

/// `SPA_PARAM_Meta` for `SPA_META_SyncTimeline` with the RELEASE feature (dropped if the
/// producer lacks it): the same param a producer announces.
pub(super) fn sync_meta() -> Vec<u8> {
    pw_dmaheap::params::sync_timeline_meta_param().expect("pod")
}

pub(super) fn header_meta() -> Vec<u8> {
    bytes(Object {
        type_: sys::SPA_TYPE_OBJECT_ParamMeta,
        id: sys::SPA_PARAM_Meta,
        properties: vec![
            Property::new(
                sys::SPA_PARAM_META_type,
                Value::Id(Id(sys::SPA_META_Header)),
            ),
            Property::new(
                sys::SPA_PARAM_META_size,
                Value::Int(std::mem::size_of::<sys::spa_meta_header>() as i32),
            ),
        ],
    })
}

pub(super) fn pods(bytes: &[Vec<u8>]) -> Vec<&Pod> {
    bytes
        .iter()
        .map(|b| Pod::from_bytes(b).expect("a whole pod"))
        .collect()
}
