//! Explicit sync with DRM timeline syncobjs (as PipeWire's `SPA_META_SyncTimeline` carries
//! them): a DRM device that has them ([`SyncDevice`]) and one timeline on it ([`Timeline`]).
//!
//! A producer gives each buffer two timelines (acquire, release). It signals the acquire point
//! when the frame is written and draws into the buffer again only once the consumer signalled
//! the release point. Consumers (and tests) import the fds they receive with
//! [`SyncDevice::import`].

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};

use crate::error::{Error, Result};
use crate::uapi;

/// A DRM device with timeline syncobjs (`DRM_CAP_SYNCOBJ_TIMELINE`).
#[derive(Debug)]
pub struct SyncDevice {
    fd: OwnedFd,
    path: PathBuf,
}

impl SyncDevice {
    /// The first DRM device here with timeline syncobjs, render nodes first; `None` when no
    /// device has them (vkms and vgem do not: only GPU drivers such as amdgpu, i915, xe,
    /// nouveau, msm, panthor or virtio-gpu do).
    pub fn find() -> Option<Rc<Self>> {
        let mut nodes: Vec<PathBuf> = std::fs::read_dir("/dev/dri")
            .into_iter()
            .flatten()
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("renderD") || n.starts_with("card"))
            })
            .collect();
        // renderD* sorts after card*: put render nodes first, which need no DRM master.
        nodes.sort_by_key(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (!name.starts_with("renderD"), name.to_owned())
        });
        nodes.iter().find_map(|p| Self::open(p).ok().flatten())
    }

    /// Opens `path`; `None` if the device has no timeline syncobjs.
    pub fn open(path: &Path) -> Result<Option<Rc<Self>>> {
        let fd = rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        match uapi::has_syncobj_timeline(&fd) {
            Ok(true) => Ok(Some(Rc::new(Self {
                fd,
                path: path.to_owned(),
            }))),
            Ok(false) | Err(_) => Ok(None),
        }
    }

    /// The device node.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new timeline syncobj, exported as an fd for a `SPA_DATA_SyncObj` block.
    pub fn timeline(self: &Rc<Self>) -> Result<Timeline> {
        let handle =
            uapi::syncobj_create(&self.fd).map_err(|e| Error::io("creating a syncobj", e))?;
        let mut timeline = Timeline {
            device: Rc::clone(self),
            handle,
            fd: None,
        };
        timeline.fd = Some(
            uapi::syncobj_handle_to_fd(&self.fd, handle)
                .map_err(|e| Error::io("exporting a syncobj", e))?,
        );
        Ok(timeline)
    }

    /// The timeline behind a received syncobj fd.
    pub fn import(self: &Rc<Self>, fd: BorrowedFd<'_>) -> Result<Timeline> {
        let handle = uapi::syncobj_fd_to_handle(&self.fd, fd)
            .map_err(|e| Error::io("importing a syncobj", e))?;
        Ok(Timeline {
            device: Rc::clone(self),
            handle,
            fd: None,
        })
    }
}

/// One timeline syncobj on a [`SyncDevice`]; destroyed with it (fds exported from it keep
/// the kernel object alive for whoever holds them).
#[derive(Debug)]
pub struct Timeline {
    device: Rc<SyncDevice>,
    handle: u32,
    fd: Option<OwnedFd>,
}

impl Timeline {
    /// The exported fd (timelines made by [`SyncDevice::timeline`]).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    /// Signals `point`.
    pub fn signal(&self, point: u64) -> Result<()> {
        uapi::syncobj_timeline_signal(&self.device.fd, self.handle, point)
            .map_err(|e| Error::io("signalling a timeline point", e))
    }

    /// The last point signalled.
    pub fn signalled(&self) -> Result<u64> {
        uapi::syncobj_query(&self.device.fd, self.handle)
            .map_err(|e| Error::io("querying a timeline", e))
    }

    /// Waits up to `timeout` for `point`; whether it signalled.
    pub fn wait(&self, point: u64, timeout: Duration) -> Result<bool> {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let until = now
            .tv_sec
            .saturating_mul(1_000_000_000)
            .saturating_add(now.tv_nsec)
            .saturating_add(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX));
        let until = if timeout.is_zero() { 0 } else { until };
        uapi::syncobj_timeline_wait(&self.device.fd, self.handle, point, until)
            .map_err(|e| Error::io("waiting on a timeline point", e))
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        if let Err(e) = uapi::syncobj_destroy(&self.device.fd, self.handle) {
            log::debug!("destroying syncobj {}: {e}", self.handle);
        }
    }
}
