//! The registry: one pool per (candidate heaps, size class, QoS class), a global budget over
//! all of them, the pressure watch that trims them, and the statistics `dmaheap stats` reads
//! (written by `publish`).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::publish::{self, process_start_time};
use super::{Budget, Pool, PoolConfig, PoolStats, QosClass, WeakPool};
use crate::allocator::Allocator;
use crate::constraints::Constraints;
use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::pressure::{PressureConfig, PressureLevel, PressureMonitor, PressureWatch};
use crate::size::ByteSize;
use crate::solver::{Candidates, solve};
use crate::source::Source;
use crate::sysinfo::page_size;

/// Rounds a size up to its class, so that requests of nearly the same size share a pool:
/// eight classes per power of two (at most 12.5% slack), whole pages.
pub fn size_class(size: u64) -> u64 {
    let page = page_size();
    let size = size.max(page);
    let shift = (63 - size.leading_zeros()).saturating_sub(3);
    let step = (1u64 << shift).max(page);
    size.checked_next_multiple_of(step).unwrap_or(size)
}

/// What identifies a shared pool in the registry: every field of its configuration, so a
/// caller never gets a pool made for another configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// [`PoolConfig::sources`].
    pub sources: Vec<Source>,
    /// [`PoolConfig::buffer_size`] rounded up to its [`size_class`].
    pub size_class: u64,
    /// [`PoolConfig::qos`].
    pub qos: QosClass,
    /// [`PoolConfig::name`].
    pub name: String,
    /// [`PoolConfig::min_buffers`].
    pub min_buffers: usize,
    /// [`PoolConfig::max_buffers`].
    pub max_buffers: usize,
    /// [`PoolConfig::budget`].
    pub budget: Option<u64>,
}

impl PoolKey {
    fn of(config: &PoolConfig) -> Self {
        // Destructured so that a field added to PoolConfig must be considered here.
        let PoolConfig {
            name,
            sources,
            buffer_size,
            qos,
            min_buffers,
            max_buffers,
            budget,
        } = config;
        Self {
            sources: sources.clone(),
            size_class: size_class(*buffer_size),
            qos: *qos,
            name: name.clone(),
            min_buffers: *min_buffers,
            max_buffers: *max_buffers,
            budget: *budget,
        }
    }
}

impl fmt::Display for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self
            .sources
            .first()
            .map_or("-".to_owned(), ToString::to_string);
        write!(f, "{first}/{}/{}", ByteSize(self.size_class), self.qos)
    }
}

/// Every pool of a process (or of a part of it), as `dmaheap stats` shows them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistryStats {
    /// The process.
    pub pid: u32,
    /// When the process started (field 22 of `/proc/<pid>/stat`, clock ticks since boot):
    /// with the pid, it tells a live publisher from a file left by a dead one whose pid was
    /// reused.
    #[serde(default)]
    pub start_time: Option<u64>,
    /// The program's name (its `argv[0]`).
    pub program: String,
    /// The memory pressure level the pools were last told (`normal`, `elevated`, `critical`).
    pub pressure: String,
    /// How pressure is watched (PSI triggers on a file, the `MemAvailable` timer, or not).
    pub pressure_source: String,
    /// The cap on bytes all pools hold together, if there is one.
    pub global_budget: Option<u64>,
    /// Where the global budget comes from (`DMAHEAP_BUDGET`, a quarter of the cgroup's
    /// limit or of RAM, the program).
    #[serde(default)]
    pub budget_source: String,
    /// Bytes all pools hold together.
    pub global_used: u64,
    /// Every open pool, by name.
    pub pools: Vec<PoolStats>,
}

struct Inner {
    alloc: Arc<Allocator>,
    policy: RwLock<Policy>,
    /// Shared pools, held weakly: a pool closes when its last user drops it.
    pools: Mutex<HashMap<PoolKey, WeakPool>>,
    /// Pools that belong to one user (`private_pool`), watched while they are open.
    private: Mutex<Vec<WeakPool>>,
    budget: Option<Arc<Budget>>,
    budget_source: String,
    level: AtomicU8,
    monitor: Mutex<Option<PressureMonitor>>,
    /// Set by `pin_pressure`: the level is held, not watched.
    pinned: AtomicBool,
    publishing: AtomicBool,
}

