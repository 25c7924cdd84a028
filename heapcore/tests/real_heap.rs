//! Tests against real kernel heaps. On a machine without them every test is reported ignored
//! with its reason; `tests/vm/run` runs them in a VM where the heaps exist.

use std::os::fd::AsFd;

use dmaheap_testkit::{Failed, Need, Suite, ensure, open_fds};
use std::sync::Arc;

use heapcore::{
    Allocator, Constraints, DmaBuf, Error, Origin, Policy, PoolConfig, PoolRegistry, QosClass,
    Source, Usage, sysinfo,
};

const MIB: u64 = 1 << 20;

/// Set (to a cgroup's `cgroup.procs`) in the child that `prefault_over_a_memory_cgroup_limit`
/// runs: this binary, re-executed, allocates inside the cgroup instead of running the suite.
const MEMCG_CHILD: &str = "DMAHEAP_TEST_MEMCG_CHILD";

fn main() {
    if let Some(procs) = std::env::var_os(MEMCG_CHILD) {
        std::process::exit(prefault_child(std::path::Path::new(&procs)));
    }
    let mut suite = Suite::named("real_heap");
    suite
        .test(
            "system_buffer_is_a_named_dmabuf",
            &[Need::SystemHeap],
            system_buffer_is_a_named_dmabuf,
        )
        .test(
            "system_buffer_is_zeroed",
            &[Need::SystemHeap],
            system_buffer_is_zeroed,
        )
        .test(
            "writes_read_back_through_a_second_mapping",
            &[Need::SystemHeap],
            writes_read_back_through_a_second_mapping,
        )
        .test(
            "cma_buffer_is_contiguous_and_from_cma",
            &[Need::CmaHeap, Need::Root],
            cma_buffer_is_contiguous_and_from_cma,
        )
        .test(
            "cma_out_of_memory_falls_back",
            &[Need::CmaHeap, Need::SystemHeap],
            cma_out_of_memory_falls_back,
        )
        .test(
            "udmabuf_buffer_works",
            &[Need::Udmabuf],
            udmabuf_buffer_works,
        )
        .test(
            "udmabuf_limit_is_enforced",
            &[Need::Udmabuf, Need::Root],
            udmabuf_limit_is_enforced,
        )
        .test(
            "10000_cycles_leak_no_fd",
            &[Need::SystemHeap],
            cycles_leak_no_fd,
        )
        .test(
            "policy_pool_serves_named_heap_buffers",
            &[Need::SystemHeap],
            policy_pool_serves_named_heap_buffers,
        )
        .test(
            "pool_falls_back_from_cma_to_system",
            &[Need::CmaHeap, Need::SystemHeap],
            pool_falls_back_from_cma_to_system,
        )
        .test(
            "busy_buffers_are_not_handed_out_until_their_fence_signals",
            &[Need::SystemHeap, Need::SwSync],
            busy_buffers_wait_for_their_fence,
        )
        .test(
            "prefault_over_a_memory_cgroup_limit_is_out_of_memory",
            &[Need::Root, Need::MemoryCgroup],
            prefault_over_a_memory_cgroup_limit,
        );
    suite.run()
}

fn system() -> Source {
    Source::heap("system").expect("valid name")
}

fn system_buffer_is_a_named_dmabuf() -> Result<(), Failed> {
    let alloc = Allocator::new();
    let buf = alloc.allocate(&system(), 8 * MIB + 1, "rh-named")?;
    ensure!(buf.is_dmabuf(), "not a dma-buf: {buf:?}");
    ensure!(
        buf.len() % sysinfo::page_size() == 0,
        "length {} is not page-aligned",
        buf.len()
    );
    ensure!(
        buf.len() == 8 * MIB + sysinfo::page_size(),
        "length {}",
        buf.len()
    );
    let info = buf.fdinfo()?;
    ensure!(
        info.exp_name() == Some("system"),
        "exp_name {:?}",
        info.exp_name()
    );
    ensure!(info.name() == Some("rh-named"), "name {:?}", info.name());
    ensure!(
        info.size() == Some(buf.len()),
        "fdinfo size {:?}",
        info.size()
    );
    Ok(())
}

