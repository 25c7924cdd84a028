//! The owned buffer: its fd, size and origin, a CPU mapping kept for its whole life (see
//! `mapping`), and guards that bracket CPU access with `DMA_BUF_IOCTL_SYNC`.

use std::collections::HashMap;
use std::ffi::CString;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};

use rustix::io::Errno;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::fence::{FenceAccess, SyncFile};
use crate::heap::HeapName;
use crate::mapping::Mapping;
use crate::uapi::{self, DmaBufSyncFlags};

/// Where a buffer's memory came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", content = "heap", rename_all = "kebab-case")]
pub enum Origin {
    /// A DMA-BUF heap (`/dev/dma_heap/<name>`).
    Heap(HeapName),
    /// A sealed memfd turned into a dma-buf by `/dev/udmabuf`.
    Udmabuf,
    /// A plain sealed memfd: shareable memory, but not a dma-buf.
    Memfd,
    /// An fd received from elsewhere.
    Imported {
        /// The dma-buf exporter's name (`exp_name` in fdinfo), if the fd is a dma-buf.
        exporter: Option<String>,
    },
}

impl Origin {
    /// Whether the memory is a protected heap's (`protected,*`), which the CPU may not map.
    pub fn is_protected(&self) -> bool {
        let name = match self {
            Self::Heap(name) => name.as_str(),
            Self::Imported {
                exporter: Some(exporter),
            } => exporter,
            _ => return false,
        };
        crate::heap::HeapKind::recognise(name, &[]) == crate::heap::HeapKind::Protected
    }

    /// Whether buffers of this origin are dma-bufs (devices can import them).
    #[inline]
    pub fn is_dmabuf(&self) -> bool {
        match self {
            Self::Heap(_) | Self::Udmabuf => true,
            Self::Memfd => false,
            Self::Imported { exporter } => exporter.is_some(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Heap(name) => write!(f, "heap {name}"),
            Self::Udmabuf => f.write_str("udmabuf"),
            Self::Memfd => f.write_str("memfd"),
            Self::Imported { exporter: Some(e) } => write!(f, "imported dma-buf ({e})"),
            Self::Imported { exporter: None } => f.write_str("imported fd"),
        }
    }
}

/// An owned buffer: a dma-buf (or, as the last fallback, a sealed memfd).
///
/// The CPU mapping is made on first access and kept until the buffer is dropped, because
/// mapping a large dma-buf costs milliseconds. Access goes through [`DmaBuf::read`] and
/// [`DmaBuf::write`], whose guards issue `DMA_BUF_IOCTL_SYNC` start and end.
pub struct DmaBuf {
    fd: OwnedFd,
    len: u64,
    origin: Origin,
    name: Option<String>,
    mapping: OnceLock<Mapping>,
    /// The fd has left this struct (`as_fd`, `as_raw_fd`), a fence was attached, or it came
    /// from elsewhere: a device may have imported it and may hold fences on it. A buffer
    /// whose fd never left carries none, so a pool need not ask the kernel.
    shared: AtomicBool,
}

impl fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaBuf")
            .field("fd", &self.fd.as_raw_fd())
            .field("len", &self.len)
            .field("origin", &self.origin)
            .field("name", &self.name)
            .field("mapped", &self.mapping.get().is_some())
            .finish()
    }
}

impl DmaBuf {
    pub(crate) fn from_parts(fd: OwnedFd, len: u64, origin: Origin) -> Self {
        Self {
            fd,
            len,
            origin,
            name: None,
            mapping: OnceLock::new(),
            shared: AtomicBool::new(false),
        }
    }

    fn mark_shared(&self) {
        if !self.shared.load(Relaxed) {
            self.shared.store(true, Relaxed);
        }
    }

    /// Whether a device may hold fences on this buffer: it is a dma-buf and its fd has been
    /// handed out (or it was imported). One that never left this struct has none.
    #[inline]
    pub(crate) fn may_carry_fences(&self) -> bool {
        // The flag first: it is one load, and false for every buffer a pool recycles without
        // handing its fd out, the common case on a pool's release.
        self.shared.load(Relaxed) && self.is_dmabuf()
    }

