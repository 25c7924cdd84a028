//! Pool behaviour on the memfd source (every machine has it); the same code serves heaps,
//! which the real-kernel tests exercise in the VM.

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::pressure::PressureLevel;
use crate::source::Source;

const LEN: u64 = 64 * 1024;

fn alloc() -> Arc<Allocator> {
    Arc::new(Allocator::new())
}

fn memfd_pool(name: &str) -> PoolConfig {
    PoolConfig::new(name, vec![Source::Memfd], LEN)
}

/// Waits until `cond` holds (the refill thread works asynchronously).
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn released_buffers_are_recycled_mapped_and_named() {
    let pool = Pool::new(alloc(), memfd_pool("recycle")).unwrap();
    let first = pool.try_acquire().unwrap();
    let (fd, name) = (first.as_raw_fd(), first.name().map(str::to_owned));
    assert!(first.is_mapped());
    assert_eq!(name.as_deref(), Some("recycle#1"));
    drop(first);
    let again = pool.try_acquire().unwrap();
    assert_eq!(
        (again.as_raw_fd(), again.name().map(str::to_owned)),
        (fd, name)
    );
    let s = pool.stats();
    assert_eq!((s.hits, s.misses, s.hot_path_allocs), (1, 1, 1));
    assert_eq!((s.buffers_out, s.buffers_free, s.bytes_held), (1, 0, LEN));
}

#[test]
fn prewarmed_pools_serve_without_allocating() {
    let pool = Pool::new(alloc(), memfd_pool("prewarm").min_buffers(3)).unwrap();
    assert_eq!(pool.stats().buffers_free, 3);
    let held: Vec<_> = (0..3).map(|_| pool.try_acquire().unwrap()).collect();
    let s = pool.stats();
    assert_eq!((s.hits, s.hot_path_allocs), (3, 0));
    drop(held);
}

#[test]
fn realtime_pools_refill_in_the_background() {
    let pool = Pool::new(
        alloc(),
        memfd_pool("refill").qos(QosClass::Realtime).min_buffers(4),
    )
    .unwrap();
    let held: Vec<_> = (0..4).map(|_| pool.try_acquire().unwrap()).collect();
    eventually("the refill to restore 4 free buffers", || {
        pool.stats().buffers_free == 4
    });
    let more: Vec<_> = (0..4).map(|_| pool.try_acquire().unwrap()).collect();
    let s = pool.stats();
    assert_eq!(s.hot_path_allocs, 0, "{s:?}");
    assert!(s.refills >= 4, "{s:?}");
    drop((held, more));
}

#[test]
fn a_full_pool_errors_or_waits_as_asked() {
    let pool = Pool::new(alloc(), memfd_pool("full").max_buffers(2)).unwrap();
    let a = pool.try_acquire().unwrap();
    let _b = pool.try_acquire().unwrap();
    let err = pool.try_acquire().unwrap_err().to_string();
    assert!(
        err.contains("pool full") && err.contains("max-buffers (2)"),
        "{err}"
    );
    let err = pool.acquire_timeout(Duration::from_millis(50)).unwrap_err();
    assert!(matches!(err, Error::PoolTimeout { .. }), "{err}");
    let returner = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        drop(a);
    });
    let c = pool.acquire_timeout(Duration::from_secs(10)).unwrap();
    returner.join().unwrap();
    drop(c);
}

#[test]
fn budgets_are_never_exceeded_and_say_so() {
    let pool = Pool::new(alloc(), memfd_pool("budget").budget(3 * LEN)).unwrap();
    let held: Vec<_> = (0..3).map(|_| pool.try_acquire().unwrap()).collect();
    let err = pool.try_acquire().unwrap_err().to_string();
    assert!(err.contains("exceed its budget of 192.0 KiB"), "{err}");
    let s = pool.stats();
    assert_eq!((s.bytes_held, s.budget_denials), (3 * LEN, 1));
    drop(held);
}

