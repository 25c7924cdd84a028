//! The buffer a pool lends, which goes back to it when dropped.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use super::Inner;
use crate::dmabuf::{CpuWrite, DmaBuf};
use crate::error::Result;

/// A buffer lent by a pool; it goes back to the pool when dropped (freed instead if the pool
/// has shut down or gives memory back under pressure).
///
/// It derefs to the [`DmaBuf`] for reading and offers [`PooledBuf::write`] for the bytes, but
/// never hands out `&mut DmaBuf`: the pool accounts for the buffer it lent, so that buffer,
/// and no other, must come back.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use heapcore::{Allocator, Pool, PoolConfig, Source};
/// let pool = Pool::new(Arc::new(Allocator::new()), PoolConfig::new("doc", vec![Source::Memfd], 4096))?;
/// let mut frame = pool.try_acquire()?;
/// frame.write()?.fill(0x80);
/// println!("{} bytes from {}", frame.len(), frame.origin());
/// # Ok::<(), heapcore::Error>(())
/// ```
///
/// Swapping (or `mem::replace`-ing) the buffer behind a `PooledBuf` does not compile:
///
/// ```compile_fail
/// # use std::sync::Arc;
/// # use heapcore::{Allocator, Pool, PoolConfig, Source};
/// let pool = Pool::new(Arc::new(Allocator::new()), PoolConfig::new("doc", vec![Source::Memfd], 4096))?;
/// let mut a = pool.try_acquire()?;
/// let mut b = pool.try_acquire()?;
/// std::mem::swap(&mut *a, &mut *b);
/// # Ok::<(), heapcore::Error>(())
/// ```
pub struct PooledBuf {
    pub(super) buf: Option<Box<DmaBuf>>,
    /// The pool it goes back to (taken only in `drop`, to be left as the thread's spare).
    pub(super) pool: Option<Arc<Inner>>,
}

impl PooledBuf {
    /// Takes the buffer out of the pool for good (it no longer counts against the pool).
    pub fn detach(mut self) -> DmaBuf {
        let buf = *self
            .buf
            .take()
            .expect("a PooledBuf always holds its buffer");
        let pool = self.pool();
        let mut st = pool.lock();
        pool.unreserve(&mut st);
        pool.wake_waiter(st);
        buf
    }

    pub(super) fn pool(&self) -> &Arc<Inner> {
        self.pool
            .as_ref()
            .expect("a PooledBuf holds its pool until dropped")
    }

    /// The name of the pool it came from.
    pub fn pool_name(&self) -> &str {
        &self.pool().config.name
    }

    fn buf_mut(&mut self) -> &mut DmaBuf {
        self.buf
            .as_deref_mut()
            .expect("a PooledBuf always holds its buffer")
    }

    /// Begins CPU reads and writes of the bytes (see [`DmaBuf::write`]).
    pub fn write(&mut self) -> Result<CpuWrite<'_>> {
        self.buf_mut().write()
    }

    /// Renames the buffer (see [`DmaBuf::set_name`]).
    pub fn set_name(&mut self, name: &str) -> Result<()> {
        self.buf_mut().set_name(name)
    }
}

impl fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBuf")
            .field("pool", &self.pool().config.name)
            .field("buf", &self.buf)
            .finish()
    }
}

impl Deref for PooledBuf {
    type Target = DmaBuf;
    fn deref(&self) -> &DmaBuf {
        self.buf
            .as_deref()
            .expect("a PooledBuf always holds its buffer")
    }
}

impl Drop for PooledBuf {
    #[inline]
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else { return };
        if let Some(buf) = self.buf.take() {
            pool.release(buf);
        }
        // The thread's next acquire from this pool takes the handle back (see `local`).
        super::local::keep(pool);
    }
}
