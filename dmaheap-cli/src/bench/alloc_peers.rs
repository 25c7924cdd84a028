//! Making a buffer instead of reusing one, at every size: `malloc` + `memset`, a memfd made
//! ready (`ftruncate`, `mmap`, `MADV_POPULATE_WRITE`), a raw `DMA_HEAP_IOCTL_ALLOC` loop (with
//! and without mapping and touching every page) and heapcore's own direct allocation. Each
//! times making the buffer ready and freeing it, separately; the ratios set them against a
//! pool's round trip of the same size from the same run (which any pool wins: a sanity check,
//! not a target).

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use rustix::mm::{Advice, MapFlags, ProtFlags};

use super::{Ctx, SIZES, ratio_of, size_round_trip};
use dmaheap_benchkit::measure::{Stat, Summary};
use dmaheap_benchkit::schema::{Case, Report, find_case};

/// A shared read-write mapping of `fd`, unmapped when dropped.
struct Map {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

impl Map {
    fn new(fd: impl AsFd, len: usize) -> rustix::io::Result<Self> {
        // SAFETY: a new mapping at an address the kernel picks; nothing aliases it.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        Ok(Self { ptr, len })
    }

    /// Writes one byte per page (every page faulted in and dirtied).
    fn touch(&self, page: usize) {
        for off in (0..self.len).step_by(page) {
            let byte = self.ptr.cast::<u8>().wrapping_add(off);
            // SAFETY: `off < len`: a writable byte of this mapping.
            unsafe { byte.write_volatile(1) };
        }
    }