/// Pools shared by everything in a process that allocates for similar needs.
///
/// Not for use across `fork()` without `exec`: the child inherits the pools' dma-buf fds and
/// mappings, so parent and child would hand out the same buffers, and none of the registry's
/// threads (pressure, statistics, refill). [`PoolRegistry::process`] gives a forked child a
/// registry of its own; registries and pools made before the fork must not be used there.
#[derive(Clone)]
pub struct PoolRegistry {
    inner: Arc<Inner>,
}

impl fmt::Debug for PoolRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolRegistry")
            .field("pressure", &self.pressure())
            .field("global_budget", &self.global_budget())
            .finish_non_exhaustive()
    }
}

impl PoolRegistry {
    /// A registry over `alloc` with `policy`, and optionally a cap on bytes all its pools
    /// hold together.
    pub fn new(alloc: Arc<Allocator>, policy: Policy, global_budget: Option<u64>) -> Self {
        let source = match global_budget {
            Some(_) => "set by the program",
            None => "none",
        };
        Self::with_budget_source(alloc, policy, global_budget, source.into())
    }

    fn with_budget_source(
        alloc: Arc<Allocator>,
        policy: Policy,
        global_budget: Option<u64>,
        budget_source: String,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                alloc,
                policy: RwLock::new(policy),
                pools: Mutex::default(),
                private: Mutex::default(),
                budget: global_budget.map(|cap| Arc::new(Budget::new(cap))),
                budget_source,
                level: AtomicU8::new(PressureLevel::Normal as u8),
                monitor: Mutex::default(),
                pinned: AtomicBool::new(false),
                publishing: AtomicBool::new(false),
            }),
        }
    }

    /// The registry shared by everything in this process (GStreamer elements, PipeWire
    /// streams): made on first use with this machine's heaps and the loaded policy, watching
    /// memory pressure (of the process's cgroup where it can; `DMAHEAP_PRESSURE=normal`,
    /// `elevated` or `critical` pins the level instead). Its global budget is
    /// `DMAHEAP_BUDGET` (e.g. `512MiB`), else a quarter of RAM or of the memory cgroup's limit,
    /// whichever is lower; with `DMAHEAP_STATS` set it publishes statistics for `dmaheap stats`.
    ///
    /// A child forked from a process that used it (without `exec`) gets a registry of its own
    /// on its first call here, never the inherited one: that one's pools hold the same dma-bufs
    /// as the parent's, and its refill, pressure and statistics threads did not survive the
    /// fork. Pools and registries a child inherited otherwise must not be used (see the crate
    /// documentation on `fork`).
    pub fn process() -> Self {
        static PROCESS: OnceLock<(u32, PoolRegistry)> = OnceLock::new();
        // Only forked children come here: the parent never takes this lock.
        static FORKED: Mutex<Option<(u32, PoolRegistry)>> = Mutex::new(None);
        let pid = std::process::id();
        let (owner, registry) = PROCESS.get_or_init(|| (pid, Self::make_process()));
        if *owner == pid {
            return registry.clone();
        }
        let mut forked = FORKED.lock().unwrap_or_else(|p| p.into_inner());
        match forked.as_ref() {
            Some((owner, registry)) if *owner == pid => registry.clone(),
            _ => {
                log::debug!("process {pid} was forked: it gets a pool registry of its own");
                let registry = Self::make_process();
                *forked = Some((pid, registry.clone()));
                registry
            }
        }
    }

    fn make_process() -> Self {
        let (policy, _) = Policy::load();
        let (budget, source) = std::env::var("DMAHEAP_BUDGET")
            .ok()
            .and_then(|b| match b.parse::<ByteSize>() {
                Ok(b) => Some((b.0, "DMAHEAP_BUDGET".to_owned())),
                Err(e) => {
                    log::warn!("DMAHEAP_BUDGET ignored: {e}");
                    None
                }
            })
            .unwrap_or_else(|| default_budget(crate::sysinfo::memory_limits()));
        let registry = PoolRegistry::with_budget_source(
            Arc::new(Allocator::new()),
            policy,
            Some(budget),
            source,
        );
        let pinned = match std::env::var("DMAHEAP_PRESSURE").ok().as_deref() {
            None | Some("" | "watch") => None,
            Some(level) => level
                .parse::<PressureLevel>()
                .inspect_err(|e| log::warn!("DMAHEAP_PRESSURE ignored: {e}"))
                .ok(),
        };
        match pinned {
            Some(level) => registry.pin_pressure(level),
            None => {
                if let Err(e) = registry.watch_pressure(PressureConfig::default()) {
                    log::warn!("memory pressure is not watched: {e}");
                }
            }
        }
        if std::env::var_os("DMAHEAP_STATS").is_some() {
            match registry.publish_stats(Duration::from_secs(1)) {
                Ok(path) => log::info!("publishing pool statistics to {}", path.display()),
                Err(e) => log::warn!("cannot publish pool statistics: {e}"),
            }
        }
        registry
    }

    /// Whether both handles are the same registry.
    pub fn ptr_eq(&self, other: &PoolRegistry) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The allocator pools allocate with.
    pub fn allocator(&self) -> &Arc<Allocator> {
        &self.inner.alloc
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.inner
            .policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the policy (pools already made keep their sources).
    pub fn set_policy(&self, policy: Policy) {
        *self.inner.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    /// The ordered candidates for `constraints`, with the reason for each.
    pub fn candidates(&self, constraints: &Constraints) -> Candidates {
        solve(
            &self.inner.policy.read().unwrap_or_else(|p| p.into_inner()),
            constraints,
            self.inner.alloc.inventory(),
        )
    }

    /// The pool for buffers meeting `constraints`: the policy picks the heaps and the QoS class
    /// (and prewarm count for realtime usages); sizes share a pool by size class.
    pub fn pool_for(&self, constraints: &Constraints) -> Result<Pool> {
        let candidates = self.candidates(constraints);
        let sources = candidates.sources();
        if sources.is_empty() {
            return Err(Error::NoCandidate {
                explanation: candidates.to_string(),
            });
        }
        let (qos, prewarm) = {
            let policy = self.inner.policy.read().unwrap_or_else(|p| p.into_inner());
            let (entry, _) = policy.entry(&constraints.usage);
            (entry.qos, entry.prewarm)
        };
        let class = size_class(constraints.size);
        let name = format!("{}-{}", constraints.usage, ByteSize(class)).replace(' ', "");
        let min_buffers = if qos == QosClass::Realtime {
            prewarm
        } else {
            0
        };
        self.pool_with(
            PoolConfig::new(name, sources, class)
                .qos(qos)
                .min_buffers(min_buffers),
        )
    }

    /// The pool for an explicit configuration, shared with every caller asking for the same
    /// configuration (its size rounded up to the size class) while one of them holds it.
    ///
    /// The registry does not keep shared pools alive: when the last handle is dropped the
    /// pool closes and frees its buffers, and the next call makes a new one. A new pool is made
    /// (and prewarmed) without holding the registry's lock; if another thread made the same
    /// pool meanwhile, that one is returned and ours is freed.
    pub fn pool_with(&self, config: PoolConfig) -> Result<Pool> {
        let key = PoolKey::of(&config);
        if let Some(pool) = self.inner.shared(&key) {
            return Ok(pool);
        }
        let config = PoolConfig {
            buffer_size: key.size_class,
            ..config
        };
        let pool = self.new_pool(config)?;
        let mut pools = self.inner.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(theirs) = pools.get(&key).and_then(WeakPool::upgrade) {
            drop(pools);
            // Ours closes here, outside the lock.
            drop(pool);
            return Ok(theirs);
        }
        pools.retain(|_, w| w.upgrade().is_some());
        log::debug!("new pool {key}");
        pools.insert(key, pool.downgrade());
        Ok(pool)
    }

    /// A pool of its own for one user (a GStreamer buffer pool, a PipeWire stream): buffers of
    /// exactly `config.buffer_size`, not shared with anyone, but under the registry's global
    /// budget, told the memory pressure, and listed in its statistics while it is open. It
    /// closes when its last handle is dropped.
    pub fn private_pool(&self, config: PoolConfig) -> Result<Pool> {
        let pool = self.new_pool(config)?;
        let mut private = self.inner.private.lock().unwrap_or_else(|p| p.into_inner());
        private.retain(|w| w.upgrade().is_some());
        private.push(pool.downgrade());
        Ok(pool)
    }

    /// A pool on this registry's allocator, under its global budget, told the pressure now.
    fn new_pool(&self, config: PoolConfig) -> Result<Pool> {
        let pool = Pool::with_global_budget(
            Arc::clone(&self.inner.alloc),
            config,
            self.inner.budget.clone(),
        )?;
        pool.set_pressure(self.pressure());
        Ok(pool)
    }

    /// The bytes all pools hold together and the global cap, if there is one.
    pub fn global_budget(&self) -> Option<(u64, u64)> {
        self.inner.budget.as_ref().map(|b| (b.used(), b.cap()))
    }

    /// The pressure level the pools were last told. Inlined: lean GStreamer pools ask it on
    /// every release.
    #[inline]
    pub fn pressure(&self) -> PressureLevel {
        PressureLevel::from_u8(self.inner.level.load(Ordering::Relaxed))
    }

    /// Tells every pool the pressure level: background pools first, realtime last.
    pub fn set_pressure(&self, level: PressureLevel) {
        self.inner.set_pressure(level)
    }

    /// Starts watching memory pressure (PSI triggers, else a timer) and trimming on it.
    pub fn watch_pressure(&self, config: PressureConfig) -> std::io::Result<PressureWatch> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let monitor = PressureMonitor::start(config, move |level| {
            if let Some(inner) = weak.upgrade() {
                inner.set_pressure(level);
            }
        })?;
        let watch = monitor.watch().clone();
        self.inner.pinned.store(false, Ordering::Relaxed);
        *self.inner.monitor.lock().unwrap_or_else(|p| p.into_inner()) = Some(monitor);
        Ok(watch)
    }

    /// Stops watching memory pressure and holds the pools at `level` from now on: for a
    /// device whose memory is sized by hand, and for tests that measure steady state on a
    /// machine whose other work stalls on memory (a parallel build would otherwise make
    /// normal pools give buffers back mid-run).
    pub fn pin_pressure(&self, level: PressureLevel) {
        let monitor = self
            .inner
            .monitor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // Joined outside the lock: its last callback may be setting the level right now.
        drop(monitor);
        self.inner.pinned.store(true, Ordering::Relaxed);
        self.inner.set_pressure(level);
    }

    /// Statistics of every pool.
    pub fn stats(&self) -> RegistryStats {
        let mut stats: Vec<PoolStats> = self.inner.all_pools().iter().map(Pool::stats).collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        let watch = match self
            .inner
            .monitor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(m) => match m.watch() {
                PressureWatch::PsiTriggers(p) => format!("PSI triggers on {}", p.display()),
                PressureWatch::Timer { reason } => format!("MemAvailable timer ({reason})"),
            },
            None if self.inner.pinned.load(Ordering::Relaxed) => "pinned".to_owned(),
            None => "not watched".to_owned(),
        };
        RegistryStats {
            pid: std::process::id(),
            start_time: process_start_time(std::process::id()),
            program: std::env::args().next().unwrap_or_default(),
            pressure: format!("{:?}", self.pressure()).to_lowercase(),
            pressure_source: watch,
            global_budget: self.inner.budget.as_ref().map(|b| b.cap()),
            budget_source: self.inner.budget_source.clone(),
            global_used: self.inner.budget.as_ref().map_or(0, |b| b.used()),
            pools: stats,
        }
    }

    /// Writes the statistics every `period` to `stats_dir()/stats-<pid>.json` (removed when
    /// the registry goes; `dmaheap stats` removes files whose process is gone), where
    /// `dmaheap stats` finds them. The directory is made private (0700) and refused if it is
    /// not this user's alone, so another user cannot plant links or fake statistics there.
    pub fn publish_stats(&self, period: Duration) -> std::io::Result<PathBuf> {
        let weak = Arc::downgrade(&self.inner);
        publish::start(period, &self.inner.publishing, move || {
            weak.upgrade().map(|inner| PoolRegistry { inner }.stats())
        })
    }
}

