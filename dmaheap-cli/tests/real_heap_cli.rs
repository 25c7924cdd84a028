//! The `dmaheap` command against real heaps, as a user would run it.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use dmaheap_testkit::{Failed, Need, Suite, ensure};

const DMAHEAP: &str = env!("CARGO_BIN_EXE_dmaheap");
/// The vivid instance the VM boots with its dma-contig allocator (`vivid.allocators=0,1`).
const CONTIG_VIVID: Need = Need::V4l2("vivid-001-vid-cap");
const TEST_USER: &str = "dmaheap-test";

fn main() {
    let mut suite = Suite::named("real_heap_cli");
    suite
        .test(
            "lists_every_source",
            &[Need::SystemHeap, Need::Udmabuf],
            lists_every_source,
        )
        .test("allocates_4k_nv12", &[Need::SystemHeap], allocates_4k_nv12)
        .test(
            "unprivileged_user_is_told_the_fix",
            &[Need::SystemHeap, Need::Root],
            unprivileged_user_is_told_the_fix,
        )
        .test(
            "explains_scanout_on_this_kernel",
            &[Need::SystemHeap],
            explains_scanout_on_this_kernel,
        )
        .test(
            "probe_shows_a_dma_contig_camera_needs_cma_and_the_display_does_not",
            &[Need::SystemHeap, Need::CmaHeap, Need::Kms, CONTIG_VIVID],
            probe_shows_what_devices_take,
        )
        .test(
            "psi_trigger_trims_pools_and_refills_after",
            &[Need::SystemHeap, Need::Root],
            psi_trigger_trims_pools_and_refills_after,
        )
        .test(
            "refault_hog_in_its_cgroup_makes_memory_stalls",
            &[Need::Root, Need::MemoryCgroup, Need::HogDisk],
            refault_hog_in_its_cgroup_makes_memory_stalls,
        );
    suite.run()
}

fn run(cmd: &mut Command) -> Result<(Output, String, String), Failed> {
    let out = cmd.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    Ok((out, stdout, stderr))
}

fn lists_every_source() -> Result<(), Failed> {
    let (out, stdout, _) = run(Command::new(DMAHEAP).arg("list"))?;
    ensure!(out.status.success(), "dmaheap list failed");
    print!("{stdout}");
    for expected in ["system", "udmabuf", "memfd"] {
        ensure!(
            stdout.contains(expected),
            "{expected} missing from:\n{stdout}"
        );
    }
    if let Some(cma) = dmaheap_testkit::cma_heap() {
        ensure!(
            stdout.contains(&cma) && stdout.contains("default CMA area"),
            "CMA heap {cma} not shown"
        );
    }
    let (out, json, _) = run(Command::new(DMAHEAP).args(["list", "--json"]))?;
    ensure!(
        out.status.success() && json.contains("\"default_order\""),
        "--json output: {json}"
    );
    Ok(())
}

fn allocates_4k_nv12() -> Result<(), Failed> {
    let (out, stdout, stderr) = run(Command::new(DMAHEAP).args([
        "alloc",
        "--heap",
        "system",
        "--size",
        "3840x2160:NV12",
        "--count",
        "2",
    ]))?;
    print!("{stdout}");
    ensure!(out.status.success(), "dmaheap alloc failed: {stderr}");
    ensure!(
        stdout.matches("MiB from heap system").count() == 2,
        "{stdout}"
    );
    ensure!(
        stdout.contains("exporter system, name dmaheap-cli#1"),
        "{stdout}"
    );
    Ok(())
}

/// Creates the test user in the VM's private /etc (or finds it) and returns its uid and gid.
fn test_user() -> Result<(u32, u32), Failed> {
    let id = |flag: &str| -> Result<Option<u32>, Failed> {
        let out = Command::new("id").args([flag, TEST_USER]).output()?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .flatten())
    };
    if id("-u")?.is_none() {
        let status = Command::new("useradd")
            .args(["--no-create-home", "--user-group", TEST_USER])
            .stderr(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            // virtme-ng bind-mounts its own /etc/shadow, which useradd cannot replace; an entry
            // in the VM's private /etc/passwd and /etc/group makes the same user.
            use std::io::Write;
            let append = |path: &str, line: &str| -> std::io::Result<()> {
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)?
                    .write_all(line.as_bytes())
            };
            append("/etc/group", &format!("{TEST_USER}:x:4242:\n"))?;
            append(
                "/etc/passwd",
                &format!("{TEST_USER}:x:4242:4242::/nonexistent:/usr/sbin/nologin\n"),
            )?;
        }
    }
    Ok((id("-u")?.ok_or("no uid")?, id("-g")?.ok_or("no gid")?))
}

