//! The few V4L2 ioctls (`include/uapi/linux/videodev2.h`) that tell whether a device imports a
//! dma-buf: QUERYCAP, G_FMT, REQBUFS and PREPARE_BUF with `V4L2_MEMORY_DMABUF`. PREPARE_BUF
//! maps the buffer for the device as QBUF would (`vb2_dc_map_dmabuf` refuses memory a
//! dma-contig driver cannot use) without queueing it; REQBUFS with a count of 0 lets it go.

use std::os::fd::{AsFd, AsRawFd};

use rustix::ioctl::{self, Opcode, opcode};

use super::retry_eintr;

/// `struct v4l2_capability`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct V4l2Capability {
    pub(crate) driver: [u8; 16],
    pub(crate) card: [u8; 32],
    pub(crate) bus_info: [u8; 32],
    pub(crate) version: u32,
    pub(crate) capabilities: u32,
    pub(crate) device_caps: u32,
    reserved: [u32; 3],
}

/// `struct v4l2_format`: the type, then a union that is 8-aligned on 64-bit targets (some of
/// its members hold pointers); only `pix` and `pix_mp` are read.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct V4l2Format {
    type_: u32,
    fmt: V4l2FormatUnion,
}

#[repr(C)]
#[derive(Clone, Copy)]
union V4l2FormatUnion {
    raw: [u8; 200],
    _align: *mut std::ffi::c_void,
}

impl std::fmt::Debug for V4l2FormatUnion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("v4l2_format.fmt")
    }
}

/// `struct v4l2_requestbuffers`.
#[repr(C)]
#[derive(Debug, Default)]
struct V4l2RequestBuffers {
    count: u32,
    type_: u32,
    memory: u32,
    capabilities: u32,
    flags: u8,
    reserved: [u8; 3],
}

/// `struct v4l2_timecode`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct V4l2Timecode {
    type_: u32,
    flags: u32,
    frames: u8,
    seconds: u8,
    minutes: u8,
    hours: u8,
    userbits: [u8; 4],
}

/// `struct v4l2_plane`.
#[repr(C)]
#[derive(Clone, Copy)]
struct V4l2Plane {
    bytesused: u32,
    length: u32,
    m: V4l2PlaneM,
    data_offset: u32,
    reserved: [u32; 11],
}

#[repr(C)]
#[derive(Clone, Copy)]
union V4l2PlaneM {
    mem_offset: u32,
    userptr: std::ffi::c_ulong,
    fd: i32,
}

/// `struct v4l2_buffer`.
#[repr(C)]
struct V4l2Buffer {
    index: u32,
    type_: u32,
    bytesused: u32,
    flags: u32,
    field: u32,
    timestamp: [std::ffi::c_long; 2],
    timecode: V4l2Timecode,
    sequence: u32,
    memory: u32,
    m: V4l2BufferM,
    length: u32,
    reserved2: u32,
    request_fd: i32,
}

#[repr(C)]
union V4l2BufferM {
    offset: u32,
    userptr: std::ffi::c_ulong,
    planes: *mut V4l2Plane,
    fd: i32,
}

const VIDIOC_QUERYCAP: Opcode = opcode::read::<V4l2Capability>(b'V', 0);
const VIDIOC_G_FMT: Opcode = opcode::read_write::<V4l2Format>(b'V', 4);
const VIDIOC_REQBUFS: Opcode = opcode::read_write::<V4l2RequestBuffers>(b'V', 8);
const VIDIOC_PREPARE_BUF: Opcode = opcode::read_write::<V4l2Buffer>(b'V', 93);

/// `V4L2_MEMORY_DMABUF`.
const V4L2_MEMORY_DMABUF: u32 = 4;

/// The buffer types (`enum v4l2_buf_type`) the probe uses.
pub(crate) const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
pub(crate) const BUF_TYPE_VIDEO_OUTPUT: u32 = 2;
pub(crate) const BUF_TYPE_VIDEO_CAPTURE_MPLANE: u32 = 9;
pub(crate) const BUF_TYPE_VIDEO_OUTPUT_MPLANE: u32 = 10;

/// Capability bits (`V4L2_CAP_*`) the probe reads.
pub(crate) const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
pub(crate) const CAP_VIDEO_OUTPUT: u32 = 0x0000_0002;
pub(crate) const CAP_VIDEO_CAPTURE_MPLANE: u32 = 0x0000_1000;
pub(crate) const CAP_VIDEO_OUTPUT_MPLANE: u32 = 0x0000_2000;
pub(crate) const CAP_VIDEO_M2M_MPLANE: u32 = 0x0000_4000;
pub(crate) const CAP_VIDEO_M2M: u32 = 0x0000_8000;
pub(crate) const CAP_STREAMING: u32 = 0x0400_0000;
pub(crate) const CAP_DEVICE_CAPS: u32 = 0x8000_0000;

/// Whether `type_` is a multi-planar buffer type.
fn is_mplane(type_: u32) -> bool {
    matches!(
        type_,
        BUF_TYPE_VIDEO_CAPTURE_MPLANE | BUF_TYPE_VIDEO_OUTPUT_MPLANE
    )
}

/// What the device is (`VIDIOC_QUERYCAP`).
pub(crate) fn querycap(dev: impl AsFd) -> rustix::io::Result<V4l2Capability> {
    let dev = dev.as_fd();
    retry_eintr(|| {
        // SAFETY: the opcode is _IOR('V', 0, struct v4l2_capability) and the output type is
        // that struct, laid out as the header with #[repr(C)].
        let get = unsafe { ioctl::Getter::<VIDIOC_QUERYCAP, V4l2Capability>::new() };
        // SAFETY: `get` pairs the opcode with its struct; the kernel writes only that struct.
        unsafe { ioctl::ioctl(dev, get) }
    })
}