#[test]
fn a_global_budget_caps_all_pools_together() {
    let registry = PoolRegistry::new(alloc(), crate::policy::Policy::builtin(), Some(5 * LEN));
    let a = registry.pool_with(memfd_pool("global-a")).unwrap();
    let b = registry
        .pool_with(memfd_pool("global-b").qos(QosClass::Background))
        .unwrap();
    let mut held = Vec::new();
    for i in 0..10 {
        let pool = if i % 2 == 0 { &a } else { &b };
        match pool.try_acquire() {
            Ok(buf) => held.push(buf),
            Err(e) => assert!(e.to_string().contains("global budget"), "{e}"),
        }
        assert!(registry.stats().global_used <= 5 * LEN);
    }
    assert_eq!(held.len(), 5);
}

#[test]
fn concurrent_acquirers_never_share_a_buffer() {
    let pool = Pool::new(alloc(), memfd_pool("stress").max_buffers(6).min_buffers(2)).unwrap();
    let in_use = Arc::new(Mutex::new(HashSet::new()));
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let (pool, in_use) = (pool.clone(), Arc::clone(&in_use));
            std::thread::spawn(move || {
                for i in 0..1500u32 {
                    let mut buf = pool.acquire_timeout(Duration::from_secs(30)).unwrap();
                    assert!(
                        in_use.lock().unwrap().insert(buf.as_raw_fd()),
                        "handed out twice"
                    );
                    let stamp = [t, (i & 0xff) as u8];
                    buf.write().unwrap()[..2].copy_from_slice(&stamp);
                    std::thread::yield_now();
                    assert_eq!(&buf.read().unwrap()[..2], &stamp, "another thread wrote it");
                    assert!(in_use.lock().unwrap().remove(&buf.as_raw_fd()));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = pool.stats();
    assert_eq!(s.hits + s.misses, 8 * 1500);
    assert!(s.buffers_free <= 6 && s.buffers_out == 0, "{s:?}");
}

#[test]
fn buffers_returned_after_shutdown_are_freed() {
    let fds = dmaheap_testkit::open_fds;
    let pool = Pool::new(alloc(), memfd_pool("shutdown").min_buffers(2)).unwrap();
    let out = pool.try_acquire().unwrap();
    let before = fds();
    pool.shutdown();
    assert!(matches!(
        pool.try_acquire(),
        Err(Error::PoolShutDown { .. })
    ));
    drop(out);
    assert_eq!(pool.stats().bytes_held, 0);
    assert!(
        fds() <= before - 2,
        "free and returned buffers must be closed"
    );
}

#[test]
fn dropping_every_handle_shuts_the_pool_down() {
    let pool = Pool::new(alloc(), memfd_pool("dropped").min_buffers(1)).unwrap();
    let buf = pool.try_acquire().unwrap();
    drop(pool);
    let inner = Arc::clone(buf.pool());
    drop(buf);
    assert_eq!(inner.lock().total, 0);
}

#[test]
fn pressure_trims_background_then_normal_and_realtime_refills_after() {
    let registry = PoolRegistry::new(alloc(), crate::policy::Policy::builtin(), None);
    let make = |name: &str, qos, min| {
        let pool = registry
            .pool_with(memfd_pool(name).qos(qos).min_buffers(min))
            .unwrap();
        // Grow each pool to 6 buffers, all free.
        let held: Vec<_> = (0..6).map(|_| pool.try_acquire().unwrap()).collect();
        drop(held);
        pool
    };
    let background = make("trim-bg", QosClass::Background, 1);
    let normal = make("trim-normal", QosClass::Normal, 2);
    let realtime = make("trim-rt", QosClass::Realtime, 3);
    let free = |p: &Pool| p.stats().buffers_free;
    // The realtime pool's refill may have grown it while buffers were out: let it settle.
    eventually("the refill to settle", || {
        let s = realtime.stats();
        s.buffers_free as u64 * LEN == s.bytes_held
    });
    let rt = free(&realtime);
    assert!(rt >= 6);

    registry.set_pressure(PressureLevel::Elevated);
    assert_eq!(
        (free(&background), free(&normal), free(&realtime)),
        (1, 6, rt)
    );
    registry.set_pressure(PressureLevel::Critical);
    assert_eq!(
        (free(&background), free(&normal), free(&realtime)),
        (1, 2, rt)
    );

    // Under critical pressure a realtime pool serves but does not refill.
    let taken: Vec<_> = (0..rt).map(|_| realtime.try_acquire().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(free(&realtime), 0);
    registry.set_pressure(PressureLevel::Elevated);
    eventually("the realtime pool to refill once pressure eases", || {
        free(&realtime) >= 3
    });
    registry.set_pressure(PressureLevel::Normal);
    assert!(background.stats().trims >= 5 && normal.stats().trims >= 4);
    drop(taken);
}

#[test]
fn a_pinned_pressure_level_outlasts_the_watch_it_replaced() {
    let registry = PoolRegistry::new(alloc(), crate::policy::Policy::builtin(), None);
    // No PSI file: the MemAvailable timer, told that any machine is critically short.
    let config = crate::pressure::PressureConfig {
        psi_path: "/nonexistent/memory.pressure".into(),
        critical_available: 1.01,
        ..Default::default()
    };
    registry.watch_pressure(config.clone()).unwrap();
    eventually("the timer to report critical pressure", || {
        registry.pressure() == PressureLevel::Critical
    });
    registry.pin_pressure(PressureLevel::Normal);
    assert_eq!(registry.stats().pressure_source, "pinned");
    // The timer looks once a second; a watch left running would raise the level again.
    registry.watch_pressure(config).unwrap();
    registry.pin_pressure(PressureLevel::Normal);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(registry.pressure(), PressureLevel::Normal);
    assert_eq!(
        "Critical".parse::<PressureLevel>(),
        Ok(PressureLevel::Critical)
    );
    let err = "../high".parse::<PressureLevel>().unwrap_err();
    assert!(
        err.contains("use watch, normal, elevated or critical"),
        "{err}"
    );
}

#[test]
fn a_normal_pool_under_critical_pressure_keeps_the_buffer_a_stream_reuses() {
    let pool = Pool::new(alloc(), memfd_pool("churn-normal")).unwrap();
    pool.set_pressure(PressureLevel::Critical);
    for _ in 0..100 {
        drop(pool.try_acquire().unwrap());
    }
    let s = pool.stats();
    // One allocation for the first frame, none after: not an allocation per frame.
    assert_eq!((s.misses, s.hits, s.trims), (1, 99, 0), "{s:?}");
    // A burst's surplus is still given back.
    let burst: Vec<_> = (0..4).map(|_| pool.try_acquire().unwrap()).collect();
    drop(burst);
    assert_eq!(pool.stats().buffers_free, 1);
    assert_eq!(pool.stats().trims, 3);
}

#[test]
fn buffers_returned_under_pressure_go_back_to_the_kernel() {
    let pool = Pool::new(alloc(), memfd_pool("return-bg").qos(QosClass::Background)).unwrap();
    let held: Vec<_> = (0..3).map(|_| pool.try_acquire().unwrap()).collect();
    pool.set_pressure(PressureLevel::Elevated);
    drop(held);
    let s = pool.stats();
    assert_eq!((s.buffers_free, s.bytes_held, s.trims), (0, 0, 3));
}

#[test]
fn detached_buffers_leave_the_pool() {
    let pool = Pool::new(alloc(), memfd_pool("detach").max_buffers(1)).unwrap();
    let buf = pool.try_acquire().unwrap().detach();
    assert_eq!(pool.stats().bytes_held, 0);
    let _second = pool.try_acquire().unwrap();
    assert_eq!(buf.len(), LEN);
}

#[test]
fn bad_configurations_are_refused() {
    let err = Pool::new(alloc(), PoolConfig::new("none", vec![], LEN)).unwrap_err();
    assert!(err.to_string().contains("no source"), "{err}");
    let err = Pool::new(alloc(), memfd_pool("minmax").min_buffers(3).max_buffers(2)).unwrap_err();
    assert!(err.to_string().contains("above max-buffers"), "{err}");
    assert!(Pool::new(alloc(), PoolConfig::new("zero", vec![Source::Memfd], 0)).is_err());
}

#[test]
fn huge_buffer_counts_are_refused_before_anything_is_sized_by_them() {
    // A prewarm of 4 billion (an unbounded u32 property) used to size a Vec first: abort.
    for config in [
        memfd_pool("huge-min").min_buffers(4_000_000_000),
        memfd_pool("huge-max").max_buffers(usize::MAX),
    ] {
        let err = Pool::new(alloc(), config).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
        assert!(
            err.to_string().contains("above the limit of 65536"),
            "{err}"
        );
    }
}

#[test]
fn buffer_names_fit_the_kernel_limit() {
    assert_eq!(buffer_name("anim", 7), "anim#7");
    let long = buffer_name(&"é".repeat(40), 123_456);
    assert!(long.len() <= 31 && long.ends_with("#123456"), "{long}");
}

#[test]
fn protected_heap_buffers_are_pooled_without_being_mapped() {
    // A memfd stands in for a protected heap's buffer: mapping it would work, so only the
    // origin keeps the pool from mapping it (a real protected buffer would refuse the map and
    // fail the allocation).
    let fd = crate::source::sealed_memfd("protected-stand-in", LEN).unwrap();
    let protected = crate::dmabuf::Origin::Heap("protected,secure-video".parse().unwrap());
    let buf = DmaBuf::from_parts(fd, LEN, protected);
    make_ready(&buf).unwrap();
    assert!(!buf.is_mapped());
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(!maps.contains("dmaheap:protected-stand-in"), "{maps}");

    let fd = crate::source::sealed_memfd("plain-stand-in", LEN).unwrap();
    let buf = DmaBuf::from_parts(fd, LEN, crate::dmabuf::Origin::Memfd);
    make_ready(&buf).unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(buf.is_mapped() && maps.contains("dmaheap:plain-stand-in"));
}

#[test]
fn cpu_users_of_a_policy_listing_a_protected_heap_first_fall_back() {
    use crate::constraints::{Constraints, CpuAccess};
    use crate::inventory::FakeMachine;

    let m = FakeMachine::new(&["protected,secure-video", "system"], &[]);
    let mut policy = crate::policy::Policy::builtin();
    policy
        .apply_str(
            "[usage.video-decode]\nheaps = [\"protected,secure-video\", \"system\", \"memfd\"]\n",
            std::path::Path::new("p.toml"),
        )
        .unwrap();
    let registry = PoolRegistry::new(
        Arc::new(Allocator::with_inventory(m.inventory())),
        policy,
        None,
    );
    let decode = Constraints::new(LEN).usage("video-decode".parse().unwrap());
    // Devices only: the protected heap comes first.
    assert_eq!(
        registry.candidates(&decode).sources()[0],
        Source::heap("protected,secure-video").unwrap()
    );
    // The CPU writes: the protected heap is out, and the pool serves from what follows (the
    // fake system heap node cannot allocate, so memfd), mapped and writable.
    let cpu = decode.cpu_access(CpuAccess::Write);
    let candidates = registry.candidates(&cpu);
    assert_eq!(
        candidates.sources(),
        [Source::heap("system").unwrap(), Source::Memfd]
    );
    assert!(
        candidates
            .to_string()
            .contains("protected,secure-video: out, protected"),
        "{candidates}"
    );
    let pool = registry.pool_for(&cpu).unwrap();
    let mut buf = pool.try_acquire().unwrap();
    assert_eq!(buf.origin(), &crate::dmabuf::Origin::Memfd);
    assert!(buf.is_mapped());
    buf.write().unwrap()[0] = 1;
}