fn system_buffer_is_zeroed() -> Result<(), Failed> {
    let alloc = Allocator::new();
    // Dirty some pages and free them, so the next allocation may reuse them.
    for _ in 0..4 {
        let mut dirty = alloc.allocate(&system(), 4 * MIB, "rh-dirty")?;
        dirty.write()?.fill(0xA5);
    }
    let buf = alloc.allocate(&system(), 16 * MIB, "rh-zero")?;
    let bytes = buf.read()?;
    ensure!(
        bytes.iter().all(|&b| b == 0),
        "a fresh system-heap buffer was not zeroed"
    );
    Ok(())
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

fn writes_read_back_through_a_second_mapping() -> Result<(), Failed> {
    let alloc = Allocator::new();
    let mut buf = alloc.allocate(&system(), 3 * MIB, "rh-twin")?;
    let expected = pattern(buf.len() as usize);
    {
        let mut cpu = buf.write()?;
        cpu.copy_from_slice(&expected);
        cpu.finish()?;
    }
    let twin = DmaBuf::import(buf.as_fd().try_clone_to_owned()?)?;
    ensure!(
        twin.origin()
            == &Origin::Imported {
                exporter: Some("system".into())
            },
        "imported origin {}",
        twin.origin()
    );
    ensure!(
        twin.len() == buf.len(),
        "imported length {} != {}",
        twin.len(),
        buf.len()
    );
    ensure!(
        *twin.read()? == expected[..],
        "the second mapping does not see the writes"
    );
    Ok(())
}

/// The allocation bitmap of a CMA area from debugfs (CONFIG_CMA_DEBUGFS): one bit per
/// 2^order_per_bit pages, set where the area is allocated.
struct CmaBitmap {
    bits: Vec<bool>,
    pages_per_bit: u64,
}

fn cma_bitmap(area: &str) -> Option<CmaBitmap> {
    let dir = std::path::Path::new("/sys/kernel/debug/cma").join(area);
    if !dir.exists() {
        // Root may mount debugfs; elsewhere the bitmap is simply not available.
        let _ = std::process::Command::new("mount")
            .args(["-t", "debugfs", "none", "/sys/kernel/debug"])
            .status();
    }
    let words = std::fs::read_to_string(dir.join("bitmap")).ok()?;
    let order: u32 = std::fs::read_to_string(dir.join("order_per_bit"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let bits = words
        .split_whitespace()
        .filter_map(|w| w.parse::<u32>().ok())
        .flat_map(|w| (0..32).map(move |b| w & (1 << b) != 0))
        .collect();
    Some(CmaBitmap {
        bits,
        pages_per_bit: 1 << order,
    })
}

/// Runs of consecutive bits set in `after` but not in `before`: the allocation's placement.
fn new_runs(before: &CmaBitmap, after: &CmaBitmap) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, (&b, &a)) in before.bits.iter().zip(&after.bits).enumerate() {
        if a && !b {
            match runs.last_mut() {
                Some((start, len)) if *start + *len == i => *len += 1,
                _ => runs.push((i, 1)),
            }
        }
    }
    runs
}

fn cma_buffer_is_contiguous_and_from_cma() -> Result<(), Failed> {
    let cma_free = || sysinfo::MemInfo::read().get("CmaFree").unwrap_or(0);
    let heap = dmaheap_testkit::cma_heap().expect("need checked");
    let alloc = Allocator::new();
    let (free_before, bitmap_before) = (cma_free(), cma_bitmap(&heap));
    let len = 24 * MIB;
    let mut buf = alloc.allocate(&Source::heap("cma")?, len, "rh-cma")?;
    let (free_during, bitmap_during) = (cma_free(), cma_bitmap(&heap));
    ensure!(
        buf.fdinfo()?.exp_name() == Some(heap.as_str()),
        "exporter is not {heap}"
    );
    buf.write()?.fill(1);

    // Freed CMA pages can wait on per-CPU lists, which CmaFree does not count, so a new buffer
    // may reuse a few MiB without CmaFree moving; most of it must come off the counter.
    let dropped = free_before.saturating_sub(free_during);
    ensure!(
        dropped >= len * 3 / 4,
        "CmaFree dropped by {dropped} bytes for a {len} byte buffer"
    );
    match (bitmap_before, bitmap_during) {
        (Some(before), Some(during)) => {
            let runs = new_runs(&before, &during);
            let pages: u64 = runs.iter().map(|r| r.1 as u64).sum::<u64>() * before.pages_per_bit;
            ensure!(
                runs.len() == 1,
                "the buffer lies in {} separate runs of the CMA area: {runs:?}",
                runs.len()
            );
            ensure!(
                pages == len / sysinfo::page_size(),
                "the area gained {pages} pages for {len} bytes"
            );
            println!(
                "CMA area {heap}: the buffer is one physically contiguous run of {pages} pages at bit {}; CmaFree dropped {} MiB",
                runs[0].0,
                dropped / MIB
            );
        }
        _ => println!(
            "no CMA debugfs bitmap here: contiguity shown by CmaFree only (dropped {} MiB)",
            dropped / MIB
        ),
    }
    Ok(())
}

fn cma_out_of_memory_falls_back() -> Result<(), Failed> {
    let alloc = Allocator::new();
    let cma = Source::heap("cma")?;
    let too_big = heapcore::sysinfo::MemInfo::read()
        .get("CmaTotal")
        .unwrap_or(0)
        + 16 * MIB;
    match alloc.allocate(&cma, too_big, "rh-oom") {
        Err(Error::OutOfMemory { size, .. }) => ensure!(size >= too_big, "size {size}"),
        other => return Err(format!("expected OutOfMemory from CMA, got {other:?}").into()),
    }
    let buf = alloc.allocate_first(&[cma, system()], too_big, "rh-fallback")?;
    ensure!(
        buf.origin() == &Origin::Heap("system".parse()?),
        "served by {}",
        buf.origin()
    );
    Ok(())
}

fn udmabuf_buffer_works() -> Result<(), Failed> {
    let alloc = Allocator::new();
    let mut buf = alloc.allocate(&Source::Udmabuf, 5 * MIB, "rh-udmabuf")?;
    let info = buf.fdinfo()?;
    ensure!(
        info.exp_name() == Some("udmabuf"),
        "exp_name {:?}",
        info.exp_name()
    );
    ensure!(info.name() == Some("rh-udmabuf"), "name {:?}", info.name());
    let expected = pattern(buf.len() as usize);
    buf.write()?.copy_from_slice(&expected);
    let twin = DmaBuf::import(buf.as_fd().try_clone_to_owned()?)?;
    ensure!(
        *twin.read()? == expected[..],
        "udmabuf writes do not read back"
    );
    Ok(())
}

/// Puts a udmabuf `size_limit_mb` back as it was when dropped.
struct UdmabufLimit(String);

const UDMABUF_LIMIT: &str = "/sys/module/udmabuf/parameters/size_limit_mb";

impl Drop for UdmabufLimit {
    fn drop(&mut self) {
        let _ = std::fs::write(UDMABUF_LIMIT, &self.0);
    }
}

fn udmabuf_limit_is_enforced() -> Result<(), Failed> {
    let mut alloc = Allocator::new();
    let mut _restore = None;
    if alloc.inventory().udmabuf.size_limit.is_none() {
        // Linux 6.17+ has no limit by default (INT_MAX MiB): set one, as a distribution may.
        let was = std::fs::read_to_string(UDMABUF_LIMIT)
            .map_err(|e| format!("size_limit_mb is not readable: {e}"))?;
        std::fs::write(UDMABUF_LIMIT, "64").map_err(|e| format!("setting size_limit_mb: {e}"))?;
        _restore = Some(UdmabufLimit(was));
        alloc = Allocator::new();
    }
    let limit = alloc
        .inventory()
        .udmabuf
        .size_limit
        .ok_or("size_limit_mb is not readable")?;
    match alloc.allocate(&Source::Udmabuf, limit + 1, "rh-big") {
        Err(Error::TooLarge { limit: l, .. }) => ensure!(l == limit, "limit {l}"),
        other => return Err(format!("expected TooLarge, got {other:?}").into()),
    }
    let buf = alloc.allocate_first(&[Source::Udmabuf, Source::Memfd], limit + 1, "rh-big")?;
    ensure!(buf.origin() == &Origin::Memfd, "served by {}", buf.origin());
    Ok(())
}

fn cycles_leak_no_fd() -> Result<(), Failed> {
    let alloc = Allocator::new();
    let mut sources = vec![system()];
    if Need::Udmabuf.is_met() {
        sources.push(Source::Udmabuf);
    }
    // Warm up (opens the heap devices, which stay open by design).
    for s in &sources {
        alloc.allocate(s, 4096, "")?;
    }
    let before = open_fds();
    for i in 0..10_000 {
        let mut buf = alloc.allocate(&sources[i % sources.len()], 64 * 1024, "rh-cycle")?;
        buf.write()?[0] = i as u8;
    }
    let after = open_fds();
    ensure!(
        after == before,
        "{} fds leaked over 10,000 cycles",
        after as i64 - before as i64
    );
    println!(
        "10,000 allocate/map/write/free cycles over {} source(s): {before} fds before and after",
        sources.len()
    );
    Ok(())
}

fn policy_pool_serves_named_heap_buffers() -> Result<(), Failed> {
    let registry = PoolRegistry::new(Arc::new(Allocator::new()), Policy::builtin(), None);
    let layout =
        heapcore::format::FrameLayout::packed(heapcore::format::VideoFormat::Nv12, 1920, 1080)?;
    let constraints = Constraints::for_frame(&layout).usage(Usage::new(Usage::ANIMATION)?);
    let candidates = registry.candidates(&constraints);
    println!("{candidates}");
    ensure!(
        candidates.sources()[0] == system(),
        "animation should prefer the system heap"
    );
    let pool = registry.pool_for(&constraints)?;
    ensure!(
        pool.config().qos == QosClass::Realtime && pool.stats().buffers_free == 4,
        "not prewarmed: {:?}",
        pool.stats()
    );
    let mut buf = pool.try_acquire()?;
    let info = buf.fdinfo()?;
    ensure!(
        info.exp_name() == Some("system"),
        "exp_name {:?}",
        info.exp_name()
    );
    ensure!(
        info.name()
            .is_some_and(|n| n.starts_with("animation-3.0MiB#")),
        "name {:?}",
        info.name()
    );
    buf.write()?.fill(7);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&*buf);
    drop(buf);
    // It is back on the free list; the refill thread may have topped the list up meanwhile
    // (it does while fewer than min_buffers are free), so look through all free buffers.
    let free = (0..pool.stats().buffers_free)
        .map(|_| pool.try_acquire())
        .collect::<Result<Vec<_>, _>>()?;
    let again = free
        .iter()
        .find(|b| std::os::fd::AsRawFd::as_raw_fd(&***b) == fd)
        .ok_or("the pool did not recycle the buffer")?;
    ensure!(
        again.read()?.iter().all(|&b| b == 7),
        "recycled buffers keep their contents"
    );
    ensure!(pool.stats().hot_path_allocs == 0, "{:?}", pool.stats());
    Ok(())
}

