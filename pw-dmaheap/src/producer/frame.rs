//! Producing a frame: a free buffer is dequeued, drawn by the render callback inside a
//! `DMA_BUF_IOCTL_SYNC` write bracket, described (chunks, header, sync points) and queued.
//!
//! A buffer is drawn into only once nobody uses it any more. PipeWire's busy count covers a
//! consumer that still holds it dequeued; beyond that, with explicit sync the consumer's
//! release point must have signalled, and with implicit sync no device may still hold a
//! fence on the dma-buf (a display scanning it out, a GPU reading it). A buffer that is not
//! free yet is parked (kept dequeued, untouched) and looked at again on the next frame, while
//! the other buffers are used.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use heapcore::Origin;
use heapcore::format::{FrameLayout, VideoFormat};
use pipewire::stream::Stream;

use super::report::{Event, Negotiated};
use super::state::{Inner, Slot, with_inner};
use crate::data_types::DataKind;
use crate::pattern::{self, PlaneMut};
use crate::raw::{self, ChunkFill, DequeueFailed, Dequeued, Dequeues, SyncPoints};
use crate::video::Framerate;

/// One frame to draw, handed to the render callback.
pub struct Frame<'a> {
    bytes: &'a mut [u8],
    layout: &'a FrameLayout,
    sequence: u64,
    kind: DataKind,
    origin: &'a Origin,
}

impl Frame<'_> {
    /// The frame number (0, 1, ...), also written into the `SPA_META_Header` seq.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The negotiated video format.
    pub fn format(&self) -> VideoFormat {
        self.layout.format
    }

    /// The frame width in pixels.
    pub fn width(&self) -> u32 {
        self.layout.width
    }

    /// The frame height in pixels.
    pub fn height(&self) -> u32 {
        self.layout.height
    }

    /// Strides and plane offsets inside [`Frame::data`].
    pub fn layout(&self) -> &FrameLayout {
        self.layout
    }

    /// Whether the consumer gets a dma-buf or a memfd.
    pub fn data_kind(&self) -> DataKind {
        self.kind
    }

    /// Where this buffer's memory came from.
    pub fn origin(&self) -> &Origin {
        self.origin
    }

    /// The frame's bytes (all planes, laid out as [`Frame::layout`]). CPU access is
    /// bracketed with `DMA_BUF_IOCTL_SYNC` around the render callback.
    pub fn data(&mut self) -> &mut [u8] {
        self.bytes
    }

    /// The planes, each with its stride.
    pub fn planes(&mut self) -> Vec<PlaneMut<'_>> {
        // The producer sizes `bytes` to its own layout, so this cannot fail; if it ever did,
        // the callback gets no planes rather than a panic in a PipeWire callback.
        pattern::planes_in_mut(self.bytes, self.layout).unwrap_or_else(|e| {
            log::error!("frame {}: {e}", self.sequence);
            Vec::new()
        })
    }

    /// Draws the crate's animated, verifiable test pattern (see [`crate::pattern`]).
    pub fn draw_test_pattern(&mut self) {
        let (format, width, height, seq) =
            (self.format(), self.width(), self.height(), self.sequence);
        if let Err(e) = pattern::draw(&mut self.planes(), format, width, height, seq) {
            log::error!("frame {seq}: drawing the test pattern: {e}");
        }
    }
}

/// Where the frame lies in each of `blocks` blocks: one block holds the whole frame (with the
/// first plane's stride), otherwise block `p` holds plane `p`.
pub(super) fn chunks(layout: &FrameLayout, blocks: u32) -> Vec<ChunkFill> {
    if blocks == 1 {
        return vec![ChunkFill {
            offset: 0,
            size: layout.size as u32,
            stride: layout.strides[0] as i32,
        }];
    }
    (0..layout.n_planes)
        .map(|p| {
            let end = if p + 1 < layout.n_planes {
                layout.offsets[p + 1]
            } else {
                layout.size
            };
            ChunkFill {
                offset: layout.offsets[p] as u32,
                size: (end - layout.offsets[p]) as u32,
                stride: layout.strides[p] as i32,
            }
        })
        .collect()
}

/// Why a buffer may not be drawn into yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// The consumer promised to signal `point` on the release timeline, which is at
    /// `signalled`.
    Release {
        /// The release point the consumer will signal.
        point: u64,
        /// The last point signalled.
        signalled: u64,
    },
    /// A device still holds a fence on the dma-buf (implicit sync).
    Fence,
}

/// Whether `slot`, whose buffer carries `points` (explicit sync) or not, may be drawn into.
pub(super) fn readiness(slot: &Slot, points: Option<SyncPoints>) -> Result<(), Wait> {
    if let Some(sync) = &slot.sync {
        // A release point the consumer did not promise (it cleared no flag, or the consumer
        // predates the RELEASE feature) is never waited for: PipeWire's video-src-sync does
        // the same. One it promised is.
        let Some(points) = points.filter(|p| p.release > 0 && p.release_scheduled()) else {
            return Ok(());
        };
        let signalled = sync.release.signalled().unwrap_or_else(|e| {
            log::warn!("querying a release timeline: {e}; the buffer waits");
            0
        });
        return if signalled >= points.release {
            Ok(())
        } else {
            Err(Wait::Release {
                point: points.release,
                signalled,
            })
        };
    }
    if slot.kind != DataKind::DmaBuf {
        return Ok(());
    }
    match slot.buf.busy() {
        Ok(None) => Ok(()),
        Ok(Some(_fence)) => Err(Wait::Fence),
        Err(e) => {
            log::warn!("asking whether a buffer is still in use: {e}; assuming it is not");
            Ok(())
        }
    }
}

