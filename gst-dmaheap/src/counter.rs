//! A count that many threads add to on a pool's hot path without a locked instruction.
//!
//! Every acquire and release adds one. A shared `AtomicU64::fetch_add` is a locked
//! read-modify-write, a full barrier on x86 that costs about as much as the rest of our
//! acquire, and when the producer and the consumer run on two cores its cache line travels
//! between them on every buffer. Here each of the first [`SLOTS`] threads of the process that
//! touch a counter owns one slot of it, on a cache line of its own: it alone writes that slot,
//! so a plain load and store add one without losing a count, and readers sum the slots. Later
//! threads share one atomic slot (correct, only slower).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Threads with a slot of their own.
const SLOTS: usize = 64;

/// Slot indices handed out so far (the process's threads that added to a counter).
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// This thread's slot index, handed out once per thread and never reused (a slot keeps the
/// counts of a thread that has exited).
#[inline]
fn thread_slot() -> usize {
    /// Not handed out yet.
    const NONE: usize = usize::MAX;
    // A constant initialiser and no destructor: the access is a plain thread-local load, with
    // no lazy-initialisation state to check.
    thread_local! {
        static SLOT: Cell<usize> = const { Cell::new(NONE) };
    }
    SLOT.with(|s| match s.get() {
        NONE => {
            let slot = NEXT.fetch_add(1, Relaxed);
            s.set(slot);
            slot
        }
        slot => slot,
    })
}

/// One slot per cache line pair (adjacent-line prefetch pulls two 64-byte lines on x86).
#[derive(Default)]
#[repr(align(128))]
struct Slot(AtomicU64);

/// See the module documentation.
pub(crate) struct ThreadCounter {
    owned: Box<[Slot; SLOTS]>,
    shared: AtomicU64,
}

impl Default for ThreadCounter {
    fn default() -> Self {
        Self {
            owned: Box::new(std::array::from_fn(|_| Slot::default())),
            shared: AtomicU64::new(0),
        }
    }
}

impl ThreadCounter {
    /// Adds one; returns nothing, so that no caller reads a sum on the hot path.
    #[inline]
    pub(crate) fn add_one(&self) {
        match self.owned.get(thread_slot()) {
            // Only this thread writes its slot: no count is lost between the load and store.
            Some(Slot(own)) => own.store(own.load(Relaxed).wrapping_add(1), Relaxed),
            None => {
                self.shared.fetch_add(1, Relaxed);
            }
        }
    }

    /// The count so far. Adds made on other threads just before may not be in it yet.
    pub(crate) fn sum(&self) -> u64 {
        // Only slots handed out can hold a count: a lean pool sums on every release, and most
        // processes have a few threads, not 64.
        let used = NEXT.load(Relaxed).min(SLOTS);
        self.owned[..used]
            .iter()
            .map(|Slot(s)| s.load(Relaxed))
            .fold(self.shared.load(Relaxed), u64::wrapping_add)
    }
}

impl std::fmt::Debug for ThreadCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ThreadCounter").field(&self.sum()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Many threads, more than there are owned slots, adding at once: not one count lost.
    #[test]
    fn threads_beyond_the_owned_slots_lose_no_count() {
        let counter = Arc::new(ThreadCounter::default());
        let threads = SLOTS + 16;
        let per_thread = 20_000u64;
        let barrier = Arc::new(std::sync::Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (counter, barrier) = (Arc::clone(&counter), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..per_thread {
                        counter.add_one();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("adder thread");
        }
        assert_eq!(counter.sum(), threads as u64 * per_thread);
        assert!(
            counter.shared.load(Relaxed) > 0,
            "the test must reach the shared slot"
        );
    }
}
