//! The pool's own operations against the floor: acquire, release and the round trip of a
//! heapcore pool (realtime, and normal prewarmed to the same depth) and of a bare
//! `Mutex<Vec<DmaBuf>>` free list, at every size and at 1 to 16 threads sharing one pool or
//! each with its own; and the kernel entries of each operation, counted. The methods of one
//! case run in the same threads, taking turns chunk by chunk.

use std::sync::{Arc, Mutex};

use heapcore::{Allocator, DmaBuf, Pool, PoolConfig, PooledBuf, QosClass, Source};

use dmaheap_benchkit::counters::Tally;
use dmaheap_benchkit::measure::{Hist, OpSamples, Recycler, Summary, TimerCost, on_pinned_threads};
use dmaheap_benchkit::schema::Case;
use dmaheap_benchkit::turns::{Timed, Turns, time_in_turns};

/// A heapcore pool as a recycler.
pub(super) struct HeapPool(pub Pool);

impl Recycler for HeapPool {
    type Buf = PooledBuf;
    fn acquire(&self) -> PooledBuf {
        self.0
            .try_acquire()
            .unwrap_or_else(|e| panic!("benchmark pool: {e}"))
    }
    fn release(&self, buf: PooledBuf) {
        drop(buf);
    }
}

/// The floor: what any pool must at least do, a locked `Vec` of ready buffers.
pub(super) struct FreeList(pub Mutex<Vec<DmaBuf>>);

impl FreeList {
    pub(super) fn new(
        alloc: &Allocator,
        sources: &[Source],
        size: u64,
        n: usize,
    ) -> Result<Self, String> {
        let mut free = Vec::with_capacity(n);
        for i in 0..n {
            let buf = alloc
                .allocate_first(sources, size, &format!("bench-floor#{i}"))
                .map_err(|e| e.to_string())?;
            buf.prefault().map_err(|e| e.to_string())?;
            free.push(buf);
        }
        Ok(Self(Mutex::new(free)))
    }

    pub(super) fn bytes(&self) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(DmaBuf::len)
            .sum()
    }
}

impl Recycler for FreeList {
    type Buf = DmaBuf;
    fn acquire(&self) -> DmaBuf {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .expect("the free list holds a buffer per thread and one more")
    }
    fn release(&self, buf: DmaBuf) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(buf);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Method {
    RealtimePool,
    NormalPool,
    FreeList,
}

impl Method {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::RealtimePool => "heapcore realtime pool",
            Self::NormalPool => "heapcore normal pool (prewarmed)",
            Self::FreeList => "free list (Mutex<Vec>)",
        }
    }
}

/// One case: its methods run in the same threads, in turns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Spec {
    pub group: &'static str,
    pub size: u64,
    pub threads: usize,
    pub per_thread: bool,
    pub methods: Vec<Method>,
}

impl Spec {
    pub(super) fn layout(&self) -> &'static str {
        if self.per_thread {
            "pool per thread"
        } else {
            "shared pool"
        }
    }
}

/// What one run of one method gave.
pub(super) struct Run {
    pub acquire: Hist,
    pub release: Hist,
    pub round_trip: Hist,
    pub round_trips_per_sample: usize,
    pub ops_per_sec: f64,
    pub acquire_kernel: Option<Tally>,
    pub release_kernel: Option<Tally>,
}

/// Acquire/release cycles of the counting pass, per thread.
const COUNTED_CYCLES: u64 = 2_000;

fn make(
    method: Method,
    name: String,
    alloc: &Arc<Allocator>,
    sources: &[Source],
    size: u64,
    depth: usize,
) -> Result<Arc<dyn Timed>, String> {
    let qos = match method {
        Method::FreeList => {
            return Ok(Arc::new(FreeList::new(alloc, sources, size, depth)?));
        }
        Method::RealtimePool => QosClass::Realtime,
        Method::NormalPool => QosClass::Normal,
    };
    let config = PoolConfig::new(name, sources.to_vec(), size)
        .qos(qos)
        .min_buffers(depth);
    Pool::new(Arc::clone(alloc), config)
        .map(|p| Arc::new(HeapPool(p)) as Arc<dyn Timed>)
        .map_err(|e| e.to_string())
}

