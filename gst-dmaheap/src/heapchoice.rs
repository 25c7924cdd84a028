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
//! - [`DmaHeapQos`] travels with the choice and becomes the heapcore pool's class.

use std::fmt;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, OnceLock};

use gst::glib;
use heapcore::device::DeviceReport;
use heapcore::{Constraints, CpuAccess, DmaBuf, Origin, PoolRegistry, Source, Usage};

use crate::error::Error;
use crate::stats::Stats;

/// heapcore's registry for this process (made once, and once more in a forked child): the
/// policy in force, the allocator (heap devices opened and discovered once), the global
/// budget and the memory-pressure watch, shared with every other heapcore user in the process.
pub(crate) fn registry() -> PoolRegistry {
    PoolRegistry::process()
}

/// How a pool treats its buffers: heapcore's QoS classes. The GStreamer pool implements them
/// on its own buffers (see `bufferpool`); a heapcore `Pool` behind it gets the same class.
#[derive(Debug, Default, Eq, PartialEq, Hash, Clone, Copy, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstDmaHeapQos")]
pub enum DmaHeapQos {
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

impl From<DmaHeapQos> for heapcore::QosClass {
    /// The class a heapcore `Pool` behind this pool would get.
    fn from(qos: DmaHeapQos) -> Self {
        match qos {
            DmaHeapQos::Realtime => Self::Realtime,
            DmaHeapQos::Normal => Self::Normal,
            DmaHeapQos::Background => Self::Background,
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
        let names: Vec<String> = self.sources.iter().map(Source::name).collect();
        write!(f, "{}", names.join(","))
    }
}

/// What the plugin's buffers need from a source: `size` bytes (0: not known yet, judged as a
/// page), for `usage`. GStreamer elements map what they read and write, so heaps the CPU may
/// not map (protected ones) cannot serve plain video memory.
fn constraints(usage: &Usage, size: u64, devices: &[DeviceReport]) -> Constraints {
    Constraints::new(size.max(heapcore::sysinfo::page_size()))
        .usage(usage.clone())
        .cpu_access(CpuAccess::ReadWrite)
        .devices(devices.to_vec())
}

impl HeapChoice {
    /// Resolves the `heap` property (an ordered list; empty means "by usage") against this
    /// machine, for buffers of `size` bytes (0: not known yet). An invalid name is an error; a
    /// name this machine lacks is skipped with a warning while another entry can serve, and an
    /// error when none can.
    pub fn resolve(heap: &str, usage: &str, size: u64) -> Result<Self, Error> {
        Self::resolve_for(heap, usage, size, &[])
    }

