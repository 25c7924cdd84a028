//! The heap pools of `dmaheapupload`: the one offered upstream in the ALLOCATION query (which
//! upstream configures, activates and writes into) and the one it copies into, both made
//! for the caps and for what downstream said it needs.

use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;

use super::imp::{CAT, DmaHeapUpload};
use super::state::{Downstream, PoolSlot, State};
use crate::allocator::DmaHeapAllocator;
use crate::bufferpool::DmaHeapBufferPool;
use crate::caps;
use crate::stats::Stats;

impl DmaHeapUpload {
    /// A heap pool for `caps`, configured for what downstream needs (not activated: that
    /// allocates, and happens without the state lock).
    pub(super) fn new_pool(
        &self,
        caps: &gst::Caps,
        allocator: &DmaHeapAllocator,
        downstream: &Downstream,
        for_copies: bool,
    ) -> Result<PoolSlot, gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        let info = caps::video_info(caps)
            .map_err(|e| gst::error_msg!(gst::CoreError::Negotiation, ("{e}")))?;
        let size = u32::try_from(info.size())
            .unwrap_or(u32::MAX)
            .max(downstream.size);
        let min = settings.min_buffers.max(downstream.min);
        let mut max = settings.max_buffers;
        if max > 0 && max < min {
            gst::warning!(
                CAT,
                imp = self,
                "max-buffers={max} is below the {min} buffers downstream needs: allowing {min}"
            );
            max = min;
        }
        let pool = DmaHeapBufferPool::new();
        pool.set_owner(&*self.obj());
        pool.set_stats(self.stats());
        pool.set_property("qos", settings.qos);
        pool.set_property("prewarm", settings.prewarm);
        pool.set_property("on-exhaustion", settings.on_exhaustion);
        pool.set_property("buffer-limit", max);
        // This element writes its copies through a CPU mapping, and mapping waits for the
        // dma-buf's fences (DMA_BUF_IOCTL_SYNC): checking them again on release would only
        // cost a system call per frame. Upstream, writing into the offered pool, may be a
        // device that does not wait: that pool keeps the check.
        pool.set_property("hold-busy", !for_copies);
        let mut config = pool.config();
        config.set_params(Some(caps), size, min, max);
        config.set_allocator(
            Some(allocator.upcast_ref::<gst::Allocator>()),
            Some(&downstream.params),
        );
        // Strides can be padded only for a downstream that reads them from the video meta.
        if for_copies && downstream.video_meta {
            config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META);
            if let Some(align) = &downstream.alignment {
                config.add_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT);
                config.set_video_alignment(align);
            }
        }
        if pool.set_config(config).is_err() {
            // The pool said what it can do instead (more buffers for prewarm, a bigger size):
            // take that.
            let adjusted = pool.config();
            pool.set_config(adjusted).map_err(|_| {
                gst::error_msg!(
                    gst::ResourceError::Settings,
                    ("the heap pool refused a configuration for {caps}")
                )
            })?;
        }
        Stats::bump(&self.stats().pools);
        gst::info!(
            CAT,
            imp = self,
            "new heap pool {} {} for {caps}: {size} byte buffers, {min}..{} of them, from {}",
            pool.name(),
            if for_copies {
                "to copy into"
            } else {
                "offered upstream"
            },
            if max == 0 {
                "unlimited".to_owned()
            } else {
                max.to_string()
            },
            allocator
                .choice()
                .map(|c| c.describe())
                .unwrap_or_else(|e| e.to_string())
        );
        Ok(PoolSlot {
            pool,
            allocator: allocator.clone(),
            caps: caps.clone(),
            downstream: downstream.clone(),
            size,
            min,
            max,
        })
    }

    /// The pool to copy into, activated. Made (and the old one let go) without the state
    /// lock held: activation allocates, and may post errors that a bus handler answers by
    /// calling back into this element.
    pub(super) fn copy_pool(&self) -> Result<DmaHeapBufferPool, gst::FlowError> {
        let (caps, allocator, downstream) = match &*self.state.lock().unwrap() {
            State::Started {
                in_caps: Some(caps),
                allocator,
                downstream,
                copies,
                ..
            } => {
                if let Some(slot) = copies
                    && slot.fits(caps, allocator, downstream)
                {
                    return Ok(slot.pool.clone());
                }
                (caps.clone(), allocator.clone(), downstream.clone())
            }
            _ => return Err(gst::FlowError::NotNegotiated),
        };
        let slot = self
            .new_pool(&caps, &allocator, &downstream, true)
            .map_err(|e| {
                self.post_error_message(e);
                gst::FlowError::Error
            })?;
        slot.pool.set_active(true).map_err(|_| {
            gst::element_imp_error!(
                self,
                gst::ResourceError::NoSpaceLeft,
                ("could not activate the heap buffer pool"),
                ["pool {}", slot.pool.name()]
            );
            gst::FlowError::Error
        })?;
        let pool = slot.pool.clone();
        let old = match &mut *self.state.lock().unwrap() {
            State::Started { copies, .. } => copies.replace(slot),
            State::Stopped => Some(slot),
        };
        if let Some(old) = old {
            let _ = old.pool.set_active(false);
        }
        Ok(pool)
    }

    /// Reads downstream's ALLOCATION answer (its size, minimum, alignment and metas); its own
    /// pool is not used: buffers come from the heap pools, which this element (not
    /// GstBaseTransform) activates and deactivates.
    pub(super) fn take_downstreams_answer(
        &self,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        let mut down = Downstream {
            video_meta: query
                .find_allocation_meta::<gst_video::VideoMeta>()
                .is_some(),
            ..Downstream::default()
        };
        if let Some((pool, size, min, _max)) = query.allocation_pools().next() {
            down.size = size;
            down.min = min;
            if let Some(pool) = pool {
                let config = pool.config();
                if config.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_ALIGNMENT) {
                    down.alignment = config.video_alignment();
                }
            }
        }
        // Every proposed parameter set must hold for our buffers: take the largest of each.
        let (mut align, mut prefix, mut padding) = (0, 0, 0);
        for (_allocator, params) in query.allocation_params() {
            align |= params.align();
            prefix = prefix.max(params.prefix());
            padding = padding.max(params.padding());
        }
        down.params = gst::AllocationParams::new(gst::MemoryFlags::empty(), align, prefix, padding);
        // Downstream's own pool is not used: buffers come from the heap pools, which this
        // element (not GstBaseTransform) activates and deactivates.
        while query.allocation_pools().len() > 0 {
            query.remove_nth_allocation_pool(0);
        }
        gst::debug!(CAT, imp = self, "downstream needs {down:?}");
        match &mut *self.state.lock().unwrap() {
            State::Started { downstream, .. } => {
                // The copy pool follows on the next copy; the offered one stays with upstream.
                *downstream = down;
                Ok(())
            }
            State::Stopped => Err(gst::loggable_error!(CAT, "allocation before start")),
        }
    }

    /// Answers upstream's ALLOCATION query with a heap pool for its caps (the same one again
    /// for the same caps).
    pub(super) fn offer_pool(
        &self,
        decide_query: Option<&gst::query::Allocation>,
        query: &mut gst::query::Allocation,
    ) -> Result<(), gst::LoggableError> {
        // With a decide query the parent copies downstream's metas (nothing else); without one
        // it would forward the query downstream and return downstream's pool.
        if decide_query.is_some() {
            self.parent_propose_allocation(decide_query, query)?;
        }
        // Buffers of our pool go downstream untouched, so upstream may write strides and
        // offsets of its own (a decoder's padding) only if downstream reads them from the
        // video meta. Until downstream has answered, it is not offered.
        let downstream_reads_video_meta = decide_query
            .is_some_and(|q| q.find_allocation_meta::<gst_video::VideoMeta>().is_some());
        if downstream_reads_video_meta
            && query
                .find_allocation_meta::<gst_video::VideoMeta>()
                .is_none()
        {
            query.add_allocation_meta::<gst_video::VideoMeta>(None);
        }
        let Some(caps) = query.get_owned().0 else {
            return Err(gst::loggable_error!(CAT, "allocation query without caps"));
        };

        // The same pool again for the same caps (upstream may be using it); a new one,
        // configured without the state lock, otherwise.
        let (allocator, downstream) = match &*self.state.lock().unwrap() {
            State::Started {
                offered: Some(slot),
                allocator,
                ..
            } if slot.caps == caps && slot.allocator == *allocator => {
                query.add_allocation_param(Some(allocator), slot.downstream.params);
                query.add_allocation_pool(Some(&slot.pool), slot.size, slot.min, slot.max);
                return Ok(());
            }
            State::Started {
                allocator,
                downstream,
                ..
            } => (allocator.clone(), downstream.clone()),
            State::Stopped => return Err(gst::loggable_error!(CAT, "not started")),
        };
        let slot = self
            .new_pool(&caps, &allocator, &downstream, false)
            .map_err(|e| {
                let msg = format!("{e:?}");
                self.post_error_message(e);
                gst::loggable_error!(CAT, "{msg}")
            })?;
        query.add_allocation_param(Some(&allocator), downstream.params);
        query.add_allocation_pool(Some(&slot.pool), slot.size, slot.min, slot.max);
        gst::debug!(
            CAT,
            imp = self,
            "offering {} upstream: {} byte buffers, {}..{} of them",
            slot.pool.name(),
            slot.size,
            slot.min,
            slot.max
        );
        let old = match &mut *self.state.lock().unwrap() {
            State::Started { offered, .. } => offered.replace(slot),
            State::Stopped => Some(slot),
        };
        if let Some(old) = old {
            let _ = old.pool.set_active(false);
        }
        Ok(())
    }
}
