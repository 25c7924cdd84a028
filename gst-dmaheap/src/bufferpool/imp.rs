use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_video::prelude::*;

use super::fences::{self, BusyBuffers};
use super::hot::HotBuffers;
use super::vfuncs::{self, PerBuffer};
use crate::allocator::DmaHeapAllocator;
use crate::counter::ThreadCounter;
use crate::error::Error;
use crate::heapchoice::DmaHeapQos;
use crate::memory;
use crate::props::{self, DEFAULT_ON_EXHAUSTION, DEFAULT_PREWARM, DEFAULT_QOS, OnExhaustion};
use crate::stats::Stats;

pub(super) static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "dmaheappool",
        gst::DebugColorFlags::empty(),
        Some("DMA-BUF heap video buffer pool"),
    )
});

const DEFAULT_BUFFER_LIMIT: u32 = 0;
const DEFAULT_HOLD_BUSY: bool = true;

#[derive(Debug, Clone, Copy)]
struct Settings {
    qos: DmaHeapQos,
    prewarm: u32,
    on_exhaustion: OnExhaustion,
    buffer_limit: u32,
    hold_busy: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            qos: DEFAULT_QOS,
            prewarm: DEFAULT_PREWARM,
            on_exhaustion: DEFAULT_ON_EXHAUSTION,
            buffer_limit: DEFAULT_BUFFER_LIMIT,
            hold_busy: DEFAULT_HOLD_BUSY,
        }
    }
}

/// What the last accepted configuration says.
#[derive(Debug, Clone)]
struct Config {
    info: gst_video::VideoInfo,
    /// The alignment applied to `info` (set on each buffer's video meta, as
    /// GstVideoBufferPool does), when the configuration asked for one.
    alignment: Option<gst_video::VideoAlignment>,
    size: usize,
    min: u32,
    max: u32,
    allocator: DmaHeapAllocator,
    params: gst::AllocationParams,
    add_video_meta: bool,
}

#[derive(Default)]
pub struct DmaHeapBufferPool {
    settings: Mutex<Settings>,
    config: Mutex<Option<Config>>,
    stats: Mutex<Arc<Stats>>,
    owner: Mutex<glib::WeakRef<gst::Element>>,
    /// The default allocator, made when a config names none (or a foreign one).
    default_allocator: Mutex<Option<DmaHeapAllocator>>,
    /// True while `start` preallocates: those allocations are prewarm, not misses.
    starting: AtomicBool,
    /// Buffers allocated and not yet freed.
    alive: AtomicI64,
    /// Buffers acquired (shared with the statistics, which count hits from it) and released:
    /// the difference is the buffers out. Counted per thread: no locked instruction per buffer.
    acquired: Arc<ThreadCounter>,
    released: ThreadCounter,
    /// Whether this pool has allocated a dma-buf: only those carry fences, so until then
    /// (memfd memory) release asks no fence and makes no system call.
    dmabufs: AtomicBool,
    /// The heapcore pool buffers come from while active: counted against the process's global
    /// budget, told the memory pressure, listed by `dmaheap stats`.
    heap_pool: Mutex<Option<heapcore::Pool>>,
    /// Released buffers a device still uses, held out of the free queue until their fences
    /// signal.
    busy: BusyBuffers<super::DmaHeapBufferPool>,
    /// What acquire and release read of the settings on every buffer (`qos`, `on-exhaustion`),
    /// kept beside them by `set_property` so the hot path takes no lock. `hot_qos` is the
    /// class + 1, 0 while never set (the default).
    hot_qos: AtomicU8,
    hot_error_on_exhaustion: AtomicBool,
    /// `hold-busy=false`, kept for release the same way (false, the default, holds back).
    hot_skip_busy_check: AtomicBool,
    /// The process's pool registry, looked up once (its lookup asks the kernel for the pid).
    registry: OnceLock<heapcore::PoolRegistry>,
    /// The buffers released last, handed out first (see `hot.rs`).
    hot: HotBuffers,
    /// The configured buffer size, which GstBufferPool's release checks: kept for `reusable`.
    hot_size: AtomicUsize,
}

