//! Byte budgets. The kernel cannot reclaim a userspace pool's dma-bufs, so every pool caps
//! itself, and all pools of a registry share a global cap.

use std::sync::atomic::{AtomicU64, Ordering};

/// A cap on bytes held, shared by reference; reservations are lock-free.
#[derive(Debug)]
pub struct Budget {
    cap: u64,
    used: AtomicU64,
}

impl Budget {
    /// A budget of `cap` bytes, none of them reserved.
    pub fn new(cap: u64) -> Self {
        Self {
            cap,
            used: AtomicU64::new(0),
        }
    }

    /// The cap in bytes.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` if the cap allows; never lets `used` exceed `cap`.
    pub fn try_reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.cap)
            })
            .is_ok()
    }

    /// Returns a reservation.
    pub fn release(&self, bytes: u64) {
        let prev = self.used.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(prev >= bytes, "budget released more than it reserved");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_exceed_the_cap() {
        let b = Budget::new(100);
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(41));
        assert!(b.try_reserve(40));
        assert_eq!(b.used(), 100);
        b.release(60);
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(u64::MAX));
    }

    #[test]
    fn concurrent_reservations_respect_the_cap() {
        let b = std::sync::Arc::new(Budget::new(1000));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.try_reserve(3)).count())
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(granted, 333);
        assert_eq!(b.used(), 999);
    }
}
