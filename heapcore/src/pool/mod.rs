//! Pools of ready buffers with priority/QoS classes.
//!
//! A pool keeps buffers allocated, mapped, faulted in and named, so acquiring one takes a
//! short lock and a `Vec::pop`. A `realtime` pool is filled to its `min_buffers` before it is
//! needed and refilled by a low-priority thread as buffers go out, so an animation frame never
//! waits for the kernel to zero (or reclaim) pages. Every pool is capped (buffer count, its own
//! byte budget, the registry's global budget) and gives memory back under pressure:
//! `background` pools first, then `normal` ones, down to their `min_buffers`; a realtime
//! pool pauses its refill while pressure is critical and resumes when it eases.
//!
//! This file (about 700 lines) is the pool's state machine (free list, reservations, prewarm,
//! trimming), kept whole so that its invariants are read in one place. What a
//! pool is asked to be (`config`), its refill thread (`refill`), the buffer it lends
//! (`pooled`), budgets, statistics, the registry and the publishing of its statistics have
//! files of their own.

mod budget;
mod busy;
mod config;
mod local;
mod pooled;
mod publish;
mod refill;
mod registry;
mod stats;

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError, Weak};
use std::time::{Duration, Instant};

pub use budget::Budget;
pub use config::{MAX_POOL_BUFFERS, PoolConfig, QosClass};
pub use pooled::PooledBuf;
pub use publish::{open_private_dir, process_start_time, stats_dir};
pub use registry::{PoolKey, PoolRegistry, RegistryStats, size_class};
use stats::{Counters, Timing};
pub use stats::{LATENCY_SAMPLE_EVERY, LatencySummary, PoolStats};

use crate::allocator::Allocator;
use crate::dmabuf::DmaBuf;
use crate::error::{Error, Result};
use crate::pressure::PressureLevel;
use crate::size::{ByteSize, page_aligned};

/// Why a pool may not grow.
enum Denied {
    ShutDown,
    Count(usize),
    Budget { cap: u64, held: u64 },
    Global { cap: u64, used: u64 },
}

/// A pool's buffers are boxed: the hot path moves them in and out of the free list, and a
/// pointer moves cheaper than the buffer's hundred bytes.
type Slot = Box<DmaBuf>;

/// The pool's state behind its lock. What every acquire and release touches comes first (and
/// the configuration and pressure level it reads are copied here), so that with the lock it
/// fits one cache line: a producer that sleeps between frames finds its caches cold, and each
/// line is a miss.
#[repr(C)]
struct State {
    free: Vec<Slot>,
    /// Acquires served from the free list (counted here: the acquire holds the lock anyway).
    hits: u64,
    /// Acquirers waiting for a buffer to come back: a release signals only when there are
    /// some (a condvar signal is a futex syscall even with nobody waiting).
    waiters: usize,
    /// `config.min_buffers`.
    min_buffers: usize,
    shutdown: bool,
    /// The refill thread sleeps and needs a signal to look again.
    refill_idle: bool,
    /// `config.qos`.
    qos: QosClass,
    /// The pressure level last set (as `Inner::pressure`, which the refill thread reads
    /// without the lock).
    level: PressureLevel,
    /// What the hot path compares, derived from the fields above whenever one of them
    /// changes (rarely) so that an acquire or a release compares one number with the free
    /// list's length instead of working it out each time.
    limits: Limits,
    /// Buffers alive or reserved: free, handed out, and being allocated.
    total: usize,
    /// Reservations whose allocation has not finished yet (counted in `total`, neither free
    /// nor out).
    allocating: usize,
    serial: u64,
    /// Returned buffers a device still uses (counted in `total`, neither free nor out).
    busy: busy::Busy,
}

/// The free-list lengths at which the hot path leaves it.
#[derive(Clone, Copy)]
struct Limits {
    /// A release finding this many free buffers frees its buffer instead: what the class
    /// keeps at the pressure level, 0 once shut down, `usize::MAX` when there is no cap.
    keep_free: usize,
    /// An acquire leaving fewer free buffers than this looks at waking the refill thread:
    /// half of `min_buffers` (a low watermark, so that a stream cycling a few buffers costs
    /// no wake-up per frame) while the thread sleeps, else 0.
    wake_refill_below: usize,
}