    /// Wraps an fd received from elsewhere (a PipeWire buffer, another process). Its size is
    /// the fd's end; `fdinfo` tells whether it is a dma-buf and who exported it.
    ///
    /// An fd that is not a dma-buf must be a memfd sealed against shrinking
    /// (`F_SEAL_SHRINK`, as PipeWire and heapcore seal theirs): otherwise the peer could
    /// truncate it while it is mapped here, and the next access would kill this process with
    /// `SIGBUS`.
    pub fn import(fd: OwnedFd) -> Result<Self> {
        let len = rustix::fs::seek(&fd, rustix::fs::SeekFrom::End(0))
            .map_err(|e| Error::io("finding the size of an imported fd", e))?;
        let info = FdInfo::read(fd.as_fd()).ok();
        let exporter = info.as_ref().and_then(|i| i.exp_name().map(str::to_owned));
        if exporter.is_none() {
            let refuse = |why: String| {
                Err(Error::Unsupported(format!(
                    "the imported fd is not a dma-buf and {why}: a peer could truncate this \
                     memfd; refusing to map it"
                )))
            };
            match rustix::fs::fcntl_get_seals(&fd) {
                Ok(seals) if seals.contains(rustix::fs::SealFlags::SHRINK) => {}
                Ok(_) => return refuse("is not sealed against shrinking (F_SEAL_SHRINK)".into()),
                Err(e) => return refuse(format!("cannot be sealed (not a memfd: {e})")),
            }
        }
        let name = info.as_ref().and_then(|i| i.name().map(str::to_owned));
        let mut buf = Self::from_parts(fd, len, Origin::Imported { exporter });
        buf.name = name;
        buf.mark_shared();
        Ok(buf)
    }

    /// The size in bytes (whole pages for allocated buffers).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the buffer has no bytes (never true for allocated buffers).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the memory came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Whether devices can import it (everything but the memfd fallback).
    #[inline]
    pub fn is_dmabuf(&self) -> bool {
        self.origin.is_dmabuf()
    }

    /// The name given with [`DmaBuf::set_name`] or at allocation.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Names the buffer so `/proc/<pid>/fdinfo/<fd>` (and tools such as `dmabuf_dump`) say
    /// who owns it. Names are at most 31 bytes. A memfd keeps the name it was created with.
    pub fn set_name(&mut self, name: &str) -> Result<()> {
        let cname = validate_buffer_name(name)?;
        if self.is_dmabuf() {
            uapi::dma_buf_set_name(&self.fd, &cname)
                .map_err(|e| Error::io(format!("naming a dma-buf from {}", self.origin), e))?;
        } else if self.name.is_some() {
            return Err(Error::Unsupported(
                "a memfd keeps the name it was created with".into(),
            ));
        }
        self.name = Some(name.to_owned());
        Ok(())
    }

    pub(crate) fn set_recorded_name(&mut self, name: &str) {
        self.name = Some(name.to_owned());
    }

    /// The fence of every device still using the buffer, if one has not signalled: writing
    /// into it now would race them (a display still scanning it out shows a torn frame).
    /// `None` when the buffer is idle, is not a dma-buf (memfd), or the kernel cannot say
    /// (before Linux 6.0: see [`fences_supported`]).
    pub fn busy(&self) -> Result<Option<SyncFile>> {
        if !self.is_dmabuf() || fences_supported() == Some(false) {
            return Ok(None);
        }
        match uapi::dma_buf_export_sync_file(&self.fd, FenceAccess::Write.flags()) {
            Ok(fd) => {
                FENCES.store(FENCES_YES, Relaxed);
                let fence = SyncFile::from_fd(fd);
                Ok((!fence.is_signalled()?).then_some(fence))
            }
            Err(rustix::io::Errno::NOTTY) => {
                FENCES.store(FENCES_NO, Relaxed);
                Ok(None)
            }
            Err(e) => Err(Error::io(
                format!("DMA_BUF_IOCTL_EXPORT_SYNC_FILE on {}", self.origin),
                e,
            )),
        }
    }

    /// Adds `fence` to the buffer as a reader's or a writer's, as a device driver does for
    /// its own work: until it signals, [`DmaBuf::busy`] reports the buffer busy.
    pub fn attach_fence(&self, fence: &SyncFile, access: FenceAccess) -> Result<()> {
        self.mark_shared();
        if !self.is_dmabuf() {
            return Err(Error::Unsupported(format!(
                "a buffer from {} is not a dma-buf and carries no fences",
                self.origin
            )));
        }
        uapi::dma_buf_import_sync_file(&self.fd, access.flags(), fence).map_err(|e| {
            Error::io(
                format!("DMA_BUF_IOCTL_IMPORT_SYNC_FILE on {}", self.origin),
                e,
            )
        })
    }

