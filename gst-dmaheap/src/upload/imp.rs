use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;

use crate::allocator::DmaHeapAllocator;
use crate::bufferpool::{DmaHeapBufferPool, OnExhaustion};
use crate::caps;
use crate::heapchoice::{DmaHeapQos, HeapChoice};
use crate::memory;
use crate::props::{
    self, DEFAULT_HEAP, DEFAULT_ON_EXHAUSTION, DEFAULT_PREWARM, DEFAULT_QOS, DEFAULT_USAGE,
};
use crate::stats::Stats;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "dmaheapupload",
        gst::DebugColorFlags::empty(),
        Some("DMA-BUF heap upload"),
    )
});

const DEFAULT_MIN_BUFFERS: u32 = 0;
const DEFAULT_MAX_BUFFERS: u32 = 0;

const STATS_NAME: &str = "dmaheapupload-stats";

#[derive(Debug, Clone)]
struct Settings {
    heap: String,
    usage: String,
    qos: DmaHeapQos,
    prewarm: u32,
    min_buffers: u32,
    max_buffers: u32,
    on_exhaustion: OnExhaustion,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            heap: DEFAULT_HEAP.into(),
            usage: DEFAULT_USAGE.into(),
            qos: DEFAULT_QOS,
            prewarm: DEFAULT_PREWARM,
            min_buffers: DEFAULT_MIN_BUFFERS,
            max_buffers: DEFAULT_MAX_BUFFERS,
            on_exhaustion: DEFAULT_ON_EXHAUSTION,
        }
    }
}

/// What downstream said in its ALLOCATION answer.
#[derive(Debug, Clone, Default, PartialEq)]
struct Downstream {
    size: u32,
    min: u32,
    params: gst::AllocationParams,
    video_meta: bool,
    alignment: Option<gst_video::VideoAlignment>,
}

/// A heap pool made for one set of caps.
#[derive(Debug, Clone)]
struct PoolSlot {
    pool: DmaHeapBufferPool,
    /// The allocator it was configured with (a new one when the heap choice changes).
    allocator: DmaHeapAllocator,
    caps: gst::Caps,
    downstream: Downstream,
    size: u32,
    min: u32,
    max: u32,
}

impl PoolSlot {
    fn fits(&self, caps: &gst::Caps, allocator: &DmaHeapAllocator, down: &Downstream) -> bool {
        self.caps == *caps && self.allocator == *allocator && self.downstream == *down
    }
}

// One per element, replaced only on state changes: the size of `Started` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Default)]
enum State {
    #[default]
    Stopped,
    Started {
        /// The allocator for the negotiated caps (dma-buf sources only for memory:DMABuf).
        allocator: DmaHeapAllocator,
        in_caps: Option<gst::Caps>,
        in_info: Option<gst_video::VideoInfo>,
        out_dmabuf: bool,
        downstream: Downstream,
        /// The pool offered upstream: upstream configures, activates and writes into it.
        offered: Option<PoolSlot>,
        /// The pool this element copies into, configured and activated here for the caps'
        /// layout (downstream's alignment only where it reads the video meta).
        copies: Option<PoolSlot>,
        told_about_copies: bool,
    },
}

#[derive(Default)]
pub struct DmaHeapUpload {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    stats: Mutex<Arc<Stats>>,
}

