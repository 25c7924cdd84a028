//! The heap-choice seam: from a fixed video format to constraints, from constraints to an
//! ordered list of sources, and from that list to buffers.
//!
//! Everything the negotiator knows about *where* memory comes from lives here. Sources come
//! from heapcore's usage policy and constraint solver (usage `screencast` unless told
//! otherwise; an explicit heap list replaces the policy's). Buffers come from a heapcore
//! private pool per negotiated format, under the registry's global budget and memory-pressure
//! watch. The pools only hand out memory no consumer has seen: the producer frees (detaches)
//! every buffer whose fd went to PipeWire instead of returning it, so only buffers that never
//! left the process (the probe taken when a format is fixed) are recycled.

use std::sync::Arc;

use heapcore::format::{FrameLayout, VideoFormat};
use heapcore::{
    Allocator, CpuAccess, HeapKind, Origin, Policy, Pool, PoolConfig, PoolRegistry, PooledBuf,
    Source, Usage,
};

use crate::config::{DataKind, ProducerConfig};
use crate::error::{Error, Result};

/// What a buffer for one negotiated format must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameConstraints {
    /// Strides and plane offsets of the frame inside the buffer.
    pub layout: FrameLayout,
    /// Bytes a buffer must hold (the frame; allocation rounds up to pages).
    pub size: u64,
    /// Physically contiguous memory only.
    pub contiguous: bool,
    /// The usage the buffers serve (`screencast`).
    pub usage: String,
}

impl FrameConstraints {
    /// The constraints of a `width`×`height` `format` frame under `config`'s alignment,
    /// contiguity and usage, sent as one block per plane (each with its chunk offset and
    /// stride: dma-bufs with a modifier).
    pub fn for_frame(
        format: VideoFormat,
        width: u32,
        height: u32,
        config: &ProducerConfig,
    ) -> Result<Self> {
        crate::config::check_size(width, height)?;
        let layout = FrameLayout::aligned(format, width, height, config.stride_align, 1)
            .map_err(|e| frame_error(format, width, height)(e.to_string()))?;
        Self::with_layout(layout, config)
    }

    /// The constraints of a frame sent as one block with one stride (MemFd, or dma-bufs
    /// without a modifier). A consumer of such a frame (pipewiresrc) learns only the first
    /// plane's stride and takes every other plane where GStreamer's default `GstVideoInfo`
    /// puts it, so multi-plane formats get exactly that layout (rows aligned to 4 bytes,
    /// 4:2:0 chroma after `GST_ROUND_UP_2(height)` luma rows), and `config.stride_align` must
    /// be 4 for them. Single-plane formats keep `config`'s alignment: the chunk carries
    /// their stride.
    pub fn for_single_block(
        format: VideoFormat,
        width: u32,
        height: u32,
        config: &ProducerConfig,
    ) -> Result<Self> {
        if format.plane_count() == 1 {
            return Self::for_frame(format, width, height, config);
        }
        crate::config::check_size(width, height)?;
        if config.stride_align != 4 {
            return Err(frame_error(format, width, height)(format!(
                "sent as one block, planes after the first have GStreamer's default layout \
                 (4-byte rows), which stride alignment {} cannot have",
                config.stride_align
            )));
        }
        let layout =
            gstreamer_layout(format, width, height).map_err(frame_error(format, width, height))?;
        Self::with_layout(layout, config)
    }

    fn with_layout(layout: FrameLayout, config: &ProducerConfig) -> Result<Self> {
        // SPA_PARAM_Buffers carries sizes and strides as 32-bit signed ints.
        if layout.size > i32::MAX as u64 {
            return Err(frame_error(layout.format, layout.width, layout.height)(
                format!(
                    "{} bytes per frame; PipeWire describes at most 2 GiB",
                    layout.size
                ),
            ));
        }
        Ok(Self {
            size: layout.size,
            layout,
            contiguous: config.contiguous,
            usage: config.usage.clone(),
        })
    }
}

fn frame_error(format: VideoFormat, width: u32, height: u32) -> impl Fn(String) -> Error {
    move |reason| Error::Frame {
        width,
        height,
        format: format.to_string(),
        reason,
    }
}