impl DmaHeapBufferPool {
    pub(super) fn set_owner(&self, element: &gst::Element) {
        *self.owner.lock().unwrap() = element.downgrade();
    }

    pub(super) fn set_stats(&self, stats: Arc<Stats>) {
        stats.count_acquires(&self.acquired);
        *self.stats.lock().unwrap() = stats;
    }

    fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats.lock().unwrap())
    }

    /// The `qos` setting, read without the settings lock.
    fn hot_qos(&self) -> DmaHeapQos {
        match self.hot_qos.load(Ordering::Relaxed).checked_sub(1) {
            None => DEFAULT_QOS,
            Some(v) if v == DmaHeapQos::Realtime as u8 => DmaHeapQos::Realtime,
            Some(v) if v == DmaHeapQos::Background as u8 => DmaHeapQos::Background,
            Some(_) => DmaHeapQos::Normal,
        }
    }

    /// Says `err` on the owning element's bus (the element that upstream's error would
    /// otherwise only call "internal data stream error").
    fn post_error(&self, err: &Error, kind: gst::ResourceError) {
        let owner = self.owner.lock().unwrap().upgrade();
        if let Some(element) = owner {
            element.post_error_message(gst::error_msg!(
                kind,
                ("{}", err),
                ["buffer pool {}", self.obj().name()]
            ));
        }
    }

    fn buffer_name(&self) -> String {
        let owner = self.owner.lock().unwrap().upgrade();
        match owner {
            Some(element) => format!("gst:{}", element.name()),
            None => format!("gst:{}", self.obj().name()),
        }
    }

    /// Puts a buffer whose fences have signalled in the free queue.
    pub(super) fn release_idle(&self, buffer: gst::Buffer) {
        self.parent_release_buffer(buffer);
    }

    /// The process's memory pressure, as its pool registry was last told.
    #[inline(always)]
    fn pressure(&self) -> heapcore::PressureLevel {
        self.registry
            .get_or_init(crate::heapchoice::registry)
            .pressure()
    }

    /// Whether a pool of class `qos` gives idle buffers back as they return: background pools
    /// always, normal pools under critical memory pressure, realtime pools never.
    #[inline(always)]
    fn is_lean(&self, qos: DmaHeapQos) -> bool {
        match qos {
            DmaHeapQos::Background => true,
            DmaHeapQos::Normal => self.pressure() == heapcore::PressureLevel::Critical,
            DmaHeapQos::Realtime => false,
        }
    }

    /// Tags a returning `buffer` of a lean pool to be freed when the pool holds more idle
    /// buffers than it keeps.
    #[inline(never)]
    fn trim(&self, qos: DmaHeapQos, buffer: &mut gst::Buffer) {
        let outstanding = self.acquired.sum() as i64 - self.released.sum() as i64;
        let min = self.config.lock().unwrap().as_ref().map_or(0, |c| c.min);
        // A normal pool keeps at least the one buffer a stream takes for its next frame
        // (heapcore's rule): freeing it would only make the pool allocate again at once,
        // churning the memory pressure asks it to save.
        let keep = match qos {
            DmaHeapQos::Normal => min.max(1),
            _ => min,
        };
        // Idle buffers once this one is back.
        let idle = self.alive.load(Ordering::SeqCst) - outstanding;
        if idle > i64::from(keep) {
            // GstBufferPool frees a returning buffer whose memory is tagged.
            buffer.make_mut().set_flags(gst::BufferFlags::TAG_MEMORY);
            Stats::bump(&self.stats().trimmed);
            gst::log!(
                CAT,
                imp = self,
                "{qos:?} pool ({:?} memory pressure): freeing an idle buffer",
                self.pressure()
            );
        }
    }

    /// Whether `buffer` goes to the free queue now (true) or was held back because a device
    /// still uses it.
    fn hold_if_busy(&self, buffer: gst::Buffer) -> Option<gst::Buffer> {
        let fence = match fences::busy_fence(&buffer) {
            Ok(Some(fence)) => fence,
            Ok(None) => return Some(buffer),
            Err(e) => {
                gst::warning!(CAT, imp = self, "{e}: reusing the buffer without waiting");
                return Some(buffer);
            }
        };
        let to = || fences::Pool {
            pool: self.obj().downgrade(),
            release: |pool: &super::DmaHeapBufferPool, buffer| pool.imp().release_idle(buffer),
            cat: *CAT,
        };
        match self.busy.park(buffer, fence, to) {
            Ok(()) => {
                Stats::bump(&self.stats().held_busy);
                gst::log!(
                    CAT,
                    imp = self,
                    "a device still uses a returned buffer: held back until its fence \
                     signals ({} held)",
                    self.busy.len()
                );
                None
            }
            Err((e, buffer)) => {
                gst::warning!(
                    CAT,
                    imp = self,
                    "cannot wait for fences ({e}): reusing a buffer a device still uses"
                );
                Some(buffer)
            }
        }
    }

    fn default_allocator(&self) -> DmaHeapAllocator {
        self.default_allocator
            .lock()
            .unwrap()
            .get_or_insert_with(DmaHeapAllocator::new)
            .clone()
    }

    /// Reads `config`, adjusting it where this pool cannot do what it asks; the second value
    /// says whether anything was adjusted (then `set_config` returns FALSE, as GstBufferPool's
    /// contract says, and the caller validates the adjusted configuration).
    fn configure(&self, config: &mut gst::BufferPoolConfigRef) -> Result<(Config, bool), String> {
        let (caps, size, min, max) = config
            .params()
            .ok_or_else(|| "the configuration has no parameters".to_owned())?;
        let caps = caps.ok_or_else(|| "the configuration has no caps".to_owned())?;
        let mut info = crate::caps::video_info(&caps)?;
        let mut adjusted = false;

        // The allocator decides where memory comes from (the element's heap choice): a
        // configuration naming another keeps this pool's own.
        let own = || {
            self.config
                .lock()
                .unwrap()
                .as_ref()
                .map_or_else(|| self.default_allocator(), |c| c.allocator.clone())
        };
        let (allocator, mut params) = match config.allocator() {
            Some((Some(a), params)) => match a.downcast::<DmaHeapAllocator>() {
                Ok(ours) => (ours, params),
                Err(other) => {
                    gst::info!(
                        CAT,
                        imp = self,
                        "allocator {} is not a heap allocator: keeping this pool's",
                        other.name()
                    );
                    adjusted = true;
                    (own(), params)
                }
            },
            Some((None, params)) => (own(), params),
            None => (own(), gst::AllocationParams::default()),
        };

        let add_video_meta = config.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
        let want_alignment = config.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT);
        let mut alignment = None;
        if add_video_meta && want_alignment {
            // Strides can only be padded when the consumer reads them from the video meta.
            let mut align = config.video_alignment().unwrap_or_default();
            let mask = align
                .stride_align()
                .iter()
                .fold(params.align() as u32, |m, s| m | s);
            for s in align.stride_align_mut() {
                *s = mask;
            }
            info.align(&mut align)
                .map_err(|_| format!("cannot apply {align:?} to {caps}"))?;
            config.set_video_alignment(&align);
            alignment = Some(align);
            if params.align() < mask as usize {
                params = gst::AllocationParams::new(
                    params.flags(),
                    mask as usize,
                    params.prefix(),
                    params.padding(),
                );
            }
        }

        let settings = *self.settings.lock().unwrap();
        let size = (size as usize).max(info.size());
        // prewarm is a floor on the buffers allocated at activation: GstBufferPool
        // preallocates min-buffers.
        let mut min = min.max(settings.prewarm);
        let mut max = max;
        if settings.buffer_limit > 0 && (max == 0 || max > settings.buffer_limit) {
            max = settings.buffer_limit;
        }
        if max > 0 && min > max {
            gst::warning!(
                CAT,
                imp = self,
                "{min} buffers asked for at activation but at most {max} allowed: \
                 preallocating {max}"
            );
            min = max;
        }
        let size32 = u32::try_from(size).map_err(|_| format!("frames of {size} bytes"))?;
        // A bigger size (padding) is not an adjustment the caller must approve: GStreamer's
        // own video pool makes it silently and gst_buffer_pool_config_validate_params()
        // accepts it. Fewer or more buffers than asked for are.
        adjusted |= (min, max) != config.params().map_or((0, 0), |p| (p.2, p.3));
        config.set_params(Some(&caps), size32, min, max);
        config.set_allocator(
            Some(allocator.upcast_ref::<gst::Allocator>()),
            Some(&params),
        );
        Ok((
            Config {
                info,
                alignment,
                size,
                min,
                max,
                allocator,
                params,
                add_video_meta,
            },
            adjusted,
        ))
    }
}

