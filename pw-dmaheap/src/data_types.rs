//! The memory types of PipeWire buffers: the one a buffer has ([`DataKind`]) and sets of them
//! as `SPA_PARAM_BUFFERS_dataType` carries them ([`DataTypes`]).

use std::fmt;

use pipewire::spa::sys;

/// The memory type of a PipeWire buffer, as negotiated with the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataKind {
    /// `SPA_DATA_DmaBuf`: a dma-buf fd from a DMA-BUF heap or udmabuf.
    DmaBuf,
    /// `SPA_DATA_MemFd`: a sealed memfd, for consumers that cannot take dma-bufs.
    MemFd,
}

impl DataKind {
    /// The `enum spa_data_type` value.
    pub fn spa_type(self) -> u32 {
        match self {
            Self::DmaBuf => sys::SPA_DATA_DmaBuf,
            Self::MemFd => sys::SPA_DATA_MemFd,
        }
    }

    /// The bit this type has in `SPA_PARAM_BUFFERS_dataType`.
    pub fn mask(self) -> DataTypes {
        match self {
            Self::DmaBuf => DataTypes::DMA_BUF,
            Self::MemFd => DataTypes::MEM_FD,
        }
    }

    /// The kind of an `enum spa_data_type` value, if it is one of the two.
    pub fn from_spa(data_type: u32) -> Option<Self> {
        [Self::DmaBuf, Self::MemFd]
            .into_iter()
            .find(|k| k.spa_type() == data_type)
    }
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DmaBuf => "DmaBuf",
            Self::MemFd => "MemFd",
        })
    }
}

bitflags::bitflags! {
    /// A set of `SPA_DATA_*` memory types, one bit `1 << type` each, as
    /// `SPA_PARAM_BUFFERS_dataType` carries them and as PipeWire leaves the intersection of
    /// both sides' sets in `spa_data.type` before `add_buffer`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct DataTypes: u32 {
        /// `SPA_DATA_MemPtr`: memory PipeWire maps for the client.
        const MEM_PTR = 1 << sys::SPA_DATA_MemPtr;
        /// `SPA_DATA_MemFd`: a memfd.
        const MEM_FD = 1 << sys::SPA_DATA_MemFd;
        /// `SPA_DATA_DmaBuf`: a dma-buf.
        const DMA_BUF = 1 << sys::SPA_DATA_DmaBuf;
    }
}

impl fmt::Display for DataTypes {
    /// `MEM_FD | DMA_BUF`, `none`, with unknown bits in hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        bitflags::parser::to_writer(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_kinds_map_to_spa_bits() {
        assert_eq!(DataKind::MemFd.mask().bits(), 1 << 2);
        assert_eq!(DataKind::DmaBuf.mask().bits(), 1 << 3);
        assert_eq!(DataKind::from_spa(3), Some(DataKind::DmaBuf));
        assert_eq!(DataKind::from_spa(1), None);
    }

    #[test]
    fn masks_print_their_names() {
        let both = DataTypes::MEM_FD | DataTypes::DMA_BUF;
        assert_eq!(both.to_string(), "MEM_FD | DMA_BUF");
        assert_eq!(format!("{both:?}"), "DataTypes(MEM_FD | DMA_BUF)");
        assert_eq!(DataTypes::empty().to_string(), "none");
        assert_eq!(
            DataTypes::from_bits_retain(0x8 | 0x40).to_string(),
            "DMA_BUF | 0x40"
        );
    }
}
