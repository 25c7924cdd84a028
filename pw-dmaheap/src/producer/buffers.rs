//! Buffers PipeWire adds to and removes from the stream: each gets a heap buffer of its own,
//! mapped once, whose fd goes into its `spa_data`; a removed one is freed, never pooled.

use std::os::fd::AsRawFd;

use super::negotiate::decide_kind;
use super::state::{EINVAL, ENOMEM, Inner, Outcome, Slot, SlotSync, fail};
use crate::data_types::{DataKind, DataTypes};
use crate::error::{NegotiationError, Result};
use crate::raw::{DataFill, StreamBuffer, spa_abi};

/// `add_buffer`: picks the memory type (once per format), allocates the buffer and fills its
/// `spa_data`.
pub(super) fn on_add_buffer(inner: &mut Inner, buffer: &mut StreamBuffer<'_>) -> Outcome {
    // Whatever becomes of it, the buffer has its id in the stream's set.
    inner.returns.added(buffer.key());
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
    // With explicit sync PipeWire chose the layout with two more blocks, for the syncobjs.
    let explicit_sync = active.explicit_sync_offered
        && n_datas == blocks as usize + 2
        && buffer.has_meta(spa_abi::META_SYNC_TIMELINE);
    if n_datas != blocks as usize && !explicit_sync {
        return fail(
            EINVAL,
            NegotiationError::Blocks {
                got: n_datas,
                asked: blocks,
            },
        );
    }
    let first_of_format = active.explicit_sync.is_none();
    if first_of_format {
        let release = buffer.has_meta(spa_abi::meta_type_features(
            spa_abi::META_SYNC_TIMELINE,
            spa_abi::META_FEATURE_SYNC_TIMELINE_RELEASE,
        ));
        log::info!(
            "{node}: {} sync for {}{}",
            if explicit_sync {
                "explicit"
            } else {
                "implicit"
            },
            active.params,
            match (explicit_sync, release) {
                (true, true) => ": the consumer says per buffer whether it signals the release",
                (true, false) => ": the consumer signals every release point",
                (false, _) => "",
            }
        );
        active.explicit_sync = Some(explicit_sync);
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
    let fill = DataFill::memory(
        this_kind,
        buf.as_raw_fd(),
        u32::try_from(buf.len()).unwrap_or(u32::MAX),
    );
    let mut fills = vec![fill; blocks as usize];
    let sync = if explicit_sync {
        match slot_sync(inner) {
            Ok(sync) => {
                for timeline in [&sync.acquire, &sync.release] {
                    let fd = timeline.fd().map_or(-1, |fd| fd.as_raw_fd());
                    fills.push(DataFill::syncobj(fd));
                }
                Some(sync)
            }
            Err(e) => {
                inner.release_unshared(buf);
                return fail(ENOMEM, e);
            }
        }
    } else {
        None
    };
    if let Err(e) = buffer.fill(&fills) {
        inner.release_unshared(buf);
        return fail(EINVAL, e);
    }
    if let Some(active) = inner.active.as_mut() {
        active.origin.get_or_insert_with(|| buf.origin().clone());
    }
    log::debug!(
        "{node}: buffer {:?}: {} bytes {this_kind} from {} (fd {}){}",
        buffer.key(),
        buf.len(),
        buf.origin(),
        fill.fd,
        if sync.is_some() {
            ", acquire and release syncobjs"
        } else {
            ""
        }
    );
    inner.slots.insert(
        buffer.key(),
        Slot {
            buf,
            kind: this_kind,
            sync,
        },
    );
    // Each consumer signals its own release points: with explicit sync the buffers go to
    // one link only (PipeWire's video-src-sync does the same).
    if first_of_format && inner.exclusive != explicit_sync {
        inner.exclusive = explicit_sync;
        return Outcome::Properties(if explicit_sync {
            &[("node.exclusive", "true")]
        } else {
            &[("node.exclusive", "false")]
        });
    }
    Outcome::Done
}

/// A buffer's two timelines on the producer's sync device.
fn slot_sync(inner: &Inner) -> Result<SlotSync> {
    let device = inner
        .sync_device
        .as_ref()
        .ok_or(NegotiationError::NoSyncDevice)?;
    Ok(SlotSync {
        acquire: device.timeline()?,
        release: device.timeline()?,
        point: 0,
    })
}

/// Whether a format without a modifier lets this buffer be MemFd when no dma-buf is left.
fn allows_memfd(inner: &Inner, allowed: DataTypes) -> bool {
    inner.active.as_ref().is_some_and(|a| {
        a.params.modifier.is_none() && (allowed & a.offered_types).contains(DataTypes::MEM_FD)
    })
}

/// `remove_buffer`: the buffer's fds reached consumers, so it is freed, not pooled.
pub(super) fn on_remove_buffer(inner: &mut Inner, buffer: &mut StreamBuffer<'_>) {
    inner.returns.removed(buffer.key());
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
