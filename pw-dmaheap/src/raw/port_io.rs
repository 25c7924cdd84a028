//! Our output port's `spa_io_buffers` area, where a graph cycle leaves the id of the buffer
//! it hands back, and the PipeWire version the process runs against.

use std::cell::Cell;
use std::ffi::CStr;
use std::os::raw::c_void;
use std::ptr::NonNull;

use pipewire::spa::sys as spa_sys;
use pipewire::sys as pw_sys;

/// The `spa_io_buffers` area PipeWire gave our stream's port (`io_changed` with
/// `SPA_IO_Buffers`), between our stream and the port's mixer.
///
/// It is only looked at on the thread the stream's node runs on: for a stream that is not
/// real-time, PipeWire 1.x runs the node on the main loop, the thread the producer lives on
/// (`Producer` is neither `Send` nor `Sync`).
#[derive(Debug, Default)]
pub(crate) struct PortIo {
    area: Cell<Option<NonNull<spa_sys::spa_io_buffers>>>,
}

/// What the port's io area says after a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortIoState {
    /// It still holds our frame (the mixer has not taken it).
    Holding,
    /// The mixer took our frame and left this buffer id to hand back, or none.
    Taken(Option<u32>),
}

impl PortIo {
    /// From the stream's `io_changed` event: the area for `id`, or none any more.
    pub(crate) fn changed(&self, id: u32, area: *mut c_void, size: u32) {
        if id != spa_sys::SPA_IO_Buffers {
            return;
        }
        let big_enough = size as usize >= std::mem::size_of::<spa_sys::spa_io_buffers>();
        let area = NonNull::new(area.cast::<spa_sys::spa_io_buffers>()).filter(|_| big_enough);
        self.area.set(area);
    }

    /// What the area says now; `None` without one.
    pub(crate) fn state(&self) -> Option<PortIoState> {
        let area = self.area.get()?;
        // SAFETY: PipeWire keeps the area valid until its next io_changed, which clears it
        // here, and only this thread touches it (see the type's comment).
        let io = unsafe { area.as_ptr().read_volatile() };
        Some(if io.status == spa_sys::SPA_STATUS_HAVE_DATA as i32 {
            PortIoState::Holding
        } else {
            PortIoState::Taken((io.buffer_id != spa_sys::SPA_ID_INVALID).then_some(io.buffer_id))
        })
    }

    /// Empties the area's buffer id, so that the end of the cycle does not put that buffer
    /// back in the stream's free queue.
    pub(crate) fn forget_buffer(&self) {
        let Some(area) = self.area.get() else { return };
        // SAFETY: as in `state`.
        let mut io = unsafe { area.as_ptr().read_volatile() };
        io.buffer_id = spa_sys::SPA_ID_INVALID;
        // SAFETY: as in `state`; the status stays what it was.
        unsafe { area.as_ptr().write_volatile(io) };
    }
}

/// The version of the PipeWire library this process runs against, as (major, minor, micro).
pub(crate) fn library_version() -> Option<(u32, u32, u32)> {
    // SAFETY: pw_get_library_version returns a static NUL-terminated string (or null).
    let raw = unsafe { pw_sys::pw_get_library_version() };
    if raw.is_null() {
        return None;
    }
    // SAFETY: non-null, static and NUL-terminated, as above.
    let text = unsafe { CStr::from_ptr(raw) }.to_str().ok()?;
    parse_version(text)
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.trim().split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("1.6.9"), Some((1, 6, 9)));
        assert_eq!(parse_version("0.3.65\n"), Some((0, 3, 65)));
        assert_eq!(parse_version("1.5"), Some((1, 5, 0)));
        assert_eq!(parse_version("one.6"), None);
        assert!(library_version().is_some());
    }
}