fn pool_falls_back_from_cma_to_system() -> Result<(), Failed> {
    let alloc = Arc::new(Allocator::new());
    let cma_total = sysinfo::MemInfo::read().get("CmaTotal").unwrap_or(0);
    let size = 24 * MIB;
    let count = (cma_total / size + 2) as usize;
    let config = PoolConfig::new("rh-fallback", vec![Source::heap("cma")?, system()], size)
        .max_buffers(count);
    let pool = heapcore::Pool::new(alloc, config)?;
    let held: Vec<_> = (0..count)
        .map(|_| pool.try_acquire())
        .collect::<Result<_, _>>()?;
    let from = |heap: &str| {
        held.iter()
            .filter(|b| {
                b.fdinfo()
                    .ok()
                    .and_then(|i| i.exp_name().map(str::to_owned))
                    .as_deref()
                    == Some(heap)
            })
            .count()
    };
    let cma = dmaheap_testkit::cma_heap().expect("need checked");
    let (n_cma, n_system) = (from(&cma), from("system"));
    println!(
        "{count} x 24 MiB: {n_cma} from {cma}, {n_system} from system (CMA total {} MiB)",
        cma_total / MIB
    );
    ensure!(
        n_cma >= 1 && n_system >= 2 && n_cma + n_system == count,
        "cma {n_cma}, system {n_system}"
    );
    Ok(())
}

