//! The `dmaheap` command against real heaps, as a user would run it.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use dmaheap_tests::{Failed, Need, Suite, ensure};

const DMAHEAP: &str = env!("CARGO_BIN_EXE_dmaheap");
const TEST_USER: &str = "dmaheap-test";

fn main() {
    let mut suite = Suite::new();
    suite
        .test(
            "real_heap_cli_lists_every_source",
            &[Need::SystemHeap, Need::Udmabuf],
            lists_every_source,
        )
        .test(
            "real_heap_cli_allocates_4k_nv12",
            &[Need::SystemHeap],
            allocates_4k_nv12,
        )
        .test(
            "real_heap_cli_unprivileged_user_is_told_the_fix",
            &[Need::SystemHeap, Need::Root],
            unprivileged_user_is_told_the_fix,
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
    if let Some(cma) = dmaheap_tests::cma_heap() {
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
    let as_user = |args: &[&str]| {
        let mut cmd = Command::new(DMAHEAP);
        cmd.args(args).uid(uid).gid(gid).env("USER", TEST_USER);
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