/// The next buffer that may be drawn into: a parked one whose wait is over, else a free one
/// from PipeWire; buffers that may not be drawn into yet are parked on the way.
fn next_free<'s>(
    stream: &'s Stream,
    inner_rc: &Rc<RefCell<Inner>>,
    dequeues: &Rc<Dequeues>,
) -> Option<Dequeued<'s>> {
    let inner = inner_rc.try_borrow().ok()?;
    let ready = |d: &mut Dequeued<'_>| -> bool {
        let Some(slot) = inner.slots.get(&d.key()) else {
            return false; // not a buffer of ours: never drawn, never sent
        };
        match readiness(slot, d.sync_points()) {
            Ok(()) => true,
            Err(wait) => {
                log::trace!(
                    "{}: buffer {:?} is not free yet: {wait:?}",
                    inner.config.node_name,
                    d.key()
                );
                false
            }
        }
    };
    for key in dequeues.parked() {
        if let Some(mut parked) = dequeues.unpark(stream, key) {
            if ready(&mut parked) {
                return Some(parked);
            }
            parked.park();
        }
    }
    // A busy buffer goes to the end of PipeWire's queue, and a second entry of a buffer this
    // producer holds is used up: try as many times as there are buffers (and one more) before
    // calling the stream starved.
    let mut duplicates = 0;
    let mut found = None;
    for _ in 0..=inner.slots.len() {
        match raw::try_dequeue(stream, dequeues) {
            Ok(mut fresh) => {
                if ready(&mut fresh) {
                    found = Some(fresh);
                    break;
                }
                fresh.park();
            }
            Err(DequeueFailed::Busy) => continue,
            Err(DequeueFailed::Duplicate) => duplicates += 1,
            Err(DequeueFailed::Empty) => break,
        }
    }
    if duplicates > 0 {
        log::warn!(
            "{}: PipeWire handed out {duplicates} buffer(s) this producer holds already; left \
             alone",
            inner.config.node_name
        );
        drop(inner);
        with_inner(inner_rc, |inner| inner.stats.duplicates += duplicates);
    }
    found
}

fn monotonic_ns() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec)
}

/// How long frames are held back after a resize at most, waiting for the new format.
const HOLD_BACK_AT_MOST: Duration = Duration::from_secs(3);

