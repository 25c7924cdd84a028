//! The heap-choice seam: which sources a buffer may come from, and the one call that allocates.
//!
//! Everything the plugin knows about *where* memory comes from lives here, so the allocator,
//! pool and element never touch heapcore's policy or allocation directly:
//!
//! - [`HeapChoice::resolve`] turns the `heap` list, or else the `usage`, into ordered sources.
//!   A usage goes through heapcore's policy and constraint solver (built-in defaults,
//!   `/etc/dmaheap/policy.toml`, the user's file, `DMAHEAP_POLICY`), with the frame size and
//!   whether the consumer needs dma-bufs; an explicit list is taken as written.
//! - [`HeapChoice::allocate`] returns a [`HeapBuffer`], the owner of one buffer's fd, which the
//!   GStreamer memory keeps alive until it is freed: a [`heapcore::DmaBuf`] from the
//!   process-wide allocator, or a `heapcore::PooledBuf` from a private pool
//!   ([`HeapChoice::pool`], [`HeapChoice::acquire`]) that returns itself to the pool on drop.
//! - [`QosClass`] travels with the choice and becomes the heapcore pool's class.

use std::fmt;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, LazyLock, OnceLock};

use gst::glib;
use heapcore::{Allocator, Constraints, DmaBuf, Origin, PoolRegistry, Source};

use crate::error::Error;
use crate::stats::Stats;

/// heapcore's registry for this process: the policy in force and the allocator (heap devices
/// opened once, discovery done once), shared with every other heapcore user in the process.
static REGISTRY: LazyLock<PoolRegistry> = LazyLock::new(PoolRegistry::process);

/// The process's pool registry: its policy, global budget and memory-pressure watch.
pub(crate) fn registry() -> &'static PoolRegistry {
    &REGISTRY
}

/// The machine's heaps and backends, as discovered once per process.
pub(crate) fn backend() -> &'static Allocator {
    REGISTRY.allocator()
}

/// What a buffer is for: heapcore's usage names. The policy maps each to an ordered list of
/// heaps (and a QoS class); `generic` is the fallback.
#[derive(Debug, Default, Eq, PartialEq, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstDmaHeapUsage")]
pub enum Usage {
    /// No particular device (built-in policy: system heap first).
    #[default]
    #[enum_value(name = "Generic: no particular device", nick = "generic")]
    Generic,
    /// Read by a display controller, which may lack an IOMMU (built-in: CMA first).
    #[enum_value(name = "Scanout: read by a display controller", nick = "scanout")]
    Scanout,
    /// Written by a hardware decoder (built-in: CMA first).
    #[enum_value(name = "Video decode: written by a decoder", nick = "video-decode")]
    VideoDecode,
    /// Read by a hardware encoder (built-in: CMA first).
    #[enum_value(name = "Video encode: read by an encoder", nick = "video-encode")]
    VideoEncode,
    /// Written by a camera/ISP (built-in: CMA first).
    #[enum_value(name = "Camera: written by a capture device", nick = "camera")]
    Camera,
    /// Small, latency-critical UI buffers (built-in: system heap first, realtime).
    #[enum_value(name = "Animation: latency-critical UI frames", nick = "animation")]
    Animation,
    /// Shared with other processes (built-in: system heap, udmabuf, memfd, CMA last).
    #[enum_value(name = "Screencast: shared with other processes", nick = "screencast")]
    Screencast,
    /// Written by a GPU or the CPU (built-in: system heap first).
    #[enum_value(name = "Render: written by a GPU or the CPU", nick = "render")]
    Render,
}

impl Usage {
    /// The name heapcore's policy (and gst-launch) uses for it.
    pub fn nick(self) -> &'static str {
        match self {
            Self::Generic => heapcore::Usage::GENERIC,
            Self::Scanout => heapcore::Usage::SCANOUT,
            Self::VideoDecode => heapcore::Usage::VIDEO_DECODE,
            Self::VideoEncode => heapcore::Usage::VIDEO_ENCODE,
            Self::Camera => heapcore::Usage::CAMERA,
            Self::Animation => heapcore::Usage::ANIMATION,
            Self::Screencast => heapcore::Usage::SCREENCAST,
            Self::Render => heapcore::Usage::RENDER,
        }
    }
}

