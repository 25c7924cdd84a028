//! The producer's configuration: what it offers PipeWire and where its buffers may come from.

use std::fmt;

use heapcore::format::VideoFormat;
use heapcore::{Inventory, Policy, Source, Usage};

use crate::error::{Error, Result};

/// The usage a producer allocates for unless told otherwise.
pub const DEFAULT_USAGE: &str = Usage::SCREENCAST;

/// The largest width or height offered (the limit of most display engines and GPUs).
pub const MAX_DIMENSION: u32 = 16384;

/// The most buffers a producer asks PipeWire for (`pw_stream` handles up to 64).
pub const MAX_BUFFERS: u32 = 32;

/// The memory type of a PipeWire buffer, as negotiated with the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataKind {
    /// `SPA_DATA_DmaBuf`: a dma-buf fd from a DMA-BUF heap or udmabuf.
    DmaBuf,
    /// `SPA_DATA_MemFd`: a sealed memfd, for consumers that cannot take dma-bufs.
    MemFd,
}

impl DataKind {
    /// The `enum spa_data_type` value.
    pub fn spa_type(self) -> u32 {
        match self {
            Self::DmaBuf => pipewire::spa::sys::SPA_DATA_DmaBuf,
            Self::MemFd => pipewire::spa::sys::SPA_DATA_MemFd,
        }
    }

    /// The bit this type has in `SPA_PARAM_BUFFERS_dataType`.
    pub fn mask(self) -> u32 {
        1 << self.spa_type()
    }

    /// The kind of an `enum spa_data_type` value, if it is one of the two.
    pub fn from_spa(data_type: u32) -> Option<Self> {
        [Self::DmaBuf, Self::MemFd]
            .into_iter()
            .find(|k| k.spa_type() == data_type)
    }
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DmaBuf => "DmaBuf",
            Self::MemFd => "MemFd",
        })
    }
}

/// A frame rate as a fraction (`30/1`, `30000/1001`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framerate {
    pub num: u32,
    pub denom: u32,
}

impl Framerate {
    pub const fn new(num: u32, denom: u32) -> Self {
        Self { num, denom }
    }

    /// The time between frames, if the rate is not zero.
    pub fn interval(self) -> Option<std::time::Duration> {
        (self.num > 0 && self.denom > 0).then(|| {
            std::time::Duration::from_nanos(
                (u64::from(self.denom) * 1_000_000_000) / u64::from(self.num),
            )
        })
    }
}

impl fmt::Display for Framerate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.num, self.denom)
    }
}

/// What a [`Producer`](crate::Producer) offers and how it allocates.
///
/// Build it with [`ProducerConfig::new`] and the `with_*` methods; [`ProducerConfig::validate`]
/// (called by `Producer::new`) says what is wrong with it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProducerConfig {
    /// `node.name` of the video source node (consumers target it by this name).
    pub node_name: String,
    /// `node.description`; defaults to the node name.
    pub description: Option<String>,
    /// Raw video formats offered, preferred first.
    pub formats: Vec<VideoFormat>,
    pub width: u32,
    pub height: u32,
    /// The highest frame rate offered; consumers may choose a lower one.
    pub framerate: Framerate,
    /// The buffer count asked for (the consumer may narrow it, between 2 and this).
    pub buffers: u32,
    /// Row strides are multiples of this (a power of two). The default, 4, is the layout
    /// GStreamer assumes when a buffer carries no per-plane metadata (pipewiresrc 0.3.65).
    /// Raise it for devices that need wider alignment: frames sent as one block (MemFd, or
    /// `dmabuf_without_modifier`) then work only for single-plane formats, because their
    /// consumers take the planes after the first from GStreamer's default layout;
    /// validation refuses a multi-plane format with one-block frames possible.
    pub stride_align: u32,
    /// Ask for physically contiguous memory (CMA heaps only); DmaBuf is not offered when no
    /// contiguous heap can serve.
    pub contiguous: bool,
    /// The usage heaps are chosen for (`screencast`): the policy maps it to an ordered heap
    /// list; it also names the buffers (`pw-screencast#3` in fdinfo).
    pub usage: String,
    /// An explicit, ordered list of dma-buf sources (heap names, `cma`, `udmabuf`) that
    /// replaces the policy's list for this producer.
    pub heaps: Option<Vec<Source>>,
    /// The usage → heaps policy. `None`: `Policy::load()` (built-in defaults, then
    /// `/etc/dmaheap/policy.toml` and the user's file, or `DMAHEAP_POLICY`).
    pub policy: Option<Policy>,
    /// Offer shared memory (`SPA_DATA_MemFd`, sealed memfds) to consumers that cannot take
    /// dma-bufs. Without it such consumers cannot link.
    pub memfd_fallback: bool,
    /// Also give dma-bufs to consumers that negotiated no modifier but list
    /// `SPA_DATA_DmaBuf` in their buffer types (PipeWire's rule for mmap-able, linear buffers
    /// such as V4L2's; pipewiresrc 0.3.65 is such a consumer). Off by default: PipeWire
    /// 0.3.65 hands an idle port's buffers to the next link with the same format without
    /// looking at its buffer types again, so a MemFd-only consumer that comes later could be
    /// given these dma-bufs. With it off, a format with the LINEAR modifier always means
    /// DmaBuf and one without always means MemFd, and reuse cannot cross that line.
    pub dmabuf_without_modifier: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self::new(1280, 720)
    }
}

