//! The plugin's errors. Each message says what went wrong and what the user can change.

/// Everything the allocator, pool and element can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// heapcore refused (bad name, no permission, out of memory, ...); its message says why.
    #[error(transparent)]
    Heap(#[from] heapcore::Error),

    /// The `usage` property is not a usage name.
    #[error("usage: {reason}")]
    BadUsage {
        /// Why the name is refused.
        reason: String,
    },

    /// Every entry of the `heap` list is missing or unusable on this machine.
    #[error("heap={spec:?} names nothing this machine can allocate from: {reasons}")]
    NoUsableSource {
        /// The list as the user wrote it.
        spec: String,
        /// Each entry and why it cannot serve.
        reasons: String,
    },

    /// The caps need dma-buf memory but only the memfd fallback is left.
    #[error(
        "downstream negotiated video/x-raw(memory:DMABuf) but {sources} gives no dma-bufs \
         (no DMA-BUF heap or /dev/udmabuf is usable here); negotiate plain video/x-raw or make \
         a heap available"
    )]
    NeedsDmabuf {
        /// The sources that were left (memfd only).
        sources: String,
    },

    /// A `max-buffers` pool ran out and `on-exhaustion=error` was chosen.
    #[error(
        "the buffer pool is exhausted: all {max} buffers (max-buffers) are in use downstream; \
         raise max-buffers or set on-exhaustion=block"
    )]
    PoolExhausted {
        /// The pool's `max-buffers`.
        max: u32,
    },

    /// GStreamer could not wrap the buffer's fd.
    #[error("could not wrap a {origin} buffer of {size} bytes as GStreamer memory")]
    Wrap {
        /// Where the buffer came from.
        origin: String,
        /// Its size in bytes.
        size: u64,
    },

    /// The caps are not raw video this pool can lay out.
    #[error("the pool cannot lay out frames for caps {caps}: {reason}")]
    Caps {
        /// The caps.
        caps: String,
        /// What is wrong with them.
        reason: String,
    },
}
