#![doc = include_str!("../README.md")]
// `unsafe` only where the kernel boundary demands it: the ioctls (uapi), the CPU mapping
// (mapping) and the worker threads' signal mask (worker).
#![deny(unsafe_code)]

mod access;
mod allocator;
mod bytes;
mod constraints;
pub mod device;
mod dmabuf;
mod error;
mod exporter;
pub mod fence;
pub mod format;
mod heap;
mod inventory;
#[allow(unsafe_code)]
mod mapping;
pub mod policy;
pub mod pool;
pub mod pressure;
pub mod size;
mod solver;
mod source;
pub mod syncobj;
pub mod sysinfo;
#[allow(unsafe_code)]
mod uapi;
#[allow(unsafe_code)]
mod worker;

pub use access::{Access, permission_fix};
pub use allocator::Allocator;
pub use constraints::{Constraints, CpuAccess};
pub use dmabuf::{CpuRead, CpuWrite, DmaBuf, FdInfo, Origin, fences_supported, fit_buffer_name};
pub use error::{Error, Result};
pub use exporter::ExporterMemory;
pub use fence::{FenceAccess, SyncFile};
pub use format::FrameLayoutError;
pub use heap::{CMA_ALIAS, DEFAULT_CMA_NAMES, HeapKind, HeapName, HeapProperties};
pub use inventory::{CmaAlignment, CmaArea, CmaUsage, HeapInfo, Inventory, SysPaths, UdmabufInfo};
pub use policy::{Policy, PolicyEnv, PolicyError, Usage};
pub use pool::{Pool, PoolConfig, PoolRegistry, PoolStats, PooledBuf, QosClass};
pub use pressure::PressureLevel;
pub use solver::{Candidate, Candidates, Verdict, solve, solve_explicit};
pub use source::Source;
pub use uapi::dma_buf::dma_heap_alloc;