    /// What the kernel says about this fd.
    pub fn fdinfo(&self) -> Result<FdInfo> {
        FdInfo::read(self.fd.as_fd())
    }

    /// Makes the CPU mapping now (it is otherwise made on first access), so that a pool's
    /// buffers cost nothing to access on the hot path.
    pub fn map(&self) -> Result<()> {
        self.mapping().map(|_| ())
    }

    /// Maps the buffer and faults every page in, so that neither the first CPU access nor a
    /// lazily backed memfd costs page faults later (pools do this before handing buffers out).
    ///
    /// Memory the kernel cannot give (a memory cgroup at its limit) is
    /// [`Error::OutOfMemory`], reported here rather than as an OOM kill or a `SIGBUS` at the
    /// first write.
    pub fn prefault(&self) -> Result<()> {
        match self.mapping()?.populate() {
            Ok(()) => Ok(()),
            Err(Errno::NOMEM) => Err(Error::OutOfMemory {
                source_name: format!("{} (faulting its pages in)", self.origin),
                size: self.len,
            }),
            Err(e @ Errno::FAULT) => Err(Error::io(
                format!(
                    "faulting in a buffer from {}: its pages cannot be had (a memfd truncated \
                     under us, or the exporter refused)",
                    self.origin
                ),
                e,
            )),
            Err(e @ Errno::HWPOISON) => Err(Error::io(
                format!(
                    "faulting in a buffer from {}: a page is poisoned (hardware memory error)",
                    self.origin
                ),
                e,
            )),
            Err(e) => Err(Error::io(
                format!("faulting in {} bytes from {}", self.len, self.origin),
                e,
            )),
        }
    }

    /// Whether the CPU mapping exists.
    pub fn is_mapped(&self) -> bool {
        self.mapping.get().is_some()
    }

    fn mapping(&self) -> Result<&Mapping> {
        if let Some(m) = self.mapping.get() {
            return Ok(m);
        }
        let len = usize::try_from(self.len)
            .map_err(|_| Error::Unsupported("buffer larger than the address space".into()))?;
        if len == 0 {
            return Err(Error::Unsupported(
                "an empty buffer cannot be mapped".into(),
            ));
        }
        let mapping = Mapping::new(self.fd.as_fd(), len).map_err(|e| match e {
            Errno::PERM | Errno::INVAL if self.origin.is_protected() => {
                Error::Unsupported(format!(
                    "the CPU may not map this buffer from {} ({e}): protected heaps cannot be \
                     mapped",
                    self.origin
                ))
            }
            Errno::PERM | Errno::INVAL => Error::Unsupported(format!(
                "the CPU may not map this buffer from {} ({e})",
                self.origin
            )),
            e => Error::io(format!("mapping {len} bytes from {}", self.origin), e),
        })?;
        // If another thread mapped it meanwhile, ours is dropped (unmapped) here.
        let _ = self.mapping.set(mapping);
        Ok(self.mapping.get().expect("mapping was just set"))
    }

    /// What a `DMA_BUF_IOCTL_SYNC` bracket on this buffer needs.
    fn syncer(&self) -> Syncer<'_> {
        Syncer {
            fd: self.fd.as_fd(),
            origin: &self.origin,
        }
    }

    /// Begins CPU reads; the guard derefs to the bytes and ends the access when dropped.
    pub fn read(&self) -> Result<CpuRead<'_>> {
        let bytes = self.mapping()?.bytes();
        let sync = self.syncer();
        sync.start(DmaBufSyncFlags::READ)?;
        Ok(CpuRead { sync, bytes })
    }

    /// Begins CPU reads and writes; the guard derefs to the bytes mutably and ends the access
    /// (flushing CPU writes towards devices) when dropped or [`CpuWrite::finish`]ed.
    pub fn write(&mut self) -> Result<CpuWrite<'_>> {
        self.mapping()?;
        let Self {
            ref fd,
            ref origin,
            ref mut mapping,
            ..
        } = *self;
        let Some(bytes) = mapping.get_mut().and_then(Mapping::bytes_mut) else {
            return Err(Error::Unsupported(format!(
                "this buffer from {origin} was opened read-only"
            )));
        };
        let sync = Syncer {
            fd: fd.as_fd(),
            origin,
        };
        sync.start(DmaBufSyncFlags::READ | DmaBufSyncFlags::WRITE)?;
        Ok(CpuWrite {
            sync,
            bytes,
            ended: false,
        })
    }

    /// Gives up the buffer for its fd (the mapping is dropped).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for DmaBuf {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.mark_shared();
        self.fd.as_fd()
    }
}

