//! Publishing a registry's statistics for `dmaheap stats`: the directory they go to (this
//! user's alone, or refused), atomic writes that follow no planted link, and the process start
//! time that tells a live publisher from a dead one whose pid was reused.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::RegistryStats;

/// Writes `stats()` every `period` to `stats_dir()/stats-<pid>.json` on a worker thread until
/// it returns `None` (its registry is gone), then removes the file; returns the file's path.
/// The directory is opened (and refused) before anything else; `publishing` says whether a
/// thread already publishes, in which case none is started.
pub(super) fn start(
    period: Duration,
    publishing: &AtomicBool,
    stats: impl Fn() -> Option<RegistryStats> + Send + 'static,
) -> std::io::Result<PathBuf> {
    let dir = stats_dir();
    let dir_fd = open_private_dir(&dir, true)?;
    let name = format!("stats-{}.json", std::process::id());
    let path = dir.join(&name);
    if publishing.swap(true, Ordering::SeqCst) {
        return Ok(path);
    }
    let shown = path.clone();
    crate::worker::spawn("dmaheap-stats".into(), move || {
        while let Some(stats) = stats() {
            if let Err(e) = write_stats(dir_fd.as_fd(), &name, &stats) {
                log::warn!("cannot publish pool statistics to {}: {e}", shown.display());
            }
            std::thread::sleep(period);
        }
        let _ = rustix::fs::unlinkat(&dir_fd, name.as_str(), AtFlags::empty());
    })?;
    Ok(path)
}

/// Where running processes publish pool statistics.
pub fn stats_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("dmaheap"),
        None => {
            std::env::temp_dir().join(format!("dmaheap-{}", rustix::process::getuid().as_raw()))
        }
    }
}

/// Opens the directory `dir` (made 0700 first if `create`), refusing one another user could
/// have prepared: a symlink, not ours, or writable by group or others.
pub fn open_private_dir(dir: &Path, create: bool) -> std::io::Result<OwnedFd> {
    let fail = |what: String, e: rustix::io::Errno| {
        std::io::Error::new(std::io::Error::from(e).kind(), format!("{what}: {e}"))
    };
    if create {
        match rustix::fs::mkdir(dir, Mode::RWXU) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(fail(format!("creating {}", dir.display()), e)),
        }
    }
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "refusing {}: it is a symlink or not a directory (another user may have put \
                 it there; remove it)",
                dir.display()
            ),
        ),
        e => fail(format!("opening {}", dir.display()), e),
    })?;
    let st = rustix::fs::fstat(&fd)?;
    check_private(
        dir,
        st.st_uid,
        st.st_mode,
        rustix::process::geteuid().as_raw(),
    )?;
    Ok(fd)
}

/// Whether a directory with this owner and mode is this user's alone.
fn check_private(dir: &Path, owner: u32, mode: u32, euid: u32) -> std::io::Result<()> {
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("refusing {}: {why}", dir.display()),
        ))
    };
    if owner != euid {
        return refuse(format!(
            "it belongs to uid {owner}, not to this process's uid {euid} (another user may have \
             made it to plant files; remove it)"
        ));
    }
    if mode & 0o022 != 0 {
        return refuse(format!(
            "its mode {:04o} lets other users write in it (it must be 0700)",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Writes `stats` to `name` in `dir` through a temporary file: a planted or stale temporary
/// (even a symlink) is unlinked, never followed, and the new one is created exclusively.
fn write_stats(dir: BorrowedFd<'_>, name: &str, stats: &RegistryStats) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(stats).map_err(std::io::Error::other)?;
    let tmp = format!("{name}.tmp");
    match rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = rustix::fs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )?;
    std::fs::File::from(fd).write_all(&json)?;
    rustix::fs::renameat(dir, tmp.as_str(), dir, name)?;
    Ok(())
}

/// When process `pid` started (field 22 of `/proc/<pid>/stat`), if it runs.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')': fields 3 on
    // follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::allocator::Allocator;
    use crate::policy::Policy;
    use crate::pool::PoolRegistry;

    /// A scratch directory of the given mode, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str, mode: u32) -> Self {
            let path = std::env::temp_dir().join(format!("dmaheap-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir(&path).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_planted_symlink_at_the_temporary_path_is_not_followed() {
        let dir = Dir::new("stats-symlink", 0o700);
        let victim = dir.0.with_extension("victim");
        std::fs::write(&victim, "precious").unwrap();
        let name = "stats-4242.json";
        std::os::unix::fs::symlink(&victim, dir.0.join(format!("{name}.tmp"))).unwrap();
        let fd = open_private_dir(&dir.0, false).unwrap();
        let registry = PoolRegistry::new(Arc::new(Allocator::new()), Policy::builtin(), None);
        write_stats(fd.as_fd(), name, &registry.stats()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::fs::remove_file(&victim).unwrap();
        let written = dir.0.join(name);
        assert!(std::fs::symlink_metadata(&written).unwrap().is_file());
        let back: RegistryStats =
            serde_json::from_slice(&std::fs::read(&written).unwrap()).unwrap();
        assert_eq!(back.pid, std::process::id());
        assert_eq!(back.start_time, process_start_time(std::process::id()));
        assert!(!dir.0.join(format!("{name}.tmp")).exists());
    }

    #[test]
    fn a_directory_others_could_write_or_own_is_refused_and_says_why() {
        let open = Dir::new("stats-0777", 0o777);
        let err = open_private_dir(&open.0, true).unwrap_err().to_string();
        assert!(
            err.contains("mode 0777 lets other users write in it"),
            "{err}"
        );
        let euid = rustix::process::geteuid().as_raw();
        let err = check_private(Path::new("/tmp/x"), euid + 1, 0o40700, euid)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("belongs to uid {}", euid + 1)),
            "{err}"
        );
        // Where this test may give a directory away (root), the real one is refused too.
        let theirs = Dir::new("stats-theirs", 0o700);
        if rustix::fs::chown(&theirs.0, Some(rustix::process::Uid::from_raw(4242)), None).is_ok() {
            let err = open_private_dir(&theirs.0, false).unwrap_err().to_string();
            assert!(err.contains("belongs to uid 4242"), "{err}");
        }
        // A symlink to a private directory is refused as well.
        let mine = Dir::new("stats-mine", 0o700);
        let link = mine.0.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&mine.0, &link).unwrap();
        let err = open_private_dir(&link, true).unwrap_err().to_string();
        std::fs::remove_file(&link).unwrap();
        assert!(err.contains("is a symlink"), "{err}");
        // A new one is made private.
        let fresh = mine.0.join("dmaheap");
        open_private_dir(&fresh, true).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn start_times_tell_processes_apart() {
        let me = process_start_time(std::process::id()).unwrap();
        assert!(me > 0);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(process_start_time(pid), None, "a reaped child has no stat");
    }
}
