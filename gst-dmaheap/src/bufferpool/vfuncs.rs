//! A pool's per-buffer virtual methods, acquire and release, installed on its class as plain
//! C functions.
//!
//! For every virtual method of a Rust subclass gstreamer-rs installs a trampoline: acquire's
//! copies the parameters into a Rust value and back and converts the flow return twice before
//! it calls GstBufferPool's own function. On hardware that is a few loads and branches; under
//! emulation (qemu TCG, as in the VM tests) a Rust pool that overrides nothing measured 1.18×
//! the stock pool per round trip. These do the pool's own work ([`PerBuffer`]) and hand
//! GstBufferPool's functions the very pointers they were given. The buffers released last are
//! kept beside GstBufferPool's queue and handed out first (see `hot.rs`).

use std::sync::atomic::{AtomicI32, Ordering};

use gst::ffi;
use gst::glib::translate::*;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::hot::HotBuffers;

/// What a pool does on every buffer, around GstBufferPool's acquire and release.
pub(super) trait PerBuffer: ObjectSubclass<Type: IsA<gst::BufferPool>> {
    /// Acquire must not wait for a buffer (then [`PerBuffer::acquire_or_fail`] acquires).
    fn fails_when_exhausted(&self) -> bool;

    /// Acquire for a pool that [`PerBuffer::fails_when_exhausted`].
    fn acquire_or_fail(
        &self,
        params: Option<&gst::BufferPoolAcquireParams>,
    ) -> Result<gst::Buffer, gst::FlowError>;

    /// A buffer was acquired.
    fn count_acquired(&self);

    /// A buffer comes back: the buffer to give GstBufferPool, or none when the pool keeps it.
    fn before_release(&self, buffer: gst::Buffer) -> Option<gst::Buffer>;

    /// The buffers released last, handed out before GstBufferPool's queue.
    fn hot_buffers(&self) -> &HotBuffers;

    /// Whether a released buffer may be handed out again as it is: what GstBufferPool's own
    /// release checks before it queues a buffer (no memory tag, the configured size, every
    /// memory writable), and not while the pool starts.
    fn reusable(&self, buffer: &gst::BufferRef) -> bool;
}

/// Puts `T`'s acquire and release in `class`. Without both of GstBufferPool's functions in
/// `parent` it leaves gstreamer-rs's trampolines, which handle a missing one.
pub(super) fn install<T: PerBuffer>(
    class: &mut ffi::GstBufferPoolClass,
    parent: &ffi::GstBufferPoolClass,
) {
    if parent.acquire_buffer.is_some() && parent.release_buffer.is_some() {
        class.acquire_buffer = Some(acquire_buffer::<T>);
        class.release_buffer = Some(release_buffer::<T>);
    }
}

/// The parent class of `T`'s, GstBufferPool's (or whichever class `T` derives from).
#[inline(always)]
fn parent_class<T: PerBuffer>() -> &'static ffi::GstBufferPoolClass {
    // SAFETY: a registered subclass's type data is initialised before any instance exists,
    // and lives as long as the process.
    let data = unsafe { T::type_data().as_ref() };
    // SAFETY: it holds the parent class, a class of GstBufferPool (the trait's bound), which
    // lives as long as the process too.
    unsafe { &*data.parent_class().cast::<ffi::GstBufferPoolClass>() }
}

/// The implementation behind `pool`.
///
/// # Safety
/// `pool` points to a live instance of `T` for `'a`.
#[inline(always)]
unsafe fn imp<'a, T: PerBuffer>(pool: *mut ffi::GstBufferPool) -> &'a T {
    // SAFETY: the caller's promise; the instance struct begins with GstBufferPool's.
    let instance = unsafe { &*pool.cast::<T::Instance>() };
    instance.imp()
}

