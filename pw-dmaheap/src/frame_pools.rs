//! Where a producer's buffers come from: [`FramePools`] turns a format's constraints into the
//! ordered sources to try and hands out buffers from a heapcore pool per negotiated format.
//!
//! Sources come from heapcore's usage policy and constraint solver (usage `screencast` unless
//! told otherwise); an explicit heap list replaces the policy's and is judged by the same
//! solver ([`heapcore::solve_explicit`]). Buffers come from a heapcore private pool per
//! negotiated format, under the registry's global budget and memory-pressure watch. The pools
//! only hand out memory no consumer has seen: the producer frees (detaches) every buffer whose
//! fd went to PipeWire instead of returning it, so only buffers that never left the process
//! (the probe taken when a format is fixed) are recycled.

use std::sync::Arc;

use heapcore::device::DeviceReport;
use heapcore::{
    Allocator, Candidates, Constraints, CpuAccess, Origin, Policy, Pool, PoolConfig, PoolRegistry,
    PooledBuf, Source, Usage,
};

use crate::config::ProducerConfig;
use crate::constraints::FrameConstraints;
use crate::data_types::DataKind;
use crate::error::{DmabufUnavailable, NegotiationError, Result};

/// The pool serving one kind of buffer for one negotiated format.
#[derive(Debug)]
struct FormatPool {
    kind: DataKind,
    size: u64,
    contiguous: bool,
    pool: Pool,
}

/// A producer's buffer source: the heap choice for its usage and constraints, and the pools
/// of the current format (at most one per data kind).
#[derive(Debug)]
pub(crate) struct FramePools {
    registry: PoolRegistry,
    alloc: Arc<Allocator>,
    policy: Policy,
    usage: Usage,
    explicit: Option<Vec<Source>>,
    contiguous: bool,
    /// What the devices the consumers named take (PipeWire 1.6's device ids): a source one
    /// of them refused is ruled out.
    devices: Vec<DeviceReport>,
    /// Names the pools, so fdinfo says which stream a buffer serves.
    pool_name: String,
    pools: Vec<FormatPool>,
    /// Buffers handed out so far, and how many of them were recycled (never-shared buffers
    /// that came back) rather than allocated.
    handed_out: u64,
    recycled: u64,
}

impl FramePools {
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
            devices: Vec::new(),
            pool_name: pool_name(&config.usage),
            pools: Vec::new(),
            handed_out: 0,
            recycled: 0,
        }
    }

    /// The allocator the pools and the device probes use.
    pub(crate) fn allocator(&self) -> &Allocator {
        &self.alloc
    }

    /// The devices the buffers will pass through, from now on: the next heap choice (the next
    /// format's pools) rules out what one of them refused.
    pub(crate) fn set_devices(&mut self, devices: Vec<DeviceReport>) {
        self.devices = devices;
    }

    /// The dma-buf sources that may serve `size`-byte, `contiguous` buffers the CPU writes,
    /// in the order to try them: the policy's list for the usage, or the explicit list, as
    /// heapcore's solver judges it for these constraints (the reasons go to the debug log).
    pub(crate) fn dmabuf_sources(&self, size: u64, contiguous: bool) -> Vec<Source> {
        let candidates = self.solve(size, contiguous);
        log::debug!("heap choice: {candidates}");
        candidates.sources()
    }

    /// Why the dma-buf sources for `size`-byte buffers are what they are: the solver's
    /// `dmaheap explain` text, for the policy's list or the explicit one.
    pub(crate) fn explain(&self, size: u64) -> String {
        self.solve(size, self.contiguous).to_string()
    }

    /// The candidates for dma-bufs of `size` bytes that the CPU writes.
    fn solve(&self, size: u64, contiguous: bool) -> Candidates {
        let constraints = Constraints::new(size)
            .usage(self.usage.clone())
            .contiguous(contiguous)
            .cpu_access(CpuAccess::Write)
            .require_dmabuf(true)
            .devices(self.devices.clone());
        let inventory = self.alloc.inventory();
        match &self.explicit {
            Some(list) => heapcore::solve_explicit(list, &constraints, inventory),
            None => heapcore::solve(&self.policy, &constraints, inventory),
        }
    }

    /// Whether a dma-buf can be had here at all: allocates (and frees) one page from the
    /// sources in order. This decides whether DmaBuf formats are offered; the error says
    /// why not.
    pub(crate) fn probe_dmabuf(&self) -> std::result::Result<Origin, DmabufUnavailable> {
        let page = heapcore::sysinfo::page_size();
        let sources = self.dmabuf_sources(page, self.contiguous);
        if sources.is_empty() {
            return Err(if self.contiguous {
                DmabufUnavailable::NoContiguousHeap
            } else {
                DmabufUnavailable::NoSource
            });
        }
        match self.alloc.allocate_first(&sources, page, "") {
            Ok(buf) if buf.is_dmabuf() => Ok(buf.origin().clone()),
            Ok(buf) => Err(DmabufUnavailable::NotDmabuf(buf.origin().clone())),
            Err(e) => Err(DmabufUnavailable::Allocation(Arc::new(e))),
        }
    }

    /// How many buffers [`FramePools::allocate`] has handed out, and how many of those came
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
                    return Err(NegotiationError::NoDmabufSource.into());
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