/// GStreamer's default layout of a `width`×`height` `format` frame: what `GstVideoInfo`
/// computes (`fill_planes` in gst-libs/gst/video/video-info.c, progressive frames).
pub(crate) fn gstreamer_layout(
    format: VideoFormat,
    width: u32,
    height: u32,
) -> std::result::Result<FrameLayout, String> {
    use VideoFormat as F;
    if width == 0 || height == 0 {
        return Err(format!("a {width}x{height} frame is empty"));
    }
    let (w, h) = (u64::from(width), u64::from(height));
    let up = |x: u64, n: u64| x.div_ceil(n) * n;
    // 4:2:0 with one chroma plane (NV12, P010): chroma after GST_ROUND_UP_2(height) rows.
    let semi_planar_420 = |stride: u64| {
        let luma = stride * up(h, 2);
        (
            vec![stride, stride],
            vec![0, luma],
            luma + stride * (up(h, 2) / 2),
        )
    };
    let single = |stride: u64| (vec![stride], vec![0], stride * h);
    let (strides, offsets, size) = match format {
        F::Nv12 | F::Nv21 => semi_planar_420(up(w, 4)),
        F::P010 => semi_planar_420(up(2 * w, 4)),
        F::Nv16 => {
            let s = up(w, 4);
            (vec![s, s], vec![0, s * h], 2 * s * h)
        }
        F::Nv24 => {
            let (s0, s1) = (up(w, 4), up(2 * w, 4));
            (vec![s0, s1], vec![0, s0 * h], (s0 + s1) * h)
        }
        F::I420 | F::Yv12 => {
            let (s0, s1, chroma_rows) = (up(w, 4), up(up(w, 2) / 2, 4), up(h, 2) / 2);
            let o1 = s0 * up(h, 2);
            let o2 = o1 + s1 * chroma_rows;
            (vec![s0, s1, s1], vec![0, o1, o2], o2 + s1 * chroma_rows)
        }
        F::Y42b => {
            let (s0, s1) = (up(w, 4), up(w, 8) / 2);
            let o1 = s0 * h;
            let o2 = o1 + s1 * h;
            (vec![s0, s1, s1], vec![0, o1, o2], o2 + s1 * h)
        }
        F::Y444 => {
            let s = up(w, 4);
            (vec![s, s, s], vec![0, s * h, 2 * s * h], 3 * s * h)
        }
        F::Yuy2 | F::Yvyu | F::Uyvy | F::Rgb16 | F::Gray16 => single(up(2 * w, 4)),
        F::Rgba | F::Bgra | F::Argb | F::Abgr | F::Rgbx | F::Bgrx | F::Xrgb | F::Xbgr => {
            single(4 * w)
        }
        F::Rgb | F::Bgr => single(up(3 * w, 4)),
        F::Gray8 => single(up(w, 4)),
    };
    let mut layout = FrameLayout {
        format,
        width,
        height,
        n_planes: strides.len(),
        strides: [0; heapcore::format::MAX_PLANES],
        offsets: [0; heapcore::format::MAX_PLANES],
        size,
    };
    for (p, (stride, offset)) in strides.into_iter().zip(offsets).enumerate() {
        layout.strides[p] =
            u32::try_from(stride).map_err(|_| format!("a {width}x{height} frame overflows"))?;
        layout.offsets[p] = offset;
    }
    Ok(layout)
}

/// The pool serving one kind of buffer for one negotiated format.
#[derive(Debug)]
struct FormatPool {
    kind: DataKind,
    size: u64,
    contiguous: bool,
    pool: Pool,
}

/// Chooses sources and allocates buffers for a producer.
#[derive(Debug)]
pub(crate) struct HeapChoice {
    registry: PoolRegistry,
    alloc: Arc<Allocator>,
    policy: Policy,
    usage: Usage,
    explicit: Option<Vec<Source>>,
    contiguous: bool,
    /// Names the pools, so fdinfo says which stream a buffer serves.
    pool_name: String,
    /// The pools of the current format (at most one per data kind).
    pools: Vec<FormatPool>,
    /// Buffers handed out so far, and how many of them were recycled (never-shared buffers
    /// that came back) rather than allocated.
    handed_out: u64,
    recycled: u64,
}

