//! A count that many threads add to on a pool's hot path without a locked instruction.
//!
//! Every acquire and release adds one. A shared `AtomicU64::fetch_add` is a locked
//! read-modify-write, a full barrier on x86 that costs about as much as the rest of our
//! acquire, and when the producer and the consumer run on two cores its cache line travels
//! between them on every buffer. Here each thread that adds to a counter claims a slot of it,
//! on a cache line of its own, the first time it adds: it alone writes that slot, so a plain
//! load and store add one without losing a count, and readers sum the slots. A thread that
//! finds no free slot near its own shares one atomic slot (correct, only slower).
//!
//! A thread finds its slot from its identity, the thread pointer, read in one instruction. A
//! `thread_local!` would do the same, but in a shared library (this plugin) every access to one
//! is a call to `__tls_get_addr`, and under emulation (qemu TCG, as in the VM tests) that call
//! costs as much as the pool's own acquire.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Slots per counter; a bit each in [`ThreadCounter::claimed`].
const SLOTS: usize = 64;

/// Slots a thread tries, from the one its identity hashes to, before it shares.
const PROBES: usize = 4;

/// No thread owns the slot yet (no live thread's identity is 0).
const UNOWNED: usize = 0;

/// The calling thread's identity: the address of its thread control block, which is what the
/// thread pointer register holds. No two live threads share one. A thread started after another
/// ended may get the ended one's: it then adds to the ended thread's slot, which is sound,
/// because the ended thread writes it no more and the C library hands the ended thread's
/// memory to the new thread under a lock, so the new thread sees every count the old one wrote.
#[inline(always)]
fn thread_identity() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let tcb: usize;
        // SAFETY: reads the word at %fs:0, which the x86-64 TLS ABI requires to hold the thread
        // control block's own address; it writes nothing and touches no stack or flags.
        unsafe {
            std::arch::asm!(
                "mov {}, qword ptr fs:[0]",
                out(reg) tcb,
                options(nostack, readonly, preserves_flags, pure)
            );
        }
        tcb
    }
    #[cfg(target_arch = "aarch64")]
    {
        let tcb: usize;
        // SAFETY: reads TPIDR_EL0, the thread pointer register user code may read; it writes
        // no memory and touches no stack or flags.
        unsafe {
            std::arch::asm!(
                "mrs {}, tpidr_el0",
                out(reg) tcb,
                options(nomem, nostack, preserves_flags, pure)
            );
        }
        tcb
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        // Elsewhere the address of a thread-local byte is as unique, through the slower access.
        thread_local! {
            static MARK: u8 = const { 0 };
        }
        MARK.with(|mark| std::ptr::from_ref(mark) as usize)
    }
}

/// The slot a thread tries first. Control blocks sit at the same offset in their pages, so
/// the page number is what differs.
#[inline(always)]
fn home_slot(identity: usize) -> usize {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    ((identity as u64 >> 12).wrapping_mul(GOLDEN) >> (64 - SLOTS.trailing_zeros())) as usize
}

/// One slot per cache line pair (adjacent-line prefetch pulls two 64-byte lines on x86).
#[derive(Default)]
#[repr(align(128))]
struct Slot {
    owner: AtomicUsize,
    count: AtomicU64,
}

impl Slot {
    /// Adds one; only the owner may call it, so no count is lost between the load and store.
    #[inline(always)]
    fn add_one_as_owner(&self) {
        self.count
            .store(self.count.load(Relaxed).wrapping_add(1), Relaxed);
    }
}

/// See the module documentation.
pub(crate) struct ThreadCounter {
    slots: Box<[Slot; SLOTS]>,
    /// A bit per slot some thread owns: the only slots that can hold a count.
    claimed: AtomicU64,
    shared: AtomicU64,
}

impl Default for ThreadCounter {
    fn default() -> Self {
        Self {
            slots: Box::new(std::array::from_fn(|_| Slot::default())),
            claimed: AtomicU64::new(0),
            shared: AtomicU64::new(0),
        }
    }
}

impl ThreadCounter {
    /// Adds one; returns nothing, so that no caller reads a sum on the hot path.
    #[inline(always)]
    pub(crate) fn add_one(&self) {
        let me = thread_identity();
        let home = &self.slots[home_slot(me)];
        if home.owner.load(Relaxed) == me {
            home.add_one_as_owner();
        } else {
            self.add_one_first_time(me);
        }
    }

    /// A thread's first add (or every add of a thread whose home slot another thread owns).
    #[cold]
    #[inline(never)]
    fn add_one_first_time(&self, me: usize) {
        let home = home_slot(me);
        for probe in 0..PROBES {
            let index = (home + probe) % SLOTS;
            let slot = &self.slots[index];
            let owner = match slot.owner.compare_exchange(UNOWNED, me, Relaxed, Relaxed) {
                Ok(_) => {
                    self.claimed.fetch_or(1 << index, Relaxed);
                    me
                }
                Err(owner) => owner,
            };
            if owner == me {
                slot.add_one_as_owner();
                return;
            }
        }
        self.shared.fetch_add(1, Relaxed);
    }

    /// The count so far. Adds made on other threads just before may not be in it yet.
    pub(crate) fn sum(&self) -> u64 {
        // Only claimed slots can hold a count: a lean pool sums on every release, and most
        // processes have a few threads, not 64.
        let mut claimed = self.claimed.load(Relaxed);
        let mut total = self.shared.load(Relaxed);
        while claimed != 0 {
            let index = claimed.trailing_zeros() as usize;
            total = total.wrapping_add(self.slots[index].count.load(Relaxed));
            claimed &= claimed - 1;
        }
        total
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
    use std::sync::{Arc, Barrier};

    /// Many threads alive at once, more than there are slots, adding at once: not one count
    /// lost.
    #[test]
    fn threads_beyond_the_slots_lose_no_count() {
        let counter = Arc::new(ThreadCounter::default());
        let threads = SLOTS + 16;
        let per_thread = 20_000u64;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (counter, barrier) = (Arc::clone(&counter), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..per_thread {
                        counter.add_one();
                    }
                    // Held until every thread has added: all stay alive, all identities differ.
                    barrier.wait();
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

    /// Threads that end and threads started after them (which may get an ended one's
    /// identity, and so its slot) lose no count either.
    #[test]
    fn threads_that_come_and_go_lose_no_count() {
        let counter = Arc::new(ThreadCounter::default());
        let (rounds, per_round, per_thread) = (50, 4, 1_000u64);
        for _ in 0..rounds {
            let handles: Vec<_> = (0..per_round)
                .map(|_| {
                    let counter = Arc::clone(&counter);
                    std::thread::spawn(move || {
                        for _ in 0..per_thread {
                            counter.add_one();
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("adder thread");
            }
        }
        assert_eq!(counter.sum(), rounds * per_round as u64 * per_thread);
    }

    /// The identity is what it claims to be: steady on one thread, different on threads
    /// alive at the same time.
    #[test]
    fn live_threads_have_distinct_steady_identities() {
        let threads = 16;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let first = thread_identity();
                    barrier.wait();
                    let second = thread_identity();
                    barrier.wait();
                    (first, second)
                })
            })
            .collect();
        let ids: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("identity thread"))
            .collect();
        assert!(ids.iter().all(|(a, b)| a == b && *a != UNOWNED), "{ids:x?}");
        let mut distinct: Vec<_> = ids.iter().map(|(a, _)| *a).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), threads, "{ids:x?}");
    }
}