impl AsRawFd for DmaBuf {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.mark_shared();
        self.fd.as_raw_fd()
    }
}

/// What a `DMA_BUF_IOCTL_SYNC` bracket needs of its buffer: the fd, and the origin (a memfd
/// takes no sync; errors name where the buffer came from). Borrowing only these two lets a
/// write guard hold the mapping's bytes mutably at the same time.
#[derive(Clone, Copy)]
struct Syncer<'a> {
    fd: BorrowedFd<'a>,
    origin: &'a Origin,
}

impl Syncer<'_> {
    fn start(self, access: DmaBufSyncFlags) -> Result<()> {
        if self.origin.is_dmabuf() {
            uapi::dma_buf_sync_start(self.fd, access).map_err(|e| {
                Error::io(format!("DMA_BUF_IOCTL_SYNC start on {}", self.origin), e)
            })?;
        }
        Ok(())
    }

    fn end(self, access: DmaBufSyncFlags) -> Result<()> {
        if self.origin.is_dmabuf() {
            uapi::dma_buf_sync_end(self.fd, access)
                .map_err(|e| Error::io(format!("DMA_BUF_IOCTL_SYNC end on {}", self.origin), e))?;
        }
        Ok(())
    }
}

/// CPU read access to a buffer; ends the `DMA_BUF_IOCTL_SYNC` bracket on drop.
pub struct CpuRead<'a> {
    sync: Syncer<'a>,
    bytes: &'a [u8],
}

impl Deref for CpuRead<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

impl Drop for CpuRead<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.sync.end(DmaBufSyncFlags::READ) {
            log::warn!("{e}");
        }
    }
}

/// CPU read/write access to a buffer; ends the `DMA_BUF_IOCTL_SYNC` bracket on drop.
pub struct CpuWrite<'a> {
    sync: Syncer<'a>,
    bytes: &'a mut [u8],
    ended: bool,
}

impl CpuWrite<'_> {
    /// Ends the access now and reports whether the kernel accepted it (drop only logs).
    pub fn finish(mut self) -> Result<()> {
        self.ended = true;
        self.sync
            .end(DmaBufSyncFlags::READ | DmaBufSyncFlags::WRITE)
    }
}

impl Deref for CpuWrite<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

impl DerefMut for CpuWrite<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.bytes
    }
}

impl Drop for CpuWrite<'_> {
    fn drop(&mut self) {
        if !self.ended {
            if let Err(e) = self
                .sync
                .end(DmaBufSyncFlags::READ | DmaBufSyncFlags::WRITE)
            {
                log::warn!("{e}");
            }
        }
    }
}

const FENCES_UNKNOWN: u8 = 0;
const FENCES_YES: u8 = 1;
const FENCES_NO: u8 = 2;
/// What the kernel answered the first `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` of this process.
static FENCES: AtomicU8 = AtomicU8::new(FENCES_UNKNOWN);

/// Whether this kernel exports dma-buf fences as sync_files (Linux 6.0+), as far as this
/// process has found out (`None`: no dma-buf was asked yet).
pub fn fences_supported() -> Option<bool> {
    match FENCES.load(Relaxed) {
        FENCES_YES => Some(true),
        FENCES_NO => Some(false),
        _ => None,
    }
}

/// `base` then `suffix`, made a name the kernel keeps: control characters dropped and `base`
/// cut (at a character boundary) so the whole fits in `DMA_BUF_SET_NAME`'s 31 bytes. For names
/// built from user-chosen parts (element names, pool names) plus a serial.
pub fn fit_buffer_name(base: &str, suffix: &str) -> String {
    let room = uapi::DMA_BUF_NAME_MAX.saturating_sub(suffix.len());
    let mut out: String = base.chars().filter(|c| !c.is_control()).collect();
    let mut cut = room.min(out.len());
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    out.truncate(cut);
    out.push_str(suffix);
    out
}