impl State {
    /// Sets `shutdown`, `refill_idle` or `level` through here, so `limits` follows.
    fn update(&mut self, change: impl FnOnce(&mut Self)) {
        change(self);
        self.limits = Limits {
            keep_free: if self.shutdown {
                0
            } else {
                self.qos
                    .keep_free(self.level, self.min_buffers)
                    .unwrap_or(usize::MAX)
            },
            wake_refill_below: if self.refill_idle {
                self.min_buffers.div_ceil(2)
            } else {
                0
            },
        };
    }
}

/// Starts what it holds on a cache line of its own.
#[repr(align(64))]
struct LineAligned<T>(T);

pub(crate) struct Inner {
    config: PoolConfig,
    len: u64,
    alloc: Arc<Allocator>,
    global: Option<Arc<Budget>>,
    state: LineAligned<Mutex<State>>,
    /// Signalled when a buffer is returned or capacity frees up.
    returned: Condvar,
    /// Wakes the refill thread.
    refill: Condvar,
    counters: Counters,
    pressure: AtomicU8,
    served_by: Mutex<Option<String>>,
}

/// A pool of buffers. Cheap to clone; the pool shuts down (freeing its free buffers, and each
/// handed-out buffer when it comes back) when the last clone is dropped or on
/// [`Pool::shutdown`].
///
/// Do not use a pool in a child forked (without `exec`) after the pool was made: the child
/// shares the parent's buffers (the same dma-buf fds and `MAP_SHARED` mappings), so both
/// would hand out, and write, the same buffer; a realtime pool's refill thread does not exist
/// in the child; and a lock another thread held at the fork stays locked there forever.
#[derive(Clone)]
pub struct Pool {
    handle: Arc<Handle>,
    /// `handle.inner`, one pointer fewer to follow on the hot path.
    inner: Arc<Inner>,
}

struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.shutdown();
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.handle.inner.config)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Creates a pool and allocates its `min_buffers` now; a realtime pool also starts its
    /// refill thread.
    pub fn new(alloc: Arc<Allocator>, config: PoolConfig) -> Result<Self> {
        Self::with_global_budget(alloc, config, None)
    }

    pub(crate) fn with_global_budget(
        alloc: Arc<Allocator>,
        config: PoolConfig,
        global: Option<Arc<Budget>>,
    ) -> Result<Self> {
        config.validate()?;
        let len = page_aligned(config.buffer_size)?;
        let inner = Arc::new(Inner {
            len,
            alloc,
            global,
            state: LineAligned(Mutex::new(State {
                free: Vec::with_capacity(config.min_buffers),
                hits: 0,
                waiters: 0,
                min_buffers: config.min_buffers,
                shutdown: false,
                refill_idle: false,
                qos: config.qos,
                level: PressureLevel::Normal,
                // As `update` derives them: no class caps its free list at the normal level,
                // and the refill thread has not gone to sleep yet.
                limits: Limits {
                    keep_free: usize::MAX,
                    wake_refill_below: 0,
                },
                total: 0,
                allocating: 0,
                serial: 0,
                busy: busy::Busy::default(),
            })),
            returned: Condvar::new(),
            refill: Condvar::new(),
            counters: Counters::default(),
            pressure: AtomicU8::new(PressureLevel::Normal as u8),
            served_by: Mutex::new(None),
            config,
        });
        let pool = Self {
            handle: Arc::new(Handle {
                inner: Arc::clone(&inner),
            }),
            inner: Arc::clone(&inner),
        };
        inner.prewarm()?;
        if inner.config.qos == QosClass::Realtime {
            refill::start(&inner)?;
        }
        Ok(pool)
    }

    #[inline]
    fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// A handle that does not keep the pool open.
    pub(crate) fn downgrade(&self) -> WeakPool {
        WeakPool(Arc::downgrade(&self.handle))
    }

    /// Whether both handles are the same pool.
    pub fn ptr_eq(&self, other: &Pool) -> bool {
        Arc::ptr_eq(&self.handle, &other.handle)
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.inner().config
    }

    /// The length of every buffer (page-aligned).
    pub fn buffer_len(&self) -> u64 {
        self.inner().len
    }

    /// A buffer now, or an error saying why none can be had (never waits).
    #[inline]
    pub fn try_acquire(&self) -> Result<PooledBuf> {
        self.inner().acquire(None)
    }

    /// A buffer, waiting up to `timeout` for one to come back when the pool may not grow.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<PooledBuf> {
        self.inner().acquire(Some(Instant::now() + timeout))
    }

    /// Frees free buffers beyond `keep_free`; returns how many were freed.
    pub fn trim(&self, keep_free: usize) -> usize {
        self.inner().trim(keep_free)
    }

    /// Tells the pool the memory pressure: it trims what its class gives up at that level; a
    /// realtime pool pauses refilling while pressure is critical and refills when it eases.
    pub fn set_pressure(&self, level: PressureLevel) {
        self.inner().set_pressure(level)
    }

    /// Buffers ready to hand out now (one lock; cheaper than [`Pool::stats`]).
    pub fn buffers_free(&self) -> usize {
        self.inner().lock().free.len()
    }

    /// Statistics now.
    pub fn stats(&self) -> PoolStats {
        self.inner().stats()
    }

    /// Frees the free buffers and makes every later acquire fail; buffers still out are freed
    /// when they come back.
    pub fn shutdown(&self) {
        self.inner().shutdown()
    }
}