impl HeapChoice {
    /// `config` must have been validated (its usage is a valid name). The registry gives the
    /// allocator, the budget and the pressure watch; `config.policy` replaces its policy.
    pub(crate) fn new(registry: PoolRegistry, config: &ProducerConfig) -> Self {
        let policy = config.policy.clone().unwrap_or_else(|| registry.policy());
        Self {
            alloc: Arc::clone(registry.allocator()),
            registry,
            policy,
            usage: Usage::new(&config.usage).unwrap_or_else(|_| Usage::generic()),
            explicit: config.heaps.clone(),
            contiguous: config.contiguous,
            pool_name: pool_name(&config.usage),
            pools: Vec::new(),
            handed_out: 0,
            recycled: 0,
        }
    }

    /// The dma-buf sources that may serve `size`-byte, `contiguous` buffers the CPU writes,
    /// in the order to try them: the policy's list for the usage as the solver judges it for
    /// these constraints (the reasons go to the debug log), or the explicit list with
    /// protected heaps and, for contiguous requests, everything not known to be contiguous
    /// left out.
    pub(crate) fn dmabuf_sources(&self, size: u64, contiguous: bool) -> Vec<Source> {
        let inventory = self.alloc.inventory();
        let Some(explicit) = &self.explicit else {
            let candidates = self.solve(size, contiguous);
            log::debug!("heap choice: {candidates}");
            return candidates.sources();
        };
        explicit
            .iter()
            .filter(|source| match source {
                Source::Memfd => false,
                Source::Udmabuf => !contiguous,
                Source::Heap(name) => match inventory.find(name.as_str()) {
                    Ok(heap) if heap.kind == HeapKind::Protected => {
                        log::debug!("{source}: protected memory, the CPU cannot draw into it");
                        false
                    }
                    Ok(heap) if contiguous && heap.properties.contiguous != Some(true) => {
                        log::debug!("{source}: not known to be contiguous");
                        false
                    }
                    Ok(_) => true,
                    Err(e) => {
                        log::debug!("{source}: {e}");
                        false
                    }
                },
            })
            .cloned()
            .collect()
    }