pub(crate) fn validate_buffer_name(name: &str) -> Result<CString> {
    let invalid = |reason: String| Error::InvalidBufferName {
        name: name.to_owned(),
        reason,
    };
    if name.len() > uapi::DMA_BUF_NAME_MAX {
        return Err(invalid(format!(
            "the kernel keeps at most {} bytes",
            uapi::DMA_BUF_NAME_MAX
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("it contains control characters".into()));
    }
    CString::new(name).map_err(|_| invalid("it contains a NUL byte".into()))
}

/// `/proc/self/fdinfo/<fd>`: for a dma-buf, `size`, `exp_name` (the exporter: `system`,
/// `reserved`, `udmabuf`, ...) and `name`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FdInfo(HashMap<String, String>);

impl FdInfo {
    /// Reads the fdinfo of one of this process's fds.
    pub fn read(fd: BorrowedFd<'_>) -> Result<Self> {
        let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
        let text =
            std::fs::read_to_string(&path).map_err(|e| Error::io(format!("reading {path}"), e))?;
        Ok(Self::parse(&text))
    }

    fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
        )
    }

    /// Any field.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The exporter (heap name, `udmabuf`); present only for dma-bufs.
    pub fn exp_name(&self) -> Option<&str> {
        self.get("exp_name")
    }

    /// The name set with `DMA_BUF_SET_NAME`.
    pub fn name(&self) -> Option<&str> {
        self.get("name").filter(|n| !n.is_empty())
    }

    /// The buffer size the exporter reports.
    pub fn size(&self) -> Option<u64> {
        self.get("size")?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::test_memfd;

    #[test]
    fn fdinfo_of_a_dmabuf_parses() {
        let info = FdInfo::parse(
            "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1053\nsize:\t8388608\ncount:\t1\n\
             exp_name:\tsystem\nname:\tdmaheap:cli\n",
        );
        assert_eq!(info.size(), Some(8 << 20));
        assert_eq!(info.exp_name(), Some("system"));
        assert_eq!(info.name(), Some("dmaheap:cli"));
    }

    #[test]
    fn unsealed_memfds_and_plain_files_are_refused_on_import() {
        let err = DmaBuf::import(test_memfd(b"frame", rustix::fs::SealFlags::empty()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not sealed against shrinking") && err.contains("refusing to map it"),
            "{err}"
        );
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let err = DmaBuf::import(file.into()).unwrap_err().to_string();
        assert!(err.contains("cannot be sealed"), "{err}");
    }

    #[test]
    fn shrink_sealed_memfds_import_and_cannot_be_truncated_under_us() {
        use rustix::fs::SealFlags;
        let fd = test_memfd(&[7; 8192], SealFlags::SHRINK | SealFlags::GROW);
        let peer = fd.try_clone().unwrap();
        let buf = DmaBuf::import(fd).unwrap();
        assert_eq!(
            (buf.len(), buf.origin()),
            (8192, &Origin::Imported { exporter: None })
        );
        assert!(buf.read().unwrap().iter().all(|&b| b == 7));
        // The peer's truncation is what the seal is for: the kernel refuses it.
        assert_eq!(
            rustix::fs::ftruncate(&peer, 0),
            Err(rustix::io::Errno::PERM)
        );
        assert!(buf.read().unwrap().iter().all(|&b| b == 7));
    }

    #[test]
    fn write_sealed_memfds_map_read_only() {
        use rustix::fs::SealFlags;
        let fd = test_memfd(
            b"sealed frame",
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE,
        );
        let mut buf = DmaBuf::import(fd).unwrap();
        assert_eq!(&buf.read().unwrap()[..12], b"sealed frame");
        // The kernel's view: a shared mapping of the memfd without write permission.
        let start = buf.mapping.get().unwrap().bytes().as_ptr() as usize;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps
            .lines()
            .find(|l| l.starts_with(&format!("{start:x}-")))
            .expect("the mapping is in /proc/self/maps");
        assert!(
            line.contains(" r--s ") && line.contains("dmaheap-import-test"),
            "{line}"
        );
        let Err(err) = buf.write() else {
            panic!("a write-sealed memfd was mapped writable");
        };
        assert!(err.to_string().contains("read-only"), "{err}");
    }

    #[test]
    fn only_protected_origins_are_called_protected() {
        assert!(Origin::Heap(HeapName::new("protected,secure-video").unwrap()).is_protected());
        assert!(
            Origin::Imported {
                exporter: Some("protected,cma".into())
            }
            .is_protected()
        );
        assert!(!Origin::Heap(HeapName::new("system").unwrap()).is_protected());
        assert!(!Origin::Memfd.is_protected());
    }

    #[test]
    fn buffer_names_the_kernel_refuses_are_refused_here() {
        assert!(validate_buffer_name("dmaheap:video-decode#12").is_ok());
        assert!(validate_buffer_name(&"x".repeat(32)).is_err());
        assert!(validate_buffer_name("a\0b").is_err());
        assert!(validate_buffer_name("a\nb").is_err());
    }
}
