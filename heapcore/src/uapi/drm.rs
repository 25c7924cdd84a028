//! The few DRM ioctls (`include/uapi/drm/drm.h`, `drm_mode.h`) that tell whether a device
//! imports a dma-buf: PRIME_FD_TO_HANDLE (the import: a driver that needs contiguous memory
//! refuses scattered pages here), MODE_ADDFB2 (a display can scan it out), MODE_RMFB and
//! GEM_CLOSE to let go.

use std::os::fd::{AsFd, AsRawFd};

use rustix::ioctl::{self, Opcode, opcode};

use super::retry_eintr;

/// `struct drm_prime_handle`.
#[repr(C)]
#[derive(Debug, Default)]
struct DrmPrimeHandle {
    handle: u32,
    flags: u32,
    fd: i32,
}

/// `struct drm_mode_fb_cmd2`.
#[repr(C)]
#[derive(Debug, Default)]
struct DrmModeFbCmd2 {
    fb_id: u32,
    width: u32,
    height: u32,
    pixel_format: u32,
    flags: u32,
    handles: [u32; 4],
    pitches: [u32; 4],
    offsets: [u32; 4],
    modifier: [u64; 4],
}

/// `struct drm_gem_close`.
#[repr(C)]
#[derive(Debug, Default)]
struct DrmGemClose {
    handle: u32,
    pad: u32,
}

const DRM_IOCTL_PRIME_FD_TO_HANDLE: Opcode = opcode::read_write::<DrmPrimeHandle>(b'd', 0x2e);
const DRM_IOCTL_MODE_ADDFB2: Opcode = opcode::read_write::<DrmModeFbCmd2>(b'd', 0xb8);
const DRM_IOCTL_MODE_RMFB: Opcode = opcode::read_write::<u32>(b'd', 0xaf);
const DRM_IOCTL_GEM_CLOSE: Opcode = opcode::write::<DrmGemClose>(b'd', 0x09);

/// `DRM_FORMAT_XRGB8888` ('XR24').
pub(crate) const DRM_FORMAT_XRGB8888: u32 = u32::from_le_bytes(*b"XR24");

/// Imports a dma-buf into the device; returns its GEM handle.
pub(crate) fn prime_fd_to_handle(dev: impl AsFd, buf: impl AsFd) -> rustix::io::Result<u32> {
    let dev = dev.as_fd();
    let mut data = DrmPrimeHandle {
        fd: buf.as_fd().as_raw_fd(),
        ..DrmPrimeHandle::default()
    };
    retry_eintr(|| {
        // SAFETY: the opcode is DRM_IOWR(0x2e, struct drm_prime_handle) and `data` is that
        // struct.
        let import = unsafe { ioctl::Updater::<DRM_IOCTL_PRIME_FD_TO_HANDLE, _>::new(&mut data) };
        // SAFETY: `import` pairs the opcode with its struct; the kernel writes only `data`.
        unsafe { ioctl::ioctl(dev, import) }
    })?;
    Ok(data.handle)
}

/// Makes a `width`×`height` XRGB8888 framebuffer of the GEM object `handle` (rows of
/// `pitch` bytes); returns its id.
pub(crate) fn add_fb2(
    dev: impl AsFd,
    handle: u32,
    width: u32,
    height: u32,
    pitch: u32,
) -> rustix::io::Result<u32> {
    let dev = dev.as_fd();
    let mut cmd = DrmModeFbCmd2 {
        width,
        height,
        pixel_format: DRM_FORMAT_XRGB8888,
        handles: [handle, 0, 0, 0],
        pitches: [pitch, 0, 0, 0],
        ..DrmModeFbCmd2::default()
    };
    retry_eintr(|| {
        // SAFETY: the opcode is DRM_IOWR(0xb8, struct drm_mode_fb_cmd2) and `cmd` is that
        // struct.
        let add = unsafe { ioctl::Updater::<DRM_IOCTL_MODE_ADDFB2, _>::new(&mut cmd) };
        // SAFETY: `add` pairs the opcode with its struct; the kernel writes only `cmd`.
        unsafe { ioctl::ioctl(dev, add) }
    })?;
    Ok(cmd.fb_id)
}

/// Removes framebuffer `fb_id`.
pub(crate) fn rm_fb(dev: impl AsFd, mut fb_id: u32) -> rustix::io::Result<()> {
    let dev = dev.as_fd();
    retry_eintr(|| {
        // SAFETY: the opcode is DRM_IOWR(0xaf, unsigned int) and `fb_id` is that integer.
        let rm = unsafe { ioctl::Updater::<DRM_IOCTL_MODE_RMFB, u32>::new(&mut fb_id) };
        // SAFETY: `rm` pairs the opcode with its integer, which outlives the call.
        unsafe { ioctl::ioctl(dev, rm) }
    })
}

/// Lets go of GEM handle `handle`.
pub(crate) fn gem_close(dev: impl AsFd, handle: u32) -> rustix::io::Result<()> {
    let dev = dev.as_fd();
    retry_eintr(|| {
        // SAFETY: the opcode is DRM_IOW(0x09, struct drm_gem_close) and the input is that
        // struct.
        let close =
            unsafe { ioctl::Setter::<DRM_IOCTL_GEM_CLOSE, _>::new(DrmGemClose { handle, pad: 0 }) };
        // SAFETY: `close` pairs the opcode with its struct, which the kernel only reads.
        unsafe { ioctl::ioctl(dev, close) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_drm_h() {
        assert_eq!(std::mem::size_of::<DrmPrimeHandle>(), 12);
        assert_eq!(std::mem::size_of::<DrmModeFbCmd2>(), 104);
        assert_eq!(std::mem::size_of::<DrmGemClose>(), 8);
        assert_eq!(DRM_FORMAT_XRGB8888, 0x3432_5258);
    }

    opcode_test!(any, opcodes_match_drm_h, {
        assert_eq!(DRM_IOCTL_PRIME_FD_TO_HANDLE, 0xC00C_642E);
        assert_eq!(DRM_IOCTL_MODE_ADDFB2, 0xC068_64B8);
        assert_eq!(DRM_IOCTL_MODE_RMFB, 0xC004_64AF);
        assert_eq!(DRM_IOCTL_GEM_CLOSE, 0x4008_6409);
    });
}