/// How a pool treats its buffers: heapcore's QoS classes. The GStreamer pool implements them
/// on its own buffers (see `bufferpool`); a heapcore `Pool` behind it gets the same class.
#[derive(Debug, Default, Eq, PartialEq, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstDmaHeapQos")]
pub enum QosClass {
    /// Prewarmed, never trimmed; a buffer allocated on the streaming thread is a warning.
    #[enum_value(
        name = "Realtime: prewarmed, never trimmed, misses are warnings",
        nick = "realtime"
    )]
    Realtime,
    /// GstBufferPool behaviour: keeps what it allocated until deactivated.
    #[default]
    #[enum_value(name = "Normal: keep what was allocated", nick = "normal")]
    Normal,
    /// Lean: idle buffers above min-buffers are freed when they come back.
    #[enum_value(
        name = "Background: free idle buffers above min-buffers",
        nick = "background"
    )]
    Background,
}

impl From<QosClass> for heapcore::QosClass {
    /// The class a heapcore `Pool` behind this pool would get.
    fn from(qos: QosClass) -> Self {
        match qos {
            QosClass::Realtime => Self::Realtime,
            QosClass::Normal => Self::Normal,
            QosClass::Background => Self::Background,
        }
    }
}

/// The ordered sources a buffer may come from, and how they were chosen.
#[derive(Debug, Clone)]
pub struct HeapChoice {
    sources: Vec<Source>,
    usage: Usage,
    /// Entries of an explicit list that this machine cannot serve (said as warnings).
    skipped: Vec<String>,
    explicit: bool,
}

impl fmt::Display for HeapChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.sources.iter().map(source_name).collect();
        write!(f, "{}", names.join(","))
    }
}

/// The name a source has in the `heap` property.
fn source_name(source: &Source) -> String {
    match source {
        Source::Heap(name) => name.to_string(),
        Source::Udmabuf => "udmabuf".into(),
        Source::Memfd => "memfd".into(),
    }
}

impl HeapChoice {
    /// Resolves the `heap` property (an ordered list; empty means "by usage") against this
    /// machine, for buffers of `size` bytes (0: not known yet). An invalid name is an error; a
    /// name this machine lacks is skipped with a warning while another entry can serve, and an
    /// error when none can.
    pub fn resolve(heap: &str, usage: Usage, size: u64) -> Result<Self, Error> {
        let inventory = backend().inventory();
        let entries = Source::parse_list(heap, inventory)?;
        if entries.is_empty() {
            return Self::for_usage(usage, size);
        }
        let mut sources = Vec::new();
        let mut skipped = Vec::new();
        for source in entries {
            let entry = source_name(&source);
            let problem = match &source {
                Source::Heap(name) => inventory.find(name.as_str()).err().map(|e| e.to_string()),
                Source::Udmabuf if !inventory.has_udmabuf() => {
                    Some("/dev/udmabuf is missing (CONFIG_UDMABUF)".to_owned())
                }
                Source::Udmabuf | Source::Memfd => None,
            };
            match problem {
                Some(why) => skipped.push(format!("{entry}: {why}")),
                None if !sources.contains(&source) => sources.push(source),
                None => {}
            }
        }
        if sources.is_empty() {
            return Err(Error::NoUsableSource {
                spec: heap.to_owned(),
                reasons: skipped.join("; "),
            });
        }
        Ok(Self {
            sources,
            usage,
            skipped,
            explicit: true,
        })
    }

    /// What heapcore's policy and solver give for `usage` and `size` bytes on this machine; an
    /// error (with the solver's explanation) when nothing can serve.
    pub fn for_usage(usage: Usage, size: u64) -> Result<Self, Error> {
        let constraints = Constraints::new(size.max(heapcore::sysinfo::page_size()))
            .usage(heapcore::Usage::new(usage.nick()).expect("heapcore's own usage names"));
        let candidates = REGISTRY.candidates(&constraints);
        let sources = candidates.sources();
        if sources.is_empty() {
            return Err(heapcore::Error::NoCandidate {
                explanation: candidates.to_string(),
            }
            .into());
        }
        let skipped = candidates
            .entries
            .iter()
            .filter_map(|c| match &c.verdict {
                heapcore::Verdict::Out(why) => Some(format!("{}: {why}", c.name)),
                heapcore::Verdict::In(_) => None,
            })
            .collect();
        Ok(Self {
            sources,
            usage,
            skipped,
            explicit: false,
        })
    }

