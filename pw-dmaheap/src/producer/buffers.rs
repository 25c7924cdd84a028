//! Buffers PipeWire adds to and removes from the stream: each gets a heap buffer of its own,
//! mapped once, whose fd goes into its `spa_data`; a removed one is freed, never pooled.

use std::os::fd::AsRawFd;

use super::negotiate::decide_kind;
use super::state::{EINVAL, ENOMEM, Inner, Outcome, Slot, fail};
use crate::data_types::{DataKind, DataTypes};
use crate::error::NegotiationError;
use crate::raw::{DataFill, StreamBuffer};

/// `add_buffer`: picks the memory type (once per format), allocates the buffer and fills its
/// `spa_data`.
pub(super) fn on_add_buffer(inner: &mut Inner, buffer: &mut StreamBuffer<'_>) -> Outcome {
    let node = inner.config.node_name.clone();
    let Some(active) = inner.active.as_mut() else {
        return fail(EINVAL, NegotiationError::BufferBeforeFormat);
    };
    let allowed = buffer.allowed_types();
    let kind = match active.kind {
        Some(kind) => kind,
        None => {
            let modifier = active.params.modifier.is_some();
            match decide_kind(modifier, active.offered_types, allowed) {
                Ok((kind, why)) => {
                    log::info!("{node}: {kind} buffers for {}: {why}", active.params);
                    active.kind = Some(kind);
                    kind
                }
                Err(e) => return fail(EINVAL, e),
            }
        }
    };
    let constraints = active.constraints.clone();
    let blocks = active.blocks;
    let n_datas = buffer.n_datas();
    if n_datas != blocks as usize {
        return fail(
            EINVAL,
            NegotiationError::Blocks {
                got: n_datas,
                asked: blocks,
            },
        );
    }
    let allocation_failed = |e| fail(ENOMEM, NegotiationError::Allocation(Box::new(e)));
    let allocated = match inner.spare.take() {
        Some(buf) if kind == DataKind::DmaBuf => Ok(buf),
        spare => {
            if let Some(unused) = spare {
                inner.release_unshared(unused);
            }
            inner.pools.allocate(kind, &constraints)
        }
    };
    let (buf, this_kind) = match allocated {
        Ok(buf) => (buf, kind),
        Err(e) if kind == DataKind::DmaBuf && allows_memfd(inner, allowed) => {
            log::warn!("{node}: no dma-buf for another buffer ({e}); this one is MemFd");
            match inner.pools.allocate(DataKind::MemFd, &constraints) {
                Ok(buf) => (buf, DataKind::MemFd),
                Err(e) => return allocation_failed(e),
            }
        }
        Err(e) => return allocation_failed(e),
    };
    let fill = DataFill {
        kind: this_kind,
        fd: buf.as_raw_fd(),
        mapoffset: 0,
        maxsize: u32::try_from(buf.len()).unwrap_or(u32::MAX),
    };
    if let Err(e) = buffer.fill(&vec![fill; blocks as usize]) {
        inner.release_unshared(buf);
        return fail(EINVAL, e);
    }
    if let Some(active) = inner.active.as_mut() {
        active.origin.get_or_insert_with(|| buf.origin().clone());
    }
    log::debug!(
        "{node}: buffer {:?}: {} bytes {this_kind} from {} (fd {})",
        buffer.key(),
        buf.len(),
        buf.origin(),
        fill.fd
    );
    inner.slots.insert(
        buffer.key(),
        Slot {
            buf,
            kind: this_kind,
        },
    );
    Outcome::Done
}

/// Whether a format without a modifier lets this buffer be MemFd when no dma-buf is left.
fn allows_memfd(inner: &Inner, allowed: DataTypes) -> bool {
    inner.active.as_ref().is_some_and(|a| {
        a.params.modifier.is_none() && (allowed & a.offered_types).contains(DataTypes::MEM_FD)
    })
}

/// `remove_buffer`: the buffer's fds reached consumers, so it is freed, not pooled.
pub(super) fn on_remove_buffer(inner: &mut Inner, buffer: &mut StreamBuffer<'_>) {
    if let Some(slot) = inner.slots.remove(&buffer.key()) {
        log::debug!(
            "{}: freeing buffer {:?} ({} from {})",
            inner.config.node_name,
            buffer.key(),
            slot.kind,
            slot.buf.origin()
        );
        inner.retire(slot.buf);
    }
}
