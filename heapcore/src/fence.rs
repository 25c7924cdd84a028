//! Fences: whether a device still reads or writes a dma-buf, and waiting until it is done.
//!
//! A dma-buf carries the fences of the devices using it (a display scanning it out, a GPU
//! rendering into it). `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` (Linux 6.0) turns them into one
//! sync_file that signals when all are done; a pool that hands out a buffer before then shows
//! torn frames. [`DmaBuf::busy`](crate::DmaBuf::busy) asks, pools keep busy buffers aside until
//! their fence signals. [`SwSyncTimeline`] makes fences a test signals by hand.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};

use crate::error::{Error, Result};
use crate::uapi;

/// A sync_file: one fence, signalled once.
#[derive(Debug)]
pub struct SyncFile(OwnedFd);

impl SyncFile {
    /// Wraps a sync_file fd from elsewhere (a GPU driver, a compositor, sw_sync).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self(fd)
    }

    /// Whether the fence has signalled (a `poll` that does not wait).
    pub fn is_signalled(&self) -> Result<bool> {
        self.wait(Duration::ZERO)
    }

    /// Waits up to `timeout` for the fence; whether it signalled.
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        uapi::sync_file_wait(&self.0, timeout).map_err(|e| Error::io("waiting on a fence", e))
    }
}

impl AsFd for SyncFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Whether no device uses the dma-buf `dmabuf` any more, asked with one `poll` for writing
/// (`POLLOUT`: every fence, reader's and writer's, has signalled; the same fences
/// `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` for writing exports), with no fd made. `false` means "ask
/// properly": busy, or the kernel did not say (another poller's callback pending, an error),
/// and the caller takes the sync_file path ([`DmaBuf::busy`](crate::DmaBuf::busy)), which
/// also gives the fence to wait on. One system call; a pool's release asks this first.
pub fn idle_now(dmabuf: impl AsFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        &dmabuf,
        rustix::event::PollFlags::OUT,
    )];
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(1))
        && fds[0].revents() == rustix::event::PollFlags::OUT
}

/// How a fence attached to a buffer uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceAccess {
    /// A reader (a display scanning out): the buffer may not be written before it signals.
    Read,
    /// A writer (a GPU rendering): the buffer may be neither read nor written before.
    Write,
}

impl FenceAccess {
    pub(crate) fn flags(self) -> uapi::DmaBufSyncFlags {
        match self {
            Self::Read => uapi::DmaBufSyncFlags::READ,
            Self::Write => uapi::DmaBufSyncFlags::WRITE,
        }
    }
}

/// A software fence timeline (`CONFIG_SW_SYNC`, debugfs' `sync/sw_sync`): fences on it signal
/// when the test advances it. For tests and emulation of a device that holds a buffer.
#[derive(Debug)]
pub struct SwSyncTimeline {
    fd: OwnedFd,
}

/// Where debugfs shows sw_sync.
pub const SW_SYNC_PATH: &str = "/sys/kernel/debug/sync/sw_sync";

impl SwSyncTimeline {
    /// Opens a new timeline at 0.
    pub fn open() -> Result<Self> {
        Self::open_at(Path::new(SW_SYNC_PATH))
    }

    /// Opens a new timeline through the sw_sync file at `path`.
    pub fn open_at(path: &Path) -> Result<Self> {
        rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map(|fd| Self { fd })
            .map_err(|e| Error::Unavailable {
                source_name: "sw_sync".into(),
                reason: format!(
                    "{}: {e} (it needs CONFIG_SW_SYNC and debugfs mounted on \
                     /sys/kernel/debug, as root)",
                    path.display()
                ),
            })
    }

    /// A fence that signals when the timeline reaches `value`.
    pub fn fence_at(&self, value: u32) -> Result<SyncFile> {
        uapi::sw_sync_create_fence(&self.fd, value)
            .map(SyncFile)
            .map_err(|e| Error::io("creating a sw_sync fence", e))
    }

    /// Advances the timeline by `count`, signalling the fences it reaches.
    pub fn advance(&self, count: u32) -> Result<()> {
        uapi::sw_sync_inc(&self.fd, count).map_err(|e| Error::io("advancing a sw_sync timeline", e))
    }
}