    /// This choice without the memfd fallback, for caps that promise dma-buf memory.
    pub fn dmabuf_only(&self) -> Result<Self, Error> {
        let sources: Vec<Source> = self
            .sources
            .iter()
            .filter(|s| **s != Source::Memfd)
            .cloned()
            .collect();
        if sources.is_empty() {
            return Err(Error::NeedsDmabuf {
                sources: self.describe(),
            });
        }
        Ok(Self {
            sources,
            ..self.clone()
        })
    }

    /// The sources, best first.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// The usage the choice was made for.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Whether the sources came from an explicit `heap` list (not from the usage).
    pub fn is_explicit(&self) -> bool {
        self.explicit
    }

    /// Whether any source gives dma-bufs (all but memfd do).
    pub fn has_dmabuf_source(&self) -> bool {
        self.sources.iter().any(|s| *s != Source::Memfd)
    }

    /// Whether memfd (not a dma-buf) may serve.
    pub fn allows_memfd(&self) -> bool {
        self.sources.contains(&Source::Memfd)
    }

    /// Entries this machine cannot serve, each with the reason (for an explicit list, worth a
    /// warning; for a usage, the policy's entries that do not apply here).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// "heap=system,reserved" or "usage=scanout → reserved,system,memfd", for messages.
    pub fn describe(&self) -> String {
        if self.explicit {
            format!("heap={self}")
        } else {
            format!("usage={} ({self})", self.usage.nick())
        }
    }

    /// Allocates at least `size` bytes from the first source that can give them.
    ///
    /// `name` labels the buffer in `/proc/<pid>/fdinfo` (dma-bufs) or `/proc/<pid>/fd` (memfd).
    pub fn allocate(&self, size: u64, name: &str) -> Result<HeapBuffer, Error> {
        let buf = backend().allocate_first(&self.sources, size, &buffer_name(name))?;
        Ok(HeapBuffer::new(Owned::Plain(buf)))
    }

    /// A heapcore pool of `size`-byte buffers from these sources, of its own for one
    /// GStreamer buffer pool but under the process's global budget and pressure watch. A
    /// realtime pool keeps `prewarm` buffers ready beyond what the GStreamer pool holds and
    /// refills them off the streaming thread, so the GStreamer pool can grow without
    /// allocating.
    pub fn pool(
        &self,
        size: u64,
        name: &str,
        qos: QosClass,
        prewarm: u32,
    ) -> Result<heapcore::Pool, Error> {
        let min = if qos == QosClass::Realtime {
            prewarm as usize
        } else {
            0
        };
        let config = heapcore::PoolConfig::new(buffer_name(name), self.sources.clone(), size)
            .qos(qos.into())
            .min_buffers(min);
        Ok(REGISTRY.private_pool(config)?)
    }

    /// A buffer from `pool` (made by [`HeapChoice::pool`]).
    pub fn acquire(pool: &heapcore::Pool) -> Result<HeapBuffer, Error> {
        Ok(HeapBuffer::new(Owned::Pooled(pool.try_acquire()?)))
    }
}

/// A buffer name the kernel accepts: at most 31 bytes, no control characters.
fn buffer_name(name: &str) -> String {
    heapcore::fit_buffer_name(name, "")
}

/// Who owns a buffer's fd: the buffer itself (closed on drop) or a heapcore pool (returned to
/// it on drop, still mapped and named).
#[derive(Debug)]
enum Owned {
    Plain(DmaBuf),
    Pooled(heapcore::PooledBuf),
}

impl std::ops::Deref for Owned {
    type Target = DmaBuf;
    fn deref(&self) -> &DmaBuf {
        match self {
            Self::Plain(buf) => buf,
            Self::Pooled(buf) => buf,
        }
    }
}

