//! The DRM ioctls explicit sync needs (`include/uapi/drm/drm.h`): asking a device whether it
//! has timeline syncobjs, and creating, exporting, importing, signalling, querying and
//! waiting on them.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use rustix::io::Errno;
use rustix::ioctl::{self, Opcode, opcode};

use super::retry_eintr;

/// `DRM_CAP_SYNCOBJ_TIMELINE`.
const DRM_CAP_SYNCOBJ_TIMELINE: u64 = 0x14;

/// `struct drm_get_cap`.
#[repr(C)]
#[derive(Debug, Default)]
struct GetCap {
    capability: u64,
    value: u64,
}

/// `struct drm_syncobj_create`.
#[repr(C)]
#[derive(Debug, Default)]
struct SyncobjCreate {
    handle: u32,
    flags: u32,
}

/// `struct drm_syncobj_destroy`.
#[repr(C)]
#[derive(Debug, Default)]
struct SyncobjDestroy {
    handle: u32,
    pad: u32,
}

/// `struct drm_syncobj_handle` as before Linux 6.6 added `point` (the kernel zero-extends a
/// shorter struct; no flag used here needs `point`).
#[repr(C)]
#[derive(Debug, Default)]
struct SyncobjHandle {
    handle: u32,
    flags: u32,
    fd: i32,
    pad: u32,
}

/// `struct drm_syncobj_timeline_wait` as before Linux 6.5 added `deadline_nsec`.
#[repr(C)]
#[derive(Debug, Default)]
struct SyncobjTimelineWait {
    handles: u64,
    points: u64,
    timeout_nsec: i64,
    count_handles: u32,
    flags: u32,
    first_signaled: u32,
    pad: u32,
}

/// `struct drm_syncobj_timeline_array`.
#[repr(C)]
#[derive(Debug, Default)]
struct SyncobjTimelineArray {
    handles: u64,
    points: u64,
    count_handles: u32,
    flags: u32,
}

const DRM_IOCTL_GET_CAP: Opcode = opcode::read_write::<GetCap>(b'd', 0x0c);
const DRM_IOCTL_SYNCOBJ_CREATE: Opcode = opcode::read_write::<SyncobjCreate>(b'd', 0xbf);
const DRM_IOCTL_SYNCOBJ_DESTROY: Opcode = opcode::read_write::<SyncobjDestroy>(b'd', 0xc0);
const DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD: Opcode = opcode::read_write::<SyncobjHandle>(b'd', 0xc1);
const DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE: Opcode = opcode::read_write::<SyncobjHandle>(b'd', 0xc2);
const DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT: Opcode =
    opcode::read_write::<SyncobjTimelineWait>(b'd', 0xca);
const DRM_IOCTL_SYNCOBJ_QUERY: Opcode = opcode::read_write::<SyncobjTimelineArray>(b'd', 0xcb);
const DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL: Opcode =
    opcode::read_write::<SyncobjTimelineArray>(b'd', 0xcd);

/// `DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT`: wait for a fence to be attached, not only for it
/// to signal (a point nobody has submitted yet).
const WAIT_FOR_SUBMIT: u32 = 1 << 1;

/// Runs the read-write ioctl `OPCODE` on `fd` with `data`, retrying `EINTR`.
///
/// # Safety
/// `OPCODE` must be `_IOWR(type, nr, T)` for the kernel's struct that `T` mirrors, and every
/// pointer inside `data` must be valid for what the kernel reads or writes through it.
unsafe fn read_write<const OPCODE: Opcode, T>(
    fd: BorrowedFd<'_>,
    data: &mut T,
) -> rustix::io::Result<()> {
    retry_eintr(|| {
        // SAFETY: (caller) the opcode pairs with `T`.
        let updater = unsafe { ioctl::Updater::<OPCODE, T>::new(data) };
        // SAFETY: `updater` pairs the opcode with its struct; the kernel reads and writes only
        // `data` and what the caller vouched its pointers reach.
        unsafe { ioctl::ioctl(fd, updater) }
    })
}

/// Whether the DRM device `fd` has timeline syncobjs.
pub(crate) fn has_syncobj_timeline(fd: impl AsFd) -> rustix::io::Result<bool> {
    let mut cap = GetCap {
        capability: DRM_CAP_SYNCOBJ_TIMELINE,
        value: 0,
    };
    // SAFETY: DRM_IOCTL_GET_CAP is _IOWR('d', 0x0c, struct drm_get_cap), which GetCap mirrors;
    // it holds no pointers.
    unsafe { read_write::<DRM_IOCTL_GET_CAP, _>(fd.as_fd(), &mut cap) }?;
    Ok(cap.value != 0)
}

/// A new syncobj on `device`; its handle.
pub(crate) fn syncobj_create(device: impl AsFd) -> rustix::io::Result<u32> {
    let mut create = SyncobjCreate::default();
    // SAFETY: _IOWR('d', 0xbf, struct drm_syncobj_create), mirrored by SyncobjCreate; no
    // pointers.
    unsafe { read_write::<DRM_IOCTL_SYNCOBJ_CREATE, _>(device.as_fd(), &mut create) }?;
    Ok(create.handle)
}