impl DmaHeapUpload {
    fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats.lock().unwrap())
    }

    /// Whether memory:DMABuf can be offered downstream for frames of `size` bytes (0: not
    /// known yet) with the current settings: the solver rules sources out by size (udmabuf's
    /// limit, the CMA area), so a fixed frame size is asked about as it is.
    fn dmabuf_possible(&self, size: u64) -> bool {
        let settings = self.settings.lock().unwrap().clone();
        HeapChoice::resolve(&settings.heap, &settings.usage, size)
            .and_then(|c| c.dmabuf_only())
            .is_ok()
    }

    /// A heap pool for `caps`, configured for what downstream needs (not activated: that
    /// allocates, and happens without the state lock).
    fn new_pool(
        &self,
        caps: &gst::Caps,
        allocator: &DmaHeapAllocator,
        downstream: &Downstream,
        for_copies: bool,
    ) -> Result<PoolSlot, gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let info = caps::video_info(caps)
            .map_err(|e| gst::error_msg!(gst::CoreError::Negotiation, ("{e}")))?;
        let size = u32::try_from(info.size())
            .unwrap_or(u32::MAX)
            .max(downstream.size);
        let min = settings.min_buffers.max(downstream.min);
        let mut max = settings.max_buffers;
        if max > 0 && max < min {
            gst::warning!(
                CAT,
                imp = self,
                "max-buffers={max} is below the {min} buffers downstream needs: allowing {min}"
            );
            max = min;
        }
        let pool = DmaHeapBufferPool::new();
        pool.set_owner(&*self.obj());
        pool.set_stats(self.stats());
        pool.set_property("qos", settings.qos);
        pool.set_property("prewarm", settings.prewarm);
        pool.set_property("on-exhaustion", settings.on_exhaustion);
        pool.set_property("buffer-limit", max);
        let mut config = pool.config();
        config.set_params(Some(caps), size, min, max);
        config.set_allocator(
            Some(allocator.upcast_ref::<gst::Allocator>()),
            Some(&downstream.params),
        );
        // Strides can be padded only for a downstream that reads them from the video meta.
        if for_copies && downstream.video_meta {
            config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
            if let Some(align) = &downstream.alignment {
                config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT);
                config.set_video_alignment(align);
            }
        }
        if pool.set_config(config).is_err() {
            // The pool said what it can do instead (more buffers for prewarm, a bigger size):
            // take that.
            let adjusted = pool.config();
            pool.set_config(adjusted).map_err(|_| {
                gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("the heap pool refused a configuration for {caps}")
                )
            })?;
        }
        Stats::bump(&self.stats().pools);
        gst::info!(
            CAT,
            imp = self,
            "new heap pool {} {} for {caps}: {size} byte buffers, {min}..{} of them, from {}",
            pool.name(),
            if for_copies {
                "to copy into"
            } else {
                "offered upstream"
            },
            if max == 0 {
                "unlimited".to_owned()
            } else {
                max.to_string()
            },
            allocator
                .choice()
                .map(|c| c.describe())
                .unwrap_or_else(|e| e.to_string())
        );
        Ok(PoolSlot {
            pool,
            allocator: allocator.clone(),
            caps: caps.clone(),
            downstream: downstream.clone(),
            size,
            min,
            max,
        })
    }

    /// The pool to copy into, activated. Made (and the old one let go) without the state
    /// lock held: activation allocates, and may post errors that a bus handler answers by
    /// calling back into this element.
    fn copy_pool(&self) -> Result<DmaHeapBufferPool, gst::FlowError> {
        let (caps, allocator, downstream) = match &*self.state.lock().unwrap() {
            State::Started {
                in_caps: Some(caps),
                allocator,
                downstream,
                copies,
                ..
            } => {
                if let Some(slot) = copies
                    && slot.fits(caps, allocator, downstream)
                {
                    return Ok(slot.pool.clone());
                }
                (caps.clone(), allocator.clone(), downstream.clone())
            }
            _ => return Err(gst::FlowError::NotNegotiated),
        };
        let slot = self
            .new_pool(&caps, &allocator, &downstream, true)
            .map_err(|e| {
                self.post_error_message(e);
                gst::FlowError::Error
            })?;
        slot.pool.set_active(true).map_err(|_| {
            gst::element_imp_error!(
                self,
                gst::ResourceError::NoSpaceLeft,
                ("could not activate the heap buffer pool"),
                ["pool {}", slot.pool.name()]
            );
            gst::FlowError::Error
        })?;
        let pool = slot.pool.clone();
        let old = match &mut *self.state.lock().unwrap() {
            State::Started { copies, .. } => copies.replace(slot),
            State::Stopped => Some(slot),
        };
        if let Some(old) = old {
            let _ = old.pool.set_active(false);
        }
        Ok(pool)
    }

    /// Whether `buf` can go downstream as it is as far as its layout goes: downstream reads
    /// strides and offsets from the video meta, or the buffer has the caps' default layout
    /// (what a sink that ignores video meta assumes).
    fn layout_fits(buf: &gst::BufferRef, info: &gst_video::VideoInfo, video_meta: bool) -> bool {
        if video_meta {
            return true;
        }
        let n = info.n_planes() as usize;
        buf.size() >= info.size()
            && buf.meta::<gst_video::VideoMeta>().is_none_or(|meta| {
                meta.offset()[..n] == info.offset()[..n] && meta.stride()[..n] == info.stride()[..n]
            })
    }

    /// Whether every memory of `buf` is heap memory from a source `choice` allows (so
    /// `heap=`, the usage's policy and, for memory:DMABuf, dma-buf-only hold for what passes
    /// through, whichever pool or allocator in the process made it).
    fn is_chosen_heap_memory(buf: &gst::BufferRef, choice: &HeapChoice) -> bool {
        buf.n_memory() > 0
            && buf.iter_memories().all(|m| {
                memory::heap_buffer(m)
                    .and_then(|b| b.source())
                    .is_some_and(|source| choice.sources().contains(&source))
            })
    }

    /// Why a buffer was copied, for the log.
    fn copy_reason(buf: &gst::BufferRef, choice: &HeapChoice) -> String {
        let Some(mem) = buf.iter_memories().next() else {
            return "it has no memory".into();
        };
        if let Some(info) = memory::heap_memory_info(mem) {
            if !Self::is_chosen_heap_memory(buf, choice) {
                return format!(
                    "it is {} memory, which {} does not allow",
                    info.origin,
                    choice.describe()
                );
            }
            return "it is heap memory laid out with strides or offsets of its own, which \
                    downstream would not read (it takes no video meta)"
                .into();
        }
        if mem.is_memory_type::<gst_allocators::DmaBufMemory>() {
            return "it is a dma-buf from another exporter".into();
        }
        match mem.allocator() {
            Some(a) => format!("its memory comes from allocator {}", a.name()),
            None => "its memory has no allocator".into(),
        }
    }

    fn copy_frame(
        &self,
        info: &gst_video::VideoInfo,
        inbuf: &gst::Buffer,
        outbuf: gst::Buffer,
    ) -> Result<gst::Buffer, gst::FlowError> {
        let in_frame =
            gst_video::VideoFrame::from_buffer_readable(inbuf.clone(), info).map_err(|_| {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("cannot map an input frame for reading")
                );
                gst::FlowError::Error
            })?;
        let mut out_frame =
            gst_video::VideoFrame::from_buffer_writable(outbuf, info).map_err(|_| {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("cannot map a heap buffer for writing")
                );
                gst::FlowError::Error
            })?;
        in_frame.copy(&mut out_frame).map_err(|_| {
            gst::element_imp_error!(self, gst::StreamError::Failed, ("frame copy failed"));
            gst::FlowError::Error
        })?;
        let mut outbuf = out_frame.into_buffer();
        self.parent_copy_metadata(
            inbuf.as_ref(),
            outbuf.get_mut().expect("a pool buffer has one owner"),
        )
        .map_err(|_| gst::FlowError::Error)?;
        Ok(outbuf)
    }

    /// The plain form of DMA_DRM caps (their LINEAR formats), where GStreamer has DMA_DRM.
    fn plain_form(s: &gst::StructureRef) -> Option<gst::Structure> {
        #[cfg(feature = "v1_28")]
        return caps::from_dma_drm(s);
        #[cfg(not(feature = "v1_28"))]
        {
            let _ = s;
            None
        }
    }

    /// The DMA_DRM form of plain caps, where GStreamer has DMA_DRM.
    fn dma_drm_form(s: &gst::StructureRef) -> Option<gst::Structure> {
        #[cfg(feature = "v1_28")]
        return caps::to_dma_drm(s);
        #[cfg(not(feature = "v1_28"))]
        {
            let _ = s;
            None
        }
    }

    fn post_stats(&self) {
        let stats = self.stats().to_structure(STATS_NAME);
        gst::info!(CAT, imp = self, "{stats}");
        let msg = gst::message::Element::builder(stats)
            .src(&*self.obj())
            .build();
        let _ = self.obj().post_message(msg);
    }
}