impl Drop for FramePools {
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
    use heapcore::format::VideoFormat;

    use super::*;

    fn registry() -> PoolRegistry {
        PoolRegistry::new(Arc::new(Allocator::new()), Policy::default(), None)
    }

    #[test]
    fn memfd_buffers_are_mapped_and_sized() {
        let cfg = ProducerConfig::new(64, 48);
        let mut pools = FramePools::new(registry(), &cfg);
        let c = FrameConstraints::for_frame(VideoFormat::Bgrx, 64, 48, cfg.frame_rules()).unwrap();
        let buf = pools.allocate(DataKind::MemFd, &c).unwrap();
        assert!(buf.is_mapped());
        assert!(buf.len() >= 64 * 48 * 4);
        assert_eq!(buf.origin(), &Origin::Memfd);
        assert_eq!(buf.name(), Some("pw-screencast#1"));
    }

    #[test]
    fn buffers_of_the_same_format_are_recycled() {
        let cfg = ProducerConfig::new(64, 48);
        let mut pools = FramePools::new(registry(), &cfg);
        let small =
            FrameConstraints::for_frame(VideoFormat::Bgrx, 64, 48, cfg.frame_rules()).unwrap();
        let first: Vec<_> = (0..3)
            .map(|_| pools.allocate(DataKind::MemFd, &small).unwrap())
            .collect();
        let ino = |b: &PooledBuf| rustix::fs::fstat(&**b).unwrap().st_ino;
        let inodes: Vec<_> = first.iter().map(ino).collect();
        drop(first); // never given out (as the probe): they go back to the pool
        let again: Vec<_> = (0..3)
            .map(|_| pools.allocate(DataKind::MemFd, &small).unwrap())
            .collect();
        assert!(again.iter().all(|b| inodes.contains(&ino(b))));
        assert_eq!(pools.handed_out(), (6, 3));
        // Another size: a new pool; the old one is shut down and frees what comes back.
        let big =
            FrameConstraints::for_frame(VideoFormat::Bgrx, 128, 96, cfg.frame_rules()).unwrap();
        let resized = pools.allocate(DataKind::MemFd, &big).unwrap();
        assert!(resized.len() >= 128 * 96 * 4);
        drop(again);
        assert_eq!(pools.handed_out(), (7, 3));
        assert_eq!(pools.pools.len(), 1);
    }

    #[test]
    fn memfd_is_never_a_dmabuf_source() {
        let pools = FramePools::new(registry(), &ProducerConfig::default());
        assert!(!pools.dmabuf_sources(4096, false).contains(&Source::Memfd));
        assert!(!pools.dmabuf_sources(4096, true).contains(&Source::Udmabuf));
        // An explicit list goes through the same solver: memfd is out there too.
        let explicit = ProducerConfig::default().with_heaps(vec![Source::Memfd, Source::Udmabuf]);
        let pools = FramePools::new(registry(), &explicit);
        assert!(!pools.dmabuf_sources(4096, false).contains(&Source::Memfd));
        assert!(!pools.dmabuf_sources(4096, true).contains(&Source::Udmabuf));
        let why = pools.explain(4096);
        assert!(why.contains("memfd"), "{why}");
    }
}