    /// Faults every page in for writing in one call where the kernel can (5.14+).
    fn populate(&self, page: usize) {
        // SAFETY: the range is exactly this mapping.
        let done = unsafe { rustix::mm::madvise(self.ptr, self.len, Advice::LinuxPopulateWrite) };
        if done.is_err() {
            self.touch(page);
        }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Malloc,
    Memfd,
    HeapIoctl,
    HeapIoctlReady,
    Heapcore,
}

impl Method {
    fn label(self, heap: &str) -> String {
        match self {
            Self::Malloc => "malloc + memset".into(),
            Self::Memfd => "memfd + ftruncate + mmap + populate".into(),
            Self::HeapIoctl => format!("DMA_HEAP_IOCTL_ALLOC ({heap}), raw"),
            Self::HeapIoctlReady => format!("DMA_HEAP_IOCTL_ALLOC ({heap}) + mmap + touch"),
            Self::Heapcore => "heapcore direct (allocate_first + prefault)".into(),
        }
    }
}

/// Samples of one size and method: making it ready, freeing it, both.
fn measure(
    ctx: &Ctx,
    method: Method,
    heap: Option<&OwnedFd>,
    size: u64,
    n: usize,
) -> Result<[Vec<u64>; 3], String> {
    let page = heapcore::sysinfo::page_size() as usize;
    let len = size.next_multiple_of(page as u64);
    let timer = &ctx.timer;
    let mut out: [Vec<u64>; 3] = Default::default();
    let err = |e: rustix::io::Errno| e.to_string();
    for _ in 0..n {
        let t0 = Instant::now();
        let (t1, t2) = match method {
            Method::Malloc => {
                let mut v: Vec<u8> = Vec::with_capacity(len as usize);
                v.resize(len as usize, 0x55);
                let v = std::hint::black_box(v);
                let t1 = Instant::now();
                drop(v);
                (t1, Instant::now())
            }
            Method::Memfd => {
                let fd = rustix::fs::memfd_create("bench-memfd", rustix::fs::MemfdFlags::CLOEXEC)
                    .map_err(err)?;
                rustix::fs::ftruncate(&fd, len).map_err(err)?;
                let map = Map::new(&fd, len as usize).map_err(err)?;
                map.populate(page);
                let t1 = Instant::now();
                drop(map);
                drop(fd);
                (t1, Instant::now())
            }
            Method::HeapIoctl | Method::HeapIoctlReady => {
                let heap = heap.ok_or("no heap")?;
                let fd = heapcore::dma_heap_alloc(heap, len).map_err(err)?;
                let map = if method == Method::HeapIoctlReady {
                    let map = Map::new(&fd, len as usize).map_err(err)?;
                    map.touch(page);
                    Some(map)
                } else {
                    None
                };
                let t1 = Instant::now();
                drop(map);
                drop(fd);
                (t1, Instant::now())
            }
            Method::Heapcore => {
                let buf = ctx
                    .alloc
                    .allocate_first(&ctx.sources, len, "bench-direct")
                    .map_err(|e| e.to_string())?;
                buf.prefault().map_err(|e| e.to_string())?;
                let t1 = Instant::now();
                drop(buf);
                (t1, Instant::now())
            }
        };
        out[0].push(timer.net(t1 - t0));
        out[1].push(timer.net(t2 - t1));
        out[2].push(timer.net(t2 - t0));
    }
    Ok(out)
}

/// Samples per size: a fixed count that makes every size cost about the same bytes.
fn samples_for(ctx: &Ctx, size: u64) -> usize {
    let budget = 256.0 * f64::from(1 << 20) * ctx.scale;
    ((budget / size as f64) as usize).clamp(16, 1_000)
}

pub(super) fn run(ctx: &Ctx, report: &mut Report) -> Result<(), String> {
    let heap_name = ctx.sources.iter().find_map(|s| match s {
        heapcore::Source::Heap(h) => Some(h.clone()),
        _ => None,
    });
    let heap = match &heap_name {
        Some(name) => {
            let info = ctx
                .alloc
                .inventory()
                .find(name.as_str())
                .map_err(|e| e.to_string())?;
            Some(
                rustix::fs::open(
                    &info.path,
                    rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| format!("opening {}: {e}", info.path.display()))?,
            )
        }
        None => {
            report.notes.push(
                "no DMA-BUF heap here: the raw DMA_HEAP_IOCTL_ALLOC peers are not run".into(),
            );
            None
        }
    };
    let heap_label = heap_name.as_ref().map_or(String::new(), |h| h.to_string());
    let mut methods = vec![Method::Malloc, Method::Memfd];
    if heap.is_some() {
        methods.extend([Method::HeapIoctl, Method::HeapIoctlReady]);
    }
    methods.push(Method::Heapcore);
    let specs: Vec<(u64, Method)> = SIZES
        .iter()
        .flat_map(|&(size, _)| methods.iter().map(move |&m| (size, m)))
        .collect();
    let mut samples: Vec<[Vec<u64>; 3]> = vec![Default::default(); specs.len()];
    let mut runs: Vec<[Vec<Summary>; 3]> = vec![Default::default(); specs.len()];
    for rep in 0..ctx.reps {
        ctx.say(format!(
            "allocation peers, repetition {}/{}: {} cases",
            rep + 1,
            ctx.reps,
            specs.len()
        ));
        let order = dmaheap_benchkit::measure::interleaved(rep, specs.len());
        for i in order {
            let (size, method) = specs[i];
            let got = measure(ctx, method, heap.as_ref(), size, samples_for(ctx, size))?;
            for (k, v) in got.into_iter().enumerate() {
                runs[i][k].push(Summary::of(v.clone()));
                samples[i][k].extend(v);
            }
        }
    }
    for (i, &(size, method)) in specs.iter().enumerate() {
        for (k, op) in ["alloc (ready to write)", "free", "alloc + free"]
            .into_iter()
            .enumerate()
        {
            report.cases.push(Case {
                group: "alloc".into(),
                method: method.label(&heap_label),
                op: op.into(),
                size,
                threads: 1,
                layout: String::new(),
                runs: std::mem::take(&mut runs[i][k]),
                pooled: Summary::of(std::mem::take(&mut samples[i][k])),
                kernel: None,
                ops_per_sec: Vec::new(),
                ops_per_sample: Vec::new(),
                oversubscribed: false,
                note: String::new(),
            });
        }
    }
    // Any pool beats making a buffer: printed next to the floor's figure, so it is clear.
    let rt = super::primitives::Method::RealtimePool.label();
    let floor = super::primitives::Method::FreeList.label();
    for (size, label) in SIZES {
        let Some(pool) = size_round_trip(&report.cases, rt, size) else {
            continue;
        };
        let floor_case = size_round_trip(&report.cases, floor, size);
        let mut new = Vec::new();
        for method in &methods {
            let name = method.label(&heap_label);
            let Some(a) = find_case(&report.cases, "alloc", &name, "alloc + free", size, 1, "")
            else {
                continue;
            };
            new.push(ratio_of(
                "alloc",
                format!("{label}: {name} / realtime pool round trip"),
                a,
                pool,
                Stat::P50,
                Stat::P50,
            ));
            if let Some(f) = floor_case {
                new.push(ratio_of(
                    "alloc",
                    format!("{label}: {name} / free-list round trip"),
                    a,
                    f,
                    Stat::P50,
                    Stat::P50,
                ));
            }
        }
        report.ratios.extend(new);
    }
    Ok(())
}
