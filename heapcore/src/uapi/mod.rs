//! The kernel boundary: structs mirroring the UAPI headers and one safe function per ioctl.
//!
//! Every function retries `EINTR` (a signal may interrupt the allocator while it zeroes pages,
//! or a wait for a fence) and returns owned fds at once, so no raw fd escapes this module.

/// A test of literal ioctl opcodes as the headers spell them, for asm-generic's encoding
/// (`_IOC_WRITE` = 1, 14 size bits): powerpc, mips and sparc encode differently, and rustix
/// computes their opcodes from their own headers. `$width` is `any` or `64` (literals whose
/// structs hold pointers or longs hold on 64-bit targets only).
#[cfg(test)]
macro_rules! opcode_test {
    (any, $name:ident, $body:block) => {
        #[test]
        #[cfg_attr(
            not(any(
                target_arch = "x86",
                target_arch = "x86_64",
                target_arch = "arm",
                target_arch = "aarch64",
                target_arch = "riscv64",
                target_arch = "loongarch64",
                target_arch = "s390x"
            )),
            ignore = "skipped: the literal opcodes are asm-generic's; this architecture encodes ioctls differently"
        )]
        fn $name() $body
    };
    (64, $name:ident, $body:block) => {
        #[test]
        #[cfg_attr(
            not(any(
                target_arch = "x86_64",
                target_arch = "aarch64",
                target_arch = "riscv64",
                target_arch = "loongarch64",
                target_arch = "s390x"
            )),
            ignore = "skipped: the literal opcodes are asm-generic's on 64-bit architectures"
        )]
        fn $name() $body
    };
}

pub(crate) mod dma_buf;
pub(crate) mod drm;
mod sync_file;
mod syncobj;
pub(crate) mod v4l2;

pub(crate) use dma_buf::*;
pub(crate) use sync_file::*;
pub(crate) use syncobj::*;

use rustix::io::Errno;

fn retry_eintr<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> rustix::io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}