impl Inner {
    #[inline]
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn level(&self) -> PressureLevel {
        PressureLevel::from_u8(self.pressure.load(Relaxed))
    }

    /// Checks every cap without reserving anything.
    fn check_headroom(&self, st: &State) -> Result<(), Denied> {
        if st.shutdown {
            return Err(Denied::ShutDown);
        }
        let c = &self.config;
        if c.max_buffers != 0 && st.total >= c.max_buffers {
            return Err(Denied::Count(c.max_buffers));
        }
        let held = st.total as u64 * self.len;
        if let Some(cap) = c.budget.filter(|&cap| held + self.len > cap) {
            return Err(Denied::Budget { cap, held });
        }
        if let Some(g) = self
            .global
            .as_ref()
            .filter(|g| g.used() + self.len > g.cap())
        {
            return Err(Denied::Global {
                cap: g.cap(),
                used: g.used(),
            });
        }
        Ok(())
    }

    /// Reserves room for one more buffer; returns its serial.
    fn reserve(&self, st: &mut State) -> Result<u64, Denied> {
        self.check_headroom(st)?;
        if let Some(g) = &self.global {
            if !g.try_reserve(self.len) {
                return Err(Denied::Global {
                    cap: g.cap(),
                    used: g.used(),
                });
            }
        }
        st.total += 1;
        st.allocating += 1;
        st.serial += 1;
        Ok(st.serial)
    }

    fn unreserve(&self, st: &mut State) {
        st.total -= 1;
        if let Some(g) = &self.global {
            g.release(self.len);
        }
    }

    fn denied_error(&self, denied: Denied) -> Error {
        let pool = self.config.name.clone();
        let reason = match denied {
            Denied::ShutDown => return Error::PoolShutDown { pool },
            Denied::Count(max) => format!("it already has max-buffers ({max}) buffers"),
            Denied::Budget { cap, held } => format!(
                "another {} buffer would exceed its budget of {} ({} held)",
                ByteSize(self.len),
                ByteSize(cap),
                ByteSize(held)
            ),
            Denied::Global { cap, used } => format!(
                "another {} buffer would exceed the global budget of {} ({} held by all pools)",
                ByteSize(self.len),
                ByteSize(cap),
                ByteSize(used)
            ),
        };
        Error::PoolExhausted { pool, reason }
    }