unsafe extern "C" fn acquire_buffer<T: PerBuffer>(
    pool: *mut ffi::GstBufferPool,
    buffer: *mut *mut ffi::GstBuffer,
    params: *mut ffi::GstBufferPoolAcquireParams,
) -> ffi::GstFlowReturn {
    // Installed only where the parent has one.
    let Some(parent_acquire) = parent_class::<T>().acquire_buffer else {
        return ffi::GST_FLOW_NOT_SUPPORTED;
    };
    // SAFETY: GstBufferPool calls a class's methods with an instance of that class, and this
    // method is installed on `T`'s (a subclass's instance is one too).
    let imp = unsafe { imp::<T>(pool) };
    // SAFETY: `pool` points to a live GstBufferPool (as above).
    let field = unsafe { &raw mut (*pool).flushing };
    // SAFETY: the field is an aligned gint that lives as long as the pool, and GStreamer
    // reads and writes it only with atomic operations (g_atomic_int_get/set), as this does.
    let flushing = unsafe { AtomicI32::from_ptr(field) };
    // While flushing, GstBufferPool's acquire says so.
    let hot = || {
        (flushing.load(Ordering::Relaxed) == 0)
            .then(|| imp.hot_buffers().take())
            .flatten()
    };
    if let Some(hot) = hot() {
        return hand_out(imp, hot, buffer);
    }
    // Looked at once more after saying so (see `hot.rs`).
    let _going = imp.hot_buffers().going_to_queue();
    if let Some(hot) = hot() {
        return hand_out(imp, hot, buffer);
    }
    if imp.fails_when_exhausted() {
        return acquire_failing_when_exhausted(imp, buffer, params);
    }
    // SAFETY: GstBufferPool's acquire, with the arguments GstBufferPool gave this one.
    let ret = unsafe { parent_acquire(pool, buffer, params) };
    if ret == ffi::GST_FLOW_OK {
        imp.count_acquired();
    }
    ret
}

/// Acquire's result when it takes a hot buffer.
#[inline(always)]
fn hand_out<T: PerBuffer>(
    imp: &T,
    hot: gst::Buffer,
    buffer: *mut *mut ffi::GstBuffer,
) -> ffi::GstFlowReturn {
    imp.count_acquired();
    // SAFETY: `buffer` is the caller's out-pointer; it takes the reference.
    unsafe { *buffer = hot.into_glib_ptr() };
    ffi::GST_FLOW_OK
}

/// [`PerBuffer::acquire_or_fail`] behind the C signature, through gstreamer-rs's types (not
/// the hot path: only pools with `on-exhaustion=error` take it).
#[inline(never)]
fn acquire_failing_when_exhausted<T: PerBuffer>(
    imp: &T,
    buffer: *mut *mut ffi::GstBuffer,
    params: *mut ffi::GstBufferPoolAcquireParams,
) -> ffi::GstFlowReturn {
    // SAFETY: `params` is null or points to the caller's parameters, valid for this call.
    let params: Option<gst::BufferPoolAcquireParams> = unsafe { from_glib_none(params) };
    match imp.acquire_or_fail(params.as_ref()) {
        Ok(acquired) => {
            imp.count_acquired();
            // SAFETY: `buffer` is the caller's out-pointer; it takes the reference.
            unsafe { *buffer = acquired.into_glib_ptr() };
            ffi::GST_FLOW_OK
        }
        Err(err) => err.into_glib(),
    }
}

unsafe extern "C" fn release_buffer<T: PerBuffer>(
    pool: *mut ffi::GstBufferPool,
    buffer: *mut ffi::GstBuffer,
) {
    // SAFETY: as in `acquire_buffer`.
    let imp = unsafe { imp::<T>(pool) };
    // SAFETY: release_buffer is given the caller's one reference to a valid buffer.
    let buffer: gst::Buffer = unsafe { from_glib_full(buffer) };
    let Some(buffer) = imp.before_release(buffer) else {
        return;
    };
    // Installed only where the parent has one.
    let Some(parent_release) = parent_class::<T>().release_buffer else {
        return;
    };
    // SAFETY: GstBufferPool's release, given the pool and a reference to one of its buffers.
    let to_queue = |buffer: gst::Buffer| unsafe { parent_release(pool, buffer.into_glib_ptr()) };
    if imp.reusable(&buffer) {
        imp.hot_buffers().keep(buffer, to_queue);
    } else {
        // GstBufferPool frees it.
        to_queue(buffer);
    }
}