/// `process`: draws and queues a frame into a free buffer, if there is one.
pub(super) fn on_produce(
    stream: &Stream,
    inner_rc: &Rc<RefCell<Inner>>,
    dequeues: &Rc<raw::Dequeues>,
) {
    // Every cycle that can carry a frame does, the first one of a new buffer set above all.
    // PipeWire keeps a link's io area across a renegotiation: until this stream's port writes
    // it, it can still say HAVE_DATA with the id of a buffer of the old set, and a consumer
    // that runs a cycle then is handed the buffer of the new set with that id. Its application
    // reads that buffer whenever its loop gets to it, while this producer may be drawing the
    // next frames into it, and it comes again when sent for real: a frame seen twice or out of
    // order. A frame in the first cycle overwrites the stale id before any consumer runs.
    //
    // So from a resize until PipeWire sets the new format no frame goes out: a frame sent
    // then may still sit unread in a link's io area when the buffers change, and PipeWire
    // 1.6's reliable tee never overwrites an io area that says HAVE_DATA, so the consumer is
    // handed that id of the new set (never sent, or drawn into meanwhile), and the buffer
    // again when it is really sent. The hold-back ends after `HOLD_BACK_AT_MOST` whatever
    // happens, should no renegotiation follow.
    let skip = with_inner(inner_rc, |inner| {
        if let Some(held) = &inner.held_back {
            if held.since.elapsed() < HOLD_BACK_AT_MOST {
                return true;
            }
            log::warn!(
                "{}: no new format {} ms after the resize; frames go out again",
                inner.config.node_name,
                held.since.elapsed().as_millis()
            );
            inner.held_back = None;
        }
        let sealed = inner.active.as_ref().is_some_and(|a| a.sealed);
        if sealed {
            inner.stats.starved += 1;
        }
        sealed
    });
    if skip != Some(false) {
        return; // held back, sealed (or the state is busy: re-entered)
    }
    let Some(mut dequeued) = next_free(stream, inner_rc, dequeues) else {
        with_inner(inner_rc, |inner| inner.stats.starved += 1);
        return;
    };
    let key = dequeued.key();
    // Take what the render callback needs out of the state, so that the callback may use
    // the producer (stats, resize, even disconnect) without a borrow conflict. The slot
    // leaves the map meanwhile, so its memory stays ours whatever the callback does.
    let (mut slot, layout, origin, sequence, mut render, generation) = {
        let Ok(mut inner) = inner_rc.try_borrow_mut() else {
            log::error!("process re-entered the producer; frame skipped");
            return;
        };
        // A buffer that goes back undrawn is parked, not queued: queued, it would show the
        // consumer whatever frame it held before.
        let Some(layout) = inner.active.as_ref().map(|a| a.constraints.layout) else {
            dequeued.park();
            return;
        };
        let Some(slot) = inner.slots.remove(&key) else {
            log::warn!("{}: dequeued an unknown buffer", inner.config.node_name);
            dequeued.park();
            return;
        };
        let origin = slot.buf.origin().clone();
        let generation = inner.generation;
        (
            slot,
            layout,
            origin,
            inner.stats.frames,
            inner.render.take(),
            generation,
        )
    };
    let drawn = match slot.buf.write() {
        Ok(mut cpu) => {
            let len = (layout.size as usize).min(cpu.len());
            let mut frame = Frame {
                bytes: &mut cpu[..len],
                layout: &layout,
                sequence,
                kind: slot.kind,
                origin: &origin,
            };
            if let Some(render) = render.as_mut() {
                render(&mut frame);
            }
            cpu.finish()
        }
        Err(e) => Err(e),
    };
    // Nothing else can hold the state now: the callback took no borrow across the render.
    let mut inner = inner_rc.borrow_mut();
    if inner.render.is_none() {
        inner.render = render;
    }
    if dequeued.removed() {
        // The callback made PipeWire remove every buffer (it disconnected the stream): this
        // pw_buffer is gone, so it is neither written nor queued (dropping `dequeued` does
        // nothing), and its memory, which consumers had, is freed.
        log::debug!(
            "{}: buffer {key:?} was removed while frame {sequence} was drawn",
            inner.config.node_name
        );
        inner.retire(slot.buf);
        return;
    }
    if inner.generation != generation {
        // The format changed while the callback ran, yet PipeWire kept this buffer (it
        // removes every buffer before a new format, so this should not happen): it stays
        // attached and parked, its frame not sent.
        inner.slots.insert(key, slot);
        drop(inner);
        dequeued.park();
        return;
    }
    if let Err(e) = drawn {
        log::warn!("{}: frame {sequence}: {e}", inner.config.node_name);
    }
    let blocks = inner.active.as_ref().map_or(1, |a| a.blocks);
    dequeued.set_chunks(&chunks(&layout, blocks));
    dequeued.set_header(sequence, monotonic_ns());
    if let Some(sync) = slot.sync.as_mut() {
        // The CPU is done with the frame (the write bracket ended): its acquire point
        // signals now; the consumer signals the same point on the release timeline when it is
        // done with it.
        sync.point += 1;
        if let Err(e) = sync.acquire.signal(sync.point) {
            log::warn!("{}: frame {sequence}: {e}", inner.config.node_name);
        }
        dequeued.set_sync_points(sync.point, sync.point);
    }
    inner.slots.insert(key, slot);
    inner.returns.queued(key);
    inner.stats.frames += 1;
    let report = inner
        .active
        .as_mut()
        .is_some_and(|a| !std::mem::replace(&mut a.ready_reported, true));
    if report {
        inner.resizing = false;
        if let Some(negotiated) = inner.negotiated() {
            log::info!("{}: streaming {negotiated}", inner.config.node_name);
            inner.events.push(Event::BuffersReady(negotiated));
        }
    }
    log::trace!(
        "{}: frame {sequence} queued in buffer {key:?}",
        inner.config.node_name
    );
    drop(inner);
    drop(dequeued); // queues the buffer
}

/// The frame interval for a negotiated rate, falling back to the configured maximum when
/// the rate is variable (`0/1`).
pub fn frame_interval(negotiated: Option<&Negotiated>, max: Framerate) -> Duration {
    negotiated
        .and_then(|n| n.params.framerate.interval())
        .or_else(|| max.interval())
        .unwrap_or(Duration::from_millis(33))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_block_holds_the_frame_and_planar_blocks_hold_a_plane_each() {
        let layout = FrameLayout::aligned(VideoFormat::Nv12, 64, 48, 64, 1).unwrap();
        let one = chunks(&layout, 1);
        assert_eq!(
            one,
            [ChunkFill {
                offset: 0,
                size: layout.size as u32,
                stride: 64
            }]
        );
        let two = chunks(&layout, 2);
        assert_eq!(two.len(), 2);
        assert_eq!((two[0].offset, two[0].size), (0, 64 * 48));
        assert_eq!(
            (two[1].offset, two[1].size, two[1].stride),
            (64 * 48, 64 * 24, 64)
        );
    }

    #[test]
    fn the_interval_follows_the_negotiated_rate_or_the_maximum() {
        let max = Framerate::new(60, 1);
        assert_eq!(
            frame_interval(None, max),
            Duration::from_nanos(1_000_000_000 / 60)
        );
        assert_eq!(
            frame_interval(None, Framerate::new(0, 1)),
            Duration::from_millis(33)
        );
    }
}