/// The current format of queue `type_`: the bytes one buffer needs and the number of planes
/// (`VIDIOC_G_FMT`; for single-planar types one plane).
pub(crate) fn buffer_size(dev: impl AsFd, type_: u32) -> rustix::io::Result<(u32, u8)> {
    let dev = dev.as_fd();
    let mut format = V4l2Format {
        type_,
        fmt: V4l2FormatUnion { raw: [0; 200] },
    };
    retry_eintr(|| {
        // SAFETY: the opcode is _IOWR('V', 4, struct v4l2_format) and `format` is that struct.
        let get = unsafe { ioctl::Updater::<VIDIOC_G_FMT, _>::new(&mut format) };
        // SAFETY: `get` pairs the opcode with its struct; the kernel writes only `format`.
        unsafe { ioctl::ioctl(dev, get) }
    })?;
    // SAFETY: `raw` covers the whole union, and every bit pattern is a valid [u8; 200].
    let raw = unsafe { format.fmt.raw };
    let u32_at = |at: usize| u32::from_ne_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
    Ok(if is_mplane(type_) {
        // struct v4l2_pix_format_mplane: 5 u32, then plane_fmt[8] of { sizeimage u32,
        // bytesperline u32, reserved u16[6] } (20 bytes), then num_planes u8.
        (u32_at(20), raw[20 + 8 * 20])
    } else {
        // struct v4l2_pix_format: width, height, pixelformat, field, bytesperline, sizeimage.
        (u32_at(20), 1)
    })
}

/// Asks queue `type_` for `count` dma-buf-imported buffers (0 lets every one go); returns
/// how many the driver gave.
pub(crate) fn reqbufs_dmabuf(dev: impl AsFd, type_: u32, count: u32) -> rustix::io::Result<u32> {
    let dev = dev.as_fd();
    let mut req = V4l2RequestBuffers {
        count,
        type_,
        memory: V4L2_MEMORY_DMABUF,
        ..V4l2RequestBuffers::default()
    };
    retry_eintr(|| {
        // SAFETY: the opcode is _IOWR('V', 8, struct v4l2_requestbuffers) and `req` is that
        // struct.
        let reqbufs = unsafe { ioctl::Updater::<VIDIOC_REQBUFS, _>::new(&mut req) };
        // SAFETY: `reqbufs` pairs the opcode with its struct; the kernel writes only `req`.
        unsafe { ioctl::ioctl(dev, reqbufs) }
    })?;
    Ok(req.count)
}

/// Prepares buffer 0 of queue `type_` with `buf` (a dma-buf of `len` bytes) as its memory:
/// the driver attaches and maps it as it would to capture into it, and refuses memory it
/// cannot use.
pub(crate) fn prepare_dmabuf(
    dev: impl AsFd,
    type_: u32,
    buf: impl AsFd,
    len: u32,
) -> rustix::io::Result<()> {
    let dev = dev.as_fd();
    let fd = buf.as_fd().as_raw_fd();
    let mut plane = V4l2Plane {
        bytesused: 0,
        length: len,
        m: V4l2PlaneM { fd },
        data_offset: 0,
        reserved: [0; 11],
    };
    let mplane = is_mplane(type_);
    let mut vbuf = V4l2Buffer {
        index: 0,
        type_,
        bytesused: 0,
        flags: 0,
        field: 0,
        timestamp: [0; 2],
        timecode: V4l2Timecode::default(),
        sequence: 0,
        memory: V4L2_MEMORY_DMABUF,
        m: if mplane {
            V4l2BufferM {
                planes: &raw mut plane,
            }
        } else {
            V4l2BufferM { fd }
        },
        length: if mplane { 1 } else { len },
        reserved2: 0,
        request_fd: 0,
    };
    retry_eintr(|| {
        // SAFETY: the opcode is _IOWR('V', 93, struct v4l2_buffer) and `vbuf` is that struct;
        // for multi-planar types its `m.planes` points at `plane`, one element, as `length`
        // says.
        let prepare = unsafe { ioctl::Updater::<VIDIOC_PREPARE_BUF, _>::new(&mut vbuf) };
        // SAFETY: `prepare` pairs the opcode with its struct; the kernel reads and writes
        // `vbuf` and `plane`, which outlive the call, and dups nothing it keeps: the dma-buf is
        // let go by the REQBUFS(0) that follows.
        unsafe { ioctl::ioctl(dev, prepare) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_videodev2_h() {
        assert_eq!(std::mem::size_of::<V4l2Capability>(), 104);
        assert_eq!(std::mem::size_of::<V4l2RequestBuffers>(), 20);
        assert_eq!(std::mem::size_of::<V4l2Plane>(), 64);
        #[cfg(target_pointer_width = "64")]
        {
            assert_eq!(std::mem::size_of::<V4l2Format>(), 208);
            assert_eq!(std::mem::size_of::<V4l2Buffer>(), 88);
            assert_eq!(std::mem::offset_of!(V4l2Buffer, m), 64);
        }
    }

    opcode_test!(64, opcodes_match_videodev2_h, {
        assert_eq!(VIDIOC_QUERYCAP, 0x8068_5600);
        assert_eq!(VIDIOC_G_FMT, 0xC0D0_5604);
        assert_eq!(VIDIOC_REQBUFS, 0xC014_5608);
        assert_eq!(VIDIOC_PREPARE_BUF, 0xC058_565D);
    });
}
