//! What `dmaheapupload` does with each buffer: pass it on when it is heap memory the heap
//! choice allows, or another exporter's dma-buf that meets what the consumers need (see
//! `foreign`), laid out as downstream reads it; copy it into a heap buffer otherwise, and
//! say why in the stats.

use std::sync::atomic::Ordering;

use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;

use super::foreign::Foreign;
use super::imp::{CAT, DmaHeapUpload};
use super::state::State;
use crate::heapchoice::HeapChoice;
use crate::memory;

impl DmaHeapUpload {
    /// Whether `buf` can go downstream as it is as far as its layout goes: downstream reads
    /// strides and offsets from the video meta, or the buffer has the caps' default layout
    /// (what a sink that ignores video meta assumes).
    fn layout_fits(buf: &gst::BufferRef, info: &gst_video::VideoInfo, video_meta: bool) -> bool {
        if video_meta {
            return true;
        }
        let n = info.n_planes() as usize;
        buf.size() >= info.size()
            && buf.meta::<gst_video::VideoMeta>().is_none_or(|meta| {
                meta.offset()[..n] == info.offset()[..n] && meta.stride()[..n] == info.stride()[..n]
            })
    }

    /// Whether every memory of `buf` is heap memory from a source `choice` allows (so
    /// `heap=`, the usage's policy and, for memory:DMABuf, dma-buf-only hold for what passes
    /// through, whichever pool or allocator in the process made it).
    fn is_chosen_heap_memory(buf: &gst::BufferRef, choice: &HeapChoice) -> bool {
        buf.n_memory() > 0
            && buf.iter_memories().all(|m| {
                memory::heap_buffer(m)
                    .and_then(|b| b.source())
                    .is_some_and(|source| choice.sources().contains(&source))
            })
    }

    /// Why a buffer was copied, for the log.
    fn copy_reason(buf: &gst::BufferRef, choice: &HeapChoice) -> String {
        let Some(mem) = buf.iter_memories().next() else {
            return "it has no memory".into();
        };
        if let Some(info) = memory::heap_memory_info(mem) {
            if !Self::is_chosen_heap_memory(buf, choice) {
                return format!(
                    "it is {} memory, which {} does not allow",
                    info.origin,
                    choice.describe()
                );
            }
            return "it is heap memory laid out with strides or offsets of its own, which \
                    downstream would not read (it takes no video meta)"
                .into();
        }
        if mem.is_memory_type::<gst_allocators::DmaBufMemory>() {
            return "it is a dma-buf from another exporter".into();
        }
        match mem.allocator() {
            Some(a) => format!("its memory comes from allocator {}", a.name()),
            None => "its memory has no allocator".into(),
        }
    }

    fn copy_frame(
        &self,
        info: &gst_video::VideoInfo,
        inbuf: &gst::Buffer,
        outbuf: gst::Buffer,
    ) -> Result<gst::Buffer, gst::FlowError> {
        let in_frame =
            gst_video::VideoFrame::from_buffer_readable(inbuf.clone(), info).map_err(|_| {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("cannot map an input frame for reading")
                );
                gst::FlowError::Error
            })?;
        let mut out_frame =
            gst_video::VideoFrame::from_buffer_writable(outbuf, info).map_err(|_| {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    ("cannot map a heap buffer for writing")
                );
                gst::FlowError::Error
            })?;
        in_frame.copy(&mut out_frame).map_err(|_| {
            gst::element_imp_error!(self, gst::StreamError::Failed, ("frame copy failed"));
            gst::FlowError::Error
        })?;
        let mut outbuf = out_frame.into_buffer();
        self.parent_copy_metadata(
            inbuf.as_ref(),
            outbuf.get_mut().expect("a pool buffer has one owner"),
        )
        .map_err(|_| gst::FlowError::Error)?;
        Ok(outbuf)
    }

    /// Passes a buffer on when it is heap memory the choice allows, laid out as downstream
    /// reads it; copies it into a heap buffer otherwise.
    pub(super) fn pass_or_copy(
        &self,
    ) -> Result<gst_base::subclass::base_transform::GenerateOutputSuccess, gst::FlowError> {
        let Some(inbuf) = self.take_queued_buffer() else {
            return Ok(gst_base::subclass::base_transform::GenerateOutputSuccess::NoOutput);
        };
        let (choice, info, video_meta, out_dmabuf) = match &*self.state.lock().unwrap() {
            State::Started {
                allocator,
                in_info: Some(info),
                downstream,
                out_dmabuf,
                ..
            } => (
                allocator.choice().map_err(|e| {
                    gst::element_imp_error!(self, gst::ResourceError::Settings, ("{}", e));
                    gst::FlowError::Error
                })?,
                info.clone(),
                downstream.video_meta,
                *out_dmabuf,
            ),
            _ => return Err(gst::FlowError::NotNegotiated),
        };
        let stats = self.stats();
        let layout_fits = Self::layout_fits(&inbuf, &info, video_meta);
        let heap = Self::is_chosen_heap_memory(&inbuf, &choice);
        if heap && layout_fits {
            let n = stats.passthrough.fetch_add(1, Ordering::Relaxed) + 1;
            gst::log!(
                CAT,
                imp = self,
                "passthrough #{n}: {inbuf:?} is heap memory"
            );
            return Ok(gst_base::subclass::base_transform::GenerateOutputSuccess::Buffer(inbuf));
        }
        let foreign = if heap {
            Foreign::No
        } else {
            self.foreign
                .judge(&inbuf, &choice, out_dmabuf, &self.devices())
        };
        let reason = match foreign {
            Foreign::Passes(exporters) if layout_fits => {
                let n = stats.foreign_passthrough.fetch_add(1, Ordering::Relaxed) + 1;
                gst::log!(
                    CAT,
                    imp = self,
                    "foreign passthrough #{n}: {inbuf:?} is a dma-buf of {exporters}"
                );
                return Ok(
                    gst_base::subclass::base_transform::GenerateOutputSuccess::Buffer(inbuf),
                );
            }
            Foreign::Passes(exporters) => format!(
                "it is a dma-buf of {exporters} laid out with strides or offsets of its own, \
                 which downstream would not read (it takes no video meta)"
            ),
            Foreign::Copy(why) => format!("it is a dma-buf from another exporter: {why}"),
            Foreign::No => Self::copy_reason(&inbuf, &choice),
        };

        let pool = self.copy_pool()?;
        let outbuf = pool.acquire_buffer(None)?;
        let outbuf = self.copy_frame(&info, &inbuf, outbuf)?;
        let n = stats.copies.fetch_add(1, Ordering::Relaxed) + 1;
        if stats.copied_because(&reason) {
            gst::info!(CAT, imp = self, "copying into heap buffers: {reason}");
        }
        gst::debug!(CAT, imp = self, "copy #{n} into {outbuf:?}");
        Ok(gst_base::subclass::base_transform::GenerateOutputSuccess::Buffer(outbuf))
    }
}