impl Inner {
    /// The shared pool for `key`, if someone still holds it.
    fn shared(&self, key: &PoolKey) -> Option<Pool> {
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .and_then(WeakPool::upgrade)
    }

    /// The shared and private pools still open.
    fn all_pools(&self) -> Vec<Pool> {
        let mut pools: Vec<Pool> = Vec::new();
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, w| match w.upgrade() {
                Some(pool) => {
                    pools.push(pool);
                    true
                }
                None => false,
            });
        let mut private = self.private.lock().unwrap_or_else(|p| p.into_inner());
        private.retain(|w| match w.upgrade() {
            Some(pool) => {
                pools.push(pool);
                true
            }
            None => false,
        });
        pools
    }

    fn set_pressure(&self, level: PressureLevel) {
        let mut pools = self.all_pools();
        pools.sort_by_key(|p| std::cmp::Reverse(p.config().qos));
        for pool in pools {
            pool.set_pressure(level);
        }
        // Published after the pools acted, so whoever sees the level sees its effect.
        self.level.store(level as u8, Ordering::Relaxed);
    }
}

/// A quarter of the memory this process may use (RAM, or its cgroup's limit where lower), and
/// where that comes from.
fn default_budget(limits: &crate::sysinfo::MemoryLimits) -> (u64, String) {
    (
        limits.usable() / 4,
        format!("a quarter of {}", limits.usable_source()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_pools_share_the_budget_and_pressure_but_not_buffers() {
        let registry =
            PoolRegistry::new(Arc::new(Allocator::new()), Policy::builtin(), Some(3 << 20));
        let config = |name: &str| {
            PoolConfig::new(name, vec![Source::Memfd], 1_000_000).qos(QosClass::Background)
        };
        let a = registry.private_pool(config("private-a")).unwrap();
        let b = registry.private_pool(config("private-b")).unwrap();
        assert_eq!(
            a.buffer_len(),
            1_003_520,
            "exact size, rounded to pages only"
        );
        let held: Vec<_> = (0..3).map(|_| a.try_acquire().unwrap()).collect();
        let err = b.try_acquire().unwrap_err().to_string();
        assert!(err.contains("global budget"), "{err}");
        assert_eq!(registry.stats().pools.len(), 2);
        drop(held);
        registry.set_pressure(PressureLevel::Elevated);
        assert_eq!(
            a.stats().buffers_free,
            0,
            "background private pools are trimmed"
        );
        drop(a);
        assert_eq!(
            registry.stats().pools.len(),
            1,
            "closed private pools leave the registry"
        );
    }

    fn memfd_config(name: &str) -> PoolConfig {
        PoolConfig::new(name, vec![Source::Memfd], 64 * 1024)
    }

    /// This process's fds that are memfds of pool `name` (each buffer is `dmaheap:name#N`).
    fn buffers_of(name: &str) -> usize {
        let marker = format!("dmaheap:{name}#");
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().contains(&marker))
            .count()
    }

    #[test]
    fn a_different_configuration_never_gets_a_cached_pool() {
        let registry = PoolRegistry::new(Arc::new(Allocator::new()), Policy::builtin(), None);
        let one = registry
            .pool_with(memfd_config("key-min").min_buffers(1))
            .unwrap();
        let two = registry
            .pool_with(memfd_config("key-min").min_buffers(2))
            .unwrap();
        assert!(!one.ptr_eq(&two));
        assert_eq!((one.buffers_free(), two.buffers_free()), (1, 2));
        assert_eq!(buffers_of("key-min"), 3);
        for other in [
            memfd_config("key-min").min_buffers(1).max_buffers(8),
            memfd_config("key-min").min_buffers(1).budget(1 << 20),
            memfd_config("key-other").min_buffers(1),
            memfd_config("key-min")
                .min_buffers(1)
                .qos(QosClass::Background),
        ] {
            assert!(
                !registry.pool_with(other.clone()).unwrap().ptr_eq(&one),
                "{other:?}"
            );
        }
        let again = registry
            .pool_with(memfd_config("key-min").min_buffers(1))
            .unwrap();
        assert!(again.ptr_eq(&one));
    }

    #[test]
    fn a_shared_pool_closes_when_its_last_user_drops_it() {
        let registry = PoolRegistry::new(Arc::new(Allocator::new()), Policy::builtin(), None);
        let pool = registry
            .pool_with(memfd_config("weak-shared").min_buffers(3))
            .unwrap();
        let user2 = pool.clone();
        assert_eq!(buffers_of("weak-shared"), 3);
        drop(pool);
        assert_eq!(buffers_of("weak-shared"), 3, "one user still holds it");
        drop(user2);
        assert_eq!(
            buffers_of("weak-shared"),
            0,
            "the buffers' fds must be closed"
        );
        assert!(
            registry
                .stats()
                .pools
                .iter()
                .all(|p| p.name != "weak-shared")
        );
        // Asking again makes a new pool.
        let again = registry
            .pool_with(memfd_config("weak-shared").min_buffers(3))
            .unwrap();
        assert_eq!(again.buffers_free(), 3);
    }

    #[test]
    fn two_threads_asking_at_once_get_one_pool() {
        let registry = PoolRegistry::new(Arc::new(Allocator::new()), Policy::builtin(), None);
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (registry, barrier) = (registry.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    registry
                        .pool_with(memfd_config("race").min_buffers(2))
                        .unwrap()
                })
            })
            .collect();
        let pools: Vec<Pool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(pools[0].ptr_eq(&pools[1]));
        // A pool the losing thread may have made meanwhile is closed.
        assert_eq!(buffers_of("race"), 2);
    }

    #[test]
    fn the_default_budget_is_a_quarter_of_the_cgroup_limit_where_lower() {
        use crate::sysinfo::{CgroupVersion, MemoryLimits};
        let mut limits = MemoryLimits {
            mem_total: 8 << 30,
            cgroup: Some((CgroupVersion::V2, "/sys/fs/cgroup/app".into())),
            cgroup_limit: Some((1 << 30, "/sys/fs/cgroup/app/memory.max".into())),
            psi: "/sys/fs/cgroup/app/memory.pressure".into(),
        };
        let (budget, source) = default_budget(&limits);
        assert_eq!(budget, 256 << 20);
        assert_eq!(
            source,
            "a quarter of 1.0 GiB in /sys/fs/cgroup/app/memory.max"
        );
        limits.cgroup_limit = None;
        assert_eq!(
            default_budget(&limits),
            (2 << 30, "a quarter of MemTotal 8.0 GiB".to_owned())
        );
    }

    #[test]
    fn size_classes_waste_at_most_an_eighth() {
        let page = page_size();
        assert_eq!(size_class(1), page);
        for size in [4096u64, 5000, 1 << 20, 3_110_400, 12_441_600, (1 << 30) + 1] {
            let c = size_class(size);
            assert!(c >= size && c % page == 0, "{size} -> {c}");
            assert!(
                (c - size) as f64 <= size as f64 / 8.0 + page as f64,
                "{size} -> {c}"
            );
        }
        assert_eq!(size_class(3_110_400), size_class(3_110_400 - 1000));
    }
}
