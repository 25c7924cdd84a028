//! `include/uapi/linux/sync_file.h` and the sw_sync debug interface (`drivers/dma-buf/sw_sync.c`,
//! not a UAPI header: the kernel's own selftests mirror its structs too): waiting on a fence,
//! and a software timeline whose fences a test signals by hand.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::ioctl::{self, Opcode, opcode};

use super::retry_eintr;

/// Whether `fence` (a sync_file fd) signalled within `timeout` (zero: now).
pub(crate) fn sync_file_wait(fence: impl AsFd, timeout: Duration) -> rustix::io::Result<bool> {
    let fence = fence.as_fd();
    let timeout = rustix::event::Timespec {
        tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    let mut fds = [PollFd::new(&fence, PollFlags::IN)];
    let ready = retry_eintr(|| rustix::event::poll(&mut fds, Some(&timeout)))?;
    Ok(ready > 0 && fds[0].revents().intersects(PollFlags::IN | PollFlags::ERR))
}

/// `struct sw_sync_create_fence_data`.
#[repr(C)]
#[derive(Debug)]
struct SwSyncCreateFence {
    value: u32,
    name: [u8; 32],
    fence: i32,
}

const SW_SYNC_IOC_CREATE_FENCE: Opcode = opcode::read_write::<SwSyncCreateFence>(b'W', 0);
const SW_SYNC_IOC_INC: Opcode = opcode::write::<u32>(b'W', 1);

/// A sync_file fd on the sw_sync timeline `timeline` that signals when the timeline reaches
/// `value`.
pub(crate) fn sw_sync_create_fence(timeline: impl AsFd, value: u32) -> rustix::io::Result<OwnedFd> {
    let timeline = timeline.as_fd();
    let mut name = [0u8; 32];
    name[..7].copy_from_slice(b"dmaheap");
    let mut data = SwSyncCreateFence {
        value,
        name,
        fence: -1,
    };
    retry_eintr(|| {
        // SAFETY: the opcode is _IOWR('W', 0, struct sw_sync_create_fence_data) and `data` is
        // that struct, laid out as the kernel's with #[repr(C)].
        let create = unsafe { ioctl::Updater::<SW_SYNC_IOC_CREATE_FENCE, _>::new(&mut data) };
        // SAFETY: `create` pairs the opcode with its struct; the kernel writes only `data`.
        unsafe { ioctl::ioctl(timeline, create) }
    })?;
    // SAFETY: on success the kernel installed a new sync_file fd in `data.fence` that nothing
    // else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(data.fence) })
}

/// Advances the sw_sync timeline by `count`, signalling the fences it reaches.
pub(crate) fn sw_sync_inc(timeline: impl AsFd, count: u32) -> rustix::io::Result<()> {
    let timeline = timeline.as_fd();
    retry_eintr(|| {
        // SAFETY: the opcode is _IOW('W', 1, __u32) and the input is that integer.
        let inc = unsafe { ioctl::Setter::<SW_SYNC_IOC_INC, u32>::new(count) };
        // SAFETY: `inc` pairs the opcode with its u32, which the kernel only reads.
        unsafe { ioctl::ioctl(timeline, inc) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    opcode_test!(64, opcodes_match_the_kernel, {
        assert_eq!(SW_SYNC_IOC_CREATE_FENCE, 0xC028_5700);
        assert_eq!(SW_SYNC_IOC_INC, 0x4004_5701);
    });

    #[test]
    fn waiting_on_something_that_is_no_fence_fails_or_says_not_ready() {
        // A pipe with nothing written is "not signalled", as an unsignalled fence is.
        let (read, _write) = rustix::pipe::pipe().unwrap();
        assert!(!sync_file_wait(&read, Duration::ZERO).unwrap());
    }
}