    /// Allocates, faults in and names one buffer (outside the lock).
    fn allocate_buffer(&self, serial: u64) -> Result<DmaBuf> {
        let buf = self.alloc.allocate_first_with(
            &self.config.sources,
            self.len,
            &buffer_name(&self.config.name, serial),
            make_ready,
        )?;
        let mut served_by = self.served_by.lock().unwrap_or_else(|p| p.into_inner());
        if served_by.is_none() {
            *served_by = Some(buf.origin().to_string());
        }
        Ok(buf)
    }

    /// Allocates the buffer reserved as `serial`, undoing the reservation on failure.
    fn grow(&self, serial: u64) -> Result<Slot> {
        let allocated = self.allocate_buffer(serial).map(Box::new);
        let mut st = self.lock();
        st.allocating -= 1;
        if allocated.is_err() {
            self.counters.alloc_failures.fetch_add(1, Relaxed);
            self.unreserve(&mut st);
            self.wake_waiter(st);
        }
        allocated
    }

    fn prewarm(&self) -> Result<()> {
        while self.lock().total < self.config.min_buffers {
            let serial = {
                let mut st = self.lock();
                self.reserve(&mut st).map_err(|d| self.denied_error(d))?
            };
            let buf = self.grow(serial)?;
            self.lock().free.push(buf);
        }
        Ok(())
    }

    /// Whether the refill thread has work: the free list is below `min_buffers` (the refill
    /// tops it up to there) and memory is not critically short. Under elevated pressure a
    /// realtime pool still refills (it is the class that must stay ready, and its refill runs
    /// off the hot path, capped by its budget); under critical pressure it waits for calm.
    fn wants_refill(&self, st: &State) -> bool {
        self.config.qos == QosClass::Realtime
            && self.level() < PressureLevel::Critical
            && st.free.len() < self.config.min_buffers
            && self.check_headroom(st).is_ok()
    }

    /// Whether an acquire should wake the refill thread: only once the free list has fallen
    /// below its low watermark, and only if the thread sleeps (see [`Limits`]).
    #[inline]
    fn should_wake_refill(&self, st: &State) -> bool {
        st.free.len() < st.limits.wake_refill_below && self.wants_refill(st)
    }

    /// Unlocks, then signals one waiting acquirer if there is one.
    #[inline]
    fn wake_waiter(&self, st: MutexGuard<'_, State>) {
        let waiting = st.waiters > 0;
        drop(st);
        if waiting {
            self.returned.notify_one();
        }
    }

    /// Signals the refill thread (the caller saw it idle and needed it).
    fn wake_refill(&self, mut st: MutexGuard<'_, State>) {
        st.update(|st| st.refill_idle = false);
        drop(st);
        self.refill.notify_one();
    }

    /// The hot path: one short lock, a pop, a hit counted under the lock. The clock is read
    /// only for acquires that wait or miss, and for a sample of the rest (see `stats`); fences
    /// are never looked at here (returned busy buffers are kept off the free list instead).
    /// Everything else (a sampled, contended or missing acquire, a closed pool) takes
    /// `acquire_slow`.
    #[inline]
    fn acquire(self: &Arc<Self>, deadline: Option<Instant>) -> Result<PooledBuf> {
        let (n, spare) = local::begin(self);
        let mut contended = false;
        if !Timing::sampled(n) {
            match self.state.0.try_lock() {
                Ok(mut st) if !st.shutdown => {
                    if let Some(buf) = st.free.pop() {
                        st.hits += 1;
                        if self.should_wake_refill(&st) {
                            self.wake_refill(st);
                        } else {
                            drop(st);
                        }
                        return Ok(PooledBuf {
                            buf: Some(buf),
                            pool: Some(spare.unwrap_or_else(|| Arc::clone(self))),
                        });
                    }
                }
                Ok(_) => {}
                Err(TryLockError::WouldBlock) => contended = true,
                Err(TryLockError::Poisoned(_)) => {}
            }
        }
        self.acquire_slow(deadline, n, contended, spare)
    }

