//! Telling the buffer a graph cycle hands back from a stale id (PipeWire 1.5.81 and later).
//!
//! With `node.reliable` PipeWire's tee swaps: the frame goes into a link's io area and the
//! buffer id that area held comes back to the stream, to be put in its free queue when the
//! cycle ends. Those io areas outlive a renegotiation (they are set up once per link), so the
//! first swaps after new buffers hand back ids of the old set. The new set reuses the same
//! ids, and the stream queues whatever id it gets (1.6's `queue_push` no longer refuses a
//! buffer that is already queued or in use): the producer would be handed a buffer a consumer
//! is about to read, even the one it has just sent, and draw over it.
//!
//! A buffer really comes back only after it went out: an id handed back that is not in
//! flight (taken by the tee, not handed back since) is stale, and is emptied from the io area
//! before the cycle ends (see [`crate::raw::PortIo`]). This needs the producer to drive the
//! graph, so that the cycle runs inside `pw_stream_trigger_process` and the swap is seen
//! before the cycle ends.

use crate::raw::{BufferKey, PortIoState};

/// The current buffer set, in PipeWire's id order, and where its buffers are.
#[derive(Debug, Default)]
pub(super) struct Returns {
    /// The stream's buffers by id: the order of `add_buffer`, which is PipeWire's.
    ids: Vec<Option<BufferKey>>,
    /// Queued by the producer, not taken by the tee yet.
    pending: Option<BufferKey>,
    /// Taken by the tee (in a link's io area or with a consumer), not handed back yet.
    in_flight: Vec<BufferKey>,
}

/// What a cycle did with the buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Nothing handed back (or the frame is still waiting for the tee).
    Nothing,
    /// This buffer, which went out earlier, comes back.
    Returned(BufferKey),
    /// The id handed back names no buffer in flight: it must not reach the free queue.
    Stale(u32),
}

impl Returns {
    /// The stream added a buffer; the first one after all were removed starts a new set.
    pub(super) fn added(&mut self, key: BufferKey) {
        if self.ids.iter().all(Option::is_none) {
            *self = Self::default();
        }
        self.ids.push(Some(key));
    }

    /// The stream removed a buffer.
    pub(super) fn removed(&mut self, key: BufferKey) {
        for id in &mut self.ids {
            if *id == Some(key) {
                *id = None;
            }
        }
        self.in_flight.retain(|k| *k != key);
        if self.pending == Some(key) {
            self.pending = None;
        }
    }

    /// The producer queued a frame in `key`.
    pub(super) fn queued(&mut self, key: BufferKey) {
        self.pending = Some(key);
    }

    /// After a cycle this producer drove: what the port's io area says about it.
    pub(super) fn after_cycle(&mut self, io: PortIoState) -> Verdict {
        let PortIoState::Taken(handed_back) = io else {
            return Verdict::Nothing;
        };
        let Some(sent) = self.pending.take() else {
            return Verdict::Nothing;
        };
        let verdict = match handed_back {
            None => Verdict::Nothing,
            Some(id) => match self.ids.get(id as usize) {
                // PipeWire ignores ids beyond its buffers, and removed ones are gone.
                None | Some(None) => Verdict::Nothing,
                Some(Some(key)) => match self.in_flight.iter().position(|k| k == key) {
                    Some(i) => Verdict::Returned(self.in_flight.swap_remove(i)),
                    None => Verdict::Stale(id),
                },
            },
        };
        self.in_flight.push(sent);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> BufferKey {
        BufferKey::from_raw(0x1000 + 56 * i)
    }

    fn set(n: usize) -> Returns {
        let mut r = Returns::default();
        for i in 0..n {
            r.added(key(i));
        }
        r
    }

    /// Sends a frame in buffer `i` and lets the tee hand back `back`.
    fn cycle(r: &mut Returns, i: usize, back: Option<u32>) -> Verdict {
        r.queued(key(i));
        r.after_cycle(PortIoState::Taken(back))
    }

    #[test]
    fn one_io_area_hands_back_the_previous_frame() {
        let mut r = set(4);
        // The io area held id 3 of the old set: stale, even though buffer 3 is free.
        assert_eq!(cycle(&mut r, 0, Some(3)), Verdict::Stale(3));
        assert_eq!(cycle(&mut r, 1, Some(0)), Verdict::Returned(key(0)));
        assert_eq!(cycle(&mut r, 0, Some(1)), Verdict::Returned(key(1)));
    }

    #[test]
    fn the_frame_just_sent_is_never_handed_back() {
        let mut r = set(4);
        assert_eq!(cycle(&mut r, 3, Some(3)), Verdict::Stale(3));
        // Two io areas (asynchronous links): one more stale id, then two cycles' lag.
        assert_eq!(cycle(&mut r, 2, Some(2)), Verdict::Stale(2));
        assert_eq!(cycle(&mut r, 1, Some(3)), Verdict::Returned(key(3)));
        assert_eq!(cycle(&mut r, 0, Some(2)), Verdict::Returned(key(2)));
        assert_eq!(cycle(&mut r, 3, Some(3)), Verdict::Stale(3));
    }

    #[test]
    fn a_frame_the_tee_has_not_taken_stays_pending() {
        let mut r = set(2);
        r.queued(key(0));
        assert_eq!(r.after_cycle(PortIoState::Holding), Verdict::Nothing);
        assert_eq!(r.after_cycle(PortIoState::Taken(None)), Verdict::Nothing);
        assert_eq!(cycle(&mut r, 1, Some(0)), Verdict::Returned(key(0)));
        // No frame this cycle: whatever the area says is not ours to judge.
        assert_eq!(r.after_cycle(PortIoState::Taken(Some(1))), Verdict::Nothing);
    }

    #[test]
    fn a_new_set_forgets_the_old_one() {
        let mut r = set(3);
        assert_eq!(cycle(&mut r, 0, None), Verdict::Nothing);
        assert_eq!(cycle(&mut r, 1, Some(0)), Verdict::Returned(key(0)));
        for i in 0..3 {
            r.removed(key(i));
        }
        for i in 0..3 {
            r.added(key(i));
        }
        // Buffer 1 was in flight in the old set; in the new one it never went out.
        assert_eq!(cycle(&mut r, 0, Some(1)), Verdict::Stale(1));
        assert_eq!(cycle(&mut r, 1, Some(7)), Verdict::Nothing);
        assert_eq!(cycle(&mut r, 2, Some(1)), Verdict::Returned(key(1)));
    }
}
