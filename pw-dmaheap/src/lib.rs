#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

mod config;
mod constraints;
mod data_types;
mod error;
mod frame_pools;
mod import;
pub mod params;
pub mod pattern;
mod producer;
#[allow(unsafe_code)] // the one module that touches PipeWire's raw structures
mod raw;
mod video;

pub use config::{DEFAULT_USAGE, ProducerConfig};
pub use constraints::{FrameConstraints, FrameRules};
pub use data_types::{DataKind, DataTypes};
pub use error::{
    ConfigError, DmabufUnavailable, Error, FormatError, FrameError, NegotiationError, Result,
};
pub use heapcore::syncobj::{SyncDevice, Timeline};
pub use import::{ImportedData, RegionRead};
pub use params::{
    DRM_FORMAT_MOD_INVALID, DRM_FORMAT_MOD_LINEAR, VideoParams, spa_video_format,
    video_format_from_spa,
};
pub use producer::{
    CAPABILITY_DEVICE_ID_NEGOTIATION, CAPABILITY_DEVICE_IDS, Event, Frame, Negotiated, PeerDevice,
    Producer, Stats, encode_dev_t, frame_interval,
};
pub use raw::{EnteredLoop, import_data};
pub use video::{Framerate, MAX_BUFFERS, MAX_DIMENSION};

/// Re-exported so users name the same versions this crate was built with.
pub use heapcore;
pub use pipewire;