#[glib::object_subclass]
impl ObjectSubclass for DmaHeapUpload {
    const NAME: &'static str = "GstDmaHeapUpload";
    type Type = super::DmaHeapUpload;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for DmaHeapUpload {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                props::heap().mutable_ready().build(),
                props::usage().mutable_ready().build(),
                props::qos().mutable_ready().build(),
                props::prewarm().mutable_ready().build(),
                glib::ParamSpecUInt::builder("min-buffers")
                    .nick("Minimum buffers")
                    .blurb("Buffers the pool keeps at least (downstream may ask for more)")
                    .default_value(DEFAULT_MIN_BUFFERS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-buffers")
                    .nick("Maximum buffers")
                    .blurb("The most buffers the pool holds (0: no limit)")
                    .default_value(DEFAULT_MAX_BUFFERS)
                    .mutable_ready()
                    .build(),
                props::on_exhaustion().mutable_ready().build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "passthrough and copies, pool hits and misses, prewarmed and trimmed \
                         buffers, heap memory held (heap-used bytes, heap-origins)",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "heap" => {
                let heap: Option<String> = value.get().expect("type checked upstream");
                settings.heap = heap.unwrap_or_default();
                if let Err(e) = HeapChoice::resolve(&settings.heap, &settings.usage, 0) {
                    // Said again as an element error when the element starts.
                    gst::warning!(CAT, imp = self, "{e}");
                }
            }
            "usage" => {
                settings.usage = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_else(|| DEFAULT_USAGE.into());
                if let Err(e) = HeapChoice::resolve(&settings.heap, &settings.usage, 0) {
                    // Said again as an element error when the element starts.
                    gst::warning!(CAT, imp = self, "{e}");
                }
            }
            "qos" => settings.qos = value.get().expect("type checked upstream"),
            "prewarm" => settings.prewarm = value.get().expect("type checked upstream"),
            "min-buffers" => settings.min_buffers = value.get().expect("type checked upstream"),
            "max-buffers" => settings.max_buffers = value.get().expect("type checked upstream"),
            "on-exhaustion" => settings.on_exhaustion = value.get().expect("type checked upstream"),
            _ => unimplemented!(),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        if pspec.name() == "stats" {
            return self.stats().to_structure(STATS_NAME).to_value();
        }
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "heap" => settings.heap.to_value(),
            "usage" => settings.usage.to_value(),
            "qos" => settings.qos.to_value(),
            "prewarm" => settings.prewarm.to_value(),
            "min-buffers" => settings.min_buffers.to_value(),
            "max-buffers" => settings.max_buffers.to_value(),
            "on-exhaustion" => settings.on_exhaustion.to_value(),
            _ => unimplemented!(),
        }
    }
}