#[glib::object_subclass]
impl ObjectSubclass for DmaHeapBufferPool {
    const NAME: &'static str = "GstDmaHeapBufferPool";
    type Type = super::DmaHeapBufferPool;
    type ParentType = gst::BufferPool;

    fn class_init(klass: &mut Self::Class) {
        let Some(parent) = klass
            .parent()
            .map(|p| *p.upcast_ref::<gst::BufferPool>().as_ref())
        else {
            return;
        };
        let class = klass.upcast_ref_mut::<gst::BufferPool>().as_mut();
        // GstBufferPool's own reset_buffer in place of the trampoline gstreamer-rs installs
        // for it (this pool does not override it): one call fewer on every release.
        class.reset_buffer = parent.reset_buffer;
        vfuncs::install::<Self>(class, &parent);
    }
}

impl ObjectImpl for DmaHeapBufferPool {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                props::qos().build(),
                props::prewarm().build(),
                props::on_exhaustion().build(),
                glib::ParamSpecUInt::builder("buffer-limit")
                    .nick("Buffer limit")
                    .blurb(
                        "The most buffers the pool may hold, whatever a configuration asks \
                         (0: no limit)",
                    )
                    .default_value(DEFAULT_BUFFER_LIMIT)
                    .build(),
                glib::ParamSpecBoolean::builder("hold-busy")
                    .nick("Hold busy buffers")
                    .blurb(
                        "Hold a returned buffer back while a device still uses it (its dma-buf \
                         has an unsignalled fence), so that no device writes into a frame still \
                         read. Costs one system call per release. Turn it off only when every \
                         writer maps the buffers to write them: mapping waits for the fences \
                         itself (DMA_BUF_IOCTL_SYNC), so the check would be made twice",
                    )
                    .default_value(DEFAULT_HOLD_BUSY)
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb("Pool hits and misses, prewarmed and trimmed buffers, heap used")
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "qos" => settings.qos = value.get().expect("type checked upstream"),
            "prewarm" => settings.prewarm = value.get().expect("type checked upstream"),
            "on-exhaustion" => settings.on_exhaustion = value.get().expect("type checked upstream"),
            "buffer-limit" => settings.buffer_limit = value.get().expect("type checked upstream"),
            "hold-busy" => settings.hold_busy = value.get().expect("type checked upstream"),
            _ => unimplemented!(),
        }
        self.hot_skip_busy_check
            .store(!settings.hold_busy, Ordering::Relaxed);
        self.hot_qos
            .store(settings.qos as u8 + 1, Ordering::Relaxed);
        self.hot_error_on_exhaustion.store(
            settings.on_exhaustion == OnExhaustion::Error,
            Ordering::Relaxed,
        );
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "qos" => settings.qos.to_value(),
            "prewarm" => settings.prewarm.to_value(),
            "on-exhaustion" => settings.on_exhaustion.to_value(),
            "buffer-limit" => settings.buffer_limit.to_value(),
            "hold-busy" => settings.hold_busy.to_value(),
            "stats" => self.stats().to_structure("dmaheap-pool-stats").to_value(),
            _ => unimplemented!(),
        }
    }
}

