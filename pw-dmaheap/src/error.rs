//! Errors that say what went wrong and what to change: one enum for the crate ([`Error`]) and
//! one per kind of trouble it wraps, so callers can match on what happened.

use std::os::fd::RawFd;
use std::sync::Arc;

use heapcore::Origin;
use heapcore::format::VideoFormat;

use crate::data_types::DataTypes;
use crate::video::{Framerate, MAX_BUFFERS, MAX_DIMENSION};

/// Everything pw-dmaheap can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The producer configuration cannot work; the message names the field and the fix.
    #[error("invalid producer configuration: {0}")]
    Config(#[from] ConfigError),

    /// A frame of this size and format cannot be described to PipeWire or allocated.
    #[error("{width}x{height} {format} frames are not possible: {reason}")]
    Frame {
        /// The frame width.
        width: u32,
        /// The frame height.
        height: u32,
        /// The video format.
        format: VideoFormat,
        /// Why not.
        reason: FrameError,
    },

    /// PipeWire negotiated something this producer never offered or cannot serve.
    #[error("negotiation failed: {0}")]
    Negotiation(#[from] NegotiationError),

    /// A format pod that is not a raw video format this crate knows.
    #[error("unsupported format from PipeWire: {0}")]
    Format(#[from] FormatError),

    /// Building a param pod failed (a bug: the pods are small and fixed in shape).
    #[error("building the {what} param failed: {source}")]
    Pod {
        /// Which param.
        what: &'static str,
        /// The serializer's error.
        #[source]
        source: pipewire::spa::pod::serialize::GenError,
    },

    /// heapcore refused or failed (heap names, permissions, out of memory, mapping).
    #[error(transparent)]
    Heap(#[from] heapcore::Error),

    /// A PipeWire call failed.
    #[error("{context}: {source}")]
    PipeWire {
        /// What was being done.
        context: &'static str,
        /// PipeWire's error.
        #[source]
        source: pipewire::Error,
    },

    /// Duplicating an fd failed (out of fds, most likely).
    #[error("duplicating {what} fd {fd}: {source}")]
    Duplicate {
        /// Whose fd (`received`, `imported`).
        what: &'static str,
        /// The fd number.
        fd: RawFd,
        /// The system call's error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn pipewire(context: &'static str) -> impl FnOnce(pipewire::Error) -> Self {
        move |source| Self::PipeWire { context, source }
    }

    pub(crate) fn frame(
        format: VideoFormat,
        width: u32,
        height: u32,
    ) -> impl Fn(FrameError) -> Self {
        move |reason| Self::Frame {
            width,
            height,
            format,
            reason,
        }
    }
}

/// What is wrong with a [`ProducerConfig`](crate::ProducerConfig).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The node name is empty or has control characters.
    #[error("node name {0:?} must be non-empty printable text")]
    NodeName(String),
    /// No video format is offered.
    #[error("no video format offered; choose from {}", known_formats())]
    NoFormats,
    /// A width or height of 0 or over [`MAX_DIMENSION`].
    #[error("size {width}x{height}: width and height must be 1 to {MAX_DIMENSION}")]
    Size {
        /// The width asked for.
        width: u32,
        /// The height asked for.
        height: u32,
    },
    /// A frame rate of 0 or with a 0 denominator.
    #[error("frame rate {0} must be positive (for example 30/1)")]
    Framerate(Framerate),
    /// A buffer count outside 2 to [`MAX_BUFFERS`].
    #[error("{0} buffers: ask for 2 to {MAX_BUFFERS}")]
    Buffers(u32),
    /// A stride alignment that is not a power of two up to 4096.
    #[error("stride alignment {0} must be a power of two up to 4096")]
    StrideAlign(u32),
    /// The usage is not a usage name.
    #[error("usage: {0}")]
    Usage(#[source] heapcore::Error),
    /// A stride alignment other than 4 for a multi-plane format that may go out as one block.
    #[error(
        "stride alignment {align} cannot be used for {format} while consumers may get frames \
         as one block (memfd_fallback or dmabuf_without_modifier): they take the planes after \
         the first from GStreamer's default layout, whose rows are aligned to 4 bytes; use 4, \
         offer only single-plane formats, or turn both off"
    )]
    OneBlockStrideAlign {
        /// The stride alignment asked for.
        align: u32,
        /// The first multi-plane format offered.
        format: VideoFormat,
    },
    /// An explicit heap list with nothing in it.
    #[error("the explicit heap list is empty; leave it unset for the default order")]
    EmptyHeapList,
    /// A heap list spec that names no heap.
    #[error("the heap list {0:?} names no heap (example: system,cma,udmabuf)")]
    NoHeapNamed(String),
    /// udmabuf is listed and missing.
    #[error("udmabuf is listed but /dev/udmabuf does not exist (load the udmabuf module)")]
    NoUdmabuf,
    /// memfd is listed as a dma-buf source.
    #[error(
        "memfd is not a dma-buf source; consumers that need shared memory get sealed memfds \
         anyway (memfd_fallback)"
    )]
    MemfdListed,
    /// Neither DmaBuf nor MemFd can be offered.
    #[error("nothing to offer: no dma-buf can be allocated here ({0}) and memfd_fallback is off")]
    NothingToOffer(DmabufUnavailable),
}