impl GstObjectImpl for DmaHeapUpload {}

impl ElementImpl for DmaHeapUpload {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "DMA-BUF heap upload",
                "Filter/Video",
                "Offers a DMA-BUF heap buffer pool upstream, passes heap buffers through and \
                 copies other buffers into heap buffers",
                "dmaheap developers",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let mut caps = gst_video::VideoCapsBuilder::new()
                .features([gst_allocators::CAPS_FEATURE_MEMORY_DMABUF])
                .build();
            caps.merge(gst_video::VideoCapsBuilder::new().build());
            // GStreamer 1.24+: dma-buf memory as format=DMA_DRM (LINEAR drm-formats only).
            #[cfg(feature = "v1_28")]
            caps.merge(
                gst_video::VideoCapsBuilder::new()
                    .features([gst_allocators::CAPS_FEATURE_MEMORY_DMABUF])
                    .format(gst_video::VideoFormat::DmaDrm)
                    .build(),
            );
            vec![
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps,
                )
                .expect("valid sink template"),
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps,
                )
                .expect("valid src template"),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for DmaHeapUpload {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::NeverInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let choice = HeapChoice::resolve(&settings.heap, &settings.usage, 0)
            .map_err(|e| gst::error_msg!(gst::ResourceError::Settings, ("{}", e)))?;
        for skipped in choice.skipped() {
            if choice.is_explicit() {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Settings,
                    ("skipping heap list entry {}", skipped)
                );
            } else {
                gst::debug!(CAT, imp = self, "the policy's {skipped}");
            }
        }
        let choice = Arc::new(choice);
        gst::info!(CAT, imp = self, "allocating from {}", choice.describe());
        *self.stats.lock().unwrap() = Arc::new(Stats::default());
        *self.state.lock().unwrap() = State::Started {
            allocator: DmaHeapAllocator::with_choice(choice),
            in_caps: None,
            in_info: None,
            out_dmabuf: false,
            downstream: Downstream::default(),
            offered: None,
            copies: None,
            told_about_copies: false,
        };
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let old = std::mem::take(&mut *self.state.lock().unwrap());
        if let State::Started {
            offered, copies, ..
        } = old
        {
            for slot in [offered, copies].into_iter().flatten() {
                let _ = slot.pool.set_active(false);
            }
        }
        gst::info!(
            CAT,
            imp = self,
            "stopped: {}",
            self.stats().to_structure(STATS_NAME)
        );
        Ok(())
    }

    fn transform_caps(
        &self,
        direction: gst::PadDirection,
        caps: &gst::Caps,
        filter: Option<&gst::Caps>,
    ) -> Option<gst::Caps> {
        let other = match direction {
            gst::PadDirection::Sink => self.obj().static_pad("src"),
            _ => self.obj().static_pad("sink"),
        }?;
        if caps.is_any() {
            let templ = other.pad_template_caps();
            return Some(match filter {
                Some(f) => f.intersect_with_mode(&templ, gst::CapsIntersectMode::First),
                None => templ,
            });
        }
        let dmabuf_features = gst::CapsFeatures::new([gst_allocators::CAPS_FEATURE_MEMORY_DMABUF]);
        // Size-less answers are shared by every structure whose frame size is not fixed.
        let mut unsized_dmabuf = None;
        let mut out = gst::Caps::new_empty();
        for s in caps.iter() {
            // The plain form of what this side says; DMA_DRM caps keep their LINEAR formats
            // (heap buffers are LINEAR), and none when they have none.
            let plain = if caps::is_dma_drm(s) {
                match Self::plain_form(s) {
                    Some(plain) => plain,
                    None => continue,
                }
            } else {
                s.to_owned()
            };
            let dmabuf = match caps::frame_size(&plain) {
                Some(size) => self.dmabuf_possible(size),
                None => *unsized_dmabuf.get_or_insert_with(|| self.dmabuf_possible(0)),
            };
            let with_dmabuf = (plain.clone(), Some(dmabuf_features.clone()));
            // GStreamer 1.24+: dma-buf memory as format=DMA_DRM, drm-format=FOURCC.
            let dma_drm = Self::dma_drm_form(&plain).map(|d| (d, Some(dmabuf_features.clone())));
            let plain = (plain, None);
            // Downstream is offered dma-buf memory first (when a heap can give it for this
            // frame size), as DMA_DRM before the older form; upstream may send any of them.
            let order = match direction {
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
        gst::trace!(CAT, imp = self, "{direction:?} {caps} -> {out}");
        Some(match filter {
            Some(f) => f.intersect_with_mode(&out, gst::CapsIntersectMode::First),
            None => out,
        })
    }

    fn set_caps(&self, incaps: &gst::Caps, outcaps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let info = caps::video_info(incaps).map_err(|e| gst::loggable_error!(CAT, "{e}"))?;
        let out_dmabuf = outcaps
            .features(0)
            .is_some_and(|f| f.contains(gst_allocators::CAPS_FEATURE_MEMORY_DMABUF));
        // The choice again, now that the frame size is known (the solver checks sizes
        // against CMA and udmabuf), without memfd when downstream takes dma-bufs only.
        let settings = self.settings.lock().unwrap().clone();
        let wanted = HeapChoice::resolve(&settings.heap, &settings.usage, info.size() as u64)
            .and_then(|c| if out_dmabuf { c.dmabuf_only() } else { Ok(c) });
        let wanted = match wanted {
            Ok(c) => c,
            Err(e) => {
                gst::element_imp_error!(self, gst::CoreError::Negotiation, ("{}", e));
                return Err(gst::loggable_error!(CAT, "{e}"));
            }
        };
        let mut state = self.state.lock().unwrap();
        let State::Started {
            allocator,
            in_caps,
            in_info,
            out_dmabuf: state_out_dmabuf,
            ..
        } = &mut *state
        else {
            return Err(gst::loggable_error!(CAT, "caps before start"));
        };
        let same = allocator
            .choice()
            .is_ok_and(|c| c.sources() == wanted.sources());
        if !same {
            gst::debug!(CAT, imp = self, "allocating from {}", wanted.describe());
            *allocator = DmaHeapAllocator::with_choice(Arc::new(wanted));
        }
        *in_caps = Some(incaps.clone());
        *in_info = Some(info);
        *state_out_dmabuf = out_dmabuf;
        gst::debug!(
            CAT,
            imp = self,
            "in {incaps}, out {outcaps}: {} memory downstream",
            if out_dmabuf { "dma-buf" } else { "any heap" }
        );
        Ok(())
    }

    fn decide_allocation(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        let mut down = Downstream {
            video_meta: query
                .find_allocation_meta::<gst_video::VideoMeta>()
                .is_some(),
            ..Downstream::default()
        };
        if let Some((pool, size, min, _max)) = query.allocation_pools().next() {
            down.size = size;
            down.min = min;
            if let Some(pool) = pool {
                let config = pool.config();
                if config.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT) {
                    down.alignment = config.video_alignment();
                }
            }
        }
        // Every proposed parameter set must hold for our buffers: take the largest of each.
        let (mut align, mut prefix, mut padding) = (0, 0, 0);
        for (_allocator, params) in query.allocation_params() {
            align |= params.align();
            prefix = prefix.max(params.prefix());
            padding = padding.max(params.padding());
        }
        down.params = gst::AllocationParams::new(gst::MemoryFlags::empty(), align, prefix, padding);
        // Downstream's own pool is not used: buffers come from the heap pools, which this
        // element (not GstBaseTransform) activates and deactivates.
        while query.allocation_pools().len() > 0 {
            query.remove_nth_allocation_pool(0);
        }
        gst::debug!(CAT, imp = self, "downstream needs {down:?}");
        match &mut *self.state.lock().unwrap() {
            State::Started { downstream, .. } => {
                // The copy pool follows on the next copy; the offered one stays with upstream.
                *downstream = down;
                Ok(())
            }
            State::Stopped => Err(gst::loggable_error!(CAT, "allocation before start")),
        }
    }

    fn propose_allocation(
        &self,
        decide_query: Option<&gst::query::Allocation>,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        // With a decide query the parent copies downstream's metas (nothing else); without one
        // it would forward the query downstream and return downstream's pool.
        if decide_query.is_some() {
            self.parent_propose_allocation(decide_query, query)?;
        }
        // Buffers of our pool go downstream untouched, so upstream may write strides and
        // offsets of its own (a decoder's padding) only if downstream reads them from the
        // video meta. Until downstream has answered, it is not offered.
        let downstream_reads_video_meta = decide_query
            .is_some_and(|q| q.find_allocation_meta::<gst_video::VideoMeta>().is_some());
        if downstream_reads_video_meta
            && query
                .find_allocation_meta::<gst_video::VideoMeta>()
                .is_none()
        {
            query.add_allocation_meta::<gst_video::VideoMeta>(None);
        }
        let Some(caps) = query.get_owned().0 else {
            return Err(gst::loggable_error!(CAT, "allocation query without caps"));
        };

        // The same pool again for the same caps (upstream may be using it); a new one,
        // configured without the state lock, otherwise.
        let (allocator, downstream) = match &*self.state.lock().unwrap() {
            State::Started {
                offered: Some(slot),
                allocator,
                ..
            } if slot.caps == caps && slot.allocator == *allocator => {
                query.add_allocation_param(Some(allocator), slot.downstream.params);
                query.add_allocation_pool(Some(&slot.pool), slot.size, slot.min, slot.max);
                return Ok(());
            }
            State::Started {
                allocator,
                downstream,
                ..
            } => (allocator.clone(), downstream.clone()),
            State::Stopped => return Err(gst::loggable_error!(CAT, "not started")),
        };
        let slot = self
            .new_pool(&caps, &allocator, &downstream, false)
            .map_err(|e| {
                let msg = format!("{e:?}");
                self.post_error_message(e);
                gst::loggable_error!(CAT, "{msg}")
            })?;
        query.add_allocation_param(Some(&allocator), downstream.params);
        query.add_allocation_pool(Some(&slot.pool), slot.size, slot.min, slot.max);
        gst::debug!(
            CAT,
            imp = self,
            "offering {} upstream: {} byte buffers, {}..{} of them",
            slot.pool.name(),
            slot.size,
            slot.min,
            slot.max
        );
        let old = match &mut *self.state.lock().unwrap() {
            State::Started { offered, .. } => offered.replace(slot),
            State::Stopped => Some(slot),
        };
        if let Some(old) = old {
            let _ = old.pool.set_active(false);
        }
        Ok(())
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::FlushStart(_) | gst::EventView::FlushStop(_) => {
                let flushing = matches!(event.view(), gst::EventView::FlushStart(_));
                let pool = match &*self.state.lock().unwrap() {
                    State::Started {
                        copies: Some(slot), ..
                    } => Some(slot.pool.clone()),
                    _ => None,
                };
                // Unblocks a copy waiting for a free buffer.
                if let Some(pool) = pool {
                    pool.set_flushing(flushing);
                }
            }
            gst::EventView::Eos(_) => self.post_stats(),
            _ => {}
        }
        self.parent_sink_event(event)
    }

    fn transform_meta<'a>(
        &self,
        _outbuf: &mut gst::BufferRef,
        meta: gst::MetaRef<'a, gst::Meta>,
        _inbuf: &'a gst::BufferRef,
    ) -> bool {
        // The frame is copied pixel for pixel: every meta that does not describe the memory
        // (crop, regions of interest, timecodes, ...) still holds.
        !meta.has_tag::<gst::meta::tags::Memory>()
            && !meta.has_tag::<gst::meta::tags::MemoryReference>()
    }

    fn generate_output(
        &self,
    ) -> Result<gst_base::subclass::base_transform::GenerateOutputSuccess, gst::FlowError> {
        let Some(inbuf) = self.take_queued_buffer() else {
            return Ok(gst_base::subclass::base_transform::GenerateOutputSuccess::NoOutput);
        };
        let (choice, info, video_meta) = match &*self.state.lock().unwrap() {
            State::Started {
                allocator,
                in_info: Some(info),
                downstream,
                ..
            } => (
                allocator.choice().map_err(|e| {
                    gst::element_imp_error!(self, gst::ResourceError::Settings, ("{}", e));
                    gst::FlowError::Error
                })?,
                info.clone(),
                downstream.video_meta,
            ),
            _ => return Err(gst::FlowError::NotNegotiated),
        };
        let stats = self.stats();
        if Self::is_chosen_heap_memory(&inbuf, &choice)
            && Self::layout_fits(&inbuf, &info, video_meta)
        {
            let n = stats.passthrough.fetch_add(1, Ordering::Relaxed) + 1;
            gst::log!(
                CAT,
                imp = self,
                "passthrough #{n}: {inbuf:?} is heap memory"
            );
            return Ok(gst_base::subclass::base_transform::GenerateOutputSuccess::Buffer(inbuf));
        }

        let pool = self.copy_pool()?;
        let outbuf = pool.acquire_buffer(None)?;
        let outbuf = self.copy_frame(&info, &inbuf, outbuf)?;
        let n = stats.copies.fetch_add(1, Ordering::Relaxed) + 1;
        let first = match &mut *self.state.lock().unwrap() {
            State::Started {
                told_about_copies, ..
            } => !std::mem::replace(told_about_copies, true),
            State::Stopped => false,
        };
        if first {
            gst::info!(
                CAT,
                imp = self,
                "copying into heap buffers: {}",
                Self::copy_reason(&inbuf, &choice)
            );
        }
        gst::debug!(CAT, imp = self, "copy #{n} into {outbuf:?}");
        Ok(gst_base::subclass::base_transform::GenerateOutputSuccess::Buffer(outbuf))
    }
}
