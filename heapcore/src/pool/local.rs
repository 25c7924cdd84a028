//! What a thread keeps for the pools it uses, so that the hot path touches no shared counter
//! beyond the pool's lock:
//!
//! - how many acquires it has begun, which picks the ones whose latency is sampled
//!   (`stats::Timing`);
//! - a spare handle on the pool it last gave a buffer back to. A lent buffer must keep its
//!   pool alive, which costs an atomic reference-count increment per acquire and a decrement
//!   per release, as much as the lock itself. Instead, a release leaves its handle here and
//!   the thread's next acquire from the same pool takes it back: a thread cycling buffers
//!   (every producer) pays neither. A thread that uses two pools in turn, or gives back
//!   buffers another thread took, pays the count as before.
//!
//! The spare keeps the pool's state (not its buffers: those are freed at shutdown as ever)
//! until the thread takes another handle's place, ends, or gives a buffer back to another
//! pool: at most one closed pool's bookkeeping per thread.

use std::cell::Cell;
use std::sync::Arc;

use super::Inner;

struct Local {
    acquires: Cell<u64>,
    spare: Cell<Option<Arc<Inner>>>,
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            acquires: Cell::new(0),
            spare: Cell::new(None),
        }
    };
}

/// Starts an acquire from `pool` on this thread: the number of acquires it began before, and
/// the spare handle if it is `pool`'s.
#[inline]
pub(super) fn begin(pool: &Arc<Inner>) -> (u64, Option<Arc<Inner>>) {
    LOCAL
        .try_with(|l| {
            let n = l.acquires.get();
            l.acquires.set(n.wrapping_add(1));
            let spare = l.spare.take();
            match spare {
                Some(s) if Arc::ptr_eq(&s, pool) => (n, Some(s)),
                other => {
                    l.spare.set(other);
                    (n, None)
                }
            }
        })
        // While the thread's locals are being destroyed: no sampling, no spare.
        .unwrap_or((1, None))
}

/// Leaves `handle` as this thread's spare (the one it replaces, if any, is let go).
#[inline]
pub(super) fn keep(handle: Arc<Inner>) {
    let old = LOCAL.try_with(|l| l.spare.replace(Some(handle)));
    // Dropped here, outside the thread-local: it may be the last handle of a closed pool.
    drop(old);
}

/// Gives back a spare `begin` took for an acquire that then failed.
pub(super) fn put_back(handle: Arc<Inner>) {
    keep(handle);
}