/// The owner of one allocated buffer. The GStreamer memory that wraps its fd keeps it alive and
/// drops it (closing the fd, or returning it to its heapcore pool) when the memory is freed.
#[derive(Debug)]
pub struct HeapBuffer {
    buf: Owned,
    contiguous: bool,
    /// Statistics that count this buffer as held until it is dropped.
    stats: OnceLock<Arc<Stats>>,
}

impl HeapBuffer {
    fn new(buf: Owned) -> Self {
        let contiguous = match buf.origin() {
            Origin::Heap(name) => backend()
                .inventory()
                .find(name.as_str())
                .is_ok_and(|h| h.properties.contiguous == Some(true)),
            _ => false,
        };
        Self {
            buf,
            contiguous,
            stats: OnceLock::new(),
        }
    }

    /// Counts this buffer in `stats` (heap memory held) until it is dropped, whoever drops it.
    pub(crate) fn track(&self, stats: Arc<Stats>) {
        if self.stats.get().is_none() {
            stats.held_add(&self.origin().to_string(), self.len());
            let _ = self.stats.set(stats);
        }
    }

    /// The buffer's size (whole pages).
    pub fn len(&self) -> u64 {
        self.buf.len()
    }

    /// Where it came from (`heap system`, `udmabuf`, `memfd`).
    pub fn origin(&self) -> &Origin {
        self.buf.origin()
    }

    /// Whether devices can import it (false only for the memfd fallback).
    pub fn is_dmabuf(&self) -> bool {
        self.buf.is_dmabuf()
    }

    /// Whether the memory is physically contiguous (a CMA heap).
    pub fn is_contiguous(&self) -> bool {
        self.contiguous
    }
}

impl Drop for HeapBuffer {
    fn drop(&mut self) {
        if let Some(stats) = self.stats.get() {
            stats.held_sub(&self.origin().to_string(), self.len());
        }
    }
}

impl AsRawFd for HeapBuffer {
    fn as_raw_fd(&self) -> RawFd {
        self.buf.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malicious_names_are_refused_before_anything_is_opened() {
        for bad in ["../../dev/mem", "/dev/mem", "a/b", ".."] {
            let err = HeapChoice::resolve(bad, Usage::Generic, 0).unwrap_err();
            assert!(
                err.to_string().contains("is not a valid heap name"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn an_unknown_heap_alone_is_an_error_that_lists_what_exists() {
        let err = HeapChoice::resolve("no-such-heap", Usage::Generic, 0).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no-such-heap"), "{msg}");
        assert!(msg.contains("no DMA-BUF heap named"), "{msg}");
    }

    #[test]
    fn an_unknown_heap_with_a_usable_fallback_is_skipped() {
        let choice = HeapChoice::resolve("no-such-heap,memfd", Usage::Generic, 0).unwrap();
        assert_eq!(choice.sources(), [Source::Memfd]);
        assert_eq!(choice.skipped().len(), 1);
    }

    #[test]
    fn every_usage_resolves_through_the_policy_and_dmabuf_only_drops_memfd() {
        for usage in [
            Usage::Generic,
            Usage::Scanout,
            Usage::VideoDecode,
            Usage::VideoEncode,
            Usage::Camera,
            Usage::Animation,
            Usage::Screencast,
            Usage::Render,
        ] {
            assert!(heapcore::Usage::new(usage.nick()).is_ok());
            // The built-in policy ends every list with memfd, which works everywhere (unless a
            // policy file on this machine says otherwise).
            let choice = HeapChoice::for_usage(usage, 1 << 20).unwrap();
            assert!(!choice.sources().is_empty());
            match choice.dmabuf_only() {
                Ok(c) => assert!(!c.allows_memfd()),
                Err(e) => {
                    assert!(!choice.has_dmabuf_source());
                    assert!(e.to_string().contains("memory:DMABuf"), "{e}");
                }
            }
        }
    }

    #[test]
    fn buffer_names_fit_the_kernel_limit() {
        assert_eq!(buffer_name("gst:a\nb"), "gst:ab");
        assert_eq!(buffer_name(&"x".repeat(40)).len(), 31);
    }
}