fn unprivileged_user_is_told_the_fix() -> Result<(), Failed> {
    let (uid, gid) = test_user()?;
    // The build may live where only root can read it (the cache under /root): the user runs a
    // world-readable copy, from a directory it may enter.
    let exe = std::env::temp_dir().join("dmaheap-as-unprivileged-user");
    std::fs::copy(DMAHEAP, &exe)?;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))?;
    let as_user = |args: &[&str]| {
        let mut cmd = Command::new(&exe);
        cmd.args(args)
            .uid(uid)
            .gid(gid)
            .env("USER", TEST_USER)
            .current_dir("/");
        cmd
    };
    let (out, _, stderr) = run(&mut as_user(&[
        "alloc", "--heap", "system", "--size", "1MiB",
    ]))?;
    println!("as {TEST_USER}: {}", stderr.trim());
    ensure!(
        !out.status.success(),
        "an unprivileged user allocated from a root-only heap"
    );
    ensure!(
        stderr.contains("no permission to open /dev/dma_heap/system"),
        "{stderr}"
    );
    ensure!(
        stderr.contains("SUBSYSTEM==\"dma_heap\"")
            && stderr.contains(&format!("usermod -aG video {TEST_USER}")),
        "{stderr}"
    );

    let (out, stdout, _) = run(&mut as_user(&["list"]))?;
    ensure!(out.status.success(), "dmaheap list failed for {TEST_USER}");
    ensure!(
        stdout.contains("no (permission)")
            && stdout.contains("/dev/dma_heap/system: no permission"),
        "{stdout}"
    );

    // Without a heap named, the unprivileged user still gets memory: the walk falls back.
    let (out, stdout, stderr) = run(&mut as_user(&["alloc", "--size", "1MiB"]))?;
    ensure!(out.status.success(), "fallback allocation failed: {stderr}");
    ensure!(
        stdout.contains("from memfd") || stdout.contains("from udmabuf"),
        "{stdout}"
    );
    Ok(())
}

fn explains_scanout_on_this_kernel() -> Result<(), Failed> {
    let (out, stdout, stderr) = run(Command::new(DMAHEAP).args([
        "explain",
        "--usage",
        "scanout",
        "--size",
        "1920x1080:NV12",
        "--contiguous",
    ]))?;
    print!("{stdout}{stderr}");
    match dmaheap_testkit::cma_heap() {
        Some(cma) => {
            ensure!(out.status.success(), "explain failed");
            ensure!(stdout.contains(&format!("1. cma (heap {cma})")), "{stdout}");
            ensure!(
                stdout.contains("system: out, not physically contiguous"),
                "{stdout}"
            );
        }
        None => {
            ensure!(
                !out.status.success(),
                "a contiguous request without CMA must fail"
            );
            ensure!(stdout.contains("cma: out, not on this machine"), "{stdout}");
        }
    }
    Ok(())
}

