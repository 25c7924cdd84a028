//! Asking a device which buffers it takes: a small buffer from each dma-buf source, imported
//! the way the device's own users import (V4L2: REQBUFS + PREPARE_BUF with
//! `V4L2_MEMORY_DMABUF` on the queue it would fill or read; DRM: a PRIME import, and a
//! framebuffer on a display node), then let go.

use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};

use super::{Acceptance, Device, DeviceReport, Subsystem};
use crate::allocator::Allocator;
use crate::heap::HeapKind;
use crate::source::Source;
use crate::uapi::{drm, v4l2};

/// The dma-buf sources a probe asks about, by name: every heap (one name per memory: an
/// alias of a CMA area is asked under the area's name) and udmabuf. Protected heaps are left
/// out: what a device does with them is a secure-world matter.
pub(super) fn candidates(alloc: &Allocator) -> Vec<(String, Source)> {
    let inv = alloc.inventory();
    let mut out: Vec<(String, Source)> = inv
        .heaps
        .iter()
        .filter(|h| h.kind != HeapKind::Protected && h.alias_of.is_none())
        .filter(|h| inv.find(h.name.as_str()).is_ok_and(|c| c.name == h.name))
        .map(|h| (h.name.to_string(), Source::Heap(h.name.clone())))
        .collect();
    if inv.has_udmabuf() {
        out.push(("udmabuf".into(), Source::Udmabuf));
    }
    out
}

/// Probes `device` with a buffer from each of `sources`.
pub(super) fn probe(
    device: &Device,
    alloc: &Allocator,
    sources: &[(String, Source)],
) -> DeviceReport {
    let unknown = |why: String| {
        sources
            .iter()
            .map(|(name, _)| (name.clone(), Acceptance::Unknown(why.clone())))
            .collect()
    };
    let verdicts = match open(device) {
        Err(why) => unknown(why),
        Ok(fd) => match device.subsystem {
            Subsystem::Video4Linux => match v4l2_queue(&fd) {
                Ok((queue, size)) => sources
                    .iter()
                    .map(|(name, source)| {
                        (name.clone(), v4l2_import(&fd, queue, size, alloc, source))
                    })
                    .collect(),
                Err(why) => unknown(why),
            },
            Subsystem::Drm => {
                let display = device
                    .node
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("card"));
                sources
                    .iter()
                    .map(|(name, source)| (name.clone(), drm_import(&fd, display, alloc, source)))
                    .collect()
            }
            Subsystem::Media | Subsystem::Other => {
                unknown("the node does not take buffers itself".into())
            }
        },
    };
    DeviceReport {
        device: device.clone(),
        kernel: crate::sysinfo::kernel_release(),
        sources: verdicts,
        cached: false,
    }
}

fn open(device: &Device) -> Result<OwnedFd, String> {
    rustix::fs::open(
        &device.node,
        OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => format!(
            "no permission to open {}: {}",
            device.node.display(),
            crate::access::permission_fix(&device.node)
        ),
        e => format!("opening {}: {e}", device.node.display()),
    })
}

/// The queue to probe and the bytes one of its buffers needs: the queue a memory-to-memory
/// device reads from, or the one a capture (else output) device fills.
fn v4l2_queue(fd: &OwnedFd) -> Result<(u32, u32), String> {
    let cap = v4l2::querycap(fd).map_err(|e| format!("VIDIOC_QUERYCAP: {e}"))?;
    let caps = if cap.capabilities & v4l2::CAP_DEVICE_CAPS != 0 {
        cap.device_caps
    } else {
        cap.capabilities
    };
    if caps & v4l2::CAP_STREAMING == 0 {
        return Err("no streaming I/O".into());
    }
    let m2m = caps & (v4l2::CAP_VIDEO_M2M | v4l2::CAP_VIDEO_M2M_MPLANE) != 0;
    let queue = if m2m && caps & v4l2::CAP_VIDEO_M2M_MPLANE != 0 {
        v4l2::BUF_TYPE_VIDEO_OUTPUT_MPLANE
    } else if m2m {
        v4l2::BUF_TYPE_VIDEO_OUTPUT
    } else if caps & v4l2::CAP_VIDEO_CAPTURE_MPLANE != 0 {
        v4l2::BUF_TYPE_VIDEO_CAPTURE_MPLANE
    } else if caps & v4l2::CAP_VIDEO_CAPTURE != 0 {
        v4l2::BUF_TYPE_VIDEO_CAPTURE
    } else if caps & v4l2::CAP_VIDEO_OUTPUT_MPLANE != 0 {
        v4l2::BUF_TYPE_VIDEO_OUTPUT_MPLANE
    } else if caps & v4l2::CAP_VIDEO_OUTPUT != 0 {
        v4l2::BUF_TYPE_VIDEO_OUTPUT
    } else {
        return Err("no video capture or output queue".into());
    };
    let (size, planes) = v4l2::buffer_size(fd, queue).map_err(|e| format!("VIDIOC_G_FMT: {e}"))?;
    if planes != 1 {
        return Err(format!(
            "its format has {planes} planes; one-plane formats are probed"
        ));
    }
    if size == 0 {
        return Err("its format needs no bytes".into());
    }
    Ok((queue, size))
}

fn v4l2_import(
    fd: &OwnedFd,
    queue: u32,
    size: u32,
    alloc: &Allocator,
    source: &Source,
) -> Acceptance {
    let buf = match alloc.allocate(source, u64::from(size), "dmaheap-probe") {
        Ok(buf) => buf,
        Err(e) => return Acceptance::Unknown(format!("no buffer to offer: {e}")),
    };
    if let Err(e) = v4l2::reqbufs_dmabuf(fd, queue, 1) {
        return Acceptance::Unknown(format!("REQBUFS with V4L2_MEMORY_DMABUF: {e}"));
    }
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    let verdict = match v4l2::prepare_dmabuf(fd, queue, &buf, len) {
        Ok(()) => Acceptance::Accepted,
        Err(e) => Acceptance::Refused(format!("VIDIOC_PREPARE_BUF of {size} bytes: {e}")),
    };
    if let Err(e) = v4l2::reqbufs_dmabuf(fd, queue, 0) {
        log::debug!("releasing the probe's buffer: {e}");
    }
    verdict
}

/// A 64×64 XRGB8888 frame: PRIME import, and on a display node a framebuffer of it.
fn drm_import(fd: &OwnedFd, display: bool, alloc: &Allocator, source: &Source) -> Acceptance {
    const SIDE: u32 = 64;
    let buf = match alloc.allocate(source, u64::from(SIDE * SIDE * 4), "dmaheap-probe") {
        Ok(buf) => buf,
        Err(e) => return Acceptance::Unknown(format!("no buffer to offer: {e}")),
    };
    let handle = match drm::prime_fd_to_handle(fd, &buf) {
        Ok(handle) => handle,
        Err(e) => return Acceptance::Refused(format!("PRIME import: {e}")),
    };
    let verdict = if display {
        match drm::add_fb2(fd, handle, SIDE, SIDE, SIDE * 4) {
            Ok(fb) => {
                let _ = drm::rm_fb(fd, fb);
                Acceptance::Accepted
            }
            // A node without modesetting (vgem) imports, which is all it does.
            Err(rustix::io::Errno::OPNOTSUPP) => Acceptance::Accepted,
            Err(e) => Acceptance::Refused(format!("ADDFB2 after the import: {e}")),
        }
    } else {
        Acceptance::Accepted
    };
    let _ = drm::gem_close(fd, handle);
    verdict
}
