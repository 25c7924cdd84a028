#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]

mod alloc;
mod config;
mod error;
mod import;
pub mod params;
pub mod pattern;
mod producer;
#[allow(unsafe_code)] // the one module that touches PipeWire's raw structures
mod raw;

pub use alloc::FrameConstraints;
pub use config::{DEFAULT_USAGE, DataKind, Framerate, MAX_BUFFERS, MAX_DIMENSION, ProducerConfig};
pub use error::{Error, Result};
pub use import::{ImportedData, RegionRead};
pub use params::{
    DRM_FORMAT_MOD_INVALID, DRM_FORMAT_MOD_LINEAR, VideoParams, spa_video_format,
    video_format_from_spa,
};
pub use producer::{Event, Frame, Negotiated, Producer, Stats, frame_interval};
pub use raw::{EnteredLoop, import_data};

/// Re-exported so users name the same versions this crate was built with.
pub use heapcore;
pub use pipewire;