/// A real PSI trigger, real pressure from a bounded memory hog (`dmaheap bench-hog`), and pools
/// of real heap buffers: background pools give memory back when pressure rises, a realtime
/// pool waits for calm before it refills.
fn psi_trigger_trims_pools_and_refills_after() -> Result<(), Failed> {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use heapcore::pressure::{PressureConfig, PressureWatch};
    use heapcore::{Allocator, Policy, PoolConfig, PoolRegistry, PressureLevel, QosClass, Source};

    let registry = PoolRegistry::new(Arc::new(Allocator::new()), Policy::builtin(), None);
    let watch = registry.watch_pressure(PressureConfig::default())?;
    ensure!(
        matches!(watch, PressureWatch::PsiTriggers(_)),
        "no PSI trigger here: {watch:?}"
    );
    let system = vec![Source::heap("system")?];
    let size = 4 << 20;
    let background = registry
        .pool_with(PoolConfig::new("psi-bg", system.clone(), size).qos(QosClass::Background))?;
    let realtime = registry.pool_with(
        PoolConfig::new("psi-rt", system, size + 4096)
            .qos(QosClass::Realtime)
            .min_buffers(3),
    )?;
    drop(
        (0..6)
            .map(|_| background.try_acquire())
            .collect::<Result<Vec<_>, _>>()?,
    );
    ensure!(
        background.stats().buffers_free == 6,
        "{:?}",
        background.stats()
    );

    let wait_for = |what: &str, secs: u64, cond: &dyn Fn() -> bool| -> Result<f64, Failed> {
        let start = Instant::now();
        while !cond() {
            if start.elapsed() > Duration::from_secs(secs) {
                return Err(format!("no {what} within {secs} s").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(start.elapsed().as_secs_f64())
    };
    // The hog rewrites 256 MiB in a cgroup held to 64 MiB: it reclaims (to zram) and is
    // throttled all the time, which PSI counts as system-wide stalls within a second or two,
    // where taking the whole VM's memory took half a minute under emulation.
    let cgroup = dmaheap_testkit::MemoryCgroup::reclaiming(
        &format!("dmaheap-psi-hog-{}", std::process::id()),
        64 << 20,
    )?;
    let mut hog = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec {DMAHEAP} bench-hog --kind swap --mib 256",
            cgroup.procs().display()
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let rose = wait_for("rise in memory pressure", 60, &|| {
        registry.pressure() >= PressureLevel::Elevated
    });
    let trimmed = rose.as_ref().ok().map(|_| background.stats().buffers_free);
    // Under critical pressure the realtime pool still serves, but does not refill.
    let critical = wait_for("critical memory pressure", 30, &|| {
        registry.pressure() == PressureLevel::Critical
    })
    .is_ok();
    // A refill already under way when pressure turned critical may finish: let it.
    std::thread::sleep(Duration::from_millis(300));
    let refills_before = realtime.stats().refills;
    let taken: Vec<_> = (0..3)
        .map(|_| realtime.try_acquire())
        .collect::<Result<_, _>>()?;
    std::thread::sleep(Duration::from_millis(1000));
    let still_critical = registry.pressure() == PressureLevel::Critical;
    let refills_under_pressure = realtime.stats().refills - refills_before;
    drop(hog.stdin.take());
    let _ = hog.wait();
    let rose = rose?;
    let fell = wait_for("fall in memory pressure", 60, &|| {
        registry.pressure() == PressureLevel::Normal
    })?;
    let refilled = wait_for("realtime refill", 20, &|| {
        realtime.stats().buffers_free >= 3
    })?;
    println!(
        "pressure rose {rose:.1} s after the hog started; background pool kept {trimmed:?} of 6 free buffers; \
         realtime pool refilled {refills_under_pressure} buffer(s) in 1 s of critical pressure; pressure fell {fell:.1} s after the hog \
         ended; realtime refilled to 3 free in {refilled:.1} s"
    );
    ensure!(
        trimmed == Some(0),
        "the background pool was not trimmed: {trimmed:?}"
    );
    ensure!(critical, "the memory hog never made pressure critical");
    ensure!(
        refills_under_pressure == 0 || !still_critical,
        "the realtime pool refilled under critical pressure"
    );
    drop(taken);
    Ok(())
}

/// The benchmark's refault hog in a memory cgroup held below its file, as `dmaheap bench`
/// runs it where it can: the kernel reclaims the cgroup's page cache as the hog reads, and PSI
/// (system-wide, what the bench's pools watch) counts the stalls, however much page cache the
/// rest of the machine keeps (without the cgroup, a refault is a stall only when the kernel
/// judges it recent, and the host's pressure runs saw none). Runs on the host too.
fn refault_hog_in_its_cgroup_makes_memory_stalls() -> Result<(), Failed> {
    use std::io::{BufRead, BufReader};
    use std::time::Duration;

    let some_total = || -> Result<u64, Failed> {
        let psi = std::fs::read_to_string("/proc/pressure/memory")?;
        psi.lines()
            .find(|l| l.starts_with("some "))
            .and_then(|l| l.rsplit("total=").next()?.trim().parse().ok())
            .ok_or_else(|| format!("no `some ... total=` in /proc/pressure/memory: {psi}").into())
    };
    let limit = 64u64 << 20;
    let cgroup = dmaheap_testkit::MemoryCgroup::reclaiming(
        &format!("dmaheap-test-refault-{}", std::process::id()),
        limit,
    )?;
    let file =
        dmaheap_testkit::hog_dir().join(format!("dmaheap-test-refault-{}", std::process::id()));
    let mut hog = Command::new(DMAHEAP)
        .args(["bench-hog", "--kind", "refault", "--file"])
        .arg(&file)
        .arg("--cgroup")
        .arg(cgroup.procs())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut ready = String::new();
    BufReader::new(hog.stdout.take().ok_or("no hog stdout")?).read_line(&mut ready)?;
    let before = some_total()?;
    std::thread::sleep(Duration::from_secs(5));
    let stalled_us = some_total()? - before;
    let member = std::fs::read_to_string(cgroup.procs())?;
    drop(hog.stdin.take());
    let status = hog.wait()?;
    println!(
        "hog said {:?}; PSI memory `some` rose {stalled_us} µs in 5 s; cgroup members: {:?}",
        ready.trim(),
        member.trim()
    );
    ensure!(
        ready.starts_with("ready "),
        "the hog did not start: {ready:?} ({status})"
    );
    ensure!(
        member.trim() == hog.id().to_string(),
        "the hog ({}) was not the cgroup's member: {member:?}",
        hog.id()
    );
    ensure!(status.success(), "the hog ended with {status}");
    ensure!(stalled_us > 0, "PSI saw no memory stall in 5 s of the hog");
    Ok(())
}

/// `dmaheap probe` imports a buffer from each source into each device: vivid with its
/// dma-contig allocator refuses the system heap's scattered pages and takes CMA, the display
/// (vkms) takes the system heap; `dmaheap explain` then picks CMA for both without being told.
fn probe_shows_what_devices_take() -> Result<(), Failed> {
    let camera = dmaheap_testkit::v4l2_device("vivid-001-vid-cap").ok_or("need checked")?;
    let display = dmaheap_testkit::drm_card("vkms").ok_or("need checked")?;
    let cma = dmaheap_testkit::cma_heap().ok_or("need checked")?;
    let (out, stdout, stderr) = run(Command::new(DMAHEAP).args([
        "probe", "--fresh", "--device", &camera, "--device", &display,
    ]))?;
    print!("{stdout}{stderr}");
    ensure!(out.status.success(), "probe failed");
    let section = |node: &str| -> String {
        stdout
            .split_inclusive('\n')
            .skip_while(|l| !l.starts_with(node))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .collect()
    };
    let camera_says = section(&camera);
    ensure!(
        camera_says.contains("system: refused"),
        "{camera}: {camera_says}"
    );
    ensure!(
        camera_says.contains(&format!("{cma}: accepted")),
        "{camera}: {camera_says}"
    );
    let display_says = section(&display);
    ensure!(
        display_says.contains("system: accepted"),
        "{display}: {display_says}"
    );
    // Cached: a second probe does not ask again.
    let (_, again, _) = run(Command::new(DMAHEAP).args(["probe", "--device", &camera]))?;
    ensure!(again.contains("(cached on"), "{again}");
    let (out, stdout, stderr) = run(Command::new(DMAHEAP).args([
        "explain",
        "--device",
        &camera,
        "--device",
        &display,
        "--size",
        "640x480:BGRx",
    ]))?;
    print!("{stdout}{stderr}");
    ensure!(out.status.success(), "explain failed");
    ensure!(stdout.contains(&format!("1. cma (heap {cma})")), "{stdout}");
    ensure!(
        stdout.contains(&format!("system: out, refused by {camera} (vivid)")),
        "{stdout}"
    );
    Ok(())
}