const MEMCG_LIMIT: u64 = 64 * MIB;

/// A pool prewarmed with 4 memfd buffers of 32 MiB in a cgroup limited to 64 MiB: the second
/// buffer cannot be faulted in. MADV_POPULATE_WRITE says ENOMEM; the pool must report that,
/// not fault the pages in one by one, which the kernel answers with a hang (v1 with the OOM
/// killer off; v2 with no process it may kill) or, where it may kill, SIGKILL.
fn prefault_over_a_memory_cgroup_limit() -> Result<(), Failed> {
    use std::time::{Duration, Instant};

    let cgroup = dmaheap_testkit::MemoryCgroup::create(
        &format!("dmaheap-test-prefault-{}", std::process::id()),
        MEMCG_LIMIT,
    )?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .env(MEMCG_CHILD, cgroup.procs())
        .env(
            "DMAHEAP_TEST_MEMCG_FLAVOUR",
            format!("{:?}", cgroup.flavour),
        )
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // With the fix the child ends within seconds; without it, it never ends on its own.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().ok_or("no stderr")?, &mut stderr)?;
    println!(
        "{:?} cgroup: child said {:?}",
        cgroup.flavour,
        stderr.trim()
    );
    let status = status.ok_or(
        "the child did not end in 120 s: it hangs faulting in pages the cgroup cannot hold",
    )?;
    ensure!(
        status.code().is_some(),
        "the child was killed ({status:?}) instead of reporting out of memory: {stderr}"
    );
    ensure!(
        status.code() == Some(3) && stderr.contains("is out of memory"),
        "the child exited with {status:?}: {stderr}"
    );
    Ok(())
}