impl GstObjectImpl for DmaHeapBufferPool {}

impl BufferPoolImpl for DmaHeapBufferPool {
    fn options() -> &'static [&'static str] {
        static OPTIONS: LazyLock<[&'static str; 2]> = LazyLock::new(|| {
            [
                gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str(),
                gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT.as_str(),
            ]
        });
        &*OPTIONS
    }

    fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
        match self.configure(config) {
            Ok((cfg, adjusted)) => {
                gst::debug!(
                    CAT,
                    imp = self,
                    "configured: {}x{} {} frames of {} bytes, {}..{} buffers, video meta {}, \
                     strides {:?}, offsets {:?}, allocation align {}",
                    cfg.info.width(),
                    cfg.info.height(),
                    cfg.info.format(),
                    cfg.size,
                    cfg.min,
                    if cfg.max == 0 {
                        "unlimited".to_owned()
                    } else {
                        cfg.max.to_string()
                    },
                    cfg.add_video_meta,
                    cfg.info.stride(),
                    cfg.info.offset(),
                    cfg.params.align() + 1,
                );
                self.hot_size.store(cfg.size, Ordering::Relaxed);
                *self.config.lock().unwrap() = Some(cfg);
                if adjusted {
                    gst::debug!(CAT, imp = self, "configuration adjusted: {config:?}");
                }
                // GstBufferPool keeps the adjusted configuration for the caller to read back,
                // validate and set again.
                self.parent_set_config(config) && !adjusted
            }
            Err(reason) => {
                gst::warning!(CAT, imp = self, "refusing configuration: {reason}");
                false
            }
        }
    }

    fn start(&self) -> bool {
        let made = self.config.lock().unwrap().as_ref().map(|cfg| {
            let settings = *self.settings.lock().unwrap();
            cfg.allocator.heap_pool(
                cfg.size,
                &cfg.params,
                &self.buffer_name(),
                settings.qos,
                settings.prewarm,
            )
        });
        match made {
            Some(Ok(pool)) => *self.heap_pool.lock().unwrap() = Some(pool),
            Some(Err(err)) => {
                gst::error!(CAT, imp = self, "{err}");
                self.post_error(&err, gst::ResourceError::NoSpaceLeft);
                return false;
            }
            None => {}
        }
        let stats = self.stats();
        stats.count_acquires(&self.acquired);
        let before = stats.prewarmed.load(Ordering::Relaxed);
        self.starting.store(true, Ordering::SeqCst);
        let ok = self.parent_start();
        self.starting.store(false, Ordering::SeqCst);
        let prewarmed = stats.prewarmed.load(Ordering::Relaxed) - before;
        let (buffers, bytes) = stats.held_total();
        gst::info!(
            CAT,
            imp = self,
            "activated with {prewarmed} prewarmed buffers ({buffers} buffers, {bytes} bytes of \
             heap memory held by this pool's statistics group)"
        );
        ok
    }

    fn stop(&self) -> bool {
        // Buffers held back for their fences go to the free queue, which stopping frees.
        let held = self.busy.close(|buffer| self.parent_release_buffer(buffer));
        if held > 0 {
            gst::debug!(CAT, imp = self, "freeing {held} buffers devices still used");
        }
        // So do the hot buffers: GstBufferPool counts them among its buffers.
        while let Some(buffer) = self.hot.take() {
            self.parent_release_buffer(buffer);
        }
        let ok = self.parent_stop();
        // Buffers still out return to the closed heapcore pool and are freed then.
        if let Some(pool) = self.heap_pool.lock().unwrap().take() {
            pool.shutdown();
        }
        gst::debug!(
            CAT,
            imp = self,
            "stopped; {} buffers still alive",
            self.alive.load(Ordering::SeqCst)
        );
        ok
    }

    fn alloc_buffer(
        &self,
        _params: Option<&gst::BufferPoolAcquireParams>,
    ) -> Result<gst::Buffer, gst::FlowError> {
        let cfg = self
            .config
            .lock()
            .unwrap()
            .clone()
            .ok_or(gst::FlowError::NotNegotiated)?;
        let stats = self.stats();
        // Made by start() whenever there is a configuration.
        let heap_pool = self
            .heap_pool
            .lock()
            .unwrap()
            .clone()
            .ok_or(gst::FlowError::NotNegotiated)?;
        let allocated = cfg.allocator.alloc_pooled_memory(
            cfg.size,
            &cfg.params,
            &self.buffer_name(),
            &heap_pool,
        );
        let mut mem = match allocated {
            Ok(mem) => mem,
            Err(err) => {
                Stats::bump(&stats.alloc_failures);
                gst::error!(CAT, imp = self, "{err}");
                self.post_error(&err, gst::ResourceError::NoSpaceLeft);
                return Err(gst::FlowError::Error);
            }
        };
        let heap = memory::heap_buffer(&mem).expect("heap memory carries its buffer");
        // Held until the memory is freed, even if a buffer leaves the pool without it.
        heap.track(Arc::clone(&stats));
        let info = memory::heap_memory_info(&mem).expect("heap memory carries its buffer");
        if info.is_dmabuf {
            self.dmabufs.store(true, Ordering::Relaxed);
        }
        {
            // Map once now: with KEEP_MAPPED the mapping stays for the memory's life, so no
            // frame pays for mmap on the streaming thread.
            let mem = mem.get_mut().expect("a fresh memory has one owner");
            if let Err(e) = mem.map_writable() {
                gst::debug!(CAT, imp = self, "cannot premap {}: {e}", info.origin);
            }
        }
        let mut buffer = gst::Buffer::new();
        {
            let buffer = buffer.get_mut().expect("a fresh buffer has one owner");
            buffer.append_memory(mem);
            if cfg.add_video_meta {
                let mut meta = gst_video::VideoMeta::add_full(
                    buffer,
                    gst_video::VideoFrameFlags::empty(),
                    cfg.info.format(),
                    cfg.info.width(),
                    cfg.info.height(),
                    cfg.info.offset(),
                    cfg.info.stride(),
                )
                .map_err(|e| {
                    gst::error!(CAT, imp = self, "cannot add video meta: {e}");
                    gst::FlowError::Error
                })?;
                // Elements that ask the meta for plane heights and sizes see the padding.
                if let Some(align) = &cfg.alignment {
                    meta.set_alignment(align).map_err(|e| {
                        gst::error!(CAT, imp = self, "cannot set the meta's alignment: {e}");
                        gst::FlowError::Error
                    })?;
                }
            }
        }
        self.alive.fetch_add(1, Ordering::SeqCst);
        if self.starting.load(Ordering::SeqCst) {
            Stats::bump(&stats.prewarmed);
        } else {
            Stats::bump(&stats.pool_misses);
            if self.settings.lock().unwrap().qos == DmaHeapQos::Realtime {
                gst::warning!(
                    CAT,
                    imp = self,
                    "realtime pool allocated {} bytes on the streaming thread; raise prewarm",
                    info.len
                );
            }
        }
        gst::debug!(
            CAT,
            imp = self,
            "allocated a {} byte buffer from {} ({}, {})",
            info.len,
            info.origin,
            if info.is_dmabuf {
                "dma-buf memory"
            } else {
                "fd memory"
            },
            if info.contiguous {
                "contiguous"
            } else {
                "scattered"
            }
        );
        Ok(buffer)
    }

    fn free_buffer(&self, buffer: gst::Buffer) {
        // The heap memory leaves the statistics when it is freed (see HeapBuffer::track).
        self.alive.fetch_sub(1, Ordering::SeqCst);
        self.parent_free_buffer(buffer);
    }
}

