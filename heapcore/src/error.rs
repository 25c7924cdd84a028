//! Errors that say what went wrong and what the user can do about it.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything heapcore can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A heap name that could escape `/dev/dma_heap` or is not a name at all. Refused before
    /// anything is opened.
    #[error("{name:?} is not a valid heap name: {reason}")]
    InvalidHeapName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A usage name that is not lower-case letters, digits and `-` (at most 64 bytes).
    #[error("{name:?} is not a usage name (lower-case letters, digits and '-', e.g. video-decode)")]
    InvalidUsage {
        /// The name as given.
        name: String,
    },

    /// The name is well-formed but no such heap exists on this machine.
    #[error("{}", unknown_heap_message(.name, .available))]
    UnknownHeap {
        /// The name asked for.
        name: String,
        /// The heaps this machine has (none: the kernel exposes no heaps at all).
        available: Vec<String>,
    },

    /// The device exists but this process may not open it.
    #[error("no permission to open {}: {fix}", .path.display())]
    PermissionDenied {
        /// The device node.
        path: PathBuf,
        /// What grants access (see [`permission_fix`](crate::permission_fix)).
        fix: String,
    },

    /// The source had no memory for this request.
    #[error("{source_name} is out of memory for {size} bytes")]
    OutOfMemory {
        /// The source (or the step, such as faulting pages in) that had no memory.
        source_name: String,
        /// The bytes asked for.
        size: u64,
    },

    /// A device node that is not one (or a device number with no node).
    #[error("{device} is not a device dmaheap can ask: {reason}")]
    InvalidDevice {
        /// The node or device number given.
        device: String,
        /// Why not.
        reason: String,
    },

    /// The size cannot be allocated anywhere (zero, overflowing, beyond this machine's RAM).
    #[error("invalid buffer size {size}: {reason}")]
    InvalidSize {
        /// The size asked for.
        size: u64,
        /// Why no source could give it.
        reason: String,
    },

    /// The source has a size limit below the request.
    #[error("{source_name} cannot allocate {size} bytes: its limit is {limit} bytes ({hint})")]
    TooLarge {
        /// The source.
        source_name: String,
        /// The bytes asked for.
        size: u64,
        /// Its limit in bytes.
        limit: u64,
        /// How to raise the limit.
        hint: &'static str,
    },

    /// The source does not exist on this machine (e.g. no `/dev/udmabuf`).
    #[error("{source_name} is not available: {reason}")]
    Unavailable {
        /// The source.
        source_name: String,
        /// What is missing, and what provides it.
        reason: String,
    },

    /// A buffer name the kernel would refuse.
    #[error("invalid buffer name {name:?}: {reason}")]
    InvalidBufferName {
        /// The name as given.
        name: String,
        /// What the kernel would refuse in it.
        reason: String,
    },

    /// A pool configuration that cannot work (no source, min above max, counts beyond the cap).
    #[error("pool {pool} cannot be made: {reason}")]
    InvalidConfig {
        /// The pool's name.
        pool: String,
        /// What cannot work.
        reason: String,
    },

    /// The operation makes no sense for this buffer (e.g. CPU-mapping a protected buffer).
    #[error("{0}")]
    Unsupported(String),

    /// No heap, other source or fallback can serve these constraints on this machine.
    #[error("nothing on this machine can serve this request:\n{explanation}")]
    NoCandidate {
        /// The `dmaheap explain` text: every candidate and why it is out.
        explanation: String,
    },

    /// A pool has no free buffer and may not grow.
    #[error("pool {pool} has no free buffer and cannot grow: {reason}")]
    PoolExhausted {
        /// The pool's name.
        pool: String,
        /// Which cap stops it growing.
        reason: String,
    },

    /// No buffer came back to a full pool in time.
    #[error("pool {pool}: no buffer within {waited:?} ({reason})")]
    PoolTimeout {
        /// The pool's name.
        pool: String,
        /// How long the acquire waited.
        waited: std::time::Duration,
        /// Which cap stopped it growing meanwhile.
        reason: String,
    },

    /// The pool was shut down.
    #[error("pool {pool} has been shut down")]
    PoolShutDown {
        /// The pool's name.
        pool: String,
    },

    /// Every source of the list failed; each attempt says why.
    #[error("no candidate could allocate {size} bytes: {}", Attempts(.attempts))]
    AllSourcesFailed {
        /// The bytes asked for.
        size: u64,
        /// Each source tried, in order, and why it failed.
        attempts: Vec<(String, Error)>,
    },

    /// A system call failed where no more specific error applies.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Self::Io {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Whether the next candidate heap may succeed where this one failed. Errors about the
    /// request itself (size, name) would fail everywhere and end the walk at once.
    pub fn is_fallback_worthy(&self) -> bool {
        !matches!(
            self,
            Self::InvalidSize { .. }
                | Self::InvalidBufferName { .. }
                | Self::InvalidHeapName { .. }
                | Self::InvalidUsage { .. }
                | Self::InvalidConfig { .. }
        )
    }
}

fn unknown_heap_message(name: &str, available: &[String]) -> String {
    if available.is_empty() {
        format!(
            "no DMA-BUF heap named {name:?}: this kernel exposes no heaps (/dev/dma_heap is \
             missing or empty; it needs CONFIG_DMABUF_HEAPS and a heap such as \
             CONFIG_DMABUF_HEAPS_SYSTEM)"
        )
    } else {
        format!(
            "no DMA-BUF heap named {name:?}; heaps here: {}",
            available.join(", ")
        )
    }
}

struct Attempts<'a>(&'a [(String, Error)]);

impl fmt::Display for Attempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (who, err)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{who}: {err}")?;
        }
        Ok(())
    }
}

/// heapcore's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
