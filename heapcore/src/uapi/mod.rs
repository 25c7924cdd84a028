//! The kernel boundary: structs mirroring the UAPI headers and one safe function per ioctl.
//!
//! Every function retries `EINTR` (a signal may interrupt the allocator while it zeroes pages,
//! or a wait for a fence) and returns owned fds at once, so no raw fd escapes this module.

mod dma_buf;
pub(crate) mod drm;
mod sync_file;
pub(crate) mod v4l2;

pub(crate) use dma_buf::*;
pub(crate) use sync_file::*;

use rustix::io::Errno;

fn retry_eintr<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}