/// The child: joins the cgroup (its memory so far stays charged where it was) and prewarms.
fn prefault_child(procs: &std::path::Path) -> i32 {
    let alloc = Arc::new(Allocator::new());
    if std::env::var("DMAHEAP_TEST_MEMCG_FLAVOUR").as_deref() == Ok("V2") {
        // cgroup v2 cannot turn the OOM killer off for a cgroup; exempt its only member.
        if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
            eprintln!("cannot set oom_score_adj: {e}");
            return 4;
        }
    }
    if let Err(e) = std::fs::write(procs, std::process::id().to_string()) {
        eprintln!("cannot join {}: {e}", procs.display());
        return 4;
    }
    let config = PoolConfig::new("memcg-prefault", vec![Source::Memfd], 32 * MIB).min_buffers(4);
    match heapcore::Pool::new(alloc, config) {
        Ok(pool) => {
            eprintln!(
                "{} bytes prewarmed inside a {MEMCG_LIMIT} byte limit",
                pool.stats().bytes_held
            );
            5
        }
        Err(e @ Error::OutOfMemory { .. }) => {
            eprintln!("{e}");
            3
        }
        Err(e) => {
            eprintln!("not an out-of-memory error: {e}");
            6
        }
    }
}

/// A buffer whose dma-buf still carries an unsignalled fence (a device reading it, here a
/// sw_sync fence standing in for a display) comes back to the pool but is not handed out
/// again until the fence signals; idle buffers still are, and acquire takes them first.
fn busy_buffers_wait_for_their_fence() -> Result<(), Failed> {
    use heapcore::FenceAccess;
    use heapcore::fence::SwSyncTimeline;
    use std::time::Duration;
    let inode = |b: &heapcore::PooledBuf| rustix::fs::fstat(b.as_fd()).map(|s| s.st_ino);
    let pool = heapcore::Pool::new(
        Arc::new(Allocator::new()),
        PoolConfig::new("fence-test", vec![Source::heap("system")?], 64 << 10)
            .min_buffers(3)
            .max_buffers(3),
    )?;
    let bufs: Vec<_> = (0..3)
        .map(|_| pool.try_acquire())
        .collect::<Result<_, _>>()?;
    let inodes: Vec<u64> = bufs.iter().map(inode).collect::<Result<_, _>>()?;
    let timeline = SwSyncTimeline::open()?;
    let fence = timeline.fence_at(1)?;
    bufs[0].attach_fence(&fence, FenceAccess::Read)?;
    ensure!(
        bufs[0].busy()?.is_some(),
        "the attached fence does not make the buffer busy"
    );
    ensure!(
        heapcore::fences_supported() == Some(true),
        "fences not supported"
    );
    drop(bufs);
    let stats = pool.stats();
    ensure!(
        stats.buffers_busy == 1 && stats.buffers_free == 2,
        "one busy, two free expected: {stats:?}"
    );
    // The two idle ones come out; the busy one does not, and the pool may not grow.
    let a = pool.try_acquire()?;
    let b = pool.try_acquire()?;
    let got = [inode(&a)?, inode(&b)?];
    ensure!(
        !got.contains(&inodes[0]),
        "the busy buffer was handed out: {got:?} {inodes:?}"
    );
    let err = pool
        .try_acquire()
        .err()
        .ok_or("a third buffer while one is busy")?;
    println!("while busy: {err}");
    ensure!(
        pool.acquire_timeout(Duration::from_millis(200)).is_err(),
        "a busy buffer was handed out before its fence signalled"
    );
    timeline.advance(1)?;
    let c = pool.acquire_timeout(Duration::from_secs(10))?;
    ensure!(
        inode(&c)? == inodes[0],
        "after the fence, the same buffer comes back"
    );
    let stats = pool.stats();
    println!("after the fence signalled: {stats:?}");
    ensure!(
        stats.returned_busy == 1 && stats.buffers_busy == 0,
        "{stats:?}"
    );
    Ok(())
}
