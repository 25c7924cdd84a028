//! The three ways to get shareable buffer memory, best first: a DMA-BUF heap device, a sealed
//! memfd wrapped by `/dev/udmabuf`, and a plain sealed memfd.

mod dma_heap;
mod memfd;
mod udmabuf;

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::str::FromStr;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use serde::Serialize;

pub(crate) use dma_heap::HeapDevice;
pub(crate) use memfd::sealed_memfd;
pub(crate) use udmabuf::UdmabufDevice;

use crate::access::permission_fix;
use crate::dmabuf::Origin;
use crate::error::Error;
use crate::heap::HeapName;

/// Where to allocate from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", content = "heap", rename_all = "kebab-case")]
pub enum Source {
    /// `/dev/dma_heap/<name>`.
    Heap(HeapName),
    /// `/dev/udmabuf` over a sealed memfd.
    Udmabuf,
    /// A plain sealed memfd (not a dma-buf; the last resort).
    Memfd,
}

impl Source {
    /// The origin buffers from this source report.
    pub fn origin(&self) -> Origin {
        match self {
            Self::Heap(name) => Origin::Heap(name.clone()),
            Self::Udmabuf => Origin::Udmabuf,
            Self::Memfd => Origin::Memfd,
        }
    }

    /// Shorthand for a heap source; the name is validated.
    pub fn heap(name: &str) -> Result<Self, Error> {
        HeapName::new(name).map(Self::Heap)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.origin(), f)
    }
}

impl FromStr for Source {
    type Err = Error;

    /// `udmabuf` and `memfd` name those backends; anything else is a heap name.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "udmabuf" => Ok(Self::Udmabuf),
            "memfd" => Ok(Self::Memfd),
            name => Self::heap(name),
        }
    }
}

/// Opens a device node read-only (the allocation ioctls do not look at the open mode), turning
/// a denial into the error that says how to get access and absence into `absent()`.
fn open_device(path: &Path, absent: impl FnOnce() -> Error) -> Result<OwnedFd, Error> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| match e {
        Errno::ACCESS | Errno::PERM => Error::PermissionDenied {
            path: path.to_owned(),
            fix: permission_fix(path),
        },
        Errno::NOENT | Errno::NODEV | Errno::NXIO => absent(),
        e => Error::io(format!("opening {}", path.display()), e),
    })
}
