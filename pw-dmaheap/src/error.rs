//! Errors that say what went wrong and what to change.

/// Everything pw-dmaheap can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The producer configuration cannot work; the message names the field and the fix.
    #[error("invalid producer configuration: {0}")]
    Config(String),

    /// A frame of this size and format cannot be described to PipeWire or allocated.
    #[error("{width}x{height} {format} frames are not possible: {reason}")]
    Frame {
        width: u32,
        height: u32,
        format: String,
        reason: String,
    },

    /// PipeWire negotiated something this producer never offered or cannot serve.
    #[error("negotiation failed: {0}")]
    Negotiation(String),

    /// A format pod that is not a raw video format this crate knows.
    #[error("unsupported format from PipeWire: {0}")]
    Format(String),

    /// Building a param pod failed (a bug: the pods are small and fixed in shape).
    #[error("building the {what} param failed: {reason}")]
    Pod { what: &'static str, reason: String },

    /// heapcore refused or failed (heap names, permissions, out of memory, mapping).
    #[error(transparent)]
    Heap(#[from] heapcore::Error),

    /// A PipeWire call failed.
    #[error("{context}: {source}")]
    PipeWire {
        context: &'static str,
        #[source]
        source: pipewire::Error,
    },

    /// A system call failed where no more specific error applies.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn pipewire(context: &'static str) -> impl FnOnce(pipewire::Error) -> Self {
        move |source| Self::PipeWire { context, source }
    }
}

/// pw-dmaheap's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
