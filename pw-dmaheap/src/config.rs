//! The producer's configuration: what it offers PipeWire and where its buffers may come from.

use heapcore::format::VideoFormat;
use heapcore::{Inventory, Policy, Source, Usage};

use crate::constraints::{FrameConstraints, FrameRules, check_size};
use crate::error::{ConfigError, Result};
use crate::video::{Framerate, MAX_BUFFERS};

/// The usage a producer allocates for unless told otherwise.
pub const DEFAULT_USAGE: &str = Usage::SCREENCAST;

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
    /// The frame width offered (`resize` changes it).
    pub width: u32,
    /// The frame height offered.
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

    /// Sets `node.name`.
    pub fn with_node_name(mut self, name: impl Into<String>) -> Self {
        self.node_name = name.into();
        self
    }

    /// Sets `node.description`.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Sets the formats offered, preferred first.
    pub fn with_formats(mut self, formats: impl Into<Vec<VideoFormat>>) -> Self {
        self.formats = formats.into();
        self
    }

    /// Sets the frame size offered.
    pub fn with_size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }

    /// Sets the highest frame rate offered.
    pub fn with_framerate(mut self, num: u32, denom: u32) -> Self {
        self.framerate = Framerate::new(num, denom);
        self
    }

    /// Sets the buffer count asked for.
    pub fn with_buffers(mut self, buffers: u32) -> Self {
        self.buffers = buffers;
        self
    }

    /// Sets the row stride alignment (a power of two).
    pub fn with_stride_align(mut self, align: u32) -> Self {
        self.stride_align = align;
        self
    }

    /// Asks for physically contiguous memory (CMA heaps only).
    pub fn with_contiguous(mut self, contiguous: bool) -> Self {
        self.contiguous = contiguous;
        self
    }

    /// Sets the usage heaps are chosen for.
    pub fn with_usage(mut self, usage: impl Into<String>) -> Self {
        self.usage = usage.into();
        self
    }

    /// Replaces the policy's heap order with an explicit list.
    pub fn with_heaps(mut self, heaps: Vec<Source>) -> Self {
        self.heaps = Some(heaps);
        self
    }

    /// Replaces the usage → heaps policy.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Offers (or not) sealed memfds to consumers that cannot take dma-bufs.
    pub fn with_memfd_fallback(mut self, allow: bool) -> Self {
        self.memfd_fallback = allow;
        self
    }

    /// Gives (or not) dma-bufs to consumers that negotiate no modifier but list DmaBuf.
    pub fn with_dmabuf_without_modifier(mut self, allow: bool) -> Self {
        self.dmabuf_without_modifier = allow;
        self
    }

    /// Parses a source list (`system,cma,udmabuf`; commas or spaces, `linux,cma` stays one
    /// name) with heapcore's one list parser; names are validated.
    pub fn parse_heaps(list: &str, inventory: &Inventory) -> Result<Vec<Source>> {
        let sources = Source::parse_list(list, inventory)?;
        if sources.is_empty() {
            return Err(ConfigError::NoHeapNamed(list.to_owned()).into());
        }
        Ok(sources)
    }

    /// What this configuration asks of every frame's buffers (alignment, contiguity, usage),
    /// for [`FrameConstraints`].
    pub fn frame_rules(&self) -> FrameRules<'_> {
        FrameRules {
            stride_align: self.stride_align,
            contiguous: self.contiguous,
            usage: &self.usage,
        }
    }

    /// Checks everything that can be checked before PipeWire is involved, against this
    /// machine's `inventory` (explicit heaps must exist here).
    pub fn validate(&self, inventory: &Inventory) -> Result<()> {
        let bad = |e: ConfigError| Err(e.into());
        if self.node_name.is_empty() || self.node_name.chars().any(char::is_control) {
            return bad(ConfigError::NodeName(self.node_name.clone()));
        }
        if self.formats.is_empty() {
            return bad(ConfigError::NoFormats);
        }
        check_size(self.width, self.height)?;
        if self.framerate.num == 0 || self.framerate.denom == 0 {
            return bad(ConfigError::Framerate(self.framerate));
        }
        if !(2..=MAX_BUFFERS).contains(&self.buffers) {
            return bad(ConfigError::Buffers(self.buffers));
        }
        if !self.stride_align.is_power_of_two() || self.stride_align > 4096 {
            return bad(ConfigError::StrideAlign(self.stride_align));
        }
        if let Err(e) = Usage::new(&self.usage) {
            return bad(ConfigError::Usage(e));
        }
        let one_block = self.memfd_fallback || self.dmabuf_without_modifier;
        if one_block && self.stride_align != 4 {
            if let Some(format) = self.formats.iter().find(|f| f.plane_count() > 1) {
                return bad(ConfigError::OneBlockStrideAlign {
                    align: self.stride_align,
                    format: *format,
                });
            }
        }
        for format in &self.formats {
            FrameConstraints::for_frame(*format, self.width, self.height, self.frame_rules())?;
            if one_block {
                FrameConstraints::for_single_block(
                    *format,
                    self.width,
                    self.height,
                    self.frame_rules(),
                )?;
            }
        }
        if let Some(heaps) = &self.heaps {
            if heaps.is_empty() {
                return bad(ConfigError::EmptyHeapList);
            }
            for source in heaps {
                match source {
                    Source::Heap(name) => {
                        inventory.find(name.as_str())?;
                    }
                    Source::Udmabuf if !inventory.has_udmabuf() => {
                        return bad(ConfigError::NoUdmabuf);
                    }
                    Source::Udmabuf => {}
                    Source::Memfd => return bad(ConfigError::MemfdListed),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::MAX_DIMENSION;

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
}
