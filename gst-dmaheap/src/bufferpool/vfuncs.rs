//! The pool's per-buffer virtual methods, acquire and release, installed on the class as plain
//! C functions.
//!
//! For every virtual method of a Rust subclass gstreamer-rs installs a trampoline: acquire's
//! copies the parameters into a Rust value and back, converts the flow return twice and looks
//! the parent class up again before it calls GstBufferPool's own function. On hardware that is
//! a few loads and branches; under emulation (qemu TCG, as in the VM tests) a Rust pool that
//! overrides nothing measured 1.18× the stock pool per round trip. These do the pool's own work
//! (see `imp.rs`) and hand GstBufferPool's functions the very pointers they were given.

use std::sync::OnceLock;

use gst::ffi;
use gst::glib::translate::*;
use gst::subclass::prelude::*;

use super::imp::DmaHeapBufferPool;

type AcquireFn = unsafe extern "C" fn(
    *mut ffi::GstBufferPool,
    *mut *mut ffi::GstBuffer,
    *mut ffi::GstBufferPoolAcquireParams,
) -> ffi::GstFlowReturn;
type ReleaseFn = unsafe extern "C" fn(*mut ffi::GstBufferPool, *mut ffi::GstBuffer);

/// GstBufferPool's own acquire and release, which ours call.
struct Parent {
    acquire: AcquireFn,
    release: ReleaseFn,
}

static PARENT: OnceLock<Parent> = OnceLock::new();

/// Puts our acquire and release in `class`, calling `parent`'s. Without both parent functions
/// it leaves gstreamer-rs's trampolines, which handle a missing one.
pub(super) fn install(class: &mut ffi::GstBufferPoolClass, parent: &ffi::GstBufferPoolClass) {
    let (Some(acquire), Some(release)) = (parent.acquire_buffer, parent.release_buffer) else {
        return;
    };
    // A class is initialised once per process.
    PARENT.get_or_init(|| Parent { acquire, release });
    class.acquire_buffer = Some(acquire_buffer);
    class.release_buffer = Some(release_buffer);
}

/// The implementation behind `pool`.
///
/// # Safety
/// `pool` points to a live `GstDmaHeapBufferPool` for `'a`.
#[inline(always)]
unsafe fn imp<'a>(pool: *mut ffi::GstBufferPool) -> &'a DmaHeapBufferPool {
    // SAFETY: the caller's promise; the instance struct begins with GstBufferPool's.
    let instance = unsafe { &*pool.cast::<<DmaHeapBufferPool as ObjectSubclass>::Instance>() };
    instance.imp()
}

unsafe extern "C" fn acquire_buffer(
    pool: *mut ffi::GstBufferPool,
    buffer: *mut *mut ffi::GstBuffer,
    params: *mut ffi::GstBufferPoolAcquireParams,
) -> ffi::GstFlowReturn {
    let Some(parent) = PARENT.get() else {
        return ffi::GST_FLOW_NOT_SUPPORTED;
    };
    // SAFETY: GstBufferPool calls a class's methods with an instance of that class, and this
    // method is installed on GstDmaHeapBufferPool's (a subclass's instance is one too).
    let imp = unsafe { imp(pool) };
    if imp.fails_when_exhausted() {
        return acquire_or_fail(imp, buffer, params);
    }
    // SAFETY: GstBufferPool's acquire, with the arguments GstBufferPool gave this one.
    let ret = unsafe { (parent.acquire)(pool, buffer, params) };
    if ret == ffi::GST_FLOW_OK {
        imp.count_acquired();
    }
    ret
}

/// Acquire for `on-exhaustion=error`, through gstreamer-rs's types (it is not the hot path).
#[inline(never)]
fn acquire_or_fail(
    imp: &DmaHeapBufferPool,
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

unsafe extern "C" fn release_buffer(pool: *mut ffi::GstBufferPool, buffer: *mut ffi::GstBuffer) {
    let Some(parent) = PARENT.get() else {
        return;
    };
    // SAFETY: as in `acquire_buffer`.
    let imp = unsafe { imp(pool) };
    // SAFETY: release_buffer is given the caller's one reference to a valid buffer.
    let buffer: gst::Buffer = unsafe { from_glib_full(buffer) };
    if let Some(buffer) = imp.before_release(buffer) {
        // SAFETY: GstBufferPool's release, given the pool and the reference we were given.
        unsafe { (parent.release)(pool, buffer.into_glib_ptr()) };
    }
}
