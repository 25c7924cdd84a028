//! Counters shared by an element and the pools it creates, exposed as a `GstStructure`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::counter::ThreadCounter;

/// What the element and its pools did. Cheap to update from any thread.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Input buffers that were already heap memory and went downstream untouched.
    pub passthrough: AtomicU64,
    /// Input buffers that were dma-bufs from another exporter (a camera's or decoder's own
    /// buffers) meeting what the devices and downstream need, and went downstream untouched.
    pub foreign_passthrough: AtomicU64,
    /// Input buffers copied into a heap buffer (upstream did not use the pool).
    pub copies: AtomicU64,
    /// Why the last copy was made (empty before the first).
    last_copy_reason: Mutex<String>,
    /// Each pool's count of its acquires: acquires served from a pooled buffer (`pool-hits`)
    /// are their sum less the misses.
    acquires: Mutex<Vec<Arc<ThreadCounter>>>,
    /// Acquires that had to allocate on the caller's thread.
    pub pool_misses: AtomicU64,
    /// Buffers allocated when a pool was activated (prewarm / min-buffers).
    pub prewarmed: AtomicU64,
    /// Idle buffers freed by a background pool.
    pub trimmed: AtomicU64,
    /// Buffers that came back while a device still used them (an unsignalled fence) and were
    /// held back until their fence signalled.
    pub held_busy: AtomicU64,
    /// Allocations that failed.
    pub alloc_failures: AtomicU64,
    /// Pools created (a new one per caps).
    pub pools: AtomicU64,
    /// Heap memory currently held by the pools' buffers, per origin: (buffers, bytes).
    held: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A pool allocated a buffer of `len` bytes from `origin`.
    pub(crate) fn held_add(&self, origin: &str, len: u64) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let entry = held.entry(origin.to_owned()).or_default();
        entry.0 += 1;
        entry.1 += len;
    }

    /// A pool freed a buffer of `len` bytes from `origin`.
    pub(crate) fn held_sub(&self, origin: &str, len: u64) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = held.get_mut(origin) {
            entry.0 = entry.0.saturating_sub(1);
            entry.1 = entry.1.saturating_sub(len);
            if entry.0 == 0 {
                held.remove(origin);
            }
        }
    }

    /// Counts the acquires in `counter` (a pool's) among these statistics' pool hits.
    pub(crate) fn count_acquires(&self, counter: &Arc<ThreadCounter>) {
        let mut all = self.acquires.lock().unwrap_or_else(|p| p.into_inner());
        if !all.iter().any(|c| Arc::ptr_eq(c, counter)) {
            all.push(Arc::clone(counter));
        }
    }

    /// Acquires served from a pooled buffer: every acquire that did not allocate.
    pub(crate) fn pool_hits(&self) -> u64 {
        let acquires: u64 = self
            .acquires
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|c| c.sum())
            .sum();
        acquires.saturating_sub(self.pool_misses.load(Ordering::Relaxed))
    }

    /// Records why a copy was made; true when the reason differs from the last copy's.
    pub(crate) fn copied_because(&self, reason: &str) -> bool {
        let mut last = self
            .last_copy_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *last == reason {
            return false;
        }
        reason.clone_into(&mut last);
        true
    }

    /// Buffers and bytes currently held, all origins together.
    pub(crate) fn held_total(&self) -> (u64, u64) {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.values()
            .fold((0, 0), |(n, b), (en, eb)| (n + en, b + eb))
    }

    /// The statistics as a structure named `name`.
    pub(crate) fn to_structure(&self, name: &str) -> gst::Structure {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (buffers, bytes) = self.held_total();
        let origins = {
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.iter()
                .map(|(origin, (n, b))| format!("{origin}: {n} buffers, {b} bytes"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        gst::Structure::builder(name)
            .field("passthrough", load(&self.passthrough))
            .field("foreign-passthrough", load(&self.foreign_passthrough))
            .field("copies", load(&self.copies))
            .field(
                "last-copy-reason",
                self.last_copy_reason
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            )
            .field("pool-hits", self.pool_hits())
            .field("pool-misses", load(&self.pool_misses))
            .field("prewarmed", load(&self.prewarmed))
            .field("trimmed", load(&self.trimmed))
            .field("held-busy", load(&self.held_busy))
            .field("alloc-failures", load(&self.alloc_failures))
            .field("pools", load(&self.pools))
            .field("heap-buffers", buffers)
            .field("heap-used", bytes)
            .field("heap-origins", origins)
            .build()
    }
}
