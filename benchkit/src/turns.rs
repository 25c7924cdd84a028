//! Methods compared in the same threads take turns by a clock all the threads share, so that
//! at any moment every running thread works on the same method: a shared pool then meets the
//! same contention whichever method is timed. Left to count their own chunks, threads drift
//! apart, and on oversubscribed CPUs whether a method's lock was contended depended on what
//! the thread on the other CPU happened to be timing (a `Mutex<Vec>` p99 of 81 ns in one run
//! and 962 ns in the next, the pool's beside it steady).

use std::sync::Barrier;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::counters::{Tally, ThreadCounters};
use crate::measure::{OpSamples, Recycler, TimerCost, WARMUP_OPS, allowed_cpus, nanos};

/// A recycler as the timing loops see it (the loops are generic; one virtual call per
/// chunk of operations).
pub trait Timed: Send + Sync {
    /// Runs [`WARMUP_OPS`] untimed round trips.
    fn warm_up(&self);
    /// Times up to `n` acquires and releases apart (one buffer held at a time), stopping at
    /// `end`; returns how many it timed.
    fn time_split(&self, n: usize, end: Instant, timer: &TimerCost, s: &mut OpSamples) -> usize;
    /// Takes up to `n` round-trip samples (acquire and release together), each timing `per`
    /// round trips in a row and recording the time per round trip, stopping at `end`; returns
    /// how many samples it took.
    fn time_round_trips(
        &self,
        n: usize,
        per: usize,
        end: Instant,
        timer: &TimerCost,
        s: &mut OpSamples,
    ) -> usize;
    /// `n` untimed round trips.
    fn untimed(&self, n: usize);
    /// Untimed round trips until `end`.
    fn untimed_until(&self, end: Instant);
    /// Kernel entries of `n` acquires and of `n` releases, counted apart.
    fn count(&self, n: u64) -> (Tally, Tally);
}

/// One acquire, as a caller in another crate (an element, a producer) makes it: a call the
/// timing loop cannot inline. Left inlined, the loop's code (and so the time) came out of the
/// optimiser differently for every method and binary: the same pool's round trip took 10 ns
/// in one build and 21 ns in another, and the free list's 18 and 10.
#[inline(never)]
fn acquire_call<R: Recycler>(r: &R) -> R::Buf {
    r.acquire()
}

/// One release, a call the timing loop cannot inline (see [`acquire_call`]).
#[inline(never)]
fn release_call<R: Recycler>(r: &R, buf: R::Buf) {
    r.release(buf);
}

impl<R: Recycler> Timed for R {
    fn warm_up(&self) {
        self.untimed(WARMUP_OPS);
    }

    fn time_split(&self, n: usize, end: Instant, timer: &TimerCost, s: &mut OpSamples) -> usize {
        for done in 0..n {
            let t0 = Instant::now();
            let b = acquire_call(self);
            let t1 = Instant::now();
            release_call(self, std::hint::black_box(b));
            let t2 = Instant::now();
            s.acquire.record(timer.net(t1 - t0));
            s.release.record(timer.net(t2 - t1));
            if t2 >= end {
                return done + 1;
            }
        }
        n
    }

    fn time_round_trips(
        &self,
        n: usize,
        per: usize,
        end: Instant,
        timer: &TimerCost,
        s: &mut OpSamples,
    ) -> usize {
        for done in 0..n {
            let t0 = Instant::now();
            for _ in 0..per {
                release_call(self, std::hint::black_box(acquire_call(self)));
            }
            let t1 = Instant::now();
            s.round_trip.record(timer.net_per_op(t1 - t0, per));
            if t1 >= end {
                return done + 1;
            }
        }
        n
    }

    fn untimed(&self, n: usize) {
        for _ in 0..n {
            release_call(self, std::hint::black_box(acquire_call(self)));
        }
    }

    fn untimed_until(&self, end: Instant) {
        while Instant::now() < end {
            release_call(self, std::hint::black_box(acquire_call(self)));
        }
    }

    fn count(&self, n: u64) -> (Tally, Tally) {
        let counters = ThreadCounters::open();
        let (mut acquire, mut release) = (Tally::default(), Tally::default());
        for _ in 0..n {
            let r0 = counters.read();
            let b = acquire_call(self);
            let r1 = counters.read();
            release_call(self, std::hint::black_box(b));
            let r2 = counters.read();
            acquire.add(1, counters.delta(r0, r1));
            release.add(1, counters.delta(r1, r2));
        }
        (acquire, release)
    }
}