impl ProducerConfig {
    /// A `width`×`height` BGRx source at 30 fps named `dmaheap-screencast`, allocating for
    /// the `screencast` usage from this machine's default heap order.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            node_name: "dmaheap-screencast".into(),
            description: None,
            formats: vec![VideoFormat::Bgrx],
            width,
            height,
            framerate: Framerate::new(30, 1),
            buffers: 4,
            stride_align: 4,
            contiguous: false,
            usage: DEFAULT_USAGE.into(),
            heaps: None,
            policy: None,
            memfd_fallback: true,
            dmabuf_without_modifier: false,
        }
    }

    pub fn with_node_name(mut self, name: impl Into<String>) -> Self {
        self.node_name = name.into();
        self
    }

    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    pub fn with_formats(mut self, formats: impl Into<Vec<VideoFormat>>) -> Self {
        self.formats = formats.into();
        self
    }

    pub fn with_size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }

    pub fn with_framerate(mut self, num: u32, denom: u32) -> Self {
        self.framerate = Framerate::new(num, denom);
        self
    }

    pub fn with_buffers(mut self, buffers: u32) -> Self {
        self.buffers = buffers;
        self
    }

    pub fn with_stride_align(mut self, align: u32) -> Self {
        self.stride_align = align;
        self
    }

    pub fn with_contiguous(mut self, contiguous: bool) -> Self {
        self.contiguous = contiguous;
        self
    }

    pub fn with_usage(mut self, usage: impl Into<String>) -> Self {
        self.usage = usage.into();
        self
    }

    pub fn with_heaps(mut self, heaps: Vec<Source>) -> Self {
        self.heaps = Some(heaps);
        self
    }

    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    pub fn with_memfd_fallback(mut self, allow: bool) -> Self {
        self.memfd_fallback = allow;
        self
    }

    pub fn with_dmabuf_without_modifier(mut self, allow: bool) -> Self {
        self.dmabuf_without_modifier = allow;
        self
    }

    /// Parses a source list (`system,cma,udmabuf`; commas or spaces, `linux,cma` stays one
    /// name) with heapcore's one list parser; names are validated.
    pub fn parse_heaps(list: &str, inventory: &Inventory) -> Result<Vec<Source>> {
        let sources = Source::parse_list(list, inventory)?;
        if sources.is_empty() {
            return Err(Error::Config(format!(
                "the heap list {list:?} names no heap (example: system,cma,udmabuf)"
            )));
        }
        Ok(sources)
    }

    /// Checks everything that can be checked before PipeWire is involved, against this
    /// machine's `inventory` (explicit heaps must exist here).
    pub fn validate(&self, inventory: &Inventory) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.node_name.is_empty() || self.node_name.chars().any(char::is_control) {
            return bad(format!(
                "node name {:?} must be non-empty printable text",
                self.node_name
            ));
        }
        if self.formats.is_empty() {
            let known: Vec<_> = VideoFormat::ALL.iter().map(|f| f.name()).collect();
            return bad(format!(
                "no video format offered; choose from {}",
                known.join(", ")
            ));
        }
        check_size(self.width, self.height)?;
        if self.framerate.num == 0 || self.framerate.denom == 0 {
            return bad(format!(
                "frame rate {} must be positive (for example 30/1)",
                self.framerate
            ));
        }
        if !(2..=MAX_BUFFERS).contains(&self.buffers) {
            return bad(format!(
                "{} buffers: ask for 2 to {MAX_BUFFERS}",
                self.buffers
            ));
        }
        if !self.stride_align.is_power_of_two() || self.stride_align > 4096 {
            return bad(format!(
                "stride alignment {} must be a power of two up to 4096",
                self.stride_align
            ));
        }
        if let Err(e) = Usage::new(&self.usage) {
            return bad(format!("usage: {e}"));
        }
        let one_block = self.memfd_fallback || self.dmabuf_without_modifier;
        if one_block && self.stride_align != 4 {
            if let Some(format) = self.formats.iter().find(|f| f.plane_count() > 1) {
                return bad(format!(
                    "stride alignment {} cannot be used for {format} while consumers may get \
                     frames as one block (memfd_fallback or dmabuf_without_modifier): they \
                     take the planes after the first from GStreamer's default layout, whose \
                     rows are aligned to 4 bytes; use 4, offer only single-plane formats, or \
                     turn both off",
                    self.stride_align
                ));
            }
        }
        for format in &self.formats {
            crate::alloc::FrameConstraints::for_frame(*format, self.width, self.height, self)?;
            if one_block {
                crate::alloc::FrameConstraints::for_single_block(
                    *format,
                    self.width,
                    self.height,
                    self,
                )?;
            }
        }
        if let Some(heaps) = &self.heaps {
            if heaps.is_empty() {
                return bad(
                    "the explicit heap list is empty; leave it unset for the default order".into(),
                );
            }
            for source in heaps {
                match source {
                    Source::Heap(name) => {
                        inventory.find(name.as_str())?;
                    }
                    Source::Udmabuf if !inventory.has_udmabuf() => {
                        return bad(
                            "udmabuf is listed but /dev/udmabuf does not exist (load the udmabuf module)"
                                .into(),
                        );
                    }
                    Source::Udmabuf => {}
                    Source::Memfd => {
                        return bad(
                            "memfd is not a dma-buf source; consumers that need shared memory get \
                             sealed memfds anyway (memfd_fallback)"
                                .into(),
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// Refuses sizes no consumer could take.
pub(crate) fn check_size(width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 || width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(Error::Config(format!(
            "size {width}x{height}: width and height must be 1 to {MAX_DIMENSION}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_heaps() -> Inventory {
        let dir = std::env::temp_dir().join(format!("pw-dmaheap-cfg-{}", std::process::id()));
        Inventory::discover_with(heapcore::SysPaths {
            dma_heap_dir: dir.join("dma_heap"),
            udmabuf_dev: dir.join("udmabuf"),
            udmabuf_size_limit: dir.join("size_limit_mb"),
            cma_areas_dir: dir.join("cma"),
            meminfo: dir.join("meminfo"),
            dma_heap_params: dir.join("dma_heap_params"),
        })
    }

    #[test]
    fn the_default_configuration_is_valid() {
        ProducerConfig::default().validate(&no_heaps()).unwrap();
    }

    #[test]
    fn impossible_sizes_are_refused_with_the_limit() {
        for (w, h) in [(0, 480), (640, 0), (MAX_DIMENSION + 1, 10)] {
            let err = ProducerConfig::new(w, h)
                .validate(&no_heaps())
                .unwrap_err()
                .to_string();
            assert!(err.contains("1 to 16384"), "{err}");
        }
    }

    #[test]
    fn the_largest_frames_still_fit_in_spa_sizes() {
        // 16384x16384 RGBA is 1 GiB, within the 31-bit sizes SPA_PARAM_Buffers carries.
        ProducerConfig::new(MAX_DIMENSION, MAX_DIMENSION)
            .with_formats(VideoFormat::ALL.to_vec())
            .with_stride_align(4096)
            .with_memfd_fallback(false)
            .validate(&no_heaps())
            .unwrap();
        ProducerConfig::new(MAX_DIMENSION, MAX_DIMENSION)
            .with_formats(VideoFormat::ALL.to_vec())
            .validate(&no_heaps())
            .unwrap();
    }

    #[test]
    fn bad_fields_say_what_to_change() {
        let inv = no_heaps();
        let cases: Vec<(ProducerConfig, &str)> = vec![
            (ProducerConfig::default().with_formats([]), "choose from"),
            (ProducerConfig::default().with_framerate(0, 1), "positive"),
            (ProducerConfig::default().with_buffers(1), "2 to 32"),
            (
                ProducerConfig::default().with_stride_align(3),
                "power of two",
            ),
            (
                ProducerConfig::default().with_usage("Screen Cast"),
                "not a usage name",
            ),
            (ProducerConfig::default().with_node_name(""), "node name"),
            (
                ProducerConfig::default().with_heaps(vec![Source::Memfd]),
                "not a dma-buf source",
            ),
            (
                ProducerConfig::default()
                    .with_formats([VideoFormat::Bgrx, VideoFormat::Nv12])
                    .with_stride_align(64),
                "stride alignment 64 cannot be used for NV12 while consumers may get frames \
                 as one block",
            ),
        ];
        for (cfg, want) in cases {
            let err = cfg.validate(&inv).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
    }

    #[test]
    fn heaps_that_do_not_exist_here_are_named() {
        let cfg = ProducerConfig::default().with_heaps(vec![Source::heap("system").unwrap()]);
        let err = cfg.validate(&no_heaps()).unwrap_err().to_string();
        assert!(err.contains("no DMA-BUF heap named \"system\""), "{err}");
        let err = ProducerConfig::parse_heaps("system,../etc", &no_heaps()).unwrap_err();
        assert!(err.to_string().contains("not a valid heap name"), "{err}");
        assert!(ProducerConfig::parse_heaps(" , ", &no_heaps()).is_err());
        let list = ProducerConfig::parse_heaps("system, linux,cma,udmabuf", &no_heaps()).unwrap();
        assert_eq!(list.len(), 3, "{list:?}");
        assert_eq!(list[1], Source::heap("linux,cma").unwrap());
    }

    #[test]
    fn data_kinds_map_to_spa_bits() {
        assert_eq!(DataKind::MemFd.mask(), 1 << 2);
        assert_eq!(DataKind::DmaBuf.mask(), 1 << 3);
        assert_eq!(DataKind::from_spa(3), Some(DataKind::DmaBuf));
        assert_eq!(DataKind::from_spa(1), None);
    }
}