/// Destroys the syncobj `handle` on `device` (fds exported from it keep it alive).
pub(crate) fn syncobj_destroy(device: impl AsFd, handle: u32) -> rustix::io::Result<()> {
    let mut destroy = SyncobjDestroy { handle, pad: 0 };
    // SAFETY: _IOWR('d', 0xc0, struct drm_syncobj_destroy), mirrored by SyncobjDestroy; no
    // pointers.
    unsafe { read_write::<DRM_IOCTL_SYNCOBJ_DESTROY, _>(device.as_fd(), &mut destroy) }
}

/// An fd for the syncobj `handle` (what goes into a `SPA_DATA_SyncObj` block).
pub(crate) fn syncobj_handle_to_fd(device: impl AsFd, handle: u32) -> rustix::io::Result<OwnedFd> {
    let mut export = SyncobjHandle {
        handle,
        flags: 0,
        fd: -1,
        pad: 0,
    };
    // SAFETY: _IOWR('d', 0xc1, struct drm_syncobj_handle), whose fields before `point`
    // SyncobjHandle mirrors (the kernel zero-extends); no pointers.
    unsafe { read_write::<DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, _>(device.as_fd(), &mut export) }?;
    // SAFETY: on success the kernel installed a new fd in `export.fd` that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(export.fd) })
}

/// The handle on `device` of the syncobj behind `fd` (a consumer importing a producer's).
pub(crate) fn syncobj_fd_to_handle(device: impl AsFd, fd: impl AsFd) -> rustix::io::Result<u32> {
    let mut import = SyncobjHandle {
        handle: 0,
        flags: 0,
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()),
        pad: 0,
    };
    // SAFETY: _IOWR('d', 0xc2, struct drm_syncobj_handle), as above; the kernel only reads the
    // fd number, which stays open for the call.
    unsafe { read_write::<DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, _>(device.as_fd(), &mut import) }?;
    Ok(import.handle)
}

/// Signals `point` on the timeline syncobj `handle`.
pub(crate) fn syncobj_timeline_signal(
    device: impl AsFd,
    handle: u32,
    point: u64,
) -> rustix::io::Result<()> {
    let (handles, points) = ([handle], [point]);
    let mut signal = SyncobjTimelineArray {
        handles: handles.as_ptr() as u64,
        points: points.as_ptr() as u64,
        count_handles: 1,
        flags: 0,
    };
    // SAFETY: _IOWR('d', 0xcd, struct drm_syncobj_timeline_array), mirrored by
    // SyncobjTimelineArray; `handles` and `points` point to one element each, alive for the
    // call, which the kernel only reads.
    unsafe { read_write::<DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, _>(device.as_fd(), &mut signal) }
}

/// The last signalled point of the timeline syncobj `handle`.
pub(crate) fn syncobj_query(device: impl AsFd, handle: u32) -> rustix::io::Result<u64> {
    let handles = [handle];
    let mut points = [0u64];
    let mut query = SyncobjTimelineArray {
        handles: handles.as_ptr() as u64,
        points: points.as_mut_ptr() as u64,
        count_handles: 1,
        flags: 0,
    };
    // SAFETY: _IOWR('d', 0xcb, struct drm_syncobj_timeline_array); `handles` is one element
    // the kernel reads, `points` one it writes, both alive for the call.
    unsafe { read_write::<DRM_IOCTL_SYNCOBJ_QUERY, _>(device.as_fd(), &mut query) }?;
    Ok(points[0])
}

/// Waits until `point` on the timeline syncobj `handle` signalled, up to the absolute
/// `CLOCK_MONOTONIC` deadline `until_ns` (0: do not wait); whether it did.
pub(crate) fn syncobj_timeline_wait(
    device: impl AsFd,
    handle: u32,
    point: u64,
    until_ns: i64,
) -> rustix::io::Result<bool> {
    let (handles, points) = ([handle], [point]);
    let mut wait = SyncobjTimelineWait {
        handles: handles.as_ptr() as u64,
        points: points.as_ptr() as u64,
        timeout_nsec: until_ns,
        count_handles: 1,
        flags: WAIT_FOR_SUBMIT,
        first_signaled: 0,
        pad: 0,
    };
    // SAFETY: _IOWR('d', 0xca, struct drm_syncobj_timeline_wait) before `deadline_nsec`, which
    // SyncobjTimelineWait mirrors (the kernel zero-extends); `handles` and `points` point to
    // one element each, alive for the call, which the kernel only reads.
    match unsafe { read_write::<DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT, _>(device.as_fd(), &mut wait) } {
        Ok(()) => Ok(true),
        Err(Errno::TIME) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    opcode_test!(64, opcodes_match_the_kernel, {
        // drm.h: DRM_IOWR(nr, type) = _IOWR('d', nr, type).
        assert_eq!(DRM_IOCTL_GET_CAP, 0xc010_640c);
        assert_eq!(DRM_IOCTL_SYNCOBJ_CREATE, 0xc008_64bf);
        assert_eq!(DRM_IOCTL_SYNCOBJ_DESTROY, 0xc008_64c0);
        assert_eq!(DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, 0xc010_64c1);
        assert_eq!(DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, 0xc010_64c2);
        assert_eq!(DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT, 0xc028_64ca);
        assert_eq!(DRM_IOCTL_SYNCOBJ_QUERY, 0xc018_64cb);
        assert_eq!(DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL, 0xc018_64cd);
    });

    #[test]
    fn a_file_that_is_no_drm_device_has_no_syncobjs() {
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(has_syncobj_timeline(&file).is_err());
    }
}
