//! Where buffers come from: [`Source`], the one parser of source lists, and the three ways to
//! get shareable buffer memory, best first: a DMA-BUF heap device, a sealed memfd wrapped by
//! `/dev/udmabuf`, and a plain sealed memfd.

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
use crate::heap::{DEFAULT_CMA_NAMES, HeapName};
use crate::inventory::Inventory;

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

    /// The name a user types for it: the heap's name, `udmabuf` or `memfd` (what
    /// [`Source::parse_list`] reads back).
    pub fn name(&self) -> String {
        match self {
            Self::Heap(name) => name.to_string(),
            Self::Udmabuf => "udmabuf".into(),
            Self::Memfd => "memfd".into(),
        }
    }

    /// Shorthand for a heap source; the name is validated.
    pub fn heap(name: &str) -> Result<Self, Error> {
        HeapName::new(name).map(Self::Heap)
    }

    /// Parses an ordered source list as users type it (`system,cma`, `linux,cma memfd`):
    /// entries are separated by commas or white space, and every name is validated.
    ///
    /// Heap names may themselves hold a comma (`linux,cma`, `protected,secure-video`), so
    /// two neighbouring pieces are one name when that name is one the default CMA heap has
    /// had, a `protected,` heap, or a heap `inventory` has. This is the one parser of heap
    /// lists: the CLI, the GStreamer `heap` property and the PipeWire configuration use it.
    /// An empty or blank list gives an empty vector.
    pub fn parse_list(spec: &str, inventory: &Inventory) -> Result<Vec<Self>, Error> {
        let pieces: Vec<&str> = spec
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .collect();
        let is_comma_name = |name: &str| {
            DEFAULT_CMA_NAMES.contains(&name)
                || name.starts_with("protected,")
                || inventory.find(name).is_ok()
        };
        let mut sources = Vec::with_capacity(pieces.len());
        let mut i = 0;
        while i < pieces.len() {
            let joined = pieces
                .get(i + 1)
                .map(|next| format!("{},{next}", pieces[i]))
                .filter(|name| is_comma_name(name));
            let (name, used) = match &joined {
                Some(name) => (name.as_str(), 2),
                None => (pieces[i], 1),
            };
            sources.push(name.parse()?);
            i += used;
        }
        Ok(sources)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.origin(), f)
    }
}

impl FromStr for Source {
    type Err = Error;

    /// `udmabuf` and `memfd` name those sources; anything else is a heap name.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::FakeMachine;

    fn names(spec: &str, heaps: &[&str]) -> Vec<String> {
        let inventory = FakeMachine::new(heaps, &[]).inventory();
        Source::parse_list(spec, &inventory)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn lists_split_on_commas_and_spaces_but_keep_comma_names() {
        assert_eq!(names("system, cma", &[]), ["heap system", "heap cma"]);
        assert_eq!(
            names("linux,cma,system udmabuf", &[]),
            ["heap linux,cma", "heap system", "udmabuf"]
        );
        assert_eq!(
            names("protected,secure-video,memfd", &[]),
            ["heap protected,secure-video", "memfd"]
        );
        // A vendor heap with a comma is one name where the machine has it.
        assert_eq!(
            names("vendor,ecc cma", &["vendor,ecc"]),
            ["heap vendor,ecc", "heap cma"]
        );
        assert_eq!(names("vendor,ecc", &[]), ["heap vendor", "heap ecc"]);
        assert!(names(" , \t", &[]).is_empty());
    }

    #[test]
    fn hostile_names_in_a_list_are_refused() {
        let inventory = FakeMachine::new(&[], &[]).inventory();
        for bad in ["system,../../dev/mem", "/dev/mem", "cma ..", "a/b,system"] {
            let err = Source::parse_list(bad, &inventory).unwrap_err();
            assert!(
                err.to_string().contains("is not a valid heap name"),
                "{bad}: {err}"
            );
        }
    }
}
