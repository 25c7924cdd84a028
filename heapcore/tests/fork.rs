//! A forked child gets a pool registry of its own from `PoolRegistry::process()`, never the
//! parent's, whose pools hold the parent's buffers. A separate test binary: fork() is only
//! done where no other test's threads hold locks.

use heapcore::{PoolConfig, PoolRegistry, Source};

#[test]
fn a_forked_child_gets_a_registry_of_its_own() {
    let parent = PoolRegistry::process();
    let config = PoolConfig::new("fork-test", vec![Source::Memfd], 64 * 1024).min_buffers(1);
    let inherited = parent.pool_with(config.clone()).unwrap();
    // SAFETY: the child only runs the checks below and leaves with _exit, never returning
    // into the test harness. This binary has one test; the only other thread is the process
    // registry's pressure monitor, and the child takes none of the locks it may hold.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let own = PoolRegistry::process();
        let fresh = !own.ptr_eq(&parent) && PoolRegistry::process().ptr_eq(&own);
        let pool_ok = own
            .pool_with(config)
            .is_ok_and(|pool| !pool.ptr_eq(&inherited) && pool.buffers_free() == 1);
        let code = if !fresh {
            1
        } else if !pool_ok {
            2
        } else {
            0
        };
        // SAFETY: ends the child at once, without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(
        libc::WIFEXITED(status),
        "the child died: status {status:#x}"
    );
    match libc::WEXITSTATUS(status) {
        0 => {}
        1 => panic!("the child got the parent's registry"),
        2 => panic!("the child's registry gave it the parent's pool"),
        other => panic!("the child exited with {other}"),
    }
    // The parent's registry is the one it had.
    assert!(PoolRegistry::process().ptr_eq(&parent));
}