    /// Why the dma-buf sources for `size`-byte buffers are what they are (the solver's
    /// `dmaheap explain` text, or the explicit list).
    pub(crate) fn explain(&self, size: u64) -> String {
        match &self.explicit {
            Some(list) => format!(
                "explicit heap list: {}; usable here for these buffers: {}",
                list.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                self.dmabuf_sources(size, self.contiguous)
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => self.solve(size, self.contiguous).to_string(),
        }
    }

    /// The policy's candidates for dma-bufs of `size` bytes that the CPU writes.
    fn solve(&self, size: u64, contiguous: bool) -> heapcore::Candidates {
        let constraints = heapcore::Constraints::new(size)
            .usage(self.usage.clone())
            .contiguous(contiguous)
            .cpu_access(CpuAccess::Write)
            .require_dmabuf(true);
        heapcore::solve(&self.policy, &constraints, self.alloc.inventory())
    }

    /// Whether a dma-buf can be had here at all: allocates (and frees) one page from the
    /// sources in order. This decides whether DmaBuf formats are offered; the error says
    /// why not.
    pub(crate) fn probe_dmabuf(&self) -> Result<Origin, String> {
        let page = heapcore::sysinfo::page_size();
        let sources = self.dmabuf_sources(page, self.contiguous);
        if sources.is_empty() {
            return Err(if self.contiguous {
                "no contiguous (CMA) heap here".into()
            } else {
                "no DMA-BUF heap or /dev/udmabuf here".into()
            });
        }
        match self.alloc.allocate_first(&sources, page, "") {
            Ok(buf) if buf.is_dmabuf() => Ok(buf.origin().clone()),
            Ok(buf) => Err(format!("{} is not a dma-buf", buf.origin())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// How many buffers [`HeapChoice::allocate`] has handed out, and how many of those came
    /// back from a pool instead of being allocated.
    pub(crate) fn handed_out(&self) -> (u64, u64) {
        (self.handed_out, self.recycled)
    }

    /// The pool for `kind` buffers under `constraints`, made on first use. Pools of another
    /// size or contiguity (an earlier format) are shut down: their idle buffers are freed now,
    /// the ones still attached to the stream when PipeWire removes them.
    fn pool(&mut self, kind: DataKind, constraints: &FrameConstraints) -> Result<&Pool> {
        let (size, contiguous) = (constraints.size, constraints.contiguous);
        self.pools.retain(|p| {
            let current = p.size == size && p.contiguous == contiguous;
            if !current {
                p.pool.shutdown();
            }
            current
        });
        if let Some(i) = self.pools.iter().position(|p| p.kind == kind) {
            return Ok(&self.pools[i].pool);
        }
        let sources = match kind {
            DataKind::DmaBuf => {
                let sources = self.dmabuf_sources(size, contiguous);
                if sources.is_empty() {
                    return Err(Error::Negotiation(
                        "DmaBuf was negotiated but no dma-buf source is left for these constraints"
                            .into(),
                    ));
                }
                sources
            }
            DataKind::MemFd => vec![Source::Memfd],
        };
        let config = PoolConfig::new(self.pool_name.clone(), sources, size);
        let pool = self.registry.private_pool(config)?;
        self.pools.push(FormatPool {
            kind,
            size,
            contiguous,
            pool,
        });
        Ok(&self.pools.last().expect("just pushed").pool)
    }

    /// One mapped buffer of `kind` for `constraints`: dma-bufs from the first source that can
    /// give one, MemFd from a sealed memfd. It returns to its pool when dropped, so once its fd
    /// has been given out it must be `detach`ed and freed instead.
    pub(crate) fn allocate(
        &mut self,
        kind: DataKind,
        constraints: &FrameConstraints,
    ) -> Result<PooledBuf> {
        let pool = self.pool(kind, constraints)?;
        let recycled = pool.buffers_free() > 0;
        let buf = pool.try_acquire()?;
        debug_assert_eq!(buf.is_dmabuf(), kind == DataKind::DmaBuf);
        // The pool keeps its buffers mapped; this maps a fresh one now (mmap of a large
        // dma-buf costs milliseconds) so the frame path never does.
        buf.map()?;
        self.handed_out += 1;
        self.recycled += u64::from(recycled);
        log::debug!(
            "{} {} bytes ({kind}) from {} for usage {}",
            if recycled { "recycled" } else { "allocated" },
            buf.len(),
            buf.origin(),
            constraints.usage
        );
        Ok(buf)
    }
}

impl Drop for HeapChoice {
    fn drop(&mut self) {
        for p in &self.pools {
            p.pool.shutdown();
        }
    }
}

/// `pw-<usage>`: the pool names its buffers `pw-<usage>#<n>`, cut to the 31 bytes a dma-buf
/// name may have.
fn pool_name(usage: &str) -> String {
    format!("pw-{usage}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_follow_the_layout() {
        let cfg = ProducerConfig::new(1921, 1080).with_stride_align(64);
        let c = FrameConstraints::for_frame(VideoFormat::Nv12, 1921, 1080, &cfg).unwrap();
        assert_eq!(c.layout.strides[0], 1984);
        assert_eq!(c.size, c.layout.size);
        assert_eq!(c.usage, "screencast");
        let err = FrameConstraints::for_frame(VideoFormat::Rgba, 0, 1, &cfg).unwrap_err();
        assert!(err.to_string().contains("1 to 16384"), "{err}");
    }

    #[test]
    fn memfd_buffers_are_mapped_and_sized() {
        let cfg = ProducerConfig::new(64, 48);
        let mut choice = HeapChoice::new(registry(), &cfg);
        let c = FrameConstraints::for_frame(VideoFormat::Bgrx, 64, 48, &cfg).unwrap();
        let buf = choice.allocate(DataKind::MemFd, &c).unwrap();
        assert!(buf.is_mapped());
        assert!(buf.len() >= 64 * 48 * 4);
        assert_eq!(buf.origin(), &Origin::Memfd);
        assert_eq!(buf.name(), Some("pw-screencast#1"));
    }

    fn registry() -> PoolRegistry {
        PoolRegistry::new(Arc::new(Allocator::new()), Policy::default(), None)
    }

    #[test]
    fn buffers_of_the_same_format_are_recycled() {
        let cfg = ProducerConfig::new(64, 48);
        let mut choice = HeapChoice::new(registry(), &cfg);
        let small = FrameConstraints::for_frame(VideoFormat::Bgrx, 64, 48, &cfg).unwrap();
        let first: Vec<_> = (0..3)
            .map(|_| choice.allocate(DataKind::MemFd, &small).unwrap())
            .collect();
        let ino = |b: &PooledBuf| rustix::fs::fstat(&**b).unwrap().st_ino;
        let inodes: Vec<_> = first.iter().map(ino).collect();
        drop(first); // never given out (as the probe): they go back to the pool
        let again: Vec<_> = (0..3)
            .map(|_| choice.allocate(DataKind::MemFd, &small).unwrap())
            .collect();
        assert!(again.iter().all(|b| inodes.contains(&ino(b))));
        assert_eq!(choice.handed_out(), (6, 3));
        // Another size: a new pool; the old one is shut down and frees what comes back.
        let big = FrameConstraints::for_frame(VideoFormat::Bgrx, 128, 96, &cfg).unwrap();
        let resized = choice.allocate(DataKind::MemFd, &big).unwrap();
        assert!(resized.len() >= 128 * 96 * 4);
        drop(again);
        assert_eq!(choice.handed_out(), (7, 3));
        assert_eq!(choice.pools.len(), 1);
    }

    #[test]
    fn single_block_frames_have_gstreamers_layout() {
        gst::init().unwrap();
        for &format in VideoFormat::ALL {
            let gst_format = gst_video::VideoFormat::from_string(format.name());
            for (w, h) in [
                (1, 1),
                (2, 2),
                (321, 241),
                (322, 242),
                (1921, 1081),
                (64, 48),
            ] {
                let info = gst_video::VideoInfo::builder(gst_format, w, h)
                    .build()
                    .unwrap();
                let ours = gstreamer_layout(format, w, h).unwrap();
                let n = ours.n_planes;
                let strides: Vec<i32> = ours.strides[..n].iter().map(|&s| s as i32).collect();
                let offsets: Vec<usize> = ours.offsets[..n].iter().map(|&o| o as usize).collect();
                let what = format!("{format} {w}x{h}");
                assert_eq!(n, info.n_planes() as usize, "{what}");
                assert_eq!(strides, info.stride(), "{what}: strides");
                assert_eq!(offsets, info.offset(), "{what}: offsets");
                assert_eq!(ours.size as usize, info.size(), "{what}: size");
            }
        }
    }

    #[test]
    fn one_block_multi_plane_frames_need_4_byte_rows() {
        let cfg = ProducerConfig::new(321, 241).with_stride_align(64);
        let c = FrameConstraints::for_single_block(VideoFormat::Bgrx, 321, 241, &cfg).unwrap();
        assert_eq!(c.layout.strides[0], 1344);
        let err = FrameConstraints::for_single_block(VideoFormat::Nv12, 321, 241, &cfg)
            .unwrap_err()
            .to_string();
        assert!(err.contains("stride alignment 64 cannot"), "{err}");
        let cfg = ProducerConfig::new(321, 241);
        let c = FrameConstraints::for_single_block(VideoFormat::Nv12, 321, 241, &cfg).unwrap();
        assert_eq!(c.layout.offsets[1], 324 * 242);
    }

    #[test]
    fn memfd_is_never_a_dmabuf_source() {
        let choice = HeapChoice::new(registry(), &ProducerConfig::default());
        assert!(!choice.dmabuf_sources(4096, false).contains(&Source::Memfd));
        assert!(!choice.dmabuf_sources(4096, true).contains(&Source::Udmabuf));
    }
}
