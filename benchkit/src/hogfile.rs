//! Where the benchmark's refault hog keeps its file, and whether that place can serve: one
//! answer for `dmaheap bench` and for the test that checks the hog.

use std::path::{Path, PathBuf};

/// `DMAHEAP_HOG_DIR`, else /var/tmp.
pub fn dir() -> PathBuf {
    std::env::var_os("DMAHEAP_HOG_DIR").map_or_else(|| "/var/tmp".into(), Into::into)
}

/// Whether `dir` is on tmpfs, whose pages are shmem that only swap could reclaim (and so no
/// place for a file whose pages the kernel must drop and read back).
pub fn on_tmpfs(dir: &Path) -> bool {
    // TMPFS_MAGIC.
    rustix::fs::statfs(dir).is_ok_and(|fs| fs.f_type as u64 == 0x0102_1994)
}