/// Chunks each timed loop is cut into: a thread times at most one chunk per turn.
pub const CHUNKS: usize = 20;

/// The shortest turn: long against one operation, short against a repetition.
const MIN_TURN: Duration = Duration::from_micros(500);

/// The clock the threads of one case share: when the turns began and how long one lasts.
pub struct Turns {
    threads: usize,
    start: OnceLock<Instant>,
    /// Each thread proposes a length that fits its chunk; the longest is taken.
    turn_ns: AtomicU64,
    /// Threads still timing; the others keep working in turns until none is left.
    timing: AtomicUsize,
    /// Round trips per round-trip sample: each thread proposes what its fastest method needs
    /// (see [`TimerCost::ops_per_sample`]); the most is taken, by every method and thread.
    per_sample: AtomicUsize,
}

impl Turns {
    /// A clock for `threads` threads, each of which calls [`time_in_turns`] once.
    pub fn new(threads: usize) -> Self {
        Self {
            threads,
            start: OnceLock::new(),
            turn_ns: AtomicU64::new(nanos(MIN_TURN)),
            timing: AtomicUsize::new(threads),
            per_sample: AtomicUsize::new(1),
        }
    }

    /// Offers a turn long enough for `chunk` operations of `per_op` each on this thread,
    /// which shares its CPU with the others pinned there: timing costs three clock reads an
    /// operation (about doubling an untimed one), and half again as slack.
    fn propose(&self, per_op: Duration, chunk: usize) {
        let sharing = self.threads.div_ceil(allowed_cpus().len().max(1)).max(1);
        let ns = nanos(per_op).saturating_mul(chunk as u64 * sharing as u64 * 3);
        self.turn_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Which turn `now` falls in, and when that turn ends.
    fn turn_at(&self, start: Instant, now: Instant) -> (u64, Instant) {
        let len = self.turn_ns.load(Ordering::Relaxed).max(1);
        let k = nanos(now.saturating_duration_since(start)) / len;
        (k, start + Duration::from_nanos((k + 1).saturating_mul(len)))
    }
}

/// Times every method of `methods` on this thread, in turns: turn `k` of the clock `turns`
/// shares is method `k mod methods`, on every thread at once. In its turn a thread times at
/// most one chunk ([`CHUNKS`] per loop) of that method, acquire and release apart until it
/// has `n` of each, then `n` round trips, several to a sample where one is short against the
/// clock (the same number for every method and thread), and spends the rest of the turn on
/// untimed round trips of the same method, so that the contention goes on whatever it
/// times; a thread done with all its samples goes on in turns, untimed, until every thread
/// is. Then each method's throughput loop, all threads starting it together. `barrier` is
/// waited on after the warm-up and before each throughput loop. (A barrier before every
/// chunk, tried for the same end, made each chunk start cold after a context switch on
/// oversubscribed CPUs, and those first operations became the p99: it measured the barrier.)
pub fn time_in_turns(
    methods: &[&dyn Timed],
    n: usize,
    timer: &TimerCost,
    barrier: &Barrier,
    turns: &Turns,
) -> Vec<OpSamples> {
    let mut out: Vec<OpSamples> = methods.iter().map(|_| OpSamples::default()).collect();
    let chunk = n.div_ceil(CHUNKS).max(1);
    for m in methods {
        m.warm_up();
        let probe = chunk.min(WARMUP_OPS);
        let t0 = Instant::now();
        m.untimed(probe);
        let per_op = t0.elapsed() / probe as u32;
        turns.propose(per_op, chunk);
        turns
            .per_sample
            .fetch_max(timer.ops_per_sample(per_op), Ordering::Relaxed);
    }
    barrier.wait();
    let start = *turns.start.get_or_init(Instant::now);
    // The same number of round trips as acquire/release pairs, in fewer samples of `per`
    // each: a round-trip chunk takes about as long as a split one, which the turn fits.
    let per = turns.per_sample.load(Ordering::Relaxed);
    let rounds = n.div_ceil(per);
    let round_chunk = rounds.div_ceil(CHUNKS).max(1);
    for s in &mut out {
        s.round_trips_per_sample = per;
    }
    // left[i] = (acquire/release pairs, round-trip samples) method i still has to time.
    let mut left: Vec<(usize, usize)> = methods.iter().map(|_| (n, rounds)).collect();
    let mut timing = !methods.is_empty() && n > 0;
    if !timing {
        turns.timing.fetch_sub(1, Ordering::Relaxed);
    }
    loop {
        if !timing && turns.timing.load(Ordering::Relaxed) == 0 {
            break;
        }
        let (k, end) = turns.turn_at(start, Instant::now());
        let i = (k % methods.len().max(1) as u64) as usize;
        let Some(m) = methods.get(i) else { break };
        if timing {
            let (split, round) = &mut left[i];
            if *split > 0 {
                *split -= m.time_split((*split).min(chunk), end, timer, &mut out[i]);
            } else if *round > 0 {
                *round -=
                    m.time_round_trips((*round).min(round_chunk), per, end, timer, &mut out[i]);
            }
            if left.iter().all(|&(s, r)| s == 0 && r == 0) {
                timing = false;
                turns.timing.fetch_sub(1, Ordering::Relaxed);
            }
        }
        m.untimed_until(end);
    }
    for (m, s) in methods.iter().zip(&mut out) {
        barrier.wait();
        let t0 = Instant::now();
        m.untimed(n);
        s.batch = Some((t0, Instant::now()));
        s.batch_ops = n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::on_pinned_threads;
    use std::cell::RefCell;
    use std::sync::Arc;

    thread_local! {
        /// This thread's acquires: which method, when.
        static SEEN: RefCell<Vec<(usize, Instant)>> = const { RefCell::new(Vec::new()) };
    }

    /// Lends nothing, and notes on the calling thread when each of its acquires happened.
    struct Tracer(usize);

    impl Recycler for Tracer {
        type Buf = ();
        fn acquire(&self) {
            SEEN.with(|s| s.borrow_mut().push((self.0, Instant::now())));
        }
        fn release(&self, _: ()) {}
    }

    /// Two threads on two CPUs: each times its full count of every operation, and whenever
    /// both work at the same moment they work on the same method.
    #[test]
    fn threads_time_their_full_counts_and_the_same_method_at_the_same_moment() {
        assert!(
            allowed_cpus().len() >= 2,
            "this test needs 2 CPUs: it checks what two threads running at once do"
        );
        const N: usize = 4_000;
        let timer = TimerCost::calibrate();
        let turns = Arc::new(Turns::new(2));
        let mut runs = on_pinned_threads(2, move |_, barrier| {
            let (a, b) = (Tracer(0), Tracer(1));
            let methods: [&dyn Timed; 2] = [&a, &b];
            let out = time_in_turns(&methods, N, &timer, barrier, &turns);
            (out, SEEN.with(|s| s.take()))
        });
        for (out, _) in &runs {
            for s in out {
                let counts = [&s.acquire, &s.release].map(|h| h.summary().n);
                assert_eq!(counts, [N; 2]);
                let per = s.round_trips_per_sample;
                assert!(per >= 1);
                assert_eq!(s.round_trip.summary().n, N.div_ceil(per));
            }
        }
        let (_, other) = runs.pop().unwrap();
        let (_, one) = runs.pop().unwrap();
        // Pairs of acquires on the two threads within 2 µs of each other: the same method?
        let (mut pairs, mut same) = (0usize, 0usize);
        for &(m, t) in &one {
            let at = other.partition_point(|&(_, u)| u < t);
            let near = [at.checked_sub(1), Some(at)]
                .into_iter()
                .flatten()
                .filter_map(|j| other.get(j))
                .min_by_key(|&&(_, u)| if u > t { u - t } else { t - u });
            if let Some(&(o, u)) = near {
                if (if u > t { u - t } else { t - u }) < Duration::from_micros(2) {
                    pairs += 1;
                    same += usize::from(o == m);
                }
            }
        }
        assert!(
            pairs > 10_000,
            "the threads hardly ran at once: {pairs} pairs"
        );
        assert!(
            same as f64 >= 0.98 * pairs as f64,
            "{same} of {pairs} simultaneous acquires were of the same method"
        );
    }
}
