#![doc = include_str!("../README.md")]

mod access;
mod allocator;
mod backend;
mod dmabuf;
mod error;
pub mod format;
mod heap;
mod inventory;
pub mod size;
pub mod sysinfo;
mod uapi;

pub use access::{Access, permission_fix};
pub use allocator::Allocator;
pub use backend::Source;
pub use dmabuf::{CpuRead, CpuWrite, DmaBuf, FdInfo, Origin};
pub use error::{Error, Result};
pub use heap::{CMA_ALIAS, DEFAULT_CMA_NAMES, HeapKind, HeapName, HeapProperties};
pub use inventory::{CmaUsage, HeapInfo, Inventory, SysPaths, UdmabufInfo};
