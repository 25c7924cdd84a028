//! The consumer's last few stream events, kept as plain numbers, so that a frame that repeats
//! or goes back can be told apart: the same `pw_buffer` handed over twice, a second buffer
//! with the same frame, or a buffer of a set PipeWire already replaced.

use std::collections::VecDeque;
use std::fmt;

/// How many events are kept.
const LEN: usize = 24;

/// One thing the consumer's stream did.
#[derive(Debug, Clone, Copy)]
pub(super) enum Event {
    /// A `pw_buffer` was dequeued: its address, the fd of its first block, its chunk size,
    /// the header's frame number and the frame number drawn in it (None: not checked).
    Dequeued {
        buffer: usize,
        fd: i64,
        chunk: u32,
        header: Option<u64>,
        drawn: Option<u64>,
    },
    /// Queued back (false: kept, held).
    Queued { buffer: usize },
    /// A format was set (None: cleared).
    Format(Option<(u32, u32)>),
    /// PipeWire removed a buffer.
    Removed { buffer: usize },
    /// The stream changed state.
    State(&'static str),
}

/// The last [`LEN`] events, oldest first.
#[derive(Debug, Default)]
pub(super) struct Trail(VecDeque<(u64, Event)>);

impl Trail {
    pub(super) fn push(&mut self, event: Event) {
        let n = self.0.back().map_or(0, |(n, _)| n + 1);
        if self.0.len() == LEN {
            self.0.pop_front();
        }
        self.0.push_back((n, event));
    }

    /// Records the frame number found in the buffer dequeued last.
    pub(super) fn drawn(&mut self, seq: u64) {
        if let Some((_, Event::Dequeued { drawn, .. })) = self.0.back_mut() {
            *drawn = Some(seq);
        }
    }
}

impl fmt::Display for Trail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, event) in &self.0 {
            write!(f, "\n  {n}: ")?;
            match event {
                Event::Dequeued {
                    buffer,
                    fd,
                    chunk,
                    header,
                    drawn,
                } => write!(
                    f,
                    "dequeued {buffer:#x} fd {fd} chunk {chunk} header {header:?} frame {drawn:?}"
                )?,
                Event::Queued { buffer } => write!(f, "queued {buffer:#x}")?,
                Event::Format(Some((w, h))) => write!(f, "format {w}x{h}")?,
                Event::Format(None) => write!(f, "format cleared")?,
                Event::Removed { buffer } => write!(f, "removed {buffer:#x}")?,
                Event::State(s) => write!(f, "state {s}")?,
            }
        }
        Ok(())
    }
}