    /// [`HeapChoice::resolve`] for buffers that pass through `devices`: a source a device
    /// refused (heapcore's probe, or the policy file's word on its driver) is ruled out.
    pub fn resolve_for(
        heap: &str,
        usage: &str,
        size: u64,
        devices: &[DeviceReport],
    ) -> Result<Self, Error> {
        let usage = Usage::new(usage).map_err(|e| Error::BadUsage {
            reason: e.to_string(),
        })?;
        let registry = registry();
        let inventory = registry.allocator().inventory();
        let entries = Source::parse_list(heap, inventory)?;
        if entries.is_empty() {
            return Self::for_usage(&usage, size, devices);
        }
        // The same judgement as the policy's lists get (size limits, contiguity, protected
        // heaps), in the user's order.
        let candidates =
            heapcore::solve_explicit(&entries, &constraints(&usage, size, devices), inventory);
        let sources = candidates.sources();
        let skipped = candidates
            .entries
            .iter()
            .filter_map(|c| match &c.verdict {
                // A heap this machine lacks: the inventory's message lists the heaps it has.
                heapcore::Verdict::Out(_) if c.source.is_none() => {
                    Some(match inventory.find(&c.name) {
                        Err(e) => format!("{}: {e}", c.name),
                        Ok(_) => format!("{}: not usable here", c.name),
                    })
                }
                heapcore::Verdict::Out(why) => Some(format!("{}: {why}", c.name)),
                heapcore::Verdict::In(_) => None,
            })
            .collect::<Vec<_>>();
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

    /// What heapcore's policy and solver give for `usage` and `size` bytes on this machine,
    /// for buffers that pass through `devices`; an error (with the solver's explanation) when
    /// nothing can serve.
    pub fn for_usage(usage: &Usage, size: u64, devices: &[DeviceReport]) -> Result<Self, Error> {
        let candidates = registry().candidates(&constraints(usage, size, devices));
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
            usage: usage.clone(),
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
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Whether the sources came from an explicit `heap` list (not from the usage).
    pub fn is_explicit(&self) -> bool {
        self.explicit
    }

    /// Whether any source gives dma-bufs (all but memfd do).
    pub fn has_dmabuf_source(&self) -> bool {
        self.sources.iter().any(|s| *s != Source::Memfd)
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
            format!("usage={} ({self})", self.usage)
        }
    }

    /// Allocates at least `size` bytes from the first source that can give them.
    ///
    /// `name` labels the buffer in `/proc/<pid>/fdinfo` (dma-bufs) or `/proc/<pid>/fd` (memfd).
    pub fn allocate(&self, size: u64, name: &str) -> Result<HeapBuffer, Error> {
        let buf = registry()
            .allocator()
            .allocate_first(&self.sources, size, &buffer_name(name))?;
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
        qos: DmaHeapQos,
        prewarm: u32,
    ) -> Result<heapcore::Pool, Error> {
        let min = if qos == DmaHeapQos::Realtime {
            prewarm as usize
        } else {
            0
        };
        let config = heapcore::PoolConfig::new(buffer_name(name), self.sources.clone(), size)
            .qos(qos.into())
            .min_buffers(min);
        Ok(registry().private_pool(config)?)
    }

    /// A buffer from `pool` (made by [`HeapChoice::pool`]).
    ///
    /// The GStreamer pool in front keeps its own free buffers, so one it lets go of (a
    /// background pool trimming, any pool deactivating) is freed for real; only a realtime
    /// heapcore pool takes it back, as a spare kept ready off the streaming thread.
    pub fn acquire(pool: &heapcore::Pool) -> Result<HeapBuffer, Error> {
        let back_to_pool = pool.config().qos == heapcore::QosClass::Realtime;
        Ok(HeapBuffer::new(Owned::Pooled {
            buf: pool.try_acquire()?,
            back_to_pool,
        }))
    }
}

/// A buffer name the kernel accepts: at most 31 bytes, no control characters.
fn buffer_name(name: &str) -> String {
    heapcore::fit_buffer_name(name, "")
}

/// Who owns a buffer's fd: the buffer itself (closed on drop) or a heapcore pool (returned to
/// it on drop, still mapped and named, or taken out of it and closed).
#[derive(Debug)]
enum Owned {
    Plain(DmaBuf),
    Pooled {
        buf: heapcore::PooledBuf,
        back_to_pool: bool,
    },
}

impl std::ops::Deref for Owned {
    type Target = DmaBuf;
    fn deref(&self) -> &DmaBuf {
        match self {
            Self::Plain(buf) => buf,
            Self::Pooled { buf, .. } => buf,
        }
    }
}

/// The owner of one allocated buffer. The GStreamer memory that wraps its fd keeps it alive and
/// drops it (closing the fd, or returning it to its heapcore pool) when the memory is freed.
#[derive(Debug)]
pub struct HeapBuffer {
    /// Always `Some` until dropped.
    buf: Option<Owned>,
    contiguous: bool,
    /// Statistics that count this buffer as held until it is dropped.
    stats: OnceLock<Arc<Stats>>,
}

impl HeapBuffer {
    fn new(buf: Owned) -> Self {
        let buf = Some(buf);
        let contiguous = match buf.as_deref().map(DmaBuf::origin) {
            Some(Origin::Heap(name)) => registry()
                .allocator()
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

    fn owned(&self) -> &Owned {
        self.buf
            .as_ref()
            .expect("a heap buffer holds its buffer until dropped")
    }

    /// The source it came from (to check it against a heap choice).
    pub fn source(&self) -> Option<Source> {
        match self.origin() {
            Origin::Heap(name) => Some(Source::Heap(name.clone())),
            Origin::Udmabuf => Some(Source::Udmabuf),
            Origin::Memfd => Some(Source::Memfd),
            Origin::Imported { .. } => None,
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
        self.owned().len()
    }

    /// Where it came from (`heap system`, `udmabuf`, `memfd`).
    pub fn origin(&self) -> &Origin {
        self.owned().origin()
    }

    /// Whether devices can import it (false only for the memfd fallback).
    pub fn is_dmabuf(&self) -> bool {
        self.owned().is_dmabuf()
    }

    /// Zeroes `range` of the buffer (prefix or padding GStreamer asked to be zeroed), with
    /// CPU access bracketed as for any write.
    pub(crate) fn zero(&mut self, range: std::ops::Range<usize>) -> Result<(), Error> {
        let mut cpu = match self.buf.as_mut() {
            Some(Owned::Plain(buf)) => buf.write()?,
            Some(Owned::Pooled { buf, .. }) => buf.write()?,
            None => return Ok(()),
        };
        if let Some(bytes) = cpu.get_mut(range) {
            bytes.fill(0);
        }
        Ok(cpu.finish()?)
    }

    /// The fence of every device still using the buffer, if one has not signalled (see
    /// [`heapcore::DmaBuf::busy`]): `None` for idle buffers, memfds, and kernels that cannot
    /// say.
    pub(crate) fn busy(&self) -> Result<Option<heapcore::SyncFile>, heapcore::Error> {
        self.owned().busy()
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
        if let Some(Owned::Pooled {
            buf,
            back_to_pool: false,
        }) = self.buf.take()
        {
            drop(buf.detach());
        }
    }
}

impl AsRawFd for HeapBuffer {
    fn as_raw_fd(&self) -> RawFd {
        self.owned().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malicious_names_are_refused_before_anything_is_opened() {
        for bad in ["../../dev/mem", "/dev/mem", "a/b", ".."] {
            let err = HeapChoice::resolve(bad, Usage::GENERIC, 0).unwrap_err();
            assert!(
                err.to_string().contains("is not a valid heap name"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn an_unknown_heap_alone_is_an_error_that_lists_what_exists() {
        let err = HeapChoice::resolve("no-such-heap", Usage::GENERIC, 0).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no-such-heap"), "{msg}");
        assert!(msg.contains("no DMA-BUF heap named"), "{msg}");
    }

    #[test]
    fn an_unknown_heap_with_a_usable_fallback_is_skipped() {
        let choice = HeapChoice::resolve("no-such-heap,memfd", Usage::GENERIC, 0).unwrap();
        assert_eq!(choice.sources(), [Source::Memfd]);
        assert_eq!(choice.skipped().len(), 1);
    }

    #[test]
    fn every_usage_resolves_through_the_policy_and_dmabuf_only_drops_memfd() {
        for usage in [
            Usage::GENERIC,
            Usage::SCANOUT,
            Usage::VIDEO_DECODE,
            Usage::VIDEO_ENCODE,
            Usage::CAMERA,
            Usage::ANIMATION,
            Usage::SCREENCAST,
            Usage::RENDER,
            // Not in the built-in policy: a file may add it; here it falls back to generic.
            "display",
        ] {
            // The built-in policy ends every list with memfd, which works everywhere (unless a
            // policy file on this machine says otherwise).
            let choice = HeapChoice::resolve("", usage, 1 << 20).unwrap();
            assert_eq!(choice.usage().as_str(), usage);
            assert!(!choice.sources().is_empty());
            match choice.dmabuf_only() {
                Ok(c) => assert!(!c.sources().contains(&Source::Memfd)),
                Err(e) => {
                    assert!(!choice.has_dmabuf_source());
                    assert!(e.to_string().contains("memory:DMABuf"), "{e}");
                }
            }
        }
    }

    #[test]
    fn bad_usage_names_are_refused_with_the_rule() {
        for bad in ["Scanout", "video decode", "", "../x"] {
            let err = HeapChoice::resolve("", bad, 0).unwrap_err().to_string();
            assert!(err.contains("is not a usage name"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn buffer_names_fit_the_kernel_limit() {
        assert_eq!(buffer_name("gst:a\nb"), "gst:ab");
        assert_eq!(buffer_name(&"x".repeat(40)).len(), 31);
    }
}
