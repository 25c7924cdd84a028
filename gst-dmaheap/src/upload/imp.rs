use std::sync::{Arc, LazyLock, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;

use super::devices::{self, Devices};
use super::foreign;
use super::state::{DEFAULT_MAX_BUFFERS, DEFAULT_MIN_BUFFERS, Downstream, Settings, State};
use crate::allocator::DmaHeapAllocator;
use crate::caps;
use crate::heapchoice::HeapChoice;
use crate::props::{self, DEFAULT_USAGE};
use crate::stats::Stats;

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "dmaheapupload",
        gst::DebugColorFlags::empty(),
        Some("DMA-BUF heap upload"),
    )
});

const STATS_NAME: &str = "dmaheapupload-stats";

#[derive(Default)]
pub struct DmaHeapUpload {
    pub(super) settings: Mutex<Settings>,
    pub(super) state: Mutex<State>,
    stats: Mutex<Arc<Stats>>,
    /// The devices the buffers pass through (from `devices` or the neighbours), found at
    /// start, and what heapcore knows each accepts.
    devices: Mutex<Arc<Devices>>,
    /// What was found of the foreign dma-bufs seen since the caps were set.
    pub(super) foreign: foreign::Verdicts,
}

impl DmaHeapUpload {
    pub(super) fn devices(&self) -> Arc<Devices> {
        Arc::clone(&self.devices.lock().unwrap())
    }

    pub(super) fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats.lock().unwrap())
    }

    /// Where buffers of `size` bytes (0: not known yet) come from with the current settings
    /// and the devices found at start. Devices narrow the choice; if they leave nothing (no
    /// heap here suits them all), the choice is made without them and the reason logged:
    /// the pipeline then fails or copies where it did before devices were looked at.
    pub(super) fn choice(&self, size: u64) -> Result<HeapChoice, crate::Error> {
        let settings = self.settings.lock().unwrap().clone();
        let devices = Arc::clone(&self.devices.lock().unwrap());
        if devices.reports.is_empty() {
            return HeapChoice::resolve(&settings.heap, &settings.usage, size);
        }
        HeapChoice::resolve_for(&settings.heap, &settings.usage, size, &devices.reports).or_else(
            |e| {
                gst::warning!(
                    CAT,
                    imp = self,
                    "no source suits every device ({e}); choosing without them"
                );
                HeapChoice::resolve(&settings.heap, &settings.usage, size)
            },
        )
    }

    /// Whether memory:DMABuf can be offered downstream for frames of `size` bytes (0: not
    /// known yet) with the current settings: the solver rules sources out by size (udmabuf's
    /// limit, the CMA area), so a fixed frame size is asked about as it is.
    pub(super) fn dmabuf_possible(&self, size: u64) -> bool {
        self.choice(size).and_then(|c| c.dmabuf_only()).is_ok()
    }

    /// The statistics, with the devices the heap choice follows.
    fn stats_structure(&self) -> gst::Structure {
        let mut stats = self.stats().to_structure(STATS_NAME);
        let devices = Arc::clone(&self.devices.lock().unwrap());
        let found: Vec<String> = devices.found.iter().map(ToString::to_string).collect();
        stats.set("devices", found.join("; "));
        stats
    }

    /// Finds the devices the buffers pass through and asks heapcore what each accepts (a
    /// probe runs once per device and kernel; later starts read the cache).
    fn find_devices(&self, property: &str) {
        let found = devices::find(self.obj().upcast_ref(), property);
        let (reports, problems) = devices::device_reports(&found);
        for problem in problems {
            if property.is_empty() {
                gst::info!(CAT, imp = self, "not choosing heaps for {problem}");
            } else {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Settings,
                    ("devices: {}", problem)
                );
            }
        }
        for report in &reports {
            gst::info!(CAT, imp = self, "choosing heaps for {report}");
        }
        let upstream_v4l2 = devices::upstream_v4l2(self.obj().upcast_ref());
        *self.devices.lock().unwrap() = Arc::new(Devices {
            found,
            reports,
            upstream_v4l2,
        });
    }

    fn post_stats(&self) {
        let stats = self.stats_structure();
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
                glib::ParamSpecString::builder("devices")
                    .nick("Devices")
                    .blurb(
                        "Device nodes the buffers pass through, separated by commas or spaces \
                         (/dev/video0, /dev/dri/card0): heaps a device cannot import are not \
                         used. Empty: learned from the neighbours (an upstream V4L2 element's \
                         device, kmssink downstream)",
                    )
                    .mutable_ready()
                    .build(),
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
                        "passthrough (heap buffers; foreign-passthrough: other exporters' \
                         dma-bufs that meet the devices' and downstream's needs), copies and \
                         the last copy's reason, pool hits and misses, prewarmed and trimmed \
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
            "devices" => {
                settings.devices = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .unwrap_or_default();
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
            return self.stats_structure().to_value();
        }
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "heap" => settings.heap.to_value(),
            "devices" => settings.devices.to_value(),
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
        let devices = self.settings.lock().unwrap().devices.clone();
        self.find_devices(&devices);
        let choice = self
            .choice(0)
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
        self.foreign.clear();
        *self.state.lock().unwrap() = State::Started {
            allocator: DmaHeapAllocator::with_choice(choice),
            in_caps: None,
            in_info: None,
            out_dmabuf: false,
            downstream: Downstream::default(),
            offered: None,
            copies: None,
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
        gst::info!(CAT, imp = self, "stopped: {}", self.stats_structure());
        *self.devices.lock().unwrap() = Arc::default();
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
        // Size-less answers are shared by every structure whose frame size is not fixed.
        let mut unsized_dmabuf = None;
        let out = caps::transform(caps, direction, |size| match size {
            Some(size) => self.dmabuf_possible(size),
            None => *unsized_dmabuf.get_or_insert_with(|| self.dmabuf_possible(0)),
        });
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
        let wanted = self
            .choice(info.size() as u64)
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
        self.foreign.clear();
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
        self.take_downstreams_answer(query)
    }

    fn propose_allocation(
        &self,
        decide_query: Option<&gst::query::Allocation>,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        self.offer_pool(decide_query, query)
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
        self.pass_or_copy()
    }
}