// acquire and release run for every buffer: `vfuncs.rs` calls these, inlined, around
// GstBufferPool's own. What only some pools or some moments need is out of line.
impl PerBuffer for DmaHeapBufferPool {
    /// `on-exhaustion=error`: acquire must not wait (see `acquire_or_fail`).
    #[inline(always)]
    fn fails_when_exhausted(&self) -> bool {
        self.hot_error_on_exhaustion.load(Ordering::Relaxed)
    }

    /// Counts an acquired buffer: buffers out and pool hits both follow from this count (a
    /// miss is counted where it allocates).
    #[inline(always)]
    fn count_acquired(&self) {
        self.acquired.add_one();
    }

    /// What release does before GstBufferPool takes `buffer` back: the buffer to give it, or
    /// none when the pool holds it until a device is done with it.
    #[inline(always)]
    fn before_release(&self, mut buffer: gst::Buffer) -> Option<gst::Buffer> {
        // Buffers made by start() are fresh: no device has seen them.
        if self.starting.load(Ordering::SeqCst) {
            return Some(buffer);
        }
        self.released.add_one();
        let qos = self.hot_qos();
        if self.is_lean(qos) {
            self.trim(qos, &mut buffer);
        }
        // A buffer about to be freed need not wait; one going back to the free queue must not
        // be handed out while a device still reads or writes it (unless every writer maps it,
        // and so waits for the fences in DMA_BUF_IOCTL_SYNC).
        if self.dmabufs.load(Ordering::Relaxed)
            && !self.hot_skip_busy_check.load(Ordering::Relaxed)
            && !buffer.flags().contains(gst::BufferFlags::TAG_MEMORY)
        {
            return self.hold_if_busy(buffer);
        }
        Some(buffer)
    }