/// Runs one case once: makes its pools (or free lists), times them in turns, frees them.
/// One `Run` per method, in the spec's order.
pub(super) fn run(
    spec: &Spec,
    alloc: &Arc<Allocator>,
    sources: &[Source],
    n: usize,
    timer: TimerCost,
    count: bool,
) -> Result<Vec<Run>, String> {
    let instances = if spec.per_thread { spec.threads } else { 1 };
    // Each user holds one buffer at a time; one more keeps the pool from running dry.
    let depth = if spec.per_thread { 2 } else { spec.threads + 1 };
    // made[i][m]: instance i of method m.
    let mut made: Vec<Vec<Arc<dyn Timed>>> = Vec::new();
    for i in 0..instances {
        let row = spec
            .methods
            .iter()
            .map(|&m| make(m, format!("bench-{i}"), alloc, sources, spec.size, depth))
            .collect::<Result<Vec<_>, _>>()?;
        made.push(row);
    }
    let made = Arc::new(made);
    let per = Arc::clone(&made);
    let turns = Arc::new(Turns::new(spec.threads));
    let mut per_thread: Vec<Vec<OpSamples>> = on_pinned_threads(spec.threads, move |t, barrier| {
        let row: Vec<&dyn Timed> = per[t % per.len()].iter().map(|m| m.as_ref()).collect();
        time_in_turns(&row, n, &timer, barrier, &turns)
    });
    let mut counted: Option<Vec<Vec<(Tally, Tally)>>> = count.then(|| {
        let per = Arc::clone(&made);
        on_pinned_threads(spec.threads, move |t, barrier| {
            barrier.wait();
            per[t % per.len()]
                .iter()
                .map(|m| m.count(COUNTED_CYCLES))
                .collect()
        })
    });
    let mut runs = Vec::new();
    for m in 0..spec.methods.len() {
        let samples: Vec<OpSamples> = per_thread
            .iter_mut()
            .map(|row| std::mem::take(&mut row[m]))
            .collect();
        let (merged, ops_per_sec) = OpSamples::merge(samples);
        let (acquire_kernel, release_kernel) = match &mut counted {
            Some(all) => {
                let (mut a, mut r) = (Tally::default(), Tally::default());
                for row in all.iter_mut() {
                    let (ta, tr) = std::mem::take(&mut row[m]);
                    a.merge(ta);
                    r.merge(tr);
                }
                (Some(a), Some(r))
            }
            None => (None, None),
        };
        runs.push(Run {
            acquire: merged.acquire,
            release: merged.release,
            round_trip: merged.round_trip,
            round_trips_per_sample: merged.round_trips_per_sample,
            ops_per_sec,
            acquire_kernel,
            release_kernel,
        });
    }
    Ok(runs)
}

/// The three cases (acquire, release, round trip) of one method of a spec, filled run by run.
pub(super) struct Cases {
    pub acquire: Case,
    pub release: Case,
    pub round_trip: Case,
    acquire_kernel: Tally,
    release_kernel: Tally,
    samples: [Hist; 3],
}

impl Cases {
    pub(super) fn new(spec: &Spec, method: Method, oversubscribed: bool) -> Self {
        let case = |op: &str| Case {
            group: spec.group.to_owned(),
            method: method.label().to_owned(),
            op: op.to_owned(),
            size: spec.size,
            threads: spec.threads,
            layout: spec.layout().to_owned(),
            runs: Vec::new(),
            pooled: Summary::default(),
            kernel: None,
            ops_per_sec: Vec::new(),
            ops_per_sample: Vec::new(),
            oversubscribed,
            note: String::new(),
        };
        Self {
            acquire: case("acquire"),
            release: case("release"),
            round_trip: case("round trip"),
            acquire_kernel: Tally::default(),
            release_kernel: Tally::default(),
            samples: Default::default(),
        }
    }

    pub(super) fn add(&mut self, run: Run) {
        self.acquire.runs.push(run.acquire.summary());
        self.release.runs.push(run.release.summary());
        self.round_trip.runs.push(run.round_trip.summary());
        self.round_trip.ops_per_sec.push(run.ops_per_sec);
        self.round_trip
            .ops_per_sample
            .push(run.round_trips_per_sample);
        self.samples[0].merge(&run.acquire);
        self.samples[1].merge(&run.release);
        self.samples[2].merge(&run.round_trip);
        if let Some(t) = run.acquire_kernel {
            self.acquire_kernel.merge(t);
        }
        if let Some(t) = run.release_kernel {
            self.release_kernel.merge(t);
        }
    }

    pub(super) fn finish(self) -> [Case; 3] {
        let Self {
            mut acquire,
            mut release,
            mut round_trip,
            acquire_kernel,
            release_kernel,
            samples,
        } = self;
        acquire.pooled = samples[0].summary();
        release.pooled = samples[1].summary();
        round_trip.pooled = samples[2].summary();
        if acquire_kernel.ops() > 0 {
            acquire.kernel = Some(acquire_kernel.per_op());
            release.kernel = Some(release_kernel.per_op());
        }
        [acquire, release, round_trip]
    }
}
