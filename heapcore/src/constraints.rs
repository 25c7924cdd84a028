//! What a buffer's consumers need: size, alignment, contiguity, CPU access, and the usage.

use serde::Serialize;

use crate::device::DeviceReport;

use crate::format::FrameLayout;
use crate::policy::Usage;

/// How the CPU will touch the buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuAccess {
    /// Only devices touch it (decoder to display): any caching will do, protected heaps too.
    #[default]
    None,
    /// The CPU reads it (analysis, screen capture readback): prefer cached heaps.
    Read,
    /// The CPU writes it (software rendering, uploads): prefer cached heaps.
    Write,
    /// Both.
    ReadWrite,
}

impl std::str::FromStr for CpuAccess {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "read-write" | "readwrite" | "rw" => Ok(Self::ReadWrite),
            _ => Err(format!(
                "{s:?} is not a CPU access (none, read, write, read-write)"
            )),
        }
    }
}

/// Everything the heap choice depends on. Build with [`Constraints::new`] and the setters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Constraints {
    /// Bytes needed (rounded up to pages at allocation).
    pub size: u64,
    /// What the buffer is for: the policy entry that orders the heaps.
    pub usage: Usage,
    /// Devices without an IOMMU need physically contiguous memory.
    pub contiguous: bool,
    /// How the CPU touches the buffer.
    pub cpu_access: CpuAccess,
    /// Physical alignment of the buffer start, a power of two (page size or less: any heap).
    pub alignment: u64,
    /// The consumer imports dma-bufs only (GStreamer `memory:DMABuf` caps, PipeWire DmaBuf):
    /// the memfd fallback is out.
    pub require_dmabuf: bool,
    /// The devices the buffer passes through, with what each was found to accept: a source
    /// one of them refused is out, and so is anything that is not a dma-buf.
    pub devices: Vec<DeviceReport>,
}

impl Constraints {
    /// `size` bytes for the generic usage, no other needs.
    pub fn new(size: u64) -> Self {
        Self {
            size,
            usage: Usage::generic(),
            contiguous: false,
            cpu_access: CpuAccess::None,
            alignment: 1,
            require_dmabuf: false,
            devices: Vec::new(),
        }
    }

    /// One video frame of `layout`.
    pub fn for_frame(layout: &FrameLayout) -> Self {
        Self::new(layout.size)
    }

    /// What the buffer is for.
    pub fn usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }

    /// Whether the buffer must be physically contiguous.
    pub fn contiguous(mut self, contiguous: bool) -> Self {
        self.contiguous = contiguous;
        self
    }

    /// How the CPU touches the buffer.
    pub fn cpu_access(mut self, access: CpuAccess) -> Self {
        self.cpu_access = access;
        self
    }

    /// The physical alignment of the buffer start, rounded up to a power of two.
    pub fn alignment(mut self, alignment: u64) -> Self {
        self.alignment = alignment
            .max(1)
            .checked_next_power_of_two()
            .unwrap_or(1 << 63);
        self
    }

    /// Whether the consumer imports dma-bufs only (no memfd fallback).
    pub fn require_dmabuf(mut self, required: bool) -> Self {
        self.require_dmabuf = required;
        self
    }

    /// The devices the buffer passes through (see [`DeviceReport::for_node`]).
    pub fn devices(mut self, devices: Vec<DeviceReport>) -> Self {
        self.devices = devices;
        self
    }
}