    #[cold]
    #[inline(never)]
    fn acquire_slow(
        self: &Arc<Self>,
        deadline: Option<Instant>,
        n: u64,
        contended: bool,
        spare: Option<Arc<Self>>,
    ) -> Result<PooledBuf> {
        let mut timing = Timing::begin(n);
        if contended {
            timing.slow();
        }
        let acquired = self.acquire_with(deadline, timing);
        match acquired {
            Ok(buf) => Ok(PooledBuf {
                buf: Some(buf),
                pool: Some(spare.unwrap_or_else(|| Arc::clone(self))),
            }),
            Err(e) => {
                if let Some(spare) = spare {
                    local::put_back(spare);
                }
                Err(e)
            }
        }
    }

    fn acquire_with(&self, deadline: Option<Instant>, mut timing: Timing) -> Result<Slot> {
        let mut st = match self.state.0.try_lock() {
            Ok(st) => st,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                timing.slow();
                self.lock()
            }
        };
        let mut missed = false;
        let mut denied_counted = false;
        loop {
            if st.shutdown {
                return Err(self.denied_error(Denied::ShutDown));
            }
            if let Some(buf) = st.free.pop() {
                if !missed {
                    st.hits += 1;
                }
                if self.should_wake_refill(&st) {
                    self.wake_refill(st);
                } else {
                    drop(st);
                }
                timing.record(&self.counters.latency);
                return Ok(buf);
            }
            if !missed {
                missed = true;
                timing.slow();
                self.counters.misses.fetch_add(1, Relaxed);
            }
            match self.reserve(&mut st) {
                Ok(serial) => {
                    drop(st);
                    self.counters.hot_path_allocs.fetch_add(1, Relaxed);
                    let buf = self.grow(serial)?;
                    timing.record(&self.counters.latency);
                    return Ok(buf);
                }
                Err(denied) => {
                    if !denied_counted
                        && matches!(denied, Denied::Budget { .. } | Denied::Global { .. })
                    {
                        denied_counted = true;
                        self.counters.budget_denials.fetch_add(1, Relaxed);
                    }
                    let Some(deadline) = deadline else {
                        return Err(self.denied_error(denied));
                    };
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Error::PoolTimeout {
                            pool: self.config.name.clone(),
                            waited: timing.waited(now),
                            reason: self.denied_error(denied).to_string(),
                        });
                    }
                    st.waiters += 1;
                    st = self
                        .returned
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    st.waiters -= 1;
                }
            }
        }
    }

    /// A buffer comes back: onto the free list, unless a device still uses it (then aside
    /// until its fence signals) or the pool keeps no more (then freed).
    ///
    /// Only a buffer whose fd was handed out (to a device, another process) can carry fences;
    /// one that never left the pool goes back with no system call.
    #[inline]
    fn release(self: &Arc<Self>, buf: Slot) {
        if buf.may_carry_fences() && !crate::fence::idle_now(&*buf) {
            match buf.busy() {
                Ok(Some(fence)) => return self.park_busy(buf, fence),
                Ok(None) => {}
                // Not knowing is treated as idle, as before fences existed.
                Err(e) => log::debug!("pool {}: {e}", self.config.name),
            }
        }
        self.release_idle(buf);
    }

    /// A buffer no device uses comes back: onto the free list, or freed if the pool keeps no
    /// more.
    #[inline]
    fn release_idle(&self, buf: Slot) {
        let mut st = self.lock();
        let freed = self.put_idle(&mut st, buf);
        self.wake_waiter(st);
        drop(freed);
    }

    /// Puts an idle buffer back under the lock: onto the free list, or, if the pool keeps no
    /// more, returns it to be dropped (freed) once the lock is let go.
    #[inline]
    fn put_idle(&self, st: &mut State, buf: Slot) -> Option<Slot> {
        if st.free.len() >= st.limits.keep_free {
            if !st.shutdown {
                self.counters.trims.fetch_add(1, Relaxed);
            }
            self.unreserve(st);
            Some(buf)
        } else {
            st.free.push(buf);
            None
        }
    }

    fn trim(&self, keep_free: usize) -> usize {
        let freed: Vec<Slot> = {
            let mut st = self.lock();
            let excess = st.free.len().saturating_sub(keep_free);
            let at = st.free.len() - excess;
            let freed = st.free.split_off(at);
            for _ in 0..freed.len() {
                self.unreserve(&mut st);
            }
            freed
        };
        let n = freed.len();
        if n > 0 {
            self.counters.trims.fetch_add(n as u64, Relaxed);
            log::debug!(
                "pool {} trimmed {n} buffer(s) ({})",
                self.config.name,
                ByteSize(n as u64 * self.len)
            );
            self.returned.notify_all();
        }
        n
    }

    fn set_pressure(&self, level: PressureLevel) {
        let previous = PressureLevel::from_u8(self.pressure.swap(level as u8, Relaxed));
        self.lock().update(|st| st.level = level);
        if let Some(keep) = self.config.qos.keep_free(level, self.config.min_buffers) {
            self.trim(keep);
        }
        if level < previous && level < PressureLevel::Critical {
            let st = self.lock();
            if self.wants_refill(&st) {
                self.wake_refill(st);
            }
        }
    }

    fn stats(&self) -> PoolStats {
        let st = self.lock();
        let c = &self.counters;
        PoolStats {
            name: self.config.name.clone(),
            qos: self.config.qos.to_string(),
            source: self
                .served_by
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "-".into()),
            buffer_size: self.len,
            hits: st.hits,
            misses: c.misses.load(Relaxed),
            hot_path_allocs: c.hot_path_allocs.load(Relaxed),
            refills: c.refills.load(Relaxed),
            trims: c.trims.load(Relaxed),
            budget_denials: c.budget_denials.load(Relaxed),
            alloc_failures: c.alloc_failures.load(Relaxed),
            buffers_free: st.free.len(),
            buffers_busy: st.busy.len(),
            returned_busy: c.parked_busy.load(Relaxed),
            buffers_out: st.total - st.free.len() - st.allocating - st.busy.len(),
            buffers_allocating: st.allocating,
            bytes_held: st.total as u64 * self.len,
            budget: self.config.budget,
            acquire_latency: c.latency.summary(),
        }
    }

    fn shutdown(&self) {
        let freed = {
            let mut st = self.lock();
            st.update(|st| st.shutdown = true);
            let mut freed = std::mem::take(&mut st.free);
            // Busy buffers are freed too: the kernel keeps their memory while a device
            // holds them. The waiter sees the shutdown and ends.
            freed.extend(
                std::mem::take(&mut st.busy.buffers)
                    .into_iter()
                    .map(|(b, _)| b),
            );
            for _ in 0..freed.len() {
                self.unreserve(&mut st);
            }
            st.busy.wake_waiter();
            freed
        };
        drop(freed);
        self.returned.notify_all();
        self.refill.notify_all();
    }
}

/// A pool the registry watches without keeping it open.
pub(crate) struct WeakPool(Weak<Handle>);

impl WeakPool {
    pub(crate) fn upgrade(&self) -> Option<Pool> {
        self.0.upgrade().map(|handle| Pool {
            inner: Arc::clone(&handle.inner),
            handle,
        })
    }
}

/// Readies a new buffer for the hot path: mapped and faulted in, unless the CPU may not map it
/// (a protected heap's), which devices use as it is. A buffer that cannot be made ready sends
/// the pool on to its next source.
fn make_ready(buf: &DmaBuf) -> Result<()> {
    if buf.origin().is_protected() {
        return Ok(());
    }
    buf.prefault()
}

/// `name#serial`, cut to what `DMA_BUF_SET_NAME` keeps (31 bytes).
fn buffer_name(pool: &str, serial: u64) -> String {
    crate::dmabuf::fit_buffer_name(pool, &format!("#{serial}"))
}

#[cfg(test)]
mod tests;
