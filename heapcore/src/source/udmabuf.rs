//! `/dev/udmabuf`: wraps a sealed memfd as a dma-buf, up to the module's `size_limit_mb`.

use std::os::fd::OwnedFd;

use rustix::io::Errno;

use super::{open_device, sealed_memfd};
use crate::dmabuf::{DmaBuf, Origin};
use crate::error::{Error, Result};
use crate::inventory::UdmabufInfo;
use crate::uapi;

#[derive(Debug)]
pub(crate) struct UdmabufDevice {
    fd: OwnedFd,
    size_limit: Option<u64>,
}

impl UdmabufDevice {
    pub(crate) fn open(info: &UdmabufInfo) -> Result<Self> {
        let fd = open_device(&info.path, || Error::Unavailable {
            source_name: "udmabuf".into(),
            reason: format!(
                "{} does not exist (CONFIG_UDMABUF, or modprobe udmabuf)",
                info.path.display()
            ),
        })?;
        Ok(Self {
            fd,
            size_limit: info.size_limit,
        })
    }

    /// Allocates `len` bytes (already page-aligned) as a memfd and wraps it.
    pub(crate) fn allocate(&self, len: u64, name: &str) -> Result<DmaBuf> {
        if let Some(limit) = self.size_limit.filter(|&limit| len > limit) {
            return Err(Error::TooLarge {
                source_name: "udmabuf".into(),
                size: len,
                limit,
                hint: "raise it with udmabuf.size_limit_mb=N on the kernel command line",
            });
        }
        let memfd = sealed_memfd(name, len)?;
        let fd = uapi::udmabuf_create(&self.fd, &memfd, 0, len).map_err(|e| match e {
            Errno::NOMEM => Error::OutOfMemory {
                source_name: "udmabuf".into(),
                size: len,
            },
            e => Error::io(format!("UDMABUF_CREATE of {len} bytes"), e),
        })?;
        // The dma-buf holds its own references to the memfd's pages; the memfd can go.
        Ok(DmaBuf::from_parts(fd, len, Origin::Udmabuf))
    }
}