fn known_formats() -> String {
    VideoFormat::ALL
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why frames of a size and format cannot be had (the reason of [`Error::Frame`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The layout cannot be computed (empty or overflowing).
    #[error(transparent)]
    Layout(#[from] heapcore::FrameLayoutError),
    /// A multi-plane frame sent as one block needs GStreamer's 4-byte rows.
    #[error(
        "sent as one block, planes after the first have GStreamer's default layout (4-byte \
         rows), which stride alignment {0} cannot have"
    )]
    OneBlockStrideAlign(u32),
    /// Larger than the 31-bit sizes `SPA_PARAM_Buffers` carries.
    #[error("{0} bytes per frame; PipeWire describes at most 2 GiB")]
    TooLarge(u64),
}

/// Why no dma-buf is offered (what [`Producer::dmabuf_offer`](crate::Producer::dmabuf_offer)
/// says).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DmabufUnavailable {
    /// Contiguous buffers were asked for and no CMA heap can serve.
    #[error("no contiguous (CMA) heap here")]
    NoContiguousHeap,
    /// No DMA-BUF heap or udmabuf can serve.
    #[error("no DMA-BUF heap or /dev/udmabuf here")]
    NoSource,
    /// The allocation gave memory that is not a dma-buf.
    #[error("{0} is not a dma-buf")]
    NotDmabuf(Origin),
    /// Every source failed to allocate.
    #[error("{0}")]
    Allocation(Arc<heapcore::Error>),
    /// A format with a modifier was fixed and its buffers could not be allocated.
    #[error("{0}")]
    Withdrawn(Arc<Error>),
}

/// What PipeWire or the consumer negotiated that this producer cannot serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiationError {
    /// The fixed video format was never offered.
    #[error("the consumer fixed {0}, which was not offered")]
    FormatNotOffered(VideoFormat),
    /// The consumer left modifiers to fixate, none of which this producer can allocate.
    #[error(
        "the consumer left modifiers [{}] to fixate; only LINEAR can be allocated here",
        hex_list(.0)
    )]
    ModifiersToFixate(Vec<u64>),
    /// A modifier other than LINEAR.
    #[error("modifier {0:#x} was fixed; only LINEAR was offered")]
    Modifier(u64),
    /// No modifier and MemFd is off.
    #[error("the consumer negotiated no modifier and MemFd is not allowed")]
    NoModifierNoMemFd,
    /// `add_buffer` before a format.
    #[error("a buffer was added before a format")]
    BufferBeforeFormat,
    /// A buffer with another number of data blocks than announced.
    #[error("buffers have {got} data blocks, {asked} were asked for")]
    Blocks {
        /// Blocks the buffer has.
        got: usize,
        /// Blocks announced.
        asked: u32,
    },
    /// A modifier, but the consumer's buffer types lack DmaBuf.
    #[error("a modifier was negotiated but the consumer's buffer types are {0}")]
    ModifierWithoutDmaBuf(DataTypes),
    /// No memory type both sides accept.
    #[error("the consumer accepts {accepted}; this producer offered {offered}")]
    Types {
        /// What the consumer accepts (the intersected mask).
        accepted: DataTypes,
        /// What this producer offered.
        offered: DataTypes,
    },
    /// DmaBuf was negotiated but no source is left for these constraints.
    #[error("DmaBuf was negotiated but no dma-buf source is left for these constraints")]
    NoDmabufSource,
    /// A received `spa_data` whose type carries no fd.
    #[error("spa_data type {0} carries no fd to import")]
    NoFd(u32),
    /// A received `spa_data` with a negative or out-of-range fd.
    #[error("spa_data has no valid fd ({0})")]
    InvalidFd(i64),
    /// A received block whose region lies outside its fd.
    #[error("spa_data region {start}..{end} lies outside its {len}-byte fd")]
    Region {
        /// `mapoffset`.
        start: u32,
        /// `mapoffset + maxsize`.
        end: u64,
        /// The fd's size.
        len: u64,
    },
    /// Explicit sync was negotiated without a DRM device to make syncobjs on (a bug).
    #[error("explicit sync was negotiated but no DRM device with timeline syncobjs is open")]
    NoSyncDevice,
    /// Allocating a buffer for the stream failed.
    #[error("allocating a buffer: {0}")]
    Allocation(#[source] Box<Error>),
    /// Something else failed while answering PipeWire (a frame that cannot be, a pod).
    #[error(transparent)]
    Producer(Box<Error>),
}

impl From<Error> for NegotiationError {
    fn from(e: Error) -> Self {
        match e {
            Error::Negotiation(n) => n,
            other => Self::Producer(Box::new(other)),
        }
    }
}

/// Why a format pod is not a fixed raw video format this crate knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes are no pod (the deserializer's complaint).
    #[error("not a pod ({0})")]
    NotAPod(String),
    /// A pod that is no object.
    #[error("not an object")]
    NotAnObject,
    /// An object of another type.
    #[error("object type {0} is not a format")]
    NotAFormat(u32),
    /// Not video/raw.
    #[error("not raw video")]
    NotRawVideo,
    /// A video format without a layout in heapcore.
    #[error("video format {} has no known layout", spa_format_name(*.0))]
    UnknownLayout(u32),
    /// No fixed video format.
    #[error("no fixed video format")]
    NoFormat,
    /// No fixed size, or an empty one.
    #[error("no fixed, non-empty video size")]
    NoSize,
    /// A modifier property that holds no long (the value found).
    #[error("modifier is not a long: {0}")]
    ModifierNotLong(String),
}

fn hex_list(values: &[u64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:#x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn spa_format_name(raw: u32) -> String {
    format!(
        "{:?}",
        pipewire::spa::param::video::VideoFormat::from_raw(raw)
    )
}

/// pw-dmaheap's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