    #[inline(always)]
    fn hot_buffers(&self) -> &HotBuffers {
        &self.hot
    }

    #[inline(always)]
    fn reusable(&self, buffer: &gst::BufferRef) -> bool {
        !self.starting.load(Ordering::Relaxed)
            && !buffer.flags().contains(gst::BufferFlags::TAG_MEMORY)
            && buffer.size() == self.hot_size.load(Ordering::Relaxed)
            && buffer.is_all_memory_writable()
    }

    /// acquire_buffer for `on-exhaustion=error`: never waits for a buffer to come back, and
    /// says why the stream stops when none is left.
    #[inline(never)]
    fn acquire_or_fail(
        &self,
        params: Option<&gst::BufferPoolAcquireParams>,
    ) -> Result<gst::Buffer, gst::FlowError> {
        if params.is_some_and(|p| p.flags().contains(gst::BufferPoolAcquireFlags::DONTWAIT)) {
            // The caller handles an empty pool itself.
            return self.parent_acquire_buffer(params);
        }
        let flags = params.map_or(gst::BufferPoolAcquireFlags::empty(), |p| p.flags())
            | gst::BufferPoolAcquireFlags::DONTWAIT;
        let dontwait = gst::BufferPoolAcquireParams::with_flags(flags);
        match self.parent_acquire_buffer(Some(&dontwait)) {
            Err(gst::FlowError::Eos) => {
                let max = self.config.lock().unwrap().as_ref().map_or(0, |c| c.max);
                let err = Error::PoolExhausted { max };
                gst::error!(CAT, imp = self, "{err}");
                self.post_error(&err, gst::ResourceError::Busy);
                Err(gst::FlowError::Error)
            }
            other => other,
        }
    }
}
