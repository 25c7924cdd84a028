//! The background threads heapcore starts (realtime refill, pressure watch, statistics) never
//! take the process's signals.
//!
//! A process-directed signal goes to any thread that does not block it. Programs that handle
//! SIGINT/SIGTERM with `signalfd` or `sigwait` (PipeWire's `pw_loop_add_signal`, GLib's
//! `g_unix_signal_add`) block those signals in their own threads only; a library thread that
//! leaves them unblocked would receive them instead and the default action would kill the
//! process. So each worker starts with every signal blocked: the mask is set in the calling
//! thread around the spawn, which the new thread inherits, so no signal can land on it before
//! it could block it itself.

use std::io;
use std::thread::{Builder, JoinHandle};

/// Spawns a named thread with all signals blocked.
pub(crate) fn spawn<F, T>(name: String, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let _blocked = BlockSignals::new();
    Builder::new().name(name).spawn(f)
}

/// Blocks all signals in this thread until dropped, then restores the previous mask.
struct BlockSignals {
    previous: libc::sigset_t,
}

impl BlockSignals {
    fn new() -> Self {
        let mut all = empty_set();
        // SAFETY: `all` is a valid set for sigfillset to fill.
        unsafe { libc::sigfillset(&mut all) };
        let mut previous = empty_set();
        // SAFETY: both pointers are to live locals; pthread_sigmask only changes this thread's
        // mask and writes the one it replaces to `previous`.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous) };
        Self { previous }
    }
}

/// A signal set with no signal in it.
fn empty_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data (an array of words) for which all zeroes is a valid set,
    // the empty one (what sigemptyset makes on Linux).
    unsafe { std::mem::zeroed() }
}

impl Drop for BlockSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `new` on the same thread (the guard is not Send
        // because it lives only inside `spawn`); the pointer is to a field of self.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked_here(signal: libc::c_int) -> bool {
        let mut current = empty_set();
        // SAFETY: a null new set only reads this thread's mask into the local `current`.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut current) };
        // SAFETY: `current` is a valid set, filled in above.
        unsafe { libc::sigismember(&current, signal) == 1 }
    }

    #[test]
    fn workers_block_signals_and_the_caller_keeps_its_mask() {
        let before = blocked_here(libc::SIGTERM);
        let worker = spawn("sigtest".into(), || {
            [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
                .iter()
                .all(|&s| blocked_here(s))
        })
        .unwrap();
        assert!(worker.join().unwrap());
        assert_eq!(blocked_here(libc::SIGTERM), before);
    }
}
