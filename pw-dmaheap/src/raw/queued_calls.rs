//! Destroying a stream without leaving PipeWire a queued call that points at it.

use pipewire::spa::sys as spa_sys;
use pipewire::stream::Stream;
use pipewire::sys as pw_sys;

/// Lets every call PipeWire queued for this stream run (`process`, `drained` and
/// `trigger_done` on the main loop, a frame request on the data loop), so that none is
/// left to run on the stream after it is destroyed.
///
/// PipeWire queues those calls with the stream's address and does not take them back when
/// the stream is destroyed. A paused stream's frame request runs on the data thread, which
/// then queues `trigger_done` for the main loop: PipeWire 0.3.65 ran it on freed memory at
/// the loop's next iteration. Call this after `pw_stream_disconnect` and right before the
/// stream is destroyed, from the thread that entered the main loop (a `Producer` is not
/// `Send`). First a blocking no-op on the data loop waits until the data thread has run
/// what was queued before it; then a no-op invoke on the main loop, from its own thread,
/// runs what is queued there (from another thread it would only queue a no-op).
pub(crate) fn settle_queued_calls(stream: &Stream) {
    // SAFETY: the stream is valid for the borrow; this only reads its core pointer, which
    // only pw_stream_destroy clears.
    let core = unsafe { pw_sys::pw_stream_get_core(stream.as_raw_ptr()) };
    if core.is_null() {
        return;
    }
    // SAFETY: a stream's core outlives it (pw_core_disconnect destroys its streams first).
    let context = unsafe { pw_sys::pw_core_get_context(core) };
    // SAFETY: a core's context outlives the core; the getter only reads a field.
    let data_loop = unsafe { pw_sys::pw_context_get_data_loop(context) };
    if !data_loop.is_null() {
        // SAFETY: the context's data loop lives as long as the context.
        let data_loop = unsafe { pw_sys::pw_data_loop_get_loop(data_loop) };
        invoke_nothing(data_loop, true);
    }
    // SAFETY: as above; the main loop lives as long as the context.
    let main_loop = unsafe { pw_sys::pw_context_get_main_loop(context) };
    invoke_nothing(main_loop, false);
}

/// `pw_loop_invoke(lp, NULL, …)`: runs nothing itself, but a loop runs what was queued
/// before it first (on the loop's thread; `block` waits for that from another thread).
fn invoke_nothing(lp: *mut pw_sys::pw_loop, block: bool) {
    if lp.is_null() {
        return;
    }
    // SAFETY: `lp` is a live pw_loop (see the callers); `loop_` is the spa_loop interface
    // it was created with.
    let spa_loop = unsafe { (*lp).loop_ };
    // SAFETY: spa_loop's `invoke` accepts a null function, with no data and no user data.
    let res: i32 = unsafe {
        pipewire::spa::spa_interface_call_method!(
            spa_loop,
            spa_sys::spa_loop_methods,
            invoke,
            None,
            0,
            std::ptr::null(),
            0,
            block,
            std::ptr::null_mut()
        )
    };
    if res < 0 {
        log::warn!("running the calls queued on a PipeWire loop failed: {res}");
    }
}
